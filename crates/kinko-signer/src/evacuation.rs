//! The signer's one exception to a freeze (K19, S5): evacuating a frozen wallet's funds to new keys.
//!
//! While a freeze covers the key, wallet or chain, the signer refuses every signature — unless the request
//! carries an [`EvacuationOrder`] that the signer verifies itself, against its own operator registry and its
//! own `evacuation_approvals` (never the server's say):
//! - the order's params are canonical evacuation params (`kinko_core::evacuation`), the approvals are
//!   Ed25519 signatures over `(Process::Evacuation, request id, request_intent_hash(params))` by signing
//!   managers other than the requester, at least `evacuation_approvals` of them, none forged;
//! - the params' wallet is the key's own address (the wallet being signed for);
//! - the decoded transaction pays the params' destination: the native `to`, or the ERC-20 `transfer`
//!   recipient — and the intent (already compared field by field with the payload) names the same one;
//! - the intent's asset is one of the params' assets.
//!
//! Everything else is unchanged: the payload is still checked against the intent and the fee bound, the
//! double-sign record kept, and the key access log names the evacuation's approvers. A compromised server
//! can therefore only ever move the wallet's funds to the destination its operators approved — the new
//! keys generated offline — and an order it forges or edits (another destination, approvals of another
//! request, an unfreeze approval) is refused. Without a freeze the order is ignored and the normal signing
//! quorum applies.
//!
//! Pure verification: no I/O, so the same checks build without the `online` feature.

use alloy_consensus::TxEip1559;
use alloy_primitives::TxKind;
use kinko_core::evacuation::EvacuationParams;
use kinko_core::intent::Intent;
use kinko_core::operators::{ApprovalSubject, Process, QuorumPolicy};
use serde::{Deserialize, Serialize};

use crate::approvals::{OperatorRegistry, verify_quorum};
use crate::evm::{EvmCall, classify_calldata};
use crate::{Approval, SignerError};

/// Default approvals an evacuation needs in the signer (`[emergency] evacuation_approvals`): two signing
/// managers, since an evacuation moves everything a wallet holds. Production configuration never goes
/// below this; dev mode may use 1.
pub const EVACUATION_APPROVALS_DEFAULT: u8 = 2;

/// An approved evacuation request, as the server presents it with each signing request of the evacuation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvacuationOrder {
    pub request_id: String,
    /// The operator who asked (an operations manager); their own approval never counts.
    pub requester: String,
    /// The request's params exactly as approved (`EvacuationParams::to_json`).
    pub params: serde_json::Value,
    pub approvals: Vec<Approval>,
}

fn refused(m: String) -> SignerError {
    SignerError::Refused(format!("evacuation order refused: {m}"))
}

/// Checks `order` for a signature from `key_address` for `intent`, without a payload (what
/// `check_approvals` can see): canonical params naming this wallet, the intent's destination and asset,
/// a registered requester and at least `required` valid approvals over the evacuation's intent hash.
/// Returns the operators whose approvals counted.
pub fn verify_order(
    registry: &OperatorRegistry,
    order: &EvacuationOrder,
    required: u8,
    key_address: &str,
    intent: &Intent,
    now_ms: i64,
) -> Result<Vec<String>, SignerError> {
    let params = EvacuationParams::parse_canonical(&order.params).map_err(|errors| {
        let named: Vec<String> = errors.iter().map(ToString::to_string).collect();
        refused(format!("params: {}", named.join("; ")))
    })?;
    if !params.wallet.eq_ignore_ascii_case(key_address) {
        return Err(refused(format!("it evacuates wallet {}, but the key signs for {key_address}", params.wallet)));
    }
    if !params.destination.eq_ignore_ascii_case(&intent.destination) {
        return Err(refused(format!(
            "the approved destination is {}, the intent pays {}",
            params.destination, intent.destination
        )));
    }
    if !params.covers_asset(&intent.asset) {
        return Err(refused(format!("asset {} is not one of the approved assets", intent.asset)));
    }
    if registry.get(&order.requester).is_none() {
        return Err(refused(format!("the requester {:?} is not a registered operator", order.requester)));
    }
    if required == 0 {
        return Err(refused("the signer's evacuation_approvals is 0".into()));
    }
    let subject = ApprovalSubject::new(Process::Evacuation, &order.request_id, params.intent_hash(&order.request_id))
        .map_err(|e| refused(format!("request id: {e}")))?;
    let verified =
        verify_quorum(registry, &subject, &order.approvals, QuorumPolicy::AtLeast(required), &order.requester, now_ms)
            .map_err(|e| refused(format!("request {}: {e}", order.request_id)))?;
    Ok(verified.approvers)
}

