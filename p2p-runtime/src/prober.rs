//! Health probing of a running app: the task that probes it every
//! interval, and how each outcome moves the app between `Starting`,
//! `Running`, `Healthy` and `Unhealthy`.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use p2p_core::runtime::{
    AppSpec, AppState, HealthCheckSpec, HealthChecker, HealthOutcome, HealthProbe, ProbeTarget,
};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::program::resolve_program;
use crate::state::App;

/// Starts the probe task of app `spec` running as `pid` (as `user`, when
/// set): every interval it sends the outcome, with the time since
/// `started`, to `htx`, until `htx` is closed. `None` without a health
/// check.
pub(crate) fn spawn_prober(
    checker: &Arc<dyn HealthChecker>,
    spec: &AppSpec,
    user: Option<(u32, u32)>,
    pid: u32,
    started: Instant,
    htx: mpsc::Sender<(HealthOutcome, Duration)>,
) -> Option<JoinHandle<()>> {
    spec.health.clone().map(|mut h| {
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
        let checker = checker.clone();
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
    })
}

/// Records one probe outcome (`since` the process started) in the app's
/// status. Failures in the start period do not count; `retries` in a row
/// make the app `Unhealthy`. Returns the reason when this outcome begins
/// an unhealthy episode.
pub(crate) fn record_outcome(
    app: &App,
    h: &HealthCheckSpec,
    failures: &mut u32,
    outcome: HealthOutcome,
    since: Duration,
) -> Option<String> {
    let healthy = outcome.is_healthy();
    let mut episode = None;
    app.set(|s| {
        if healthy {
            *failures = 0;
            s.healthy_streak += 1;
            s.state = AppState::Healthy;
        } else {
            s.healthy_streak = 0;
            if since >= h.start_period {
                *failures += 1;
                if *failures >= h.retries.max(1) {
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
    episode
}
