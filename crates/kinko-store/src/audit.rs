//! The audit trail's storage (L2, L4–L6; migration 0020): appends to the hash chain, serialised through
//! the `audit_head` row, reads for verification, export and search, and the inspection reports.
//!
//! Appends go either inside the caller's write transaction ([`Store::audit_append_tx`]), so an entry and
//! the database change it records commit together, or on their own ([`Store::audit_append`]) for actions
//! that are not a database write (a signature, an HTTP request before its handler runs). On SQLite never
//! call the standalone form while holding a write transaction: the second writer would wait for the first.

use kinko_core::audit::{ActorKind, AuditKey, Entry, Record, SignedEntry};
use sqlx::Row;
use sqlx::any::AnyRow;

use crate::{Result, Store, StoreError, Tx};

/// Bound on rows one read returns.
pub const AUDIT_PAGE_MAX: i64 = 1_000;

const COLUMNS: &str = "seq, prev_hash, at_ms, actor_kind, actor_id, role, terminal, action, object, request_digest, \
                       outcome, hash, signature";

/// One stored row as text, exactly as read: a row someone edited into an undecodable shape is still
/// shown (and reported by verification) rather than failing the read.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AuditRow {
    pub seq: i64,
    pub prev_hash: String,
    pub at_ms: i64,
    pub actor_kind: String,
    pub actor_id: String,
    pub role: String,
    pub terminal: String,
    pub action: String,
    pub object: String,
    pub request_digest: String,
    pub outcome: String,
    pub hash: String,
    pub signature: String,
}

fn hex_array<const N: usize>(column: &str, s: &str) -> std::result::Result<[u8; N], String> {
    let mut out = [0u8; N];
    hex::decode_to_slice(s, &mut out).map_err(|_| format!("{column} is not {N} bytes of hex"))?;
    Ok(out)
}

impl AuditRow {
    /// The entry this row holds, or why it holds none.
    pub fn to_signed(&self) -> std::result::Result<SignedEntry, String> {
        let seq = u64::try_from(self.seq).map_err(|_| "seq is negative".to_string())?;
        let actor_kind =
            ActorKind::parse(&self.actor_kind).ok_or_else(|| format!("unknown actor_kind {:?}", self.actor_kind))?;
        Ok(SignedEntry {
            entry: Entry {
                seq,
                prev_hash: hex_array("prev_hash", &self.prev_hash)?,
                at_ms: self.at_ms,
                record: Record {
                    actor_kind,
                    actor_id: self.actor_id.clone(),
                    role: self.role.clone(),
                    terminal: self.terminal.clone(),
                    action: self.action.clone(),
                    object: self.object.clone(),
                    request_digest: hex_array("request_digest", &self.request_digest)?,
                    outcome: self.outcome.clone(),
                },
            },
            hash: hex_array("hash", &self.hash)?,
            signature: hex_array("signature", &self.signature)?,
        })
    }

    fn from_signed(e: &SignedEntry) -> Result<AuditRow> {
        let r = &e.entry.record;
        Ok(AuditRow {
            seq: i64::try_from(e.entry.seq).map_err(|_| StoreError::Corrupt("audit seq beyond i64".into()))?,
            prev_hash: hex::encode(e.entry.prev_hash),
            at_ms: e.entry.at_ms,
            actor_kind: r.actor_kind.as_str().into(),
            actor_id: r.actor_id.clone(),
            role: r.role.clone(),
            terminal: r.terminal.clone(),
            action: r.action.clone(),
            object: r.object.clone(),
            request_digest: hex::encode(r.request_digest),
            outcome: r.outcome.clone(),
            hash: hex::encode(e.hash),
            signature: hex::encode(e.signature),
        })
    }
}

fn row(r: &AnyRow) -> Result<AuditRow> {
    Ok(AuditRow {
        seq: r.try_get("seq")?,
        prev_hash: r.try_get("prev_hash")?,
        at_ms: r.try_get("at_ms")?,
        actor_kind: r.try_get("actor_kind")?,
        actor_id: r.try_get("actor_id")?,
        role: r.try_get("role")?,
        terminal: r.try_get("terminal")?,
        action: r.try_get("action")?,
        object: r.try_get("object")?,
        request_digest: r.try_get("request_digest")?,
        outcome: r.try_get("outcome")?,
        hash: r.try_get("hash")?,
        signature: r.try_get("signature")?,
    })
}

/// The chain's head as the `audit_head` row records it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct AuditHead {
    pub seq: i64,
    pub hash: String,
    /// The pinned audit key ('' before the genesis).
    pub public_key: String,
}

