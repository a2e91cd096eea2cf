//! Logical dump and load of the whole database for backups (A4, K17), portable between SQLite and
//! PostgreSQL.
//!
//! The dump reads every table inside ONE read transaction ([`Store::begin_snapshot`]: a deferred `BEGIN`
//! on SQLite, whose WAL gives the transaction one snapshot; `REPEATABLE READ READ ONLY` on PostgreSQL), so
//! the backup is a point in time even while kinko keeps running. Tables come in dependency order (a table
//! after every table its foreign keys name) and each row is a JSON array of its column values — TEXT as
//! strings, BIGINT as integers, NULL as null — which is all the schema uses (see "Storage portability").
//!
//! The load ([`Store::begin_load`]) writes into a database that holds nothing but what the migrations
//! seed: it removes the seeded rows and inserts every row in one write transaction, so a failed load
//! leaves the database as it was. Table and column names coming from a backup are checked against the
//! target's own schema before any SQL is built with them.
//!
//! Encryption, integrity and the file format are the binary's business (`kinko backup`); this module
//! only moves rows.

use std::collections::{BTreeMap, BTreeSet};
use std::str::FromStr;

use futures_util::TryStreamExt;
use serde::{Deserialize, Serialize};
use sqlx::Row;
use sqlx::any::{AnyConnectOptions, AnyPoolOptions};

use crate::{Backend, MIGRATOR, Store, StoreError, Tx, sql};

/// The migrations bookkeeping table: never dumped; its content is recorded as [`AppliedMigration`]s.
pub const MIGRATIONS_TABLE: &str = "_sqlx_migrations";
/// Bound on the length of a table or column name accepted from a backup (PostgreSQL's own limit).
pub const IDENT_LEN_MAX: usize = 63;
/// Bound on tables one backup may carry.
pub const TABLES_MAX: usize = 1_000;

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the schema cannot be backed up portably: {0}")]
    Schema(String),
    /// The restore target holds data; the reason names what was found.
    #[error("the target database is not empty: {0}")]
    NotEmpty(String),
    #[error("the backup does not fit this kinko's schema: {0}")]
    Incompatible(String),
    #[error("row {row} of table {table}: {reason}")]
    BadRow { table: String, row: u64, reason: String },
    /// The caller's sink (e.g. the backup file) failed; the dump stopped.
    #[error("writing the dump: {0}")]
    Sink(String),
}

impl From<sqlx::Error> for BackupError {
    fn from(e: sqlx::Error) -> Self {
        BackupError::Store(StoreError::Db(e))
    }
}

impl From<sqlx::migrate::MigrateError> for BackupError {
    fn from(e: sqlx::migrate::MigrateError) -> Self {
        BackupError::Store(StoreError::Migrate(e))
    }
}

pub type Result<T, E = BackupError> = std::result::Result<T, E>;

/// What a column holds; the schema uses nothing else.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ColumnKind {
    Text,
    Bigint,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Column {
    pub name: String,
    pub kind: ColumnKind,
}

/// One table as the dump sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableSchema {
    pub name: String,
    pub columns: Vec<Column>,
    /// The primary-key columns (the dump's row order); empty when the table has none.
    #[serde(default)]
    pub primary_key: Vec<String>,
}

/// A migration the source database had applied.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppliedMigration {
    pub version: i64,
    pub description: String,
    /// sqlx's checksum of the migration's SQL, hex: a backup is only loaded under the same migration.
    pub checksum_hex: String,
}

/// A read transaction that sees one point in time.
pub struct Snapshot {
    tx: Tx,
    backend: Backend,
}

/// `true` for names the schema could have made: lower-case ASCII letters, digits and `_`, not starting
/// with a digit. Anything else in a backup is refused before it reaches SQL.
pub fn ident_ok(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= IDENT_LEN_MAX
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        && !name.as_bytes()[0].is_ascii_digit()
}

fn quoted(name: &str) -> Result<String> {
    if !ident_ok(name) {
        return Err(BackupError::Schema(format!("{name:?} is not a plain lower-case identifier")));
    }
    Ok(format!("\"{name}\""))
}

