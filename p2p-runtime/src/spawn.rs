//! Spawning an app's process: the command line (through the limits
//! wrapper when the app joins cgroups or gets an rlimit), the user, the
//! clean environment, its own process group, piped output.

use std::path::Path;
use std::process::Stdio;

use p2p_core::runtime::AppSpec;
use p2p_core::{Error, Result};
use tokio::process::Command;

use crate::limits::{Applied, WRAPPER};
use crate::program::{DEFAULT_PATH, resolve_program};

/// The command that runs `spec` (through the limits wrapper if needed).
pub(crate) fn command(
    spec: &AppSpec,
    applied: &Applied,
    user: Option<(u32, u32)>,
) -> Result<Command> {
    let program = resolve_program(
        &spec.entrypoint,
        &spec.workdir,
        spec.env.get("PATH").map(String::as_str),
    )?;
    let mut cmd = if applied.needs_wrapper() {
        // The wrapper joins the cgroups as the supervisor's user; with
        // `user` set, setpriv then drops to that user before the app runs.
        let mut c = Command::new("/bin/sh");
        c.arg("-c").arg(WRAPPER).arg("p2p-runtime");
        if let Some((uid, gid)) = user {
            let setpriv = resolve_program("setpriv", Path::new("/"), None).map_err(|_| {
                Error::invalid(
                    "user",
                    "running an app as another user inside a cgroup needs `setpriv` (util-linux)",
                )
            })?;
            c.arg(setpriv)
                .arg(format!("--reuid={uid}"))
                .arg(format!("--regid={gid}"))
                .arg("--clear-groups")
                .arg("--");
        }
        c.arg(&program);
        c
    } else {
        let mut c = Command::new(&program);
        if let Some((uid, gid)) = user {
            c.uid(uid).gid(gid);
        }
        c
    };
    cmd.args(&spec.args)
        .current_dir(&spec.workdir)
        .env_clear()
        .env("PATH", DEFAULT_PATH)
        .env("P2P_APP_NAME", &spec.name)
        .env("P2P_APP_VERSION", &spec.version)
        .envs(&spec.env)
        .envs(
            applied
                .wrapper_env()
                .into_iter()
                .filter(|_| applied.needs_wrapper()),
        )
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    Ok(cmd)
}
