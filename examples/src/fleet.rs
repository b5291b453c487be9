//! The whole story on one machine: a local fleet of agents, a signing key,
//! the demo app packaged and signed, v1 rolled out batch by batch, a v2
//! that fails its health check rolled back by itself, and merged logs.
//! The `fleet` example (`cargo run --release --example fleet`) is a thin
//! `main` over [`run_real`] and [`run_sim`].
//!
//! On a real transport every agent is composed exactly as `p2pd` composes
//! it ([`RunningNode`]), from its own data directory with a `p2pd.toml`,
//! so a kept fleet (`--keep`) can be driven with `p2pctl`. On the
//! simulator the same agent and controller code runs on simulated nodes
//! and processes, in virtual time.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use futures::StreamExt;
use p2p_core::{
    AppState, Clock, Ed25519Signer, LogSelection, LogStream, NodeKey, PeerId, PreSharedKey,
    SystemClock,
};
use p2p_deploy::trust::write_key_pair;
use p2p_deploy::{
    BatchSize, BuildOptions, Controller, ControllerConfig, NodeInfo, NodeResult, NodeView, Plan,
    Release, RolloutPlan, RolloutReport,
};
use p2p_sim::{Script, SimClock};
use p2p_testkit::{Fleet, Node};

use crate::daemon::{CONFIG_FILE, DaemonConfig, KEY_FILE};
use crate::net::{self, Backend, NetOptions};
use crate::node::RunningNode;
use crate::show::{DeployView, NodeRow, StatusRow, ViewStyle, by_name, report_lines};

/// The demo app's name in its manifest.
pub const APP: &str = "demo";

/// What a run of the story showed; the `fleet` example exits 1 unless
/// [`Summary::check`] passes.
#[derive(Debug)]
pub struct Summary {
    /// Agents in the fleet.
    pub nodes: usize,
    /// The v1 rollout.
    pub v1: RolloutReport,
    /// The failing v2 rollout.
    pub v2: RolloutReport,
    /// Each node's active version of the demo app at the end, by name.
    pub active: BTreeMap<String, Option<String>>,
    /// Log lines printed from the nodes.
    pub log_lines: usize,
    /// `rolled_back` events in the event log of a node that rolled v2
    /// back.
    pub rollback_events: usize,
    /// The simulated network's trace hash (simulator only): the same
    /// seed gives the same hash.
    pub trace_hash: Option<String>,
}

impl Summary {
    /// The story went as told: v1 everywhere, v2 halted with every node
    /// it reached rolled back, every node on v1 at the end, some logs.
    ///
    /// # Errors
    /// What went otherwise.
    pub fn check(&self) -> Result<()> {
        if !self.v1.is_success() {
            bail!("v1 did not roll out: {:?}", self.v1);
        }
        if self.v2.halted.is_none() {
            bail!("v2 was not halted");
        }
        let rolled_back = self
            .v2
            .nodes
            .values()
            .filter(|r| matches!(r, NodeResult::RolledBack { .. }))
            .count();
        if rolled_back == 0 {
            bail!("no node rolled v2 back: {:?}", self.v2.nodes);
        }
        if let Some((node, v)) = self
            .active
            .iter()
            .find(|(_, v)| v.as_deref() != Some("1.0.0"))
        {
            bail!("{node} ended on {v:?}, not 1.0.0");
        }
        if self.active.len() != self.nodes {
            bail!(
                "{} of {} nodes answered at the end",
                self.active.len(),
                self.nodes
            );
        }
        if self.log_lines == 0 {
            bail!("no log line came back");
        }
        if self.rollback_events == 0 {
            bail!("the event log of a node that rolled v2 back does not say so");
        }
        Ok(())
    }
}

fn heading(text: &str) {
    println!("\n== {text}");
}

/// Rows shown of a table before the rest is summarised.
const ROWS: usize = 12;

/// Nodes per batch of the rolling plan: 2, or a fifth of a larger fleet.
pub fn batch_for(nodes: usize) -> usize {
    (nodes / 5).max(2)
}

