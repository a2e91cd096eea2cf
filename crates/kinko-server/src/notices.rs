//! Delivery of customer notices (issue 5; U10, U11, L5): the background sender that drains the
//! transactional outbox (`kinko_store::notices`) over a second channel, by e-mail (SMTP, `lettre`) and by
//! HMAC-signed webhook (`reqwest`).
//!
//! Rules that notify the customer never call this module: they enqueue a notice in the transaction of
//! their event (`Store::enqueue_notice_tx`) and this sender delivers it later, retrying with exponential
//! back-off up to a bound, then marking it `failed` with an error-level log. Delivery is at least once;
//! webhook receivers dedupe on [`NOTICE_ID_HEADER`].
//!
//! Bodies may hold one-time codes: nothing here logs a body, a subject or a recipient, and delivery errors
//! are stored without URLs.
//!
//! Webhook signature: `X-Kinko-Signature: sha256=<hex HMAC-SHA256(secret, timestamp + "." + body)>` with
//! `X-Kinko-Timestamp` the Unix time in seconds; [`verify_webhook_signature`] is the receiver's check.

use std::time::Duration;

use hmac::{Hmac, Mac};
use kinko_store::notices::{Notice, NoticeChannel, NoticeState, RetryPolicy};
use kinko_store::{Store, StoreError};
use lettre::message::{Mailbox, header::ContentType};
use lettre::transport::smtp::authentication::Credentials;
use lettre::{AsyncFileTransport, AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::config::ConfigError;

/// Header carrying `sha256=<hex HMAC-SHA256(secret, timestamp + "." + body)>`.
pub const SIGNATURE_HEADER: &str = "X-Kinko-Signature";
/// Header carrying the signing time, Unix seconds; receivers refuse old ones (replay).
pub const TIMESTAMP_HEADER: &str = "X-Kinko-Timestamp";
/// Header carrying the notice id: delivery is at least once, receivers dedupe on it.
pub const NOTICE_ID_HEADER: &str = "X-Kinko-Notice-Id";
/// A webhook secret shorter than this is refused (HMAC-SHA256 wants at least 256 bits of key).
pub const WEBHOOK_SECRET_LEN_MIN: usize = 32;
/// Bound on one SMTP conversation or webhook request.
pub const DELIVERY_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a claimed notice stays with this sender: well beyond one delivery, so no other instance
/// takes it while it is being delivered; if this instance dies, another delivers it after this.
pub const LEASE_MS: i64 = 4 * DELIVERY_TIMEOUT.as_millis() as i64;
/// Bound on notices delivered per poll (the loop polls again at once while there is more).
pub const BATCH_MAX: u32 = 32;

/// `[notices]`: how customer notices leave kinko. E-mail goes by SMTP (`smtp_host`) or, for dev and tests
/// only, into files (`mail_dir`, the dev default `<data_dir>/mail`); with neither, e-mail notices are not
/// sent: they stay `pending` in the outbox and a warning is logged at start. Without `webhook_url`,
/// webhook notices likewise stay pending.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct NoticesConfig {
    /// The SMTP relay's host name. Unset: e-mail notices are not sent (unless `mail_dir` is set).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub smtp_host: Option<String>,
    /// DEV AND TESTS ONLY: write each e-mail notice as a file (`<uuid>.eml`, the raw message) into this
    /// directory instead of sending it, so a developer or a test can read what a customer would get
    /// (confirmation tokens included: keep the directory private). Not together with `smtp_host`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mail_dir: Option<std::path::PathBuf>,
    /// The relay's port (default 587, submission with STARTTLS).
    #[serde(default = "default_smtp_port")]
    pub smtp_port: u16,
    /// The sender mailbox, e.g. `kinko <no-reply@example.com>`; required with `smtp_host`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub smtp_from: Option<String>,
    /// Require STARTTLS (default true; the relay's certificate is checked against Mozilla's roots).
    /// `false` is accepted only for a relay on this host (127.0.0.1, ::1, localhost).
    #[serde(default = "default_true")]
    pub smtp_starttls: bool,
    /// SMTP login user; unset: no authentication.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub smtp_username: Option<String>,
    /// Name of the environment variable holding the SMTP password (used with `smtp_username`).
    #[serde(default = "default_smtp_password_env")]
    pub smtp_password_env: String,
    /// Where webhook notices are POSTed. Unset: webhook notices are not sent. This build's HTTP client has
    /// no TLS, so it must be `http://` to a receiver on this host (a relay that forwards over TLS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook_url: Option<String>,
    /// Name of the environment variable holding the webhook HMAC secret (at least 32 bytes). The secret
    /// itself is never in the file.
    #[serde(default = "default_webhook_secret_env")]
    pub webhook_secret_env: String,
    /// How often the sender looks for due notices.
    #[serde(default = "default_poll_interval_ms")]
    pub poll_interval_ms: u64,
    /// Delivery attempts before a notice is `failed`.
    #[serde(default = "default_attempts_max")]
    pub attempts_max: u32,
    /// Wait after the first failed attempt; doubles per attempt.
    #[serde(default = "default_backoff_base_ms")]
    pub backoff_base_ms: u64,
    /// Ceiling on the wait between attempts.
    #[serde(default = "default_backoff_max_ms")]
    pub backoff_max_ms: u64,
}

