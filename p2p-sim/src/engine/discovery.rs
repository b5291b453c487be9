//! Discovery: nodes on one LAN announce themselves to each other's
//! subscriptions, one link latency after a subscription, a start or a heal.

use p2p_core::{Error, PeerAddr};
use tokio::sync::mpsc;

use super::state::{Event, NodeIdx, State};
use crate::trace::TraceKind;

/// Capacity of one discovery subscription.
const DISCOVERY_QUEUE: usize = 256;

impl State {
    pub(crate) fn subscribe(
        &mut self,
        n: NodeIdx,
        inc: u64,
    ) -> Result<mpsc::Receiver<PeerAddr>, Error> {
        self.node_live(n, inc)?;
        let (tx, rx) = mpsc::channel(DISCOVERY_QUEUE);
        let lan = self.nodes[n as usize].cfg.lan;
        self.nodes[n as usize].subs.push(tx);
        for j in 0..self.nodes.len() as NodeIdx {
            let other = &self.nodes[j as usize];
            if j != n && other.up && other.cfg.lan == lan {
                let g = other.inc;
                let at = self.now + self.delay(j, n);
                self.schedule(
                    at,
                    Event::Announce {
                        from: j,
                        from_inc: g,
                        to: n,
                    },
                );
            }
        }
        Ok(rx)
    }

    pub(super) fn announce(&mut self, from: NodeIdx, from_inc: u64, to: NodeIdx) {
        let f = &self.nodes[from as usize];
        if !f.up || f.inc != from_inc || !self.nodes[to as usize].up || self.is_blocked(from, to) {
            return;
        }
        let addr = PeerAddr {
            id: f.id,
            addrs: vec![f.addr.clone()],
        };
        let t = &mut self.nodes[to as usize];
        t.subs.retain(|s| !s.is_closed());
        for s in &t.subs {
            // Discovery is best effort: a full subscription misses this one.
            let _ = s.try_send(addr.clone());
        }
        self.record(TraceKind::Discover, from, to, 0, 0, 0);
    }
}
