//! The conformance suite every [`Runtime`] must pass.
//!
//! Each case is a generic `async fn` over a [`TestRuntime`], which an
//! implementation provides in a few lines: the runtime under test, and how
//! to make an app of that runtime that behaves as a [`Behaviour`] says
//! (exits with a code after a while, never passes its health probe, writes
//! numbered lines, ignores the graceful stop signal, ...). The cases set
//! the restart policy, the health-check schedule and the stop grace on the
//! spec they get back, and drive the runtime only through `&dyn Runtime`,
//! as the agent does. [`runtime_conformance_tests!`](crate::runtime_conformance_tests)
//! expands one test per case with the attribute the implementation gives,
//! so that a simulated runtime runs in paused time and a real one on a
//! multi-thread runtime. An implementation's whole test file:
//!
//! ```text
//! p2p_core::runtime_conformance_tests!(
//!     MyTestRuntime::new(),
//!     #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
//! );
//! ```
//!
//! with `MyTestRuntime` implementing [`TestRuntime`]: `runtime`, `app`
//! (one `match` over [`Behaviour`]), `line_number`, and `shutdown` if the
//! runtime needs one; the macro calls it after every case, also one that
//! failed. A runtime is done when the suite passes.
//!
//! Time: every wait is bounded by [`TestRuntime::step`] (30 s by default),
//! generous for real processes on a loaded machine. Cases assert that
//! things happen within that bound, in order, or not before a lower bound
//! (a backoff, a grace period); never that something was fast, so a slow
//! machine cannot fail a correct runtime.

#![allow(clippy::unwrap_used, missing_docs)]

use std::any::Any;
use std::future::Future;
use std::time::Duration;

use async_trait::async_trait;
use futures::{FutureExt, StreamExt};
use tokio::time::Instant;

use crate::error::Error;
use crate::runtime::{
    AppSpec, AppState, AppStatus, ExitStatus, HealthCheckSpec, HealthOutcome, LogLine, LogLines,
    LogSelection, LogStream, RestartMode, RestartPolicy, Runtime,
};

/// How an app made by [`TestRuntime::app`] behaves. Every app runs until
/// it exits by itself or is stopped, and ends at once on the graceful stop
/// signal unless it is [`Behaviour::IgnoresStop`].
///
/// Health: the spec's health check (the suite sets its schedule, the
/// implementation its probe) passes while the app is healthy, which every
/// behaviour is, soon after it starts, except [`Behaviour::NeverHealthy`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Behaviour {
    /// Starts and runs until stopped.
    Healthy,
    /// Runs for `after`, then exits with `code`; every instance again.
    ExitsAfter {
        /// The exit code: 0 for a clean exit, anything else for a crash.
        code: i32,
        /// How long each instance runs.
        after: Duration,
    },
    /// Starts and runs until stopped, but its health probe never passes.
    NeverHealthy,
    /// Writes numbered lines on stdout, one every `every`, numbered from 1;
    /// [`TestRuntime::line_number`] reads the number back.
    WritesLines {
        /// Time between lines.
        every: Duration,
    },
    /// Ignores the graceful stop signal (a process with `SIGTERM`
    /// ignored): only the forced stop after `stop_grace` ends it. Its
    /// health probe passes once it ignores the signal. Asked for only when
    /// [`TestRuntime::can_ignore_stop`] is true.
    IgnoresStop,
}

/// A [`Runtime`] under test: the runtime, and apps with a behaviour.
#[async_trait]
pub trait TestRuntime: Send + Sync + 'static {
    /// The runtime under test. The suite starts apps from [`app`](Self::app)
    /// on it.
    fn runtime(&self) -> &dyn Runtime;

    /// A spec named `name` whose app behaves as `behaviour` on this
    /// runtime, with a health check whose probe passes while the app is
    /// healthy (the suite sets the schedule, or removes the check).
    /// Other fields may keep [`AppSpec::new`]'s defaults: the suite sets
    /// what a case depends on.
    fn app(&self, name: &str, behaviour: &Behaviour) -> AppSpec;

    /// The number of a line written by a [`Behaviour::WritesLines`] app;
    /// `None` for any other line (the runtime's own, or the app's others).
    fn line_number(&self, line: &str) -> Option<u64>;

    /// Whether apps can ignore the graceful stop signal. False for a
    /// runtime whose apps always end on it (the simulator's); the case
    /// about the forced stop after the grace period is then skipped.
    fn can_ignore_stop(&self) -> bool {
        true
    }

    /// The bound on every wait in the suite.
    fn step(&self) -> Duration {
        Duration::from_secs(30)
    }

    /// Called after every case, also after one that failed: stop what is
    /// left running, free what the runtime holds.
    async fn shutdown(&self) {}
}

