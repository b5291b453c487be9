//! Running apps: the [`Runtime`] and [`HealthChecker`] traits and the types
//! they speak ([`AppSpec`], [`AppStatus`], [`HealthCheckSpec`],
//! [`RestartPolicy`], [`LogSelection`]).
//!
//! The agent drives a `Runtime` from desired to actual state; `p2p-runtime`
//! implements it over OS processes and `p2p-sim` over scripted simulated
//! processes, so the same agent code runs on both.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;
use futures::stream::BoxStream;
use serde::{Deserialize, Serialize};

use crate::clock::Timestamp;
use crate::error::Result;

/// Everything needed to start one app instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppSpec {
    /// Instance name, unique within a runtime (`web`).
    pub name: String,
    /// The version being run, for status and logs (`1.4.2`).
    pub version: String,
    /// Working directory; relative entrypoints resolve against it.
    pub workdir: PathBuf,
    /// Program to run.
    pub entrypoint: String,
    /// Arguments passed to the program.
    pub args: Vec<String>,
    /// Environment added to a clean base environment.
    pub env: BTreeMap<String, String>,
    /// Run as this user (a name or a numeric uid) instead of the
    /// supervisor's own; needs the privilege to switch users.
    #[serde(default)]
    pub user: Option<String>,
    /// Health check; `None` means "running is healthy".
    pub health: Option<HealthCheckSpec>,
    /// What to do when the app exits.
    pub restart: RestartPolicy,
    /// Memory and CPU limits to apply (what was applied is in the status).
    pub limits: ResourceLimits,
    /// How long `stop` waits after TERM before KILL.
    pub stop_grace: Duration,
}

impl AppSpec {
    /// A spec with defaults: no health check, restart on failure, no
    /// limits, 10 s stop grace.
    pub fn new(
        name: impl Into<String>,
        version: impl Into<String>,
        entrypoint: impl Into<String>,
    ) -> Self {
        AppSpec {
            name: name.into(),
            version: version.into(),
            workdir: PathBuf::from("."),
            entrypoint: entrypoint.into(),
            args: Vec::new(),
            env: BTreeMap::new(),
            user: None,
            health: None,
            restart: RestartPolicy::default(),
            limits: ResourceLimits::default(),
            stop_grace: Duration::from_secs(10),
        }
    }
}

/// What a health probe does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum HealthProbe {
    /// The process is alive.
    Process,
    /// A TCP connection to `addr` (`127.0.0.1:8080`) succeeds.
    Tcp {
        /// Address to connect to.
        addr: String,
    },
    /// An HTTP GET of `url` answers 2xx.
    Http {
        /// URL to fetch.
        url: String,
    },
    /// `command` with `args` exits 0.
    Exec {
        /// Program.
        command: String,
        /// Arguments passed to the program.
        args: Vec<String>,
    },
}

/// A health check: a probe and its schedule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthCheckSpec {
    /// What is probed: the process, a TCP port, an HTTP URL or a command.
    pub probe: HealthProbe,
    /// Time between probes.
    pub interval: Duration,
    /// A probe running longer than this fails.
    pub timeout: Duration,
    /// Consecutive failures before the app is unhealthy.
    pub retries: u32,
    /// Failures during this time after start do not count.
    pub start_period: Duration,
}

impl HealthCheckSpec {
    /// A check with defaults: every 5 s, 2 s timeout, 3 retries, 0 s start period.
    pub fn new(probe: HealthProbe) -> Self {
        HealthCheckSpec {
            probe,
            interval: Duration::from_secs(5),
            timeout: Duration::from_secs(2),
            retries: 3,
            start_period: Duration::ZERO,
        }
    }
}

/// When an exited app is started again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RestartMode {
    /// Never restart.
    Never,
    /// Restart after a non-zero exit, a signal, or an unhealthy episode.
    OnFailure,
    /// Restart after any exit.
    Always,
}

/// Restart policy: mode, exponential backoff with jitter, crash-loop limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestartPolicy {
    /// When to restart.
    pub mode: RestartMode,
    /// First backoff delay.
    pub initial_backoff: Duration,
    /// Backoff never exceeds this.
    pub max_backoff: Duration,
    /// Running this long without exiting resets the backoff and the count.
    pub stable_after: Duration,
    /// Restarts allowed in a row (without a stable run) before the app is
    /// marked failed. 0 means no limit.
    pub max_restarts: u32,
}

