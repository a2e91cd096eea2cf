//! Customer notices (issue 5; U10, U11, L5): a transactional outbox.
//!
//! A rule that must tell the customer something over a second channel (a login, a withdrawal, a
//! confirmation code) calls [`Store::enqueue_notice_tx`] inside the transaction that records the event,
//! so the notice exists exactly when the event committed: a rolled-back event never notifies, a committed
//! one is never lost. `(kind, dedupe_key)` is unique, so the same event enqueued twice (a retried request,
//! two instances) notifies once.
//!
//! The sender (`kinko_server::notices`) claims due notices with [`Store::claim_notices`] (row locks with
//! `SKIP LOCKED` on PostgreSQL, so several instances share the work without sending a notice twice at
//! once), delivers them, and records the outcome with [`Store::mark_notice_sent`] or
//! [`Store::mark_notice_failed`]: a failure is retried with exponential back-off up to
//! [`RetryPolicy::attempts_max`] attempts, then the notice is `failed` (kept, never deleted). Delivery is
//! at least once: a sender that dies after delivering but before recording it delivers again once its
//! lease has run out, so webhook receivers dedupe on the notice id.
//!
//! Bodies may hold one-time codes: `Debug` of [`NewNotice`] and [`Notice`] leaves them out.

use sqlx::Row;

use crate::{Result, Store, StoreError, Tx, sql};

/// Bound on `kind` (a short machine name such as `login`).
pub const KIND_LEN_MAX: usize = 64;
/// Bound on `dedupe_key`.
pub const DEDUPE_KEY_LEN_MAX: usize = 200;
/// Bound on `recipient` (RFC 5321 caps an address path at 256 octets).
pub const RECIPIENT_LEN_MAX: usize = 254;
/// Bound on `subject`.
pub const SUBJECT_LEN_MAX: usize = 200;
/// Bound on `body`, in bytes.
pub const BODY_LEN_MAX: usize = 32 * 1024;
/// Bound on the serialised `payload`, in bytes.
pub const PAYLOAD_LEN_MAX: usize = 16 * 1024;
/// Bound on a stored delivery error, in characters.
pub const LAST_ERROR_LEN_MAX: usize = 500;
/// Bound on notices claimed at once.
pub const CLAIM_LIMIT_MAX: u32 = 1_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum NoticeChannel {
    Email,
    Webhook,
}

impl NoticeChannel {
    pub const ALL: [NoticeChannel; 2] = [NoticeChannel::Email, NoticeChannel::Webhook];

    pub fn as_str(self) -> &'static str {
        match self {
            NoticeChannel::Email => "email",
            NoticeChannel::Webhook => "webhook",
        }
    }

    pub fn parse(s: &str) -> Option<NoticeChannel> {
        NoticeChannel::ALL.into_iter().find(|c| c.as_str() == s)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum NoticeState {
    /// Waiting for (another) delivery attempt.
    Pending,
    Sent,
    /// Gave up after [`RetryPolicy::attempts_max`] attempts.
    Failed,
}

impl NoticeState {
    pub fn as_str(self) -> &'static str {
        match self {
            NoticeState::Pending => "pending",
            NoticeState::Sent => "sent",
            NoticeState::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<NoticeState> {
        [NoticeState::Pending, NoticeState::Sent, NoticeState::Failed].into_iter().find(|st| st.as_str() == s)
    }
}

/// A notice to enqueue. Build it with [`NewNotice::email`] or [`NewNotice::webhook`] and adjust the
/// public fields; [`Store::enqueue_notice_tx`] validates it again before writing.
#[derive(Clone, PartialEq)]
pub struct NewNotice {
    pub customer_id: Option<String>,
    pub channel: NoticeChannel,
    /// E-mail: the address. Webhook: the identifier the receiving relay routes on (e.g. the customer id).
    pub recipient: String,
    /// What happened, a short machine name: `[a-z0-9_.-]`, e.g. `login`, `withdrawal_confirmation`.
    pub kind: String,
    /// Names the event within `kind` (e.g. the session id, the withdrawal id): the same
    /// `(kind, dedupe_key)` is delivered once, however often it is enqueued.
    pub dedupe_key: String,
    pub subject: String,
    /// Plain text. May hold a one-time code: never logged.
    pub body: String,
    /// Machine-readable details for webhook receivers (and for the record), a JSON object.
    pub payload: serde_json::Value,
    pub created_at_ms: i64,
}

impl std::fmt::Debug for NewNotice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewNotice")
            .field("customer_id", &self.customer_id)
            .field("channel", &self.channel)
            .field("kind", &self.kind)
            .field("dedupe_key", &self.dedupe_key)
            .field("body", &"<redacted>")
            .finish_non_exhaustive()
    }
}

