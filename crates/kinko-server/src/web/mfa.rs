//! The customer's second factors in the web console (U2, U3, U4): TOTP enrolment with its QR code and
//! recovery codes, passkey (WebAuthn) enrolment, passkey log-in as the second factor, and the step-up page
//! other pages send a customer to before a change.
//!
//! As everywhere in the console, each handler checks the form's CSRF token and then calls the JSON API's
//! own handler ([`crate::api::mfa`]): re-authentication with the password, the step-up rule, single-use
//! codes, throttling and the WebAuthn ceremony state all stay there. The pages add presentation only.
//!
//! WebAuthn needs script: `navigator.credentials.create()` / `.get()` exist only in the browser. The one
//! script, `/static/webauthn.js` ([`WEBAUTHN_JS_PATH`]), is loaded only by the two ceremony pages. The
//! server puts the options the API's `…/start` handler answered into a `data-` attribute (the CSP forbids
//! inline script, and a `data-` attribute is inert), the script passes them to the browser, and posts the
//! authenticator's answer back through the page's ordinary form, with its CSRF token, to the API's
//! `…/finish` handler. Without script the form posts no answer and the page names that problem.

use axum::Form;
use axum::Json;
use axum::extract::rejection::FormRejection;
use axum::extract::{Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use maud::{Markup, html};
use serde::Deserialize;
use webauthn_rs::prelude::{PublicKeyCredential, RegisterPublicKeyCredential};

use super::pages::{Nav, code_fields, csrf_field, layout, problem_page, problem_summary, respond, utc};
use super::portal::{form, qr_data_uri};
use super::{PendingSession, WebSession};
use crate::AppState;
use crate::api::Problem;
use crate::api::auth::Customer;
use crate::api::extract::ApiJson;
use crate::api::mfa::{self, Reauthentication, StepUpBody, TotpConfirmation};
use crate::api::ops_auth::OpsJson;
use crate::api::problem::FieldError;

pub const WEBAUTHN_JS_PATH: &str = "/static/webauthn.js";
const WEBAUTHN_JS: &str = include_str!("static/webauthn.js");
/// The security page: factors, and the forms that add them.
pub const SECURITY_PATH: &str = "/portal/security";
/// The step-up page (`?next=/portal/…` names the page to return to).
pub const STEP_UP_PATH: &str = "/portal/step-up";
/// Bound on the `next` path a step-up returns to.
const NEXT_LEN_MAX: usize = 256;
/// The TOTP QR code's side in pixels.
const QR_SIZE_PX: u32 = 240;

/// `/static/webauthn.js`, with a JavaScript content type (the CSP's `script-src 'self'` and `nosniff`
/// together require it).
pub async fn webauthn_js() -> Response {
    let mut resp = ([(header::CONTENT_TYPE, "text/javascript; charset=utf-8")], WEBAUTHN_JS).into_response();
    resp.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("public, max-age=3600"));
    resp
}

/// Where a step-up returns to: a portal path only (never another site, never `//host`), else `/portal`.
pub fn safe_next(next: Option<&str>) -> String {
    match next {
        Some(n)
            if n.len() <= NEXT_LEN_MAX
                && (n == "/portal" || n.starts_with("/portal/") || n.starts_with("/portal?"))
                && !n.contains("//")
                && n.bytes().all(|b| b.is_ascii_graphic() && b != b'\\') =>
        {
            n.to_string()
        }
        _ => "/portal".to_string(),
    }
}

pub(super) fn step_up_link(next: &str) -> String {
    // `next` passed `safe_next`: printable ASCII without spaces; only `&`, `?`, `#`, `%` and `+` need escaping.
    let mut q = String::with_capacity(next.len());
    for c in next.chars() {
        match c {
            '&' | '?' | '#' | '%' | '+' | '=' => q.push_str(&format!("%{:02X}", c as u32)),
            c => q.push(c),
        }
    }
    format!("{STEP_UP_PATH}?next={q}")
}

async fn has_passkeys(state: &AppState, customer_id: &str) -> Result<bool, Problem> {
    Ok(!state.store.passkeys(customer_id).await?.is_empty())
}

// ---------------------------------------------------------------------------------------------------
// The WebAuthn ceremony page, shared by enrolment, log-in and step-up.

#[derive(Clone, Copy, PartialEq)]
enum Ceremony {
    /// `navigator.credentials.create()`: a new passkey.
    Create,
    /// `navigator.credentials.get()`: prove a registered passkey.
    Get,
}

