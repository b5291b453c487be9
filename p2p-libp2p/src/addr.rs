//! Identities and addresses: p2p-core's [`NodeKey`], [`PeerId`] and
//! [`PeerAddr`] in libp2p's terms.
//!
//! A [`NodeKey`] seed is an ed25519 secret key, so it becomes a libp2p
//! ed25519 [`Keypair`] and the [`PeerId`] (the 32-byte public key) maps one
//! to one onto a libp2p peer id (the identity multihash of that key).
//! Addresses are multiaddrs; in a [`PeerAddr`] they are written without the
//! `/p2p/<id>` suffix, which [`to_multiaddrs`] adds and [`to_peer_addr`]
//! strips:
//!
//! ```
//! use p2p_core::{NodeKey, PeerAddr};
//! use p2p_libp2p::addr;
//! let id = NodeKey::from_seed([3; 32]).peer_id();
//! let peer: PeerAddr = format!("{id}@/ip4/127.0.0.1/tcp/4001").parse()?;
//! let dial = addr::to_multiaddrs(&peer)?;
//! assert_eq!(dial[0].to_string(), format!("/ip4/127.0.0.1/tcp/4001/p2p/{}", addr::to_libp2p(&id)));
//! assert_eq!(addr::to_peer_addr(&id, dial)?, peer);
//! # Ok::<(), p2p_core::Error>(())
//! ```

use libp2p::Multiaddr;
use libp2p::identity::{Keypair, PublicKey, ed25519};
use libp2p::multiaddr::Protocol;
use p2p_core::{Error, NodeKey, PeerAddr, PeerId, Result};

/// The libp2p keypair of a node key.
pub fn keypair(key: &NodeKey) -> Keypair {
    let mut seed = key.seed();
    // `ed25519_from_bytes` zeroes the buffer it is given.
    Keypair::ed25519_from_bytes(&mut seed).expect("a 32-byte seed is always a valid ed25519 key")
}

/// The libp2p peer id of a p2p-core peer id.
pub fn to_libp2p(id: &PeerId) -> libp2p::PeerId {
    let public = ed25519::PublicKey::try_from_bytes(id.as_bytes())
        .expect("a PeerId always holds a valid ed25519 public key");
    PublicKey::from(public).to_peer_id()
}

/// The p2p-core peer id of a libp2p peer id. Only ed25519 peers have one;
/// any other key type (RSA, secp256k1, ECDSA, or an id hashed with SHA-256)
/// is [`Error::Invalid`].
pub fn from_libp2p(id: &libp2p::PeerId) -> Result<PeerId> {
    let hash = id.as_ref();
    let not_ours = |why: &str| {
        Error::invalid(
            "libp2p peer id",
            format!("{id}: {why}; p2p-deploy peers use ed25519 keys"),
        )
    };
    // Code 0 is the identity multihash: the digest is the encoded key.
    if hash.code() != 0 {
        return Err(not_ours("the id is a hash of the key, not the key itself"));
    }
    let public = PublicKey::try_decode_protobuf(hash.digest())
        .map_err(|e| not_ours(&format!("undecodable public key ({e})")))?;
    let ed = public
        .try_into_ed25519()
        .map_err(|_| not_ours("not an ed25519 key"))?;
    PeerId::from_bytes(ed.to_bytes())
}

/// An IP address as a multiaddr (`/ip4/...` or `/ip6/...`), for a
/// transport part to be added to.
pub fn ip_multiaddr(ip: std::net::IpAddr) -> Multiaddr {
    Multiaddr::empty().with(match ip {
        std::net::IpAddr::V4(v4) => Protocol::Ip4(v4),
        std::net::IpAddr::V6(v6) => Protocol::Ip6(v6),
    })
}

/// Whether `a` is a loopback address (`/ip4/127.../`, `/ip6/::1/`).
pub fn is_loopback(a: &Multiaddr) -> bool {
    a.iter().any(|p| match p {
        Protocol::Ip4(ip) => ip.is_loopback(),
        Protocol::Ip6(ip) => ip.is_loopback(),
        _ => false,
    })
}

