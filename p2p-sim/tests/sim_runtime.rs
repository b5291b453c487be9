#![allow(clippy::unwrap_used)]
//! The simulated process model beyond the runtime conformance suite
//! (`tests/runtime_conformance.rs`: restart modes, backoff and crash
//! loops, health states, log tail and follow, stop), checked in paused
//! tokio time: exact timings, startup and start periods, recovery after an
//! unhealthy episode, the script book, the runtime's own log lines,
//! lagging followers, shutdown, the health checker, and determinism.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use p2p_core::{
    AppSpec, AppState, AppStatus, ExitStatus, HealthCheckSpec, HealthChecker, HealthOutcome,
    HealthProbe, LogSelection, LogStream, ProbeTarget, ResourceLimits, RestartMode, RestartPolicy,
    Runtime, Timestamp,
};
use p2p_sim::SimClock;
use p2p_sim::process::{LOG_LINES_KEPT, Script, ScriptBook, SimRuntime};
use tokio::time::Instant;

const EPOCH_MS: u64 = SimClock::DEFAULT_START_MS;

fn runtime_with_seed(book: &ScriptBook, seed: u64) -> SimRuntime {
    SimRuntime::new(book.clone(), Arc::new(SimClock::new(EPOCH_MS)), seed)
}

fn runtime(book: &ScriptBook) -> SimRuntime {
    runtime_with_seed(book, 7)
}

fn policy(mode: RestartMode) -> RestartPolicy {
    RestartPolicy {
        mode,
        initial_backoff: Duration::from_secs(1),
        max_backoff: Duration::from_secs(60),
        stable_after: Duration::from_secs(60),
        max_restarts: 3,
    }
}

fn http_check(interval_secs: u64, retries: u32, start_period_secs: u64) -> HealthCheckSpec {
    HealthCheckSpec {
        interval: Duration::from_secs(interval_secs),
        retries,
        start_period: Duration::from_secs(start_period_secs),
        ..HealthCheckSpec::new(HealthProbe::Http {
            url: "http://127.0.0.1:8080/health".to_string(),
        })
    }
}

/// `name` 1.0.0, checked over HTTP every second (3 retries), restarted on
/// failure with a 1 s initial backoff and at most 3 restarts in a row.
fn spec(name: &str) -> AppSpec {
    AppSpec {
        health: Some(http_check(1, 3, 0)),
        restart: policy(RestartMode::OnFailure),
        ..AppSpec::new(name, "1.0.0", "./app")
    }
}

async fn at(origin: Instant, secs: f64) {
    tokio::time::sleep_until(origin + Duration::from_secs_f64(secs)).await;
}

/// Samples `name` every `step` until `until` seconds after `origin`,
/// returning every distinct status observed (ignoring health details).
async fn distinct_statuses(
    rt: &dyn Runtime,
    name: &str,
    origin: Instant,
    until: f64,
    step: Duration,
) -> Vec<AppStatus> {
    let mut seen: Vec<AppStatus> = Vec::new();
    while origin.elapsed() < Duration::from_secs_f64(until) {
        let s = rt.status(name).await.unwrap();
        let changed = seen.last().is_none_or(|last| {
            (last.state, last.restarts, last.pid, last.exit) != (s.state, s.restarts, s.pid, s.exit)
        });
        if changed {
            seen.push(s);
        }
        tokio::time::sleep(step).await;
    }
    seen
}

fn lines(lines: &[p2p_core::Result<p2p_core::LogLine>]) -> Vec<String> {
    lines
        .iter()
        .map(|l| l.as_ref().unwrap().line.clone())
        .collect()
}

fn selection(stream: LogStream, tail: Option<usize>, follow: bool) -> LogSelection {
    LogSelection {
        stream,
        tail,
        follow,
    }
}

#[tokio::test(start_paused = true)]
async fn healthy_app_becomes_healthy_and_its_streak_grows() {
    let origin = Instant::now();
    let rt = runtime(&ScriptBook::new());
    let started = rt.start(spec("web")).await.unwrap();
    assert_eq!(started.state, AppState::Starting);
    assert!(started.pid.is_some());
    assert_eq!(started.started_at, Some(Timestamp(EPOCH_MS)));
    assert_eq!(started.limits_applied, None);

    at(origin, 0.5).await;
    assert_eq!(rt.status("web").await.unwrap().state, AppState::Starting);

    at(origin, 1.5).await;
    let s = rt.status("web").await.unwrap();
    assert_eq!(s.state, AppState::Healthy);
    assert_eq!(s.health, Some(HealthOutcome::Healthy));
    assert_eq!(s.healthy_streak, 1);

    at(origin, 10.5).await;
    let s = rt.status("web").await.unwrap();
    assert_eq!(s.state, AppState::Healthy);
    assert_eq!(s.healthy_streak, 10);
    assert_eq!((s.restarts, s.pid), (0, started.pid));
}