impl Default for RestartPolicy {
    fn default() -> Self {
        RestartPolicy {
            mode: RestartMode::OnFailure,
            initial_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(60),
            stable_after: Duration::from_secs(60),
            max_restarts: 10,
        }
    }
}

/// Tracks restarts of one app under a [`RestartPolicy`]: computes backoff
/// delays and says when a crash loop must end. Shared by every runtime so
/// that real and simulated apps back off identically.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestartTracker {
    policy: RestartPolicy,
    in_a_row: u32,
}

/// What to do after an exit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RestartDecision {
    /// Start again after this delay.
    RestartAfter(Duration),
    /// Do not restart: the policy says so.
    Stop,
    /// Do not restart: the crash-loop limit was reached.
    GiveUp {
        /// Human-readable reason for the status.
        reason: String,
    },
}

impl RestartTracker {
    /// A tracker for `policy`.
    pub fn new(policy: RestartPolicy) -> Self {
        RestartTracker {
            policy,
            in_a_row: 0,
        }
    }

    /// Restarts since the last stable run.
    pub fn in_a_row(&self) -> u32 {
        self.in_a_row
    }

    /// Decides what follows an exit. `failed` is true for a non-zero exit, a
    /// signal or an unhealthy episode; `ran_for` is how long the instance
    /// ran; `jitter` is a number in `[0, 1)` from the caller's RNG.
    pub fn on_exit(&mut self, failed: bool, ran_for: Duration, jitter: f64) -> RestartDecision {
        if ran_for >= self.policy.stable_after {
            self.in_a_row = 0;
        }
        let restart = match self.policy.mode {
            RestartMode::Never => false,
            RestartMode::OnFailure => failed,
            RestartMode::Always => true,
        };
        if !restart {
            return RestartDecision::Stop;
        }
        if self.policy.max_restarts > 0 && self.in_a_row >= self.policy.max_restarts {
            return RestartDecision::GiveUp {
                reason: format!(
                    "crash loop: {} restarts without a stable run of {:?}",
                    self.in_a_row, self.policy.stable_after
                ),
            };
        }
        let base = self
            .policy
            .initial_backoff
            .saturating_mul(1u32 << self.in_a_row.min(20))
            .min(self.policy.max_backoff);
        // Up to +/-20% jitter so that a fleet restarting together spreads out.
        let factor = 0.8 + 0.4 * jitter.clamp(0.0, 1.0);
        let delay = base.mul_f64(factor).min(self.policy.max_backoff);
        self.in_a_row += 1;
        RestartDecision::RestartAfter(delay)
    }
}

/// Resource limits for one app.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourceLimits {
    /// Memory ceiling in bytes.
    pub memory_bytes: Option<u64>,
    /// CPU in thousandths of a core (1500 = one and a half cores).
    pub cpu_millis: Option<u32>,
}

/// Lifecycle state of an app instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AppState {
    /// Started, not yet known to be running (or within its start period).
    Starting,
    /// Running; no health check, or none has passed yet.
    Running,
    /// Running and passing its health check.
    Healthy,
    /// Running and failing its health check.
    Unhealthy,
    /// Exited; waiting to be restarted.
    BackingOff,
    /// Stopped on request, or exited under a policy that does not restart.
    Stopped,
    /// Gave up: crash loop, could not start, or killed for exceeding a limit.
    Failed,
}

impl AppState {
    /// True while a process exists.
    pub fn is_live(self) -> bool {
        matches!(
            self,
            AppState::Starting | AppState::Running | AppState::Healthy | AppState::Unhealthy
        )
    }
}

/// How an instance ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExitStatus {
    /// Exited with a code.
    Code(i32),
    /// Killed by a signal.
    Signal(i32),
}

/// The last health probe result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HealthOutcome {
    /// The probe passed.
    Healthy,
    /// The probe failed, with why.
    Unhealthy(String),
}

impl HealthOutcome {
    /// True for [`HealthOutcome::Healthy`].
    pub fn is_healthy(&self) -> bool {
        matches!(self, HealthOutcome::Healthy)
    }
}

/// Checks an app name as every runtime and package uses it (and as it
/// appears in paths): 1 to 64 letters, digits, `-`, `_` or `.`, not
/// starting with `.`. The error is the reason, for the caller to name the
/// field it came from.
///
/// ```
/// # use p2p_core::runtime::check_app_name;
/// assert!(check_app_name("web-1").is_ok());
/// assert!(check_app_name("../etc").unwrap_err().contains("../etc"));
/// ```
pub fn check_app_name(name: &str) -> std::result::Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{name:?} must be 1 to 64 letters, digits, '-', '_' or '.', not starting with '.'"
        ))
    }
}