fn kind_of(table: &str, column: &str, declared: &str) -> Result<ColumnKind> {
    let t = declared.to_ascii_lowercase();
    if t.contains("int") {
        Ok(ColumnKind::Bigint)
    } else if t == "text" || t.starts_with("character varying") || t.starts_with("varchar") {
        Ok(ColumnKind::Text)
    } else {
        Err(BackupError::Schema(format!("{table}.{column} has type {declared:?}; only TEXT and BIGINT are portable")))
    }
}

/// The database's tables (without the migrations table), their columns and primary keys, in dependency
/// order. Works on any executor: a snapshot's transaction or the pool.
async fn read_schema(conn: &mut sqlx::AnyConnection, backend: Backend) -> Result<Vec<TableSchema>> {
    let names: Vec<String> = match backend {
        Backend::Sqlite => {
            sqlx::query_scalar(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name",
            )
            .fetch_all(&mut *conn)
            .await?
        }
        Backend::Postgres => {
            sqlx::query_scalar(
                "SELECT table_name::text FROM information_schema.tables \
                 WHERE table_schema = current_schema() AND table_type = 'BASE TABLE' ORDER BY table_name",
            )
            .fetch_all(&mut *conn)
            .await?
        }
    };
    let names: Vec<String> = names.into_iter().filter(|n| n != MIGRATIONS_TABLE).collect();
    if names.len() > TABLES_MAX {
        return Err(BackupError::Schema(format!("{} tables, more than {TABLES_MAX}", names.len())));
    }
    let mut tables = BTreeMap::new();
    for name in &names {
        quoted(name)?;
        let (columns, primary_key) = match backend {
            Backend::Sqlite => {
                let rows = sqlx::query("SELECT name, type, pk FROM pragma_table_info($1) ORDER BY cid")
                    .bind(name)
                    .fetch_all(&mut *conn)
                    .await?;
                let mut columns = Vec::new();
                let mut pk: Vec<(i64, String)> = Vec::new();
                for r in rows {
                    let column: String = r.try_get(0)?;
                    let declared: String = r.try_get(1)?;
                    let position: i64 = r.try_get(2)?;
                    quoted(&column)?;
                    columns.push(Column { kind: kind_of(name, &column, &declared)?, name: column.clone() });
                    if position > 0 {
                        pk.push((position, column));
                    }
                }
                pk.sort();
                (columns, pk.into_iter().map(|(_, c)| c).collect())
            }
            Backend::Postgres => {
                let rows = sqlx::query(
                    "SELECT column_name::text, data_type::text FROM information_schema.columns \
                     WHERE table_schema = current_schema() AND table_name = $1 ORDER BY ordinal_position",
                )
                .bind(name)
                .fetch_all(&mut *conn)
                .await?;
                let mut columns = Vec::new();
                for r in rows {
                    let column: String = r.try_get(0)?;
                    let declared: String = r.try_get(1)?;
                    quoted(&column)?;
                    columns.push(Column { kind: kind_of(name, &column, &declared)?, name: column });
                }
                let pk: Vec<String> = sqlx::query_scalar(
                    "SELECT a.attname::text FROM pg_index i \
                     JOIN pg_class c ON c.oid = i.indrelid \
                     JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) \
                     WHERE i.indisprimary AND c.relname = $1 AND c.relnamespace = (SELECT oid FROM pg_namespace WHERE nspname = current_schema()) \
                     ORDER BY a.attnum",
                )
                .bind(name)
                .fetch_all(&mut *conn)
                .await?;
                (columns, pk)
            }
        };
        if columns.is_empty() {
            return Err(BackupError::Schema(format!("table {name} has no columns")));
        }
        tables.insert(name.clone(), TableSchema { name: name.clone(), columns, primary_key });
    }
    let edges: Vec<(String, String)> = match backend {
        Backend::Sqlite => {
            let rows = sqlx::query(
                "SELECT m.name, p.\"table\" FROM sqlite_master m, pragma_foreign_key_list(m.name) p \
                 WHERE m.type = 'table'",
            )
            .fetch_all(&mut *conn)
            .await?;
            rows.iter().map(|r| Ok((r.try_get(0)?, r.try_get(1)?))).collect::<Result<_, sqlx::Error>>()?
        }
        Backend::Postgres => {
            let rows = sqlx::query(
                "SELECT c1.relname::text, c2.relname::text FROM pg_constraint k \
                 JOIN pg_class c1 ON c1.oid = k.conrelid JOIN pg_class c2 ON c2.oid = k.confrelid \
                 WHERE k.contype = 'f' AND c1.relnamespace = (SELECT oid FROM pg_namespace WHERE nspname = current_schema())",
            )
            .fetch_all(&mut *conn)
            .await?;
            rows.iter().map(|r| Ok((r.try_get(0)?, r.try_get(1)?))).collect::<Result<_, sqlx::Error>>()?
        }
    };
    dependency_order(tables, &edges)
}

