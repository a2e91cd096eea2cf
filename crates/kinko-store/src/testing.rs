//! Real stores for tests: a SQLite store in a fresh temporary directory, and a PostgreSQL store on a
//! fresh database when a server is available. Every integration test that touches storage runs against
//! all of them, so "the same suite passes on SQLite and on PostgreSQL" is checked, not assumed.
//!
//! Environment (set by `scripts/test`, which starts a temporary PostgreSQL cluster):
//! - `KINKO_TEST_POSTGRES_URL` — an admin URL, e.g. `postgres://kinko@127.0.0.1:5433/postgres`. Each
//!   PostgreSQL test store gets its own database (`CREATE DATABASE t_<random hex>`), dropped again when
//!   the [`TestStore`] is dropped, so tests never see each other's rows.
//! - `KINKO_TEST_REQUIRE_POSTGRES=1` — a missing URL is a test failure instead of a silent SQLite-only
//!   run, so CI cannot quietly stop testing PostgreSQL.
//!
//! This module is for tests only; it panics on set-up failures because a test cannot go on without its
//! database.
//!
//! ```no_run
//! # async fn t() {
//! for ts in kinko_store::testing::test_stores().await {
//!     // ... exercise ts.store; name ts.name in assertion messages
//! #   let _ = ts.name;
//! }
//! # }
//! ```

use std::time::Duration;

use sqlx::Connection;

use crate::Store;

pub const POSTGRES_URL_ENV: &str = "KINKO_TEST_POSTGRES_URL";
pub const REQUIRE_POSTGRES_ENV: &str = "KINKO_TEST_REQUIRE_POSTGRES";

/// Bound on how long dropping a PostgreSQL test database may take; a slow drop only leaks a database in a
/// throw-away cluster.
const DROP_DATABASE_TIMEOUT: Duration = Duration::from_secs(10);

/// One store under test, with what keeps its backing storage alive.
pub struct TestStore {
    /// `"sqlite"` or `"postgres"`; put it in assertion messages so a failure names its backend.
    pub name: &'static str,
    pub store: Store,
    /// The URL the store was opened with (e.g. to start a `kinko serve` process on the same database).
    pub url: String,
    _guard: Guard,
}

/// Held only for its `Drop`: the directory or database goes when the test store goes.
enum Guard {
    Sqlite { _dir: tempfile::TempDir },
    Postgres { _database: PgDatabase },
}

/// A scratch database, dropped (with `WITH (FORCE)`, PostgreSQL 13+) when the guard goes.
struct PgDatabase {
    admin_url: String,
    name: String,
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        let admin_url = self.admin_url.clone();
        // The name is "t_" and hex digits only (see postgres_store).
        let sql = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
        // Drop runs inside the test's runtime, which cannot be blocked on; a separate thread with its own
        // small runtime does the work.
        let worker = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else { return };
            rt.block_on(async {
                let _ = tokio::time::timeout(DROP_DATABASE_TIMEOUT, async {
                    if let Ok(mut conn) = sqlx::PgConnection::connect(&admin_url).await {
                        let _ = sqlx::query(sqlx::AssertSqlSafe(sql)).execute(&mut conn).await;
                        let _ = conn.close().await;
                    }
                })
                .await;
            });
        });
        let _ = worker.join();
    }
}

impl std::ops::Deref for TestStore {
    type Target = Store;
    fn deref(&self) -> &Store {
        &self.store
    }
}

/// Every backend available to this test run: SQLite always, PostgreSQL when `KINKO_TEST_POSTGRES_URL` is
/// set. Panics if `KINKO_TEST_REQUIRE_POSTGRES=1` and the URL is not set.
pub async fn test_stores() -> Vec<TestStore> {
    let mut stores = vec![sqlite_store().await];
    if let Some(pg) = postgres_store().await {
        stores.push(pg);
    }
    stores
}

/// A migrated SQLite store in a fresh temporary directory.
pub async fn sqlite_store() -> TestStore {
    let dir = tempfile::tempdir().expect("create a temporary directory for the SQLite test store");
    let url = format!("sqlite://{}", dir.path().join("kinko.db").display());
    let store = Store::connect(&url).await.unwrap_or_else(|e| panic!("open SQLite test store {url}: {e}"));
    TestStore { name: "sqlite", store, url, _guard: Guard::Sqlite { _dir: dir } }
}

/// The admin URL of the test PostgreSQL server, if this run has one. Panics if PostgreSQL is required
/// (`KINKO_TEST_REQUIRE_POSTGRES=1`) but no URL is set.
pub fn postgres_admin_url() -> Option<String> {
    match std::env::var(POSTGRES_URL_ENV) {
        Ok(url) if !url.trim().is_empty() => Some(url),
        _ => {
            if std::env::var(REQUIRE_POSTGRES_ENV).is_ok_and(|v| v == "1") {
                panic!(
                    "{REQUIRE_POSTGRES_ENV}=1 but {POSTGRES_URL_ENV} is not set: PostgreSQL tests would be \
                     skipped. Run the tests through scripts/test, which starts a temporary cluster."
                );
            }
            None
        }
    }
}

/// A migrated PostgreSQL store on a fresh database, or `None` when this run has no PostgreSQL server
/// (and does not require one).
pub async fn postgres_store() -> Option<TestStore> {
    let admin_url = postgres_admin_url()?;
    let name = format!("t_{}", uuid::Uuid::new_v4().simple());
    let mut admin = sqlx::PgConnection::connect(&admin_url)
        .await
        .unwrap_or_else(|e| panic!("connect to the test PostgreSQL server ({POSTGRES_URL_ENV}): {e}"));
    // The name is "t_" and hex digits only, made here; nothing from outside reaches this SQL.
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut admin)
        .await
        .unwrap_or_else(|e| panic!("CREATE DATABASE {name}: {e}"));
    let _ = admin.close().await;
    let guard = PgDatabase { admin_url: admin_url.clone(), name: name.clone() };
    let url = with_database(&admin_url, &name);
    let store = Store::connect(&url).await.unwrap_or_else(|e| panic!("open PostgreSQL test store {url}: {e}"));
    Some(TestStore { name: "postgres", store, url, _guard: Guard::Postgres { _database: guard } })
}

/// Replaces the database name (the URL path) of a PostgreSQL URL, keeping any query string.
fn with_database(url: &str, database: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    // The authority ends at the first '/' after "scheme://".
    let after_scheme = base.find("://").map_or(0, |i| i + 3);
    let authority_end = base[after_scheme..].find('/').map_or(base.len(), |i| after_scheme + i);
    let mut out = format!("{}/{database}", &base[..authority_end]);
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::with_database;

    /// Test tooling (no requirement): each PostgreSQL test store gets its own database.
    #[test]
    fn database_name_is_replaced_and_query_kept() {
        assert_eq!(with_database("postgres://kinko@127.0.0.1:5/postgres", "t_1"), "postgres://kinko@127.0.0.1:5/t_1");
        assert_eq!(with_database("postgres://k@h:5", "t_1"), "postgres://k@h:5/t_1");
        assert_eq!(with_database("postgres://k@h:5/db?sslmode=disable", "t_1"), "postgres://k@h:5/t_1?sslmode=disable");
    }
}
