//! Node records: what a node says about itself, signed with its node key,
//! and the claims that a node has gone unreachable, signed by the node
//! that found out.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use p2p_core::{NodeKey, PeerId};
use serde::{Deserialize, Serialize};

use crate::package::PackageId;

/// Signatures over records start with this, so that a record signature
/// can never be replayed as anything else the node key signs.
const RECORD_DOMAIN: &[u8] = b"p2p-deploy node record v1\0";
/// The same for unreachable claims.
const CLAIM_DOMAIN: &[u8] = b"p2p-deploy unreachable claim v1\0";

/// Signatures found good, by the hash of (key, message, signature): a
/// record that reaches a node again (from another peer, in a later round)
/// or, in a simulation, reaches a thousand nodes in one process, is
/// verified once. Only successes are kept, and the key covers every
/// input, so a hit means the same check passed before. Cleared when full.
static VERIFIED: std::sync::Mutex<Option<std::collections::HashSet<[u8; 32]>>> =
    std::sync::Mutex::new(None);
/// Entries kept in [`VERIFIED`] before it is cleared.
const VERIFIED_KEPT: usize = 200_000;

/// Verifies `signature` by `id` over `domain` + `message`, once per
/// process for the same inputs.
fn verify_once(id: &PeerId, domain: &[u8], message: &[u8], signature: &[u8; 64]) -> bool {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(id.as_bytes());
    h.update(signature);
    h.update(domain);
    h.update(message);
    let key: [u8; 32] = h.finalize().into();
    if p2p_core::sync::lock(&VERIFIED)
        .as_ref()
        .is_some_and(|set| set.contains(&key))
    {
        return true;
    }
    if id.verify(&[domain, message].concat(), signature).is_err() {
        return false;
    }
    let mut cache = p2p_core::sync::lock(&VERIFIED);
    let set = cache.get_or_insert_with(Default::default);
    if set.len() >= VERIFIED_KEPT {
        set.clear();
    }
    set.insert(key);
    true
}

/// The largest encoded record accepted.
pub const MAX_RECORD_BYTES: usize = 4096;
/// The most addresses a record may carry.
pub const MAX_ADDRS: usize = 16;
/// The most labels a record may carry.
pub const MAX_LABELS: usize = 32;
/// The most held releases a record lists (the newest first).
pub const MAX_HELD: usize = 32;

/// What a node publishes about itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    /// The node; the record is signed with this id's key.
    pub id: PeerId,
    /// Higher replaces lower: a node bumps it for every change, and starts
    /// each run above both its last stored value and the wall clock in
    /// milliseconds, so a restart (even with its state lost) wins.
    pub seq: u64,
    /// Where it can be reached: socket addresses, relay URLs, multiaddrs.
    pub addrs: Vec<String>,
    /// Its name for people (may be empty).
    pub name: String,
    /// Its labels, for selectors.
    pub labels: BTreeMap<String, String>,
    /// Its site (the `site` label), which the swarm and people group by.
    pub site: Option<String>,
    /// The releases it holds, newest first (at most [`MAX_HELD`]), so that
    /// a search is answered from membership.
    pub held: Vec<HeldRelease>,
}

/// A release a node holds, as its record lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeldRelease {
    /// App name.
    pub name: String,
    /// Version.
    pub version: semver::Version,
    /// The release's id.
    pub id: PackageId,
    /// Archive size in bytes.
    pub size: u64,
    /// Whether every chunk is held.
    pub complete: bool,
    /// Whether the version is installed.
    pub installed: bool,
    /// Whether it is the active version.
    pub active: bool,
}

impl NodeRecord {
    /// Its name, else its short id.
    pub fn label(&self) -> String {
        if self.name.is_empty() {
            self.id.short()
        } else {
            self.name.clone()
        }
    }

    /// Signs it with `key`, which must be the key of `self.id`.
    pub fn sign(&self, key: &NodeKey) -> SignedRecord {
        debug_assert_eq!(key.peer_id(), self.id, "a record is signed by its own node");
        let bytes = postcard::to_allocvec(self).expect("a record always encodes");
        let signature = key.sign(&[RECORD_DOMAIN, &bytes].concat()).to_vec();
        SignedRecord { bytes, signature }
    }
}

