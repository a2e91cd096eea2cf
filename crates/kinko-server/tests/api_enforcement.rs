//! What moving money out of a customer's account requires, through the HTTP API in process, on SQLite and —
//! when `KINKO_TEST_POSTGRES_URL` is set — PostgreSQL. Requirement IDs: U2, U3 (an enrolled possession
//! factor: a stolen password alone moves nothing), U4 (changes and withdrawals need a fresh step-up: a stolen
//! session moves nothing and changes nothing), U9 (a transaction password separate from the login password,
//! failures counted and locking), U13 (withdrawals only to saved destinations past their cooling-off), M7
//! (internal transfers need exactly what withdrawals need).
//!
//! Every refusal is checked to leave the ledger, the withdrawals and the transfers as they were.

mod support;

use std::collections::BTreeMap;

use axum::Router;
use axum::http::{Method, StatusCode};
use kinko_core::ledger::{AccountRef, Balance};
use kinko_server::AppState;
use kinko_store::customer_mfa::TRANSACTION_PASSWORD_FAILURES_FREE;
use kinko_store::testing::test_stores;
use serde_json::{Value, json};
use support::customer::{
    self, Customer, PASSWORD, Reply, TRANSACTION_PASSWORD, app_with, fund, raw_call, register, save_destination,
};

/// anvil account 1.
const DEST: &str = "0x70997970c51812dc3a010c7d01b50e0d17dc79c8";
/// anvil account 3, never saved.
const UNSAVED: &str = "0x90f79bf6eb2c4f870365e785982e1f101e93b906";
const UNSAVED_CHECKSUMMED: &str = "0x90F79bf6EB2c4f870365E785982E1f101E93b906";
const HOUR_MS: u64 = 3_600_000;

type Snapshot = (BTreeMap<AccountRef, Balance>, usize, i64, i64);

async fn snapshot(state: &AppState) -> Snapshot {
    let store = &state.store;
    let count = |table: &'static str| async move {
        let n: i64 = kinko_store::sqlx::query_scalar(kinko_store::sql(format!("SELECT COUNT(*) FROM {table}")))
            .fetch_one(store.pool())
            .await
            .unwrap();
        n
    };
    (
        store.all_balances().await.unwrap(),
        store.journal_page(1, 100_000).await.unwrap().len(),
        count("withdrawals").await,
        count("internal_transfers").await,
    )
}

fn withdrawal(destination: &str, transaction_password: Option<&str>) -> Value {
    let mut b = json!({"asset": "ETH", "amount": "100", "destination": destination});
    if let Some(p) = transaction_password {
        b["transaction_password"] = json!(p);
    }
    b
}

fn transfer(to_email: &str, transaction_password: Option<&str>) -> Value {
    let mut b = json!({"to_email": to_email, "asset": "ETH", "amount": "100"});
    if let Some(p) = transaction_password {
        b["transaction_password"] = json!(p);
    }
    b
}

async fn withdraw(app: &Router, token: &str, key: &str, body: Value) -> Reply {
    raw_call(app, Method::POST, "/v1/withdrawals", Some(token), Some(key), Some(body)).await
}

async fn send(app: &Router, token: &str, key: &str, body: Value) -> Reply {
    raw_call(app, Method::POST, "/v1/internal-transfers", Some(token), Some(key), Some(body)).await
}

fn assert_refused(r: &Reply, status: StatusCode, slug: &str, what: &str) {
    assert_eq!(r.status, status, "{what}: {}", r.text);
    assert_eq!(r.slug(), slug, "{what}: {}", r.text);
    assert_eq!(r.headers.get("content-type").and_then(|v| v.to_str().ok()), Some("application/problem+json"), "{what}");
}

/// Ends the step-up window of the session behind `token` (as if 5 minutes had passed).
async fn expire_step_up(state: &AppState, token: &str) {
    use sha2::Digest;
    let hash = hex::encode(sha2::Sha256::digest(token.as_bytes()));
    state.store.set_session_stepped_up_until(&hash, 1, kinko_server::clock::now_ms()).await.unwrap();
}

