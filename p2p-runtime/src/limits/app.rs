//! The limits of one app instance ([`Applied`]): its cgroups, made with
//! their limits before it starts, and the shell wrapper that puts the
//! process in them (or applies the rlimit) before the app's code runs;
//! then its OOM kills counted, and everything in its cgroups killed and
//! the cgroups removed when it ends.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use p2p_core::runtime::ResourceLimits;
use p2p_core::{Error, Result};

use super::host::{Cgroups, LimitSupport};

impl Cgroups {
    /// Makes the cgroups of app `app` with `limits`, or says how the
    /// rlimit applies. Where cgroups work, every app gets one, limits or
    /// not: it is how stop finds every process the app made, even those
    /// that left its process group. On an error nothing is left behind.
    pub(crate) fn prepare(&self, app: &str, limits: &ResourceLimits) -> Result<Applied> {
        let mut applied = Applied::none();
        match self.prepare_into(app, limits, &mut applied) {
            Ok(()) => Ok(applied),
            Err(e) => {
                for d in &applied.dirs {
                    remove_cgroup(d);
                }
                Err(e)
            }
        }
    }

    fn prepare_into(&self, app: &str, limits: &ResourceLimits, out: &mut Applied) -> Result<()> {
        let none = limits.memory_bytes.is_none() && limits.cpu_millis.is_none();
        let write = |dir: &Path, file: &str, value: String| {
            fs::write(dir.join(file), &value)
                .map_err(|e| Error::io(format!("setting {file} = {value} in {}", dir.display()), e))
        };
        let fresh = |dir: PathBuf, out: &mut Applied| -> Result<PathBuf> {
            if let Some(d) = out.dirs.iter().find(|d| **d == dir) {
                // Co-mounted hierarchies: one directory for both.
                return Ok(d.clone());
            }
            remove_cgroup(&dir);
            fs::create_dir_all(&dir)
                .map_err(|e| Error::io(format!("creating cgroup {}", dir.display()), e))?;
            out.dirs.push(dir.clone());
            Ok(dir)
        };
        match &self.support {
            LimitSupport::V2 { base } => {
                let dir = fresh(base.join(app), out)?;
                if let Some(m) = limits.memory_bytes {
                    write(&dir, "memory.max", m.to_string())?;
                    let _ = write(&dir, "memory.swap.max", "0".into());
                    out.oom_file = Some((dir.join("memory.events"), "oom_kill"));
                }
                if let Some(c) = limits.cpu_millis {
                    write(&dir, "cpu.max", format!("{} 100000", u64::from(c) * 100))?;
                }
                if !none {
                    out.mechanism = Some("cgroup v2".into());
                }
            }
            LimitSupport::V1 { memory, cpu } => {
                let mut notes = Vec::new();
                match (memory, limits.memory_bytes) {
                    (Some(base), Some(m)) => {
                        let dir = fresh(base.join(app), out)?;
                        write(&dir, "memory.limit_in_bytes", m.to_string())?;
                        // Swap may not be accounted; where it is, no swap.
                        let _ = write(&dir, "memory.memsw.limit_in_bytes", m.to_string());
                        out.oom_file = Some((dir.join("memory.oom_control"), "oom_kill"));
                    }
                    (None, Some(m)) => {
                        out.rlimit_as = Some(m);
                        notes.push("memory by rlimit");
                    }
                    (Some(base), None) => {
                        // Tracking only: no limit written.
                        fresh(base.join(app), out)?;
                    }
                    (None, None) => {}
                }
                match (cpu, limits.cpu_millis) {
                    (Some(base), Some(c)) => {
                        let dir = fresh(base.join(app), out)?;
                        write(&dir, "cpu.cfs_period_us", "100000".into())?;
                        write(&dir, "cpu.cfs_quota_us", (u64::from(c) * 100).to_string())?;
                    }
                    (None, Some(_)) => notes.push("CPU not limited: no cpu controller"),
                    (Some(base), None) if memory.is_none() => {
                        fresh(base.join(app), out)?;
                    }
                    _ => {}
                }
                if !none {
                    let mut mechanism = "cgroup v1".to_string();
                    if !notes.is_empty() {
                        mechanism = format!("{mechanism} ({})", notes.join("; "));
                    }
                    out.mechanism = Some(mechanism);
                }
            }
            LimitSupport::Rlimit => {
                if !none {
                    let mut mechanism = "rlimit".to_string();
                    if limits.cpu_millis.is_some() {
                        mechanism.push_str(" (CPU not limited: no writable cgroup)");
                    }
                    out.rlimit_as = limits.memory_bytes;
                    out.mechanism = Some(mechanism);
                }
            }
        }
        Ok(())
    }
}