/// Search filter for the log inspector; empty strings match everything.
#[derive(Clone, Debug, Default)]
pub struct AuditFilter {
    pub after_seq: i64,
    pub actor_id: String,
    /// A prefix of the action, e.g. `POST /v1/ops` or `system.`.
    pub action_prefix: String,
}

/// A stored inspection report.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct AuditReportRow {
    pub id: String,
    pub at_ms: i64,
    pub head_seq: i64,
    pub head_hash: String,
    pub findings: i64,
    pub report_json: String,
}

/// One key access log row with its id, for the inspector's search.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct KeyAccessEntry {
    pub id: String,
    pub at_ms: i64,
    pub key_id: String,
    pub operation: String,
    pub payload_sha256: String,
    pub intent_hash: String,
    pub actor: String,
    pub terminal: String,
    pub approvers_json: String,
}

impl Store {
    /// Appends `record` as the next entry inside the caller's write transaction (from
    /// [`Store::begin_write`]); writes the genesis first when the chain is empty. Refused when the chain
    /// pins another audit key than `key`.
    pub async fn audit_append_tx(
        &self,
        tx: &mut Tx,
        key: &AuditKey,
        record: Record,
        now_ms: i64,
    ) -> Result<SignedEntry> {
        let q = format!("SELECT seq, hash, public_key FROM audit_head WHERE id = 1{}", self.for_update());
        let head = sqlx::query(crate::sql(q)).fetch_optional(&mut **tx).await?;
        let head = head.ok_or_else(|| StoreError::Corrupt("audit_head row is missing".into()))?;
        let (seq, hash, pinned): (i64, String, String) =
            (head.try_get("seq")?, head.try_get("hash")?, head.try_get("public_key")?);
        let mine = key.public_key_hex();
        let prev = if seq == 0 {
            let genesis = key.genesis_record(&record.terminal);
            let sealed = seal(key, None, now_ms, genesis)?;
            insert(tx, &sealed).await?;
            Some((1, sealed.hash))
        } else {
            if pinned != mine {
                return Err(StoreError::Conflict(format!(
                    "the audit log is pinned to audit key {pinned}, but this instance holds {mine}"
                )));
            }
            let prev_seq = u64::try_from(seq).map_err(|_| StoreError::Corrupt("audit_head.seq".into()))?;
            Some((prev_seq, crate::parse_hash("audit_head.hash", &hash)?))
        };
        let sealed = seal(key, prev, now_ms, record)?;
        insert(tx, &sealed).await?;
        sqlx::query("UPDATE audit_head SET seq = $1, hash = $2, public_key = $3 WHERE id = 1")
            .bind(i64::try_from(sealed.entry.seq).map_err(|_| StoreError::Corrupt("audit seq beyond i64".into()))?)
            .bind(hex::encode(sealed.hash))
            .bind(&mine)
            .execute(&mut **tx)
            .await?;
        Ok(sealed)
    }

    /// Appends `record` in a transaction of its own; durable when this returns.
    pub async fn audit_append(&self, key: &AuditKey, record: Record, now_ms: i64) -> Result<SignedEntry> {
        let mut tx = self.begin_write().await?;
        let sealed = self.audit_append_tx(&mut tx, key, record, now_ms).await?;
        tx.commit().await?;
        Ok(sealed)
    }

    pub async fn audit_head(&self) -> Result<AuditHead> {
        let r = sqlx::query("SELECT seq, hash, public_key FROM audit_head WHERE id = 1")
            .fetch_optional(self.pool())
            .await?
            .ok_or_else(|| StoreError::Corrupt("audit_head row is missing".into()))?;
        Ok(AuditHead { seq: r.try_get("seq")?, hash: r.try_get("hash")?, public_key: r.try_get("public_key")? })
    }

    /// Rows with `seq > after_seq` in seq order, at most `limit` (≤ [`AUDIT_PAGE_MAX`]).
    pub async fn audit_rows(&self, after_seq: i64, limit: i64) -> Result<Vec<AuditRow>> {
        let q = format!("SELECT {COLUMNS} FROM audit_log WHERE seq > $1 ORDER BY seq LIMIT $2");
        let rows = sqlx::query(crate::sql(q))
            .bind(after_seq)
            .bind(limit.clamp(1, AUDIT_PAGE_MAX))
            .fetch_all(self.pool())
            .await?;
        rows.iter().map(row).collect()
    }