/// Kahn's algorithm over "child references parent" edges, ties broken by name so the order is stable.
/// Self-references are ignored (no table references itself today; such rows would need ordering).
fn dependency_order(mut tables: BTreeMap<String, TableSchema>, edges: &[(String, String)]) -> Result<Vec<TableSchema>> {
    let mut parents: BTreeMap<&str, BTreeSet<&str>> = tables.keys().map(|k| (k.as_str(), BTreeSet::new())).collect();
    for (child, parent) in edges {
        if child != parent
            && tables.contains_key(parent)
            && let Some(set) = parents.get_mut(child.as_str())
        {
            set.insert(parent.as_str());
        }
    }
    let mut order: Vec<String> = Vec::with_capacity(tables.len());
    let mut done: BTreeSet<String> = BTreeSet::new();
    while order.len() < parents.len() {
        let next = parents
            .iter()
            .find(|(name, ps)| !done.contains(**name) && ps.iter().all(|p| done.contains(*p)))
            .map(|(name, _)| name.to_string());
        let Some(next) = next else {
            let rest: Vec<&str> = parents.keys().filter(|n| !done.contains(**n)).copied().collect();
            return Err(BackupError::Schema(format!("foreign keys form a cycle among {rest:?}")));
        };
        done.insert(next.clone());
        order.push(next);
    }
    Ok(order.into_iter().filter_map(|n| tables.remove(&n)).collect())
}

async fn applied_migrations(conn: &mut sqlx::AnyConnection) -> Result<Vec<AppliedMigration>> {
    let rows = sqlx::query(sql(format!(
        "SELECT version, description, checksum FROM {MIGRATIONS_TABLE} WHERE success ORDER BY version"
    )))
    .fetch_all(&mut *conn)
    .await?;
    rows.iter()
        .map(|r| {
            Ok(AppliedMigration {
                version: r.try_get(0)?,
                description: r.try_get(1)?,
                checksum_hex: hex::encode(r.try_get::<Vec<u8>, _>(2)?),
            })
        })
        .collect()
}

impl Store {
    /// Opens a read transaction that sees one point in time for the whole dump.
    pub async fn begin_snapshot(&self) -> Result<Snapshot> {
        let tx = match self.backend {
            // Deferred: the snapshot starts at the first read and holds (WAL) until the end; writers go on.
            Backend::Sqlite => self.pool.begin_with("BEGIN").await?,
            Backend::Postgres => self.pool.begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY").await?,
        };
        Ok(Snapshot { tx, backend: self.backend })
    }
}

impl Snapshot {
    pub async fn migrations(&mut self) -> Result<Vec<AppliedMigration>> {
        applied_migrations(&mut self.tx).await
    }

    /// Every table, in dependency order.
    pub async fn tables(&mut self) -> Result<Vec<TableSchema>> {
        read_schema(&mut self.tx, self.backend).await
    }

