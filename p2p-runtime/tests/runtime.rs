//! The process runtime with real processes, beyond the runtime
//! conformance suite (`tests/conformance.rs`: restart modes, backoff and
//! crash loops, health states, log tail and follow, stop and its grace):
//! process groups and orphans, log streams, rotation, probes of every
//! type, bad specs, resource limits and users. Shell one-liners present
//! on any Linux (`sh`, `sleep`, `seq`, `tail`), and sockets served by the
//! test itself for the health checks.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use p2p_core::runtime::{
    AppSpec, AppState, ExitStatus, HealthCheckSpec, HealthChecker, HealthOutcome, HealthProbe,
    LogSelection, LogStream, ProbeTarget, ResourceLimits, RestartMode, RestartPolicy, Runtime,
};
use p2p_core::{Error, SystemClock};
use p2p_runtime::{LimitSupport, LogRotation, ProcessHealthChecker, ProcessRuntime, RuntimeConfig};
use tokio::io::AsyncWriteExt;
use tokio::time::{Instant, timeout};

const STEP: Duration = Duration::from_secs(20);

fn runtime(dir: &Path, name: &str) -> ProcessRuntime {
    let cfg = RuntimeConfig::new(dir.join("rt"))
        .cgroup_name(format!("p2p-runtime-test-{}-{name}", std::process::id()));
    ProcessRuntime::new(cfg, Arc::new(SystemClock)).unwrap()
}

/// `sh -c script` in `dir`.
fn sh(name: &str, dir: &Path, script: &str) -> AppSpec {
    AppSpec {
        workdir: dir.to_path_buf(),
        args: vec!["-c".into(), script.into()],
        stop_grace: Duration::from_secs(2),
        ..AppSpec::new(name, "1.0.0", "sh")
    }
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, r)| r.trim_start().starts_with(['Z', 'X']))
        })
        .is_some_and(|zombie| !zombie)
}

async fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + STEP;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The pid an app wrote to `child.pid` in `dir`, once it is there.
async fn child_pid(dir: &Path) -> u32 {
    let pid_file = dir.join("child.pid");
    let read = || {
        std::fs::read_to_string(&pid_file)
            .ok()?
            .trim()
            .parse::<u32>()
            .ok()
    };
    wait_for("the child's pid", || read().is_some()).await;
    read().unwrap()
}

