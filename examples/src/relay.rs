//! `p2pd relay`: one command that runs a relay for a fleet.
//!
//! - iroh: the `iroh-relay` crate's server (through
//!   [`p2p_iroh::relay_server`]): HTTPS on 3341, QUIC address discovery on
//!   UDP 7842 (nodes use it to learn the address their NAT gives them, for
//!   hole punching), plain HTTP on 3340. TLS from a self-signed certificate
//!   kept in the data directory (`relay-cert.pem`: give it to the nodes as
//!   `relay_ca`), from certificate files (reloaded as they are renewed), or
//!   none (plain HTTP, no address discovery: for trying out).
//! - libp2p: a node that serves circuit relay v2 and nothing else, with the
//!   data directory's node key (made on first start) and the network's
//!   pre-shared key, if any: only members can use it.
//!
//! It writes what nodes put in `relays` to `relay.addr` in the data
//! directory and on stdout, and serves until SIGTERM or Ctrl-C.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use p2p_core::{NodeKey, PeerId, PreSharedKey, Provider};

use crate::net::Backend;

/// The file a running relay writes its address into.
pub const RELAY_ADDR_FILE: &str = "relay.addr";

/// TLS of an iroh relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum TlsMode {
    /// A certificate made on first start and kept in the data directory.
    #[default]
    SelfSigned,
    /// `--cert` and `--key` (PEM).
    Files,
    /// Plain HTTP, no QUIC address discovery: hole punching mostly fails.
    None,
}

/// What `p2pd relay` was asked for.
#[derive(Debug, Clone)]
pub struct RelayOptions {
    /// The data directory (certificate, key, `relay.addr`).
    pub data_dir: PathBuf,
    /// iroh or libp2p.
    pub backend: Backend,
    /// iroh: TLS.
    pub tls: TlsMode,
    /// iroh: names (host names or IP addresses) nodes use for the relay;
    /// the first goes into the printed URL.
    pub names: Vec<String>,
    /// iroh: certificate chain file (`--tls files`).
    pub cert: Option<PathBuf>,
    /// iroh: key file (`--tls files`).
    pub key: Option<PathBuf>,
    /// iroh: the HTTPS address.
    pub https: SocketAddr,
    /// iroh: the plain HTTP address.
    pub http: SocketAddr,
    /// iroh: QUIC address discovery (`None`: off).
    pub quic: Option<SocketAddr>,
    /// libp2p: where to listen.
    pub listen: Vec<SocketAddr>,
    /// libp2p: the private network's key.
    pub psk: Option<PreSharedKey>,
    /// Only these nodes may use the relay.
    pub allow: Option<BTreeSet<PeerId>>,
}

/// Runs the relay until `shutdown` completes.
pub async fn run(
    opts: RelayOptions,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<()> {
    std::fs::create_dir_all(&opts.data_dir)
        .with_context(|| format!("creating {}", opts.data_dir.display()))?;
    match opts.backend {
        Backend::Iroh => run_iroh(opts, shutdown).await,
        Backend::Libp2p => run_libp2p(opts, shutdown).await,
    }
}

fn announce(dir: &Path, addr: &str) -> Result<()> {
    let file = dir.join(RELAY_ADDR_FILE);
    let tmp = file.with_extension("addr.tmp");
    std::fs::write(&tmp, format!("{addr}\n"))
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, &file).with_context(|| format!("writing {}", file.display()))?;
    println!("{addr}");
    Ok(())
}

async fn run_iroh(
    opts: RelayOptions,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<()> {
    use p2p_iroh::relay_server::{CERT_FILE, RelayServer, RelayServerConfig, RelayTls};
    let mut names = opts.names.clone();
    if names.is_empty() && !opts.https.ip().is_unspecified() {
        names.push(opts.https.ip().to_string());
    }
    let Some(host) = names.first().cloned() else {
        bail!(
            "--name: give the relay's address or host name as the nodes will dial it \
             (it goes into the certificate and the URL), such as --name 203.0.113.5"
        );
    };
    let tls = match opts.tls {
        TlsMode::SelfSigned => RelayTls::SelfSigned {
            names,
            dir: opts.data_dir.clone(),
        },
        TlsMode::Files => match (&opts.cert, &opts.key) {
            (Some(cert), Some(key)) => RelayTls::Files {
                cert: cert.clone(),
                key: key.clone(),
            },
            _ => bail!("--tls files needs --cert <chain.pem> and --key <key.pem>"),
        },
        TlsMode::None => RelayTls::None,
    };
    let mut cfg = RelayServerConfig::new(tls);
    cfg.https_addr = opts.https;
    cfg.http_addr = opts.http;
    cfg.quic_addr = if opts.tls == TlsMode::None {
        None
    } else {
        opts.quic
    };
    cfg.allow = opts.allow.clone();
    let relay = RelayServer::spawn(cfg)
        .await
        .context("starting the iroh relay")?;
    let url = relay.url(&host);
    tracing::info!(
        %url,
        relay = ?relay.relay_addr(),
        http = ?relay.http_addr(),
        quic_address_discovery = ?relay.quic_addr(),
        "iroh relay ready"
    );
    if opts.tls == TlsMode::SelfSigned {
        eprintln!(
            "p2pd: nodes trust this relay with relay_ca = \"{}\" (copy the file to them)",
            opts.data_dir.join(CERT_FILE).display()
        );
    }
    if opts.tls == TlsMode::None {
        eprintln!(
            "p2pd: plain HTTP: no QUIC address discovery, so nodes behind NAT mostly stay relayed"
        );
    }
    announce(&opts.data_dir, &url)?;
    shutdown.await;
    let _ = std::fs::remove_file(opts.data_dir.join(RELAY_ADDR_FILE));
    relay.shutdown().await;
    Ok(())
}

async fn run_libp2p(
    opts: RelayOptions,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<()> {
    let key_path = opts.data_dir.join(crate::daemon::KEY_FILE);
    let key = NodeKey::load_or_generate(&key_path, &mut rand::rng())
        .with_context(|| format!("node key {}", key_path.display()))?;
    let mut cfg = p2p_libp2p::Libp2pConfig::default()
        .mdns(false)
        .relay_server(true);
    cfg.bind_addrs.clear();
    for a in &opts.listen {
        cfg = cfg.bind(*a);
    }
    if let Some(psk) = &opts.psk {
        cfg = cfg.psk(psk.clone());
    }
    if let Some(allow) = &opts.allow {
        cfg = cfg.allow_list(allow.iter().copied());
    }
    let node = p2p_libp2p::Libp2pProvider::bind(&key, cfg)
        .await
        .context("starting the libp2p relay")?;
    // The addresses nodes can use: not loopback, unless that is all there
    // is. Listening on every interface, the others come a moment after
    // the first.
    let mut addr = node.local_addr();
    for _ in 0..40 {
        if addr.addrs.iter().any(|a| !crate::net::is_loopback_addr(a)) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        addr = node.local_addr();
    }
    let outside: Vec<String> = addr
        .addrs
        .iter()
        .filter(|a| !crate::net::is_loopback_addr(a))
        .cloned()
        .collect();
    if !outside.is_empty() {
        addr.addrs = outside;
    }
    tracing::info!(address = %addr, "libp2p relay ready");
    announce(&opts.data_dir, &addr.to_string())?;
    shutdown.await;
    let _ = std::fs::remove_file(opts.data_dir.join(RELAY_ADDR_FILE));
    node.close("the relay is stopping").await;
    Ok(())
}
