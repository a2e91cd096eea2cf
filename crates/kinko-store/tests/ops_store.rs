//! Operator accounts, the registry log copy and operator requests in the store, on SQLite and (when
//! configured) PostgreSQL. Requirement IDs: M2 (operator authentication), K8/O2 (one decision per
//! operator, compare-and-set state changes), K12 (events in the same transaction), O4 (append-only log).

use kinko_store::StoreError;
use kinko_store::operators::{
    LOCKOUT_BASE_MS, LOCKOUT_MAX_MS, LOGIN_FAILURES_FREE, OperatorSessionRow, RegistryLogRow, lockout_ms,
};
use kinko_store::ops_requests::{
    NewOpsEvent, NewOpsRequest, OpsApprovalRow, STATE_APPROVED, STATE_EXECUTED, STATE_REQUESTED, finish_ops_request_tx,
    insert_ops_approval_tx, insert_ops_request_tx, set_ops_request_state_tx,
};
use kinko_store::testing::test_stores;

const NOW_MS: i64 = 1_700_000_000_000;

fn event(name: &str, request_id: Option<&str>) -> NewOpsEvent {
    NewOpsEvent {
        operator_id: "op1".into(),
        terminal: "192.0.2.1".into(),
        event: name.into(),
        request_id: request_id.map(String::from),
        detail_json: "{}".into(),
        at_ms: NOW_MS,
    }
}

fn request(id: &str, required: i64) -> NewOpsRequest {
    NewOpsRequest {
        id: id.into(),
        process: "signing".into(),
        kind: "customer_withdrawal".into(),
        params_json: "{}".into(),
        intent_hash: "00".repeat(32),
        requester: "c_1".into(),
        requester_terminal: "192.0.2.9".into(),
        required,
        reasons_json: "[\"amount_over_auto\"]".into(),
        now_ms: NOW_MS,
    }
}

#[test]
fn m2_lockout_backs_off_exponentially_and_is_capped() {
    assert_eq!(lockout_ms(LOGIN_FAILURES_FREE - 1), 0);
    assert_eq!(lockout_ms(LOGIN_FAILURES_FREE), LOCKOUT_BASE_MS);
    assert_eq!(lockout_ms(LOGIN_FAILURES_FREE + 1), 2 * LOCKOUT_BASE_MS);
    assert_eq!(lockout_ms(i64::MAX), LOCKOUT_MAX_MS);
}

#[tokio::test]
async fn m2_enrolment_token_single_use_sessions_and_totp_steps() {
    for ts in test_stores().await {
        let (name, store) = (ts.name, &ts.store);
        store.create_operator_account("op1", "hash-1", NOW_MS + 1000, NOW_MS).await.unwrap();
        assert!(matches!(
            store.create_operator_account("op1", "h", NOW_MS, NOW_MS).await,
            Err(StoreError::Conflict(_))
        ));
        let e = event("enrolled", None);
        // Expired, wrong token: NotFound; the right one once.
        assert!(matches!(
            store.enrol_operator("op1", "hash-1", "phc", "SECRET", &e, NOW_MS + 1000).await,
            Err(StoreError::NotFound)
        ));
        assert!(matches!(
            store.enrol_operator("op1", "hash-x", "phc", "SECRET", &e, NOW_MS).await,
            Err(StoreError::NotFound)
        ));
        store.enrol_operator("op1", "hash-1", "phc", "SECRET", &e, NOW_MS).await.unwrap();
        assert!(matches!(
            store.enrol_operator("op1", "hash-1", "phc", "SECRET", &e, NOW_MS).await,
            Err(StoreError::NotFound)
        ));
        let account = store.operator_account("op1").await.unwrap().unwrap();
        assert_eq!(account.enrolment_token_hash, None, "{name}");
        assert!(!format!("{account:?}").contains("SECRET"), "{name}: Debug hides the TOTP secret");

        let session = OperatorSessionRow {
            operator_id: "op1".into(),
            terminal: "192.0.2.1".into(),
            created_at_ms: NOW_MS,
            expires_at_ms: NOW_MS + 10,
        };
        let prev = store.operator_login_succeeded("op1", 5, "tok-1", &session, &event("login", None)).await.unwrap();
        assert_eq!(prev, None, "{name}");
        // The same or an older step is refused: a code works once.
        for step in [5, 4] {
            let r = store.operator_login_succeeded("op1", step, "tok-2", &session, &event("login", None)).await;
            assert!(matches!(r, Err(StoreError::Conflict(_))), "{name}: {r:?}");
        }
        let prev = store.operator_login_succeeded("op1", 6, "tok-3", &session, &event("login", None)).await.unwrap();
        assert_eq!(prev.unwrap().terminal, "192.0.2.1", "{name}");
        assert_eq!(store.operator_session("tok-1").await.unwrap().unwrap().operator_id, "op1");
        assert_eq!(store.operator_session("tok-2").await.unwrap(), None, "{name}: refused login stored nothing");
        assert_eq!(store.expire_operator_sessions(NOW_MS + 10).await.unwrap(), 2, "{name}");

        for i in 1..=LOGIN_FAILURES_FREE + 1 {
            let until = store.operator_login_failed("op1", &event("login_failed", None), NOW_MS).await.unwrap();
            assert_eq!(until > 0, i >= LOGIN_FAILURES_FREE, "{name}: failure {i}");
        }
        // Unknown operators are logged but change nothing.
        assert_eq!(store.operator_login_failed("ghost", &event("login_failed", None), NOW_MS).await.unwrap(), 0);
        let failed = store.ops_events(None, 100).await.unwrap().iter().filter(|e| e.event == "login_failed").count();
        assert_eq!(failed as i64, LOGIN_FAILURES_FREE + 2, "{name}");
    }
}

