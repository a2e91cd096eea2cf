//! Maintenance windows and the public status (S4) over the real router in process, on SQLite and — when
//! `KINKO_TEST_POSTGRES_URL` is set — PostgreSQL: a window is announced ahead and shown at `/v1/status`;
//! while it is in force customer routes answer 503 problem+json with the notice and `Retry-After`, while the
//! ops API, the status and the metrics keep answering; cancelled, everything is normal again.

use axum::http::{Method, StatusCode};
use kinko_store::monitoring::NewHealthCheck;
use kinko_store::testing::test_stores;
use serde_json::json;

mod support;
use support::ops::*;

const HOUR_MS: i64 = 3_600_000;

#[tokio::test]
async fn s4_window_announced_ahead_then_503_with_notice_and_retry_after_while_ops_and_status_answer() {
    for ts in test_stores().await {
        let name = ts.name;
        let o = Ops::staffed(ts).await;
        let (_, customer) = o.customer("mia@example.com").await;

        // Announced an hour ahead: customers see it, and nothing is refused yet.
        let ahead = o
            .call(
                Method::POST,
                "/v1/ops/maintenance-windows",
                Some(&o.token("om1")),
                Some(json!({"starts_at_ms": now_ms() + HOUR_MS, "ends_at_ms": now_ms() + 2 * HOUR_MS, "message": "node upgrade"})),
            )
            .await;
        assert_eq!(ahead.status, StatusCode::CREATED, "{name}: {}", ahead.text);
        assert_eq!(ahead.json["created_by"], "om1");
        let status = o.call(Method::GET, "/v1/status", None, None).await;
        assert_eq!(status.status, StatusCode::OK, "{name}: {}", status.text);
        assert!(status.json["maintenance"].is_null(), "{name}: not in force yet");
        assert_eq!(status.json["announced"][0]["message"], "node upgrade");
        assert!(status.json["announced"][0].get("created_by").is_none(), "{name}: no operator names in public");
        assert_eq!(o.call(Method::GET, "/v1/balances", Some(&customer), None).await.status, StatusCode::OK);

        // A window in force now (an administrator may announce too).
        let now_window = o
            .call(
                Method::POST,
                "/v1/ops/maintenance-windows",
                Some(&o.token("admin1")),
                Some(json!({"starts_at_ms": now_ms(), "ends_at_ms": now_ms() + 120_000, "message": "database migration until 10:00 UTC"})),
            )
            .await;
        assert_eq!(now_window.status, StatusCode::CREATED, "{name}: {}", now_window.text);
        let id = now_window.json["id"].as_str().unwrap().to_string();

        let resp = raw(&o, Method::GET, "/v1/balances", Some(&customer)).await;
        assert_eq!(resp.0, StatusCode::SERVICE_UNAVAILABLE, "{name}");
        assert_eq!(resp.1.get("content-type").unwrap(), "application/problem+json");
        let retry_after: u64 = resp.1.get("retry-after").unwrap().to_str().unwrap().parse().unwrap();
        assert!((100..=120).contains(&retry_after), "{name}: Retry-After {retry_after} is the rest of the window");
        assert_eq!(resp.2["detail"], "database migration until 10:00 UTC");
        assert_eq!(resp.2["maintenance"]["id"], id.as_str());
        // Every customer route, unauthenticated ones and unknown ones too.
        for (m, path) in [(Method::POST, "/v1/customers"), (Method::POST, "/v1/sessions"), (Method::GET, "/v1/nope")] {
            let r = o.call(m, path, None, Some(json!({}))).await;
            assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{name}: {path}");
        }
        // The web console's customer pages answer with an HTML page carrying the notice (#8: never a blank
        // page or raw JSON in a browser), with the console's security headers; the operators' console and
        // its stylesheet keep answering, since operators do the maintenance through it.
        for path in ["/", "/login", "/portal", "/portal/withdraw", "/no-such-page"] {
            let (status, headers, html) = raw_text(&o, Method::GET, path, None).await;
            assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{name}: {path}");
            assert!(headers["content-type"].to_str().unwrap().starts_with("text/html"), "{name}: {path}");
            assert!(headers.contains_key("retry-after"), "{name}: {path}");
            assert!(headers["content-security-policy"].to_str().unwrap().contains("script-src"), "{name}: {path}");
            assert!(html.contains("Maintenance in progress"), "{name}: {path}: {html}");
            assert!(html.contains("database migration until 10:00 UTC"), "{name}: {path}: the operators' notice");
        }
        for path in ["/ops/login", "/static/kinko.css"] {
            let (status, _, _) = raw_text(&o, Method::GET, path, None).await;
            assert_eq!(status, StatusCode::OK, "{name}: {path} keeps answering during the window");
        }
        // What keeps answering: the status, the ops API, metrics and probes.
        let status = o.call(Method::GET, "/v1/status", None, None).await;
        assert_eq!(status.status, StatusCode::OK);
        assert_eq!(status.json["maintenance"]["id"], id.as_str(), "{name}: {}", status.text);
        assert_eq!(status.json["announced"].as_array().unwrap().len(), 2);
        for path in ["/metrics", "/healthz", "/readyz", "/openapi.json"] {
            assert_eq!(o.call(Method::GET, path, None, None).await.status, StatusCode::OK, "{name}: {path}");
        }
        let listed = o.call(Method::GET, "/v1/ops/maintenance-windows", Some(&o.token("li1")), None).await;
        assert_eq!(listed.status, StatusCode::OK, "{name}: {}", listed.text);
        assert_eq!(listed.json.as_array().unwrap().len(), 2);

        // Cancelled: customers are served again; the announcement and the cancellation are ops events.
        let cancel = o
            .call(Method::POST, &format!("/v1/ops/maintenance-windows/{id}/cancel"), Some(&o.token("om2")), None)
            .await;
        assert_eq!(cancel.status, StatusCode::OK, "{name}: {}", cancel.text);
        assert_eq!(cancel.json["cancelled_by"], "om2");
        assert_eq!(o.call(Method::GET, "/v1/balances", Some(&customer), None).await.status, StatusCode::OK);
        let again = o
            .call(Method::POST, &format!("/v1/ops/maintenance-windows/{id}/cancel"), Some(&o.token("om2")), None)
            .await;
        assert_eq!(again.status, StatusCode::CONFLICT, "{name}: cancelled once");
        let events: Vec<String> =
            o.ts.store.ops_events(None, 500).await.unwrap().into_iter().map(|e| e.event).collect();
        assert_eq!(events.iter().filter(|e| *e == "maintenance_announced").count(), 2, "{name}");
        assert!(events.iter().any(|e| e == "maintenance_cancelled"), "{name}");
    }
}