/// Checks the decoded transaction's recipient against the order: the native `to` for a call without data,
/// the recipient of the ERC-20 `transfer` otherwise. Run after `evm::check_against_intent`, which already
/// refused every other kind of call data.
pub fn check_tx_destination(tx: &TxEip1559, order: &EvacuationOrder) -> Result<(), SignerError> {
    let destination = order
        .params
        .get("destination")
        .and_then(|d| d.as_str())
        .ok_or_else(|| refused("params.destination is missing".into()))?;
    let to = match tx.to {
        TxKind::Call(to) => to,
        TxKind::Create => return Err(refused("a contract creation pays nobody".into())),
    };
    let recipient = match classify_calldata(&tx.input)? {
        EvmCall::None => to,
        EvmCall::Erc20Transfer { recipient, .. } => recipient,
    };
    let recipient = format!("{recipient:#x}");
    if !recipient.eq_ignore_ascii_case(destination) {
        return Err(refused(format!("the transaction pays {recipient}, the approved destination is {destination}")));
    }
    Ok(())
}

/// Both checks for a signature: [`verify_order`] and [`check_tx_destination`].
pub fn verify_for_signature(
    registry: &OperatorRegistry,
    order: &EvacuationOrder,
    required: u8,
    key_address: &str,
    intent: &Intent,
    tx: &TxEip1559,
    now_ms: i64,
) -> Result<Vec<String>, SignerError> {
    check_tx_destination(tx, order)?;
    verify_order(registry, order, required, key_address, intent, now_ms)
}

/// The signer's side: the freeze check with its one exception, and the order's verification against the
/// signer's own registry and `evacuation_approvals`.
#[cfg(feature = "online")]
impl crate::local::LocalSigner {
    /// How many signing managers must approve an evacuation (`[emergency] evacuation_approvals`, at least 1).
    pub fn set_evacuation_approvals(&self, m: u8) -> Result<(), SignerError> {
        self.freezes()?.set_evacuation_approvals(m)
    }

    pub fn evacuation_approvals(&self) -> u8 {
        self.freezes().map(|f| f.evacuation_approvals()).unwrap_or(EVACUATION_APPROVALS_DEFAULT)
    }

    /// `Ok(None)` when no freeze covers the key; `Ok(Some(order))` when one does and the request carries an
    /// evacuation order (still to be verified: [`Self::verify_evacuation`]); the freeze's refusal otherwise.
    pub(crate) fn frozen_unless_evacuation<'r>(
        &self,
        req: &'r crate::EvmSignRequest,
        wallet: &str,
    ) -> Result<Option<&'r EvacuationOrder>, SignerError> {
        match self.freezes()?.check(crate::freeze::EVM_CHAIN, wallet, &req.key_id) {
            Ok(()) => Ok(None),
            Err(frozen) => req.evacuation.as_ref().map(Some).ok_or(frozen),
        }
    }

    /// Verifies `order` for a signature from `wallet` for `intent` (and, when signing, the decoded `tx`)
    /// against the signer's own registry and `evacuation_approvals`; the freeze's refusal names why not.
    pub(crate) fn verify_evacuation(
        &self,
        order: &EvacuationOrder,
        intent: &Intent,
        wallet: &str,
        tx: Option<&TxEip1559>,
    ) -> Result<Vec<String>, SignerError> {
        let required = self.evacuation_approvals();
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0);
        let verified = self.registry()?.with(|registry| match tx {
            Some(tx) => verify_for_signature(registry, order, required, wallet, intent, tx, now_ms),
            None => verify_order(registry, order, required, wallet, intent, now_ms),
        })?;
        verified.map_err(|e| match e {
            SignerError::Refused(m) => SignerError::Refused(format!("frozen: {m}")),
            other => other,
        })
    }
}

