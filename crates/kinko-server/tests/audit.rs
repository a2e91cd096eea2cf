//! The audit trail over the API (L2, L4–L6), on SQLite and — when `KINKO_TEST_POSTGRES_URL` is set —
//! PostgreSQL: every mutating request and every operator call is recorded (actor, role, terminal, action,
//! object, body digest, outcome) in a chain that verifies; a failing audit sink stops the action before
//! its handler runs; the inspector's views search the trail, cross-check the key access log and flag
//! crafted mismatches; the periodic report is stored, chained and announced as an ops event.

use axum::http::{Method, StatusCode};
use kinko_core::audit::{Record, Verifier};
use kinko_core::operators::Decision;
use kinko_server::Config;
use kinko_store::Backend;
use kinko_store::testing::test_stores;
use serde_json::json;

mod support;
use support::ops::*;

/// Verifies the whole stored chain against the audit key in the test data directory.
async fn verify_chain(store: &kinko_store::Store) -> u64 {
    let config = Config::dev_default(std::env::temp_dir(), "127.0.0.1:0".parse().unwrap(), String::new());
    let key = kinko_server::audit::read_key_file(&kinko_server::audit::key_path(&config)).unwrap();
    let mut v = Verifier::new(Some(key.public_key()));
    for row in store.audit_rows(0, kinko_store::audit::AUDIT_PAGE_MAX).await.unwrap() {
        v.push(&row.to_signed().unwrap()).unwrap();
    }
    v.finish().unwrap().count
}

/// Makes every audit append fail, as a broken audit sink would.
async fn break_audit_sink(store: &kinko_store::Store, only_action: Option<&str>) {
    let pool = store.pool();
    match store.backend() {
        Backend::Sqlite => {
            let when = only_action.map(|a| format!("WHEN NEW.action = '{a}'")).unwrap_or_default();
            let q = format!(
                "CREATE TRIGGER audit_down BEFORE INSERT ON audit_log {when} BEGIN SELECT RAISE(ABORT, 'audit sink down'); END"
            );
            kinko_store::sqlx::query(kinko_store::sqlx::AssertSqlSafe(q)).execute(pool).await.unwrap();
        }
        Backend::Postgres => {
            let cond = only_action.map(|a| format!("IF NEW.action = '{a}' THEN ")).unwrap_or_default();
            let end = if only_action.is_some() { " END IF;" } else { "" };
            let q = format!(
                "CREATE FUNCTION audit_down() RETURNS trigger AS $$ BEGIN {cond}RAISE EXCEPTION 'audit sink down';{end} \
                 RETURN NEW; END $$ LANGUAGE plpgsql"
            );
            kinko_store::sqlx::query(kinko_store::sqlx::AssertSqlSafe(q)).execute(pool).await.unwrap();
            kinko_store::sqlx::query(
                "CREATE TRIGGER audit_down BEFORE INSERT ON audit_log FOR EACH ROW EXECUTE FUNCTION audit_down()",
            )
            .execute(pool)
            .await
            .unwrap();
        }
    }
}

async fn repair_audit_sink(store: &kinko_store::Store) {
    let q = match store.backend() {
        Backend::Sqlite => "DROP TRIGGER audit_down",
        Backend::Postgres => "DROP TRIGGER audit_down ON audit_log",
    };
    kinko_store::sqlx::query(q).execute(store.pool()).await.unwrap();
}

