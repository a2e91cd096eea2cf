//! The address book and wallet binding (U13).
//!
//! - **Address book:** saved withdrawal destinations. Adding or removing one is a change of where money
//!   can go, so it needs a fresh step-up (U4), and the customer is told by a notice written in the same
//!   transaction (a change they did not make shows up in their mailbox). A new entry is usable only after
//!   `[address_book] cooling_off_ms` (default 24 h), so a thief with a stepped-up session still cannot
//!   empty the account to a fresh address before the customer can react.
//! - **Wallet binding:** a self-hosted wallet proves control by an EIP-191 `personal_sign` signature over a
//!   server challenge (random nonce, single use, 10 minutes). A bound wallet is a saved destination
//!   without cooling-off. Binding needs a step-up, or — re-binding after a wallet migration — a second
//!   signature over the same challenge from the wallet bound so far.
//!
//! Withdrawals go only to saved destinations (U13): the withdrawal handler calls
//! [`require_usable_destination`], which refuses a destination that is not saved (or bound), or still
//! cooling off, with a 422 naming `destination`.

use alloy_primitives::Signature;
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use kinko_chain::evm::address::{parse_address, to_lower_hex};
use kinko_core::AssetCode;
use kinko_store::StoreError;
use kinko_store::address_book::{
    AddressBookEntry, BindError, BindingProof, ENTRIES_PAGE_MAX, WalletBinding, WalletChallenge,
};
use kinko_store::notices::NewNotice;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::assets::lookup_asset;
use super::auth::Customer;
use super::extract::{ApiJson, JsonBody};
use super::problem::{FieldError, Problem, ProblemBody};
use crate::AppState;
use crate::aml::{ApiJsonOpt, JsonBodyOptional};
use crate::clock::now_ms;
use crate::config::ConfigError;

/// Bound on a label, in characters.
pub const LABEL_CHARS_MAX: usize = 64;
/// A wallet-binding challenge is valid this long.
pub const CHALLENGE_TTL_MS: i64 = 10 * 60 * 1000;
/// Random bytes in a challenge nonce.
pub const CHALLENGE_NONCE_BYTES: usize = 32;
/// Bound on ids sent back by clients.
pub const ID_LEN_MAX: usize = 64;
/// An EIP-191 signature: r(32) || s(32) || v(1).
pub const SIGNATURE_BYTES: usize = 65;
/// Bound on how long a cooling-off may be configured: a week.
pub const COOLING_OFF_MS_MAX: u64 = 7 * 24 * 60 * 60 * 1000;
const DAY_MS: u64 = 24 * 60 * 60 * 1000;

/// `[address_book]`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AddressBookConfig {
    /// How long after it is added an address-book entry becomes usable. Default 86400000 (24 h).
    #[serde(default = "default_cooling_off_ms")]
    pub cooling_off_ms: u64,
}

fn default_cooling_off_ms() -> u64 {
    DAY_MS
}

impl Default for AddressBookConfig {
    fn default() -> Self {
        AddressBookConfig { cooling_off_ms: default_cooling_off_ms() }
    }
}

impl AddressBookConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.cooling_off_ms > COOLING_OFF_MS_MAX {
            return Err(ConfigError::Invalid {
                field: "address_book.cooling_off_ms",
                reason: "must be at most 604800000 (7 days)".into(),
            });
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------------------
// What enforcement calls

/// Where a withdrawal destination stands for a customer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum DestinationCheck {
    /// The customer's bound self-hosted wallet: usable at once (proof of control).
    BoundWallet { binding_id: String },
    /// Saved, and past its cooling-off.
    Usable { entry_id: String },
    /// Saved, but cooling off until `usable_at_ms`.
    CoolingOff { entry_id: String, usable_at_ms: i64 },
    /// Neither saved nor bound.
    NotSaved,
}

impl DestinationCheck {
    /// Whether a withdrawal may go there now.
    pub fn is_usable(&self) -> bool {
        matches!(self, DestinationCheck::BoundWallet { .. } | DestinationCheck::Usable { .. })
    }
}

