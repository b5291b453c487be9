//! [`Script`]: how one simulated process behaves from the moment it spawns
//! (when it is ready, healthy, unhealthy, when it exits, how often it
//! logs), and the [`ScriptBook`] that says which script each app runs.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use p2p_core::sync::lock;
use p2p_core::{HealthOutcome, HealthProbe};

/// Startup delay of the scripts built by [`Script`]'s constructors.
pub const DEFAULT_STARTUP: Duration = Duration::from_secs(1);

// A zero interval or log period would make a supervisor spin without letting
// virtual time advance.
pub(super) const MIN_PERIOD: Duration = Duration::from_millis(1);

/// Scripted behaviour of a simulated process, measured from the moment an
/// instance spawns.
///
/// Build one with a constructor and refine it with the `with_*` methods:
///
/// ```
/// use std::time::Duration;
/// use p2p_sim::process::Script;
///
/// // Healthy for a minute, then crashes with code 3, logging every 10 s.
/// let script = Script::exits_after(3, Duration::from_secs(60))
///     .with_logs_every(Duration::from_secs(10));
/// # let _ = script;
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Script {
    pub(super) startup: Duration,
    healthy_after: Option<Duration>,
    unhealthy_after: Option<Duration>,
    pub(super) exit: Option<(Duration, i32)>,
    pub(super) log_every: Option<Duration>,
    pub(super) ignores_term: bool,
}

impl Default for Script {
    /// [`Script::healthy`].
    fn default() -> Self {
        Script::healthy()
    }
}

impl Script {
    /// Starts after [`DEFAULT_STARTUP`], then passes every health probe and
    /// runs until stopped.
    #[must_use]
    pub fn healthy() -> Self {
        Script {
            startup: DEFAULT_STARTUP,
            healthy_after: Some(Duration::ZERO),
            unhealthy_after: None,
            exit: None,
            log_every: None,
            ignores_term: false,
        }
    }

    /// Like [`Script::healthy`] until `after` has passed since spawn, then
    /// exits with `code` (a crash when `code` is not 0).
    #[must_use]
    pub fn exits_after(code: i32, after: Duration) -> Self {
        Script::healthy().with_exit(code, after)
    }

    /// Exits with `code` the moment it spawns, before it is ever started or
    /// healthy: a missing library, a bad config.
    #[must_use]
    pub fn fails_to_start(code: i32) -> Self {
        Script::healthy().with_exit(code, Duration::ZERO)
    }

    /// Like [`Script::healthy`] until `after` has passed since spawn, then
    /// keeps running while every probe except a process probe fails.
    #[must_use]
    pub fn unhealthy_after(after: Duration) -> Self {
        Script {
            unhealthy_after: Some(after),
            ..Script::healthy()
        }
    }

    /// Starts and runs, but every probe except a process probe fails.
    #[must_use]
    pub fn never_healthy() -> Self {
        Script {
            healthy_after: None,
            ..Script::healthy()
        }
    }

    /// Starts and runs, but probes fail until `healthy_after` has passed
    /// since spawn; from then on they pass.
    #[must_use]
    pub fn slow_start(healthy_after: Duration) -> Self {
        Script {
            healthy_after: Some(healthy_after),
            ..Script::healthy()
        }
    }

    /// Replaces the startup delay: the time from spawn to "started" (the
    /// `ready` log line, and the earliest moment a probe can pass).
    #[must_use]
    pub fn with_startup(mut self, startup: Duration) -> Self {
        self.startup = startup;
        self
    }

    /// Adds (or replaces) an exit with `code` once `after` has passed since
    /// spawn.
    #[must_use]
    pub fn with_exit(mut self, code: i32, after: Duration) -> Self {
        self.exit = Some((after, code));
        self
    }

    /// Ignores the graceful signal: a stop (or restart) waits the app's
    /// `stop_grace`, in virtual time, and then kills it (exit
    /// `Signal(9)`), as a real process that traps `SIGTERM` would be.
    #[must_use]
    pub fn ignoring_term(mut self) -> Self {
        self.ignores_term = true;
        self
    }

    /// Writes a stdout heartbeat line every `period` while running.
    #[must_use]
    pub fn with_logs_every(mut self, period: Duration) -> Self {
        self.log_every = Some(period.max(MIN_PERIOD));
        self
    }

    /// True while the process exists, `since_start` after it spawned.
    pub fn is_alive_at(&self, since_start: Duration) -> bool {
        self.exit.is_none_or(|(at, _)| since_start < at)
    }

    /// True once the process has started and until it exits.
    pub fn is_ready_at(&self, since_start: Duration) -> bool {
        self.is_alive_at(since_start) && since_start >= self.startup
    }

