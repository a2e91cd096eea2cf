//! Key lifecycles (K2, K3, K4, K5, K7): which states a signing key, a KEK and the master seed can be in,
//! and which moves between them exist. The store persists the state and a record of every move; this
//! module owns the tables, so every caller (CLI, signer gate, KEK rotation) asks the same question.
//!
//! The tables follow seed 000 §5.4.2 (Fig 5-2, 5-3, 5-4). The figures themselves are drawings; the
//! transitions below are the ones the accompanying text names, cited next to each row. Anything not
//! listed is refused: a lifecycle that lets a destroyed key come back, or a stored key sign without
//! passing through activation, defeats the point of having one (K7, K10).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Bound on the actor and reason texts of a transition record.
pub const TRANSITION_TEXT_LEN_MAX: usize = 512;
/// Milliseconds in one hour / one day, for the business-hours policy.
const HOUR_MS: i64 = 3_600_000;
const DAY_MS: i64 = 24 * HOUR_MS;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LifecycleError {
    #[error("{kind} state {value:?} is not one of: {known}")]
    UnknownState { kind: &'static str, value: String, known: String },
    #[error("{kind} transition {from} -> {to} is not allowed (seed 000 {figure})")]
    NotAllowed { kind: &'static str, from: &'static str, to: &'static str, figure: &'static str },
    #[error("transition {field} is empty")]
    Empty { field: &'static str },
    #[error("transition {field} is longer than {TRANSITION_TEXT_LEN_MAX} bytes")]
    TooLong { field: &'static str },
    #[error("business hours: {0}")]
    BusinessHours(&'static str),
}

/// Who moved a key and why. Both are required: an unexplained state change is exactly what an
/// investigation after an incident cannot work with.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attribution {
    pub actor: String,
    pub reason: String,
}

impl Attribution {
    pub fn new(actor: impl Into<String>, reason: impl Into<String>) -> Result<Attribution, LifecycleError> {
        let a = Attribution { actor: actor.into(), reason: reason.into() };
        a.validate()?;
        Ok(a)
    }

    pub fn validate(&self) -> Result<(), LifecycleError> {
        for (field, s) in [("actor", &self.actor), ("reason", &self.reason)] {
            if s.trim().is_empty() {
                return Err(LifecycleError::Empty { field });
            }
            if s.len() > TRANSITION_TEXT_LEN_MAX {
                return Err(LifecycleError::TooLong { field });
            }
        }
        Ok(())
    }
}

/// Shared shape of the three lifecycles, so the store and the tests treat them alike.
pub trait Lifecycle: Copy + Eq + fmt::Debug + 'static {
    const KIND: &'static str;
    const FIGURE: &'static str;
    const ALL: &'static [Self];
    fn as_str(self) -> &'static str;
    /// The figure's transitions; everything else is refused.
    fn allowed(self, to: Self) -> bool;

    fn parse(s: &str) -> Result<Self, LifecycleError> {
        Self::ALL.iter().copied().find(|st| st.as_str() == s).ok_or_else(|| LifecycleError::UnknownState {
            kind: Self::KIND,
            value: s.chars().take(64).collect(),
            known: Self::ALL.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", "),
        })
    }

    /// Checks one move. Returns the target state so callers can chain it into a write.
    fn transition(self, to: Self, why: &Attribution) -> Result<Self, LifecycleError> {
        why.validate()?;
        if self.allowed(to) {
            Ok(to)
        } else {
            Err(LifecycleError::NotAllowed {
                kind: Self::KIND,
                from: self.as_str(),
                to: to.as_str(),
                figure: Self::FIGURE,
            })
        }
    }

    fn is_terminal(self) -> bool {
        !Self::ALL.iter().any(|&to| self.allowed(to))
    }
}

/// Checks a move in any lifecycle: `transition(from, to, why)`.
pub fn transition<L: Lifecycle>(from: L, to: L, why: &Attribution) -> Result<L, LifecycleError> {
    from.transition(to, why)
}

macro_rules! text_forms {
    ($ty:ident { $($variant:ident => $text:literal),+ $(,)? }) => {
        impl $ty {
            pub fn as_str(self) -> &'static str {
                match self { $($ty::$variant => $text),+ }
            }
        }
        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
        impl FromStr for $ty {
            type Err = LifecycleError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                <$ty as Lifecycle>::parse(s)
            }
        }
    };
}

// ---------------------------------------------------------------------------------------------------
// Signing keys (K2, Fig 5-2)

