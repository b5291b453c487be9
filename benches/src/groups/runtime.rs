//! Group `runtime`: what supervising real processes costs.
//!
//! - `restart_latency_p50`: from an app's crash (SIGKILL from the bench) to
//!   its replacement running (a new pid in its status), with a backoff of
//!   zero, so nothing is subtracted; median of 100. Target under 50 ms.
//!   The baseline is a plain `tokio::process` spawn of the same program.
//! - `log_follow_latency_p50`: from an app writing a line (it prints the
//!   wall time, `date +%s%N`) to a follower of its logs receiving it,
//!   median of 200. Target under 20 ms. The baseline reads the same
//!   script's stdout pipe directly.
//! - `heap_per_app`: live heap of the supervisor per running app, over 50
//!   idle apps (`sleep`), logs and supervisor tasks included.

#![allow(clippy::disallowed_methods)] // benchmarks measure wall time

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::StreamExt;
use p2p_core::SystemClock;
use p2p_core::runtime::{AppSpec, LogSelection, LogStream, RestartMode, RestartPolicy, Runtime};
use p2p_runtime::{ProcessRuntime, RuntimeConfig};
use tokio::io::AsyncBufReadExt;

use crate::Figure;

const RESTARTS: usize = 100;
const LINES: usize = 200;
const APPS: usize = 50;

/// Runs the group.
pub fn run() -> Vec<Figure> {
    super::block_on(run_async())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

async fn run_async() -> Vec<Figure> {
    let dir = tempfile::tempdir().expect("temp dir");
    let rt = ProcessRuntime::new(
        RuntimeConfig::new(dir.path().join("rt"))
            .cgroup_name(format!("p2p-bench-{}", std::process::id())),
        Arc::new(SystemClock),
    )
    .expect("runtime");
    let restart = restart_latency(&rt, dir.path()).await;
    let spawn = spawn_latency(dir.path()).await;
    let follow = follow_latency(&rt, dir.path()).await;
    let pipe = pipe_latency(dir.path()).await;
    let heap = heap_per_app(&rt, dir.path()).await;
    rt.shutdown().await;
    vec![
        Figure::new("runtime", "restart_latency_p50", ms(restart), "ms")
            .target("< 50 ms")
            .goal(crate::Goal::AtMost(50.0))
            .baseline(ms(spawn), "ms plain spawn until running"),
        Figure::new("runtime", "log_follow_latency_p50", ms(follow), "ms")
            .target("< 20 ms")
            .goal(crate::Goal::AtMost(20.0))
            .baseline(ms(pipe), "ms reading the pipe directly"),
        Figure::new(
            "runtime",
            "heap_per_app",
            heap / 1024.0,
            "KiB per running app (50 apps)",
        ),
    ]
}

async fn restart_latency(rt: &ProcessRuntime, dir: &Path) -> Duration {
    let spec = AppSpec {
        args: vec!["1000".into()],
        workdir: dir.to_path_buf(),
        stop_grace: Duration::from_millis(200),
        restart: RestartPolicy {
            mode: RestartMode::OnFailure,
            initial_backoff: Duration::ZERO,
            max_backoff: Duration::ZERO,
            stable_after: Duration::from_secs(3600),
            max_restarts: 0,
        },
        ..AppSpec::new("crasher", "1", "sleep")
    };
    let mut pid = rt.start(spec).await.expect("start").pid.expect("pid");
    let mut took = Vec::with_capacity(RESTARTS);
    for _ in 0..RESTARTS {
        // The crash: SIGKILL, as the OOM killer or a segfault would end it.
        let crashed = Instant::now();
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        )
        .expect("kill");
        pid = loop {
            let s = rt.status("crasher").await.expect("status");
            if let Some(p) = s.pid.filter(|p| *p != pid) {
                break p;
            }
            tokio::time::sleep(Duration::from_micros(200)).await;
        };
        took.push(crashed.elapsed());
    }
    rt.stop("crasher").await.expect("stop");
    median(took)
}

/// A plain spawn of the same program, until `spawn` returns.
async fn spawn_latency(dir: &Path) -> Duration {
    let mut took = Vec::with_capacity(RESTARTS);
    for _ in 0..RESTARTS {
        let started = Instant::now();
        let mut child = tokio::process::Command::new("sleep")
            .arg("1000")
            .current_dir(dir)
            .kill_on_drop(true)
            .spawn()
            .expect("spawn");
        took.push(started.elapsed());
        let _ = child.kill().await;
    }
    median(took)
}

const TICKER: &str = "while true; do date +%s%N; sleep 0.02; done";

fn latency_of(line: &str) -> Option<Duration> {
    let sent: u128 = line.trim().parse().ok()?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .ok()?
        .as_nanos();
    Some(Duration::from_nanos(now.saturating_sub(sent) as u64))
}

async fn follow_latency(rt: &ProcessRuntime, dir: &Path) -> Duration {
    let spec = AppSpec {
        args: vec!["-c".into(), TICKER.into()],
        workdir: dir.to_path_buf(),
        stop_grace: Duration::from_millis(200),
        ..AppSpec::new("ticker", "1", "sh")
    };
    rt.start(spec).await.expect("start");
    let mut lines = rt
        .logs(
            "ticker",
            LogSelection {
                stream: LogStream::Stdout,
                tail: Some(0),
                follow: true,
            },
        )
        .await
        .expect("follow");
    let mut took = Vec::with_capacity(LINES);
    while took.len() < LINES {
        let l = lines.next().await.expect("a line").expect("a line");
        if let Some(d) = latency_of(&l.line) {
            took.push(d);
        }
    }
    rt.remove("ticker").await.expect("remove");
    median(took)
}

async fn pipe_latency(dir: &Path) -> Duration {
    let mut child = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(TICKER)
        .current_dir(dir)
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn");
    let out = child.stdout.take().expect("stdout");
    let mut lines = tokio::io::BufReader::new(out).lines();
    let mut took = Vec::with_capacity(LINES);
    while took.len() < LINES {
        let l = lines.next_line().await.expect("read").expect("a line");
        if let Some(d) = latency_of(&l) {
            took.push(d);
        }
    }
    let _ = child.kill().await;
    median(took)
}

async fn heap_per_app(rt: &ProcessRuntime, dir: &Path) -> f64 {
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before = crate::alloc::live_bytes();
    for i in 0..APPS {
        let spec = AppSpec {
            args: vec!["1000".into()],
            workdir: dir.to_path_buf(),
            stop_grace: Duration::from_millis(200),
            ..AppSpec::new(format!("idle-{i}"), "1", "sleep")
        };
        rt.start(spec).await.expect("start");
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = crate::alloc::live_bytes();
    for i in 0..APPS {
        let _ = rt.remove(&format!("idle-{i}")).await;
    }
    after.saturating_sub(before) as f64 / APPS as f64
}
