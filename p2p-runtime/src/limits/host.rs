//! What this host offers for enforcing limits ([`LimitSupport`]): cgroup
//! v2 where this process's cgroup can delegate the controllers, cgroup v1
//! hierarchies otherwise, else rlimits; probed once per runtime.

use std::fs;
use std::path::{Path, PathBuf};

/// How limits are enforced on this host, as detected by [`Cgroups::detect`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum LimitSupport {
    /// A cgroup v2 directory with the `memory` and `cpu` controllers
    /// enabled for children.
    V2 {
        /// Where this runtime makes one cgroup per app.
        base: PathBuf,
    },
    /// cgroup v1 hierarchies (either may be missing).
    V1 {
        /// Where app cgroups go in the memory hierarchy.
        memory: Option<PathBuf>,
        /// Where app cgroups go in the cpu hierarchy.
        cpu: Option<PathBuf>,
    },
    /// No writable cgroup: memory through `RLIMIT_AS`, CPU not limited.
    Rlimit,
}

/// The host's cgroup support, probed once per runtime.
#[derive(Debug, Clone)]
pub struct Cgroups {
    pub(super) support: LimitSupport,
}

/// One mount from `/proc/self/mountinfo`: mount point, fs type, options.
fn mounts() -> Vec<(PathBuf, String, String)> {
    let Ok(text) = fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    text.lines()
        .filter_map(|l| {
            let (pre, post) = l.split_once(" - ")?;
            let point = pre.split_whitespace().nth(4)?;
            let mut post = post.split_whitespace();
            let fstype = post.next()?.to_string();
            let _source = post.next()?;
            let opts = post.next().unwrap_or("").to_string();
            Some((PathBuf::from(point), fstype, opts))
        })
        .collect()
}

/// This process's cgroup path per hierarchy: (controllers, path).
fn own_cgroups() -> Vec<(String, String)> {
    let Ok(text) = fs::read_to_string("/proc/self/cgroup") else {
        return Vec::new();
    };
    text.lines()
        .filter_map(|l| {
            let mut parts = l.splitn(3, ':');
            let _id = parts.next()?;
            let ctrls = parts.next()?.to_string();
            let path = parts.next()?.to_string();
            Some((ctrls, path))
        })
        .collect()
}

fn join(mount: &Path, path: &str) -> PathBuf {
    mount.join(path.trim_start_matches('/'))
}

/// Makes `dir` (and checks it is ours to write).
fn make_dir(dir: &Path) -> bool {
    fs::create_dir_all(dir).is_ok() && dir.join("cgroup.procs").exists()
}

impl Cgroups {
    /// Probes the host: makes `<own cgroup>/<name>` in the first mechanism
    /// that works, in order v2, v1, rlimits.
    pub fn detect(name: &str) -> Self {
        let mounts = mounts();
        let own = own_cgroups();
        if let Some(base) = Self::try_v2(&mounts, &own, name) {
            return Cgroups {
                support: LimitSupport::V2 { base },
            };
        }
        let v1 = |ctrl: &str| -> Option<PathBuf> {
            let (mount, _, _) = mounts
                .iter()
                .find(|(_, t, o)| t == "cgroup" && o.split(',').any(|x| x == ctrl))?;
            let (_, path) = own.iter().find(|(c, _)| c.split(',').any(|x| x == ctrl))?;
            let base = join(mount, path).join(name);
            make_dir(&base).then_some(base)
        };
        let (memory, cpu) = (v1("memory"), v1("cpu"));
        if memory.is_some() || cpu.is_some() {
            return Cgroups {
                support: LimitSupport::V1 { memory, cpu },
            };
        }
        Cgroups {
            support: LimitSupport::Rlimit,
        }
    }

    fn try_v2(
        mounts: &[(PathBuf, String, String)],
        own: &[(String, String)],
        name: &str,
    ) -> Option<PathBuf> {
        let (mount, _, _) = mounts.iter().find(|(_, t, _)| t == "cgroup2")?;
        let (_, path) = own.iter().find(|(c, _)| c.is_empty())?;
        let ours = join(mount, path);
        let controllers = fs::read_to_string(ours.join("cgroup.controllers")).ok()?;
        let has = |c: &str| controllers.split_whitespace().any(|x| x == c);
        if !has("memory") || !has("cpu") {
            return None;
        }
        let base = ours.join(name);
        if !make_dir(&base) {
            return None;
        }
        // Children of `base` get the controllers only if `ours` and `base`
        // delegate them; with processes in `ours` (not the root) the
        // kernel refuses, and v2 is not usable here.
        let enable =
            |dir: &Path| fs::write(dir.join("cgroup.subtree_control"), "+memory +cpu").is_ok();
        if enable(&ours) && enable(&base) {
            Some(base)
        } else {
            let _ = fs::remove_dir(&base);
            None
        }
    }

    /// What was detected.
    pub fn support(&self) -> &LimitSupport {
        &self.support
    }

    /// Removes the runtime's own cgroup directory (app cgroups must be
    /// gone already).
    pub(crate) fn cleanup(&self) {
        match &self.support {
            LimitSupport::V2 { base } => {
                let _ = fs::remove_dir(base);
            }
            LimitSupport::V1 { memory, cpu } => {
                for b in [memory, cpu].into_iter().flatten() {
                    let _ = fs::remove_dir(b);
                }
            }
            LimitSupport::Rlimit => {}
        }
    }
}