/// U2, U3: a stolen login password alone moves nothing. A customer without a second factor is refused
/// (`mfa-required`) even with the right transaction password... which they cannot have set (that needs a
/// step-up); a thief logging in with the password of a customer who has TOTP gets a session that is refused
/// (`step-up-required`) and cannot step up by guessing codes. Nothing is held, withdrawn or transferred.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn u2_stolen_password_alone_cannot_withdraw_or_transfer() {
    for ts in test_stores().await {
        let name = ts.name;
        let (app, state) = app_with(&ts.store, |_| {});
        let _bob = Customer::new(&app, "bob@example.com").await;

        // No factor enrolled: the password is all there is.
        let (plain, plain_token) = register(&app, "plain@example.com").await;
        fund(&ts.store, &plain, "d0", 1_000).await;
        let before = snapshot(&state).await;
        let r = withdraw(&app, &plain_token, "p1", withdrawal(DEST, Some(TRANSACTION_PASSWORD))).await;
        assert_refused(&r, StatusCode::FORBIDDEN, "mfa-required", &format!("{name}: withdrawal without a factor"));
        let r = send(&app, &plain_token, "p2", transfer("bob@example.com", Some(TRANSACTION_PASSWORD))).await;
        assert_refused(&r, StatusCode::FORBIDDEN, "mfa-required", &format!("{name}: transfer without a factor"));
        // Nor can such a session set a transaction password or save a destination (both need a step-up).
        let r = raw_call(
            &app,
            Method::PUT,
            "/v1/transaction-password",
            Some(&plain_token),
            None,
            Some(json!({"password": TRANSACTION_PASSWORD})),
        )
        .await;
        assert_refused(&r, StatusCode::FORBIDDEN, "step-up-required", &format!("{name}: set transaction password"));
        assert_eq!(snapshot(&state).await, before, "{name}: nothing moved");

        // A protected customer; the thief has only the login password.
        let alice = Customer::new(&app, "alice@example.com").await;
        alice.save_destination(&app, "ETH", DEST).await;
        fund(&ts.store, &alice.id, "d1", 1_000).await;
        let thief = customer::login(&app, "alice@example.com").await;
        let before = snapshot(&state).await;
        for (i, pw) in [None, Some(TRANSACTION_PASSWORD), Some("a guess at the password")].into_iter().enumerate() {
            let r = withdraw(&app, &thief, &format!("t{i}"), withdrawal(DEST, pw)).await;
            assert_refused(&r, StatusCode::FORBIDDEN, "step-up-required", &format!("{name}: thief withdraws ({i})"));
            let r = send(&app, &thief, &format!("s{i}"), transfer("bob@example.com", pw)).await;
            assert_refused(&r, StatusCode::FORBIDDEN, "step-up-required", &format!("{name}: thief transfers ({i})"));
        }
        let r = raw_call(
            &app,
            Method::POST,
            "/v1/sessions/step-up",
            Some(&thief),
            None,
            Some(json!({"method": "totp", "code": "123456"})),
        )
        .await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{name}: a guessed code does not step up: {}", r.text);
        let r = withdraw(&app, &thief, "t9", withdrawal(DEST, Some(TRANSACTION_PASSWORD))).await;
        assert_refused(&r, StatusCode::FORBIDDEN, "step-up-required", &format!("{name}: after the guess"));
        assert_eq!(snapshot(&state).await, before, "{name}: nothing held, withdrawn or transferred");
        // The attempts did not count against the transaction password: the session was refused first.
        let row = ts.store.transaction_password(&alice.id).await.unwrap().unwrap();
        assert_eq!(row.failed_attempts, 0, "{name}");
    }
}

