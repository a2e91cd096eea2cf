//! The customer interface (M1) over HTTP: registration and login (M2, M3), deposit addresses, balances,
//! deposits, withdrawal instructions (M13, A3), plus health, readiness, metrics and the OpenAPI 3.1
//! document. Errors are RFC 9457 problem+json everywhere, including for unknown routes, wrong methods,
//! oversized bodies and malformed JSON.
//!
//! Mount with [`router`] (its own metrics registry) or [`router_with_metrics`] (a registry the binary
//! also installs globally).

pub mod account;
pub mod accounts;
pub mod address_book;
pub mod assets;
pub mod auth;
pub mod extract;
pub mod freezes;
pub mod internal_transfers;
pub mod login_protection;
pub mod metrics;
pub mod mfa;
pub mod onboarding;
pub mod openapi;
pub mod ops;
pub mod ops_auth;
pub mod ops_registry;
pub mod ops_requests;
pub mod problem;
pub mod withdrawal_confirmation;
pub mod withdrawals;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post, put};

use crate::AppState;
pub use metrics::Metrics;
pub use problem::Problem;

/// Every route the router serves, as (method, path template); the OpenAPI test checks the document
/// lists each of them.
pub const ROUTES: &[(&str, &str)] = &[
    ("post", "/v1/customers"),
    ("post", "/v1/sessions"),
    ("post", "/v1/sessions/step-up"),
    ("get", "/v1/mfa"),
    ("post", "/v1/mfa/totp"),
    ("delete", "/v1/mfa/totp"),
    ("post", "/v1/mfa/totp/confirm"),
    ("post", "/v1/mfa/webauthn/register/start"),
    ("post", "/v1/mfa/webauthn/register/finish"),
    ("post", "/v1/mfa/webauthn/authenticate/start"),
    ("post", "/v1/mfa/webauthn/authenticate/finish"),
    ("get", "/v1/login-history"),
    ("put", "/v1/transaction-password"),
    ("post", "/v1/deposit-addresses"),
    ("get", "/v1/balances"),
    ("get", "/v1/deposits"),
    ("get", "/v1/deposits/{id}"),
    ("post", "/v1/withdrawals"),
    ("get", "/v1/withdrawals"),
    ("get", "/v1/withdrawals/{id}"),
    ("post", "/v1/withdrawals/{id}/cancel"),
    ("post", "/v1/withdrawal-confirmations"),
    ("post", "/v1/address-book"),
    ("get", "/v1/address-book"),
    ("delete", "/v1/address-book/{id}"),
    ("post", "/v1/wallet-bindings/challenge"),
    ("post", "/v1/wallet-bindings"),
    ("get", "/v1/wallet-bindings"),
    ("post", "/v1/internal-transfers"),
    ("get", "/v1/internal-transfers"),
    ("delete", "/v1/account"),
    ("get", "/healthz"),
    ("get", "/readyz"),
    ("get", "/metrics"),
    ("get", "/openapi.json"),
    ("post", "/v1/ops/enrolments"),
    ("post", "/v1/ops/sessions"),
    ("get", "/v1/ops/me"),
    ("get", "/v1/ops/operators"),
    ("get", "/v1/ops/registry/head"),
    ("post", "/v1/ops/registry-changes"),
    ("post", "/v1/ops/requests"),
    ("get", "/v1/ops/requests"),
    ("get", "/v1/ops/requests/{id}"),
    ("post", "/v1/ops/requests/{id}/approvals"),
    ("post", "/v1/ops/requests/{id}/execute"),
    ("post", "/v1/ops/requests/{id}/inspect"),
    ("get", "/v1/ops/events"),
    ("get", "/v1/ops/keys"),
    ("get", "/v1/ops/aml-cases"),
    ("post", "/v1/ops/freezes"),
    ("get", "/v1/ops/freezes"),
    ("get", "/v1/ops/reconciliation"),
    ("post", "/v1/ops/reconciliation"),
    ("post", "/v1/ops/maintenance-windows"),
    ("get", "/v1/ops/maintenance-windows"),
    ("post", "/v1/ops/maintenance-windows/{id}/cancel"),
    ("get", "/v1/status"),
    ("get", "/v1/ops/audit"),
    ("get", "/v1/ops/audit/inspection"),
    ("get", "/v1/ops/key-access-log"),
    ("post", "/v1/email-verifications"),
    ("post", "/v1/email-verifications/resend"),
    ("post", "/v1/kyc"),
    ("get", "/v1/kyc"),
    ("get", "/v1/ops/kyc"),
    ("post", "/v1/ops/kyc/{id}/review"),
    ("post", "/v1/ops/kyc/{id}/decision"),
];

pub fn router(state: AppState) -> Router {
    router_with_metrics(state, Metrics::new())
}

