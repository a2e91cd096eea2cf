//! The customer's credentials besides adding a factor, in the web console (U2, U4, U9): setting or
//! changing the transaction password, and removing the authenticator app (TOTP).
//!
//! As everywhere in the console, each handler checks the form's CSRF token and then calls the JSON API's
//! own handler: [`mfa::set_transaction_password`] (`PUT /v1/transaction-password`: a fresh step-up, 12 to
//! 128 characters, different from the login password, argon2id) and [`mfa::delete_totp`]
//! (`DELETE /v1/mfa/totp`: a fresh step-up, the TOTP secret and its recovery codes removed). Every rule
//! stays there; a refusal is the API's problem, shown on the form's page with the API's status.
//!
//! Passkeys cannot be removed here: the API has no route that removes one yet.

use axum::Form;
use axum::Json;
use axum::extract::State;
use axum::extract::rejection::FormRejection;
use axum::http::StatusCode;
use axum::response::Response;
use maud::html;
use serde::Deserialize;
use zeroize::Zeroizing;

use super::WebSession;
use super::mfa::{SECURITY_PATH, render_security, step_up_link};
use super::pages::{Nav, csrf_field, layout, problem_summary, respond, utc};
use super::portal::form;
use crate::AppState;
use crate::api::Problem;
use crate::api::extract::ApiJson;
use crate::api::mfa::{self, TransactionPasswordBody};
use crate::api::problem::FieldError;

/// The transaction-password page.
pub const TRANSACTION_PASSWORD_PATH: &str = "/portal/security/transaction-password";
/// The form that removes the authenticator app.
pub const REMOVE_TOTP_PATH: &str = "/portal/security/totp/remove";

// ---------------------------------------------------------------------------------------------------
// The transaction password.

#[derive(Deserialize)]
pub struct TransactionPasswordForm {
    csrf: String,
    password: String,
    repeat: String,
}

async fn render_transaction_password(
    state: &AppState,
    session: &WebSession,
    status: StatusCode,
    problem: Option<&Problem>,
) -> Response {
    let back = Some((SECURITY_PATH, "Back to security"));
    let factors = match mfa::status(State(state.clone()), session.customer.clone()).await {
        Ok(Json(m)) => m,
        Err(p) => return super::pages::problem_page(&p, back),
    };
    let csrf = session.csrf();
    let has_factor = factors.totp || factors.passkeys > 0;
    let title =
        if factors.transaction_password { "Change the transaction password" } else { "Set a transaction password" };
    let body = html! {
        h1 { (title) }
        @if let Some(p) = problem { (problem_summary(p)) }
        p { "Withdrawals ask for this password, which is separate from your log-in password, as a last check \
             that it is you who moves the money." }
        dl {
            dt { "Transaction password" }
            dd id="transaction-password-state" { @if factors.transaction_password { "set" } @else { "not set" } }
            @if let Some(until) = factors.stepped_up_until_ms {
                dt { "Changes allowed until" }
                dd { (utc(until)) }
            }
        }
        @if !has_factor {
            p id="needs-factor" { "Setting it needs a second factor, proven just before. "
                a href=(SECURITY_PATH) { "Set up a second factor" } " first." }
        } @else if factors.stepped_up_until_ms.is_none() {
            p id="needs-step-up" { "Setting it needs your second factor again first. "
                a href=(step_up_link(TRANSACTION_PASSWORD_PATH)) { "Confirm it is you" } }
        }
        form method="post" action=(TRANSACTION_PASSWORD_PATH) {
            (csrf_field(&csrf))
            div class="field" {
                label for="transaction-password" { "New transaction password" }
                input id="transaction-password" name="password" type="password" autocomplete="new-password"
                    minlength="12" maxlength="128" required aria-describedby="transaction-password-hint";
                p class="hint" id="transaction-password-hint" { "12 to 128 characters, not your log-in password." }
            }
            div class="field" {
                label for="transaction-password-repeat" { "The same password again" }
                input id="transaction-password-repeat" name="repeat" type="password" autocomplete="new-password"
                    minlength="12" maxlength="128" required;
            }
            button type="submit" { (title) }
        }
        p { a href=(SECURITY_PATH) { "Back to security" } }
    };
    respond(status, layout(title, Nav::Customer { csrf: &csrf }, body), &[])
}

