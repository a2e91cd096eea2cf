//! The operator API in process (tower `oneshot` with the peer address set as `kinko serve` sets it), on
//! SQLite and — when `KINKO_TEST_POSTGRES_URL` is set — PostgreSQL, with a real in-process signer
//! (`LocalSigner` over the same store) as the authority for registry changes. Requirement IDs: K8
//! (separation of duties), K12 (who did what, from where, when), O2 (no self-approval; revoked approvals
//! stop counting), O3 (one person one role), O4 (personnel changes by two administrators), M2 (operator
//! authentication), M10 (fiat deposits).

use axum::http::{Method, StatusCode};
use kinko_core::AssetCode;
use kinko_core::ledger::AccountKind;
use kinko_core::operator_registry::{RegistryChange, RegistryChangeKind};
use kinko_core::operators::{ApprovalSubject, Decision, Process, Role};
use kinko_server::api::ROUTES;
use kinko_server::api::ops_requests::{OPS_AUTHZ, Principal};
use kinko_signer::Signer;
use kinko_signer::approvals::sign_approval;
use kinko_store::testing::test_stores;
use serde_json::{Value, json};

mod support;
use support::ops::*;

#[tokio::test]
async fn m2_k12_enrolment_and_totp_login_single_use_lockout_indistinguishable() {
    for ts in test_stores().await {
        let name = ts.name;
        let mut o = ops(ts).await;
        o.genesis("admin1", 1).await;
        // The enrolment token is dead after use.
        let r = o
            .call(
                Method::POST,
                "/v1/ops/enrolments",
                None,
                Some(json!({"operator_id": "admin1", "enrolment_token": "genesis-enrolment-token", "password": PASSWORD})),
            )
            .await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{name}: {}", r.text);
        o.ts.store.create_operator_account("bob", &sha256_hex("bob-token"), now_ms() + 60_000, now_ms()).await.unwrap();
        let totp = o.enrol("bob", "bob-token").await;

        // Replayed code: the code just used at genesis login for admin1 is dead; for bob, use one twice.
        let first = o.login("bob", &totp, 0).await;
        assert_eq!(first.status, StatusCode::CREATED, "{name}: {}", first.text);
        assert!(first.json["previous_login"].is_null());
        let replay = o.login("bob", &totp, 0).await;
        assert_eq!(replay.status, StatusCode::UNAUTHORIZED, "{name}: a code works once");

        // Indistinguishable: unknown operator, wrong password, wrong code give the same body.
        let unknown = o
            .call(
                Method::POST,
                "/v1/ops/sessions",
                None,
                Some(json!({"operator_id": "nobody", "password": PASSWORD, "totp_code": "123456"})),
            )
            .await;
        let wrong_password = o
            .call(
                Method::POST,
                "/v1/ops/sessions",
                None,
                Some(json!({"operator_id": "bob", "password": "wrong password!!", "totp_code": totp.generate(now_secs() + 30).to_string()})),
            )
            .await;
        let wrong_code = o
            .call(
                Method::POST,
                "/v1/ops/sessions",
                None,
                Some(json!({"operator_id": "bob", "password": PASSWORD, "totp_code": "000000"})),
            )
            .await;
        for r in [&replay, &unknown, &wrong_password, &wrong_code] {
            assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{name}: {}", r.text);
            assert_eq!(r.json, unknown.json, "{name}: failures must be indistinguishable");
        }
        // Four failures so far (replay, wrong password, wrong code + unknown does not count): one more
        // locks the account, and then even the right credentials are refused with the same answer.
        let _ = o
            .call(
                Method::POST,
                "/v1/ops/sessions",
                None,
                Some(json!({"operator_id": "bob", "password": PASSWORD, "totp_code": "000001"})),
            )
            .await;
        let account = o.ts.store.operator_account("bob").await.unwrap().unwrap();
        assert!(account.locked_until_ms > now_ms(), "{name}: locked after repeated failures: {account:?}");
        let locked = o.login("bob", &totp, 30).await;
        assert_eq!(locked.status, StatusCode::UNAUTHORIZED, "{name}: locked account refuses the right code");
        assert_eq!(locked.json, unknown.json);
        // Every attempt is in the audit trail with its terminal.
        let events = o.ts.store.ops_events(None, 1000).await.unwrap();
        let failed = events.iter().filter(|e| e.event == "login_failed").count();
        assert!(failed >= 5, "{name}: {events:?}");
        assert!(events.iter().all(|e| e.terminal == "192.0.2.7"), "{name}");
        // A customer token is no operator token.
        let (_, customer_token) = o.customer("carol@example.com").await;
        let r = o.call(Method::GET, "/v1/ops/me", Some(&customer_token), None).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{name}");
        let r = o.call(Method::GET, "/v1/ops/me", Some(&o.token("admin1")), None).await;
        assert_eq!(r.status, StatusCode::OK, "{name}: {}", r.text);
        assert_eq!(r.json["roles"], json!(["administrator"]));
        assert_eq!(r.json["terminal"], "192.0.2.7");
    }
}

