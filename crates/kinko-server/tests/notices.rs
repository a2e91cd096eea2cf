//! Customer notices end to end (issue 5; U10, U11, L5): the transactional outbox, the SMTP sender against
//! a real SMTP server (the sink `scripts/test` starts: python3-aiosmtpd writing a Maildir), and signed
//! webhooks to a real HTTP receiver, on SQLite and PostgreSQL.
//!
//! Mail tests skip without the sink unless `KINKO_TEST_REQUIRE_SMTP=1` (scripts/test sets it).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use kinko_server::notices::testing::{SmtpSink, smtp_sink};
use kinko_server::notices::{
    NOTICE_ID_HEADER, NoticeSender, NoticesConfig, RunStats, SIGNATURE_HEADER, TIMESTAMP_HEADER,
    verify_webhook_signature,
};
use kinko_store::Store;
use kinko_store::notices::{NewNotice, NoticeState};
use kinko_store::testing::test_stores;

const MAIL_WAIT: Duration = Duration::from_secs(10);
const FROM: &str = "kinko <no-reply@kinko.test>";
const WEBHOOK_SECRET: &str = "0123456789abcdef0123456789abcdef-test-secret";

fn smtp_config(host: &str, port: u16) -> NoticesConfig {
    NoticesConfig {
        smtp_host: Some(host.into()),
        smtp_port: port,
        smtp_from: Some(FROM.into()),
        // The sink is on this host and speaks no TLS.
        smtp_starttls: false,
        poll_interval_ms: 20,
        ..Default::default()
    }
}

fn sink_sender(store: &Store, sink: &SmtpSink) -> NoticeSender {
    NoticeSender::from_config_with_env(store.clone(), "test-1", &smtp_config(&sink.host, sink.port), |_| None)
        .expect("sender for the sink")
}

/// A recipient no other test (or backend) uses: the sink's Maildir is shared by the whole run.
fn unique_address(tag: &str) -> String {
    format!("{tag}-{}@customer.test", uuid::Uuid::new_v4().simple())
}

fn login_mail(to: &str, key: &str, subject: &str, now_ms: i64) -> NewNotice {
    NewNotice::email(None, to, "login", key, subject, "Someone logged in. Code: 123456", now_ms)
}

/// U11, L5: a notice enqueued in a transaction that rolls back is never sent; one enqueued in a committed
/// transaction arrives at the customer's address with its subject, from the configured sender.
#[tokio::test]
async fn u11_rolled_back_event_sends_nothing_committed_event_mails_the_customer() {
    let Some(sink) = smtp_sink() else { return eprintln!("skipped: no SMTP sink (scripts/test starts one)") };
    for ts in test_stores().await {
        let to = unique_address(ts.name);
        let mut tx = ts.begin_write().await.unwrap();
        ts.enqueue_notice_tx(&mut tx, &login_mail(&to, "rolled-back", "Rolled back login", 1)).await.unwrap();
        tx.rollback().await.unwrap();
        let mut tx = ts.begin_write().await.unwrap();
        ts.enqueue_notice_tx(&mut tx, &login_mail(&to, "committed", "New login to kinko", 1)).await.unwrap();
        tx.commit().await.unwrap();

        let sender = sink_sender(&ts, &sink);
        let stats = sender.run_once(kinko_server::clock::now_ms()).await.unwrap();
        assert_eq!(stats, RunStats { sent: 1, retrying: 0, failed: 0 }, "{}", ts.name);
        let mails = sink.wait_for(&to, 1, MAIL_WAIT).await;
        assert_eq!(mails.len(), 1, "{}: exactly the committed notice is mailed: {mails:?}", ts.name);
        let m = &mails[0];
        assert_eq!(m.subject, "New login to kinko", "{}", ts.name);
        assert!(m.to.contains(&to) && m.from.contains("no-reply@kinko.test"), "{m:?}");
        assert!(m.body.contains("Code: 123456"), "{m:?}");
        let stored = ts.notice_by_dedupe_key("login", "committed").await.unwrap().unwrap();
        assert_eq!((stored.state, stored.attempts), (NoticeState::Sent, 1), "{}", ts.name);
        assert!(m.message_id.contains(&stored.id), "Message-ID names the notice: {m:?}");
        assert_eq!(ts.notice_by_dedupe_key("login", "rolled-back").await.unwrap(), None, "{}", ts.name);
    }
}

/// U10: the same event enqueued twice (same kind and dedupe key, e.g. a retried request) is mailed once,
/// by the running sender loop.
#[tokio::test]
async fn u10_same_event_enqueued_twice_is_mailed_once() {
    let Some(sink) = smtp_sink() else { return eprintln!("skipped: no SMTP sink (scripts/test starts one)") };
    for ts in test_stores().await {
        let to = unique_address(ts.name);
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(sink_sender(&ts, &sink).run(stopped));
        let now = kinko_server::clock::now_ms();
        ts.enqueue_notice(&login_mail(&to, "session-1", "New login", now)).await.unwrap();
        ts.enqueue_notice(&login_mail(&to, "session-1", "New login", now + 1)).await.unwrap();
        let mut tx = ts.begin_write().await.unwrap();
        ts.enqueue_notice_tx(&mut tx, &login_mail(&to, "session-1", "New login", now + 2)).await.unwrap();
        tx.commit().await.unwrap();
        assert_eq!(sink.wait_for(&to, 1, MAIL_WAIT).await.len(), 1, "{}", ts.name);
        // Give a (wrong) second delivery every chance to show up.
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(sink.wait_for(&to, 2, Duration::ZERO).await.len(), 1, "{}: mailed once", ts.name);
        stop.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(5), task).await.expect("sender stops").unwrap();
    }
}

