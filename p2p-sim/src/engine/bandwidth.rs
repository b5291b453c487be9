//! The bandwidth model: each node's uplink and downlink serve the flows
//! waiting on them round robin, one segment (at most `mss` bytes) at a
//! time, so concurrent flows share a node's upload and download fairly.
//! A link is busy for `size / rate` of virtual time per segment; relayed
//! flows wait in their relay's rings too, so the relay's own capacity is
//! shared by everything it carries.
//!
//! Completions come back as `UplinkDone` / `DownlinkDone` events (handled
//! in [`super::events`]), which start the next segment.

use super::state::{Event, FlowId, NodeIdx, SegKind, Segment, State};

/// Serialization time in nanoseconds of `bytes` at `rate` bytes per
/// second; zero for an unlimited link.
fn tx_ns(bytes: usize, rate: Option<u64>) -> u64 {
    match rate {
        Some(r) if r > 0 => (bytes as u128 * 1_000_000_000 / u128::from(r)) as u64,
        _ => 0,
    }
}

impl State {
    /// Makes sure `flow` is in its sender's uplink ring and the uplink runs.
    pub(super) fn enqueue(&mut self, flow: FlowId) {
        let Some(f) = self.flows.get_mut(&flow) else {
            return;
        };
        if f.in_up_ring || !f.has_work() {
            return;
        }
        f.in_up_ring = true;
        let src = f.src;
        self.nodes[src as usize].up_ring.push_back((flow, false));
        self.uplink_next(src);
    }

    /// Puts a relayed flow with segments waiting at its relay into the
    /// relay's uplink ring.
    pub(super) fn enqueue_transit(&mut self, flow: FlowId) {
        let Some(f) = self.flows.get_mut(&flow) else {
            return;
        };
        let Some(relay) = f.via else { return };
        if f.in_relay_up_ring || f.transit.is_empty() {
            return;
        }
        f.in_relay_up_ring = true;
        self.nodes[relay as usize].up_ring.push_back((flow, true));
        self.uplink_next(relay);
    }

    pub(super) fn uplink_next(&mut self, n: NodeIdx) {
        let node = &self.nodes[n as usize];
        if node.up_busy || !node.up {
            return;
        }
        let mss = self.cfg.mss;
        while let Some((fid, transit)) = self.nodes[n as usize].up_ring.pop_front() {
            let Some(f) = self.flows.get_mut(&fid) else {
                continue;
            };
            if transit {
                // Forwarding as the flow's relay.
                let Some(seg) = f.transit.pop_front() else {
                    f.in_relay_up_ring = false;
                    continue;
                };
                if f.transit.is_empty() {
                    f.in_relay_up_ring = false;
                } else {
                    self.nodes[n as usize].up_ring.push_back((fid, true));
                }
                let node = &mut self.nodes[n as usize];
                node.up_busy = true;
                let (inc, at) = (node.inc, self.now + tx_ns(seg.len(), node.cfg.upload));
                self.schedule(at, Event::UplinkDone { node: n, inc, seg });
                return;
            }
            if !f.has_work() {
                f.in_up_ring = false;
                continue;
            }
            let seg = if let Some(s) = f.retx.pop_front() {
                s
            } else {
                let kind = if f.needs_open {
                    f.needs_open = false;
                    SegKind::Open
                } else if !f.send_buf.is_empty() {
                    let take = f.send_buf.len().min(mss);
                    SegKind::Data(f.send_buf.split_to(take).freeze())
                } else {
                    f.fin_sent = true;
                    SegKind::Fin
                };
                let seq = f.next_seq;
                f.next_seq += 1;
                Segment {
                    flow: fid,
                    seq,
                    kind,
                    hop: 0,
                }
            };
            if f.has_work() {
                self.nodes[n as usize].up_ring.push_back((fid, false));
            } else {
                f.in_up_ring = false;
            }
            let node = &mut self.nodes[n as usize];
            node.up_busy = true;
            let (inc, at) = (node.inc, self.now + tx_ns(seg.len(), node.cfg.upload));
            self.schedule(at, Event::UplinkDone { node: n, inc, seg });
            return;
        }
    }

    pub(super) fn downlink_next(&mut self, n: NodeIdx) {
        if self.nodes[n as usize].down_busy {
            return;
        }
        while let Some((fid, transit)) = self.nodes[n as usize].down_ring.pop_front() {
            let Some(f) = self.flows.get_mut(&fid) else {
                continue;
            };
            let (queue, in_ring) = if transit {
                (&mut f.relay_down, &mut f.in_relay_down_ring)
            } else {
                (&mut f.down_queue, &mut f.in_down_ring)
            };
            let Some(seg) = queue.pop_front() else {
                *in_ring = false;
                continue;
            };
            if queue.is_empty() {
                *in_ring = false;
            } else {
                self.nodes[n as usize].down_ring.push_back((fid, transit));
            }
            let node = &mut self.nodes[n as usize];
            node.down_busy = true;
            let (inc, at) = (node.inc, self.now + tx_ns(seg.len(), node.cfg.download));
            self.schedule(at, Event::DownlinkDone { node: n, inc, seg });
            return;
        }
    }
}

impl State {
    /// Queues `seg` on a direction of site `site`'s WAN link and starts
    /// the link if idle.
    pub(super) fn wan_enqueue(&mut self, site: usize, up: bool, seg: Segment) {
        let fid = seg.flow;
        let s = &mut self.sites[site];
        let dir = if up { &mut s.up } else { &mut s.down };
        if seg.len() <= super::state::SMALL_SEGMENT {
            dir.small.push_back(seg);
            self.wan_next(site, up);
            return;
        }
        let q = dir.queues.entry(fid).or_default();
        if q.is_empty() {
            dir.ring.push_back(fid);
        }
        q.push_back(seg);
        self.wan_next(site, up);
    }

    /// Sends the next segment on a direction of a site's WAN link: a
    /// small one if any waits, else the streams waiting take turns.
    pub(super) fn wan_next(&mut self, site: usize, up: bool) {
        let s = &mut self.sites[site];
        let dir = if up { &mut s.up } else { &mut s.down };
        if dir.busy {
            return;
        }
        let mut next = dir.small.pop_front();
        while next.is_none() {
            let Some(fid) = dir.ring.pop_front() else {
                return;
            };
            let Some(q) = dir.queues.get_mut(&fid) else {
                continue;
            };
            next = q.pop_front();
            if q.is_empty() {
                dir.queues.remove(&fid);
            } else {
                dir.ring.push_back(fid);
            }
        }
        let Some(seg) = next else { return };
        dir.busy = true;
        let len = seg.len() as u64;
        let rate = if up {
            s.traffic.sent += len;
            s.link.upload
        } else {
            s.traffic.received += len;
            s.link.download
        };
        let at = self.now + tx_ns(seg.len(), rate);
        self.schedule(at, Event::WanDone { site, up, seg });
    }
}