/// The page that runs one ceremony: the API's options in `data-webauthn-options`, and the form the
/// script fills with the authenticator's answer and submits to `finish`.
fn ceremony_page(
    title: &str,
    nav: Nav<'_>,
    csrf: &str,
    ceremony: Ceremony,
    options: &serde_json::Value,
    finish: &str,
    next: Option<&str>,
) -> Markup {
    let kind = if ceremony == Ceremony::Create { "create" } else { "get" };
    let button = if ceremony == Ceremony::Create { "Create the passkey" } else { "Use your passkey" };
    let body = html! {
        h1 { (title) }
        p { @if ceremony == Ceremony::Create {
                "Your browser will ask where to keep the new passkey: this device, a security key or your phone."
            } @else {
                "Your browser will ask for the passkey you registered with kinko."
            } }
        div id="webauthn-status" class="problem" role="alert" hidden {}
        form id="webauthn-form" method="post" action=(finish) data-webauthn=(kind)
            data-webauthn-options=(options.to_string()) {
            (csrf_field(csrf))
            input type="hidden" id="credential" name="credential" value="";
            @if let Some(n) = next { input type="hidden" name="next" value=(n); }
            button type="submit" id="webauthn-button" { (button) }
        }
        noscript { p { "Passkeys need JavaScript: your browser talks to the authenticator through it." } }
        script src=(WEBAUTHN_JS_PATH) defer {}
    };
    layout(title, nav, body)
}

#[derive(Deserialize)]
pub struct CredentialForm {
    csrf: String,
    #[serde(default)]
    credential: String,
    #[serde(default)]
    next: Option<String>,
}

/// The authenticator's answer the script put into the form, as the API's finish handler takes it.
fn credential<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, Problem> {
    if text.trim().is_empty() {
        return Err(Problem::validation(vec![FieldError::new(
            "credential",
            "is missing: the browser gave no passkey answer (is JavaScript on, and was the prompt completed?)",
        )]));
    }
    serde_json::from_str(text).map_err(|_| {
        Problem::validation(vec![FieldError::new("credential", "is not a WebAuthn answer kinko can read")])
    })
}

// ---------------------------------------------------------------------------------------------------
// The security page and TOTP enrolment.

#[derive(Deserialize)]
pub struct PasswordForm {
    csrf: String,
    password: String,
}

fn security_page(state_status: &mfa::MfaStatus, has_factor: bool, csrf: &str, problem: Option<&Problem>) -> Markup {
    let fresh = state_status.stepped_up_until_ms.is_some();
    let body = html! {
        h1 { "Security" }
        @if let Some(p) = problem { (problem_summary(p)) }
        dl {
            dt { "Authenticator app" }
            dd id="totp-state" { @if state_status.totp {
                "active — " (state_status.recovery_codes_remaining) " recovery codes left" } @else { "not set up" } }
            dt { "Passkeys" }
            dd id="passkey-count" { (state_status.passkeys) }
            @if let Some(until) = state_status.stepped_up_until_ms {
                dt { "Changes allowed until" }
                dd { (utc(until)) }
            }
        }
        @if has_factor && !fresh {
            p { "Adding a factor needs your second factor again first. "
                a href=(step_up_link(SECURITY_PATH)) { "Confirm it is you" } }
        }
        section aria-labelledby="totp-heading" {
            h2 id="totp-heading" { "Authenticator app (TOTP)" }
            form method="post" action="/portal/security/totp" {
                (csrf_field(csrf))
                div class="field" {
                    label for="totp-password" { "Your login password" }
                    input id="totp-password" name="password" type="password" autocomplete="current-password" required;
                }
                button type="submit" { @if state_status.totp { "Replace the authenticator app" } @else { "Set up an authenticator app" } }
            }
        }
        // web::credentials (H-A): removing the app (the API's DELETE /v1/mfa/totp, a fresh step-up).
        @if state_status.totp {
            form method="post" action=(super::credentials::REMOVE_TOTP_PATH) id="remove-totp" {
                (csrf_field(csrf))
                p { "Remove the authenticator app and its recovery codes (needs your second factor again first)."
                    @if state_status.passkeys == 0 { " You then have no second factor left." } }
                button type="submit" { "Remove the authenticator app" }
            }
        }
        section aria-labelledby="passkey-heading" {
            h2 id="passkey-heading" { "Passkeys" }
            form method="post" action="/portal/security/passkey" {
                (csrf_field(csrf))
                div class="field" {
                    label for="passkey-password" { "Your login password" }
                    input id="passkey-password" name="password" type="password" autocomplete="current-password" required;
                }
                button type="submit" { "Add a passkey" }
            }
            p class="hint" { "Removing a passkey is not offered yet: the API has no route for it." }
        }
        // web::credentials (H-A): the transaction password (the API's PUT /v1/transaction-password).
        section aria-labelledby="transaction-password-heading" {
            h2 id="transaction-password-heading" { "Transaction password" }
            p { "Withdrawals ask for it. It is "
                strong id="security-transaction-password" {
                    @if state_status.transaction_password { "set" } @else { "not set" } } ". "
                a href=(super::credentials::TRANSACTION_PASSWORD_PATH) id="transaction-password-link" {
                    @if state_status.transaction_password { "Change the transaction password" }
                    @else { "Set a transaction password" } } }
        }
    };
    layout("Security", Nav::Customer { csrf }, body)
}

