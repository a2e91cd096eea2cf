//! Evacuation of a compromised wallet (K19, S5): moving all of a frozen wallet's funds to new keys generated
//! in a clean, offline environment, through an approved evacuation request (`operators::Process::Evacuation`).
//!
//! A freeze stops every signature from the wallet. Lifting it to move the funds away would also let a thief
//! who still holds the server (or the old key's copy) move them; evacuation is the narrow exception instead:
//! the signer, while frozen, signs a transfer from exactly the approved wallet to exactly the approved
//! destination for an approved asset, and nothing else.
//!
//! This module is the pure part: the canonical params approvers sign over (through
//! `operators::request_intent_hash` with the evacuation process code, so no other approval — an unfreeze's
//! least of all — verifies as one) and their validation.

use std::fmt;

use serde_json::{Value, json};

use crate::asset::AssetCode;
use crate::freeze::{FreezeError, check_reason};
use crate::operators::{Process, request_intent_hash};

/// The kind of an evacuation request in `ops_requests`.
pub const EVACUATION_KIND: &str = "evacuation";
/// Bound on the assets one evacuation names.
pub const EVACUATION_ASSETS_MAX: usize = 16;
/// The params' fields, in their canonical (sorted) order.
pub const EVACUATION_FIELDS: [&str; 4] = ["assets", "destination", "reason", "wallet"];

/// One bad field of an evacuation's params.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field} {reason}")]
pub struct EvacuationError {
    /// The field's name inside the params (`wallet`, `destination`, `assets`, `reason`, or another key).
    pub field: String,
    pub reason: String,
}

fn bad(field: &str, reason: impl Into<String>) -> EvacuationError {
    EvacuationError { field: field.to_string(), reason: reason.into() }
}

/// Checked evacuation params: the frozen source wallet, the new destination (both lower-case 0x-hex), the
/// assets to move (sorted, distinct) and the reason.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EvacuationParams {
    pub wallet: String,
    pub destination: String,
    pub assets: Vec<AssetCode>,
    pub reason: String,
}

/// `0x` + 40 hex digits, returned lower-case.
fn address(field: &str, v: Option<&Value>) -> Result<String, EvacuationError> {
    let s = v.and_then(Value::as_str).ok_or_else(|| bad(field, "is required (a 0x address)"))?;
    let hex = s.strip_prefix("0x").ok_or_else(|| bad(field, "must start with 0x"))?;
    if hex.len() != 40 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(bad(field, "must be 0x followed by 40 hex digits"));
    }
    Ok(format!("0x{}", hex.to_ascii_lowercase()))
}

