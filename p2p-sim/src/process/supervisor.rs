//! Supervision of one app: the task that plays each instance's script in
//! tokio time (ready, probes, heartbeats, exit), applies health results,
//! and restarts the app after exits as its restart policy says.

use std::sync::Arc;
use std::time::Duration;

use p2p_core::{
    AppSpec, AppState, AppStatus, Error, ExitStatus, HealthCheckSpec, HealthOutcome, LogStream,
    RestartDecision, RestartMode, RestartTracker, Result,
};
use rand::{Rng, RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tokio::sync::broadcast;
use tokio::time::Instant;

use super::script::{MIN_PERIOD, Script};
use super::table::{AppLog, Entry, FOLLOW_BUFFER, Shared, Table, not_found, spawn_instance};

fn mode_name(mode: RestartMode) -> &'static str {
    match mode {
        RestartMode::Never => "never",
        RestartMode::OnFailure => "on-failure",
        RestartMode::Always => "always",
    }
}

// Replaces whatever `spec.name` holds with a fresh, supervised instance.
pub(super) fn start_locked(
    shared: &Arc<Shared>,
    table: &mut Table,
    spec: AppSpec,
) -> Result<AppStatus> {
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
pub(super) enum RunEnd {
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