#[tokio::test]
async fn o4_k8_registry_change_by_two_admins_applied_on_signer_first() {
    for ts in test_stores().await {
        let name = ts.name;
        let mut o = ops(ts).await;
        o.genesis("admin1", 1).await;
        o.add("admin2", Role::Administrator, 2, None).await;
        assert_eq!(o.signer.registry_head().await.unwrap().unwrap().0, 1, "{name}: bootstrap applied on the signer");
        // A second change needs the second administrator: pending until admin2 approves.
        let k = key(30);
        let kind = RegistryChangeKind::AddOperator {
            operator_id: "om1".into(),
            approval_public_key_hex: hex::encode(k.verifying_key().to_bytes()),
            role: Role::OperationsManager,
            expires_at_ms: None,
        };
        let pending = o.registry_change("admin1", None, kind).await;
        assert_eq!(pending.json["state"], "requested", "{name}: {}", pending.text);
        assert_eq!(o.signer.registry_head().await.unwrap().unwrap().0, 1, "{name}: nothing applied yet");
        // Self-approval by the requester is refused, naming the rule.
        let own = o.decide("admin1", "registry-2", Decision::Approve).await;
        assert_eq!(own.status, StatusCode::FORBIDDEN, "{name}: {}", own.text);
        assert!(own.text.contains("self-approval"), "{name}: {}", own.text);
        let approved = o.decide("admin2", "registry-2", Decision::Approve).await;
        assert_eq!(approved.status, StatusCode::OK, "{name}: {}", approved.text);
        assert_eq!(approved.json["state"], "executed");
        assert_eq!(o.signer.registry_head().await.unwrap().unwrap().0, 2, "{name}: applied on the signer");
        assert_eq!(o.ts.store.registry_log().await.unwrap().len(), 3, "{name}: and in the server's log");
        let token = approved.json["enrolment_token"].as_str().unwrap().to_string();
        assert_eq!(approved.json["result"]["enrolment_token_issued"], true);
        assert!(!approved.json["result"].to_string().contains(&token), "{name}: only the fact is stored");
        o.enrol_and_login("om1", &token, k).await;
        let me = o.call(Method::GET, "/v1/ops/me", Some(&o.token("om1")), None).await;
        assert_eq!(me.json["roles"], json!(["operations_manager"]), "{name}");
        // An operations manager cannot ask for registry changes (administrators only).
        let r = o.call(Method::GET, "/v1/ops/registry/head", Some(&o.token("om1")), None).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{name}");
    }
}

#[tokio::test]
async fn k8_o3_second_role_refused_by_the_signer_and_request_failed() {
    for ts in test_stores().await {
        let name = ts.name;
        let o = Ops::staffed(ts).await;
        let r = o
            .registry_change(
                "admin1",
                Some("admin2"),
                RegistryChangeKind::Grant { operator_id: "om1".into(), role: Role::KeyOperator, expires_at_ms: None },
            )
            .await;
        assert_eq!(r.status, StatusCode::CONFLICT, "{name}: {}", r.text);
        assert!(r.text.contains("signer refused"), "{name}: {}", r.text);
        let head = o.call(Method::GET, "/v1/ops/registry/head", Some(&o.token("admin1")), None).await;
        let seq = head.json["next_seq"].as_u64().unwrap();
        let failed = o.ts.store.ops_request(&format!("registry-{seq}")).await.unwrap().unwrap();
        assert_eq!(failed.state, "failed", "{name}");
        let me = o.call(Method::GET, "/v1/ops/me", Some(&o.token("om1")), None).await;
        assert_eq!(me.json["roles"], json!(["operations_manager"]), "{name}: still one role");
    }
}