async fn wait_state(
    rt: &ProcessRuntime,
    name: &str,
    want: AppState,
) -> p2p_core::runtime::AppStatus {
    let deadline = Instant::now() + STEP;
    loop {
        let s = rt.status(name).await.unwrap();
        if s.state == want {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "{name} never reached {want:?}; last status {s:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_started_app_is_a_running_process_until_stopped() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime(dir.path(), "basic");
    let s = rt
        .start(sh("web", dir.path(), "exec sleep 1000"))
        .await
        .unwrap();
    // Without a health check, running at once.
    assert_eq!(s.state, AppState::Running);
    assert!(s.started_at.is_some());
    let pid = s.pid.unwrap();
    assert!(alive(pid));
    rt.stop("web").await.unwrap();
    assert!(!alive(pid), "the process must be gone after stop");
    rt.shutdown().await;
}

/// TERM goes to the whole group, and what ignores it gets KILL after the
/// grace period: no child is left behind. (The grace period itself: the
/// conformance suite.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_ends_the_whole_process_group_even_when_term_is_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime(dir.path(), "group");
    let mut spec = sh(
        "stubborn",
        dir.path(),
        "trap '' TERM; sh -c 'trap \"\" TERM; exec sleep 1000' & echo $! > child.pid; wait",
    );
    spec.stop_grace = Duration::from_millis(500);
    let s = rt.start(spec).await.unwrap();
    let main = s.pid.unwrap();
    let child = child_pid(dir.path()).await;
    assert!(alive(child));
    rt.stop("stubborn").await.unwrap();
    wait_for("the child to die", || !alive(child)).await;
    assert!(!alive(main));
    rt.shutdown().await;
}

/// A child that outlives its parent's exit is killed with the group too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exiting_app_leaves_no_orphans() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime(dir.path(), "orphans");
    let mut spec = sh(
        "leaver",
        dir.path(),
        "sleep 1000 & echo $! > child.pid; exit 0",
    );
    spec.restart.mode = RestartMode::Never;
    rt.start(spec).await.unwrap();
    wait_state(&rt, "leaver", AppState::Stopped).await;
    let child = child_pid(dir.path()).await;
    wait_for("the orphan to die", || !alive(child)).await;
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_are_captured_per_stream_tailed_and_followed() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime(dir.path(), "logs");
    let spec = sh(
        "talker",
        dir.path(),
        "echo out-1; sleep 0.3; echo err-1 >&2; sleep 0.3; echo out-2; while read l < fifo; do echo \"$l\"; done",
    );
    nix_mkfifo(&dir.path().join("fifo"));
    rt.start(spec).await.unwrap();
    let all = |stream, tail| LogSelection {
        stream,
        tail,
        follow: false,
    };
    let lines = |rt: ProcessRuntime, sel: LogSelection| async move {
        rt.logs("talker", sel)
            .await
            .unwrap()
            .map(|l| l.unwrap().line)
            .collect::<Vec<_>>()
            .await
    };
    wait_for_lines(&rt, "talker", 3).await;
    assert_eq!(
        lines(rt.clone(), all(LogStream::Stdout, None)).await,
        ["out-1", "out-2"]
    );
    assert_eq!(
        lines(rt.clone(), all(LogStream::Stderr, None)).await,
        ["err-1"]
    );
    assert_eq!(
        lines(rt.clone(), all(LogStream::Both, Some(2))).await,
        ["err-1", "out-2"]
    );
    // Two followers see new lines; then removal ends them.
    let follow = LogSelection {
        stream: LogStream::Stdout,
        tail: Some(1),
        follow: true,
    };
    let mut f1 = rt.logs("talker", follow.clone()).await.unwrap();
    let mut f2 = rt.logs("talker", follow).await.unwrap();
    assert_eq!(f1.next().await.unwrap().unwrap().line, "out-2");
    assert_eq!(f2.next().await.unwrap().unwrap().line, "out-2");
    let mut fifo = tokio::fs::OpenOptions::new()
        .write(true)
        .open(dir.path().join("fifo"))
        .await
        .unwrap();
    fifo.write_all(b"live line\n").await.unwrap();
    fifo.flush().await.unwrap();
    for f in [&mut f1, &mut f2] {
        let l = timeout(STEP, f.next()).await.unwrap().unwrap().unwrap();
        assert_eq!(l.line, "live line");
    }
    drop(fifo);
    rt.remove("talker").await.unwrap();
    for f in [&mut f1, &mut f2] {
        assert!(
            timeout(STEP, f.next()).await.unwrap().is_none(),
            "followers end on remove"
        );
    }
    assert!(!rt.log_dir("talker").exists(), "remove deletes the logs");
    rt.shutdown().await;
}

fn nix_mkfifo(p: &Path) {
    let st = std::process::Command::new("mkfifo")
        .arg(p)
        .status()
        .unwrap();
    assert!(st.success());
}