/// U4: a stolen session whose step-up is not fresh can neither change the address book (add, remove, bind a
/// wallet), the transaction password or the second factor, nor withdraw or transfer, even with the right
/// transaction password. After a fresh step-up the same session can.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn u4_stolen_session_cannot_change_the_address_book_or_withdraw_without_step_up() {
    for ts in test_stores().await {
        let name = ts.name;
        let (app, state) = app_with(&ts.store, |_| {});
        let _bob = Customer::new(&app, "bob@example.com").await;
        let mut alice = Customer::new(&app, "alice@example.com").await;
        alice.save_destination(&app, "ETH", DEST).await;
        fund(&ts.store, &alice.id, "d1", 1_000).await;
        let entry = raw_call(&app, Method::GET, "/v1/address-book", Some(&alice.token), None, None).await;
        let entry_id = entry.json[0]["id"].as_str().unwrap().to_string();
        // The session is stolen after its step-up ran out.
        expire_step_up(&state, &alice.token).await;
        let stolen = alice.token.clone();
        let before = snapshot(&state).await;

        let changes: Vec<(Method, String, Option<Value>)> = vec![
            (
                Method::POST,
                "/v1/address-book".into(),
                Some(json!({"label": "thief", "asset": "ETH", "address": UNSAVED})),
            ),
            (Method::DELETE, format!("/v1/address-book/{entry_id}"), None),
            (
                Method::POST,
                "/v1/wallet-bindings".into(),
                Some(json!({"address": UNSAVED, "challenge_id": "wbc_x", "signature": "0x00"})),
            ),
            (Method::PUT, "/v1/transaction-password".into(), Some(json!({"password": "the thief's own password"}))),
            (Method::DELETE, "/v1/mfa/totp".into(), None),
            (Method::POST, "/v1/mfa/totp".into(), Some(json!({"password": PASSWORD}))),
        ];
        for (method, path, body) in changes {
            let what = format!("{name}: {method} {path}");
            let r = raw_call(&app, method, &path, Some(&stolen), None, body).await;
            assert_refused(&r, StatusCode::FORBIDDEN, "step-up-required", &what);
        }
        let r = withdraw(&app, &stolen, "w1", withdrawal(DEST, Some(TRANSACTION_PASSWORD))).await;
        assert_refused(&r, StatusCode::FORBIDDEN, "step-up-required", &format!("{name}: withdraw"));
        let r = send(&app, &stolen, "s1", transfer("bob@example.com", Some(TRANSACTION_PASSWORD))).await;
        assert_refused(&r, StatusCode::FORBIDDEN, "step-up-required", &format!("{name}: transfer"));
        assert_eq!(snapshot(&state).await, before, "{name}: nothing moved");
        let book = raw_call(&app, Method::GET, "/v1/address-book", Some(&stolen), None, None).await;
        assert_eq!(book.json.as_array().unwrap().len(), 1, "{name}: the address book is unchanged: {}", book.text);
        assert!(ts.store.transaction_password(&alice.id).await.unwrap().is_some(), "{name}");

        // The customer steps up again (a second factor they hold): the same session withdraws.
        alice.step_up(&app).await;
        let r = withdraw(&app, &alice.token, "w2", withdrawal(DEST, Some(TRANSACTION_PASSWORD))).await;
        assert_eq!(r.status, StatusCode::ACCEPTED, "{name}: after a fresh step-up: {}", r.text);
    }
}

/// U9: the transaction password is required (missing: `transaction-password-required`, naming the field),
/// must be the transaction password (the login password is refused), wrong ones are counted, and after
/// `TRANSACTION_PASSWORD_FAILURES_FREE` failures it locks: then even the right one is refused. Nothing moves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn u9_wrong_transaction_password_refused_and_counted() {
    for ts in test_stores().await {
        let name = ts.name;
        let (app, state) = app_with(&ts.store, |_| {});
        let _bob = Customer::new(&app, "bob@example.com").await;
        let alice = Customer::new(&app, "alice@example.com").await;
        alice.save_destination(&app, "ETH", DEST).await;
        fund(&ts.store, &alice.id, "d1", 1_000).await;
        let before = snapshot(&state).await;

        let r = withdraw(&app, &alice.token, "w0", withdrawal(DEST, None)).await;
        assert_refused(&r, StatusCode::FORBIDDEN, "transaction-password-required", &format!("{name}: missing"));
        assert_eq!(r.fields(), ["transaction_password"], "{name}");
        let r = send(&app, &alice.token, "s0", transfer("bob@example.com", None)).await;
        assert_refused(
            &r,
            StatusCode::FORBIDDEN,
            "transaction-password-required",
            &format!("{name}: missing (transfer)"),
        );
        let (store, alice_id) = (&ts.store, &alice.id);
        let failed =
            |n: i64| async move { store.transaction_password(alice_id).await.unwrap().unwrap().failed_attempts == n };
        assert!(failed(0).await, "{name}: a missing password is not a wrong one");

        // The login password is not the transaction password.
        let r = withdraw(&app, &alice.token, "w1", withdrawal(DEST, Some(PASSWORD))).await;
        assert_refused(&r, StatusCode::FORBIDDEN, "transaction-password-wrong", &format!("{name}: login password"));
        assert_eq!(r.fields(), ["transaction_password"], "{name}");
        assert!(!r.text.contains(PASSWORD), "{name}: the password is not echoed");
        assert!(failed(1).await, "{name}: counted");
        let r = send(&app, &alice.token, "s1", transfer("bob@example.com", Some("wrong transaction pw"))).await;
        assert_refused(&r, StatusCode::FORBIDDEN, "transaction-password-wrong", &format!("{name}: wrong (transfer)"));
        assert!(failed(2).await, "{name}: transfers count too");
        for i in 3..=TRANSACTION_PASSWORD_FAILURES_FREE {
            let r =
                withdraw(&app, &alice.token, &format!("w{i}"), withdrawal(DEST, Some("wrong transaction pw"))).await;
            assert_refused(&r, StatusCode::FORBIDDEN, "transaction-password-wrong", &format!("{name}: wrong {i}"));
        }
        // The failure past the free ones locks.
        let r = withdraw(&app, &alice.token, "w-lock", withdrawal(DEST, Some("wrong transaction pw"))).await;
        assert_refused(&r, StatusCode::FORBIDDEN, "transaction-password-locked", &format!("{name}: locks"));
        let r = withdraw(&app, &alice.token, "w-right", withdrawal(DEST, Some(TRANSACTION_PASSWORD))).await;
        assert_refused(&r, StatusCode::FORBIDDEN, "transaction-password-locked", &format!("{name}: right but locked"));
        let r = send(&app, &alice.token, "s-right", transfer("bob@example.com", Some(TRANSACTION_PASSWORD))).await;
        assert_refused(&r, StatusCode::FORBIDDEN, "transaction-password-locked", &format!("{name}: locked (transfer)"));
        assert_eq!(snapshot(&state).await, before, "{name}: nothing moved");
    }
}