#[tokio::test]
async fn k8_expired_grant_refused_and_forged_signature_rejected() {
    for ts in test_stores().await {
        let name = ts.name;
        let mut o = Ops::staffed(ts).await;
        o.add("sm_temp", Role::SigningManager, 40, Some(now_ms() + 2_500)).await;
        let req = o
            .request(
                "so1",
                "activation",
                "key_transition",
                json!({"key_id": "k1", "to_state": "suspended", "reason": "test"}),
            )
            .await;
        assert_eq!(req.status, StatusCode::CREATED, "{name}: {}", req.text);
        let id = req.json["id"].as_str().unwrap().to_string();
        // A forged signature (sm1 signs with someone else's key) is refused outright.
        let mut hash = [0u8; 32];
        hex::decode_to_slice(req.json["intent_hash"].as_str().unwrap(), &mut hash).unwrap();
        let subject = ApprovalSubject::new(Process::Activation, &id, hash).unwrap();
        let forged = sign_approval(&key(99), "sm1", &subject, Decision::Approve).unwrap();
        let r = o
            .call(
                Method::POST,
                &format!("/v1/ops/requests/{id}/approvals"),
                Some(&o.token("sm1")),
                Some(json!({"decision": "approve", "signature_hex": forged.signature_hex})),
            )
            .await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{name}: {}", r.text);
        tokio::time::sleep(std::time::Duration::from_millis(3_000)).await;
        let r = o.decide("sm_temp", &id, Decision::Approve).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{name}: {}", r.text);
        let again = o.call(Method::GET, &format!("/v1/ops/requests/{id}"), Some(&o.token("so1")), None).await;
        assert_eq!(again.json["state"], "requested", "{name}");
        assert_eq!(again.json["approvals"], json!([]), "{name}");
    }
}

#[tokio::test]
async fn o2_revoked_operators_approval_stops_counting_at_execution() {
    for ts in test_stores().await {
        let name = ts.name;
        let o = Ops::staffed(ts).await;
        let req = o
            .request(
                "so1",
                "activation",
                "key_transition",
                json!({"key_id": "k1", "to_state": "suspended", "reason": "test"}),
            )
            .await;
        let id = req.json["id"].as_str().unwrap().to_string();
        let r = o.decide("sm1", &id, Decision::Approve).await;
        assert_eq!(r.json["state"], "approved", "{name}: {}", r.text);
        let revoke = o
            .registry_change("admin1", Some("admin2"), RegistryChangeKind::RevokeOperator { operator_id: "sm1".into() })
            .await;
        assert_eq!(revoke.json["state"], "executed", "{name}: {}", revoke.text);
        let r = o
            .call(Method::POST, &format!("/v1/ops/requests/{id}/execute"), Some(&o.token("so1")), Some(json!({})))
            .await;
        assert_eq!(r.status, StatusCode::CONFLICT, "{name}: {}", r.text);
        assert!(r.text.contains("quorum"), "{name}: {}", r.text);
    }
}