/// The state of a signing key (the verification key and address follow it; they are public).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyState {
    /// 署名鍵生成段階: just generated, not yet protected.
    Generated,
    /// 署名鍵非活性化(待機)段階: wrapped by the KEK, connected to the signer, waiting to be activated.
    DeactivatedStandby,
    /// 署名鍵活性化段階: unwrapped in the signer; the only state that signs.
    Active,
    /// 署名鍵利用停止段階, routine: stopped by policy (signature count, business hours).
    SuspendedRoutine,
    /// 署名鍵利用停止段階, emergency: stopped on suspected compromise, failure or disaster.
    SuspendedEmergency,
    /// 署名鍵非活性化(保管)段階: separated from the system, kept on offline media.
    DeactivatedStorage,
    /// 署名鍵破棄段階: destroyed beyond recovery. Terminal.
    Destroyed,
}

text_forms!(KeyState {
    Generated => "generated",
    DeactivatedStandby => "deactivated_standby",
    Active => "active",
    SuspendedRoutine => "suspended_routine",
    SuspendedEmergency => "suspended_emergency",
    DeactivatedStorage => "deactivated_storage",
    Destroyed => "destroyed",
});

/// Fig 5-2 (seed 000 §5.4.2.1), as the text describes it:
/// - generated → deactivated (standby): protected, e.g. wrapped by the KEK ("非活性化と呼び…");
/// - generated → deactivated (storage): generate, keep only the address online, store the key offline
///   ("署名鍵を生成したのち、検証鍵やアドレスのみをオンライン上に置き…非活性化（保管）", §7.3.6.2);
/// - standby → active: activation by unwrapping with the KEK; active → standby after use;
/// - active → suspended (routine: after the configured number of signatures; emergency: suspected
///   intrusion, failure, disaster);
/// - suspended → standby or storage until needed again, or → destroyed if it will not be used again
///   ("利用停止後は…「非活性化（待機）段階」や「非活性化（保管）段階」に移行する…再度利用しない場合には
///   「署名鍵破棄段階」");
/// - storage → standby when it is needed ("署名鍵を利用するまで…保管"), storage → destroyed (K2).
const KEY_TRANSITIONS: &[(KeyState, KeyState)] = {
    use KeyState::*;
    &[
        (Generated, DeactivatedStandby),
        (Generated, DeactivatedStorage),
        (DeactivatedStandby, Active),
        (Active, DeactivatedStandby),
        (Active, SuspendedRoutine),
        (Active, SuspendedEmergency),
        (SuspendedRoutine, DeactivatedStandby),
        (SuspendedRoutine, DeactivatedStorage),
        (SuspendedRoutine, Destroyed),
        (SuspendedEmergency, DeactivatedStandby),
        (SuspendedEmergency, DeactivatedStorage),
        (SuspendedEmergency, Destroyed),
        (DeactivatedStorage, DeactivatedStandby),
        (DeactivatedStorage, Destroyed),
    ]
};

impl Lifecycle for KeyState {
    const KIND: &'static str = "signing key";
    const FIGURE: &'static str = "Fig 5-2";
    const ALL: &'static [KeyState] = &[
        KeyState::Generated,
        KeyState::DeactivatedStandby,
        KeyState::Active,
        KeyState::SuspendedRoutine,
        KeyState::SuspendedEmergency,
        KeyState::DeactivatedStorage,
        KeyState::Destroyed,
    ];
    fn as_str(self) -> &'static str {
        KeyState::as_str(self)
    }
    fn allowed(self, to: KeyState) -> bool {
        KEY_TRANSITIONS.contains(&(self, to))
    }
}

impl KeyState {
    /// Only an active key signs (K3: activation needs the secret input, the KEK).
    pub fn may_sign(self) -> bool {
        self == KeyState::Active
    }
}

// ---------------------------------------------------------------------------------------------------
// KEKs (K4, Fig 5-3)

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KekState {
    /// KEK生成段階.
    Generated,
    /// KEK利用段階: wraps and unwraps keys.
    Active,
    /// KEK保管段階: kept on media in a controlled facility between uses.
    Stored,
    /// KEK利用停止段階 by routine or emergency.
    Suspended,
    /// Being replaced by a rotation: still unwraps (to re-wrap under the new KEK), wraps nothing new.
    /// The figure's "use → destroy after re-encryption under the new KEK" made durable and resumable.
    Retiring,
    /// KEK破棄段階. Terminal.
    Destroyed,
}

text_forms!(KekState {
    Generated => "generated",
    Active => "active",
    Stored => "stored",
    Suspended => "suspended",
    Retiring => "retiring",
    Destroyed => "destroyed",
});

