//! Fault injection: make the token endpoint fail on purpose to test an app's resilience.
//!
//! One [`Fault`] is active at a time: an [`FaultAction`] (503, 429 with `Retry-After`, a given
//! AADSTS error, or a delay before the normal answer) applied to the next `times` token requests,
//! or to a `share` of them, or to all until cleared. Only `POST .../oauth2/v2.0/token` is affected;
//! discovery keeps working, as it does in a real Entra outage of the token service.
//! Set from flags (`--fault 503 --fault-times 2`), the library ([`super::MockAad::inject_fault`]) or
//! the loopback admin endpoint (`POST /_mock/faults`).

use std::str::FromStr;
use std::sync::Mutex;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// What an injected fault does to a token request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FaultAction {
    /// 503 `temporarily_unavailable` (AADSTS90033).
    Unavailable,
    /// 429 with `Retry-After: retry_after_secs` (AADSTS90055).
    Throttle { retry_after_secs: u64 },
    /// The given AADSTS error, with the status and `error` Entra uses for it.
    Aadsts(u32),
    /// Wait this long, then answer normally.
    Delay(Duration),
}

impl FromStr for FaultAction {
    type Err = String;

    /// `503` | `429` | `429:SECS` | `aadsts:CODE` | `delay:DURATION` (`500ms`, `2s`: the unit is
    /// required, since a bare number here once meant milliseconds; see [`crate::duration`]).
    fn from_str(spec: &str) -> Result<Self, String> {
        let spec = spec.trim();
        let (kind, arg) = match spec.split_once(':') {
            Some((k, a)) => (k, Some(a)),
            None => (spec, None),
        };
        let bad =
            || format!("bad fault '{spec}': use 503, 429[:SECS], aadsts:CODE or delay:DURATION");
        match (kind.to_ascii_lowercase().as_str(), arg) {
            ("503", None) => Ok(FaultAction::Unavailable),
            ("429", None) => Ok(FaultAction::Throttle {
                retry_after_secs: 5,
            }),
            ("429", Some(secs)) => secs
                .parse()
                .map(|s| FaultAction::Throttle {
                    retry_after_secs: s,
                })
                .map_err(|_| bad()),
            ("aadsts", Some(code)) => code
                .trim_start_matches("AADSTS")
                .parse()
                .map(FaultAction::Aadsts)
                .map_err(|_| bad()),
            ("delay", Some(d)) => crate::duration::parse_with_unit(d)
                .map(FaultAction::Delay)
                .map_err(|e| format!("bad fault '{spec}': {e}")),
            _ => Err(bad()),
        }
    }
}

impl std::fmt::Display for FaultAction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FaultAction::Unavailable => write!(f, "503"),
            FaultAction::Throttle { retry_after_secs } => write!(f, "429:{retry_after_secs}"),
            FaultAction::Aadsts(code) => write!(f, "aadsts:{code}"),
            FaultAction::Delay(d) => write!(f, "delay:{}ms", d.as_millis()),
        }
    }
}

/// A fault and how often it applies. With neither `times` nor `share` it applies to every request.
#[derive(Clone, Debug, PartialEq)]
pub struct Fault {
    /// What to do.
    pub action: FaultAction,
    /// Apply to the next this-many requests, then stop.
    pub times: Option<u64>,
    /// Apply to this share (0.0-1.0) of requests, chosen at random.
    pub share: Option<f64>,
}

impl Fault {
    /// A fault for the next `times` requests.
    pub fn times(action: FaultAction, times: u64) -> Self {
        Fault {
            action,
            times: Some(times),
            share: None,
        }
    }

    /// A fault for every request until cleared.
    pub fn always(action: FaultAction) -> Self {
        Fault {
            action,
            times: None,
            share: None,
        }
    }
}

/// The admin endpoint's JSON form of a [`Fault`]: `{"action":"429:5","times":2}`.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct FaultJson {
    pub action: String,
    #[serde(default)]
    pub times: Option<u64>,
    #[serde(default)]
    pub share: Option<f64>,
}

impl TryFrom<FaultJson> for Fault {
    type Error = String;
    fn try_from(json: FaultJson) -> Result<Self, String> {
        if let Some(share) = json.share
            && !(0.0..=1.0).contains(&share)
        {
            return Err(format!("share must be between 0 and 1, got {share}"));
        }
        Ok(Fault {
            action: json.action.parse()?,
            times: json.times,
            share: json.share,
        })
    }
}

/// The active fault, shared by all connections.
#[derive(Default)]
pub(crate) struct FaultState {
    active: Mutex<Option<Fault>>,
}

impl FaultState {
    pub(crate) fn set(&self, fault: Option<Fault>) {
        if let Ok(mut active) = self.active.lock() {
            *active = fault.filter(|f| f.times != Some(0));
        }
    }

    /// Decides for one request whether the fault applies, and uses up one of its `times`.
    pub(crate) fn take(&self) -> Option<FaultAction> {
        let mut active = self.active.lock().ok()?;
        let fault = active.as_mut()?;
        if let Some(share) = fault.share
            && rand::random::<f64>() >= share
        {
            return None;
        }
        let action = fault.action.clone();
        if let Some(times) = fault.times.as_mut() {
            *times = times.saturating_sub(1);
            if *times == 0 {
                *active = None;
            }
        }
        Some(action)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_fault_spec() {
        assert_eq!("503".parse(), Ok(FaultAction::Unavailable));
        assert_eq!(
            "429:7".parse(),
            Ok(FaultAction::Throttle {
                retry_after_secs: 7
            })
        );
        assert_eq!("aadsts:70021".parse(), Ok(FaultAction::Aadsts(70021)));
        assert_eq!(
            "aadsts:AADSTS700024".parse(),
            Ok(FaultAction::Aadsts(700024))
        );
        assert_eq!(
            "delay:2s".parse(),
            Ok(FaultAction::Delay(Duration::from_secs(2)))
        );
        assert_eq!(
            "delay:250ms".parse(),
            Ok(FaultAction::Delay(Duration::from_millis(250)))
        );
        assert!(
            "delay:250"
                .parse::<FaultAction>()
                .expect_err("a bare number is refused")
                .contains("no unit")
        );
        assert!("404".parse::<FaultAction>().is_err());
        assert!("delay:soon".parse::<FaultAction>().is_err());
    }

    #[test]
    fn times_runs_out() {
        let state = FaultState::default();
        state.set(Some(Fault::times(FaultAction::Unavailable, 2)));
        assert!(state.take().is_some());
        assert!(state.take().is_some());
        assert!(state.take().is_none());
    }
}
