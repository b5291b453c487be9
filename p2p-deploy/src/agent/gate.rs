//! The health gate: whether a version just started has proven itself.
//!
//! [`HealthGate`] is pure: fed the runtime's [`AppStatus`] samples and the
//! time, it answers [`GateStep::Pass`], [`GateStep::Wait`] or
//! [`GateStep::Fail`] with a [`GateFailure`] that says why. Activation
//! polls the runtime and asks it; tests drive it with made-up samples.
//!
//! A version passes when the manifest's health check has passed `gate`
//! times in a row or, for an app without one, when it has stayed up for
//! [`ActivateOptions::settle`] without a restart. It fails at once when the
//! runtime restarts it, reports it failed, stopped or backing off, or runs
//! another version; and when the gate's time limit passes first.

use std::fmt;
use std::time::Duration;

use p2p_core::{AppState, AppStatus, ExitStatus, HealthOutcome};
use tokio::time::Instant;

use crate::manifest::Manifest;
use crate::proto::ActivateOptions;

/// What the gate says about one status sample.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum GateStep {
    /// The version has proven itself: commit it.
    Pass,
    /// Not yet: sample again after this long.
    Wait(Duration),
    /// The version failed: go back.
    Fail(GateFailure),
}

/// Why a version failed its health gate (its [`Display`](fmt::Display)
/// is the reason recorded in the app's history).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum GateFailure {
    /// The runtime could not start the version.
    NotStarted {
        /// The runtime's error.
        error: String,
    },
    /// The runtime no longer knows the app.
    Lost {
        /// The runtime's error.
        error: String,
    },
    /// The runtime runs a version other than the one being gated.
    WrongVersion {
        /// The version the runtime runs.
        running: String,
        /// The version being gated.
        wanted: String,
    },
    /// The app was restarted during the gate.
    Restarted {
        /// Restarts the runtime counted.
        restarts: u32,
        /// The last failed probe seen during the gate, if any.
        probe: Option<String>,
        /// The last exit, if the runtime reported one.
        exit: Option<ExitStatus>,
        /// The runtime's reason, if any.
        reason: Option<String>,
    },
    /// The app failed, stopped or is backing off.
    Down {
        /// The state the runtime reported.
        state: AppState,
        /// The last exit, if the runtime reported one.
        exit: Option<ExitStatus>,
        /// The runtime's reason, if any.
        reason: Option<String>,
    },
    /// The gate's time limit passed before the app proved itself.
    TimedOut {
        /// The time limit the gate was given.
        limit: Duration,
        /// The app's state at the end.
        state: AppState,
        /// Passing probes in a row at the end.
        streak: u32,
        /// Passing probes in a row the gate wanted (0 without a check).
        gate: u32,
        /// The last probe's outcome, if any.
        last_probe: Option<HealthOutcome>,
    },
}

impl fmt::Display for GateFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let because = |r: &Option<String>| r.as_ref().map(|r| format!(": {r}")).unwrap_or_default();
        match self {
            GateFailure::NotStarted { error } => write!(f, "could not start: {error}"),
            GateFailure::Lost { error } => write!(f, "the runtime lost the app: {error}"),
            GateFailure::WrongVersion { running, wanted } => {
                write!(f, "the runtime runs version {running}, not {wanted}")
            }
            GateFailure::Restarted {
                restarts,
                probe: Some(probe),
                ..
            } => write!(
                f,
                "unhealthy: {probe} (restarted {restarts} time(s) during the health gate)"
            ),
            GateFailure::Restarted {
                restarts,
                probe: None,
                exit,
                reason,
            } => write!(
                f,
                "it exited and was restarted {restarts} time(s) during the health gate{}{}",
                exit.map(|e| format!(" (last exit {e:?})"))
                    .unwrap_or_default(),
                because(reason)
            ),
            GateFailure::Down {
                state,
                exit,
                reason,
            } => write!(
                f,
                "it is {state:?}{}{}",
                exit.map(|e| format!(", exit {e:?}")).unwrap_or_default(),
                because(reason)
            ),
            GateFailure::TimedOut {
                limit,
                state,
                streak,
                gate,
                last_probe,
            } => {
                let health = match last_probe {
                    Some(HealthOutcome::Unhealthy(r)) => format!(", last probe: {r}"),
                    Some(HealthOutcome::Healthy) => ", last probe passed".to_string(),
                    None => String::new(),
                };
                write!(
                    f,
                    "not healthy within {limit:?} (state {state:?}, {streak} of {gate} passing probes in a row{health})"
                )
            }
        }
    }
}

