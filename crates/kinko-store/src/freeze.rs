//! Emergency freezes and reconciliation records (K19, S5, L3).
//!
//! - `freezes`: the server's active freezes. Written with the ops event (and, for a freeze the
//!   reconciliation set, the finding and the alert notice) in one transaction, so a freeze is never
//!   unrecorded and a failed record stops nothing silently. Lifted only with the id of the executed
//!   unfreeze request (compare-and-set on `lifted_at_ms IS NULL`).
//! - `signer_freeze_log`: the signer's own append-only record; the signer judges it (this module only keeps
//!   the rows in order and never overwrites one).
//! - `reconciliation_cursors` and `reconciliation_reports`: where the spend reconciliation has got to, and
//!   what it and the balance reconciliation found.

use kinko_core::freeze::{ACTIVE_FREEZES_MAX, Freeze, FreezeScope};
use sqlx::Row;
use sqlx::any::AnyRow;

use crate::notices::NewNotice;
use crate::ops_requests::{NewOpsEvent, append_ops_event_tx};
use crate::{Result, Store, StoreError, Tx};

/// Bound on the freezes and reports one list call returns.
pub const FREEZES_LIST_MAX: i64 = 500;
pub const REPORTS_LIST_MAX: i64 = 500;
/// Bound on the signer's freeze log rows read at start-up (freezes are rare events; far above any real use).
pub const SIGNER_FREEZE_LOG_MAX: i64 = 100_000;

pub const REPORT_UNKNOWN_SPEND: &str = "unknown_spend";
pub const REPORT_BALANCE: &str = "balance";

/// A freeze as stored, with its lifting if it was lifted.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct FreezeRow {
    pub freeze: Freeze,
    pub lifted_at_ms: Option<i64>,
    pub lifted_by_request: Option<String>,
}

/// One row of the signer's freeze log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignerFreezeLogRow {
    pub seq: i64,
    /// `freeze` or `lift`.
    pub event: String,
    pub freeze_id: String,
    pub body_json: String,
    pub at_ms: i64,
}

/// A reconciliation finding or balance report.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct ReportRow {
    pub id: String,
    pub kind: String,
    pub chain: String,
    pub asset: String,
    pub at_ms: i64,
    pub block_number: Option<i64>,
    /// Decimal base units.
    pub on_chain: String,
    pub liabilities: String,
    pub surplus: String,
    pub shortfall: String,
    pub detail_json: String,
    /// Unknown spends: the managed address and the nonce the spend used.
    pub wallet: Option<String>,
    pub nonce: Option<i64>,
}

const FREEZE_COLUMNS: &str = "id, scope, reason, set_by, set_at_ms, lifted_at_ms, lifted_by_request";
const REPORT_COLUMNS: &str = "id, kind, chain, asset, at_ms, block_number, on_chain, liabilities, surplus, shortfall, detail_json, wallet, nonce";

fn freeze_from_row(r: &AnyRow) -> Result<FreezeRow> {
    let scope: String = r.try_get("scope")?;
    let id: String = r.try_get("id")?;
    let scope = FreezeScope::parse(&scope).map_err(|e| StoreError::Corrupt(format!("freezes.scope of {id}: {e}")))?;
    Ok(FreezeRow {
        freeze: Freeze {
            id,
            scope,
            reason: r.try_get("reason")?,
            set_by: r.try_get("set_by")?,
            set_at_ms: r.try_get("set_at_ms")?,
        },
        lifted_at_ms: r.try_get("lifted_at_ms")?,
        lifted_by_request: r.try_get("lifted_by_request")?,
    })
}

fn report_from_row(r: &AnyRow) -> Result<ReportRow> {
    Ok(ReportRow {
        id: r.try_get("id")?,
        kind: r.try_get("kind")?,
        chain: r.try_get("chain")?,
        asset: r.try_get("asset")?,
        at_ms: r.try_get("at_ms")?,
        block_number: r.try_get("block_number")?,
        on_chain: r.try_get("on_chain")?,
        liabilities: r.try_get("liabilities")?,
        surplus: r.try_get("surplus")?,
        shortfall: r.try_get("shortfall")?,
        detail_json: r.try_get("detail_json")?,
        wallet: r.try_get("wallet")?,
        nonce: r.try_get("nonce")?,
    })
}