/// L5: with the SMTP relay down a notice is retried with exponential back-off, not before its time,
/// ends `failed` after the bound with the error kept, and is never lost: re-queued once mail works, it
/// is delivered.
#[tokio::test]
async fn l5_smtp_down_retried_with_backoff_then_failed_never_lost() {
    // A port nothing listens on: bind, note it, close.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    for ts in test_stores().await {
        let config = NoticesConfig {
            attempts_max: 3,
            backoff_base_ms: 1_000,
            backoff_max_ms: 1_500,
            ..smtp_config("127.0.0.1", port)
        };
        let down = NoticeSender::from_config_with_env(ts.store.clone(), "test-1", &config, |_| None).unwrap();
        let to = unique_address(ts.name);
        let t0 = 1_000_000;
        ts.enqueue_notice(&login_mail(&to, "k", "Withdrawal requested", t0)).await.unwrap();
        let retrying = RunStats { sent: 0, retrying: 1, failed: 0 };
        let idle = RunStats::default();
        assert_eq!(down.run_once(t0).await.unwrap(), retrying, "{}: attempt 1", ts.name);
        let n = ts.notice_by_dedupe_key("login", "k").await.unwrap().unwrap();
        assert_eq!((n.state, n.attempts, n.next_attempt_at_ms), (NoticeState::Pending, 1, t0 + 1_000));
        assert!(n.last_error.as_deref().unwrap_or_default().starts_with("smtp:"), "{n:?}");
        assert_eq!(down.run_once(t0 + 999).await.unwrap(), idle, "{}: backing off", ts.name);
        assert_eq!(down.run_once(t0 + 1_000).await.unwrap(), retrying, "{}: attempt 2", ts.name);
        // Doubled, then capped: 2,000 ms → 1,500 ms.
        assert_eq!(down.run_once(t0 + 2_499).await.unwrap(), idle, "{}: backing off longer", ts.name);
        let failed = RunStats { sent: 0, retrying: 0, failed: 1 };
        assert_eq!(down.run_once(t0 + 2_500).await.unwrap(), failed, "{}: attempt 3 is the last", ts.name);
        let n = ts.notice_by_dedupe_key("login", "k").await.unwrap().unwrap();
        assert_eq!((n.state, n.attempts), (NoticeState::Failed, 3), "{}", ts.name);
        assert!(n.last_error.is_some(), "{n:?}");
        assert_eq!(down.run_once(t0 + 1_000_000).await.unwrap(), idle, "{}: failed is final", ts.name);
        assert_eq!(ts.count_notices(NoticeState::Failed).await.unwrap(), 1);

        let Some(sink) = smtp_sink() else { continue };
        assert!(ts.requeue_notice(&n.id, t0 + 3_000).await.unwrap());
        assert_eq!(sink_sender(&ts, &sink).run_once(t0 + 3_000).await.unwrap().sent, 1, "{}", ts.name);
        assert_eq!(sink.wait_for(&to, 1, MAIL_WAIT).await.len(), 1, "{}: delivered after all", ts.name);
    }
}

/// What the test receiver saw.
#[derive(Clone, Debug)]
struct Received {
    headers: HeaderMap,
    body: Bytes,
}

/// A real HTTP receiver on a free loopback port: `/hook` answers 204, `/broken` 500.
async fn start_receiver() -> (String, Arc<Mutex<Vec<Received>>>, tokio::task::JoinHandle<()>) {
    let seen: Arc<Mutex<Vec<Received>>> = Arc::default();
    let record = |status: StatusCode| {
        let seen = seen.clone();
        move |headers: HeaderMap, body: Bytes| {
            let seen = seen.clone();
            async move {
                seen.lock().unwrap().push(Received { headers, body });
                status
            }
        }
    };
    let app = axum::Router::new()
        .route("/hook", axum::routing::post(record(StatusCode::NO_CONTENT)))
        .route("/broken", axum::routing::post(record(StatusCode::INTERNAL_SERVER_ERROR)));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let task = tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    (base, seen, task)
}

fn webhook_sender(store: &Store, url: String) -> NoticeSender {
    let config = NoticesConfig { webhook_url: Some(url), poll_interval_ms: 20, ..Default::default() };
    NoticeSender::from_config_with_env(store.clone(), "test-1", &config, |name| {
        (name == "KINKO_WEBHOOK_SECRET").then(|| WEBHOOK_SECRET.to_string())
    })
    .expect("webhook sender")
}

