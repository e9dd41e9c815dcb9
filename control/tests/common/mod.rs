//! Test databases for the store and registry tests: every test runs once on SQLite (a
//! temporary file) and once on PostgreSQL (a fresh schema on the machine's server). The
//! PostgreSQL run fails, never skips, when the server is unreachable.

#![allow(dead_code)]

use std::sync::Arc;

use iothub_control::ApiKeyId;
use iothub_control::records::AccountRecord;
use iothub_control::records::ApiKeyRecord;
use iothub_control::store::{SqlStore, Store};
use iothub_control::testing::{self, PostgresSchema};
use iothub_control::{AccountId, Timestamp};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// One test's database: a URL to open stores on, and what to clean up.
pub struct TestDb {
    pub backend: Backend,
    pub url: String,
    _dir: Option<tempfile::TempDir>,
    schema: Option<PostgresSchema>,
}

impl TestDb {
    pub async fn new(backend: Backend) -> Self {
        match backend {
            Backend::Sqlite => {
                let dir = tempfile::tempdir().expect("temp dir");
                Self {
                    backend,
                    url: testing::sqlite_url(dir.path()),
                    _dir: Some(dir),
                    schema: None,
                }
            }
            Backend::Postgres => {
                let schema = PostgresSchema::create().await.unwrap_or_else(|e| {
                    panic!(
                        "PostgreSQL test server unreachable ({}; set {} to another server): {e}",
                        testing::DEFAULT_POSTGRES_URL,
                        testing::POSTGRES_URL_VAR
                    )
                });
                Self {
                    backend,
                    url: schema.url(),
                    _dir: None,
                    schema: Some(schema),
                }
            }
        }
    }

    /// A new, migrated store on this database.
    pub async fn open(&self) -> SqlStore {
        let store = SqlStore::open(&self.url).await.expect("open store");
        store.migrate().await.expect("migrate");
        store
    }

    pub async fn finish(self) {
        if let Some(schema) = self.schema {
            schema.drop_schema().await.expect("drop test schema");
        }
    }
}

/// Runs `body` on a fresh database of `backend`, then cleans up (a failed test leaves its
/// PostgreSQL schema for inspection).
pub async fn run(backend: Backend, body: impl AsyncFnOnce(&TestDb)) {
    let db = TestDb::new(backend).await;
    body(&db).await;
    db.finish().await;
}

/// Declares `mod $name { sqlite, postgres }` tests running `async fn $name(&TestDb)`.
#[macro_export]
macro_rules! on_both_backends {
    ($($name:ident),+ $(,)?) => {
        $(
            mod $name {
                use super::common::{run, Backend};
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn sqlite() {
                    run(Backend::Sqlite, super::$name).await;
                }
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn postgres() {
                    run(Backend::Postgres, super::$name).await;
                }
            }
        )+
    };
}

/// An account (with a key) inserted directly into the store.
pub async fn account(store: &dyn Store, name: &str) -> AccountRecord {
    let account = AccountRecord {
        id: AccountId::new_random(),
        name: name.to_owned(),
        is_admin: false,
        created_at: Timestamp::now(),
    };
    let key = ApiKeyRecord {
        id: ApiKeyId::new_random(),
        account_id: account.id,
        secret_hash: format!("hash-of-{}", account.id),
        created_at: Timestamp::now(),
    };
    store
        .insert_account(&account, &key)
        .await
        .expect("insert account");
    account
}

pub fn shared(store: SqlStore) -> Arc<dyn Store> {
    Arc::new(store)
}
