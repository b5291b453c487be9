//! Stopping an app's process group: SIGTERM to the group, a grace
//! period for the app and then the rest of its group to exit, SIGKILL to
//! the group; and whether a group still has running members.

use std::time::Duration;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::process::Child;
use tokio::time::Instant;

use crate::limits::Applied;

/// Whether process group `pgid` has a member that has not exited.
pub(crate) fn group_alive(pgid: Pid) -> bool {
    if killpg(pgid, None).is_err() {
        return false;
    }
    // Signal 0 succeeds while any member is a zombie, and members that
    // outlived their parent are reaped by init, which some container
    // inits do only about once a second: every stop then waited out its
    // whole grace period. Zombies have exited; only running members count.
    live_member_of(pgid).unwrap_or(true)
}

/// Whether a process of group `pgid` is running (not a zombie), from
/// `/proc`; `None` where `/proc` cannot be read.
fn live_member_of(pgid: Pid) -> Option<bool> {
    let want = pgid.as_raw().to_string();
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue; // gone meanwhile
        };
        // `pid (comm) state ppid pgrp ...`; comm may hold anything, so
        // the fields are counted from its closing parenthesis.
        let Some((_, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let mut fields = rest.split_whitespace();
        let state = fields.next().unwrap_or("");
        let pgrp = fields.nth(1).unwrap_or("");
        if pgrp == want && state != "Z" && state != "X" {
            return Some(true);
        }
    }
    Some(false)
}

/// TERM to the group, up to `grace` for the main process and then the
/// rest of the group to exit, then KILL to the group.
pub(crate) async fn stop_group(
    child: &mut Child,
    pgid: Pid,
    grace: Duration,
    applied: &Applied,
) -> std::process::ExitStatus {
    let _ = killpg(pgid, Signal::SIGTERM);
    let deadline = Instant::now() + grace;
    let mut status = tokio::time::timeout_at(deadline, child.wait())
        .await
        .ok()
        .and_then(|r| r.ok());
    while Instant::now() < deadline && group_alive(pgid) && status.is_some() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    if status.is_none() || group_alive(pgid) {
        let _ = killpg(pgid, Signal::SIGKILL);
    }
    applied.kill_all();
    if status.is_none() {
        status = child.wait().await.ok();
    }
    status.unwrap_or_else(|| {
        use std::os::unix::process::ExitStatusExt;
        std::process::ExitStatus::from_raw(9)
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::os::unix::process::CommandExt;

    use super::*;

    fn state_of(pid: u32) -> String {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        let (_, rest) = stat.rsplit_once(')').unwrap();
        rest.split_whitespace().next().unwrap().to_string()
    }

    /// A group whose only member is a zombie has exited: stopping an app
    /// used to wait out its whole grace period for init to reap it.
    #[tokio::test]
    async fn a_group_of_zombies_is_not_alive() {
        let mut running = std::process::Command::new("sleep")
            .arg("30")
            .process_group(0)
            .spawn()
            .unwrap();
        let pgid = Pid::from_raw(running.id() as i32);
        assert!(group_alive(pgid));
        running.kill().unwrap();
        // Not waited for: a zombie until `wait`.
        for _ in 0..500 {
            if state_of(running.id()) == "Z" {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(state_of(running.id()), "Z");
        assert!(
            killpg(pgid, None).is_ok(),
            "signal 0 still reaches a zombie"
        );
        assert!(!group_alive(pgid), "a group of zombies counts as alive");
        running.wait().unwrap();
        assert!(!group_alive(pgid));
    }
}
