//! [`ProcessRuntime`]: the p2p-core [`Runtime`] over OS processes.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use p2p_core::runtime::{
    AppSpec, AppState, AppStatus, ExitStatus, HealthChecker, HealthOutcome, HealthProbe, LogLines,
    LogSelection, LogStream, ProbeTarget, RestartDecision, RestartMode, RestartTracker, Runtime,
    check_app_name,
};
use p2p_core::{Clock, Error, Result};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tokio::process::{Child, Command};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::health::{DEFAULT_PATH, ProcessHealthChecker, check_probe, resolve_program};
use crate::limits::{Applied, Cgroups, WRAPPER};
use crate::logs::{AppLogs, LogRotation, pump};

/// Configuration of a [`ProcessRuntime`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct RuntimeConfig {
    /// Directory for the runtime's files: app logs go to
    /// `<root>/logs/<app>/{stdout,stderr,combined}.log`.
    pub root: PathBuf,
    /// Log file size and count per stream.
    pub log_rotation: LogRotation,
    /// Seed of the random numbers that jitter restart backoff.
    pub seed: u64,
    /// Name of the cgroup this runtime makes under its own, one child per
    /// app. Two runtimes in one process need different names; the default
    /// (`p2p-runtime-<pid>-<n>`) is unique per runtime.
    pub cgroup_name: String,
}

impl RuntimeConfig {
    /// Files under `root`, default rotation (10 MiB x 5), seed 0, cgroup
    /// `p2p-runtime-<pid>-<n>` (one per runtime).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        RuntimeConfig {
            root: root.into(),
            log_rotation: LogRotation::default(),
            seed: 0,
            cgroup_name: {
                // Unique per runtime: several runtimes in one process (a
                // local fleet) must not share, and so tear down, a cgroup.
                static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
                let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                format!("p2p-runtime-{}-{n}", std::process::id())
            },
        }
    }

    /// Sets the log rotation.
    pub fn log_rotation(mut self, r: LogRotation) -> Self {
        self.log_rotation = r;
        self
    }

    /// Sets the backoff jitter seed.
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// Sets the cgroup name.
    pub fn cgroup_name(mut self, name: impl Into<String>) -> Self {
        self.cgroup_name = name.into();
        self
    }
}

/// A number unique within this runtime (for tombstone names).
fn rt_unique(inner: &Inner) -> u64 {
    inner
        .unique
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

struct Inner {
    config: RuntimeConfig,
    clock: Arc<dyn Clock>,
    checker: Arc<dyn HealthChecker>,
    cgroups: Cgroups,
    rng: Mutex<ChaCha8Rng>,
    apps: Mutex<BTreeMap<String, Arc<App>>>,
    unique: std::sync::atomic::AtomicU64,
}

/// One app: its spec, status, logs and supervisor task.
struct App {
    spec: AppSpec,
    status: Mutex<AppStatus>,
    logs: Arc<AppLogs>,
    stop: CancellationToken,
    /// Cancelled when the supervisor task has ended, however it ended.
    done: CancellationToken,
}

/// Marks an app's supervisor as ended when dropped: also on a panic.
struct DoneGuard(CancellationToken);

impl Drop for DoneGuard {
    fn drop(&mut self) {
        self.0.cancel();
    }
}

impl App {
    fn set(&self, f: impl FnOnce(&mut AppStatus)) {
        f(&mut lock(&self.status));
    }

    fn status(&self) -> AppStatus {
        lock(&self.status).clone()
    }

    /// Waits for the supervisor task to end.
    async fn finished(&self) {
        self.done.cancelled().await;
    }

    fn is_done(&self) -> bool {
        self.done.is_cancelled()
    }
}

/// A [`Runtime`] over OS processes: each app in its own process group,
/// supervised by a task that restarts it per its policy, captures its
/// output, probes its health and applies its resource limits. See the
/// [crate docs](crate).
#[derive(Clone)]
pub struct ProcessRuntime {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for ProcessRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProcessRuntime")
            .field("root", &self.inner.config.root)
            .field("limits", self.inner.cgroups.support())
            .finish()
    }
}

