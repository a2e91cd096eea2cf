//! The customer's account view (M1): deposit addresses, balances, deposits.

use axum::Json;
use axum::extract::{Path, RawQuery, State};
use kinko_core::ledger::AccountKind;
use kinko_core::{Amount, deposit::DepositStatus};
use kinko_store::deposits::DepositRow;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::assets::{bitcoin_asset, held_assets, lookup_asset};
use super::auth::Customer;
use super::extract::{ApiJson, JsonBody};
use super::problem::{FieldError, Problem, ProblemBody};
use crate::AppState;
use crate::clock::now_ms;

/// Default and bound for list endpoints' `limit`.
pub const PAGE_DEFAULT: u32 = 50;
pub const PAGE_MAX: u32 = 200;

/// Parses `?limit=N` (1..=PAGE_MAX); anything else in the query string is ignored.
pub fn page_limit(query: Option<&str>) -> Result<u32, Problem> {
    let Some(query) = query else { return Ok(PAGE_DEFAULT) };
    for pair in query.split('&') {
        if let Some(v) = pair.strip_prefix("limit=") {
            return match v.parse::<u32>() {
                Ok(n) if (1..=PAGE_MAX).contains(&n) => Ok(n),
                _ => Err(Problem::validation(vec![FieldError::new("limit", "must be an integer from 1 to 200")])),
            };
        }
    }
    Ok(PAGE_DEFAULT)
}

#[derive(Deserialize, ToSchema)]
pub struct DepositAddressRequest {
    /// `ETH`, a configured token, or `BTC` when Bitcoin is configured.
    #[schema(example = "ETH")]
    pub asset: String,
}

impl JsonBody for DepositAddressRequest {
    const FIELDS: &'static [&'static str] = &["asset"];
}

#[derive(Serialize, Deserialize, ToSchema)]
pub struct DepositAddress {
    pub asset: String,
    /// EVM assets: lower-case 0x-hex. BTC: a bech32 P2WPKH address (`bc1q…`, `tb1q…`, `bcrt1q…`).
    pub address: String,
}

/// Get (or create on first use) the customer's deposit address for an asset. Always the same address
/// for the same customer and asset. For BTC (when Bitcoin is configured) it is the customer's BIP84 receive
/// address, bech32, derived from the custodian's account xpub.
#[utoipa::path(
    post, path = "/v1/deposit-addresses", tag = "accounts",
    request_body = DepositAddressRequest,
    security(("bearer" = [])),
    responses(
        (status = 200, description = "the customer's deposit address", body = DepositAddress),
        (status = 401, description = "no valid session", body = ProblemBody, content_type = "application/problem+json"),
        (status = 422, description = "unknown asset", body = ProblemBody, content_type = "application/problem+json"),
    )
)]
pub async fn deposit_address(
    State(state): State<AppState>,
    customer: Customer,
    ApiJson(body): ApiJson<DepositAddressRequest>,
) -> Result<Json<DepositAddress>, Problem> {
    // Issue 9: BTC addresses come from the BIP84 account, with the UTXO tracking rows beside them.
    if let Some(btc) = bitcoin_asset(&state.config).filter(|b| b.code.as_str() == body.asset)
        && let Some(bitcoin) = &state.config.bitcoin
    {
        let account = bitcoin.account().map_err(Problem::internal)?;
        let row = crate::btc_watcher::btc_deposit_address(&state.store, &account, &customer.id, now_ms())
            .await
            .map_err(Problem::internal)?;
        return Ok(Json(DepositAddress { asset: btc.code.to_string(), address: row.address }));
    }
    let asset = lookup_asset(&state.config, "asset", &body.asset).map_err(|e| Problem::validation(vec![e]))?;
    let xpub = state.deposit_xpub.clone();
    let row = state
        .store
        .deposit_address_get_or_create(
            &customer.id,
            asset.chain,
            asset.code.as_str(),
            asset.deposit_index_counter,
            |index| {
                let index =
                    u32::try_from(index).map_err(|_| Problem::internal("deposit index counter out of range"))?;
                kinko_keys::hd::evm_deposit_address(&xpub, index).map_err(Problem::internal)
            },
            now_ms(),
        )
        .await?;
    Ok(Json(DepositAddress { asset: row.asset, address: row.address }))
}