async fn wait_for_lines(rt: &ProcessRuntime, name: &str, n: usize) {
    let deadline = Instant::now() + STEP;
    loop {
        let sel = LogSelection {
            stream: LogStream::Both,
            tail: None,
            follow: false,
        };
        let got = rt.logs(name, sel).await.unwrap().count().await;
        if got >= n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{name} wrote {got} lines, not {n}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Small files rotate; a follower keeps receiving across rotations; the
/// tail of a large log is its last lines.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follow_survives_rotation_and_tail_reads_a_large_log() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = RuntimeConfig::new(dir.path().join("rt"))
        .cgroup_name(format!("p2p-runtime-test-{}-rot", std::process::id()))
        .log_rotation(LogRotation {
            max_bytes: 64 * 1024,
            files: 3,
        });
    let rt = ProcessRuntime::new(cfg, Arc::new(SystemClock)).unwrap();
    let mut spec = sh(
        "counter",
        dir.path(),
        "while [ ! -e go ]; do sleep 0.01; done; seq 1 200000; exec sleep 1000",
    );
    spec.restart.mode = RestartMode::Never;
    rt.start(spec).await.unwrap();
    let mut follower = rt
        .logs(
            "counter",
            LogSelection {
                stream: LogStream::Stdout,
                tail: Some(0),
                follow: true,
            },
        )
        .await
        .unwrap();
    std::fs::write(dir.path().join("go"), b"").unwrap();
    let mut expect = 1u64;
    timeout(STEP, async {
        while expect <= 200_000 {
            let l = follower.next().await.unwrap().unwrap();
            let n: u64 = l.line.parse().unwrap();
            // A follower that falls behind may lose lines, never reorder.
            assert!(n >= expect, "line {n} after {expect}");
            expect = n + 1;
        }
    })
    .await
    .expect("the follower reaches the last line");
    let logdir = rt.log_dir("counter");
    assert!(logdir.join("stdout.log.1").exists() && logdir.join("stdout.log.2").exists());
    assert!(
        !logdir.join("stdout.log.3").exists(),
        "three files are kept"
    );
    let tail: Vec<String> = rt
        .logs(
            "counter",
            LogSelection {
                stream: LogStream::Stdout,
                tail: Some(3),
                follow: false,
            },
        )
        .await
        .unwrap()
        .map(|l| l.unwrap().line)
        .collect()
        .await;
    assert_eq!(tail, ["199998", "199999", "200000"]);
    rt.shutdown().await;
}

async fn serve_http(status: &'static str) -> std::net::SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                let _ = tokio::io::AsyncReadExt::read(&mut s, &mut buf).await;
                let resp =
                    format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
                let _ = s.write_all(resp.as_bytes()).await;
            });
        }
    });
    addr
}

/// Port 1 on loopback: privileged, so no test process can be listening.
fn closed_port() -> String {
    "127.0.0.1:1".to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_probe_type_passes_and_fails() {
    let checker = ProcessHealthChecker::new();
    let ok = serve_http("200 OK").await;
    let broken = serve_http("503 Service Unavailable").await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let me = ProbeTarget {
        name: "t".into(),
        version: "1".into(),
        pid: Some(std::process::id()),
    };
    let dead = ProbeTarget {
        pid: Some(u32::MAX / 2),
        ..me.clone()
    };
    let exec = |cmd: &str| HealthProbe::Exec {
        command: cmd.into(),
        args: vec![],
    };
    let cases = [
        (HealthProbe::Process, me.clone(), true),
        (HealthProbe::Process, dead, false),
        (
            HealthProbe::Tcp {
                addr: listener.local_addr().unwrap().to_string(),
            },
            me.clone(),
            true,
        ),
        (
            HealthProbe::Tcp {
                addr: closed_port(),
            },
            me.clone(),
            false,
        ),
        (
            HealthProbe::Http {
                url: format!("http://{ok}/health"),
            },
            me.clone(),
            true,
        ),
        (
            HealthProbe::Http {
                url: format!("http://{broken}/health"),
            },
            me.clone(),
            false,
        ),
        (exec("true"), me.clone(), true),
        (exec("false"), me.clone(), false),
    ];
    for (probe, target, want) in cases {
        let spec = HealthCheckSpec::new(probe.clone());
        let got = checker.probe(&target, &spec).await;
        assert_eq!(got.is_healthy(), want, "{probe:?}: {got:?}");
        if let HealthOutcome::Unhealthy(why) = got {
            assert!(!why.is_empty());
        }
    }
    // A probe that hangs is cut off at its timeout.
    let spec = HealthCheckSpec {
        timeout: Duration::from_millis(200),
        ..HealthCheckSpec::new(HealthProbe::Exec {
            command: "sleep".into(),
            args: vec!["10".into()],
        })
    };
    let started = Instant::now();
    match checker.probe(&me, &spec).await {
        HealthOutcome::Unhealthy(why) => assert!(why.contains("timed out"), "{why}"),
        HealthOutcome::Healthy => panic!("a hung probe passed"),
    }
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_a_clear_error_and_nothing_runs() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime(dir.path(), "bad");
    std::fs::write(dir.path().join("plain.txt"), b"not a program").unwrap();
    let base = || AppSpec {
        workdir: dir.path().to_path_buf(),
        ..AppSpec::new("app", "1", "sh")
    };
    let cases: Vec<(AppSpec, &str, &str)> = vec![
        (
            AppSpec {
                entrypoint: "./missing".into(),
                ..base()
            },
            "entrypoint",
            "missing",
        ),
        (
            AppSpec {
                entrypoint: "./plain.txt".into(),
                ..base()
            },
            "entrypoint",
            "not executable",
        ),
        (
            AppSpec {
                entrypoint: "no-such-program-p2p".into(),
                ..base()
            },
            "entrypoint",
            "not found",
        ),
        (
            AppSpec {
                workdir: dir.path().join("nope"),
                ..base()
            },
            "workdir",
            "nope",
        ),
        (
            AppSpec {
                user: Some("no-such-user-p2p".into()),
                ..base()
            },
            "user",
            "no-such-user-p2p",
        ),
        (
            AppSpec {
                health: Some(HealthCheckSpec::new(HealthProbe::Tcp {
                    addr: "localhost".into(),
                })),
                ..base()
            },
            "health check",
            "host:port",
        ),
        (
            AppSpec {
                name: "../evil".into(),
                ..base()
            },
            "name",
            "evil",
        ),
    ];
    for (spec, field, detail) in cases {
        match rt.start(spec).await {
            Err(Error::Invalid { what, reason }) => {
                assert_eq!(what, field, "{reason}");
                assert!(reason.contains(detail), "{field}: {reason}");
            }
            other => panic!("{field}: expected Invalid, got {other:?}"),
        }
    }
    assert!(
        rt.list().await.unwrap().is_empty(),
        "nothing was left running"
    );
    rt.shutdown().await;
}

/// An app past its memory limit is killed and reported as such.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_over_its_memory_limit_is_killed_and_reported() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime(dir.path(), "mem");
    if matches!(rt.limit_support(), LimitSupport::Rlimit)
        || matches!(rt.limit_support(), LimitSupport::V1 { memory: None, .. })
    {
        println!(
            "SKIPPED an_app_over_its_memory_limit_is_killed_and_reported: no writable memory cgroup ({:?})",
            rt.limit_support()
        );
        return;
    }
    // `tail` looking for a line end in /dev/zero keeps everything it reads.
    let mut spec = sh("hog", dir.path(), "exec tail /dev/zero");
    spec.limits = ResourceLimits {
        memory_bytes: Some(32 * 1024 * 1024),
        cpu_millis: Some(500),
    };
    let s = rt.start(spec).await.unwrap();
    let applied = s.limits_applied.unwrap();
    assert!(applied.starts_with("cgroup"), "{applied}");
    let s = wait_state(&rt, "hog", AppState::Failed).await;
    assert_eq!(s.exit, Some(ExitStatus::Signal(9)));
    let reason = s.reason.unwrap();
    assert!(reason.contains("memory limit"), "{reason}");
    rt.shutdown().await;
}

