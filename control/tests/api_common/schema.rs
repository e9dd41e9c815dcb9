//! A checker of JSON values against the OpenAPI document's schemas, for the subset the
//! document uses: `type`, `format` (`uuid`, `date-time`), `enum`, `required`,
//! `properties`, `additionalProperties`, `items`, `nullable`, `oneOf`, `$ref`,
//! `minimum`/`maximum`, `minLength`/`maxLength`, `minItems`/`maxItems`. A keyword outside
//! the subset fails the check, so the document cannot silently outgrow the checker.

use serde_json::{Map, Value};

/// Keywords that only describe and never constrain.
const ANNOTATIONS: &[&str] = &["description", "default", "example", "title"];

/// The document, and lookups of an operation's documented response.
pub struct Document {
    pub doc: Value,
}

/// What the document says a response looks like.
pub struct DocumentedResponse<'a> {
    /// `None`: the response has no body.
    pub schema: Option<&'a Value>,
    /// Header names the response must carry (lower case).
    pub headers: Vec<String>,
}

impl Document {
    pub fn new(text: &str) -> Self {
        Self {
            doc: serde_json::from_str(text).expect("the OpenAPI document is JSON"),
        }
    }

    /// Follows a local `$ref`.
    pub fn resolve<'a>(&'a self, v: &'a Value) -> &'a Value {
        let mut v = v;
        while let Some(r) = v.get("$ref").and_then(Value::as_str) {
            v = self
                .doc
                .pointer(r.trim_start_matches('#'))
                .unwrap_or_else(|| panic!("dangling $ref {r}"));
        }
        v
    }

    /// The documented path template a concrete path matches (`{x}` matches one segment).
    pub fn template_of(&self, path: &str) -> Option<&str> {
        let segments: Vec<&str> = path.split('/').collect();
        let paths = self.doc["paths"].as_object()?;
        paths
            .keys()
            .find(|template| {
                let t: Vec<&str> = template.split('/').collect();
                t.len() == segments.len()
                    && t.iter().zip(&segments).all(|(t, s)| {
                        (t.starts_with('{') && t.ends_with('}') && !s.is_empty()) || t == s
                    })
            })
            .map(String::as_str)
    }

    /// The response documented for `method` on `template` with `status`; `Err` says what
    /// is not documented.
    pub fn response(
        &self,
        method: &str,
        template: &str,
        status: u16,
    ) -> Result<DocumentedResponse<'_>, String> {
        let op = self.doc["paths"][template]
            .get(method)
            .ok_or_else(|| format!("{method} {template} is not documented"))?;
        let responses = &op["responses"];
        let response = responses
            .get(status.to_string())
            .or_else(|| responses.get("default"))
            .ok_or_else(|| format!("{method} {template} does not document status {status}"))?;
        let response = self.resolve(response);
        let schema = response
            .get("content")
            .map(|c| {
                c.get("application/json")
                    .map(|m| &m["schema"])
                    .ok_or_else(|| format!("{method} {template} {status}: not application/json"))
            })
            .transpose()?;
        let headers = response
            .get("headers")
            .and_then(Value::as_object)
            .map(|h| h.keys().map(|k| k.to_ascii_lowercase()).collect())
            .unwrap_or_default();
        Ok(DocumentedResponse { schema, headers })
    }

    /// Every mismatch between `value` and `schema`, each prefixed with its JSON path.
    pub fn check(&self, schema: &Value, value: &Value) -> Vec<String> {
        let mut errors = Vec::new();
        self.check_at(schema, value, "$", &mut errors);
        errors
    }

    fn check_at(&self, schema: &Value, value: &Value, at: &str, errors: &mut Vec<String>) {
        let schema = self.resolve(schema);
        let Some(s) = schema.as_object() else {
            errors.push(format!("{at}: schema is not an object"));
            return;
        };
        if value.is_null() {
            if s.get("nullable") != Some(&Value::Bool(true)) {
                errors.push(format!("{at}: null where the schema is not nullable"));
            }
            return;
        }
        for (keyword, arg) in s {
            match keyword.as_str() {
                k if ANNOTATIONS.contains(&k) => {}
                "nullable" | "required" | "properties" | "additionalProperties" => {}
                "type" => check_type(arg, value, at, errors),
                "format" => check_format(arg, value, at, errors),
                "enum" => {
                    if !arg.as_array().is_some_and(|vals| vals.contains(value)) {
                        errors.push(format!("{at}: {value} is not one of {arg}"));
                    }
                }
                "minimum" | "maximum" => {
                    if let (Some(bound), Some(n)) = (arg.as_f64(), value.as_f64()) {
                        let bad = if keyword == "minimum" {
                            n < bound
                        } else {
                            n > bound
                        };
                        if bad {
                            errors.push(format!("{at}: {n} breaks {keyword} {bound}"));
                        }
                    }
                }
                "minLength" | "maxLength" => {
                    if let (Some(bound), Some(text)) = (arg.as_u64(), value.as_str()) {
                        let len = text.chars().count() as u64;
                        let bad = if keyword == "minLength" {
                            len < bound
                        } else {
                            len > bound
                        };
                        if bad {
                            errors.push(format!("{at}: length {len} breaks {keyword} {bound}"));
                        }
                    }
                }
                "minItems" | "maxItems" => {
                    if let (Some(bound), Some(items)) = (arg.as_u64(), value.as_array()) {
                        let len = items.len() as u64;
                        let bad = if keyword == "minItems" {
                            len < bound
                        } else {
                            len > bound
                        };
                        if bad {
                            errors.push(format!("{at}: {len} items break {keyword} {bound}"));
                        }
                    }
                }
                "items" => {
                    if let Some(items) = value.as_array() {
                        for (i, item) in items.iter().enumerate() {
                            self.check_at(arg, item, &format!("{at}[{i}]"), errors);
                        }
                    }
                }
                "oneOf" => {
                    let alternatives = arg.as_array().map(Vec::as_slice).unwrap_or_default();
                    let passing = alternatives
                        .iter()
                        .filter(|alt| {
                            let mut e = Vec::new();
                            self.check_at(alt, value, at, &mut e);
                            e.is_empty()
                        })
                        .count();
                    if passing != 1 {
                        errors.push(format!(
                            "{at}: {value} matches {passing} of the oneOf alternatives, not 1"
                        ));
                    }
                }
                other => errors.push(format!("{at}: the checker does not know `{other}`")),
            }
        }
        if let Some(object) = value.as_object() {
            self.check_object(s, object, at, errors);
        }
    }

    fn check_object(
        &self,
        s: &Map<String, Value>,
        object: &Map<String, Value>,
        at: &str,
        errors: &mut Vec<String>,
    ) {
        for name in s
            .get("required")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
        {
            if !object.contains_key(name) {
                errors.push(format!("{at}: required `{name}` is missing"));
            }
        }
        let properties = s.get("properties").and_then(Value::as_object);
        for (name, v) in object {
            let here = format!("{at}.{name}");
            match properties.and_then(|p| p.get(name)) {
                Some(schema) => self.check_at(schema, v, &here, errors),
                None => match s.get("additionalProperties") {
                    Some(Value::Bool(false)) => {
                        errors.push(format!("{here}: not in the schema's properties"));
                    }
                    Some(extra @ Value::Object(_)) => self.check_at(extra, v, &here, errors),
                    _ => {}
                },
            }
        }
    }
}

