//! The seal's records (K3, K4, K16): KEKs wrapped by the master key, which KEK wrapped each key, and the
//! public seal configuration (custodians, share commitments, master-key fingerprint). Plain storage: the
//! master key is never here, and nothing here opens without K custodian shares.

use sqlx::Row;
use sqlx::any::AnyRow;

use crate::signer_records::KeyRecord;
use crate::{Result, Store};

/// `meta` row holding the seal configuration (kinko_keys::shares::SealConfig as JSON).
pub const META_SEAL_CONFIG: &str = "seal_config";

pub const KEK_ACTIVE: &str = "active";
pub const KEK_RETIRING: &str = "retiring";
pub const KEK_DESTROYED: &str = "destroyed";

/// A KEK wrapped by the master key. `wrapped_by_master_hex` is ciphertext, kept out of `Debug` anyway.
#[derive(Clone, PartialEq, Eq)]
pub struct KekRecord {
    pub id: String,
    pub wrapped_by_master_hex: String,
    pub state: String,
    pub fingerprint: String,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
}

impl std::fmt::Debug for KekRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KekRecord")
            .field("id", &self.id)
            .field("state", &self.state)
            .field("fingerprint", &self.fingerprint)
            .field("created_at_ms", &self.created_at_ms)
            .finish_non_exhaustive()
    }
}

const KEK_COLUMNS: &str = "id, wrapped_by_master, state, fingerprint, created_at_ms, updated_at_ms";

fn kek_from_row(r: &AnyRow) -> Result<KekRecord> {
    Ok(KekRecord {
        id: r.try_get("id")?,
        wrapped_by_master_hex: r.try_get("wrapped_by_master")?,
        state: r.try_get("state")?,
        fingerprint: r.try_get("fingerprint")?,
        created_at_ms: r.try_get("created_at_ms")?,
        updated_at_ms: r.try_get("updated_at_ms")?,
    })
}

impl Store {
    /// The stored seal configuration (JSON), if `init` has stored one.
    pub async fn seal_config_json(&self) -> Result<Option<String>> {
        self.meta_get(META_SEAL_CONFIG).await
    }

    /// Stores the seal configuration once; returns what is stored afterwards (the first one wins).
    pub async fn init_seal_config_json(&self, json: &str) -> Result<String> {
        self.meta_init(META_SEAL_CONFIG, json).await
    }

    /// Inserts a KEK row. Idempotent on the id (an existing row is kept); returns whether it was inserted.
    pub async fn insert_kek(&self, kek: &KekRecord) -> Result<bool> {
        let q = format!("INSERT INTO keks ({KEK_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (id) DO NOTHING");
        let done = sqlx::query(crate::sql(q))
            .bind(&kek.id)
            .bind(&kek.wrapped_by_master_hex)
            .bind(&kek.state)
            .bind(&kek.fingerprint)
            .bind(kek.created_at_ms)
            .bind(kek.updated_at_ms)
            .execute(self.pool())
            .await?;
        Ok(done.rows_affected() == 1)
    }

    pub async fn kek(&self, id: &str) -> Result<Option<KekRecord>> {
        let q = format!("SELECT {KEK_COLUMNS} FROM keks WHERE id = $1");
        let row = sqlx::query(crate::sql(q)).bind(id).fetch_optional(self.pool()).await?;
        row.as_ref().map(kek_from_row).transpose()
    }

    /// The KEK that wraps new keys (at most one: a unique index enforces it).
    pub async fn active_kek(&self) -> Result<Option<KekRecord>> {
        let q = format!("SELECT {KEK_COLUMNS} FROM keks WHERE state = $1");
        let row = sqlx::query(crate::sql(q)).bind(KEK_ACTIVE).fetch_optional(self.pool()).await?;
        row.as_ref().map(kek_from_row).transpose()
    }

    /// Every KEK row, oldest first.
    pub async fn keks(&self) -> Result<Vec<KekRecord>> {
        let q = format!("SELECT {KEK_COLUMNS} FROM keks ORDER BY created_at_ms, id");
        let rows = sqlx::query(crate::sql(q)).fetch_all(self.pool()).await?;
        rows.iter().map(kek_from_row).collect()
    }

    /// Stores a wrapped key together with the id of the KEK that wrapped it. Idempotent on the key id,
    /// like [`Store::insert_key`]; returns whether a row was inserted.
    pub async fn insert_key_wrapped_by(&self, key: &KeyRecord, kek_id: &str) -> Result<bool> {
        let mut tx = self.begin_write().await?;
        let q = "INSERT INTO keys (id, purpose, chain, address, wrapped, state, created_at_ms, kek_id) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (id) DO NOTHING";
        let done = sqlx::query(crate::sql(q.to_string()))
            .bind(&key.id)
            .bind(&key.purpose)
            .bind(&key.chain)
            .bind(&key.address)
            .bind(&key.wrapped_hex)
            .bind(&key.state)
            .bind(key.created_at_ms)
            .bind(kek_id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(done.rows_affected() == 1)
    }

    /// The id of the KEK that wrapped a key (`Some("")` for keys from before the seal existed).
    pub async fn key_kek_id(&self, key_id: &str) -> Result<Option<String>> {
        let v = sqlx::query_scalar::<_, String>("SELECT kek_id FROM keys WHERE id = $1")
            .bind(key_id)
            .fetch_optional(self.pool())
            .await?;
        Ok(v)
    }
}
