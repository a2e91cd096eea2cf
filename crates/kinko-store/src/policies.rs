//! Withdrawal policy storage (K11, K20, O1): approved policy versions, the wallet history the rules read,
//! and the policed creation of a customer withdrawal — the decision, the row, the hold and (when operators
//! must approve) the approval request, all in one transaction.
//!
//! The decision itself is `kinko_core::policy`'s; this module only feeds it the wallet's history read
//! inside the same write transaction, so two concurrent withdrawals cannot both pass a rolling limit
//! that only one of them fits under (SQLite: `BEGIN IMMEDIATE`; PostgreSQL: the wallet row is locked).

use kinko_core::ledger::{AccountKind, LedgerError, postings};
use kinko_core::policy::PastWithdrawal;
use kinko_core::withdrawal::WithdrawalStatus;
use sqlx::Row;

use crate::customers::is_unique_violation;
use crate::withdrawal_requests::{CreateWithdrawalError, NewWithdrawal};
use crate::withdrawals::{WITHDRAWAL_COLUMNS, WithdrawalRow};
use crate::{Result, Store, StoreError, Tx, parse_u128};

/// Bound on approvals read for one request (`kinko_core::operators::APPROVALS_PER_REQUEST_MAX` is the
/// signer's; this is the storage-side bound, kept equal).
pub const APPROVALS_READ_MAX: u32 = kinko_core::operators::APPROVALS_PER_REQUEST_MAX as u32;

/// One stored policy version.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyVersion {
    pub wallet: String,
    pub asset: String,
    pub version: i64,
    pub config_json: String,
    pub request_id: String,
    pub at_ms: i64,
}

fn version_from_row(r: &sqlx::any::AnyRow) -> Result<PolicyVersion> {
    Ok(PolicyVersion {
        wallet: r.try_get("wallet")?,
        asset: r.try_get("asset")?,
        version: r.try_get("version")?,
        config_json: r.try_get("config_json")?,
        request_id: r.try_get("request_id")?,
        at_ms: r.try_get("at_ms")?,
    })
}

/// An operator approval request created together with a withdrawal that needs approval. Field meanings
/// are those of the `ops_requests` table (migration 0004).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PendingApproval {
    pub process: String,
    pub kind: String,
    pub params_json: String,
    pub requester: String,
    pub requester_terminal: String,
    pub required: u8,
    pub reasons_json: String,
}

/// What the policy decided, as the store needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Gate {
    /// Automatic: the withdrawal starts `approved`.
    Auto,
    /// Starts `pending_approval`, with this approval request (id = the withdrawal id).
    Pending(PendingApproval),
    /// Refused: nothing is written, nothing held.
    Deny,
}

/// The outcome of [`Store::create_policed_withdrawal`]. `D` is whatever the caller's decision function
/// returned alongside the gate (the engine's `Decision`, to report its reasons).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Policed<D> {
    Created {
        row: WithdrawalRow,
        decided: D,
    },
    /// Same customer and idempotency key already exist; nothing was decided or written.
    Existing(WithdrawalRow),
    Denied(D),
}

/// Where a pending withdrawal ended up when its quorum arrived.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QuorumOutcome {
    /// Moved `pending_approval → approved` now.
    Approved,
    /// Already past `pending_approval` (`approved` or later): nothing to do.
    AlreadyApproved(WithdrawalStatus),
    /// Failed or cancelled meanwhile: must not be revived.
    Closed(WithdrawalStatus),
}

/// Where a pending withdrawal ended up when it was closed without being paid.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseOutcome {
    /// Moved `pending_approval →` failed/cancelled now, hold released.
    Closed,
    /// Was no longer pending (approved meanwhile, or already closed): nothing changed.
    NotPending(WithdrawalStatus),
}

/// Who closes a pending withdrawal's approval request, for its audit event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestCloser<'a> {
    pub actor: &'a str,
    pub terminal: &'a str,
}

/// A stored approve decision on an operator request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredApproval {
    pub operator_id: String,
    pub signature_hex: String,
}

impl Store {
    /// The highest stored policy version of (wallet, asset), if any.
    pub async fn latest_policy_version(&self, wallet: &str, asset: &str) -> Result<Option<PolicyVersion>> {
        let r = sqlx::query(
            "SELECT wallet, asset, version, config_json, request_id, at_ms FROM policy_versions \
             WHERE wallet = $1 AND asset = $2 ORDER BY version DESC LIMIT 1",
        )
        .bind(wallet)
        .bind(asset)
        .fetch_optional(self.pool())
        .await?;
        r.as_ref().map(version_from_row).transpose()
    }