pub(super) async fn render_security(
    state: &AppState,
    session: &WebSession,
    status: StatusCode,
    problem: Option<&Problem>,
) -> Response {
    let back = Some(("/portal", "Back to your account"));
    let factors = match mfa::status(State(state.clone()), session.customer.clone()).await {
        Ok(Json(m)) => m,
        Err(p) => return problem_page(&p, back),
    };
    let has_factor = factors.totp || factors.passkeys > 0;
    respond(status, security_page(&factors, has_factor, &session.csrf(), problem), &[])
}

/// `GET /portal/security`: the factors (the API's [`mfa::status`]) and the forms that add them.
pub async fn security(State(state): State<AppState>, session: WebSession) -> Response {
    render_security(&state, &session, StatusCode::OK, None).await
}

fn totp_confirm_form(csrf: &str, enrolment_id: &str) -> Markup {
    html! {
        form method="post" action="/portal/security/totp/confirm" {
            (csrf_field(csrf))
            input type="hidden" name="enrolment_id" value=(enrolment_id);
            div class="field" {
                label for="code" { "The 6-digit code the app shows now" }
                input id="code" name="code" type="text" inputmode="numeric" autocomplete="one-time-code"
                    spellcheck="false" required maxlength="64";
            }
            button type="submit" { "Confirm" }
        }
    }
}

/// `POST /portal/security/totp`: the API's [`mfa::start_totp`] (password, and a fresh step-up when a
/// factor exists), then the secret as a QR code and as text, and the form for the first code.
pub async fn start_totp(
    State(state): State<AppState>,
    session: WebSession,
    parsed: Result<Form<PasswordForm>, FormRejection>,
) -> Response {
    let f = match form(parsed).and_then(|f| session.check_csrf(&f.csrf).map(|()| f)) {
        Ok(f) => f,
        Err(p) => return render_security(&state, &session, p.status, Some(&p)).await,
    };
    let body = Reauthentication { password: f.password };
    let enrolment = match mfa::start_totp(State(state.clone()), session.customer.clone(), ApiJson(body)).await {
        Ok((_, Json(e))) => e,
        Err(p) => return render_security(&state, &session, p.status, Some(&p)).await,
    };
    let qr = match qr_data_uri(&enrolment.otpauth_uri) {
        Ok(uri) => uri,
        Err(p) => return render_security(&state, &session, p.status, Some(&p)).await,
    };
    let secret =
        enrolment.otpauth_uri.split(['?', '&']).find_map(|p| p.strip_prefix("secret=")).unwrap_or_default().to_string();
    let csrf = session.csrf();
    let body = html! {
        h1 { "Set up your authenticator app" }
        ol {
            li { "Scan this QR code with your authenticator app, or type the key below into it." }
            li { "Enter the code the app then shows, to confirm. Until you do, nothing changes." }
        }
        img id="totp-qr" src=(qr) width=(QR_SIZE_PX) height=(QR_SIZE_PX)
            alt="QR code of your authenticator app's key (the same key is written below)";
        p { "Key: " code id="totp-secret" class="address" { (secret) } }
        p class="hint" { "Valid until " (utc(enrolment.expires_at_ms)) ". The key is shown only now." }
        (totp_confirm_form(&csrf, &enrolment.enrolment_id))
    };
    respond(StatusCode::CREATED, layout("Authenticator app", Nav::Customer { csrf: &csrf }, body), &[])
}