/// The limits are written where the mechanism says, the app is in its
/// cgroup, and the cgroups are gone once the app stops.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_are_applied_and_cleaned_up() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime(dir.path(), "limits");
    let (memory, cpu) = match rt.limit_support().clone() {
        LimitSupport::V1 { memory, cpu } => (memory, cpu),
        other => {
            println!(
                "SKIPPED limits_are_applied_and_cleaned_up: checks cgroup v1 files, host has {other:?}"
            );
            return;
        }
    };
    let mut spec = sh("limited", dir.path(), "exec sleep 1000");
    spec.limits = ResourceLimits {
        memory_bytes: Some(64 * 1024 * 1024),
        cpu_millis: Some(500),
    };
    let s = rt.start(spec).await.unwrap();
    let pid = s.pid.unwrap().to_string();
    assert!(s.limits_applied.unwrap().starts_with("cgroup v1"));
    let read = |p: std::path::PathBuf| std::fs::read_to_string(p).unwrap();
    if let Some(m) = &memory {
        let d = m.join("limited");
        assert_eq!(
            read(d.join("memory.limit_in_bytes")).trim(),
            (64 * 1024 * 1024).to_string()
        );
        // The wrapper joins as its first step, a moment after the spawn.
        wait_for("the app in its memory cgroup", || {
            read(d.join("cgroup.procs")).lines().any(|l| l == pid)
        })
        .await;
    }
    if let Some(c) = &cpu {
        let d = c.join("limited");
        assert_eq!(read(d.join("cpu.cfs_quota_us")).trim(), "50000");
        wait_for("the app in its cpu cgroup", || {
            read(d.join("cgroup.procs")).lines().any(|l| l == pid)
        })
        .await;
    }
    rt.stop("limited").await.unwrap();
    for base in [memory, cpu].into_iter().flatten() {
        assert!(
            !base.join("limited").exists(),
            "cgroup left behind in {}",
            base.display()
        );
    }
    rt.shutdown().await;
}