impl Default for NoticesConfig {
    fn default() -> Self {
        NoticesConfig {
            smtp_host: None,
            mail_dir: None,
            smtp_port: default_smtp_port(),
            smtp_from: None,
            smtp_starttls: true,
            smtp_username: None,
            smtp_password_env: default_smtp_password_env(),
            webhook_url: None,
            webhook_secret_env: default_webhook_secret_env(),
            poll_interval_ms: default_poll_interval_ms(),
            attempts_max: default_attempts_max(),
            backoff_base_ms: default_backoff_base_ms(),
            backoff_max_ms: default_backoff_max_ms(),
        }
    }
}

fn default_smtp_port() -> u16 {
    587
}
fn default_true() -> bool {
    true
}
fn default_smtp_password_env() -> String {
    "KINKO_SMTP_PASSWORD".into()
}
fn default_webhook_secret_env() -> String {
    "KINKO_WEBHOOK_SECRET".into()
}
fn default_poll_interval_ms() -> u64 {
    1_000
}
fn default_attempts_max() -> u32 {
    kinko_store::notices::ATTEMPTS_MAX_DEFAULT
}
fn default_backoff_base_ms() -> u64 {
    kinko_store::notices::BACKOFF_BASE_MS_DEFAULT as u64
}
fn default_backoff_max_ms() -> u64 {
    kinko_store::notices::BACKOFF_MAX_MS_DEFAULT as u64
}

/// Bounds on the `[notices]` numbers.
const POLL_INTERVAL_MS_RANGE: std::ops::RangeInclusive<u64> = 10..=60_000;
const ATTEMPTS_MAX_RANGE: std::ops::RangeInclusive<u32> = 1..=100;
const BACKOFF_MS_MAX: u64 = 7 * 24 * 3_600_000;

fn is_loopback_host(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost") || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

fn is_env_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= 128 && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

impl NoticesConfig {
    /// Checks the section; errors name the field (`notices.smtp_from`). Environment variables are read
    /// only when the sender starts ([`NoticeSender::from_config`]).
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |field, reason: &str| Err(ConfigError::Invalid { field, reason: reason.into() });
        if let Some(dir) = &self.mail_dir {
            if self.smtp_host.is_some() {
                return invalid("notices.mail_dir", "give smtp_host or mail_dir, not both (one e-mail transport)");
            }
            if dir.as_os_str().is_empty() {
                return invalid("notices.mail_dir", "must be a directory path");
            }
        }
        if let Some(host) = &self.smtp_host {
            if host.is_empty() || host.len() > 253 || host.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return invalid("notices.smtp_host", "must be a host name or address");
            }
            if self.smtp_port == 0 {
                return invalid("notices.smtp_port", "must be 1 to 65535");
            }
            match &self.smtp_from {
                None => return invalid("notices.smtp_from", "is required with smtp_host"),
                Some(from) if from.parse::<Mailbox>().is_err() => {
                    return invalid("notices.smtp_from", "must be a mailbox such as `kinko <no-reply@example.com>`");
                }
                Some(_) => {}
            }
            // One-time codes must not cross a network in clear text.
            if !self.smtp_starttls && !is_loopback_host(host) {
                return invalid("notices.smtp_starttls", "may be false only for a relay on this host (localhost)");
            }
            if self.smtp_username.is_some() && !is_env_name(&self.smtp_password_env) {
                return invalid("notices.smtp_password_env", "must name an environment variable (A-Z, 0-9, _)");
            }
        }
        if let Some(url) = &self.webhook_url {
            let Ok(parsed) = reqwest::Url::parse(url) else {
                return invalid("notices.webhook_url", "must be an absolute URL");
            };
            if parsed.scheme() != "http" || !parsed.host_str().is_some_and(is_loopback_host) {
                return invalid(
                    "notices.webhook_url",
                    "must be http:// to a receiver on this host (this build's HTTP client has no TLS; run a local \
                     relay that forwards over TLS)",
                );
            }
            if !is_env_name(&self.webhook_secret_env) {
                return invalid("notices.webhook_secret_env", "must name an environment variable (A-Z, 0-9, _)");
            }
        }
        if !POLL_INTERVAL_MS_RANGE.contains(&self.poll_interval_ms) {
            return invalid("notices.poll_interval_ms", "must be between 10 and 60000");
        }
        if !ATTEMPTS_MAX_RANGE.contains(&self.attempts_max) {
            return invalid("notices.attempts_max", "must be between 1 and 100");
        }
        if self.backoff_base_ms == 0 || self.backoff_base_ms > BACKOFF_MS_MAX {
            return invalid("notices.backoff_base_ms", "must be between 1 and 604800000 (a week)");
        }
        if self.backoff_max_ms < self.backoff_base_ms || self.backoff_max_ms > BACKOFF_MS_MAX {
            return invalid("notices.backoff_max_ms", "must be at least backoff_base_ms and at most a week");
        }
        Ok(())
    }

    pub fn retry_policy(&self) -> RetryPolicy {
        RetryPolicy {
            attempts_max: self.attempts_max,
            backoff_base_ms: self.backoff_base_ms.min(BACKOFF_MS_MAX) as i64,
            backoff_max_ms: self.backoff_max_ms.min(BACKOFF_MS_MAX) as i64,
        }
    }
}

