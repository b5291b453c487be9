//! [`PeerAddr`]: a peer id plus the addresses it can be dialed at.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::id::PeerId;

/// A peer and where to reach it.
///
/// Addresses are strings in the backend's own notation: a socket address
/// for iroh (`127.0.0.1:4433`, `[::1]:4433`), a multiaddr for libp2p
/// (`/ip4/127.0.0.1/tcp/4001`), a node name in the simulator (`n12`).
///
/// The text form is `<peer id>` alone, or `<peer id>@<addr>[,<addr>...]`,
/// which a user can paste into a config file or a command line:
///
/// ```
/// # use p2p_core::{NodeKey, PeerAddr};
/// let id = NodeKey::from_seed([7; 32]).peer_id();
/// let text = format!("{id}@127.0.0.1:4433,[::1]:4433");
/// let addr: PeerAddr = text.parse()?;
/// assert_eq!(addr.addrs, ["127.0.0.1:4433", "[::1]:4433"]);
/// assert_eq!(addr.to_string(), text);
/// # Ok::<(), p2p_core::Error>(())
/// ```
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PeerAddr {
    /// The peer's identity; a connection to this address is only accepted
    /// if the remote proves this identity.
    pub id: PeerId,
    /// Addresses to try, in order of preference. May be empty when the
    /// backend can find the peer by id alone (discovery).
    pub addrs: Vec<String>,
}

impl PeerAddr {
    /// A peer address with no dialable addresses: the backend must find the
    /// peer by id.
    pub fn id_only(id: PeerId) -> Self {
        PeerAddr {
            id,
            addrs: Vec::new(),
        }
    }

    /// Parses a list of peer addresses as people paste them: entries
    /// separated by commas or whitespace, where each entry is the text form
    /// of one [`PeerAddr`], which may itself hold several comma-separated
    /// addresses. A token with a peer id (`<id>` or `<id>@<addr>`) starts a
    /// new peer; any other token is one more address of the peer before it.
    /// So what a node prints as its address (`p2pd id`), joined with commas
    /// to another's, reads back as the two peers with every address:
    ///
    /// ```
    /// # use p2p_core::{NodeKey, PeerAddr};
    /// let a = NodeKey::from_seed([1; 32]).peer_id();
    /// let b = NodeKey::from_seed([2; 32]).peer_id();
    /// let text = format!("{a}@/ip4/10.0.0.1/tcp/7401,/ip4/10.0.0.1/udp/7401/quic-v1,{b}@10.0.0.2:7401");
    /// let peers = PeerAddr::parse_list(&text)?;
    /// assert_eq!(peers.len(), 2);
    /// assert_eq!(peers[0].addrs, ["/ip4/10.0.0.1/tcp/7401", "/ip4/10.0.0.1/udp/7401/quic-v1"]);
    /// assert_eq!(peers[1].addrs, ["10.0.0.2:7401"]);
    /// # Ok::<(), p2p_core::Error>(())
    /// ```
    ///
    /// An address before any peer id, or an entry whose id does not parse,
    /// is refused with the entry named.
    pub fn parse_list(text: &str) -> Result<Vec<PeerAddr>> {
        let mut out: Vec<PeerAddr> = Vec::new();
        let tokens = text
            .split(|c: char| c.is_whitespace() || c == ',')
            .filter(|t| !t.is_empty());
        for token in tokens {
            if token.contains('@') || looks_like_peer_id(token) {
                out.push(token.parse()?);
                continue;
            }
            match out.last_mut() {
                Some(peer) => {
                    check_addr(token)?;
                    peer.addrs.push(token.to_string());
                }
                None => {
                    return Err(Error::invalid(
                        "peer address",
                        format!(
                            "{token:?} comes before any peer id: expected <peer id>[@<addr>,...]"
                        ),
                    ));
                }
            }
        }
        Ok(out)
    }

    /// A peer address, checking that each address can be written in the
    /// text form (non-empty, no whitespace, no `,` or `@`).
    pub fn new(id: PeerId, addrs: impl IntoIterator<Item = impl Into<String>>) -> Result<Self> {
        let addrs: Vec<String> = addrs.into_iter().map(Into::into).collect();
        for a in &addrs {
            check_addr(a)?;
        }
        Ok(PeerAddr { id, addrs })
    }
}