/// Inserts `freeze` unless its id is taken; returns whether it was new. Inside the caller's transaction.
pub async fn insert_freeze_tx(tx: &mut Tx, freeze: &Freeze) -> Result<bool> {
    // ON CONFLICT DO NOTHING keeps a PostgreSQL transaction usable when the freeze already exists.
    let done = sqlx::query(
        "INSERT INTO freezes (id, scope, reason, set_by, set_at_ms) VALUES ($1, $2, $3, $4, $5) \
         ON CONFLICT (id) DO NOTHING",
    )
    .bind(&freeze.id)
    .bind(freeze.scope.to_string())
    .bind(&freeze.reason)
    .bind(&freeze.set_by)
    .bind(freeze.set_at_ms)
    .execute(&mut **tx)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Inserts a report unless its id is taken; returns whether it was new.
pub async fn insert_report_tx(tx: &mut Tx, r: &ReportRow) -> Result<bool> {
    let done = sqlx::query(
        "INSERT INTO reconciliation_reports (id, kind, chain, asset, at_ms, block_number, on_chain, liabilities, \
         surplus, shortfall, detail_json, wallet, nonce) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13) \
         ON CONFLICT (id) DO NOTHING",
    )
    .bind(&r.id)
    .bind(&r.kind)
    .bind(&r.chain)
    .bind(&r.asset)
    .bind(r.at_ms)
    .bind(r.block_number)
    .bind(&r.on_chain)
    .bind(&r.liabilities)
    .bind(&r.surplus)
    .bind(&r.shortfall)
    .bind(&r.detail_json)
    .bind(&r.wallet)
    .bind(r.nonce)
    .execute(&mut **tx)
    .await?;
    Ok(done.rows_affected() == 1)
}

impl Store {
    /// Writes `freeze` with its ops event in one transaction. Returns whether the freeze was new (an id
    /// already stored writes nothing, not even the event).
    pub async fn set_freeze(&self, freeze: &Freeze, event: &NewOpsEvent) -> Result<bool> {
        let mut tx = self.begin_write().await?;
        let new = insert_freeze_tx(&mut tx, freeze).await?;
        if new {
            append_ops_event_tx(&mut tx, event).await?;
        }
        tx.commit().await?;
        Ok(new)
    }

    /// An unknown spend (L3): the finding, the freeze it triggers, the critical ops event and the alert
    /// notice, in one transaction. Idempotent per report id (a block scanned again records nothing new).
    pub async fn record_unknown_spend(
        &self,
        report: &ReportRow,
        freeze: &Freeze,
        event: &NewOpsEvent,
        alert: Option<&NewNotice>,
    ) -> Result<bool> {
        let mut tx = self.begin_write().await?;
        if !insert_report_tx(&mut tx, report).await? {
            tx.rollback().await?;
            return Ok(false);
        }
        insert_freeze_tx(&mut tx, freeze).await?;
        append_ops_event_tx(&mut tx, event).await?;
        if let Some(notice) = alert {
            self.enqueue_notice_tx(&mut tx, notice).await?;
        }
        tx.commit().await?;
        Ok(true)
    }

    /// The active freezes, oldest first. More than [`ACTIVE_FREEZES_MAX`] is reported as corruption, which
    /// every caller treats as frozen (fail closed).
    pub async fn active_freezes(&self) -> Result<Vec<Freeze>> {
        let q = format!(
            "SELECT {FREEZE_COLUMNS} FROM freezes WHERE lifted_at_ms IS NULL ORDER BY set_at_ms, id LIMIT {}",
            ACTIVE_FREEZES_MAX + 1
        );
        let rows = sqlx::query(crate::sql(q)).fetch_all(self.pool()).await?;
        if rows.len() > ACTIVE_FREEZES_MAX {
            return Err(StoreError::Corrupt(format!("more than {ACTIVE_FREEZES_MAX} active freezes")));
        }
        rows.iter().map(|r| freeze_from_row(r).map(|f| f.freeze)).collect()
    }

    /// One freeze, active or lifted.
    pub async fn freeze_row(&self, id: &str) -> Result<Option<FreezeRow>> {
        let q = format!("SELECT {FREEZE_COLUMNS} FROM freezes WHERE id = $1");
        let row = sqlx::query(crate::sql(q)).bind(id).fetch_optional(self.pool()).await?;
        row.as_ref().map(freeze_from_row).transpose()
    }

    /// Freezes, newest first, lifted ones included.
    pub async fn freezes(&self, limit: i64) -> Result<Vec<FreezeRow>> {
        let q = format!("SELECT {FREEZE_COLUMNS} FROM freezes ORDER BY set_at_ms DESC, id DESC LIMIT $1");
        let rows = sqlx::query(crate::sql(q)).bind(limit.clamp(1, FREEZES_LIST_MAX)).fetch_all(self.pool()).await?;
        rows.iter().map(freeze_from_row).collect()
    }

    /// Lifts an active freeze for the executed unfreeze request `request_id`. A freeze already lifted is
    /// [`StoreError::Conflict`]; an unknown one [`StoreError::NotFound`].
    pub async fn lift_freeze_tx(&self, tx: &mut Tx, id: &str, request_id: &str, now_ms: i64) -> Result<()> {
        let done = sqlx::query(
            "UPDATE freezes SET lifted_at_ms = $1, lifted_by_request = $2 WHERE id = $3 AND lifted_at_ms IS NULL",
        )
        .bind(now_ms)
        .bind(request_id)
        .bind(id)
        .execute(&mut **tx)
        .await?;
        if done.rows_affected() == 1 {
            return Ok(());
        }
        let exists: Option<String> =
            sqlx::query_scalar("SELECT id FROM freezes WHERE id = $1").bind(id).fetch_optional(&mut **tx).await?;
        match exists {
            Some(_) => Err(StoreError::Conflict(format!("freeze {id} is already lifted"))),
            None => Err(StoreError::NotFound),
        }
    }

    /// Appends one event to the signer's freeze log at the next position; returns the position.
    pub async fn append_signer_freeze_log(
        &self,
        event: &str,
        freeze_id: &str,
        body_json: &str,
        at_ms: i64,
    ) -> Result<i64> {
        let mut tx = self.begin_write().await?;
        let q = format!("SELECT seq FROM signer_freeze_log ORDER BY seq DESC LIMIT 1{}", self.for_update());
        let last: Option<i64> = sqlx::query_scalar(crate::sql(q)).fetch_optional(&mut *tx).await?;
        let seq = last.map_or(0, |s| s + 1);
        let done = sqlx::query(
            "INSERT INTO signer_freeze_log (seq, event, freeze_id, body_json, at_ms) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (seq) DO NOTHING",
        )
        .bind(seq)
        .bind(event)
        .bind(freeze_id)
        .bind(body_json)
        .bind(at_ms)
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() != 1 {
            return Err(StoreError::Conflict(format!("signer freeze log position {seq} is taken")));
        }
        tx.commit().await?;
        Ok(seq)
    }

    /// The signer's whole freeze log in order (at most [`SIGNER_FREEZE_LOG_MAX`] rows; more is corruption).
    pub async fn signer_freeze_log(&self) -> Result<Vec<SignerFreezeLogRow>> {
        let rows =
            sqlx::query("SELECT seq, event, freeze_id, body_json, at_ms FROM signer_freeze_log ORDER BY seq LIMIT $1")
                .bind(SIGNER_FREEZE_LOG_MAX + 1)
                .fetch_all(self.pool())
                .await?;
        if rows.len() as i64 > SIGNER_FREEZE_LOG_MAX {
            return Err(StoreError::Corrupt(format!("signer_freeze_log holds more than {SIGNER_FREEZE_LOG_MAX} rows")));
        }
        rows.iter()
            .map(|r| {
                Ok(SignerFreezeLogRow {
                    seq: r.try_get("seq")?,
                    event: r.try_get("event")?,
                    freeze_id: r.try_get("freeze_id")?,
                    body_json: r.try_get("body_json")?,
                    at_ms: r.try_get("at_ms")?,
                })
            })
            .collect()
    }

    /// The next block the spend reconciliation of `chain` will look at, if it has started.
    pub async fn reconciliation_cursor(&self, chain: &str) -> Result<Option<u64>> {
        let next: Option<i64> = sqlx::query_scalar("SELECT next_block FROM reconciliation_cursors WHERE chain = $1")
            .bind(chain)
            .fetch_optional(self.pool())
            .await?;
        next.map(|n| u64::try_from(n).map_err(|_| StoreError::Corrupt("reconciliation_cursors.next_block".into())))
            .transpose()
    }

    pub async fn set_reconciliation_cursor(&self, chain: &str, next_block: u64, now_ms: i64) -> Result<()> {
        let next = i64::try_from(next_block).map_err(|_| StoreError::Conflict("block number out of range".into()))?;
        let mut tx = self.begin_write().await?;
        let updated =
            sqlx::query("UPDATE reconciliation_cursors SET next_block = $1, updated_at_ms = $2 WHERE chain = $3")
                .bind(next)
                .bind(now_ms)
                .bind(chain)
                .execute(&mut *tx)
                .await?;
        if updated.rows_affected() == 0 {
            sqlx::query("INSERT INTO reconciliation_cursors (chain, next_block, updated_at_ms) VALUES ($1, $2, $3)")
                .bind(chain)
                .bind(next)
                .bind(now_ms)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Stores a balance report.
    pub async fn insert_reconciliation_report(&self, r: &ReportRow) -> Result<bool> {
        let mut tx = self.begin_write().await?;
        let new = insert_report_tx(&mut tx, r).await?;
        tx.commit().await?;
        Ok(new)
    }

    /// Reports of `kind`, newest first.
    pub async fn reconciliation_reports(&self, kind: &str, limit: i64) -> Result<Vec<ReportRow>> {
        let q = format!(
            "SELECT {REPORT_COLUMNS} FROM reconciliation_reports WHERE kind = $1 ORDER BY at_ms DESC, id DESC LIMIT $2"
        );
        let rows =
            sqlx::query(crate::sql(q)).bind(kind).bind(limit.clamp(1, REPORTS_LIST_MAX)).fetch_all(self.pool()).await?;
        rows.iter().map(report_from_row).collect()
    }

    /// Whether kinko signed and stored a transaction with this hash (`0x…` lower-case), any version.
    pub async fn is_own_tx(&self, tx_hash: &str) -> Result<bool> {
        let found: Option<String> = sqlx::query_scalar("SELECT tx_hash FROM withdrawal_txs WHERE tx_hash = $1")
            .bind(tx_hash)
            .fetch_optional(self.pool())
            .await?;
        Ok(found.is_some())
    }

    /// The highest nonce of a recorded unknown spend from `wallet`, if any.
    pub async fn highest_unknown_spend_nonce(&self, wallet: &str) -> Result<Option<u64>> {
        let n: Option<i64> = sqlx::query_scalar(
            "SELECT MAX(nonce) FROM reconciliation_reports WHERE kind = $1 AND wallet = $2 AND nonce IS NOT NULL",
        )
        .bind(REPORT_UNKNOWN_SPEND)
        .bind(wallet)
        .fetch_one(self.pool())
        .await?;
        n.map(|n| u64::try_from(n).map_err(|_| StoreError::Corrupt("reconciliation_reports.nonce is negative".into())))
            .transpose()
    }

    /// The highest nonce kinko reserved for a transaction from `wallet`, if any.
    pub async fn highest_reserved_nonce(&self, wallet: &str) -> Result<Option<u64>> {
        let n: Option<i64> =
            sqlx::query_scalar("SELECT MAX(nonce) FROM withdrawals WHERE source_wallet = $1 AND nonce IS NOT NULL")
                .bind(wallet)
                .fetch_one(self.pool())
                .await?;
        n.map(|n| u64::try_from(n).map_err(|_| StoreError::Corrupt("withdrawals.nonce is negative".into()))).transpose()
    }

    /// The custodian's own wallets on `chain` (hot and other tiers): `(address, key_id)`.
    pub async fn custodian_wallets(&self, chain: &str) -> Result<Vec<(String, String)>> {
        let rows = sqlx::query("SELECT address, key_id FROM wallets WHERE chain = $1 ORDER BY address LIMIT 10000")
            .bind(chain)
            .fetch_all(self.pool())
            .await?;
        rows.iter().map(|r| Ok((r.try_get("address")?, r.try_get("key_id")?))).collect()
    }
}

#[cfg(test)]
mod tests {
    use kinko_core::freeze::{Freeze, FreezeScope};

    use super::*;
    use crate::testing::test_stores;

    fn freeze(id: &str, scope: &str, at: i64) -> Freeze {
        Freeze {
            id: id.into(),
            scope: FreezeScope::parse(scope).unwrap(),
            reason: "drill".into(),
            set_by: "operator:om1".into(),
            set_at_ms: at,
        }
    }

    fn event(at: i64) -> NewOpsEvent {
        NewOpsEvent {
            operator_id: "om1".into(),
            terminal: "127.0.0.1".into(),
            event: "freeze_set".into(),
            request_id: None,
            detail_json: "{}".into(),
            at_ms: at,
        }
    }

    #[tokio::test]
    async fn k19_freezes_are_set_once_listed_and_lifted_only_once() {
        for ts in test_stores().await {
            let s = &ts.store;
            assert!(s.active_freezes().await.unwrap().is_empty(), "{}", ts.name);
            assert!(s.set_freeze(&freeze("f1", "all", 10), &event(10)).await.unwrap());
            assert!(!s.set_freeze(&freeze("f1", "key:k", 11), &event(11)).await.unwrap(), "an id is set once");
            assert!(
                s.set_freeze(&freeze("f2", "wallet:0x3c44cdddb6a900fa2b585dd299e03d12fa4293bc", 12), &event(12))
                    .await
                    .unwrap()
            );
            let active = s.active_freezes().await.unwrap();
            assert_eq!(active.iter().map(|f| f.id.as_str()).collect::<Vec<_>>(), ["f1", "f2"], "{}", ts.name);
            assert_eq!(active[0].scope, FreezeScope::Everything);
            let events = s.ops_events(None, 100).await.unwrap();
            assert_eq!(events.iter().filter(|e| e.event == "freeze_set").count(), 2, "{}", ts.name);

            let mut tx = s.begin_write().await.unwrap();
            s.lift_freeze_tx(&mut tx, "f1", "r_1", 20).await.unwrap();
            tx.commit().await.unwrap();
            let mut tx = s.begin_write().await.unwrap();
            let again = s.lift_freeze_tx(&mut tx, "f1", "r_2", 21).await;
            assert!(matches!(again, Err(StoreError::Conflict(_))), "{}: {again:?}", ts.name);
            let unknown = s.lift_freeze_tx(&mut tx, "nope", "r_2", 21).await;
            assert!(matches!(unknown, Err(StoreError::NotFound)), "{}: {unknown:?}", ts.name);
            tx.rollback().await.unwrap();
            let active = s.active_freezes().await.unwrap();
            assert_eq!(active.iter().map(|f| f.id.as_str()).collect::<Vec<_>>(), ["f2"]);
            let f1 = s.freeze_row("f1").await.unwrap().unwrap();
            assert_eq!((f1.lifted_at_ms, f1.lifted_by_request.as_deref()), (Some(20), Some("r_1")));
            assert_eq!(s.freezes(10).await.unwrap().len(), 2);
        }
    }

    #[tokio::test]
    async fn l3_unknown_spend_is_recorded_once_with_its_freeze_and_event() {
        for ts in test_stores().await {
            let s = &ts.store;
            let report = ReportRow {
                id: "spend:0xab".into(),
                kind: REPORT_UNKNOWN_SPEND.into(),
                chain: "eth".into(),
                asset: "ETH".into(),
                at_ms: 5,
                block_number: Some(7),
                on_chain: "100".into(),
                liabilities: "0".into(),
                surplus: "0".into(),
                shortfall: "0".into(),
                detail_json: "{}".into(),
                wallet: Some("0x3c44cdddb6a900fa2b585dd299e03d12fa4293bc".into()),
                nonce: Some(4),
            };
            let f = freeze("f_spend", "wallet:0x3c44cdddb6a900fa2b585dd299e03d12fa4293bc", 5);
            assert!(s.record_unknown_spend(&report, &f, &event(5), None).await.unwrap(), "{}", ts.name);
            assert!(!s.record_unknown_spend(&report, &f, &event(6), None).await.unwrap(), "{}", ts.name);
            assert_eq!(s.active_freezes().await.unwrap().len(), 1);
            assert_eq!(s.reconciliation_reports(REPORT_UNKNOWN_SPEND, 10).await.unwrap(), vec![report]);
            let hot = "0x3c44cdddb6a900fa2b585dd299e03d12fa4293bc";
            assert_eq!(s.highest_unknown_spend_nonce(hot).await.unwrap(), Some(4), "{}", ts.name);
            assert_eq!(s.highest_unknown_spend_nonce("0x00").await.unwrap(), None, "{}", ts.name);

            assert_eq!(s.reconciliation_cursor("eth").await.unwrap(), None);
            s.set_reconciliation_cursor("eth", 9, 1).await.unwrap();
            s.set_reconciliation_cursor("eth", 10, 2).await.unwrap();
            assert_eq!(s.reconciliation_cursor("eth").await.unwrap(), Some(10));

            assert_eq!(s.append_signer_freeze_log("freeze", "f1", "{}", 1).await.unwrap(), 0);
            assert_eq!(s.append_signer_freeze_log("lift", "f1", "{\"a\":1}", 2).await.unwrap(), 1);
            let log = s.signer_freeze_log().await.unwrap();
            assert_eq!(log.iter().map(|r| (r.seq, r.event.as_str())).collect::<Vec<_>>(), [(0, "freeze"), (1, "lift")]);
        }
    }
}