/// Fig 5-3 (seed 000 §5.4.2.2): generated → in use; in use ⇄ stored (media kept safe after use);
/// in use or stored → suspended (routine or emergency, "署名鍵のライフサイクルと同様に"), and back;
/// rotation: the old KEK stops wrapping (retiring) while keys are decrypted with it and re-encrypted
/// with the new one, and is destroyed only once that is complete ("新しいKEKによる再暗号化が完了すれば、
/// 古いKEKは破棄することができる"). A suspended KEK can be rotated away from (the emergency case).
const KEK_TRANSITIONS: &[(KekState, KekState)] = {
    use KekState::*;
    &[
        (Generated, Active),
        (Active, Stored),
        (Stored, Active),
        (Active, Suspended),
        (Stored, Suspended),
        (Suspended, Active),
        (Suspended, Stored),
        (Active, Retiring),
        (Suspended, Retiring),
        (Retiring, Destroyed),
    ]
};

impl Lifecycle for KekState {
    const KIND: &'static str = "KEK";
    const FIGURE: &'static str = "Fig 5-3";
    const ALL: &'static [KekState] = &[
        KekState::Generated,
        KekState::Active,
        KekState::Stored,
        KekState::Suspended,
        KekState::Retiring,
        KekState::Destroyed,
    ];
    fn as_str(self) -> &'static str {
        KekState::as_str(self)
    }
    fn allowed(self, to: KekState) -> bool {
        KEK_TRANSITIONS.contains(&(self, to))
    }
}

// ---------------------------------------------------------------------------------------------------
// Master seed (K5, Fig 5-4)

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SeedState {
    /// マスターシード生成段階.
    Generated,
    /// マスターシード使用段階: used to derive key pairs. Stored as "active", the state `kinko init`
    /// gives it.
    Active,
    /// マスターシード保管状態: on media under strict control, not used.
    Stored,
    /// マスターシード破棄段階. Terminal.
    Destroyed,
}

text_forms!(SeedState {
    Generated => "generated",
    Active => "active",
    Stored => "stored",
    Destroyed => "destroyed",
});

/// Fig 5-4 (seed 000 §5.4.2.3): generated → used to derive key pairs → stored once no longer used →
/// destroyed when no longer needed. Stored → in use again when new key pairs must be derived (a new
/// hot wallet); destruction only from storage, because the text makes it the last, deliberate step.
const SEED_TRANSITIONS: &[(SeedState, SeedState)] = {
    use SeedState::*;
    &[(Generated, Active), (Active, Stored), (Stored, Active), (Stored, Destroyed)]
};

impl Lifecycle for SeedState {
    const KIND: &'static str = "master seed";
    const FIGURE: &'static str = "Fig 5-4";
    const ALL: &'static [SeedState] =
        &[SeedState::Generated, SeedState::Active, SeedState::Stored, SeedState::Destroyed];
    fn as_str(self) -> &'static str {
        SeedState::as_str(self)
    }
    fn allowed(self, to: SeedState) -> bool {
        SEED_TRANSITIONS.contains(&(self, to))
    }
}

// ---------------------------------------------------------------------------------------------------
// Routine suspension (K3)

/// The hours (UTC) and weekdays in which a hot key may stay active. `start_hour_utc..end_hour_utc` is
/// half-open; `start > end` wraps past midnight. Weekdays are a bit set, bit 0 = Monday.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BusinessHours {
    pub start_hour_utc: u8,
    pub end_hour_utc: u8,
    pub weekdays_mask: u8,
}

impl BusinessHours {
    /// Monday to Friday.
    pub const WEEKDAYS: u8 = 0b001_1111;

    pub fn new(start_hour_utc: u8, end_hour_utc: u8, weekdays_mask: u8) -> Result<BusinessHours, LifecycleError> {
        if start_hour_utc > 23 || end_hour_utc > 24 {
            return Err(LifecycleError::BusinessHours("hours must be 0..=23 (start) and 0..=24 (end)"));
        }
        if start_hour_utc == end_hour_utc {
            return Err(LifecycleError::BusinessHours("start and end hour are equal: an empty window"));
        }
        if weekdays_mask & 0x7f == 0 || weekdays_mask & 0x80 != 0 {
            return Err(LifecycleError::BusinessHours("weekdays must name at least one of the 7 days"));
        }
        Ok(BusinessHours { start_hour_utc, end_hour_utc, weekdays_mask })
    }

