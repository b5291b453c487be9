//! The process table of a [`super::SimRuntime`]: every app's spec, status,
//! live instance, supervisor task and log, with pid allocation, and the
//! two changes every path through the runtime makes to an entry: halting
//! it and spawning a new instance.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use p2p_core::{AppSpec, AppState, AppStatus, Clock, Error, ExitStatus, LogLine, LogStream};
use rand_chacha::ChaCha8Rng;
use tokio::sync::broadcast;
use tokio::task::AbortHandle;
use tokio::time::Instant;

use super::script::{Script, ScriptBook};

/// Log lines kept per app for [`Runtime::logs`](p2p_core::Runtime::logs) tails.
pub const LOG_LINES_KEPT: usize = 1000;

/// Lines a log follower may fall behind before it starts losing lines.
pub const FOLLOW_BUFFER: usize = 256;

// Linux's default pid_max: sequential pids wrap there, as on a real host.
const PID_MAX: u32 = 4_194_304;
pub(super) const PID_FIRST: u32 = 300;

/// What a runtime shares with its supervisor tasks and health checkers.
pub(super) struct Shared {
    pub(super) table: Mutex<Table>,
    pub(super) clock: Arc<dyn Clock>,
    pub(super) book: ScriptBook,
}

/// The process table, behind [`Shared::table`].
pub(super) struct Table {
    pub(super) apps: BTreeMap<String, Entry>,
    pub(super) rng: ChaCha8Rng,
    pub(super) next_pid: u32,
    pub(super) next_epoch: u64,
}

pub(super) struct Entry {
    pub(super) spec: AppSpec,
    pub(super) status: AppStatus,
    // Identifies the supervisor that owns this entry: aborting a task only
    // takes effect at its next await, so writes from a superseded one must be
    // recognisable and ignored.
    pub(super) epoch: u64,
    pub(super) instance: Option<Instance>,
    pub(super) task: Option<AbortHandle>,
    pub(super) log: AppLog,
}

// The live process of an entry, present exactly while its state is live.
pub(super) struct Instance {
    pub(super) script: Script,
    pub(super) spawned: Instant,
}

pub(super) struct AppLog {
    pub(super) lines: VecDeque<LogLine>,
    // `None` once followers have been ended by a shutdown; a later start
    // opens a new channel.
    pub(super) followers: Option<broadcast::Sender<LogLine>>,
}

impl AppLog {
    pub(super) fn new() -> Self {
        AppLog {
            lines: VecDeque::new(),
            followers: Some(broadcast::channel(FOLLOW_BUFFER).0),
        }
    }

    pub(super) fn write(&mut self, stream: LogStream, line: String) {
        let line = LogLine { stream, line };
        if self.lines.len() >= LOG_LINES_KEPT {
            self.lines.pop_front();
        }
        if let Some(followers) = &self.followers {
            // An error only means that nobody is following right now.
            let _ = followers.send(line.clone());
        }
        self.lines.push_back(line);
    }
}

impl Table {
    pub(super) fn alloc_pid(&mut self) -> u32 {
        let pid = self.next_pid;
        self.next_pid = if pid + 1 >= PID_MAX {
            PID_FIRST
        } else {
            pid + 1
        };
        pid
    }

    pub(super) fn new_epoch(&mut self) -> u64 {
        self.next_epoch += 1;
        self.next_epoch
    }

    pub(super) fn entry_mut(&mut self, name: &str, epoch: u64) -> Option<&mut Entry> {
        self.apps.get_mut(name).filter(|e| e.epoch == epoch)
    }
}

impl Shared {
    pub(super) fn lock(&self) -> MutexGuard<'_, Table> {
        p2p_core::sync::lock(&self.table)
    }
}

pub(super) fn not_found(name: &str) -> Error {
    Error::NotFound {
        what: format!("app {name}"),
    }
}

// Ends the entry's instance and supervisor and leaves it Stopped. A live
// instance records `Signal(signal)` as its exit and writes `last_words`.
pub(super) fn halt(entry: &mut Entry, epoch: u64, signal: i32, last_words: &str) {
    if let Some(task) = entry.task.take() {
        task.abort();
    }
    entry.epoch = epoch;
    if entry.instance.take().is_some() {
        entry.status.exit = Some(ExitStatus::Signal(signal));
        entry.log.write(LogStream::Stdout, last_words.to_string());
    }
    let status = &mut entry.status;
    status.state = AppState::Stopped;
    status.pid = None;
    status.started_at = None;
    status.health = None;
    status.healthy_streak = 0;
    status.reason = None;
}

// Spawns a new instance for the entry owned by `epoch`, reading its script
// from the book now so that book changes apply from the next spawn.
pub(super) fn spawn_instance(
    shared: &Shared,
    table: &mut Table,
    name: &str,
    epoch: u64,
    restarted: bool,
) -> Option<(Script, Instant)> {
    let version = table.entry_mut(name, epoch)?.spec.version.clone();
    let script = shared.book.script_for(name, &version);
    let pid = table.alloc_pid();
    let started_at = shared.clock.now();
    let entry = table.entry_mut(name, epoch)?;
    let spawned = Instant::now();
    entry.instance = Some(Instance {
        script: script.clone(),
        spawned,
    });
    let status = &mut entry.status;
    status.state = AppState::Starting;
    status.pid = Some(pid);
    status.started_at = Some(started_at);
    status.health = None;
    status.healthy_streak = 0;
    status.reason = None;
    if restarted {
        status.restarts = status.restarts.saturating_add(1);
    }
    entry
        .log
        .write(LogStream::Stdout, format!("starting {name} {version}"));
    tracing::debug!(
        app = name,
        version,
        pid,
        restarted,
        "simulated process spawned"
    );
    Some((script, spawned))
}
