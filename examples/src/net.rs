//! Binding a node to a real transport: iroh or libp2p, with an optional
//! pre-shared key and allow-list, and relays for reaching nodes behind NAT.
//! Shared by `p2pd`, `p2pctl` and the `fleet` example, so that all three
//! admit and reach each other the same way.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context, Result, anyhow, bail};
use p2p_core::{Admission, Admitted, NodeKey, PeerAddr, PeerId, PreSharedKey, Provider};
use serde::{Deserialize, Serialize};

/// Which transport a node speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// QUIC through iroh (hole punching; relays when configured).
    #[default]
    Iroh,
    /// TCP + noise + yamux through libp2p (native private networks).
    Libp2p,
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Backend::Iroh => "iroh",
            Backend::Libp2p => "libp2p",
        })
    }
}

/// How far beyond its own network a node reaches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Reach {
    /// Direct addresses only: no relays, nothing outside the network.
    #[default]
    Local,
    /// The relays listed in `relays`: nodes behind NAT are reached through
    /// them, and hole punching makes paths direct where NAT allows.
    Relays,
    /// number 0's public iroh relays (needs the internet; iroh only).
    Public,
}

impl std::fmt::Display for Reach {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Reach::Local => "local",
            Reach::Relays => "relays",
            Reach::Public => "public",
        })
    }
}

/// Relays, as a node's settings give them.
#[derive(Debug, Clone, Default)]
pub struct Relays {
    /// Local, own relays, or public.
    pub reach: Reach,
    /// iroh: relay URLs (`https://relay.example.com`); libp2p: relay
    /// nodes' addresses (`<id>@/ip4/203.0.113.5/tcp/7402`).
    pub relays: Vec<String>,
    /// iroh: certificates (DER) trusted for the relays besides the web
    /// roots, such as a self-signed relay's.
    pub ca_certs: Vec<Vec<u8>>,
    /// libp2p: serve as a circuit relay for other nodes too.
    pub serve: bool,
}

impl Relays {
    /// The settings as given: `reach` unset means [`Reach::Relays`] when
    /// `relays` lists any, else [`Reach::Local`].
    pub fn new(
        reach: Option<Reach>,
        relays: Vec<String>,
        ca_certs: Vec<Vec<u8>>,
        serve: bool,
    ) -> Self {
        let reach = reach.unwrap_or(if relays.is_empty() {
            Reach::Local
        } else {
            Reach::Relays
        });
        Relays {
            reach,
            relays,
            ca_certs,
            serve,
        }
    }

    /// Checks the settings for `backend`, naming the setting at fault:
    /// `connectivity`, `relays`, `relay_ca` or `serve_relay`.
    pub fn check(&self, backend: Backend) -> Result<()> {
        match (self.reach, backend) {
            (Reach::Relays, _) if self.relays.is_empty() => {
                bail!("connectivity = \"relays\": list at least one relay in relays")
            }
            (Reach::Public, Backend::Libp2p) => bail!(
                "connectivity = \"public\": there are no public relays for libp2p; \
                 run your own (`p2pd relay --backend libp2p`) and list it in relays"
            ),
            (Reach::Local, _) if !self.relays.is_empty() => bail!(
                "relays are listed but connectivity = \"local\": set connectivity = \"relays\" \
                 (or leave it out)"
            ),
            _ => {}
        }
        match backend {
            Backend::Iroh => {
                self.iroh_urls()?;
                if self.serve {
                    bail!(
                        "serve_relay: an iroh node does not relay for others; run `p2pd relay` \
                         for a relay server"
                    );
                }
            }
            Backend::Libp2p => {
                self.libp2p_relays()?;
                if !self.ca_certs.is_empty() {
                    bail!(
                        "relay_ca: libp2p relays are nodes of the network, proven by their \
                         ids, not by certificates; relay_ca is for iroh relays"
                    );
                }
            }
        }
        Ok(())
    }

    /// The iroh relay URLs (entries may hold several, comma separated).
    pub fn iroh_urls(&self) -> Result<Vec<String>> {
        let mut out = Vec::new();
        for entry in &self.relays {
            for u in entry
                .split(|c: char| c == ',' || c.is_whitespace())
                .filter(|u| !u.is_empty())
            {
                p2p_iroh::relay::parse_relay_url(u).map_err(|e| anyhow!("relays: {e}"))?;
                out.push(u.to_string());
            }
        }
        Ok(out)
    }

    /// The libp2p relay nodes.
    pub fn libp2p_relays(&self) -> Result<Vec<PeerAddr>> {
        let relays = peer_list("relays", &self.relays)?;
        for r in &relays {
            if r.addrs.is_empty() {
                bail!("relays: {r}: a relay node needs an address (<id>@/ip4/.../tcp/...)");
            }
            p2p_libp2p::addr::to_multiaddrs(r).map_err(|e| anyhow!("relays: {r}: {e}"))?;
        }
        Ok(relays)
    }
}

/// How to bind.
#[derive(Debug, Clone, Default)]
pub struct NetOptions {
    /// The transport.
    pub backend: Backend,
    /// Addresses to listen on; empty: every interface, a free port (iroh
    /// binds IPv6 too where the host has it).
    pub listen: Vec<SocketAddr>,
    /// Members of the private network of this key only.
    pub psk: Option<PreSharedKey>,
    /// Only these peers, both ways; `None`: any admitted peer.
    pub allow: Option<BTreeSet<PeerId>>,
    /// Local-network discovery.
    pub mdns: bool,
    /// Relays.
    pub relays: Relays,
    /// The bound on connecting to a peer (and on the admission handshake
    /// of a private iroh network); `None`: the backend's default (10 s).
    pub connect_timeout: Option<std::time::Duration>,
}

