//! The operator console (issue #8): `/ops/...` pages for operators, a separate principal from customers.
//!
//! - Log-in is the ops API's own [`ops_auth::create_session`] (argon2id password + mandatory TOTP, one
//!   answer for every failure); the bearer token it returns is kept in its own `HttpOnly; Secure;
//!   SameSite=Strict` cookie [`OPS_SESSION_COOKIE`], never the customer's. Every page resolves the operator
//!   through the API's own [`Operator`] extractor (the cookie's token is presented to it as a bearer token),
//!   so the roles come from the replayed, signature-verified registry exactly as for `/v1/ops/...`, and each
//!   action calls the API handler itself (`decide`, `inspect`, `create_freeze`, …): no second authorization.
//! - CSRF: the same two lines as the customer pages ([`super::check_origin`] before any handler, then the
//!   synchronizer token [`super::csrf_token`] derived from the ops cookie, or from the pre-session cookie on
//!   the log-in form).
//! - The request page shows **what the signer will sign**, not what the requester typed ([`preview`]): the
//!   unsigned EIP-1559 payload is built from the withdrawal row with the pipeline's own builders (the row is
//!   what the pipeline signs from; nonce and fees are fixed only at signing, so the preview uses the row's
//!   nonce when it has one and the configured fee cap, the most the transaction may burn), decoded with the
//!   signer's decoder (`kinko_signer::evm::decode_eip1559`, `classify_calldata`) and checked against the
//!   approvers' intent with the signer's own check (`check_against_intent`, the signer's EVM policy). The
//!   intent is rebuilt from the request's params and must hash to the stored intent hash. Any disagreement
//!   is an alert and the page offers no approval.
//! - Approving is signing: the page shows the approval message (`operators::approval_message`) and the
//!   intent hash; the operator signs it on their own terminal with their approval key (`kinko ops approve`
//!   signs and posts it itself; `kinko ops sign` makes the same checks and only prints the signature) and
//!   pastes the signature, which goes through
//!   [`ops_requests::decide`], where it is verified against the server's registry, and later again by the
//!   signer against its own.

use axum::Json;
use axum::extract::rejection::FormRejection;
use axum::extract::{FromRequestParts, Path, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::{Form, extract::Query};
use kinko_core::intent::Intent;
use kinko_core::operators::{ApprovalSubject, Decision, Process, approval_message};
use kinko_core::{Amount, AssetCode, ChainId};
use maud::{Markup, html};
use serde::Deserialize;

use super::pages::{Nav, csrf_field, layout, problem_summary, respond, utc};
use super::{Visitor, check_csrf, cookie, csrf_token, set_cookie};
use crate::AppState;
use crate::api::Problem;
use crate::api::ops_auth::{self, OPS_TOKEN_BYTES, Operator, OpsJson, OpsLogin, Terminal};
use crate::api::ops_requests::{self, DecisionBody, InspectBody, ListQuery, RequestView};
use crate::api::problem::FieldError;
use crate::clock::now_ms;

/// The operator's session cookie: the ops API's bearer token, for `/ops` pages only in effect (the customer
/// pages read [`super::SESSION_COOKIE`], and a customer token is unknown to the operator session table).
pub const OPS_SESSION_COOKIE: &str = "__Host-kinko-ops";
pub const OPS_LOGIN_PATH: &str = "/ops/login";
pub const OPS_QUEUE_PATH: &str = "/ops";
pub const OPS_INSPECTION_PATH: &str = "/ops/inspection";
pub const OPS_FREEZES_PATH: &str = "/ops/freezes";
pub const OPS_RECONCILIATION_PATH: &str = "/ops/reconciliation";
pub const OPS_AUDIT_PATH: &str = "/ops/audit";
/// The transaction kinds whose approval subject is a withdrawal intent (the page decodes a transaction).
const TRANSFER_KINDS: &[&str] =
    &[crate::withdrawal_policy::CUSTOMER_WITHDRAWAL_KIND, crate::withdrawal_policy::CUSTODIAN_TRANSFER_KIND];

/// A signed-in operator as the console sees them: the API's [`Operator`] and the token the CSRF token
/// derives from.
pub struct OpsSession {
    pub op: Operator,
    token: String,
}

impl OpsSession {
    pub(super) fn csrf(&self) -> String {
        csrf_token(&self.token)
    }

    /// The second CSRF line for a form posted with this session.
    pub(super) fn check_csrf(&self, submitted: &str) -> Result<(), Problem> {
        check_csrf(Some(&self.token), submitted)
    }
}

/// The ops session token in the request's operator cookie, if it has the token's shape (lower-cased). The
/// audit layer names the operator behind a console request with it, as it does with a bearer token.
pub fn session_token(headers: &axum::http::HeaderMap) -> Option<String> {
    cookie(headers, OPS_SESSION_COOKIE)
        .filter(|t| t.len() == OPS_TOKEN_BYTES * 2 && t.bytes().all(|b| b.is_ascii_hexdigit()))
        .map(|t| t.to_ascii_lowercase())
}

impl FromRequestParts<AppState> for OpsSession {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<OpsSession, Response> {
        let to_login = || Redirect::to(OPS_LOGIN_PATH).into_response();
        let token = session_token(&parts.headers).ok_or_else(to_login)?;
        // The API's own extractor decides: the cookie's token is presented to it as the bearer token.
        let bearer = HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| to_login())?;
        parts.headers.insert(header::AUTHORIZATION, bearer);
        let op = Operator::from_request_parts(parts, state).await;
        parts.headers.remove(header::AUTHORIZATION);
        match op {
            Ok(op) => Ok(OpsSession { op, token }),
            Err(p) if p.status == StatusCode::UNAUTHORIZED => Err(to_login()),
            Err(p) => Err(ops_problem_page(&p, None)),
        }
    }
}