/// Where `address` (any accepted spelling) stands for `customer_id` and `asset` at `now_ms`. An entry is
/// usable from `usable_at_ms` on (inclusive). A malformed address is 422 naming `destination`.
pub async fn check_destination(
    state: &AppState,
    customer_id: &str,
    asset: &AssetCode,
    address: &str,
    now_ms: i64,
) -> Result<DestinationCheck, Problem> {
    let address = parse_address(address)
        .map(|a| to_lower_hex(&a))
        .map_err(|e| Problem::validation(vec![FieldError::new("destination", e.to_string())]))?;
    let chain = lookup_asset(&state.config, "asset", asset.as_str()).map_err(|e| Problem::validation(vec![e]))?.chain;
    // A bound wallet receives every asset of its chain: control of the address is what was proven.
    if let Some(b) = state.store.live_wallet_binding(customer_id).await?
        && b.address == address
        && b.chain == chain
    {
        return Ok(DestinationCheck::BoundWallet { binding_id: b.id });
    }
    Ok(match state.store.address_book_lookup(customer_id, asset.as_str(), &address).await? {
        None => DestinationCheck::NotSaved,
        Some(e) if now_ms >= e.usable_at_ms => DestinationCheck::Usable { entry_id: e.id },
        Some(e) => DestinationCheck::CoolingOff { entry_id: e.id, usable_at_ms: e.usable_at_ms },
    })
}

/// [`check_destination`] as the withdrawal handler needs it: `Ok` for a usable destination, otherwise a
/// 422 naming `destination` that says whether it is not saved or cooling off until when.
pub async fn require_usable_destination(
    state: &AppState,
    customer_id: &str,
    asset: &AssetCode,
    address: &str,
    now_ms: i64,
) -> Result<DestinationCheck, Problem> {
    match check_destination(state, customer_id, asset, address, now_ms).await? {
        usable @ (DestinationCheck::BoundWallet { .. } | DestinationCheck::Usable { .. }) => Ok(usable),
        DestinationCheck::CoolingOff { usable_at_ms, .. } => Err(Problem::field(
            StatusCode::UNPROCESSABLE_ENTITY,
            "destination-cooling-off",
            "destination still cooling off",
            "destination",
            &format!("was saved recently and is usable from {} (usable_at_ms {usable_at_ms})", rfc3339(usable_at_ms)),
        )),
        DestinationCheck::NotSaved => Err(Problem::field(
            StatusCode::UNPROCESSABLE_ENTITY,
            "destination-not-saved",
            "destination not in the address book",
            "destination",
            &format!(
                "is not a saved destination for {asset}: save it first (POST /v1/address-book), then wait out the cooling-off"
            ),
        )),
    }
}

// ---------------------------------------------------------------------------------------------------------
// Address book

#[derive(Deserialize, ToSchema)]
pub struct NewEntryRequest {
    /// 1 to 64 characters, the customer's own name for the destination.
    #[schema(example = "my cold wallet")]
    pub label: String,
    #[schema(example = "ETH")]
    pub asset: String,
    /// 0x-address; mixed case must carry a valid EIP-55 checksum.
    #[schema(example = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8")]
    pub address: String,
}

impl JsonBody for NewEntryRequest {
    const FIELDS: &'static [&'static str] = &["label", "asset", "address"];
}

#[derive(Serialize, Deserialize, ToSchema)]
pub struct EntryView {
    pub id: String,
    pub label: String,
    pub asset: String,
    pub chain: String,
    /// Lower-case 0x-hex.
    pub address: String,
    pub created_at_ms: i64,
    /// From when withdrawals may go there (creation + cooling-off).
    pub usable_at_ms: i64,
    /// Whether the cooling-off is over now.
    pub usable: bool,
}

impl EntryView {
    fn new(e: AddressBookEntry, now_ms: i64) -> EntryView {
        EntryView {
            usable: now_ms >= e.usable_at_ms,
            id: e.id,
            label: e.label,
            asset: e.asset,
            chain: e.chain,
            address: e.address,
            created_at_ms: e.created_at_ms,
            usable_at_ms: e.usable_at_ms,
        }
    }
}