impl ProcessRuntime {
    /// A runtime with files under `config.root`, timestamps from `clock`
    /// and [`ProcessHealthChecker`] probes. Probes the host's cgroups once.
    pub fn new(config: RuntimeConfig, clock: Arc<dyn Clock>) -> Result<Self> {
        Self::with_checker(config, clock, Arc::new(ProcessHealthChecker::new()))
    }

    /// The same with another health checker.
    pub fn with_checker(
        config: RuntimeConfig,
        clock: Arc<dyn Clock>,
        checker: Arc<dyn HealthChecker>,
    ) -> Result<Self> {
        check_app_name(&config.cgroup_name).map_err(|why| Error::invalid("cgroup_name", why))?;
        if config.log_rotation.max_bytes < 1024 || config.log_rotation.files == 0 {
            return Err(Error::invalid(
                "log_rotation",
                "files must be at least 1 KiB and at least one kept",
            ));
        }
        let logs = config.root.join("logs");
        std::fs::create_dir_all(&logs)
            .map_err(|e| Error::io(format!("creating {}", logs.display()), e))?;
        // Processes a killed predecessor left running would run beside
        // the ones this runtime starts: stop them first.
        let reaped = crate::pids::reap(&config.root.join("pids"), Duration::from_secs(5));
        if !reaped.is_empty() {
            tracing::warn!(apps = ?reaped, "stopped processes left by a previous runtime");
        }
        let cgroups = Cgroups::detect(&config.cgroup_name);
        let rng = ChaCha8Rng::seed_from_u64(config.seed);
        Ok(ProcessRuntime {
            inner: Arc::new(Inner {
                config,
                clock,
                checker,
                cgroups,
                rng: Mutex::new(rng),
                apps: Mutex::new(BTreeMap::new()),
                unique: std::sync::atomic::AtomicU64::new(0),
            }),
        })
    }

    /// How resource limits are enforced on this host.
    pub fn limit_support(&self) -> &crate::LimitSupport {
        self.inner.cgroups.support()
    }

    /// Where the logs of app `name` are written.
    pub fn log_dir(&self, name: &str) -> PathBuf {
        self.inner.config.root.join("logs").join(name)
    }

    /// Stops every app (as [`Runtime::stop`]), ends log followers and
    /// removes the runtime's cgroup. Call it before dropping the runtime:
    /// supervisors keep running (and restarting apps) until their apps are
    /// stopped, or until the tokio runtime they run on shuts down, which
    /// kills the apps' main processes only.
    pub async fn shutdown(&self) {
        let apps: Vec<Arc<App>> = lock(&self.inner.apps).values().cloned().collect();
        futures::future::join_all(apps.iter().map(|a| async move {
            a.stop.cancel();
            a.finished().await;
            a.logs.close_followers();
        }))
        .await;
        self.inner.cgroups.cleanup();
    }

    fn app(&self, name: &str) -> Result<Arc<App>> {
        lock(&self.inner.apps)
            .get(name)
            .cloned()
            .ok_or_else(|| Error::NotFound {
                what: format!("app {name:?}"),
            })
    }
}