/// U13: withdrawals go only to saved destinations past their cooling-off. An unsaved destination is
/// refused (`destination-not-saved`), a freshly saved one too until its cooling-off ends
/// (`destination-cooling-off`, saying when), each a 422 naming `destination` with nothing held; once the
/// cooling-off is over the same request is accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn u13_withdrawal_to_an_unsaved_or_cooling_off_destination_refused() {
    for ts in test_stores().await {
        let name = ts.name;
        let (app, state) = app_with(&ts.store, |c| c.address_book.cooling_off_ms = HOUR_MS);
        let alice = Customer::new(&app, "alice@example.com").await;
        fund(&ts.store, &alice.id, "d1", 1_000).await;
        let before = snapshot(&state).await;

        let r = withdraw(&app, &alice.token, "w1", withdrawal(UNSAVED, Some(TRANSACTION_PASSWORD))).await;
        assert_refused(&r, StatusCode::UNPROCESSABLE_ENTITY, "destination-not-saved", &format!("{name}: unsaved"));
        assert_eq!(r.fields(), ["destination"], "{name}");
        // Saved (in its EIP-55 spelling: any spelling is the same address), but cooling off.
        save_destination(&app, &alice.token, "ETH", UNSAVED_CHECKSUMMED).await;
        let r = withdraw(&app, &alice.token, "w2", withdrawal(UNSAVED, Some(TRANSACTION_PASSWORD))).await;
        assert_refused(
            &r,
            StatusCode::UNPROCESSABLE_ENTITY,
            "destination-cooling-off",
            &format!("{name}: cooling off"),
        );
        assert_eq!(r.fields(), ["destination"], "{name}");
        assert!(r.json["errors"][0]["reason"].as_str().unwrap().contains("usable from"), "{name}: {}", r.text);
        assert_eq!(snapshot(&state).await, before, "{name}: nothing held");

        // The cooling-off ends.
        kinko_store::sqlx::query("UPDATE address_book SET usable_at_ms = $1 WHERE customer_id = $2")
            .bind(kinko_server::clock::now_ms() - 1)
            .bind(&alice.id)
            .execute(ts.store.pool())
            .await
            .unwrap();
        let r = withdraw(&app, &alice.token, "w3", withdrawal(UNSAVED, Some(TRANSACTION_PASSWORD))).await;
        assert_eq!(r.status, StatusCode::ACCEPTED, "{name}: after the cooling-off: {}", r.text);
    }
}