/// Observed state of one app instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppStatus {
    /// Instance name.
    pub name: String,
    /// Version running (or last run).
    pub version: String,
    /// Lifecycle state.
    pub state: AppState,
    /// Process id while live.
    pub pid: Option<u32>,
    /// How the last instance ended.
    pub exit: Option<ExitStatus>,
    /// Restarts since the app was started by request.
    pub restarts: u32,
    /// When the current instance started (injected clock).
    pub started_at: Option<Timestamp>,
    /// Last health probe result.
    pub health: Option<HealthOutcome>,
    /// Consecutive passing health probes (the agent's health gate reads it).
    pub healthy_streak: u32,
    /// Why the app is in this state, when it is not obvious (failure
    /// reason, limit exceeded).
    pub reason: Option<String>,
    /// Which mechanism enforced the resource limits (`cgroup v2`,
    /// `cgroup v1`, `rlimit`, `simulated`), if any were set.
    pub limits_applied: Option<String>,
}

impl AppStatus {
    /// The status of an instance that is starting: no process, no exit,
    /// no restarts, no health result yet.
    pub fn starting(name: impl Into<String>, version: impl Into<String>) -> Self {
        AppStatus {
            name: name.into(),
            version: version.into(),
            state: AppState::Starting,
            pid: None,
            exit: None,
            restarts: 0,
            started_at: None,
            health: None,
            healthy_streak: 0,
            reason: None,
            limits_applied: None,
        }
    }
}

/// Which output of an app.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogStream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
    /// Both, interleaved in arrival order.
    Both,
}

/// Which log lines to read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogSelection {
    /// Which output.
    pub stream: LogStream,
    /// Start with the last `tail` lines (all kept lines when `None`).
    pub tail: Option<usize>,
    /// Keep delivering new lines until the app is removed.
    pub follow: bool,
}

/// One line of app output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogLine {
    /// [`LogStream::Stdout`] or [`LogStream::Stderr`].
    pub stream: LogStream,
    /// The line, without its newline.
    pub line: String,
}

/// A stream of log lines; ends when the selection is exhausted (no follow)
/// or the app is removed.
pub type LogLines = BoxStream<'static, Result<LogLine>>;

/// Supervises app instances.
///
/// # Contract
///
/// - [`start`](Runtime::start) launches `spec` under `spec.name` and
///   returns the new instance's status: live, with its pid. Starting a
///   name whose instance is live fails with
///   [`Error::AlreadyExists`](crate::Error::AlreadyExists) and leaves that
///   instance alone; a stopped or failed instance of that name is
///   replaced.
/// - [`stop`](Runtime::stop) ends the instance and everything it spawned
///   (graceful signal, `stop_grace`, then forced) and leaves it
///   [`AppState::Stopped`] without a pid; the restart policy does not
///   apply. It returns once the instance has ended, with `exit` saying
///   how: [`ExitStatus::Signal`]`(15)` for an app the graceful signal
///   ended, which is not held for the rest of its grace period,
///   `Signal(9)` for one forced after `stop_grace`. Stopping a stopped
///   instance is not an error.
/// - [`restart`](Runtime::restart) is stop then start with the same spec.
/// - [`status`](Runtime::status) and [`list`](Runtime::list) reflect health
///   probes, exits, restarts and backoff as they happen. Every call naming
///   an app the runtime does not know fails with
///   [`Error::NotFound`](crate::Error::NotFound).
/// - After an instance exits by itself, `spec.restart` decides through
///   [`RestartTracker`]: [`RestartMode::Never`] leaves the app `Stopped`;
///   [`RestartMode::OnFailure`] restarts it after a non-zero exit, a
///   signal or an unhealthy episode, and leaves it `Stopped` after exit
///   code 0; [`RestartMode::Always`] restarts it after any exit. Before
///   each restart the app is [`AppState::BackingOff`], without a pid, for
///   the tracker's delay (growing from `initial_backoff`); when the
///   tracker gives up, the app is [`AppState::Failed`] and `reason` names
///   the crash loop. `exit` keeps how the last instance ended, and after
///   the n-th restart `restarts` is n.
/// - With a health check, a passing probe makes the app
///   [`AppState::Healthy`], sets `health` and grows `healthy_streak`;
///   `retries` failed probes in a row (past `start_period`) make it
///   [`AppState::Unhealthy`], with the failure in `health`. An unhealthy
///   episode counts as one failed exit: under `OnFailure` and `Always` the
///   instance is ended and restarted once per episode, with a `reason`
///   naming the health check while it backs off; under `Never` it keeps
///   running, `Unhealthy`.
/// - [`remove`](Runtime::remove) stops the instance, forgets it, ends its
///   log followers and frees its resources.
/// - [`logs`](Runtime::logs) delivers the selected lines in the order the
///   app wrote them, each tagged with its stream; `tail: Some(n)` gives
///   the last `n` lines written (of those kept). With `follow`, new lines
///   arrive as they are written until the app is removed, and a tail and
///   the live lines after it neither overlap nor leave a gap. Followers
///   never slow the app down: a follower that falls behind loses lines;
///   one that keeps up gets every line.
///
/// `p2p_core::conformance::runtime` (feature `conformance`) checks these
/// guarantees against an implementation.
#[async_trait]
pub trait Runtime: Send + Sync {
    /// Starts an instance.
    async fn start(&self, spec: AppSpec) -> Result<AppStatus>;
    /// Stops an instance.
    async fn stop(&self, name: &str) -> Result<AppStatus>;
    /// Restarts an instance.
    async fn restart(&self, name: &str) -> Result<AppStatus>;
    /// Status of one instance.
    async fn status(&self, name: &str) -> Result<AppStatus>;
    /// Status of every instance, sorted by name.
    async fn list(&self) -> Result<Vec<AppStatus>>;
    /// Stops and forgets an instance.
    async fn remove(&self, name: &str) -> Result<()>;
    /// Reads or follows an instance's output.
    async fn logs(&self, name: &str, selection: LogSelection) -> Result<LogLines>;
}

