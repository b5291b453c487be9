//! A node agent composed from a data directory and a [`DaemonConfig`]:
//! the node key, the trusted publisher keys, the transport, the process
//! runtime, the on-disk state and the version directories. `p2pd run` is
//! this plus signals; the `fleet` example starts several in one process.
//!
//! The data directory holds:
//!
//! | path | what |
//! |---|---|
//! | `p2pd.toml` | the config ([`crate::daemon::CONFIG_FILE`]) |
//! | `node.key` | the node's identity, mode 0600 |
//! | `trusted/` | publishers' `*.pub` keys, and `revoked/` |
//! | `state/` | the agent's records (versions, active, previous) |
//! | `versions/` | each installed version, unpacked |
//! | `runtime/` | the apps' logs and working state |
//! | `p2pd.addr` | the full peer address, while the node runs |

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use p2p_core::metrics::{Metered, Registry};
use p2p_core::{FsStorage, NodeKey, PeerAddr, PeerId, Provider, Runtime, SystemClock};
use p2p_deploy::membership::{Membership, Profile};
use p2p_deploy::proto::Request;
use p2p_deploy::{Agent, AgentConfig, AgentParts, DirInstaller, TrustStore, UnpackLimits};
use p2p_runtime::{LogRotation, ProcessRuntime, RuntimeConfig};
use tokio::task::JoinHandle;

use crate::daemon::{ADDR_FILE, DaemonConfig, KEY_FILE, OnShutdown};
use crate::net;

/// A running agent and the parts it was built from.
pub struct RunningNode {
    agent: Arc<Agent>,
    registry: Arc<Registry>,
    provider: Arc<dyn Provider>,
    runtime: Arc<ProcessRuntime>,
    serving: JoinHandle<p2p_core::Result<()>>,
    addr_file: PathBuf,
    addr_task: JoinHandle<()>,
}