/// A field of a [`NewNotice`] that cannot be enqueued, and why.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("notice.{field}: {reason}")]
pub struct NoticeInvalid {
    pub field: &'static str,
    pub reason: String,
}

impl NewNotice {
    /// An e-mail notice with an empty payload, created now.
    pub fn email(
        customer_id: Option<String>,
        to: impl Into<String>,
        kind: impl Into<String>,
        dedupe_key: impl Into<String>,
        subject: impl Into<String>,
        body: impl Into<String>,
        now_ms: i64,
    ) -> NewNotice {
        NewNotice {
            customer_id,
            channel: NoticeChannel::Email,
            recipient: to.into(),
            kind: kind.into(),
            dedupe_key: dedupe_key.into(),
            subject: subject.into(),
            body: body.into(),
            payload: serde_json::json!({}),
            created_at_ms: now_ms,
        }
    }

    /// A webhook notice with an empty payload ([`NewNotice::with_payload`] adds one), created now;
    /// `recipient` is what the receiver routes on.
    pub fn webhook(
        customer_id: Option<String>,
        recipient: impl Into<String>,
        kind: impl Into<String>,
        dedupe_key: impl Into<String>,
        subject: impl Into<String>,
        body: impl Into<String>,
        now_ms: i64,
    ) -> NewNotice {
        NewNotice {
            customer_id,
            channel: NoticeChannel::Webhook,
            recipient: recipient.into(),
            kind: kind.into(),
            dedupe_key: dedupe_key.into(),
            subject: subject.into(),
            body: body.into(),
            payload: serde_json::json!({}),
            created_at_ms: now_ms,
        }
    }

    /// The same notice with `payload` (a JSON object) as its machine-readable details.
    pub fn with_payload(mut self, payload: serde_json::Value) -> NewNotice {
        self.payload = payload;
        self
    }

    /// Checks every bound; the error names the field. Header fields (recipient, subject) must be free of
    /// control characters, so nothing can inject a header into the mail.
    pub fn validate(&self) -> Result<(), NoticeInvalid> {
        let invalid = |field: &'static str, reason: &str| Err(NoticeInvalid { field, reason: reason.into() });
        if self.kind.is_empty()
            || self.kind.len() > KIND_LEN_MAX
            || !self.kind.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_.-".contains(&b))
        {
            return invalid("kind", "must be 1 to 64 characters of a-z, 0-9, '_', '.', '-'");
        }
        if self.dedupe_key.is_empty()
            || self.dedupe_key.len() > DEDUPE_KEY_LEN_MAX
            || self.dedupe_key.chars().any(char::is_control)
        {
            return invalid("dedupe_key", "must be 1 to 200 bytes without control characters");
        }
        if self.recipient.is_empty()
            || self.recipient.len() > RECIPIENT_LEN_MAX
            || self.recipient.chars().any(|c| c.is_control() || c.is_whitespace())
        {
            return invalid("recipient", "must be 1 to 254 bytes without spaces or control characters");
        }
        if self.channel == NoticeChannel::Email {
            let well_formed = match self.recipient.split_once('@') {
                Some((local, domain)) => {
                    !local.is_empty()
                        && !domain.is_empty()
                        && !domain.contains('@')
                        && !self.recipient.contains(['<', '>'])
                }
                None => false,
            };
            if !well_formed {
                return invalid("recipient", "must be an e-mail address (local@domain)");
            }
        }
        if self.subject.is_empty() || self.subject.len() > SUBJECT_LEN_MAX || self.subject.chars().any(char::is_control)
        {
            return invalid("subject", "must be 1 to 200 bytes without control characters (one line)");
        }
        if self.body.len() > BODY_LEN_MAX {
            return invalid("body", "must be at most 32 KiB");
        }
        if !self.payload.is_object() {
            return invalid("payload", "must be a JSON object");
        }
        if self.payload.to_string().len() > PAYLOAD_LEN_MAX {
            return invalid("payload", "must serialise to at most 16 KiB");
        }
        if self.created_at_ms < 0 {
            return invalid("created_at_ms", "must not be negative");
        }
        Ok(())
    }
}

