//! [`ProcessRuntime`]: the p2p-core [`Runtime`] over OS processes. It
//! checks specs, keeps the table of apps and starts, stops, replaces and
//! removes them; each app's process is run by its supervisor task
//! (`supervisor.rs`).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use p2p_core::runtime::{
    AppSpec, AppState, AppStatus, HealthChecker, LogLines, LogSelection, Runtime, check_app_name,
};
use p2p_core::sync::lock;
use p2p_core::{Clock, Error, Result};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use crate::config::RuntimeConfig;
use crate::health::ProcessHealthChecker;
use crate::limits::Cgroups;
use crate::logs::AppLogs;
use crate::state::{App, DoneGuard, Inner};
use crate::supervisor::supervise;
use crate::validate::validate;

/// A number unique within this runtime (for tombstone names).
fn rt_unique(inner: &Inner) -> u64 {
    inner
        .unique
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// A [`Runtime`] over OS processes: each app in its own process group,
/// supervised by a task that restarts it per its policy, captures its
/// output, probes its health and applies its resource limits. See the
/// [crate docs](crate).
#[derive(Clone)]
pub struct ProcessRuntime {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for ProcessRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProcessRuntime")
            .field("root", &self.inner.config.root)
            .field("limits", self.inner.cgroups.support())
            .finish()
    }
}

impl ProcessRuntime {
    /// A runtime with files under `config.root`, timestamps from `clock`
    /// and [`ProcessHealthChecker`] probes. Probes the host's cgroups once.
    pub fn new(config: RuntimeConfig, clock: Arc<dyn Clock>) -> Result<Self> {
        Self::with_checker(config, clock, Arc::new(ProcessHealthChecker::new()))
    }

    /// The same with another health checker.
    pub fn with_checker(
        config: RuntimeConfig,
        clock: Arc<dyn Clock>,
        checker: Arc<dyn HealthChecker>,
    ) -> Result<Self> {
        check_app_name(&config.cgroup_name).map_err(|why| Error::invalid("cgroup_name", why))?;
        if config.log_rotation.max_bytes < 1024 || config.log_rotation.files == 0 {
            return Err(Error::invalid(
                "log_rotation",
                "files must be at least 1 KiB and at least one kept",
            ));
        }
        let logs = config.root.join("logs");
        std::fs::create_dir_all(&logs)
            .map_err(|e| Error::io(format!("creating {}", logs.display()), e))?;
        // Processes a killed predecessor left running would run beside
        // the ones this runtime starts: stop them first.
        let reaped = crate::pids::reap(&config.root.join("pids"), Duration::from_secs(5));
        if !reaped.is_empty() {
            tracing::warn!(apps = ?reaped, "stopped processes left by a previous runtime");
        }
        let cgroups = Cgroups::detect(&config.cgroup_name);
        let rng = ChaCha8Rng::seed_from_u64(config.seed);
        Ok(ProcessRuntime {
            inner: Arc::new(Inner {
                config,
                clock,
                checker,
                cgroups,
                rng: Mutex::new(rng),
                apps: Mutex::new(BTreeMap::new()),
                unique: std::sync::atomic::AtomicU64::new(0),
            }),
        })
    }

    /// How resource limits are enforced on this host.
    pub fn limit_support(&self) -> &crate::LimitSupport {
        self.inner.cgroups.support()
    }

    /// Where the logs of app `name` are written.
    pub fn log_dir(&self, name: &str) -> PathBuf {
        self.inner.config.root.join("logs").join(name)
    }

    /// Stops every app (as [`Runtime::stop`]), ends log followers and
    /// removes the runtime's cgroup. Call it before dropping the runtime:
    /// supervisors keep running (and restarting apps) until their apps are
    /// stopped, or until the tokio runtime they run on shuts down, which
    /// kills the apps' main processes only.
    pub async fn shutdown(&self) {
        let apps: Vec<Arc<App>> = lock(&self.inner.apps).values().cloned().collect();
        futures::future::join_all(apps.iter().map(|a| async move {
            a.stop.cancel();
            a.finished().await;
            a.logs.close_followers();
        }))
        .await;
        self.inner.cgroups.cleanup();
    }

    fn app(&self, name: &str) -> Result<Arc<App>> {
        lock(&self.inner.apps)
            .get(name)
            .cloned()
            .ok_or_else(|| Error::NotFound {
                what: format!("app {name:?}"),
            })
    }
}

