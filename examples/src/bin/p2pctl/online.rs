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
use p2p_deploy::Release;
use p2p_deploy::controller::{BatchSize, FailureLimit, NodeResult, NodeView, Plan, RolloutPlan};
use p2p_deploy::proto::{Activation, Reply, Request};
use p2p_deploy::{ActivateOptions, Controller, ControllerConfig, NodeInfo, PackageFile, Selector};
use p2p_examples::net::{self, Backend, NetOptions, Reach, Relays};
use p2p_examples::show::{
    DeployView, NodeRow, PeerRow, StatusRow, ViewStyle, report_lines, result_text, state_name,
};
use serde::{Deserialize, Serialize};

/// Exit code of a rollout that halted or left some nodes failed.
pub(crate) const PARTIAL: u8 = 3;

/// Who this controller is, and how it prints.
#[derive(Args, Clone, Default)]
pub(crate) struct Identity {
    /// The config file (default: p2pctl/config.toml in the user's config
    /// directory; missing is fine).
    #[arg(long, env = "P2PCTL_CONFIG")]
    pub config: Option<PathBuf>,
    /// This controller's node key (made on first use); its id is what
    /// nodes list as an operator. Not the signing key of `p2pctl sign`.
    #[arg(long, env = "P2PCTL_KEY")]
    pub key: Option<PathBuf>,
    /// One JSON object per line on stdout.
    #[arg(long)]
    pub(crate) json: bool,
}

/// The help heading of the network settings.
const NET: &str = "Reaching the fleet";

/// How to reach the fleet: flags, else `P2PCTL_*` variables, else the
/// config file, else defaults.
#[derive(Args, Clone, Default)]
pub(crate) struct Global {
    #[command(flatten)]
    pub who: Identity,
    /// The transport.
    #[arg(long, value_enum, env = "P2PCTL_BACKEND", help_heading = NET)]
    pub backend: Option<Backend>,
    /// Nodes to ask: what `p2pd id` prints (`<id>@<addr>,<addr>...`), several
    /// separated by commas or spaces, or the flag repeated.
    #[arg(long, env = "P2PCTL_BOOTSTRAP", help_heading = NET)]
    pub bootstrap: Vec<String>,
    /// The private network's pre-shared key file.
    #[arg(long, env = "P2PCTL_PSK_FILE", help_heading = NET)]
    pub psk_file: Option<PathBuf>,
    /// Addresses to bind (comma separated); default: every interface, a
    /// free port.
    #[arg(long, env = "P2PCTL_LISTEN", value_delimiter = ',', help_heading = NET)]
    pub listen: Vec<std::net::SocketAddr>,
    /// How far it reaches: local, relays (those of --relay, or of the
    /// bootstrap addresses), public (number 0's iroh relays).
    #[arg(long, env = "P2PCTL_CONNECTIVITY", value_enum, help_heading = NET)]
    pub connectivity: Option<Reach>,
    /// Relays: iroh relay URLs, libp2p relay nodes' addresses; comma
    /// separated or the flag repeated.
    #[arg(long = "relay", env = "P2PCTL_RELAYS", help_heading = NET)]
    pub relays: Vec<String>,
    /// iroh: PEM file of certificates trusted for the relays.
    #[arg(long, env = "P2PCTL_RELAY_CA", help_heading = NET)]
    pub relay_ca: Option<PathBuf>,
    /// How long a node gets to take the connection ("3s", the default): a
    /// node that is down costs this much.
    #[arg(long, env = "P2PCTL_CONNECT_TIMEOUT", value_parser = humantime::parse_duration, help_heading = NET)]
    pub connect_timeout: Option<Duration>,
    /// A node that sends nothing for this long while it works on a
    /// request ("5s", the default; at least 2s) is reported as having
    /// stopped answering, and counts as failed.
    #[arg(long, env = "P2PCTL_NODE_SILENCE", value_parser = humantime::parse_duration, help_heading = NET)]
    pub node_silence: Option<Duration>,
}

/// The default of `--connect-timeout`.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// The default of `--node-silence`.
const NODE_SILENCE: Duration = Duration::from_secs(5);

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
    /// "3s".
    connect_timeout: Option<String>,
    /// "5s".
    node_silence: Option<String>,
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
    node_silence: Duration,
    /// JSON output.
    pub(crate) json: bool,
}