pub(super) fn ops_layout(title: &str, session: Option<&OpsSession>, body: Markup) -> Markup {
    let inner = html! {
        @if let Some(s) = session {
            nav aria-label="Operator console" class="ops-nav" {
                p { "Operator " strong { (s.op.id) } " (" (roles_text(&s.op)) ")" }
                a href=(OPS_QUEUE_PATH) { "Approval queue" }
                " · " a href=(OPS_INSPECTION_PATH) { "Inspection" }
                " · " a href=(OPS_FREEZES_PATH) { "Freezes" }
                " · " a href=(OPS_RECONCILIATION_PATH) { "Reconciliation" }
                " · " a href=(OPS_AUDIT_PATH) { "Audit trail" }
                " · " a href=(super::ops_keys::OPS_KEYS_PATH) { "Keys" }
                " · " a href=(super::ops_keys::OPS_KEY_ACCESS_LOG_PATH) { "Key access log" }
                " · " a href=(super::ops_admin::OPS_KYC_PATH) { "KYC cases" }
                " · " a href=(super::ops_admin::OPS_MAINTENANCE_PATH) { "Maintenance" }
                form method="post" action="/ops/logout" class="inline" {
                    (csrf_field(&s.csrf()))
                    button type="submit" { "Log out" }
                }
            }
        }
        (body)
    };
    layout(title, Nav::Operator, inner)
}

fn roles_text(op: &Operator) -> String {
    if op.roles.is_empty() {
        "no active role".into()
    } else {
        op.roles.iter().map(|r| r.as_str()).collect::<Vec<_>>().join(", ")
    }
}

/// A full page for a problem in the console: never a blank page.
pub fn ops_problem_page(problem: &Problem, back: Option<(&str, &str)>) -> Response {
    let (href, label) = back.unwrap_or((OPS_QUEUE_PATH, "Back to the approval queue"));
    let body = html! {
        h1 { "That did not work" }
        (problem_summary(problem))
        p { a href=(href) { (label) } }
    };
    respond(problem.status, ops_layout("Operator console", None, body), &[])
}

pub(super) fn page(session: &OpsSession, title: &str, body: Markup) -> Response {
    respond(StatusCode::OK, ops_layout(title, Some(session), body), &[])
}

pub(super) fn form<T>(parsed: Result<Form<T>, FormRejection>) -> Result<T, Problem> {
    parsed.map(|Form(f)| f).map_err(|_| {
        Problem::validation(vec![FieldError::new("form", "could not be read: open the page again and resubmit")])
    })
}

// ---------------------------------------------------------------------------------------------------
// Log in and out.

fn login_page(visitor: &Visitor, operator_id: &str, problem: Option<&Problem>) -> Markup {
    let body = html! {
        h1 { "Operator log-in" }
        @if let Some(p) = problem { (problem_summary(p)) }
        p { "Operators log in with their password and the current code of their authenticator app." }
        form method="post" action=(OPS_LOGIN_PATH) {
            (csrf_field(&visitor.csrf()))
            div class="field" {
                label for="operator_id" { "Operator id" }
                input id="operator_id" name="operator_id" type="text" autocomplete="username" required value=(operator_id);
            }
            div class="field" {
                label for="password" { "Password" }
                input id="password" name="password" type="password" autocomplete="current-password" required;
            }
            div class="field" {
                label for="totp_code" { "Authenticator code" }
                input id="totp_code" name="totp_code" type="text" inputmode="numeric" autocomplete="one-time-code"
                    pattern="[0-9]{6}" required;
            }
            button type="submit" { "Log in" }
        }
    };
    ops_layout("Operator log-in", None, body)
}

pub async fn login_form(visitor: Visitor) -> Response {
    let cookies: Vec<HeaderValue> = visitor.new_cookie.iter().cloned().collect();
    respond(StatusCode::OK, login_page(&visitor, "", None), &cookies)
}

#[derive(Deserialize)]
pub struct LoginForm {
    csrf: String,
    operator_id: String,
    password: String,
    totp_code: String,
}

pub async fn login(
    State(state): State<AppState>,
    visitor: Visitor,
    terminal: Result<Terminal, Problem>,
    parsed: Result<Form<LoginForm>, FormRejection>,
) -> Response {
    let cookies: Vec<HeaderValue> = visitor.new_cookie.iter().cloned().collect();
    let f = match form(parsed) {
        Ok(f) => f,
        Err(p) => return respond(p.status, login_page(&visitor, "", Some(&p)), &cookies),
    };
    if let Err(p) = check_csrf(Some(&visitor.secret), &f.csrf) {
        return respond(p.status, login_page(&visitor, &f.operator_id, Some(&p)), &cookies);
    }
    let terminal = match terminal {
        Ok(t) => t,
        Err(p) => return ops_problem_page(&p, Some((OPS_LOGIN_PATH, "Log in again"))),
    };
    let body = OpsLogin { operator_id: f.operator_id.clone(), password: f.password, totp_code: f.totp_code };
    match ops_auth::create_session(State(state), terminal, OpsJson(body)).await {
        Ok((_, Json(created))) => {
            let max_age = (created.expires_at_ms - now_ms()) / 1000;
            let mut resp = Redirect::to(OPS_QUEUE_PATH).into_response();
            resp.headers_mut().append(header::SET_COOKIE, set_cookie(OPS_SESSION_COOKIE, &created.token, max_age));
            resp
        }
        Err(p) => respond(p.status, login_page(&visitor, &f.operator_id, Some(&p)), &cookies),
    }
}