fn rfc3339(ms: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_else(|| format!("{ms} ms after 1970-01-01T00:00:00Z"))
}

async fn email_of(state: &AppState, customer_id: &str) -> Result<String, Problem> {
    state
        .store
        .customer_email(customer_id)
        .await?
        .ok_or_else(|| Problem::internal(format!("customer {customer_id} has a session but no row")))
}

fn check_label(raw: &str) -> Result<String, FieldError> {
    let label = raw.trim();
    if label.is_empty() || label.chars().count() > LABEL_CHARS_MAX || label.chars().any(char::is_control) {
        return Err(FieldError::new("label", "must be 1 to 64 characters without control characters"));
    }
    Ok(label.to_string())
}

/// Save a withdrawal destination. Needs a fresh step-up; usable after the cooling-off; the customer is
/// notified.
#[utoipa::path(
    post, path = "/v1/address-book", tag = "address-book",
    request_body = NewEntryRequest,
    security(("bearer" = [])),
    responses(
        (status = 201, description = "saved; usable from `usable_at_ms`", body = EntryView),
        (status = 401, description = "no valid session", body = ProblemBody, content_type = "application/problem+json"),
        (status = 403, description = "no fresh step-up (`step-up-required`)", body = ProblemBody, content_type = "application/problem+json"),
        (status = 409, description = "already saved for this asset (`address-book-duplicate`)", body = ProblemBody, content_type = "application/problem+json"),
        (status = 422, description = "invalid fields (a bad EIP-55 checksum is named), or the book is full", body = ProblemBody, content_type = "application/problem+json"),
    )
)]
pub async fn add_entry(
    State(state): State<AppState>,
    customer: Customer,
    ApiJson(body): ApiJson<NewEntryRequest>,
) -> Result<(StatusCode, Json<EntryView>), Problem> {
    customer.require_fresh_mfa()?;
    let mut errors = Vec::new();
    let label = check_label(&body.label).map_err(|e| errors.push(e)).ok();
    let asset = lookup_asset(&state.config, "asset", &body.asset).map_err(|e| errors.push(e)).ok();
    let address = parse_address(&body.address).map_err(|e| errors.push(FieldError::new("address", e.to_string()))).ok();
    let (Some(label), Some(asset), Some(address)) = (label, asset, address) else {
        return Err(Problem::validation(errors));
    };
    let now = now_ms();
    let cooling_off_ms = i64::try_from(state.config.address_book.cooling_off_ms).map_err(Problem::internal)?;
    let entry = AddressBookEntry {
        id: format!("ab_{}", uuid::Uuid::now_v7().simple()),
        customer_id: customer.id.clone(),
        label,
        asset: asset.code.to_string(),
        chain: asset.chain.to_string(),
        address: to_lower_hex(&address),
        created_at_ms: now,
        usable_at_ms: now.saturating_add(cooling_off_ms),
        removed_at_ms: 0,
    };
    let email = email_of(&state, &customer.id).await?;
    let notice = NewNotice::email(
        Some(customer.id.clone()),
        email,
        "address_book_added",
        entry.id.clone(),
        "A withdrawal address was added to your kinko account",
        format!(
            "The withdrawal address \"{}\" ({} {}) was added to your account's address book.\n\
             Withdrawals to it are possible from {}.\n\n\
             If you did not add it, remove it now and secure your account: someone may have your session.",
            entry.label,
            entry.asset,
            address.to_checksum(None),
            rfc3339(entry.usable_at_ms),
        ),
        now,
    )
    .with_payload(serde_json::json!({
        "entry_id": entry.id, "asset": entry.asset, "address": entry.address, "usable_at_ms": entry.usable_at_ms,
    }));
    match state.store.add_address_book_entry(&entry, &notice).await {
        Ok(()) => {}
        Err(StoreError::Conflict(c)) if c == "address_book_duplicate" => {
            return Err(Problem::field(
                StatusCode::CONFLICT,
                "address-book-duplicate",
                "address already saved",
                "address",
                "is already in the address book for this asset",
            ));
        }
        Err(StoreError::Conflict(c)) if c == "address_book_full" => {
            return Err(Problem::field(
                StatusCode::UNPROCESSABLE_ENTITY,
                "address-book-full",
                "address book full",
                "address",
                &format!(
                    "the address book holds at most {} entries; remove one first",
                    kinko_store::address_book::ENTRIES_PER_CUSTOMER_MAX
                ),
            ));
        }
        Err(e) => return Err(e.into()),
    }
    Ok((StatusCode::CREATED, Json(EntryView::new(entry, now))))
}

