//! Account deletion (U5) and its restore by operators within the rollback window (U6), over the real
//! router with a real in-process signer, on SQLite and — when `KINKO_TEST_POSTGRES_URL` is set —
//! PostgreSQL. Deletion: re-authentication, refusal while funds remain, sessions dead, login refused
//! exactly like a wrong password, balances and deposit addresses kept and still credited. Restore: only by
//! an operator request (signing operator requests, operations manager approves), only within the window;
//! the customer can never restore themselves.

#![allow(dead_code)]

use std::net::SocketAddr;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{Method, Request, StatusCode, header};
use kinko_core::ledger::{AccountKind, postings};
use kinko_core::operators::Decision;
use kinko_core::{Amount, AssetCode};
use kinko_store::account_deletion::RestoreCustomerError;
use kinko_store::notices::NewNotice;
use kinko_store::testing::test_stores;
use serde_json::{Value, json};
use tower::ServiceExt;

mod support;
use support::ops::*;

const DAY_MS: i64 = 24 * 60 * 60 * 1000;

fn eth() -> AssetCode {
    "ETH".parse().unwrap()
}

const WALLET: &str = "0xf39fd6e51aad88f6f4ce6ab8827279cfffb92266";

impl Ops {
    async fn call_with_key(&self, method: Method, path: &str, token: &str, key: &str, body: Value) -> Reply {
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header(header::AUTHORIZATION, format!("Bearer {token}"))
            .header("Idempotency-Key", key)
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(body.to_string()))
            .unwrap();
        req.extensions_mut().insert(ConnectInfo(PEER.parse::<SocketAddr>().unwrap()));
        let resp = self.app.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20).await.unwrap();
        Reply {
            status,
            text: String::from_utf8_lossy(&bytes).to_string(),
            json: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        }
    }

    /// A deposit booked as the watcher books it: detected, then confirmed.
    async fn deposit(&self, customer: &str, deposit_id: &str, amount: u128) {
        let a = Amount::from_base_units(amount);
        self.ts
            .store
            .post(postings::deposit_detected(deposit_id, customer, WALLET, &eth(), a), now_ms())
            .await
            .unwrap();
        self.ts.store.post(postings::deposit_confirmed(deposit_id, customer, &eth(), a), now_ms()).await.unwrap();
    }

    async fn available(&self, customer: &str) -> String {
        let b = self.ts.store.customer_balances(customer).await.unwrap();
        b.get(&(eth(), AccountKind::Available)).map_or("0".into(), |a| a.to_string())
    }

    async fn delete_account(&self, token: &str, password: &str) -> Reply {
        self.call(Method::DELETE, "/v1/account", Some(token), Some(json!({ "password": password }))).await
    }

    async fn customer_login(&self, email: &str, password: &str) -> Reply {
        self.call(Method::POST, "/v1/sessions", None, Some(json!({"email": email, "password": password}))).await
    }

    async fn notice_kinds(&self, customer: &str) -> Vec<String> {
        self.ts.store.notices_for_customer(customer, 100).await.unwrap().into_iter().map(|n| n.kind).collect()
    }

    async fn verify(&self) {
        self.ts.store.verify_ledger(|_| {}).await.unwrap_or_else(|e| panic!("{}: ledger: {e}", self.ts.name));
    }

    /// A deletion as the API writes it, but at `deleted_at_ms` with its window ending at
    /// `restore_until_ms`: how the tests put a deletion in the past (domain code takes time as input).
    async fn delete_at(&self, customer: &str, email: &str, deleted_at_ms: i64, restore_until_ms: i64) {
        let locked = kinko_server::api::auth::hash_password(secrecy::SecretString::from("x".repeat(64))).await.unwrap();
        let notice = NewNotice::email(
            Some(customer.into()),
            email,
            "account_deleted",
            format!("{customer}:{deleted_at_ms}"),
            "deleted",
            "deleted",
            deleted_at_ms,
        );
        self.ts.store.delete_customer(customer, &locked, restore_until_ms, &notice, deleted_at_ms).await.unwrap();
    }

    async fn restore_request(&self, customer: &str) -> Reply {
        self.request(
            "so1",
            "customer_restore",
            "customer_restore",
            json!({"customer_id": customer, "reason": "customer called, ID checked"}),
        )
        .await
    }
}

fn problem_type(r: &Reply) -> &str {
    r.json["type"].as_str().unwrap_or_default()
}