/// Why the sender cannot start (it then refuses to, rather than run without a configured channel).
#[derive(Debug, thiserror::Error)]
pub enum NoticeSetupError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("notices.smtp_host: {0}")]
    Smtp(String),
    #[error("notices.webhook_url: {0}")]
    Http(String),
}

/// The configured webhook: where, and the HMAC key.
struct Webhook {
    url: reqwest::Url,
    secret: SecretString,
}

struct Mailer {
    transport: MailTransport,
    from: Mailbox,
}

/// How e-mail leaves: an SMTP relay, or (dev and tests) files in a directory.
enum MailTransport {
    Smtp(AsyncSmtpTransport<Tokio1Executor>),
    File(AsyncFileTransport<Tokio1Executor>),
}

/// The sender mailbox of file-transport mail (nothing is sent, but a message needs a From).
pub const MAIL_DIR_FROM: &str = "kinko dev <no-reply@kinko.invalid>";

/// Drains the outbox. Build it with [`NoticeSender::from_config`]; run it with [`NoticeSender::run`]
/// (the server does, next to the pipeline) or step it with [`NoticeSender::run_once`].
pub struct NoticeSender {
    store: Store,
    instance_id: String,
    mailer: Option<Mailer>,
    webhook: Option<Webhook>,
    http: reqwest::Client,
    retry: RetryPolicy,
    poll_interval: Duration,
}

/// What one [`NoticeSender::run_once`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RunStats {
    pub sent: u32,
    /// Failed attempts that will be retried.
    pub retrying: u32,
    /// Notices given up on (`failed`).
    pub failed: u32,
}

/// One delivery attempt's failure: the text stored in `last_error` (no body, no URL) and whether a
/// retry cannot help.
struct DeliveryError {
    message: String,
    permanent: bool,
}

impl NoticeSender {
    /// Validates `config`, reads the secrets it names from the environment now, and builds the channels.
    pub fn from_config(store: Store, instance_id: &str, config: &NoticesConfig) -> Result<Self, NoticeSetupError> {
        Self::from_config_with_env(store, instance_id, config, |name| std::env::var(name).ok())
    }

