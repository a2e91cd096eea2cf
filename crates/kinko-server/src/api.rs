//! The customer interface (M1) over HTTP: registration and login (M2, M3), deposit addresses, balances,
//! deposits, withdrawal instructions (M13, A3), plus health, readiness, metrics and the OpenAPI 3.1
//! document. Errors are RFC 9457 problem+json everywhere, including for unknown routes, wrong methods,
//! oversized bodies and malformed JSON.
//!
//! Mount with [`router`] (its own metrics registry) or [`router_with_metrics`] (a registry the binary
//! also installs globally).

pub mod accounts;
pub mod assets;
pub mod auth;
pub mod extract;
pub mod metrics;
pub mod openapi;
pub mod ops;
pub mod problem;
pub mod withdrawals;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};

use crate::AppState;
pub use metrics::Metrics;
pub use problem::Problem;

/// Every route the router serves, as (method, path template); the OpenAPI test checks the document
/// lists each of them.
pub const ROUTES: &[(&str, &str)] = &[
    ("post", "/v1/customers"),
    ("post", "/v1/sessions"),
    ("post", "/v1/deposit-addresses"),
    ("get", "/v1/balances"),
    ("get", "/v1/deposits"),
    ("get", "/v1/deposits/{id}"),
    ("post", "/v1/withdrawals"),
    ("get", "/v1/withdrawals"),
    ("get", "/v1/withdrawals/{id}"),
    ("get", "/healthz"),
    ("get", "/readyz"),
    ("get", "/metrics"),
    ("get", "/openapi.json"),
];

pub fn router(state: AppState) -> Router {
    router_with_metrics(state, Metrics::new())
}

pub fn router_with_metrics(state: AppState, metrics: Metrics) -> Router {
    // Pay for the dummy hash now rather than in the first unknown-e-mail login, whose extra latency
    // would otherwise tell that the address is not registered.
    let _ = auth::dummy_hash();
    let ops_metrics = Router::new().route("/metrics", get(ops::metrics)).with_state(metrics.clone());
    Router::new()
        .route("/v1/customers", post(auth::create_customer))
        .route("/v1/sessions", post(auth::create_session))
        .route("/v1/deposit-addresses", post(accounts::deposit_address))
        .route("/v1/balances", get(accounts::balances))
        .route("/v1/deposits", get(accounts::list_deposits))
        .route("/v1/deposits/{id}", get(accounts::get_deposit))
        .route("/v1/withdrawals", post(withdrawals::create_withdrawal).get(withdrawals::list_withdrawals))
        .route("/v1/withdrawals/{id}", get(withdrawals::get_withdrawal))
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .route("/openapi.json", get(ops::openapi))
        .with_state(state)
        .merge(ops_metrics)
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(extract::BODY_LIMIT_BYTES))
        .layer(axum::middleware::map_response(problem::ensure_problem_json))
        .layer(axum::middleware::from_fn_with_state(metrics, metrics::track))
}

async fn not_found() -> Problem {
    Problem::not_found()
}
