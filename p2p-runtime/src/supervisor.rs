//! The supervisor of one app: a task that spawns its process, captures
//! its output, probes its health, and after each exit applies the restart
//! policy (exponential backoff with jitter, crash-loop limit) until the
//! app is stopped or settles.

use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use p2p_core::runtime::{
    AppState, ExitStatus, HealthOutcome, LogStream, RestartDecision, RestartMode, RestartTracker,
};
use p2p_core::sync::lock;
use p2p_core::{Error, Result};
use rand::RngExt;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::logs::pump;
use crate::prober::{record_outcome, spawn_prober};
use crate::process_group::{group_alive, stop_group};
use crate::spawn::command;
use crate::state::{App, Inner};

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

/// Supervises one app until it is stopped, fails for good, or exits under
/// a policy that does not restart it.
pub(crate) async fn supervise(
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
        let prober = spawn_prober(&rt.checker, spec, user, pid, started, htx);
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
                    let episode = record_outcome(&app, h, &mut failures, outcome, since);
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