    /// [`NoticeSender::from_config`] with the environment given as a lookup (tests).
    pub fn from_config_with_env(
        store: Store,
        instance_id: &str,
        config: &NoticesConfig,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, NoticeSetupError> {
        config.validate()?;
        let mailer = match (&config.smtp_host, &config.mail_dir) {
            (None, None) => None,
            (None, Some(dir)) => {
                create_private_dir(dir).map_err(|e| ConfigError::Invalid {
                    field: "notices.mail_dir",
                    reason: format!("cannot create {}: {e}", dir.display()),
                })?;
                let from = MAIL_DIR_FROM
                    .parse::<Mailbox>()
                    .map_err(|e| ConfigError::Invalid { field: "notices.mail_dir", reason: e.to_string() })?;
                Some(Mailer { transport: MailTransport::File(AsyncFileTransport::new(dir)), from })
            }
            (Some(host), _) => {
                let builder = if config.smtp_starttls {
                    AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(host)
                        .map_err(|e| NoticeSetupError::Smtp(e.to_string()))?
                } else {
                    AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(host)
                };
                let mut builder = builder.port(config.smtp_port).timeout(Some(DELIVERY_TIMEOUT));
                if let Some(user) = &config.smtp_username {
                    let password = env(&config.smtp_password_env).ok_or_else(|| ConfigError::Invalid {
                        field: "notices.smtp_password_env",
                        reason: format!(
                            "environment variable {} (the SMTP password) is not set",
                            config.smtp_password_env
                        ),
                    })?;
                    builder = builder.credentials(Credentials::new(user.clone(), password));
                }
                let from = config
                    .smtp_from
                    .as_deref()
                    .unwrap_or_default()
                    .parse::<Mailbox>()
                    .map_err(|e| ConfigError::Invalid { field: "notices.smtp_from", reason: e.to_string() })?;
                Some(Mailer { transport: MailTransport::Smtp(builder.build()), from })
            }
        };
        let webhook = match &config.webhook_url {
            None => None,
            Some(url) => {
                let secret = env(&config.webhook_secret_env).unwrap_or_default();
                if secret.len() < WEBHOOK_SECRET_LEN_MIN {
                    return Err(ConfigError::Invalid {
                        field: "notices.webhook_secret_env",
                        reason: format!(
                            "environment variable {} must hold the webhook secret, at least {WEBHOOK_SECRET_LEN_MIN} bytes",
                            config.webhook_secret_env
                        ),
                    }
                    .into());
                }
                let url = reqwest::Url::parse(url).map_err(|e| NoticeSetupError::Http(e.to_string()))?;
                Some(Webhook { url, secret: SecretString::from(secret) })
            }
        };
        // No redirects: a signed body goes to the configured receiver only.
        let http = reqwest::Client::builder()
            .timeout(DELIVERY_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| NoticeSetupError::Http(e.to_string()))?;
        Ok(NoticeSender {
            store,
            instance_id: instance_id.to_string(),
            mailer,
            webhook,
            http,
            retry: config.retry_policy(),
            poll_interval: Duration::from_millis(config.poll_interval_ms),
        })
    }

    /// The channels this sender delivers; notices on the others stay pending.
    pub fn channels(&self) -> Vec<NoticeChannel> {
        let mut out = Vec::new();
        if self.mailer.is_some() {
            out.push(NoticeChannel::Email);
        }
        if self.webhook.is_some() {
            out.push(NoticeChannel::Webhook);
        }
        out
    }

    /// Logs, once at start, which channels are not delivered.
    fn warn_disabled_channels(&self) {
        if self.mailer.is_none() {
            tracing::warn!(
                "[notices] smtp_host is not set: e-mail notices to customers are NOT sent and stay pending in the outbox"
            );
        }
        if matches!(self.mailer, Some(Mailer { transport: MailTransport::File(_), .. })) {
            tracing::warn!(
                "[notices] mail_dir is set: e-mail notices are written to files there, NOT sent to customers (dev and tests only)"
            );
        }
        if self.webhook.is_none() {
            tracing::info!("[notices] webhook_url is not set: webhook notices stay pending in the outbox");
        }
    }

    /// Delivers due notices until none is due or [`BATCH_MAX`] were handled. Store errors end the pass
    /// (the notices stay leased and are retried when the lease runs out).
    pub async fn run_once(&self, now_ms: i64) -> Result<RunStats, StoreError> {
        let channels = self.channels();
        let mut stats = RunStats::default();
        for _ in 0..BATCH_MAX {
            // One at a time, so each notice's lease starts just before its own delivery.
            let Some(notice) = self.store.claim_notices(&channels, &self.instance_id, now_ms, LEASE_MS, 1).await?.pop()
            else {
                break;
            };
            match self.deliver(&notice).await {
                Ok(()) => {
                    self.store.mark_notice_sent(&notice.id, now_ms).await?;
                    stats.sent += 1;
                    tracing::info!(notice_id = %notice.id, kind = %notice.kind, channel = notice.channel.as_str(), "notice delivered");
                }
                Err(e) => {
                    // A permanent error (e.g. the relay refused the address) is not retried.
                    let retry = if e.permanent {
                        RetryPolicy { attempts_max: notice.attempts, ..self.retry }
                    } else {
                        self.retry
                    };
                    let left = self
                        .store
                        .mark_notice_failed(&notice.id, &self.instance_id, notice.attempts, &e.message, &retry, now_ms)
                        .await?;
                    match left {
                        Some(NoticeState::Failed) => {
                            stats.failed += 1;
                            tracing::error!(
                                notice_id = %notice.id, kind = %notice.kind, channel = notice.channel.as_str(),
                                attempts = notice.attempts, error = %e.message,
                                "notice could not be delivered; given up (state failed; re-queue it once the channel works)"
                            );
                        }
                        _ => {
                            stats.retrying += 1;
                            tracing::warn!(
                                notice_id = %notice.id, kind = %notice.kind, channel = notice.channel.as_str(),
                                attempts = notice.attempts, error = %e.message,
                                retry_in_ms = self.retry.backoff_ms(notice.attempts), "notice delivery failed; will retry"
                            );
                        }
                    }
                }
            }
        }
        Ok(stats)
    }

    /// Polls and delivers until `shutdown` turns true. With no channel configured it only logs that
    /// notices stay pending and returns.
    pub async fn run(self, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        self.warn_disabled_channels();
        if self.channels().is_empty() {
            return;
        }
        loop {
            if *shutdown.borrow() {
                return;
            }
            let more = match self.run_once(crate::clock::now_ms()).await {
                Ok(stats) => stats.sent + stats.retrying + stats.failed >= BATCH_MAX,
                Err(e) => {
                    tracing::warn!(error = %e, "notice sender: store error; retrying");
                    false
                }
            };
            if more {
                continue;
            }
            tokio::select! {
                _ = tokio::time::sleep(self.poll_interval) => {}
                _ = shutdown.changed() => {}
            }
        }
    }

    async fn deliver(&self, notice: &Notice) -> Result<(), DeliveryError> {
        match notice.channel {
            NoticeChannel::Email => self.send_email(notice).await,
            NoticeChannel::Webhook => self.post_webhook(notice).await,
        }
    }

    async fn send_email(&self, notice: &Notice) -> Result<(), DeliveryError> {
        let permanent = |message: String| DeliveryError { message, permanent: true };
        let Some(mailer) = &self.mailer else {
            return Err(DeliveryError { message: "no SMTP relay configured".into(), permanent: false });
        };
        let to: Mailbox = notice.recipient.parse().map_err(|_| permanent("recipient is not a valid address".into()))?;
        let domain = mailer.from.email.domain().to_string();
        let message = Message::builder()
            .from(mailer.from.clone())
            .to(to)
            .subject(notice.subject.clone())
            // The notice id as Message-ID: a re-delivery after a crash is recognisably the same mail.
            .message_id(Some(format!("<{}@{domain}>", notice.id)))
            .header(ContentType::TEXT_PLAIN)
            .body(notice.body.clone())
            .map_err(|e| permanent(format!("building the message: {e}")))?;
        match &mailer.transport {
            MailTransport::Smtp(smtp) => match smtp.send(message).await {
                Ok(_) => Ok(()),
                Err(e) => Err(DeliveryError { message: format!("smtp: {e}"), permanent: e.is_permanent() }),
            },
            // A full disk or a removed directory may be fixed: retried like a relay that is down.
            MailTransport::File(file) => match file.send(message).await {
                Ok(_) => Ok(()),
                Err(e) => Err(DeliveryError { message: format!("mail_dir: {e}"), permanent: false }),
            },
        }
    }

    async fn post_webhook(&self, notice: &Notice) -> Result<(), DeliveryError> {
        let transient = |message: String| DeliveryError { message, permanent: false };
        let Some(hook) = &self.webhook else {
            return Err(transient("no webhook configured".into()));
        };
        let payload: serde_json::Value = serde_json::from_str(&notice.payload_json)
            .map_err(|_| DeliveryError { message: "stored payload is not JSON".into(), permanent: true })?;
        let body = serde_json::json!({
            "id": notice.id,
            "kind": notice.kind,
            "customer_id": notice.customer_id,
            "recipient": notice.recipient,
            "subject": notice.subject,
            "body": notice.body,
            "payload": payload,
            "created_at_ms": notice.created_at_ms,
        })
        .to_string();
        let timestamp = (crate::clock::now_ms() / 1_000).to_string();
        let signature = webhook_signature(hook.secret.expose_secret().as_bytes(), &timestamp, body.as_bytes());
        let reply = self
            .http
            .post(hook.url.clone())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(TIMESTAMP_HEADER, &timestamp)
            .header(SIGNATURE_HEADER, signature)
            .header(NOTICE_ID_HEADER, &notice.id)
            .body(body)
            .send()
            .await
            // Without the URL: it may carry a token of the receiver's.
            .map_err(|e| transient(format!("webhook: {}", e.without_url())))?;
        let status = reply.status();
        if status.is_success() { Ok(()) } else { Err(transient(format!("webhook: receiver answered {status}"))) }
    }
}

/// The mail directory, readable by this user only (the files hold what customers would be mailed).
fn create_private_dir(dir: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)
}

