//! Wallet tiers per asset (K13, C1, M10): the hot wallet holds only a bounded working balance; what is
//! above its cap goes to cold storage automatically, and when it runs below its floor a refill from cold
//! is *requested* (cold → hot needs operator approvals and an offline signature, K14).
//!
//! Pure: the caller reads the hot wallet's balance and what is already moving, and gets back what to do.
//! Both movements aim at `hot_target`, so a sweep never leaves the hot wallet below its floor and a
//! refill never pushes it above its cap. Only one movement of each kind is in flight at a time: a second
//! sweep decided from a balance the first has not yet lowered would sweep twice.

use serde::{Deserialize, Serialize};

use crate::Amount;

/// One asset's tier limits, validated: `hot_floor < hot_target <= hot_cap`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TierConfig {
    /// Above this the hot wallet sweeps down to `hot_target` (the most a hot-key theft can lose, K13).
    pub hot_cap: Amount,
    /// Below this a refill from cold up to `hot_target` is requested.
    pub hot_floor: Amount,
    /// Where both movements leave the hot wallet.
    pub hot_target: Amount,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct TierConfigError {
    pub field: &'static str,
    pub reason: String,
}

impl TierConfig {
    pub fn new(hot_cap: Amount, hot_floor: Amount, hot_target: Amount) -> Result<TierConfig, TierConfigError> {
        if hot_floor >= hot_target {
            return Err(TierConfigError {
                field: "hot_floor",
                reason: format!("must be below hot_target ({hot_floor} >= {hot_target})"),
            });
        }
        if hot_target > hot_cap {
            return Err(TierConfigError {
                field: "hot_target",
                reason: format!("must not exceed hot_cap ({hot_target} > {hot_cap})"),
            });
        }
        Ok(TierConfig { hot_cap, hot_floor, hot_target })
    }
}

/// What to do about the hot wallet now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TierAction {
    None,
    /// Move `amount` hot → cold (no cold key needed; signed by the hot key to the signer's own cold list).
    SweepToCold {
        amount: Amount,
    },
    /// Ask operators for `amount` cold → hot (approvals, then the offline signature).
    RequestRefill {
        amount: Amount,
    },
}

/// Decides from the hot wallet's spendable balance and the movements already under way.
///
/// A sweep waits only for an earlier sweep (a pending refill must not hold back a sweep when the hot
/// wallet is over its cap: that is the exposure the cap bounds). A refill waits for an earlier refill and
/// for any sweep in flight (a sweep in flight means the balance read is about to change).
pub fn decide(hot_balance: Amount, pending_sweeps: usize, pending_refills: usize, config: &TierConfig) -> TierAction {
    if hot_balance > config.hot_cap {
        if pending_sweeps > 0 {
            return TierAction::None;
        }
        // hot_balance > hot_cap >= hot_target, so the subtraction cannot underflow.
        let amount = Amount::from_base_units(hot_balance.base_units() - config.hot_target.base_units());
        return TierAction::SweepToCold { amount };
    }
    if hot_balance < config.hot_floor {
        if pending_refills > 0 || pending_sweeps > 0 {
            return TierAction::None;
        }
        let amount = Amount::from_base_units(config.hot_target.base_units() - hot_balance.base_units());
        return TierAction::RequestRefill { amount };
    }
    TierAction::None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(n: u128) -> Amount {
        Amount::from_base_units(n)
    }

    fn config() -> TierConfig {
        TierConfig::new(a(100), a(10), a(50)).unwrap()
    }

    #[test]
    fn c1_config_is_validated_naming_the_field() {
        assert_eq!(TierConfig::new(a(100), a(50), a(50)).unwrap_err().field, "hot_floor");
        assert_eq!(TierConfig::new(a(100), a(60), a(50)).unwrap_err().field, "hot_floor");
        assert_eq!(TierConfig::new(a(40), a(10), a(50)).unwrap_err().field, "hot_target");
        assert!(TierConfig::new(a(50), a(10), a(50)).is_ok(), "target may equal cap");
    }

    #[test]
    fn k13_over_cap_sweeps_down_to_target_once() {
        let c = config();
        assert_eq!(decide(a(1000), 0, 0, &c), TierAction::SweepToCold { amount: a(950) });
        assert_eq!(decide(a(101), 0, 0, &c), TierAction::SweepToCold { amount: a(51) });
        assert_eq!(decide(a(100), 0, 0, &c), TierAction::None, "at the cap is within it");
        assert_eq!(decide(a(1000), 1, 0, &c), TierAction::None, "never a second sweep in flight");
        assert_eq!(decide(a(1000), 0, 1, &c), TierAction::SweepToCold { amount: a(950) }, "a refill never blocks it");
    }

    #[test]
    fn k14_below_floor_requests_refill_to_target_once() {
        let c = config();
        assert_eq!(decide(a(0), 0, 0, &c), TierAction::RequestRefill { amount: a(50) });
        assert_eq!(decide(a(9), 0, 0, &c), TierAction::RequestRefill { amount: a(41) });
        assert_eq!(decide(a(10), 0, 0, &c), TierAction::None, "at the floor is within it");
        assert_eq!(decide(a(5), 0, 1, &c), TierAction::None, "never a second refill in flight");
        assert_eq!(decide(a(5), 1, 0, &c), TierAction::None, "a sweep in flight changes the balance");
        assert_eq!(decide(a(50), 0, 0, &c), TierAction::None);
    }

    proptest::proptest! {
        /// K13, C1: a sweep never leaves the hot wallet below its floor (it leaves exactly the target), a refill
        /// never takes it above its cap, nothing moves while the same kind is in flight, and a balance within
        /// [floor, cap] never moves.
        #[test]
        fn k13_sweeps_never_below_floor_refills_never_above_cap(
            floor in 0u128..1_000_000,
            gap1 in 1u128..1_000_000,
            gap2 in 0u128..1_000_000,
            balance in 0u128..5_000_000,
            sweeps in 0usize..3,
            refills in 0usize..3,
        ) {
            let c = TierConfig::new(a(floor + gap1 + gap2), a(floor), a(floor + gap1)).unwrap();
            match decide(a(balance), sweeps, refills, &c) {
                TierAction::SweepToCold { amount } => {
                    proptest::prop_assert_eq!(sweeps, 0);
                    proptest::prop_assert!(balance > c.hot_cap.base_units());
                    let left = balance - amount.base_units();
                    proptest::prop_assert!(left >= c.hot_floor.base_units(), "swept below the floor");
                    proptest::prop_assert_eq!(left, c.hot_target.base_units());
                }
                TierAction::RequestRefill { amount } => {
                    proptest::prop_assert_eq!((sweeps, refills), (0, 0));
                    proptest::prop_assert!(balance < c.hot_floor.base_units());
                    let after = balance + amount.base_units();
                    proptest::prop_assert!(after <= c.hot_cap.base_units(), "refilled above the cap");
                    proptest::prop_assert!(amount.base_units() > 0);
                }
                TierAction::None => {
                    let within = balance >= c.hot_floor.base_units() && balance <= c.hot_cap.base_units();
                    proptest::prop_assert!(within || sweeps > 0 || refills > 0);
                }
            }
        }
    }
}