#[tokio::test(start_paused = true)]
async fn without_a_health_check_a_started_app_is_running() {
    let origin = Instant::now();
    let rt = runtime(&ScriptBook::new());
    let plain = AppSpec::new("worker", "1.0.0", "./worker");
    rt.start(plain).await.unwrap();
    at(origin, 0.5).await;
    assert_eq!(rt.status("worker").await.unwrap().state, AppState::Starting);
    at(origin, 3600.0).await;
    let s = rt.status("worker").await.unwrap();
    assert_eq!(s.state, AppState::Running);
    assert_eq!((s.health, s.healthy_streak), (None, 0));
}

/// In virtual time the backoff is exact: each delay within the policy's
/// ±20% jitter of 1 s, 2 s, 4 s, and every exit logged on stderr. (That
/// delays grow and the loop ends `Failed`: the runtime conformance suite.)
#[tokio::test(start_paused = true)]
async fn crash_loop_delays_stay_within_the_jitter_and_every_exit_is_logged() {
    let origin = Instant::now();
    let book = ScriptBook::new();
    book.set(
        "web",
        "1.0.0",
        Script::exits_after(3, Duration::from_secs(5)),
    );
    let rt = runtime(&book);
    rt.start(AppSpec {
        health: None,
        ..spec("web")
    })
    .await
    .unwrap();

    let seen = distinct_statuses(&rt, "web", origin, 60.0, Duration::from_millis(50)).await;
    assert!(seen.iter().any(|s| s.state == AppState::BackingOff
        && s.reason.as_deref().unwrap().contains("restarting in")));

    // Each instance runs 5 s; the gap between starts beyond that is the backoff.
    let mut starts: Vec<u64> = seen
        .iter()
        .filter_map(|s| s.started_at.map(Timestamp::as_millis))
        .collect();
    starts.dedup();
    assert_eq!(starts.len(), 4, "{seen:#?}");
    let delays: Vec<u64> = starts.windows(2).map(|w| w[1] - w[0] - 5_000).collect();
    for (delay, base) in delays.iter().zip([1_000u64, 2_000, 4_000]) {
        assert!(
            (base * 8 / 10..=base * 12 / 10).contains(delay),
            "{delays:?}"
        );
    }
    assert_eq!(rt.status("web").await.unwrap().state, AppState::Failed);

    let stderr = rt
        .logs("web", selection(LogStream::Stderr, None, false))
        .await
        .unwrap()
        .collect::<Vec<_>>()
        .await;
    assert_eq!(lines(&stderr), vec!["exited with code 3"; 4]);
}

#[tokio::test(start_paused = true)]
async fn unhealthy_app_is_restarted_once_per_episode() {
    let origin = Instant::now();
    let book = ScriptBook::new();
    book.set(
        "web",
        "1.0.0",
        Script::unhealthy_after(Duration::from_secs(10)),
    );
    let rt = runtime(&book);
    let first = rt.start(spec("web")).await.unwrap();

    // Probes fail from 10 s; the third failure, at 12 s, ends the episode
    // with a kill and one restart after a ~1 s backoff.
    let seen = distinct_statuses(&rt, "web", origin, 24.5, Duration::from_millis(100)).await;
    assert!(seen.iter().all(|s| s.restarts <= 1), "{seen:#?}");
    let killed = seen
        .iter()
        .find(|s| s.state == AppState::BackingOff)
        .unwrap();
    assert_eq!(killed.exit, Some(ExitStatus::Signal(9)));
    assert!(
        killed.reason.as_deref().unwrap().contains("health"),
        "{killed:?}"
    );

    let s = rt.status("web").await.unwrap();
    assert_eq!(s.restarts, 1);
    assert_ne!(s.pid, first.pid);

    // The second instance turns unhealthy 12 s after its start, ~25 s.
    at(origin, 37.0).await;
    let s = rt.status("web").await.unwrap();
    assert_eq!((s.state, s.restarts), (AppState::Healthy, 2));
}