#[derive(Deserialize)]
pub struct CsrfOnly {
    csrf: String,
}

pub async fn logout(session: OpsSession, parsed: Result<Form<CsrfOnly>, FormRejection>) -> Response {
    if let Err(p) = form(parsed).and_then(|f| check_csrf(Some(&session.token), &f.csrf)) {
        return ops_problem_page(&p, None);
    }
    // The cookie is dropped; the server-side session expires with its TTL (the API has no log-out).
    let mut resp = Redirect::to(OPS_LOGIN_PATH).into_response();
    resp.headers_mut().append(header::SET_COOKIE, set_cookie(OPS_SESSION_COOKIE, "", 0));
    resp
}

// ---------------------------------------------------------------------------------------------------
// The queue and the inspection view.

fn requests_table(caption: &str, rows: &[RequestView]) -> Markup {
    html! {
        table class="requests" {
            caption { (caption) }
            thead { tr { th scope="col" { "Request" } th scope="col" { "Process" } th scope="col" { "Kind" }
                th scope="col" { "Requester" } th scope="col" { "Approvals" } th scope="col" { "State" } } }
            tbody {
                @for r in rows {
                    tr {
                        td class="agent" { a href=(format!("/ops/requests/{}", r.id)) { (r.id) } }
                        td { (r.process) } td { (r.kind) } td class="agent" { (r.requester) }
                        td { (r.approvals.iter().filter(|a| a.decision == "approve").count()) " of " (r.required) }
                        td { (r.state) }
                    }
                }
            }
        }
        @if rows.is_empty() { p { "None." } }
    }
}

async fn list(state: &AppState, op: &Operator, s: &str) -> Result<Vec<RequestView>, Problem> {
    let q = ListQuery { state: Some(s.to_string()) };
    ops_requests::list_requests(State(state.clone()), op.clone(), Query(q)).await.map(|Json(v)| v)
}

/// `/ops`: requests waiting for a decision.
pub async fn queue(State(state): State<AppState>, session: OpsSession) -> Response {
    match list(&state, &session.op, "requested").await {
        Ok(rows) => page(
            &session,
            "Approval queue",
            html! {
                h1 { "Approval queue" }
                p { "Requests waiting for approval. Open one to see the decoded transaction before you sign." }
                (requests_table("Requests waiting for approval", &rows))
            },
        ),
        Err(p) => ops_problem_page(&p, Some((OPS_QUEUE_PATH, "Reload the queue"))),
    }
}

/// `/ops/inspection`: executed requests waiting for the log inspector, and the ones inspected.
pub async fn inspection(State(state): State<AppState>, session: OpsSession) -> Response {
    let executed = list(&state, &session.op, "executed").await;
    let inspected = list(&state, &session.op, "inspected").await;
    match (executed, inspected) {
        (Ok(executed), Ok(inspected)) => page(
            &session,
            "Inspection",
            html! {
                h1 { "Inspection" }
                p { "Approved → executed → inspected: executed requests wait here for a log inspector who was not involved." }
                (requests_table("Executed, waiting for inspection", &executed))
                (requests_table("Inspected", &inspected))
            },
        ),
        (Err(p), _) | (_, Err(p)) => ops_problem_page(&p, Some((OPS_INSPECTION_PATH, "Reload"))),
    }
}

// ---------------------------------------------------------------------------------------------------
// One request: the decoded transaction, the approval message, the decision form.

/// What the signer will sign, decoded, and whether it matches the approvers' intent.
#[derive(Debug, Default)]
pub struct Preview {
    pub intent: Option<Intent>,
    pub chain_id: Option<u64>,
    /// `None` while the pipeline has not reserved one (it is fixed at signing).
    pub nonce: Option<u64>,
    pub asset: String,
    pub amount_text: String,
    pub destination: String,
    pub token_contract: Option<String>,
    pub max_fee_per_gas: u128,
    pub gas_limit: u64,
    pub payload_hex: String,
    /// Each disagreement between the decoded transaction, the stored intent hash and the params.
    pub mismatches: Vec<String>,
}

fn param<'a>(params: &'a serde_json::Value, f: &str) -> Option<&'a str> {
    params.get(f).and_then(|v| v.as_str())
}

