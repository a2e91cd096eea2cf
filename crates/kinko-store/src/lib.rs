//! Storage for kinko: sqlx's `Any` driver over SQLite (the embedded default) or PostgreSQL, chosen by
//! the URL. One portable schema (TEXT and BIGINT only) and one set of queries serve both; the few
//! differences (row locks, transaction start) go through [`Backend`].
//!
//! Every write that must be atomic runs in a transaction from [`Store::begin_write`]. Amounts are
//! decimal TEXT; byte strings are lower-case hex.

pub mod account_deletion;
pub mod address_book;
pub mod aml;
pub mod audit;
pub mod backup;
pub mod btc;
pub mod cold;
pub mod customer_mfa;
pub mod customers;
pub mod deposit_detection;
pub mod deposits;
pub mod evacuation;
pub mod freeze;
pub mod internal_transfers;
pub mod kek_rotation;
pub mod key_lifecycle;
pub mod ledger;
pub mod login_protection;
pub mod monitoring;
pub mod notices;
pub mod onboarding;
pub mod operators;
pub mod ops_requests;
pub mod pipeline;
pub mod policies;
pub mod seal_records;
pub mod signer_records;
pub mod signer_registry;
pub mod sweeps;
pub mod testing;
pub mod withdrawal_confirmations;
pub mod withdrawal_requests;
pub mod withdrawals;

use std::str::FromStr;
use std::time::Duration;

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{Any, AnyPool, Transaction};

pub use sqlx;

pub type Tx = Transaction<'static, Any>;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    #[error("migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("ledger: {0}")]
    Ledger(#[from] kinko_core::ledger::LedgerError),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    #[error("unsupported database URL {0:?}: use sqlite://… or postgres://…")]
    UnsupportedUrl(String),
    #[error("not found")]
    NotFound,
    #[error("conflict: {0}")]
    Conflict(String),
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Bound on pooled connections; SQLite serialises writers anyway.
pub const POOL_CONNECTIONS_MAX: u32 = 8;
/// How long a writer waits for SQLite's lock before giving up.
pub const SQLITE_BUSY_TIMEOUT_MS: u64 = 10_000;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

#[derive(Clone, Debug)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
}

impl Store {
    /// Connects and applies pending migrations. SQLite files are created when missing, run in WAL mode
    /// with `synchronous=FULL` so that a committed write survives power loss, not just a crash.
    pub async fn connect(url: &str) -> Result<Store> {
        Store::connect_with(url, &MIGRATOR).await
    }