/// U10, L5: a webhook notice reaches the receiver with an HMAC-SHA256 signature over `timestamp.body`
/// that verifies with the shared secret; a tampered body or timestamp, or another secret, does not. A
/// receiver error is retried, not dropped.
#[tokio::test]
async fn u10_webhook_delivered_signed_and_tampering_detected() {
    let (base, seen, server) = start_receiver().await;
    for ts in test_stores().await {
        seen.lock().unwrap().clear();
        let now = kinko_server::clock::now_ms();
        let notice = NewNotice::webhook(
            None,
            "customer-42",
            "withdrawal_confirmation",
            format!("w-1-{}", ts.name),
            "Confirm your withdrawal",
            "Your code: 654321",
            now,
        )
        .with_payload(serde_json::json!({ "withdrawal_id": "w-1", "amount": "1000000000000000000" }));
        ts.enqueue_notice(&notice).await.unwrap();
        let sender = webhook_sender(&ts, format!("{base}/hook"));
        assert_eq!(sender.run_once(now).await.unwrap().sent, 1, "{}", ts.name);

        let got = seen.lock().unwrap().clone();
        assert_eq!(got.len(), 1, "{}", ts.name);
        let r = &got[0];
        let header = |name: &str| r.headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
        let (timestamp, signature) = (header(TIMESTAMP_HEADER), header(SIGNATURE_HEADER));
        let secret = WEBHOOK_SECRET.as_bytes();
        assert!(verify_webhook_signature(secret, &timestamp, &r.body, &signature), "{}: {signature}", ts.name);
        let seconds: i64 = timestamp.parse().expect("Unix seconds");
        assert!((seconds - now / 1_000).abs() <= 60, "timestamp {seconds} vs now {now}");
        let mut tampered = r.body.to_vec();
        let at = tampered.iter().position(|&b| b == b'6').expect("the code is in the body");
        tampered[at] = b'7';
        assert!(!verify_webhook_signature(secret, &timestamp, &tampered, &signature), "tampered body");
        let later = (seconds + 1).to_string();
        assert!(!verify_webhook_signature(secret, &later, &r.body, &signature), "other timestamp");
        assert!(!verify_webhook_signature(b"another-secret-another-secret-xx", &timestamp, &r.body, &signature));

        let json: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        let stored = ts.notice_by_dedupe_key("withdrawal_confirmation", &notice.dedupe_key).await.unwrap().unwrap();
        assert_eq!(json["id"], stored.id.as_str());
        assert_eq!(header(NOTICE_ID_HEADER), stored.id);
        assert_eq!(
            (json["kind"].as_str(), json["recipient"].as_str()),
            (Some("withdrawal_confirmation"), Some("customer-42"))
        );
        assert_eq!(json["body"], "Your code: 654321");
        assert_eq!(json["payload"]["withdrawal_id"], "w-1");
        assert_eq!(stored.state, NoticeState::Sent, "{}", ts.name);

        // A receiver that answers 500: retried later, the error kept without the URL.
        let mut second = notice.clone();
        second.dedupe_key = format!("w-2-{}", ts.name);
        ts.enqueue_notice(&second).await.unwrap();
        let broken = webhook_sender(&ts, format!("{base}/broken"));
        assert_eq!(broken.run_once(now).await.unwrap().retrying, 1, "{}", ts.name);
        let n = ts.notice_by_dedupe_key("withdrawal_confirmation", &second.dedupe_key).await.unwrap().unwrap();
        assert_eq!(n.state, NoticeState::Pending);
        assert_eq!(n.last_error.as_deref(), Some("webhook: receiver answered 500 Internal Server Error"));
    }
    server.abort();
}

/// U10: a configured webhook without its secret in the environment refuses to start (fail closed),
/// naming the field; e-mail notices are not claimed by a sender without SMTP (they stay pending).
#[tokio::test]
async fn u10_webhook_without_secret_refuses_and_unconfigured_channels_stay_pending() {
    let ts = kinko_store::testing::sqlite_store().await;
    let config = NoticesConfig { webhook_url: Some("http://127.0.0.1:9/hook".into()), ..Default::default() };
    let err = NoticeSender::from_config_with_env(ts.store.clone(), "t", &config, |_| None).err().expect("refused");
    assert!(err.to_string().starts_with("notices.webhook_secret_env:"), "{err}");
    let short = NoticeSender::from_config_with_env(ts.store.clone(), "t", &config, |_| Some("short".into()));
    assert!(short.is_err(), "a short secret is refused");

    let hooks_only = webhook_sender(&ts, "http://127.0.0.1:9/hook".into());
    ts.enqueue_notice(&login_mail("a@customer.test", "k", "New login", 0)).await.unwrap();
    assert_eq!(hooks_only.run_once(10).await.unwrap(), RunStats::default());
    let n = ts.notice_by_dedupe_key("login", "k").await.unwrap().unwrap();
    assert_eq!((n.state, n.attempts), (NoticeState::Pending, 0));
}