/// The customer's saved destinations, oldest first.
#[utoipa::path(
    get, path = "/v1/address-book", tag = "address-book",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "entries", body = Vec<EntryView>),
        (status = 401, description = "no valid session", body = ProblemBody, content_type = "application/problem+json"),
    )
)]
pub async fn list_entries(State(state): State<AppState>, customer: Customer) -> Result<Json<Vec<EntryView>>, Problem> {
    let now = now_ms();
    let rows = state.store.address_book_entries(&customer.id, ENTRIES_PAGE_MAX).await?;
    Ok(Json(rows.into_iter().map(|e| EntryView::new(e, now)).collect()))
}

/// Remove a saved destination. Needs a fresh step-up; the customer is notified.
#[utoipa::path(
    delete, path = "/v1/address-book/{id}", tag = "address-book",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "entry id")),
    responses(
        (status = 204, description = "removed"),
        (status = 401, description = "no valid session", body = ProblemBody, content_type = "application/problem+json"),
        (status = 403, description = "no fresh step-up (`step-up-required`)", body = ProblemBody, content_type = "application/problem+json"),
        (status = 404, description = "no such entry for this customer", body = ProblemBody, content_type = "application/problem+json"),
    )
)]
pub async fn remove_entry(
    State(state): State<AppState>,
    customer: Customer,
    Path(id): Path<String>,
) -> Result<StatusCode, Problem> {
    customer.require_fresh_mfa()?;
    if id.len() > ID_LEN_MAX {
        return Err(Problem::not_found());
    }
    let entry = state.store.address_book_entry(&customer.id, &id).await?.ok_or_else(Problem::not_found)?;
    let now = now_ms();
    let email = email_of(&state, &customer.id).await?;
    let notice = NewNotice::email(
        Some(customer.id.clone()),
        email,
        "address_book_removed",
        entry.id.clone(),
        "A withdrawal address was removed from your kinko account",
        format!(
            "The withdrawal address \"{}\" ({} {}) was removed from your account's address book.\n\n\
             If you did not remove it, secure your account: someone may have your session.",
            entry.label, entry.asset, entry.address,
        ),
        now,
    )
    .with_payload(serde_json::json!({"entry_id": entry.id, "asset": entry.asset, "address": entry.address}));
    if !state.store.remove_address_book_entry(&customer.id, &id, &notice, now).await? {
        return Err(Problem::not_found());
    }
    Ok(StatusCode::NO_CONTENT)
}

// ---------------------------------------------------------------------------------------------------------
// Wallet binding

#[derive(Deserialize, ToSchema)]
pub struct ChallengeRequest {
    /// The self-hosted wallet to bind, 0x-address.
    #[schema(example = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8")]
    pub address: String,
}

impl JsonBody for ChallengeRequest {
    const FIELDS: &'static [&'static str] = &["address"];
}

#[derive(Serialize, Deserialize, ToSchema)]
pub struct ChallengeView {
    pub challenge_id: String,
    /// Lower-case 0x-hex.
    pub address: String,
    /// The exact text to sign with `personal_sign` (EIP-191).
    pub message: String,
    pub expires_at_ms: i64,
}

