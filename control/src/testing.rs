//! Databases and certificates for tests, shared by this crate's tests, the API's and the
//! end-to-end suite ([`openssl`] makes certificates with the `openssl` tool).
//!
//! PostgreSQL tests use the machine's server (`postgres://postgres@127.0.0.1:5432/test`,
//! or `IOTHUB_TEST_POSTGRES_URL`), each in a fresh schema so tests run in parallel and
//! leave nothing behind. An unreachable server is an error, never a skip: a PostgreSQL
//! test that cannot reach PostgreSQL must fail.

pub mod openssl;

use std::path::Path;

use sqlx::Connection;

use crate::store::{SqlStore, StoreError};

/// The variable that overrides the test server's URL.
pub const POSTGRES_URL_VAR: &str = "IOTHUB_TEST_POSTGRES_URL";
/// The test server when the variable is unset.
pub const DEFAULT_POSTGRES_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

/// The URL of a SQLite database file `iothub.db` in `dir` (created on first connection).
pub fn sqlite_url(dir: &Path) -> String {
    SqlStore::sqlite_url(&dir.join("iothub.db"))
}

/// A fresh PostgreSQL schema; [`PostgresSchema::url`] connects with it as `search_path`.
/// Drop it explicitly with [`PostgresSchema::drop_schema`] at the end of a test (a `Drop`
/// impl could not run the async query).
#[derive(Debug)]
pub struct PostgresSchema {
    base_url: String,
    pub schema: String,
}

fn base_url() -> String {
    std::env::var(POSTGRES_URL_VAR).unwrap_or_else(|_| DEFAULT_POSTGRES_URL.to_owned())
}

impl PostgresSchema {
    /// Creates `t_<random>` on the test server.
    pub async fn create() -> Result<Self, StoreError> {
        let base_url = base_url();
        let schema = format!("t_{}", uuid::Uuid::new_v4().simple());
        let mut conn = sqlx::PgConnection::connect(&base_url).await?;
        sqlx::query(&format!("CREATE SCHEMA {schema}"))
            .execute(&mut conn)
            .await?;
        conn.close().await?;
        Ok(Self { base_url, schema })
    }

    /// The test server's URL with this schema as the search path.
    pub fn url(&self) -> String {
        let sep = if self.base_url.contains('?') {
            '&'
        } else {
            '?'
        };
        format!(
            "{}{sep}options=-c%20search_path%3D{}",
            self.base_url, self.schema
        )
    }

    pub async fn drop_schema(self) -> Result<(), StoreError> {
        let mut conn = sqlx::PgConnection::connect(&self.base_url).await?;
        sqlx::query(&format!("DROP SCHEMA {} CASCADE", self.schema))
            .execute(&mut conn)
            .await?;
        conn.close().await?;
        Ok(())
    }
}