/// Checks everything about a spec that can be checked before anything
/// runs; each problem is an [`Error::Invalid`] naming the field.
fn validate(spec: &AppSpec) -> Result<Option<(u32, u32)>> {
    check_app_name(&spec.name).map_err(|why| Error::invalid("name", why))?;
    match std::fs::metadata(&spec.workdir) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => {
            return Err(Error::invalid(
                "workdir",
                format!("{} is not a directory", spec.workdir.display()),
            ));
        }
        Err(e) => {
            return Err(Error::invalid(
                "workdir",
                format!("{}: {e}", spec.workdir.display()),
            ));
        }
    }
    resolve_program(
        &spec.entrypoint,
        &spec.workdir,
        spec.env.get("PATH").map(String::as_str),
    )?;
    if let Some(h) = &spec.health {
        check_probe(&h.probe, &spec.workdir)?;
        if h.interval.is_zero() || h.timeout.is_zero() {
            return Err(Error::invalid(
                "health check",
                "interval and timeout must be more than zero",
            ));
        }
    }
    const DAY: Duration = Duration::from_secs(24 * 3600);
    let durations = [
        ("stop_grace", Some(spec.stop_grace)),
        ("restart", Some(spec.restart.initial_backoff)),
        ("restart", Some(spec.restart.max_backoff)),
        ("restart", Some(spec.restart.stable_after)),
        ("health check", spec.health.as_ref().map(|h| h.interval)),
        ("health check", spec.health.as_ref().map(|h| h.timeout)),
        ("health check", spec.health.as_ref().map(|h| h.start_period)),
    ];
    for (field, d) in durations {
        if d.is_some_and(|d| d > DAY) {
            return Err(Error::invalid(field, "a duration of more than a day"));
        }
    }
    if spec.limits.memory_bytes.is_some_and(|m| m < 1024 * 1024) {
        return Err(Error::invalid("limits", "a memory limit below 1 MiB"));
    }
    if spec.limits.cpu_millis.is_some_and(|c| c < 10) {
        return Err(Error::invalid(
            "limits",
            "a CPU limit under 10 thousandths of a core",
        ));
    }
    if spec.user.is_some() && resolve_program("setpriv", Path::new("/"), None).is_err() {
        return Err(Error::invalid(
            "user",
            "running an app as another user needs `setpriv` (util-linux) on this host",
        ));
    }
    let user = match &spec.user {
        None => None,
        Some(u) => {
            let found = match u.parse::<u32>() {
                Ok(uid) => nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)),
                Err(_) => nix::unistd::User::from_name(u),
            };
            match found {
                Ok(Some(user)) => Some((user.uid.as_raw(), user.gid.as_raw())),
                Ok(None) => return Err(Error::invalid("user", format!("no user {u:?}"))),
                Err(e) => return Err(Error::invalid("user", format!("looking up {u:?}: {e}"))),
            }
        }
    };
    Ok(user)
}

/// The command that runs `spec` (through the limits wrapper if needed).
fn command(spec: &AppSpec, applied: &Applied, user: Option<(u32, u32)>) -> Result<Command> {
    let program = resolve_program(
        &spec.entrypoint,
        &spec.workdir,
        spec.env.get("PATH").map(String::as_str),
    )?;
    let mut cmd = if applied.needs_wrapper() {
        // The wrapper joins the cgroups as the supervisor's user; with
        // `user` set, setpriv then drops to that user before the app runs.
        let mut c = Command::new("/bin/sh");
        c.arg("-c").arg(WRAPPER).arg("p2p-runtime");
        if let Some((uid, gid)) = user {
            let setpriv = resolve_program("setpriv", Path::new("/"), None).map_err(|_| {
                Error::invalid(
                    "user",
                    "running an app as another user inside a cgroup needs `setpriv` (util-linux)",
                )
            })?;
            c.arg(setpriv)
                .arg(format!("--reuid={uid}"))
                .arg(format!("--regid={gid}"))
                .arg("--clear-groups")
                .arg("--");
        }
        c.arg(&program);
        c
    } else {
        let mut c = Command::new(&program);
        if let Some((uid, gid)) = user {
            c.uid(uid).gid(gid);
        }
        c
    };
    cmd.args(&spec.args)
        .current_dir(&spec.workdir)
        .env_clear()
        .env("PATH", DEFAULT_PATH)
        .env("P2P_APP_NAME", &spec.name)
        .env("P2P_APP_VERSION", &spec.version)
        .envs(&spec.env)
        .envs(
            applied
                .wrapper_env()
                .into_iter()
                .filter(|_| applied.needs_wrapper()),
        )
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    Ok(cmd)
}

/// How one run of the process ended.
enum End {
    /// Stopped on request.
    Stopped(std::process::ExitStatus),
    /// Exited by itself.
    Exited(std::process::ExitStatus),
    /// Restarted for failing its health check.
    Unhealthy(std::process::ExitStatus, String),
}

fn exit_of(st: &std::process::ExitStatus) -> ExitStatus {
    use std::os::unix::process::ExitStatusExt;
    match (st.code(), st.signal()) {
        (Some(c), _) => ExitStatus::Code(c),
        (None, Some(s)) => ExitStatus::Signal(s),
        (None, None) => ExitStatus::Code(-1),
    }
}

fn group_alive(pgid: Pid) -> bool {
    if killpg(pgid, None).is_err() {
        return false;
    }
    // Signal 0 succeeds while any member is a zombie, and members that
    // outlived their parent are reaped by init, which some container
    // inits do only about once a second: every stop then waited out its
    // whole grace period. Zombies have exited; only running members count.
    live_member_of(pgid).unwrap_or(true)
}