    /// Streams `table`'s rows in primary-key order to `row`, as JSON arrays in column order. Returns the
    /// number of rows.
    pub async fn dump_table<F>(&mut self, table: &TableSchema, mut row: F) -> Result<u64>
    where
        F: FnMut(Vec<serde_json::Value>) -> std::result::Result<(), String>,
    {
        let columns: Vec<String> = table.columns.iter().map(|c| quoted(&c.name)).collect::<Result<_>>()?;
        let order: Vec<String> = if table.primary_key.is_empty() {
            (1..=columns.len()).map(|i| i.to_string()).collect()
        } else {
            table.primary_key.iter().map(|c| quoted(c)).collect::<Result<_>>()?
        };
        let q = format!("SELECT {} FROM {} ORDER BY {}", columns.join(", "), quoted(&table.name)?, order.join(", "));
        let mut rows = sqlx::query(sql(q)).fetch(&mut *self.tx);
        let mut count = 0_u64;
        while let Some(r) = rows.try_next().await? {
            count += 1;
            let mut values = Vec::with_capacity(table.columns.len());
            for (i, c) in table.columns.iter().enumerate() {
                let bad = |e: sqlx::Error| BackupError::BadRow {
                    table: table.name.clone(),
                    row: count,
                    reason: format!("column {}: {e}", c.name),
                };
                values.push(match c.kind {
                    ColumnKind::Text => {
                        r.try_get::<Option<String>, _>(i).map_err(bad)?.map_or(serde_json::Value::Null, Into::into)
                    }
                    ColumnKind::Bigint => {
                        r.try_get::<Option<i64>, _>(i).map_err(bad)?.map_or(serde_json::Value::Null, Into::into)
                    }
                });
            }
            row(values).map_err(BackupError::Sink)?;
        }
        Ok(count)
    }

    /// Ends the read transaction.
    pub async fn finish(self) -> Result<()> {
        self.tx.rollback().await?;
        Ok(())
    }
}

/// Checks one dumped row against its table: arity and each value's type. NULL is left to the target's
/// constraints.
pub fn check_row(table: &TableSchema, row_number: u64, values: &[serde_json::Value]) -> Result<()> {
    let bad = |reason: String| BackupError::BadRow { table: table.name.clone(), row: row_number, reason };
    if values.len() != table.columns.len() {
        return Err(bad(format!("{} values for {} columns", values.len(), table.columns.len())));
    }
    for (v, c) in values.iter().zip(&table.columns) {
        let ok = match (c.kind, v) {
            (_, serde_json::Value::Null) => true,
            (ColumnKind::Text, serde_json::Value::String(_)) => true,
            (ColumnKind::Bigint, serde_json::Value::Number(n)) => n.is_i64(),
            _ => false,
        };
        if !ok {
            return Err(bad(format!("column {} is {:?} but the value is not one", c.name, c.kind)));
        }
    }
    Ok(())
}

/// The file of a `sqlite:` URL (none for in-memory databases or other backends).
pub fn sqlite_file(url: &str) -> Option<std::path::PathBuf> {
    let rest = url.strip_prefix("sqlite://").or_else(|| url.strip_prefix("sqlite:"))?;
    let path = rest.split('?').next()?;
    (!path.is_empty() && path != ":memory:").then(|| std::path::PathBuf::from(path))
}

/// Opens a database without running migrations (to look at a restore target before touching it).
async fn open_unmigrated(url: &str) -> Result<(sqlx::AnyPool, Backend)> {
    sqlx::any::install_default_drivers();
    let backend = if url.starts_with("sqlite:") {
        Backend::Sqlite
    } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
        Backend::Postgres
    } else {
        return Err(StoreError::UnsupportedUrl(url.to_string()).into());
    };
    let url = match backend {
        Backend::Sqlite if !url.contains('?') => format!("{url}?mode=rwc"),
        _ => url.to_string(),
    };
    let pool = AnyPoolOptions::new().max_connections(1).connect_with(AnyConnectOptions::from_str(&url)?).await?;
    Ok((pool, backend))
}

async fn row_counts(conn: &mut sqlx::AnyConnection, tables: &[TableSchema]) -> Result<BTreeMap<String, i64>> {
    let mut out = BTreeMap::new();
    for t in tables {
        let n: i64 =
            sqlx::query_scalar(sql(format!("SELECT COUNT(*) FROM {}", quoted(&t.name)?))).fetch_one(&mut *conn).await?;
        out.insert(t.name.clone(), n);
    }
    Ok(out)
}

/// A throw-away SQLite database migrated with `migrator`: what "nothing but the seeded rows" looks like,
/// and the schema a backup's migration set produces.
async fn template(migrator: &sqlx::migrate::Migrator) -> Result<(Vec<TableSchema>, BTreeMap<String, i64>)> {
    let dir = tempfile::tempdir().map_err(|e| BackupError::Sink(format!("temporary directory: {e}")))?;
    let url = format!("sqlite://{}", dir.path().join("template.db").display());
    let (pool, backend) = open_unmigrated(&url).await?;
    migrator.run(&pool).await?;
    let mut conn = pool.acquire().await?;
    let tables = read_schema(&mut conn, backend).await?;
    let counts = row_counts(&mut conn, &tables).await?;
    drop(conn);
    pool.close().await;
    Ok((tables, counts))
}

