//! The web console (issue #8): HTML pages served by kinko itself, rendered on the server.
//!
//! Why server-rendered (docs/architecture.md, "Web console (#8)"): every page is a `maud` template
//! compiled into the binary, which escapes each interpolated value, so a hostile e-mail address or label
//! cannot become markup; forms POST and the server answers with the next page, so no page needs script and
//! the Content-Security-Policy forbids inline script and style outright. The handlers behind the pages call
//! the same functions as the JSON API (`crate::api`): one login path, one session table, one set of
//! checks; a refusal the API answers as problem+json is shown as a page that names the problem.
//!
//! What every page gets ([`routes`]):
//! - the security headers of [`security_headers`]: a strict CSP, `nosniff`, no referrer, no framing, and
//!   `Cache-Control: no-store` (pages show balances and addresses; nothing may stay in a shared cache);
//! - the session in an `HttpOnly; Secure; SameSite=Strict` cookie ([`SESSION_COOKIE`]) holding the same
//!   session token the API takes as a bearer token (only its sha256 is stored);
//! - CSRF protection on every POST, twice: [`check_origin`] refuses a cross-site request by
//!   `Sec-Fetch-Site` / `Origin` before any handler runs, and each form carries a synchronizer token
//!   ([`csrf_token`]) derived from the session cookie, compared in constant time. Forms used before a
//!   session exists (sign up, log in, e-mail verification) are bound the same way to a pre-session cookie
//!   ([`PRE_SESSION_COOKIE`]), so log-in CSRF is refused too.

pub mod credentials;
pub mod kyc;
pub mod mfa;
pub mod money;
pub mod ops;
pub mod ops_admin;
pub mod ops_keys;
pub mod pages;
pub mod portal;

