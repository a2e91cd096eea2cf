//! Maintenance windows and the public status (S4).
//!
//! Operations managers and administrators announce a window ahead (`POST /v1/ops/maintenance-windows`);
//! customers see it at `GET /v1/status` before it starts. While a window is in force every customer API route
//! answers 503 problem+json carrying the notice and `Retry-After` (the [`gate`] middleware); the ops API,
//! `/v1/status`, `/metrics`, `/healthz`, `/readyz` and `/openapi.json` keep working, so operators can do the
//! maintenance, watch it, and cancel or shorten it. The web console's customer pages answer an HTML page with
//! the same notice (`web::pages::maintenance_page`); the operators' console (`/ops`) keeps working.
//!
//! `GET /v1/status` needs no authentication and answers 200 whatever else fails: a part it cannot read is
//! `null` ("unknown"). It tells customers about windows, halted withdrawals (node monitor, C6, C10), the
//! signer's seal and emergency freezes — whether each holds, not the internals (reasons stay in the ops
//! events).

use axum::Json;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use kinko_store::monitoring::MaintenanceWindowRow;
use kinko_store::ops_requests::NewOpsEvent;
use kinko_store::{Store, StoreError};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::AppState;
use crate::api::ops_auth::{Operator, OpsJson};
use crate::api::ops_requests::require_endpoint;
use crate::api::problem::{FieldError, Problem, ProblemBody};
use crate::clock::now_ms;

/// Bound on a window's notice (characters).
pub const MESSAGE_LEN_MAX: usize = 500;
/// Bound on a window's length: longer work is announced as several windows.
pub const WINDOW_LEN_MAX_MS: i64 = 7 * 24 * 3_600_000;
/// How far ahead a window may be announced.
pub const ANNOUNCE_AHEAD_MAX_MS: i64 = 366 * 24 * 3_600_000;
/// A window may start this little in the past (clock skew between the operator's tool and the server).
pub const START_SLACK_MS: i64 = 60_000;
/// `Retry-After` when the maintenance state itself cannot be read.
pub const UNKNOWN_RETRY_AFTER_SECS: u64 = 5;

/// Paths that keep answering during a window: the operators' API and console (they do the maintenance),
/// the console's stylesheet and script, and the public status and probes.
fn exempt(path: &str) -> bool {
    path == "/v1/ops"
        || path.starts_with("/v1/ops/")
        || path == "/ops"
        || path.starts_with("/ops/")
        || path.starts_with("/static/")
        || matches!(path, "/v1/status" | "/metrics" | "/healthz" | "/readyz" | "/openapi.json")
}

/// Whether the path is one of the web console's pages rather than the JSON API: those answer a window with
/// an HTML page carrying the notice (issue #8: never a blank page or raw JSON in the browser).
fn is_page(path: &str) -> bool {
    !(path.starts_with("/v1/") || path == "/v1")
}

/// Middleware: during a window, every customer route answers 503 with the notice and `Retry-After` (the
/// seconds until the window ends). If the windows cannot be read the answer is 503 too (fail closed: a
/// customer action during an unannounced-but-maybe-running maintenance is the worse outcome).
pub async fn gate(State(store): State<Store>, req: Request, next: Next) -> Response {
    let path = req.uri().path();
    if exempt(path) {
        return next.run(req).await;
    }
    let page = is_page(path);
    let now = now_ms();
    match store.current_maintenance_window(now).await {
        Ok(None) => next.run(req).await,
        Ok(Some(w)) => {
            let retry_after_secs = u64::try_from(w.ends_at_ms.saturating_sub(now)).unwrap_or(0).div_ceil(1_000).max(1);
            if page {
                return crate::web::pages::maintenance_page(Some((&w.message, w.ends_at_ms)), retry_after_secs).await;
            }
            let body = serde_json::json!({
                "type": "urn:kinko:problem:maintenance",
                "title": "maintenance in progress",
                "status": 503,
                "detail": w.message,
                "maintenance": WindowView::from(w),
            });
            unavailable(body, retry_after_secs)
        }
        Err(e) => {
            tracing::warn!(error = %e, "maintenance state unavailable; refusing customer requests");
            if page {
                return crate::web::pages::maintenance_page(None, UNKNOWN_RETRY_AFTER_SECS).await;
            }
            let body = serde_json::json!({
                "type": "urn:kinko:problem:status-unavailable",
                "title": "service status unavailable",
                "status": 503,
                "detail": "the service cannot tell whether maintenance is in progress; try again shortly",
            });
            unavailable(body, UNKNOWN_RETRY_AFTER_SECS)
        }
    }
}

fn unavailable(body: serde_json::Value, retry_after_secs: u64) -> Response {
    let mut resp = (StatusCode::SERVICE_UNAVAILABLE, body.to_string()).into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(crate::api::problem::PROBLEM_CONTENT_TYPE));
    h.insert(header::RETRY_AFTER, HeaderValue::from(retry_after_secs));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// A maintenance window.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema, PartialEq)]
