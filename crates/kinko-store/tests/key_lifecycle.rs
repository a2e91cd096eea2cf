//! Persisted key lifecycles on every backend (K2, K3, K5, K7, K10): every pair of states through the
//! store (allowed moves change the state and are recorded with who and why, all others change nothing),
//! the compare-and-set, the signature count since activation, the signer's key gate with routine
//! suspension, and destruction (refused while the address matters, irreversible when done).

use kinko_core::key_lifecycle::{Attribution, BusinessHours, KeyGate, KeyState, Lifecycle, SeedState};
use kinko_core::ledger::postings;
use kinko_core::{Amount, AssetCode};
use kinko_store::key_lifecycle::{MASTER_SEED_PURPOSE, RoutinePolicy, SUBJECT_KEY, StoreKeyGate};
use kinko_store::signer_records::KeyRecord;
use kinko_store::testing::test_stores;
use kinko_store::{Store, StoreError};

const ADDR: &str = "0x00000000000000000000000000000000000000aa";
const BLOB: &str = "01deadbeefcafebabe0011223344556677";

fn why() -> Attribution {
    Attribution::new("op-alice", "quarterly review").unwrap()
}

async fn put_key(store: &Store, id: &str, purpose: &str, state: &str) {
    let inserted = store
        .insert_key(&KeyRecord {
            id: id.into(),
            purpose: purpose.into(),
            chain: "eth".into(),
            address: if purpose == MASTER_SEED_PURPOSE { String::new() } else { ADDR.into() },
            wrapped_hex: BLOB.into(),
            state: state.into(),
            created_at_ms: 1,
        })
        .await
        .unwrap();
    assert!(inserted);
}

async fn log_signature(store: &Store, key_id: &str, at_ms: i64) {
    sqlx::query(
        "INSERT INTO key_access_log (id, at_ms, key_id, operation, payload_sha256, intent_hash, actor, terminal) \
         VALUES ($1, $2, $3, 'sign', '00', '00', 'test', 'test')",
    )
    .bind(uuid_like(key_id, at_ms))
    .bind(at_ms)
    .bind(key_id)
    .execute(store.pool())
    .await
    .unwrap();
}