#[cfg(test)]
mod tests {
    use alloy_eips::eip2930::AccessList;
    use alloy_primitives::{Address, Bytes, U256};
    use kinko_core::operators::{Decision, request_intent_hash};
    use kinko_core::{Amount, ChainId};

    use super::*;
    use crate::approvals::sign_approval;
    use crate::approvals::tests::{key, standard_log};

    const HOT: &str = "0x3c44cdddb6a900fa2b585dd299e03d12fa4293bc";
    const NEW: &str = "0x90f79bf6eb2c4f870365e785982e1f101e93b906";
    const OTHER: &str = "0x00000000000000000000000000000000000c01d1";

    fn now_ms() -> i64 {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
    }

    fn registry() -> OperatorRegistry {
        OperatorRegistry::replay(&standard_log(now_ms()), now_ms()).unwrap()
    }

    fn params(destination: &str) -> serde_json::Value {
        serde_json::json!({"wallet": HOT, "destination": destination, "assets": ["ETH"], "reason": "key leaked"})
    }

    fn order(params: serde_json::Value, by: &[(u8, &str)]) -> EvacuationOrder {
        let p = EvacuationParams::parse(&params).unwrap();
        let subject = ApprovalSubject::new(Process::Evacuation, "r_ev", p.intent_hash("r_ev")).unwrap();
        let approvals =
            by.iter().map(|(s, id)| sign_approval(&key(*s), id, &subject, Decision::Approve).unwrap()).collect();
        EvacuationOrder { request_id: "r_ev".into(), requester: "om".into(), params, approvals }
    }

    fn intent(destination: &str, asset: &str) -> Intent {
        Intent {
            id: "r_ev-eth".into(),
            asset: asset.parse().unwrap(),
            chain_id: ChainId(31337),
            amount: Amount::from_base_units(1),
            destination: destination.into(),
            source_wallet: HOT.into(),
            customer_id: "custodian".into(),
            reason: "custodian transfer".into(),
        }
    }

    fn tx(to: &str) -> TxEip1559 {
        TxEip1559 {
            chain_id: 31337,
            nonce: 0,
            gas_limit: 21_000,
            max_fee_per_gas: 2,
            max_priority_fee_per_gas: 1,
            to: TxKind::Call(to.parse::<Address>().unwrap()),
            value: U256::from(1u8),
            access_list: AccessList::default(),
            input: Bytes::new(),
        }
    }