pub struct WindowView {
    pub id: String,
    pub starts_at_ms: i64,
    pub ends_at_ms: i64,
    pub message: String,
    /// Set on the ops API only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub created_by: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cancelled_at_ms: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cancelled_by: Option<String>,
}

impl From<MaintenanceWindowRow> for WindowView {
    /// The public view: no operator names.
    fn from(w: MaintenanceWindowRow) -> WindowView {
        WindowView {
            id: w.id,
            starts_at_ms: w.starts_at_ms,
            ends_at_ms: w.ends_at_ms,
            message: w.message,
            created_by: None,
            cancelled_at_ms: w.cancelled_at_ms,
            cancelled_by: None,
        }
    }
}

fn ops_view(w: MaintenanceWindowRow) -> WindowView {
    WindowView { created_by: Some(w.created_by.clone()), cancelled_by: w.cancelled_by.clone(), ..WindowView::from(w) }
}

/// `POST /v1/ops/maintenance-windows`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewWindow {
    pub starts_at_ms: i64,
    pub ends_at_ms: i64,
    /// The notice customers see (1 to 500 characters, one paragraph).
    pub message: String,
}

fn validate(w: &NewWindow, now: i64) -> Result<(), Problem> {
    let mut errors = Vec::new();
    if w.starts_at_ms < now - START_SLACK_MS {
        errors.push(FieldError::new("starts_at_ms", "must not be in the past"));
    }
    if w.starts_at_ms > now.saturating_add(ANNOUNCE_AHEAD_MAX_MS) {
        errors.push(FieldError::new("starts_at_ms", "must be within a year"));
    }
    if w.ends_at_ms <= w.starts_at_ms {
        errors.push(FieldError::new("ends_at_ms", "must be after starts_at_ms"));
    } else if w.ends_at_ms.saturating_sub(w.starts_at_ms) > WINDOW_LEN_MAX_MS {
        errors.push(FieldError::new("ends_at_ms", "a window lasts at most 7 days"));
    }
    let message = w.message.trim();
    if message.is_empty() || w.message.chars().count() > MESSAGE_LEN_MAX {
        errors.push(FieldError::new("message", "must be 1 to 500 characters"));
    } else if w.message.chars().any(|c| c.is_control() && c != '\n') {
        errors.push(FieldError::new("message", "must not hold control characters"));
    }
    if errors.is_empty() { Ok(()) } else { Err(Problem::validation(errors)) }
}

fn event(op: &Operator, event: &str, w: &MaintenanceWindowRow, at_ms: i64) -> NewOpsEvent {
    NewOpsEvent {
        operator_id: op.id.clone(),
        terminal: op.terminal.clone(),
        event: event.into(),
        request_id: None,
        detail_json: serde_json::json!({
            "window_id": w.id,
            "starts_at_ms": w.starts_at_ms,
            "ends_at_ms": w.ends_at_ms,
            "message": w.message,
        })
        .to_string(),
        at_ms,
    }
}

/// Announces a maintenance window (S4). It appears at `/v1/status` at once; while it is in force the
/// customer API answers 503.
#[utoipa::path(
    post, path = "/v1/ops/maintenance-windows", tag = "operators", security(("bearer" = [])), request_body = NewWindow,
    responses(
        (status = 201, body = WindowView),
        (status = 401, description = "no valid operator session", body = ProblemBody, content_type = "application/problem+json"),
        (status = 403, description = "role not allowed", body = ProblemBody, content_type = "application/problem+json"),
        (status = 409, description = "too many windows announced", body = ProblemBody, content_type = "application/problem+json"),
        (status = 422, description = "invalid times or message", body = ProblemBody, content_type = "application/problem+json"),
    )
)]
pub async fn create_window(
    State(state): State<AppState>,
    op: Operator,
    OpsJson(body): OpsJson<NewWindow>,
) -> Result<(StatusCode, Json<WindowView>), Problem> {
    require_endpoint(&op, "post", "/v1/ops/maintenance-windows")?;
    let now = now_ms();
    validate(&body, now)?;
    let row = MaintenanceWindowRow {
        id: uuid::Uuid::now_v7().to_string(),
        starts_at_ms: body.starts_at_ms,
        ends_at_ms: body.ends_at_ms,
        message: body.message.trim().to_string(),
        created_by: op.id.clone(),
        created_at_ms: now,
        cancelled_by: None,
        cancelled_at_ms: None,
    };
    match state.store.insert_maintenance_window(&row, &event(&op, "maintenance_announced", &row, now)).await {
        Ok(()) => Ok((StatusCode::CREATED, Json(ops_view(row)))),
        Err(StoreError::Conflict(reason)) => {
            Err(Problem::new(StatusCode::CONFLICT, "too-many-windows", "too many windows").detail(reason))
        }
        Err(e) => Err(e.into()),
    }
}