/// Expands one test per runtime conformance case. `$make` is an expression
/// giving a [`TestRuntime`], evaluated afresh in every test; the attributes
/// (`#[tokio::test(start_paused = true)]` for a simulated runtime) go on
/// every test.
#[macro_export]
macro_rules! runtime_conformance_tests {
    ($make:expr, $(#[$m:meta])+) => {
        $crate::runtime_conformance_tests!(@cases $make, [$(#[$m])+],
            a_started_app_is_live_and_its_name_cannot_start_twice
            stop_ends_an_app_for_good_and_it_can_start_again
            unknown_names_are_not_found
            never_leaves_an_exited_app_stopped_with_its_exit_code
            on_failure_restarts_a_crash_but_not_a_clean_exit
            always_restarts_even_a_clean_exit
            a_crash_loop_backs_off_with_growing_delays_then_fails
            a_healthy_app_becomes_healthy_and_its_streak_grows
            an_unhealthy_app_under_never_keeps_running_unhealthy
            an_unhealthy_app_is_restarted_once_per_episode_until_the_crash_loop_limit
            lines_an_app_writes_come_back_through_a_tail_in_order
            follow_delivers_new_lines_in_order_until_the_app_is_removed
            stop_ends_a_well_behaved_app_with_the_graceful_signal_before_its_grace
            stop_kills_an_app_that_ignores_the_graceful_signal_after_its_grace
        );
    };
    (@cases $make:expr, $attrs:tt, ) => {};
    (@cases $make:expr, $attrs:tt, $case:ident $($rest:ident)*) => {
        $crate::runtime_conformance_tests!(@one $make, $attrs, $case);
        $crate::runtime_conformance_tests!(@cases $make, $attrs, $($rest)*);
    };
    (@one $make:expr, [$(#[$m:meta])+], $case:ident) => {
        $(#[$m])+
        async fn $case() {
            let under_test = $make;
            let outcome = $crate::conformance::runtime::catch_panic(
                $crate::conformance::runtime::$case(&under_test),
            )
            .await;
            $crate::conformance::runtime::TestRuntime::shutdown(&under_test).await;
            if let Err(panic) = outcome {
                ::std::panic::resume_unwind(panic);
            }
        }
    };
}

/// Runs a case, catching its panic so that the macro can shut the runtime
/// down before the test fails.
#[doc(hidden)]
pub async fn catch_panic(case: impl Future<Output = ()>) -> Result<(), Box<dyn Any + Send>> {
    std::panic::AssertUnwindSafe(case).catch_unwind().await
}

/// How often the cases look at a status.
const POLL: Duration = Duration::from_millis(50);

/// A restart policy for the cases: `mode`, backoff from 500 ms, at most
/// `max_restarts` restarts in a row, no stable run resets within a case.
fn policy(mode: RestartMode, max_restarts: u32) -> RestartPolicy {
    RestartPolicy {
        mode,
        initial_backoff: Duration::from_millis(500),
        max_backoff: Duration::from_secs(60),
        stable_after: Duration::from_secs(3600),
        max_restarts,
    }
}

/// The app's spec with `policy` and no health check.
fn plain<T: TestRuntime>(t: &T, name: &str, b: &Behaviour, restart: RestartPolicy) -> AppSpec {
    AppSpec {
        health: None,
        restart,
        ..t.app(name, b)
    }
}

/// The app's spec with `policy` and its health check probed every 500 ms,
/// `retries` failures in a row making it unhealthy.
fn checked<T: TestRuntime>(
    t: &T,
    name: &str,
    b: &Behaviour,
    restart: RestartPolicy,
    retries: u32,
) -> AppSpec {
    let spec = t.app(name, b);
    let probe = spec
        .health
        .clone()
        .expect("TestRuntime::app must give a health check")
        .probe;
    AppSpec {
        health: Some(HealthCheckSpec {
            probe,
            interval: Duration::from_millis(500),
            // Generous: a probe may be a process of its own on a busy host.
            timeout: Duration::from_secs(10),
            retries,
            start_period: Duration::ZERO,
        }),
        restart,
        ..spec
    }
}

async fn start(t: &dyn Runtime, spec: AppSpec) -> AppStatus {
    let name = spec.name.clone();
    match t.start(spec).await {
        Ok(s) => s,
        Err(e) => panic!("conformance: starting {name}: {e}"),
    }
}

async fn status(rt: &dyn Runtime, name: &str) -> AppStatus {
    match rt.status(name).await {
        Ok(s) => s,
        Err(e) => panic!("conformance: status of {name}: {e}"),
    }
}

async fn within<T>(d: Duration, what: &str, f: impl Future<Output = T>) -> T {
    match tokio::time::timeout(d, f).await {
        Ok(v) => v,
        Err(_) => panic!("conformance: {what} did not happen within {d:?}"),
    }
}

/// Polls `name` until `want` holds, within `bound`; the first status that
/// satisfies it.
async fn wait_until(
    rt: &dyn Runtime,
    name: &str,
    bound: Duration,
    what: &str,
    want: impl Fn(&AppStatus) -> bool,
) -> AppStatus {
    let deadline = Instant::now() + bound;
    loop {
        let s = status(rt, name).await;
        if want(&s) {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "conformance: {name}: {what} did not happen within {bound:?}; last status {s:?}"
        );
        tokio::time::sleep(POLL).await;
    }
}

/// Polls `name` for `d` and checks `hold` on every status seen.
async fn holds_for(
    rt: &dyn Runtime,
    name: &str,
    d: Duration,
    what: &str,
    hold: impl Fn(&AppStatus) -> bool,
) {
    let end = Instant::now() + d;
    while Instant::now() < end {
        let s = status(rt, name).await;
        assert!(hold(&s), "conformance: {name}: {what}; status {s:?}");
        tokio::time::sleep(POLL).await;
    }
}

/// Every status of `name` that differs from the one before in state, pid
/// or start, from now until `done` holds (within `bound`).
async fn history(
    rt: &dyn Runtime,
    name: &str,
    bound: Duration,
    what: &str,
    done: impl Fn(&AppStatus) -> bool,
) -> Vec<AppStatus> {
    let deadline = Instant::now() + bound;
    let mut seen: Vec<AppStatus> = Vec::new();
    loop {
        let s = status(rt, name).await;
        let changed = seen.last().is_none_or(|l| {
            (l.state, l.pid, l.started_at, l.restarts) != (s.state, s.pid, s.started_at, s.restarts)
        });
        let finished = done(&s);
        if changed {
            seen.push(s);
        }
        if finished {
            return seen;
        }
        assert!(
            Instant::now() < deadline,
            "conformance: {name}: {what} did not happen within {bound:?}; seen {seen:#?}"
        );
        tokio::time::sleep(POLL).await;
    }
}

/// The distinct start times of the instances in `seen`, in order.
fn starts(seen: &[AppStatus]) -> Vec<u64> {
    let mut v: Vec<u64> = seen
        .iter()
        .filter_map(|s| s.started_at.map(|t| t.as_millis()))
        .collect();
    v.dedup();
    v
}

fn selection(stream: LogStream, tail: Option<usize>, follow: bool) -> LogSelection {
    LogSelection {
        stream,
        tail,
        follow,
    }
}

async fn read_logs(rt: &dyn Runtime, name: &str, sel: LogSelection, s: Duration) -> Vec<LogLine> {
    let lines = rt
        .logs(name, sel.clone())
        .await
        .unwrap_or_else(|e| panic!("conformance: logs of {name} ({sel:?}): {e}"));
    within(s, "reading a log tail", lines.collect::<Vec<_>>())
        .await
        .into_iter()
        .map(|l| l.unwrap_or_else(|e| panic!("conformance: a log line of {name}: {e}")))
        .collect()
}

/// The numbers of the numbered lines among `lines`, in order.
fn numbers<T: TestRuntime>(t: &T, lines: &[LogLine]) -> Vec<u64> {
    lines
        .iter()
        .filter_map(|l| t.line_number(&l.line))
        .collect()
}

fn assert_consecutive(ns: &[u64], what: &str) {
    assert!(
        ns.windows(2).all(|w| w[1] == w[0] + 1),
        "conformance: {what}: lines must come in order, none lost or repeated: {ns:?}"
    );
}

/// Starting an app gives a live instance with a pid, under its name and
/// version; a second start of that name while it is live fails with
/// `AlreadyExists`, and `list` shows it once.
pub async fn a_started_app_is_live_and_its_name_cannot_start_twice<T: TestRuntime>(t: &T) {
    let rt = t.runtime();
    let spec = plain(
        t,
        "web",
        &Behaviour::Healthy,
        policy(RestartMode::OnFailure, 3),
    );
    let s = start(rt, spec.clone()).await;
    assert!(s.state.is_live(), "a started app is live: {s:?}");
    assert!(s.pid.is_some(), "a live app has a pid: {s:?}");
    assert_eq!(
        (s.name.as_str(), s.version.as_str()),
        ("web", spec.version.as_str())
    );
    match rt.start(spec).await {
        Err(Error::AlreadyExists { .. }) => {}
        other => panic!("second start of a live app: expected AlreadyExists, got {other:?}"),
    }
    let listed: Vec<String> = rt
        .list()
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.name)
        .collect();
    assert_eq!(listed, ["web"]);
    let again = status(rt, "web").await;
    assert_eq!(
        again.pid, s.pid,
        "the refused start must not touch the running instance"
    );
}

/// `stop` leaves the app `Stopped` without a pid, and its restart policy
/// does not bring it back; stopping again is fine; a stopped app starts
/// again as a new instance, `restart` replaces the instance, and `remove`
/// forgets the app.
pub async fn stop_ends_an_app_for_good_and_it_can_start_again<T: TestRuntime>(t: &T) {
    let rt = t.runtime();
    let spec = plain(
        t,
        "web",
        &Behaviour::Healthy,
        policy(RestartMode::Always, 3),
    );
    let first = start(rt, spec.clone()).await;
    let stopped = within(t.step(), "stop", rt.stop("web")).await.unwrap();
    assert_eq!(stopped.state, AppState::Stopped, "{stopped:?}");
    assert_eq!(stopped.pid, None, "a stopped app has no pid: {stopped:?}");
    let again = within(t.step(), "second stop", rt.stop("web"))
        .await
        .expect("stopping a stopped app is not an error");
    assert_eq!(again.state, AppState::Stopped);
    // Several initial backoffs: a policy that applied would have restarted it.
    holds_for(
        rt,
        "web",
        Duration::from_secs(2),
        "the restart policy restarted a stopped app",
        |s| s.state == AppState::Stopped && s.pid.is_none(),
    )
    .await;

    let second = start(rt, spec).await;
    assert!(second.state.is_live(), "{second:?}");
    assert_ne!(second.pid, first.pid, "a new start is a new instance");
    assert_eq!(
        (second.restarts, second.exit),
        (0, None),
        "a new start begins afresh: {second:?}"
    );
    let third = within(t.step(), "restart", rt.restart("web"))
        .await
        .unwrap();
    assert!(
        third.state.is_live(),
        "restart leaves a live instance: {third:?}"
    );
    assert_ne!(third.pid, second.pid, "restart replaces the instance");

    within(t.step(), "remove", rt.remove("web")).await.unwrap();
    assert!(
        matches!(rt.status("web").await, Err(Error::NotFound { .. })),
        "a removed app is forgotten"
    );
    assert!(rt.list().await.unwrap().is_empty());
}

/// Every call naming an app the runtime does not know fails with
/// `NotFound`.
pub async fn unknown_names_are_not_found<T: TestRuntime>(t: &T) {
    let rt = t.runtime();
    let all = selection(LogStream::Both, None, false);
    let results = [
        ("status", rt.status("nope").await.map(drop)),
        ("stop", rt.stop("nope").await.map(drop)),
        ("restart", rt.restart("nope").await.map(drop)),
        ("remove", rt.remove("nope").await),
        ("logs", rt.logs("nope", all).await.map(drop)),
    ];
    for (call, r) in results {
        assert!(
            matches!(r, Err(Error::NotFound { .. })),
            "{call} of an unknown app: expected NotFound, got {r:?}"
        );
    }
}

/// Under `Never`, an app that exits is left `Stopped` with its exit code,
/// and stays so.
pub async fn never_leaves_an_exited_app_stopped_with_its_exit_code<T: TestRuntime>(t: &T) {
    let rt = t.runtime();
    let crash = Behaviour::ExitsAfter {
        code: 3,
        after: Duration::from_millis(500),
    };
    start(rt, plain(t, "job", &crash, policy(RestartMode::Never, 3))).await;
    let s = wait_until(rt, "job", t.step(), "stopping after its exit", |s| {
        s.state == AppState::Stopped
    })
    .await;
    assert_eq!(s.exit, Some(ExitStatus::Code(3)), "{s:?}");
    assert_eq!((s.restarts, s.pid), (0, None), "{s:?}");
    holds_for(
        rt,
        "job",
        Duration::from_secs(2),
        "a Never app was restarted",
        |s| s.state == AppState::Stopped && s.restarts == 0,
    )
    .await;
}

/// Under `OnFailure`, a non-zero exit is followed by a new instance and a
/// clean exit leaves the app `Stopped` with code 0.
pub async fn on_failure_restarts_a_crash_but_not_a_clean_exit<T: TestRuntime>(t: &T) {
    let rt = t.runtime();
    let after = Duration::from_millis(500);
    let on_failure = policy(RestartMode::OnFailure, 10);
    let crash = plain(
        t,
        "crash",
        &Behaviour::ExitsAfter { code: 3, after },
        on_failure,
    );
    let clean = plain(
        t,
        "clean",
        &Behaviour::ExitsAfter { code: 0, after },
        on_failure,
    );
    let first = start(rt, crash).await;
    start(rt, clean).await;

    let s = wait_until(rt, "crash", t.step(), "a restart after a crash", |s| {
        s.restarts >= 1 && s.state.is_live()
    })
    .await;
    assert_ne!(s.pid, first.pid, "a restart is a new instance");
    assert_eq!(
        s.exit,
        Some(ExitStatus::Code(3)),
        "exit keeps the last instance's end"
    );

    let s = wait_until(rt, "clean", t.step(), "stopping after a clean exit", |s| {
        s.state == AppState::Stopped
    })
    .await;
    assert_eq!(
        (s.exit, s.restarts),
        (Some(ExitStatus::Code(0)), 0),
        "{s:?}"
    );
    holds_for(
        rt,
        "clean",
        Duration::from_secs(2),
        "a clean exit was restarted under OnFailure",
        |s| s.state == AppState::Stopped && s.restarts == 0,
    )
    .await;
}

/// Under `Always`, even a clean exit is followed by a new instance.
pub async fn always_restarts_even_a_clean_exit<T: TestRuntime>(t: &T) {
    let rt = t.runtime();
    let clean = Behaviour::ExitsAfter {
        code: 0,
        after: Duration::from_millis(500),
    };
    let first = start(rt, plain(t, "job", &clean, policy(RestartMode::Always, 10))).await;
    let s = wait_until(rt, "job", t.step(), "a restart after a clean exit", |s| {
        s.restarts >= 1 && s.state.is_live()
    })
    .await;
    assert_ne!(s.pid, first.pid, "a restart is a new instance");
    assert_eq!(s.exit, Some(ExitStatus::Code(0)));
}

/// A crashing app waits out a backoff before each restart, `BackingOff`
/// with no pid; the delays grow (at least 0.8 x 500 ms, 1 s, 2 s: the
/// policy's exponential backoff less its jitter), and after
/// `max_restarts` restarts the app is `Failed`, saying it was a crash loop.
pub async fn a_crash_loop_backs_off_with_growing_delays_then_fails<T: TestRuntime>(t: &T) {
    const RUN_MS: u64 = 1000;
    let rt = t.runtime();
    let crash = Behaviour::ExitsAfter {
        code: 3,
        after: Duration::from_millis(RUN_MS),
    };
    let restart = policy(RestartMode::OnFailure, 3);
    start(rt, plain(t, "crasher", &crash, restart)).await;
    let seen = history(rt, "crasher", t.step() * 2, "failing the crash loop", |s| {
        s.state == AppState::Failed
    })
    .await;

    let end = seen.last().unwrap();
    assert_eq!(
        end.restarts, 3,
        "max_restarts restarts, then Failed: {seen:#?}"
    );
    assert_eq!(
        (end.exit, end.pid),
        (Some(ExitStatus::Code(3)), None),
        "{end:?}"
    );
    let reason = end.reason.as_deref().unwrap_or("");
    assert!(
        reason.contains("crash loop"),
        "the reason must name the crash loop: {end:?}"
    );

    let backing_off: Vec<&AppStatus> = seen
        .iter()
        .filter(|s| s.state == AppState::BackingOff)
        .collect();
    assert!(
        !backing_off.is_empty(),
        "no BackingOff between instances: {seen:#?}"
    );
    assert!(
        backing_off.iter().all(|s| s.pid.is_none()),
        "a backing-off app has no process: {seen:#?}"
    );

    let starts = starts(&seen);
    assert_eq!(
        starts.len(),
        4,
        "the first instance and three restarts: {seen:#?}"
    );
    // Each gap is a run of at least RUN_MS plus a backoff of at least 80%
    // of 500 ms, 1 s, 2 s. A constant backoff fails the third.
    let base = restart.initial_backoff.as_millis() as u64;
    for (i, gap) in starts.windows(2).map(|w| w[1] - w[0]).enumerate() {
        let least = RUN_MS + base * (1 << i) * 8 / 10;
        assert!(
            gap >= least,
            "restart {} came {gap} ms after the previous start, before {least} ms: \
             backoff must grow from initial_backoff (starts {starts:?})",
            i + 1
        );
    }
}

/// An app whose probe passes becomes `Healthy` with the passing result in
/// `health`, and its streak of passing probes grows, on one instance.
pub async fn a_healthy_app_becomes_healthy_and_its_streak_grows<T: TestRuntime>(t: &T) {
    let rt = t.runtime();
    let first = start(
        rt,
        checked(
            t,
            "web",
            &Behaviour::Healthy,
            policy(RestartMode::OnFailure, 3),
            3,
        ),
    )
    .await;
    let s = wait_until(rt, "web", t.step(), "becoming Healthy", |s| {
        s.state == AppState::Healthy
    })
    .await;
    assert_eq!(s.health, Some(HealthOutcome::Healthy), "{s:?}");
    let s = wait_until(rt, "web", t.step(), "a streak of 3 passing probes", |s| {
        s.healthy_streak >= 3
    })
    .await;
    assert_eq!(s.state, AppState::Healthy, "{s:?}");
    assert_eq!(
        (s.pid, s.restarts),
        (first.pid, 0),
        "a healthy app is left alone: {s:?}"
    );
}

/// Under `Never`, an app that fails `retries` probes in a row is
/// `Unhealthy`, with the failure in `health`, and keeps running: same
/// instance, no restart, no streak.
pub async fn an_unhealthy_app_under_never_keeps_running_unhealthy<T: TestRuntime>(t: &T) {
    let rt = t.runtime();
    let spec = checked(
        t,
        "web",
        &Behaviour::NeverHealthy,
        policy(RestartMode::Never, 3),
        3,
    );
    let first = start(rt, spec).await;
    let s = wait_until(rt, "web", t.step(), "becoming Unhealthy", |s| {
        s.state == AppState::Unhealthy
    })
    .await;
    match &s.health {
        Some(HealthOutcome::Unhealthy(why)) => assert!(!why.is_empty(), "say why the probe failed"),
        other => panic!("an unhealthy app's health must be the failure, got {other:?}"),
    }
    holds_for(
        rt,
        "web",
        Duration::from_secs(2),
        "an unhealthy app under Never must keep running unhealthy",
        |s| {
            s.state == AppState::Unhealthy
                && s.pid == first.pid
                && s.restarts == 0
                && s.healthy_streak == 0
        },
    )
    .await;
}

/// Under `OnFailure`, an unhealthy episode ends the instance and counts as
/// one failed exit: one restart per episode (so as many instances as
/// restarts plus one), the reason naming the health check, until the
/// crash-loop limit leaves the app `Failed`.
pub async fn an_unhealthy_app_is_restarted_once_per_episode_until_the_crash_loop_limit<
    T: TestRuntime,
>(
    t: &T,
) {
    let rt = t.runtime();
    let spec = checked(
        t,
        "web",
        &Behaviour::NeverHealthy,
        policy(RestartMode::OnFailure, 2),
        2,
    );
    start(rt, spec).await;
    let seen = history(
        rt,
        "web",
        t.step() * 2,
        "failing after unhealthy episodes",
        |s| s.state == AppState::Failed,
    )
    .await;
    let end = seen.last().unwrap();
    assert_eq!(end.restarts, 2, "{seen:#?}");
    assert!(
        end.reason.as_deref().unwrap_or("").contains("crash loop"),
        "the reason must name the crash loop: {end:?}"
    );
    assert_eq!(
        starts(&seen).len(),
        3,
        "one instance per episode, one restart each: {seen:#?}"
    );
    let backing_off: Vec<&AppStatus> = seen
        .iter()
        .filter(|s| s.state == AppState::BackingOff)
        .collect();
    assert!(
        !backing_off.is_empty(),
        "no BackingOff after an episode: {seen:#?}"
    );
    for s in backing_off {
        let reason = s.reason.as_deref().unwrap_or("");
        assert!(
            reason.contains("health"),
            "the reason must name the failing health check: {s:?}"
        );
    }
}

/// Lines an app writes on stdout come back from `logs` in order: all of
/// them, or the last `tail` lines of its output; each tagged with its
/// stream; a stderr selection holds none of them and `tail: Some(0)`
/// nothing.
pub async fn lines_an_app_writes_come_back_through_a_tail_in_order<T: TestRuntime>(t: &T) {
    let rt = t.runtime();
    let s = t.step();
    let talker = Behaviour::WritesLines {
        every: Duration::from_millis(200),
    };
    start(
        rt,
        plain(t, "talker", &talker, policy(RestartMode::Never, 0)),
    )
    .await;
    within(s, "five lines written", async {
        loop {
            let lines = read_logs(rt, "talker", selection(LogStream::Stdout, None, false), s).await;
            if numbers(t, &lines).last().is_some_and(|n| *n >= 5) {
                return;
            }
            tokio::time::sleep(POLL).await;
        }
    })
    .await;

    let stdout = |tail| selection(LogStream::Stdout, tail, false);
    let all = read_logs(rt, "talker", stdout(None), s).await;
    let ns = numbers(t, &all);
    assert_eq!(ns.first(), Some(&1), "the first line is kept: {all:?}");
    assert_consecutive(&ns, "all of stdout");
    assert!(all.iter().all(|l| l.stream == LogStream::Stdout), "{all:?}");

    // The app keeps writing: the tail must be 3 lines in a row of what
    // was written, none older than the last 3 written before it was read.
    let tail = read_logs(rt, "talker", stdout(Some(3)), s).await;
    let after = read_logs(rt, "talker", stdout(None), s).await;
    assert_eq!(tail.len(), 3, "a tail of 3 lines: {tail:?}");
    let at = after
        .windows(3)
        .position(|w| w == tail.as_slice())
        .unwrap_or_else(|| panic!("the tail {tail:?} is not 3 lines in a row of {after:?}"));
    assert!(
        at + 3 >= all.len(),
        "the tail {tail:?} is older than the last 3 lines already written: {all:?}"
    );

    let both = read_logs(rt, "talker", selection(LogStream::Both, None, false), s).await;
    let in_both: Vec<&LogLine> = both
        .iter()
        .filter(|l| t.line_number(&l.line).is_some())
        .collect();
    assert!(in_both.len() >= 5, "{both:?}");
    assert!(
        in_both.iter().all(|l| l.stream == LogStream::Stdout),
        "stdout lines tagged Stdout in Both: {both:?}"
    );
    assert_consecutive(&numbers(t, &both), "both streams");

    let err = read_logs(rt, "talker", selection(LogStream::Stderr, None, false), s).await;
    assert!(
        numbers(t, &err).is_empty(),
        "stdout lines in a stderr selection: {err:?}"
    );
    assert!(err.iter().all(|l| l.stream == LogStream::Stderr), "{err:?}");
    let none = read_logs(
        rt,
        "talker",
        selection(LogStream::Stdout, Some(0), false),
        s,
    )
    .await;
    assert!(none.is_empty(), "a tail of 0 is empty: {none:?}");
}

/// A follower gets new lines as they are written, in order, none lost
/// while it keeps up; a tail and the live lines after it neither overlap
/// nor leave a gap; removing the app ends every follower.
pub async fn follow_delivers_new_lines_in_order_until_the_app_is_removed<T: TestRuntime>(t: &T) {
    let rt = t.runtime();
    let s = t.step();
    let talker = Behaviour::WritesLines {
        every: Duration::from_millis(200),
    };
    start(
        rt,
        plain(t, "talker", &talker, policy(RestartMode::Never, 0)),
    )
    .await;

    let mut live = rt
        .logs("talker", selection(LogStream::Stdout, Some(0), true))
        .await
        .unwrap();
    let mut got = Vec::new();
    for _ in 0..3 {
        got.push(next_numbered(t, &mut live).await);
    }
    assert_consecutive(&got, "a follower");

    let mut from_tail = rt
        .logs("talker", selection(LogStream::Stdout, Some(1), true))
        .await
        .unwrap();
    let mut got = Vec::new();
    for _ in 0..3 {
        got.push(next_numbered(t, &mut from_tail).await);
    }
    assert_consecutive(&got, "a tail of 1 followed by live lines");

    within(s, "remove", rt.remove("talker")).await.unwrap();
    for f in [&mut live, &mut from_tail] {
        within(s, "a follower ending after remove", async {
            while f.next().await.is_some() {}
        })
        .await;
    }
}

/// The number of the next numbered line a follower gets.
async fn next_numbered<T: TestRuntime>(t: &T, follower: &mut LogLines) -> u64 {
    loop {
        let line = within(t.step(), "a followed line", follower.next())
            .await
            .expect("a follower ended while the app writes")
            .expect("a followed line");
        if let Some(n) = t.line_number(&line.line) {
            assert_eq!(line.stream, LogStream::Stdout, "{line:?}");
            return n;
        }
    }
}

/// `stop` of an app that ends on the graceful signal returns with the app
/// `Stopped`, its exit the graceful signal (`Signal(15)`), well before
/// its grace period would have run out.
pub async fn stop_ends_a_well_behaved_app_with_the_graceful_signal_before_its_grace<
    T: TestRuntime,
>(
    t: &T,
) {
    let rt = t.runtime();
    // Twice the bound below: a stop that waited out the grace fails.
    let grace = t.step() * 2;
    let spec = AppSpec {
        stop_grace: grace,
        ..checked(
            t,
            "web",
            &Behaviour::Healthy,
            policy(RestartMode::OnFailure, 3),
            3,
        )
    };
    start(rt, spec).await;
    wait_until(rt, "web", t.step(), "becoming Healthy", |s| {
        s.state == AppState::Healthy
    })
    .await;
    let s = within(t.step(), "stop of a well-behaved app", rt.stop("web"))
        .await
        .unwrap();
    assert_eq!((s.state, s.pid), (AppState::Stopped, None), "{s:?}");
    assert_eq!(
        s.exit,
        Some(ExitStatus::Signal(15)),
        "ended by the graceful signal: {s:?}"
    );
}

/// `stop` of an app that ignores the graceful signal waits out
/// `stop_grace`, then forces it: the app is `Stopped` with exit
/// `Signal(9)`. Skipped where apps cannot ignore the signal.
pub async fn stop_kills_an_app_that_ignores_the_graceful_signal_after_its_grace<T: TestRuntime>(
    t: &T,
) {
    if !t.can_ignore_stop() {
        println!("SKIPPED: apps of this runtime cannot ignore the graceful stop signal");
        return;
    }
    let rt = t.runtime();
    let grace = Duration::from_secs(2);
    let spec = AppSpec {
        stop_grace: grace,
        ..checked(
            t,
            "stubborn",
            &Behaviour::IgnoresStop,
            policy(RestartMode::OnFailure, 3),
            3,
        )
    };
    start(rt, spec).await;
    // Healthy means it is ignoring the signal by now.
    wait_until(rt, "stubborn", t.step(), "becoming Healthy", |s| {
        s.state == AppState::Healthy
    })
    .await;
    let asked = Instant::now();
    let s = within(
        grace + t.step(),
        "stop of an app ignoring the signal",
        rt.stop("stubborn"),
    )
    .await
    .unwrap();
    let took = asked.elapsed();
    assert_eq!((s.state, s.pid), (AppState::Stopped, None), "{s:?}");
    assert_eq!(
        s.exit,
        Some(ExitStatus::Signal(9)),
        "forced after the grace: {s:?}"
    );
    assert!(
        took >= grace,
        "forced after {took:?}, before the {grace:?} grace period"
    );
}