fn print_rows(header: String, lines: Vec<String>) {
    println!("{header}");
    let n = lines.len();
    for line in lines.into_iter().take(ROWS) {
        println!("{line}");
    }
    if n > ROWS {
        println!("... and {} more", n - ROWS);
    }
}

/// Writes the demo app's source directory: the binary and a manifest
/// with an exec health check (`demo-app --probe`, a gate of 3 probes 250
/// ms apart, failures counted after 1 s).
fn app_dir(root: &Path, demo_app: &[u8], version: &str, args: &[&str]) -> Result<PathBuf> {
    let dir = root.join(format!("app-{version}"));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let bin = dir.join("demo-app");
    std::fs::write(&bin, demo_app).with_context(|| format!("writing {}", bin.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755))?;
    }
    let args = args
        .iter()
        .map(|a| format!("{a:?}"))
        .collect::<Vec<_>>()
        .join(", ");
    std::fs::write(
        dir.join("p2p.toml"),
        format!(
            "name = \"{APP}\"\nversion = \"{version}\"\nentrypoint = \"demo-app\"\nargs = [{args}]\n\
             stop_grace = \"2s\"\n\n[health]\nexec = [\"./demo-app\", \"--probe\"]\n\
             interval = \"250ms\"\ntimeout = \"2s\"\nretries = 3\ngate = 3\nstart_period = \"1s\"\n"
        ),
    )?;
    Ok(dir)
}

/// Packages and signs one version; the package file stays in `root`.
async fn package(
    root: &Path,
    demo_app: &[u8],
    signer: &Ed25519Signer,
    clock: &dyn Clock,
    version: &str,
    args: &[&str],
) -> Result<Arc<Release>> {
    let dir = app_dir(root, demo_app, version, args)?;
    let out = root.join(format!("{APP}-{version}.p2p"));
    // Held in memory: the simulated fleet has no disk to stream from.
    let release = p2p_testkit::package(&dir, &out, signer, clock, BuildOptions::default())
        .await
        .with_context(|| format!("packaging {}", dir.display()))?;
    println!(
        "packaged and signed {} ({} bytes, {} chunks)",
        out.display(),
        release.descriptor.archive_size,
        release.descriptor.chunks.len()
    );
    Ok(release)
}

async fn fleet_table(ctl: &Controller) -> Vec<NodeInfo> {
    let views = ctl.nodes().await;
    let mut infos: Vec<NodeInfo> = views.iter().filter_map(|v| v.info.clone().ok()).collect();
    infos.sort_by(|a, b| by_name(&a.name, &b.name));
    let mut lines: Vec<String> = infos.iter().map(|i| NodeRow::of(i, None).line()).collect();
    for v in NodeView::unanswered(&views) {
        if let Err(e) = &v.info {
            lines.push(NodeRow::unreachable(v, e).line());
        }
    }
    print_rows(NodeRow::header(), lines);
    infos
}

async fn status_table(ctl: &Controller) -> BTreeMap<String, Option<String>> {
    let mut infos: Vec<NodeInfo> = ctl
        .nodes()
        .await
        .into_iter()
        .filter_map(|v| v.info.ok())
        .collect();
    infos.sort_by(|a, b| by_name(&a.name, &b.name));
    let lines = StatusRow::of(&infos, Some(APP))
        .iter()
        .map(StatusRow::line)
        .collect();
    print_rows(StatusRow::header(), lines);
    infos
        .iter()
        .map(|i| {
            let active = i
                .apps
                .iter()
                .find(|a| a.name == APP)
                .and_then(|a| a.active.as_ref().map(ToString::to_string));
            (i.label(), active)
        })
        .collect()
}

