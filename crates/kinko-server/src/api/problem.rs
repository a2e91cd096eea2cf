//! RFC 9457 problem details: every error the API returns is `application/problem+json` with a stable
//! `type`, a short `title`, the HTTP `status`, an optional `detail` and, for input errors, the fields at
//! fault. Internal errors are logged here and answered with a generic 500, so database text, stack
//! details or secrets never reach a client.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

pub const PROBLEM_CONTENT_TYPE: &str = "application/problem+json";
/// Bound on field errors one response lists; a 64 KiB body can hold thousands of bad keys.
pub const FIELD_ERRORS_MAX: usize = 16;

/// One input field and what is wrong with it. `field` names a JSON member, or a header such as
/// `Idempotency-Key`; `reason` never repeats the submitted value.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, ToSchema)]
pub struct FieldError {
    pub field: String,
    pub reason: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        FieldError { field: field.into(), reason: reason.into() }
    }
}

/// The problem+json body (RFC 9457).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, ToSchema)]
pub struct ProblemBody {
    /// A URI naming the problem type, e.g. `urn:kinko:problem:validation`.
    #[serde(rename = "type")]
    #[schema(rename = "type")]
    pub kind: String,
    pub title: String,
    pub status: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<FieldError>,
}

/// An error response. Build it with the named constructors so equal problems look equal everywhere.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    pub status: StatusCode,
    pub body: ProblemBody,
    /// Sent as `WWW-Authenticate` on 401 (RFC 6750).
    www_authenticate: bool,
}

impl Problem {
    pub fn new(status: StatusCode, slug: &str, title: &str) -> Problem {
        Problem {
            status,
            body: ProblemBody {
                kind: format!("urn:kinko:problem:{slug}"),
                title: title.to_string(),
                status: status.as_u16(),
                detail: None,
                errors: Vec::new(),
            },
            www_authenticate: false,
        }
    }

    pub fn detail(mut self, detail: impl Into<String>) -> Problem {
        self.body.detail = Some(detail.into());
        self
    }

    pub fn errors(mut self, mut errors: Vec<FieldError>) -> Problem {
        errors.truncate(FIELD_ERRORS_MAX);
        self.body.errors = errors;
        self
    }

    /// 422: the request is well-formed JSON but fields are invalid.
    pub fn validation(errors: Vec<FieldError>) -> Problem {
        Problem::new(StatusCode::UNPROCESSABLE_ENTITY, "validation", "invalid request fields").errors(errors)
    }

    pub fn field(status: StatusCode, slug: &str, title: &str, field: &str, reason: &str) -> Problem {
        Problem::new(status, slug, title).errors(vec![FieldError::new(field, reason)])
    }

    pub fn unauthorized(detail: &str) -> Problem {
        let mut p = Problem::new(StatusCode::UNAUTHORIZED, "unauthorized", "authentication required").detail(detail);
        p.www_authenticate = true;
        p
    }

    pub fn not_found() -> Problem {
        Problem::new(StatusCode::NOT_FOUND, "not-found", "not found")
    }

    /// Logs the cause (server side only) and answers with a generic 500.
    pub fn internal(cause: impl std::fmt::Display) -> Problem {
        tracing::error!(error = %cause, "internal error while handling an API request");
        Problem::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "internal error")
            .detail("the server could not complete the request; it has been logged")
    }

    /// A generic problem for a status that some layer produced without a body we control.
    pub fn from_status(status: StatusCode) -> Problem {
        let title = status.canonical_reason().unwrap_or("error").to_ascii_lowercase();
        let slug = title.replace(' ', "-");
        Problem::new(status, &slug, &title)
    }
}

impl From<kinko_store::StoreError> for Problem {
    fn from(e: kinko_store::StoreError) -> Problem {
        Problem::internal(e)
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let body = serde_json::to_vec(&self.body).unwrap_or_else(|_| b"{}".to_vec());
        let mut resp = (self.status, body).into_response();
        resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_CONTENT_TYPE));
        if self.www_authenticate {
            resp.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        resp
    }
}

/// Last line of defence: any error response some layer produced in another format (axum's plain-text
/// rejections, 405 from the router, a panic-free tower error) is rewritten as problem+json, keeping
/// only the status and the `Allow` header.
pub async fn ensure_problem_json(resp: Response) -> Response {
    let status = resp.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return resp;
    }
    let is_problem = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with(PROBLEM_CONTENT_TYPE));
    // The web console's pages (crate::web) answer errors as HTML pages that name the problem.
    let is_html = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/html"));
    if is_problem || is_html {
        return resp;
    }
    let allow = resp.headers().get(header::ALLOW).cloned();
    let mut out = Problem::from_status(status).into_response();
    if let Some(allow) = allow {
        out.headers_mut().insert(header::ALLOW, allow);
    }
    out
}