/// The text a wallet signs. It names the site, the account and the wallet so that a signature cannot be
/// replayed for another account or another wallet, and says that it moves no funds.
fn challenge_message(
    site: &str,
    customer_id: &str,
    wallet: &str,
    challenge_id: &str,
    nonce: &str,
    expires: &str,
) -> String {
    format!(
        "{site} wants you to bind your wallet to your kinko account.\n\n\
         Signing this message proves you control the wallet. It moves no funds and costs nothing.\n\n\
         Wallet: {wallet}\nAccount: {customer_id}\nChallenge: {challenge_id}\nNonce: {nonce}\nExpires: {expires}"
    )
}

/// Ask for a challenge to sign with the wallet to bind (valid 10 minutes, single use).
#[utoipa::path(
    post, path = "/v1/wallet-bindings/challenge", tag = "address-book",
    request_body = ChallengeRequest,
    security(("bearer" = [])),
    responses(
        (status = 201, description = "the challenge", body = ChallengeView),
        (status = 401, description = "no valid session", body = ProblemBody, content_type = "application/problem+json"),
        (status = 422, description = "invalid address", body = ProblemBody, content_type = "application/problem+json"),
        (status = 429, description = "too many unused challenges open (`too-many-challenges`)", body = ProblemBody, content_type = "application/problem+json"),
    )
)]
pub async fn create_challenge(
    State(state): State<AppState>,
    customer: Customer,
    ApiJson(body): ApiJson<ChallengeRequest>,
) -> Result<(StatusCode, Json<ChallengeView>), Problem> {
    let address = parse_address(&body.address)
        .map_err(|e| Problem::validation(vec![FieldError::new("address", e.to_string())]))?;
    let now = now_ms();
    let mut nonce = [0u8; CHALLENGE_NONCE_BYTES];
    rand::rngs::OsRng.fill_bytes(&mut nonce);
    let id = format!("wbc_{}", uuid::Uuid::now_v7().simple());
    let expires_at_ms = now + CHALLENGE_TTL_MS;
    let message = challenge_message(
        &state.config.customer_auth.rp_id,
        &customer.id,
        &address.to_checksum(None),
        &id,
        &hex::encode(nonce),
        &rfc3339(expires_at_ms),
    );
    let challenge = WalletChallenge {
        id,
        customer_id: customer.id.clone(),
        address: to_lower_hex(&address),
        message,
        created_at_ms: now,
        expires_at_ms,
        used_at_ms: 0,
    };
    match state.store.insert_wallet_challenge(&challenge).await {
        Ok(()) => {}
        Err(StoreError::Conflict(c)) if c == "too_many_challenges" => {
            return Err(Problem::new(StatusCode::TOO_MANY_REQUESTS, "too-many-challenges", "too many open challenges")
                .detail(format!(
                    "at most {} unused challenges may be open at once; use one or wait until they expire",
                    kinko_store::address_book::OPEN_CHALLENGES_MAX
                )));
        }
        Err(e) => return Err(e.into()),
    }
    Ok((
        StatusCode::CREATED,
        Json(ChallengeView {
            challenge_id: challenge.id,
            address: challenge.address,
            message: challenge.message,
            expires_at_ms,
        }),
    ))
}

#[derive(Deserialize, ToSchema)]
pub struct BindRequest {
    /// The wallet the challenge was issued for.
    pub address: String,
    pub challenge_id: String,
    /// 0x-hex, 65 bytes `r || s || v` (v 27/28 or 0/1): `personal_sign` of the challenge message by
    /// `address`.
    pub signature: String,
    /// Re-binding after a migration, instead of a step-up: the currently bound wallet's `personal_sign`
    /// of the same challenge message.
    #[serde(default)]
    pub previous_signature: Option<String>,
}

impl JsonBodyOptional for BindRequest {
    const REQUIRED: &'static [&'static str] = &["address", "challenge_id", "signature"];
    const OPTIONAL: &'static [&'static str] = &["previous_signature"];
}

#[derive(Serialize, Deserialize, ToSchema)]
pub struct BindingView {
    pub id: String,
    /// Lower-case 0x-hex.
    pub address: String,
    /// `step_up` or `migration`.
    pub proof: String,
    pub created_at_ms: i64,
}

impl From<WalletBinding> for BindingView {
    fn from(b: WalletBinding) -> Self {
        BindingView { id: b.id, address: b.address, proof: b.proof, created_at_ms: b.created_at_ms }
    }
}