    /// Appends the next policy version of (wallet, asset), approved by `request_id`. Idempotent per request:
    /// a second call for the same request returns the version it stored the first time.
    pub async fn insert_policy_version(
        &self,
        wallet: &str,
        asset: &str,
        config_json: &str,
        request_id: &str,
        now_ms: i64,
    ) -> Result<PolicyVersion> {
        let mut tx = self.begin_write().await?;
        let select =
            "SELECT wallet, asset, version, config_json, request_id, at_ms FROM policy_versions WHERE request_id = $1";
        if let Some(r) = sqlx::query(select).bind(request_id).fetch_optional(&mut *tx).await? {
            return version_from_row(&r);
        }
        let latest: Option<i64> =
            sqlx::query_scalar("SELECT MAX(version) FROM policy_versions WHERE wallet = $1 AND asset = $2")
                .bind(wallet)
                .bind(asset)
                .fetch_one(&mut *tx)
                .await?;
        let version = latest.unwrap_or(0) + 1;
        sqlx::query(
            "INSERT INTO policy_versions (wallet, asset, version, config_json, request_id, at_ms) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(wallet)
        .bind(asset)
        .bind(version)
        .bind(config_json)
        .bind(request_id)
        .bind(now_ms)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(PolicyVersion {
            wallet: wallet.into(),
            asset: asset.into(),
            version,
            config_json: config_json.into(),
            request_id: request_id.into(),
            at_ms: now_ms,
        })
    }

    /// The wallet's most recent withdrawals of `asset` that moved or may still move funds (every status but
    /// failed and cancelled), newest first, at most `limit`.
    pub async fn wallet_history(&self, wallet: &str, asset: &str, limit: usize) -> Result<Vec<PastWithdrawal>> {
        let mut tx = self.begin_write().await?;
        let h = wallet_history_tx(&mut tx, wallet, asset, limit).await?;
        tx.commit().await?;
        Ok(h)
    }

    /// Decides and creates a customer withdrawal in one transaction: reads the source wallet's history,
    /// asks `decide`, then writes the row (status from the gate), the hold and, for a pending one, the
    /// approval request with id = withdrawal id. A denial writes nothing. An existing (customer,
    /// idempotency key) returns that withdrawal without deciding again, so a replay keeps its outcome.
    /// `new.status` is ignored: the gate sets it (`approved` or `pending_approval`).
    pub async fn create_policed_withdrawal<D>(
        &self,
        new: &NewWithdrawal,
        history_len_max: usize,
        decide: impl FnOnce(&[PastWithdrawal]) -> (Gate, D),
        now_ms: i64,
    ) -> std::result::Result<Policed<D>, CreateWithdrawalError> {
        self.create_policed_withdrawal_with(new, history_len_max, decide, None, now_ms).await
    }

    /// [`Store::create_policed_withdrawal`], and with `confirmation` (U4, U9) the withdrawal starts in
    /// `awaiting_confirmation` instead: the hold is taken the same, the gate (and its approval request) is
    /// kept in the confirmation row to apply on confirmation, and the confirmation's notices are written —
    /// all in the same transaction (`crate::withdrawal_confirmations`). A denial still writes nothing.
    pub async fn create_policed_withdrawal_with<D>(
        &self,
        new: &NewWithdrawal,
        history_len_max: usize,
        decide: impl FnOnce(&[PastWithdrawal]) -> (Gate, D),
        confirmation: Option<&crate::withdrawal_confirmations::ConfirmationDraft>,
        now_ms: i64,
    ) -> std::result::Result<Policed<D>, CreateWithdrawalError> {
        match self.try_create_policed(new, history_len_max, decide, confirmation, now_ms).await {
            Err(CreateWithdrawalError::Store(StoreError::Db(e))) if is_unique_violation(&e) => {
                // A concurrent request with the same key committed first (PostgreSQL; SQLite serialises).
                let existing = self
                    .withdrawal_by_idempotency_key(&new.customer_id, &new.idempotency_key)
                    .await?
                    .ok_or_else(|| StoreError::Conflict("withdrawal id collision".into()))?;
                Ok(Policed::Existing(existing))
            }
            other => other,
        }
    }

    async fn try_create_policed<D>(
        &self,
        new: &NewWithdrawal,
        history_len_max: usize,
        decide: impl FnOnce(&[PastWithdrawal]) -> (Gate, D),
        confirmation: Option<&crate::withdrawal_confirmations::ConfirmationDraft>,
        now_ms: i64,
    ) -> std::result::Result<Policed<D>, CreateWithdrawalError> {
        let mut tx = self.begin_write().await?;
        let q = format!("SELECT {WITHDRAWAL_COLUMNS} FROM withdrawals WHERE customer_id = $1 AND idempotency_key = $2");
        let existing = sqlx::query(crate::sql(q))
            .bind(&new.customer_id)
            .bind(&new.idempotency_key)
            .fetch_optional(&mut *tx)
            .await
            .map_err(StoreError::from)?;
        if let Some(r) = existing {
            return Ok(Policed::Existing(WithdrawalRow::from_row(&r)?));
        }
        if has_receivable(&mut tx, &new.customer_id).await? {
            return Err(CreateWithdrawalError::NegativePosition);
        }
        // PostgreSQL: serialise decisions per wallet so the history read below stays true until commit.
        let lock = format!("SELECT address FROM wallets WHERE address = $1{}", self.for_update());
        sqlx::query(crate::sql(lock))
            .bind(&new.source_wallet)
            .fetch_optional(&mut *tx)
            .await
            .map_err(StoreError::from)?;
        let history = wallet_history_tx(&mut tx, &new.source_wallet, new.asset.as_str(), history_len_max).await?;
        let (gate, decided) = decide(&history);
        let status = match &gate {
            Gate::Deny => return Ok(Policed::Denied(decided)),
            _ if confirmation.is_some() => WithdrawalStatus::AwaitingConfirmation,
            Gate::Auto => WithdrawalStatus::Approved,
            Gate::Pending(_) => WithdrawalStatus::PendingApproval,
        };
        sqlx::query(
            "INSERT INTO withdrawals (id, customer_id, asset, chain, amount, destination, source_wallet, status, intent_hash, \
             idempotency_key, request_hash, confirmations, lease_until_ms, next_attempt_at_ms, created_at_ms, updated_at_ms) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, 0, 0, $12, $13, $14)",
        )
        .bind(&new.id)
        .bind(&new.customer_id)
        .bind(new.asset.as_str())
        .bind(&new.chain)
        .bind(new.amount.to_string())
        .bind(&new.destination)
        .bind(&new.source_wallet)
        .bind(status.as_str())
        .bind(&new.intent_hash)
        .bind(&new.idempotency_key)
        .bind(&new.request_hash)
        .bind(now_ms)
        .bind(now_ms)
        .bind(now_ms)
        .execute(&mut *tx)
        .await
        .map_err(StoreError::from)?;
        let hold = postings::withdrawal_hold(&new.id, &new.customer_id, &new.asset, new.amount);
        match self.post_entry(&mut tx, hold, now_ms).await {
            Ok(_) => {}
            // Dropping `tx` rolls the row back with the failed hold.
            Err(StoreError::Ledger(LedgerError::WouldGoNegative { .. })) => {
                return Err(CreateWithdrawalError::InsufficientAvailable);
            }
            Err(e) => return Err(e.into()),
        }
        if let Some(c) = confirmation {
            // U4: operators see the request only once the customer confirmed.
            crate::withdrawal_confirmations::insert_confirmation_tx(
                self,
                &mut tx,
                &new.id,
                &new.customer_id,
                c,
                &gate,
                now_ms,
            )
            .await?;
        } else if let Gate::Pending(p) = &gate {
            insert_approval_request(&mut tx, &new.id, &new.intent_hash, p, now_ms).await?;
        }
        let q = format!("SELECT {WITHDRAWAL_COLUMNS} FROM withdrawals WHERE id = $1");
        let row = sqlx::query(crate::sql(q)).bind(&new.id).fetch_one(&mut *tx).await.map_err(StoreError::from)?;
        let row = WithdrawalRow::from_row(&row)?;
        tx.commit().await.map_err(StoreError::from)?;
        Ok(Policed::Created { row, decided })
    }

    /// `pending_approval → approved` once the quorum is in; idempotent. `None` when no such withdrawal.
    pub async fn approve_pending_withdrawal(&self, id: &str, now_ms: i64) -> Result<Option<QuorumOutcome>> {
        let moved = sqlx::query(
            "UPDATE withdrawals SET status = $1, updated_at_ms = $2, next_attempt_at_ms = $2, error = NULL \
             WHERE id = $3 AND status = $4",
        )
        .bind(WithdrawalStatus::Approved.as_str())
        .bind(now_ms)
        .bind(id)
        .bind(WithdrawalStatus::PendingApproval.as_str())
        .execute(self.pool())
        .await?
        .rows_affected();
        if moved == 1 {
            return Ok(Some(QuorumOutcome::Approved));
        }
        Ok(self.withdrawal(id).await?.map(|w| match w.status {
            s @ (WithdrawalStatus::Failed | WithdrawalStatus::Cancelled) => QuorumOutcome::Closed(s),
            s => QuorumOutcome::AlreadyApproved(s),
        }))
    }

    /// Closes a `pending_approval` withdrawal without paying it: status `to` (failed when operators rejected
    /// it, cancelled when the customer withdrew it), the error text recorded, the hold released — one
    /// transaction. With `closer`, its approval request also moves requested → rejected with a
    /// `request_cancelled` audit event, so no later approval can count; a request that is no longer
    /// `requested` refuses the whole close (`StoreError::Conflict`). `customer_id` restricts the close to that
    /// customer's withdrawal. `None` when there is no such withdrawal.
    pub async fn close_pending_withdrawal(
        &self,
        id: &str,
        customer_id: Option<&str>,
        to: WithdrawalStatus,
        error: &str,
        closer: Option<RequestCloser<'_>>,
        now_ms: i64,
    ) -> Result<Option<CloseOutcome>> {
        if !matches!(to, WithdrawalStatus::Failed | WithdrawalStatus::Cancelled) {
            return Err(StoreError::Conflict(format!("a pending withdrawal closes as failed or cancelled, not {to}")));
        }
        let mut tx = self.begin_write().await?;
        let q = format!("SELECT {WITHDRAWAL_COLUMNS} FROM withdrawals WHERE id = $1{}", self.for_update());
        let Some(r) = sqlx::query(crate::sql(q)).bind(id).fetch_optional(&mut *tx).await? else {
            return Ok(None);
        };
        let w = WithdrawalRow::from_row(&r)?;
        if customer_id.is_some_and(|c| c != w.customer_id) {
            return Ok(None);
        }
        if w.status != WithdrawalStatus::PendingApproval {
            return Ok(Some(CloseOutcome::NotPending(w.status)));
        }
        sqlx::query("UPDATE withdrawals SET status = $1, error = $2, updated_at_ms = $3 WHERE id = $4 AND status = $5")
            .bind(to.as_str())
            .bind(error)
            .bind(now_ms)
            .bind(id)
            .bind(WithdrawalStatus::PendingApproval.as_str())
            .execute(&mut *tx)
            .await?;
        let release = postings::withdrawal_release(&w.id, &w.customer_id, &w.asset, w.amount);
        self.post_entry(&mut tx, release, now_ms).await?;
        if let Some(c) = closer {
            use crate::ops_requests::{
                NewOpsEvent, STATE_REJECTED, STATE_REQUESTED, append_ops_event_tx, set_ops_request_state_tx,
            };
            set_ops_request_state_tx(&mut tx, id, STATE_REQUESTED, STATE_REJECTED, now_ms).await?;
            let event = NewOpsEvent {
                operator_id: c.actor.to_string(),
                terminal: c.terminal.to_string(),
                event: "request_cancelled".into(),
                request_id: Some(id.to_string()),
                detail_json: serde_json::json!({ "withdrawal_status": to.as_str() }).to_string(),
                at_ms: now_ms,
            };
            append_ops_event_tx(&mut tx, &event).await?;
        }
        tx.commit().await?;
        Ok(Some(CloseOutcome::Closed))
    }

    /// The approve decisions stored for an operator request (for a customer withdrawal: id = withdrawal id),
    /// oldest first, at most [`APPROVALS_READ_MAX`]. What the pipeline hands the signer, which verifies
    /// each signature itself.
    pub async fn request_approvals(&self, request_id: &str) -> Result<Vec<StoredApproval>> {
        let rows = sqlx::query(
            "SELECT operator_id, signature_hex FROM ops_approvals WHERE request_id = $1 AND decision = 'approve' \
             ORDER BY at_ms, operator_id LIMIT $2",
        )
        .bind(request_id)
        .bind(i64::from(APPROVALS_READ_MAX))
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|r| {
                Ok(StoredApproval {
                    operator_id: r.try_get("operator_id")?,
                    signature_hex: r.try_get("signature_hex")?,
                })
            })
            .collect()
    }

