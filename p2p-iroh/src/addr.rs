//! Mapping SDK identities and addresses to iroh's and back.
//!
//! A [`NodeKey`] seed is the iroh [`SecretKey`], so a [`PeerId`] and the iroh
//! [`EndpointId`] are the same 32 bytes. A [`PeerAddr`] address is a socket
//! address (`127.0.0.1:4433`, `[::1]:4433`) or a relay URL
//! (`https://relay.example.com./`).

use std::net::SocketAddr;

use iroh::{EndpointAddr, EndpointId, RelayUrl, SecretKey, TransportAddr};
use p2p_core::{Error, NodeKey, PeerAddr, PeerId, Result};

/// The iroh secret key for `key`.
pub fn secret_key(key: &NodeKey) -> SecretKey {
    SecretKey::from_bytes(&key.seed())
}

/// The iroh endpoint id of `id`.
pub fn endpoint_id(id: &PeerId) -> Result<EndpointId> {
    EndpointId::from_bytes(id.as_bytes())
        .map_err(|e| Error::invalid("peer id", format!("not an iroh endpoint id: {e}")))
}

/// The SDK peer id of an iroh endpoint id.
pub fn peer_id(id: &EndpointId) -> PeerId {
    // Both are validated Ed25519 public keys, so this cannot fail.
    PeerId::from_bytes(*id.as_bytes()).expect("an iroh endpoint id is a valid Ed25519 public key")
}

/// Converts a [`PeerAddr`] to an iroh [`EndpointAddr`].
///
/// Each address must be a socket address or a relay URL; anything else is
/// [`Error::Invalid`] naming the address.
pub fn to_endpoint_addr(addr: &PeerAddr) -> Result<EndpointAddr> {
    let mut out = EndpointAddr::new(endpoint_id(&addr.id)?);
    for a in &addr.addrs {
        let t = if let Ok(sock) = a.parse::<SocketAddr>() {
            TransportAddr::Ip(sock)
        } else if a.contains("://") {
            let url: RelayUrl = a.parse().map_err(|e| {
                Error::invalid("peer address", format!("relay URL {a:?} is not valid: {e}"))
            })?;
            TransportAddr::Relay(url)
        } else {
            return Err(Error::invalid(
                "peer address",
                format!(
                    "{a:?} is neither a socket address (127.0.0.1:4433, [::1]:4433) \
                     nor a relay URL (https://relay.example.com)"
                ),
            ));
        };
        out.addrs.insert(t);
    }
    Ok(out)
}

/// Converts an iroh [`EndpointAddr`] to a [`PeerAddr`]: IP addresses first
/// (IPv4 before IPv6), then relay URLs. Custom transport addresses are left
/// out: the SDK cannot dial them.
pub fn to_peer_addr(addr: &EndpointAddr) -> PeerAddr {
    let mut ips: Vec<SocketAddr> = addr.ip_addrs().copied().collect();
    ips.sort_by_key(|a| (a.is_ipv6(), *a));
    let addrs = ips
        .into_iter()
        .map(|a| a.to_string())
        .chain(addr.relay_urls().map(|u| u.to_string()))
        .collect();
    PeerAddr {
        id: peer_id(&addr.id),
        addrs,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_key_is_the_iroh_secret_key() {
        let key = NodeKey::from_seed([3; 32]);
        let sk = secret_key(&key);
        assert_eq!(peer_id(&sk.public()), key.peer_id());
        assert_eq!(endpoint_id(&key.peer_id()).unwrap(), sk.public());
    }

    #[test]
    fn addresses_round_trip() {
        let id = NodeKey::from_seed([4; 32]).peer_id();
        let pa = PeerAddr::new(
            id,
            ["127.0.0.1:4433", "[::1]:4433", "https://relay.example.com/"],
        )
        .unwrap();
        let ea = to_endpoint_addr(&pa).unwrap();
        assert_eq!(ea.ip_addrs().count(), 2);
        assert_eq!(ea.relay_urls().count(), 1);
        let back = to_peer_addr(&ea);
        assert_eq!(back.id, id);
        assert_eq!(back.addrs[0], "127.0.0.1:4433");
        assert_eq!(back.addrs[1], "[::1]:4433");
        assert!(back.addrs[2].starts_with("https://relay.example.com"));
    }

    #[test]
    fn bad_addresses_are_named() {
        let id = NodeKey::from_seed([4; 32]).peer_id();
        for bad in ["localhost", "1.2.3.4", "/ip4/1.2.3.4/tcp/1", "https://"] {
            let pa = PeerAddr::new(id, [bad]).unwrap();
            let e = to_endpoint_addr(&pa).unwrap_err().to_string();
            assert!(e.contains(bad), "{bad}: {e}");
        }
    }
}