fn parse_signature(field: &str, raw: &str) -> Result<Signature, Problem> {
    let bad = |reason: &str| Problem::validation(vec![FieldError::new(field, reason)]);
    let hex_part = raw.strip_prefix("0x").unwrap_or(raw);
    if hex_part.len() != 2 * SIGNATURE_BYTES {
        return Err(bad("must be 0x followed by 130 hexadecimal digits (65 bytes r || s || v)"));
    }
    let bytes = hex::decode(hex_part).map_err(|_| bad("must be hexadecimal"))?;
    Signature::from_raw(&bytes).map_err(|_| bad("has an invalid recovery byte v (expected 27, 28, 0 or 1)"))
}

/// The address `sig` recovers to over `message` with EIP-191 prefixing (alloy), lower-case 0x-hex.
fn signer_of(sig: &Signature, message: &str) -> Option<String> {
    sig.recover_address_from_msg(message.as_bytes()).ok().map(|a| to_lower_hex(&a))
}

fn challenge_problem(status: StatusCode, slug: &str, title: &str, reason: &str) -> Problem {
    Problem::field(status, slug, title, "challenge_id", reason)
}

/// Bind a self-hosted wallet: its signature over the challenge, plus a fresh step-up or (re-binding after
/// a migration) the signature of the wallet bound so far. Replaces the bound wallet; the customer is
/// notified. The challenge is used up by any attempt that reaches signature checking.
#[utoipa::path(
    post, path = "/v1/wallet-bindings", tag = "address-book",
    request_body = BindRequest,
    security(("bearer" = [])),
    responses(
        (status = 201, description = "bound", body = BindingView),
        (status = 401, description = "no valid session", body = ProblemBody, content_type = "application/problem+json"),
        (status = 403, description = "no fresh step-up and no migration signature (`step-up-required`)", body = ProblemBody, content_type = "application/problem+json"),
        (status = 409, description = "challenge already used, or the bound wallet changed meanwhile", body = ProblemBody, content_type = "application/problem+json"),
        (status = 422, description = "invalid fields, unknown or expired challenge, or a signature that does not recover to the wallet (`wallet-signature-invalid`)", body = ProblemBody, content_type = "application/problem+json"),
    )
)]
pub async fn bind_wallet(
    State(state): State<AppState>,
    customer: Customer,
    ApiJsonOpt(body): ApiJsonOpt<BindRequest>,
) -> Result<(StatusCode, Json<BindingView>), Problem> {
    if body.previous_signature.is_none() {
        customer.require_fresh_mfa()?;
    }
    let mut errors = Vec::new();
    let address = parse_address(&body.address).map_err(|e| errors.push(FieldError::new("address", e.to_string()))).ok();
    if body.challenge_id.is_empty() || body.challenge_id.len() > ID_LEN_MAX {
        errors.push(FieldError::new("challenge_id", "must be 1 to 64 characters"));
    }
    let Some(address) = address.filter(|_| errors.is_empty()) else { return Err(Problem::validation(errors)) };
    let signature = parse_signature("signature", &body.signature)?;
    let previous_signature =
        body.previous_signature.as_deref().map(|s| parse_signature("previous_signature", s)).transpose()?;
    let address = to_lower_hex(&address);
    let now = now_ms();
    let challenge =
        state.store.wallet_challenge(&body.challenge_id).await?.filter(|c| c.customer_id == customer.id).ok_or_else(
            || {
                challenge_problem(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "unknown-challenge",
                    "unknown challenge",
                    "is not a challenge issued to this account",
                )
            },
        )?;
    if challenge.used_at_ms != 0 {
        return Err(challenge_used());
    }
    if now >= challenge.expires_at_ms {
        return Err(challenge_problem(
            StatusCode::UNPROCESSABLE_ENTITY,
            "challenge-expired",
            "challenge expired",
            "has expired; ask for a new challenge",
        ));
    }
    if challenge.address != address {
        return Err(Problem::validation(vec![FieldError::new(
            "address",
            "is not the wallet this challenge was issued for",
        )]));
    }
    let previous = match &previous_signature {
        Some(_) => Some(state.store.live_wallet_binding(&customer.id).await?.ok_or_else(|| {
            Problem::validation(vec![FieldError::new(
                "previous_signature",
                "there is no bound wallet to migrate from; bind with a step-up instead",
            )])
        })?),
        None => None,
    };
    // From here on the attempt uses the challenge up, so a signature cannot be tried against it twice.
    let refuse = |field: &str, reason: &str| {
        Problem::field(StatusCode::UNPROCESSABLE_ENTITY, "wallet-signature-invalid", "signature refused", field, reason)
    };
    if signer_of(&signature, &challenge.message).as_deref() != Some(address.as_str()) {
        state.store.use_wallet_challenge(&challenge.id, now).await?;
        return Err(refuse(
            "signature",
            "does not recover to the wallet over the challenge message (another key, or other text, was signed)",
        ));
    }
    if let (Some(sig), Some(prev)) = (&previous_signature, &previous)
        && signer_of(sig, &challenge.message).as_deref() != Some(prev.address.as_str())
    {
        state.store.use_wallet_challenge(&challenge.id, now).await?;
        return Err(refuse("previous_signature", "does not recover to the currently bound wallet"));
    }
    let proof = if previous.is_some() { BindingProof::Migration } else { BindingProof::StepUp };
    let binding = WalletBinding {
        id: format!("wb_{}", uuid::Uuid::now_v7().simple()),
        customer_id: customer.id.clone(),
        chain: crate::app::ETH_CHAIN.to_string(),
        address: address.clone(),
        challenge_id: challenge.id.clone(),
        signature: format!("0x{}", hex::encode(signature.as_bytes())),
        proof: proof.as_str().to_string(),
        previous_binding_id: previous.as_ref().map(|p| p.id.clone()),
        previous_signature: previous_signature.map(|s| format!("0x{}", hex::encode(s.as_bytes()))),
        created_at_ms: now,
        unbound_at_ms: 0,
    };
    let email = email_of(&state, &customer.id).await?;
    let notice = NewNotice::email(
        Some(customer.id.clone()),
        email,
        "wallet_bound",
        binding.id.clone(),
        "A wallet was bound to your kinko account",
        format!(
            "The wallet {address} was bound to your account{}. Withdrawals to it need no cooling-off.\n\n\
             If you did not bind it, secure your account: someone may have your session.",
            previous.as_ref().map(|p| format!(", replacing {}", p.address)).unwrap_or_default(),
        ),
        now,
    )
    .with_payload(serde_json::json!({"binding_id": binding.id, "address": address, "proof": binding.proof}));
    match state.store.bind_wallet(&binding, &notice, now).await {
        Ok(()) => Ok((StatusCode::CREATED, Json(binding.into()))),
        Err(BindError::ChallengeUsed) => Err(challenge_used()),
        Err(BindError::PreviousChanged) => {
            Err(Problem::new(StatusCode::CONFLICT, "binding-changed", "the bound wallet changed meanwhile")
                .detail("another binding completed first; ask for a new challenge"))
        }
        Err(BindError::Store(e)) => Err(e.into()),
    }
}

fn challenge_used() -> Problem {
    challenge_problem(
        StatusCode::CONFLICT,
        "challenge-used",
        "challenge already used",
        "was already used; ask for a new challenge",
    )
}

/// The bound wallet (an empty list when none).
#[utoipa::path(
    get, path = "/v1/wallet-bindings", tag = "address-book",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "the bound wallet, if any", body = Vec<BindingView>),
        (status = 401, description = "no valid session", body = ProblemBody, content_type = "application/problem+json"),
    )
)]
pub async fn list_bindings(
    State(state): State<AppState>,
    customer: Customer,
) -> Result<Json<Vec<BindingView>>, Problem> {
    let live = state.store.live_wallet_binding(&customer.id).await?;
    Ok(Json(live.into_iter().map(BindingView::from).collect()))
}