fn uuid_like(key_id: &str, at_ms: i64) -> String {
    format!("{key_id}-{at_ms}-{}", rand_suffix())
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

/// Runs one move through the store, destruction included (it has its own entry point).
async fn store_move(store: &Store, id: &str, to: &str) -> Result<(), StoreError> {
    if to == "destroyed" {
        store.destroy_key(id, 0, &why(), 10).await.map(|_| ())
    } else {
        store.transition_key(id, None, to, &why(), 10).await.map(|_| ())
    }
}

async fn every_pair_through_store<L: Lifecycle>(store: &Store, purpose: &str, prefix: &str) {
    for &from in L::ALL {
        for &to in L::ALL {
            let id = format!("{prefix}-{}-{}", from.as_str(), to.as_str());
            put_key(store, &id, purpose, from.as_str()).await;
            let r = store_move(store, &id, to.as_str()).await;
            let after = store.key(&id).await.unwrap().unwrap();
            let records = store.key_transitions(SUBJECT_KEY, &id).await.unwrap();
            if from.allowed(to) {
                r.unwrap_or_else(|e| panic!("{} {from:?} -> {to:?} must succeed: {e}", L::KIND));
                assert_eq!(after.state, to.as_str());
                assert_eq!(records.len(), 1, "{from:?} -> {to:?} recorded once");
                assert_eq!((records[0].from.as_str(), records[0].to.as_str()), (from.as_str(), to.as_str()));
                assert_eq!((records[0].actor.as_str(), records[0].reason.as_str()), ("op-alice", "quarterly review"));
            } else {
                assert!(
                    matches!(r, Err(StoreError::Conflict(_))),
                    "{} {from:?} -> {to:?} must be refused: {r:?}",
                    L::KIND
                );
                assert_eq!(after.state, from.as_str(), "a refused move changes nothing");
                assert_eq!(after.wrapped_hex, BLOB);
                assert!(records.is_empty());
            }
        }
    }
}

#[tokio::test]
async fn k2_every_pair_of_signing_key_states_through_the_store() {
    for ts in test_stores().await {
        every_pair_through_store::<KeyState>(&ts.store, "hot_wallet", "k").await;
    }
}

#[tokio::test]
async fn k5_every_pair_of_master_seed_states_through_the_store() {
    for ts in test_stores().await {
        every_pair_through_store::<SeedState>(&ts.store, MASTER_SEED_PURPOSE, "s").await;
    }
}

#[tokio::test]
async fn k2_compare_and_set_and_attribution_required() {
    for ts in test_stores().await {
        let s = &ts.store;
        put_key(s, "hot", "hot_wallet", "deactivated_standby").await;
        let e = s.transition_key("hot", Some("active"), "suspended_emergency", &why(), 5).await.unwrap_err();
        assert!(matches!(e, StoreError::Conflict(_)), "{e}");
        let anonymous = Attribution { actor: "".into(), reason: "x".into() };
        assert!(s.transition_key("hot", None, "active", &anonymous, 5).await.is_err());
        assert!(matches!(s.transition_key("nope", None, "active", &why(), 5).await, Err(StoreError::NotFound)));
        s.transition_key("hot", Some("deactivated_standby"), "active", &why(), 5).await.unwrap();
        assert_eq!(s.key("hot").await.unwrap().unwrap().state, "active");
        // A plain transition cannot destroy: destruction erases the blob and checks funds first.
        put_key(s, "st", "hot_wallet", "deactivated_storage").await;
        assert!(s.transition_key("st", None, "destroyed", &why(), 5).await.is_err());
        assert_eq!(s.key("st").await.unwrap().unwrap().wrapped_hex, BLOB);
    }
}

#[tokio::test]
async fn k3_signatures_since_activation_and_gate_suspends_routinely() {
    for ts in test_stores().await {
        let s = &ts.store;
        put_key(s, "hot", "hot_wallet", "active").await;
        // Made active by init (no recorded activation): every signature counts.
        for at in [100, 200, 300] {
            log_signature(s, "hot", at).await;
        }
        assert_eq!(s.signatures_since_activation("hot").await.unwrap(), 3);
        s.transition_key("hot", None, "deactivated_standby", &why(), 400).await.unwrap();
        s.transition_key("hot", None, "active", &why(), 500).await.unwrap();
        assert_eq!(s.signatures_since_activation("hot").await.unwrap(), 0);
        log_signature(s, "hot", 600).await;
        assert_eq!(s.signatures_since_activation("hot").await.unwrap(), 1);

        let gate = StoreKeyGate::new(s.clone(), RoutinePolicy { signatures_max: Some(2), business_hours: None });
        gate.may_sign("hot", 700).await.unwrap();
        log_signature(s, "hot", 800).await;
        let refusal = gate.may_sign("hot", 900).await.unwrap_err();
        assert!(refusal.contains("suspended"), "{refusal}");
        assert_eq!(s.key("hot").await.unwrap().unwrap().state, "suspended_routine");
        let last = s.key_transitions(SUBJECT_KEY, "hot").await.unwrap().pop().unwrap();
        assert_eq!((last.from.as_str(), last.to.as_str()), ("active", "suspended_routine"));
        assert_eq!(last.actor, StoreKeyGate::ACTOR);
        assert!(last.reason.contains("limit of 2"), "{}", last.reason);
        // Suspended: refused without another transition.
        assert!(gate.may_sign("hot", 1000).await.unwrap_err().contains("only active"));
        assert!(gate.may_sign("unknown", 1000).await.is_err());

        // Outside business hours (Mon-Fri 09-17 UTC; 2024-01-06 is a Saturday).
        put_key(s, "hot2", "hot_wallet", "active").await;
        let hours = BusinessHours::new(9, 17, BusinessHours::WEEKDAYS).unwrap();
        let gate = StoreKeyGate::new(s.clone(), RoutinePolicy { signatures_max: None, business_hours: Some(hours) });
        let monday_10h = 1_704_067_200_000 + 10 * 3_600_000;
        gate.may_sign("hot2", monday_10h).await.unwrap();
        let saturday_10h = monday_10h + 5 * 86_400_000;
        assert!(gate.may_sign("hot2", saturday_10h).await.unwrap_err().contains("business hours"));
        assert_eq!(s.key("hot2").await.unwrap().unwrap().state, "suspended_routine");
        // The master seed never signs transactions.
        put_key(s, "seed", MASTER_SEED_PURPOSE, "active").await;
        assert!(gate.may_sign("seed", monday_10h).await.is_err());
    }
}

#[tokio::test]
async fn k7_destruction_refused_while_the_address_holds_or_recently_received_funds() {
    let eth: AssetCode = "ETH".parse().unwrap();
    for ts in test_stores().await {
        let s = &ts.store;
        put_key(s, "old", "hot_wallet", "deactivated_storage").await;
        // Funds recorded on the address's wallet account, posted at t = 1000.
        s.post(postings::custodian_funding("fund".into(), ADDR, &eth, Amount::from_base_units(5)), 1_000)
            .await
            .unwrap();
        let e = s.destroy_key("old", 0, &why(), 2_000).await.unwrap_err().to_string();
        assert!(e.contains("holds funds") && e.contains("K7"), "{e}");
        let key = s.key("old").await.unwrap().unwrap();
        assert_eq!((key.state.as_str(), key.wrapped_hex.as_str()), ("deactivated_storage", BLOB));

        // A key whose address only *received* within the retention period: balance zero, still refused.
        const OTHER: &str = "0x00000000000000000000000000000000000000bb";
        s.insert_key(&KeyRecord {
            id: "old2".into(),
            purpose: "hot_wallet".into(),
            chain: "eth".into(),
            address: OTHER.into(),
            wrapped_hex: BLOB.into(),
            state: "deactivated_storage".into(),
            created_at_ms: 1,
        })
        .await
        .unwrap();
        let amount = Amount::from_base_units(7);
        // Seen and then dropped by a re-org: the wallet account is back to zero, but it did receive.
        s.post(postings::deposit_detected("d1", "cust-1", OTHER, &eth, amount), 5_000).await.unwrap();
        s.post(postings::deposit_dropped("d1", "cust-1", OTHER, &eth, amount), 5_001).await.unwrap();
        let blockers = s.destruction_blockers("old2", 4_000).await.unwrap();
        assert!(blockers.iter().all(|b| !b.contains("holds funds")), "{blockers:?}");
        assert!(blockers.iter().any(|b| b.contains("retention period")), "{blockers:?}");
        assert!(s.destroy_key("old2", 4_000, &why(), 6_000).await.is_err());
        // Past the retention period it may go.
        assert!(s.destruction_blockers("old2", 5_002).await.unwrap().is_empty());
        s.destroy_key("old2", 5_002, &why(), 6_000).await.unwrap();
        let key = s.key("old2").await.unwrap().unwrap();
        assert_eq!((key.state.as_str(), key.wrapped_hex.as_str()), ("destroyed", ""));
    }
}

#[tokio::test]
async fn k10_destroyed_keys_are_erased_and_never_come_back() {
    for ts in test_stores().await {
        let s = &ts.store;
        put_key(s, "gone", "hot_wallet", "suspended_emergency").await;
        s.destroy_key("gone", 0, &why(), 10).await.unwrap();
        let key = s.key("gone").await.unwrap().unwrap();
        assert_eq!(key.state, "destroyed");
        assert_eq!(key.wrapped_hex, "", "the wrapped blob is gone");
        for to in KeyState::ALL {
            assert!(store_move(s, "gone", to.as_str()).await.is_err(), "destroyed -> {to:?}");
        }
        assert_eq!(s.key_transitions(SUBJECT_KEY, "gone").await.unwrap().len(), 1);
        // An active key cannot be destroyed directly (Fig 5-2: suspend or store it first).
        put_key(s, "live", "hot_wallet", "active").await;
        assert!(s.destroy_key("live", 0, &why(), 10).await.is_err());
        assert_eq!(s.key("live").await.unwrap().unwrap().wrapped_hex, BLOB);
    }
}
