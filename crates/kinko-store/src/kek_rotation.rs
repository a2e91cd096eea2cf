//! KEK rotation (K4, seed 000 Fig 5-3): re-wrap every key under a new KEK, then destroy the old one,
//! as one operation that survives a SIGKILL anywhere.
//!
//! Why it is restartable: the new KEK (wrapped by the master key) and the rotation record are committed
//! together *before* any key is touched; each batch of re-wrapped keys is one transaction whose updates
//! are conditional on the row's `kek_id` still naming the old KEK, so re-running a batch is a no-op; and
//! the old KEK is destroyed only after every key that is not destroyed has been verified to unwrap under
//! the new one. A rerun finds the open rotation and carries on from whatever the rows say.
//!
//! The cryptography is the caller's ([`Rewrapper`]): this crate stores and never sees key material.

use kinko_core::key_lifecycle::{Attribution, KekState, Lifecycle};
use sqlx::Row;

use crate::key_lifecycle::{SUBJECT_KEK, record_transition};
use crate::seal_records::{KEK_ACTIVE, KEK_DESTROYED, KEK_RETIRING, KekRecord};
use crate::{Result, Store, StoreError};

/// Keys re-wrapped per transaction: small enough to keep the write lock short, large enough that a
/// rotation of many keys is not dominated by commits.
pub const REWRAP_BATCH_KEYS_DEFAULT: usize = 100;
pub const REWRAP_BATCH_KEYS_MAX: usize = 10_000;
pub const ROTATION_REWRAPPING: &str = "rewrapping";
pub const ROTATION_DONE: &str = "done";

/// One open or finished rotation.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct KekRotation {
    pub id: String,
    pub old_kek_id: String,
    pub new_kek_id: String,
    pub state: String,
    pub keys_rewrapped: i64,
    pub started_at_ms: i64,
    pub updated_at_ms: i64,
}

/// A key row as rotation sees it. `wrapped_hex` is ciphertext; kept out of `Debug`.
#[derive(Clone)]
pub struct WrappedKey {
    pub id: String,
    pub purpose: String,
    pub wrapped_hex: String,
}

/// Unwraps with the old KEK and wraps with the new one; checks a blob under the new one. Implemented
/// by whoever holds both KEKs (the CLI today, the unsealed signer process later).
pub trait Rewrapper: Send + Sync {
    fn rewrap(&self, key_id: &str, purpose: &str, old_blob: &[u8]) -> Result<Vec<u8>, String>;
    fn verify_new(&self, key_id: &str, purpose: &str, new_blob: &[u8]) -> Result<(), String>;
}

/// Progress of a rotation, for a progress bar.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RotationProgress {
    /// `done` of `total` keys under the new KEK (re-wrapping, then verification).
    Rewrapped {
        done: u64,
        total: u64,
    },
    Verified {
        done: u64,
        total: u64,
    },
}

fn rotation_from_row(r: &sqlx::any::AnyRow) -> Result<KekRotation> {
    Ok(KekRotation {
        id: r.try_get("id")?,
        old_kek_id: r.try_get("old_kek_id")?,
        new_kek_id: r.try_get("new_kek_id")?,
        state: r.try_get("state")?,
        keys_rewrapped: r.try_get("keys_rewrapped")?,
        started_at_ms: r.try_get("started_at_ms")?,
        updated_at_ms: r.try_get("updated_at_ms")?,
    })
}

const ROTATION_COLUMNS: &str = "id, old_kek_id, new_kek_id, state, keys_rewrapped, started_at_ms, updated_at_ms";
/// Keys a KEK still protects. Destroyed keys have no blob left; rows from before the seal existed
/// (`kek_id = ''`) were wrapped by the only KEK there was, the one being rotated away from.
const UNDER_KEK: &str = "(kek_id = $1 OR kek_id = '') AND state <> 'destroyed' AND wrapped <> ''";

impl Store {
    /// The rotation in progress, if any (at most one: a unique index enforces it).
    pub async fn open_kek_rotation(&self) -> Result<Option<KekRotation>> {
        let q = format!("SELECT {ROTATION_COLUMNS} FROM kek_rotations WHERE state <> $1");
        let row = sqlx::query(crate::sql(q)).bind(ROTATION_DONE).fetch_optional(self.pool()).await?;
        row.as_ref().map(rotation_from_row).transpose()
    }