/// A token that is a peer id on its own: 64 hex characters. No address
/// form the SDK's backends use (socket address, multiaddr, URL, simulated
/// node name) looks like that.
fn looks_like_peer_id(token: &str) -> bool {
    token.len() == 64 && token.bytes().all(|b| b.is_ascii_hexdigit())
}

fn check_addr(a: &str) -> Result<()> {
    if a.is_empty() {
        return Err(Error::invalid("peer address", "empty address"));
    }
    if let Some(c) = a
        .chars()
        .find(|c| c.is_whitespace() || *c == ',' || *c == '@')
    {
        return Err(Error::invalid(
            "peer address",
            format!("address {a:?} contains {c:?}, which the text form cannot carry"),
        ));
    }
    Ok(())
}

impl fmt::Display for PeerAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.id)?;
        if !self.addrs.is_empty() {
            write!(f, "@{}", self.addrs.join(","))?;
        }
        Ok(())
    }
}

impl fmt::Debug for PeerAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PeerAddr({}@{})", self.id.short(), self.addrs.join(","))
    }
}

impl FromStr for PeerAddr {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let s = s.trim();
        let (id, rest) = match s.split_once('@') {
            Some((id, rest)) => (id, Some(rest)),
            None => (s, None),
        };
        let id: PeerId = id.parse().map_err(|e| {
            Error::invalid(
                "peer address",
                format!("{s:?}: expected <peer id>[@<addr>,...]: {e}"),
            )
        })?;
        let addrs = match rest {
            None => Vec::new(),
            Some(rest) => rest.split(',').map(str::to_owned).collect(),
        };
        PeerAddr::new(id, addrs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::NodeKey;

    #[test]
    fn text_form_round_trips_with_and_without_addresses() {
        let id = NodeKey::from_seed([1; 32]).peer_id();
        for addrs in [
            vec![],
            vec!["n1".to_string()],
            vec!["/ip4/127.0.0.1/tcp/1".into(), "[::1]:9".into()],
        ] {
            let a = PeerAddr::new(id, addrs).unwrap();
            assert_eq!(a.to_string().parse::<PeerAddr>().unwrap(), a);
        }
    }

    #[test]
    fn a_list_reads_back_what_nodes_print() {
        let a = NodeKey::from_seed([1; 32]).peer_id();
        let b = NodeKey::from_seed([2; 32]).peer_id();
        let c = NodeKey::from_seed([3; 32]).peer_id();
        let pa = PeerAddr::new(a, ["/ip4/10.0.0.1/tcp/1", "/ip4/10.0.0.1/udp/2/quic-v1"]).unwrap();
        let pb = PeerAddr::new(b, ["10.0.0.2:7401", "https://relay.example.com./"]).unwrap();
        let pc = PeerAddr::id_only(c);
        for sep in [",", " ", "\n", " , "] {
            let text = [pa.to_string(), pb.to_string(), pc.to_string()].join(sep);
            let list = PeerAddr::parse_list(&text).unwrap();
            assert_eq!(list, [pa.clone(), pb.clone(), pc.clone()], "{text}");
        }
        assert!(PeerAddr::parse_list("").unwrap().is_empty());
    }

    #[test]
    fn a_bad_list_names_the_entry() {
        let a = NodeKey::from_seed([1; 32]).peer_id();
        let err = PeerAddr::parse_list("/ip4/1.2.3.4/tcp/1")
            .unwrap_err()
            .to_string();
        assert!(err.contains("before any peer id"), "{err}");
        let err = PeerAddr::parse_list(&format!("{a}@1.2.3.4:1,abc@1.2.3.4:2"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("\"abc@1.2.3.4:2\""), "{err}");
    }

    #[test]
    fn malformed_addresses_are_refused_with_a_reason() {
        let id = NodeKey::from_seed([1; 32]).peer_id();
        let err = format!("{id}@")
            .parse::<PeerAddr>()
            .unwrap_err()
            .to_string();
        assert!(err.contains("empty address"), "{err}");
        let err = "nope@1.2.3.4:5"
            .parse::<PeerAddr>()
            .unwrap_err()
            .to_string();
        assert!(err.contains("expected <peer id>"), "{err}");
        assert!(PeerAddr::new(id, ["a b"]).is_err());
    }
}
