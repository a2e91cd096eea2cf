//! The signer's durable records (K20, L2): wrapped keys, the anti-double-sign record per (key, chain,
//! slot), and the key access log. Plain storage: the signer (kinko-signer) decides what may be signed;
//! this module only makes its decision and its log entry durable in one transaction, and tells it when
//! the slot changed under it (another signer instance got there first).

use sqlx::Row;
use sqlx::any::AnyRow;

use crate::{Result, Store, StoreError};

/// A key wrapped by the KEK. `wrapped_hex` is the AEAD blob (kinko_keys::kek), lower-case hex.
#[derive(Clone, PartialEq, Eq)]
pub struct KeyRecord {
    pub id: String,
    pub purpose: String,
    pub chain: String,
    /// Lower-case 0x-hex address (EVM), or empty for keys without one (e.g. the master seed).
    pub address: String,
    pub wrapped_hex: String,
    pub state: String,
    pub created_at_ms: i64,
}

/// The wrapped blob is ciphertext, but it has no business in logs either.
impl std::fmt::Debug for KeyRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyRecord")
            .field("id", &self.id)
            .field("purpose", &self.purpose)
            .field("chain", &self.chain)
            .field("address", &self.address)
            .field("state", &self.state)
            .field("created_at_ms", &self.created_at_ms)
            .finish_non_exhaustive()
    }
}

/// One payload the signer signed for a slot. A slot is an EVM nonce (decimal) or a UTXO outpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SlotRecord {
    pub key_id: String,
    /// E.g. `evm:31337`.
    pub chain: String,
    pub slot: String,
    pub payload_sha256: String,
    pub payload_hex: String,
    pub intent_hash: String,
    pub created_at_ms: i64,
}

/// One key access log row (L2).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyAccessRecord {
    pub at_ms: i64,
    pub key_id: String,
    pub operation: String,
    pub payload_sha256: String,
    pub intent_hash: String,
    pub actor: String,
    pub terminal: String,
    /// JSON array of the operator ids whose approvals the signer counted (K12); `[]` when none were needed.
    pub approvers_json: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SignatureRecorded {
    /// A new payload for the slot.
    NewPayload,
    /// The payload was already recorded (an idempotent re-sign); only the access log grew.
    SamePayload,
}

const KEY_COLUMNS: &str = "id, purpose, chain, address, wrapped, state, created_at_ms";
const SLOT_COLUMNS: &str = "key_id, chain, slot, payload_sha256, payload, intent_hash, created_at_ms";

fn key_from_row(r: &AnyRow) -> Result<KeyRecord> {
    Ok(KeyRecord {
        id: r.try_get("id")?,
        purpose: r.try_get("purpose")?,
        chain: r.try_get("chain")?,
        address: r.try_get("address")?,
        wrapped_hex: r.try_get("wrapped")?,
        state: r.try_get("state")?,
        created_at_ms: r.try_get("created_at_ms")?,
    })
}

fn slot_from_row(r: &AnyRow) -> Result<SlotRecord> {
    Ok(SlotRecord {
        key_id: r.try_get("key_id")?,
        chain: r.try_get("chain")?,
        slot: r.try_get("slot")?,
        payload_sha256: r.try_get("payload_sha256")?,
        payload_hex: r.try_get("payload")?,
        intent_hash: r.try_get("intent_hash")?,
        created_at_ms: r.try_get("created_at_ms")?,
    })
}

fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.is_unique_violation())
}

impl Store {
    /// Stores a wrapped key. Idempotent on the id: an existing row is kept as it is (re-wrapping gives a
    /// new random nonce, so "the same key" is not byte-identical). Returns whether a row was inserted.
    pub async fn insert_key(&self, key: &KeyRecord) -> Result<bool> {
        let q =
            format!("INSERT INTO keys ({KEY_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (id) DO NOTHING");
        let done = sqlx::query(crate::sql(q))
            .bind(&key.id)
            .bind(&key.purpose)
            .bind(&key.chain)
            .bind(&key.address)
            .bind(&key.wrapped_hex)
            .bind(&key.state)
            .bind(key.created_at_ms)
            .execute(self.pool())
            .await?;
        Ok(done.rows_affected() == 1)
    }

    pub async fn key(&self, id: &str) -> Result<Option<KeyRecord>> {
        let q = format!("SELECT {KEY_COLUMNS} FROM keys WHERE id = $1");
        let row = sqlx::query(crate::sql(q)).bind(id).fetch_optional(self.pool()).await?;
        row.as_ref().map(key_from_row).transpose()
    }

    pub async fn keys_by_purpose(&self, purpose: &str) -> Result<Vec<KeyRecord>> {
        let q = format!("SELECT {KEY_COLUMNS} FROM keys WHERE purpose = $1 ORDER BY created_at_ms, id");
        let rows = sqlx::query(crate::sql(q)).bind(purpose).fetch_all(self.pool()).await?;
        rows.iter().map(key_from_row).collect()
    }

    /// Every key of every purpose, oldest first, at most `limit` (for the operators' key list).
    pub async fn list_keys(&self, limit: usize) -> Result<Vec<KeyRecord>> {
        let q = format!("SELECT {KEY_COLUMNS} FROM keys ORDER BY created_at_ms, id LIMIT $1");
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = sqlx::query(crate::sql(q)).bind(limit).fetch_all(self.pool()).await?;
        rows.iter().map(key_from_row).collect()
    }