    pub async fn kek_rotation(&self, id: &str) -> Result<Option<KekRotation>> {
        let q = format!("SELECT {ROTATION_COLUMNS} FROM kek_rotations WHERE id = $1");
        let row = sqlx::query(crate::sql(q)).bind(id).fetch_optional(self.pool()).await?;
        row.as_ref().map(rotation_from_row).transpose()
    }

    /// Starts a rotation away from the active KEK, in one transaction: the old KEK becomes `retiring`,
    /// the new one (already wrapped by the master key) is inserted `active`, the rotation record is
    /// written, and both KEK moves are recorded. Fails if a rotation is already open: resume that one.
    pub async fn begin_kek_rotation(&self, new_kek: &KekRecord, why: &Attribution, now_ms: i64) -> Result<KekRotation> {
        why.validate().map_err(|e| StoreError::Conflict(e.to_string()))?;
        let mut tx = self.begin_write().await?;
        let q = format!("SELECT {ROTATION_COLUMNS} FROM kek_rotations WHERE state <> $1{}", self.for_update());
        if let Some(open) = sqlx::query(crate::sql(q)).bind(ROTATION_DONE).fetch_optional(&mut *tx).await? {
            let open = rotation_from_row(&open)?;
            return Err(StoreError::Conflict(format!(
                "KEK rotation {} ({} -> {}) is still open: run it to completion first",
                open.id, open.old_kek_id, open.new_kek_id
            )));
        }
        let q = format!("SELECT id FROM keks WHERE state = $1{}", self.for_update());
        let old_id: String = sqlx::query_scalar(crate::sql(q))
            .bind(KEK_ACTIVE)
            .fetch_optional(&mut *tx)
            .await?
            .ok_or_else(|| StoreError::Conflict("there is no active KEK to rotate away from".into()))?;
        KekState::Active.transition(KekState::Retiring, why).map_err(|e| StoreError::Conflict(e.to_string()))?;
        sqlx::query("UPDATE keks SET state = $1, updated_at_ms = $2 WHERE id = $3 AND state = $4")
            .bind(KEK_RETIRING)
            .bind(now_ms)
            .bind(&old_id)
            .bind(KEK_ACTIVE)
            .execute(&mut *tx)
            .await?;
        record_transition(&mut tx, SUBJECT_KEK, &old_id, KEK_ACTIVE, KEK_RETIRING, why, now_ms).await?;
        sqlx::query(
            "INSERT INTO keks (id, wrapped_by_master, state, fingerprint, created_at_ms, updated_at_ms) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(&new_kek.id)
        .bind(&new_kek.wrapped_by_master_hex)
        .bind(KEK_ACTIVE)
        .bind(&new_kek.fingerprint)
        .bind(now_ms)
        .bind(now_ms)
        .execute(&mut *tx)
        .await?;
        record_transition(&mut tx, SUBJECT_KEK, &new_kek.id, KekState::Generated.as_str(), KEK_ACTIVE, why, now_ms)
            .await?;
        let rotation = KekRotation {
            id: uuid::Uuid::now_v7().to_string(),
            old_kek_id: old_id,
            new_kek_id: new_kek.id.clone(),
            state: ROTATION_REWRAPPING.into(),
            keys_rewrapped: 0,
            started_at_ms: now_ms,
            updated_at_ms: now_ms,
        };
        sqlx::query(
            "INSERT INTO kek_rotations (id, old_kek_id, new_kek_id, state, keys_rewrapped, actor, reason, \
             started_at_ms, updated_at_ms) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(&rotation.id)
        .bind(&rotation.old_kek_id)
        .bind(&rotation.new_kek_id)
        .bind(&rotation.state)
        .bind(0_i64)
        .bind(&why.actor)
        .bind(&why.reason)
        .bind(now_ms)
        .bind(now_ms)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(rotation)
    }

    /// How many keys a KEK still protects.
    pub async fn count_keys_under_kek(&self, kek_id: &str) -> Result<u64> {
        let q = format!("SELECT COUNT(*) FROM keys WHERE {UNDER_KEK}");
        let n: i64 = sqlx::query_scalar(crate::sql(q)).bind(kek_id).fetch_one(self.pool()).await?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    /// Up to `limit` keys a KEK still protects, with id > `after` (paging), by id.
    pub async fn keys_under_kek(&self, kek_id: &str, after: &str, limit: usize) -> Result<Vec<WrappedKey>> {
        let q = format!("SELECT id, purpose, wrapped FROM keys WHERE {UNDER_KEK} AND id > $2 ORDER BY id LIMIT $3");
        let rows = sqlx::query(crate::sql(q))
            .bind(kek_id)
            .bind(after)
            .bind(limit.min(REWRAP_BATCH_KEYS_MAX) as i64)
            .fetch_all(self.pool())
            .await?;
        rows.iter()
            .map(|r| {
                Ok(WrappedKey {
                    id: r.try_get("id")?,
                    purpose: r.try_get("purpose")?,
                    wrapped_hex: r.try_get("wrapped")?,
                })
            })
            .collect()
    }

    /// Stores one batch of re-wrapped keys in one transaction. Each update applies only if the row is
    /// still under the old KEK (so a replayed batch changes nothing). Returns how many rows moved.
    pub async fn apply_rewrap_batch(
        &self,
        rotation: &KekRotation,
        batch: &[(String, String)],
        now_ms: i64,
    ) -> Result<u64> {
        let mut tx = self.begin_write().await?;
        let mut moved = 0u64;
        for (key_id, new_wrapped_hex) in batch {
            let done = sqlx::query(
                "UPDATE keys SET wrapped = $1, kek_id = $2 WHERE id = $3 AND (kek_id = $4 OR kek_id = '') \
                 AND state <> 'destroyed'",
            )
            .bind(new_wrapped_hex)
            .bind(&rotation.new_kek_id)
            .bind(key_id)
            .bind(&rotation.old_kek_id)
            .execute(&mut *tx)
            .await?;
            moved += done.rows_affected();
        }
        sqlx::query("UPDATE kek_rotations SET keys_rewrapped = keys_rewrapped + $1, updated_at_ms = $2 WHERE id = $3")
            .bind(moved as i64)
            .bind(now_ms)
            .bind(&rotation.id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(moved)
    }

    /// Ends a rotation: in one transaction, checks that the old KEK protects nothing any more,
    /// overwrites its wrapped blob with zeros and then empties it, marks it destroyed, records the move,
    /// and closes the rotation record. Idempotent for a rotation already done.
    pub async fn finish_kek_rotation(&self, rotation: &KekRotation, why: &Attribution, now_ms: i64) -> Result<()> {
        let mut tx = self.begin_write().await?;
        if self.backend() == crate::Backend::Sqlite {
            sqlx::query("PRAGMA secure_delete = ON").execute(&mut *tx).await?;
        }
        let q = format!("SELECT state FROM kek_rotations WHERE id = $1{}", self.for_update());
        let state: String = sqlx::query_scalar(crate::sql(q))
            .bind(&rotation.id)
            .fetch_optional(&mut *tx)
            .await?
            .ok_or(StoreError::NotFound)?;
        if state == ROTATION_DONE {
            return Ok(());
        }
        let q = format!("SELECT COUNT(*) FROM keys WHERE {UNDER_KEK}");
        let left: i64 = sqlx::query_scalar(crate::sql(q)).bind(&rotation.old_kek_id).fetch_one(&mut *tx).await?;
        if left != 0 {
            return Err(StoreError::Conflict(format!(
                "{left} key(s) are still wrapped by KEK {:?}; it cannot be destroyed",
                rotation.old_kek_id
            )));
        }
        let q = format!("SELECT state, wrapped_by_master FROM keks WHERE id = $1{}", self.for_update());
        let row = sqlx::query(crate::sql(q))
            .bind(&rotation.old_kek_id)
            .fetch_optional(&mut *tx)
            .await?
            .ok_or(StoreError::NotFound)?;
        let kek_state: String = row.try_get("state")?;
        let wrapped: String = row.try_get("wrapped_by_master")?;
        if kek_state != KEK_DESTROYED {
            KekState::parse(&kek_state)
                .and_then(|s| s.transition(KekState::Destroyed, why))
                .map_err(|e| StoreError::Conflict(e.to_string()))?;
            sqlx::query("UPDATE keks SET wrapped_by_master = $1 WHERE id = $2")
                .bind("0".repeat(wrapped.len()))
                .bind(&rotation.old_kek_id)
                .execute(&mut *tx)
                .await?;
            sqlx::query(
                "UPDATE keks SET wrapped_by_master = '', state = $1, updated_at_ms = $2 WHERE id = $3 AND state = $4",
            )
            .bind(KEK_DESTROYED)
            .bind(now_ms)
            .bind(&rotation.old_kek_id)
            .bind(&kek_state)
            .execute(&mut *tx)
            .await?;
            record_transition(&mut tx, SUBJECT_KEK, &rotation.old_kek_id, &kek_state, KEK_DESTROYED, why, now_ms)
                .await?;
        }
        sqlx::query("UPDATE kek_rotations SET state = $1, updated_at_ms = $2 WHERE id = $3")
            .bind(ROTATION_DONE)
            .bind(now_ms)
            .bind(&rotation.id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        if self.backend() == crate::Backend::Sqlite
            && let Err(e) = sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)").execute(self.pool()).await
        {
            tracing::warn!(error = %e, "WAL checkpoint after KEK destruction failed");
        }
        Ok(())
    }

    /// Drives an open rotation to the end: re-wraps in batches of `batch_keys` (one transaction each),
    /// verifies every key under the new KEK, then destroys the old KEK. `between_batches` runs after each
    /// committed batch (progress; tests use it to slow down). Safe to call again after a crash.
    pub async fn run_kek_rotation<F, Fut>(
        &self,
        rotation: &KekRotation,
        rewrapper: &dyn Rewrapper,
        batch_keys: usize,
        why: &Attribution,
        now_ms: impl Fn() -> i64,
        mut between_batches: F,
    ) -> Result<KekRotation>
    where
        F: FnMut(RotationProgress) -> Fut,
        Fut: std::future::Future<Output = ()>,
    {
        let batch_keys = batch_keys.clamp(1, REWRAP_BATCH_KEYS_MAX);
        let remaining = self.count_keys_under_kek(&rotation.old_kek_id).await?;
        let already = self.count_keys_under_kek(&rotation.new_kek_id).await?;
        let total = remaining + already;
        let mut done = already;
        between_batches(RotationProgress::Rewrapped { done, total }).await;
        // Each batch moves at least one row or the loop ends, and nothing adds rows under the old KEK
        // (new keys are wrapped by the active one), so this bound is never the reason to stop.
        let batches_max = remaining / batch_keys as u64 + 2;
        for _ in 0..batches_max {
            let keys = self.keys_under_kek(&rotation.old_kek_id, "", batch_keys).await?;
            if keys.is_empty() {
                break;
            }
            let mut batch = Vec::with_capacity(keys.len());
            for k in &keys {
                let blob = hex::decode(&k.wrapped_hex)
                    .map_err(|_| StoreError::Corrupt(format!("keys.wrapped of {:?} is not hex", k.id)))?;
                let new_blob = rewrapper
                    .rewrap(&k.id, &k.purpose, &blob)
                    .map_err(|e| StoreError::Conflict(format!("re-wrapping key {:?}: {e}", k.id)))?;
                batch.push((k.id.clone(), hex::encode(new_blob)));
            }
            done += self.apply_rewrap_batch(rotation, &batch, now_ms()).await?;
            between_batches(RotationProgress::Rewrapped { done, total }).await;
        }
        let left = self.count_keys_under_kek(&rotation.old_kek_id).await?;
        if left != 0 {
            return Err(StoreError::Conflict(format!("{left} key(s) still under the old KEK after re-wrapping")));
        }
        // Verify every key under the new KEK before the old one is gone for good.
        let total = self.count_keys_under_kek(&rotation.new_kek_id).await?;
        let mut verified = 0u64;
        let mut after = String::new();
        let pages_max = total / REWRAP_BATCH_KEYS_MAX as u64 + 2;
        for _ in 0..pages_max {
            let keys = self.keys_under_kek(&rotation.new_kek_id, &after, REWRAP_BATCH_KEYS_MAX).await?;
            let Some(last) = keys.last() else { break };
            after = last.id.clone();
            for k in &keys {
                let blob = hex::decode(&k.wrapped_hex)
                    .map_err(|_| StoreError::Corrupt(format!("keys.wrapped of {:?} is not hex", k.id)))?;
                rewrapper.verify_new(&k.id, &k.purpose, &blob).map_err(|e| {
                    StoreError::Conflict(format!("key {:?} does not unwrap under the new KEK: {e}; old KEK kept", k.id))
                })?;
            }
            verified += keys.len() as u64;
            between_batches(RotationProgress::Verified { done: verified, total }).await;
        }
        if verified != total {
            return Err(StoreError::Conflict(format!("verified {verified} of {total} keys; old KEK kept")));
        }
        self.finish_kek_rotation(rotation, why, now_ms()).await?;
        self.kek_rotation(&rotation.id).await?.ok_or(StoreError::NotFound)
    }
}