#[async_trait]
impl Runtime for ProcessRuntime {
    async fn start(&self, spec: AppSpec) -> Result<AppStatus> {
        let user = validate(&spec)?;
        let name = spec.name.clone();
        // An instance with no process (backing off, settled, or cleaning
        // up after an exit) is replaced: stopped, then waited for. One
        // with a process, or whose first start is under way, is live.
        let previous = lock(&self.inner.apps).get(&name).cloned();
        if let Some(prev) = previous.filter(|p| !p.is_done()) {
            let st = prev.status();
            if st.pid.is_some() || (st.state == AppState::Starting && st.started_at.is_none()) {
                return Err(Error::AlreadyExists {
                    what: format!("app {name:?}"),
                });
            }
            prev.stop.cancel();
            let wait = prev.spec.stop_grace + Duration::from_secs(5);
            if tokio::time::timeout(wait, prev.finished()).await.is_err() {
                return Err(Error::timeout(
                    format!("replacing app {name:?}: its supervisor did not end"),
                    wait,
                ));
            }
        }
        // Checked, registered and spawned under one lock: two starts of
        // one name cannot both pass, and a stop always finds the task.
        let (tx, rx) = oneshot::channel();
        let app = {
            let mut apps = lock(&self.inner.apps);
            let logs = match apps.get(&name) {
                Some(a) if !a.is_done() => {
                    return Err(Error::AlreadyExists {
                        what: format!("app {name:?}"),
                    });
                }
                Some(a) => a.logs.clone(),
                None => AppLogs::open(self.log_dir(&name), self.inner.config.log_rotation)?,
            };
            let app = Arc::new(App {
                status: Mutex::new(AppStatus::starting(name.clone(), spec.version.clone())),
                spec,
                logs,
                stop: CancellationToken::new(),
                done: CancellationToken::new(),
            });
            let guard = DoneGuard(app.done.clone());
            let (inner, sup) = (self.inner.clone(), app.clone());
            tokio::spawn(async move {
                let _guard = guard;
                supervise(inner, sup, user, tx).await;
            });
            apps.insert(name, app.clone());
            app
        };
        match rx.await {
            Ok(Ok(())) => Ok(app.status()),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(Error::closed("the supervisor ended before the app started")),
        }
    }

    async fn stop(&self, name: &str) -> Result<AppStatus> {
        let app = self.app(name)?;
        app.stop.cancel();
        app.finished().await;
        app.set(|s| {
            if s.state != AppState::Stopped {
                s.reason = Some("stopped on request".into());
            }
            s.state = AppState::Stopped;
            s.pid = None;
        });
        Ok(app.status())
    }

    async fn restart(&self, name: &str) -> Result<AppStatus> {
        let app = self.app(name)?;
        self.stop(name).await?;
        self.start(app.spec.clone()).await
    }

    async fn status(&self, name: &str) -> Result<AppStatus> {
        Ok(self.app(name)?.status())
    }

    async fn list(&self) -> Result<Vec<AppStatus>> {
        let apps: Vec<Arc<App>> = lock(&self.inner.apps).values().cloned().collect();
        Ok(apps.iter().map(|a| a.status()).collect())
    }

    async fn remove(&self, name: &str) -> Result<()> {
        let app = self.app(name)?;
        app.stop.cancel();
        app.finished().await;
        let removed = {
            let mut apps = lock(&self.inner.apps);
            // Only this instance: a start that replaced it meanwhile keeps
            // its entry, and its logs.
            if !apps.get(name).is_some_and(|a| Arc::ptr_eq(a, &app)) {
                return Ok(());
            }
            apps.remove(name);
            app.logs.close_followers();
            // Moved aside under the lock, so that a start of the same name
            // right after makes fresh files that this removal cannot touch.
            let dir = app.logs.dir().to_path_buf();
            let tomb = dir.with_file_name(format!(".removed-{name}-{}", rt_unique(&self.inner)));
            match std::fs::rename(&dir, &tomb) {
                Ok(()) => tomb,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
                Err(e) => return Err(Error::io(format!("removing {}", dir.display()), e)),
            }
        };
        let dir = removed;
        if let Err(e) = tokio::fs::remove_dir_all(&dir).await
            && e.kind() != std::io::ErrorKind::NotFound
        {
            return Err(Error::io(format!("removing {}", dir.display()), e));
        }
        Ok(())
    }

    async fn logs(&self, name: &str, selection: LogSelection) -> Result<LogLines> {
        self.app(name)?.logs.read(&selection).await
    }
}