fn check_type(t: &Value, value: &Value, at: &str, errors: &mut Vec<String>) {
    let ok = match t.as_str() {
        Some("object") => value.is_object(),
        Some("array") => value.is_array(),
        Some("string") => value.is_string(),
        Some("boolean") => value.is_boolean(),
        Some("integer") => value.is_i64() || value.is_u64(),
        Some("number") => value.is_number(),
        _ => {
            errors.push(format!("{at}: unknown type {t}"));
            return;
        }
    };
    if !ok {
        errors.push(format!("{at}: {value} is not of type {t}"));
    }
}

fn check_format(f: &Value, value: &Value, at: &str, errors: &mut Vec<String>) {
    let Some(text) = value.as_str() else {
        return; // formats of numbers (int64) constrain nothing JSON can break here
    };
    let ok = match f.as_str() {
        Some("uuid") => uuid::Uuid::parse_str(text).is_ok() && text.len() == 36,
        Some("date-time") => is_rfc3339(text),
        _ => {
            errors.push(format!("{at}: unknown string format {f}"));
            return;
        }
    };
    if !ok {
        errors.push(format!("{at}: {text:?} is not a {f}"));
    }
}

/// `YYYY-MM-DDTHH:MM:SS[.fraction](Z|±HH:MM)`, with ranges checked.
pub fn is_rfc3339(s: &str) -> bool {
    let b = s.as_bytes();
    let digits = |r: std::ops::Range<usize>| {
        b.get(r.clone())
            .filter(|d| d.iter().all(u8::is_ascii_digit))
            .and_then(|d| std::str::from_utf8(d).ok()?.parse::<u32>().ok())
    };
    let (Some(_year), Some(month), Some(day), Some(hour), Some(minute), Some(second)) = (
        digits(0..4),
        digits(5..7),
        digits(8..10),
        digits(11..13),
        digits(14..16),
        digits(17..19),
    ) else {
        return false;
    };
    if b.len() < 20
        || b[4] != b'-'
        || b[7] != b'-'
        || !matches!(b[10], b'T' | b't')
        || b[13] != b':'
        || b[16] != b':'
        || !(1..=12).contains(&month)
        || !(1..=31).contains(&day)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return false;
    }
    let mut rest = &s[19..];
    if let Some(frac) = rest.strip_prefix('.') {
        let n = frac.bytes().take_while(u8::is_ascii_digit).count();
        if n == 0 {
            return false;
        }
        rest = &frac[n..];
    }
    match rest.as_bytes() {
        [b'Z' | b'z'] => true,
        [b'+' | b'-', h1, h2, b':', m1, m2] => [h1, h2, m1, m2].iter().all(|d| d.is_ascii_digit()),
        _ => false,
    }
}
