//! Child processes of the groups that run in network namespaces
//! (`swarm-netns`, `nat-netns`): `bench-report` starts itself inside a
//! namespace with a role in the environment; the child answers on stdout,
//! line by line, and exits when the parent goes.

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::Duration;

/// The children of a run; killed and reaped on drop (before the
/// namespaces they run in are deleted).
#[derive(Default)]
pub(crate) struct Children(Vec<Child>);

impl Children {
    /// The children's process ids, in the order they were started (the
    /// program's own: `ip netns exec` replaces itself with it).
    pub(crate) fn pids(&self) -> impl Iterator<Item = u32> + '_ {
        self.0.iter().map(Child::id)
    }
}

impl Drop for Children {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Starts `command` (this program, run in a namespace) with `role_var`
/// set to `role` and `env`; returns its stdout, line by line. Its stderr
/// goes to ours; its stdin is a pipe that stays open while it is in
/// `children`.
pub(crate) fn spawn(
    mut command: Command,
    role_var: &str,
    role: &str,
    env: &[(&str, String)],
    children: &mut Children,
) -> Result<Receiver<String>, String> {
    command
        .env(role_var, role)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    for (k, v) in env {
        command.env(k, v);
    }
    let mut child = command
        .spawn()
        .map_err(|e| format!("cannot start the {role}: {e}"))?;
    let stdout = child.stdout.take();
    children.0.push(child);
    let stdout = stdout.ok_or_else(|| format!("no stdout from the {role}"))?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    Ok(rx)
}

/// The rest of the first line that starts with `prefix`; other lines are
/// passed on to stderr.
pub(crate) fn wait_line(
    lines: &Receiver<String>,
    prefix: &str,
    wait: Duration,
) -> Result<String, String> {
    loop {
        match lines.recv_timeout(wait) {
            Ok(line) => match line.strip_prefix(prefix) {
                Some(rest) => return Ok(rest.trim().to_string()),
                None => eprintln!("unexpected output: {line}"),
            },
            Err(RecvTimeoutError::Timeout) => return Err(format!("no answer within {wait:?}")),
            Err(RecvTimeoutError::Disconnected) => {
                return Err("exited without answering (its error is above)".to_string());
            }
        }
    }
}

/// Exits this child when its stdin closes: the parent holds the other end
/// of the pipe, so that happens when the parent is gone, even if it died
/// before killing its children.
pub(crate) fn exit_with_parent() {
    std::thread::spawn(|| {
        let mut stdin = std::io::stdin();
        let mut buf = [0u8; 64];
        loop {
            match stdin.read(&mut buf) {
                Ok(0) | Err(_) => std::process::exit(0),
                Ok(_) => {}
            }
        }
    });
}

/// Prints `line` on stdout for the parent, flushed.
pub(crate) fn say(line: &str) -> Result<(), String> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}")
        .and_then(|()| out.flush())
        .map_err(|e| format!("writing to the parent: {e}"))
}
