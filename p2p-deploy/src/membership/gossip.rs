//! One gossip exchange between two nodes: push-pull anti-entropy over
//! digest buckets.
//!
//! The client opens a [`Request::Gossip`](crate::proto::Request::Gossip)
//! stream carrying its table's root hash. Then:
//!
//! 1. server: `InSync` when the roots match (the steady state: a few dozen
//!    bytes each way), else its 64 bucket hashes;
//! 2. client: the buckets that differ and its digests (id, sequence
//!    number, unreachable or not) of the entries in them;
//! 3. server: its entries that are newer or that the client lacks, and the
//!    ids it wants;
//! 4. client: the entries wanted.
//!
//! At most [`MAX_ENTRIES_PER_MESSAGE`] entries go each way per exchange;
//! what is left goes in the next one (a table that differed gossips again
//! soon).

use p2p_core::framing::Framed;
use p2p_core::{Error, PeerId, Result};
use serde::{Deserialize, Serialize};

use super::table::MemberEntry;
pub use super::table::{BUCKETS, DigestItem};

/// The most entries one message carries.
pub const MAX_ENTRIES_PER_MESSAGE: usize = 512;
/// The most digest items one message carries.
pub const MAX_DIGESTS_PER_MESSAGE: usize = 50_000;

/// The messages after the request.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[non_exhaustive]
pub enum GossipMsg {
    /// Same root: nothing to exchange.
    InSync,
    /// The server's bucket hashes.
    Buckets(Vec<u64>),
    /// The buckets that differ, and the client's digests of them.
    Digests {
        /// Bucket numbers, below [`BUCKETS`].
        buckets: Vec<u8>,
        /// The client's digest of every entry in them.
        items: Vec<DigestItem>,
    },
    /// Entries the other side lacks, and the ids this side wants.
    Entries {
        /// Entries, at most [`MAX_ENTRIES_PER_MESSAGE`].
        entries: Vec<MemberEntry>,
        /// Ids whose entries this side wants.
        want: Vec<PeerId>,
    },
    /// Refused (over the rate, membership off); the text says why.
    Refused(String),
}

impl GossipMsg {
    /// Checks the bounds a well-behaved peer keeps.
    pub fn check(&self) -> Result<()> {
        let bad = |what: String| Err(Error::protocol(format!("gossip message: {what}")));
        match self {
            GossipMsg::Buckets(b) if b.len() != BUCKETS => {
                bad(format!("{} bucket hashes, not {BUCKETS}", b.len()))
            }
            GossipMsg::Digests { buckets, items } => {
                if buckets.len() > BUCKETS || buckets.iter().any(|&b| b as usize >= BUCKETS) {
                    return bad("bucket numbers out of range".into());
                }
                if items.len() > MAX_DIGESTS_PER_MESSAGE {
                    return bad(format!("{} digests", items.len()));
                }
                Ok(())
            }
            GossipMsg::Entries { entries, want } => {
                if entries.len() > MAX_ENTRIES_PER_MESSAGE {
                    return bad(format!(
                        "{} entries, more than {MAX_ENTRIES_PER_MESSAGE}",
                        entries.len()
                    ));
                }
                if want.len() > MAX_DIGESTS_PER_MESSAGE {
                    return bad(format!("{} wanted ids", want.len()));
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }
}

/// Receives one message and checks its bounds.
pub(crate) async fn recv(framed: &mut Framed) -> Result<GossipMsg> {
    let m: GossipMsg = framed.recv().await?;
    m.check()?;
    Ok(m)
}