/// A record as it travels: its encoded bytes and the node's signature
/// over them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedRecord {
    /// The encoded [`NodeRecord`].
    #[serde(with = "serde_bytes")]
    pub bytes: Vec<u8>,
    /// Ed25519 signature by the record's node.
    #[serde(with = "serde_bytes")]
    pub signature: Vec<u8>,
}

/// Why a record or claim was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RecordError {
    /// Too large, or does not decode.
    #[error("malformed record: {0}")]
    Malformed(String),
    /// The signature is not the node's.
    #[error("record of {node}: the signature does not verify")]
    BadSignature {
        /// Short id of the node the record claims to be.
        node: String,
    },
    /// An address the node may not claim.
    #[error("record of {node}: address {addr:?} refused: {why}")]
    Address {
        /// Short id of the node.
        node: String,
        /// The address.
        addr: String,
        /// Why.
        why: String,
    },
    /// Too many addresses, labels or releases, or a bad field.
    #[error("record of {node}: {why}")]
    Invalid {
        /// Short id of the node.
        node: String,
        /// What is wrong.
        why: String,
    },
}

/// Which addresses records may claim.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AddressPolicy {
    /// IP networks (`10.0.0.0/8`, `fd00::/8`) a record's socket addresses
    /// must fall in; empty: any. Addresses that are not IP socket
    /// addresses (relay URLs, multiaddrs without an IP, simulated names)
    /// are checked only for form.
    pub allowed: Vec<IpNet>,
}

/// An IP network: an address and a prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpNet {
    addr: IpAddr,
    prefix: u8,
}

impl std::str::FromStr for IpNet {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (a, p) = s
            .split_once('/')
            .ok_or_else(|| format!("{s:?} is not a network (ADDRESS/PREFIX, as 10.0.0.0/8)"))?;
        let addr: IpAddr = a
            .parse()
            .map_err(|_| format!("{s:?}: {a:?} is not an IP address"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix: u8 = p
            .parse()
            .ok()
            .filter(|p| *p <= max)
            .ok_or_else(|| format!("{s:?}: the prefix must be a number from 0 to {max}"))?;
        Ok(IpNet { addr, prefix })
    }
}

impl std::fmt::Display for IpNet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl IpNet {
    /// Whether `ip` is in this network.
    pub fn contains(&self, ip: IpAddr) -> bool {
        fn masked(bytes: &[u8], prefix: u8) -> Vec<u8> {
            bytes
                .iter()
                .enumerate()
                .map(|(i, b)| {
                    let bits = (prefix as usize).saturating_sub(i * 8).min(8);
                    if bits == 0 {
                        0
                    } else {
                        b & (0xffu8 << (8 - bits))
                    }
                })
                .collect()
        }
        let ip = match (self.addr, ip) {
            (IpAddr::V4(_), IpAddr::V6(v6)) => match v6.to_ipv4_mapped() {
                Some(v4) => IpAddr::V4(v4),
                None => return false,
            },
            (_, ip) => ip,
        };
        match (self.addr, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                masked(&n.octets(), self.prefix) == masked(&a.octets(), self.prefix)
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                masked(&n.octets(), self.prefix) == masked(&a.octets(), self.prefix)
            }
            _ => false,
        }
    }
}

/// The IP of a socket address or of a multiaddr's `/ip4/` or `/ip6/` part.
pub(crate) fn ip_of(addr: &str) -> Option<IpAddr> {
    if let Ok(sa) = addr.parse::<SocketAddr>() {
        return Some(sa.ip());
    }
    let mut parts = addr.split('/').skip(1);
    match (parts.next(), parts.next()) {
        (Some("ip4" | "ip6"), Some(ip)) => ip.parse().ok(),
        _ => None,
    }
}