impl std::error::Error for GateFailure {}

/// The health gate of one activation (see the [module docs](self)).
#[derive(Debug, Clone)]
pub struct HealthGate {
    wanted: String,
    /// Passing probes in a row wanted; `None`: no health check, settle.
    gate: Option<u32>,
    settle: Duration,
    limit: Duration,
    poll: Duration,
    deadline: Instant,
    up_since: Option<Instant>,
    /// The runtime forgets a failed probe once it restarts the app: the
    /// latest is kept, to say why.
    failed_probe: Option<String>,
}

impl HealthGate {
    /// The gate of `version` of the app `m` describes, begun at `now`.
    /// Its time limit is `options.gate_timeout`, else derived from the
    /// health check (start period + interval x (gate + retries + 1) +
    /// 30 s) or, without one, `settle` + 30 s; never more than `max`.
    pub fn new(
        version: &semver::Version,
        m: &Manifest,
        options: &ActivateOptions,
        max: Duration,
        now: Instant,
    ) -> Self {
        let limit = options
            .gate_timeout
            .unwrap_or_else(|| match &m.health {
                Some(h) => {
                    h.check
                        .start_period
                        .saturating_add(h.check.interval.saturating_mul(
                            h.gate.saturating_add(h.check.retries).saturating_add(1),
                        ))
                        .saturating_add(Duration::from_secs(30))
                }
                None => options.settle.saturating_add(Duration::from_secs(30)),
            })
            .min(max);
        let poll = match &m.health {
            Some(h) => {
                (h.check.interval / 2).clamp(Duration::from_millis(50), Duration::from_secs(1))
            }
            None => Duration::from_millis(250),
        };
        HealthGate {
            wanted: version.to_string(),
            gate: m.health.as_ref().map(|h| h.gate),
            settle: options.settle,
            limit,
            poll,
            // A limit too far out to add is no limit at all.
            deadline: now
                .checked_add(limit)
                .unwrap_or(now + Duration::from_secs(100 * 365 * 86_400)),
            up_since: None,
            failed_probe: None,
        }
    }

    /// The gate's time limit.
    pub fn limit(&self) -> Duration {
        self.limit
    }

