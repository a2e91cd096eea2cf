//! Persisted key lifecycles (K2, K3, K5, K7, K10): the state of each row of `keys`, moved only along
//! the tables in [`kinko_core::key_lifecycle`], each move recorded in `key_transitions` in the same
//! transaction, with a compare-and-set on the old state so two operators (or the signer's routine
//! suspension and an operator) cannot both move the same key from the same state.
//!
//! The master seed (purpose [`MASTER_SEED_PURPOSE`]) follows Fig 5-4; every other key follows Fig 5-2.

use std::future::Future;
use std::pin::Pin;

use kinko_core::key_lifecycle::{
    Attribution, BusinessHours, KeyGate, KeyState, Lifecycle, SeedState, routine_suspension_due,
};
use sqlx::Row;

use crate::{Result, Store, StoreError, Tx};

/// The purpose of the wrapped master seed row (`kinko init`).
pub const MASTER_SEED_PURPOSE: &str = "master_seed";
pub const SUBJECT_KEY: &str = "key";
pub const SUBJECT_KEK: &str = "kek";
/// Bound on the transition history returned at once.
pub const TRANSITIONS_LIST_MAX: i64 = 10_000;
/// Bound on the blockers reported for one destruction (the rest are summarised by the count).
pub const BLOCKERS_MAX: usize = 20;

/// One recorded state change.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct TransitionRecord {
    pub subject: String,
    pub key_id: String,
    pub from: String,
    pub to: String,
    pub actor: String,
    pub reason: String,
    pub at_ms: i64,
}

fn lifecycle_err(e: kinko_core::key_lifecycle::LifecycleError) -> StoreError {
    StoreError::Conflict(e.to_string())
}

/// Checks `from -> to` in the lifecycle that governs a key of `purpose`.
pub fn check_key_transition(purpose: &str, from: &str, to: &str, why: &Attribution) -> Result<()> {
    if purpose == MASTER_SEED_PURPOSE {
        let from = SeedState::parse(from).map_err(|e| StoreError::Corrupt(format!("keys.state: {e}")))?;
        let to = SeedState::parse(to).map_err(lifecycle_err)?;
        from.transition(to, why).map_err(lifecycle_err)?;
    } else {
        let from = KeyState::parse(from).map_err(|e| StoreError::Corrupt(format!("keys.state: {e}")))?;
        let to = KeyState::parse(to).map_err(lifecycle_err)?;
        from.transition(to, why).map_err(lifecycle_err)?;
    }
    Ok(())
}