/// The intent the approvers sign, rebuilt from the request's params (what `kinko ops approve` recomputes
/// on the operator's terminal).
fn intent_from_params(id: &str, params: &serde_json::Value) -> Result<Intent, String> {
    let missing = |f: &str| format!("params.{f} is missing or invalid");
    Ok(Intent {
        id: id.to_string(),
        asset: param(params, "asset").and_then(|a| a.parse::<AssetCode>().ok()).ok_or_else(|| missing("asset"))?,
        chain_id: ChainId(params.get("chain_id").and_then(|v| v.as_u64()).ok_or_else(|| missing("chain_id"))?),
        amount: param(params, "amount").and_then(|a| a.parse::<Amount>().ok()).ok_or_else(|| missing("amount"))?,
        destination: param(params, "destination").ok_or_else(|| missing("destination"))?.to_string(),
        source_wallet: param(params, "source_wallet").ok_or_else(|| missing("source_wallet"))?.to_string(),
        customer_id: param(params, "customer").ok_or_else(|| missing("customer"))?.to_string(),
        reason: param(params, "reason").ok_or_else(|| missing("reason"))?.to_string(),
    })
}

/// Builds the payload the pipeline would sign for this request (from the withdrawal row when there is one),
/// decodes it with the signer's decoder and checks it against the intent with the signer's check.
pub async fn preview(state: &AppState, req: &RequestView) -> Preview {
    let mut out = Preview::default();
    let intent = match intent_from_params(&req.id, &req.params) {
        Ok(i) => i,
        Err(e) => {
            out.mismatches.push(e);
            return out;
        }
    };
    if hex::encode(intent.hash()) != req.intent_hash {
        out.mismatches.push(
            "the stored intent hash is not the hash of the request's parameters: what you would sign is not what \
             is shown"
                .into(),
        );
    }
    // The source the pipeline builds from: the withdrawal row (a custodian transfer has one only once executed).
    let (nonce, asset, amount, destination) = match state.store.withdrawal(&req.id).await {
        Ok(Some(w)) => (w.nonce, w.asset, w.amount, w.destination),
        Ok(None) if req.kind == crate::withdrawal_policy::CUSTODIAN_TRANSFER_KIND => {
            (None, intent.asset.clone(), intent.amount, intent.destination.clone())
        }
        Ok(None) => {
            out.mismatches.push(format!("withdrawal {} is not stored: nothing would be signed", req.id));
            out.intent = Some(intent);
            return out;
        }
        Err(e) => {
            out.mismatches.push(format!("the withdrawal could not be read: {e}"));
            out.intent = Some(intent);
            return out;
        }
    };
    let tokens = match crate::erc20::TokenSet::from_config(&state.config.ethereum) {
        Ok(t) => t,
        Err(e) => {
            out.mismatches.push(format!("token configuration: {e}"));
            return out;
        }
    };
    let policy = match tokens.signer_policy() {
        Ok(p) => p,
        Err(e) => {
            out.mismatches.push(format!("the signer's policy: {e}"));
            return out;
        }
    };
    let to = match kinko_chain::evm::address::parse_address(&destination) {
        Ok(a) => a,
        Err(e) => {
            out.mismatches.push(format!("destination {destination:?}: {e}"));
            return out;
        }
    };
    let cap = state.config.ethereum.max_fee_per_gas_cap_wei;
    let fees = kinko_chain::evm::FeeEstimate { max_fee_per_gas: cap, max_priority_fee_per_gas: cap };
    let chain_id = state.config.ethereum.chain_id;
    let unsigned = if asset == tokens.native {
        kinko_chain::evm::build::native_transfer(
            chain_id,
            nonce.unwrap_or(0),
            to,
            amount.base_units(),
            fees,
            kinko_chain::evm::NATIVE_TRANSFER_GAS,
        )
    } else if let Some(t) = tokens.by_asset(&asset) {
        kinko_chain::evm::erc20::token_transfer(
            chain_id,
            nonce.unwrap_or(0),
            t.contract,
            to,
            amount.base_units(),
            fees,
            t.gas_limit,
        )
    } else {
        out.mismatches.push(format!("asset {asset} is neither the native coin nor a configured token"));
        return out;
    };
    out.payload_hex = hex::encode(&unsigned.payload);
    // From here on, only what the signer's decoder reads from the payload is shown.
    let tx = match kinko_signer::evm::decode_eip1559(&unsigned.payload) {
        Ok(tx) => tx,
        Err(e) => {
            out.mismatches.push(format!("the payload does not decode: {e}"));
            return out;
        }
    };
    out.chain_id = Some(tx.chain_id);
    out.nonce = nonce.map(|_| tx.nonce);
    out.max_fee_per_gas = tx.max_fee_per_gas;
    out.gas_limit = tx.gas_limit;
    let to_addr = match tx.to {
        alloy_primitives::TxKind::Call(a) => format!("{a:#x}"),
        alloy_primitives::TxKind::Create => "contract creation".into(),
    };
    match kinko_signer::evm::classify_calldata(&tx.input) {
        Ok(kinko_signer::evm::EvmCall::None) => {
            out.asset = tokens.native.to_string();
            out.destination = to_addr;
            let wei = u128::try_from(tx.value).unwrap_or(u128::MAX);
            out.amount_text = amount_with_decimals(state, tokens.native.as_str(), Amount::from_base_units(wei));
        }
        Ok(kinko_signer::evm::EvmCall::Erc20Transfer { recipient, amount }) => {
            let token = to_addr.parse().ok().and_then(|c| tokens.by_contract(&c));
            out.asset = token.map_or_else(|| "unknown token".to_string(), |t| t.code.to_string());
            out.token_contract = Some(to_addr);
            out.destination = format!("{recipient:#x}");
            let units = u128::try_from(amount).unwrap_or(u128::MAX);
            out.amount_text = amount_with_decimals(state, &out.asset, Amount::from_base_units(units));
        }
        Err(e) => out.mismatches.push(format!("the call data is refused: {e}")),
    }
    if let Err(e) =
        kinko_signer::evm::check_against_intent(&tx, intent.chain_id.0, tx.nonce, &intent, &state.hot_wallet, &policy)
    {
        out.mismatches.push(format!("the decoded transaction does not match the intent: {e}"));
    }
    out.intent = Some(intent);
    out
}