#[tokio::test]
async fn s4_only_operations_managers_and_administrators_announce_and_bad_windows_name_the_field() {
    for ts in test_stores().await {
        let name = ts.name;
        let o = Ops::staffed(ts).await;
        let body = json!({"starts_at_ms": now_ms() + HOUR_MS, "ends_at_ms": now_ms() + 2 * HOUR_MS, "message": "m"});
        for who in ["li1", "so1", "sm1", "ko1"] {
            let r = o.call(Method::POST, "/v1/ops/maintenance-windows", Some(&o.token(who)), Some(body.clone())).await;
            assert_eq!(r.status, StatusCode::FORBIDDEN, "{name}: {who}");
        }
        for (bad, field) in [
            (
                json!({"starts_at_ms": now_ms() - HOUR_MS, "ends_at_ms": now_ms() + HOUR_MS, "message": "m"}),
                "starts_at_ms",
            ),
            (
                json!({"starts_at_ms": now_ms() + HOUR_MS, "ends_at_ms": now_ms() + HOUR_MS, "message": "m"}),
                "ends_at_ms",
            ),
            (
                json!({"starts_at_ms": now_ms(), "ends_at_ms": now_ms() + 8 * 24 * HOUR_MS, "message": "m"}),
                "ends_at_ms",
            ),
            (json!({"starts_at_ms": now_ms(), "ends_at_ms": now_ms() + HOUR_MS, "message": " "}), "message"),
            (
                json!({"starts_at_ms": now_ms(), "ends_at_ms": now_ms() + HOUR_MS, "message": "x".repeat(501)}),
                "message",
            ),
        ] {
            let r = o.call(Method::POST, "/v1/ops/maintenance-windows", Some(&o.token("om1")), Some(bad)).await;
            assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{name}: {}", r.text);
            assert_eq!(r.json["errors"][0]["field"], field, "{name}: {}", r.text);
        }
        let unknown =
            o.call(Method::POST, "/v1/ops/maintenance-windows/nope/cancel", Some(&o.token("om1")), None).await;
        assert_eq!(unknown.status, StatusCode::NOT_FOUND, "{name}");
        // Nothing was announced, so customers are served.
        let status = o.call(Method::GET, "/v1/status", None, None).await;
        assert_eq!(status.json["announced"], json!([]), "{name}");
    }
}