impl AddressPolicy {
    fn check(&self, node: &PeerId, addr: &str) -> Result<(), RecordError> {
        let refuse = |why: &str| RecordError::Address {
            node: node.short(),
            addr: addr.to_string(),
            why: why.to_string(),
        };
        if addr.is_empty()
            || addr.len() > 512
            || addr
                .chars()
                .any(|c| c.is_whitespace() || c == ',' || c == '@')
        {
            return Err(refuse("not an address's text form"));
        }
        let Some(ip) = ip_of(addr) else {
            return Ok(());
        };
        if ip.is_unspecified() || ip.is_multicast() {
            return Err(refuse("an unspecified or multicast IP reaches no node"));
        }
        if let IpAddr::V4(v4) = ip
            && v4.is_broadcast()
        {
            return Err(refuse("a broadcast IP reaches no node"));
        }
        if !self.allowed.is_empty() && !self.allowed.iter().any(|n| n.contains(ip)) {
            let nets: Vec<String> = self.allowed.iter().map(|n| n.to_string()).collect();
            return Err(refuse(&format!(
                "outside the allowed networks ({})",
                nets.join(", ")
            )));
        }
        Ok(())
    }
}

impl SignedRecord {
    /// Decodes, checks the signature and the fields: a record that passes
    /// was made by its node and claims only what it may.
    pub fn open(&self, policy: &AddressPolicy) -> Result<NodeRecord, RecordError> {
        if self.bytes.len() > MAX_RECORD_BYTES {
            return Err(RecordError::Malformed(format!(
                "{} bytes, more than the {MAX_RECORD_BYTES} a record may have",
                self.bytes.len()
            )));
        }
        let record: NodeRecord = postcard::from_bytes(&self.bytes)
            .map_err(|e| RecordError::Malformed(format!("does not decode: {e}")))?;
        let node = record.id.short();
        let signature: [u8; 64] = self
            .signature
            .as_slice()
            .try_into()
            .map_err(|_| RecordError::BadSignature { node: node.clone() })?;
        if !verify_once(&record.id, RECORD_DOMAIN, &self.bytes, &signature) {
            return Err(RecordError::BadSignature { node: node.clone() });
        }
        let invalid = |why: String| RecordError::Invalid {
            node: node.clone(),
            why,
        };
        if record.addrs.len() > MAX_ADDRS {
            return Err(invalid(format!(
                "{} addresses, more than {MAX_ADDRS}",
                record.addrs.len()
            )));
        }
        if record.labels.len() > MAX_LABELS {
            return Err(invalid(format!(
                "{} labels, more than {MAX_LABELS}",
                record.labels.len()
            )));
        }
        if record.held.len() > MAX_HELD {
            return Err(invalid(format!(
                "{} releases, more than {MAX_HELD}",
                record.held.len()
            )));
        }
        for a in &record.addrs {
            policy.check(&record.id, a)?;
        }
        Ok(record)
    }
}

/// A signed statement that a node could not be reached: by `by`, about
/// the record of `about` with sequence number `seq`. It marks that record
/// unreachable until the node publishes a newer one (which it does as soon
/// as it hears the claim, if it is up).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claim {
    /// The node found unreachable.
    pub about: PeerId,
    /// The sequence number of its record at the time.
    pub seq: u64,
    /// Wall-clock milliseconds when it was found unreachable.
    pub since_ms: u64,
    /// The node that found it.
    pub by: PeerId,
    /// `by`'s signature.
    #[serde(with = "serde_bytes")]
    pub signature: Vec<u8>,
}

impl Claim {
    fn message(about: &PeerId, seq: u64, since_ms: u64) -> Vec<u8> {
        let mut m = CLAIM_DOMAIN.to_vec();
        m.extend_from_slice(about.as_bytes());
        m.extend_from_slice(&seq.to_be_bytes());
        m.extend_from_slice(&since_ms.to_be_bytes());
        m
    }

    /// A claim by the holder of `key`.
    pub fn new(key: &NodeKey, about: PeerId, seq: u64, since_ms: u64) -> Claim {
        Claim {
            about,
            seq,
            since_ms,
            by: key.peer_id(),
            signature: key.sign(&Claim::message(&about, seq, since_ms)).to_vec(),
        }
    }

