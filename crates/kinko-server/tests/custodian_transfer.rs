//! Custodian transfers (M10, O2, K11) over the operator API in process (tower `oneshot` with the peer
//! address set as `kinko serve` sets it), on SQLite and — when `KINKO_TEST_POSTGRES_URL` is set —
//! PostgreSQL: `custodian_transfer` requests are checked field by field when opened, approved over the
//! transfer's withdrawal Intent, and executed once into one withdrawals row the pipeline pays (the chain part
//! is `crates/kinko/tests/e2e_custodian_transfer.rs`). The operator harness is `api_ops`'s.

use axum::http::{Method, StatusCode};
use kinko_core::intent::Intent;
use kinko_core::ledger::postings;
use kinko_core::operators::Decision;
use kinko_core::policy::Action;
use kinko_core::withdrawal::{CUSTODIAN_CUSTOMER_ID, CUSTODIAN_TRANSFER_REASON, WithdrawalKind, WithdrawalStatus};
use kinko_core::{Amount, AssetCode, ChainId};
use kinko_store::testing::test_stores;
use serde_json::{Value, json};

mod support;
use support::ops::*;

const HOT: &str = "0x3c44cdddb6a900fa2b585dd299e03d12fa4293bc";

const COLD: &str = "0x00000000000000000000000000000000000c01d1";
const ETH: u128 = 1_000_000_000_000_000_000;

fn eth() -> AssetCode {
    "ETH".parse().unwrap()
}

fn transfer(destination: &str, amount: u128) -> Value {
    json!({"asset": "ETH", "amount": amount.to_string(), "destination": destination})
}

fn names_field(r: &Reply, field: &str) -> bool {
    r.json["errors"].as_array().is_some_and(|errors| errors.iter().any(|e| e["field"] == field))
}

async fn execute(o: &Ops, who: &str, id: &str) -> Reply {
    o.call(Method::POST, &format!("/v1/ops/requests/{id}/execute"), Some(&o.token(who)), Some(json!({}))).await
}