#[derive(Deserialize)]
pub struct TotpConfirmForm {
    csrf: String,
    enrolment_id: String,
    code: String,
}

/// `POST /portal/security/totp/confirm`: the API's [`mfa::confirm_totp`]; the recovery codes are shown
/// once. A refused code shows the form again (the same enrolment) with the problem named.
pub async fn confirm_totp(
    State(state): State<AppState>,
    // The customer has no factor yet (or is stepped up when replacing one), so the full session applies.
    session: WebSession,
    parsed: Result<Form<TotpConfirmForm>, FormRejection>,
) -> Response {
    let csrf = session.csrf();
    let f = match form(parsed).and_then(|f| session.check_csrf(&f.csrf).map(|()| f)) {
        Ok(f) => f,
        Err(p) => return render_security(&state, &session, p.status, Some(&p)).await,
    };
    let body = TotpConfirmation { enrolment_id: f.enrolment_id.clone(), code: f.code };
    match mfa::confirm_totp(State(state), session.customer.clone(), ApiJson(body)).await {
        Ok(Json(codes)) => {
            let body = html! {
                h1 { "Authenticator app active" }
                p { "Keep these recovery codes somewhere safe, offline. Each one replaces an app code once, if \
                     you lose the app. They are shown only now." }
                ol id="recovery-codes" {
                    @for c in &codes.recovery_codes { li { code { (c) } } }
                }
                p { "Next, kinko asks for a code from the app again before your account opens." }
                p { a href="/portal" { "Continue to your account" } }
            };
            respond(StatusCode::OK, layout("Recovery codes", Nav::Pending { csrf: &csrf }, body), &[])
        }
        Err(p) => {
            let body = html! {
                h1 { "Set up your authenticator app" }
                (problem_summary(&p))
                (totp_confirm_form(&csrf, &f.enrolment_id))
                p { a href=(SECURITY_PATH) { "Start again" } }
            };
            respond(p.status, layout("Authenticator app", Nav::Customer { csrf: &csrf }, body), &[])
        }
    }
}

// ---------------------------------------------------------------------------------------------------
// Passkey enrolment.

/// `POST /portal/security/passkey`: the API's [`mfa::webauthn_register_start`] (password, fresh step-up
/// when a factor exists), then the ceremony page.
pub async fn start_passkey(
    State(state): State<AppState>,
    session: WebSession,
    parsed: Result<Form<PasswordForm>, FormRejection>,
) -> Response {
    let f = match form(parsed).and_then(|f| session.check_csrf(&f.csrf).map(|()| f)) {
        Ok(f) => f,
        Err(p) => return render_security(&state, &session, p.status, Some(&p)).await,
    };
    let body = Reauthentication { password: f.password };
    let options =
        match mfa::webauthn_register_start(State(state.clone()), session.customer.clone(), ApiJson(body)).await {
            Ok(Json(o)) => o,
            Err(p) => return render_security(&state, &session, p.status, Some(&p)).await,
        };
    let csrf = session.csrf();
    let page = ceremony_page(
        "Add a passkey",
        Nav::Customer { csrf: &csrf },
        &csrf,
        Ceremony::Create,
        &options,
        "/portal/security/passkey/finish",
        None,
    );
    respond(StatusCode::OK, page, &[])
}

/// `POST /portal/security/passkey/finish`: the API's [`mfa::webauthn_register_finish`].
pub async fn finish_passkey(
    State(state): State<AppState>,
    session: WebSession,
    parsed: Result<Form<CredentialForm>, FormRejection>,
) -> Response {
    let registered = async {
        let f = form(parsed)?;
        session.check_csrf(&f.csrf)?;
        let credential: RegisterPublicKeyCredential = credential(&f.credential)?;
        mfa::webauthn_register_finish(State(state.clone()), session.customer.clone(), OpsJson(credential)).await
    };
    match registered.await {
        Ok((status, Json(p))) => {
            let csrf = session.csrf();
            let body = html! {
                h1 { "Passkey added" }
                p { "You can now use it as your second factor when you log in and before changes." }
                p { "Credential: " code id="passkey-id" class="address" { (p.credential_id) } }
                p { a href=(SECURITY_PATH) { "Back to security" } }
            };
            respond(status, layout("Passkey added", Nav::Customer { csrf: &csrf }, body), &[])
        }
        Err(p) => render_security(&state, &session, p.status, Some(&p)).await,
    }
}

// ---------------------------------------------------------------------------------------------------
// Passkey as the second factor: at log-in, and at step-up.