/// Whether a process of group `pgid` is running (not a zombie), from
/// `/proc`; `None` where `/proc` cannot be read.
fn live_member_of(pgid: Pid) -> Option<bool> {
    let want = pgid.as_raw().to_string();
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue; // gone meanwhile
        };
        // `pid (comm) state ppid pgrp ...`; comm may hold anything, so
        // the fields are counted from its closing parenthesis.
        let Some((_, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let mut fields = rest.split_whitespace();
        let state = fields.next().unwrap_or("");
        let pgrp = fields.nth(1).unwrap_or("");
        if pgrp == want && state != "Z" && state != "X" {
            return Some(true);
        }
    }
    Some(false)
}

/// TERM to the group, up to `grace` for the main process and then the
/// rest of the group to exit, then KILL to the group.
async fn stop_group(
    child: &mut Child,
    pgid: Pid,
    grace: Duration,
    applied: &Applied,
) -> std::process::ExitStatus {
    let _ = killpg(pgid, Signal::SIGTERM);
    let deadline = Instant::now() + grace;
    let mut status = tokio::time::timeout_at(deadline, child.wait())
        .await
        .ok()
        .and_then(|r| r.ok());
    while Instant::now() < deadline && group_alive(pgid) && status.is_some() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    if status.is_none() || group_alive(pgid) {
        let _ = killpg(pgid, Signal::SIGKILL);
    }
    applied.kill_all();
    if status.is_none() {
        status = child.wait().await.ok();
    }
    status.unwrap_or_else(|| {
        use std::os::unix::process::ExitStatusExt;
        std::process::ExitStatus::from_raw(9)
    })
}