/// M10, O2: a customer deposit address, an unknown address, the hot wallet itself and a malformed address
/// are refused when the request is opened, each naming params.destination; a registered cold wallet is
/// accepted, its params normalised and completed with what an approver's terminal needs, and the request's
/// intent hash is the transfer's Intent hash (what the signer verifies approvals over).
#[tokio::test]
async fn m10_custodian_transfer_destination_checked_and_subject_is_the_intent() {
    for ts in test_stores().await {
        let name = ts.name;
        let o = Ops::staffed(ts).await;
        let (customer, token) = o.customer(&format!("{name}-ct@example.com")).await;
        let r = o.call(Method::POST, "/v1/deposit-addresses", Some(&token), Some(json!({"asset": "ETH"}))).await;
        let deposit = r.json["address"].as_str().unwrap().to_string();
        o.ts.store.register_custodian_wallet(COLD, "eth", "cold", "external:cold-1", now_ms()).await.unwrap();
        assert!(
            o.ts.store.register_custodian_wallet(&deposit, "eth", "cold", "external:x", now_ms()).await.is_err(),
            "{name}: a deposit address cannot become a custodian wallet"
        );
        assert!(
            o.ts.store.register_custodian_wallet(COLD, "eth", "hot", "eth-hot-1", now_ms()).await.is_err(),
            "{name}: the hot tier is not registered here"
        );

        for (what, dest) in [
            ("a customer deposit address", deposit.as_str()),
            ("an unknown address", "0x00000000000000000000000000000000000bad00"),
            ("the hot wallet", HOT),
            ("a malformed address", "0x1234"),
        ] {
            let r = o.request("so1", "signing", "custodian_transfer", transfer(dest, ETH)).await;
            assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{name}: {what}: {}", r.text);
            assert!(names_field(&r, "params.destination"), "{name}: {what} names params.destination: {}", r.text);
        }
        let r = o.request("so1", "signing", "custodian_transfer", json!({"asset": "BTC", "amount": "0"})).await;
        assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{name}: {}", r.text);
        for field in ["params.asset", "params.amount", "params.destination"] {
            assert!(names_field(&r, field), "{name}: names {field}: {}", r.text);
        }
        // A requester cannot choose another source or reason for the intent.
        let mut other_source = transfer(COLD, ETH);
        other_source["source_wallet"] = json!(COLD);
        let r = o.request("so1", "signing", "custodian_transfer", other_source).await;
        assert!(names_field(&r, "params.source_wallet"), "{name}: {}", r.text);

        let r = o
            .request(
                "so1",
                "signing",
                "custodian_transfer",
                transfer(&COLD.to_uppercase().replacen("0X", "0x", 1), ETH),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{name}: {}", r.text);
        let id = r.json["id"].as_str().unwrap();
        let p = &r.json["params"];
        assert_eq!(p["destination"], COLD, "{name}: normalised");
        let intent = Intent {
            id: id.into(),
            asset: eth(),
            chain_id: ChainId(p["chain_id"].as_u64().unwrap()),
            amount: Amount::from_base_units(ETH),
            destination: COLD.into(),
            source_wallet: HOT.into(),
            customer_id: CUSTODIAN_CUSTOMER_ID.into(),
            reason: CUSTODIAN_TRANSFER_REASON.into(),
        };
        assert_eq!(r.json["intent_hash"], hex::encode(intent.hash()), "{name}: the subject is the Intent");
        assert_eq!(p["source_wallet"], HOT, "{name}");
        assert_eq!(p["reason"], CUSTODIAN_TRANSFER_REASON, "{name}");
        assert_eq!(r.json["required"], 1, "{name}: the dev policy's band asks one approval");
        let _ = customer;
    }
}

/// M10, O2, K8: approved by the signing manager and executed by the signing operator, the transfer becomes
/// one `approved` withdrawals row of kind custodian_transfer (id = the request id, the reserved custodian
/// row as customer, the approved intent hash), which the pipeline then signs. A hot wallet whose ledger
/// balance cannot cover amount plus the largest fee is refused naming params.amount and the request stays
/// executable; executing twice is a conflict and still one row; no customer balance moves.
#[tokio::test]
async fn m10_custodian_transfer_executes_once_into_the_pipeline() {
    for ts in test_stores().await {
        let name = ts.name;
        let o = Ops::staffed(ts).await;
        o.ts.store.register_custodian_wallet(COLD, "eth", "cold", "external:cold-1", now_ms()).await.unwrap();
        let r = o.request("so1", "signing", "custodian_transfer", transfer(COLD, 2 * ETH)).await;
        assert_eq!(r.status, StatusCode::CREATED, "{name}: {}", r.text);
        let id = r.json["id"].as_str().unwrap().to_string();
        let intent_hash = r.json["intent_hash"].as_str().unwrap().to_string();
        let early = execute(&o, "so1", &id).await;
        assert_eq!(early.status, StatusCode::CONFLICT, "{name}: not approved yet: {}", early.text);
        let r = o.decide("sm1", &id, Decision::Approve).await;
        assert_eq!(r.json["state"], "approved", "{name}: {}", r.text);

        // The hot wallet's ledger holds nothing yet: refused, nothing written, still approved.
        let poor = execute(&o, "so1", &id).await;
        assert_eq!(poor.status, StatusCode::UNPROCESSABLE_ENTITY, "{name}: {}", poor.text);
        assert!(names_field(&poor, "params.amount"), "{name}: {}", poor.text);
        assert!(o.ts.store.withdrawal(&id).await.unwrap().is_none(), "{name}: nothing written");

        o.ts.store
            .post(
                postings::custodian_funding("fund:ct".into(), HOT, &eth(), Amount::from_base_units(10 * ETH)),
                now_ms(),
            )
            .await
            .unwrap();
        let r = execute(&o, "so1", &id).await;
        assert_eq!(r.status, StatusCode::OK, "{name}: {}", r.text);
        assert_eq!(r.json["state"], "executed", "{name}");
        assert_eq!(r.json["result"]["withdrawal"], id.as_str(), "{name}: {}", r.text);
        let twice = execute(&o, "so1", &id).await;
        assert_eq!(twice.status, StatusCode::CONFLICT, "{name}: {}", twice.text);

        let w = o.ts.store.withdrawal(&id).await.unwrap().unwrap();
        assert_eq!(w.kind, WithdrawalKind::CustodianTransfer, "{name}");
        assert_eq!(w.status, WithdrawalStatus::Approved, "{name}: the pipeline takes it from here");
        assert_eq!(w.customer_id, CUSTODIAN_CUSTOMER_ID, "{name}");
        assert_eq!(w.intent_hash, intent_hash, "{name}");
        assert_eq!((w.source_wallet.as_str(), w.destination.as_str()), (HOT, COLD), "{name}");
        assert_eq!(w.amount, Amount::from_base_units(2 * ETH), "{name}");
        let n: i64 =
            kinko_store::sqlx::query_scalar("SELECT COUNT(*) FROM withdrawals WHERE kind = 'custodian_transfer'")
                .fetch_one(o.ts.store.pool())
                .await
                .unwrap();
        assert_eq!(n, 1, "{name}: one transfer");
        let approvals = o.ts.store.request_approvals(&id).await.unwrap();
        assert_eq!(approvals.len(), 1, "{name}: the pipeline hands the signer sm1's approval");
        let events = o.ts.store.ops_events_for_request(&id).await.unwrap();
        let steps: Vec<(&str, &str)> = events.iter().map(|e| (e.event.as_str(), e.operator_id.as_str())).collect();
        assert_eq!(steps, [("request_created", "so1"), ("approved", "sm1"), ("executed", "so1")], "{name}");
    }
}

/// K11, O1: the terminal allowlist applies to the operator instructing a transfer; a denying rule refuses
/// the request when it is opened, naming the terminal.
#[tokio::test]
async fn k11_custodian_transfer_terminal_allowlist_denies() {
    for ts in test_stores().await {
        let name = ts.name;
        let o = ops_with(ts, |c| {
            let mut p = kinko_server::config::dev_hot_policy();
            p.ip_allowlist = Some(kinko_core::policy::IpAllowlist {
                cidrs: vec!["10.0.0.0/8".parse().unwrap()],
                on_breach: Action::Deny,
                quorum: None,
            });
            c.policies = vec![p];
        })
        .await;
        let o = Ops::staff(o).await;
        o.ts.store.register_custodian_wallet(COLD, "eth", "cold", "external:cold-1", now_ms()).await.unwrap();
        let r = o.request("so1", "signing", "custodian_transfer", transfer(COLD, ETH)).await;
        assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{name}: {}", r.text);
        assert_eq!(r.json["type"].as_str().map(|t| t.ends_with("policy-denied")), Some(true), "{name}: {}", r.text);
        assert!(names_field(&r, "terminal"), "{name}: {}", r.text);
    }
}