    /// Judges the status `s` sampled at `now`.
    pub fn step(&mut self, s: &AppStatus, now: Instant) -> GateStep {
        if let Some(HealthOutcome::Unhealthy(r)) = &s.health {
            self.failed_probe = Some(r.clone());
        }
        if s.version != self.wanted {
            return GateStep::Fail(GateFailure::WrongVersion {
                running: s.version.clone(),
                wanted: self.wanted.clone(),
            });
        }
        if s.restarts > 0 {
            return GateStep::Fail(GateFailure::Restarted {
                restarts: s.restarts,
                probe: self.failed_probe.clone(),
                exit: s.exit,
                reason: s.reason.clone(),
            });
        }
        if matches!(
            s.state,
            AppState::Failed | AppState::Stopped | AppState::BackingOff
        ) {
            return GateStep::Fail(GateFailure::Down {
                state: s.state,
                exit: s.exit,
                reason: s.reason.clone(),
            });
        }
        match self.gate {
            Some(gate) => {
                if s.healthy_streak >= gate {
                    return GateStep::Pass;
                }
            }
            None => {
                if matches!(s.state, AppState::Running | AppState::Healthy) {
                    let since = *self.up_since.get_or_insert(now);
                    if now - since >= self.settle {
                        return GateStep::Pass;
                    }
                } else {
                    self.up_since = None;
                }
            }
        }
        if now >= self.deadline {
            return GateStep::Fail(GateFailure::TimedOut {
                limit: self.limit,
                state: s.state,
                streak: s.healthy_streak,
                gate: self.gate.unwrap_or(0),
                last_probe: s.health.clone(),
            });
        }
        GateStep::Wait(self.poll.min(self.deadline - now))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(health: &str) -> Manifest {
        Manifest::parse(&format!(
            "name = \"web\"\nversion = \"1.0.0\"\nentrypoint = \"bin/web\"\n{health}"
        ))
        .unwrap()
    }

    fn running(streak: u32) -> AppStatus {
        AppStatus {
            state: AppState::Running,
            healthy_streak: streak,
            ..AppStatus::starting("web", "1.0.0")
        }
    }

    fn v1() -> semver::Version {
        semver::Version::new(1, 0, 0)
    }

    #[test]
    fn a_checked_app_passes_after_gate_probes_in_a_row() {
        let m = manifest("[health]\nprocess = true\ninterval = \"1s\"\ngate = 3\n");
        let t0 = Instant::now();
        let opts = ActivateOptions::default();
        let mut g = HealthGate::new(&v1(), &m, &opts, Duration::from_secs(3600), t0);
        assert_eq!(
            g.step(&running(2), t0),
            GateStep::Wait(Duration::from_millis(500))
        );
        assert_eq!(g.step(&running(3), t0), GateStep::Pass);
    }

    #[test]
    fn an_unchecked_app_passes_once_it_stayed_up_for_settle() {
        let m = manifest("");
        let t0 = Instant::now();
        let opts = ActivateOptions {
            settle: Duration::from_secs(2),
            ..ActivateOptions::default()
        };
        let mut g = HealthGate::new(&v1(), &m, &opts, Duration::from_secs(3600), t0);
        assert!(matches!(g.step(&running(0), t0), GateStep::Wait(_)));
        // Going back to starting resets the clock.
        let starting = AppStatus::starting("web", "1.0.0");
        assert!(matches!(
            g.step(&starting, t0 + Duration::from_secs(1)),
            GateStep::Wait(_)
        ));
        let t1 = t0 + Duration::from_secs(2);
        assert!(matches!(g.step(&running(0), t1), GateStep::Wait(_)));
        assert_eq!(
            g.step(&running(0), t1 + Duration::from_secs(2)),
            GateStep::Pass
        );
    }

    #[test]
    fn a_restart_fails_the_gate_naming_the_last_failed_probe() {
        let m = manifest("[health]\nprocess = true\ngate = 3\n");
        let t0 = Instant::now();
        let mut g = HealthGate::new(&v1(), &m, &ActivateOptions::default(), Duration::MAX, t0);
        let sick = AppStatus {
            health: Some(HealthOutcome::Unhealthy("connection refused".into())),
            ..running(0)
        };
        assert!(matches!(g.step(&sick, t0), GateStep::Wait(_)));
        // The runtime restarted it and forgot the probe; the gate did not.
        let restarted = AppStatus {
            restarts: 1,
            ..running(0)
        };
        let GateStep::Fail(why) = g.step(&restarted, t0) else {
            panic!("a restart must fail the gate");
        };
        assert!(
            matches!(why, GateFailure::Restarted { restarts: 1, probe: Some(ref p), .. } if p == "connection refused")
        );
        assert_eq!(
            why.to_string(),
            "unhealthy: connection refused (restarted 1 time(s) during the health gate)"
        );
    }

    #[test]
    fn another_version_or_a_failed_app_fails_at_once() {
        let m = manifest("");
        let t0 = Instant::now();
        let mut g = HealthGate::new(&v1(), &m, &ActivateOptions::default(), Duration::MAX, t0);
        let other = AppStatus {
            version: "0.9.0".into(),
            ..running(0)
        };
        assert!(matches!(
            g.step(&other, t0),
            GateStep::Fail(GateFailure::WrongVersion { .. })
        ));
        let failed = AppStatus {
            state: AppState::Failed,
            exit: Some(ExitStatus::Code(3)),
            ..running(0)
        };
        let GateStep::Fail(why) = g.step(&failed, t0) else {
            panic!("a failed app must fail the gate");
        };
        assert!(matches!(
            why,
            GateFailure::Down {
                state: AppState::Failed,
                ..
            }
        ));
    }

    #[test]
    fn the_gate_times_out_at_its_limit_and_says_how_far_it_got() {
        let m = manifest("[health]\nprocess = true\ninterval = \"1s\"\ngate = 3\n");
        let t0 = Instant::now();
        let opts = ActivateOptions {
            gate_timeout: Some(Duration::from_secs(10)),
            ..ActivateOptions::default()
        };
        let mut g = HealthGate::new(&v1(), &m, &opts, Duration::from_secs(5), t0);
        assert_eq!(
            g.limit(),
            Duration::from_secs(5),
            "never past the agent's maximum"
        );
        // Near the end, the wait is cut to the deadline.
        let near = t0 + Duration::from_millis(4800);
        assert_eq!(
            g.step(&running(1), near),
            GateStep::Wait(Duration::from_millis(200))
        );
        let GateStep::Fail(why) = g.step(&running(1), t0 + Duration::from_secs(5)) else {
            panic!("the gate must end at its limit");
        };
        assert!(matches!(
            why,
            GateFailure::TimedOut {
                streak: 1,
                gate: 3,
                ..
            }
        ));
        assert!(
            why.to_string().contains("1 of 3 passing probes in a row"),
            "{why}"
        );
    }
}