/// A stored notice.
#[derive(Clone, PartialEq)]
pub struct Notice {
    pub id: String,
    pub customer_id: Option<String>,
    pub channel: NoticeChannel,
    pub recipient: String,
    pub kind: String,
    pub dedupe_key: String,
    pub subject: String,
    /// May hold a one-time code: never logged.
    pub body: String,
    pub payload_json: String,
    pub state: NoticeState,
    /// Attempts started so far, this one included when the notice came from [`Store::claim_notices`].
    pub attempts: u32,
    pub next_attempt_at_ms: i64,
    pub last_error: Option<String>,
    pub created_at_ms: i64,
    pub sent_at_ms: Option<i64>,
}

impl std::fmt::Debug for Notice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Notice")
            .field("id", &self.id)
            .field("customer_id", &self.customer_id)
            .field("channel", &self.channel)
            .field("kind", &self.kind)
            .field("dedupe_key", &self.dedupe_key)
            .field("state", &self.state)
            .field("attempts", &self.attempts)
            .field("next_attempt_at_ms", &self.next_attempt_at_ms)
            .field("last_error", &self.last_error)
            .field("body", &"<redacted>")
            .finish_non_exhaustive()
    }
}

const NOTICE_COLUMNS: &str = "id, customer_id, channel, recipient, kind, dedupe_key, subject, body, payload_json, state, \
     attempts, next_attempt_at_ms, last_error, created_at_ms, sent_at_ms";

impl Notice {
    fn from_row(r: &sqlx::any::AnyRow) -> Result<Notice> {
        let channel: String = r.try_get("channel")?;
        let state: String = r.try_get("state")?;
        let attempts: i64 = r.try_get("attempts")?;
        Ok(Notice {
            id: r.try_get("id")?,
            customer_id: r.try_get("customer_id")?,
            channel: NoticeChannel::parse(&channel)
                .ok_or_else(|| StoreError::Corrupt(format!("notices.channel: {channel:?}")))?,
            recipient: r.try_get("recipient")?,
            kind: r.try_get("kind")?,
            dedupe_key: r.try_get("dedupe_key")?,
            subject: r.try_get("subject")?,
            body: r.try_get("body")?,
            payload_json: r.try_get("payload_json")?,
            state: NoticeState::parse(&state)
                .ok_or_else(|| StoreError::Corrupt(format!("notices.state: {state:?}")))?,
            attempts: u32::try_from(attempts)
                .map_err(|_| StoreError::Corrupt(format!("notices.attempts: {attempts}")))?,
            next_attempt_at_ms: r.try_get("next_attempt_at_ms")?,
            last_error: r.try_get("last_error")?,
            created_at_ms: r.try_get("created_at_ms")?,
            sent_at_ms: r.try_get("sent_at_ms")?,
        })
    }
}

