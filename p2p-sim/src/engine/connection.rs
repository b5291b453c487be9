//! Connections: their two ends, the path they take, closing an end (and
//! telling the peer, or holding the news back behind a partition), freeing
//! them, and opening and accepting streams on them.

use std::collections::{BTreeMap, VecDeque};
use std::task::{Context, Poll};

use bytes::BytesMut;
use p2p_core::Error;

use super::state::{ConnId, End, Event, Flow, FlowId, Handle, NodeIdx, Parked, State};
use crate::trace::TraceKind;

impl State {
    fn end_of(&self, c: ConnId, side: usize) -> Result<&End, Error> {
        let conn = self
            .conns
            .get(&c)
            .ok_or_else(|| Error::closed("connection closed"))?;
        Ok(&conn.ends[side])
    }

    fn check_end_open(&self, c: ConnId, side: usize) -> Result<(), Error> {
        let end = self.end_of(c, side)?;
        if let Some(r) = &end.closed {
            return Err(Error::closed(r.clone()));
        }
        let node = &self.nodes[end.node as usize];
        if !node.up || node.inc != end.inc {
            return Err(Error::closed(format!(
                "simulated node {} is down ({})",
                node.name, node.down_reason
            )));
        }
        Ok(())
    }

    /// The path of connection `c`: direct, or through its relay.
    pub(crate) fn path(&self, c: ConnId, side: usize) -> p2p_core::PathInfo {
        let Some(conn) = self.conns.get(&c) else {
            return p2p_core::PathInfo::unknown();
        };
        let peer = conn.ends[1 - side].node;
        let (kind, remote) = match conn.via {
            Some(r) => (
                p2p_core::PathKind::Relayed,
                self.nodes[r as usize].name.clone(),
            ),
            None => (
                p2p_core::PathKind::Direct,
                self.nodes[peer as usize].name.clone(),
            ),
        };
        let me = conn.ends[side].node;
        let one_way = |a: NodeIdx, b: NodeIdx| self.link(a, b).latency;
        let rtt = match conn.via {
            Some(r) => one_way(me, r) + one_way(r, peer) + one_way(peer, r) + one_way(r, me),
            None => one_way(me, peer) + one_way(peer, me),
        };
        p2p_core::PathInfo {
            kind,
            remote: Some(remote),
            rtt: Some(rtt),
        }
    }

    pub(crate) fn is_connected(&self, c: ConnId, side: usize) -> bool {
        self.check_end_open(c, side).is_ok()
    }

    /// Closes one end now; with `notify`, the peer learns `reason` one link
    /// latency later (or after the idle timeout when a partition eats it).
    pub(crate) fn close_end(&mut self, c: ConnId, side: usize, reason: &str, notify: bool) {
        let Some(conn) = self.conns.get_mut(&c) else {
            return;
        };
        if conn.ends[side].closed.is_some() {
            return;
        }
        conn.ends[side].closed = Some(reason.to_string());
        conn.ends[side].accept_q.clear();
        for w in conn.ends[side].accept_wakers.drain(..) {
            w.wake();
        }
        let (me, peer) = (conn.ends[side].node, conn.ends[1 - side].node);
        let flows = conn.flows.clone();
        for f in flows {
            let Some(flow) = self.flows.get_mut(&f) else {
                continue;
            };
            if flow.src_side == side {
                flow.writer_error.get_or_insert_with(|| reason.to_string());
                flow.send_buf = BytesMut::new();
                flow.retx.clear();
                if let Some(w) = flow.writer_waker.take() {
                    w.wake();
                }
            } else {
                flow.reader_error.get_or_insert_with(|| reason.to_string());
                flow.recv_buf.clear();
                flow.reorder.clear();
                if let Some(w) = flow.reader_waker.take() {
                    w.wake();
                }
            }
        }
        self.record(TraceKind::Close, me, peer, c, side as u64, 0);
        if notify {
            self.send_close(c, side, reason.to_string());
        }
        self.maybe_gc_conn(c);
    }

    pub(super) fn send_close(&mut self, c: ConnId, side: usize, reason: String) {
        let Some(conn) = self.conns.get(&c) else {
            return;
        };
        if conn.ends[1 - side].closed.is_some() {
            return;
        }
        let (me, peer) = (conn.ends[side].node, conn.ends[1 - side].node);
        if self.is_blocked(me, peer) {
            // A closed QUIC endpoint sends nothing more of the connection:
            // what it had written and not got through is dropped, not
            // delivered on heal (a request given up on must not be carried
            // out later, unknown to its sender).
            let flows = &self.flows;
            if let Some(held) = self.parked.get_mut(&(me, peer)) {
                held.retain(|p| match p {
                    Parked::Segment(seg) => flows
                        .get(&seg.flow)
                        .is_none_or(|f| f.conn != c || f.src_side != side),
                    Parked::Close { .. } => true,
                });
            }
            // Delivered on heal with its reason; if the cut lasts, the idle
            // check ends the far side first.
            self.parked
                .entry((me, peer))
                .or_default()
                .push(Parked::Close {
                    conn: c,
                    side: 1 - side,
                    reason,
                });
            return;
        }
        let at = self.now + self.delay(me, peer);
        self.schedule(
            at,
            Event::CloseArrive {
                conn: c,
                side: 1 - side,
                reason,
            },
        );
    }