/// The TCP multiaddr of a socket address (`/ip4/192.0.2.7/tcp/4001`).
pub fn tcp_multiaddr(addr: std::net::SocketAddr) -> Multiaddr {
    ip_multiaddr(addr.ip()).with(Protocol::Tcp(addr.port()))
}

/// Parses one address of a [`PeerAddr`] as a multiaddr. A `/p2p/<id>`
/// suffix is accepted when it names `id`, and removed.
pub fn parse_multiaddr(id: &PeerId, text: &str) -> Result<Multiaddr> {
    let mut ma: Multiaddr = text.parse().map_err(|e| {
        Error::invalid(
            "peer address",
            format!("{text:?} is not a multiaddr ({e}); expected e.g. /ip4/192.0.2.7/tcp/4001"),
        )
    })?;
    if let Some(Protocol::P2p(suffix)) = ma.iter().last() {
        if suffix != to_libp2p(id) {
            return Err(Error::invalid(
                "peer address",
                format!("{text:?} names peer {suffix}, but the address is for {id}"),
            ));
        }
        ma.pop();
    }
    if ma.is_empty() {
        return Err(Error::invalid(
            "peer address",
            format!("{text:?} has no transport part"),
        ));
    }
    Ok(ma)
}

/// The multiaddrs to dial `peer` at, each ending in `/p2p/<id>`.
pub fn to_multiaddrs(peer: &PeerAddr) -> Result<Vec<Multiaddr>> {
    let lp = to_libp2p(&peer.id);
    peer.addrs
        .iter()
        .map(|a| Ok(parse_multiaddr(&peer.id, a)?.with(Protocol::P2p(lp))))
        .collect()
}

/// A [`PeerAddr`] from multiaddrs, with any `/p2p/<id>` suffix removed.
/// Duplicates are dropped; the order is kept.
pub fn to_peer_addr(id: &PeerId, addrs: impl IntoIterator<Item = Multiaddr>) -> Result<PeerAddr> {
    let mut out: Vec<String> = Vec::new();
    for ma in addrs {
        let text = parse_multiaddr(id, &ma.to_string())?.to_string();
        if !out.contains(&text) {
            out.push(text);
        }
    }
    PeerAddr::new(*id, out)
}

/// True for a QUIC address (`.../udp/<port>/quic-v1`).
pub fn is_quic(ma: &Multiaddr) -> bool {
    ma.iter()
        .any(|p| matches!(p, Protocol::QuicV1 | Protocol::Quic))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_map_one_to_one_both_ways() {
        for n in 0..20u8 {
            let key = NodeKey::from_seed([n; 32]);
            let lp = to_libp2p(&key.peer_id());
            assert_eq!(lp, keypair(&key).public().to_peer_id());
            assert_eq!(from_libp2p(&lp).unwrap(), key.peer_id());
        }
    }

    #[test]
    fn foreign_key_types_are_refused_by_name() {
        let hashed = libp2p::PeerId::random(); // sha256-style random id
        let err = from_libp2p(&hashed).unwrap_err().to_string();
        assert!(err.contains("ed25519"), "{err}");
    }

    #[test]
    fn p2p_suffix_must_name_the_same_peer() {
        let a = NodeKey::from_seed([1; 32]).peer_id();
        let b = NodeKey::from_seed([2; 32]).peer_id();
        let good = format!("/ip4/10.0.0.1/tcp/1/p2p/{}", to_libp2p(&a));
        assert_eq!(
            parse_multiaddr(&a, &good).unwrap().to_string(),
            "/ip4/10.0.0.1/tcp/1"
        );
        let err = parse_multiaddr(&b, &good).unwrap_err().to_string();
        assert!(err.contains("names peer"), "{err}");
        let err = parse_multiaddr(&a, "10.0.0.1:4001")
            .unwrap_err()
            .to_string();
        assert!(err.contains("not a multiaddr"), "{err}");
        assert!(parse_multiaddr(&a, &format!("/p2p/{}", to_libp2p(&a))).is_err());
    }

    #[test]
    fn quic_addresses_are_recognised() {
        assert!(is_quic(&"/ip4/127.0.0.1/udp/9/quic-v1".parse().unwrap()));
        assert!(!is_quic(&"/ip4/127.0.0.1/tcp/9".parse().unwrap()));
    }
}