/// How failed deliveries are retried: attempt `n` (1-based) that fails waits
/// `min(backoff_base_ms * 2^(n-1), backoff_max_ms)` before the next; after `attempts_max` failed attempts
/// the notice is `failed`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    pub attempts_max: u32,
    pub backoff_base_ms: i64,
    pub backoff_max_ms: i64,
}

/// Default bound on delivery attempts: with the default back-off, about an hour of retrying.
pub const ATTEMPTS_MAX_DEFAULT: u32 = 8;
pub const BACKOFF_BASE_MS_DEFAULT: i64 = 30_000;
pub const BACKOFF_MAX_MS_DEFAULT: i64 = 3_600_000;

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            attempts_max: ATTEMPTS_MAX_DEFAULT,
            backoff_base_ms: BACKOFF_BASE_MS_DEFAULT,
            backoff_max_ms: BACKOFF_MAX_MS_DEFAULT,
        }
    }
}

impl RetryPolicy {
    /// The wait after failed attempt `attempt` (1-based).
    pub fn backoff_ms(&self, attempt: u32) -> i64 {
        // 2^30 times any sane base already exceeds any sane cap; the shift stays in range.
        let doublings = attempt.saturating_sub(1).min(30);
        self.backoff_base_ms.max(0).saturating_mul(1_i64 << doublings).min(self.backoff_max_ms.max(0))
    }
}

/// Cuts a delivery error to [`LAST_ERROR_LEN_MAX`] characters.
fn bounded_error(error: &str) -> String {
    match error.char_indices().nth(LAST_ERROR_LEN_MAX) {
        Some((cut, _)) => format!("{}…", &error[..cut]),
        None => error.to_string(),
    }
}