pub(crate) async fn record_transition(
    tx: &mut Tx,
    subject: &str,
    key_id: &str,
    from: &str,
    to: &str,
    why: &Attribution,
    now_ms: i64,
) -> Result<TransitionRecord> {
    sqlx::query(
        "INSERT INTO key_transitions (id, subject, key_id, from_state, to_state, actor, reason, at_ms) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(uuid::Uuid::now_v7().to_string())
    .bind(subject)
    .bind(key_id)
    .bind(from)
    .bind(to)
    .bind(&why.actor)
    .bind(&why.reason)
    .bind(now_ms)
    .execute(&mut **tx)
    .await?;
    Ok(TransitionRecord {
        subject: subject.into(),
        key_id: key_id.into(),
        from: from.into(),
        to: to.into(),
        actor: why.actor.clone(),
        reason: why.reason.clone(),
        at_ms: now_ms,
    })
}

impl Store {
    /// Moves a key to `to` along its lifecycle and records who and why, in one transaction. With
    /// `expected_from`, the move only happens if the key is still in that state (compare-and-set);
    /// otherwise the current state is the starting point, read under the row lock.
    ///
    /// Destruction is not a plain transition: use [`Store::destroy_key`], which also erases the blob.
    pub async fn transition_key(
        &self,
        key_id: &str,
        expected_from: Option<&str>,
        to: &str,
        why: &Attribution,
        now_ms: i64,
    ) -> Result<TransitionRecord> {
        if to == KeyState::Destroyed.as_str() {
            return Err(StoreError::Conflict(
                "destruction erases the wrapped key: use `kinko key destroy`, which checks for funds first".into(),
            ));
        }
        let mut tx = self.begin_write().await?;
        let record = self.transition_key_in(&mut tx, key_id, expected_from, to, why, now_ms).await?;
        tx.commit().await?;
        Ok(record)
    }

    async fn transition_key_in(
        &self,
        tx: &mut Tx,
        key_id: &str,
        expected_from: Option<&str>,
        to: &str,
        why: &Attribution,
        now_ms: i64,
    ) -> Result<TransitionRecord> {
        let q = format!("SELECT purpose, state FROM keys WHERE id = $1{}", self.for_update());
        let row =
            sqlx::query(crate::sql(q)).bind(key_id).fetch_optional(&mut **tx).await?.ok_or(StoreError::NotFound)?;
        let purpose: String = row.try_get("purpose")?;
        let from: String = row.try_get("state")?;
        if let Some(expected) = expected_from
            && expected != from
        {
            return Err(StoreError::Conflict(format!("key {key_id:?} is {from}, not {expected}")));
        }
        check_key_transition(&purpose, &from, to, why)?;
        let done = sqlx::query("UPDATE keys SET state = $1 WHERE id = $2 AND state = $3")
            .bind(to)
            .bind(key_id)
            .bind(&from)
            .execute(&mut **tx)
            .await?;
        if done.rows_affected() != 1 {
            return Err(StoreError::Conflict(format!("key {key_id:?} changed state concurrently")));
        }
        record_transition(tx, SUBJECT_KEY, key_id, &from, to, why, now_ms).await
    }

    /// The recorded transitions of one key or KEK, oldest first.
    pub async fn key_transitions(&self, subject: &str, key_id: &str) -> Result<Vec<TransitionRecord>> {
        let rows = sqlx::query(
            "SELECT subject, key_id, from_state, to_state, actor, reason, at_ms FROM key_transitions \
             WHERE subject = $1 AND key_id = $2 ORDER BY at_ms, id LIMIT $3",
        )
        .bind(subject)
        .bind(key_id)
        .bind(TRANSITIONS_LIST_MAX)
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|r| {
                Ok(TransitionRecord {
                    subject: r.try_get("subject")?,
                    key_id: r.try_get("key_id")?,
                    from: r.try_get("from_state")?,
                    to: r.try_get("to_state")?,
                    actor: r.try_get("actor")?,
                    reason: r.try_get("reason")?,
                    at_ms: r.try_get("at_ms")?,
                })
            })
            .collect()
    }

    /// Signatures since the key's last activation (K3), counted from the key access log. A key that was
    /// never moved to `active` through a recorded transition (e.g. made active by `kinko init`) counts
    /// from its first signature.
    pub async fn signatures_since_activation(&self, key_id: &str) -> Result<u64> {
        let since: Option<i64> = sqlx::query_scalar(
            "SELECT MAX(at_ms) FROM key_transitions WHERE subject = $1 AND key_id = $2 AND to_state = $3",
        )
        .bind(SUBJECT_KEY)
        .bind(key_id)
        .bind(KeyState::Active.as_str())
        .fetch_one(self.pool())
        .await?;
        let n: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM key_access_log WHERE key_id = $1 AND operation = $2 AND at_ms >= $3",
        )
        .bind(key_id)
        .bind("sign")
        .bind(since.unwrap_or(i64::MIN))
        .fetch_one(self.pool())
        .await?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    /// What in the database says the key's address still matters (K7): a non-zero ledger balance of
    /// the address's wallet account, or deposits / ledger entries touching it since `since_ms`. For
    /// the master seed, the same over every deposit address derived from it. The on-chain balance is
    /// the caller's to check (it needs a node).
    pub async fn destruction_blockers(&self, key_id: &str, since_ms: i64) -> Result<Vec<String>> {
        let key = self.key(key_id).await?.ok_or(StoreError::NotFound)?;
        let addresses = self.addresses_guarded_by(&key.purpose, &key.address).await?;
        let mut blockers = Vec::new();
        let mut total = 0usize;
        for address in &addresses {
            for b in self.address_blockers(address, since_ms).await? {
                total += 1;
                if blockers.len() < BLOCKERS_MAX {
                    blockers.push(b);
                }
            }
        }
        if total > blockers.len() {
            blockers.push(format!("… and {} more", total - blockers.len()));
        }
        Ok(blockers)
    }

    /// The addresses whose funds become unspendable when this key is destroyed.
    pub async fn addresses_guarded_by(&self, purpose: &str, address: &str) -> Result<Vec<String>> {
        if purpose == MASTER_SEED_PURPOSE {
            Ok(sqlx::query_scalar("SELECT address FROM deposit_addresses ORDER BY address")
                .fetch_all(self.pool())
                .await?)
        } else if address.is_empty() {
            Ok(Vec::new())
        } else {
            Ok(vec![address.to_ascii_lowercase()])
        }
    }

    async fn address_blockers(&self, address: &str, since_ms: i64) -> Result<Vec<String>> {
        let mut out = Vec::new();
        let rows = sqlx::query("SELECT account, debits, credits FROM ledger_accounts WHERE kind = $1 AND holder = $2")
            .bind("wallet")
            .bind(address)
            .fetch_all(self.pool())
            .await?;
        for r in rows {
            let account: String = r.try_get("account")?;
            let debits = crate::parse_u128("ledger_accounts.debits", &r.try_get::<String, _>("debits")?)?;
            let credits = crate::parse_u128("ledger_accounts.credits", &r.try_get::<String, _>("credits")?)?;
            if debits != credits {
                out.push(format!("ledger account {account} holds funds (debits {debits}, credits {credits})"));
            }
        }
        let deposits: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM deposits WHERE address = $1 AND created_at_ms >= $2")
                .bind(address)
                .bind(since_ms)
                .fetch_one(self.pool())
                .await?;
        if deposits > 0 {
            out.push(format!("{address} received {deposits} deposit(s) within the retention period"));
        }
        // Ledger entries name their accounts in the transfers' JSON; a 20-byte hex address matches
        // nothing but that address's own accounts.
        let pattern = format!("%{address}%");
        let entries: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM ledger_entries WHERE transfers LIKE $1 AND recorded_at_ms >= $2")
                .bind(&pattern)
                .bind(since_ms)
                .fetch_one(self.pool())
                .await?;
        if entries > 0 {
            out.push(format!("{address} moved funds in {entries} ledger entr(y/ies) within the retention period"));
        }
        Ok(out)
    }

    /// Destroys a key (K7, K10): re-checks the database blockers inside the transaction, overwrites the
    /// wrapped blob with zeros of the same length, then empties it, sets the state to `destroyed` with a
    /// compare-and-set on the state it was checked in, and records the move. Irreversible: no
    /// transition leaves `destroyed`. On SQLite the freed pages are zeroed (`secure_delete`) and the WAL
    /// checkpointed so the old ciphertext does not linger in either file.
    pub async fn destroy_key(
        &self,
        key_id: &str,
        since_ms: i64,
        why: &Attribution,
        now_ms: i64,
    ) -> Result<TransitionRecord> {
        let key = self.key(key_id).await?.ok_or(StoreError::NotFound)?;
        let to = if key.purpose == MASTER_SEED_PURPOSE {
            SeedState::Destroyed.as_str()
        } else {
            KeyState::Destroyed.as_str()
        };
        check_key_transition(&key.purpose, &key.state, to, why)?;
        let blockers = self.destruction_blockers(key_id, since_ms).await?;
        if !blockers.is_empty() {
            return Err(StoreError::Conflict(format!(
                "destruction of {key_id:?} refused (K7): {}",
                blockers.join("; ")
            )));
        }
        let mut tx = self.begin_write().await?;
        if self.backend() == crate::Backend::Sqlite {
            sqlx::query("PRAGMA secure_delete = ON").execute(&mut *tx).await?;
        }
        let q = format!("SELECT state, wrapped FROM keys WHERE id = $1{}", self.for_update());
        let row =
            sqlx::query(crate::sql(q)).bind(key_id).fetch_optional(&mut *tx).await?.ok_or(StoreError::NotFound)?;
        let state: String = row.try_get("state")?;
        let wrapped: String = row.try_get("wrapped")?;
        if state != key.state {
            return Err(StoreError::Conflict(format!("key {key_id:?} changed state concurrently")));
        }
        sqlx::query("UPDATE keys SET wrapped = $1 WHERE id = $2")
            .bind("0".repeat(wrapped.len()))
            .bind(key_id)
            .execute(&mut *tx)
            .await?;
        let done = sqlx::query("UPDATE keys SET wrapped = $1, state = $2 WHERE id = $3 AND state = $4")
            .bind("")
            .bind(to)
            .bind(key_id)
            .bind(&state)
            .execute(&mut *tx)
            .await?;
        if done.rows_affected() != 1 {
            return Err(StoreError::Conflict(format!("key {key_id:?} changed state concurrently")));
        }
        let record = record_transition(&mut tx, SUBJECT_KEY, key_id, &state, to, why, now_ms).await?;
        tx.commit().await?;
        if self.backend() == crate::Backend::Sqlite {
            // Best effort: the destruction is committed either way; this only shortens how long the old
            // pages sit in the WAL file.
            if let Err(e) = sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)").execute(self.pool()).await {
                tracing::warn!(error = %e, "WAL checkpoint after key destruction failed");
            }
        }
        Ok(record)
    }
}