    /// Every payload signed for (key, chain, slot), oldest first.
    pub async fn signer_slot_payloads(&self, key_id: &str, chain: &str, slot: &str) -> Result<Vec<SlotRecord>> {
        let q = format!(
            "SELECT {SLOT_COLUMNS} FROM signer_slots WHERE key_id = $1 AND chain = $2 AND slot = $3 \
             ORDER BY created_at_ms, payload_sha256"
        );
        let rows = sqlx::query(crate::sql(q)).bind(key_id).bind(chain).bind(slot).fetch_all(self.pool()).await?;
        rows.iter().map(slot_from_row).collect()
    }

    /// Records a signature in ONE write transaction: the slot's payload (unless already there) and the key
    /// access log row. `expected_prior` is the set of payload hashes the signer based its decision on; if
    /// the slot holds anything else by now, nothing is written and the result is
    /// [`StoreError::Conflict`], and the signer must decide again.
    pub async fn record_signature(
        &self,
        slot: &SlotRecord,
        access: &KeyAccessRecord,
        expected_prior: &[String],
    ) -> Result<SignatureRecorded> {
        let mut tx = self.begin_write().await?;
        let q = format!(
            "SELECT payloads FROM signer_slot_heads WHERE key_id = $1 AND chain = $2 AND slot = $3{}",
            self.for_update()
        );
        let head = sqlx::query_scalar::<_, i64>(crate::sql(q))
            .bind(&slot.key_id)
            .bind(&slot.chain)
            .bind(&slot.slot)
            .fetch_optional(&mut *tx)
            .await?;
        let mut present: Vec<String> = sqlx::query_scalar::<_, String>(
            "SELECT payload_sha256 FROM signer_slots WHERE key_id = $1 AND chain = $2 AND slot = $3",
        )
        .bind(&slot.key_id)
        .bind(&slot.chain)
        .bind(&slot.slot)
        .fetch_all(&mut *tx)
        .await?;
        present.sort();
        let mut expected = expected_prior.to_vec();
        expected.sort();
        expected.dedup();
        if present != expected || head.unwrap_or(0) != present.len() as i64 {
            return Err(StoreError::Conflict(format!(
                "signer slot {}/{}/{} changed since it was read",
                slot.key_id, slot.chain, slot.slot
            )));
        }
        let outcome = if present.contains(&slot.payload_sha256) {
            SignatureRecorded::SamePayload
        } else {
            let count = present.len() as i64;
            // Compare-and-set on the head row: a concurrent writer on PostgreSQL blocks here and then
            // either fails the primary key (new slot) or matches no row (count moved on).
            let bumped = match head {
                None => sqlx::query(
                    "INSERT INTO signer_slot_heads (key_id, chain, slot, payloads, updated_at_ms) VALUES ($1, $2, $3, $4, $5)",
                )
                .bind(&slot.key_id)
                .bind(&slot.chain)
                .bind(&slot.slot)
                .bind(1_i64)
                .bind(slot.created_at_ms)
                .execute(&mut *tx)
                .await
                .map(|r| r.rows_affected()),
                Some(_) => sqlx::query(
                    "UPDATE signer_slot_heads SET payloads = $1, updated_at_ms = $2 \
                     WHERE key_id = $3 AND chain = $4 AND slot = $5 AND payloads = $6",
                )
                .bind(count + 1)
                .bind(slot.created_at_ms)
                .bind(&slot.key_id)
                .bind(&slot.chain)
                .bind(&slot.slot)
                .bind(count)
                .execute(&mut *tx)
                .await
                .map(|r| r.rows_affected()),
            };
            match bumped {
                Ok(1) => {}
                Ok(_) => return Err(StoreError::Conflict("signer slot head moved concurrently".into())),
                Err(e) if is_unique_violation(&e) => {
                    return Err(StoreError::Conflict("signer slot taken concurrently".into()));
                }
                Err(e) => return Err(e.into()),
            }
            let q = format!("INSERT INTO signer_slots ({SLOT_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7)");
            sqlx::query(crate::sql(q))
                .bind(&slot.key_id)
                .bind(&slot.chain)
                .bind(&slot.slot)
                .bind(&slot.payload_sha256)
                .bind(&slot.payload_hex)
                .bind(&slot.intent_hash)
                .bind(slot.created_at_ms)
                .execute(&mut *tx)
                .await?;
            SignatureRecorded::NewPayload
        };
        sqlx::query(
            "INSERT INTO key_access_log (id, at_ms, key_id, operation, payload_sha256, intent_hash, actor, terminal, \
             approvers_json) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(uuid::Uuid::now_v7().to_string())
        .bind(access.at_ms)
        .bind(&access.key_id)
        .bind(&access.operation)
        .bind(&access.payload_sha256)
        .bind(&access.intent_hash)
        .bind(&access.actor)
        .bind(&access.terminal)
        .bind(&access.approvers_json)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(outcome)
    }

    /// The key access log of one key, oldest first, at most `limit` rows.
    pub async fn key_access_log(&self, key_id: &str, limit: i64) -> Result<Vec<KeyAccessRecord>> {
        let rows = sqlx::query(
            "SELECT at_ms, key_id, operation, payload_sha256, intent_hash, actor, terminal, approvers_json \
             FROM key_access_log \
             WHERE key_id = $1 ORDER BY at_ms, id LIMIT $2",
        )
        .bind(key_id)
        .bind(limit)
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|r| {
                Ok(KeyAccessRecord {
                    at_ms: r.try_get("at_ms")?,
                    key_id: r.try_get("key_id")?,
                    operation: r.try_get("operation")?,
                    payload_sha256: r.try_get("payload_sha256")?,
                    intent_hash: r.try_get("intent_hash")?,
                    actor: r.try_get("actor")?,
                    terminal: r.try_get("terminal")?,
                    approvers_json: r.try_get("approvers_json")?,
                })
            })
            .collect()
    }
}