/// This binary's migrations restricted to those a backup recorded, checked to be the same SQL. Refuses a
/// backup that needs a migration this kinko does not have (it was made by a newer kinko).
fn migrator_for(backup: &[AppliedMigration]) -> Result<sqlx::migrate::Migrator> {
    let mut chosen = Vec::with_capacity(backup.len());
    for m in backup {
        let Some(mine) = MIGRATOR.iter().find(|x| x.version == m.version) else {
            return Err(BackupError::Incompatible(format!(
                "the backup's schema has migration {} ({}) which this kinko does not know: restore with the kinko \
                 version that made the backup (or a newer one)",
                m.version, m.description
            )));
        };
        if hex::encode(&mine.checksum) != m.checksum_hex {
            return Err(BackupError::Incompatible(format!(
                "migration {} ({}) in the backup differs from this kinko's",
                m.version, m.description
            )));
        }
        chosen.push(mine.clone());
    }
    Ok(sqlx::migrate::Migrator::with_migrations(chosen))
}

/// Checks that a backup with `migrations` and `tables` loads into this kinko: every migration known and
/// identical, every table and column present with the same kind in the schema those migrations make.
/// Writes nothing outside a temporary directory.
pub async fn check_compatible(migrations: &[AppliedMigration], tables: &[TableSchema]) -> Result<()> {
    let (schema, _) = template(&migrator_for(migrations)?).await?;
    compare_schema(tables, &schema)
}

fn compare_schema(backup: &[TableSchema], target: &[TableSchema]) -> Result<()> {
    let target: BTreeMap<&str, &TableSchema> = target.iter().map(|t| (t.name.as_str(), t)).collect();
    for t in backup {
        let Some(mine) = target.get(t.name.as_str()) else {
            return Err(BackupError::Incompatible(format!("table {} is not in the schema", t.name)));
        };
        for c in &t.columns {
            match mine.columns.iter().find(|x| x.name == c.name) {
                None => {
                    return Err(BackupError::Incompatible(format!(
                        "column {}.{} is not in the schema",
                        t.name, c.name
                    )));
                }
                Some(x) if x.kind != c.kind => {
                    return Err(BackupError::Incompatible(format!(
                        "column {}.{} is {:?} in the backup but {:?} in the schema",
                        t.name, c.name, c.kind, x.kind
                    )));
                }
                Some(_) => {}
            }
        }
    }
    Ok(())
}

/// Refuses a restore target that holds anything: a database is empty when it has no tables, or when it
/// holds exactly what this kinko's migrations seed (a database `kinko` connected to and never used).
/// Runs no migration and writes nothing to the target.
pub async fn check_target_empty(url: &str) -> Result<()> {
    // A SQLite file that does not exist is empty; looking must not create it.
    if let Some(path) = sqlite_file(url)
        && !path.exists()
    {
        return Ok(());
    }
    let (pool, backend) = open_unmigrated(url).await?;
    let result = async {
        let mut conn = pool.acquire().await?;
        let tables = read_schema(&mut conn, backend).await?;
        if tables.is_empty() {
            return Ok(());
        }
        let counts = row_counts(&mut conn, &tables).await?;
        drop(conn);
        let (_, seeded) = template(&MIGRATOR).await?;
        for (table, n) in &counts {
            let expected = seeded.get(table).copied().unwrap_or(0);
            if *n != expected {
                return Err(BackupError::NotEmpty(format!(
                    "table {table} holds {n} rows (an unused database holds {expected}); restore only into an \
                     empty database"
                )));
            }
        }
        Ok(())
    }
    .await;
    pool.close().await;
    result
}

/// A load in progress: one write transaction on the target.
pub struct Loader {
    tx: Tx,
    tables: BTreeMap<String, TableSchema>,
    /// Prepared INSERT text per (table, column list), built once.
    inserts: BTreeMap<String, (String, Vec<ColumnKind>)>,
}