    /// Whether `now_ms` (Unix ms, UTC) falls inside the window. For a window past midnight the weekday
    /// is the one the window started on.
    pub fn contains(&self, now_ms: i64) -> bool {
        let day = now_ms.div_euclid(DAY_MS);
        let hour = (now_ms.rem_euclid(DAY_MS) / HOUR_MS) as u8;
        // 1970-01-01 was a Thursday: index 3 with Monday = 0.
        let weekday = |d: i64| (d + 3).rem_euclid(7) as u8;
        let day_on = |d: i64| self.weekdays_mask & (1 << weekday(d)) != 0;
        let (s, e) = (self.start_hour_utc, self.end_hour_utc);
        if s < e {
            day_on(day) && hour >= s && hour < e
        } else {
            (hour >= s && day_on(day)) || (hour < e && day_on(day - 1))
        }
    }
}

/// Why a key is routinely suspended (K3); the text goes into the transition record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SuspensionReason {
    SignatureLimit { signatures: u64, max: u64 },
    OutsideBusinessHours { now_ms: i64 },
}

impl fmt::Display for SuspensionReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SuspensionReason::SignatureLimit { signatures, max } => {
                write!(f, "routine suspension: {signatures} signatures since activation reached the limit of {max}")
            }
            SuspensionReason::OutsideBusinessHours { now_ms } => {
                write!(f, "routine suspension: outside the configured business hours (at {now_ms} ms UTC)")
            }
        }
    }
}

/// The routine-suspension policy (K3, Fig 5-2 "通常運用上の利用停止": stop the key after a set number of
/// signatures; and keep the active period short). `None` means the key may keep signing. A limit of
/// `None` or no business hours disables that half of the policy.
pub fn routine_suspension_due(
    signatures_since_activation: u64,
    signatures_max: Option<u64>,
    now_ms: i64,
    business_hours: Option<&BusinessHours>,
) -> Option<SuspensionReason> {
    if let Some(max) = signatures_max
        && signatures_since_activation >= max
    {
        return Some(SuspensionReason::SignatureLimit { signatures: signatures_since_activation, max });
    }
    if let Some(hours) = business_hours
        && !hours.contains(now_ms)
    {
        return Some(SuspensionReason::OutsideBusinessHours { now_ms });
    }
    None
}