#[tokio::test(start_paused = true)]
async fn unhealthy_app_under_never_policy_keeps_running_unhealthy() {
    let origin = Instant::now();
    let book = ScriptBook::new();
    book.set(
        "web",
        "1.0.0",
        Script::unhealthy_after(Duration::from_secs(10)),
    );
    let rt = runtime(&book);
    let first = rt
        .start(AppSpec {
            restart: policy(RestartMode::Never),
            ..spec("web")
        })
        .await
        .unwrap();
    at(origin, 11.5).await;
    // Two failures so far: still healthy by the check's rules, streak broken.
    let s = rt.status("web").await.unwrap();
    assert_eq!((s.state, s.healthy_streak), (AppState::Healthy, 0));
    assert!(matches!(s.health, Some(HealthOutcome::Unhealthy(_))));
    at(origin, 3600.0).await;
    let s = rt.status("web").await.unwrap();
    assert_eq!(s.state, AppState::Unhealthy);
    assert_eq!((s.restarts, s.pid), (0, first.pid));
}

#[tokio::test(start_paused = true)]
async fn slow_start_becomes_healthy_after_its_delay() {
    let origin = Instant::now();
    let book = ScriptBook::new();
    book.set("web", "1.0.0", Script::slow_start(Duration::from_secs(30)));
    let rt = runtime(&book);
    rt.start(AppSpec {
        health: Some(http_check(5, 3, 60)),
        ..spec("web")
    })
    .await
    .unwrap();
    // Five failed probes inside the start period do not count.
    at(origin, 29.0).await;
    let s = rt.status("web").await.unwrap();
    assert_eq!(
        (s.state, s.healthy_streak, s.restarts),
        (AppState::Starting, 0, 0)
    );
    assert!(matches!(s.health, Some(HealthOutcome::Unhealthy(_))));
    at(origin, 31.0).await;
    let s = rt.status("web").await.unwrap();
    assert_eq!((s.state, s.healthy_streak), (AppState::Healthy, 1));
}

#[tokio::test(start_paused = true)]
async fn stopping_a_backing_off_app_cancels_its_restart() {
    let origin = Instant::now();
    let book = ScriptBook::new();
    book.set("web", "1.0.0", Script::fails_to_start(1));
    let rt = runtime(&book);
    rt.start(AppSpec {
        health: None,
        ..spec("web")
    })
    .await
    .unwrap();
    at(origin, 0.1).await;
    assert_eq!(rt.status("web").await.unwrap().state, AppState::BackingOff);
    let s = rt.stop("web").await.unwrap();
    assert_eq!(
        (s.state, s.exit),
        (AppState::Stopped, Some(ExitStatus::Code(1)))
    );
    at(origin, 600.0).await;
    assert_eq!(rt.status("web").await.unwrap(), s);
}

#[tokio::test(start_paused = true)]
async fn list_is_sorted_and_reports_simulated_limits() {
    let rt = runtime(&ScriptBook::new());
    for name in ["web", "api", "db"] {
        rt.start(spec(name)).await.unwrap();
    }
    let limited = rt
        .start(AppSpec {
            limits: ResourceLimits {
                memory_bytes: Some(64 << 20),
                cpu_millis: None,
            },
            ..spec("cache")
        })
        .await
        .unwrap();
    assert_eq!(limited.limits_applied.as_deref(), Some("simulated"));
    let names: Vec<String> = rt
        .list()
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.name)
        .collect();
    assert_eq!(names, ["api", "cache", "db", "web"]);
}

#[tokio::test(start_paused = true)]
async fn book_changes_apply_from_the_next_restart() {
    let origin = Instant::now();
    let book = ScriptBook::new();
    book.set(
        "web",
        "1.0.0",
        Script::exits_after(1, Duration::from_secs(5)),
    );
    let rt = runtime(&book);
    rt.start(spec("web")).await.unwrap();
    at(origin, 5.5).await;
    assert_eq!(rt.status("web").await.unwrap().state, AppState::BackingOff);
    book.set("web", "1.0.0", Script::healthy());
    at(origin, 3600.0).await;
    let s = rt.status("web").await.unwrap();
    assert_eq!((s.state, s.restarts), (AppState::Healthy, 1));
}

