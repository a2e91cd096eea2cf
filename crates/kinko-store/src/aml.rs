//! Anti-money-laundering records (U14): cases for compliance review, the history the rules read, and the
//! purpose/beneficiary details of withdrawals.
//!
//! A case is opened together with its `ops_events` row in one transaction, so the operators' audit trail
//! shows every case (fail closed: no case without its event, no event without its case).

use kinko_core::Amount;
use sqlx::Row;
use sqlx::any::AnyRow;

use crate::ops_requests::{NewOpsEvent, append_ops_event_tx};
use crate::{Result, Store, StoreError, sql};

/// Bound on a page of cases.
pub const CASES_PAGE_MAX: u32 = 500;
/// Bound on history rows one rule evaluation reads.
pub const HISTORY_ROWS_MAX: u32 = 1_000;
pub const CASE_OPEN: &str = "open";
pub const CASE_CLOSED: &str = "closed";
/// The `ops_events.event` of an opened case.
pub const EVENT_CASE_OPENED: &str = "aml_case_opened";

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AmlCase {
    pub id: String,
    pub customer_id: String,
    /// e.g. `deny_list`, `deposit_then_withdrawal`, `structuring`, `fan_out`.
    pub rule: String,
    /// Names the event within `rule` (a withdrawal id, a request hash): one case per event.
    pub dedupe_key: String,
    /// A JSON object (never secrets).
    pub detail_json: String,
    /// `open` or `closed`.
    pub state: String,
    pub created_at_ms: i64,
    /// 0 while open.
    pub closed_at_ms: i64,
}

const CASE_COLUMNS: &str = "id, customer_id, rule, dedupe_key, detail_json, state, created_at_ms, closed_at_ms";

fn case_from_row(r: &AnyRow) -> Result<AmlCase> {
    Ok(AmlCase {
        id: r.try_get("id")?,
        customer_id: r.try_get("customer_id")?,
        rule: r.try_get("rule")?,
        dedupe_key: r.try_get("dedupe_key")?,
        detail_json: r.try_get("detail_json")?,
        state: r.try_get("state")?,
        created_at_ms: r.try_get("created_at_ms")?,
        closed_at_ms: r.try_get("closed_at_ms")?,
    })
}

/// A credited deposit, as the rules see it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CreditedDeposit {
    pub id: String,
    pub amount: Amount,
    /// When it was credited (the row's last update while `credited`).
    pub credited_at_ms: i64,
}

/// A past withdrawal, as the rules see it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PastWithdrawal {
    pub id: String,
    pub asset: String,
    pub amount: Amount,
    /// Lower-case 0x-hex.
    pub destination: String,
    pub created_at_ms: i64,
}

fn amount(column: &str, s: &str) -> Result<Amount> {
    s.parse().map_err(|e| StoreError::Corrupt(format!("{column}: {e}")))
}

