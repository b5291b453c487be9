//! `p2pd`: the node agent as a daemon.
//!
//! - `p2pd init --data-dir DIR` writes a commented `p2pd.toml` and a node
//!   key (`node.key`, mode 0600) into `DIR`, and makes `DIR/trusted/` for
//!   the publishers' public keys.
//! - `p2pd run` starts the agent from `DIR/p2pd.toml`, with environment
//!   (`P2PD_*`) and flag overrides, until SIGTERM or Ctrl-C.
//! - `p2pd id` prints the node's peer address, for `p2pctl --bootstrap`.
//! - `p2pd relay` runs a relay for the fleet (an iroh relay server, or a
//!   libp2p circuit relay node), for nodes behind NAT.
//!
//! Exit codes: 0 success, 1 failure, 2 usage.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use bytesize::ByteSize;
use clap::{Args, Parser, Subcommand};
use p2p_core::{NodeKey, PeerId, PreSharedKey};
use p2p_examples::daemon::{
    ADDR_FILE, CONFIG_FILE, DaemonConfig, KEY_FILE, LogFormat, OnShutdown, parse_label, template,
};
use p2p_examples::net::{Backend, Reach};
use p2p_examples::node::RunningNode;
use p2p_examples::relay::{RelayOptions, TlsMode};

#[derive(Parser)]
#[command(
    name = "p2pd",
    version,
    about = "The p2p deployment agent: runs signed apps on this node",
    after_help = "Exit codes: 0 success (and a clean stop on SIGTERM or Ctrl-C); 1 failure; 2 usage.\n\
Settings: flags, else P2PD_* variables, else p2pd.toml in the data directory.\n\
A systemd unit: see the README (\"Running p2pd under systemd\")."
)]
struct Cli {
    /// The node's directory: config, key, state, versions, app logs.
    #[arg(long, global = true, env = "P2PD_DATA_DIR", default_value_os_t = default_data_dir())]
    data_dir: PathBuf,
    /// The config file (default: p2pd.toml in the data directory).
    #[arg(long, global = true, env = "P2PD_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Write a commented config and a node key into the data directory.
    Init {
        /// A name for people (default: the host name).
        #[arg(long)]
        name: Option<String>,
        /// The transport.
        #[arg(long, value_enum, default_value_t = Backend::Iroh)]
        backend: Backend,
        /// Addresses to listen on.
        #[arg(long, value_delimiter = ',', default_value = "0.0.0.0:7401")]
        listen: Vec<SocketAddr>,
        /// Replace an existing config (the node key is kept).
        #[arg(long)]
        force: bool,
    },
    /// Run the agent until SIGTERM or Ctrl-C.
    Run(Box<Overrides>),
    /// Print this node's peer address (`<id>@<addresses>`).
    Id,
    /// Run a relay for the fleet: nodes behind NAT are reached through it,
    /// and punch direct paths with its help. Prints (and writes to
    /// relay.addr) what nodes list in `relays`.
    Relay(Box<RelayArgs>),
}