fn amount_with_decimals(state: &AppState, asset: &str, amount: Amount) -> String {
    super::portal::amount_text(state, asset, amount)
}

fn wei_text(wei: u128) -> String {
    format!("{} ETH ({wei} wei)", Amount::from_base_units(wei).display_with_decimals(18))
}

fn reasons_list(reasons: &serde_json::Value) -> Markup {
    let items: Vec<String> = reasons
        .as_array()
        .map(|a| {
            a.iter()
                .map(|r| match r.as_object() {
                    Some(o) => {
                        let rule = o.get("rule").and_then(|v| v.as_str()).unwrap_or("rule");
                        let rest: Vec<String> =
                            o.iter().filter(|(k, _)| *k != "rule").map(|(k, v)| format!("{k} = {v}")).collect();
                        if rest.is_empty() { rule.to_string() } else { format!("{rule}: {}", rest.join(", ")) }
                    }
                    None => r.to_string(),
                })
                .collect()
        })
        .unwrap_or_default();
    html! {
        @if items.is_empty() { p { "No policy reasons recorded." } }
        @else { ul id="reasons" { @for i in &items { li { (i) } } } }
    }
}

fn subject_of(req: &RequestView) -> Result<ApprovalSubject, Problem> {
    let process = Process::parse(&req.process).ok_or_else(|| Problem::internal("unknown process"))?;
    let mut hash = [0u8; 32];
    hex::decode_to_slice(&req.intent_hash, &mut hash).map_err(Problem::internal)?;
    ApprovalSubject::new(process, &req.id, hash).map_err(|e| Problem::internal(e.to_string()))
}

