#include <stdlib.h>
#include <string.h>
#include "common.h"

/* wit-bindgen's bindings reference this symbol to keep their type object linked; the
 * build embeds the world's metadata itself, so it is empty. */
void __component_type_object_force_link_route(void) {}

static const char *ws(const char *p, const char *end) {
    while (p < end && (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r')) p++;
    return p;
}

/* Past a JSON string starting at p ('"'), or NULL. */
static const char *skip_string(const char *p, const char *end) {
    if (p >= end || *p != '"') return NULL;
    for (p++; p < end; p++) {
        if (*p == '\\') {
            p++;
            if (p >= end) return NULL;
        } else if (*p == '"') {
            return p + 1;
        } else if ((unsigned char)*p < 0x20) {
            return NULL;
        }
    }
    return NULL;
}

static const char *skip_value(const char *p, const char *end, int depth);

static const char *skip_container(const char *p, const char *end, int depth, char close, bool object) {
    p = ws(p + 1, end);
    if (p < end && *p == close) return p + 1;
    for (;;) {
        if (object) {
            p = skip_string(ws(p, end), end);
            if (!p) return NULL;
            p = ws(p, end);
            if (p >= end || *p != ':') return NULL;
            p++;
        }
        p = skip_value(ws(p, end), end, depth + 1);
        if (!p) return NULL;
        p = ws(p, end);
        if (p >= end) return NULL;
        if (*p == close) return p + 1;
        if (*p != ',') return NULL;
        p++;
    }
}

static const char *skip_value(const char *p, const char *end, int depth) {
    if (depth > 32 || p >= end) return NULL;
    switch (*p) {
    case '"': return skip_string(p, end);
    case '{': return skip_container(p, end, depth, '}', true);
    case '[': return skip_container(p, end, depth, ']', false);
    case 't': return (end - p >= 4 && !memcmp(p, "true", 4)) ? p + 4 : NULL;
    case 'f': return (end - p >= 5 && !memcmp(p, "false", 5)) ? p + 5 : NULL;
    case 'n': return (end - p >= 4 && !memcmp(p, "null", 4)) ? p + 4 : NULL;
    default: {
        const char *q = p;
        if (q < end && *q == '-') q++;
        while (q < end && ((*q >= '0' && *q <= '9') || *q == '.' || *q == 'e' || *q == 'E' || *q == '+' || *q == '-')) q++;
        return q > p ? q : NULL;
    }
    }
}

int json_object_members(const char *s, const char *end, json_member_t *out, int max) {
    const char *p = ws(s, end);
    if (p >= end || *p != '{') return -1;
    const char *after = skip_value(p, end, 0);
    if (!after || ws(after, end) != end) return -1;
    int n = 0;
    p = ws(p + 1, end);
    if (*p == '}') return 0;
    for (;;) {
        const char *k = p;
        const char *kend = skip_string(k, end);
        p = ws(kend, end);
        p = ws(p + 1, end); /* ':' */
        const char *v = p;
        const char *vend = skip_value(v, end, 1);
        if (n < max) {
            out[n].key = k + 1;
            out[n].key_len = (size_t)(kend - k - 2);
            out[n].val = v;
            out[n].val_end = vend;
        }
        n++;
        p = ws(vend, end);
        if (*p == '}') return n;
        p = ws(p + 1, end); /* ',' */
    }
}

const json_member_t *json_find(const json_member_t *m, int n, const char *key) {
    size_t kl = strlen(key);
    for (int i = 0; i < n; i++) {
        if (m[i].key_len == kl && !memcmp(m[i].key, key, kl)) return &m[i];
    }
    return NULL;
}

static int hexval(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

static void put_utf8(buf_t *b, uint32_t cp) {
    if (cp < 0x80) {
        buf_putc(b, (char)cp);
    } else if (cp < 0x800) {
        buf_putc(b, (char)(0xC0 | (cp >> 6)));
        buf_putc(b, (char)(0x80 | (cp & 0x3F)));
    } else if (cp < 0x10000) {
        buf_putc(b, (char)(0xE0 | (cp >> 12)));
        buf_putc(b, (char)(0x80 | ((cp >> 6) & 0x3F)));
        buf_putc(b, (char)(0x80 | (cp & 0x3F)));
    } else {
        buf_putc(b, (char)(0xF0 | (cp >> 18)));
        buf_putc(b, (char)(0x80 | ((cp >> 12) & 0x3F)));
        buf_putc(b, (char)(0x80 | ((cp >> 6) & 0x3F)));
        buf_putc(b, (char)(0x80 | (cp & 0x3F)));
    }
}

static int hex4(const char *p, const char *end) {
    if (end - p < 4) return -1;
    int v = 0;
    for (int i = 0; i < 4; i++) {
        int h = hexval(p[i]);
        if (h < 0) return -1;
        v = v * 16 + h;
    }
    return v;
}

char *json_string(const json_member_t *m, size_t *len) {
    const char *p = m->val, *end = m->val_end;
    if (!p || p >= end || *p != '"') return NULL;
    buf_t b = {0};
    for (p++; p < end - 1; p++) {
        if (*p != '\\') {
            buf_putc(&b, *p);
            continue;
        }
        p++;
        switch (*p) {
        case 'n': buf_putc(&b, '\n'); break;
        case 't': buf_putc(&b, '\t'); break;
        case 'r': buf_putc(&b, '\r'); break;
        case 'b': buf_putc(&b, '\b'); break;
        case 'f': buf_putc(&b, '\f'); break;
        case 'u': {
            int cp = hex4(p + 1, end);
            if (cp < 0) { free(b.p); return NULL; }
            p += 4;
            if (cp >= 0xD800 && cp < 0xDC00 && p + 2 < end && p[1] == '\\' && p[2] == 'u') {
                int lo = hex4(p + 3, end);
                if (lo >= 0xDC00 && lo < 0xE000) {
                    cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
                    p += 6;
                }
            }
            put_utf8(&b, (uint32_t)cp);
            break;
        }
        default: buf_putc(&b, *p); break; /* \" \\ \/ */
        }
    }
    if (len) *len = b.len;
    return buf_cstr(&b);
}

void buf_put(buf_t *b, const void *data, size_t len) {
    if (b->len + len + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 64;
        while (cap < b->len + len + 1) cap *= 2;
        char *p = realloc(b->p, cap);
        if (!p) abort();
        b->p = p;
        b->cap = cap;
    }
    if (len) memcpy(b->p + b->len, data, len);
    b->len += len;
}

void buf_puts(buf_t *b, const char *s) { buf_put(b, s, strlen(s)); }
void buf_putc(buf_t *b, char c) { buf_put(b, &c, 1); }

void buf_put_u64(buf_t *b, uint64_t v) {
    char tmp[24];
    int i = 0;
    do {
        tmp[i++] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    while (i) buf_putc(b, tmp[--i]);
}

char *buf_cstr(buf_t *b) {
    buf_put(b, "", 0);
    b->p[b->len] = 0;
    return b->p;
}

bool ieq(const char *a, const uint8_t *b, size_t blen) {
    if (strlen(a) != blen) return false;
    for (size_t i = 0; i < blen; i++) {
        char x = a[i], y = (char)b[i];
        if (x >= 'A' && x <= 'Z') x = (char)(x + 32);
        if (y >= 'A' && y <= 'Z') y = (char)(y + 32);
        if (x != y) return false;
    }
    return true;
}

char *dup_n(const uint8_t *s, size_t len) {
    char *p = malloc(len + 1);
    if (!p) abort();
    if (len) memcpy(p, s, len);
    p[len] = 0;
    return p;
}

static void put2(buf_t *b, unsigned v) {
    buf_putc(b, (char)('0' + v / 10 % 10));
    buf_putc(b, (char)('0' + v % 10));
}

void rfc3339_nano(buf_t *b, uint64_t ms, uint32_t extra_ns) {
    uint64_t secs = ms / 1000;
    uint32_t nanos = (uint32_t)(ms % 1000) * 1000000u + extra_ns % 1000000u;
    int64_t days = (int64_t)(secs / 86400);
    uint32_t rem = (uint32_t)(secs % 86400);
    /* civil from days (Howard Hinnant) */
    int64_t z = days + 719468;
    int64_t era = z / 146097;
    uint32_t doe = (uint32_t)(z - era * 146097);
    uint32_t yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    int64_t y = (int64_t)yoe + era * 400;
    uint32_t doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    uint32_t mp = (5 * doy + 2) / 153;
    uint32_t d = doy - (153 * mp + 2) / 5 + 1;
    uint32_t mo = mp < 10 ? mp + 3 : mp - 9;
    if (mo <= 2) y++;
    buf_putc(b, (char)('0' + (y / 1000) % 10));
    buf_putc(b, (char)('0' + (y / 100) % 10));
    put2(b, (unsigned)(y % 100));
    buf_putc(b, '-');
    put2(b, mo);
    buf_putc(b, '-');
    put2(b, d);
    buf_putc(b, 'T');
    put2(b, rem / 3600);
    buf_putc(b, ':');
    put2(b, rem / 60 % 60);
    buf_putc(b, ':');
    put2(b, rem % 60);
    if (nanos) {
        char frac[9];
        uint32_t n = nanos;
        for (int i = 8; i >= 0; i--) {
            frac[i] = (char)('0' + n % 10);
            n /= 10;
        }
        int last = 8;
        while (frac[last] == '0') last--;
        buf_putc(b, '.');
        buf_put(b, frac, (size_t)last + 1);
    }
    buf_putc(b, 'Z');
}

void outcome_delivered(route_outcome_t *o) { o->tag = IOTHUB_ROUTE_TYPES_OUTCOME_DELIVERED; }

void outcome_retry(route_outcome_t *o, const char *why) {
    o->tag = IOTHUB_ROUTE_TYPES_OUTCOME_RETRY;
    route_string_dup(&o->val.retry, why);
}

void outcome_reject(route_outcome_t *o, const char *why) {
    o->tag = IOTHUB_ROUTE_TYPES_OUTCOME_REJECT;
    route_string_dup(&o->val.reject, why);
}

void log_text(iothub_route_log_level_t level, const char *text) {
    route_string_t s;
    route_string_set(&s, text);
    iothub_route_log_log(level, &s);
}