impl Store {
    /// Connects to an empty restore target and migrates it to exactly the backup's migrations (so the
    /// rows fit); [`Store::connect`] afterwards applies whatever newer migrations this kinko has.
    pub async fn connect_for_restore(url: &str, migrations: &[AppliedMigration]) -> Result<Store> {
        let migrator = migrator_for(migrations)?;
        check_target_empty(url).await?;
        // Newer migrations of this kinko (if any) run after the rows are in, at the next plain connect.
        let store = Store::connect_with(url, &migrator).await?;
        Ok(store)
    }

    /// Starts the load: one write transaction that first removes the rows the migrations seeded.
    pub async fn begin_load(&self) -> Result<Loader> {
        let mut tx = self.begin_write().await?;
        let tables = read_schema(&mut tx, self.backend).await?;
        for t in tables.iter().rev() {
            sqlx::query(sql(format!("DELETE FROM {}", quoted(&t.name)?))).execute(&mut *tx).await?;
        }
        let tables = tables.into_iter().map(|t| (t.name.clone(), t)).collect();
        Ok(Loader { tx, tables, inserts: BTreeMap::new() })
    }
}

impl Loader {
    /// Declares the next table's columns; checked against the target's schema before any row is built
    /// into SQL.
    pub fn table(&mut self, table: &TableSchema) -> Result<()> {
        let Some(mine) = self.tables.get(&table.name) else {
            return Err(BackupError::Incompatible(format!("table {} is not in the target's schema", table.name)));
        };
        compare_schema(std::slice::from_ref(table), std::slice::from_ref(mine))?;
        let columns: Vec<String> = table.columns.iter().map(|c| quoted(&c.name)).collect::<Result<_>>()?;
        let placeholders: Vec<String> = (1..=columns.len()).map(|i| format!("${i}")).collect();
        let q = format!(
            "INSERT INTO {} ({}) VALUES ({})",
            quoted(&table.name)?,
            columns.join(", "),
            placeholders.join(", ")
        );
        self.inserts.insert(table.name.clone(), (q, table.columns.iter().map(|c| c.kind).collect()));
        Ok(())
    }

    /// Inserts one row of a declared table (values already checked with [`check_row`]).
    pub async fn insert(&mut self, table: &str, row_number: u64, values: &[serde_json::Value]) -> Result<()> {
        let Some((q, kinds)) = self.inserts.get(table) else {
            return Err(BackupError::Incompatible(format!("rows for table {table} before its declaration")));
        };
        let bad = |reason: String| BackupError::BadRow { table: table.to_string(), row: row_number, reason };
        if values.len() != kinds.len() {
            return Err(bad(format!("{} values for {} columns", values.len(), kinds.len())));
        }
        let mut query = sqlx::query(sql(q.clone()));
        for (v, kind) in values.iter().zip(kinds) {
            query = match (kind, v) {
                (ColumnKind::Text, serde_json::Value::Null) => query.bind(None::<String>),
                (ColumnKind::Bigint, serde_json::Value::Null) => query.bind(None::<i64>),
                (ColumnKind::Text, serde_json::Value::String(s)) => query.bind(s.clone()),
                (ColumnKind::Bigint, serde_json::Value::Number(n)) => {
                    query.bind(n.as_i64().ok_or_else(|| bad("an integer does not fit BIGINT".into()))?)
                }
                _ => return Err(bad("a value does not match its column's type".into())),
            };
        }
        query.execute(&mut *self.tx).await.map_err(|e| bad(e.to_string()))?;
        Ok(())
    }