pub(super) async fn request_page(
    state: &AppState,
    session: &OpsSession,
    id: &str,
    problem: Option<&Problem>,
) -> Response {
    let req = match ops_requests::get_request(State(state.clone()), session.op.clone(), Path(id.to_string())).await {
        Ok(Json(r)) => r,
        Err(p) => return ops_problem_page(&p, None),
    };
    let is_transfer = TRANSFER_KINDS.contains(&req.kind.as_str());
    let pv = if is_transfer { Some(preview(state, &req).await) } else { None };
    let blocked = pv.as_ref().is_some_and(|p| !p.mismatches.is_empty());
    let subject = subject_of(&req);
    let messages = subject.as_ref().ok().map(|s| {
        let m = |d| approval_message(s, d).map(hex::encode).unwrap_or_default();
        (m(Decision::Approve), m(Decision::Reject))
    });
    let status = problem.map_or(StatusCode::OK, |p| p.status);
    let body = html! {
        h1 { "Request " code class="address" { (req.id) } }
        @if let Some(p) = problem { (problem_summary(p)) }
        @if let Some(pv) = &pv {
            @if !pv.mismatches.is_empty() {
                div class="problem" role="alert" id="mismatch" {
                    h2 { "Do not approve: the transaction does not match the intent" }
                    p { "What the signer would sign differs from what the request asks for. No approval is offered." }
                    ul { @for m in &pv.mismatches { li { (m) } } }
                }
            }
            h2 { "What the signer will sign" }
            p class="hint" { "Decoded from the unsigned transaction built from the stored withdrawal, with the signer's own decoder — not the requester's text." }
            dl class="decoded" id="decoded" {
                dt { "Chain" } dd id="decoded-chain" { (pv.chain_id.map_or("—".to_string(), |c| format!("chain id {c}"))) }
                dt { "Asset" } dd id="decoded-asset" { (pv.asset) }
                dt { "Amount" } dd id="decoded-amount" { (pv.amount_text) }
                dt { "Destination" } dd id="decoded-destination" { code class="address" { (pv.destination) } }
                @if let Some(c) = &pv.token_contract { dt { "Token contract" } dd { code class="address" { (c) } } }
                dt { "Nonce" } dd id="decoded-nonce" { (pv.nonce.map_or("assigned when signed".to_string(), |n| n.to_string())) }
                dt { "Fee at most" } dd id="decoded-fee" {
                    (wei_text(u128::from(pv.gas_limit).saturating_mul(pv.max_fee_per_gas)))
                    " = gas limit " (pv.gas_limit) " × max fee " (pv.max_fee_per_gas) " wei"
                }
                dt { "From" } dd { code class="address" { (state.hot_wallet) } }
            }
            @if !pv.payload_hex.is_empty() {
                details { summary { "Unsigned payload (hex)" } p { code class="address" { (pv.payload_hex) } } }
            }
        }
        h2 { "Request" }
        dl {
            dt { "Process" } dd { (req.process) }
            dt { "Kind" } dd { (req.kind) }
            dt { "Requester" } dd { code class="address" { (req.requester) } }
            dt { "State" } dd id="request-state" { (req.state) }
            dt { "Approvals" } dd { (req.approvals.iter().filter(|a| a.decision == "approve").count()) " of " (req.required) " required" }
            dt { "Intent hash" } dd id="intent-hash" { code class="address" { (req.intent_hash) } }
        }
        @if !is_transfer {
            h3 { "Parameters" }
            p { code class="address" id="params" { (req.params.to_string()) } }
        }
        h3 { "The policy's reasons" }
        (reasons_list(&req.reasons))
        @if !req.approvals.is_empty() {
            h3 { "Decisions" }
            ul { @for a in &req.approvals { li { (a.operator_id) " " (a.decision) " at " (utc(a.at_ms)) } } }
        }
        @if req.state == "requested" && !blocked {
            @if let Some((approve, reject)) = &messages {
                h2 { "Approve or reject" }
                p { "Approving is signing. On your own terminal, with your approval key, run:" }
                p { code class="address" id="approve-command" { "kinko ops approve " (req.id) " --key YOUR_KEY_FILE" } }
                p { "It shows the request, recomputes the intent hash from it, refuses if the hash differs from the one above, and signs and submits the decision itself. To decide here instead, print the signature on your terminal without submitting anything:" }
                p { code class="address" id="sign-command" { "kinko ops sign " (req.id) " --key YOUR_KEY_FILE" } }
                p { "It makes the same checks, then prints the signature (add " code { "--reject" } " to sign a rejection); paste it below. It signs exactly one of these messages:" }
                p { "Approval message (hex): " code class="address" id="approval-message" { (approve) } }
                p { "Rejection message (hex): " code class="address" id="rejection-message" { (reject) } }
                form method="post" action=(format!("/ops/requests/{}/decision", req.id)) {
                    (csrf_field(&session.csrf()))
                    div class="field" {
                        label for="decision" { "Decision" }
                        select id="decision" name="decision" {
                            option value="approve" selected { "Approve" }
                            option value="reject" { "Reject" }
                        }
                    }
                    div class="field" {
                        label for="signature_hex" { "Signature (hex)" }
                        input id="signature_hex" name="signature_hex" type="text" autocomplete="off" spellcheck="false" required;
                        p class="hint" { "128 hex characters printed by " code { "kinko ops sign " (req.id) } ": your Ed25519 signature over the message of your decision." }
                    }
                    button type="submit" { "Submit signed decision" }
                }
            }
        }
        (super::ops_keys::execute_section(session, &req, problem))
        @if req.state == "executed" {
            h2 { "Inspect" }
            form method="post" action=(format!("/ops/requests/{}/inspect", req.id)) {
                (csrf_field(&session.csrf()))
                div class="field" {
                    label for="finding" { "Finding" }
                    select id="finding" name="finding" {
                        option value="ok" selected { "OK" }
                        option value="anomaly" { "Anomaly" }
                    }
                }
                div class="field" {
                    label for="note" { "Note" }
                    input id="note" name="note" type="text";
                }
                button type="submit" { "Record inspection" }
            }
        }
        @if let Some(result) = &req.result {
            h3 { "Result" }
            p { code class="address" id="result" { (result.to_string()) } }
        }
    };
    respond(status, ops_layout(&format!("Request {}", req.id), Some(session), body), &[])
}

/// `/ops/requests/{id}`.
pub async fn request(State(state): State<AppState>, session: OpsSession, Path(id): Path<String>) -> Response {
    request_page(&state, &session, &id, None).await
}

#[derive(Deserialize)]
pub struct DecisionForm {
    csrf: String,
    decision: String,
    signature_hex: String,
}

/// `POST /ops/requests/{id}/decision`: the pasted signature through the API's own `decide`. Refused here
/// first when the page would show a mismatch: a decision cannot be posted past the alert.
pub async fn decision(
    State(state): State<AppState>,
    session: OpsSession,
    Path(id): Path<String>,
    parsed: Result<Form<DecisionForm>, FormRejection>,
) -> Response {
    let f = match form(parsed).and_then(|f| check_csrf(Some(&session.token), &f.csrf).map(|()| f)) {
        Ok(f) => f,
        Err(p) => return request_page(&state, &session, &id, Some(&p)).await,
    };
    if f.decision == "approve" {
        match ops_requests::get_request(State(state.clone()), session.op.clone(), Path(id.clone())).await {
            Ok(Json(req)) if TRANSFER_KINDS.contains(&req.kind.as_str()) => {
                let pv = preview(&state, &req).await;
                if !pv.mismatches.is_empty() {
                    let p = Problem::new(
                        StatusCode::CONFLICT,
                        "intent-mismatch",
                        "the transaction does not match the intent",
                    )
                    .detail(pv.mismatches.join("; "));
                    return request_page(&state, &session, &id, Some(&p)).await;
                }
            }
            Ok(_) => {}
            Err(p) => return ops_problem_page(&p, None),
        }
    }
    let body = DecisionBody { decision: f.decision, signature_hex: f.signature_hex.trim().to_string() };
    match ops_requests::decide(State(state.clone()), session.op.clone(), Path(id.clone()), OpsJson(body)).await {
        Ok(_) => Redirect::to(&format!("/ops/requests/{id}")).into_response(),
        Err(p) => request_page(&state, &session, &id, Some(&p)).await,
    }
}

