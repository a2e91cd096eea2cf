//! Onboarding records (U1, M3): e-mail verification tokens (sha256 only, single use, expiring), each
//! customer's onboarding row (e-mail verified when, current KYC submission) and the KYC submissions with
//! their review and decision.
//!
//! Every transition is decided by `kinko_core::onboarding` and written check-and-set inside one
//! transaction: the row is read under a row lock (`FOR UPDATE` on PostgreSQL; SQLite's `BEGIN IMMEDIATE`
//! already serialises writers) and updated `WHERE state = <the state read>`, so two operators taking the
//! same case, or a customer submitting twice at once, cannot both succeed. The ops event and the customer
//! notice of an operator action are written in the same transaction (fail closed).

use kinko_core::onboarding::{self as core, EmailToken, EmailTokenError, KycAction, KycDocument, KycError, KycState};
use sqlx::Row;
use sqlx::any::AnyRow;

use crate::customers::{CustomerRow, is_unique_violation};
use crate::notices::NewNotice;
use crate::ops_requests::{NewOpsEvent, append_ops_event_tx};
use crate::{Result, Store, StoreError, Tx, sql};

/// Bound on a page of KYC submissions.
pub const SUBMISSIONS_PAGE_MAX: u32 = 500;
/// Bound on the token creation times read for the resend rate limit (far above the per-window maximum).
const RECENT_TOKENS_READ_MAX: i64 = 100;

/// A verification token to store: only its hash.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewEmailToken {
    /// Lower-case hex sha256 of the token.
    pub token_hash: String,
    pub created_at_ms: i64,
    pub expires_at_ms: i64,
}

/// Registration in dev mode: the e-mail and the identity are marked verified at once, recorded as decided
/// by `actor` (never an operator id) so the record shows it was no review.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AutoVerify {
    pub actor: String,
    pub reason: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KycSubmission {
    pub id: String,
    pub customer_id: String,
    pub state: KycState,
    pub documents: Vec<KycDocument>,
    pub submitted_at_ms: i64,
    /// '' before review.
    pub reviewer_id: String,
    pub review_started_at_ms: i64,
    /// '' before the decision.
    pub decided_by: String,
    pub decided_at_ms: i64,
    /// The decider's reason ('' before the decision). For operators and the record only.
    pub reason: String,
}

const SUBMISSION_COLUMNS: &str = "id, customer_id, state, documents_json, submitted_at_ms, reviewer_id, \
     review_started_at_ms, decided_by, decided_at_ms, reason";

fn submission_from_row(r: &AnyRow) -> Result<KycSubmission> {
    let state: String = r.try_get("state")?;
    let documents: String = r.try_get("documents_json")?;
    Ok(KycSubmission {
        id: r.try_get("id")?,
        customer_id: r.try_get("customer_id")?,
        state: KycState::parse(&state)
            .ok_or_else(|| StoreError::Corrupt(format!("kyc_submissions.state: {state:?}")))?,
        documents: serde_json::from_str(&documents)
            .map_err(|e| StoreError::Corrupt(format!("kyc_submissions.documents_json: {e}")))?,
        submitted_at_ms: r.try_get("submitted_at_ms")?,
        reviewer_id: r.try_get("reviewer_id")?,
        review_started_at_ms: r.try_get("review_started_at_ms")?,
        decided_by: r.try_get("decided_by")?,
        decided_at_ms: r.try_get("decided_at_ms")?,
        reason: r.try_get("reason")?,
    })
}

/// An operator's decision on a case under review.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KycDecision<'a> {
    pub decider_id: &'a str,
    pub verified: bool,
    /// Required (the core validates it); for operators and the record.
    pub reason: &'a str,
    pub at_ms: i64,
}

/// A customer's onboarding as stored.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct OnboardingStatus {
    /// 0 while unverified.
    pub email_verified_at_ms: i64,
    /// The current submission (the latest one), if any.
    pub submission: Option<KycSubmission>,
}

impl OnboardingStatus {
    pub fn email_verified(&self) -> bool {
        self.email_verified_at_ms != 0
    }