/// Every maintenance window, newest first (cancelled and past ones included).
#[utoipa::path(
    get, path = "/v1/ops/maintenance-windows", tag = "operators", security(("bearer" = [])),
    responses(
        (status = 200, body = [WindowView]),
        (status = 401, description = "no valid operator session", body = ProblemBody, content_type = "application/problem+json"),
        (status = 403, description = "role not allowed", body = ProblemBody, content_type = "application/problem+json"),
    )
)]
pub async fn list_windows(State(state): State<AppState>, op: Operator) -> Result<Json<Vec<WindowView>>, Problem> {
    require_endpoint(&op, "get", "/v1/ops/maintenance-windows")?;
    Ok(Json(state.store.maintenance_windows().await?.into_iter().map(ops_view).collect()))
}

/// Cancels a window that has not ended (one in force ends at once).
#[utoipa::path(
    post, path = "/v1/ops/maintenance-windows/{id}/cancel", tag = "operators", security(("bearer" = [])),
    params(("id" = String, Path, description = "window id")),
    responses(
        (status = 200, body = WindowView),
        (status = 401, description = "no valid operator session", body = ProblemBody, content_type = "application/problem+json"),
        (status = 403, description = "role not allowed", body = ProblemBody, content_type = "application/problem+json"),
        (status = 404, description = "no such window", body = ProblemBody, content_type = "application/problem+json"),
        (status = 409, description = "already cancelled or over", body = ProblemBody, content_type = "application/problem+json"),
    )
)]
pub async fn cancel_window(
    State(state): State<AppState>,
    op: Operator,
    Path(id): Path<String>,
) -> Result<Json<WindowView>, Problem> {
    require_endpoint(&op, "post", "/v1/ops/maintenance-windows/{id}/cancel")?;
    let now = now_ms();
    // The event names the window by id; its times and message are in the announcement's event.
    let e = NewOpsEvent {
        operator_id: op.id.clone(),
        terminal: op.terminal.clone(),
        event: "maintenance_cancelled".into(),
        request_id: None,
        detail_json: serde_json::json!({ "window_id": id }).to_string(),
        at_ms: now,
    };
    match state.store.cancel_maintenance_window(&id, &op.id, now, &e).await {
        Ok(w) => Ok(Json(ops_view(w))),
        Err(StoreError::NotFound) => Err(Problem::not_found()),
        Err(StoreError::Conflict(reason)) => {
            Err(Problem::new(StatusCode::CONFLICT, "window-closed", "window not open").detail(reason))
        }
        Err(e) => Err(e.into()),
    }
}

/// The public status (S4).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Status {
    pub now_ms: i64,
    /// The window in force, if any (customer routes answer 503 meanwhile).
    pub maintenance: Option<WindowView>,
    /// Windows announced that have not ended, soonest first (the current one included).
    pub announced: Vec<WindowView>,
    /// Withdrawals are halted because the chain's nodes are unhealthy or unchecked (C6, C10); `null`:
    /// unknown.
    pub withdrawals_halted: Option<bool>,
    pub halted_since_ms: Option<i64>,
    /// The signer is sealed or unreachable: nothing can be signed; `null`: unknown.
    pub sealed: Option<bool>,
    /// An emergency freeze is in force (K19, S5); `null`: unknown.
    pub frozen: Option<bool>,
}

/// Service status: maintenance windows, halted withdrawals, seal and freeze. No authentication; always 200.
#[utoipa::path(get, path = "/v1/status", tag = "operations", responses((status = 200, body = Status)))]
pub async fn status(State(state): State<AppState>) -> Response {
    let now = now_ms();
    let store = &state.store;
    let nodes = crate::node_monitor::nodes_component(crate::app::ETH_CHAIN);
    let (announced, halted, sealed, frozen) = tokio::join!(
        store.upcoming_maintenance_windows(now),
        store.health_check(&nodes),
        store.health_check(crate::node_monitor::SIGNER_COMPONENT),
        store.active_freezes(),
    );
    let announced: Vec<WindowView> = match announced {
        Ok(rows) => rows.into_iter().map(WindowView::from).collect(),
        Err(e) => {
            tracing::warn!(error = %e, "status: windows unavailable");
            Vec::new()
        }
    };
    let maintenance = announced.iter().find(|w| w.starts_at_ms <= now && now < w.ends_at_ms).cloned();
    let (withdrawals_halted, halted_since_ms) = match halted {
        Ok(v) => {
            let proceed = kinko_core::node_health::withdrawals_may_proceed(
                v.as_ref().map(|v| (v.healthy, v.valid_until_ms)),
                now,
            );
            (Some(!proceed), v.filter(|v| !v.healthy).map(|v| v.since_ms))
        }
        Err(_) => (None, None),
    };
    let sealed = match sealed {
        Ok(Some(v)) => Some(!v.healthy || now >= v.valid_until_ms),
        Ok(None) | Err(_) => None,
    };
    let frozen = frozen.ok().map(|f| !f.is_empty());
    let mut resp =
        Json(Status { now_ms: now, maintenance, announced, withdrawals_halted, halted_since_ms, sealed, frozen })
            .into_response();
    resp.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}