#[derive(Deserialize)]
pub struct InspectForm {
    csrf: String,
    finding: String,
    #[serde(default)]
    note: String,
}

/// `POST /ops/requests/{id}/inspect`: the API's own `inspect`.
pub async fn inspect(
    State(state): State<AppState>,
    session: OpsSession,
    Path(id): Path<String>,
    parsed: Result<Form<InspectForm>, FormRejection>,
) -> Response {
    let f = match form(parsed).and_then(|f| check_csrf(Some(&session.token), &f.csrf).map(|()| f)) {
        Ok(f) => f,
        Err(p) => return request_page(&state, &session, &id, Some(&p)).await,
    };
    let body = InspectBody { finding: f.finding, note: f.note };
    match ops_requests::inspect(State(state.clone()), session.op.clone(), Path(id.clone()), OpsJson(body)).await {
        Ok(_) => Redirect::to(&format!("/ops/requests/{id}")).into_response(),
        Err(p) => request_page(&state, &session, &id, Some(&p)).await,
    }
}

// ---------------------------------------------------------------------------------------------------
// Freezes, reconciliation, the audit trail.

fn freezes_page(session: &OpsSession, list: &[crate::api::freezes::FreezeView], problem: Option<&Problem>) -> Markup {
    let may_freeze = ops_requests::require_endpoint(&session.op, "post", "/v1/ops/freezes").is_ok();
    let body = html! {
        h1 { "Emergency freeze" }
        @if let Some(p) = problem { (problem_summary(p)) }
        @if may_freeze {
            p { "One operator stops signing and withdrawals in the scope at once; lifting it is an unfreeze request that needs approvals." }
            form method="post" action=(OPS_FREEZES_PATH) {
                (csrf_field(&session.csrf()))
                div class="field" {
                    label for="scope" { "Scope" }
                    input id="scope" name="scope" type="text" value="all" required;
                    p class="hint" { "all, chain:ethereum, wallet:0x…, or key:ID" }
                }
                div class="field" {
                    label for="reason" { "Reason" }
                    input id="reason" name="reason" type="text" required;
                }
                button type="submit" class="danger" { "Freeze now" }
            }
        }
        table {
            caption { "Freezes" }
            thead { tr { th scope="col" { "Scope" } th scope="col" { "Reason" } th scope="col" { "Set by" }
                th scope="col" { "Set at" } th scope="col" { "Active" } } }
            tbody { @for f in list { tr { td class="agent" { (f.scope) } td { (f.reason) } td { (f.set_by) } td { (utc(f.set_at_ms)) }
                td { (if f.active { "yes" } else { "lifted" }) } } } }
        }
    };
    ops_layout("Emergency freeze", Some(session), body)
}

async fn freezes_list(state: &AppState, op: &Operator) -> Result<Vec<crate::api::freezes::FreezeView>, Problem> {
    crate::api::freezes::list_freezes(State(state.clone()), op.clone()).await.map(|Json(v)| v)
}

pub async fn freezes(State(state): State<AppState>, session: OpsSession) -> Response {
    match freezes_list(&state, &session.op).await {
        Ok(list) => respond(StatusCode::OK, freezes_page(&session, &list, None), &[]),
        Err(p) => ops_problem_page(&p, None),
    }
}

#[derive(Deserialize)]
pub struct FreezeForm {
    csrf: String,
    scope: String,
    reason: String,
}

/// `POST /ops/freezes`: the API's own `create_freeze` (it checks the role).
pub async fn freeze(
    State(state): State<AppState>,
    session: OpsSession,
    parsed: Result<Form<FreezeForm>, FormRejection>,
) -> Response {
    let outcome = match form(parsed).and_then(|f| check_csrf(Some(&session.token), &f.csrf).map(|()| f)) {
        Ok(f) => {
            let body = crate::api::freezes::NewFreezeBody { scope: f.scope, reason: f.reason };
            crate::api::freezes::create_freeze(State(state.clone()), session.op.clone(), OpsJson(body))
                .await
                .map(|_| ())
        }
        Err(p) => Err(p),
    };
    match outcome {
        Ok(()) => Redirect::to(OPS_FREEZES_PATH).into_response(),
        Err(p) => {
            let list = freezes_list(&state, &session.op).await.unwrap_or_default();
            respond(p.status, freezes_page(&session, &list, Some(&p)), &[])
        }
    }
}

pub async fn reconciliation(State(state): State<AppState>, session: OpsSession) -> Response {
    let view = match crate::api::freezes::get_reconciliation(State(state.clone()), session.op.clone()).await {
        Ok(Json(v)) => v,
        Err(p) => return ops_problem_page(&p, None),
    };
    page(
        &session,
        "Reconciliation",
        html! {
            h1 { "Reconciliation" }
            @match &view.balance {
                Some(b) => {
                    table {
                        caption { "Latest balance reconciliation" }
                        thead { tr { th scope="col" { "Chain" } th scope="col" { "Asset" } th scope="col" { "On chain" }
                            th scope="col" { "Liabilities" } th scope="col" { "Surplus" } th scope="col" { "Shortfall" } th scope="col" { "At" } } }
                        tbody { tr { td { (b.chain) } td { (b.asset) } td { (b.on_chain) } td { (b.liabilities) }
                            td { (b.surplus) } td { (b.shortfall) } td { (utc(b.at_ms)) } } }
                    }
                }
                None => p { "No balance reconciliation has run yet." }
            }
            h2 { "Unknown spends" }
            @if view.unknown_spends.is_empty() { p { "None found." } }
            @else { ul { @for s in &view.unknown_spends { li { (s.chain) " " (s.asset) " at " (utc(s.at_ms)) ": " code class="address" { (s.detail.to_string()) } } } } }
            form method="post" action=(OPS_RECONCILIATION_PATH) {
                (csrf_field(&session.csrf()))
                button type="submit" { "Run a balance reconciliation now" }
            }
        },
    )
}

