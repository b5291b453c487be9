//! A segment's trip after its sender's uplink: across the link (loss
//! schedules a retransmission, a partition parks it until heal), into the
//! receiver's (or relay's) downlink, through the reorder buffer, and into
//! the reader's buffer or the peer's accept queue.

use super::state::{Event, Handle, NodeIdx, Parked, SegKind, Segment, State};
use crate::trace::TraceKind;

/// Streams waiting to be accepted on one side of a connection; past this,
/// new streams are reset.
const MAX_ACCEPT_QUEUE: usize = 1024;

impl State {
    /// A segment left the sender's uplink: cross the link.
    pub(super) fn route(&mut self, seg: Segment) {
        let Some(f) = self.flows.get(&seg.flow) else {
            return;
        };
        if f.writer_error.is_some() {
            return;
        }
        let (src, dst, conn) = match (f.via, seg.hop) {
            (Some(relay), 0) => (f.src, relay, f.conn),
            (Some(relay), _) => (relay, f.dst, f.conn),
            (None, _) => (f.src, f.dst, f.conn),
        };
        if self.is_blocked(src, dst) {
            self.stats.segments_parked += 1;
            self.record(
                TraceKind::Partitioned,
                src,
                dst,
                conn,
                seg.seq,
                seg.len() as u64,
            );
            self.parked
                .entry((src, dst))
                .or_default()
                .push(Parked::Segment(seg));
            return;
        }
        if self.lost(src, dst) {
            self.stats.segments_lost += 1;
            self.record(TraceKind::Loss, src, dst, conn, seg.seq, seg.len() as u64);
            let at = self.now + self.rto(src, dst);
            self.schedule(at, Event::Retransmit { seg });
            return;
        }
        // Out of the sender's site: through its WAN uplink first.
        if let (Some(s), _) = self.crossing(src, dst)
            && self.sites[s].link.upload.is_some()
        {
            self.wan_enqueue(s, true, seg);
            return;
        }
        self.cross(src, dst, seg);
    }

    /// The sites a segment from `src` to `dst` leaves and enters, when
    /// they differ.
    fn crossing(&self, src: NodeIdx, dst: NodeIdx) -> (Option<usize>, Option<usize>) {
        let (a, b) = (self.nodes[src as usize].site, self.nodes[dst as usize].site);
        if a == b { (None, None) } else { (a, b) }
    }

    /// The link's delay, then into the receiving site's WAN downlink, or
    /// straight to the receiver.
    fn cross(&mut self, src: NodeIdx, dst: NodeIdx, seg: Segment) {
        let at = self.now + self.delay(src, dst);
        match self.crossing(src, dst) {
            (_, Some(site)) if self.sites[site].link.download.is_some() => {
                self.schedule(at, Event::WanArrive { site, seg });
            }
            _ => self.schedule(at, Event::Arrive { seg }),
        }
    }

    /// The two ends of the hop `seg` is on.
    fn hop_ends(&self, seg: &Segment) -> Option<(NodeIdx, NodeIdx)> {
        let f = self.flows.get(&seg.flow)?;
        Some(match (f.via, seg.hop) {
            (Some(relay), 0) => (f.src, relay),
            (Some(relay), _) => (relay, f.dst),
            (None, _) => (f.src, f.dst),
        })
    }

    /// A segment left a site's WAN link.
    pub(super) fn wan_done(&mut self, site: usize, up: bool, seg: Segment) {
        if let Some(s) = self.sites.get_mut(site) {
            if up {
                s.up.busy = false;
            } else {
                s.down.busy = false;
            }
        }
        if up {
            if let Some((src, dst)) = self.hop_ends(&seg) {
                self.cross(src, dst, seg);
            }
        } else {
            self.arrive(seg);
        }
        self.wan_next(site, up);
    }

    pub(super) fn arrive(&mut self, seg: Segment) {
        let fid = seg.flow;
        let Some(f) = self.flows.get_mut(&fid) else {
            return;
        };
        if let (Some(relay), 0) = (f.via, seg.hop) {
            // At the relay's downlink.
            if !self.nodes[relay as usize].up {
                return;
            }
            f.relay_down.push_back(seg);
            if !f.in_relay_down_ring {
                f.in_relay_down_ring = true;
                self.nodes[relay as usize].down_ring.push_back((fid, true));
            }
            self.downlink_next(relay);
            return;
        }
        if f.reader_error.is_some() || !self.nodes[f.dst as usize].up {
            return;
        }
        let dst = f.dst;
        f.down_queue.push_back(seg);
        if !f.in_down_ring {
            f.in_down_ring = true;
            self.nodes[dst as usize].down_ring.push_back((fid, false));
        }
        self.downlink_next(dst);
    }

    pub(super) fn deliver(&mut self, seg: Segment) {
        let fid = seg.flow;
        let Some(f) = self.flows.get_mut(&fid) else {
            return;
        };
        if f.reader_error.is_some() {
            return;
        }
        let (src, dst, conn) = (f.src, f.dst, f.conn);
        if seg.seq < f.expected {
            return; // duplicate
        }
        if seg.seq > f.expected {
            f.reorder.insert(seg.seq, seg);
            return;
        }
        let mut next = Some(seg);
        while let Some(s) = next {
            let (seq, len) = (s.seq, s.len() as u64);
            self.stats.segments_delivered += 1;
            self.stats.bytes_delivered += len;
            self.record(TraceKind::Deliver, src, dst, conn, seq, len);
            self.apply(s);
            let Some(f) = self.flows.get_mut(&fid) else {
                return;
            };
            f.expected += 1;
            let e = f.expected;
            next = f.reorder.remove(&e);
        }
    }

    fn apply(&mut self, seg: Segment) {
        let fid = seg.flow;
        let Some(f) = self.flows.get_mut(&fid) else {
            return;
        };
        match seg.kind {
            SegKind::Open => {
                let (c, side) = (f.conn, 1 - f.src_side);
                let Some(conn) = self.conns.get_mut(&c) else {
                    return;
                };
                let end = &mut conn.ends[side];
                if end.closed.is_some() {
                    return;
                }
                if end.accept_q.len() >= MAX_ACCEPT_QUEUE {
                    let why = "stream refused: the peer's accept queue is full";
                    f.writer_error = Some(why.into());
                    f.reader = Handle::Gone;
                    if let Some(w) = f.writer_waker.take() {
                        w.wake();
                    }
                    let reverse = f.reverse;
                    if let Some(r) = self.flows.get_mut(&reverse) {
                        r.reader_error = Some(why.into());
                        r.writer = Handle::Gone;
                        if let Some(w) = r.reader_waker.take() {
                            w.wake();
                        }
                    }
                    self.maybe_gc_flow(fid);
                    self.maybe_gc_flow(reverse);
                    return;
                }
                end.accept_q.push_back(fid);
                for w in end.accept_wakers.drain(..) {
                    w.wake();
                }
            }
            SegKind::Data(b) => {
                if f.reader == Handle::Gone {
                    // Nobody reads: hand the credit straight back.
                    let (flow, bytes, src, dst) = (fid, b.len(), f.src, f.dst);
                    let at = self.now + self.path_delay(dst, src, fid);
                    self.schedule(at, Event::Credit { flow, bytes });
                } else {
                    f.recv_buf.push_back(b);
                    if let Some(w) = f.reader_waker.take() {
                        w.wake();
                    }
                }
            }
            SegKind::Fin => {
                f.fin_received = true;
                if let Some(w) = f.reader_waker.take() {
                    w.wake();
                }
                self.maybe_gc_flow(fid);
            }
        }
    }
}