#[tokio::test(start_paused = true)]
async fn logs_tail_respects_stream_and_count() {
    let origin = Instant::now();
    let book = ScriptBook::new();
    book.set(
        "web",
        "1.0.0",
        Script::exits_after(3, Duration::from_millis(10_500))
            .with_logs_every(Duration::from_secs(1)),
    );
    let rt = runtime(&book);
    rt.start(AppSpec {
        restart: policy(RestartMode::Never),
        ..spec("web")
    })
    .await
    .unwrap();
    at(origin, 20.0).await;

    let read = |stream, tail| {
        let rt = &rt;
        async move {
            let got = rt
                .logs("web", selection(stream, tail, false))
                .await
                .unwrap()
                .collect::<Vec<_>>()
                .await;
            lines(&got)
        }
    };
    let all = read(LogStream::Both, None).await;
    assert_eq!(all.len(), 13, "{all:?}");
    assert_eq!(all[0], "starting web 1.0.0");
    assert_eq!(all[1], "web 1.0.0 ready");
    assert_eq!(
        read(LogStream::Both, Some(3)).await,
        [
            "web 1.0.0 heartbeat 9",
            "web 1.0.0 heartbeat 10",
            "exited with code 3"
        ]
    );
    assert_eq!(
        read(LogStream::Stdout, Some(2)).await,
        ["web 1.0.0 heartbeat 9", "web 1.0.0 heartbeat 10"]
    );
    assert_eq!(read(LogStream::Stderr, None).await, ["exited with code 3"]);
    assert!(read(LogStream::Both, Some(0)).await.is_empty());
}

#[tokio::test(start_paused = true)]
async fn lagging_follower_loses_lines_but_never_slows_the_app() {
    let origin = Instant::now();
    let book = ScriptBook::new();
    book.set(
        "web",
        "1.0.0",
        Script::healthy().with_logs_every(Duration::from_millis(10)),
    );
    let rt = runtime(&book);
    rt.start(spec("web")).await.unwrap();
    let mut follower = rt
        .logs("web", selection(LogStream::Stdout, Some(0), true))
        .await
        .unwrap();

    at(origin, 10.005).await;
    let kept = rt
        .logs("web", selection(LogStream::Both, None, false))
        .await
        .unwrap()
        .collect::<Vec<_>>()
        .await;
    // 2 startup lines and 1000 heartbeats were written; the oldest fell out.
    assert_eq!(kept.len(), LOG_LINES_KEPT);
    assert_eq!(lines(&kept).last().unwrap(), "web 1.0.0 heartbeat 1000");

    let first = follower.next().await.unwrap().unwrap().line;
    assert_ne!(first, "web 1.0.0 ready");
    rt.remove("web").await.unwrap();
    let rest = follower.collect::<Vec<_>>().await;
    assert!(rest.len() < 1000, "{}", rest.len());
    assert_eq!(lines(&rest).last().unwrap(), "web 1.0.0 heartbeat 1000");
}

#[tokio::test(start_paused = true)]
async fn shutdown_kills_everything_and_nothing_runs_after() {
    let origin = Instant::now();
    let book = ScriptBook::new();
    book.set(
        "web",
        "1.0.0",
        Script::healthy().with_logs_every(Duration::from_secs(1)),
    );
    book.set(
        "db",
        "1.0.0",
        Script::exits_after(1, Duration::from_secs(5)),
    );
    let rt = runtime(&book);
    rt.start(spec("web")).await.unwrap();
    rt.start(spec("db")).await.unwrap();
    let follower = rt
        .logs("web", selection(LogStream::Both, None, true))
        .await
        .unwrap();
    let checker = rt.health_checker();
    let target = ProbeTarget {
        name: "web".to_string(),
        version: "1.0.0".to_string(),
        pid: None,
    };
    let probe = http_check(1, 3, 0);

    at(origin, 5.5).await;
    assert!(checker.probe(&target, &probe).await.is_healthy());
    assert_eq!(rt.status("db").await.unwrap().state, AppState::BackingOff);
    rt.shutdown();

    let after = rt.list().await.unwrap();
    assert!(
        after
            .iter()
            .all(|s| s.state == AppState::Stopped && s.pid.is_none())
    );
    let web = rt.status("web").await.unwrap();
    assert_eq!(web.exit, Some(ExitStatus::Signal(9)));
    assert!(web.reason.as_deref().unwrap().contains("shut down"));
    // The follower ends instead of waiting for lines that will never come.
    let followed = follower.collect::<Vec<_>>().await;
    assert_eq!(origin.elapsed(), Duration::from_millis(5_500));
    let log_len = followed.len();

    at(origin, 3600.0).await;
    assert_eq!(rt.list().await.unwrap(), after);
    let kept = rt
        .logs("web", selection(LogStream::Both, None, false))
        .await
        .unwrap()
        .collect::<Vec<_>>()
        .await;
    assert_eq!(kept.len(), log_len);
    assert!(!checker.probe(&target, &probe).await.is_healthy());

    // Like a rebooted machine, the runtime can start apps again.
    rt.start(spec("web")).await.unwrap();
    at(origin, 3602.0).await;
    assert_eq!(rt.status("web").await.unwrap().state, AppState::Healthy);
}