    /// [`Store::connect`] applying `migrator`'s migrations (a restore first migrates to a backup's set).
    pub(crate) async fn connect_with(url: &str, migrator: &sqlx::migrate::Migrator) -> Result<Store> {
        sqlx::any::install_default_drivers();
        let backend = if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            Backend::Postgres
        } else {
            return Err(StoreError::UnsupportedUrl(url.to_string()));
        };
        let url = match backend {
            Backend::Sqlite if !url.contains('?') => format!("{url}?mode=rwc"),
            _ => url.to_string(),
        };
        let options = AnyConnectOptions::from_str(&url)?;
        let pool = AnyPoolOptions::new()
            .max_connections(POOL_CONNECTIONS_MAX)
            .acquire_timeout(Duration::from_secs(30))
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    if backend == Backend::Sqlite {
                        use sqlx::Executor;
                        let pragmas = format!(
                            "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; PRAGMA foreign_keys=ON; PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS};"
                        );
                        conn.execute(sql(pragmas)).await?;
                    }
                    Ok(())
                })
            })
            .connect_with(options)
            .await?;
        migrator.run(&pool).await?;
        Ok(Store { pool, backend })
    }

    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Starts a write transaction. On SQLite it takes the write lock up front (`BEGIN IMMEDIATE`), so a
    /// read-then-write transaction never fails half-way on a lock upgrade.
    pub async fn begin_write(&self) -> Result<Tx> {
        Ok(match self.backend {
            Backend::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await?,
            Backend::Postgres => self.pool.begin().await?,
        })
    }

    /// The row-lock suffix for a `SELECT` inside a write transaction. SQLite needs none: `BEGIN
    /// IMMEDIATE` already holds the database's single write lock.
    pub fn for_update(&self) -> &'static str {
        match self.backend {
            Backend::Sqlite => "",
            Backend::Postgres => " FOR UPDATE",
        }
    }

    /// Like [`Store::for_update`], skipping rows another instance holds (work claiming, PostgreSQL).
    pub fn for_update_skip_locked(&self) -> &'static str {
        match self.backend {
            Backend::Sqlite => "",
            Backend::Postgres => " FOR UPDATE SKIP LOCKED",
        }
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }

    pub async fn meta_get(&self, name: &str) -> Result<Option<String>> {
        Ok(sqlx::query_scalar::<_, String>("SELECT value FROM meta WHERE name = $1")
            .bind(name)
            .fetch_optional(&self.pool)
            .await?)
    }

    /// Sets a meta value only if it is unset; returns the value that is stored afterwards.
    pub async fn meta_init(&self, name: &str, value: &str) -> Result<String> {
        let mut tx = self.begin_write().await?;
        let existing = sqlx::query_scalar::<_, String>("SELECT value FROM meta WHERE name = $1")
            .bind(name)
            .fetch_optional(&mut *tx)
            .await?;
        let stored = match existing {
            Some(v) => v,
            None => {
                sqlx::query("INSERT INTO meta (name, value) VALUES ($1, $2)")
                    .bind(name)
                    .bind(value)
                    .execute(&mut *tx)
                    .await?;
                value.to_string()
            }
        };
        tx.commit().await?;
        Ok(stored)
    }

    /// Takes the next value of a named counter inside the caller's transaction.
    pub async fn next_counter(&self, tx: &mut Tx, name: &str) -> Result<i64> {
        let q = format!("SELECT value FROM counters WHERE name = $1{}", self.for_update());
        let current = sqlx::query_scalar::<_, i64>(sql(q)).bind(name).fetch_optional(&mut **tx).await?;
        let value = match current {
            Some(v) => {
                sqlx::query("UPDATE counters SET value = $1 WHERE name = $2")
                    .bind(v + 1)
                    .bind(name)
                    .execute(&mut **tx)
                    .await?;
                v
            }
            None => {
                sqlx::query("INSERT INTO counters (name, value) VALUES ($1, $2)")
                    .bind(name)
                    .bind(1_i64)
                    .execute(&mut **tx)
                    .await?;
                0
            }
        };
        Ok(value)
    }
}

/// Held while this instance is the only one doing a singleton job (e.g. watching one chain). On
/// PostgreSQL it is a session advisory lock on a dedicated connection, so a killed instance releases it
/// when its connection drops; on SQLite (one instance by design) it is always granted.
pub struct ExclusiveLease {
    _conn: Option<sqlx::pool::PoolConnection<Any>>,
}

impl Store {
    /// Tries to become the one instance running `job`; `None` means another instance holds it.
    pub async fn try_exclusive(&self, job: &str) -> Result<Option<ExclusiveLease>> {
        if self.backend == Backend::Sqlite {
            return Ok(Some(ExclusiveLease { _conn: None }));
        }
        use sha2::Digest;
        let digest = sha2::Sha256::digest(format!("kinko:{job}").as_bytes());
        let key = i64::from_be_bytes(digest[..8].try_into().expect("8 bytes"));
        let mut conn = self.pool.acquire().await?;
        let got: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)").bind(key).fetch_one(&mut *conn).await?;
        Ok(got.then_some(ExclusiveLease { _conn: Some(conn) }))
    }
}

/// Marks a query string built by concatenating *static* SQL fragments (column lists, the row-lock
/// suffix from [`Store::for_update`]) as audited. Never pass anything derived from input: values go
/// through `.bind()`.
pub fn sql(fragments_only: String) -> sqlx::AssertSqlSafe<String> {
    sqlx::AssertSqlSafe(fragments_only)
}

/// Parses a decimal TEXT column into a u128, or reports the corruption.
pub fn parse_u128(column: &str, s: &str) -> Result<u128> {
    s.parse::<u128>().map_err(|_| StoreError::Corrupt(format!("{column}: {s:?} is not a decimal u128")))
}

pub fn parse_hash(column: &str, s: &str) -> Result<[u8; 32]> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(s, &mut out)
        .map_err(|_| StoreError::Corrupt(format!("{column}: {s:?} is not a 32-byte hex hash")))?;
    Ok(out)
}