/// U2, U4, U9, U13, M7: with everything right — an enrolled factor, a fresh step-up, the transaction
/// password, a saved destination — the withdrawal is accepted and the hold taken, and the transfer moves
/// the balance. A second factor removed after the step-up stops both again (`mfa-required`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn u2_u4_u9_u13_with_everything_right_withdrawal_and_transfer_accepted() {
    for ts in test_stores().await {
        let name = ts.name;
        let (app, state) = app_with(&ts.store, |_| {});
        let bob = Customer::new(&app, "bob@example.com").await;
        let alice = Customer::new(&app, "alice@example.com").await;
        alice.save_destination(&app, "ETH", DEST).await;
        fund(&ts.store, &alice.id, "d1", 1_000).await;

        let r = customer::call(
            &app,
            &ts.store,
            Method::POST,
            "/v1/withdrawals",
            Some(&alice.token),
            Some("w1"),
            Some(withdrawal(DEST, Some(TRANSACTION_PASSWORD))),
        )
        .await;
        assert_eq!(r.status, StatusCode::ACCEPTED, "{name}: {}", r.text);
        assert!(!r.text.contains(TRANSACTION_PASSWORD), "{name}: not echoed");
        let r = send(&app, &alice.token, "s1", transfer("bob@example.com", Some(TRANSACTION_PASSWORD))).await;
        assert_eq!(r.status, StatusCode::CREATED, "{name}: {}", r.text);
        let balances = raw_call(&app, Method::GET, "/v1/balances", Some(&alice.token), None, None).await;
        assert_eq!(balances.json[0]["available"], "800", "{name}: {}", balances.text);
        assert_eq!(balances.json[0]["held"], "100", "{name}");
        let balances = raw_call(&app, Method::GET, "/v1/balances", Some(&bob.token), None, None).await;
        assert_eq!(balances.json[0]["available"], "100", "{name}: {}", balances.text);
        ts.store.verify_ledger(|_| {}).await.unwrap();

        // The factor goes (a change, on the stepped-up session); the session still looks stepped up.
        let r = raw_call(&app, Method::DELETE, "/v1/mfa/totp", Some(&alice.token), None, None).await;
        assert_eq!(r.status, StatusCode::NO_CONTENT, "{name}: {}", r.text);
        let before = snapshot(&state).await;
        let r = withdraw(&app, &alice.token, "w2", withdrawal(DEST, Some(TRANSACTION_PASSWORD))).await;
        assert_refused(&r, StatusCode::FORBIDDEN, "mfa-required", &format!("{name}: factor removed"));
        let r = send(&app, &alice.token, "s2", transfer("bob@example.com", Some(TRANSACTION_PASSWORD))).await;
        assert_refused(&r, StatusCode::FORBIDDEN, "mfa-required", &format!("{name}: factor removed (transfer)"));
        assert_eq!(snapshot(&state).await, before, "{name}: nothing moved");
    }
}

/// M7: an internal transfer requires exactly what a withdrawal requires. For each rung of the ladder —
/// password session without a factor, factor but no step-up, step-up but no transaction password, a wrong
/// transaction password, everything — both endpoints give the same answer (status and problem type).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn m7_transfer_requires_exactly_what_withdrawals_require() {
    for ts in test_stores().await {
        let name = ts.name;
        let (app, state) = app_with(&ts.store, |_| {});
        let _bob = Customer::new(&app, "bob@example.com").await;

        // Rung 1: a password session, no factor.
        let (plain, plain_token) = register(&app, "plain@example.com").await;
        fund(&ts.store, &plain, "d0", 1_000).await;
        // Rungs 2 to 5: a protected customer.
        let alice = Customer::new(&app, "alice@example.com").await;
        alice.save_destination(&app, "ETH", DEST).await;
        fund(&ts.store, &alice.id, "d1", 1_000).await;
        let unstepped = customer::login(&app, "alice@example.com").await;

        let rungs: Vec<(&str, &str, Option<&str>, &str)> = vec![
            ("no factor", &plain_token, Some(TRANSACTION_PASSWORD), "mfa-required"),
            ("no step-up", &unstepped, Some(TRANSACTION_PASSWORD), "step-up-required"),
            ("no transaction password", &alice.token, None, "transaction-password-required"),
            ("wrong transaction password", &alice.token, Some("wrong transaction pw"), "transaction-password-wrong"),
            ("everything", &alice.token, Some(TRANSACTION_PASSWORD), ""),
        ];
        for (i, (rung, token, pw, slug)) in rungs.into_iter().enumerate() {
            let before = snapshot(&state).await;
            let w = withdraw(&app, token, &format!("w{i}"), withdrawal(DEST, pw)).await;
            let t = send(&app, token, &format!("t{i}"), transfer("bob@example.com", pw)).await;
            assert_eq!(w.status.is_success(), t.status.is_success(), "{name}: {rung}: {} / {}", w.text, t.text);
            if slug.is_empty() {
                assert_eq!(w.status, StatusCode::ACCEPTED, "{name}: {rung}: {}", w.text);
                assert_eq!(t.status, StatusCode::CREATED, "{name}: {rung}: {}", t.text);
            } else {
                assert_refused(&w, StatusCode::FORBIDDEN, slug, &format!("{name}: {rung}: withdrawal"));
                assert_refused(&t, StatusCode::FORBIDDEN, slug, &format!("{name}: {rung}: transfer"));
                assert_eq!(w.fields(), t.fields(), "{name}: {rung}");
                assert_eq!(snapshot(&state).await, before, "{name}: {rung}");
            }
        }
    }
}