#[tokio::test]
async fn k12_table_a1_request_approve_execute_inspect_each_step_logged() {
    for ts in test_stores().await {
        let name = ts.name;
        let o = Ops::staffed(ts).await;
        let req = o.request("ko1", "key_generation", "key_generation", json!({"ceremony": "cold key 7"})).await;
        assert_eq!(req.status, StatusCode::CREATED, "{name}: {}", req.text);
        let id = req.json["id"].as_str().unwrap().to_string();
        // The wrong approving role (a signing manager for key generation) is refused.
        let r = o.decide("sm1", &id, Decision::Approve).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{name}: {}", r.text);
        // Execution before approval is refused.
        let early = o
            .call(
                Method::POST,
                &format!("/v1/ops/requests/{id}/execute"),
                Some(&o.token("ko1")),
                Some(json!({"evidence": {"x": 1}})),
            )
            .await;
        assert_eq!(early.status, StatusCode::CONFLICT, "{name}: {}", early.text);
        let r = o.decide("om1", &id, Decision::Approve).await;
        assert_eq!(r.json["state"], "approved", "{name}: {}", r.text);
        let r = o
            .call(
                Method::POST,
                &format!("/v1/ops/requests/{id}/execute"),
                Some(&o.token("ko1")),
                Some(json!({"evidence": {"fingerprint": "ab12", "media": "usb-3"}})),
            )
            .await;
        assert_eq!(r.status, StatusCode::OK, "{name}: {}", r.text);
        assert_eq!(r.json["state"], "executed");
        // A second execute is a conflict, not a second execution.
        let twice = o
            .call(
                Method::POST,
                &format!("/v1/ops/requests/{id}/execute"),
                Some(&o.token("ko1")),
                Some(json!({"evidence": {"x": 1}})),
            )
            .await;
        assert_eq!(twice.status, StatusCode::CONFLICT, "{name}: {}", twice.text);
        let r = o
            .call(
                Method::POST,
                &format!("/v1/ops/requests/{id}/inspect"),
                Some(&o.token("li1")),
                Some(json!({"finding": "ok", "note": "matches the ceremony video"})),
            )
            .await;
        assert_eq!(r.status, StatusCode::OK, "{name}: {}", r.text);
        assert_eq!(r.json["state"], "inspected");
        let events = o.ts.store.ops_events_for_request(&id).await.unwrap();
        let steps: Vec<(&str, &str)> = events.iter().map(|e| (e.event.as_str(), e.operator_id.as_str())).collect();
        assert_eq!(
            steps,
            [("request_created", "ko1"), ("approved", "om1"), ("executed", "ko1"), ("inspected", "li1")],
            "{name}"
        );
        for e in &events {
            assert_eq!(e.terminal, "192.0.2.7", "{name}");
            assert!(e.at_ms > 0 && e.at_ms <= now_ms(), "{name}");
        }
        let r = o.call(Method::GET, "/v1/ops/events", Some(&o.token("li1")), None).await;
        assert_eq!(r.status, StatusCode::OK, "{name}: {}", r.text);
        assert!(r.json.as_array().unwrap().len() >= 4);
    }
}

#[tokio::test]
async fn m10_fiat_deposit_credits_the_customer_once() {
    for ts in test_stores().await {
        let name = ts.name;
        let o = Ops::staffed(ts).await;
        let (customer, _) = o.customer("dave@example.com").await;
        let params =
            json!({"customer_id": customer, "asset": "JPY", "amount": "150000", "bank_reference": "MIZUHO-0001"});
        let req = o.request("so1", "fiat_deposit", "fiat_deposit", params).await;
        assert_eq!(req.status, StatusCode::CREATED, "{name}: {}", req.text);
        let id = req.json["id"].as_str().unwrap().to_string();
        let r = o.decide("om1", &id, Decision::Approve).await;
        assert_eq!(r.status, StatusCode::OK, "{name}: {}", r.text);
        assert_eq!(r.json["state"], "executed", "{name}: {}", r.text);
        assert_eq!(r.json["executor"], "system");
        let again = o.decide("om2", &id, Decision::Approve).await;
        assert_eq!(again.status, StatusCode::CONFLICT, "{name}: {}", again.text);
        let jpy: AssetCode = "JPY".parse().unwrap();
        let balances = o.ts.store.customer_balances(&customer).await.unwrap();
        assert_eq!(balances[&(jpy, AccountKind::Available)].to_string(), "150000", "{name}");
        // Unknown customers and non-fiat assets are refused at request time, naming the field.
        let bad = o
            .request(
                "so1",
                "fiat_deposit",
                "fiat_deposit",
                json!({"customer_id": "c_nobody", "asset": "ETH", "amount": "1", "bank_reference": "x"}),
            )
            .await;
        assert_eq!(bad.status, StatusCode::UNPROCESSABLE_ENTITY, "{name}: {}", bad.text);
        assert!(bad.text.contains("params.customer_id") && bad.text.contains("params.asset"), "{name}: {}", bad.text);
    }
}