pub async fn run_reconciliation(
    State(state): State<AppState>,
    session: OpsSession,
    parsed: Result<Form<CsrfOnly>, FormRejection>,
) -> Response {
    if let Err(p) = form(parsed).and_then(|f| check_csrf(Some(&session.token), &f.csrf)) {
        return ops_problem_page(&p, Some((OPS_RECONCILIATION_PATH, "Back to reconciliation")));
    }
    match crate::api::freezes::run_reconciliation(State(state.clone()), session.op.clone()).await {
        Ok(_) => Redirect::to(OPS_RECONCILIATION_PATH).into_response(),
        Err(p) => ops_problem_page(&p, Some((OPS_RECONCILIATION_PATH, "Back to reconciliation"))),
    }
}

/// How many of the newest audit entries `/ops/audit` lists.
pub const AUDIT_RECENT: i64 = 50;

/// `/ops/audit`: the audit trail's verification (the API's `audit::inspection`: head, signatures checked
/// against approved intents, findings), its newest entries (`audit::search`) and the operators' events
/// (`ops_requests::events`); log inspectors and administrators, as the API allows.
pub async fn audit(State(state): State<AppState>, session: OpsSession) -> Response {
    let report = match crate::audit::inspection(State(state.clone()), session.op.clone()).await {
        Ok(Json(r)) => r,
        Err(p) => return ops_problem_page(&p, None),
    };
    let q = crate::audit::AuditQuery {
        after: Some(report.audit_head_seq.saturating_sub(AUDIT_RECENT).max(0)),
        actor: None,
        action: None,
        limit: Some(AUDIT_RECENT),
    };
    let entries = match crate::audit::search(State(state.clone()), session.op.clone(), Query(q)).await {
        Ok(Json(e)) => e,
        Err(p) => return ops_problem_page(&p, None),
    };
    let q = ops_requests::EventsQuery { after: None };
    let events = match ops_requests::events(State(state.clone()), session.op.clone(), Query(q)).await {
        Ok(Json(e)) => e,
        Err(p) => return ops_problem_page(&p, None),
    };
    page(
        &session,
        "Audit trail",
        html! {
            h1 { "Audit trail" }
            @if report.findings.is_empty() {
                p id="audit-status" { "Verified: no findings. " (report.signatures_checked) " signatures checked against approved intents." }
            } @else {
                div class="problem" role="alert" id="audit-status" {
                    h2 { (report.findings.len()) " findings" }
                    ul { @for f in &report.findings { li { strong { (f.code) } " " (f.subject) ": " (f.detail) } } }
                }
            }
            dl {
                dt { "Checked at" } dd { (utc(report.at_ms)) }
                dt { "Head" } dd { "entry " (report.audit_head_seq) " " code class="address" { (report.audit_head_hash) } }
                dt { "Signatures checked" } dd { (report.signatures_checked) }
            }
            p class="hint" { "Keep the head outside kinko: entries cut off later no longer reach it." }
            table {
                caption { "Newest audit entries" }
                thead { tr { th scope="col" { "#" } th scope="col" { "At" } th scope="col" { "Actor" }
                    th scope="col" { "Action" } th scope="col" { "Object" } th scope="col" { "Outcome" } } }
                tbody { @for e in entries.iter().rev() { tr { td { (e.seq) } td { (utc(e.at_ms)) }
                    td class="agent" { (e.actor_kind) " " (e.actor_id) } td class="agent" { (e.action) } td class="agent" { (e.object) } td { (e.outcome) } } } }
            }
            table {
                caption { "Operator events, oldest first" }
                thead { tr { th scope="col" { "At" } th scope="col" { "Operator" } th scope="col" { "Terminal" }
                    th scope="col" { "Event" } th scope="col" { "Request" } } }
                tbody { @for e in &events { tr { td { (utc(e.at_ms)) } td { (e.operator_id) } td { (e.terminal) }
                    td { (e.event) } td class="agent" { (e.request_id.as_deref().unwrap_or("—")) } } } }
            }
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// M10: the intent is rebuilt only from complete params, naming what is missing.
    #[test]
    fn m10_intent_needs_every_param() {
        let params = serde_json::json!({
            "asset": "ETH", "amount": "5", "destination": "0xab", "customer": "c1",
            "chain_id": 1, "source_wallet": "0xcd", "reason": "customer withdrawal"
        });
        let i = intent_from_params("w1", &params).unwrap();
        assert_eq!((i.amount, i.destination.as_str()), (Amount::from_base_units(5), "0xab"));
        let mut bad = params.clone();
        bad.as_object_mut().unwrap().remove("destination");
        assert!(intent_from_params("w1", &bad).unwrap_err().contains("params.destination"));
    }
}
