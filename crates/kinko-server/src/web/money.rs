//! Moving money in the customer portal (M1, U4, U8, U9, U11, U13): the deposit and withdrawal history with
//! live status, the withdrawal form, the address book with wallet binding, and the full login history.
//!
//! As in [`super::portal`], each handler checks the form's CSRF token and then calls the JSON API's own
//! handler function with the same session ([`WebSession`] holds the API's [`crate::api::auth::Customer`]):
//! the withdrawal goes through [`withdrawals::create_withdrawal`] (freeze, enrolled factor, fresh step-up,
//! transaction password, KYC, policy, saved destination, risk and confirmation), the address book through
//! [`address_book`]'s handlers (step-up, cooling-off, notices), so a page adds presentation and never a
//! rule. A refusal is shown as a page naming the problem with the API's status.
//!
//! "Live" status without script: the history page answers with the `Refresh: 5` header, which browsers
//! follow by reloading the page every 5 seconds (no inline script, nothing the CSP has to allow). Reloading
//! can be paused (`?live=0`) because a page that changes under a screen-reader or keyboard user must be
//! stoppable (WCAG 2.2.1).

use axum::Form;
use axum::Json;
use axum::extract::rejection::FormRejection;
use axum::extract::{Path, Query, RawQuery, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use maud::{Markup, html};
use rand::RngCore;
use serde::Deserialize;

use super::WebSession;
use super::pages::{Nav, csrf_field, layout, problem_page, problem_summary, respond, utc};
use super::portal::{amount_text, asset_decimals, form};
use crate::AppState;
use crate::aml::ApiJsonOpt;
use crate::api::Problem;
use crate::api::accounts::{self, DepositView};
use crate::api::address_book::{self, BindRequest, ChallengeRequest, ChallengeView, EntryView, NewEntryRequest};
use crate::api::assets::supported_assets;
use crate::api::extract::ApiJson;
use crate::api::login_protection::{self, ClientInfo, HistoryQuery};
use crate::api::problem::FieldError;
use crate::api::withdrawals::{self, IDEMPOTENCY_KEY_HEADER, WithdrawalRequest, WithdrawalView};
use crate::clock::now_ms;

pub const HISTORY_PATH: &str = "/portal/history";
pub const WITHDRAW_PATH: &str = "/portal/withdraw";
pub const ADDRESS_BOOK_PATH: &str = "/portal/address-book";
pub const LOGINS_PATH: &str = "/portal/logins";
/// The step-up page (`web::mfa`), returning to the withdrawal form.
pub const STEP_UP_FOR_WITHDRAW: &str = "/portal/step-up?next=/portal/withdraw";
/// The step-up page, returning to the address book.
pub const STEP_UP_FOR_ADDRESS_BOOK: &str = "/portal/step-up?next=/portal/address-book";
/// Seconds between reloads of the history page while its status is live.
pub const HISTORY_REFRESH_SECS: &str = "5";
/// Rows of each history table (the API's page bound).
pub const HISTORY_ROWS: &str = "limit=200";
/// The whole login history the API keeps answering: its maximum page.
pub const LOGIN_HISTORY_ROWS: &str = "100";
/// Random bytes of the idempotency key each withdrawal form carries, so a form submitted twice (a double
/// click, a reload) is one withdrawal.
const FORM_KEY_BYTES: usize = 24;

fn back(path: &str) -> Option<(&str, &str)> {
    Some((path, "Back"))
}

/// Decimal text as the customer types it ("0.25") in base units as the API takes them ("250000000000000000"):
/// only the decimal point is moved, by the asset's decimals; every check of the number itself is the API's
/// (`Amount::parse_positive` in [`withdrawals::validate`]), which names anything that is not a positive
/// whole number of base units. More fraction digits than the asset has are refused here, naming `amount`,
/// because moving the point cannot express them.
pub fn base_units_text(decimal: &str, decimals: u8) -> Result<String, Problem> {
    let text = decimal.trim();
    let (whole, fraction) = text.split_once('.').unwrap_or((text, ""));
    let decimals = usize::from(decimals);
    if fraction.len() > decimals {
        return Err(Problem::validation(vec![FieldError::new(
            "amount",
            format!("has more than {decimals} digits after the decimal point"),
        )]));
    }
    let joined = format!("{whole}{fraction:0<decimals$}");
    let trimmed = joined.trim_start_matches('0');
    // "0.000" is zero: the API's parser names it ("must be greater than zero"); keep one digit for it.
    Ok(if trimmed.is_empty() && !joined.is_empty() { "0".to_string() } else { trimmed.to_string() })
}

fn status_text(status: &str) -> String {
    status.replace('_', " ")
}

// ---------------------------------------------------------------------------------------------------
// History: deposits and withdrawals with live status.

#[derive(Deserialize)]
pub struct LiveQuery {
    live: Option<String>,
}

fn deposits_table(state: &AppState, deposits: &[DepositView]) -> Markup {
    html! {
        section aria-labelledby="deposits-heading" {
            h2 id="deposits-heading" { "Deposits" }
            @if deposits.is_empty() {
                p { "No deposits yet. " a href="/portal/deposit" { "Show your deposit address" } }
            } @else {
                div class="table-scroll" {
                    table id="deposits" {
                        caption class="visually-hidden" { "Deposits, newest first" }
                        thead { tr {
                            th scope="col" { "Seen" } th scope="col" { "Amount" } th scope="col" { "Status" }
                            th scope="col" { "Confirmations" } th scope="col" { "Transaction" }
                        } }
                        tbody {
                            @for d in deposits {
                                tr data-id=(d.id) {
                                    td { (utc(d.created_at_ms)) }
                                    td { (amount_text(state, &d.asset, d.amount)) }
                                    td class="status" { (status_text(d.status.as_str())) }
                                    td { (d.confirmations) }
                                    td { code class="address hash" { (d.tx_hash) } }
                                }
                            }
                        }
                    }
                }
                p class="hint" { "A deposit is credited to your balance after enough confirmations." }
            }
        }
    }
}

/// Statuses in which the customer can still cancel (the API's `cancel_withdrawal` decides).
fn cancellable(status: &str) -> bool {
    status == "awaiting_confirmation" || status == "pending_approval"
}

fn withdrawals_table(state: &AppState, withdrawals: &[WithdrawalView], csrf: &str) -> Markup {
    let awaiting = withdrawals.iter().any(|w| w.status == "awaiting_confirmation");
    html! {
        section aria-labelledby="withdrawals-heading" {
            h2 id="withdrawals-heading" { "Withdrawals" }
            @if awaiting {
                div class="notice" id="awaiting-explained" {
                    p { strong { "Awaiting confirmation" } " means we e-mailed you a confirmation link for that \
                        withdrawal (a new destination, a large amount or an unusual log-in asks for it). Its \
                        amount is held; nothing is sent until you open the link and confirm. The link expires \
                        after a while; the withdrawal is then cancelled and the amount released." }
                }
            }
            @if withdrawals.is_empty() {
                p { "No withdrawals yet. " a href=(WITHDRAW_PATH) { "Withdraw" } }
            } @else {
                div class="table-scroll" {
                    table id="withdrawals" {
                        caption class="visually-hidden" { "Withdrawals, newest first" }
                        thead { tr {
                            th scope="col" { "Requested" } th scope="col" { "Amount" } th scope="col" { "To" }
                            th scope="col" { "Status" } th scope="col" { "Confirmations" }
                            th scope="col" { "Transaction" } th scope="col" { "Cancel" }
                        } }
                        tbody {
                            @for w in withdrawals {
                                tr data-id=(w.id) {
                                    td { (utc(w.created_at_ms)) }
                                    td { (amount_text(state, &w.asset, w.amount)) }
                                    td { code class="address" { (w.destination) } }
                                    td class="status" {
                                        (status_text(&w.status))
                                        @if let Some(e) = &w.error { " — " (e) }
                                    }
                                    td { (w.confirmations) }
                                    td { @if let Some(h) = &w.tx_hash { code class="address hash" { (h) } } @else { "—" } }
                                    td {
                                        @if cancellable(&w.status) {
                                            form method="post" action={ "/portal/withdrawals/" (w.id) "/cancel" } class="inline" {
                                                (csrf_field(csrf))
                                                button type="submit" aria-label={ "Cancel withdrawal " (w.id) } { "Cancel" }
                                            }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// `GET /portal/history`: the API's deposit and withdrawal lists ([`accounts::list_deposits`],
/// [`withdrawals::list_withdrawals`]), reloaded every 5 seconds unless paused.
pub async fn history(State(state): State<AppState>, session: WebSession, Query(q): Query<LiveQuery>) -> Response {
    let live = q.live.as_deref() != Some("0");
    let query = || RawQuery(Some(HISTORY_ROWS.to_string()));
    let deposits = match accounts::list_deposits(State(state.clone()), session.customer.clone(), query()).await {
        Ok(Json(d)) => d,
        Err(p) => return problem_page(&p, Some(("/portal", "Back to your account"))),
    };
    let withdrawals = match withdrawals::list_withdrawals(State(state.clone()), session.customer.clone(), query()).await
    {
        Ok(Json(w)) => w,
        Err(p) => return problem_page(&p, Some(("/portal", "Back to your account"))),
    };
    let csrf = session.csrf();
    let body = html! {
        h1 { "History" }
        p id="live-state" {
            @if live {
                "Live: this page reloads every " (HISTORY_REFRESH_SECS) " seconds. "
                a href={ (HISTORY_PATH) "?live=0" } { "Pause live updates" }
            } @else {
                "Live updates paused. " a href=(HISTORY_PATH) { "Resume live updates" }
            }
        }
        (deposits_table(&state, &deposits))
        (withdrawals_table(&state, &withdrawals, &csrf))
        p { a class="button" href=(WITHDRAW_PATH) { "Withdraw" } }
    };
    let mut resp = respond(StatusCode::OK, layout("History", Nav::Customer { csrf: &csrf }, body), &[]);
    if live {
        resp.headers_mut().insert(HeaderName::from_static("refresh"), HeaderValue::from_static(HISTORY_REFRESH_SECS));
    }
    resp
}

/// `POST /portal/withdrawals/{id}/cancel`: the API's [`withdrawals::cancel_withdrawal`] (a session is
/// enough: a customer who sees a withdrawal they did not make must be able to stop it at once).
pub async fn cancel_withdrawal(
    State(state): State<AppState>,
    session: WebSession,
    Path(id): Path<String>,
    parsed: Result<Form<CsrfForm>, FormRejection>,
) -> Response {
    let back = Some((HISTORY_PATH, "Back to your history"));
    if let Err(p) = form(parsed).and_then(|f| session.check_csrf(&f.csrf)) {
        return problem_page(&p, back);
    }
    match withdrawals::cancel_withdrawal(State(state), session.customer.clone(), Path(id)).await {
        Ok(_) => Redirect::to(HISTORY_PATH).into_response(),
        Err(p) => problem_page(&p, back),
    }
}

// ---------------------------------------------------------------------------------------------------
// Withdrawal.

#[derive(Deserialize)]
pub struct WithdrawForm {
    csrf: String,
    key: String,
    asset: String,
    amount: String,
    destination: String,
    transaction_password: String,
}

/// A saved destination the customer can choose: a usable address-book entry or the bound wallet.
struct Choice {
    asset: Option<String>,
    address: String,
    label: String,
}

async fn usable_destinations(state: &AppState, session: &WebSession) -> Result<(Vec<Choice>, usize), Problem> {
    let Json(entries) = address_book::list_entries(State(state.clone()), session.customer.clone()).await?;
    let Json(bindings) = address_book::list_bindings(State(state.clone()), session.customer.clone()).await?;
    let cooling = entries.iter().filter(|e| !e.usable).count();
    let mut out: Vec<Choice> = entries
        .into_iter()
        .filter(|e| e.usable)
        .map(|e| Choice {
            asset: Some(e.asset.clone()),
            label: format!("{} ({})", e.label, e.asset),
            address: e.address,
        })
        .collect();
    out.extend(bindings.into_iter().map(|b| Choice {
        asset: None,
        label: "your bound wallet".to_string(),
        address: b.address,
    }));
    Ok((out, cooling))
}

fn new_form_key() -> String {
    let mut raw = [0u8; FORM_KEY_BYTES];
    rand::rngs::OsRng.fill_bytes(&mut raw);
    format!("web-{}", hex::encode(raw))
}

fn step_up_hint(problem: &Problem, step_up: &str) -> Markup {
    html! {
        @if problem.body.kind.ends_with(":step-up-required") {
            p { "Withdrawals need a second factor proven in the last few minutes. "
                a href=(step_up) { "Confirm it is you" } " (your second factor again), then send the form again." }
        } @else if problem.body.kind.ends_with(":mfa-required") {
            p { "Withdrawals need an authenticator app or a passkey on your account first: "
                a href="/portal/security" { "set one up" } "." }
        } @else if problem.body.kind.ends_with(":destination-not-saved")
            || problem.body.kind.ends_with(":destination-cooling-off") {
            p { "Withdrawals go only to " a href=(ADDRESS_BOOK_PATH) { "saved destinations" } " past their cooling-off." }
        } @else if problem.body.kind.ends_with(":kyc-required") {
            // web::kyc (H-C).
            p { "Withdrawals need a verified identity: " a id="kyc-link" href="/portal/kyc" { "submit your documents" }
                " or see how the check stands." }
        }
    }
}

async fn withdraw_page(
    state: &AppState,
    session: &WebSession,
    problem: Option<&Problem>,
    asset: &str,
    amount: &str,
) -> Result<Markup, Problem> {
    let (choices, cooling) = usable_destinations(state, session).await?;
    let csrf = session.csrf();
    let assets = supported_assets(&state.config);
    let body = html! {
        h1 { "Withdraw" }
        @if let Some(p) = problem { (problem_summary(p)) (step_up_hint(p, STEP_UP_FOR_WITHDRAW)) }
        p { "Withdrawals need your second factor proven in the last few minutes (it is, right after you log in \
             with it; otherwise " a href=(STEP_UP_FOR_WITHDRAW) { "confirm it again" } "), your transaction password, and a \
             saved destination. A new destination or a large amount is confirmed by a link we e-mail you." }
        @if choices.is_empty() {
            p id="no-destinations" { "You have no destination ready for withdrawals"
                @if cooling > 0 { " (" (cooling) " still cooling off)" } ". "
                a href=(ADDRESS_BOOK_PATH) { "Add one to your address book" } "." }
        } @else {
            form method="post" action=(WITHDRAW_PATH) {
                (csrf_field(&csrf))
                input type="hidden" name="key" value=(new_form_key());
                div class="field" {
                    label for="asset" { "Asset" }
                    select id="asset" name="asset" {
                        @for a in &assets {
                            option value=(a.code.as_str()) selected[a.code.as_str() == asset] { (a.code.as_str()) }
                        }
                    }
                }
                div class="field" {
                    label for="amount" { "Amount" }
                    input id="amount" name="amount" type="text" inputmode="decimal" autocomplete="off" required
                        spellcheck="false" maxlength="80" value=(amount) aria-describedby="amount-hint";
                    p class="hint" id="amount-hint" { "In the asset's unit, with a decimal point: 0.25 for a quarter ETH." }
                }
                div class="field" {
                    label for="destination" { "Destination" }
                    select id="destination" name="destination" {
                        @for c in &choices {
                            option value=(c.address) data-asset=[c.asset.as_deref()] { (c.label) " — " (c.address) }
                        }
                    }
                }
                div class="field" {
                    label for="transaction_password" { "Transaction password" }
                    input id="transaction_password" name="transaction_password" type="password"
                        autocomplete="off" required maxlength="128" aria-describedby="tp-hint";
                    p class="hint" id="tp-hint" { "Not your log-in password: the separate password for moving money." }
                }
                button type="submit" { "Withdraw" }
            }
        }
        p { a href=(ADDRESS_BOOK_PATH) { "Address book" } " · " a href=(HISTORY_PATH) { "History" } }
    };
    Ok(layout("Withdraw", Nav::Customer { csrf: &csrf }, body))
}

async fn withdraw_answer(
    state: &AppState,
    session: &WebSession,
    problem: &Problem,
    asset: &str,
    amount: &str,
) -> Response {
    match withdraw_page(state, session, Some(problem), asset, amount).await {
        Ok(page) => respond(problem.status, page, &[]),
        Err(p) => problem_page(&p, back(WITHDRAW_PATH)),
    }
}

pub async fn withdraw_form(State(state): State<AppState>, session: WebSession) -> Response {
    match withdraw_page(&state, &session, None, "ETH", "").await {
        Ok(page) => respond(StatusCode::OK, page, &[]),
        Err(p) => problem_page(&p, Some(("/portal", "Back to your account"))),
    }
}

/// The API's withdrawal ([`withdrawals::create_withdrawal`]) with the form's idempotency key; the amount's
/// decimal point moved by the asset's decimals first ([`base_units_text`]).
pub async fn withdraw(
    State(state): State<AppState>,
    session: WebSession,
    client: ClientInfo,
    parsed: Result<Form<WithdrawForm>, FormRejection>,
) -> Response {
    let f = match form(parsed).and_then(|f| session.check_csrf(&f.csrf).map(|()| f)) {
        Ok(f) => f,
        Err(p) => return withdraw_answer(&state, &session, &p, "ETH", "").await,
    };
    let amount = match asset_decimals(&state, &f.asset) {
        // An asset without known decimals: the API names it (unsupported or not withdrawable).
        None => f.amount.trim().to_string(),
        Some(d) => match base_units_text(&f.amount, d) {
            Ok(a) => a,
            Err(p) => return withdraw_answer(&state, &session, &p, &f.asset, &f.amount).await,
        },
    };
    let mut headers = HeaderMap::new();
    match HeaderValue::from_str(&f.key) {
        Ok(v) => {
            headers.insert(IDEMPOTENCY_KEY_HEADER, v);
        }
        Err(_) => {
            let p = Problem::validation(vec![FieldError::new("form", "is damaged: open the page again")]);
            return withdraw_answer(&state, &session, &p, &f.asset, &f.amount).await;
        }
    }
    let request = WithdrawalRequest {
        asset: f.asset.clone(),
        amount,
        destination: f.destination,
        purpose: None,
        beneficiary: None,
        transaction_password: Some(f.transaction_password),
    };
    let created = withdrawals::create_withdrawal(
        State(state.clone()),
        session.customer.clone(),
        headers,
        client,
        ApiJsonOpt(request),
    )
    .await;
    let accepted = match created {
        Ok((_, Json(a))) => a,
        Err(p) => return withdraw_answer(&state, &session, &p, &f.asset, &f.amount).await,
    };
    let csrf = session.csrf();
    let body = html! {
        h1 { "Withdrawal requested" }
        dl {
            dt { "Withdrawal" } dd { code id="withdrawal-id" { (accepted.id) } }
            dt { "Status" } dd id="withdrawal-status" { (status_text(&accepted.status)) }
        }
        @match accepted.status.as_str() {
            "awaiting_confirmation" => {
                p id="awaiting-explained" { "We e-mailed you a confirmation link. Open it and confirm to release \
                    this withdrawal; until then its amount is held and nothing is sent. If you did not ask for it, \
                    do not confirm." }
            }
            "pending_approval" => {
                p { "The custodian's operators approve it next; then it is signed and sent." }
            }
            _ => { p { "It is signed and sent next." } }
        }
        p { a href=(HISTORY_PATH) { "Follow it in your history" } }
    };
    respond(StatusCode::ACCEPTED, layout("Withdrawal requested", Nav::Customer { csrf: &csrf }, body), &[])
}

// ---------------------------------------------------------------------------------------------------
// Address book and wallet binding.

#[derive(Deserialize)]
pub struct EntryForm {
    csrf: String,
    label: String,
    asset: String,
    address: String,
}

#[derive(Deserialize)]
pub struct CsrfForm {
    csrf: String,
}

#[derive(Deserialize)]
pub struct ChallengeForm {
    csrf: String,
    address: String,
}

#[derive(Deserialize)]
pub struct BindForm {
    csrf: String,
    address: String,
    challenge_id: String,
    signature: String,
}

fn entries_table(entries: &[EntryView], csrf: &str, now: i64) -> Markup {
    html! {
        @if entries.is_empty() {
            p { "No saved destinations yet." }
        } @else {
            div class="table-scroll" {
                table id="address-book" {
                    caption class="visually-hidden" { "Saved destinations, oldest first" }
                    thead { tr {
                        th scope="col" { "Label" } th scope="col" { "Asset" } th scope="col" { "Address" }
                        th scope="col" { "Usable" } th scope="col" { "Remove" }
                    } }
                    tbody {
                        @for e in entries {
                            tr data-id=(e.id) {
                                td class="label" { (e.label) }
                                td { (e.asset) }
                                td { code class="address" { (e.address) } }
                                td class="usable" {
                                    @if e.usable { "ready" } @else {
                                        "cooling off until " (utc(e.usable_at_ms))
                                        " (" (((e.usable_at_ms - now).max(0) + 59_999) / 60_000) " min)"
                                    }
                                }
                                td {
                                    form method="post" action={ (ADDRESS_BOOK_PATH) "/" (e.id) "/delete" } class="inline" {
                                        (csrf_field(csrf))
                                        button type="submit" aria-label={ "Remove " (e.label) } { "Remove" }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

async fn address_book_page(
    state: &AppState,
    session: &WebSession,
    top: Option<Markup>,
    challenge: Option<&ChallengeView>,
) -> Result<Markup, Problem> {
    let Json(entries) = address_book::list_entries(State(state.clone()), session.customer.clone()).await?;
    let Json(bindings) = address_book::list_bindings(State(state.clone()), session.customer.clone()).await?;
    let csrf = session.csrf();
    let cooling_min = state.config.address_book.cooling_off_ms.div_ceil(60_000);
    let now = now_ms();
    let body = html! {
        h1 { "Address book" }
        @if let Some(t) = top { (t) }
        p { "Withdrawals go only to addresses saved here. A new address can be used " (cooling_min)
            " minutes after you save it, so that you can react if someone else saved it; we e-mail you about \
             every change. Adding or removing one needs your second factor proven in the last few minutes ("
            a href=(STEP_UP_FOR_ADDRESS_BOOK) { "confirm it" } ")." }
        (entries_table(&entries, &csrf, now))
        section aria-labelledby="add-heading" {
            h2 id="add-heading" { "Save a destination" }
            form method="post" action=(ADDRESS_BOOK_PATH) {
                (csrf_field(&csrf))
                div class="field" {
                    label for="label" { "Label" }
                    input id="label" name="label" type="text" required maxlength="64" autocomplete="off";
                }
                div class="field" {
                    label for="asset" { "Asset" }
                    select id="asset" name="asset" {
                        @for a in supported_assets(&state.config) {
                            option value=(a.code.as_str()) { (a.code.as_str()) }
                        }
                    }
                }
                div class="field" {
                    label for="address" { "Address" }
                    input id="address" name="address" type="text" required maxlength="80" autocomplete="off"
                        spellcheck="false";
                }
                button type="submit" { "Save destination" }
            }
        }
        section aria-labelledby="wallet-heading" {
            h2 id="wallet-heading" { "Your own wallet" }
            p { "A wallet you prove you control (by signing a message with it) is a destination without \
                 cooling-off. Binding another wallet replaces it." }
            @if let Some(b) = bindings.first() {
                p id="bound-wallet" { "Bound: " code class="address" { (b.address) } " since " (utc(b.created_at_ms)) }
            } @else {
                p id="bound-wallet" { "No wallet bound." }
            }
            @if let Some(c) = challenge {
                p { "Sign this exact text with " code class="address" { (c.address) } " (personal_sign, EIP-191) \
                     before " (utc(c.expires_at_ms)) ", then paste the signature below." }
                div class="field" {
                    label for="challenge-message" { "Message to sign" }
                    textarea id="challenge-message" readonly rows="9" { (c.message) }
                }
                form method="post" action="/portal/wallet-binding" {
                    (csrf_field(&csrf))
                    input type="hidden" name="address" value=(c.address);
                    input type="hidden" name="challenge_id" value=(c.challenge_id);
                    div class="field" {
                        label for="signature" { "Signature (0x followed by 130 hexadecimal digits)" }
                        input id="signature" name="signature" type="text" required maxlength="140"
                            autocomplete="off" spellcheck="false";
                    }
                    button type="submit" { "Bind the wallet" }
                }
            } @else {
                form method="post" action="/portal/wallet-binding/challenge" {
                    (csrf_field(&csrf))
                    div class="field" {
                        label for="wallet" { "Wallet address" }
                        input id="wallet" name="address" type="text" required maxlength="80" autocomplete="off"
                            spellcheck="false";
                    }
                    button type="submit" { "Get the message to sign" }
                }
            }
        }
    };
    Ok(layout("Address book", Nav::Customer { csrf: &csrf }, body))
}

async fn address_book_answer(
    state: &AppState,
    session: &WebSession,
    status: StatusCode,
    top: Option<Markup>,
    challenge: Option<&ChallengeView>,
) -> Response {
    match address_book_page(state, session, top, challenge).await {
        Ok(page) => respond(status, page, &[]),
        Err(p) => problem_page(&p, back(ADDRESS_BOOK_PATH)),
    }
}

async fn address_book_problem(state: &AppState, session: &WebSession, p: &Problem) -> Response {
    let top = html! { (problem_summary(p)) (step_up_hint(p, STEP_UP_FOR_ADDRESS_BOOK)) };
    address_book_answer(state, session, p.status, Some(top), None).await
}

pub async fn address_book_view(State(state): State<AppState>, session: WebSession) -> Response {
    address_book_answer(&state, &session, StatusCode::OK, None, None).await
}

/// [`address_book::add_entry`]: step-up, checks, cooling-off and the notice are the API's.
pub async fn add_entry(
    State(state): State<AppState>,
    session: WebSession,
    parsed: Result<Form<EntryForm>, FormRejection>,
) -> Response {
    let f = match form(parsed).and_then(|f| session.check_csrf(&f.csrf).map(|()| f)) {
        Ok(f) => f,
        Err(p) => return address_book_problem(&state, &session, &p).await,
    };
    let request = NewEntryRequest { label: f.label, asset: f.asset, address: f.address };
    match address_book::add_entry(State(state.clone()), session.customer.clone(), ApiJson(request)).await {
        Ok((_, Json(e))) => {
            let top = html! { p class="notice" role="status" id="saved" {
            "Saved “" (e.label) "”. " @if e.usable { "It is ready for withdrawals." }
            @else { "It can be used from " (utc(e.usable_at_ms)) "." } } };
            address_book_answer(&state, &session, StatusCode::CREATED, Some(top), None).await
        }
        Err(p) => address_book_problem(&state, &session, &p).await,
    }
}

/// [`address_book::remove_entry`].
pub async fn remove_entry(
    State(state): State<AppState>,
    session: WebSession,
    Path(id): Path<String>,
    parsed: Result<Form<CsrfForm>, FormRejection>,
) -> Response {
    if let Err(p) = form(parsed).and_then(|f| session.check_csrf(&f.csrf)) {
        return address_book_problem(&state, &session, &p).await;
    }
    match address_book::remove_entry(State(state.clone()), session.customer.clone(), Path(id)).await {
        Ok(_) => Redirect::to(ADDRESS_BOOK_PATH).into_response(),
        Err(p) => address_book_problem(&state, &session, &p).await,
    }
}

/// [`address_book::create_challenge`]: the message the wallet signs, shown with the form for its signature.
pub async fn wallet_challenge(
    State(state): State<AppState>,
    session: WebSession,
    parsed: Result<Form<ChallengeForm>, FormRejection>,
) -> Response {
    let f = match form(parsed).and_then(|f| session.check_csrf(&f.csrf).map(|()| f)) {
        Ok(f) => f,
        Err(p) => return address_book_problem(&state, &session, &p).await,
    };
    let request = ChallengeRequest { address: f.address };
    match address_book::create_challenge(State(state.clone()), session.customer.clone(), ApiJson(request)).await {
        Ok((_, Json(c))) => address_book_answer(&state, &session, StatusCode::OK, None, Some(&c)).await,
        Err(p) => address_book_problem(&state, &session, &p).await,
    }
}

/// [`address_book::bind_wallet`] with the pasted EIP-191 signature (and the session's step-up; the
/// migration path with the old wallet's signature stays with the API).
pub async fn bind_wallet(
    State(state): State<AppState>,
    session: WebSession,
    parsed: Result<Form<BindForm>, FormRejection>,
) -> Response {
    let f = match form(parsed).and_then(|f| session.check_csrf(&f.csrf).map(|()| f)) {
        Ok(f) => f,
        Err(p) => return address_book_problem(&state, &session, &p).await,
    };
    let request = BindRequest {
        address: f.address,
        challenge_id: f.challenge_id,
        signature: f.signature.trim().to_string(),
        previous_signature: None,
    };
    match address_book::bind_wallet(State(state.clone()), session.customer.clone(), ApiJsonOpt(request)).await {
        Ok((_, Json(b))) => {
            let top = html! { p class="notice" role="status" id="bound" { "Wallet " (b.address) " bound." } };
            address_book_answer(&state, &session, StatusCode::CREATED, Some(top), None).await
        }
        Err(p) => address_book_problem(&state, &session, &p).await,
    }
}

// ---------------------------------------------------------------------------------------------------
// Login history.

/// `GET /portal/logins`: every login attempt the API keeps showing ([`login_protection::login_history`],
/// its largest page), successful and refused, with address and browser (U11).
pub async fn logins(State(state): State<AppState>, session: WebSession) -> Response {
    let query = HistoryQuery { limit: Some(LOGIN_HISTORY_ROWS.to_string()) };
    let history =
        match login_protection::login_history(State(state.clone()), session.customer.clone(), Query(query)).await {
            Ok(Json(h)) => h.logins,
            Err(p) => return problem_page(&p, Some(("/portal", "Back to your account"))),
        };
    let csrf = session.csrf();
    let last_success = history.iter().find(|l| l.outcome == "success");
    let body = html! {
        h1 { "Login history" }
        @if let Some(l) = last_success {
            p id="last-login" { "Last successful log-in: " (utc(l.at_ms)) " from " (l.ip) "." }
        }
        p { "Every log-in attempt on your account, newest first (the latest " (LOGIN_HISTORY_ROWS) "). If one was \
             not you, change your password." }
        @if history.is_empty() {
            p { "None yet." }
        } @else {
            div class="table-scroll" {
                table id="logins" class="logins" {
                    caption class="visually-hidden" { "Log-in attempts, newest first" }
                    thead { tr { th scope="col" { "When" } th scope="col" { "Result" } th scope="col" { "Address" }
                        th scope="col" { "Browser" } } }
                    tbody {
                        @for l in &history {
                            tr {
                                td { (utc(l.at_ms)) }
                                td class="outcome" { (status_text(&l.outcome)) }
                                td { (l.ip) }
                                td class="agent" { (l.user_agent) }
                            }
                        }
                    }
                }
            }
        }
    };
    respond(StatusCode::OK, layout("Login history", Nav::Customer { csrf: &csrf }, body), &[])
}

#[cfg(test)]
mod tests {
    use kinko_core::Amount;

    use super::*;

    /// M1, A3: only the decimal point moves; the API's parser judges the rest.
    #[test]
    fn m1_decimal_amounts_become_base_units_text() {
        assert_eq!(base_units_text("0.25", 18).unwrap(), "250000000000000000");
        assert_eq!(base_units_text("1", 18).unwrap(), "1000000000000000000");
        assert_eq!(base_units_text(" 1.5 ", 6).unwrap(), "1500000");
        assert_eq!(base_units_text("0.000001", 6).unwrap(), "1");
        assert_eq!(base_units_text("0", 18).unwrap(), "0");
        assert_eq!(base_units_text("12", 0).unwrap(), "12");
        let p = base_units_text("0.1234567", 6).unwrap_err();
        assert_eq!(p.body.errors[0].field, "amount");
        // Not numbers: passed on for the API's parser to refuse, never silently fixed.
        for bad in ["-1", "1e18", "abc", "1.2.3", ""] {
            let text = base_units_text(bad, 18).unwrap_or_default();
            assert!(Amount::parse_positive(&text).is_err(), "{bad:?} -> {text:?}");
        }
    }

    /// U1 (web::kyc): the withdrawal page's `kyc-required` refusal links the identity page.
    #[test]
    fn u1_kyc_required_refusal_links_the_identity_page() {
        let p = Problem::new(StatusCode::FORBIDDEN, "kyc-required", "identity verification required");
        let html = step_up_hint(&p, STEP_UP_FOR_WITHDRAW).into_string();
        assert!(html.contains(r#"href="/portal/kyc""#), "{html}");
        let other = Problem::new(StatusCode::FORBIDDEN, "mfa-required", "second factor required");
        assert!(!step_up_hint(&other, STEP_UP_FOR_WITHDRAW).into_string().contains("/portal/kyc"));
    }
}