/// `GET /portal/security/transaction-password`: whether one is set, and the form.
pub async fn transaction_password_form(State(state): State<AppState>, session: WebSession) -> Response {
    render_transaction_password(&state, &session, StatusCode::OK, None).await
}

/// `POST /portal/security/transaction-password`: the API's [`mfa::set_transaction_password`]. The repeat
/// field only guards against a typo in a password nobody can see while typing; every rule is the API's.
pub async fn set_transaction_password(
    State(state): State<AppState>,
    session: WebSession,
    parsed: Result<Form<TransactionPasswordForm>, FormRejection>,
) -> Response {
    let f = match form(parsed).and_then(|f| session.check_csrf(&f.csrf).map(|()| f)) {
        Ok(f) => f,
        Err(p) => return render_transaction_password(&state, &session, p.status, Some(&p)).await,
    };
    let (password, repeat) = (Zeroizing::new(f.password), Zeroizing::new(f.repeat));
    if *password != *repeat {
        let p = Problem::validation(vec![FieldError::new("repeat", "is not the same as the new transaction password")]);
        return render_transaction_password(&state, &session, p.status, Some(&p)).await;
    }
    let body = TransactionPasswordBody { password: password.to_string() };
    match mfa::set_transaction_password(State(state.clone()), session.customer.clone(), ApiJson(body)).await {
        Ok(_) => {
            let csrf = session.csrf();
            let body = html! {
                h1 { "Transaction password set" }
                p id="transaction-password-done" { "Withdrawals now ask for the new transaction password." }
                p { a href="/portal/withdraw" { "Withdraw" } " or " a href=(SECURITY_PATH) { "back to security" } }
            };
            respond(StatusCode::OK, layout("Transaction password set", Nav::Customer { csrf: &csrf }, body), &[])
        }
        Err(p) => render_transaction_password(&state, &session, p.status, Some(&p)).await,
    }
}

// ---------------------------------------------------------------------------------------------------
// Removing the authenticator app.

#[derive(Deserialize)]
pub struct CsrfForm {
    csrf: String,
}

/// `POST /portal/security/totp/remove`: the API's [`mfa::delete_totp`] (a fresh step-up). A refusal shows
/// the security page with the problem named.
pub async fn remove_totp(
    State(state): State<AppState>,
    session: WebSession,
    parsed: Result<Form<CsrfForm>, FormRejection>,
) -> Response {
    if let Err(p) = form(parsed).and_then(|f| session.check_csrf(&f.csrf)) {
        return render_security(&state, &session, p.status, Some(&p)).await;
    }
    if let Err(p) = mfa::delete_totp(State(state.clone()), session.customer.clone()).await {
        return render_security(&state, &session, p.status, Some(&p)).await;
    }
    let passkeys = match mfa::status(State(state.clone()), session.customer.clone()).await {
        Ok(Json(m)) => m.passkeys,
        Err(p) => return render_security(&state, &session, p.status, Some(&p)).await,
    };
    let csrf = session.csrf();
    let body = html! {
        h1 { "Authenticator app removed" }
        p id="totp-removed" { "Its codes and your recovery codes no longer work." }
        @if passkeys > 0 {
            p { "Your second factor is now your passkey (" (passkeys) " registered)." }
        } @else {
            p id="no-factor-left" { "You have no second factor left: your account is protected by your password \
                alone, and withdrawals need a factor. " a href=(SECURITY_PATH) { "Set one up again" } "." }
        }
        p { a href=(SECURITY_PATH) { "Back to security" } }
    };
    respond(StatusCode::OK, layout("Authenticator app removed", Nav::Customer { csrf: &csrf }, body), &[])
}
