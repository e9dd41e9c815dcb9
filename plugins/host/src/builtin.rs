//! The built-in route components (plugins/routes), compiled for wasm32 by build.rs and
//! embedded in the binary.

/// A built-in route type of the reference (`type` of a route).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BuiltinKind {
    /// `rest_config {verb, uri, headers}`.
    Rest,
    /// `s3_config {bucket_region, bucket_name, object_prefix, strategy}`.
    S3,
    /// `db_config {engine, host, port, dbname, username, password, query}`.
    Database,
}

static REST: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/rest.wasm"));
static S3: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/s3.wasm"));
static DATABASE: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/database.wasm"));

impl BuiltinKind {
    pub const ALL: [BuiltinKind; 3] = [BuiltinKind::Rest, BuiltinKind::S3, BuiltinKind::Database];

    /// The component's bytes (a wasm component of the `route` world).
    pub fn component_bytes(self) -> &'static [u8] {
        match self {
            BuiltinKind::Rest => REST,
            BuiltinKind::S3 => S3,
            BuiltinKind::Database => DATABASE,
        }
    }

    /// The reference's name of the route type.
    pub fn as_str(self) -> &'static str {
        match self {
            BuiltinKind::Rest => "rest",
            BuiltinKind::S3 => "s3",
            BuiltinKind::Database => "database",
        }
    }
}