    /// What `probe` finds `since_start` after the process spawned. A
    /// process probe passes while the process is alive; every other probe
    /// passes while the script says the app is healthy.
    pub fn probe_at(&self, probe: &HealthProbe, since_start: Duration) -> HealthOutcome {
        if !self.is_alive_at(since_start) {
            return HealthOutcome::Unhealthy("process has exited".to_string());
        }
        if matches!(probe, HealthProbe::Process) {
            return HealthOutcome::Healthy;
        }
        let ready = self.is_ready_at(since_start);
        let healthy = ready
            && self.healthy_after.is_some_and(|h| since_start >= h)
            && self.unhealthy_after.is_none_or(|u| since_start < u);
        if healthy {
            HealthOutcome::Healthy
        } else {
            HealthOutcome::Unhealthy(failure_message(probe, ready))
        }
    }
}

fn failure_message(probe: &HealthProbe, ready: bool) -> String {
    match probe {
        HealthProbe::Process => "process has exited".to_string(),
        HealthProbe::Tcp { addr } if !ready => format!("tcp {addr}: connection refused"),
        HealthProbe::Tcp { addr } => format!("tcp {addr}: connection reset"),
        HealthProbe::Http { url } if !ready => format!("http {url}: connection refused"),
        HealthProbe::Http { url } => format!("http {url}: status 503"),
        HealthProbe::Exec { command, .. } => format!("{command} exited with code 1"),
    }
}

/// Which [`Script`] each app runs: a shared, cloneable registry keyed by
/// `(name, version)`, with a per-name fallback and a global default
/// ([`Script::healthy`] unless set).
///
/// Clones share one book, so a test can change a script after handing the
/// book to many runtimes.
#[derive(Debug, Clone, Default)]
pub struct ScriptBook {
    entries: Arc<Mutex<BookEntries>>,
}

#[derive(Debug, Default)]
struct BookEntries {
    by_version: BTreeMap<(String, String), Script>,
    by_name: BTreeMap<String, Script>,
    default: Script,
}

impl ScriptBook {
    /// An empty book: every app runs [`Script::healthy`].
    pub fn new() -> Self {
        ScriptBook::default()
    }

    /// Sets the script of `name` at `version`.
    pub fn set(&self, name: impl Into<String>, version: impl Into<String>, script: Script) {
        lock(&self.entries)
            .by_version
            .insert((name.into(), version.into()), script);
    }

    /// Sets the script of every version of `name` that has no script of its
    /// own.
    pub fn set_for_name(&self, name: impl Into<String>, script: Script) {
        lock(&self.entries).by_name.insert(name.into(), script);
    }

    /// Sets the script of every app that has no more specific one.
    pub fn set_default(&self, script: Script) {
        lock(&self.entries).default = script;
    }

    /// The script `name` at `version` runs: its own, else its name's, else
    /// the default.
    pub fn script_for(&self, name: &str, version: &str) -> Script {
        let entries = lock(&self.entries);
        entries
            .by_version
            .get(&(name.to_string(), version.to_string()))
            .or_else(|| entries.by_name.get(name))
            .unwrap_or(&entries.default)
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn http() -> HealthProbe {
        HealthProbe::Http {
            url: "http://127.0.0.1:8080/health".to_string(),
        }
    }

    #[test]
    fn scripts_pass_probes_only_between_ready_and_unhealthy() {
        let s = Script::unhealthy_after(Duration::from_secs(10));
        assert!(!s.probe_at(&http(), Duration::from_millis(999)).is_healthy());
        assert!(s.probe_at(&http(), Duration::from_secs(1)).is_healthy());
        assert!(
            s.probe_at(&http(), Duration::from_millis(9_999))
                .is_healthy()
        );
        assert!(!s.probe_at(&http(), Duration::from_secs(10)).is_healthy());
        // The process is still there, so a process probe passes.
        assert!(
            s.probe_at(&HealthProbe::Process, Duration::from_secs(60))
                .is_healthy()
        );
    }

    #[test]
    fn an_exited_script_fails_every_probe() {
        let s = Script::exits_after(3, Duration::from_secs(5));
        assert!(s.is_alive_at(Duration::from_millis(4_999)));
        assert!(!s.is_alive_at(Duration::from_secs(5)));
        assert!(
            !s.probe_at(&HealthProbe::Process, Duration::from_secs(5))
                .is_healthy()
        );
        assert!(!Script::fails_to_start(1).is_alive_at(Duration::ZERO));
    }

    #[test]
    fn book_prefers_version_then_name_then_default() {
        let book = ScriptBook::new();
        let never = Script::never_healthy();
        let slow = Script::slow_start(Duration::from_secs(30));
        book.set_for_name("web", never.clone());
        book.set("web", "2.0.0", slow.clone());
        assert_eq!(book.script_for("web", "2.0.0"), slow);
        assert_eq!(book.script_for("web", "1.0.0"), never);
        assert_eq!(book.script_for("db", "1.0.0"), Script::healthy());
        book.clone().set_default(never.clone());
        assert_eq!(book.script_for("db", "1.0.0"), never);
    }
}
