//! A relay for a fleet: the `iroh-relay` crate's server (feature
//! `relay-server`), with the TLS a self-hosted relay needs.
//!
//! Nodes behind NAT keep a connection to a relay; peers reach them through
//! it and then punch a direct path, helped by the relay's QUIC address
//! discovery (QAD, UDP port 7842 by default), which tells each node the
//! address its NAT gives it. QAD needs TLS.
//!
//! ```no_run
//! use p2p_iroh::relay_server::{RelayServer, RelayServerConfig, RelayTls};
//! # async fn demo() -> p2p_core::Result<()> {
//! let cfg = RelayServerConfig::new(RelayTls::SelfSigned {
//!     names: vec!["10.0.0.5".into()],
//!     dir: "relay-data".into(), // keeps relay-cert.pem and relay-key.pem
//! });
//! let relay = RelayServer::spawn(cfg).await?;
//! println!("relay at {}", relay.url("10.0.0.5")); // https://10.0.0.5:3341/
//! # Ok(()) }
//! ```
//!
//! TLS choices ([`RelayTls`]):
//!
//! - `SelfSigned`: a certificate made on first start for the names given
//!   (host names or IP addresses) and kept in a directory, so that it stays
//!   the same across restarts; nodes trust it through
//!   [`IrohConfig::trust_relay_certs`](crate::IrohConfig::trust_relay_certs)
//!   (`relay_ca` in `p2pd.toml`). For labs and private fleets.
//! - `Files`: a certificate chain and key (PEM), for example from your CA
//!   or an ACME client; reloaded every 30 s, so renewals need no restart.
//! - `None`: plain HTTP, no QAD. Nodes behind NAT are then reachable
//!   through the relay but cannot learn their public address from it, so
//!   hole punching mostly fails. For trying things out only.

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use iroh_relay::server::{
    Access, AccessControl, CertConfig, ClientRequest, QuicConfig, RelayConfig, Server,
    ServerConfig, TlsConfig,
};
use p2p_core::{Error, PeerId, Result};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// The certificate file a self-signed relay keeps in its directory.
pub const CERT_FILE: &str = "relay-cert.pem";
/// The key file a self-signed relay keeps in its directory (mode 0600).
pub const KEY_FILE: &str = "relay-key.pem";

/// How the relay gets its TLS certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RelayTls {
    /// Made on first start for `names` (host names or IP addresses, which
    /// must include what nodes put in the relay URL), kept in `dir`.
    SelfSigned {
        /// Names the certificate is valid for.
        names: Vec<String>,
        /// Where the certificate and key are kept.
        dir: PathBuf,
    },
    /// A certificate chain and its key, PEM files.
    Files {
        /// The certificate chain.
        cert: PathBuf,
        /// The private key.
        key: PathBuf,
    },
    /// Plain HTTP, no QUIC address discovery.
    None,
}

/// Where and how a [`RelayServer`] serves.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct RelayServerConfig {
    /// TLS (above).
    pub tls: RelayTls,
    /// The HTTPS relay; unused without TLS.
    pub https_addr: SocketAddr,
    /// Plain HTTP: the relay itself without TLS, else only the captive
    /// portal check nodes make.
    pub http_addr: SocketAddr,
    /// QUIC address discovery (UDP); nodes expect port 7842. `None`: off.
    /// Needs TLS.
    pub quic_addr: Option<SocketAddr>,
    /// Only these nodes may use the relay; `None`: any node.
    pub allow: Option<BTreeSet<PeerId>>,
}

impl RelayServerConfig {
    /// HTTPS on port 3341, HTTP on 3340, QAD on 7842, all interfaces, any
    /// node.
    pub fn new(tls: RelayTls) -> Self {
        let all = |port| SocketAddr::from((Ipv4Addr::UNSPECIFIED, port));
        let quic =
            (tls != RelayTls::None).then(|| all(iroh_relay::defaults::DEFAULT_RELAY_QUIC_PORT));
        RelayServerConfig {
            tls,
            https_addr: all(3341),
            http_addr: all(3340),
            quic_addr: quic,
            allow: None,
        }
    }
}

/// A running relay. Dropping it stops it.
#[derive(Debug)]
pub struct RelayServer {
    server: Server,
    tls: bool,
    cert_pem: Option<String>,
}

#[derive(Debug)]
struct Allowed(BTreeSet<[u8; 32]>);

impl AccessControl for Allowed {
    async fn on_connect(&self, request: &ClientRequest) -> Access {
        if self.0.contains(request.endpoint_id().as_bytes()) {
            Access::Allow
        } else {
            Access::Deny {
                reason: Some("this relay serves listed nodes only".into()),
            }
        }
    }
}

fn bad_tls(what: &Path, e: impl std::fmt::Display) -> Error {
    Error::invalid("relay TLS", format!("{}: {e}", what.display()))
}

/// Reads or makes the self-signed certificate in `dir`; returns the chain,
/// the key and the certificate's PEM.
fn self_signed(
    names: &[String],
    dir: &Path,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>, String)> {
    let (cert_path, key_path) = (dir.join(CERT_FILE), dir.join(KEY_FILE));
    if !cert_path.exists() || !key_path.exists() {
        if names.is_empty() {
            return Err(Error::invalid(
                "relay TLS",
                "a self-signed certificate needs at least one name (the relay's host name or IP address)",
            ));
        }
        let made = rcgen::generate_simple_self_signed(names.to_vec())
            .map_err(|e| Error::invalid("relay TLS", format!("making a certificate: {e}")))?;
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
        write_private(&key_path, &made.signing_key.serialize_pem())?;
        std::fs::write(&cert_path, made.cert.pem())
            .map_err(|e| Error::io(format!("writing {}", cert_path.display()), e))?;
        tracing::info!(cert = %cert_path.display(), ?names, "made a self-signed relay certificate");
    }
    let (certs, key) = read_pem(&cert_path, &key_path)?;
    let pem = std::fs::read_to_string(&cert_path)
        .map_err(|e| Error::io(format!("reading {}", cert_path.display()), e))?;
    Ok((certs, key, pem))
}