/// M10: a fiat deposit at or under `[operators] fiat_deposit_auto_max` is booked without approval (and
/// still recorded, executed by the system, for inspection); one above it waits for an operations manager.
#[tokio::test]
async fn m10_fiat_deposit_needs_approval_only_above_the_threshold() {
    for ts in test_stores().await {
        let name = ts.name;
        let o = Ops::staff(ops_with(ts, |c| c.operators.fiat_deposit_auto_max = "100000".parse().unwrap()).await).await;
        let (customer, _) = o.customer("fiona@example.com").await;
        let deposit = |amount: &str, reference: &str| json!({"customer_id": customer, "asset": "JPY", "amount": amount, "bank_reference": reference});
        let small = o.request("so1", "fiat_deposit", "fiat_deposit", deposit("100000", "B-1")).await;
        assert_eq!(small.status, StatusCode::CREATED, "{name}: {}", small.text);
        let small_id = small.json["id"].as_str().unwrap().to_string();
        let row = o.ts.store.ops_request(&small_id).await.unwrap().unwrap();
        assert_eq!(row.state, "executed", "{name}: at the threshold it is booked at once");
        let large = o.request("so1", "fiat_deposit", "fiat_deposit", deposit("100001", "B-2")).await;
        assert_eq!(large.status, StatusCode::CREATED, "{name}: {}", large.text);
        assert_eq!(large.json["state"], "requested", "{name}: above the threshold it waits: {}", large.text);
        let jpy: AssetCode = "JPY".parse().unwrap();
        let balances = o.ts.store.customer_balances(&customer).await.unwrap();
        assert_eq!(balances[&(jpy, AccountKind::Available)].to_string(), "100000", "{name}: only the small one");
    }
}