/// With `user` set the app runs as that user (needs root: skipped otherwise).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_runs_as_its_user() {
    if !nix_is_root() {
        println!("SKIPPED an_app_runs_as_its_user: needs root to switch users");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime(dir.path(), "user");
    let mut spec = sh("as-nobody", "/".as_ref(), "id -u; id -G; exec sleep 1000");
    spec.user = Some("nobody".into());
    // With a limit, the app joins its cgroup as root and then drops to
    // its user.
    spec.limits.memory_bytes = Some(64 * 1024 * 1024);
    rt.start(spec).await.unwrap();
    wait_for_lines(&rt, "as-nobody", 2).await;
    let lines: Vec<String> = rt
        .logs(
            "as-nobody",
            LogSelection {
                stream: LogStream::Stdout,
                tail: None,
                follow: false,
            },
        )
        .await
        .unwrap()
        .map(|l| l.unwrap().line)
        .collect()
        .await;
    let uid = std::process::Command::new("id")
        .args(["-u", "nobody"])
        .output()
        .unwrap();
    let uid = String::from_utf8_lossy(&uid.stdout).trim().to_string();
    assert_eq!(lines[0], uid);
    assert!(
        !lines[1].split_whitespace().any(|g| g == "0"),
        "root's groups kept: {}",
        lines[1]
    );
    rt.shutdown().await;
}

fn nix_is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(2) == Some("0"))
        })
        .unwrap_or(false)
}

/// A child that leaves the process group (`setsid`) is still ended with
/// its app, through the app's cgroup.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_child_that_left_the_group_is_still_stopped() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime(dir.path(), "setsid");
    if matches!(rt.limit_support(), LimitSupport::Rlimit) {
        println!(
            "SKIPPED a_child_that_left_the_group_is_still_stopped: no writable cgroup to track it"
        );
        return;
    }
    let s = rt
        .start(sh(
            "escaper",
            dir.path(),
            "setsid sleep 1000 & echo $! > child.pid; exec sleep 1000",
        ))
        .await
        .unwrap();
    let child = child_pid(dir.path()).await;
    let stopped = rt.stop("escaper").await.unwrap();
    assert_eq!(
        stopped.exit,
        Some(ExitStatus::Signal(15)),
        "stop records how it ended"
    );
    wait_for("the escaped child to die", || !alive(child)).await;
    assert!(!alive(s.pid.unwrap()));
    rt.shutdown().await;
}

/// A restart that cannot start (the program vanished for a moment) is a
/// failed run under the backoff, not the end of the app; and an app that
/// is backing off can be replaced by a new start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_that_cannot_start_backs_off_and_a_backing_off_app_can_be_replaced() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime(dir.path(), "vanish");
    let script = dir.path().join("run.sh");
    std::fs::write(&script, "#!/bin/sh\necho ran >> runs\nexit 1\n").unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let spec = AppSpec {
        workdir: dir.path().to_path_buf(),
        restart: RestartPolicy {
            mode: RestartMode::Always,
            initial_backoff: Duration::from_millis(300),
            max_backoff: Duration::from_millis(300),
            stable_after: Duration::from_secs(60),
            max_restarts: 10,
        },
        ..AppSpec::new("vanishing", "1", "./run.sh")
    };
    rt.start(spec.clone()).await.unwrap();
    wait_state(&rt, "vanishing", AppState::BackingOff).await;
    std::fs::remove_file(&script).unwrap();
    // The next run cannot start: still backing off, with the reason.
    wait_for("a failed start to be reported", || {
        futures::executor::block_on(rt.status("vanishing"))
            .unwrap()
            .reason
            .is_some_and(|r| r.contains("could not start"))
    })
    .await;
    let s = rt.status("vanishing").await.unwrap();
    assert_eq!(s.state, AppState::BackingOff, "{s:?}");
    // Replacing it while it backs off works.
    let replacement = sh("vanishing", dir.path(), "exec sleep 1000");
    let s = timeout(STEP, rt.start(replacement)).await.unwrap().unwrap();
    assert_eq!(s.state, AppState::Running);
    rt.shutdown().await;
}