#[tokio::test]
async fn l2_l4_l5_every_action_is_recorded_with_actor_role_terminal_digest_and_outcome() {
    for ts in test_stores().await {
        let name = ts.name;
        let o = Ops::staffed(ts).await;
        let (customer_id, customer_token) = o.customer("audit-a@example.com").await;
        // A failed customer login stays attributable to the account it claimed (L5).
        let bad = json!({"email": "audit-a@example.com", "password": "wrong password, long enough"});
        let r = o.call(Method::POST, "/v1/sessions", None, Some(bad.clone())).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{name}");
        let body = json!({"asset": "ETH", "amount": "1", "destination": "0x0000000000000000000000000000000000000001"});
        let _ = o.call(Method::POST, "/v1/withdrawals", Some(&customer_token), Some(body.clone())).await;

        // Searching needs the log inspector (or an administrator); the matrix test covers the refusals.
        let r = o.call(Method::GET, "/v1/ops/audit?actor=audit-a@example.com", Some(&o.token("li1")), None).await;
        assert_eq!(r.status, StatusCode::OK, "{name}: {}", r.text);
        let failed = r.json.as_array().unwrap();
        let login = failed.iter().find(|e| e["outcome"].as_str().unwrap().starts_with("401")).expect("failed login");
        assert_eq!(login["actor_kind"], "anonymous", "{name}");
        assert_eq!(login["action"], "POST /v1/sessions", "{name}");
        assert_eq!(login["terminal"], "192.0.2.7", "{name}: the client address (L4)");
        // The body is kept only as its digest: the password never reaches the log.
        assert_eq!(login["request_digest"], hex::encode(Record::digest(bad.to_string().as_bytes())), "{name}");
        assert!(!r.text.contains("wrong password"), "{name}");

        let q = format!("/v1/ops/audit?actor={customer_id}&action=POST%20/v1/withdrawals");
        let r = o.call(Method::GET, &q, Some(&o.token("li1")), None).await;
        let entries = r.json.as_array().unwrap();
        assert_eq!(entries.len(), 2, "{name}: the attempt before the handler and the outcome after: {}", r.text);
        assert_eq!(entries[0]["outcome"], "attempt", "{name}");
        assert_eq!(entries[0]["actor_kind"], "customer", "{name}");
        assert_eq!(entries[0]["role"], "customer", "{name}");
        assert_eq!(entries[0]["object"], "/v1/withdrawals", "{name}");
        assert_eq!(entries[0]["request_digest"], hex::encode(Record::digest(body.to_string().as_bytes())), "{name}");
        let seq = entries[0]["seq"].as_i64().unwrap();
        assert!(entries[1]["outcome"].as_str().unwrap().ends_with(&format!("(attempt {seq})")), "{name}");

        // Operator calls, reads included, name the operator and their role (L4).
        let r = o
            .call(Method::GET, "/v1/ops/audit?actor=li1&action=GET%20/v1/ops/audit", Some(&o.token("li1")), None)
            .await;
        let mine = r.json.as_array().unwrap();
        assert!(!mine.is_empty(), "{name}: the inspector's own reads are recorded too");
        assert_eq!(mine[0]["actor_kind"], "operator", "{name}");
        assert_eq!(mine[0]["role"], "log_inspector", "{name}");

        // Customer reads are not audited (kept cheap); the whole chain verifies under the audit key.
        assert!(verify_chain(&o.ts.store).await > 10, "{name}");
    }
}

#[tokio::test]
async fn l6_audit_sink_failure_stops_withdrawal_creation_with_503_and_no_row() {
    for ts in test_stores().await {
        let name = ts.name;
        let o = Ops::staffed(ts).await;
        let (customer_id, token) = o.customer("audit-b@example.com").await;
        break_audit_sink(&o.ts.store, None).await;
        let body = json!({"asset": "ETH", "amount": "1", "destination": "0x0000000000000000000000000000000000000001"});
        let r = o.call(Method::POST, "/v1/withdrawals", Some(&token), Some(body)).await;
        assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{name}: {}", r.text);
        assert_eq!(r.json["title"], "audit log unavailable", "{name}: {}", r.text);
        let rows: i64 = kinko_store::sqlx::query_scalar("SELECT COUNT(*) FROM withdrawals WHERE customer_id = $1")
            .bind(&customer_id)
            .fetch_one(o.ts.store.pool())
            .await
            .unwrap();
        assert_eq!(rows, 0, "{name}: the handler did not run");
        // Operator actions stop too, reads included.
        let r = o.call(Method::GET, "/v1/ops/requests", Some(&o.token("om1")), None).await;
        assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{name}: {}", r.text);
        repair_audit_sink(&o.ts.store).await;
        let r = o.call(Method::GET, "/v1/ops/requests", Some(&o.token("om1")), None).await;
        assert_eq!(r.status, StatusCode::OK, "{name}: {}", r.text);
        verify_chain(&o.ts.store).await;
    }
}