fn fields(r: &Reply) -> Vec<String> {
    r.json["errors"]
        .as_array()
        .map_or(Vec::new(), |a| a.iter().map(|e| e["field"].as_str().unwrap_or_default().to_string()).collect())
}

#[tokio::test]
async fn u5_deletion_needs_zero_balances_then_login_refused_like_wrong_password_sessions_dead_balances_kept() {
    for ts in test_stores().await {
        let name = ts.name;
        let o = ops(ts).await;
        // Dave empties his account by a transfer below, so he can move money (U2, U4, U9).
        let (dave, dave_token) = support::customer::ready(&o.app, "dave@example.com", &[]).await;
        let (erin, _) = o.customer("erin@example.com").await;
        let address =
            o.call(Method::POST, "/v1/deposit-addresses", Some(&dave_token), Some(json!({"asset": "ETH"}))).await;
        assert_eq!(address.status.as_u16() / 100, 2, "{name}: {}", address.text);
        o.deposit(&dave, "d-1", 100).await;

        // Re-authentication: the login password, named when wrong.
        let wrong = o.delete_account(&dave_token, "not the password!").await;
        assert_eq!(wrong.status, StatusCode::FORBIDDEN, "{name}: {}", wrong.text);
        assert_eq!(fields(&wrong), ["password"], "{name}");
        // Funds remain: 409 naming each balance, nothing changes.
        let funded = o.delete_account(&dave_token, PASSWORD).await;
        assert_eq!(funded.status, StatusCode::CONFLICT, "{name}: {}", funded.text);
        assert_eq!(fields(&funded), ["balances.ETH.available"], "{name}");
        assert_eq!(problem_type(&funded), "urn:kinko:problem:balances-not-zero", "{name}");
        let still = o.call(Method::GET, "/v1/balances", Some(&dave_token), None).await;
        assert_eq!(still.status, StatusCode::OK, "{name}: the session survives a refused deletion");

        // Emptied (here by an internal transfer), the deletion goes through and revokes every session.
        let out = o
            .call_with_key(
                Method::POST,
                "/v1/internal-transfers",
                &dave_token,
                "empty-1",
                json!({
                    "to_customer_id": erin, "asset": "ETH", "amount": "100",
                    "transaction_password": support::customer::TRANSACTION_PASSWORD,
                }),
            )
            .await;
        assert_eq!(out.status, StatusCode::CREATED, "{name}: {}", out.text);
        let second_session = o.customer_login("dave@example.com", PASSWORD).await;
        let second_token = second_session.json["token"].as_str().unwrap().to_string();
        let deleted = o.delete_account(&dave_token, PASSWORD).await;
        assert_eq!(deleted.status, StatusCode::OK, "{name}: {}", deleted.text);
        let until = deleted.json["restore_until_ms"].as_i64().unwrap();
        let at = deleted.json["deleted_at_ms"].as_i64().unwrap();
        assert_eq!(until - at, 30 * DAY_MS, "{name}: the rollback window is 30 days");
        for token in [&dave_token, &second_token] {
            let dead = o.call(Method::GET, "/v1/balances", Some(token), None).await;
            assert_eq!(dead.status, StatusCode::UNAUTHORIZED, "{name}: {}", dead.text);
        }
        assert_eq!(o.delete_account(&dave_token, PASSWORD).await.status, StatusCode::UNAUTHORIZED, "{name}");

        // Login: the right password of the deleted account answers exactly like a wrong password of a
        // live one (and like an unknown address).
        let deleted_login = o.customer_login("dave@example.com", PASSWORD).await;
        let wrong_login = o.customer_login("erin@example.com", "not the password!").await;
        let unknown_login = o.customer_login("nobody@example.com", PASSWORD).await;
        assert_eq!(deleted_login.status, StatusCode::UNAUTHORIZED, "{name}: {}", deleted_login.text);
        assert_eq!(deleted_login.json, wrong_login.json, "{name}");
        assert_eq!(deleted_login.json, unknown_login.json, "{name}");

        // Kept: the deposit address, and a late deposit to it is credited to the deleted customer.
        let kept = o.ts.store.deposit_address(&dave, "ETH").await.unwrap().expect("deposit address kept");
        assert_eq!(Some(kept.address.as_str()), address.json["address"].as_str(), "{name}");
        o.deposit(&dave, "d-late", 7).await;
        assert_eq!(o.available(&dave).await, "7", "{name}: late deposit credited");
        assert!(o.notice_kinds(&dave).await.contains(&"account_deleted".to_string()), "{name}");
        o.verify().await;
    }
}

