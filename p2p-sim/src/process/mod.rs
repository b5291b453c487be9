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
//!   at once and its exit is recorded as `Signal(15)`; a script made with
//!   [`Script::ignoring_term`] runs on for the app's `stop_grace` and is
//!   then killed, exit `Signal(9)`.
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
//!
//! # Files
//!
//! - `script`: [`Script`] (the behaviour of one process over time) and the
//!   [`ScriptBook`] that says which script each app runs.
//! - `table`: the process table: apps, their live instances, logs and pids.
//! - `supervisor`: the task that plays an instance's script, probes its
//!   health and restarts it as its policy says.
//! - `health`: [`SimHealthChecker`], probes answered from the table.
//! - `runtime`: [`SimRuntime`], the [`Runtime`] over all of the above.

mod health;
mod runtime;
mod script;
mod supervisor;
mod table;

pub use health::SimHealthChecker;
pub use runtime::SimRuntime;
pub use script::{DEFAULT_STARTUP, Script, ScriptBook};
pub use table::{FOLLOW_BUFFER, LOG_LINES_KEPT};

#[cfg(doc)]
use p2p_core::{AppState, Clock, RestartMode, RestartTracker, Runtime};