/// Supervises one app until it is stopped, fails for good, or exits under
/// a policy that does not restart it.
async fn supervise(
    rt: Arc<Inner>,
    app: Arc<App>,
    user: Option<(u32, u32)>,
    ready: oneshot::Sender<Result<()>>,
) {
    let spec = &app.spec;
    let mut tracker = RestartTracker::new(spec.restart);
    let mut ready = Some(ready);
    let fail = |why: String| {
        app.set(|s| {
            s.state = AppState::Failed;
            s.pid = None;
            s.reason = Some(why);
        });
    };
    loop {
        // A stop that came while backing off wins over the next run.
        if app.stop.is_cancelled() {
            app.set(|s| {
                s.state = AppState::Stopped;
                s.reason = Some("stopped on request".into());
            });
            return;
        }
        let prepared = rt
            .cgroups
            .prepare(&spec.name, &spec.limits)
            .map_err(|e| Error::io("applying resource limits", e.into_io()));
        let spawned = match prepared {
            Err(e) => Err((e, None)),
            Ok(applied) => match command(spec, &applied, user).and_then(|mut c| {
                c.spawn()
                    .map_err(|e| Error::io(format!("starting {}", spec.entrypoint), e))
            }) {
                Ok(c) => Ok((c, applied)),
                Err(e) => Err((e, Some(applied))),
            },
        };
        let (mut child, applied) = match spawned {
            Ok(ok) => ok,
            Err((e, applied)) => {
                if let Some(a) = applied {
                    a.release().await;
                }
                match ready.take() {
                    // The first start: the caller gets the error.
                    Some(r) => {
                        fail(format!("could not start: {e}"));
                        let _ = r.send(Err(e));
                        return;
                    }
                    // A restart: a failed run, under the policy's backoff.
                    None => {
                        let why = format!("could not start: {e}");
                        if after_run(&rt, &app, &mut tracker, true, Duration::ZERO, why).await {
                            continue;
                        }
                        return;
                    }
                }
            }
        };
        let pid = child.id().unwrap_or(0);
        let pgid = Pid::from_raw(pid as i32);
        let pids = rt.config.root.join("pids");
        crate::pids::record(&pids, &spec.name, pid);
        let oom_before = applied.oom_kills();
        let started = Instant::now();
        app.set(|s| {
            s.state = if spec.health.is_some() {
                AppState::Starting
            } else {
                AppState::Running
            };
            s.pid = Some(pid);
            s.started_at = Some(rt.clock.now());
            s.health = None;
            s.healthy_streak = 0;
            s.reason = None;
            s.limits_applied = applied.mechanism.clone();
        });
        if let Some(r) = ready.take() {
            let _ = r.send(Ok(()));
        }
        let pumps = [
            child
                .stdout
                .take()
                .map(|o| tokio::spawn(pump(app.logs.clone(), LogStream::Stdout, o))),
            child
                .stderr
                .take()
                .map(|e| tokio::spawn(pump(app.logs.clone(), LogStream::Stderr, e))),
        ];

        let (htx, mut hrx) = mpsc::channel::<(HealthOutcome, Duration)>(4);
        let prober = spec.health.clone().map(|mut h| {
            // A relative probe command means the app's directory, as it
            // did when the spec was checked.
            if let HealthProbe::Exec { command, args } = &mut h.probe {
                if let Ok(p) = resolve_program(command, &spec.workdir, None) {
                    *command = p.display().to_string();
                }
                // The probe runs as the app's user, never as the
                // supervisor's (a probe command is the app's own code).
                if let (Some((uid, gid)), Ok(setpriv)) =
                    (user, resolve_program("setpriv", Path::new("/"), None))
                {
                    let mut wrapped = vec![
                        format!("--reuid={uid}"),
                        format!("--regid={gid}"),
                        "--clear-groups".to_string(),
                        "--".to_string(),
                        command.clone(),
                    ];
                    wrapped.append(args);
                    *command = setpriv.display().to_string();
                    *args = wrapped;
                }
            }
            let checker = rt.checker.clone();
            let target = ProbeTarget {
                name: spec.name.clone(),
                version: spec.version.clone(),
                pid: Some(pid),
            };
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(h.interval);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                // A checker that overruns its timeout still counts as failed.
                let limit = h.timeout + Duration::from_secs(1);
                loop {
                    tick.tick().await;
                    let outcome = tokio::time::timeout(limit, checker.probe(&target, &h))
                        .await
                        .unwrap_or_else(|_| {
                            HealthOutcome::Unhealthy(format!("probe timed out after {limit:?}"))
                        });
                    if htx.send((outcome, started.elapsed())).await.is_err() {
                        return;
                    }
                }
            })
        });
        let mut failures = 0u32;
        let end = loop {
            tokio::select! {
                biased;
                _ = app.stop.cancelled() => {
                    let st = stop_group(&mut child, pgid, spec.stop_grace, &applied).await;
                    break End::Stopped(st);
                }
                st = child.wait() => {
                    let st = st.unwrap_or_else(|_| {
                        use std::os::unix::process::ExitStatusExt;
                        std::process::ExitStatus::from_raw(9)
                    });
                    break End::Exited(st);
                }
                Some((outcome, since)) = hrx.recv() => {
                    let h = spec.health.as_ref().expect("a prober runs only with a health check");
                    let healthy = outcome.is_healthy();
                    let mut episode = None;
                    app.set(|s| {
                        if healthy {
                            failures = 0;
                            s.healthy_streak += 1;
                            s.state = AppState::Healthy;
                        } else {
                            s.healthy_streak = 0;
                            if since >= h.start_period {
                                failures += 1;
                                if failures >= h.retries.max(1) {
                                    if s.state != AppState::Unhealthy {
                                        episode = Some(match &outcome {
                                            HealthOutcome::Unhealthy(why) => why.clone(),
                                            HealthOutcome::Healthy => String::new(),
                                        });
                                    }
                                    s.state = AppState::Unhealthy;
                                } else if s.state == AppState::Healthy {
                                    s.state = AppState::Running;
                                }
                            }
                        }
                        s.health = Some(outcome);
                    });
                    // Once per unhealthy episode: restart if the policy
                    // restarts failed apps, else stay up and unhealthy.
                    if let Some(why) = episode
                        && spec.restart.mode != RestartMode::Never
                    {
                        let st = stop_group(&mut child, pgid, spec.stop_grace, &applied).await;
                        break End::Unhealthy(st, why);
                    }
                }
            }
        };
        if let Some(p) = prober {
            p.abort();
        }
        let (st, unhealthy, stopped) = match end {
            End::Stopped(st) => (st, None, true),
            End::Exited(st) => (st, None, false),
            End::Unhealthy(st, why) => (st, Some(why), false),
        };
        let ran_for = started.elapsed();
        // Status first: the process is gone.
        app.set(|s| {
            s.pid = None;
            s.exit = Some(exit_of(&st));
        });
        // Whatever the app left behind goes with it: its process group,
        // and (where cgroups work) every process in its cgroup, which
        // catches those that left the group. Without a cgroup, the group
        // is signalled only while it still has members, so that a reused
        // process-group id is never hit.
        if applied.tracked() {
            applied.kill_all();
        } else if group_alive(pgid) {
            let _ = killpg(pgid, Signal::SIGKILL);
        }
        crate::pids::forget(&pids, &spec.name);
        for p in pumps.into_iter().flatten() {
            let abort = p.abort_handle();
            if tokio::time::timeout(Duration::from_secs(1), p)
                .await
                .is_err()
            {
                abort.abort();
            }
        }
        let oom = applied.oom_kills() > oom_before;
        applied.release().await;
        if stopped {
            app.set(|s| {
                s.state = AppState::Stopped;
                s.reason = Some("stopped on request".into());
            });
            return;
        }
        if oom && exit_of(&st) == ExitStatus::Signal(9) {
            let limit = spec.limits.memory_bytes.unwrap_or(0);
            fail(format!(
                "killed for exceeding its memory limit of {limit} bytes ({})",
                app.status().limits_applied.unwrap_or_default()
            ));
            return;
        }
        let failed = !st.success() || unhealthy.is_some();
        let why = match &unhealthy {
            Some(w) => format!("restarted after failing its health check: {w}"),
            None => format!("exited with {st}"),
        };
        if !after_run(&rt, &app, &mut tracker, failed, ran_for, why).await {
            return;
        }
    }
}

