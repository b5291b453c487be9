//! Crossing a link: the latency and jitter of one traversal, loss draws,
//! retransmission timeouts, and whether a partition cuts the path. All
//! randomness comes from the state's seeded RNG, drawn in event order.

use rand::RngExt;

use super::state::{FlowId, NodeIdx, State};
use crate::link::LinkSpec;

impl State {
    pub(super) fn link(&self, a: NodeIdx, b: NodeIdx) -> LinkSpec {
        self.links
            .get(&(a, b))
            .copied()
            .unwrap_or(self.default_link)
    }

    pub(super) fn delay(&mut self, a: NodeIdx, b: NodeIdx) -> u64 {
        let l = self.link(a, b);
        let jitter = l.jitter.as_nanos() as u64;
        let j = if jitter > 0 {
            self.rng.random_range(0..=jitter)
        } else {
            0
        };
        l.latency.as_nanos() as u64 + j + self.site_latency(a, b)
    }

    /// The extra one-way delay of leaving `a`'s site and entering `b`'s.
    fn site_latency(&self, a: NodeIdx, b: NodeIdx) -> u64 {
        let (sa, sb) = (self.nodes[a as usize].site, self.nodes[b as usize].site);
        if sa == sb {
            return 0;
        }
        [sa, sb]
            .iter()
            .flatten()
            .map(|&s| self.sites[s].link.latency.as_nanos() as u64)
            .sum()
    }

    /// One-way delay from `a` to `b` along flow `fid`'s path: through its
    /// relay when it has one.
    pub(super) fn path_delay(&mut self, a: NodeIdx, b: NodeIdx, fid: FlowId) -> u64 {
        let via = self.flows.get(&fid).and_then(|f| f.via);
        self.delay_via(a, b, via)
    }

    /// One-way delay from `a` to `b`, through relay `via` when given.
    pub(super) fn delay_via(&mut self, a: NodeIdx, b: NodeIdx, via: Option<NodeIdx>) -> u64 {
        match via {
            Some(r) => self.delay(a, r) + self.delay(r, b),
            None => self.delay(a, b),
        }
    }

    pub(super) fn lost(&mut self, a: NodeIdx, b: NodeIdx) -> bool {
        let loss = self.link(a, b).loss;
        loss > 0.0 && self.rng.random_bool(loss)
    }

    pub(super) fn rto(&self, a: NodeIdx, b: NodeIdx) -> u64 {
        let l = self.link(a, b);
        let rtt = 2 * (l.latency + l.jitter);
        (rtt * 3).max(self.cfg.rto_min).as_nanos() as u64
    }

    pub(crate) fn is_blocked(&self, a: NodeIdx, b: NodeIdx) -> bool {
        self.blocked.contains_key(&(a, b))
    }

    pub(crate) fn set_link(&mut self, a: NodeIdx, b: NodeIdx, spec: LinkSpec) {
        self.links.insert((a, b), spec);
    }
}