impl NetOptions {
    /// Loopback only, a free port: for tests and single-machine demos.
    pub fn loopback(backend: Backend) -> Self {
        NetOptions {
            backend,
            listen: vec![SocketAddr::from(([127, 0, 0, 1], 0))],
            ..NetOptions::default()
        }
    }
}

/// Binds `key` with `opts`. With iroh, the pre-shared key and the
/// allow-list are enforced by the admission handshake of `p2p-core`
/// (the allow-list by iroh as well); libp2p enforces both natively (pnet).
pub async fn bind(key: &NodeKey, opts: &NetOptions) -> Result<Arc<dyn Provider>> {
    opts.relays.check(opts.backend)?;
    let listen = opts.listen.clone();
    let on = || {
        if listen.is_empty() {
            "every interface".to_string()
        } else {
            join(&listen)
        }
    };
    let provider: Arc<dyn Provider> = match opts.backend {
        Backend::Iroh => {
            let mut cfg = p2p_iroh::IrohConfig::default().mdns(opts.mdns);
            cfg.bind_addrs.clear();
            for a in &listen {
                cfg = cfg.bind(*a);
            }
            if let Some(allow) = &opts.allow {
                cfg = cfg.allow_list(allow.iter().copied());
            }
            cfg = cfg.connectivity(match opts.relays.reach {
                Reach::Local => p2p_iroh::Connectivity::LocalOnly,
                Reach::Relays => p2p_iroh::Connectivity::CustomRelays(opts.relays.iroh_urls()?),
                Reach::Public => p2p_iroh::Connectivity::N0Relays,
            });
            cfg = cfg.trust_relay_certs(opts.relays.ca_certs.iter().cloned());
            if let Some(t) = opts.connect_timeout {
                cfg = cfg.connect_timeout(t);
            }
            let p = p2p_iroh::IrohProvider::bind(key, cfg)
                .await
                .with_context(|| format!("binding iroh on {}", on()))?;
            tracing::info!(
                id = %p.local_id().short(),
                bound = %join(&p.bound_sockets()),
                "iroh bound; peers reach it at {}",
                p.local_addr()
            );
            if opts.psk.is_none() && opts.allow.is_none() {
                Arc::new(p)
            } else {
                let mut policy = Admission::new(&mut rand::rng());
                if let Some(psk) = &opts.psk {
                    policy = policy.with_psk(psk.clone());
                }
                if let Some(allow) = &opts.allow {
                    policy = policy.with_allow_list(allow.iter().copied());
                }
                if let Some(t) = opts.connect_timeout {
                    policy = policy.with_handshake_timeout(t);
                }
                Arc::new(Admitted::new(p, policy))
            }
        }
        Backend::Libp2p => {
            let mut cfg = p2p_libp2p::Libp2pConfig::default().mdns(opts.mdns);
            cfg.bind_addrs.clear();
            for a in &listen {
                cfg = cfg.bind(*a);
            }
            if let Some(psk) = &opts.psk {
                cfg = cfg.psk(psk.clone());
            }
            if let Some(allow) = &opts.allow {
                cfg = cfg.allow_list(allow.iter().copied());
            }
            if opts.relays.reach == Reach::Relays {
                cfg = cfg.relays(opts.relays.libp2p_relays()?);
            }
            cfg = cfg.relay_server(opts.relays.serve);
            if let Some(t) = opts.connect_timeout {
                // The caller bounds the whole connect (the controller's
                // pool does, for p2pctl); libp2p keeps its own budgets for
                // TCP, the handshakes and hole punching, which a short
                // bound would cut through a NAT, and holds a relayed dial
                // for hole punching at most half the caller's bound.
                cfg.hole_punch_wait = cfg.hole_punch_wait.min(t / 2);
                let budget = t.max(cfg.connect_timeout);
                cfg = cfg.connect_timeout(budget);
            }
            let p = p2p_libp2p::Libp2pProvider::bind(key, cfg)
                .await
                .with_context(|| format!("binding libp2p on {}", on()))?;
            tracing::info!(
                id = %p.local_id().short(),
                "libp2p bound; peers reach it at {}",
                p.local_addr()
            );
            Arc::new(p)
        }
    };
    Ok(provider)
}

/// Whether an address in a [`PeerAddr`] (iroh's socket address or
/// libp2p's multiaddr) is a loopback address.
pub fn is_loopback_addr(a: &str) -> bool {
    match a.parse::<SocketAddr>() {
        Ok(s) => s.ip().is_loopback(),
        Err(_) => a.starts_with("/ip4/127.") || a.starts_with("/ip6/::1/"),
    }
}

/// The certificates in a PEM file, for `relay_ca`; the error names the
/// file.
pub fn read_relay_ca(path: &std::path::Path) -> Result<Vec<Vec<u8>>> {
    let pem = std::fs::read(path).with_context(|| format!("relay_ca {}", path.display()))?;
    p2p_iroh::relay::certs_from_pem(&pem).map_err(|e| anyhow!("relay_ca {}: {e}", path.display()))
}

/// Peer addresses from a setting (`what`, named in errors): each entry is
/// what `p2pd id` prints, or several of those separated by commas or
/// spaces ([`PeerAddr::parse_list`]).
pub fn peer_list(what: &str, entries: &[String]) -> Result<Vec<PeerAddr>> {
    let mut out = Vec::new();
    for e in entries {
        let list = PeerAddr::parse_list(e).map_err(|err| anyhow!("{what}: {e:?}: {err}"))?;
        out.extend(list);
    }
    Ok(out)
}

fn join(addrs: &[SocketAddr]) -> String {
    addrs
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}
