//! Simulated processes: [`SimRuntime`], a [`Runtime`] whose apps follow
//! [`Script`]s in virtual (tokio) time, and [`SimHealthChecker`], which
//! answers probes from the same scripts.
//!
//! A [`ScriptBook`] says how each `(name, version)` behaves: healthy, exits
//! after a while, turns unhealthy, never becomes healthy, starts slowly. The
//! book is shared by every node's runtime in a simulation and is consulted
//! each time an instance spawns, so changing a script affects the next start
//! or automatic restart, never a running instance.
//!
//! # The simulated process model
//!
//! - Time since an instance spawned drives everything; the runtime keeps no
//!   wall time except `started_at`, which comes from the injected [`Clock`].
//! - An instance is [`AppState::Starting`] until its script's startup delay
//!   has passed (and, with a health check, until its `start_period` is over
//!   or a probe passes), then [`AppState::Running`]. Without a health check
//!   it stays `Running` for as long as it lives; that is its healthy state.
//! - With a health check, one probe runs every `interval` from spawn. A pass
//!   makes the app [`AppState::Healthy`] and grows `healthy_streak`; `retries`
//!   consecutive counted failures make it [`AppState::Unhealthy`]. Failures
//!   inside `start_period` do not count until a probe has passed. Simulated
//!   probes answer at once, so `timeout` never matters.
//! - An unhealthy episode under [`RestartMode::OnFailure`] or
//!   [`RestartMode::Always`] kills the instance (exit `Signal(9)`) and counts
//!   as one failed exit, so it is restarted once per episode; under
//!   [`RestartMode::Never`] the instance keeps running, unhealthy.
//! - Exits go through [`RestartTracker`], exactly as real processes do:
//!   [`AppState::BackingOff`] during the delay, [`AppState::Failed`] with the
//!   tracker's reason when a crash loop is given up, [`AppState::Stopped`]
//!   when the policy does not restart. Jitter comes from an RNG seeded by the
//!   runtime's seed, so the same seed gives the same delays and pids.
//! - [`Runtime::stop`] behaves like a process that dies on `SIGTERM`: it ends
//!   at once and its exit is recorded as `Signal(15)`.
//! - Pids are allocated sequentially from a seeded base, like a kernel's.
//! - Resource limits are accepted, not enforced; `limits_applied` reads
//!   `simulated` when any are set.
//!
//! # Logs
//!
//! Each instance writes, on stdout, `starting NAME VERSION`, then
//! `NAME VERSION ready` once started, then `NAME VERSION heartbeat N` at the
//! script's log period, if any. Exits write `exited with code C` (stderr when
//! C is not 0), a stop writes `received SIGTERM, exiting`, and a kill for
//! failing health checks writes `killed: failing health checks` on stderr.
//! The last [`LOG_LINES_KEPT`] lines of an app are kept across its restarts;
//! followers get new lines through a channel of [`FOLLOW_BUFFER`] lines and
//! lose lines, never slow the app, when they fall further behind.

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use async_trait::async_trait;
use futures::{Stream, StreamExt, stream};
use p2p_core::{
    AppSpec, AppState, AppStatus, Clock, Error, ExitStatus, HealthCheckSpec, HealthChecker,
    HealthOutcome, HealthProbe, LogLine, LogLines, LogSelection, LogStream, ProbeTarget,
    RestartDecision, RestartMode, RestartTracker, Result, Runtime,
};
use rand::{Rng, RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tokio::sync::broadcast;
use tokio::sync::broadcast::error::RecvError;
use tokio::task::AbortHandle;
use tokio::time::Instant;

/// Log lines kept per app for [`Runtime::logs`] tails.
pub const LOG_LINES_KEPT: usize = 1000;

/// Lines a log follower may fall behind before it starts losing lines.
pub const FOLLOW_BUFFER: usize = 256;

/// Startup delay of the scripts built by [`Script`]'s constructors.
pub const DEFAULT_STARTUP: Duration = Duration::from_secs(1);

// A zero interval or log period would make a supervisor spin without letting
// virtual time advance.
const MIN_PERIOD: Duration = Duration::from_millis(1);

// Linux's default pid_max: sequential pids wrap there, as on a real host.
const PID_MAX: u32 = 4_194_304;
const PID_FIRST: u32 = 300;

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
    startup: Duration,
    healthy_after: Option<Duration>,
    unhealthy_after: Option<Duration>,
    exit: Option<(Duration, i32)>,
    log_every: Option<Duration>,
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

/// A [`Runtime`] of simulated processes that follow the [`ScriptBook`]'s
/// scripts in tokio time (run it with paused time for fast, reproducible
/// simulations).
///
/// Each app is supervised by a tokio task; dropping the runtime or calling
/// [`SimRuntime::shutdown`] aborts them all.
pub struct SimRuntime {
    shared: Arc<Shared>,
}

struct Shared {
    table: Mutex<Table>,
    clock: Arc<dyn Clock>,
    book: ScriptBook,
}

struct Table {
    apps: BTreeMap<String, Entry>,
    rng: ChaCha8Rng,
    next_pid: u32,
    next_epoch: u64,
}

struct Entry {
    spec: AppSpec,
    status: AppStatus,
    // Identifies the supervisor that owns this entry: aborting a task only
    // takes effect at its next await, so writes from a superseded one must be
    // recognisable and ignored.
    epoch: u64,
    instance: Option<Instance>,
    task: Option<AbortHandle>,
    log: AppLog,
}

// The live process of an entry, present exactly while its state is live.
struct Instance {
    script: Script,
    spawned: Instant,
}

struct AppLog {
    lines: VecDeque<LogLine>,
    // `None` once followers have been ended by a shutdown; a later start
    // opens a new channel.
    followers: Option<broadcast::Sender<LogLine>>,
}

impl AppLog {
    fn new() -> Self {
        AppLog {
            lines: VecDeque::new(),
            followers: Some(broadcast::channel(FOLLOW_BUFFER).0),
        }
    }

    fn write(&mut self, stream: LogStream, line: String) {
        let line = LogLine { stream, line };
        if self.lines.len() >= LOG_LINES_KEPT {
            self.lines.pop_front();
        }
        if let Some(followers) = &self.followers {
            // An error only means that nobody is following right now.
            let _ = followers.send(line.clone());
        }
        self.lines.push_back(line);
    }
}

impl Table {
    fn alloc_pid(&mut self) -> u32 {
        let pid = self.next_pid;
        self.next_pid = if pid + 1 >= PID_MAX {
            PID_FIRST
        } else {
            pid + 1
        };
        pid
    }

    fn new_epoch(&mut self) -> u64 {
        self.next_epoch += 1;
        self.next_epoch
    }

    fn entry_mut(&mut self, name: &str, epoch: u64) -> Option<&mut Entry> {
        self.apps.get_mut(name).filter(|e| e.epoch == epoch)
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Table> {
        lock(&self.table)
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock leaves plain data behind, still usable.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn not_found(name: &str) -> Error {
    Error::NotFound {
        what: format!("app {name}"),
    }
}

fn mode_name(mode: RestartMode) -> &'static str {
    match mode {
        RestartMode::Never => "never",
        RestartMode::OnFailure => "on-failure",
        RestartMode::Always => "always",
    }
}

impl SimRuntime {
    /// A runtime that runs the scripts of `book`, stamps `started_at` with
    /// `clock`, and draws pids and backoff jitter from an RNG seeded with
    /// `seed`.
    pub fn new(book: ScriptBook, clock: Arc<dyn Clock>, seed: u64) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let next_pid = rng.random_range(PID_FIRST..32_768);
        SimRuntime {
            shared: Arc::new(Shared {
                table: Mutex::new(Table {
                    apps: BTreeMap::new(),
                    rng,
                    next_pid,
                    next_epoch: 0,
                }),
                clock,
                book,
            }),
        }
    }

    /// The book this runtime reads scripts from.
    pub fn book(&self) -> &ScriptBook {
        &self.shared.book
    }

    /// A health checker that probes this runtime's instances.
    pub fn health_checker(&self) -> SimHealthChecker {
        SimHealthChecker {
            shared: Arc::downgrade(&self.shared),
        }
    }

    /// Kills every instance at once, as a machine crash does: supervisors
    /// are aborted, so nothing restarts or writes again; every app is left
    /// [`AppState::Stopped`] with exit `Signal(9)` (when it was live) and a
    /// reason; log followers end. Apps can be started again afterwards, as
    /// on a rebooted machine.
    pub fn shutdown(&self) {
        let mut table = self.shared.lock();
        let names: Vec<String> = table.apps.keys().cloned().collect();
        for name in names {
            let epoch = table.new_epoch();
            if let Some(entry) = table.apps.get_mut(&name) {
                halt(entry, epoch, 9, "killed (SIGKILL): runtime shut down");
                entry.status.reason = Some("killed: runtime shut down".to_string());
                entry.log.followers = None;
            }
        }
    }
}

impl fmt::Debug for SimRuntime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let table = self.shared.lock();
        f.debug_struct("SimRuntime")
            .field("apps", &table.apps.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl Drop for SimRuntime {
    fn drop(&mut self) {
        self.shutdown();
    }
}

// Ends the entry's instance and supervisor and leaves it Stopped. A live
// instance records `Signal(signal)` as its exit and writes `last_words`.
fn halt(entry: &mut Entry, epoch: u64, signal: i32, last_words: &str) {
    if let Some(task) = entry.task.take() {
        task.abort();
    }
    entry.epoch = epoch;
    if entry.instance.take().is_some() {
        entry.status.exit = Some(ExitStatus::Signal(signal));
        entry.log.write(LogStream::Stdout, last_words.to_string());
    }
    let status = &mut entry.status;
    status.state = AppState::Stopped;
    status.pid = None;
    status.started_at = None;
    status.health = None;
    status.healthy_streak = 0;
    status.reason = None;
}

// Spawns a new instance for the entry owned by `epoch`, reading its script
// from the book now so that book changes apply from the next spawn.
fn spawn_instance(
    shared: &Shared,
    table: &mut Table,
    name: &str,
    epoch: u64,
    restarted: bool,
) -> Option<(Script, Instant)> {
    let version = table.entry_mut(name, epoch)?.spec.version.clone();
    let script = shared.book.script_for(name, &version);
    let pid = table.alloc_pid();
    let started_at = shared.clock.now();
    let entry = table.entry_mut(name, epoch)?;
    let spawned = Instant::now();
    entry.instance = Some(Instance {
        script: script.clone(),
        spawned,
    });
    let status = &mut entry.status;
    status.state = AppState::Starting;
    status.pid = Some(pid);
    status.started_at = Some(started_at);
    status.health = None;
    status.healthy_streak = 0;
    status.reason = None;
    if restarted {
        status.restarts = status.restarts.saturating_add(1);
    }
    entry
        .log
        .write(LogStream::Stdout, format!("starting {name} {version}"));
    tracing::debug!(
        app = name,
        version,
        pid,
        restarted,
        "simulated process spawned"
    );
    Some((script, spawned))
}

// Replaces whatever `spec.name` holds with a fresh, supervised instance.
fn start_locked(shared: &Arc<Shared>, table: &mut Table, spec: AppSpec) -> Result<AppStatus> {
    let name = spec.name.clone();
    if let Some(entry) = table.apps.get(&name)
        && entry.status.state.is_live()
    {
        return Err(Error::AlreadyExists {
            what: format!("app {name} ({:?})", entry.status.state),
        });
    }
    let epoch = table.new_epoch();
    let rng = ChaCha8Rng::seed_from_u64(table.rng.next_u64());
    let mut log = match table.apps.remove(&name) {
        Some(mut old) => {
            if let Some(task) = old.task.take() {
                task.abort();
            }
            old.log
        }
        None => AppLog::new(),
    };
    if log.followers.is_none() {
        log.followers = Some(broadcast::channel(FOLLOW_BUFFER).0);
    }
    let limits = spec.limits;
    let status = AppStatus {
        limits_applied: (limits.memory_bytes.is_some() || limits.cpu_millis.is_some())
            .then(|| "simulated".to_string()),
        ..AppStatus::starting(name.clone(), spec.version.clone())
    };
    table.apps.insert(
        name.clone(),
        Entry {
            spec: spec.clone(),
            status,
            epoch,
            instance: None,
            task: None,
            log,
        },
    );
    let first =
        spawn_instance(shared, table, &name, epoch, false).ok_or_else(|| not_found(&name))?;
    let task = tokio::spawn(supervise(
        Arc::clone(shared),
        name.clone(),
        epoch,
        spec,
        rng,
        first,
    ));
    let entry = table
        .entry_mut(&name, epoch)
        .ok_or_else(|| not_found(&name))?;
    entry.task = Some(task.abort_handle());
    Ok(entry.status.clone())
}

// How one instance ended, when it ended by itself.
enum RunEnd {
    Exited(i32),
    Unhealthy { last: String },
}

// Follows one app through instances, exits, backoff and restarts until the
// restart policy or the crash-loop limit ends it.
async fn supervise(
    shared: Arc<Shared>,
    name: String,
    epoch: u64,
    spec: AppSpec,
    mut rng: ChaCha8Rng,
    first: (Script, Instant),
) {
    let mut tracker = RestartTracker::new(spec.restart);
    let (mut script, mut spawned) = first;
    loop {
        let Some(end) = run_instance(&shared, &name, epoch, &spec, &script, spawned).await else {
            return;
        };
        let ran_for = spawned.elapsed();
        let failed = !matches!(end, RunEnd::Exited(0));
        let decision = tracker.on_exit(failed, ran_for, rng.random::<f64>());
        let Some(delay) = record_exit(&shared, &name, epoch, &spec, end, decision) else {
            return;
        };
        tokio::time::sleep(delay).await;
        let mut table = shared.lock();
        let Some(next) = spawn_instance(&shared, &mut table, &name, epoch, true) else {
            return;
        };
        (script, spawned) = next;
    }
}

// Records an instance's end and the policy's decision; the delay to restart
// after, if any.
fn record_exit(
    shared: &Shared,
    name: &str,
    epoch: u64,
    spec: &AppSpec,
    end: RunEnd,
    decision: RestartDecision,
) -> Option<Duration> {
    let mut table = shared.lock();
    let entry = table.entry_mut(name, epoch)?;
    entry.instance = None;
    let what = match end {
        RunEnd::Exited(code) => {
            let stream = if code == 0 {
                LogStream::Stdout
            } else {
                LogStream::Stderr
            };
            entry.log.write(stream, format!("exited with code {code}"));
            entry.status.exit = Some(ExitStatus::Code(code));
            format!("exited with code {code}")
        }
        RunEnd::Unhealthy { last } => {
            entry.log.write(
                LogStream::Stderr,
                "killed: failing health checks".to_string(),
            );
            entry.status.exit = Some(ExitStatus::Signal(9));
            format!("killed after failing health checks ({last})")
        }
    };
    let status = &mut entry.status;
    status.pid = None;
    status.started_at = None;
    status.healthy_streak = 0;
    tracing::debug!(app = name, %what, ?decision, "simulated process ended");
    match decision {
        RestartDecision::RestartAfter(delay) => {
            status.state = AppState::BackingOff;
            status.reason = Some(format!("{what}; restarting in {delay:?}"));
            Some(delay)
        }
        RestartDecision::Stop => {
            status.state = AppState::Stopped;
            status.reason = Some(format!(
                "{what}; restart policy {} does not restart it",
                mode_name(spec.restart.mode)
            ));
            None
        }
        RestartDecision::GiveUp { reason } => {
            status.state = AppState::Failed;
            status.reason = Some(format!("{what}; {reason}"));
            None
        }
    }
}

// Health probing of one instance.
#[derive(Default)]
struct ProbeRun {
    failures: u32,
    passed: bool,
    in_episode: bool,
}

impl ProbeRun {
    // Applies one probe result taken `at` after spawn; ends the instance when
    // a new unhealthy episode begins and the policy restarts on failure.
    fn record(
        &mut self,
        outcome: HealthOutcome,
        at: Duration,
        health: &HealthCheckSpec,
        mode: RestartMode,
        status: &mut AppStatus,
    ) -> Option<RunEnd> {
        match outcome {
            HealthOutcome::Healthy => {
                self.failures = 0;
                self.passed = true;
                self.in_episode = false;
                status.state = AppState::Healthy;
                status.health = Some(HealthOutcome::Healthy);
                status.healthy_streak = status.healthy_streak.saturating_add(1);
                status.reason = None;
                None
            }
            HealthOutcome::Unhealthy(why) => {
                status.healthy_streak = 0;
                status.health = Some(HealthOutcome::Unhealthy(why.clone()));
                if !self.passed && at < health.start_period {
                    return None;
                }
                self.failures = self.failures.saturating_add(1);
                if self.in_episode || self.failures < health.retries.max(1) {
                    return None;
                }
                self.in_episode = true;
                status.state = AppState::Unhealthy;
                status.reason = Some(format!(
                    "{} consecutive failed health checks; last: {why}",
                    self.failures
                ));
                (mode != RestartMode::Never).then_some(RunEnd::Unhealthy { last: why })
            }
        }
    }
}

// What happens to an instance at one moment of its script.
#[derive(Default)]
struct Due {
    ready: bool,
    settle: bool,
    probe: bool,
    log: bool,
}

// Plays one instance's script until it exits or is killed for failing its
// health checks; `None` when the entry now belongs to another supervisor.
async fn run_instance(
    shared: &Shared,
    name: &str,
    epoch: u64,
    spec: &AppSpec,
    script: &Script,
    spawned: Instant,
) -> Option<RunEnd> {
    let health = spec.health.as_ref();
    let exit_at = script.exit.map(|(at, _)| at);
    // The first moment Starting may give way to Running.
    let settle_at = health.map_or(script.startup, |h| script.startup.max(h.start_period));
    let interval = health.map(|h| h.interval.max(MIN_PERIOD));
    let mut ready_at = Some(script.startup);
    let mut settle = Some(settle_at);
    let mut next_probe = interval;
    let mut next_log = script.log_every;
    let mut heartbeats = 0u64;
    let mut probes = ProbeRun::default();
    loop {
        let Some(at) = [exit_at, ready_at, settle, next_probe, next_log]
            .into_iter()
            .flatten()
            .min()
        else {
            // Nothing scheduled ever again: the process just runs until it is
            // stopped, which aborts this task.
            std::future::pending::<()>().await;
            return None;
        };
        tokio::time::sleep_until(spawned + at).await;
        if let Some((_, code)) = script.exit.filter(|(exit, _)| *exit == at) {
            return Some(RunEnd::Exited(code));
        }
        let due = Due {
            ready: ready_at == Some(at),
            settle: settle == Some(at),
            probe: next_probe == Some(at),
            log: next_log == Some(at),
        };
        if due.ready {
            ready_at = None;
        }
        if due.settle {
            settle = None;
        }
        if due.probe {
            next_probe = interval.map(|i| at + i);
        }
        if due.log {
            heartbeats += 1;
            next_log = script.log_every.map(|p| at + p);
        }
        let mut table = shared.lock();
        let entry = table.entry_mut(name, epoch)?;
        if let Some(end) = apply_due(entry, &due, at, heartbeats, &mut probes, script, spec) {
            return Some(end);
        }
    }
}

fn apply_due(
    entry: &mut Entry,
    due: &Due,
    at: Duration,
    heartbeats: u64,
    probes: &mut ProbeRun,
    script: &Script,
    spec: &AppSpec,
) -> Option<RunEnd> {
    let (name, version) = (&spec.name, &spec.version);
    if due.ready {
        entry
            .log
            .write(LogStream::Stdout, format!("{name} {version} ready"));
    }
    if due.settle && entry.status.state == AppState::Starting {
        entry.status.state = AppState::Running;
    }
    if let Some(health) = spec.health.as_ref().filter(|_| due.probe) {
        let outcome = script.probe_at(&health.probe, at);
        if let Some(end) = probes.record(outcome, at, health, spec.restart.mode, &mut entry.status)
        {
            return Some(end);
        }
    }
    if due.log {
        entry.log.write(
            LogStream::Stdout,
            format!("{name} {version} heartbeat {heartbeats}"),
        );
    }
    None
}

fn selects(wanted: LogStream, line: LogStream) -> bool {
    wanted == LogStream::Both || wanted == line
}

fn follow(
    followers: broadcast::Receiver<LogLine>,
    wanted: LogStream,
) -> impl Stream<Item = Result<LogLine>> + Send + 'static {
    stream::unfold(followers, move |mut followers| async move {
        loop {
            match followers.recv().await {
                Ok(line) if selects(wanted, line.stream) => return Some((Ok(line), followers)),
                Ok(_) => {}
                Err(RecvError::Lagged(skipped)) => {
                    tracing::debug!(skipped, "log follower fell behind and lost lines");
                }
                Err(RecvError::Closed) => return None,
            }
        }
    })
}

#[async_trait]
impl Runtime for SimRuntime {
    async fn start(&self, spec: AppSpec) -> Result<AppStatus> {
        let mut table = self.shared.lock();
        start_locked(&self.shared, &mut table, spec)
    }

    async fn stop(&self, name: &str) -> Result<AppStatus> {
        let mut table = self.shared.lock();
        let epoch = table.new_epoch();
        let entry = table.apps.get_mut(name).ok_or_else(|| not_found(name))?;
        halt(entry, epoch, 15, "received SIGTERM, exiting");
        Ok(entry.status.clone())
    }

    async fn restart(&self, name: &str) -> Result<AppStatus> {
        let mut table = self.shared.lock();
        let epoch = table.new_epoch();
        let entry = table.apps.get_mut(name).ok_or_else(|| not_found(name))?;
        halt(entry, epoch, 15, "received SIGTERM, exiting");
        let spec = entry.spec.clone();
        start_locked(&self.shared, &mut table, spec)
    }

    async fn status(&self, name: &str) -> Result<AppStatus> {
        let table = self.shared.lock();
        let entry = table.apps.get(name).ok_or_else(|| not_found(name))?;
        Ok(entry.status.clone())
    }

    async fn list(&self) -> Result<Vec<AppStatus>> {
        let table = self.shared.lock();
        Ok(table.apps.values().map(|e| e.status.clone()).collect())
    }

    async fn remove(&self, name: &str) -> Result<()> {
        let mut table = self.shared.lock();
        let mut entry = table.apps.remove(name).ok_or_else(|| not_found(name))?;
        if let Some(task) = entry.task.take() {
            task.abort();
        }
        tracing::debug!(app = name, "simulated app removed");
        // Dropping the entry drops its log channel, which ends its followers.
        Ok(())
    }

    async fn logs(&self, name: &str, selection: LogSelection) -> Result<LogLines> {
        let table = self.shared.lock();
        let entry = table.apps.get(name).ok_or_else(|| not_found(name))?;
        let wanted = selection.stream;
        let mut kept: Vec<LogLine> = entry
            .log
            .lines
            .iter()
            .filter(|l| selects(wanted, l.stream))
            .cloned()
            .collect();
        if let Some(tail) = selection.tail {
            kept.drain(..kept.len().saturating_sub(tail));
        }
        let backlog = stream::iter(kept.into_iter().map(Ok));
        // Subscribing under the same lock as the snapshot means no line is
        // missed or delivered twice between backlog and live lines.
        match entry.log.followers.as_ref().filter(|_| selection.follow) {
            Some(followers) => Ok(backlog.chain(follow(followers.subscribe(), wanted)).boxed()),
            None => Ok(backlog.boxed()),
        }
    }
}

/// A [`HealthChecker`] answering from a [`SimRuntime`]'s process table: a
/// probe passes iff the target's instance is live (and has the target's pid,
/// when one is given) and its script says it passes at the current virtual
/// time since the instance spawned. It answers at once, so it always returns
/// within `spec.timeout`.
#[derive(Clone)]
pub struct SimHealthChecker {
    // Weak so that a checker kept by the agent does not keep a dropped
    // runtime's table alive.
    shared: Weak<Shared>,
}

impl fmt::Debug for SimHealthChecker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimHealthChecker")
            .field("runtime_alive", &(self.shared.strong_count() > 0))
            .finish()
    }
}

#[async_trait]
impl HealthChecker for SimHealthChecker {
    async fn probe(&self, target: &ProbeTarget, spec: &HealthCheckSpec) -> HealthOutcome {
        let Some(shared) = self.shared.upgrade() else {
            return HealthOutcome::Unhealthy("runtime is gone".to_string());
        };
        let table = shared.lock();
        let Some(entry) = table.apps.get(&target.name) else {
            return HealthOutcome::Unhealthy(format!("no app named {}", target.name));
        };
        let Some(instance) = &entry.instance else {
            return HealthOutcome::Unhealthy(format!(
                "{} is not running ({:?})",
                target.name, entry.status.state
            ));
        };
        if let Some(pid) = target.pid
            && entry.status.pid != Some(pid)
        {
            return HealthOutcome::Unhealthy(format!("pid {pid} is not running"));
        }
        instance
            .script
            .probe_at(&spec.probe, instance.spawned.elapsed())
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