impl Store {
    /// Enqueues `notice` inside the caller's transaction: it is delivered only if that transaction
    /// commits. A notice whose `(kind, dedupe_key)` is already stored is dropped (the event already
    /// notified). An invalid notice is refused with [`StoreError::Conflict`] naming the field
    /// (`notice.recipient: …`), which fails the caller's transaction: an event that must notify does not
    /// happen silently.
    pub async fn enqueue_notice_tx(&self, tx: &mut Tx, notice: &NewNotice) -> Result<()> {
        notice.validate().map_err(|e| StoreError::Conflict(e.to_string()))?;
        let id = uuid::Uuid::now_v7().to_string();
        // ON CONFLICT DO NOTHING (SQLite 3.24+, PostgreSQL 9.5+) neither fails the statement nor, on
        // PostgreSQL, aborts the caller's transaction.
        sqlx::query(
            "INSERT INTO notices (id, customer_id, channel, recipient, kind, dedupe_key, subject, body, payload_json, \
             state, attempts, next_attempt_at_ms, created_at_ms) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, 0, $11, $12) ON CONFLICT (kind, dedupe_key) DO NOTHING",
        )
        .bind(&id)
        .bind(notice.customer_id.as_deref())
        .bind(notice.channel.as_str())
        .bind(&notice.recipient)
        .bind(&notice.kind)
        .bind(&notice.dedupe_key)
        .bind(&notice.subject)
        .bind(&notice.body)
        .bind(notice.payload.to_string())
        .bind(NoticeState::Pending.as_str())
        .bind(notice.created_at_ms)
        .bind(notice.created_at_ms)
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    /// [`Store::enqueue_notice_tx`] in a transaction of its own, for notices that report no stored event.
    pub async fn enqueue_notice(&self, notice: &NewNotice) -> Result<()> {
        let mut tx = self.begin_write().await?;
        self.enqueue_notice_tx(&mut tx, notice).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Leases up to `limit` due pending notices on `channels` to `instance` for `lease_ms` and counts the
    /// attempt. While leased a notice is not due, so no other sender takes it; if this sender dies, it is
    /// due again when the lease runs out. Oldest first.
    pub async fn claim_notices(
        &self,
        channels: &[NoticeChannel],
        instance: &str,
        now_ms: i64,
        lease_ms: i64,
        limit: u32,
    ) -> Result<Vec<Notice>> {
        if channels.is_empty() || limit == 0 {
            return Ok(Vec::new());
        }
        // Only the channels' static names go into the SQL text.
        let channel_list = channels.iter().map(|c| format!("'{}'", c.as_str())).collect::<Vec<_>>().join(", ");
        let mut tx = self.begin_write().await?;
        let q = format!(
            "SELECT id FROM notices WHERE state = $1 AND channel IN ({channel_list}) AND next_attempt_at_ms <= $2 \
             ORDER BY next_attempt_at_ms, id LIMIT $3{}",
            self.for_update_skip_locked()
        );
        let ids: Vec<String> = sqlx::query_scalar(sql(q))
            .bind(NoticeState::Pending.as_str())
            .bind(now_ms)
            .bind(i64::from(limit.min(CLAIM_LIMIT_MAX)))
            .fetch_all(&mut *tx)
            .await?;
        let mut claimed = Vec::with_capacity(ids.len());
        for id in &ids {
            sqlx::query(
                "UPDATE notices SET attempts = attempts + 1, next_attempt_at_ms = $1, lease_owner = $2 WHERE id = $3",
            )
            .bind(now_ms.saturating_add(lease_ms))
            .bind(instance)
            .bind(id)
            .execute(&mut *tx)
            .await?;
            let q = format!("SELECT {NOTICE_COLUMNS} FROM notices WHERE id = $1");
            claimed.push(Notice::from_row(&sqlx::query(sql(q)).bind(id).fetch_one(&mut *tx).await?)?);
        }
        tx.commit().await?;
        Ok(claimed)
    }

    /// Records a delivery. `false` if the notice was no longer pending (another sender recorded it).
    pub async fn mark_notice_sent(&self, id: &str, now_ms: i64) -> Result<bool> {
        let moved = sqlx::query(
            "UPDATE notices SET state = $1, sent_at_ms = $2, last_error = NULL, lease_owner = NULL \
             WHERE id = $3 AND state = $4",
        )
        .bind(NoticeState::Sent.as_str())
        .bind(now_ms)
        .bind(id)
        .bind(NoticeState::Pending.as_str())
        .execute(self.pool())
        .await?
        .rows_affected();
        Ok(moved == 1)
    }

    /// Records failed attempt number `attempt` (the notice's `attempts` as claimed) by `instance`: the
    /// notice is retried after [`RetryPolicy::backoff_ms`], or becomes `failed` once `attempts_max`
    /// attempts have failed. Returns the state it is left in, or `None` when the claim is stale (the
    /// lease ran out and another sender took the notice, or it was recorded already): nothing changes.
    pub async fn mark_notice_failed(
        &self,
        id: &str,
        instance: &str,
        attempt: u32,
        error: &str,
        retry: &RetryPolicy,
        now_ms: i64,
    ) -> Result<Option<NoticeState>> {
        let (state, next) = if attempt >= retry.attempts_max {
            (NoticeState::Failed, now_ms)
        } else {
            (NoticeState::Pending, now_ms.saturating_add(retry.backoff_ms(attempt)))
        };
        let moved = sqlx::query(
            "UPDATE notices SET state = $1, next_attempt_at_ms = $2, last_error = $3, lease_owner = NULL \
             WHERE id = $4 AND state = $5 AND attempts = $6 AND lease_owner = $7",
        )
        .bind(state.as_str())
        .bind(next)
        .bind(bounded_error(error))
        .bind(id)
        .bind(NoticeState::Pending.as_str())
        .bind(i64::from(attempt))
        .bind(instance)
        .execute(self.pool())
        .await?
        .rows_affected();
        Ok((moved == 1).then_some(state))
    }

    /// Puts a `failed` notice back to `pending`, due now, with its attempts reset (an operator's retry
    /// after fixing the mail relay). `false` if it is not `failed`.
    pub async fn requeue_notice(&self, id: &str, now_ms: i64) -> Result<bool> {
        let moved = sqlx::query(
            "UPDATE notices SET state = $1, attempts = 0, next_attempt_at_ms = $2 WHERE id = $3 AND state = $4",
        )
        .bind(NoticeState::Pending.as_str())
        .bind(now_ms)
        .bind(id)
        .bind(NoticeState::Failed.as_str())
        .execute(self.pool())
        .await?
        .rows_affected();
        Ok(moved == 1)
    }

    pub async fn notice(&self, id: &str) -> Result<Option<Notice>> {
        let q = format!("SELECT {NOTICE_COLUMNS} FROM notices WHERE id = $1");
        sqlx::query(sql(q)).bind(id).fetch_optional(self.pool()).await?.as_ref().map(Notice::from_row).transpose()
    }

    /// The notice stored for an event, if any.
    pub async fn notice_by_dedupe_key(&self, kind: &str, dedupe_key: &str) -> Result<Option<Notice>> {
        let q = format!("SELECT {NOTICE_COLUMNS} FROM notices WHERE kind = $1 AND dedupe_key = $2");
        sqlx::query(sql(q))
            .bind(kind)
            .bind(dedupe_key)
            .fetch_optional(self.pool())
            .await?
            .as_ref()
            .map(Notice::from_row)
            .transpose()
    }

    /// A customer's notices, newest first, at most `limit` (capped at [`CLAIM_LIMIT_MAX`]).
    pub async fn notices_for_customer(&self, customer_id: &str, limit: u32) -> Result<Vec<Notice>> {
        let q = format!(
            "SELECT {NOTICE_COLUMNS} FROM notices WHERE customer_id = $1 ORDER BY created_at_ms DESC, id DESC LIMIT $2"
        );
        let rows = sqlx::query(sql(q))
            .bind(customer_id)
            .bind(i64::from(limit.min(CLAIM_LIMIT_MAX)))
            .fetch_all(self.pool())
            .await?;
        rows.iter().map(Notice::from_row).collect()
    }

    /// How many notices are in `state` (for metrics and the operators' view).
    pub async fn count_notices(&self, state: NoticeState) -> Result<i64> {
        Ok(sqlx::query_scalar("SELECT COUNT(*) FROM notices WHERE state = $1")
            .bind(state.as_str())
            .fetch_one(self.pool())
            .await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::test_stores;

    fn mail(key: &str, now_ms: i64) -> NewNotice {
        NewNotice::email(None, "alice@example.test", "login", key, "New login", "code 123456", now_ms)
    }

    /// U11, L5: the outbox is transactional: a notice enqueued in a transaction that rolls back does not
    /// exist; one that commits does.
    #[tokio::test]
    async fn u11_notice_exists_only_if_its_transaction_commits() {
        for ts in test_stores().await {
            let mut tx = ts.begin_write().await.unwrap();
            ts.enqueue_notice_tx(&mut tx, &mail("rolled-back", 1)).await.unwrap();
            tx.rollback().await.unwrap();
            assert_eq!(ts.notice_by_dedupe_key("login", "rolled-back").await.unwrap(), None, "{}", ts.name);
            let mut tx = ts.begin_write().await.unwrap();
            ts.enqueue_notice_tx(&mut tx, &mail("committed", 1)).await.unwrap();
            tx.commit().await.unwrap();
            let n = ts.notice_by_dedupe_key("login", "committed").await.unwrap().expect(ts.name);
            assert_eq!((n.state, n.attempts, n.recipient.as_str()), (NoticeState::Pending, 0, "alice@example.test"));
            assert_eq!(ts.claim_notices(&NoticeChannel::ALL, "a", 1, 1_000, 10).await.unwrap().len(), 1, "{}", ts.name);
        }
    }

    /// U10: the same event enqueued twice, in one transaction or in two, is stored (and so sent) once.
    #[tokio::test]
    async fn u10_same_kind_and_dedupe_key_notifies_once() {
        for ts in test_stores().await {
            let mut tx = ts.begin_write().await.unwrap();
            ts.enqueue_notice_tx(&mut tx, &mail("s1", 1)).await.unwrap();
            ts.enqueue_notice_tx(&mut tx, &mail("s1", 2)).await.unwrap();
            tx.commit().await.unwrap();
            ts.enqueue_notice(&mail("s1", 3)).await.unwrap();
            // Same key, other kind: a different event.
            let mut other = mail("s1", 4);
            other.kind = "withdrawal_requested".into();
            ts.enqueue_notice(&other).await.unwrap();
            assert_eq!(ts.count_notices(NoticeState::Pending).await.unwrap(), 2, "{}", ts.name);
            let claimed = ts.claim_notices(&[NoticeChannel::Email], "a", 10, 1_000, 10).await.unwrap();
            assert_eq!(claimed.len(), 2, "{}", ts.name);
        }
    }

    /// L5: failures are retried with exponential back-off, never lost, and end `failed` after the bound;
    /// a stale claim cannot overwrite a newer one.
    #[tokio::test]
    async fn l5_failed_delivery_backs_off_then_fails_and_is_kept() {
        let retry = RetryPolicy { attempts_max: 3, backoff_base_ms: 100, backoff_max_ms: 150 };
        assert_eq!([1, 2, 3, 40].map(|a| retry.backoff_ms(a)), [100, 150, 150, 150]);
        assert_eq!(RetryPolicy::default().backoff_ms(u32::MAX), BACKOFF_MAX_MS_DEFAULT);
        for ts in test_stores().await {
            ts.enqueue_notice(&mail("k", 0)).await.unwrap();
            let lease = 10_000;
            let n = ts.claim_notices(&NoticeChannel::ALL, "a", 0, lease, 10).await.unwrap().pop().expect(ts.name);
            assert_eq!(n.attempts, 1);
            // Leased: nobody else gets it before the lease runs out.
            assert!(ts.claim_notices(&NoticeChannel::ALL, "b", lease - 1, lease, 10).await.unwrap().is_empty());
            assert_eq!(
                ts.mark_notice_failed(&n.id, "a", 1, "connection refused", &retry, 5).await.unwrap(),
                Some(NoticeState::Pending)
            );
            assert!(
                ts.claim_notices(&NoticeChannel::ALL, "a", 104, lease, 10).await.unwrap().is_empty(),
                "backing off"
            );
            let n = ts.claim_notices(&NoticeChannel::ALL, "a", 105, lease, 10).await.unwrap().pop().expect(ts.name);
            assert_eq!(n.attempts, 2);
            // A stale report (attempt 1, or another instance) changes nothing.
            assert_eq!(ts.mark_notice_failed(&n.id, "a", 1, "late", &retry, 106).await.unwrap(), None);
            assert_eq!(ts.mark_notice_failed(&n.id, "b", 2, "late", &retry, 106).await.unwrap(), None);
            assert_eq!(
                ts.mark_notice_failed(&n.id, "a", 2, "refused", &retry, 106).await.unwrap(),
                Some(NoticeState::Pending)
            );
            let n = ts.claim_notices(&NoticeChannel::ALL, "a", 256, lease, 10).await.unwrap().pop().expect(ts.name);
            let long = "x".repeat(LAST_ERROR_LEN_MAX * 2);
            assert_eq!(
                ts.mark_notice_failed(&n.id, "a", 3, &long, &retry, 300).await.unwrap(),
                Some(NoticeState::Failed)
            );
            let stored = ts.notice(&n.id).await.unwrap().expect("kept");
            assert_eq!((stored.state, stored.attempts), (NoticeState::Failed, 3), "{}", ts.name);
            assert!(stored.last_error.unwrap().chars().count() <= LAST_ERROR_LEN_MAX + 1);
            assert!(ts.claim_notices(&NoticeChannel::ALL, "a", i64::MAX / 2, lease, 10).await.unwrap().is_empty());
            // An operator re-queues it: due again, attempts reset.
            assert!(ts.requeue_notice(&n.id, 400).await.unwrap());
            let n = ts.claim_notices(&NoticeChannel::ALL, "a", 400, lease, 10).await.unwrap().pop().expect(ts.name);
            assert_eq!(n.attempts, 1);
            assert!(ts.mark_notice_sent(&n.id, 401).await.unwrap());
            assert!(!ts.mark_notice_sent(&n.id, 402).await.unwrap(), "recorded once");
            let stored = ts.notice(&n.id).await.unwrap().unwrap();
            assert_eq!((stored.state, stored.sent_at_ms, stored.last_error), (NoticeState::Sent, Some(401), None));
        }
    }

    /// L5: a sender that dies mid-delivery does not lose the notice: it is due again when its lease ends.
    /// Channels a sender cannot serve are left alone.
    #[tokio::test]
    async fn l5_expired_lease_is_claimed_again_and_channels_filter() {
        for ts in test_stores().await {
            ts.enqueue_notice(&mail("k", 0)).await.unwrap();
            let hook = NewNotice::webhook(None, "cust-1", "login", "k2", "New login", "", 0)
                .with_payload(serde_json::json!({"ip": "x"}));
            ts.enqueue_notice(&hook).await.unwrap();
            let only_hooks = ts.claim_notices(&[NoticeChannel::Webhook], "a", 0, 1_000, 10).await.unwrap();
            assert_eq!(only_hooks.iter().map(|n| n.channel).collect::<Vec<_>>(), [NoticeChannel::Webhook]);
            assert_eq!(only_hooks[0].payload_json, r#"{"ip":"x"}"#);
            let first = ts.claim_notices(&[NoticeChannel::Email], "a", 0, 1_000, 10).await.unwrap();
            assert_eq!(first.len(), 1, "{}", ts.name);
            let again = ts.claim_notices(&[NoticeChannel::Email], "b", 1_000, 1_000, 10).await.unwrap();
            assert_eq!((again.len(), again[0].attempts), (1, 2), "{}", ts.name);
        }
    }

    /// U10: malformed notices are refused naming the field; header fields cannot carry a line break.
    #[tokio::test]
    async fn u10_invalid_notice_refused_naming_the_field() {
        type Breaker = fn(&mut NewNotice);
        let cases: [(&str, Breaker); 6] = [
            ("recipient", |n| n.recipient = "alice@example.test\r\nBcc: eve@evil.test".into()),
            ("recipient", |n| n.recipient = "not-an-address".into()),
            ("subject", |n| n.subject = "Hi\nBcc: eve@evil.test".into()),
            ("kind", |n| n.kind = "Login!".into()),
            ("body", |n| n.body = "x".repeat(BODY_LEN_MAX + 1)),
            ("payload", |n| n.payload = serde_json::json!([1])),
        ];
        for (field, break_it) in cases {
            let mut n = mail("k", 0);
            break_it(&mut n);
            assert_eq!(n.validate().unwrap_err().field, field);
        }
        let ts = crate::testing::sqlite_store().await;
        let mut bad = mail("k", 0);
        bad.subject = String::new();
        match ts.enqueue_notice(&bad).await {
            Err(StoreError::Conflict(m)) => assert!(m.starts_with("notice.subject:"), "{m}"),
            other => panic!("{other:?}"),
        }
        let debug = format!("{:?}", mail("k", 0));
        assert!(!debug.contains("123456"), "Debug leaks the body: {debug}");
    }
}