    /// Commits every row at once.
    pub async fn commit(self) -> Result<()> {
        self.tx.commit().await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(name: &str) -> TableSchema {
        TableSchema {
            name: name.into(),
            columns: vec![Column { name: "id".into(), kind: ColumnKind::Text }],
            primary_key: vec![],
        }
    }

    /// A4: tables come after every table they reference, whatever their names.
    #[test]
    fn a4_dependency_order_puts_parents_first() {
        let tables: BTreeMap<String, TableSchema> =
            ["a_child", "m_parent", "z_root"].iter().map(|n| (n.to_string(), t(n))).collect();
        let edges =
            vec![("a_child".to_string(), "m_parent".to_string()), ("m_parent".to_string(), "z_root".to_string())];
        let order: Vec<String> = dependency_order(tables, &edges).unwrap().into_iter().map(|t| t.name).collect();
        assert_eq!(order, ["z_root", "m_parent", "a_child"]);
    }

    #[test]
    fn a4_foreign_key_cycle_is_refused() {
        let tables: BTreeMap<String, TableSchema> = ["a", "b"].iter().map(|n| (n.to_string(), t(n))).collect();
        let edges = vec![("a".to_string(), "b".to_string()), ("b".to_string(), "a".to_string())];
        assert!(matches!(dependency_order(tables, &edges), Err(BackupError::Schema(_))));
    }

    #[test]
    fn a4_identifiers_from_a_backup_are_plain_or_refused() {
        assert!(ident_ok("ledger_entries"));
        assert!(ident_ok("_sqlx_migrations"));
        for bad in ["", "Users", "a;DROP", "x\"y", "1abc", "a b", &"a".repeat(64)] {
            assert!(!ident_ok(bad), "{bad:?}");
        }
    }

    #[test]
    fn a4_rows_are_checked_against_their_columns() {
        let table = TableSchema {
            name: "x".into(),
            columns: vec![
                Column { name: "a".into(), kind: ColumnKind::Text },
                Column { name: "b".into(), kind: ColumnKind::Bigint },
            ],
            primary_key: vec!["a".into()],
        };
        check_row(&table, 1, &["s".into(), 5.into()]).unwrap();
        check_row(&table, 1, &[serde_json::Value::Null, serde_json::Value::Null]).unwrap();
        assert!(check_row(&table, 1, &["s".into()]).is_err());
        assert!(check_row(&table, 1, &[5.into(), 5.into()]).is_err());
        assert!(check_row(&table, 1, &["s".into(), "5".into()]).is_err());
        assert!(check_row(&table, 1, &["s".into(), 1.5.into()]).is_err());
    }

    /// A4: a dump of a used store loads into an empty one with every row identical; a used store is refused.
    #[tokio::test]
    async fn a4_dump_and_load_round_trip_and_non_empty_target_is_refused() {
        for ts in crate::testing::test_stores().await {
            let backend = ts.name;
            ts.store.meta_init("backup_probe", "x").await.unwrap();
            let mut snap = ts.store.begin_snapshot().await.unwrap();
            let migrations = snap.migrations().await.unwrap();
            let tables = snap.tables().await.unwrap();
            let mut dump: Vec<(TableSchema, Vec<Vec<serde_json::Value>>)> = Vec::new();
            for table in &tables {
                let mut rows = Vec::new();
                snap.dump_table(table, |r| {
                    rows.push(r);
                    Ok(())
                })
                .await
                .unwrap();
                dump.push((table.clone(), rows));
            }
            snap.finish().await.unwrap();
            assert!(dump.iter().any(|(t, rows)| t.name == "meta" && !rows.is_empty()), "{backend}");
            check_compatible(&migrations, &tables).await.unwrap();

            let err = check_target_empty(&ts.url).await.unwrap_err();
            assert!(matches!(err, BackupError::NotEmpty(ref m) if m.contains("meta")), "{backend}: {err}");

            let dir = tempfile::tempdir().unwrap();
            let url = format!("sqlite://{}", dir.path().join("restored.db").display());
            let target = Store::connect_for_restore(&url, &migrations).await.unwrap();
            let mut load = target.begin_load().await.unwrap();
            for (table, rows) in &dump {
                load.table(table).unwrap();
                for (i, r) in rows.iter().enumerate() {
                    load.insert(&table.name, i as u64 + 1, r).await.unwrap();
                }
            }
            load.commit().await.unwrap();
            assert_eq!(target.meta_get("backup_probe").await.unwrap().as_deref(), Some("x"), "{backend}");
            let mut snap = target.begin_snapshot().await.unwrap();
            for (table, rows) in &dump {
                let mut again = Vec::new();
                snap.dump_table(table, |r| {
                    again.push(r);
                    Ok(())
                })
                .await
                .unwrap();
                assert_eq!(&again, rows, "{backend}: table {}", table.name);
            }
            snap.finish().await.unwrap();
        }
    }
}