impl EvacuationParams {
    /// Parses and checks params as a requester gives them (addresses in any case, assets in any order):
    /// every bad field is named. The destination must differ from the wallet and from the zero address
    /// (funds sent there are burnt); the reason follows the freeze reason rules.
    pub fn parse(params: &Value) -> Result<EvacuationParams, Vec<EvacuationError>> {
        let Some(obj) = params.as_object() else {
            return Err(vec![bad("params", "must be a JSON object")]);
        };
        let mut errors = Vec::new();
        for k in obj.keys().filter(|k| !EVACUATION_FIELDS.contains(&k.as_str())) {
            errors.push(bad(k, "is not a field of an evacuation request"));
        }
        let wallet = address("wallet", obj.get("wallet")).map_err(|e| errors.push(e)).ok();
        let destination = address("destination", obj.get("destination")).map_err(|e| errors.push(e)).ok();
        if let (Some(w), Some(d)) = (&wallet, &destination) {
            if w == d {
                errors.push(bad("destination", "is the frozen wallet itself"));
            } else if d.trim_start_matches("0x").bytes().all(|b| b == b'0') {
                errors.push(bad("destination", "is the zero address"));
            }
        }
        let mut assets = Vec::new();
        match obj.get("assets").and_then(Value::as_array) {
            None => errors.push(bad("assets", "is required (a list of asset codes)")),
            Some(list) if list.is_empty() || list.len() > EVACUATION_ASSETS_MAX => {
                errors.push(bad("assets", format!("must name 1 to {EVACUATION_ASSETS_MAX} assets")))
            }
            Some(list) => {
                for (i, a) in list.iter().enumerate() {
                    match a.as_str().map(str::parse::<AssetCode>) {
                        Some(Ok(code)) if assets.contains(&code) => {
                            errors.push(bad(&format!("assets[{i}]"), format!("names {code} twice")))
                        }
                        Some(Ok(code)) => assets.push(code),
                        Some(Err(e)) => errors.push(bad(&format!("assets[{i}]"), e.to_string())),
                        None => errors.push(bad(&format!("assets[{i}]"), "must be an asset code string")),
                    }
                }
                assets.sort();
            }
        }
        let reason = match obj.get("reason").and_then(Value::as_str) {
            Some(r) => match check_reason(r) {
                Ok(()) => Some(r.to_string()),
                Err(FreezeError::BadReason(why)) => {
                    errors.push(bad("reason", why));
                    None
                }
                Err(e) => {
                    errors.push(bad("reason", e.to_string()));
                    None
                }
            },
            None => {
                errors.push(bad("reason", "is required: why the wallet is evacuated (1 to 1024 bytes)"));
                None
            }
        };
        match (wallet, destination, reason) {
            (Some(wallet), Some(destination), Some(reason)) if errors.is_empty() => {
                Ok(EvacuationParams { wallet, destination, assets, reason })
            }
            _ => Err(errors),
        }
    }

    /// Parses params that must already be canonical (what was stored and approved): the signer refuses
    /// params that check out but are written another way (upper-case hex, unsorted assets), so the bytes
    /// the approvers signed over are the only form that verifies.
    pub fn parse_canonical(params: &Value) -> Result<EvacuationParams, Vec<EvacuationError>> {
        let parsed = EvacuationParams::parse(params)?;
        if &parsed.to_json() != params {
            return Err(vec![bad("params", "are not in canonical form (lower-case addresses, sorted assets)")]);
        }
        Ok(parsed)
    }

    /// The canonical params: what is stored, shown to approvers and signed over.
    pub fn to_json(&self) -> Value {
        let assets: Vec<&str> = self.assets.iter().map(AssetCode::as_str).collect();
        json!({
            "wallet": self.wallet,
            "destination": self.destination,
            "assets": assets,
            "reason": self.reason,
        })
    }

    /// Whether `asset` is one of the evacuated assets.
    pub fn covers_asset(&self, asset: &AssetCode) -> bool {
        self.assets.contains(asset)
    }

    /// The intent hash of evacuation request `request_id` with these params: what its approvals sign over.
    pub fn intent_hash(&self, request_id: &str) -> [u8; 32] {
        request_intent_hash(Process::Evacuation, request_id, EVACUATION_KIND, &self.to_json())
    }
}

impl fmt::Display for EvacuationParams {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let assets: Vec<&str> = self.assets.iter().map(AssetCode::as_str).collect();
        write!(f, "evacuation of {} from {} to {}", assets.join(","), self.wallet, self.destination)
    }
}