#[derive(Serialize, Deserialize, ToSchema)]
pub struct BalanceView {
    pub asset: String,
    /// What the customer may withdraw, in base units.
    #[schema(value_type = String, example = "1000000000000000000")]
    pub available: Amount,
    /// Reserved for withdrawals in flight.
    #[schema(value_type = String)]
    pub held: Amount,
    /// Deposits seen on chain, not yet confirmed.
    #[schema(value_type = String)]
    pub pending: Amount,
    /// What the customer owes after a reversed deposit (a negative position); non-zero blocks withdrawals.
    #[schema(value_type = String)]
    pub receivable: Amount,
}

/// Balances per supported asset (BTC included when Bitcoin is configured; in satoshi), zeros included.
#[utoipa::path(
    get, path = "/v1/balances", tag = "accounts",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "balances", body = Vec<BalanceView>),
        (status = 401, description = "no valid session", body = ProblemBody, content_type = "application/problem+json"),
    )
)]
pub async fn balances(State(state): State<AppState>, customer: Customer) -> Result<Json<Vec<BalanceView>>, Problem> {
    let stored = state.store.customer_balances(&customer.id).await?;
    let get = |asset: &kinko_core::AssetCode, kind| stored.get(&(asset.clone(), kind)).copied().unwrap_or(Amount::ZERO);
    let out = held_assets(&state.config)
        .into_iter()
        .map(|code| BalanceView {
            asset: code.to_string(),
            available: get(&code, AccountKind::Available),
            held: get(&code, AccountKind::Held),
            pending: get(&code, AccountKind::Pending),
            receivable: get(&code, AccountKind::Receivable),
        })
        .collect();
    Ok(Json(out))
}

#[derive(Serialize, Deserialize, ToSchema)]
pub struct DepositView {
    pub id: String,
    pub asset: String,
    #[schema(value_type = String)]
    pub amount: Amount,
    pub address: String,
    /// 0x-prefixed transaction hash (BTC: the txid in display order, no prefix).
    pub tx_hash: String,
    pub block_number: u64,
    /// pending, credited, dropped or reversed.
    #[schema(value_type = String, example = "pending")]
    pub status: DepositStatus,
    pub confirmations: u64,
    pub created_at_ms: i64,
}

/// Hashes are stored as bare hex; clients of an EVM API expect 0x.
pub fn hex_0x(h: &str) -> String {
    if h.starts_with("0x") { h.to_string() } else { format!("0x{h}") }
}

impl From<DepositRow> for DepositView {
    fn from(d: DepositRow) -> Self {
        DepositView {
            id: d.id,
            asset: d.asset.to_string(),
            amount: d.amount,
            address: d.address,
            // A Bitcoin txid is shown as explorers and Core print it, without 0x.
            tx_hash: if d.asset.as_str() == kinko_store::btc::BTC_ASSET { d.tx_hash } else { hex_0x(&d.tx_hash) },
            block_number: d.block_number,
            status: d.status,
            confirmations: d.confirmations,
            created_at_ms: d.created_at_ms,
        }
    }
}

/// The customer's deposits, newest first.
#[utoipa::path(
    get, path = "/v1/deposits", tag = "accounts",
    security(("bearer" = [])),
    params(("limit" = Option<u32>, Query, description = "1 to 200, default 50")),
    responses(
        (status = 200, description = "deposits", body = Vec<DepositView>),
        (status = 401, description = "no valid session", body = ProblemBody, content_type = "application/problem+json"),
    )
)]
pub async fn list_deposits(
    State(state): State<AppState>,
    customer: Customer,
    RawQuery(query): RawQuery,
) -> Result<Json<Vec<DepositView>>, Problem> {
    let limit = page_limit(query.as_deref())?;
    let rows = state.store.deposits_for_customer(&customer.id, limit).await?;
    Ok(Json(rows.into_iter().map(DepositView::from).collect()))
}

/// One deposit. Another customer's deposit is 404, as if it did not exist.
#[utoipa::path(
    get, path = "/v1/deposits/{id}", tag = "accounts",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "deposit id")),
    responses(
        (status = 200, description = "the deposit", body = DepositView),
        (status = 404, description = "no such deposit for this customer", body = ProblemBody, content_type = "application/problem+json"),
    )
)]
pub async fn get_deposit(
    State(state): State<AppState>,
    customer: Customer,
    Path(id): Path<String>,
) -> Result<Json<DepositView>, Problem> {
    match state.store.deposit(&id).await? {
        Some(d) if d.customer_id == customer.id => Ok(Json(d.into())),
        _ => Err(Problem::not_found()),
    }
}