impl RunningNode {
    /// Starts the agent of the node in `dir` (absolute: apps run in their
    /// own working directories) with `cfg`, writes `p2pd.addr`, and dials
    /// the bootstrap peers in the background.
    ///
    /// # Errors
    /// A missing node key, an unreadable trust directory, a bad setting,
    /// a transport that cannot bind, or state that cannot be opened; each
    /// error names the file or setting.
    pub async fn start(dir: &Path, cfg: &DaemonConfig) -> Result<Self> {
        if !dir.is_absolute() {
            bail!("the data directory must be absolute: {}", dir.display());
        }
        let key_path = dir.join(KEY_FILE);
        let key = NodeKey::load(&key_path).with_context(|| {
            format!(
                "node key {} (run `p2pd init --data-dir {}`)",
                key_path.display(),
                dir.display()
            )
        })?;
        let trust_dir = dir.join(&cfg.trusted_keys);
        let trust = TrustStore::load(&trust_dir)
            .with_context(|| format!("trusted_keys {}", trust_dir.display()))?
            .with_threshold(cfg.signatures_required);
        if trust.trusted().is_empty() {
            tracing::warn!(
                dir = %trust_dir.display(),
                "no trusted publisher key: every release will be refused until one is added (and the agent restarted)"
            );
        }
        let operators = cfg.operator_ids()?;
        let bootstrap = cfg.bootstrap_addrs()?;
        let mut registry = p2p_core::metrics::new_registry();
        let provider = Metered::wrap(
            net::bind(&key, &cfg.net(dir)?).await?,
            registry.sub_registry_with_prefix("p2p"),
        );
        let runtime = Arc::new(
            ProcessRuntime::new(
                RuntimeConfig::new(dir.join("runtime"))
                    .log_rotation(LogRotation {
                        max_bytes: cfg.app_log_max_size.as_u64(),
                        files: cfg.app_log_files,
                    })
                    .seed(rand::random()),
                Arc::new(SystemClock),
            )
            .context("starting the process runtime")?,
        );
        let storage = FsStorage::open(dir.join("state"))
            .await
            .with_context(|| format!("opening the state in {}", dir.join("state").display()))?;
        let mut acfg = AgentConfig::new(trust);
        acfg.name = cfg.name.clone();
        acfg.labels = cfg.labels.clone();
        acfg.operators = operators;
        acfg.keep_versions = cfg.keep_versions;
        acfg.events_kept = cfg.events_kept;
        acfg.swarm.upload_limit = cfg.upload_limit.map(|r| r.as_u64());
        acfg.swarm.download_limit = cfg.download_limit.map(|r| r.as_u64());
        let storage: Arc<dyn p2p_core::Storage> = Arc::new(storage);
        let agent = Arc::new(Agent::new(
            acfg,
            AgentParts {
                provider: provider.clone(),
                runtime: runtime.clone(),
                storage: storage.clone(),
                installer: Arc::new(DirInstaller::new(
                    dir.join("versions"),
                    UnpackLimits::default(),
                )),
                clock: Arc::new(SystemClock),
                seed: rand::random(),
            },
        ));
        if cfg.membership.enabled {
            let membership = Membership::new(
                cfg.membership_config(key.peer_id())?,
                key.clone(),
                provider.clone(),
                storage,
                Arc::new(SystemClock),
                Profile::default(),
                rand::random(),
            )
            .await
            .context("starting membership")?;
            agent.set_membership(membership)?;
        }
        agent.register_metrics(registry.sub_registry_with_prefix("p2p"));
        let registry = Arc::new(registry);
        let serving = tokio::spawn({
            let agent = agent.clone();
            async move { agent.run().await }
        });
        // Bound to every interface, the first addresses come from an
        // interface scan right after binding: wait a little for them, so
        // that p2pd.addr is dialable from another host from the start.
        let local_only = cfg.listen.iter().all(|a| a.ip().is_loopback());
        let mut addr = provider.local_addr();
        for _ in 0..40 {
            if addr
                .addrs
                .iter()
                .any(|a| local_only || !crate::net::is_loopback_addr(a))
            {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            addr = provider.local_addr();
        }
        let addr_file = dir.join(ADDR_FILE);
        write_addr(&addr_file, &addr)
            .with_context(|| format!("writing {}", addr_file.display()))?;
        let addr_task = tokio::spawn(follow_addr(provider.clone(), addr_file.clone(), addr));
        // With membership on, joining dials the bootstrap peers (and says
        // which did not answer).
        let dial = if cfg.membership.enabled {
            Vec::new()
        } else {
            bootstrap
        };
        for peer in dial {
            let provider = provider.clone();
            tokio::spawn(async move {
                match provider.connect(&peer).await {
                    Ok(_) => tracing::info!(peer = %peer.id.short(), "bootstrap peer reached"),
                    Err(e) => {
                        tracing::warn!(peer = %peer, error = %e, "bootstrap peer unreachable")
                    }
                }
            });
        }
        Ok(RunningNode {
            agent,
            registry,
            provider,
            runtime,
            serving,
            addr_file,
            addr_task,
        })
    }

    /// The node's full peer address (`<id>@<addresses>`).
    pub fn addr(&self) -> PeerAddr {
        self.provider.local_addr()
    }

    /// The node's metrics registry (what `p2pd` serves at `/metrics`).
    pub fn registry(&self) -> Arc<Registry> {
        self.registry.clone()
    }

    /// The agent, for in-process requests.
    pub fn agent(&self) -> &Agent {
        &self.agent
    }

    /// The process runtime the apps run under.
    pub fn runtime(&self) -> &dyn Runtime {
        self.runtime.as_ref()
    }

    /// Waits until the agent stops by itself (its transport closed or it
    /// failed), stops the apps, and says why.
    pub async fn stopped(&mut self) -> anyhow::Error {
        let r = (&mut self.serving).await;
        self.addr_task.abort();
        let _ = std::fs::remove_file(&self.addr_file);
        self.runtime.shutdown().await;
        self.provider.close("the agent stopped").await;
        match r {
            Ok(Ok(())) => anyhow::anyhow!("the agent stopped: its transport closed"),
            Ok(Err(e)) => anyhow::Error::new(e).context("the agent stopped"),
            Err(e) => anyhow::anyhow!("the agent failed: {e}"),
        }
    }

    /// Stops the node: with [`OnShutdown::Stop`] every app is first
    /// recorded as stopped; then the processes stop and the transport
    /// closes. `p2pd.addr` is removed.
    pub async fn shutdown(self, on_shutdown: OnShutdown) {
        self.addr_task.abort();
        let _ = std::fs::remove_file(&self.addr_file);
        if on_shutdown == OnShutdown::Stop {
            stop_apps(&self.agent, self.provider.local_id()).await;
        }
        self.serving.abort();
        self.runtime.shutdown().await;
        self.provider.close("the node is stopping").await;
    }
}

/// Writes `p2pd.addr` whole or not at all: a reader never sees half.
fn write_addr(path: &Path, addr: &PeerAddr) -> std::io::Result<()> {
    let tmp = path.with_extension("addr.tmp");
    std::fs::write(&tmp, format!("{addr}\n"))?;
    std::fs::rename(&tmp, path)
}

/// Keeps `p2pd.addr` current: a node's addresses change after start (an
/// interface comes up, a relay is reached and its URL or circuit joins
/// them), and `p2pd id` prints what peers should dial now.
async fn follow_addr(provider: Arc<dyn Provider>, path: PathBuf, mut last: PeerAddr) {
    loop {
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        let now = provider.local_addr();
        if now != last {
            tracing::info!(address = %now, "this node's address changed");
            if let Err(e) = write_addr(&path, &now) {
                tracing::warn!(file = %path.display(), error = %e, "cannot update the address file");
            }
            last = now;
        }
    }
}

/// Records every app as stopped (the node's own id may operate on it).
async fn stop_apps(agent: &Agent, me: PeerId) {
    let apps = match agent.apps().await {
        Ok(a) => a,
        Err(e) => {
            tracing::warn!(error = %e, "cannot list the apps to stop them");
            return;
        }
    };
    for app in apps {
        let request = Request::Stop {
            app: app.name.clone(),
        };
        match agent.handle(me, request, None, None).await {
            Ok(_) => tracing::info!(app = %app.name, "stopped, and kept stopped"),
            Err(e) => tracing::warn!(app = %app.name, error = %e, "could not stop"),
        }
    }
}