/// The routine-suspension policy (K3) the store-backed gate applies.
#[derive(Clone, Debug, Default)]
pub struct RoutinePolicy {
    pub signatures_max: Option<u64>,
    pub business_hours: Option<BusinessHours>,
}

/// The signer's key gate over the store (K2, K3): a key signs only in state `active`, and a key due for
/// routine suspension is moved to `suspended_routine` (recorded, actor [`StoreKeyGate::ACTOR`]) and
/// refused. Fails closed: a key the store does not know, or a store that does not answer, signs nothing.
pub struct StoreKeyGate {
    pub store: Store,
    pub policy: RoutinePolicy,
}

impl StoreKeyGate {
    pub const ACTOR: &'static str = "signer-routine-policy";

    pub fn new(store: Store, policy: RoutinePolicy) -> StoreKeyGate {
        StoreKeyGate { store, policy }
    }

    async fn check(&self, key_id: &str, now_ms: i64) -> Result<(), String> {
        let key = self
            .store
            .key(key_id)
            .await
            .map_err(|e| format!("key state unavailable: {e}"))?
            .ok_or_else(|| format!("key {key_id:?} is not in the key store"))?;
        if key.state != KeyState::Active.as_str() || key.purpose == MASTER_SEED_PURPOSE {
            return Err(format!("key {key_id:?} is {}; only active signing keys sign (K2)", key.state));
        }
        let count = self.store.signatures_since_activation(key_id).await.map_err(|e| format!("key access log: {e}"))?;
        if let Some(reason) =
            routine_suspension_due(count, self.policy.signatures_max, now_ms, self.policy.business_hours.as_ref())
        {
            let why = Attribution { actor: Self::ACTOR.into(), reason: reason.to_string() };
            match self
                .store
                .transition_key(
                    key_id,
                    Some(KeyState::Active.as_str()),
                    KeyState::SuspendedRoutine.as_str(),
                    &why,
                    now_ms,
                )
                .await
            {
                // A concurrent request may have suspended it first; refusing is right either way.
                Ok(_) | Err(StoreError::Conflict(_)) => {}
                Err(e) => return Err(format!("suspending key {key_id:?}: {e}")),
            }
            return Err(format!("key {key_id:?} suspended: {reason}"));
        }
        Ok(())
    }
}

impl KeyGate for StoreKeyGate {
    fn may_sign<'a>(
        &'a self,
        key_id: &'a str,
        now_ms: i64,
    ) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send + 'a>> {
        Box::pin(self.check(key_id, now_ms))
    }
}