/// What a health probe targets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeTarget {
    /// Instance name.
    pub name: String,
    /// Version running.
    pub version: String,
    /// Process id, when live.
    pub pid: Option<u32>,
}

/// Runs one health probe.
///
/// # Contract
///
/// - [`probe`](HealthChecker::probe) returns within `spec.timeout` (a probe
///   still running then counts as [`HealthOutcome::Unhealthy`] with a
///   reason saying it timed out) and never panics on a failing target.
/// - Retries, interval and start period are the runtime's job: one call is
///   one probe.
#[async_trait]
pub trait HealthChecker: Send + Sync {
    /// Probes `target` once.
    async fn probe(&self, target: &ProbeTarget, spec: &HealthCheckSpec) -> HealthOutcome;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_caps_and_gives_up_then_resets_after_a_stable_run() {
        let policy = RestartPolicy {
            mode: RestartMode::OnFailure,
            initial_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(5),
            stable_after: Duration::from_secs(30),
            max_restarts: 4,
        };
        let mut t = RestartTracker::new(policy);
        let delays: Vec<_> = (0..4)
            .map(|_| match t.on_exit(true, Duration::from_secs(1), 0.5) {
                RestartDecision::RestartAfter(d) => d,
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(delays, [1, 2, 4, 5].map(Duration::from_secs));
        assert!(matches!(
            t.on_exit(true, Duration::from_secs(1), 0.5),
            RestartDecision::GiveUp { .. }
        ));
        // A stable run resets the count.
        assert_eq!(
            t.on_exit(true, Duration::from_secs(31), 0.5),
            RestartDecision::RestartAfter(Duration::from_secs(1))
        );
        // Clean exit under on-failure stops.
        assert_eq!(t.on_exit(false, Duration::ZERO, 0.5), RestartDecision::Stop);
    }

    #[test]
    fn jitter_stays_within_twenty_percent() {
        let mut lo = RestartTracker::new(RestartPolicy::default());
        let mut hi = RestartTracker::new(RestartPolicy::default());
        let RestartDecision::RestartAfter(a) = lo.on_exit(true, Duration::ZERO, 0.0) else {
            panic!()
        };
        let RestartDecision::RestartAfter(b) = hi.on_exit(true, Duration::ZERO, 0.999) else {
            panic!()
        };
        assert_eq!(a, Duration::from_millis(400));
        assert!(
            b > Duration::from_millis(590) && b < Duration::from_millis(600),
            "{b:?}"
        );
    }
}