/// Every ops route is in OPS_AUTHZ, and for every principal (each role, a customer token, no token) a
/// well-formed call is refused with 401/403 exactly when the table does not list the principal. An
/// `Anonymous` entry means the endpoint needs no credentials, so every principal may call it.
#[tokio::test]
async fn k8_authorization_matrix_every_ops_endpoint_every_principal() {
    for ts in test_stores().await {
        let name = ts.name;
        let mut o = Ops::staffed(ts).await;
        let (customer_id, customer_token) = o.customer("erin@example.com").await;
        // Fixtures for the calls that need a request in a given state.
        let keygen = o.request("ko1", "key_generation", "key_generation", json!({"ceremony": "m"})).await;
        let keygen_id = keygen.json["id"].as_str().unwrap().to_string();
        let activation = o
            .request(
                "so1",
                "activation",
                "key_transition",
                json!({"key_id": "none", "to_state": "suspended", "reason": "m"}),
            )
            .await;
        let activation_id = activation.json["id"].as_str().unwrap().to_string();
        let ko_exec = o.request("ko1", "key_storage", "key_storage", json!({"media": "m"})).await;
        let ko_exec_id = ko_exec.json["id"].as_str().unwrap().to_string();
        assert_eq!(o.decide("om2", &ko_exec_id, Decision::Approve).await.status, StatusCode::OK);
        let so_exec = o
            .request(
                "so1",
                "activation",
                "key_transition",
                json!({"key_id": "none", "to_state": "suspended", "reason": "m"}),
            )
            .await;
        let so_exec_id = so_exec.json["id"].as_str().unwrap().to_string();
        assert_eq!(o.decide("sm1", &so_exec_id, Decision::Approve).await.status, StatusCode::OK);
        let fiat = o
            .request(
                "so1",
                "fiat_deposit",
                "fiat_deposit",
                json!({"customer_id": customer_id, "asset": "JPY", "amount": "5", "bank_reference": "r"}),
            )
            .await;
        let fiat_id = fiat.json["id"].as_str().unwrap().to_string();
        assert_eq!(o.decide("om2", &fiat_id, Decision::Approve).await.json["state"], "executed");
        o.add("li2", Role::LogInspector, 50, None).await;
        // A personnel change requested by admin1, for admin2 to approve.
        let k = key(51);
        let pending = o
            .registry_change(
                "admin1",
                None,
                RegistryChangeKind::AddOperator {
                    operator_id: "li3".into(),
                    approval_public_key_hex: hex::encode(k.verifying_key().to_bytes()),
                    role: Role::LogInspector,
                    expires_at_ms: None,
                },
            )
            .await;
        let pending_id = pending.json["id"].as_str().unwrap().to_string();
        // U1: a KYC case submitted (for the review call) and one under review by so1 (for the decision).
        let mut kyc_ids = Vec::new();
        for (i, reviewed) in [(0u8, false), (1, true)] {
            let t = kinko_store::onboarding::NewEmailToken {
                token_hash: format!("{i:064}"),
                created_at_ms: now_ms(),
                expires_at_ms: now_ms() + 60_000,
            };
            let c = kinko_store::customers::CustomerRow {
                id: format!("c_kyc{i}"),
                email: format!("kyc{i}@example.com"),
                password_hash: "unused".into(),
                created_at_ms: now_ms(),
            };
            o.ts.store.register_customer(&c, Some(&t), None, None).await.unwrap();
            o.ts.store.use_email_token(&t.token_hash, now_ms()).await.unwrap().unwrap();
            let docs = [kinko_core::onboarding::KycDocument { kind: "passport".into(), reference: "m".into() }];
            let s = o.ts.store.submit_kyc(&c.id, &format!("kyc_m{i}"), &docs, now_ms()).await.unwrap().unwrap();
            if reviewed {
                let r =
                    o.call(Method::POST, &format!("/v1/ops/kyc/{}/review", s.id), Some(&o.token("so1")), None).await;
                assert_eq!(r.status, StatusCode::OK, "{name}: {}", r.text);
            }
            kyc_ids.push(s.id);
        }

        // S4: a window announced far ahead, for the cancel call (the first allowed caller cancels it, the
        // others get 409: not a refusal).
        let window = kinko_store::monitoring::MaintenanceWindowRow {
            id: "mw-matrix".into(),
            starts_at_ms: now_ms() + 86_400_000,
            ends_at_ms: now_ms() + 90_000_000,
            message: "m".into(),
            created_by: "om1".into(),
            created_at_ms: now_ms(),
            cancelled_by: None,
            cancelled_at_ms: None,
        };
        let announced = kinko_store::ops_requests::NewOpsEvent {
            operator_id: "om1".into(),
            terminal: "t".into(),
            event: "maintenance_announced".into(),
            request_id: None,
            detail_json: "{}".into(),
            at_ms: now_ms(),
        };
        o.ts.store.insert_maintenance_window(&window, &announced).await.unwrap();

        let representatives = [
            (Role::OperationsManager, "om1"),
            (Role::SigningManager, "sm1"),
            (Role::KeyOperator, "ko1"),
            (Role::SigningOperator, "so1"),
            (Role::LogInspector, "li1"),
            (Role::Administrator, "admin2"),
        ];
        enum Who {
            Role(Role, &'static str),
            Customer,
            Nobody,
        }
        let mut principals: Vec<Who> = representatives.iter().map(|(r, id)| Who::Role(*r, id)).collect();
        principals.push(Who::Customer);
        principals.push(Who::Nobody);
        let mut fresh = 0u32;
        let mut checked = 0;
        for (method, path) in ROUTES.iter().filter(|(_, p)| p.starts_with("/v1/ops")) {
            let allowed = OPS_AUTHZ
                .iter()
                .find(|(m, p, _)| m == method && p == path)
                .map(|(_, _, a)| *a)
                .unwrap_or_else(|| panic!("{method} {path} is missing from OPS_AUTHZ"));
            for who in &principals {
                let listed = allowed.contains(&Principal::Anonymous)
                    || matches!(who, Who::Role(r, _) if allowed.contains(&Principal::Role(*r)));
                let (token, actor) = match who {
                    Who::Role(_, id) => (Some(o.token(id)), Some(*id)),
                    Who::Customer => (Some(customer_token.clone()), None),
                    Who::Nobody => (None, None),
                };
                // A well-formed call for this principal.
                let (uri, body): (String, Option<Value>) = match (*method, *path) {
                    ("post", "/v1/ops/enrolments") => {
                        fresh += 1;
                        let id = format!("new{fresh}");
                        o.ts.store
                            .create_operator_account(&id, &sha256_hex(&id), now_ms() + 60_000, now_ms())
                            .await
                            .unwrap();
                        (
                            path.to_string(),
                            Some(json!({"operator_id": id, "enrolment_token": id, "password": PASSWORD})),
                        )
                    }
                    ("post", "/v1/ops/sessions") => {
                        fresh += 1;
                        let id = format!("new{fresh}");
                        o.ts.store
                            .create_operator_account(&id, &sha256_hex(&id), now_ms() + 60_000, now_ms())
                            .await
                            .unwrap();
                        let totp = o.enrol(&id, &id).await;
                        let code = totp.generate(now_secs()).to_string();
                        (path.to_string(), Some(json!({"operator_id": id, "password": PASSWORD, "totp_code": code})))
                    }
                    ("post", "/v1/ops/registry-changes") => {
                        let requester = actor.unwrap_or("admin2");
                        let head = o.call(Method::GET, "/v1/ops/registry/head", Some(&o.token("admin1")), None).await;
                        let mut prev = [0u8; 32];
                        hex::decode_to_slice(head.json["prev_hash"].as_str().unwrap(), &mut prev).unwrap();
                        let change = RegistryChange {
                            seq: head.json["next_seq"].as_u64().unwrap(),
                            prev_hash: prev,
                            requested_by: requester.into(),
                            requested_at_ms: now_ms(),
                            change: RegistryChangeKind::RevokeOperator { operator_id: "li2".into() },
                        };
                        let signer_key = o.people.get(requester).map_or(key(77), |p| p.key.clone());
                        let sig = sign_approval(&signer_key, requester, &change.subject().unwrap(), Decision::Approve)
                            .unwrap();
                        (path.to_string(), Some(json!({"change": change, "signature_hex": sig.signature_hex})))
                    }
                    ("post", "/v1/ops/requests") => {
                        let body = match who {
                            Who::Role(Role::SigningOperator, _) => {
                                json!({"process": "fiat_deposit", "kind": "fiat_deposit", "params": {"customer_id": customer_id, "asset": "JPY", "amount": "1", "bank_reference": "m"}})
                            }
                            Who::Role(Role::OperationsManager, _) => {
                                json!({"process": "policy_change", "kind": "policy_change", "params": {"policy": {}}})
                            }
                            _ => {
                                json!({"process": "key_generation", "kind": "key_generation", "params": {"ceremony": "m"}})
                            }
                        };
                        (path.to_string(), Some(body))
                    }
                    ("get", "/v1/ops/requests/{id}") => (format!("/v1/ops/requests/{keygen_id}"), None),
                    ("post", "/v1/ops/requests/{id}/approvals") => {
                        let (id, process, hash) = match who {
                            Who::Role(Role::SigningManager, _) => (&activation_id, Process::Activation, &activation),
                            Who::Role(Role::Administrator, _) => (&pending_id, Process::Personnel, &pending),
                            _ => (&keygen_id, Process::KeyGeneration, &keygen),
                        };
                        let mut h = [0u8; 32];
                        hex::decode_to_slice(hash.json["intent_hash"].as_str().unwrap(), &mut h).unwrap();
                        let subject = ApprovalSubject::new(process, id, h).unwrap();
                        let signer_key = actor.and_then(|a| o.people.get(a)).map_or(key(77), |p| p.key.clone());
                        let sig =
                            sign_approval(&signer_key, actor.unwrap_or("x"), &subject, Decision::Approve).unwrap();
                        (
                            format!("/v1/ops/requests/{id}/approvals"),
                            Some(json!({"decision": "approve", "signature_hex": sig.signature_hex})),
                        )
                    }
                    ("post", "/v1/ops/requests/{id}/execute") => {
                        let (id, body) = match who {
                            Who::Role(Role::SigningOperator, _) => (&so_exec_id, json!({})),
                            _ => (&ko_exec_id, json!({"evidence": {"media": "usb"}})),
                        };
                        (format!("/v1/ops/requests/{id}/execute"), Some(body))
                    }
                    ("post", "/v1/ops/requests/{id}/inspect") => {
                        (format!("/v1/ops/requests/{fiat_id}/inspect"), Some(json!({"finding": "ok", "note": ""})))
                    }
                    ("post", "/v1/ops/freezes") => {
                        (path.to_string(), Some(json!({"scope": "key:matrix-test", "reason": "matrix"})))
                    }
                    ("post", "/v1/ops/reconciliation") => (path.to_string(), None),
                    ("post", "/v1/ops/kyc/{id}/review") => (format!("/v1/ops/kyc/{}/review", kyc_ids[0]), None),
                    ("post", "/v1/ops/kyc/{id}/decision") => (
                        format!("/v1/ops/kyc/{}/decision", kyc_ids[1]),
                        Some(json!({"decision": "verified", "reason": "documents match"})),
                    ),
                    ("post", "/v1/ops/maintenance-windows") => (
                        path.to_string(),
                        Some(
                            json!({"starts_at_ms": now_ms() + 86_400_000, "ends_at_ms": now_ms() + 86_460_000, "message": "m"}),
                        ),
                    ),
                    ("post", "/v1/ops/maintenance-windows/{id}/cancel") => {
                        ("/v1/ops/maintenance-windows/mw-matrix/cancel".to_string(), None)
                    }
                    ("get", _) => (path.to_string(), None),
                    other => panic!("no well-formed call for {other:?}: add one to this test"),
                };
                let m = if *method == "get" { Method::GET } else { Method::POST };
                let r = o.call(m, &uri, token.as_deref(), body).await;
                let refused = r.status == StatusCode::UNAUTHORIZED || r.status == StatusCode::FORBIDDEN;
                let label = match who {
                    Who::Role(r, _) => r.as_str().to_string(),
                    Who::Customer => "customer".into(),
                    Who::Nobody => "no token".into(),
                };
                assert_eq!(refused, !listed, "{name}: {method} {uri} as {label}: {} {}", r.status, r.text);
                checked += 1;
            }
        }
        // 14 routes, plus the audit trail's three (L2, L4–L6), onboarding's three (U1) and the freezes' and
        // reconciliation's four (K19, S5, L3), maintenance's three (S4), the key list (K2, K7; #8).
        assert_eq!(checked, (14 + 3 + 3 + 4 + 3 + 1) * 8, "{name}: every ops route × every principal");
    }
}

/// U14: compliance reads AML cases over the ops API (log inspectors and operations managers; the matrix
/// test covers who is refused), filtered by state, with bad filters named.
#[tokio::test]
async fn u14_ops_list_aml_cases_for_review() {
    for ts in test_stores().await {
        let name = ts.name;
        let o = Ops::staffed(ts).await;
        let (customer_id, _) = o.customer("olga@example.com").await;
        let case = kinko_store::aml::AmlCase {
            id: "aml_t1".into(),
            customer_id: customer_id.clone(),
            rule: "fan_out".into(),
            dedupe_key: "w_t1".into(),
            detail_json: json!({"destinations": 5}).to_string(),
            state: "open".into(),
            created_at_ms: now_ms(),
            closed_at_ms: 0,
        };
        let event = kinko_store::ops_requests::NewOpsEvent {
            operator_id: "system".into(),
            terminal: "test".into(),
            event: "aml_case_opened".into(),
            request_id: None,
            detail_json: json!({"case_id": "aml_t1"}).to_string(),
            at_ms: now_ms(),
        };
        assert!(o.ts.store.open_aml_case(&case, &event).await.unwrap());
        assert!(!o.ts.store.open_aml_case(&case, &event).await.unwrap(), "{name}: one case per (rule, key)");
        for who in ["li1", "om1"] {
            let r = o.call(Method::GET, "/v1/ops/aml-cases", Some(&o.token(who)), None).await;
            assert_eq!(r.status, StatusCode::OK, "{name}: {who}: {}", r.text);
            let cases = r.json.as_array().unwrap();
            assert_eq!(cases.len(), 1, "{name}: {}", r.text);
            assert_eq!(cases[0]["customer_id"], customer_id.as_str(), "{name}");
            assert_eq!(
                (cases[0]["rule"].as_str(), cases[0]["detail"]["destinations"].as_u64()),
                (Some("fan_out"), Some(5))
            );
        }
        let r = o.call(Method::GET, "/v1/ops/aml-cases?state=closed", Some(&o.token("li1")), None).await;
        assert_eq!(r.json.as_array().map(Vec::len), Some(0), "{name}: {}", r.text);
        let r = o.call(Method::GET, "/v1/ops/aml-cases?state=bogus&limit=0", Some(&o.token("li1")), None).await;
        assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{name}: {}", r.text);
        let fields: Vec<&str> =
            r.json["errors"].as_array().unwrap().iter().map(|e| e["field"].as_str().unwrap()).collect();
        assert_eq!(fields, ["state", "limit"], "{name}");
    }
}