#[tokio::test]
async fn u6_operators_restore_within_the_window_and_the_customer_cannot_restore_themselves() {
    for ts in test_stores().await {
        let name = ts.name;
        let o = Ops::staffed(ts).await;
        let (frank, frank_token) = o.customer("frank@example.com").await;
        let (_, gina_token) = o.customer("gina@example.com").await;
        assert_eq!(o.delete_account(&frank_token, PASSWORD).await.status, StatusCode::OK, "{name}");
        o.deposit(&frank, "d-f", 5).await;

        // No customer credential reaches the operator API, neither the deleted customer's nor another's.
        let params = json!({"process": "customer_restore", "kind": "customer_restore", "params": {"customer_id": frank, "reason": "me"}});
        for token in [&frank_token, &gina_token] {
            let r = o.call(Method::POST, "/v1/ops/requests", Some(token), Some(params.clone())).await;
            assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{name}: {}", r.text);
        }
        // Only the requesting role may ask, with a reason.
        let om = o
            .request("om1", "customer_restore", "customer_restore", json!({"customer_id": frank, "reason": "x"}))
            .await;
        assert_eq!(om.status, StatusCode::FORBIDDEN, "{name}: {}", om.text);
        let no_reason = o.request("so1", "customer_restore", "customer_restore", json!({"customer_id": frank})).await;
        assert_eq!(fields(&no_reason), ["params.reason"], "{name}: {}", no_reason.text);

        let req = o.restore_request(&frank).await;
        assert_eq!(req.status, StatusCode::CREATED, "{name}: {}", req.text);
        assert_eq!(req.json["state"], "requested", "{name}: never without an approval");
        assert_eq!(req.json["required"], 1, "{name}");
        let id = req.json["id"].as_str().unwrap().to_string();
        assert_eq!(o.customer_login("frank@example.com", PASSWORD).await.status, StatusCode::UNAUTHORIZED, "{name}");
        // The signing manager is not the approving role; the operations manager is.
        let sm = o.decide("sm1", &id, Decision::Approve).await;
        assert_eq!(sm.status, StatusCode::FORBIDDEN, "{name}: {}", sm.text);
        let approved = o.decide("om1", &id, Decision::Approve).await;
        assert_eq!(approved.status, StatusCode::OK, "{name}: {}", approved.text);
        assert_eq!(approved.json["state"], "executed", "{name}: {}", approved.text);
        assert_eq!(approved.json["result"]["restored"], true, "{name}");

        // Back: the old password works, old sessions stay dead, balances (the late deposit) are there.
        let login = o.customer_login("frank@example.com", PASSWORD).await;
        assert_eq!(login.status, StatusCode::OK, "{name}: {}", login.text);
        assert_eq!(
            o.call(Method::GET, "/v1/balances", Some(&frank_token), None).await.status,
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(o.available(&frank).await, "5", "{name}");
        assert!(o.notice_kinds(&frank).await.contains(&"account_restored".to_string()), "{name}");
        // The restore is in the operators' event log.
        let events = o.call(Method::GET, "/v1/ops/events", Some(&o.token("li1")), None).await;
        assert!(events.text.contains(&id), "{name}: {}", events.text);
        // An active customer cannot be "restored".
        let again = o.restore_request(&frank).await;
        assert_eq!(again.status, StatusCode::UNPROCESSABLE_ENTITY, "{name}: {}", again.text);
        assert_eq!(fields(&again), ["params.customer_id"], "{name}");
        o.verify().await;
    }
}

#[tokio::test]
async fn u6_restore_after_the_window_refused_and_the_account_stays_deleted() {
    for ts in test_stores().await {
        let name = ts.name;
        let o = Ops::staffed(ts).await;
        let now = now_ms();

        // Deleted 31 days ago: the window ended yesterday. Refused at request time, naming the field.
        let (hank, _) = o.customer("hank@example.com").await;
        o.delete_at(&hank, "hank@example.com", now - 31 * DAY_MS, now - DAY_MS).await;
        let late = o.restore_request(&hank).await;
        assert_eq!(late.status, StatusCode::UNPROCESSABLE_ENTITY, "{name}: {}", late.text);
        assert_eq!(fields(&late), ["params.customer_id"], "{name}");
        assert!(late.text.contains("window ended"), "{name}: {}", late.text);
        let direct =
            o.ts.store
                .restore_customer(
                    &hank,
                    "r_direct",
                    |e| NewNotice::email(None, e, "account_restored", "r_direct", "s", "b", now),
                    now,
                )
                .await;
        assert!(matches!(direct, Err(RestoreCustomerError::WindowEnded { .. })), "{name}: {direct:?}");
        assert_eq!(o.customer_login("hank@example.com", PASSWORD).await.status, StatusCode::UNAUTHORIZED, "{name}");

        // Requested inside the window, approved after it: refused at execution, recorded as failed.
        let (ivy, _) = o.customer("ivy@example.com").await;
        let ends = now_ms() + 1_500;
        o.delete_at(&ivy, "ivy@example.com", now_ms(), ends).await;
        let req = o.restore_request(&ivy).await;
        assert_eq!(req.status, StatusCode::CREATED, "{name}: {}", req.text);
        let id = req.json["id"].as_str().unwrap().to_string();
        tokio::time::sleep(std::time::Duration::from_millis(u64::try_from(ends - now_ms()).unwrap_or(0) + 50)).await;
        let approved = o.decide("om1", &id, Decision::Approve).await;
        assert_eq!(approved.status, StatusCode::CONFLICT, "{name}: {}", approved.text);
        assert_eq!(problem_type(&approved), "urn:kinko:problem:restore-refused", "{name}");
        let r = o.call(Method::GET, &format!("/v1/ops/requests/{id}"), Some(&o.token("admin1")), None).await;
        assert_eq!(r.json["state"], "failed", "{name}: {}", r.text);
        assert_eq!(o.customer_login("ivy@example.com", PASSWORD).await.status, StatusCode::UNAUTHORIZED, "{name}");
        let state = o.ts.store.customer_deletion_state(&ivy).await.unwrap().unwrap();
        assert_ne!(state.deleted_at_ms, 0, "{name}: stays soft-deleted");
        o.verify().await;
    }
}

#[tokio::test]
async fn u5_u4_deletion_by_a_customer_with_a_second_factor_needs_a_fresh_step_up() {
    for ts in test_stores().await {
        let name = ts.name;
        let o = ops(ts).await;
        let (jo, enrol_token) = o.customer("jo@example.com").await;
        let r = o.call(Method::POST, "/v1/mfa/totp", Some(&enrol_token), Some(json!({"password": PASSWORD}))).await;
        assert_eq!(r.status, StatusCode::CREATED, "{name}: {}", r.text);
        let totp = totp_rs::Totp::from_url(r.json["otpauth_uri"].as_str().unwrap()).unwrap();
        let enrolment_id = r.json["enrolment_id"].as_str().unwrap().to_string();
        let code = totp.generate(now_secs()).to_string();
        let r = o
            .call(
                Method::POST,
                "/v1/mfa/totp/confirm",
                Some(&enrol_token),
                Some(json!({"enrolment_id": enrolment_id, "code": code})),
            )
            .await;
        assert_eq!(r.status, StatusCode::OK, "{name}: {}", r.text);
        // A new session that has not stepped up: the password alone is not enough.
        let login = o.customer_login("jo@example.com", PASSWORD).await;
        assert_eq!(login.status, StatusCode::OK, "{name}: {}", login.text);
        let token = login.json["token"].as_str().unwrap().to_string();
        let refused = o.delete_account(&token, PASSWORD).await;
        assert_eq!(refused.status, StatusCode::FORBIDDEN, "{name}: {}", refused.text);
        assert_eq!(problem_type(&refused), "urn:kinko:problem:step-up-required", "{name}");
        // The next time step's code (each code is accepted once) steps this session up.
        let code = totp.generate(now_secs() + 30).to_string();
        let up = o
            .call(Method::POST, "/v1/sessions/step-up", Some(&token), Some(json!({"method": "totp", "code": code})))
            .await;
        assert_eq!(up.status, StatusCode::OK, "{name}: {}", up.text);
        // Stepped up, the password is still checked.
        let wrong = o.delete_account(&token, "not the password!").await;
        assert_eq!(wrong.status, StatusCode::FORBIDDEN, "{name}: {}", wrong.text);
        assert_eq!(fields(&wrong), ["password"], "{name}");
        let deleted = o.delete_account(&token, PASSWORD).await;
        assert_eq!(deleted.status, StatusCode::OK, "{name}: {}", deleted.text);
        assert_eq!(o.customer_login("jo@example.com", PASSWORD).await.status, StatusCode::UNAUTHORIZED, "{name}");
        let state = o.ts.store.customer_deletion_state(&jo).await.unwrap().unwrap();
        assert_ne!(state.deleted_at_ms, 0, "{name}");
    }
}