    pub(crate) fn handle_dropped(&mut self, c: ConnId, side: usize) {
        if let Some(conn) = self.conns.get_mut(&c) {
            conn.ends[side].handle = false;
        }
        self.close_end(c, side, "connection dropped by the peer", true);
        self.maybe_gc_conn(c);
    }

    pub(super) fn maybe_gc_conn(&mut self, c: ConnId) {
        let Some(conn) = self.conns.get(&c) else {
            return;
        };
        let done = conn.ends.iter().all(|e| e.closed.is_some() && !e.handle);
        if !done {
            return;
        }
        // Stream handles may outlive the connection; they report "closed".
        if let Some(conn) = self.conns.remove(&c) {
            for f in conn.flows {
                self.flows.remove(&f);
            }
            for e in &conn.ends {
                self.nodes[e.node as usize].conns.remove(&c);
            }
            if let Some(r) = conn.via {
                self.nodes[r as usize].relaying.remove(&c);
            }
        }
    }

    fn new_flow(&mut self, c: ConnId, src_side: usize, src: NodeIdx, dst: NodeIdx) -> FlowId {
        let id = self.id();
        let via = self.conns.get(&c).and_then(|conn| conn.via);
        self.flows.insert(
            id,
            Flow {
                conn: c,
                src_side,
                src,
                dst,
                reverse: 0,
                needs_open: false,
                send_buf: BytesMut::new(),
                credit: self.cfg.window,
                fin_queued: false,
                fin_sent: false,
                next_seq: 0,
                retx: VecDeque::new(),
                in_up_ring: false,
                writer: Handle::NotYet,
                writer_waker: None,
                writer_error: None,
                down_queue: VecDeque::new(),
                in_down_ring: false,
                via,
                relay_down: VecDeque::new(),
                in_relay_down_ring: false,
                transit: VecDeque::new(),
                in_relay_up_ring: false,
                expected: 0,
                reorder: BTreeMap::new(),
                recv_buf: VecDeque::new(),
                fin_received: false,
                consumed_unacked: 0,
                reader: Handle::NotYet,
                reader_waker: None,
                reader_error: None,
            },
        );
        id
    }

    /// Opens a stream from `side`: returns (send flow, receive flow).
    pub(crate) fn open_stream(
        &mut self,
        c: ConnId,
        side: usize,
    ) -> Result<(FlowId, FlowId), Error> {
        self.check_end_open(c, side)?;
        let (me, peer) = {
            let conn = &self.conns[&c];
            (conn.ends[side].node, conn.ends[1 - side].node)
        };
        let out = self.new_flow(c, side, me, peer);
        let inn = self.new_flow(c, 1 - side, peer, me);
        if let Some(f) = self.flows.get_mut(&out) {
            f.reverse = inn;
            f.needs_open = true;
            f.writer = Handle::Alive;
        }
        if let Some(f) = self.flows.get_mut(&inn) {
            f.reverse = out;
            f.reader = Handle::Alive;
        }
        if let Some(conn) = self.conns.get_mut(&c) {
            conn.flows.push(out);
            conn.flows.push(inn);
        }
        self.enqueue(out);
        Ok((out, inn))
    }

    /// Polls for a stream opened by the peer: returns (send flow, receive flow).
    pub(crate) fn poll_accept(
        &mut self,
        c: ConnId,
        side: usize,
        cx: &mut Context<'_>,
    ) -> Poll<Result<(FlowId, FlowId), Error>> {
        if let Err(e) = self.check_end_open(c, side) {
            return Poll::Ready(Err(e));
        }
        let Some(conn) = self.conns.get_mut(&c) else {
            return Poll::Ready(Err(Error::closed("connection closed")));
        };
        let end = &mut conn.ends[side];
        match end.accept_q.pop_front() {
            Some(inn) => {
                let out = match self.flows.get_mut(&inn) {
                    Some(f) => {
                        f.reader = Handle::Alive;
                        f.reverse
                    }
                    None => return Poll::Ready(Err(Error::closed("stream reset by peer"))),
                };
                if let Some(f) = self.flows.get_mut(&out) {
                    f.writer = Handle::Alive;
                }
                Poll::Ready(Ok((out, inn)))
            }
            None => {
                if !end.accept_wakers.iter().any(|w| w.will_wake(cx.waker())) {
                    end.accept_wakers.push(cx.waker().clone());
                }
                Poll::Pending
            }
        }
    }
}