#[tokio::test]
async fn o4_registry_log_is_append_only() {
    for ts in test_stores().await {
        let (name, store) = (ts.name, &ts.store);
        let row = |seq: i64, hash: &str| RegistryLogRow {
            seq,
            hash: hash.into(),
            change_json: "{}".into(),
            approvals_json: "[]".into(),
            applied_at_ms: NOW_MS,
        };
        store.append_registry_log(&row(0, "aa")).await.unwrap();
        store.append_registry_log(&row(1, "bb")).await.unwrap();
        let r = store.append_registry_log(&row(1, "cc")).await;
        assert!(matches!(r, Err(StoreError::Conflict(_))), "{name}: {r:?}");
        let log = store.registry_log().await.unwrap();
        assert_eq!(log.iter().map(|r| r.hash.as_str()).collect::<Vec<_>>(), ["aa", "bb"], "{name}: never overwritten");
    }
}

#[tokio::test]
async fn k8_o2_k12_requests_one_decision_per_operator_cas_and_events() {
    for ts in test_stores().await {
        let (name, store) = (ts.name, &ts.store);
        // Inside a caller's transaction, as the withdrawal creation does; a rollback leaves nothing.
        let mut tx = store.begin_write().await.unwrap();
        insert_ops_request_tx(&mut tx, &request("w1", 2)).await.unwrap();
        tx.rollback().await.unwrap();
        assert_eq!(store.ops_request("w1").await.unwrap(), None, "{name}");
        let mut tx = store.begin_write().await.unwrap();
        insert_ops_request_tx(&mut tx, &request("w1", 2)).await.unwrap();
        tx.commit().await.unwrap();
        assert!(matches!(store.insert_ops_request(&request("w1", 2)).await, Err(StoreError::Conflict(_))));
        store.insert_ops_request(&request("w0", 0)).await.unwrap();
        assert_eq!(store.ops_request("w0").await.unwrap().unwrap().state, STATE_APPROVED, "{name}: 0 needed");
        let row = store.ops_request("w1").await.unwrap().unwrap();
        assert_eq!((row.state.as_str(), row.required), (STATE_REQUESTED, 2), "{name}");

        let approval = |op: &str| OpsApprovalRow {
            request_id: "w1".into(),
            operator_id: op.into(),
            decision: "approve".into(),
            signature_hex: "ab".into(),
            terminal: "192.0.2.2".into(),
            at_ms: NOW_MS,
        };
        let mut tx = store.begin_write().await.unwrap();
        insert_ops_approval_tx(&mut tx, &approval("m1")).await.unwrap();
        let dup = insert_ops_approval_tx(&mut tx, &approval("m1")).await;
        assert!(matches!(dup, Err(StoreError::Conflict(_))), "{name}: {dup:?}");
        tx.rollback().await.unwrap();
        let mut tx = store.begin_write().await.unwrap();
        insert_ops_approval_tx(&mut tx, &approval("m1")).await.unwrap();
        insert_ops_approval_tx(&mut tx, &approval("m2")).await.unwrap();
        set_ops_request_state_tx(&mut tx, "w1", STATE_REQUESTED, STATE_APPROVED, NOW_MS).await.unwrap();
        tx.commit().await.unwrap();
        assert_eq!(store.ops_approvals("w1").await.unwrap().len(), 2, "{name}");
        // Compare-and-set: a second mover from the same state loses.
        let mut tx = store.begin_write().await.unwrap();
        let lost = set_ops_request_state_tx(&mut tx, "w1", STATE_REQUESTED, STATE_APPROVED, NOW_MS).await;
        assert!(matches!(lost, Err(StoreError::Conflict(_))), "{name}: {lost:?}");
        let missing = set_ops_request_state_tx(&mut tx, "nope", STATE_REQUESTED, STATE_APPROVED, NOW_MS).await;
        assert!(matches!(missing, Err(StoreError::NotFound)), "{name}");
        finish_ops_request_tx(&mut tx, "w1", STATE_APPROVED, STATE_EXECUTED, "system", "{}", NOW_MS).await.unwrap();
        tx.commit().await.unwrap();
        assert_eq!(store.ops_requests(Some(STATE_EXECUTED), 10).await.unwrap().len(), 1, "{name}");
        assert_eq!(store.ops_requests(None, 10).await.unwrap().len(), 2, "{name}");
        let events = store.ops_events_for_request("w1").await.unwrap();
        assert_eq!(events.len(), 1, "{name}: the request_created event, written with the insert");
        assert_eq!((events[0].operator_id.as_str(), events[0].terminal.as_str()), ("c_1", "192.0.2.9"));
        // Pagination by event id.
        store.append_ops_event(&event("x", Some("w1"))).await.unwrap();
        let all = store.ops_events(None, 100).await.unwrap();
        let after = store.ops_events(Some(&all[0].id), 100).await.unwrap();
        assert_eq!(after.len(), all.len() - 1, "{name}");
    }
}