impl Identity {
    /// The config file (an explicit one must exist) and the directory its
    /// relative paths start from.
    fn file(&self) -> Result<(CtlConfig, PathBuf)> {
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
        Ok((cfg, base))
    }

    /// Where the node key is: the flag, else the config file, else the
    /// default.
    fn key_path(&self, cfg: &CtlConfig, base: &Path) -> PathBuf {
        self.key
            .clone()
            .or_else(|| cfg.key.as_ref().map(|p| base.join(p)))
            .unwrap_or_else(|| config_dir().join("node.key"))
    }

    /// This controller's node key, made on first use.
    pub(crate) fn node_key(&self) -> Result<NodeKey> {
        let (cfg, base) = self.file()?;
        load_node_key(&self.key_path(&cfg, &base))
    }
}

/// A duration setting from the config file ("3s").
fn duration_setting(what: &str, v: Option<&String>) -> Result<Option<Duration>> {
    v.map(|t| humantime::parse_duration(t).map_err(|e| anyhow!("{what} = {t:?}: {e}")))
        .transpose()
}

impl Global {
    /// Flags over the config file over defaults.
    pub(crate) fn settings(&self) -> Result<Settings> {
        let (cfg, base) = self.who.file()?;
        let key = self.who.key_path(&cfg, &base);
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
        let connect_timeout = match self.connect_timeout {
            Some(d) => d,
            None => duration_setting("connect_timeout", cfg.connect_timeout.as_ref())?
                .unwrap_or(CONNECT_TIMEOUT),
        };
        if connect_timeout.is_zero() {
            bail!("connect timeout: must be more than zero");
        }
        let node_silence = match self.node_silence {
            Some(d) => d,
            None => {
                duration_setting("node_silence", cfg.node_silence.as_ref())?.unwrap_or(NODE_SILENCE)
            }
        };
        if node_silence < 2 * p2p_deploy::proto::HEARTBEAT {
            bail!(
                "node silence {node_silence:?}: at least {:?} (nodes send a heartbeat every {:?})",
                2 * p2p_deploy::proto::HEARTBEAT,
                p2p_deploy::proto::HEARTBEAT
            );
        }
        let net = NetOptions {
            backend,
            listen: if self.listen.is_empty() {
                cfg.listen
            } else {
                self.listen.clone()
            },
            psk,
            relays: Relays::new(explicit_reach, relays, ca_certs, false),
            connect_timeout: Some(connect_timeout),
            ..NetOptions::default()
        };
        net.relays.check(backend)?;
        Ok(Settings {
            net,
            bootstrap,
            key,
            node_silence,
            json: self.who.json,
        })
    }
}