    /// The tier of one of the custodian's own wallets (`wallets` table) at `address` (lower-case 0x-hex),
    /// or `None` when the address is not a registered custodian wallet.
    pub async fn custodian_wallet_tier(&self, address: &str) -> Result<Option<String>> {
        Ok(sqlx::query_scalar("SELECT tier FROM wallets WHERE address = $1")
            .bind(address)
            .fetch_optional(self.pool())
            .await?)
    }

    /// Whether `address` (lower-case 0x-hex) is a customer's deposit address: never a custodian destination.
    pub async fn is_deposit_address(&self, address: &str) -> Result<bool> {
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM deposit_addresses WHERE address = $1")
            .bind(address)
            .fetch_one(self.pool())
            .await?;
        Ok(n > 0)
    }

    /// The stored `reasons_json` of an operator request, if the request exists.
    pub async fn request_reasons_json(&self, request_id: &str) -> Result<Option<String>> {
        Ok(sqlx::query_scalar("SELECT reasons_json FROM ops_requests WHERE id = $1")
            .bind(request_id)
            .fetch_optional(self.pool())
            .await?)
    }

    /// The quorum an operator request requires, if the request exists.
    pub async fn request_required(&self, request_id: &str) -> Result<Option<u8>> {
        let required: Option<i64> = sqlx::query_scalar("SELECT required FROM ops_requests WHERE id = $1")
            .bind(request_id)
            .fetch_optional(self.pool())
            .await?;
        required
            .map(|r| {
                u8::try_from(r).map_err(|_| StoreError::Corrupt(format!("ops_requests.required {r} for {request_id}")))
            })
            .transpose()
    }
}