/// Consulted by a signer before every signature (K2, K3): `Ok` only for an active key within policy.
/// Implemented over the store (kinko-store), declared here so the signer does not depend on how.
pub trait KeyGate: Send + Sync {
    fn may_sign<'a>(
        &'a self,
        key_id: &'a str,
        now_ms: i64,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), String>> + Send + 'a>>;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn why() -> Attribution {
        Attribution::new("op-alice", "test").unwrap()
    }

    /// Every ordered pair of states: the listed transitions succeed, all others are refused.
    fn every_pair<L: Lifecycle>(allowed: &[(L, L)]) {
        let mut seen = 0;
        for &from in L::ALL {
            for &to in L::ALL {
                let r = transition(from, to, &why());
                if allowed.contains(&(from, to)) {
                    assert_eq!(r, Ok(to), "{} {from:?} -> {to:?} must be allowed", L::KIND);
                    seen += 1;
                } else {
                    assert!(
                        matches!(r, Err(LifecycleError::NotAllowed { .. })),
                        "{} {from:?} -> {to:?} must be refused",
                        L::KIND
                    );
                }
            }
        }
        assert_eq!(seen, allowed.len());
        for &s in L::ALL {
            assert_eq!(L::parse(s.as_str()), Ok(s));
        }
    }

    #[test]
    fn k2_signing_key_every_pair_of_states() {
        use KeyState::*;
        every_pair(&[
            (Generated, DeactivatedStandby),
            (Generated, DeactivatedStorage),
            (DeactivatedStandby, Active),
            (Active, DeactivatedStandby),
            (Active, SuspendedRoutine),
            (Active, SuspendedEmergency),
            (SuspendedRoutine, DeactivatedStandby),
            (SuspendedRoutine, DeactivatedStorage),
            (SuspendedRoutine, Destroyed),
            (SuspendedEmergency, DeactivatedStandby),
            (SuspendedEmergency, DeactivatedStorage),
            (SuspendedEmergency, Destroyed),
            (DeactivatedStorage, DeactivatedStandby),
            (DeactivatedStorage, Destroyed),
        ]);
        assert!(Destroyed.is_terminal());
        assert!(Active.may_sign());
        assert!(KeyState::ALL.iter().filter(|s| s.may_sign()).count() == 1);
    }

    #[test]
    fn k4_kek_every_pair_of_states() {
        use KekState::*;
        every_pair(&[
            (Generated, Active),
            (Active, Stored),
            (Stored, Active),
            (Active, Suspended),
            (Stored, Suspended),
            (Suspended, Active),
            (Suspended, Stored),
            (Active, Retiring),
            (Suspended, Retiring),
            (Retiring, Destroyed),
        ]);
        assert!(Destroyed.is_terminal());
    }

    #[test]
    fn k5_master_seed_every_pair_of_states() {
        use SeedState::*;
        every_pair(&[(Generated, Active), (Active, Stored), (Stored, Active), (Stored, Destroyed)]);
        assert!(Destroyed.is_terminal());
    }

    #[test]
    fn k2_transition_needs_actor_and_reason() {
        assert_eq!(Attribution::new(" ", "r"), Err(LifecycleError::Empty { field: "actor" }));
        assert_eq!(Attribution::new("a", ""), Err(LifecycleError::Empty { field: "reason" }));
        let long = "x".repeat(TRANSITION_TEXT_LEN_MAX + 1);
        assert_eq!(Attribution::new("a", long), Err(LifecycleError::TooLong { field: "reason" }));
        let bad = Attribution { actor: String::new(), reason: "r".into() };
        assert!(matches!(
            transition(KeyState::DeactivatedStandby, KeyState::Active, &bad),
            Err(LifecycleError::Empty { .. })
        ));
        let e = KeyState::parse("bogus").unwrap_err().to_string();
        assert!(e.contains("deactivated_standby"), "{e}");
    }

    // 2024-01-01 was a Monday.
    const MON_2024_01_01_MS: i64 = 1_704_067_200_000;

    #[test]
    fn k3_business_hours_window() {
        let h = BusinessHours::new(9, 17, BusinessHours::WEEKDAYS).unwrap();
        assert!(!h.contains(MON_2024_01_01_MS + 8 * HOUR_MS + 59 * 60_000));
        assert!(h.contains(MON_2024_01_01_MS + 9 * HOUR_MS));
        assert!(h.contains(MON_2024_01_01_MS + 16 * HOUR_MS + 59 * 60_000));
        assert!(!h.contains(MON_2024_01_01_MS + 17 * HOUR_MS));
        // Friday yes, Saturday and Sunday no.
        assert!(h.contains(MON_2024_01_01_MS + 4 * DAY_MS + 10 * HOUR_MS));
        assert!(!h.contains(MON_2024_01_01_MS + 5 * DAY_MS + 10 * HOUR_MS));
        assert!(!h.contains(MON_2024_01_01_MS + 6 * DAY_MS + 10 * HOUR_MS));
        // A night shift 22:00-06:00 starting Mondays only: Monday 23:00 and Tuesday 05:00 are in.
        let night = BusinessHours::new(22, 6, 0b1).unwrap();
        assert!(night.contains(MON_2024_01_01_MS + 23 * HOUR_MS));
        assert!(night.contains(MON_2024_01_01_MS + DAY_MS + 5 * HOUR_MS));
        assert!(!night.contains(MON_2024_01_01_MS + DAY_MS + 23 * HOUR_MS));
        assert!(!night.contains(MON_2024_01_01_MS + 5 * HOUR_MS));
        assert!(BusinessHours::new(9, 9, 1).is_err());
        assert!(BusinessHours::new(24, 9, 1).is_err());
        assert!(BusinessHours::new(9, 17, 0).is_err());
        assert!(BusinessHours::new(9, 17, 0x80 | 1).is_err());
        // Before the epoch does not panic.
        let _ = h.contains(-1);
        let _ = h.contains(i64::MIN);
    }

    #[test]
    fn k3_routine_suspension_policy() {
        let h = BusinessHours::new(9, 17, BusinessHours::WEEKDAYS).unwrap();
        let inside = MON_2024_01_01_MS + 10 * HOUR_MS;
        let outside = MON_2024_01_01_MS + 20 * HOUR_MS;
        assert_eq!(routine_suspension_due(0, Some(100), inside, Some(&h)), None);
        assert_eq!(routine_suspension_due(99, Some(100), inside, Some(&h)), None);
        assert_eq!(
            routine_suspension_due(100, Some(100), inside, Some(&h)),
            Some(SuspensionReason::SignatureLimit { signatures: 100, max: 100 })
        );
        assert_eq!(
            routine_suspension_due(5, Some(100), outside, Some(&h)),
            Some(SuspensionReason::OutsideBusinessHours { now_ms: outside })
        );
        assert_eq!(routine_suspension_due(u64::MAX, None, outside, None), None);
        assert!(routine_suspension_due(100, Some(100), inside, None).unwrap().to_string().contains("limit of 100"));
    }
}