/// C6, S4: the public status reports withdrawals halted until the node monitor has vouched for the nodes
/// (fail closed), not halted under a fresh healthy verdict, halted again when that verdict goes stale.
#[tokio::test]
async fn s4_c6_status_reports_halted_withdrawals_from_the_node_monitors_verdict() {
    for ts in test_stores().await {
        let name = ts.name;
        let o = ops(ts).await;
        let status = o.call(Method::GET, "/v1/status", None, None).await;
        assert_eq!(status.status, StatusCode::OK);
        assert_eq!(status.json["withdrawals_halted"], true, "{name}: no verdict yet: {}", status.text);
        assert_eq!(status.json["frozen"], false, "{name}: {}", status.text);
        let check = |healthy, valid_until_ms| NewHealthCheck {
            component: "nodes:eth",
            healthy,
            reasons_json: "[]",
            checked_by: "t",
            now_ms: now_ms(),
            valid_until_ms,
        };
        let no_alert = |_, _: Option<&_>| kinko_store::monitoring::HealthAlert::default();
        o.ts.store.record_health_check(&check(true, now_ms() + 60_000), no_alert).await.unwrap();
        let status = o.call(Method::GET, "/v1/status", None, None).await;
        assert_eq!(status.json["withdrawals_halted"], false, "{name}: {}", status.text);
        o.ts.store.record_health_check(&check(true, now_ms() - 1), no_alert).await.unwrap();
        let status = o.call(Method::GET, "/v1/status", None, None).await;
        assert_eq!(status.json["withdrawals_halted"], true, "{name}: a stale verdict vouches for nothing");
        o.ts.store.record_health_check(&check(false, now_ms() + 60_000), no_alert).await.unwrap();
        let status = o.call(Method::GET, "/v1/status", None, None).await;
        assert_eq!(status.json["withdrawals_halted"], true, "{name}");
        assert!(status.json["halted_since_ms"].is_i64(), "{name}: {}", status.text);
    }
}

/// The raw answer: status, headers, JSON body.
async fn raw(
    o: &Ops,
    method: Method,
    path: &str,
    token: Option<&str>,
) -> (StatusCode, axum::http::HeaderMap, serde_json::Value) {
    let (status, headers, text) = raw_text(o, method, path, token).await;
    (status, headers, serde_json::from_str(&text).unwrap_or(serde_json::Value::Null))
}

/// The raw answer: status, headers, body as text.
async fn raw_text(
    o: &Ops,
    method: Method,
    path: &str,
    token: Option<&str>,
) -> (StatusCode, axum::http::HeaderMap, String) {
    use tower::ServiceExt;
    let mut b = axum::http::Request::builder().method(method).uri(path);
    if let Some(t) = token {
        b = b.header("authorization", format!("Bearer {t}"));
    }
    let mut req = b.body(axum::body::Body::empty()).unwrap();
    req.extensions_mut().insert(axum::extract::ConnectInfo(PEER.parse::<std::net::SocketAddr>().unwrap()));
    let resp = o.app.clone().oneshot(req).await.unwrap();
    let (parts, body) = resp.into_parts();
    let bytes = axum::body::to_bytes(body, 1 << 20).await.unwrap();
    (parts.status, parts.headers, String::from_utf8_lossy(&bytes).into_owned())
}