/// The choice of a passkey on the second-factor and step-up pages: a form that starts the ceremony.
pub fn passkey_choice(action: &str, csrf: &str, next: Option<&str>) -> Markup {
    html! {
        form method="post" action=(action) id="passkey-choice" {
            (csrf_field(csrf))
            @if let Some(n) = next { input type="hidden" name="next" value=(n); }
            p { "Or use a passkey you registered." }
            button type="submit" { "Use a passkey" }
        }
    }
}

#[derive(Deserialize)]
pub struct NextForm {
    csrf: String,
    #[serde(default)]
    next: Option<String>,
}

/// Starts a passkey ceremony for `customer` and renders its page, or the problem.
async fn start_passkey_login(
    state: &AppState,
    customer: &Customer,
    csrf: &str,
    nav: Nav<'_>,
    finish: &str,
    next: Option<&str>,
    back: (&str, &str),
) -> Response {
    match mfa::webauthn_authenticate_start(State(state.clone()), customer.clone()).await {
        Ok(Json(options)) => {
            let page = ceremony_page("Use your passkey", nav, csrf, Ceremony::Get, &options, finish, next);
            respond(StatusCode::OK, page, &[])
        }
        Err(p) => problem_page(&p, Some(back)),
    }
}

/// `POST /login/second-factor/passkey`: the API's [`mfa::webauthn_authenticate_start`] for the session
/// that is waiting for its second factor.
pub async fn login_passkey_start(
    State(state): State<AppState>,
    PendingSession(session): PendingSession,
    parsed: Result<Form<NextForm>, FormRejection>,
) -> Response {
    let back = ("/login/second-factor", "Back to the second factor");
    if let Err(p) = form(parsed).and_then(|f| session.check_csrf(&f.csrf)) {
        return problem_page(&p, Some(back));
    }
    let csrf = session.csrf();
    let nav = Nav::Pending { csrf: &csrf };
    start_passkey_login(&state, &session.customer, &csrf, nav, "/login/second-factor/passkey/finish", None, back).await
}

/// `POST /login/second-factor/passkey/finish`: the API's [`mfa::webauthn_authenticate_finish`], which
/// raises the session as a TOTP code would; then the portal opens.
pub async fn login_passkey_finish(
    State(state): State<AppState>,
    PendingSession(session): PendingSession,
    parsed: Result<Form<CredentialForm>, FormRejection>,
) -> Response {
    let proven = async {
        let f = form(parsed)?;
        session.check_csrf(&f.csrf)?;
        let credential: PublicKeyCredential = credential(&f.credential)?;
        mfa::webauthn_authenticate_finish(State(state.clone()), session.customer.clone(), OpsJson(credential)).await
    };
    match proven.await {
        Ok(_) => Redirect::to("/portal").into_response(),
        Err(p) => problem_page(&p, Some(("/login/second-factor", "Try again"))),
    }
}

#[derive(Deserialize)]
pub struct NextQuery {
    next: Option<String>,
}

#[derive(Deserialize)]
pub struct StepUpForm {
    csrf: String,
    method: String,
    code: String,
    #[serde(default)]
    next: Option<String>,
}

async fn step_up_page(
    state: &AppState,
    session: &WebSession,
    next: &str,
    status: StatusCode,
    problem: Option<&Problem>,
) -> Response {
    let back = Some(("/portal", "Back to your account"));
    let factors = match mfa::status(State(state.clone()), session.customer.clone()).await {
        Ok(Json(m)) => m,
        Err(p) => return problem_page(&p, back),
    };
    let csrf = session.csrf();
    let body = html! {
        h1 { "Confirm it is you" }
        @if let Some(p) = problem { (problem_summary(p)) }
        p { "Changes to your account and withdrawals need your second factor again. It then stays confirmed \
             for " (mfa::STEP_UP_TTL_MS / 60_000) " minutes." }
        @if factors.stepped_up_until_ms.is_some() {
            p id="step-up-fresh" { "Already confirmed until " (utc(factors.stepped_up_until_ms.unwrap_or(0))) ". "
                a href=(next) { "Continue" } }
        }
        @if !factors.totp && factors.passkeys == 0 {
            p { "You have no second factor yet. " a href=(SECURITY_PATH) { "Set one up" } " first." }
        }
        @if factors.totp {
            form method="post" action=(STEP_UP_PATH) {
                (csrf_field(&csrf))
                input type="hidden" name="next" value=(next);
                (code_fields())
                button type="submit" { "Confirm" }
            }
        }
        @if factors.passkeys > 0 {
            (passkey_choice("/portal/step-up/passkey", &csrf, Some(next)))
        }
    };
    respond(status, layout("Confirm it is you", Nav::Customer { csrf: &csrf }, body), &[])
}