use axum::Router;
use axum::extract::{FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;
use subtle::ConstantTimeEq;

use crate::AppState;
use crate::api::Problem;
use crate::api::auth::{Customer, SESSION_TOKEN_BYTES};

/// The Content-Security-Policy of every page: only kinko's own script and style files, images only from
/// kinko or inline `data:` (the deposit QR code), forms only to kinko, never framed.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     img-src 'self' data:; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";
/// The session cookie. `__Host-`: the browser accepts it only with `Secure`, `Path=/` and no `Domain`, so
/// a sibling host cannot plant or overwrite it. Chromium treats `http://127.0.0.1` and `http://localhost`
/// as secure contexts and keeps it there (checked by the browser test).
pub const SESSION_COOKIE: &str = "__Host-kinko-session";
/// A random value set before log-in so that the sign-up, log-in and verification forms carry a
/// synchronizer token too.
pub const PRE_SESSION_COOKIE: &str = "__Host-kinko-pre";
pub const PRE_SESSION_BYTES: usize = 32;
/// The pre-session cookie's lifetime: long enough to fill in a form.
pub const PRE_SESSION_MAX_AGE_SECS: i64 = 2 * 60 * 60;
/// The hidden form field that carries the synchronizer token.
pub const CSRF_FIELD: &str = "csrf";
/// The domain-separation label of the CSRF token's HMAC.
const CSRF_LABEL: &[u8] = b"kinko web console csrf v1";
/// Bound on the Cookie header's parsed pairs.
const COOKIE_PAIRS_MAX: usize = 64;

pub const STYLESHEET_PATH: &str = "/static/kinko.css";
const STYLESHEET: &str = include_str!("static/kinko.css");

/// The web console's routes. Merged into the API router (`crate::api::router_with_metrics`) so that the
/// audit layer records every POST before it runs, as for the API.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/", get(portal::home))
        .route("/signup", get(portal::signup_form).post(portal::signup))
        .route("/verify-email", get(portal::verify_email_form).post(portal::verify_email))
        .route("/login", get(portal::login_form).post(portal::login))
        .route("/login/second-factor", get(portal::second_factor_form).post(portal::second_factor))
        .route("/logout", post(portal::logout))
        .route("/portal", get(portal::dashboard))
        .route("/portal/deposit", get(portal::deposit_form).post(portal::deposit_address))
        .route(
            crate::api::withdrawal_confirmation::CONFIRM_PAGE_PATH,
            get(portal::confirm_withdrawal_form).post(portal::confirm_withdrawal),
        )
        // web::money (H8): history with live status, withdrawal, address book and wallet binding, logins.
        .route(money::HISTORY_PATH, get(money::history))
        .route(money::WITHDRAW_PATH, get(money::withdraw_form).post(money::withdraw))
        .route(money::ADDRESS_BOOK_PATH, get(money::address_book_view).post(money::add_entry))
        .route("/portal/address-book/{id}/delete", post(money::remove_entry))
        .route("/portal/wallet-binding/challenge", post(money::wallet_challenge))
        .route("/portal/wallet-binding", post(money::bind_wallet))
        .route(money::LOGINS_PATH, get(money::logins))
        .route("/portal/withdrawals/{id}/cancel", post(money::cancel_withdrawal))
        // web::mfa (H7): second factors — TOTP and passkey enrolment, passkey log-in, step-up.
        .route(mfa::SECURITY_PATH, get(mfa::security))
        .route("/portal/security/totp", post(mfa::start_totp))
        .route("/portal/security/totp/confirm", post(mfa::confirm_totp))
        .route("/portal/security/passkey", post(mfa::start_passkey))
        .route("/portal/security/passkey/finish", post(mfa::finish_passkey))
        .route("/login/second-factor/passkey", post(mfa::login_passkey_start))
        .route("/login/second-factor/passkey/finish", post(mfa::login_passkey_finish))
        .route(mfa::STEP_UP_PATH, get(mfa::step_up_form).post(mfa::step_up))
        .route("/portal/step-up/passkey", post(mfa::step_up_passkey_start))
        .route("/portal/step-up/passkey/finish", post(mfa::step_up_passkey_finish))
        .route(mfa::WEBAUTHN_JS_PATH, get(mfa::webauthn_js))
        // web::credentials (H-A): the transaction password and removing the authenticator app.
        .route(
            credentials::TRANSACTION_PASSWORD_PATH,
            get(credentials::transaction_password_form).post(credentials::set_transaction_password),
        )
        .route(credentials::REMOVE_TOTP_PATH, post(credentials::remove_totp))
        // web::kyc (H-C): the customer's identity verification — its state and the document submission.
        .route(kyc::KYC_PATH, get(kyc::kyc_page).post(kyc::submit))
        // web::ops (H9): the operator console — log-in, approval queue, decoded request, inspection, freezes,
        // reconciliation, audit trail.
        .route(ops::OPS_LOGIN_PATH, get(ops::login_form).post(ops::login))
        .route("/ops/logout", post(ops::logout))
        .route(ops::OPS_QUEUE_PATH, get(ops::queue))
        .route("/ops/requests/{id}", get(ops::request))
        .route("/ops/requests/{id}/decision", post(ops::decision))
        .route("/ops/requests/{id}/inspect", post(ops::inspect))
        .route(ops::OPS_INSPECTION_PATH, get(ops::inspection))
        .route(ops::OPS_FREEZES_PATH, get(ops::freezes).post(ops::freeze))
        .route(ops::OPS_RECONCILIATION_PATH, get(ops::reconciliation).post(ops::run_reconciliation))
        .route(ops::OPS_AUDIT_PATH, get(ops::audit))
        // web::ops_keys (H-B): key lifecycle actions, executing approved Table A-1 requests, the key access log.
        .route(ops_keys::OPS_KEYS_PATH, get(ops_keys::keys).post(ops_keys::request_key_action))
        .route("/ops/requests/{id}/execute", post(ops_keys::execute))
        .route(ops_keys::OPS_KEY_ACCESS_LOG_PATH, get(ops_keys::key_access_log))
        // web::ops_admin (H-D): the KYC queue (review, decision) and maintenance windows (announce, cancel).
        .route(ops_admin::OPS_KYC_PATH, get(ops_admin::kyc))
        .route("/ops/kyc/{id}/review", post(ops_admin::kyc_review))
        .route("/ops/kyc/{id}/decision", post(ops_admin::kyc_decision))
        .route(ops_admin::OPS_MAINTENANCE_PATH, get(ops_admin::maintenance).post(ops_admin::announce))
        .route("/ops/maintenance/{id}/cancel", post(ops_admin::cancel))
        .route(STYLESHEET_PATH, get(stylesheet))
        .layer(axum::middleware::from_fn(check_origin))
        .layer(axum::middleware::map_response(security_headers))
}