/// Applies the restart policy after a run that ended (or could not
/// start): backs off and returns true to run again, or settles the app
/// (`Stopped`, `Failed`) and returns false.
async fn after_run(
    rt: &Inner,
    app: &App,
    tracker: &mut RestartTracker,
    failed: bool,
    ran_for: Duration,
    why: String,
) -> bool {
    let jitter: f64 = lock(&rt.rng).random();
    match tracker.on_exit(failed, ran_for, jitter) {
        RestartDecision::RestartAfter(delay) => {
            app.set(|s| {
                s.state = AppState::BackingOff;
                s.restarts += 1;
                s.reason = Some(format!("{why}; restarting in {delay:?}"));
            });
            tokio::select! {
                biased;
                _ = app.stop.cancelled() => {
                    app.set(|s| {
                        s.state = AppState::Stopped;
                        s.reason = Some("stopped on request".into());
                    });
                    false
                }
                _ = tokio::time::sleep(delay) => true,
            }
        }
        RestartDecision::Stop => {
            app.set(|s| {
                s.state = AppState::Stopped;
                s.reason = Some(why);
            });
            false
        }
        RestartDecision::GiveUp { reason } => {
            app.set(|s| {
                s.state = AppState::Failed;
                s.pid = None;
                s.reason = Some(format!("{reason}; last: {why}"));
            });
            false
        }
    }
}

#[async_trait]
impl Runtime for ProcessRuntime {
    async fn start(&self, spec: AppSpec) -> Result<AppStatus> {
        let user = validate(&spec)?;
        let name = spec.name.clone();
        // An instance with no process (backing off, settled, or cleaning
        // up after an exit) is replaced: stopped, then waited for. One
        // with a process, or whose first start is under way, is live.
        let previous = lock(&self.inner.apps).get(&name).cloned();
        if let Some(prev) = previous.filter(|p| !p.is_done()) {
            let st = prev.status();
            if st.pid.is_some() || (st.state == AppState::Starting && st.started_at.is_none()) {
                return Err(Error::AlreadyExists {
                    what: format!("app {name:?}"),
                });
            }
            prev.stop.cancel();
            let wait = prev.spec.stop_grace + Duration::from_secs(5);
            if tokio::time::timeout(wait, prev.finished()).await.is_err() {
                return Err(Error::timeout(
                    format!("replacing app {name:?}: its supervisor did not end"),
                    wait,
                ));
            }
        }
        // Checked, registered and spawned under one lock: two starts of
        // one name cannot both pass, and a stop always finds the task.
        let (tx, rx) = oneshot::channel();
        let app = {
            let mut apps = lock(&self.inner.apps);
            let logs = match apps.get(&name) {
                Some(a) if !a.is_done() => {
                    return Err(Error::AlreadyExists {
                        what: format!("app {name:?}"),
                    });
                }
                Some(a) => a.logs.clone(),
                None => AppLogs::open(self.log_dir(&name), self.inner.config.log_rotation)?,
            };
            let app = Arc::new(App {
                status: Mutex::new(AppStatus::starting(name.clone(), spec.version.clone())),
                spec,
                logs,
                stop: CancellationToken::new(),
                done: CancellationToken::new(),
            });
            let guard = DoneGuard(app.done.clone());
            let (inner, sup) = (self.inner.clone(), app.clone());
            tokio::spawn(async move {
                let _guard = guard;
                supervise(inner, sup, user, tx).await;
            });
            apps.insert(name, app.clone());
            app
        };
        match rx.await {
            Ok(Ok(())) => Ok(app.status()),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(Error::closed("the supervisor ended before the app started")),
        }
    }