/// `GET /portal/step-up?next=/portal/…`: a TOTP or recovery code, or a passkey; then back to `next`.
pub async fn step_up_form(State(state): State<AppState>, session: WebSession, Query(q): Query<NextQuery>) -> Response {
    let next = safe_next(q.next.as_deref());
    step_up_page(&state, &session, &next, StatusCode::OK, None).await
}

/// `POST /portal/step-up`: the API's [`mfa::step_up`].
pub async fn step_up(
    State(state): State<AppState>,
    session: WebSession,
    parsed: Result<Form<StepUpForm>, FormRejection>,
) -> Response {
    let f = match form(parsed).and_then(|f| session.check_csrf(&f.csrf).map(|()| f)) {
        Ok(f) => f,
        Err(p) => return step_up_page(&state, &session, "/portal", p.status, Some(&p)).await,
    };
    let next = safe_next(f.next.as_deref());
    let body = StepUpBody { method: f.method, code: f.code };
    match mfa::step_up(State(state.clone()), session.customer.clone(), ApiJson(body)).await {
        Ok(_) => Redirect::to(&next).into_response(),
        Err(p) => step_up_page(&state, &session, &next, p.status, Some(&p)).await,
    }
}

/// `POST /portal/step-up/passkey`: starts the passkey ceremony for a step-up.
pub async fn step_up_passkey_start(
    State(state): State<AppState>,
    session: WebSession,
    parsed: Result<Form<NextForm>, FormRejection>,
) -> Response {
    let back = (STEP_UP_PATH, "Back");
    let f = match form(parsed).and_then(|f| session.check_csrf(&f.csrf).map(|()| f)) {
        Ok(f) => f,
        Err(p) => return problem_page(&p, Some(back)),
    };
    let next = safe_next(f.next.as_deref());
    let csrf = session.csrf();
    let nav = Nav::Customer { csrf: &csrf };
    start_passkey_login(&state, &session.customer, &csrf, nav, "/portal/step-up/passkey/finish", Some(&next), back)
        .await
}

/// `POST /portal/step-up/passkey/finish`: the API's [`mfa::webauthn_authenticate_finish`]; then `next`.
pub async fn step_up_passkey_finish(
    State(state): State<AppState>,
    session: WebSession,
    parsed: Result<Form<CredentialForm>, FormRejection>,
) -> Response {
    let mut next = "/portal".to_string();
    let proven = async {
        let f = form(parsed)?;
        session.check_csrf(&f.csrf)?;
        next = safe_next(f.next.as_deref());
        let credential: PublicKeyCredential = credential(&f.credential)?;
        mfa::webauthn_authenticate_finish(State(state.clone()), session.customer.clone(), OpsJson(credential)).await
    }
    .await;
    match proven {
        Ok(_) => Redirect::to(&next).into_response(),
        Err(p) => step_up_page(&state, &session, &next, p.status, Some(&p)).await,
    }
}

/// Whether the customer has a passkey, for the second-factor page's passkey choice.
pub async fn offers_passkey(state: &AppState, customer_id: &str) -> bool {
    // A failed lookup only hides the choice; the code form still works.
    has_passkeys(state, customer_id).await.unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// U4: a step-up returns only to a portal page, never to another site.
    #[test]
    fn u4_step_up_returns_only_to_portal_pages() {
        assert_eq!(safe_next(Some("/portal/withdraw")), "/portal/withdraw");
        assert_eq!(safe_next(Some("/portal")), "/portal");
        assert_eq!(safe_next(Some("/portal?x=1")), "/portal?x=1");
        for bad in [
            None,
            Some(""),
            Some("https://evil.example/portal"),
            Some("//evil.example/portal"),
            Some("/portal//evil.example"),
            Some("/portalx"),
            Some("/portal/\\evil"),
            Some("/portal/ x"),
            Some("/login"),
        ] {
            assert_eq!(safe_next(bad), "/portal", "{bad:?}");
        }
        assert_eq!(step_up_link("/portal/a?b=1&c=2"), "/portal/step-up?next=/portal/a%3Fb%3D1%26c%3D2");
    }
}
