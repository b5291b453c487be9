//! # p2p-runtime
//!
//! Process supervision for the p2p deployment SDK: a p2p-core
//! [`Runtime`](p2p_core::Runtime) over OS processes, and a
//! [`HealthChecker`](p2p_core::runtime::HealthChecker) that probes them.
//! The agent drives it exactly as it drives the simulator's runtime.
//!
//! ```no_run
//! use std::sync::Arc;
//! use p2p_core::runtime::{AppSpec, HealthCheckSpec, HealthProbe, LogSelection, LogStream, Runtime};
//! use p2p_core::SystemClock;
//! use p2p_runtime::{ProcessRuntime, RuntimeConfig};
//!
//! # async fn demo() -> p2p_core::Result<()> {
//! let rt = ProcessRuntime::new(RuntimeConfig::new("/var/lib/p2pd/runtime"), Arc::new(SystemClock))?;
//! let spec = AppSpec {
//!     workdir: "/var/lib/p2pd/versions/web/1.4.2".into(),
//!     args: vec!["--port".into(), "8080".into()],
//!     health: Some(HealthCheckSpec::new(HealthProbe::Http { url: "http://127.0.0.1:8080/health".into() })),
//!     ..AppSpec::new("web", "1.4.2", "./bin/web")
//! };
//! let status = rt.start(spec).await?;
//! println!("web runs as pid {:?}, {:?}", status.pid, status.state);
//! let tail = rt.logs("web", LogSelection { stream: LogStream::Both, tail: Some(20), follow: false }).await?;
//! # drop(tail);
//! rt.stop("web").await?;
//! rt.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! ## Processes
//!
//! [`Runtime::start`](p2p_core::Runtime::start) checks the spec first and
//! fails with [`Error::Invalid`](p2p_core::Error::Invalid) naming the field,
//! with nothing started: a name that is not a plain file name, a working
//! directory that does not exist, an entrypoint that is missing, not a file
//! or not executable (a path with `/` is relative to the working directory,
//! a bare name is looked up in `PATH`), an unknown `user`, a health-check
//! target that cannot be parsed (`host:port`, an absolute `http://` URL, a
//! command that exists), a memory limit under 1 MiB.
//!
//! Each app runs in its own process group, with a clean environment:
//! `PATH` (a standard one unless the spec sets it), `P2P_APP_NAME`,
//! `P2P_APP_VERSION`, then the spec's `env`; stdin is `/dev/null`. With
//! `user` set, it runs as that user and group with no supplementary groups
//! (which needs root; inside a cgroup the switch is made by `setpriv` from
//! util-linux after the app joined its cgroup).
//!
//! Stopping sends SIGTERM to the whole group, waits up to `stop_grace` for
//! the app and then the rest of its group to exit, then sends SIGKILL to
//! the group. When an app exits by itself, whatever it left in its group is
//! killed too, so no child outlives it. Where cgroups work, every app also
//! has a cgroup, limits or not, and everything in it is killed as well:
//! that catches children that left the process group (`setsid`).
//!
//! ## A runtime that died
//!
//! Each app's main process is recorded in `<root>/pids/<app>` (pid and
//! start time) while it runs. A runtime that starts on a root whose
//! previous runtime died without stopping its apps (the agent got
//! SIGKILL) finds those records, and stops every recorded process that
//! still runs (SIGTERM to its group, SIGKILL after 5 s) before it starts
//! anything, so that a restarted agent never runs a second copy beside an
//! orphan. The start time guards against a pid reused by another process.
//! One root belongs to one runtime at a time.
//!
//! ## States and restarts
//!
//! `Starting` (until the first passing health probe, when there is a
//! check), `Running`, `Healthy`, `Unhealthy`, `BackingOff`, `Stopped`,
//! `Failed`. Status carries the pid, the last exit code or signal, the
//! restart count, the start time (from the injected clock), the last probe
//! result and streak, the reason for the state, and how limits are
//! enforced.
//!
//! After an exit the [`RestartPolicy`](p2p_core::runtime::RestartPolicy)
//! decides, through p2p-core's
//! [`RestartTracker`](p2p_core::runtime::RestartTracker) (shared with the
//! simulator): `never`, `on-failure` (non-zero exit, a signal, or an
//! unhealthy episode) or `always`; exponential backoff from
//! `initial_backoff` to `max_backoff` with ±20% jitter from a seeded RNG;
//! a run of `stable_after` resets it; more than `max_restarts` in a row
//! ends in `Failed` with the reason ("crash loop: ...").
//!
//! ## Health
//!
//! [`ProcessHealthChecker`] probes: the process is alive (not a zombie), a
//! TCP connect, an HTTP GET answering 2xx (hyper's client, plain http), or
//! a command exiting 0 (its first stderr bytes become the reason; a
//! relative command is taken in the app's directory, and it runs with the
//! supervisor's environment and user, not the app's). Each probe is cut
//! off at `timeout`. Probes run every `interval`; failures in
//! the `start_period` do not count; `retries` failures in a row make the
//! app `Unhealthy`. An unhealthy app is restarted under its policy once per
//! episode (stopped gracefully, then the backoff); under `never` it stays
//! up and `Unhealthy`.
//!
//! ## Logs
//!
//! stdout and stderr go to `<root>/logs/<app>/stdout.log` and `stderr.log`,
//! and both, tagged, to `combined.log` (which gives `LogStream::Both` in
//! arrival order). Each file rotates by size, default 10 MiB x 5
//! ([`LogRotation`]): `stdout.log`, `stdout.log.1` (newest rotated), ...
//! Lines over 64 KiB are split. A tail reads files backwards in blocks, so
//! it costs the lines returned, not the file size. Followers get lines
//! through a broadcast fed by the supervisor as it writes them, so rotation
//! does not affect them, and the app never waits for a follower: one that
//! falls more than 4096 lines behind loses lines (so a stalled follower
//! holds at most 4096 lines of memory). The broadcast exists only
//! while someone follows. Removing an app ends its followers and deletes
//! its logs.
//!
//! ## Resource limits
//!
//! Memory and CPU limits are enforced by the first mechanism the host
//! offers, probed once per runtime ([`LimitSupport`]):
//!
//! 1. cgroup v2, when this process's cgroup has the `memory` and `cpu`
//!    controllers and can enable them for a child (`memory.max`,
//!    `memory.swap.max`, `cpu.max`). The kernel allows that only in a
//!    cgroup that holds no processes of its own (or the root), and the
//!    supervisor lives in its own cgroup, so under systemd this is not the
//!    case today; then v1 or rlimits apply, and status says which;
//! 2. cgroup v1 hierarchies (`memory.limit_in_bytes`,
//!    `memory.memsw.limit_in_bytes` where swap is accounted,
//!    `cpu.cfs_quota_us`);
//! 3. `RLIMIT_AS` for memory (allocations fail instead of a kill; CPU is
//!    then not limited).
//!
//! App cgroups are made under this process's own cgroup, in a directory
//! named by [`RuntimeConfig::cgroup_name`]. The app joins its cgroup before
//! it runs any of its own code: it starts through `/bin/sh`, which writes
//! its pid into `cgroup.procs`, applies the rlimit, and `exec`s the app
//! (same pid). Status reports the mechanism in `limits_applied`. An app
//! the kernel kills for exceeding its memory limit (the cgroup's
//! `oom_kill` count rises) ends `Failed` with "killed for exceeding its
//! memory limit". The cgroups are removed when the app stops.
//!
//! ## Performance
//!
//! Measured figures (crash to replacement running, log line to follower,
//! memory per supervised app) are in the workspace README;
//! `cargo run --release -p p2p-benches --bin bench-report -- runtime`
//! measures them on your machine.

mod config;
mod health;
mod limits;
mod logs;
mod pids;
mod prober;
mod process_group;
mod program;
mod runtime;
mod spawn;
mod state;
mod supervisor;
mod validate;

pub use config::RuntimeConfig;
pub use health::ProcessHealthChecker;
pub use limits::{Cgroups, LimitSupport};
pub use logs::LogRotation;
pub use runtime::ProcessRuntime;