    /// The log inspector's search, in seq order.
    pub async fn audit_search(&self, f: &AuditFilter, limit: i64) -> Result<Vec<AuditRow>> {
        let q = format!(
            "SELECT {COLUMNS} FROM audit_log WHERE seq > $1 AND ($2 = '' OR actor_id = $2) \
             AND ($3 = '' OR substr(action, 1, length($3)) = $3) ORDER BY seq LIMIT $4"
        );
        let rows = sqlx::query(crate::sql(q))
            .bind(f.after_seq)
            .bind(&f.actor_id)
            .bind(&f.action_prefix)
            .bind(limit.clamp(1, AUDIT_PAGE_MAX))
            .fetch_all(self.pool())
            .await?;
        rows.iter().map(row).collect()
    }

    pub async fn audit_count(&self) -> Result<i64> {
        Ok(sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM audit_log").fetch_one(self.pool()).await?)
    }

    pub async fn insert_audit_report(&self, r: &AuditReportRow) -> Result<()> {
        sqlx::query(
            "INSERT INTO audit_reports (id, at_ms, head_seq, head_hash, findings, report_json) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(&r.id)
        .bind(r.at_ms)
        .bind(r.head_seq)
        .bind(&r.head_hash)
        .bind(r.findings)
        .bind(&r.report_json)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// The newest report, if any.
    pub async fn latest_audit_report(&self) -> Result<Option<AuditReportRow>> {
        let r = sqlx::query(
            "SELECT id, at_ms, head_seq, head_hash, findings, report_json FROM audit_reports \
             ORDER BY at_ms DESC, id DESC LIMIT 1",
        )
        .fetch_optional(self.pool())
        .await?;
        r.map(|r| {
            Ok(AuditReportRow {
                id: r.try_get("id")?,
                at_ms: r.try_get("at_ms")?,
                head_seq: r.try_get("head_seq")?,
                head_hash: r.try_get("head_hash")?,
                findings: r.try_get("findings")?,
                report_json: r.try_get("report_json")?,
            })
        })
        .transpose()
    }

    /// The key access log (L2), oldest first: every key when `key_id` is empty, rows after `after_ms`.
    pub async fn key_access_search(&self, key_id: &str, after_ms: i64, limit: i64) -> Result<Vec<KeyAccessEntry>> {
        let rows = sqlx::query(
            "SELECT id, at_ms, key_id, operation, payload_sha256, intent_hash, actor, terminal, approvers_json \
             FROM key_access_log WHERE ($1 = '' OR key_id = $1) AND at_ms > $2 ORDER BY at_ms, id LIMIT $3",
        )
        .bind(key_id)
        .bind(after_ms)
        .bind(limit.clamp(1, AUDIT_PAGE_MAX))
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|r| {
                Ok(KeyAccessEntry {
                    id: r.try_get("id")?,
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

    /// Whether an approved intent stands behind `intent_hash`: a withdrawal (customer or custodian
    /// transfer) that reached `approved` or later, or an operator request that was approved (and maybe
    /// executed or inspected since). Used to cross-check every signature in the key access log (L2).
    pub async fn approved_intent_exists(&self, intent_hash: &str) -> Result<bool> {
        let withdrawals: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM withdrawals WHERE intent_hash = $1 \
             AND status IN ('approved', 'signing', 'signed', 'broadcast', 'confirmed', 'settled')",
        )
        .bind(intent_hash)
        .fetch_one(self.pool())
        .await?;
        if withdrawals > 0 {
            return Ok(true);
        }
        let requests: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM ops_requests WHERE intent_hash = $1 AND state IN ('approved', 'executed', 'inspected')",
        )
        .bind(intent_hash)
        .fetch_one(self.pool())
        .await?;
        Ok(requests > 0)
    }
}

fn seal(key: &AuditKey, head: Option<(u64, [u8; 32])>, now_ms: i64, record: Record) -> Result<SignedEntry> {
    let entry = Entry::next(head, now_ms, record).map_err(|e| StoreError::Corrupt(format!("audit entry: {e}")))?;
    key.seal(entry).map_err(|e| StoreError::Corrupt(format!("audit entry: {e}")))
}

async fn insert(tx: &mut Tx, e: &SignedEntry) -> Result<()> {
    let r = AuditRow::from_signed(e)?;
    let q =
        format!("INSERT INTO audit_log ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)");
    sqlx::query(crate::sql(q))
        .bind(r.seq)
        .bind(&r.prev_hash)
        .bind(r.at_ms)
        .bind(&r.actor_kind)
        .bind(&r.actor_id)
        .bind(&r.role)
        .bind(&r.terminal)
        .bind(&r.action)
        .bind(&r.object)
        .bind(&r.request_digest)
        .bind(&r.outcome)
        .bind(&r.hash)
        .bind(&r.signature)
        .execute(&mut **tx)
        .await?;
    Ok(())
}