    pub fn kyc_state(&self) -> KycState {
        self.submission.as_ref().map_or(KycState::NotSubmitted, |s| s.state)
    }
}

/// What asking for another verification mail did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenIssue {
    /// Stored, older unused tokens superseded, the notice enqueued.
    Issued,
    /// Nothing to verify any more.
    AlreadyVerified,
    /// Too soon; the next mail may go at this time.
    RateLimited { next_at_ms: i64 },
}

async fn ensure_onboarding_row(tx: &mut Tx, customer_id: &str, now_ms: i64) -> Result<()> {
    sqlx::query(
        "INSERT INTO customer_onboarding (customer_id, email_verified_at_ms, kyc_submission_id, updated_at_ms) \
         VALUES ($1, 0, '', $2) ON CONFLICT (customer_id) DO NOTHING",
    )
    .bind(customer_id)
    .bind(now_ms)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

async fn insert_token(tx: &mut Tx, customer_id: &str, token: &NewEmailToken) -> Result<()> {
    sqlx::query(
        "INSERT INTO email_verification_tokens (token_hash, customer_id, created_at_ms, expires_at_ms, used_at_ms) \
         VALUES ($1, $2, $3, $4, 0)",
    )
    .bind(&token.token_hash)
    .bind(customer_id)
    .bind(token.created_at_ms)
    .bind(token.expires_at_ms)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

fn documents_json(documents: &[KycDocument]) -> Result<String> {
    serde_json::to_string(documents).map_err(|e| StoreError::Corrupt(format!("documents: {e}")))
}

impl Store {
    /// Registers a customer with their onboarding row in one transaction: with `email_token` and `notice`
    /// (the verification mail) for a real registration, or with `auto_verify` (dev mode) marking the
    /// e-mail and the identity verified at once. A taken e-mail address is `StoreError::Conflict("email")`
    /// and stores nothing.
    pub async fn register_customer(
        &self,
        customer: &CustomerRow,
        email_token: Option<&NewEmailToken>,
        notice: Option<&NewNotice>,
        auto_verify: Option<&AutoVerify>,
    ) -> Result<()> {
        let mut tx = self.begin_write().await?;
        let res =
            sqlx::query("INSERT INTO customers (id, email, password_hash, created_at_ms) VALUES ($1, $2, $3, $4)")
                .bind(&customer.id)
                .bind(&customer.email)
                .bind(&customer.password_hash)
                .bind(customer.created_at_ms)
                .execute(&mut *tx)
                .await;
        match res {
            Ok(_) => {}
            Err(e) if is_unique_violation(&e) => return Err(StoreError::Conflict("email".into())),
            Err(e) => return Err(e.into()),
        }
        let now = customer.created_at_ms;
        let (verified_at_ms, submission_id) = match auto_verify {
            Some(auto) => {
                let id = format!("kyc_{}", uuid::Uuid::now_v7().simple());
                sqlx::query(
                    "INSERT INTO kyc_submissions (id, customer_id, state, documents_json, submitted_at_ms, \
                     reviewer_id, review_started_at_ms, decided_by, decided_at_ms, reason) \
                     VALUES ($1, $2, $3, '[]', $4, $5, $4, $5, $4, $6)",
                )
                .bind(&id)
                .bind(&customer.id)
                .bind(KycState::Verified.as_str())
                .bind(now)
                .bind(&auto.actor)
                .bind(&auto.reason)
                .execute(&mut *tx)
                .await?;
                (now, id)
            }
            None => (0, String::new()),
        };
        sqlx::query(
            "INSERT INTO customer_onboarding (customer_id, email_verified_at_ms, kyc_submission_id, updated_at_ms) \
             VALUES ($1, $2, $3, $4)",
        )
        .bind(&customer.id)
        .bind(verified_at_ms)
        .bind(&submission_id)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        if let Some(token) = email_token {
            insert_token(&mut tx, &customer.id, token).await?;
        }
        if let Some(notice) = notice {
            self.enqueue_notice_tx(&mut tx, notice).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// The customer's onboarding; a customer without a row (registered before onboarding existed) is
    /// unverified with no submission.
    pub async fn onboarding_status(&self, customer_id: &str) -> Result<OnboardingStatus> {
        let row = sqlx::query(
            "SELECT email_verified_at_ms, kyc_submission_id FROM customer_onboarding WHERE customer_id = $1",
        )
        .bind(customer_id)
        .fetch_optional(self.pool())
        .await?;
        let Some(row) = row else {
            return Ok(OnboardingStatus::default());
        };
        let submission_id: String = row.try_get("kyc_submission_id")?;
        let submission = if submission_id.is_empty() { None } else { self.kyc_submission(&submission_id).await? };
        if !submission_id.is_empty() && submission.is_none() {
            return Err(StoreError::Corrupt(format!("customer_onboarding names missing submission {submission_id}")));
        }
        Ok(OnboardingStatus { email_verified_at_ms: row.try_get("email_verified_at_ms")?, submission })
    }

    /// The customer's KYC state in one query (the withdrawal and transfer gate).
    pub async fn customer_kyc_state(&self, customer_id: &str) -> Result<KycState> {
        let state: Option<String> = sqlx::query_scalar(
            "SELECT s.state FROM customer_onboarding o JOIN kyc_submissions s ON s.id = o.kyc_submission_id \
             WHERE o.customer_id = $1",
        )
        .bind(customer_id)
        .fetch_optional(self.pool())
        .await?;
        match state {
            None => Ok(KycState::NotSubmitted),
            Some(s) => KycState::parse(&s).ok_or_else(|| StoreError::Corrupt(format!("kyc_submissions.state: {s:?}"))),
        }
    }

    /// Uses a verification token: known, unused and unexpired (decided by the core), it is marked used and
    /// the customer's e-mail verified in one transaction. Returns the customer's id. A token used
    /// concurrently succeeds once.
    pub async fn use_email_token(
        &self,
        token_hash: &str,
        now_ms: i64,
    ) -> Result<std::result::Result<String, EmailTokenError>> {
        let mut tx = self.begin_write().await?;
        let q = format!(
            "SELECT customer_id, expires_at_ms, used_at_ms FROM email_verification_tokens WHERE token_hash = $1{}",
            self.for_update()
        );
        let row = sqlx::query(sql(q)).bind(token_hash).fetch_optional(&mut *tx).await?;
        let (customer_id, token) = match &row {
            Some(r) => {
                let used: i64 = r.try_get("used_at_ms")?;
                let token =
                    EmailToken { expires_at_ms: r.try_get("expires_at_ms")?, used_at_ms: (used != 0).then_some(used) };
                (r.try_get::<String, _>("customer_id")?, Some(token))
            }
            None => (String::new(), None),
        };
        if let Err(e) = core::email_token_usable(token, now_ms) {
            return Ok(Err(e));
        }
        let used = sqlx::query(
            "UPDATE email_verification_tokens SET used_at_ms = $1 WHERE token_hash = $2 AND used_at_ms = 0",
        )
        .bind(now_ms)
        .bind(token_hash)
        .execute(&mut *tx)
        .await?;
        if used.rows_affected() != 1 {
            return Ok(Err(EmailTokenError::Used));
        }
        ensure_onboarding_row(&mut tx, &customer_id, now_ms).await?;
        sqlx::query(
            "UPDATE customer_onboarding SET email_verified_at_ms = $1, updated_at_ms = $1 \
             WHERE customer_id = $2 AND email_verified_at_ms = 0",
        )
        .bind(now_ms)
        .bind(&customer_id)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Ok(customer_id))
    }

    /// Issues another verification token (resend): refused when the e-mail is already verified or the
    /// rate limit (core `email_resend_allowed`) says wait; otherwise older unused tokens are superseded
    /// (only the newest mail works), the token stored and `notice` enqueued, in one transaction that holds
    /// the customer's onboarding row, so concurrent resends count each other.
    pub async fn issue_email_token(
        &self,
        customer_id: &str,
        token: &NewEmailToken,
        notice: &NewNotice,
    ) -> Result<TokenIssue> {
        let now = token.created_at_ms;
        let mut tx = self.begin_write().await?;
        ensure_onboarding_row(&mut tx, customer_id, now).await?;
        let q =
            format!("SELECT email_verified_at_ms FROM customer_onboarding WHERE customer_id = $1{}", self.for_update());
        let verified_at: i64 = sqlx::query_scalar(sql(q)).bind(customer_id).fetch_one(&mut *tx).await?;
        if verified_at != 0 {
            return Ok(TokenIssue::AlreadyVerified);
        }
        let recent: Vec<i64> = sqlx::query_scalar(
            "SELECT created_at_ms FROM email_verification_tokens WHERE customer_id = $1 AND created_at_ms > $2 \
             ORDER BY created_at_ms DESC LIMIT $3",
        )
        .bind(customer_id)
        .bind(now.saturating_sub(core::EMAIL_RESEND_WINDOW_MS))
        .bind(RECENT_TOKENS_READ_MAX)
        .fetch_all(&mut *tx)
        .await?;
        if let Err(next_at_ms) = core::email_resend_allowed(&recent, now) {
            return Ok(TokenIssue::RateLimited { next_at_ms });
        }
        sqlx::query("UPDATE email_verification_tokens SET used_at_ms = $1 WHERE customer_id = $2 AND used_at_ms = 0")
            .bind(now)
            .bind(customer_id)
            .execute(&mut *tx)
            .await?;
        insert_token(&mut tx, customer_id, token).await?;
        self.enqueue_notice_tx(&mut tx, notice).await?;
        tx.commit().await?;
        Ok(TokenIssue::Issued)
    }

    /// A customer submits identity documents (first time, or after a rejection): the core decides from the
    /// e-mail state and the current submission's state; the new submission row and the onboarding row's
    /// pointer are written check-and-set in one transaction.
    pub async fn submit_kyc(
        &self,
        customer_id: &str,
        submission_id: &str,
        documents: &[KycDocument],
        now_ms: i64,
    ) -> Result<std::result::Result<KycSubmission, KycError>> {
        let mut tx = self.begin_write().await?;
        ensure_onboarding_row(&mut tx, customer_id, now_ms).await?;
        let q = format!(
            "SELECT email_verified_at_ms, kyc_submission_id FROM customer_onboarding WHERE customer_id = $1{}",
            self.for_update()
        );
        let row = sqlx::query(sql(q)).bind(customer_id).fetch_one(&mut *tx).await?;
        let verified_at: i64 = row.try_get("email_verified_at_ms")?;
        let current_id: String = row.try_get("kyc_submission_id")?;
        let current = if current_id.is_empty() {
            KycState::NotSubmitted
        } else {
            let s: String = sqlx::query_scalar("SELECT state FROM kyc_submissions WHERE id = $1")
                .bind(&current_id)
                .fetch_one(&mut *tx)
                .await?;
            KycState::parse(&s).ok_or_else(|| StoreError::Corrupt(format!("kyc_submissions.state: {s:?}")))?
        };
        let state = match core::submit(verified_at != 0, current) {
            Ok(s) => s,
            Err(e) => return Ok(Err(e)),
        };
        let submission = KycSubmission {
            id: submission_id.to_string(),
            customer_id: customer_id.to_string(),
            state,
            documents: documents.to_vec(),
            submitted_at_ms: now_ms,
            reviewer_id: String::new(),
            review_started_at_ms: 0,
            decided_by: String::new(),
            decided_at_ms: 0,
            reason: String::new(),
        };
        let inserted = sqlx::query(
            "INSERT INTO kyc_submissions (id, customer_id, state, documents_json, submitted_at_ms) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(&submission.id)
        .bind(customer_id)
        .bind(state.as_str())
        .bind(documents_json(documents)?)
        .bind(now_ms)
        .execute(&mut *tx)
        .await;
        match inserted {
            Ok(_) => {}
            // The one-open-submission index: another submission won the race.
            Err(e) if is_unique_violation(&e) => {
                return Ok(Err(KycError::IllegalTransition { from: KycState::Submitted, action: KycAction::Submit }));
            }
            Err(e) => return Err(e.into()),
        }
        let moved = sqlx::query(
            "UPDATE customer_onboarding SET kyc_submission_id = $1, updated_at_ms = $2 \
             WHERE customer_id = $3 AND kyc_submission_id = $4",
        )
        .bind(&submission.id)
        .bind(now_ms)
        .bind(customer_id)
        .bind(&current_id)
        .execute(&mut *tx)
        .await?;
        if moved.rows_affected() != 1 {
            return Err(StoreError::Conflict("kyc submission changed concurrently".into()));
        }
        tx.commit().await?;
        Ok(Ok(submission))
    }

    pub async fn kyc_submission(&self, id: &str) -> Result<Option<KycSubmission>> {
        let q = format!("SELECT {SUBMISSION_COLUMNS} FROM kyc_submissions WHERE id = $1");
        let row = sqlx::query(sql(q)).bind(id).fetch_optional(self.pool()).await?;
        row.as_ref().map(submission_from_row).transpose()
    }

    /// Submissions, optionally in one state, oldest first (a work queue), at most `limit`
    /// (≤ [`SUBMISSIONS_PAGE_MAX`]).
    pub async fn kyc_submissions(&self, state: Option<KycState>, limit: u32) -> Result<Vec<KycSubmission>> {
        let limit = i64::from(limit.min(SUBMISSIONS_PAGE_MAX));
        let rows = match state {
            Some(s) => {
                let q = format!(
                    "SELECT {SUBMISSION_COLUMNS} FROM kyc_submissions WHERE state = $1 \
                     ORDER BY submitted_at_ms, id LIMIT $2"
                );
                sqlx::query(sql(q)).bind(s.as_str()).bind(limit).fetch_all(self.pool()).await?
            }
            None => {
                let q =
                    format!("SELECT {SUBMISSION_COLUMNS} FROM kyc_submissions ORDER BY submitted_at_ms, id LIMIT $1");
                sqlx::query(sql(q)).bind(limit).fetch_all(self.pool()).await?
            }
        };
        rows.iter().map(submission_from_row).collect()
    }

    async fn submission_for_update(&self, tx: &mut Tx, id: &str) -> Result<KycSubmission> {
        let q = format!("SELECT {SUBMISSION_COLUMNS} FROM kyc_submissions WHERE id = $1{}", self.for_update());
        let row = sqlx::query(sql(q)).bind(id).fetch_optional(&mut **tx).await?;
        row.as_ref().map(submission_from_row).transpose()?.ok_or(StoreError::NotFound)
    }

    /// An operator takes a submitted case for review: check-and-set `submitted → under_review`, recording
    /// the reviewer, with `event` in the same transaction. An unknown id is `StoreError::NotFound`.
    pub async fn take_kyc_for_review(
        &self,
        id: &str,
        reviewer_id: &str,
        now_ms: i64,
        event: &NewOpsEvent,
    ) -> Result<std::result::Result<KycSubmission, KycError>> {
        let mut tx = self.begin_write().await?;
        let mut s = self.submission_for_update(&mut tx, id).await?;
        let to = match core::transition(s.state, KycAction::TakeForReview) {
            Ok(to) => to,
            Err(e) => return Ok(Err(e)),
        };
        let moved = sqlx::query(
            "UPDATE kyc_submissions SET state = $1, reviewer_id = $2, review_started_at_ms = $3 \
             WHERE id = $4 AND state = $5",
        )
        .bind(to.as_str())
        .bind(reviewer_id)
        .bind(now_ms)
        .bind(id)
        .bind(s.state.as_str())
        .execute(&mut *tx)
        .await?;
        if moved.rows_affected() != 1 {
            return Ok(Err(KycError::IllegalTransition { from: s.state, action: KycAction::TakeForReview }));
        }
        append_ops_event_tx(&mut tx, event).await?;
        tx.commit().await?;
        s.state = to;
        s.reviewer_id = reviewer_id.to_string();
        s.review_started_at_ms = now_ms;
        Ok(Ok(s))
    }

    /// An operator decides a case under review (core `decide`: the reviewer never decides): check-and-set
    /// `under_review → verified | rejected` with the reason, plus `event` and the customer's notice (built
    /// by `notice` from the decided submission and the customer's e-mail), all in one transaction.
    pub async fn decide_kyc(
        &self,
        id: &str,
        decision: &KycDecision<'_>,
        event: &NewOpsEvent,
        notice: impl FnOnce(&KycSubmission, &str) -> NewNotice,
    ) -> Result<std::result::Result<KycSubmission, KycError>> {
        let mut tx = self.begin_write().await?;
        let mut s = self.submission_for_update(&mut tx, id).await?;
        let KycDecision { decider_id, verified, reason, at_ms: now_ms } = *decision;
        let to = match core::decide(s.state, verified, &s.reviewer_id, decider_id) {
            Ok(to) => to,
            Err(e) => return Ok(Err(e)),
        };
        let moved = sqlx::query(
            "UPDATE kyc_submissions SET state = $1, decided_by = $2, decided_at_ms = $3, reason = $4 \
             WHERE id = $5 AND state = $6",
        )
        .bind(to.as_str())
        .bind(decider_id)
        .bind(now_ms)
        .bind(reason)
        .bind(id)
        .bind(s.state.as_str())
        .execute(&mut *tx)
        .await?;
        let action = if verified { KycAction::Verify } else { KycAction::Reject };
        if moved.rows_affected() != 1 {
            return Ok(Err(KycError::IllegalTransition { from: s.state, action }));
        }
        append_ops_event_tx(&mut tx, event).await?;
        let email: String = sqlx::query_scalar("SELECT email FROM customers WHERE id = $1")
            .bind(&s.customer_id)
            .fetch_one(&mut *tx)
            .await?;
        s.state = to;
        s.decided_by = decider_id.to_string();
        s.decided_at_ms = now_ms;
        s.reason = reason.to_string();
        self.enqueue_notice_tx(&mut tx, &notice(&s, &email)).await?;
        tx.commit().await?;
        Ok(Ok(s))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::test_stores;

    fn customer(n: u32) -> CustomerRow {
        CustomerRow {
            id: format!("c_{n}"),
            email: format!("c{n}@example.test"),
            password_hash: "$argon2id$unused".into(),
            created_at_ms: 1_000,
        }
    }

    fn token(hash: char, at_ms: i64) -> NewEmailToken {
        NewEmailToken {
            token_hash: hash.to_string().repeat(64),
            created_at_ms: at_ms,
            expires_at_ms: at_ms + core::EMAIL_TOKEN_TTL_MS,
        }
    }

    fn mail(c: &CustomerRow, key: &str, at_ms: i64) -> NewNotice {
        NewNotice::email(Some(c.id.clone()), &c.email, "email_verification", key, "Confirm", "token", at_ms)
    }

    fn event(name: &str) -> NewOpsEvent {
        NewOpsEvent {
            operator_id: "so1".into(),
            terminal: "127.0.0.1".into(),
            event: name.into(),
            request_id: None,
            detail_json: "{}".into(),
            at_ms: 2_000,
        }
    }

    fn decision<'a>(decider_id: &'a str, verified: bool, reason: &'a str, at_ms: i64) -> KycDecision<'a> {
        KycDecision { decider_id, verified, reason, at_ms }
    }

    fn docs() -> Vec<KycDocument> {
        vec![KycDocument { kind: "passport".into(), reference: "dms://1".into() }]
    }

    /// M3: registration stores the customer, the token and its mail together; a taken e-mail stores
    /// nothing (no second onboarding row, no mail).
    #[tokio::test]
    async fn m3_registration_writes_customer_token_and_mail_in_one_transaction() {
        for ts in test_stores().await {
            let c = customer(1);
            let t = token('a', 1_000);
            ts.register_customer(&c, Some(&t), Some(&mail(&c, "k1", 1_000)), None).await.unwrap();
            let again = CustomerRow { id: "c_dup".into(), ..c.clone() };
            let err = ts.register_customer(&again, Some(&token('b', 1_000)), Some(&mail(&c, "k2", 1_000)), None).await;
            assert!(matches!(err, Err(StoreError::Conflict(_))), "{}", ts.name);
            assert!(ts.notice_by_dedupe_key("email_verification", "k2").await.unwrap().is_none(), "{}", ts.name);
            assert!(ts.notice_by_dedupe_key("email_verification", "k1").await.unwrap().is_some(), "{}", ts.name);
            let status = ts.onboarding_status(&c.id).await.unwrap();
            assert_eq!((status.email_verified(), status.kyc_state()), (false, KycState::NotSubmitted), "{}", ts.name);
        }
    }

    /// M3: a token verifies once; a resend supersedes older tokens and is rate-limited; verified e-mails
    /// get no more tokens.
    #[tokio::test]
    async fn m3_token_single_use_superseded_and_rate_limited() {
        for ts in test_stores().await {
            let c = customer(2);
            let t1 = token('a', 1_000);
            ts.register_customer(&c, Some(&t1), Some(&mail(&c, "k1", 1_000)), None).await.unwrap();
            // Too soon after the registration mail.
            let early = ts.issue_email_token(&c.id, &token('b', 2_000), &mail(&c, "k2", 2_000)).await.unwrap();
            assert_eq!(early, TokenIssue::RateLimited { next_at_ms: 1_000 + core::EMAIL_RESEND_INTERVAL_MS });
            let later = 1_000 + core::EMAIL_RESEND_INTERVAL_MS;
            let t2 = token('c', later);
            assert_eq!(ts.issue_email_token(&c.id, &t2, &mail(&c, "k3", later)).await.unwrap(), TokenIssue::Issued);
            // The first token was superseded by the second.
            assert_eq!(ts.use_email_token(&t1.token_hash, later + 1).await.unwrap(), Err(EmailTokenError::Used));
            assert_eq!(ts.use_email_token(&"f".repeat(64), later + 1).await.unwrap(), Err(EmailTokenError::Unknown));
            assert_eq!(ts.use_email_token(&t2.token_hash, later + 1).await.unwrap(), Ok(c.id.clone()), "{}", ts.name);
            assert_eq!(ts.use_email_token(&t2.token_hash, later + 2).await.unwrap(), Err(EmailTokenError::Used));
            assert!(ts.onboarding_status(&c.id).await.unwrap().email_verified());
            let t3 = token('d', later * 10);
            let after = ts.issue_email_token(&c.id, &t3, &mail(&c, "k4", later * 10)).await.unwrap();
            assert_eq!(after, TokenIssue::AlreadyVerified, "{}", ts.name);
        }
    }

    /// M3: an expired token verifies nothing.
    #[tokio::test]
    async fn m3_expired_token_refused() {
        for ts in test_stores().await {
            let c = customer(3);
            let t = token('a', 1_000);
            ts.register_customer(&c, Some(&t), None, None).await.unwrap();
            let late = ts.use_email_token(&t.token_hash, t.expires_at_ms).await.unwrap();
            assert_eq!(late, Err(EmailTokenError::Expired), "{}", ts.name);
            assert!(!ts.onboarding_status(&c.id).await.unwrap().email_verified());
        }
    }

    /// U1: the whole machine through the store, including check-and-set under concurrency: two operators
    /// taking the same case at once, one wins; the reviewer cannot decide; a rejection allows resubmission.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn u1_kyc_transitions_check_and_set_under_concurrency() {
        for ts in test_stores().await {
            let c = customer(4);
            let t = token('a', 1_000);
            ts.register_customer(&c, Some(&t), None, None).await.unwrap();
            let refused = ts.submit_kyc(&c.id, "kyc_0", &docs(), 1_500).await.unwrap();
            assert_eq!(refused, Err(KycError::EmailUnverified), "{}", ts.name);
            ts.use_email_token(&t.token_hash, 1_500).await.unwrap().unwrap();
            let s1 = ts.submit_kyc(&c.id, "kyc_1", &docs(), 2_000).await.unwrap().unwrap();
            assert_eq!(s1.state, KycState::Submitted);
            let twice = ts.submit_kyc(&c.id, "kyc_x", &docs(), 2_001).await.unwrap();
            assert!(matches!(twice, Err(KycError::IllegalTransition { .. })), "{}: one open submission", ts.name);

            let (a, b) = (ts.store.clone(), ts.store.clone());
            let (ea, eb) = (event("kyc_review_started"), event("kyc_review_started"));
            let (ra, rb) = tokio::join!(
                tokio::spawn(async move { a.take_kyc_for_review("kyc_1", "so1", 2_100, &ea).await }),
                tokio::spawn(async move { b.take_kyc_for_review("kyc_1", "so2", 2_100, &eb).await }),
            );
            let results = [ra.unwrap().unwrap(), rb.unwrap().unwrap()];
            assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 1, "{}: {results:?}", ts.name);
            let reviewer = ts.kyc_submission("kyc_1").await.unwrap().unwrap().reviewer_id;
            let notice = |s: &KycSubmission, email: &str| {
                NewNotice::email(Some(s.customer_id.clone()), email, "kyc_decision", &s.id, "Decision", "body", 0)
            };
            let own =
                ts.decide_kyc("kyc_1", &decision(&reviewer, true, "ok", 2_200), &event("kyc_verified"), notice).await;
            assert_eq!(own.unwrap(), Err(KycError::ReviewerDecides), "{}", ts.name);
            let rejected = ts
                .decide_kyc("kyc_1", &decision("om1", false, "blurred", 2_300), &event("kyc_rejected"), notice)
                .await
                .unwrap();
            assert_eq!(rejected.map(|s| s.state), Ok(KycState::Rejected), "{}", ts.name);
            assert_eq!(ts.customer_kyc_state(&c.id).await.unwrap(), KycState::Rejected);
            let again = ts
                .decide_kyc("kyc_1", &decision("om2", true, "x", 2_400), &event("kyc_verified"), notice)
                .await
                .unwrap();
            assert!(matches!(again, Err(KycError::IllegalTransition { .. })), "{}", ts.name);

            let s2 = ts.submit_kyc(&c.id, "kyc_2", &docs(), 3_000).await.unwrap().unwrap();
            assert_eq!(ts.customer_kyc_state(&c.id).await.unwrap(), KycState::Submitted);
            ts.take_kyc_for_review(&s2.id, "so1", 3_100, &event("kyc_review_started")).await.unwrap().unwrap();
            ts.decide_kyc(&s2.id, &decision("om1", true, "ok", 3_200), &event("kyc_verified"), notice)
                .await
                .unwrap()
                .unwrap();
            assert_eq!(ts.customer_kyc_state(&c.id).await.unwrap(), KycState::Verified, "{}", ts.name);
            let status = ts.onboarding_status(&c.id).await.unwrap();
            assert_eq!(status.submission.map(|s| (s.id, s.decided_by)), Some(("kyc_2".into(), "om1".into())));
            let history = ts.kyc_submissions(None, 10).await.unwrap();
            assert_eq!(history.iter().map(|s| s.state).collect::<Vec<_>>(), [KycState::Rejected, KycState::Verified]);
            assert!(matches!(ts.take_kyc_for_review("nope", "so1", 1, &event("x")).await, Err(StoreError::NotFound)));
        }
    }

    /// U1: dev-mode registration is verified at once and says by whom.
    #[tokio::test]
    async fn u1_auto_verify_records_the_actor() {
        for ts in test_stores().await {
            let c = customer(5);
            let auto = AutoVerify { actor: "dev-auto".into(), reason: "dev".into() };
            ts.register_customer(&c, None, None, Some(&auto)).await.unwrap();
            let status = ts.onboarding_status(&c.id).await.unwrap();
            assert!(status.email_verified(), "{}", ts.name);
            let s = status.submission.unwrap();
            assert_eq!((s.state, s.decided_by.as_str(), s.documents.len()), (KycState::Verified, "dev-auto", 0));
            assert_eq!(ts.customer_kyc_state("c_unknown").await.unwrap(), KycState::NotSubmitted);
        }
    }
}