/// Waits (up to 15 s) until no node's demo app is still starting: the
/// rolled-back version passes its health checks again.
async fn settle(ctl: &Controller) {
    let until = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let starting = ctl.nodes().await.iter().any(|v| {
            v.info.as_ref().is_ok_and(|i| {
                i.apps.iter().any(|a| {
                    a.name == APP
                        && a.status.as_ref().is_some_and(|s| {
                            !matches!(s.state, AppState::Healthy | AppState::Stopped)
                        })
                })
            })
        });
        if !starting || tokio::time::Instant::now() >= until {
            return;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

async fn deploy(
    ctl: &Controller,
    release: Arc<Release>,
    targets: &[NodeInfo],
    plan: &RolloutPlan,
) -> RolloutReport {
    let names: BTreeMap<PeerId, String> = targets.iter().map(|n| (n.id, n.label())).collect();
    let (tx, mut rx) = tokio::sync::mpsc::channel(1024);
    let mut view = DeployView::new(names.clone(), ViewStyle::auto(false)).limit(ROWS);
    let run = ctl.deploy(release, targets, plan, tx);
    let show = async {
        while let Some(p) = rx.recv().await {
            view.show(&p);
        }
    };
    let (report, ()) = tokio::join!(run, show);
    view.finish();
    let mut lines = report_lines(&report, &names);
    let summary = lines.remove(0);
    print_rows(summary, lines);
    report
}

/// The story, once the fleet and the controller are up.
async fn story(
    ctl: &Controller,
    nodes: usize,
    root: &Path,
    demo_app: &[u8],
    clock: &dyn Clock,
    signer: &Ed25519Signer,
) -> Result<Summary> {
    heading("the fleet");
    let infos = fleet_table(ctl).await;
    if infos.len() != nodes {
        bail!("{} of {nodes} agents answered", infos.len());
    }

    let batch = batch_for(nodes);
    heading(&format!(
        "v1: package, sign, roll out {batch} nodes at a time"
    ));
    let v1 = package(
        root,
        demo_app,
        signer,
        clock,
        "1.0.0",
        &["--name", "demo v1"],
    )
    .await?;
    let rolling = RolloutPlan {
        plan: Plan::Rolling {
            batch: BatchSize::Nodes(batch),
        },
        ..RolloutPlan::default()
    };
    let v1_report = deploy(ctl, v1, &infos, &rolling).await;

    heading("status");
    status_table(ctl).await;

    heading("v2: its health check fails (503), so it is rolled back");
    let v2 = package(root, demo_app, signer, clock, "2.0.0", &["--unhealthy"]).await?;
    let v2_report = deploy(ctl, v2, &infos, &rolling).await;

    heading("status after the rollback");
    settle(ctl).await;
    let active = status_table(ctl).await;

    heading("logs, merged from the nodes (the last lines of each)");
    let selection = LogSelection {
        stream: LogStream::Both,
        tail: Some(2),
        follow: false,
    };
    let some = &infos[..infos.len().min(6)];
    let mut lines = ctl.logs(some, APP, selection).await;
    let mut log_lines = 0;
    while let Some(item) = lines.next().await {
        match item {
            Ok((node, line)) => {
                log_lines += 1;
                println!("{node:<6} | {}", line.line);
            }
            Err(e) => println!("(logs: {e})"),
        }
    }
    // What happened on a node that took v2, as its event log says
    // (`p2pctl events`).
    let mut rollback_events = 0;
    let rolled = v2_report
        .nodes
        .iter()
        .find(|(_, r)| matches!(r, NodeResult::RolledBack { .. }))
        .and_then(|(id, _)| infos.iter().find(|n| n.id == *id));
    if let Some(node) = rolled {
        heading(&format!(
            "the event log of {} (p2pctl events)",
            node.label()
        ));
        let mut events = ctl.events(
            std::slice::from_ref(node),
            &p2p_deploy::controller::Resume::default(),
            false,
        );
        while let Some(item) = events.next().await {
            match item {
                p2p_deploy::controller::FleetEvent::Event { event, .. } => {
                    if event.kind.name() == "rolled_back" {
                        rollback_events += 1;
                    }
                    println!(
                        "#{:<3} {:<15} {}",
                        event.index,
                        event.kind.name(),
                        event.kind
                    );
                }
                other => println!("({other:?})"),
            }
        }
    }
    Ok(Summary {
        nodes,
        v1: v1_report,
        v2: v2_report,
        active,
        log_lines,
        rollback_events,
        trace_hash: None,
    })
}

/// A real fleet: where it lives and how to reach it.
pub struct RealOptions {
    /// Agents to start.
    pub nodes: usize,
    /// The transport.
    pub backend: Backend,
    /// The directory for every node's data directory, the keys and the
    /// packages.
    pub root: PathBuf,
    /// The demo app's executable (`demo-app` of this crate).
    pub demo_app: PathBuf,
    /// Leave the fleet running until Ctrl-C, printing the `p2pctl`
    /// commands that talk to it.
    pub keep: bool,
}

/// Runs the story on `opts.nodes` agents on loopback, each composed as
/// `p2pd` composes it from its own data directory under `opts.root`, all
/// members of one private network (a pre-shared key), then stops them.
///
/// # Errors
/// A node that cannot start, a package that cannot be made, a fleet that
/// does not answer.
pub async fn run_real(opts: &RealOptions) -> Result<Summary> {
    let root = std::path::absolute(&opts.root)?;
    let demo_app = std::fs::read(&opts.demo_app)
        .with_context(|| format!("reading the demo app {}", opts.demo_app.display()))?;
    println!(
        "a fleet of {} agents over {} on loopback, in {}",
        opts.nodes,
        opts.backend,
        root.display()
    );
    let psk_path = root.join("fleet.psk");
    write_private(
        &psk_path,
        &format!(
            "# the fleet's pre-shared key\n{}\n",
            PreSharedKey::generate(&mut rand::rng()).to_hex()
        ),
    )?;
    // The agents read `trusted/` when they start: the key comes first.
    let signer = signing_key(&root, Ed25519Signer::generate(&mut rand::rng()))?;
    let public = root.join("publisher.pub");
    let mut nodes = Vec::new();
    let result = async {
        for i in 1..=opts.nodes {
            let dir = root.join(format!("n{i}"));
            let mut cfg = node_dir(&dir, i, opts.backend, Some(&psk_path))?;
            // Every node but the first joins the fleet through the first.
            if let Some(first) = nodes.first() {
                cfg.bootstrap = vec![RunningNode::addr(first).to_string()];
            }
            std::fs::copy(&public, dir.join("trusted").join("publisher.pub"))
                .with_context(|| format!("trusting the publisher key in {}", dir.display()))?;
            let node = RunningNode::start(&dir, &cfg)
                .await
                .with_context(|| format!("starting n{i}"))?;
            nodes.push(node);
        }
        let ctl_key = NodeKey::load_or_generate(&root.join("controller.key"), &mut rand::rng())?;
        let net_opts = NetOptions {
            psk: Some(PreSharedKey::load(&psk_path)?),
            ..NetOptions::loopback(opts.backend)
        };
        let provider = net::bind(&ctl_key, &net_opts).await?;
        // The controller is told of the first node only: membership
        // gives it the rest.
        let bootstrap: Vec<_> = nodes.iter().take(1).map(RunningNode::addr).collect();
        let ctl = Controller::new(
            provider.clone(),
            ControllerConfig {
                bootstrap: bootstrap.clone(),
                ..ControllerConfig::default()
            },
        );
        members(&ctl, opts.nodes).await?;
        let summary = story(&ctl, opts.nodes, &root, &demo_app, &SystemClock, &signer).await;
        provider.close("the fleet example is done").await;
        let summary = summary?;
        if opts.keep {
            keep_running(&root, opts.backend, &bootstrap, &psk_path).await;
        }
        Ok(summary)
    };
    let interrupted = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let result = tokio::select! {
        r = result => r,
        () = interrupted => Err(anyhow!("interrupted")),
    };
    heading("stopping the fleet");
    for n in nodes {
        n.shutdown(crate::daemon::OnShutdown::Restart).await;
    }
    result
}

/// Waits (a few seconds at most) until the first node's membership table
/// lists every node, and prints it.
async fn members(ctl: &Controller, nodes: usize) -> Result<()> {
    heading("membership: the controller knows n1 only; n1 knows the fleet");
    let mut last = None;
    for _ in 0..40 {
        match ctl.members().await {
            Ok(m) if m.up().count() >= nodes => {
                let mut names: Vec<String> = m.up().map(|m| m.record.label()).collect();
                names.sort_by(|a, b| crate::show::by_name(a, b));
                println!("{} nodes up: {}", names.len(), names.join(", "));
                return Ok(());
            }
            Ok(m) => last = Some(format!("{} of {nodes} nodes up", m.up().count())),
            Err(e) => last = Some(e.to_string()),
        }
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
    bail!(
        "membership did not list the fleet within 10 s: {}",
        last.unwrap_or_default()
    )
}

/// Makes the publisher's signing key, `publisher.key` and
/// `publisher.pub` in `root`.
fn signing_key(root: &Path, signer: Ed25519Signer) -> Result<Ed25519Signer> {
    heading("a signing key");
    let (secret, public) = write_key_pair(&root.join("publisher"), &signer, "fleet example")?;
    println!(
        "{} (secret) and {}: every node trusts this key and no other",
        secret.display(),
        public.display()
    );
    Ok(signer)
}

/// Writes the data directory of node `n<i>` as `p2pd init` would (a node
/// key, `trusted/`, a `p2pd.toml` listening on a free loopback port, with
/// labels `role=web` and `zone=a` or `b`), and returns its config.
///
/// # Errors
/// The directory or a file cannot be written.
pub fn node_dir(
    dir: &Path,
    i: usize,
    backend: Backend,
    psk: Option<&Path>,
) -> Result<DaemonConfig> {
    std::fs::create_dir_all(dir.join("trusted"))
        .with_context(|| format!("creating {}", dir.display()))?;
    NodeKey::load_or_generate(&dir.join(KEY_FILE), &mut rand::rng())?;
    let cfg = DaemonConfig {
        name: format!("n{i}"),
        backend,
        listen: vec![SocketAddr::from(([127, 0, 0, 1], 0))],
        labels: BTreeMap::from([
            ("role".to_string(), "web".to_string()),
            (
                "zone".to_string(),
                if i % 2 == 1 { "a" } else { "b" }.to_string(),
            ),
        ]),
        psk_file: psk.map(Path::to_path_buf),
        ..DaemonConfig::default()
    };
    let text = toml::to_string(&cfg).context("writing the node config")?;
    std::fs::write(dir.join(CONFIG_FILE), text)?;
    Ok(cfg)
}

/// Writes a file only its owner may read.
fn write_private(path: &Path, text: &str) -> Result<()> {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    f.write_all(text.as_bytes())?;
    Ok(())
}

async fn keep_running(root: &Path, backend: Backend, addrs: &[p2p_core::PeerAddr], psk: &Path) {
    let bootstrap = addrs
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",");
    heading("the fleet keeps running until Ctrl-C; talk to it from another terminal");
    println!("export P2PCTL_BACKEND={backend}");
    println!("export P2PCTL_PSK_FILE={}", psk.display());
    println!(
        "export P2PCTL_KEY={}",
        root.join("controller.key").display()
    );
    println!("export P2PCTL_BOOTSTRAP={bootstrap}   # one node: membership finds the rest");
    println!("cargo run -p p2p-examples --bin p2pctl -- peers");
    println!("cargo run -p p2p-examples --bin p2pctl -- nodes");
    println!("cargo run -p p2p-examples --bin p2pctl -- status {APP}");
    println!("cargo run -p p2p-examples --bin p2pctl -- logs {APP} -f");
    println!(
        "cargo run -p p2p-examples --bin p2pctl -- deploy {} --plan canary --canary 1",
        root.join(format!("{APP}-2.0.0.p2p")).display()
    );
    println!("cargo run -p p2p-examples --bin p2pctl -- switch {APP} 1.0.0 --nodes n1");
    let _ = tokio::signal::ctrl_c().await;
}

/// Runs the story on a simulated fleet of `nodes` agents (100 Mbit/s, 10
/// ms links), in virtual time: the same agent and controller code, with
/// simulated processes whose v2 never passes its health check. Call
/// inside a current-thread runtime with paused time (see
/// [`run_sim_blocking`]).
///
/// # Errors
/// As [`run_real`].
pub async fn run_sim(nodes: usize, seed: u64, root: &Path) -> Result<Summary> {
    println!("a simulated fleet of {nodes} agents (seed {seed}), in virtual time");
    let fleet = Fleet::builder(seed)
        .nodes(nodes, |i| {
            let zone = if i % 2 == 0 { "a" } else { "b" };
            Node::new(format!("n{}", i + 1))
                .label("role", "web")
                .label("zone", zone)
        })
        .build();
    let net = fleet.net();
    net.scripts().set_default(
        Script::healthy()
            .with_startup(Duration::from_millis(300))
            .with_logs_every(Duration::from_millis(500)),
    );
    fleet.script(APP, "2.0.0", Script::never_healthy());
    // The kit made the publisher key from the seed, as everything else
    // here: the same seed gives the same packages, signatures and trace.
    let signer = signing_key(root, fleet.signer().clone())?;
    let ctl = fleet.controller();
    let clock: SimClock = net.clock();
    // A stand-in for the binary (simulated processes run scripts), as
    // large as the real one and as hard to compress: the swarm moves it.
    let mut demo_app = vec![0u8; 1 << 20];
    rand::Rng::fill_bytes(&mut net.rng("demo-app"), &mut demo_app);
    let mut summary = story(ctl, nodes, root, &demo_app, &clock, &signer).await?;
    let hash = net.trace_hash();
    println!(
        "\nvirtual time {:.1} s; trace hash {hash}",
        net.now().as_secs_f64()
    );
    summary.trace_hash = Some(hash);
    Ok(summary)
}

/// [`run_sim`] in its own current-thread runtime with paused time.
///
/// # Errors
/// As [`run_sim`].
pub fn run_sim_blocking(nodes: usize, seed: u64, root: &Path) -> Result<Summary> {
    p2p_testkit::block_on(run_sim(nodes, seed, root))
}

/// Builds `demo-app` (the workspace's dependency-free `demo-app`
/// package) into the cargo target directory and profile that `exe` (an
/// example or a test of this workspace) was built in, and returns its
/// path. Cargo builds neither another package's binaries nor this
/// crate's for an example, hence the build here; it takes a second.
///
/// # Errors
/// `exe` not in a target directory, cargo missing, or the build failing.
pub fn build_demo_app(exe: &Path) -> Result<PathBuf> {
    // target/<profile>/examples/fleet, or target/<profile>/deps/test-hash
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .with_context(|| format!("{} is not in a cargo target directory", exe.display()))?;
    let target_dir = profile_dir
        .parent()
        .with_context(|| format!("{} is not in a cargo target directory", exe.display()))?;
    let profile = profile_dir
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("debug");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.toml");
    let mut cmd = std::process::Command::new(&cargo);
    cmd.args(["build", "--quiet", "-p", "demo-app", "--manifest-path"])
        .arg(&workspace)
        .arg("--target-dir")
        .arg(target_dir);
    if profile != "debug" {
        cmd.args(["--profile", profile]);
    }
    let status = cmd
        .status()
        .with_context(|| format!("running {}", Path::new(&cargo).display()))?;
    if !status.success() {
        bail!("`cargo build -p demo-app` failed ({status})");
    }
    let bin = profile_dir.join("demo-app");
    if !bin.is_file() {
        bail!("cargo built demo-app, but {} is missing", bin.display());
    }
    Ok(bin)
}