async fn stylesheet() -> Response {
    let mut resp = ([(header::CONTENT_TYPE, "text/css; charset=utf-8")], STYLESHEET).into_response();
    // Public and unchanging within one build; everything else is `no-store`.
    resp.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("public, max-age=3600"));
    resp
}

/// Adds the security headers to every web response (pages, redirects, errors, the stylesheet).
pub async fn security_headers(mut resp: Response) -> Response {
    let h = resp.headers_mut();
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CONTENT_SECURITY_POLICY));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert("cross-origin-opener-policy", HeaderValue::from_static("same-origin"));
    if !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    resp
}

/// The first CSRF line: a POST must come from a kinko page. `Sec-Fetch-Site` (sent by every current
/// browser; a page cannot set it) decides when present and must say `same-origin`. Only without it does
/// `Origin` decide, and it must name this host: with `Referrer-Policy: no-referrer` Chromium sends
/// `Origin: null` on a same-origin form POST, so `Origin` cannot be required alongside. A request with
/// neither header is refused: browsers send at least one on a form POST, so only non-browser clients lack
/// both, and those use the JSON API.
pub async fn check_origin(req: Request, next: Next) -> Response {
    if req.method() == Method::POST
        && let Err(problem) = same_origin(req.headers())
    {
        return pages::problem_page(&problem, None);
    }
    next.run(req).await
}

fn cross_site() -> Problem {
    Problem::new(StatusCode::FORBIDDEN, "cross-site-request", "cross-site request refused")
        .detail("this form was not sent from a kinko page; open the page again and resubmit")
}

pub fn same_origin(headers: &HeaderMap) -> Result<(), Problem> {
    let text = |name: header::HeaderName| headers.get(name).and_then(|v| v.to_str().ok());
    match text(header::HeaderName::from_static("sec-fetch-site")) {
        Some("same-origin") => Ok(()),
        Some(_) => Err(cross_site()),
        None => match (text(header::ORIGIN), text(header::HOST)) {
            (Some(origin), Some(host))
                if origin.strip_prefix("http://").or_else(|| origin.strip_prefix("https://")) == Some(host) =>
            {
                Ok(())
            }
            _ => Err(cross_site()),
        },
    }
}

/// The value of cookie `name`, if the request carries it.
pub fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .take(COOKIE_PAIRS_MAX)
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_string())
}

/// The session token in the request's session cookie, if it has the token's shape (lower-cased). The
/// audit layer names the customer behind a web request with it, as it does with a bearer token.
pub fn session_token(headers: &HeaderMap) -> Option<String> {
    cookie(headers, SESSION_COOKIE)
        .filter(|t| t.len() == SESSION_TOKEN_BYTES * 2 && t.bytes().all(|b| b.is_ascii_hexdigit()))
        .map(|t| t.to_ascii_lowercase())
}