    async fn stop(&self, name: &str) -> Result<AppStatus> {
        let app = self.app(name)?;
        app.stop.cancel();
        app.finished().await;
        app.set(|s| {
            if s.state != AppState::Stopped {
                s.reason = Some("stopped on request".into());
            }
            s.state = AppState::Stopped;
            s.pid = None;
        });
        Ok(app.status())
    }

    async fn restart(&self, name: &str) -> Result<AppStatus> {
        let app = self.app(name)?;
        self.stop(name).await?;
        self.start(app.spec.clone()).await
    }

    async fn status(&self, name: &str) -> Result<AppStatus> {
        Ok(self.app(name)?.status())
    }

    async fn list(&self) -> Result<Vec<AppStatus>> {
        let apps: Vec<Arc<App>> = lock(&self.inner.apps).values().cloned().collect();
        Ok(apps.iter().map(|a| a.status()).collect())
    }

    async fn remove(&self, name: &str) -> Result<()> {
        let app = self.app(name)?;
        app.stop.cancel();
        app.finished().await;
        let removed = {
            let mut apps = lock(&self.inner.apps);
            // Only this instance: a start that replaced it meanwhile keeps
            // its entry, and its logs.
            if !apps.get(name).is_some_and(|a| Arc::ptr_eq(a, &app)) {
                return Ok(());
            }
            apps.remove(name);
            app.logs.close_followers();
            // Moved aside under the lock, so that a start of the same name
            // right after makes fresh files that this removal cannot touch.
            let dir = app.logs.dir().to_path_buf();
            let tomb = dir.with_file_name(format!(".removed-{name}-{}", rt_unique(&self.inner)));
            match std::fs::rename(&dir, &tomb) {
                Ok(()) => tomb,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
                Err(e) => return Err(Error::io(format!("removing {}", dir.display()), e)),
            }
        };
        let dir = removed;
        if let Err(e) = tokio::fs::remove_dir_all(&dir).await
            && e.kind() != std::io::ErrorKind::NotFound
        {
            return Err(Error::io(format!("removing {}", dir.display()), e));
        }
        Ok(())
    }

    async fn logs(&self, name: &str, selection: LogSelection) -> Result<LogLines> {
        self.app(name)?.logs.read(&selection).await
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::os::unix::process::CommandExt;

    use super::*;

    fn state_of(pid: u32) -> String {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        let (_, rest) = stat.rsplit_once(')').unwrap();
        rest.split_whitespace().next().unwrap().to_string()
    }

    /// A group whose only member is a zombie has exited: stopping an app
    /// used to wait out its whole grace period for init to reap it.
    #[tokio::test]
    async fn a_group_of_zombies_is_not_alive() {
        let mut running = std::process::Command::new("sleep")
            .arg("30")
            .process_group(0)
            .spawn()
            .unwrap();
        let pgid = Pid::from_raw(running.id() as i32);
        assert!(group_alive(pgid));
        running.kill().unwrap();
        // Not waited for: a zombie until `wait`.
        for _ in 0..500 {
            if state_of(running.id()) == "Z" {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(state_of(running.id()), "Z");
        assert!(
            killpg(pgid, None).is_ok(),
            "signal 0 still reaches a zombie"
        );
        assert!(!group_alive(pgid), "a group of zombies counts as alive");
        running.wait().unwrap();
        assert!(!group_alive(pgid));
    }
}
