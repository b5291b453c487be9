//! Binding a node to a real transport: iroh or libp2p, with an optional
//! pre-shared key and allow-list. Shared by `p2pd`, `p2pctl` and the
//! `fleet` example, so that all three admit each other the same way.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context, Result, anyhow};
use p2p_core::{Admission, Admitted, NodeKey, PeerAddr, PeerId, PreSharedKey, Provider};
use serde::{Deserialize, Serialize};

/// Which transport a node speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// QUIC through iroh (local network only: no relays, no DNS).
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

/// How to bind.
#[derive(Debug, Clone, Default)]
pub struct NetOptions {
    /// The transport.
    pub backend: Backend,
    /// Addresses to listen on; empty: loopback, a free port.
    pub listen: Vec<SocketAddr>,
    /// Members of the private network of this key only.
    pub psk: Option<PreSharedKey>,
    /// Only these peers, both ways; `None`: any admitted peer.
    pub allow: Option<BTreeSet<PeerId>>,
    /// Local-network discovery.
    pub mdns: bool,
}

/// Binds `key` with `opts`. With iroh, the pre-shared key and the
/// allow-list are enforced by the admission handshake of `p2p-core`
/// (the allow-list by iroh as well); libp2p enforces both natively (pnet).
pub async fn bind(key: &NodeKey, opts: &NetOptions) -> Result<Arc<dyn Provider>> {
    let listen = if opts.listen.is_empty() {
        vec![SocketAddr::from(([127, 0, 0, 1], 0))]
    } else {
        opts.listen.clone()
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
            let p = p2p_iroh::IrohProvider::bind(key, cfg)
                .await
                .with_context(|| format!("binding iroh on {}", join(&listen)))?;
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
            Arc::new(
                p2p_libp2p::Libp2pProvider::bind(key, cfg)
                    .await
                    .with_context(|| format!("binding libp2p on {}", join(&listen)))?,
            )
        }
    };
    Ok(provider)
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