type HmacSha256 = Hmac<Sha256>;

/// `sha256=<hex HMAC-SHA256(secret, timestamp + "." + body)>`, the [`SIGNATURE_HEADER`] value.
pub fn webhook_signature(secret: &[u8], timestamp: &str, body: &[u8]) -> String {
    let mut mac = HmacSha256::new_from_slice(secret).expect("HMAC takes a key of any length");
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// The receiver's check of a [`SIGNATURE_HEADER`] value, in constant time. Receivers should also refuse
/// a [`TIMESTAMP_HEADER`] more than a few minutes old and dedupe on [`NOTICE_ID_HEADER`].
pub fn verify_webhook_signature(secret: &[u8], timestamp: &str, body: &[u8], header: &str) -> bool {
    let Some(hex_sig) = header.strip_prefix("sha256=") else { return false };
    let Ok(sig) = hex::decode(hex_sig) else { return false };
    let Ok(mut mac) = HmacSha256::new_from_slice(secret) else { return false };
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    mac.verify_slice(&sig).is_ok()
}

/// Test support: the SMTP sink that `scripts/test` starts (`scripts/lib/smtp.sh`, Debian's
/// `python3-aiosmtpd` writing every message into a Maildir), and a reader for what it captured.
///
/// Environment: `KINKO_TEST_SMTP_ADDR` (`127.0.0.1:PORT`), `KINKO_TEST_SMTP_DIR` (the Maildir);
/// `KINKO_TEST_REQUIRE_SMTP=1` turns a missing sink into a test failure instead of a skip.
pub mod testing {
    use std::path::{Path, PathBuf};
    use std::time::Duration;

    pub const SMTP_ADDR_ENV: &str = "KINKO_TEST_SMTP_ADDR";
    pub const SMTP_DIR_ENV: &str = "KINKO_TEST_SMTP_DIR";
    pub const REQUIRE_SMTP_ENV: &str = "KINKO_TEST_REQUIRE_SMTP";

    /// Bound on mails read from the sink at once.
    const MAILS_MAX: usize = 10_000;
    /// How often [`SmtpSink::wait_for`] looks again.
    const POLL: Duration = Duration::from_millis(50);

    /// The running sink.
    #[derive(Clone, Debug)]
    pub struct SmtpSink {
        pub host: String,
        pub port: u16,
        pub maildir: PathBuf,
    }

    /// The sink of this test run, or `None` (the test should skip) when there is none. Panics when
    /// `KINKO_TEST_REQUIRE_SMTP=1` and there is none, or when the variables are malformed.
    pub fn smtp_sink() -> Option<SmtpSink> {
        let addr = std::env::var(SMTP_ADDR_ENV).ok().filter(|v| !v.trim().is_empty());
        let dir = std::env::var(SMTP_DIR_ENV).ok().filter(|v| !v.trim().is_empty());
        let (Some(addr), Some(dir)) = (addr, dir) else {
            if std::env::var(REQUIRE_SMTP_ENV).is_ok_and(|v| v == "1") {
                panic!(
                    "{REQUIRE_SMTP_ENV}=1 but {SMTP_ADDR_ENV}/{SMTP_DIR_ENV} are not set: mail tests would be \
                     skipped. Run the tests through scripts/test, which starts the SMTP sink."
                );
            }
            return None;
        };
        let (host, port) = addr.rsplit_once(':').unwrap_or_else(|| panic!("{SMTP_ADDR_ENV}={addr:?}: want HOST:PORT"));
        let port = port.parse().unwrap_or_else(|_| panic!("{SMTP_ADDR_ENV}={addr:?}: bad port"));
        Some(SmtpSink { host: host.to_string(), port, maildir: dir.into() })
    }

    /// One captured message. Header values are as transmitted (tests use ASCII subjects); the body is
    /// decoded from quoted-printable or base64 when the message says so.
    #[derive(Clone, Debug, PartialEq, Eq)]
    pub struct CapturedMail {
        /// Envelope recipients (the sink's `X-RcptTo`).
        pub rcpt_to: Vec<String>,
        pub from: String,
        pub to: String,
        pub subject: String,
        pub message_id: String,
        pub body: String,
    }

    impl SmtpSink {
        /// Every message captured so far (in the whole run: filter on the recipient).
        pub fn mails(&self) -> Vec<CapturedMail> {
            read_maildir(&self.maildir)
        }

        /// Messages to `recipient` (envelope), waiting up to `timeout` until at least `count` arrived.
        pub async fn wait_for(&self, recipient: &str, count: usize, timeout: Duration) -> Vec<CapturedMail> {
            let deadline = tokio::time::Instant::now() + timeout;
            loop {
                let found: Vec<_> = self
                    .mails()
                    .into_iter()
                    .filter(|m| m.rcpt_to.iter().any(|r| r.eq_ignore_ascii_case(recipient)))
                    .collect();
                if found.len() >= count || tokio::time::Instant::now() >= deadline {
                    return found;
                }
                tokio::time::sleep(POLL).await;
            }
        }
    }

    /// Reads a Maildir's `new/` and `cur/` messages.
    pub fn read_maildir(dir: &Path) -> Vec<CapturedMail> {
        let mut out = Vec::new();
        for sub in ["new", "cur"] {
            let Ok(entries) = std::fs::read_dir(dir.join(sub)) else { continue };
            for entry in entries.flatten().take(MAILS_MAX) {
                if let Ok(raw) = std::fs::read_to_string(entry.path()) {
                    out.push(parse_mail(&raw));
                }
            }
        }
        out
    }

    /// Splits a message into unfolded headers and its decoded body.
    pub fn parse_mail(raw: &str) -> CapturedMail {
        let raw = raw.replace("\r\n", "\n");
        let (head, body) = raw.split_once("\n\n").unwrap_or((raw.as_str(), ""));
        let mut headers: Vec<(String, String)> = Vec::new();
        for line in head.lines() {
            if line.starts_with([' ', '\t']) {
                if let Some((_, v)) = headers.last_mut() {
                    v.push(' ');
                    v.push_str(line.trim());
                }
            } else if let Some((k, v)) = line.split_once(':') {
                headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
            }
        }
        let get = |name: &str| headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone()).unwrap_or_default();
        let rcpt_to = headers
            .iter()
            .filter(|(k, _)| k == "x-rcptto")
            .flat_map(|(_, v)| v.split(',').map(|r| r.trim().to_string()))
            .collect();
        let encoding = get("content-transfer-encoding").to_ascii_lowercase();
        let body = match encoding.as_str() {
            "base64" => {
                use base64::Engine;
                let compact: String = body.chars().filter(|c| !c.is_whitespace()).collect();
                base64::engine::general_purpose::STANDARD
                    .decode(compact)
                    .map(|b| String::from_utf8_lossy(&b).into_owned())
                    .unwrap_or_else(|_| body.to_string())
            }
            "quoted-printable" => decode_quoted_printable(body),
            _ => body.to_string(),
        };
        CapturedMail {
            rcpt_to,
            from: get("from"),
            to: get("to"),
            subject: get("subject"),
            message_id: get("message-id"),
            body: body.trim_end_matches('\n').to_string(),
        }
    }

    fn decode_quoted_printable(s: &str) -> String {
        let s = s.replace("=\n", "");
        let bytes = s.as_bytes();
        let mut out = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while i < bytes.len() {
            if bytes[i] == b'='
                && i + 2 < bytes.len()
                && bytes[i + 1].is_ascii_hexdigit()
                && bytes[i + 2].is_ascii_hexdigit()
            {
                let hex = [bytes[i + 1], bytes[i + 2]];
                if let Ok(b) = u8::from_str_radix(std::str::from_utf8(&hex).unwrap_or("zz"), 16) {
                    out.push(b);
                    i += 3;
                    continue;
                }
            }
            out.push(bytes[i]);
            i += 1;
        }
        String::from_utf8_lossy(&out).into_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// U10: the webhook signature is HMAC-SHA256 over `timestamp.body`; a changed body, timestamp or key
    /// fails verification.
    #[test]
    fn u10_webhook_signature_verifies_and_detects_tampering() {
        let key = [7u8; 32];
        let sig = webhook_signature(&key, "1700000000", b"{\"a\":1}");
        assert!(sig.starts_with("sha256=") && sig.len() == 7 + 64);
        assert!(verify_webhook_signature(&key, "1700000000", b"{\"a\":1}", &sig));
        assert!(!verify_webhook_signature(&key, "1700000000", b"{\"a\":2}", &sig));
        assert!(!verify_webhook_signature(&key, "1700000001", b"{\"a\":1}", &sig));
        assert!(!verify_webhook_signature(&[8u8; 32], "1700000000", b"{\"a\":1}", &sig));
        assert!(!verify_webhook_signature(&key, "1700000000", b"{\"a\":1}", "sha256=zz"));
    }

    /// U10: `[notices]` is validated naming the field; clear-text SMTP or webhooks leave this host only
    /// over TLS.
    #[test]
    fn u10_notices_config_validated_naming_the_field() {
        let ok = NoticesConfig {
            smtp_host: Some("smtp.example.com".into()),
            smtp_from: Some("kinko <no-reply@example.com>".into()),
            ..Default::default()
        };
        ok.validate().unwrap();
        NoticesConfig::default().validate().unwrap();
        let field = |c: NoticesConfig| match c.validate() {
            Err(ConfigError::Invalid { field, .. }) => field,
            other => panic!("{other:?}"),
        };
        assert_eq!(field(NoticesConfig { smtp_from: None, ..ok.clone() }), "notices.smtp_from");
        assert_eq!(field(NoticesConfig { smtp_from: Some("nope".into()), ..ok.clone() }), "notices.smtp_from");
        assert_eq!(field(NoticesConfig { smtp_starttls: false, ..ok.clone() }), "notices.smtp_starttls");
        NoticesConfig { smtp_starttls: false, smtp_host: Some("127.0.0.1".into()), ..ok.clone() }.validate().unwrap();
        assert_eq!(field(NoticesConfig { smtp_port: 0, ..ok.clone() }), "notices.smtp_port");
        assert_eq!(
            field(NoticesConfig { webhook_url: Some("https://hooks.example.com/x".into()), ..ok.clone() }),
            "notices.webhook_url"
        );
        assert_eq!(
            field(NoticesConfig {
                webhook_url: Some("http://127.0.0.1:9/x".into()),
                webhook_secret_env: "not a name".into(),
                ..ok.clone()
            }),
            "notices.webhook_secret_env"
        );
        assert_eq!(field(NoticesConfig { poll_interval_ms: 0, ..ok.clone() }), "notices.poll_interval_ms");
        assert_eq!(field(NoticesConfig { attempts_max: 0, ..ok.clone() }), "notices.attempts_max");
        assert_eq!(field(NoticesConfig { backoff_max_ms: 1, ..ok.clone() }), "notices.backoff_max_ms");
        // One e-mail transport: the dev file transport never together with a relay.
        assert_eq!(field(NoticesConfig { mail_dir: Some("/tmp/m".into()), ..ok.clone() }), "notices.mail_dir");
        NoticesConfig { mail_dir: Some("/tmp/m".into()), ..Default::default() }.validate().unwrap();
        let text = "smtp_host = \"h\"\nsmtp_from = \"a@b.c\"\nwebhook_secret = \"x\"\n";
        assert!(toml::from_str::<NoticesConfig>(text).is_err(), "a secret in the file is rejected");
    }

    /// Test tooling: the Maildir reader unfolds headers and decodes the body encodings lettre uses.
    #[test]
    fn u10_captured_mail_is_parsed() {
        let raw = "From: kinko <a@b.c>\r\nSubject: New\r\n login\r\nContent-Transfer-Encoding: quoted-printable\r\n\
                   X-RcptTo: x@y.z\r\n\r\ncode =3D 1=\r\n23\r\n";
        let m = testing::parse_mail(raw);
        assert_eq!(
            (m.subject.as_str(), m.body.as_str(), m.rcpt_to.as_slice()),
            ("New login", "code = 123", &["x@y.z".to_string()][..])
        );
        let raw = "Content-Transfer-Encoding: base64\n\n5pel5pys\n";
        assert_eq!(testing::parse_mail(raw).body, "日本");
    }
}
