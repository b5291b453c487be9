//! The fleet through membership: one node that answers lists every node
//! it knows, and the controller reaches them all from there.

use p2p_core::{Error, PeerAddr, PeerId, Result};

use super::Controller;
use crate::membership::{AddressPolicy, Member, RecordError, open_entries};
use crate::proto::{Reply, Request};

/// What [`Controller::members`] found.
#[derive(Debug, Clone)]
pub struct Members {
    /// The node that answered.
    pub from: PeerId,
    /// Every member it knows, itself included, sorted by name then id.
    pub members: Vec<Member>,
    /// Entries it sent that did not verify (forged or damaged records),
    /// left out of `members`.
    pub refused: Vec<RecordError>,
    /// Nodes asked before it that did not answer, and why.
    pub unanswered: Vec<(PeerAddr, String)>,
}

impl Members {
    /// The members taken to be up.
    pub fn up(&self) -> impl Iterator<Item = &Member> {
        self.members.iter().filter(|m| m.is_up())
    }
}

impl Controller {
    /// Asks the known nodes, in turn, for their membership table, and
    /// takes the first answer: every member's record is checked (a node
    /// cannot forge another's), and the members up are added to the nodes
    /// this controller reaches ([`known`](Self::known)). A node that does
    /// not answer, or does not take part in membership, is noted in
    /// [`Members::unanswered`] and the next is asked.
    ///
    /// # Errors
    /// [`Error::Unreachable`] naming every node asked and why, when none
    /// answered (or none was known).
    pub async fn members(&self) -> Result<Members> {
        let mut unanswered = Vec::new();
        // The bootstrap nodes first, in the order given, then the others.
        let mut order: Vec<PeerAddr> = Vec::new();
        let known = self.known();
        for b in &self.cfg.bootstrap {
            if let Some(k) = known.iter().find(|k| k.id == b.id) {
                order.push(k.clone());
            }
        }
        for k in known {
            if !order.iter().any(|o| o.id == k.id) {
                order.push(k);
            }
        }
        for addr in order {
            let entries = match self.request(&addr, Request::Members).await {
                Ok(Reply::Members(e)) => e,
                Ok(other) => {
                    unanswered.push((addr, format!("unexpected answer {other:?}")));
                    continue;
                }
                Err(e) => {
                    unanswered.push((addr, e.to_string()));
                    continue;
                }
            };
            let (mut members, refused) = open_entries(entries, &AddressPolicy::default());
            members
                .sort_by(|a, b| (&a.record.name, a.record.id).cmp(&(&b.record.name, b.record.id)));
            let me = self.provider.local_id();
            for m in members.iter().filter(|m| m.is_up() && m.record.id != me) {
                self.add_member(m.peer_addr());
            }
            return Ok(Members {
                from: addr.id,
                members,
                refused,
                unanswered,
            });
        }
        if unanswered.is_empty() {
            return Err(Error::unreachable(
                "no node to ask for the fleet's members: give a bootstrap address",
            ));
        }
        let why: Vec<String> = unanswered
            .iter()
            .map(|(a, e)| format!("{}: {e}", a.id.short()))
            .collect();
        Err(Error::unreachable(format!(
            "no node answered for the fleet's members ({})",
            why.join("; ")
        )))
    }

    /// Adds a member's addresses to those of a known node (a bootstrap
    /// address stays first: it is the one known to work from here).
    fn add_member(&self, addr: PeerAddr) {
        let mut book = p2p_core::sync::lock(&self.book);
        let entry = book.entry(addr.id).or_insert_with(|| PeerAddr {
            id: addr.id,
            addrs: Vec::new(),
        });
        for a in addr.addrs {
            if !entry.addrs.contains(&a) {
                entry.addrs.push(a);
            }
        }
    }
}