/// See [`Store::wallet_history`].
pub async fn wallet_history_tx(tx: &mut Tx, wallet: &str, asset: &str, limit: usize) -> Result<Vec<PastWithdrawal>> {
    let rows = sqlx::query(
        "SELECT amount, created_at_ms FROM withdrawals WHERE source_wallet = $1 AND asset = $2 \
         AND status <> $3 AND status <> $4 ORDER BY created_at_ms DESC, id DESC LIMIT $5",
    )
    .bind(wallet)
    .bind(asset)
    .bind(WithdrawalStatus::Failed.as_str())
    .bind(WithdrawalStatus::Cancelled.as_str())
    .bind(i64::try_from(limit).unwrap_or(i64::MAX))
    .fetch_all(&mut **tx)
    .await?;
    rows.iter()
        .map(|r| {
            let amount: String = r.try_get("amount")?;
            Ok(PastWithdrawal {
                at_ms: r.try_get("created_at_ms")?,
                amount: amount.parse().map_err(|e| StoreError::Corrupt(format!("withdrawals.amount: {e}")))?,
            })
        })
        .collect()
}

/// The approval request of a pending customer withdrawal (and its `request_created` audit event).
pub(crate) async fn insert_approval_request(
    tx: &mut Tx,
    id: &str,
    intent_hash: &str,
    p: &PendingApproval,
    now_ms: i64,
) -> Result<()> {
    let request = crate::ops_requests::NewOpsRequest {
        id: id.to_string(),
        process: p.process.clone(),
        kind: p.kind.clone(),
        params_json: p.params_json.clone(),
        intent_hash: intent_hash.to_string(),
        requester: p.requester.clone(),
        requester_terminal: p.requester_terminal.clone(),
        required: i64::from(p.required),
        reasons_json: p.reasons_json.clone(),
        now_ms,
    };
    crate::ops_requests::insert_ops_request_tx(tx, &request).await
}

/// Whether any of the customer's receivable accounts is non-zero (same rule as `create_withdrawal`).
async fn has_receivable(tx: &mut Tx, customer_id: &str) -> Result<bool> {
    let rows = sqlx::query("SELECT debits, credits FROM ledger_accounts WHERE holder = $1 AND kind = $2")
        .bind(customer_id)
        .bind(AccountKind::Receivable.as_str())
        .fetch_all(&mut **tx)
        .await?;
    for r in rows {
        let debits = parse_u128("ledger_accounts.debits", &r.try_get::<String, _>("debits")?)?;
        let credits = parse_u128("ledger_accounts.credits", &r.try_get::<String, _>("credits")?)?;
        if debits != credits {
            return Ok(true);
        }
    }
    Ok(false)
}