#[tokio::test]
async fn l2_k12_inspection_flags_crafted_mismatches_and_unbacked_signatures() {
    for ts in test_stores().await {
        let name = ts.name;
        let o = Ops::staffed(ts).await;
        let (customer_id, _) = o.customer("audit-c@example.com").await;
        let params = json!({"customer_id": customer_id, "asset": "JPY", "amount": "5", "bank_reference": "r1"});
        let fiat = o.request("so1", "fiat_deposit", "fiat_deposit", params).await;
        let id = fiat.json["id"].as_str().unwrap().to_string();
        assert_eq!(o.decide("om2", &id, Decision::Approve).await.json["state"], "executed", "{name}");

        let r = o.call(Method::GET, "/v1/ops/audit/inspection", Some(&o.token("li1")), None).await;
        assert_eq!(r.status, StatusCode::OK, "{name}: {}", r.text);
        assert_eq!(r.json["findings"], json!([]), "{name}: an honest history has no findings: {}", r.text);
        let view = r.json["requests"].as_array().unwrap().iter().find(|q| q["id"] == id.as_str()).unwrap().clone();
        assert_eq!(view["approvers"], json!(["om2"]), "{name}");

        // Crafted in the database: a quorum raised after the fact, the approver recorded as executor, and a
        // signature in the key access log with no approved intent behind it.
        kinko_store::sqlx::query("UPDATE ops_requests SET required = 2, executor = 'om2' WHERE id = $1")
            .bind(&id)
            .execute(o.ts.store.pool())
            .await
            .unwrap();
        kinko_store::sqlx::query(
            "INSERT INTO key_access_log (id, at_ms, key_id, operation, payload_sha256, intent_hash, actor, terminal, \
             approvers_json) VALUES ('kal-forged', 1, 'eth-hot-1', 'sign', $1, $2, 'signer', 'host', '[]')",
        )
        .bind("ab".repeat(32))
        .bind("cd".repeat(32))
        .execute(o.ts.store.pool())
        .await
        .unwrap();
        let r = o.call(Method::GET, "/v1/ops/audit/inspection", Some(&o.token("li1")), None).await;
        let codes: Vec<(String, String)> = r.json["findings"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| (f["code"].as_str().unwrap().to_string(), f["subject"].as_str().unwrap().to_string()))
            .collect();
        assert!(codes.contains(&("executed_without_quorum".into(), id.clone())), "{name}: {codes:?}");
        assert!(codes.contains(&("executor_is_approver".into(), id.clone())), "{name}: {codes:?}");
        assert!(
            codes.contains(&("signature_without_approved_intent".into(), "key access log kal-forged".into())),
            "{name}: {codes:?}"
        );
        let r = o.call(Method::GET, "/v1/ops/key-access-log?key_id=eth-hot-1", Some(&o.token("admin1")), None).await;
        assert_eq!(r.status, StatusCode::OK, "{name}: {}", r.text);
        let forged = r.json.as_array().unwrap().iter().find(|k| k["id"] == "kal-forged").unwrap().clone();
        assert_eq!(forged["approved_intent"], false, "{name}");

        // The periodic report: stored, chained, announced as an ops event, with the head to keep outside.
        let config = Config::dev_default(std::env::temp_dir(), "127.0.0.1:0".parse().unwrap(), String::new());
        let sink = kinko_server::audit::AuditSink::from_config(o.ts.store.clone(), &config);
        let report = kinko_server::audit::write_report(&o.ts.store, &sink, Some("ops")).await.unwrap();
        assert_eq!(report.findings, 3, "{name}");
        assert_eq!(o.ts.store.latest_audit_report().await.unwrap().unwrap().id, report.id, "{name}");
        let notice = o.ts.store.notice_by_dedupe_key("inspection_report", &report.id).await.unwrap();
        let notice = notice.expect("a webhook notice for the ops relay");
        assert!(notice.body.contains(&format!("audit head seq {}", report.head_seq)), "{name}: {}", notice.body);
        let events = o.ts.store.ops_events(None, 1_000).await.unwrap();
        assert!(events.iter().any(|e| e.event == "inspection_report" && e.detail_json.contains(&report.id)), "{name}");
        let r = o.call(Method::GET, "/v1/ops/audit?action=system.inspection_report", Some(&o.token("li1")), None).await;
        assert_eq!(r.json.as_array().unwrap().len(), 1, "{name}: {}", r.text);
        verify_chain(&o.ts.store).await;
    }
}

#[tokio::test]
async fn l6_a_second_audit_key_is_refused_by_a_pinned_chain() {
    for ts in test_stores().await {
        let name = ts.name;
        let o = Ops::staffed(ts).await;
        let dir = std::env::temp_dir().join(format!("kinko-audit-{}", uuid::Uuid::new_v4().simple()));
        let mut config = Config::dev_default(dir.clone(), "127.0.0.1:0".parse().unwrap(), String::new());
        config.instance_id = "other".into();
        // A different key file: the chain already pins the test key, so this sink refuses (fail closed).
        let sink = kinko_server::audit::AuditSink::from_config(o.ts.store.clone(), &config);
        let e = sink.system("test", "system.test", "x", Record::digest(b""), "ok").await.unwrap_err();
        assert!(e.to_string().contains("pinned to audit key"), "{name}: {e}");
        assert!(sink.check(None).await.is_err(), "{name}");
        // And a production-mode sink without a key file refuses too.
        config.dev = false;
        config.audit.key_file = Some(dir.join("missing.json"));
        let sink = kinko_server::audit::AuditSink::from_config(o.ts.store.clone(), &config);
        assert!(sink.check(None).await.is_err(), "{name}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
