//! The commands that talk to the fleet.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use clap::{Args, Subcommand, ValueEnum};
use futures::StreamExt;
use p2p_core::{LogSelection, LogStream, NodeKey, PeerAddr, PeerId, PreSharedKey};
use p2p_deploy::controller::{BatchSize, FailureLimit, NodeView, Plan, Release, RolloutPlan};
use p2p_deploy::proto::{Reply, Request};
use p2p_deploy::{ActivateOptions, Controller, ControllerConfig, NodeInfo, PackageFile, Selector};
use p2p_examples::net::{self, Backend, NetOptions, Reach, Relays};
use p2p_examples::show::{DeployView, NodeRow, StatusRow, ViewStyle, report_lines};
use serde::{Deserialize, Serialize};

/// Exit code of a rollout that halted or left some nodes failed.
pub(crate) const PARTIAL: u8 = 3;

/// How to reach the fleet: flags, else the config file, else defaults.
#[derive(Args, Clone, Default)]
pub(crate) struct Global {
    /// The config file (default: p2pctl/config.toml in the user's config
    /// directory; missing is fine).
    #[arg(long, global = true, env = "P2PCTL_CONFIG")]
    pub config: Option<PathBuf>,
    /// The transport.
    #[arg(long, global = true, value_enum, env = "P2PCTL_BACKEND")]
    pub backend: Option<Backend>,
    /// Nodes to ask: what `p2pd id` prints (`<id>@<addr>,<addr>...`), several
    /// separated by commas or spaces, or the flag repeated.
    #[arg(long, global = true, env = "P2PCTL_BOOTSTRAP")]
    pub bootstrap: Vec<String>,
    /// The private network's pre-shared key file.
    #[arg(long, global = true, env = "P2PCTL_PSK_FILE")]
    pub psk_file: Option<PathBuf>,
    /// This controller's node key (made on first use); its id is what
    /// nodes list as an operator.
    #[arg(long, global = true, env = "P2PCTL_KEY")]
    pub key: Option<PathBuf>,
    /// Addresses to bind (comma separated); default: every interface, a
    /// free port.
    #[arg(long, global = true, env = "P2PCTL_LISTEN", value_delimiter = ',')]
    pub listen: Vec<std::net::SocketAddr>,
    /// How far it reaches: local, relays (those of --relay, or of the
    /// bootstrap addresses), public (number 0's iroh relays).
    #[arg(long, global = true, env = "P2PCTL_CONNECTIVITY", value_enum)]
    pub connectivity: Option<Reach>,
    /// Relays: iroh relay URLs, libp2p relay nodes' addresses; comma
    /// separated or the flag repeated.
    #[arg(long = "relay", global = true, env = "P2PCTL_RELAYS")]
    pub relays: Vec<String>,
    /// iroh: PEM file of certificates trusted for the relays.
    #[arg(long, global = true, env = "P2PCTL_RELAY_CA")]
    pub relay_ca: Option<PathBuf>,
    /// One JSON object per line on stdout.
    #[arg(long, global = true)]
    pub(crate) json: bool,
    /// More output on stderr (repeat for more).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
}

/// `p2pctl`'s config file.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct CtlConfig {
    backend: Option<Backend>,
    bootstrap: Vec<String>,
    psk_file: Option<PathBuf>,
    key: Option<PathBuf>,
    listen: Vec<std::net::SocketAddr>,
    connectivity: Option<Reach>,
    relays: Vec<String>,
    relay_ca: Option<PathBuf>,
}

fn config_dir() -> PathBuf {
    dirs::config_dir()
        .map(|d| d.join("p2pctl"))
        .unwrap_or_else(|| PathBuf::from(".p2pctl"))
}

/// The settings in force.
pub(crate) struct Settings {
    net: NetOptions,
    bootstrap: Vec<PeerAddr>,
    key: PathBuf,
    /// JSON output.
    pub(crate) json: bool,
}

