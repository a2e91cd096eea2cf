//! The customer portal (M1, U4, U10, U11): sign up, e-mail verification, log in with the second factor,
//! balances, the deposit address with its QR code, log out.
//!
//! Each handler checks the form's CSRF token, then calls the JSON API's own handler function (or the
//! function it calls) with the same session: the page adds presentation, never a rule. When that call
//! answers a problem, the page is shown again with the problem named, with the problem's HTTP status.

use axum::Form;
use axum::Json;
use axum::extract::rejection::FormRejection;
use axum::extract::{Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use base64::Engine;
use maud::{Markup, html};
use qrcode::{EcLevel, QrCode};
use serde::Deserialize;
use zeroize::Zeroizing;

use super::pages::{Nav, code_fields, csrf_field, layout, problem_page, problem_summary, respond, utc};
use super::{PendingSession, SESSION_COOKIE, Visitor, WebSession, set_cookie};
use crate::AppState;
use crate::api::Problem;
use crate::api::accounts::{self, BalanceView, DepositAddressRequest};
use crate::api::assets::supported_assets;
use crate::api::auth::{self, Credentials, LoginResult};
use crate::api::extract::ApiJson;
use crate::api::login_protection::{self, ClientInfo, HistoryQuery};
use crate::api::mfa::{self, StepUpBody};
use crate::api::onboarding::{self, TokenBody};
use crate::api::problem::FieldError;
use crate::api::withdrawal_confirmation::{
    self, CONFIRM_PAGE_PATH, ConfirmationRequest, ConfirmationResult, PendingConfirmation,
};
use crate::clock::now_ms;

/// Recent logins shown on the dashboard (U11).
pub const DASHBOARD_LOGINS: &str = "5";
/// Bound on the body of the confirmation answer read back (a small JSON object).
const CONFIRMATION_ANSWER_BYTES_MAX: usize = 4 * 1024;
/// The QR code's smallest side in pixels; scanners need a few pixels per module.
const QR_SIZE_MIN_PX: u32 = 240;

pub(super) fn form<T>(parsed: Result<Form<T>, FormRejection>) -> Result<T, Problem> {
    // The rejection's text can quote submitted values, so it is not shown.
    parsed.map(|Form(f)| f).map_err(|_| {
        Problem::validation(vec![FieldError::new("form", "could not be read: open the page again and resubmit")])
    })
}

fn redirect_with_cookie(to: &str, cookie: HeaderValue) -> Response {
    let mut resp = Redirect::to(to).into_response();
    resp.headers_mut().append(header::SET_COOKIE, cookie);
    resp
}

fn visitor_cookies(visitor: &Visitor) -> Vec<HeaderValue> {
    visitor.new_cookie.iter().cloned().collect()
}

/// `/`: the portal for a signed-in customer, which sends anyone else to the log-in page.
pub async fn home() -> Redirect {
    Redirect::to("/portal")
}

// ---------------------------------------------------------------------------------------------------
// Sign up and e-mail verification.

#[derive(Deserialize)]
pub struct CredentialsForm {
    csrf: String,
    email: String,
    password: String,
}

fn signup_page(visitor: &Visitor, email: &str, problem: Option<&Problem>) -> Markup {
    let body = html! {
        h1 { "Create your account" }
        @if let Some(p) = problem { (problem_summary(p)) }
        form method="post" action="/signup" {
            (csrf_field(&visitor.csrf()))
            div class="field" {
                label for="email" { "E-mail address" }
                input id="email" name="email" type="email" autocomplete="email" required value=(email);
            }
            div class="field" {
                label for="password" { "Password" }
                input id="password" name="password" type="password" autocomplete="new-password" required
                    minlength="12" maxlength="128" aria-describedby="password-hint";
                p class="hint" id="password-hint" { "12 to 128 characters." }
            }
            button type="submit" { "Create account" }
        }
        p { "Already have an account? " a href="/login" { "Log in" } }
    };
    layout("Sign up", Nav::Visitor, body)
}

pub async fn signup_form(visitor: Visitor) -> Response {
    respond(StatusCode::OK, signup_page(&visitor, "", None), &visitor_cookies(&visitor))
}

pub async fn signup(
    State(state): State<AppState>,
    visitor: Visitor,
    parsed: Result<Form<CredentialsForm>, FormRejection>,
) -> Response {
    let cookies = visitor_cookies(&visitor);
    let f = match form(parsed) {
        Ok(f) => f,
        Err(p) => return respond(p.status, signup_page(&visitor, "", Some(&p)), &cookies),
    };
    if let Err(p) = super::check_csrf(Some(&visitor.secret), &f.csrf) {
        return respond(p.status, signup_page(&visitor, &f.email, Some(&p)), &cookies);
    }
    let dev_auto_verify = state.config.onboarding.dev_auto_verify;
    let credentials = Credentials { email: f.email.clone(), password: f.password };
    match auth::create_customer(State(state), ApiJson(credentials)).await {
        Ok(_) => {
            let body = html! {
                h1 { "Account created" }
                @if dev_auto_verify {
                    p { "This kinko runs in development mode: your e-mail address and identity were marked verified." }
                } @else {
                    p { "We sent a verification token to your e-mail address. "
                        a href="/verify-email" { "Enter the token" } " to confirm the address." }
                }
                p { a href="/login" { "Log in" } }
            };
            respond(StatusCode::CREATED, layout("Account created", Nav::Visitor, body), &cookies)
        }
        Err(p) => respond(p.status, signup_page(&visitor, &f.email, Some(&p)), &cookies),
    }
}

#[derive(Deserialize)]
pub struct TokenQuery {
    token: Option<String>,
}

#[derive(Deserialize)]
pub struct TokenForm {
    csrf: String,
    token: String,
}

fn verify_page(visitor: &Visitor, token: &str, problem: Option<&Problem>) -> Markup {
    let body = html! {
        h1 { "Verify your e-mail address" }
        @if let Some(p) = problem { (problem_summary(p)) }
        form method="post" action="/verify-email" {
            (csrf_field(&visitor.csrf()))
            div class="field" {
                label for="token" { "Verification token from the e-mail" }
                input id="token" name="token" type="text" autocomplete="off" spellcheck="false" required
                    value=(token);
            }
            button type="submit" { "Verify" }
        }
    };
    layout("Verify e-mail", Nav::Visitor, body)
}

pub async fn verify_email_form(visitor: Visitor, Query(q): Query<TokenQuery>) -> Response {
    let token = q.token.unwrap_or_default();
    respond(StatusCode::OK, verify_page(&visitor, &token, None), &visitor_cookies(&visitor))
}

pub async fn verify_email(
    State(state): State<AppState>,
    visitor: Visitor,
    parsed: Result<Form<TokenForm>, FormRejection>,
) -> Response {
    let cookies = visitor_cookies(&visitor);
    let f = match form(parsed).and_then(|f| super::check_csrf(Some(&visitor.secret), &f.csrf).map(|()| f)) {
        Ok(f) => f,
        Err(p) => return respond(p.status, verify_page(&visitor, "", Some(&p)), &cookies),
    };
    match onboarding::verify_email(State(state), ApiJson(TokenBody { token: f.token })).await {
        Ok(_) => {
            let body = html! {
                h1 { "E-mail address verified" }
                p { a href="/login" { "Log in" } }
            };
            respond(StatusCode::OK, layout("E-mail verified", Nav::Visitor, body), &cookies)
        }
        Err(p) => respond(p.status, verify_page(&visitor, "", Some(&p)), &cookies),
    }
}

// ---------------------------------------------------------------------------------------------------
// Log in, second factor, log out.

fn login_page(visitor: &Visitor, email: &str, problem: Option<&Problem>) -> Markup {
    let body = html! {
        h1 { "Log in" }
        @if let Some(p) = problem { (problem_summary(p)) }
        form method="post" action="/login" {
            (csrf_field(&visitor.csrf()))
            div class="field" {
                label for="email" { "E-mail address" }
                input id="email" name="email" type="email" autocomplete="username" required value=(email);
            }
            div class="field" {
                label for="password" { "Password" }
                input id="password" name="password" type="password" autocomplete="current-password" required;
            }
            button type="submit" { "Log in" }
        }
        p { "New here? " a href="/signup" { "Create an account" } }
    };
    layout("Log in", Nav::Visitor, body)
}

pub async fn login_form(visitor: Visitor) -> Response {
    respond(StatusCode::OK, login_page(&visitor, "", None), &visitor_cookies(&visitor))
}

/// The API's login ([`auth::login`]: IP blocks, lockout, history, notice), then the session token in the
/// cookie; a customer with a second factor goes on to prove it before any portal page opens.
pub async fn login(
    State(state): State<AppState>,
    visitor: Visitor,
    client: ClientInfo,
    parsed: Result<Form<CredentialsForm>, FormRejection>,
) -> Response {
    let cookies = visitor_cookies(&visitor);
    let f = match form(parsed) {
        Ok(f) => f,
        Err(p) => return respond(p.status, login_page(&visitor, "", Some(&p)), &cookies),
    };
    if let Err(p) = super::check_csrf(Some(&visitor.secret), &f.csrf) {
        return respond(p.status, login_page(&visitor, &f.email, Some(&p)), &cookies);
    }
    let credentials = Credentials { email: f.email.clone(), password: f.password };
    let created = match auth::login(&state, &client, credentials).await {
        Ok(LoginResult::Created(created)) => created,
        Ok(LoginResult::IpBlocked { retry_after_secs }) => {
            let p =
                Problem::new(StatusCode::TOO_MANY_REQUESTS, "too-many-requests", "too many requests").detail(format!(
                    "logins from this address are blocked for now; try again in {} seconds",
                    retry_after_secs.max(1)
                ));
            return respond(p.status, login_page(&visitor, &f.email, Some(&p)), &cookies);
        }
        Err(p) => return respond(p.status, login_page(&visitor, &f.email, Some(&p)), &cookies),
    };
    let max_age_secs = (created.expires_at_ms - now_ms()) / 1000;
    let cookie = set_cookie(SESSION_COOKIE, &created.token, max_age_secs);
    // The new session's customer, through the API's own lookup.
    let customer = match auth::Customer::from_token(&state, &created.token).await {
        Ok(c) => c,
        Err(p) => return problem_page(&p, Some(("/login", "Log in again"))),
    };
    match mfa::has_second_factor(&state, &customer.id).await {
        Ok(true) => redirect_with_cookie("/login/second-factor", cookie),
        Ok(false) => redirect_with_cookie("/portal", cookie),
        Err(p) => problem_page(&p, Some(("/login", "Log in again"))),
    }
}

#[derive(Deserialize)]
pub struct SecondFactorForm {
    csrf: String,
    method: String,
    code: String,
}

fn second_factor_page(session: &WebSession, passkey: bool, problem: Option<&Problem>) -> Markup {
    let body = html! {
        h1 { "Second factor" }
        @if let Some(p) = problem { (problem_summary(p)) }
        p { "Enter the 6-digit code your authenticator app shows now, or one of your recovery codes." }
        form method="post" action="/login/second-factor" {
            (csrf_field(&session.csrf()))
            (code_fields())
            button type="submit" { "Continue" }
        }
        // web::mfa (H7): a customer with a passkey may use it instead.
        @if passkey { (super::mfa::passkey_choice("/login/second-factor/passkey", &session.csrf(), None)) }
    };
    layout("Second factor", Nav::Pending { csrf: &session.csrf() }, body)
}

pub async fn second_factor_form(State(state): State<AppState>, PendingSession(session): PendingSession) -> Response {
    let passkey = super::mfa::offers_passkey(&state, &session.customer.id).await;
    respond(StatusCode::OK, second_factor_page(&session, passkey, None), &[])
}

/// Proves the factor through the API's step-up ([`mfa::step_up`]), which also opens the step-up window.
pub async fn second_factor(
    State(state): State<AppState>,
    PendingSession(session): PendingSession,
    parsed: Result<Form<SecondFactorForm>, FormRejection>,
) -> Response {
    let passkey = super::mfa::offers_passkey(&state, &session.customer.id).await;
    let f = match form(parsed).and_then(|f| session.check_csrf(&f.csrf).map(|()| f)) {
        Ok(f) => f,
        Err(p) => return respond(p.status, second_factor_page(&session, passkey, Some(&p)), &[]),
    };
    let body = StepUpBody { method: f.method, code: f.code };
    match mfa::step_up(State(state), session.customer.clone(), ApiJson(body)).await {
        Ok(_) => Redirect::to("/portal").into_response(),
        Err(p) => respond(p.status, second_factor_page(&session, passkey, Some(&p)), &[]),
    }
}

#[derive(Deserialize)]
pub struct CsrfOnly {
    csrf: String,
}

/// Ends the session on the server (the token stops working for the API too) and clears the cookie.
pub async fn logout(
    State(state): State<AppState>,
    PendingSession(session): PendingSession,
    parsed: Result<Form<CsrfOnly>, FormRejection>,
) -> Response {
    if let Err(p) = form(parsed).and_then(|f| session.check_csrf(&f.csrf)) {
        return problem_page(&p, Some(("/portal", "Back to your account")));
    }
    let hash = auth::token_hash(&session.token().to_ascii_lowercase());
    if let Err(e) = state.store.expire_session(&hash, now_ms()).await {
        return problem_page(&Problem::from(e), Some(("/portal", "Back to your account")));
    }
    redirect_with_cookie("/login", set_cookie(SESSION_COOKIE, "", 0))
}

// ---------------------------------------------------------------------------------------------------
// The dashboard and the deposit address.

/// Display decimals of an asset (ETH: 18; a token: its configured decimals), `None` when unknown.
pub(super) fn asset_decimals(state: &AppState, code: &str) -> Option<u8> {
    if code == "ETH" {
        return Some(18);
    }
    let tokens = crate::erc20::TokenSet::from_config(&state.config.ethereum).ok()?;
    tokens.asset_specs().into_iter().find(|s| s.code.as_str() == code).map(|s| s.decimals)
}

pub(super) fn amount_text(state: &AppState, asset: &str, amount: kinko_core::Amount) -> String {
    match asset_decimals(state, asset) {
        Some(d) => format!("{} {asset}", amount.display_with_decimals(d)),
        None => format!("{amount} (base units) {asset}"),
    }
}

fn balances_table(state: &AppState, balances: &[BalanceView]) -> Markup {
    html! {
        table class="balances" {
            caption { "Balances" }
            thead { tr { th scope="col" { "Asset" } th scope="col" { "Available" } th scope="col" { "Held" }
                th scope="col" { "Pending" } } }
            tbody {
                @for b in balances {
                    tr {
                        th scope="row" { (b.asset) }
                        td data-asset=(b.asset) class="available" { (amount_text(state, &b.asset, b.available)) }
                        td { (amount_text(state, &b.asset, b.held)) }
                        td { (amount_text(state, &b.asset, b.pending)) }
                    }
                }
            }
        }
    }
}

/// Balances, verification state, second factor and recent logins (U11: the last login is shown, so one
/// that was not the customer's stands out).
pub async fn dashboard(State(state): State<AppState>, session: WebSession) -> Response {
    let customer = session.customer.clone();
    let back = Some(("/portal", "Try again"));
    let balances = match accounts::balances(State(state.clone()), customer.clone()).await {
        Ok(Json(b)) => b,
        Err(p) => return problem_page(&p, back),
    };
    let kyc = match onboarding::kyc_status(State(state.clone()), customer.clone()).await {
        Ok(Json(k)) => k,
        Err(p) => return problem_page(&p, back),
    };
    let factors = match mfa::status(State(state.clone()), customer.clone()).await {
        Ok(Json(m)) => m,
        Err(p) => return problem_page(&p, back),
    };
    let query = HistoryQuery { limit: Some(DASHBOARD_LOGINS.to_string()) };
    let logins = match login_protection::login_history(State(state.clone()), customer, Query(query)).await {
        Ok(Json(h)) => h.logins,
        Err(p) => return problem_page(&p, back),
    };
    let csrf = session.csrf();
    let body = html! {
        h1 { "Your account" }
        (balances_table(&state, &balances))
        p { a class="button" href="/portal/deposit" { "Deposit" } }
        section aria-labelledby="security-heading" {
            h2 id="security-heading" { "Security" }
            dl {
                dt { "E-mail address" }
                dd { @if kyc.email_verified { "verified" } @else { "not verified — " a href="/verify-email" { "enter the token" } } }
                dt { "Identity (KYC)" }
                // web::kyc (H-C): the page that shows the submission and takes the documents.
                dd { (kyc.state.replace('_', " "))
                    @if kyc.state != "verified" {
                        " — " a id="kyc-link" href="/portal/kyc" {
                            @if matches!(kyc.state.as_str(), "not_submitted" | "rejected") { "submit documents" } @else { "details" }
                        }
                    } }
                dt { "Second factor" }
                // web::mfa (H7): passkeys count too, and the security page manages both.
                dd { @if factors.totp || factors.passkeys > 0 {
                        @if factors.totp { "authenticator app active" }
                        @if factors.totp && factors.passkeys > 0 { "; " }
                        @if factors.passkeys > 0 { (factors.passkeys) " passkey(s)" }
                        " — " a href="/portal/security" { "manage" }
                    } @else { "none — withdrawals need one: " a href="/portal/security" { "set one up" } } }
            }
        }
        section aria-labelledby="logins-heading" {
            h2 id="logins-heading" { "Recent logins" }
            @if logins.is_empty() {
                p { "None yet." }
            } @else {
                table class="logins" {
                    caption class="visually-hidden" { "Recent logins, newest first" }
                    thead { tr { th scope="col" { "When" } th scope="col" { "Result" } th scope="col" { "Address" }
                        th scope="col" { "Browser" } } }
                    tbody {
                        @for l in &logins {
                            tr {
                                td { (utc(l.at_ms)) }
                                td { (l.outcome.replace('_', " ")) }
                                td { (l.ip) }
                                td class="agent" { (l.user_agent) }
                            }
                        }
                    }
                }
            }
        }
    };
    respond(StatusCode::OK, layout("Your account", Nav::Customer { csrf: &csrf }, body), &[])
}

#[derive(Deserialize)]
pub struct DepositForm {
    csrf: String,
    asset: String,
}

fn deposit_page(state: &AppState, session: &WebSession, content: Markup) -> Markup {
    let csrf = session.csrf();
    let body = html! {
        h1 { "Deposit" }
        (content)
        form method="post" action="/portal/deposit" {
            (csrf_field(&csrf))
            div class="field" {
                label for="asset" { "Asset" }
                select id="asset" name="asset" {
                    @for a in supported_assets(&state.config) {
                        option value=(a.code.as_str()) { (a.code.as_str()) }
                    }
                }
            }
            button type="submit" { "Show my deposit address" }
        }
    };
    layout("Deposit", Nav::Customer { csrf: &csrf }, body)
}

pub async fn deposit_form(State(state): State<AppState>, session: WebSession) -> Response {
    let intro = html! { p { "Choose the asset to see your deposit address. It is the same address every time." } };
    respond(StatusCode::OK, deposit_page(&state, &session, intro), &[])
}

/// The QR code of `text` as an SVG `data:` URI (allowed by the CSP's `img-src data:`; no inline markup).
pub fn qr_data_uri(text: &str) -> Result<String, Problem> {
    let code = QrCode::with_error_correction_level(text.as_bytes(), EcLevel::M).map_err(Problem::internal)?;
    let svg = code
        .render::<qrcode::render::svg::Color>()
        .quiet_zone(true)
        .min_dimensions(QR_SIZE_MIN_PX, QR_SIZE_MIN_PX)
        .build();
    Ok(format!("data:image/svg+xml;base64,{}", base64::engine::general_purpose::STANDARD.encode(svg)))
}

/// The API's get-or-create of the deposit address ([`accounts::deposit_address`]); a POST because the
/// first call creates it, as in the API.
pub async fn deposit_address(
    State(state): State<AppState>,
    session: WebSession,
    parsed: Result<Form<DepositForm>, FormRejection>,
) -> Response {
    let f = match form(parsed).and_then(|f| session.check_csrf(&f.csrf).map(|()| f)) {
        Ok(f) => f,
        Err(p) => return respond(p.status, deposit_page(&state, &session, problem_summary(&p)), &[]),
    };
    let request = DepositAddressRequest { asset: f.asset };
    let address =
        match accounts::deposit_address(State(state.clone()), session.customer.clone(), ApiJson(request)).await {
            Ok(Json(a)) => a,
            Err(p) => return respond(p.status, deposit_page(&state, &session, problem_summary(&p)), &[]),
        };
    let qr = match qr_data_uri(&address.address) {
        Ok(uri) => uri,
        Err(p) => return respond(p.status, deposit_page(&state, &session, problem_summary(&p)), &[]),
    };
    let content = html! {
        section class="deposit" aria-labelledby="address-heading" {
            h2 id="address-heading" { "Your " (address.asset) " deposit address" }
            p { code id="deposit-address" class="address" { (address.address) } }
            img id="deposit-qr" src=(qr) width=(QR_SIZE_MIN_PX) height=(QR_SIZE_MIN_PX)
                alt={ "QR code of the deposit address " (address.address) };
            p class="hint" { "Send only " (address.asset) " on this custodian's chain to this address. Deposits are credited after enough confirmations." }
        }
    };
    respond(StatusCode::OK, deposit_page(&state, &session, content), &[])
}

// ---------------------------------------------------------------------------------------------------
// Second-channel confirmation of a withdrawal (U4, U8): the page the confirmation mail links to.

fn confirm_page(
    visitor: &Visitor,
    token: &str,
    problem: Option<&Problem>,
    pending: Option<(&PendingConfirmation, String)>,
) -> Markup {
    let body = html! {
        h1 { "Confirm a withdrawal" }
        @if let Some(p) = problem { (problem_summary(p)) }
        p { "Confirm only a withdrawal you asked for yourself. If you did not ask for it, do not confirm: log in, \
             cancel it and change your password." }
        // What the token would confirm, read without using it: the customer confirms what they can see.
        @if let Some((w, amount)) = pending {
            section aria-labelledby="pending-heading" id="pending-withdrawal" {
                h2 id="pending-heading" { "The withdrawal this confirms" }
                dl {
                    dt { "Amount" } dd id="pending-amount" { (amount) }
                    dt { "Destination" } dd { code id="pending-destination" class="address" { (w.destination) } }
                    dt { "Requested" } dd { (utc(w.requested_at_ms)) }
                    dt { "Confirm before" } dd { (utc(w.expires_at_ms)) }
                    dt { "Withdrawal" } dd { code { (w.withdrawal_id) } }
                }
            }
        } @else if !token.is_empty() && problem.is_none() {
            p id="pending-unknown" { "This token names no withdrawal waiting for confirmation: it may be mistyped, \
                used already or expired. Confirming it will be refused." }
        }
        // A form, not a confirming link: mail scanners and link previews follow links, never POST forms.
        form method="post" action=(CONFIRM_PAGE_PATH) {
            (csrf_field(&visitor.csrf()))
            div class="field" {
                label for="token" { "Confirmation token from the e-mail" }
                input id="token" name="token" type="text" autocomplete="off" spellcheck="false" required
                    value=(token);
            }
            button type="submit" { "Confirm the withdrawal" }
        }
    };
    layout("Confirm a withdrawal", Nav::Visitor, body)
}

/// The mail's link (`<public_base_url>/confirm-withdrawal?token=…`) opens this form pre-filled; nothing is
/// confirmed by opening it.
pub async fn confirm_withdrawal_form(
    State(state): State<AppState>,
    visitor: Visitor,
    client: ClientInfo,
    Query(q): Query<TokenQuery>,
) -> Response {
    let token = Zeroizing::new(q.token.unwrap_or_default());
    let cookies = visitor_cookies(&visitor);
    let pending = match withdrawal_confirmation::pending_confirmation(&state, &client, &token).await {
        Ok(p) => p,
        Err(p) => return respond(p.status, confirm_page(&visitor, &token, Some(&p), None), &cookies),
    };
    let shown = pending.as_ref().map(|w| (w, amount_text(&state, w.asset.as_str(), w.amount)));
    respond(StatusCode::OK, confirm_page(&visitor, &token, None, shown), &cookies)
}

/// The API's confirmation ([`withdrawal_confirmation::confirm_withdrawal`]: IP blocks, one answer for every
/// refused token, single use).
pub async fn confirm_withdrawal(
    State(state): State<AppState>,
    visitor: Visitor,
    client: ClientInfo,
    parsed: Result<Form<TokenForm>, FormRejection>,
) -> Response {
    let cookies = visitor_cookies(&visitor);
    let f = match form(parsed).and_then(|f| super::check_csrf(Some(&visitor.secret), &f.csrf).map(|()| f)) {
        Ok(f) => f,
        Err(p) => return respond(p.status, confirm_page(&visitor, "", Some(&p), None), &cookies),
    };
    let request = ConfirmationRequest { token: f.token };
    let answer = match withdrawal_confirmation::confirm_withdrawal(State(state), client, ApiJson(request)).await {
        Ok(answer) => answer,
        Err(p) => return respond(p.status, confirm_page(&visitor, "", Some(&p), None), &cookies),
    };
    // The API answers 200 with the result, or 429 (blocked address) as a response of its own.
    let status = answer.status();
    let bytes = axum::body::to_bytes(answer.into_body(), CONFIRMATION_ANSWER_BYTES_MAX).await.unwrap_or_default();
    let result = match serde_json::from_slice::<ConfirmationResult>(&bytes) {
        Ok(r) if status == StatusCode::OK => r,
        _ => {
            let p = Problem::new(StatusCode::TOO_MANY_REQUESTS, "too-many-requests", "too many requests")
                .detail("requests from this address are blocked for now; try again later");
            let p = if status == StatusCode::TOO_MANY_REQUESTS { p } else { Problem::from_status(status) };
            return respond(p.status, confirm_page(&visitor, "", Some(&p), None), &cookies);
        }
    };
    let body = html! {
        h1 { "Withdrawal confirmed" }
        dl {
            dt { "Withdrawal" } dd { code id="withdrawal-id" { (result.withdrawal_id) } }
            dt { "Status" } dd id="withdrawal-status" { (result.status.replace('_', " ")) }
        }
        p { @if result.status == "pending_approval" {
                "The custodian's operators approve it next; then it is signed and sent."
            } @else { "It is signed and sent next." } }
        p { a href="/login" { "Log in" } " to follow it." }
    };
    respond(StatusCode::OK, layout("Withdrawal confirmed", Nav::Visitor, body), &cookies)
}