impl Store {
    /// Opens `case` (state `open`) and appends `event` in one transaction. `false`: a case for the same
    /// (rule, dedupe_key) exists already; nothing was written.
    pub async fn open_aml_case(&self, case: &AmlCase, event: &NewOpsEvent) -> Result<bool> {
        let mut tx = self.begin_write().await?;
        // ON CONFLICT DO NOTHING keeps a PostgreSQL transaction usable after the duplicate.
        let res = sqlx::query(
            "INSERT INTO aml_cases (id, customer_id, rule, dedupe_key, detail_json, state, created_at_ms, closed_at_ms) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, 0) ON CONFLICT (rule, dedupe_key) DO NOTHING",
        )
        .bind(&case.id)
        .bind(&case.customer_id)
        .bind(&case.rule)
        .bind(&case.dedupe_key)
        .bind(&case.detail_json)
        .bind(CASE_OPEN)
        .bind(case.created_at_ms)
        .execute(&mut *tx)
        .await?;
        if res.rows_affected() != 1 {
            return Ok(false);
        }
        append_ops_event_tx(&mut tx, event).await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Cases, newest first, optionally only those in `state`.
    pub async fn aml_cases(&self, state: Option<&str>, limit: u32) -> Result<Vec<AmlCase>> {
        let limit = i64::from(limit.min(CASES_PAGE_MAX));
        let rows = match state {
            Some(s) => {
                let q = format!(
                    "SELECT {CASE_COLUMNS} FROM aml_cases WHERE state = $1 ORDER BY created_at_ms DESC, id DESC LIMIT $2"
                );
                sqlx::query(sql(q)).bind(s).bind(limit).fetch_all(&self.pool).await?
            }
            None => {
                let q = format!("SELECT {CASE_COLUMNS} FROM aml_cases ORDER BY created_at_ms DESC, id DESC LIMIT $1");
                sqlx::query(sql(q)).bind(limit).fetch_all(&self.pool).await?
            }
        };
        rows.iter().map(case_from_row).collect()
    }

    /// The customer's cases, newest first.
    pub async fn aml_cases_for_customer(&self, customer_id: &str, limit: u32) -> Result<Vec<AmlCase>> {
        let q = format!(
            "SELECT {CASE_COLUMNS} FROM aml_cases WHERE customer_id = $1 ORDER BY created_at_ms DESC, id DESC LIMIT $2"
        );
        let rows = sqlx::query(sql(q))
            .bind(customer_id)
            .bind(i64::from(limit.min(CASES_PAGE_MAX)))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(case_from_row).collect()
    }

    /// Deposits of `asset` credited to the customer at or after `since_ms`, newest first (at most
    /// [`HISTORY_ROWS_MAX`]).
    pub async fn credited_deposits_since(
        &self,
        customer_id: &str,
        asset: &str,
        since_ms: i64,
    ) -> Result<Vec<CreditedDeposit>> {
        let rows = sqlx::query(
            "SELECT id, amount, updated_at_ms FROM deposits WHERE customer_id = $1 AND asset = $2 \
             AND status = 'credited' AND updated_at_ms >= $3 ORDER BY updated_at_ms DESC, id DESC LIMIT $4",
        )
        .bind(customer_id)
        .bind(asset)
        .bind(since_ms)
        .bind(i64::from(HISTORY_ROWS_MAX))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(CreditedDeposit {
                    id: r.try_get("id")?,
                    amount: amount("deposits.amount", &r.try_get::<String, _>("amount")?)?,
                    credited_at_ms: r.try_get("updated_at_ms")?,
                })
            })
            .collect()
    }

    /// The customer's withdrawals (any asset, any status: an attempt counts) created in
    /// `[since_ms, until_ms]`, newest first (at most [`HISTORY_ROWS_MAX`]).
    pub async fn customer_withdrawals_between(
        &self,
        customer_id: &str,
        since_ms: i64,
        until_ms: i64,
    ) -> Result<Vec<PastWithdrawal>> {
        let rows = sqlx::query(
            "SELECT id, asset, amount, destination, created_at_ms FROM withdrawals WHERE customer_id = $1 \
             AND created_at_ms >= $2 AND created_at_ms <= $3 ORDER BY created_at_ms DESC, id DESC LIMIT $4",
        )
        .bind(customer_id)
        .bind(since_ms)
        .bind(until_ms)
        .bind(i64::from(HISTORY_ROWS_MAX))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(PastWithdrawal {
                    id: r.try_get("id")?,
                    asset: r.try_get("asset")?,
                    amount: amount("withdrawals.amount", &r.try_get::<String, _>("amount")?)?,
                    destination: r.try_get("destination")?,
                    created_at_ms: r.try_get("created_at_ms")?,
                })
            })
            .collect()
    }

    /// Records the purpose and beneficiary given for withdrawal `withdrawal_id` (before the withdrawal
    /// itself is written). Writing the same id again keeps the first record.
    pub async fn insert_withdrawal_aml_details(
        &self,
        withdrawal_id: &str,
        customer_id: &str,
        purpose: Option<&str>,
        beneficiary: Option<&str>,
        now_ms: i64,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO withdrawal_aml_details (withdrawal_id, customer_id, purpose, beneficiary, created_at_ms) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (withdrawal_id) DO NOTHING",
        )
        .bind(withdrawal_id)
        .bind(customer_id)
        .bind(purpose)
        .bind(beneficiary)
        .bind(now_ms)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// (purpose, beneficiary) recorded for a withdrawal.
    pub async fn withdrawal_aml_details(
        &self,
        withdrawal_id: &str,
    ) -> Result<Option<(Option<String>, Option<String>)>> {
        let row = sqlx::query("SELECT purpose, beneficiary FROM withdrawal_aml_details WHERE withdrawal_id = $1")
            .bind(withdrawal_id)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| Ok((r.try_get("purpose")?, r.try_get("beneficiary")?))).transpose()
    }
}