impl Global {
    /// Flags over the config file over defaults.
    pub(crate) fn settings(&self) -> Result<Settings> {
        let (file, explicit) = match &self.config {
            Some(p) => (p.clone(), true),
            None => (config_dir().join("config.toml"), false),
        };
        let cfg: CtlConfig = match std::fs::read_to_string(&file) {
            Ok(text) => toml::from_str(&text).with_context(|| format!("in {}", file.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !explicit => CtlConfig::default(),
            Err(e) => return Err(e).with_context(|| format!("reading {}", file.display())),
        };
        let base = file.parent().map(Path::to_path_buf).unwrap_or_default();
        let bootstrap = if self.bootstrap.is_empty() {
            cfg.bootstrap
        } else {
            self.bootstrap.clone()
        };
        let bootstrap = net::peer_list("bootstrap", &bootstrap)?;
        let psk_file = self
            .psk_file
            .clone()
            .or_else(|| cfg.psk_file.map(|p| base.join(p)));
        let psk = psk_file
            .map(|p| PreSharedKey::load(&p).with_context(|| format!("psk file {}", p.display())))
            .transpose()?;
        let key = self
            .key
            .clone()
            .or_else(|| cfg.key.map(|p| base.join(p)))
            .unwrap_or_else(|| config_dir().join("node.key"));
        let backend = self.backend.or(cfg.backend).unwrap_or_default();
        let mut relays = if self.relays.is_empty() {
            cfg.relays
        } else {
            self.relays.clone()
        };
        let explicit_reach = self.connectivity.or(cfg.connectivity);
        if backend == Backend::Iroh && relays.is_empty() && explicit_reach.is_none() {
            // A node known only through its relay: use the relays the
            // bootstrap addresses name.
            for a in bootstrap.iter().flat_map(|p| &p.addrs) {
                if a.contains("://") && !relays.contains(a) {
                    relays.push(a.clone());
                }
            }
        }
        let relay_ca = self
            .relay_ca
            .clone()
            .or_else(|| cfg.relay_ca.map(|p| base.join(p)));
        let ca_certs = match &relay_ca {
            Some(p) => net::read_relay_ca(p)?,
            None => Vec::new(),
        };
        let net = NetOptions {
            backend,
            listen: if self.listen.is_empty() {
                cfg.listen
            } else {
                self.listen.clone()
            },
            psk,
            relays: Relays::new(explicit_reach, relays, ca_certs, false),
            ..NetOptions::default()
        };
        net.relays.check(backend)?;
        Ok(Settings {
            net,
            bootstrap,
            key,
            json: self.json,
        })
    }
}

impl Settings {
    fn node_key(&self) -> Result<NodeKey> {
        if let Some(dir) = self.key.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        NodeKey::load_or_generate(&self.key, &mut rand::rng())
            .with_context(|| format!("controller key {}", self.key.display()))
    }

    async fn controller(&self) -> Result<(Controller, Arc<dyn p2p_core::Provider>)> {
        if self.bootstrap.is_empty() {
            bail!(
                "no node to ask: give --bootstrap <id>@<addr> (from `p2pd id`) or set bootstrap in the config file"
            );
        }
        let provider = net::bind(&self.node_key()?, &self.net).await?;
        Ok((
            Controller::new(
                provider.clone(),
                ControllerConfig {
                    bootstrap: self.bootstrap.clone(),
                    request_timeout: Duration::from_secs(15),
                    seed: rand::random(),
                    ..ControllerConfig::default()
                },
            ),
            provider,
        ))
    }
}

/// Which nodes a command is about.
#[derive(Args, Clone, Default)]
pub(crate) struct Targets {
    /// A label selector (`role=web,zone!=b`); default: every node.
    #[arg(long, short = 'l')]
    pub selector: Option<String>,
    /// Node ids (comma separated), besides those the selector picks.
    #[arg(long, value_delimiter = ',')]
    pub nodes: Vec<String>,
}

#[derive(Clone, Copy, ValueEnum)]
pub(crate) enum PlanKind {
    /// Every target at once.
    All,
    /// Batches of --batch, one after another.
    Rolling,
    /// --canary nodes first, then the rest in batches of --batch.
    Canary,
}

/// The commands that talk to nodes.
#[derive(Subcommand)]
pub(crate) enum Online {
    /// Print this controller's peer id (for the nodes' `operators`).
    Id,
    /// The nodes: id, name, labels, address, apps, health.
    Nodes {
        #[command(flatten)]
        targets: Targets,
    },
    /// Apps across nodes (one app, or all).
    #[command(alias = "apps")]
    Status {
        /// The app.
        app: Option<String>,
        #[command(flatten)]
        targets: Targets,
    },
    /// Deploy a signed package to the selected nodes.
    Deploy {
        /// The package file.
        package: PathBuf,
        #[command(flatten)]
        targets: Targets,
        /// How targets are taken.
        #[arg(long, value_enum, default_value = "all")]
        plan: PlanKind,
        /// Batch size: a number of nodes or a percentage ("25%").
        #[arg(long, default_value = "1")]
        batch: String,
        /// Canary nodes (canary plan).
        #[arg(long, default_value_t = 1)]
        canary: usize,
        /// Failed nodes tolerated: a number or a percentage.
        #[arg(long, default_value = "0")]
        max_failures: String,
        /// Leave changed nodes on the new version when the rollout halts.
        #[arg(long)]
        no_rollback: bool,
    },
    /// Start an app (and keep it running).
    Start {
        /// The app.
        app: String,
        #[command(flatten)]
        targets: Targets,
    },
    /// Stop an app (and keep it stopped).
    Stop {
        /// The app.
        app: String,
        #[command(flatten)]
        targets: Targets,
    },
    /// Restart an app.
    Restart {
        /// The app.
        app: String,
        #[command(flatten)]
        targets: Targets,
    },
    /// Activate an installed version (through the health gate).
    Switch {
        /// The app.
        app: String,
        /// The version.
        version: semver::Version,
        #[command(flatten)]
        targets: Targets,
    },
    /// Go back to the version active before the current one.
    Rollback {
        /// The app.
        app: String,
        #[command(flatten)]
        targets: Targets,
    },
    /// Remove an app, or one inactive version of it.
    Remove {
        /// The app.
        app: String,
        /// Only this version.
        #[arg(long)]
        version: Option<semver::Version>,
        #[command(flatten)]
        targets: Targets,
    },
    /// An app's logs from many nodes, each line prefixed with its node.
    Logs {
        /// The app.
        app: String,
        /// Keep following.
        #[arg(short, long)]
        follow: bool,
        /// Lines from the end of each node's log.
        #[arg(long, default_value_t = 20)]
        tail: usize,
        /// Only stderr.
        #[arg(long)]
        stderr: bool,
        #[command(flatten)]
        targets: Targets,
    },
    /// Find releases held in the fleet: a name, or a prefix ending in `*`.
    Search {
        /// `web`, `web*`, or `*`.
        query: String,
        /// A semver requirement (`^1.2`).
        #[arg(long)]
        version: Option<semver::VersionReq>,
    },
}

fn out<T: Serialize>(s: &Settings, value: &T, text: impl FnOnce()) {
    if s.json {
        match serde_json::to_string(value) {
            Ok(line) => println!("{line}"),
            Err(e) => eprintln!("p2pctl: cannot encode the output: {e}"),
        }
    } else {
        text();
    }
}

async fn pick(ctl: &Controller, targets: &Targets) -> Result<(Vec<NodeView>, Vec<NodeInfo>)> {
    let views = ctl.nodes().await;
    for v in NodeView::unanswered(&views) {
        if let Err(e) = &v.info {
            eprintln!("p2pctl: node {} did not answer: {e}", v.addr.id.short());
        }
    }
    let selector: Selector = targets
        .selector
        .as_deref()
        .unwrap_or("")
        .parse()
        .map_err(|e| anyhow!("--selector: {e}"))?;
    let ids = targets
        .nodes
        .iter()
        .map(|s| resolve(&views, s))
        .collect::<Result<Vec<_>>>()?;
    let use_selector = targets.selector.is_some() || ids.is_empty();
    let chosen = Controller::select(&views, use_selector.then_some(&selector), &ids)?;
    Ok((views, chosen))
}

/// A node by name, full id or id prefix. A name wins: a node named `b1`
/// is found by `b1` even when another node's id starts with `b1`.
fn resolve(views: &[NodeView], s: &str) -> Result<PeerId> {
    let named: Vec<PeerId> = views
        .iter()
        .filter(|v| {
            v.info
                .as_ref()
                .is_ok_and(|i| !i.name.is_empty() && i.name == s)
        })
        .map(|v| v.addr.id)
        .collect();
    let hits: Vec<PeerId> = if named.is_empty() {
        views
            .iter()
            .filter(|v| v.addr.id.to_string().starts_with(s))
            .map(|v| v.addr.id)
            .collect()
    } else {
        named
    };
    match hits.as_slice() {
        [one] => Ok(*one),
        [] => bail!("--nodes {s}: no such node among those answering"),
        _ => bail!(
            "--nodes {s}: {} nodes match; give more of the id",
            hits.len()
        ),
    }
}

#[derive(Serialize)]
struct ActionRow<'a> {
    node: String,
    action: &'a str,
    app: &'a str,
    ok: bool,
    result: String,
}

/// Runs an online command.
pub(crate) async fn run(s: &Settings, cmd: Online) -> Result<ExitCode> {
    if let Online::Id = cmd {
        let key = s.node_key()?;
        out(
            s,
            &serde_json::json!({"id": key.peer_id().to_string()}),
            || println!("{}", key.peer_id()),
        );
        return Ok(ExitCode::SUCCESS);
    }
    let (ctl, provider) = s.controller().await?;
    let result = run_with(s, &ctl, cmd).await;
    // Peers learn at once that this controller is gone, instead of at
    // their idle timeout.
    provider.close("p2pctl is done").await;
    result
}

async fn run_with(s: &Settings, ctl: &Controller, cmd: Online) -> Result<ExitCode> {
    match cmd {
        Online::Id => unreachable!("answered above"),
        Online::Nodes { targets } => {
            let (views, chosen) = pick(ctl, &targets).await?;
            if !s.json {
                println!("{}", NodeRow::header());
            }
            for v in &views {
                let row = match (chosen.iter().find(|c| c.id == v.addr.id), &v.info) {
                    (Some(i), _) => NodeRow::of(i, v.path.as_ref()),
                    (None, Err(e)) => NodeRow::unreachable(v, e),
                    (None, Ok(_)) => continue, // not selected
                };
                out(s, &row, || println!("{}", row.line()));
            }
            let unreachable = views.iter().any(|v| v.info.is_err());
            return Ok(if unreachable {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            });
        }
        Online::Status { app, targets } => {
            let (_, chosen) = pick(ctl, &targets).await?;
            if !s.json {
                println!("{}", StatusRow::header());
            }
            let mut found = false;
            for n in &chosen {
                for a in n
                    .apps
                    .iter()
                    .filter(|a| app.as_ref().is_none_or(|x| *x == a.name))
                {
                    found = true;
                    let row = StatusRow::of(std::slice::from_ref(n), Some(&a.name));
                    out(
                        s,
                        &serde_json::json!({"node": n.id.to_string(), "name": n.name, "app": a}),
                        || {
                            for r in &row {
                                println!("{}", r.line());
                            }
                        },
                    );
                }
            }
            if let Some(app) = app
                && !found
            {
                bail!("no selected node has an app {app:?}");
            }
        }
        Online::Deploy {
            package,
            targets,
            plan,
            batch,
            canary,
            max_failures,
            no_rollback,
        } => {
            let pkg =
                PackageFile::open(&package).map_err(|e| anyhow!("{}: {e}", package.display()))?;
            if pkg.signatures.is_empty() {
                bail!(
                    "{} is not signed: sign it with `p2pctl sign {} --key <key>` (nodes refuse unsigned packages)",
                    package.display(),
                    package.display()
                );
            }
            let release = Arc::new(Release::from_package(&pkg));
            let (_, chosen) = pick(ctl, &targets).await?;
            if chosen.is_empty() {
                bail!("no node matches: nothing to deploy to");
            }
            let rollout = RolloutPlan {
                plan: match plan {
                    PlanKind::All => Plan::All,
                    PlanKind::Rolling => Plan::Rolling {
                        batch: batch_size(&batch)?,
                    },
                    PlanKind::Canary => Plan::Canary {
                        canary,
                        batch: Some(batch_size(&batch)?),
                    },
                },
                max_failures: failure_limit(&max_failures)?,
                rollback_on_halt: !no_rollback,
                options: ActivateOptions::default(),
            };
            let names: BTreeMap<PeerId, String> =
                chosen.iter().map(|n| (n.id, n.label())).collect();
            let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
            let deploy = ctl.deploy(release, &chosen, &rollout, tx);
            let mut view = DeployView::new(names.clone(), ViewStyle::auto(s.json));
            let show = async {
                while let Some(p) = rx.recv().await {
                    view.show(&p);
                }
            };
            let (report, ()) = tokio::join!(deploy, show);
            view.finish();
            out(s, &serde_json::json!({"report": &report}), || {
                for line in report_lines(&report, &names) {
                    println!("{line}");
                }
            });
            return Ok(if report.is_success() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(PARTIAL)
            });
        }
        Online::Start { app, targets } => {
            return act(
                s,
                ctl,
                &targets,
                "start",
                &app,
                Request::Start { app: app.clone() },
            )
            .await;
        }
        Online::Stop { app, targets } => {
            return act(
                s,
                ctl,
                &targets,
                "stop",
                &app,
                Request::Stop { app: app.clone() },
            )
            .await;
        }
        Online::Restart { app, targets } => {
            return act(
                s,
                ctl,
                &targets,
                "restart",
                &app,
                Request::Restart { app: app.clone() },
            )
            .await;
        }
        Online::Switch {
            app,
            version,
            targets,
        } => {
            let r = Request::Switch {
                app: app.clone(),
                version,
                options: ActivateOptions::default(),
            };
            return act(s, ctl, &targets, "switch", &app, r).await;
        }
        Online::Rollback { app, targets } => {
            let r = Request::Rollback {
                app: app.clone(),
                options: ActivateOptions::default(),
            };
            return act(s, ctl, &targets, "rollback", &app, r).await;
        }
        Online::Remove {
            app,
            version,
            targets,
        } => {
            let r = Request::Remove {
                app: app.clone(),
                version,
            };
            return act(s, ctl, &targets, "remove", &app, r).await;
        }
        Online::Logs {
            app,
            follow,
            tail,
            stderr,
            targets,
        } => {
            let (_, chosen) = pick(ctl, &targets).await?;
            let selection = LogSelection {
                stream: if stderr {
                    LogStream::Stderr
                } else {
                    LogStream::Both
                },
                tail: Some(tail),
                follow,
            };
            let mut lines = ctl.logs(&chosen, &app, selection).await;
            let width = chosen
                .iter()
                .map(|n| n.name.len().max(10))
                .max()
                .unwrap_or(10);
            let mut failed = false;
            while let Some(item) = lines.next().await {
                match item {
                    Ok((node, line)) => out(
                        s,
                        &serde_json::json!({"node": node, "stream": line.stream, "line": line.line}),
                        || println!("{node:<width$} | {}", line.line),
                    ),
                    Err(e) => {
                        failed = true;
                        eprintln!("p2pctl: {e}");
                    }
                }
            }
            if failed {
                return Ok(ExitCode::from(1));
            }
        }
        Online::Search { query, version } => {
            let found = ctl.search(&query, version.as_ref()).await;
            for (addr, e) in &found.unanswered {
                eprintln!("p2pctl: node {} did not answer: {e}", addr.id.short());
            }
            for hit in &found.hits {
                out(s, hit, || {
                    let complete = hit.holders.iter().filter(|h| h.complete).count();
                    let active = hit.holders.iter().filter(|h| h.active).count();
                    println!(
                        "{} {}  {} bytes  held by {} node(s) ({complete} complete, active on {active})  id {}",
                        hit.name,
                        hit.version,
                        hit.size,
                        hit.holders.len(),
                        hit.id
                    )
                });
            }
            if found.hits.is_empty() && !s.json {
                eprintln!("p2pctl: no release matches {query:?}");
                return Ok(ExitCode::from(1));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The same request to every selected node; one line per node.
async fn act(
    s: &Settings,
    ctl: &Controller,
    targets: &Targets,
    action: &str,
    app: &str,
    request: Request,
) -> Result<ExitCode> {
    let (_, chosen) = pick(ctl, targets).await?;
    if chosen.is_empty() {
        bail!("no node matches");
    }
    let mut failures = 0;
    for (id, r) in ctl.request_all(&chosen, request).await {
        let node = chosen
            .iter()
            .find(|n| n.id == id)
            .map_or_else(|| id.short(), NodeInfo::label);
        let (ok, result) = match r {
            Ok(Reply::Activation(a)) => {
                let text = format!("{a:?}");
                (!text.starts_with("RolledBack"), text)
            }
            Ok(other) => (true, format!("{other:?}").chars().take(120).collect()),
            Err(e) => (false, e.to_string()),
        };
        if !ok {
            failures += 1;
        }
        let row = ActionRow {
            node: node.clone(),
            action,
            app,
            ok,
            result: result.clone(),
        };
        out(s, &row, || {
            println!(
                "{node:<14} {action} {app}: {}",
                if ok {
                    "ok".to_string()
                } else {
                    format!("FAILED: {result}")
                }
            )
        });
    }
    Ok(match failures {
        0 => ExitCode::SUCCESS,
        n if n == chosen.len() => ExitCode::from(1),
        _ => ExitCode::from(PARTIAL),
    })
}

fn batch_size(s: &str) -> Result<BatchSize> {
    match s.strip_suffix('%') {
        Some(p) => {
            let p: u8 = p
                .parse()
                .map_err(|_| anyhow!("--batch {s}: expected N or N%"))?;
            if p == 0 || p > 100 {
                bail!("--batch {s}: a percentage from 1 to 100");
            }
            Ok(BatchSize::Percent(p))
        }
        None => {
            let n: usize = s
                .parse()
                .map_err(|_| anyhow!("--batch {s}: expected N or N%"))?;
            if n == 0 {
                bail!("--batch 0: at least one node per batch");
            }
            Ok(BatchSize::Nodes(n))
        }
    }
}

fn failure_limit(s: &str) -> Result<FailureLimit> {
    match s.strip_suffix('%') {
        Some(p) => {
            let p: u8 = p
                .parse()
                .ok()
                .filter(|p| *p <= 100)
                .ok_or_else(|| anyhow!("--max-failures {s}: expected N or N% (0 to 100)"))?;
            Ok(FailureLimit::Percent(p))
        }
        None => {
            Ok(FailureLimit::Count(s.parse().map_err(|_| {
                anyhow!("--max-failures {s}: expected N or N%")
            })?))
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn view(seed: u8, name: &str) -> NodeView {
        let id = NodeKey::from_seed([seed; 32]).peer_id();
        NodeView {
            addr: PeerAddr::id_only(id),
            info: Ok(NodeInfo {
                id,
                name: name.into(),
                labels: BTreeMap::new(),
                addr: PeerAddr::id_only(id),
                sdk_version: String::new(),
                apps: Vec::new(),
                peers: Vec::new(),
            }),
            path: None,
        }
    }

    #[test]
    fn a_name_wins_over_an_id_that_starts_with_it() {
        let views: Vec<NodeView> = (1..=40).map(|i| view(i, &format!("n{i}"))).collect();
        // Some id starts with "b" or a digit: name the node after it.
        let other = &views[0];
        let prefix: String = other.addr.id.to_string()[..2].to_string();
        let mut views = views;
        views.push(view(99, &prefix));
        let named = resolve(&views, &prefix).unwrap();
        assert_eq!(named, NodeKey::from_seed([99; 32]).peer_id());
        // An id prefix still works when no name matches.
        let id = views[3].addr.id.to_string();
        assert_eq!(resolve(&views, &id[..12]).unwrap(), views[3].addr.id);
    }
}