/// The node key at `path`, made when missing. A signing key (from
/// `p2pctl keygen`) is refused by name: it is easy to pass one for the
/// other.
fn load_node_key(path: &Path) -> Result<NodeKey> {
    if let Ok(text) = std::fs::read_to_string(path)
        && text.starts_with("p2p-ed25519-secret")
    {
        bail!(
            "{} is a signing key (made by `p2pctl keygen`, for `p2pctl sign --signing-key`); \
             --key takes this controller's node key (made on first use, or by `p2pctl id --key <new file>`)",
            path.display()
        );
    }
    if let Some(dir) = path.parent()
        && !dir.as_os_str().is_empty()
    {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    NodeKey::load_or_generate(path, &mut rand::rng())
        .with_context(|| format!("controller key {}", path.display()))
}

impl Settings {
    fn node_key(&self) -> Result<NodeKey> {
        load_node_key(&self.key)
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
                    connect_timeout: self.net.connect_timeout.unwrap_or(CONNECT_TIMEOUT),
                    node_silence: Some(self.node_silence),
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
    #[arg(long, short = 'l', value_parser = parse_selector)]
    pub selector: Option<Selector>,
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
    Id {
        #[command(flatten)]
        who: Identity,
    },
    /// The nodes: id, name, labels, address, apps, health.
    Nodes {
        #[command(flatten)]
        net: Global,
        #[command(flatten)]
        targets: Targets,
    },
    /// Apps across nodes (one app, or all).
    #[command(alias = "apps")]
    Status {
        #[command(flatten)]
        net: Global,
        /// The app.
        app: Option<String>,
        #[command(flatten)]
        targets: Targets,
    },
    /// Deploy a signed package to the selected nodes.
    Deploy {
        #[command(flatten)]
        net: Global,
        /// The package file.
        package: PathBuf,
        #[command(flatten)]
        targets: Targets,
        /// How targets are taken.
        #[arg(long, value_enum, default_value = "all")]
        plan: PlanKind,
        /// Batch size: a number of nodes or a percentage ("25%").
        #[arg(long, default_value = "1", value_parser = batch_size)]
        batch: BatchSize,
        /// Canary nodes (canary plan).
        #[arg(long, default_value_t = 1)]
        canary: usize,
        /// Failed nodes tolerated: a number or a percentage.
        #[arg(long, default_value = "0", value_parser = failure_limit)]
        max_failures: FailureLimit,
        /// Leave changed nodes on the new version when the rollout halts.
        #[arg(long)]
        no_rollback: bool,
        /// Show what the deploy would do, changing nothing: the targets
        /// in their batches, what each would fetch, which would refuse
        /// and why, where the rollout would halt. The exit code is the
        /// deploy's, as foreseen.
        #[arg(long)]
        dry_run: bool,
    },
    /// Preheat: spread a signed package to the selected nodes' chunk
    /// stores (verified there, from this controller and from each other)
    /// without installing or activating it; a later `deploy` of it then
    /// moves nothing and activates at once.
    Stage {
        #[command(flatten)]
        net: Global,
        /// The package file.
        package: PathBuf,
        #[command(flatten)]
        targets: Targets,
        /// Failed nodes tolerated: a number or a percentage.
        #[arg(long, default_value = "0", value_parser = failure_limit)]
        max_failures: FailureLimit,
    },
    /// Start an app (and keep it running).
    Start {
        #[command(flatten)]
        net: Global,
        /// The app.
        app: String,
        #[command(flatten)]
        targets: Targets,
    },
    /// Stop an app (and keep it stopped).
    Stop {
        #[command(flatten)]
        net: Global,
        /// The app.
        app: String,
        #[command(flatten)]
        targets: Targets,
    },
    /// Restart an app.
    Restart {
        #[command(flatten)]
        net: Global,
        /// The app.
        app: String,
        #[command(flatten)]
        targets: Targets,
    },
    /// Activate an installed version (through the health gate).
    Switch {
        #[command(flatten)]
        net: Global,
        /// The app.
        app: String,
        /// The version.
        version: semver::Version,
        #[command(flatten)]
        targets: Targets,
    },
    /// Go back to the version active before the current one.
    Rollback {
        #[command(flatten)]
        net: Global,
        /// The app.
        app: String,
        #[command(flatten)]
        targets: Targets,
    },
    /// Remove an app, or one inactive version of it.
    Remove {
        #[command(flatten)]
        net: Global,
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
        #[command(flatten)]
        net: Global,
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
    /// The nodes' event logs, merged: deploys accepted, transfers done,
    /// installs, health gates passed and failed, rollbacks, app restarts
    /// and failures, refused requests. Each event has an index per node
    /// that only grows; `--since` reads on after one.
    Events {
        #[command(flatten)]
        net: Global,
        /// Keep following: new events as they come; a node that goes
        /// away is waited for and read on from where it was, nothing lost
        /// or repeated.
        #[arg(short, long)]
        follow: bool,
        /// Only events after index N: `N` for every node, `NODE=N` for
        /// one (a name or id; repeat the flag). Default: every event the
        /// nodes keep.
        #[arg(long, value_name = "[NODE=]N")]
        since: Vec<String>,
        #[command(flatten)]
        targets: Targets,
    },
    /// The fleet as membership knows it: every node a node has heard of
    /// (asked from the first bootstrap node that answers), up or
    /// unreachable since when.
    Peers {
        #[command(flatten)]
        net: Global,
    },
    /// Find releases held in the fleet: a name, or a prefix ending in `*`.
    Search {
        #[command(flatten)]
        net: Global,
        /// `web`, `web*`, or `*`.
        query: String,
        /// A semver requirement (`^1.2`).
        #[arg(long)]
        version: Option<semver::VersionReq>,
    },
}

impl Online {
    /// How this command reaches the fleet (`None` for `id`).
    fn net(&self) -> Option<&Global> {
        match self {
            Online::Id { .. } => None,
            Online::Nodes { net, .. }
            | Online::Status { net, .. }
            | Online::Deploy { net, .. }
            | Online::Stage { net, .. }
            | Online::Start { net, .. }
            | Online::Stop { net, .. }
            | Online::Restart { net, .. }
            | Online::Switch { net, .. }
            | Online::Rollback { net, .. }
            | Online::Remove { net, .. }
            | Online::Logs { net, .. }
            | Online::Events { net, .. }
            | Online::Peers { net }
            | Online::Search { net, .. } => Some(net),
        }
    }
}

pub(crate) fn out<T: Serialize>(s: &Settings, value: &T, text: impl FnOnce()) {
    if s.json {
        match serde_json::to_string(value) {
            Ok(line) => println!("{line}"),
            Err(e) => eprintln!("p2pctl: cannot encode the output: {e}"),
        }
    } else {
        text();
    }
}

/// Asks every known node for its info and picks the targets. Nodes that
/// did not answer are left out (their labels are unknown); callers count
/// them as failed.
pub(crate) async fn pick(
    ctl: &Controller,
    targets: &Targets,
) -> Result<(Vec<NodeView>, Vec<NodeInfo>)> {
    // Every node membership knows of, beyond the bootstrap list; nodes
    // that do not take part in membership are reached as listed.
    if let Err(e) = ctl.members().await {
        tracing::debug!(error = %e, "no membership list; asking the listed nodes only");
    }
    let views = ctl.nodes().await;
    for v in NodeView::unanswered(&views) {
        if let Err(e) = &v.info {
            eprintln!("p2pctl: node {} did not answer: {e}", v.addr.id.short());
        }
    }
    let ids = targets
        .nodes
        .iter()
        .map(|s| resolve(&views, s))
        .collect::<Result<Vec<_>>>()?;
    let chosen = Controller::select(&views, targets.selector.as_ref(), &ids)?;
    Ok((views, chosen))
}

fn parse_selector(s: &str) -> std::result::Result<Selector, String> {
    s.parse().map_err(|e| format!("{e}"))
}

/// A node by name, full id or id prefix. A name wins: a node named `b1`
/// is found by `b1` even when another node's id starts with `b1`.
pub(crate) fn resolve(views: &[NodeView], s: &str) -> Result<PeerId> {
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
pub(crate) async fn run(cmd: Online) -> Result<ExitCode> {
    let net = match (&cmd, cmd.net()) {
        (Online::Id { who }, _) => {
            let id = who.node_key()?.peer_id();
            if who.json {
                println!("{}", serde_json::json!({"id": id.to_string()}));
            } else {
                println!("{id}");
            }
            return Ok(ExitCode::SUCCESS);
        }
        (_, Some(net)) => net,
        (_, None) => unreachable!("every command but id reaches the fleet"),
    };
    // A package is checked, every byte against its signed descriptor,
    // before anything else: no node hears of a bad one.
    let release = match &cmd {
        Online::Deploy { package, .. } | Online::Stage { package, .. } => {
            Some(checked_release(package)?)
        }
        _ => None,
    };
    let s = &net.settings()?;
    let (ctl, provider) = s.controller().await?;
    let result = run_with(s, &ctl, cmd, release).await;
    // Peers learn at once that this controller is gone, instead of at
    // their idle timeout.
    provider.close("p2pctl is done").await;
    result
}

/// The release in `package`, refused unless it is signed and every byte
/// of its archive matches the descriptor (as `p2pctl verify` checks; trust
/// is each node's business). A changed byte is named by its chunk.
fn checked_release(package: &Path) -> Result<Arc<Release>> {
    let pkg = PackageFile::open(package).map_err(|e| anyhow!("{}: {e}", package.display()))?;
    if pkg.signatures.is_empty() {
        bail!(
            "{} is not signed: sign it with `p2pctl sign {} --signing-key <key>` (nodes refuse unsigned packages)",
            package.display(),
            package.display()
        );
    }
    pkg.check_archive()
        .map_err(|e| anyhow!("{}: REFUSED, nothing was sent: {e}", package.display()))?;
    Ok(Arc::new(Release::from_package(&pkg)))
}

/// What became of each node a command asked, for its exit code and its
/// last line (on stderr): 0 when every node did it, 3 when some did, 1
/// when none did. A node that did not answer counts as one that did not
/// do it.
pub(crate) struct Tally {
    what: String,
    pub(crate) done: usize,
    pub(crate) failed: Vec<(String, String)>,
}

impl Tally {
    pub(crate) fn new(what: impl Into<String>) -> Self {
        Tally {
            what: what.into(),
            done: 0,
            failed: Vec::new(),
        }
    }

    pub(crate) fn done(&mut self) {
        self.done += 1;
    }

    pub(crate) fn failed(&mut self, node: impl Into<String>, why: impl Into<String>) {
        self.failed.push((node.into(), why.into()));
    }

    /// The nodes of `views` that did not answer.
    pub(crate) fn unanswered(&mut self, views: &[NodeView]) {
        for v in NodeView::unanswered(views) {
            if let Err(e) = &v.info {
                self.failed(v.addr.id.short(), format!("did not answer: {e}"));
            }
        }
    }

    /// The exit code, after the last line when something failed, or
    /// always with `always`.
    pub(crate) fn finish(self, always: bool) -> ExitCode {
        let total = self.done + self.failed.len();
        let list = || {
            self.failed
                .iter()
                .map(|(n, why)| format!("{n}: {why}"))
                .collect::<Vec<_>>()
                .join("; ")
        };
        let (code, line) = if self.failed.is_empty() {
            (0, format!("{}: done on {total} node(s)", self.what))
        } else if self.done == 0 {
            let verb = if self
                .failed
                .iter()
                .all(|(_, w)| w.starts_with("did not answer"))
            {
                "no node answered"
            } else {
                "every node refused or failed"
            };
            (1, format!("{}: {verb}: {}", self.what, list()))
        } else {
            (
                PARTIAL,
                format!(
                    "{}: done on {} of {total} node(s); not on {}",
                    self.what,
                    self.done,
                    list()
                ),
            )
        };
        if code != 0 || always {
            eprintln!("p2pctl: {line}");
        }
        ExitCode::from(code)
    }
}

async fn run_with(
    s: &Settings,
    ctl: &Controller,
    cmd: Online,
    release: Option<Arc<Release>>,
) -> Result<ExitCode> {
    match cmd {
        Online::Id { .. } => unreachable!("answered above"),
        Online::Nodes { targets, .. } => {
            let (views, chosen) = pick(ctl, &targets).await?;
            if !s.json {
                println!("{}", NodeRow::header());
            }
            let mut tally = Tally::new("nodes");
            for v in &views {
                let row = match (chosen.iter().find(|c| c.id == v.addr.id), &v.info) {
                    (Some(i), _) => {
                        tally.done();
                        NodeRow::of(i, v.path.as_ref())
                    }
                    (None, Err(e)) => NodeRow::unreachable(v, e),
                    (None, Ok(_)) => continue, // not selected
                };
                out(s, &row, || println!("{}", row.line()));
            }
            if targets.nodes.is_empty() {
                tally.unanswered(&views);
            }
            Ok(tally.finish(false))
        }
        Online::Status { app, targets, .. } => {
            let (views, chosen) = pick(ctl, &targets).await?;
            if !s.json {
                println!("{}", StatusRow::header());
            }
            let mut tally = Tally::new("status");
            let mut found = false;
            for n in &chosen {
                tally.done();
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
            // Nodes that did not answer, after those that did.
            if targets.nodes.is_empty() {
                for v in NodeView::unanswered(&views) {
                    let error = v.info.as_ref().err().cloned().unwrap_or_default();
                    let row = StatusRow::unreachable(&v.addr.id.short(), app.as_deref());
                    out(
                        s,
                        &serde_json::json!({
                            "node": v.addr.id.to_string(),
                            "name": "",
                            "app": null,
                            "unreachable": true,
                            "error": error,
                        }),
                        || println!("{}", row.line()),
                    );
                }
                tally.unanswered(&views);
            }
            if let Some(app) = &app
                && !found
                && tally.done > 0
            {
                bail!("no selected node has an app {app:?}");
            }
            Ok(tally.finish(false))
        }
        Online::Deploy {
            package,
            targets,
            plan,
            batch,
            canary,
            max_failures,
            no_rollback,
            dry_run,
            ..
        } => {
            // Checked in `run`, before any node was contacted.
            let release = release.ok_or_else(|| anyhow!("{}: not loaded", package.display()))?;
            let rollout = RolloutPlan {
                plan: match plan {
                    PlanKind::All => Plan::All,
                    PlanKind::Rolling => Plan::Rolling { batch },
                    PlanKind::Canary => Plan::Canary {
                        canary,
                        batch: Some(batch),
                    },
                },
                max_failures,
                rollback_on_halt: !no_rollback,
                options: ActivateOptions::default(),
                stage: false,
            };
            if dry_run {
                return crate::observe::dry_run(s, ctl, release, &targets, &rollout).await;
            }
            roll_out(s, ctl, release, &targets, &rollout).await
        }
        Online::Stage {
            package,
            targets,
            max_failures,
            ..
        } => {
            let release = release.ok_or_else(|| anyhow!("{}: not loaded", package.display()))?;
            let rollout = RolloutPlan {
                max_failures,
                stage: true,
                ..RolloutPlan::default()
            };
            roll_out(s, ctl, release, &targets, &rollout).await
        }
        Online::Start { app, targets, .. } => {
            let r = Request::Start { app: app.clone() };
            act(s, ctl, &targets, "start", &app, r).await
        }
        Online::Stop { app, targets, .. } => {
            let r = Request::Stop { app: app.clone() };
            act(s, ctl, &targets, "stop", &app, r).await
        }
        Online::Restart { app, targets, .. } => {
            let r = Request::Restart { app: app.clone() };
            act(s, ctl, &targets, "restart", &app, r).await
        }
        Online::Switch {
            app,
            version,
            targets,
            ..
        } => {
            let r = Request::Switch {
                app: app.clone(),
                version,
                options: ActivateOptions::default(),
            };
            act(s, ctl, &targets, "switch", &app, r).await
        }
        Online::Rollback { app, targets, .. } => {
            let r = Request::Rollback {
                app: app.clone(),
                options: ActivateOptions::default(),
            };
            act(s, ctl, &targets, "rollback", &app, r).await
        }
        Online::Remove {
            app,
            version,
            targets,
            ..
        } => {
            let r = Request::Remove {
                app: app.clone(),
                version,
            };
            act(s, ctl, &targets, "remove", &app, r).await
        }
        Online::Logs {
            app,
            follow,
            tail,
            stderr,
            targets,
            ..
        } => {
            let (views, chosen) = pick(ctl, &targets).await?;
            let mut tally = Tally::new(format!("logs {app}"));
            if targets.nodes.is_empty() {
                tally.unanswered(&views);
            }
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
            let mut failed = 0;
            while let Some(item) = lines.next().await {
                match item {
                    Ok((node, line)) => out(
                        s,
                        &serde_json::json!({"node": node, "stream": line.stream, "line": line.line}),
                        || println!("{node:<width$} | {}", line.line),
                    ),
                    Err(e) => {
                        // Each node's stream ends in at most one error,
                        // which names the node.
                        failed += 1;
                        tally.failed("", e.to_string());
                    }
                }
            }
            for _ in failed..chosen.len() {
                tally.done();
            }
            Ok(tally.finish(false))
        }
        Online::Events {
            follow,
            since,
            targets,
            ..
        } => crate::observe::events(s, ctl, &targets, &since, follow).await,
        Online::Peers { .. } => {
            let found = ctl.members().await?;
            for (addr, e) in &found.unanswered {
                eprintln!("p2pctl: node {} did not answer: {e}", addr.id.short());
            }
            for e in &found.refused {
                eprintln!(
                    "p2pctl: node {} sent a record that does not verify: {e}",
                    found.from.short()
                );
            }
            if !s.json {
                println!("{}", PeerRow::header());
            }
            let now_ms = p2p_core::Clock::now(&p2p_core::SystemClock).as_millis();
            for m in &found.members {
                let row = PeerRow::of(m);
                out(s, &row, || println!("{}", row.line(now_ms)));
            }
            let up = found.up().count();
            if !s.json {
                eprintln!(
                    "p2pctl: {} node(s) known to {}: {up} up, {} unreachable",
                    found.members.len(),
                    found.from.short(),
                    found.members.len() - up
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Online::Search { query, version, .. } => {
            let found = ctl.search(&query, version.as_ref()).await;
            let mut tally = Tally::new(format!("search {query}"));
            for (addr, e) in &found.unanswered {
                tally.failed(addr.id.short(), format!("did not answer: {e}"));
            }
            for _ in found.unanswered.len()..ctl.known().len() {
                tally.done();
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
            if found.hits.is_empty() && tally.done > 0 {
                // Like grep: nothing found is a failure, with or
                // without --json.
                let code = tally.finish(false);
                eprintln!("p2pctl: no release matches {query:?}");
                return Ok(if code == ExitCode::SUCCESS {
                    ExitCode::from(1)
                } else {
                    code
                });
            }
            Ok(tally.finish(false))
        }
    }
}

/// A deploy, or with `rollout.stage` a stage, to the selected nodes:
/// progress as it goes, the report, and the exit code (a node counts as
/// done when it runs the release, or holds it for a stage).
async fn roll_out(
    s: &Settings,
    ctl: &Controller,
    release: Arc<Release>,
    targets: &Targets,
    rollout: &RolloutPlan,
) -> Result<ExitCode> {
    let (verb, onto) = if rollout.stage {
        ("stage", "stage on")
    } else {
        ("deploy", "deploy to")
    };
    let m = &release.descriptor.manifest;
    let what = format!("{verb} {} {}", m.name, m.version);
    let (views, chosen) = pick(ctl, targets).await?;
    let mut tally = Tally::new(&what);
    if targets.nodes.is_empty() {
        tally.unanswered(&views);
    }
    if chosen.is_empty() {
        if tally.failed.is_empty() {
            bail!("no node matches the selector: nothing to {onto}");
        }
        return Ok(tally.finish(true));
    }
    let names: BTreeMap<PeerId, String> = chosen.iter().map(|n| (n.id, n.label())).collect();
    let (tx, mut rx) = tokio::sync::mpsc::channel(1024);
    let run = ctl.deploy(release, &chosen, rollout, tx);
    let mut view = DeployView::new(names.clone(), ViewStyle::auto(s.json));
    let show = async {
        while let Some(p) = rx.recv().await {
            view.show(&p);
        }
    };
    let (report, ()) = tokio::join!(run, show);
    view.finish();
    if !s.json && !rollout.stage {
        view.print_held();
    }
    out(s, &serde_json::json!({"report": &report}), || {
        for line in report_lines(&report, &names) {
            println!("{line}");
        }
    });
    for (id, r) in &report.nodes {
        let name = names.get(id).cloned().unwrap_or_else(|| id.short());
        let rolled_back = report.rolled_back.contains(id);
        let done = if rollout.stage {
            matches!(r, NodeResult::Staged)
        } else {
            matches!(r, NodeResult::Activated | NodeResult::AlreadyActive) && !rolled_back
        };
        if done {
            tally.done();
        } else if rolled_back {
            tally.failed(name, "rolled back when the rollout halted");
        } else {
            tally.failed(name, result_text(r));
        }
    }
    Ok(tally.finish(true))
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
    let (views, chosen) = pick(ctl, targets).await?;
    let mut tally = Tally::new(format!("{action} {app}"));
    if targets.nodes.is_empty() {
        tally.unanswered(&views);
    }
    if chosen.is_empty() && tally.failed.is_empty() {
        bail!("no node matches the selector");
    }
    for (id, r) in ctl.request_all(&chosen, request).await {
        let node = chosen
            .iter()
            .find(|n| n.id == id)
            .map_or_else(|| id.short(), NodeInfo::label);
        let (ok, result) = match r {
            Ok(Reply::Activation(a)) => {
                let ok = !matches!(a, Activation::RolledBack { .. });
                (ok, activation_text(&a))
            }
            Ok(Reply::App(a)) => (true, app_text(&a)),
            Ok(Reply::Ok) => (true, "ok".to_string()),
            Ok(other) => (true, format!("{other:?}").chars().take(120).collect()),
            Err(e) => (false, e.to_string()),
        };
        if ok {
            tally.done();
        } else {
            tally.failed(&node, &result);
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
                    result.clone()
                } else {
                    format!("FAILED: {result}")
                }
            )
        });
    }
    Ok(tally.finish(true))
}

/// An activation's outcome, for people.
fn activation_text(a: &Activation) -> String {
    match a {
        Activation::Activated { version, previous } => match previous {
            Some(p) => format!("{version} active (was {p})"),
            None => format!("{version} active"),
        },
        Activation::AlreadyActive { version } => format!("{version} was active already"),
        Activation::RolledBack { reason, to } => match to {
            Some(v) => format!("rolled back to {v}: {reason}"),
            None => format!("stopped: {reason}"),
        },
        other => format!("{other:?}"),
    }
}

/// An app's state after a start, stop or remove, for people.
fn app_text(a: &p2p_deploy::proto::AppInfo) -> String {
    let state = a
        .status
        .as_ref()
        .map_or_else(|| "not running".to_string(), |st| state_name(&st.state));
    match &a.active {
        Some(v) => format!("{v} {state}"),
        None => state,
    }
}

fn batch_size(s: &str) -> Result<BatchSize> {
    // (A clap value parser: a bad value is a usage error, exit 2, before
    // any node is asked.)
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