    /// Whether `by` signed it.
    pub fn verify(&self) -> Result<(), RecordError> {
        let bad = || RecordError::BadSignature {
            node: self.by.short(),
        };
        let signature: [u8; 64] = self.signature.as_slice().try_into().map_err(|_| bad())?;
        let message = Claim::message(&self.about, self.seq, self.since_ms);
        if verify_once(&self.by, b"", &message, &signature) {
            Ok(())
        } else {
            Err(bad())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(key: &NodeKey, seq: u64, addrs: &[&str]) -> NodeRecord {
        NodeRecord {
            id: key.peer_id(),
            seq,
            addrs: addrs.iter().map(|a| a.to_string()).collect(),
            name: "n1".into(),
            labels: [("site".to_string(), "a".to_string())].into(),
            site: Some("a".into()),
            held: Vec::new(),
        }
    }

    #[test]
    fn a_signed_record_opens_and_a_changed_byte_does_not() {
        let key = NodeKey::from_seed([1; 32]);
        let r = record(&key, 7, &["10.0.0.1:4433"]);
        let signed = r.sign(&key);
        assert_eq!(signed.open(&AddressPolicy::default()).unwrap(), r);
        let mut tampered = signed.clone();
        let last = tampered.bytes.len() - 1;
        tampered.bytes[last] ^= 1;
        assert!(tampered.open(&AddressPolicy::default()).is_err());
        // Another key signing a record in this node's name.
        let forger = NodeKey::from_seed([2; 32]);
        let bytes = postcard::to_allocvec(&r).unwrap();
        let forged = SignedRecord {
            signature: forger.sign(&[RECORD_DOMAIN, &bytes].concat()).to_vec(),
            bytes,
        };
        assert!(matches!(
            forged.open(&AddressPolicy::default()),
            Err(RecordError::BadSignature { .. })
        ));
    }

    #[test]
    fn addresses_outside_the_policy_are_refused_by_name() {
        let key = NodeKey::from_seed([1; 32]);
        let policy = AddressPolicy {
            allowed: vec!["10.0.0.0/8".parse().unwrap(), "fd00::/8".parse().unwrap()],
        };
        for ok in [
            "10.1.2.3:1",
            "[fd00::1]:5",
            "/ip4/10.9.9.9/udp/1/quic-v1",
            "https://relay.example/",
        ] {
            record(&key, 1, &[ok]).sign(&key).open(&policy).unwrap();
        }
        for bad in ["192.168.1.1:1", "0.0.0.0:1", "/ip4/8.8.8.8/tcp/1", "[::]:4"] {
            let e = record(&key, 1, &[bad])
                .sign(&key)
                .open(&policy)
                .unwrap_err();
            assert!(e.to_string().contains(bad), "{e}");
        }
        let e = record(&key, 1, &["224.0.0.1:5"])
            .sign(&key)
            .open(&AddressPolicy::default())
            .unwrap_err();
        assert!(e.to_string().contains("multicast"), "{e}");
        assert!("10.0.0.0/33".parse::<IpNet>().is_err());
        assert!("10.0.0.0".parse::<IpNet>().is_err());
    }

    #[test]
    fn a_record_with_too_many_addresses_is_refused() {
        let key = NodeKey::from_seed([1; 32]);
        let addrs: Vec<String> = (0..17).map(|i| format!("10.0.0.{i}:1")).collect();
        let addrs: Vec<&str> = addrs.iter().map(|s| s.as_str()).collect();
        let e = record(&key, 1, &addrs)
            .sign(&key)
            .open(&AddressPolicy::default())
            .unwrap_err();
        assert!(e.to_string().contains("17 addresses"), "{e}");
    }

    #[test]
    fn claims_verify_only_with_their_reporter() {
        let a = NodeKey::from_seed([1; 32]);
        let b = NodeKey::from_seed([2; 32]);
        let c = Claim::new(&a, b.peer_id(), 3, 1000);
        c.verify().unwrap();
        let mut moved = c.clone();
        moved.since_ms = 2000;
        assert!(moved.verify().is_err());
        let mut other = c;
        other.by = b.peer_id();
        assert!(other.verify().is_err());
    }
}