/// `p2pd relay`'s settings.
#[derive(Args)]
struct RelayArgs {
    /// iroh: the iroh-relay server; libp2p: a circuit relay node.
    #[arg(long, env = "P2PD_BACKEND", value_enum, default_value_t = Backend::Iroh)]
    backend: Backend,
    /// iroh: where the certificate comes from.
    #[arg(long, value_enum, default_value_t = TlsMode::SelfSigned)]
    tls: TlsMode,
    /// iroh: the relay's address or host name as nodes dial it (comma
    /// separated or repeated; all go into a self-signed certificate, the
    /// first into the URL).
    #[arg(long = "name", value_delimiter = ',')]
    names: Vec<String>,
    /// iroh: certificate chain, PEM (--tls files).
    #[arg(long)]
    cert: Option<PathBuf>,
    /// iroh: private key, PEM (--tls files).
    #[arg(long)]
    key: Option<PathBuf>,
    /// iroh: the HTTPS address (the relay itself, with TLS).
    #[arg(long, default_value = "0.0.0.0:3341")]
    https: SocketAddr,
    /// iroh: the plain HTTP address (the relay itself without TLS).
    #[arg(long, default_value = "0.0.0.0:3340")]
    http: SocketAddr,
    /// iroh: QUIC address discovery, UDP (nodes expect port 7842).
    #[arg(long, default_value = "0.0.0.0:7842")]
    quic: SocketAddr,
    /// iroh: no QUIC address discovery.
    #[arg(long)]
    no_quic: bool,
    /// libp2p: addresses to listen on (comma separated).
    #[arg(long, value_delimiter = ',', default_value = "0.0.0.0:7402")]
    listen: Vec<SocketAddr>,
    /// libp2p: the network's pre-shared key file (only members can use the
    /// relay).
    #[arg(long, env = "P2PD_PSK_FILE")]
    psk_file: Option<PathBuf>,
    /// Only these nodes may use the relay (comma separated ids).
    #[arg(long = "allow-peer", value_delimiter = ',')]
    allowed_peers: Vec<String>,
    /// p2pd's own log format.
    #[arg(long, env = "P2PD_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

/// Settings that win over the config file: each flag, else its
/// environment variable.
#[derive(Args, Default)]
struct Overrides {
    /// The transport.
    #[arg(long, env = "P2PD_BACKEND", value_enum)]
    backend: Option<Backend>,
    /// Addresses to listen on (comma separated).
    #[arg(long, env = "P2PD_LISTEN", value_delimiter = ',')]
    listen: Vec<SocketAddr>,
    /// A name for people.
    #[arg(long, env = "P2PD_NAME")]
    name: Option<String>,
    /// Labels, `key=value` (comma separated; replace the file's).
    #[arg(long = "label", env = "P2PD_LABELS", value_delimiter = ',')]
    labels: Vec<String>,
    /// The pre-shared key file.
    #[arg(long, env = "P2PD_PSK_FILE")]
    psk_file: Option<PathBuf>,
    /// Peers allowed to connect (comma separated ids).
    #[arg(long = "allow-peer", env = "P2PD_ALLOWED_PEERS", value_delimiter = ',')]
    allowed_peers: Vec<String>,
    /// Peers allowed to change the node (comma separated ids).
    #[arg(long = "operator", env = "P2PD_OPERATORS", value_delimiter = ',')]
    operators: Vec<String>,
    /// Directory of trusted publisher keys.
    #[arg(long, env = "P2PD_TRUSTED_KEYS")]
    trusted_keys: Option<PathBuf>,
    /// Signatures from distinct trusted keys a release needs.
    #[arg(long, env = "P2PD_SIGNATURES_REQUIRED")]
    signatures_required: Option<usize>,
    /// Peers to dial at start: what `p2pd id` prints on them, several
    /// separated by commas or spaces, or the flag repeated.
    #[arg(long, env = "P2PD_BOOTSTRAP")]
    bootstrap: Vec<String>,
    /// Local-network discovery on or off.
    #[arg(long, env = "P2PD_MDNS")]
    mdns: Option<bool>,
    /// Most installed versions kept per app.
    #[arg(long, env = "P2PD_KEEP_VERSIONS")]
    keep_versions: Option<u32>,
    /// What happens to the apps when p2pd stops.
    #[arg(long, env = "P2PD_ON_SHUTDOWN", value_enum)]
    on_shutdown: Option<OnShutdown>,
    /// p2pd's own log format.
    #[arg(long, env = "P2PD_LOG_FORMAT", value_enum)]
    log_format: Option<LogFormat>,
    /// Size at which an app's log file is rotated (such as "10 MiB").
    #[arg(long, env = "P2PD_APP_LOG_MAX_SIZE")]
    app_log_max_size: Option<ByteSize>,
    /// Log files kept per app and stream.
    #[arg(long, env = "P2PD_APP_LOG_FILES")]
    app_log_files: Option<usize>,
    /// Chunk bytes per second served to peers (such as "10 MiB").
    #[arg(long, env = "P2PD_UPLOAD_LIMIT")]
    upload_limit: Option<ByteSize>,
    /// Chunk bytes per second fetched.
    #[arg(long, env = "P2PD_DOWNLOAD_LIMIT")]
    download_limit: Option<ByteSize>,
    /// How far the node reaches: local, relays (those of --relay), public
    /// (number 0's iroh relays).
    #[arg(long, env = "P2PD_CONNECTIVITY", value_enum)]
    connectivity: Option<Reach>,
    /// Relays (replace the file's): iroh relay URLs, libp2p relay nodes'
    /// addresses; comma separated or the flag repeated.
    #[arg(long = "relay", env = "P2PD_RELAYS")]
    relays: Vec<String>,
    /// iroh: PEM file of certificates trusted for the relays.
    #[arg(long, env = "P2PD_RELAY_CA")]
    relay_ca: Option<PathBuf>,
    /// libp2p: serve as a circuit relay for other nodes.
    #[arg(long, env = "P2PD_SERVE_RELAY")]
    serve_relay: Option<bool>,
    /// Serve Prometheus metrics at http://ADDR/metrics (such as
    /// 127.0.0.1:9464).
    #[arg(long, env = "P2PD_METRICS_ADDR")]
    metrics_addr: Option<SocketAddr>,
    /// Events kept in the node's event log.
    #[arg(long, env = "P2PD_EVENTS_KEPT")]
    events_kept: Option<usize>,
}

impl Overrides {
    fn apply(self, cfg: &mut DaemonConfig) -> Result<()> {
        if let Some(b) = self.backend {
            cfg.backend = b;
        }
        if !self.listen.is_empty() {
            cfg.listen = self.listen;
        }
        if let Some(n) = self.name {
            cfg.name = n;
        }
        if !self.labels.is_empty() {
            cfg.labels = self
                .labels
                .iter()
                .map(|l| parse_label(l))
                .collect::<Result<BTreeMap<_, _>>>()?;
        }
        if let Some(p) = self.psk_file {
            cfg.psk_file = Some(p);
        }
        if !self.allowed_peers.is_empty() {
            cfg.allowed_peers = self.allowed_peers;
        }
        if !self.operators.is_empty() {
            cfg.operators = self.operators;
        }
        if let Some(p) = self.trusted_keys {
            cfg.trusted_keys = p;
        }
        if let Some(n) = self.signatures_required {
            cfg.signatures_required = n;
        }
        if !self.bootstrap.is_empty() {
            cfg.bootstrap = self.bootstrap;
        }
        if let Some(m) = self.mdns {
            cfg.mdns = m;
        }
        if let Some(k) = self.keep_versions {
            cfg.keep_versions = Some(k);
        }
        if let Some(o) = self.on_shutdown {
            cfg.on_shutdown = o;
        }
        if let Some(f) = self.log_format {
            cfg.log_format = f;
        }
        if let Some(s) = self.app_log_max_size {
            cfg.app_log_max_size = s;
        }
        if let Some(n) = self.app_log_files {
            cfg.app_log_files = n;
        }
        if let Some(r) = self.upload_limit {
            cfg.upload_limit = Some(r);
        }
        if let Some(r) = self.download_limit {
            cfg.download_limit = Some(r);
        }
        if let Some(c) = self.connectivity {
            cfg.connectivity = Some(c);
        }
        if !self.relays.is_empty() {
            cfg.relays = self.relays;
        }
        if let Some(p) = self.relay_ca {
            cfg.relay_ca = Some(p);
        }
        if let Some(s) = self.serve_relay {
            cfg.serve_relay = s;
        }
        if let Some(a) = self.metrics_addr {
            cfg.metrics_addr = Some(a);
        }
        if let Some(n) = self.events_kept {
            cfg.events_kept = n;
        }
        cfg.check()
    }
}

fn default_data_dir() -> PathBuf {
    dirs::data_local_dir()
        .map(|d| d.join("p2pd"))
        .unwrap_or_else(|| PathBuf::from("p2pd-data"))
}

/// The default log filter: info, except iroh's QUIC layer, whose
/// warnings (`failed closing path err=LastOpenPath` when a peer's last
/// path goes away with its connection) are about its own bookkeeping and
/// ask nothing of an operator; `RUST_LOG=info` shows them again.
const DEFAULT_LOG: &str = "info,noq_proto::connection=error";

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("p2pd: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Apps run in their own working directories: every path the agent
    // hands down must be absolute.
    let mut cli = cli;
    match std::path::absolute(&cli.data_dir) {
        Ok(d) => cli.data_dir = d,
        Err(e) => {
            eprintln!("p2pd: data dir {}: {e}", cli.data_dir.display());
            return ExitCode::FAILURE;
        }
    }
    let config = cli
        .config
        .clone()
        .unwrap_or_else(|| cli.data_dir.join(CONFIG_FILE));
    let result = match cli.command {
        Command::Init {
            name,
            backend,
            listen,
            force,
        } => init(&cli.data_dir, &config, name, backend, &listen, force),
        Command::Run(overrides) => rt.block_on(run(&cli.data_dir, &config, *overrides)),
        Command::Id => id(&cli.data_dir, &config),
        Command::Relay(args) => rt.block_on(relay(&cli.data_dir, *args)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("p2pd: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init(
    dir: &Path,
    config: &Path,
    name: Option<String>,
    backend: Backend,
    listen: &[SocketAddr],
    force: bool,
) -> Result<()> {
    if config.exists() && !force {
        bail!(
            "{} exists already (--force replaces it; the node key is kept)",
            config.display()
        );
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    std::fs::create_dir_all(dir.join("trusted"))?;
    let key_path = dir.join(KEY_FILE);
    let key = NodeKey::load_or_generate(&key_path, &mut rand::rng())
        .with_context(|| format!("node key {}", key_path.display()))?;
    let name = name.unwrap_or_else(|| {
        std::fs::read_to_string("/etc/hostname")
            .map(|h| h.trim().to_string())
            .ok()
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| format!("node-{}", key.peer_id().short()))
    });
    let text = template(&name, backend, listen);
    // The template must stay loadable: check before writing.
    let parsed: DaemonConfig = toml::from_str(&text).context("the config template")?;
    parsed.check()?;
    let tmp = config.with_extension("toml.tmp");
    std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, config).with_context(|| format!("writing {}", config.display()))?;
    println!("wrote {}", config.display());
    println!("node key {} (id {})", key_path.display(), key.peer_id());
    println!(
        "next: put the publishers' *.pub keys in {} and run `p2pd run --data-dir {}`",
        dir.join("trusted").display(),
        dir.display()
    );
    Ok(())
}

fn id(dir: &Path, config: &Path) -> Result<()> {
    let key = NodeKey::load(&dir.join(KEY_FILE))
        .with_context(|| format!("no node key in {} (run `p2pd init`)", dir.display()))?;
    let running = dir.join(ADDR_FILE);
    if let Ok(addr) = std::fs::read_to_string(&running) {
        println!("{}", addr.trim());
        return Ok(());
    }
    let cfg = DaemonConfig::load(config)?;
    let fixed: Vec<String> = cfg
        .listen
        .iter()
        .filter(|a| a.port() != 0 && !a.ip().is_unspecified())
        .map(|a| match cfg.backend {
            Backend::Iroh => a.to_string(),
            Backend::Libp2p => p2p_libp2p::addr::tcp_multiaddr(*a).to_string(),
        })
        .collect();
    if fixed.is_empty() {
        eprintln!(
            "p2pd: not running and no fixed listen address: the id alone (start p2pd for the full address)"
        );
        println!("{}", key.peer_id());
    } else {
        println!("{}@{}", key.peer_id(), fixed.join(","));
    }
    Ok(())
}

async fn relay(dir: &Path, args: RelayArgs) -> Result<()> {
    init_logs(args.log_format);
    let psk = args
        .psk_file
        .as_ref()
        .map(|p| PreSharedKey::load(p).with_context(|| format!("--psk-file {}", p.display())))
        .transpose()?;
    if psk.is_some() && args.backend == Backend::Iroh {
        bail!(
            "--psk-file: an iroh relay forwards encrypted QUIC packets and never sees a \
             pre-shared key; the nodes check it end to end (use --allow-peer to limit who \
             may use the relay)"
        );
    }
    let allow = args
        .allowed_peers
        .iter()
        .map(|s| {
            s.trim()
                .parse::<PeerId>()
                .map_err(|e| anyhow::anyhow!("--allow-peer {s:?}: {e}"))
        })
        .collect::<Result<std::collections::BTreeSet<_>>>()?;
    let opts = RelayOptions {
        data_dir: dir.to_path_buf(),
        backend: args.backend,
        tls: args.tls,
        names: args.names,
        cert: args.cert,
        key: args.key,
        https: args.https,
        http: args.http,
        quic: (!args.no_quic).then_some(args.quic),
        listen: args.listen,
        psk,
        allow: (!allow.is_empty()).then_some(allow),
    };
    p2p_examples::relay::run(opts, shutdown_signal()).await
}

fn init_logs(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(DEFAULT_LOG));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

async fn run(dir: &Path, config: &Path, overrides: Overrides) -> Result<()> {
    let mut cfg = DaemonConfig::load(config)?;
    overrides.apply(&mut cfg)?;
    init_logs(cfg.log_format);
    // Bound before the node starts: a bad address stops p2pd before any
    // app is started.
    let metrics = match cfg.metrics_addr {
        Some(a) => Some(p2p_examples::metrics::MetricsListener::bind(a).await?),
        None => None,
    };
    let mut node = RunningNode::start(dir, &cfg).await?;
    let _metrics = match metrics {
        Some(listener) => {
            let server = listener.serve(node.registry())?;
            if !server.addr().ip().is_loopback() {
                tracing::warn!(
                    address = %server.addr(),
                    "metrics are served beyond this host: keep the address on a monitoring network"
                );
            }
            tracing::info!(address = %server.addr(), "metrics at http://{}/metrics", server.addr());
            Some(server)
        }
        None => None,
    };
    let addr = node.addr();
    tracing::info!(
        id = %addr.id,
        address = %addr,
        backend = %cfg.backend,
        name = %cfg.name,
        "p2pd ready"
    );
    let failed = tokio::select! {
        e = node.stopped() => Some(e),
        () = shutdown_signal() => None,
    };
    if let Some(e) = failed {
        return Err(e);
    }
    tracing::info!(on_shutdown = ?cfg.on_shutdown, "stopping");
    node.shutdown(cfg.on_shutdown).await;
    tracing::info!("stopped");
    Ok(())
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => tracing::info!("SIGTERM"),
                    _ = tokio::signal::ctrl_c() => tracing::info!("interrupted"),
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "no SIGTERM handler; Ctrl-C only");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