    fn refusal(got: Result<Vec<String>, SignerError>) -> String {
        match got {
            Err(SignerError::Refused(m)) => m,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn k19_a_verified_order_names_its_approvers() {
        let r = registry();
        let good = order(params(NEW), &[(1, "m1"), (2, "m2")]);
        let got = verify_for_signature(&r, &good, 2, HOT, &intent(NEW, "ETH"), &tx(NEW), now_ms()).unwrap();
        assert_eq!(got, vec!["m1".to_string(), "m2".to_string()]);
    }

    #[test]
    fn k19_forged_or_edited_orders_are_refused() {
        let r = registry();
        let now = now_ms();
        let good = order(params(NEW), &[(1, "m1"), (2, "m2")]);

        // The destination edited after approval (params and transaction both pay the thief).
        let mut edited = good.clone();
        edited.params = params(OTHER);
        let m = refusal(verify_for_signature(&r, &edited, 2, HOT, &intent(OTHER, "ETH"), &tx(OTHER), now));
        assert!(m.contains("does not verify"), "{m}");
        // The approved order, but a transaction to another address.
        let m = refusal(verify_for_signature(&r, &good, 2, HOT, &intent(NEW, "ETH"), &tx(OTHER), now));
        assert!(m.contains("approved destination"), "{m}");
        let m = refusal(verify_for_signature(&r, &good, 2, HOT, &intent(OTHER, "ETH"), &tx(NEW), now));
        assert!(m.contains("the intent pays"), "{m}");
        // Another asset, another wallet.
        let m = refusal(verify_order(&r, &good, 2, HOT, &intent(NEW, "USDC"), now));
        assert!(m.contains("not one of the approved assets"), "{m}");
        let m = refusal(verify_order(&r, &good, 2, OTHER, &intent(NEW, "ETH"), now));
        assert!(m.contains("the key signs for"), "{m}");
        // Too few approvals; the requester's own; an operator without the role (signing operator).
        let m = refusal(verify_order(&r, &order(params(NEW), &[(1, "m1")]), 2, HOT, &intent(NEW, "ETH"), now));
        assert!(m.contains("1 valid approvals of 2 required"), "{m}");
        let mut own = order(params(NEW), &[(1, "m1"), (2, "m2")]);
        own.requester = "m1".into();
        assert!(refusal(verify_order(&r, &own, 2, HOT, &intent(NEW, "ETH"), now)).contains("m1"));
        let m =
            refusal(verify_order(&r, &order(params(NEW), &[(1, "m1"), (10, "so")]), 2, HOT, &intent(NEW, "ETH"), now));
        assert!(m.contains("1 valid approvals of 2 required") && m.contains("\"so\" not counted"), "{m}");
        // Approvals of an unfreeze request with the same id and params: they do not verify as an evacuation.
        let hash = request_intent_hash(Process::Unfreeze, "r_ev", "evacuation", &params(NEW));
        let subject = ApprovalSubject::new(Process::Unfreeze, "r_ev", hash).unwrap();
        let mut unfreeze = good.clone();
        unfreeze.approvals = [(1, "m1"), (2, "m2")]
            .iter()
            .map(|(s, id)| sign_approval(&key(*s), id, &subject, Decision::Approve).unwrap())
            .collect();
        assert!(refusal(verify_order(&r, &unfreeze, 2, HOT, &intent(NEW, "ETH"), now)).contains("does not verify"));
        // Approvals of another evacuation request.
        let mut other_request = good.clone();
        other_request.request_id = "r_other".into();
        assert!(
            refusal(verify_order(&r, &other_request, 2, HOT, &intent(NEW, "ETH"), now)).contains("does not verify")
        );
        // Non-canonical params (upper-case hex) even though they mean the same.
        let mut shouting = good.clone();
        shouting.params["destination"] = serde_json::json!(format!("0x{}", NEW[2..].to_ascii_uppercase()));
        assert!(refusal(verify_order(&r, &shouting, 2, HOT, &intent(NEW, "ETH"), now)).contains("canonical"));
        // An unknown requester; a quorum of 0.
        let mut stranger = good.clone();
        stranger.requester = "nobody".into();
        assert!(refusal(verify_order(&r, &stranger, 2, HOT, &intent(NEW, "ETH"), now)).contains("not a registered"));
        assert!(refusal(verify_order(&r, &good, 0, HOT, &intent(NEW, "ETH"), now)).contains("is 0"));
    }
}

/// The signer itself, end to end (no server): a frozen key signs only for a verified evacuation order.
#[cfg(all(test, feature = "online"))]
mod signer_tests {
    use std::sync::Arc;

    use alloy_consensus::{SignableTransaction, TxEip1559};
    use alloy_eips::eip2930::AccessList;
    use alloy_primitives::{Address, Bytes, TxKind, U256};
    use kinko_core::freeze::{Freeze, FreezeScope};
    use kinko_core::intent::Intent;
    use kinko_core::operators::{Decision, request_intent_hash};
    use kinko_core::policy::PolicyClass;
    use kinko_core::{Amount, ChainId};
    use zeroize::Zeroizing;

    use super::*;
    use crate::approvals::tests::{key, standard_log};
    use crate::approvals::{QuorumBand, SigningQuorum, SigningQuorumConfig, sign_approval};
    use crate::journal::{SignerJournal, SlotKey};
    use crate::testing::MemoryJournal;
    use crate::{EvmSignRequest, LocalSigner, Signer};

    const KEY: &str = "eth-hot-1";
    const CHAIN: u64 = 31337;
    const NEW: &str = "0x90f79bf6eb2c4f870365e785982e1f101e93b906";
    const THIEF: &str = "0x000000000000000000000000000000000000dead";
    const AUTO_MAX: u128 = 10;
    const AMOUNT: u128 = 5_000;

    fn now_ms() -> i64 {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
    }

    /// The standard registry (m1..m3 signing managers, so, om), a quorum of two signing managers above
    /// `AUTO_MAX`, and two approvals for evacuations.
    async fn signer() -> (LocalSigner, Arc<MemoryJournal>, String) {
        let journal = Arc::new(MemoryJournal::new());
        let signer = LocalSigner::new(journal.clone());
        let address = signer.add_secp256k1_key(KEY, Zeroizing::new([0x11; 32])).unwrap();
        let quorum = SigningQuorum::from_configs(&[SigningQuorumConfig {
            key_id: KEY.into(),
            asset: "ETH".into(),
            class: PolicyClass::HotSmall,
            auto_max: Some(Amount::from_base_units(AUTO_MAX)),
            bands: vec![QuorumBand { from: Amount::from_base_units(0), approvals: 2 }],
        }])
        .unwrap();
        signer.set_quorum(quorum).unwrap();
        for entry in standard_log(now_ms()) {
            signer.apply_registry_change(&entry.change, &entry.approvals).await.unwrap();
        }
        signer.set_evacuation_approvals(2).unwrap();
        (signer, journal, address)
    }

    fn params(wallet: &str, destination: &str) -> serde_json::Value {
        serde_json::json!({"wallet": wallet, "destination": destination, "assets": ["ETH"], "reason": "key leaked"})
    }

    /// An evacuation order for `params` approved by `(seed, operator)` pairs, requested by om.
    fn order(params: serde_json::Value, by: &[(u8, &str)]) -> EvacuationOrder {
        let hash = EvacuationParams::parse(&params).unwrap().intent_hash("r_ev");
        let subject = ApprovalSubject::new(Process::Evacuation, "r_ev", hash).unwrap();
        let approvals =
            by.iter().map(|(s, id)| sign_approval(&key(*s), id, &subject, Decision::Approve).unwrap()).collect();
        EvacuationOrder { request_id: "r_ev".into(), requester: "om".into(), params, approvals }
    }

    /// The pipeline's signing request for an evacuation row paying `to`, with `order` attached.
    fn request(wallet: &str, nonce: u64, to: &str, order: Option<EvacuationOrder>) -> EvmSignRequest {
        request_of(wallet, nonce, to, AMOUNT, order)
    }

    fn request_of(wallet: &str, nonce: u64, to: &str, amount: u128, order: Option<EvacuationOrder>) -> EvmSignRequest {
        let tx = TxEip1559 {
            chain_id: CHAIN,
            nonce,
            gas_limit: 21_000,
            max_fee_per_gas: 2_000_000_000,
            max_priority_fee_per_gas: 1_000_000_000,
            to: TxKind::Call(to.parse::<Address>().unwrap()),
            value: U256::from(amount),
            access_list: AccessList::default(),
            input: Bytes::new(),
        };
        let mut payload = Vec::new();
        tx.encode_for_signing(&mut payload);
        EvmSignRequest {
            key_id: KEY.into(),
            chain_id: CHAIN,
            nonce,
            payload,
            intent: Intent {
                id: format!("r_ev-eth-{nonce}"),
                asset: "ETH".parse().unwrap(),
                chain_id: ChainId(CHAIN),
                amount: Amount::from_base_units(amount),
                destination: to.into(),
                source_wallet: wallet.into(),
                customer_id: "custodian".into(),
                reason: "custodian transfer".into(),
            },
            approvals: vec![],
            actor: "pipeline:test".into(),
            terminal: "test".into(),
            evacuation: order,
        }
    }

    fn refusal(got: Result<[u8; 65], SignerError>) -> String {
        match got {
            Err(SignerError::Refused(m)) => m,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    fn freeze(id: &str, scope: FreezeScope) -> Freeze {
        Freeze {
            id: id.into(),
            scope,
            reason: "unknown spend".into(),
            set_by: "system:reconciliation".into(),
            set_at_ms: 1,
        }
    }

    /// K19, S5: while the wallet is frozen, the signer signs an evacuation only for an order it verifies
    /// itself. An edited destination, too few approvals, approvals of an unfreeze request, approvals by an
    /// operator without the role, or no order at all: refused, nothing logged or recorded. A verified order
    /// signs (the access log names its approvers), also under an everything freeze. Without a freeze the
    /// order is irrelevant: the normal signing quorum applies.
    #[tokio::test]
    async fn k19_signer_refuses_evacuation_order_with_other_destination_or_forged_approvals() {
        let (signer, journal, hot) = signer().await;
        let good = order(params(&hot, NEW), &[(1, "m1"), (2, "m2")]);

        // Not frozen: the order counts for nothing; above auto_max the normal quorum (no Signing approvals
        // presented) refuses, at or below it the signature is automatic.
        let m = refusal(signer.sign_evm(&request(&hot, 0, NEW, Some(good.clone()))).await);
        assert!(m.contains("0 valid approvals of 2 required") && !m.contains("evacuation"), "{m}");
        assert!(journal.access_log().is_empty());

        signer.freeze(&freeze("f1", FreezeScope::Wallet(hot.clone()))).await.unwrap();
        let cases: Vec<(&str, EvmSignRequest)> = vec![
            ("no order", request(&hot, 0, NEW, None)),
            // The server edits the approved destination to its own (params and transaction both).
            ("edited destination", {
                let mut o = good.clone();
                o.params = params(&hot, THIEF);
                request(&hot, 0, THIEF, Some(o))
            }),
            // The approved order, attached to a transaction paying someone else.
            ("other destination", request(&hot, 0, THIEF, Some(good.clone()))),
            ("too few approvals", request(&hot, 0, NEW, Some(order(params(&hot, NEW), &[(1, "m1")])))),
            ("approvals without the role", {
                request(&hot, 0, NEW, Some(order(params(&hot, NEW), &[(1, "m1"), (10, "so")])))
            }),
            ("unfreeze approvals", {
                let hash = request_intent_hash(Process::Unfreeze, "r_ev", "unfreeze", &params(&hot, NEW));
                let subject = ApprovalSubject::new(Process::Unfreeze, "r_ev", hash).unwrap();
                let mut o = good.clone();
                o.approvals = [(1u8, "m1"), (2, "m2")]
                    .iter()
                    .map(|(s, id)| sign_approval(&key(*s), id, &subject, Decision::Approve).unwrap())
                    .collect();
                request(&hot, 0, NEW, Some(o))
            }),
            ("approvals of another request", {
                let mut o = good.clone();
                o.request_id = "r_other".into();
                request(&hot, 0, NEW, Some(o))
            }),
        ];
        for (what, req) in &cases {
            let m = refusal(signer.sign_evm(req).await);
            assert!(m.starts_with("frozen"), "{what}: {m}");
            assert!(signer.check_approvals(req).await.is_err(), "{what}: check_approvals agrees");
        }
        assert!(journal.access_log().is_empty(), "a refused request leaves no key access log entry");
        assert!(journal.slot_entries(&SlotKey::evm(KEY, CHAIN, 0)).await.unwrap().is_empty());

        // The verified order: signed, logged with the evacuation's approvers, recorded for double signing.
        let req = request(&hot, 0, NEW, Some(good.clone()));
        assert_eq!(signer.check_approvals(&req).await.unwrap(), vec!["m1".to_string(), "m2".to_string()]);
        signer.sign_evm(&req).await.unwrap();
        let log = journal.access_log();
        assert_eq!(log.len(), 1);
        assert_eq!(log[0].approvers, vec!["m1".to_string(), "m2".to_string()]);
        assert_eq!(journal.slot_entries(&SlotKey::evm(KEY, CHAIN, 0)).await.unwrap().len(), 1);
        // The same nonce for another payment is still a double sign, order or not.
        let other = request_of(&hot, 0, NEW, AMOUNT + 1, Some(good.clone()));
        assert!(matches!(signer.sign_evm(&other).await, Err(SignerError::DoubleSign { .. })));

        // An everything freeze also lets the evacuation through (that is the point), and still nothing else.
        signer.freeze(&freeze("f2", FreezeScope::Everything)).await.unwrap();
        signer.sign_evm(&request(&hot, 1, NEW, Some(good.clone()))).await.unwrap();
        assert!(refusal(signer.sign_evm(&request(&hot, 2, NEW, None)).await).starts_with("frozen"));
        // The freeze stays in place.
        assert_eq!(signer.active_freezes().await.unwrap().len(), 2);
    }
}