pub fn router_with_metrics(state: AppState, metrics: Metrics) -> Router {
    // Pay for the dummy hash now rather than in the first unknown-e-mail login, whose extra latency
    // would otherwise tell that the address is not registered.
    let _ = auth::dummy_hash();
    onboarding::warn_if_dev_auto_verify(&state.config);
    let ops_metrics = Router::new().route("/metrics", get(ops::metrics)).with_state(metrics.clone());
    let maintenance = state.store.clone();
    Router::new()
        .route("/v1/customers", post(auth::create_customer))
        .route("/v1/sessions", post(auth::create_session))
        .route("/v1/sessions/step-up", post(mfa::step_up))
        .route("/v1/mfa", get(mfa::status))
        .route("/v1/mfa/totp", post(mfa::start_totp).delete(mfa::delete_totp))
        .route("/v1/mfa/totp/confirm", post(mfa::confirm_totp))
        .route("/v1/mfa/webauthn/register/start", post(mfa::webauthn_register_start))
        .route("/v1/mfa/webauthn/register/finish", post(mfa::webauthn_register_finish))
        .route("/v1/mfa/webauthn/authenticate/start", post(mfa::webauthn_authenticate_start))
        .route("/v1/mfa/webauthn/authenticate/finish", post(mfa::webauthn_authenticate_finish))
        .route("/v1/login-history", get(login_protection::login_history))
        .route("/v1/transaction-password", put(mfa::set_transaction_password))
        .route("/v1/deposit-addresses", post(accounts::deposit_address))
        .route("/v1/balances", get(accounts::balances))
        .route("/v1/deposits", get(accounts::list_deposits))
        .route("/v1/deposits/{id}", get(accounts::get_deposit))
        .route("/v1/withdrawals", post(withdrawals::create_withdrawal).get(withdrawals::list_withdrawals))
        .route("/v1/withdrawals/{id}", get(withdrawals::get_withdrawal))
        .route("/v1/withdrawals/{id}/cancel", post(withdrawals::cancel_withdrawal))
        .route("/v1/withdrawal-confirmations", post(withdrawal_confirmation::confirm_withdrawal))
        .route("/v1/address-book", post(address_book::add_entry).get(address_book::list_entries))
        .route("/v1/address-book/{id}", axum::routing::delete(address_book::remove_entry))
        .route("/v1/wallet-bindings/challenge", post(address_book::create_challenge))
        .route("/v1/wallet-bindings", post(address_book::bind_wallet).get(address_book::list_bindings))
        .route(
            "/v1/internal-transfers",
            post(internal_transfers::create_internal_transfer).get(internal_transfers::list_internal_transfers),
        )
        .route("/v1/account", axum::routing::delete(account::delete_account))
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .route("/openapi.json", get(ops::openapi))
        .route("/v1/ops/enrolments", post(ops_auth::enrol))
        .route("/v1/ops/sessions", post(ops_auth::create_session))
        .route("/v1/ops/me", get(ops_auth::me))
        .route("/v1/ops/operators", get(ops_registry::list_operators))
        .route("/v1/ops/registry/head", get(ops_registry::registry_head))
        .route("/v1/ops/registry-changes", post(ops_registry::create_registry_change))
        .route("/v1/ops/requests", post(ops_requests::create_request).get(ops_requests::list_requests))
        .route("/v1/ops/requests/{id}", get(ops_requests::get_request))
        .route("/v1/ops/requests/{id}/approvals", post(ops_requests::decide))
        .route("/v1/ops/requests/{id}/execute", post(ops_requests::execute))
        .route("/v1/ops/requests/{id}/inspect", post(ops_requests::inspect))
        .route("/v1/ops/events", get(ops_requests::events))
        .route("/v1/ops/keys", get(ops_requests::list_keys))
        .route("/v1/ops/aml-cases", get(crate::aml::list_cases))
        .route("/v1/ops/freezes", post(freezes::create_freeze).get(freezes::list_freezes))
        .route("/v1/ops/reconciliation", get(freezes::get_reconciliation).post(freezes::run_reconciliation))
        .route(
            "/v1/ops/maintenance-windows",
            post(crate::maintenance::create_window).get(crate::maintenance::list_windows),
        )
        .route("/v1/ops/maintenance-windows/{id}/cancel", post(crate::maintenance::cancel_window))
        .route("/v1/status", get(crate::maintenance::status))
        .route("/v1/ops/audit", get(crate::audit::search))
        .route("/v1/ops/audit/inspection", get(crate::audit::inspection))
        .route("/v1/ops/key-access-log", get(crate::audit::key_access_log))
        .route("/v1/email-verifications", post(onboarding::verify_email))
        .route("/v1/email-verifications/resend", post(onboarding::resend_verification))
        .route("/v1/kyc", post(onboarding::submit_kyc).get(onboarding::kyc_status))
        .route("/v1/ops/kyc", get(onboarding::ops_list))
        .route("/v1/ops/kyc/{id}/review", post(onboarding::ops_review))
        .route("/v1/ops/kyc/{id}/decision", post(onboarding::ops_decide))
        // The web console's pages (#8), under the same audit, maintenance and metrics layers.
        .merge(crate::web::routes())
        // Every audited request is recorded before its handler runs (L2, L4–L6; fail closed with 503).
        .layer(axum::middleware::from_fn_with_state(
            crate::audit::AuditLayer::new(&state),
            crate::audit::record_request,
        ))
        .with_state(state)
        .merge(ops_metrics)
        .fallback(not_found)
        // S4: during an announced window every customer route answers 503 with the notice (ops, status and
        // metrics excepted).
        .layer(axum::middleware::from_fn_with_state(maintenance, crate::maintenance::gate))
        .layer(DefaultBodyLimit::max(extract::BODY_LIMIT_BYTES))
        .layer(axum::middleware::map_response(problem::ensure_problem_json))
        .layer(axum::middleware::from_fn_with_state(metrics, metrics::track))
}

async fn not_found() -> Problem {
    Problem::not_found()
}