fn write_private(path: &Path, text: &str) -> Result<()> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts
        .open(path)
        .map_err(|e| Error::io(format!("writing {}", path.display()), e))?;
    f.write_all(text.as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(|e| Error::io(format!("writing {}", path.display()), e))
}

fn read_pem(
    cert: &Path,
    key: &Path,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)> {
    let certs = CertificateDer::pem_file_iter(cert)
        .map_err(|e| bad_tls(cert, e))?
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| bad_tls(cert, e))?;
    if certs.is_empty() {
        return Err(bad_tls(cert, "no certificate in the file"));
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| bad_tls(key, e))?;
    Ok((certs, key))
}

fn server_builder()
-> Result<rustls::ConfigBuilder<rustls::ServerConfig, rustls::server::WantsServerCert>> {
    Ok(rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| Error::invalid("relay TLS", e.to_string()))?
    .with_no_client_auth())
}

impl RelayServer {
    /// Starts the relay. Fails with [`Error::Invalid`] for unusable TLS
    /// settings or files (named), and [`Error::Io`] when an address cannot
    /// be bound.
    pub async fn spawn(cfg: RelayServerConfig) -> Result<Self> {
        let (tls, cert_pem) = match &cfg.tls {
            RelayTls::None => (None, None),
            RelayTls::SelfSigned { names, dir } => {
                let (certs, key, pem) = self_signed(names, dir)?;
                let sc = server_builder()?
                    .with_single_cert(certs, key)
                    .map_err(|e| Error::invalid("relay TLS", e.to_string()))?;
                (Some(sc), Some(pem))
            }
            RelayTls::Files { cert, key } => {
                // Read once here, so that a bad file is refused at start
                // with its name, then served through the reloading resolver.
                read_pem(cert, key)?;
                let builder = server_builder()?;
                let resolver = iroh_relay::server::reloading_resolver(
                    builder.crypto_provider(),
                    cert.clone(),
                    key.clone(),
                    iroh_relay::server::DEFAULT_CERT_RELOAD_INTERVAL,
                )
                .await
                .map_err(|e| bad_tls(cert, format!("{e:#}")))?;
                (Some(builder.with_cert_resolver(resolver)), None)
            }
        };
        if tls.is_none() && cfg.quic_addr.is_some() {
            return Err(Error::invalid(
                "relay QUIC address discovery",
                "needs TLS: choose a self-signed certificate or certificate files, or switch it off",
            ));
        }
        let mut relay = RelayConfig::new(cfg.http_addr);
        if let Some(allow) = &cfg.allow {
            relay.access = Arc::new(Allowed(allow.iter().map(|p| *p.as_bytes()).collect()));
        }
        let mut server_cfg = ServerConfig::default();
        if let (Some(q), Some(sc)) = (cfg.quic_addr, &tls) {
            let mut qc = QuicConfig::new(q);
            qc.server_config = Some(sc.clone());
            server_cfg.quic = Some(qc);
        }
        let has_tls = tls.is_some();
        if let Some(sc) = tls {
            relay.tls = Some(TlsConfig::new(
                cfg.https_addr,
                CertConfig::Manual { server_config: sc },
            ));
        }
        server_cfg.relay = Some(relay);
        let server = Server::spawn(server_cfg).await.map_err(|e| {
            Error::io(
                format!(
                    "starting the relay (http {}, https {}, quic {:?})",
                    cfg.http_addr, cfg.https_addr, cfg.quic_addr
                ),
                std::io::Error::other(format!("{e:#}")),
            )
        })?;
        Ok(RelayServer {
            server,
            tls: has_tls,
            cert_pem,
        })
    }

    /// The address the relay itself serves on: HTTPS with TLS, else HTTP.
    pub fn relay_addr(&self) -> Option<SocketAddr> {
        if self.tls {
            self.server.https_addr()
        } else {
            self.server.http_addr()
        }
    }

    /// The plain-HTTP address.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.server.http_addr()
    }

    /// The QUIC address discovery address.
    pub fn quic_addr(&self) -> Option<SocketAddr> {
        self.server.quic_addr()
    }

    /// The URL nodes use, with `host` (a name or IP address the
    /// certificate holds) and the bound port.
    pub fn url(&self, host: &str) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        let port = self.relay_addr().map_or(0, |a| a.port());
        let host = match host.parse::<std::net::Ipv6Addr>() {
            Ok(v6) => format!("[{v6}]"),
            Err(_) => host.to_string(),
        };
        format!("{scheme}://{host}:{port}/")
    }

    /// The self-signed certificate in PEM, for nodes to trust.
    pub fn cert_pem(&self) -> Option<&str> {
        self.cert_pem.as_deref()
    }

    /// Stops the relay.
    pub async fn shutdown(self) {
        if let Err(e) = self.server.shutdown().await {
            tracing::warn!(error = %e, "relay did not stop cleanly");
        }
    }
}
