//! Records of the apps' running processes, so that a runtime started
//! after its predecessor died (the agent was killed, the machine did not
//! reboot) stops the processes that predecessor left running, instead of
//! starting a second copy beside them.
//!
//! Each app's main process is recorded in `<root>/pids/<app>` as its pid
//! and its start time (field 22 of `/proc/<pid>/stat`, in clock ticks
//! since boot). A record is removed when the process ends under the
//! runtime. A record found at start whose process still exists with the
//! same start time is an orphan: its process group gets SIGTERM, then
//! SIGKILL after a grace period. A pid reused by another process has
//! another start time and is left alone.

use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

/// The start time of process `pid`, or `None` if it does not exist or
/// is a zombie (it ended; nothing is left to stop).
fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces:
    // fields are counted after its closing parenthesis.
    let mut fields = stat[stat.rfind(')')? + 1..].split_whitespace();
    // Field 3 is the state; the start time is field 22.
    if matches!(fields.next()?, "Z" | "X") {
        return None;
    }
    fields.nth(18)?.parse().ok()
}

fn file(dir: &Path, app: &str) -> PathBuf {
    dir.join(app)
}

/// Records `pid` as app `app`'s main process (and process group).
pub(crate) fn record(dir: &Path, app: &str, pid: u32) {
    let Some(t) = start_time(pid) else {
        return; // already gone
    };
    let path = file(dir, app);
    let tmp = path.with_extension("tmp");
    let written = std::fs::create_dir_all(dir)
        .and_then(|()| std::fs::write(&tmp, format!("{pid} {t}\n")))
        .and_then(|()| std::fs::rename(&tmp, &path));
    if let Err(e) = written {
        tracing::warn!(app, error = %e, "cannot record the app's process id");
    }
}

/// Forgets app `app`'s process: it ended under this runtime.
pub(crate) fn forget(dir: &Path, app: &str) {
    let _ = std::fs::remove_file(file(dir, app));
}

/// Stops the process groups of every recorded process that is still
/// running: SIGTERM, then SIGKILL to those still there after `grace`.
/// Returns the apps whose processes were stopped.
pub(crate) fn reap(dir: &Path, grace: Duration) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut orphans: Vec<(String, Pid, u64)> = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let _ = std::fs::remove_file(&path);
        if name.ends_with(".tmp") {
            continue;
        }
        let mut parts = text.split_whitespace();
        let (Some(Ok(pid)), Some(Ok(t))) = (
            parts.next().map(str::parse::<u32>),
            parts.next().map(str::parse::<u64>),
        ) else {
            tracing::warn!(file = %path.display(), "unreadable process record, ignored");
            continue;
        };
        if pid > 1 && start_time(pid) == Some(t) {
            orphans.push((name, Pid::from_raw(pid as i32), t));
        }
    }
    for (app, pgid, _) in &orphans {
        tracing::warn!(app = %app, pid = pgid.as_raw(), "stopping a process left running by a previous runtime");
        let _ = killpg(*pgid, Signal::SIGTERM);
    }
    #[allow(clippy::disallowed_methods)] // a bounded wait at start-up, outside any simulation
    let begun = std::time::Instant::now();
    let alive = |orphans: &[(String, Pid, u64)]| {
        orphans
            .iter()
            .any(|(_, p, t)| start_time(p.as_raw() as u32) == Some(*t))
    };
    while alive(&orphans) && begun.elapsed() < grace {
        std::thread::sleep(Duration::from_millis(20));
    }
    for (_, pgid, t) in &orphans {
        if start_time(pgid.as_raw() as u32) == Some(*t) {
            let _ = killpg(*pgid, Signal::SIGKILL);
        }
    }
    orphans.into_iter().map(|(a, _, _)| a).collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn an_orphan_is_stopped_and_a_reused_pid_is_not() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("pids");
        // A process in its own group, as the runtime starts apps.
        let mut orphan = std::process::Command::new("sleep");
        orphan.arg("30");
        std::os::unix::process::CommandExt::process_group(&mut orphan, 0);
        let mut orphan = orphan.spawn().unwrap();
        record(&dir, "web", orphan.id());
        // A record whose pid now names another process (this one).
        std::fs::write(dir.join("api"), format!("{} 1\n", std::process::id())).unwrap();
        std::fs::write(dir.join("junk"), "not a record").unwrap();

        let reaped = reap(&dir, Duration::from_secs(5));
        assert_eq!(reaped, vec!["web".to_string()]);
        let status = orphan.wait().unwrap();
        assert!(!status.success(), "sleep was stopped early: {status}");
        // Every record was consumed; this process is alive (we are here).
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0);
    }

    #[test]
    fn forgotten_processes_are_not_touched() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("pids");
        let mut child = std::process::Command::new("sleep");
        child.arg("30");
        std::os::unix::process::CommandExt::process_group(&mut child, 0);
        let mut child = child.spawn().unwrap();
        record(&dir, "web", child.id());
        forget(&dir, "web");
        assert!(reap(&dir, Duration::from_secs(1)).is_empty());
        assert!(child.try_wait().unwrap().is_none(), "still running");
        child.kill().unwrap();
        let _ = child.wait();
    }
}