#[tokio::test(start_paused = true)]
async fn dropping_the_runtime_ends_followers_and_probes() {
    let book = ScriptBook::new();
    book.set(
        "web",
        "1.0.0",
        Script::healthy().with_logs_every(Duration::from_secs(1)),
    );
    let rt = runtime(&book);
    rt.start(spec("web")).await.unwrap();
    let follower = rt
        .logs("web", selection(LogStream::Both, Some(0), true))
        .await
        .unwrap();
    let checker = rt.health_checker();
    drop(rt);
    let followed = follower.collect::<Vec<_>>().await;
    assert_eq!(lines(&followed), ["killed (SIGKILL): runtime shut down"]);
    let target = ProbeTarget {
        name: "web".to_string(),
        version: "1.0.0".to_string(),
        pid: None,
    };
    let outcome = checker
        .probe(&target, &HealthCheckSpec::new(HealthProbe::Process))
        .await;
    assert!(!outcome.is_healthy());
}

#[tokio::test(start_paused = true)]
async fn health_checker_answers_from_the_script_and_the_process_table() {
    let origin = Instant::now();
    let book = ScriptBook::new();
    book.set(
        "web",
        "1.0.0",
        Script::unhealthy_after(Duration::from_secs(10)),
    );
    let rt = runtime(&book);
    let started = rt
        .start(AppSpec {
            health: None,
            restart: policy(RestartMode::Never),
            ..spec("web")
        })
        .await
        .unwrap();
    let checker = rt.health_checker();
    let target = |name: &str, pid| ProbeTarget {
        name: name.to_string(),
        version: "1.0.0".to_string(),
        pid,
    };
    let http = http_check(1, 3, 0);
    let process = HealthCheckSpec::new(HealthProbe::Process);

    assert!(
        !checker
            .probe(&target("web", started.pid), &http)
            .await
            .is_healthy()
    );
    at(origin, 5.0).await;
    assert!(
        checker
            .probe(&target("web", started.pid), &http)
            .await
            .is_healthy()
    );
    assert!(
        !checker
            .probe(&target("web", Some(1)), &http)
            .await
            .is_healthy()
    );
    assert!(
        !checker
            .probe(&target("nope", None), &http)
            .await
            .is_healthy()
    );
    at(origin, 11.0).await;
    assert!(
        !checker
            .probe(&target("web", None), &http)
            .await
            .is_healthy()
    );
    assert!(
        checker
            .probe(&target("web", None), &process)
            .await
            .is_healthy()
    );
    rt.stop("web").await.unwrap();
    assert!(
        !checker
            .probe(&target("web", None), &process)
            .await
            .is_healthy()
    );
}

#[tokio::test(start_paused = true)]
async fn same_seed_gives_same_pids_and_backoff() {
    async fn run(seed: u64) -> Vec<AppStatus> {
        let origin = Instant::now();
        let book = ScriptBook::new();
        book.set(
            "web",
            "1.0.0",
            Script::exits_after(3, Duration::from_secs(5)),
        );
        let rt = runtime_with_seed(&book, seed);
        rt.start(spec("web")).await.unwrap();
        distinct_statuses(&rt, "web", origin, 60.0, Duration::from_millis(10)).await
    }
    let a = run(42).await;
    let b = run(42).await;
    let c = run(43).await;
    // Wall time moved on between runs; everything else must match.
    let strip = |v: &[AppStatus]| -> Vec<_> {
        v.iter()
            .map(|s| (s.state, s.pid, s.restarts, s.exit, s.reason.clone()))
            .collect()
    };
    assert_eq!(strip(&a), strip(&b));
    assert_ne!(strip(&a), strip(&c));
}