/// The id of the withdrawals row an evacuation writes for `asset`: one row per (request, asset), so
/// executing the request again finds the rows it already wrote.
pub fn evacuation_withdrawal_id(request_id: &str, asset: &AssetCode) -> String {
    format!("{request_id}-{}", asset.as_str().to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::operators::{Action, Role, role_for};

    const HOT: &str = "0x3c44cdddb6a900fa2b585dd299e03d12fa4293bc";
    const NEW: &str = "0x90f79bf6eb2c4f870365e785982e1f101e93b906";

    fn params() -> Value {
        json!({"wallet": HOT, "destination": NEW, "assets": ["ETH"], "reason": "hot key leaked"})
    }

    #[test]
    fn k19_evacuation_is_its_own_process_requested_by_om_approved_by_sm() {
        assert_eq!(Process::Evacuation.code(), 11);
        assert_ne!(Process::Evacuation.code(), Process::Unfreeze.code());
        assert_eq!(Process::parse("evacuation"), Some(Process::Evacuation));
        assert_eq!(Process::Evacuation.requester_role(), Role::OperationsManager);
        assert_eq!(role_for(Process::Evacuation, Action::Approve), Some(Role::SigningManager));
        assert_eq!(role_for(Process::Evacuation, Action::Execute), None);
        assert_eq!(role_for(Process::Evacuation, Action::Inspect), Some(Role::LogInspector));
        assert!(!Process::Evacuation.in_table_a1());
        // The same params under the unfreeze process hash differently: an unfreeze approval never verifies
        // as an evacuation.
        let p = EvacuationParams::parse(&params()).unwrap();
        let as_unfreeze = request_intent_hash(Process::Unfreeze, "r_1", EVACUATION_KIND, &p.to_json());
        assert_ne!(p.intent_hash("r_1"), as_unfreeze);
        assert_ne!(p.intent_hash("r_1"), p.intent_hash("r_2"));
    }

    #[test]
    fn k19_evacuation_params_are_canonicalised_and_round_trip() {
        let raw = json!({
            "wallet": HOT.to_ascii_uppercase().replace("0X", "0x"),
            "destination": NEW,
            "assets": ["USDC", "ETH"],
            "reason": "hot key leaked",
        });
        let p = EvacuationParams::parse(&raw).unwrap();
        assert_eq!(p.wallet, HOT);
        assert_eq!(p.assets, vec!["ETH".parse::<AssetCode>().unwrap(), "USDC".parse().unwrap()]);
        let canonical = p.to_json();
        assert_eq!(EvacuationParams::parse_canonical(&canonical).unwrap(), p);
        assert!(EvacuationParams::parse_canonical(&raw).is_err(), "non-canonical params are refused");
        assert!(p.covers_asset(&"USDC".parse().unwrap()) && !p.covers_asset(&"DAI".parse().unwrap()));
        assert_eq!(evacuation_withdrawal_id("r_1", &"ETH".parse().unwrap()), "r_1-eth");
    }

    #[test]
    fn k19_bad_evacuation_params_name_each_field() {
        let fields = |v: Value| -> Vec<String> {
            EvacuationParams::parse(&v).unwrap_err().into_iter().map(|e| e.field).collect()
        };
        assert_eq!(
            fields(json!({"wallet": HOT, "destination": HOT, "assets": ["ETH"], "reason": "x"})),
            ["destination"]
        );
        let zero = "0x0000000000000000000000000000000000000000";
        assert_eq!(
            fields(json!({"wallet": HOT, "destination": zero, "assets": ["ETH"], "reason": "x"})),
            ["destination"]
        );
        assert_eq!(
            fields(json!({"wallet": "0x12", "destination": NEW, "assets": [], "reason": " "})),
            ["wallet", "assets", "reason"]
        );
        assert_eq!(
            fields(json!({"wallet": HOT, "destination": NEW, "assets": ["ETH", "ETH", "eth"], "reason": "x"})),
            ["assets[1]", "assets[2]"]
        );
        assert_eq!(
            fields(json!({"wallet": HOT, "destination": NEW, "assets": ["ETH"], "reason": "a\nb", "amount": "1"})),
            ["amount", "reason"]
        );
        assert_eq!(fields(json!([])), ["params"]);
        let many: Vec<String> = (0..=EVACUATION_ASSETS_MAX).map(|i| format!("A{i}")).collect();
        assert_eq!(fields(json!({"wallet": HOT, "destination": NEW, "assets": many, "reason": "x"})), ["assets"]);
        assert!(fields(json!({"destination": NEW, "assets": ["ETH"], "reason": "x"})) == ["wallet"]);
    }
}