/// The limits applied to one app instance.
#[derive(Debug, Clone, Default)]
pub(crate) struct Applied {
    /// cgroup directories the process joins.
    pub(crate) dirs: Vec<PathBuf>,
    /// The file and key that count OOM kills.
    oom_file: Option<(PathBuf, &'static str)>,
    /// `RLIMIT_AS` in bytes, when that is the memory mechanism.
    pub(crate) rlimit_as: Option<u64>,
    /// What status reports in `limits_applied`.
    pub(crate) mechanism: Option<String>,
}

/// The shell wrapper: join the cgroups, apply the rlimit, run the app.
pub(crate) const WRAPPER: &str = r#"set -f
IFS=:
for f in $P2P_RUNTIME_CGROUPS; do echo $$ > "$f" || exit 125; done
unset IFS P2P_RUNTIME_CGROUPS
if [ -n "$P2P_RUNTIME_RLIMIT_AS_KIB" ]; then ulimit -v "$P2P_RUNTIME_RLIMIT_AS_KIB" || exit 125; fi
unset P2P_RUNTIME_RLIMIT_AS_KIB
exec "$@""#;

impl Applied {
    fn none() -> Self {
        Applied::default()
    }

    /// Whether the process must start through [`WRAPPER`].
    pub(crate) fn needs_wrapper(&self) -> bool {
        !self.dirs.is_empty() || self.rlimit_as.is_some()
    }

    /// Whether the app's processes are tracked by a cgroup.
    pub(crate) fn tracked(&self) -> bool {
        !self.dirs.is_empty()
    }

    /// Kills every process in the app's cgroups (those that left its
    /// process group included).
    pub(crate) fn kill_all(&self) {
        for d in &self.dirs {
            kill_all_in(d);
        }
    }

    /// The environment the wrapper reads.
    pub(crate) fn wrapper_env(&self) -> Vec<(String, String)> {
        let procs: Vec<String> = self
            .dirs
            .iter()
            .map(|d| d.join("cgroup.procs").display().to_string())
            .collect();
        let mut env = vec![("P2P_RUNTIME_CGROUPS".to_string(), procs.join(":"))];
        if let Some(b) = self.rlimit_as {
            env.push((
                "P2P_RUNTIME_RLIMIT_AS_KIB".to_string(),
                (b / 1024).max(1).to_string(),
            ));
        }
        env
    }

    /// OOM kills counted so far in this app's cgroup.
    pub(crate) fn oom_kills(&self) -> u64 {
        let Some((file, key)) = &self.oom_file else {
            return 0;
        };
        fs::read_to_string(file)
            .ok()
            .and_then(|t| {
                t.lines().find_map(|l| {
                    let (k, v) = l.split_once(' ')?;
                    (k == *key).then(|| v.trim().parse().ok()).flatten()
                })
            })
            .unwrap_or(0)
    }

    /// Kills whatever is left in the cgroups and removes them.
    pub(crate) async fn release(&self) {
        for dir in &self.dirs {
            for _ in 0..50 {
                kill_all_in(dir);
                if fs::remove_dir(dir).is_ok() || !dir.exists() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

fn kill_all_in(dir: &Path) {
    let Ok(text) = fs::read_to_string(dir.join("cgroup.procs")) else {
        return;
    };
    for pid in text.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

/// Best-effort removal of a leftover cgroup (from a previous run).
fn remove_cgroup(dir: &Path) {
    if dir.exists() {
        kill_all_in(dir);
        let _ = fs::remove_dir(dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_limits_and_cgroups_nothing_is_made() {
        let cg = Cgroups {
            support: LimitSupport::Rlimit,
        };
        let a = cg.prepare("x", &ResourceLimits::default()).unwrap();
        assert!(!a.needs_wrapper());
        assert_eq!(a.mechanism, None);
    }

    #[test]
    fn rlimit_fallback_says_cpu_is_not_limited() {
        let cg = Cgroups {
            support: LimitSupport::Rlimit,
        };
        let a = cg
            .prepare(
                "x",
                &ResourceLimits {
                    memory_bytes: Some(64 << 20),
                    cpu_millis: Some(500),
                },
            )
            .unwrap();
        assert!(a.needs_wrapper());
        assert_eq!(a.rlimit_as, Some(64 << 20));
        let m = a.mechanism.clone().unwrap();
        assert!(
            m.starts_with("rlimit") && m.contains("CPU not limited"),
            "{m}"
        );
        let env = a.wrapper_env();
        assert!(
            env.iter()
                .any(|(k, v)| k == "P2P_RUNTIME_RLIMIT_AS_KIB" && v == "65536")
        );
    }
}