/// The e-mail address a log-in form claims (`email=` of an `application/x-www-form-urlencoded` body), so
/// that a failed web log-in is attributable in the audit trail like an API one. Bounded; `None` when
/// absent or not UTF-8.
pub fn claimed_email(body: &[u8]) -> Option<String> {
    const EMAIL_FIELD_BYTES_MAX: usize = 3 * crate::api::auth::EMAIL_LEN_MAX;
    let body = std::str::from_utf8(body).ok()?;
    let raw = body.split('&').find_map(|pair| pair.strip_prefix("email="))?;
    if raw.len() > EMAIL_FIELD_BYTES_MAX {
        return None;
    }
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

/// `Set-Cookie` for a cookie only kinko's own pages send back: not readable by script, only over a
/// secure context, never on a cross-site request.
pub fn set_cookie(name: &str, value: &str, max_age_secs: i64) -> HeaderValue {
    let text = format!("{name}={value}; Path=/; HttpOnly; Secure; SameSite=Strict; Max-Age={}", max_age_secs.max(0));
    // Names are constants and values hex: always a valid header value.
    HeaderValue::from_str(&text).unwrap_or_else(|_| HeaderValue::from_static("invalid=; Max-Age=0"))
}

/// The synchronizer token of the session (or pre-session) whose cookie value is `secret`:
/// HMAC-SHA256(cookie value, label). The cookie is `HttpOnly`, so a page of another site can neither read
/// it nor compute the token; the token reveals nothing about the cookie.
pub fn csrf_token(secret: &str) -> String {
    let mut mac = match Hmac::<Sha256>::new_from_slice(secret.as_bytes()) {
        Ok(m) => m,
        // HMAC takes keys of any length.
        Err(_) => return String::new(),
    };
    mac.update(CSRF_LABEL);
    hex::encode(mac.finalize().into_bytes())
}

fn csrf_refused() -> Problem {
    Problem::new(StatusCode::FORBIDDEN, "csrf-token-invalid", "form expired or not from this session")
        .detail("the form's security token does not match your session; open the page again and resubmit")
}

/// The second CSRF line: the form's token equals the one derived from the cookie, compared in constant
/// time. An empty secret (no cookie) never matches.
pub fn check_csrf(secret: Option<&str>, submitted: &str) -> Result<(), Problem> {
    let Some(secret) = secret.filter(|s| !s.is_empty()) else { return Err(csrf_refused()) };
    let expected = csrf_token(secret);
    if !expected.is_empty() && bool::from(expected.as_bytes().ct_eq(submitted.as_bytes())) {
        Ok(())
    } else {
        Err(csrf_refused())
    }
}

/// A visitor before log-in: the pre-session secret their forms are bound to, and the `Set-Cookie` that
/// creates it on their first page.
pub struct Visitor {
    pub secret: String,
    pub new_cookie: Option<HeaderValue>,
}

impl Visitor {
    pub fn csrf(&self) -> String {
        csrf_token(&self.secret)
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Visitor {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Visitor, Self::Rejection> {
        let existing = cookie(&parts.headers, PRE_SESSION_COOKIE)
            .filter(|v| v.len() == PRE_SESSION_BYTES * 2 && v.bytes().all(|b| b.is_ascii_hexdigit()));
        Ok(match existing {
            Some(secret) => Visitor { secret, new_cookie: None },
            None => {
                let mut raw = [0u8; PRE_SESSION_BYTES];
                rand::rngs::OsRng.fill_bytes(&mut raw);
                let secret = hex::encode(raw);
                let new_cookie = Some(set_cookie(PRE_SESSION_COOKIE, &secret, PRE_SESSION_MAX_AGE_SECS));
                Visitor { secret, new_cookie }
            }
        })
    }
}

/// A signed-in customer as the web console sees them: the API's [`Customer`] (looked up by
/// [`Customer::from_token`], the API's own path) and the token, which the CSRF check derives from.
/// A customer with a second factor must have proven it on this session before any portal page opens.
pub struct WebSession {
    pub customer: Customer,
    token: String,
}

impl WebSession {
    pub fn csrf(&self) -> String {
        csrf_token(&self.token)
    }

    pub fn check_csrf(&self, submitted: &str) -> Result<(), Problem> {
        check_csrf(Some(&self.token), submitted)
    }

    pub(crate) fn token(&self) -> &str {
        &self.token
    }
}

/// The session before its second factor: only the second-factor page and log-out accept it.
pub struct PendingSession(pub WebSession);

async fn session_from_parts(parts: &Parts, state: &AppState) -> Result<WebSession, Response> {
    let to_login = || Redirect::to("/login").into_response();
    let token = session_token(&parts.headers).ok_or_else(to_login)?;
    match Customer::from_token(state, &token).await {
        Ok(customer) => Ok(WebSession { customer, token }),
        Err(p) if p.status == StatusCode::UNAUTHORIZED => Err(to_login()),
        Err(p) => Err(pages::problem_page(&p, None)),
    }
}

impl FromRequestParts<AppState> for PendingSession {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<PendingSession, Response> {
        session_from_parts(parts, state).await.map(PendingSession)
    }
}

impl FromRequestParts<AppState> for WebSession {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<WebSession, Response> {
        let session = session_from_parts(parts, state).await?;
        // `stepped_up_until_ms` is 0 until a factor is proven on this session (it then only moves on).
        if session.customer.stepped_up_until_ms == 0 {
            match crate::api::mfa::has_second_factor(state, &session.customer.id).await {
                Ok(false) => {}
                Ok(true) => return Err(Redirect::to("/login/second-factor").into_response()),
                Err(p) => return Err(pages::problem_page(&p, None)),
            }
        }
        Ok(session)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_static(v));
        }
        h
    }

    /// M1: a POST from another site is refused whichever header tells it; a same-origin one passes.
    #[test]
    fn m1_cross_site_posts_are_refused() {
        let same = headers(&[("sec-fetch-site", "same-origin"), ("origin", "http://k:1"), ("host", "k:1")]);
        assert!(same_origin(&same).is_ok());
        assert!(same_origin(&headers(&[("origin", "http://k:1"), ("host", "k:1")])).is_ok());
        assert!(same_origin(&headers(&[("sec-fetch-site", "same-origin"), ("host", "k:1")])).is_ok());
        // Chromium's same-origin form POST under `Referrer-Policy: no-referrer`.
        assert!(
            same_origin(&headers(&[("sec-fetch-site", "same-origin"), ("origin", "null"), ("host", "k:1")])).is_ok()
        );
        for bad in [
            headers(&[("sec-fetch-site", "cross-site"), ("origin", "http://k:1"), ("host", "k:1")]),
            headers(&[("sec-fetch-site", "cross-site"), ("origin", "null"), ("host", "k:1")]),
            headers(&[("sec-fetch-site", "same-site"), ("host", "k:1")]),
            headers(&[("sec-fetch-site", "none"), ("host", "k:1")]),
            headers(&[("origin", "http://evil.example"), ("host", "k:1")]),
            headers(&[("origin", "null"), ("host", "k:1")]),
            headers(&[("origin", "http://k:1.evil"), ("host", "k:1")]),
            headers(&[("host", "k:1")]),
        ] {
            assert_eq!(same_origin(&bad).unwrap_err().body.kind, "urn:kinko:problem:cross-site-request", "{bad:?}");
        }
    }

    /// M1: the synchronizer token matches only its own session's cookie; no cookie never matches.
    #[test]
    fn m1_csrf_token_is_bound_to_the_session() {
        let a = "a".repeat(64);
        let b = "b".repeat(64);
        let token = csrf_token(&a);
        assert_eq!(token.len(), 64);
        assert!(check_csrf(Some(&a), &token).is_ok());
        assert!(check_csrf(Some(&b), &token).is_err());
        assert!(check_csrf(Some(&a), "").is_err());
        assert!(check_csrf(Some(&a), &token[..63]).is_err());
        assert!(check_csrf(None, &csrf_token("")).is_err());
        assert!(check_csrf(Some(""), &csrf_token("")).is_err());
    }

    #[test]
    fn l5_web_login_claims_are_decoded() {
        assert_eq!(claimed_email(b"csrf=x&email=alice%40example.com&password=p").as_deref(), Some("alice@example.com"));
        assert_eq!(claimed_email(b"email=a+b").as_deref(), Some("a b"));
        assert_eq!(claimed_email(b"email=%4"), Some("%4".to_string()));
        assert_eq!(claimed_email(b"password=p"), None);
        assert_eq!(claimed_email(b"email=%zz"), None);
    }

    #[test]
    fn m1_cookies_are_parsed_and_set_strictly() {
        let h = headers(&[("cookie", "x=1; __Host-kinko-session=abc ; y=2"), ("cookie", "z=3")]);
        assert_eq!(cookie(&h, SESSION_COOKIE).as_deref(), Some("abc"));
        assert_eq!(cookie(&h, "z").as_deref(), Some("3"));
        assert_eq!(cookie(&h, "missing"), None);
        let set = set_cookie(SESSION_COOKIE, "abc", 60);
        let set = set.to_str().unwrap();
        for part in ["HttpOnly", "Secure", "SameSite=Strict", "Path=/", "Max-Age=60"] {
            assert!(set.contains(part), "{set}");
        }
        assert!(!set.contains("Domain"), "{set}");
    }
}
