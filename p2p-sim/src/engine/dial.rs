//! Listening and connecting: resolving an address to a node, planning the
//! route through NAT (direct, after signalling through a relay, or relayed),
//! and a dial's trip to the target and its answer back.

use std::collections::VecDeque;
use std::sync::Arc;

use p2p_core::{Error, PeerAddr};
use tokio::sync::{mpsc, oneshot};

use super::state::{Conn, ConnId, Effect, End, Event, NodeIdx, PendingConnect, State};
use crate::link::Reach;
use crate::trace::TraceKind;

/// Where the result of a dial arrives.
pub(crate) type DialReply = oneshot::Receiver<Result<Arc<dyn p2p_core::Connection>, Error>>;

/// Capacity of a listener's queue of inbound connections.
const LISTEN_QUEUE: usize = 128;

impl State {
    pub(crate) fn listen(
        &mut self,
        n: NodeIdx,
        inc: u64,
    ) -> Result<mpsc::Receiver<Arc<dyn p2p_core::Connection>>, Error> {
        self.node_live(n, inc)?;
        let node = &mut self.nodes[n as usize];
        if node.listener.as_ref().is_some_and(|l| !l.is_closed()) {
            return Err(Error::AlreadyExists {
                what: format!("a listener on simulated node {}", node.name),
            });
        }
        let (tx, rx) = mpsc::channel(LISTEN_QUEUE);
        node.listener = Some(tx);
        Ok(rx)
    }

    pub(crate) fn resolve(&self, addr: &PeerAddr) -> Result<NodeIdx, Error> {
        if addr.addrs.is_empty() {
            return self.ids.get(&addr.id).copied().ok_or_else(|| {
                Error::unreachable(format!("no simulated node has peer id {}", addr.id.short()))
            });
        }
        addr.addrs
            .iter()
            .find_map(|a| self.addrs.get(a).copied())
            .ok_or_else(|| {
                Error::unreachable(format!("no simulated node at {}", addr.addrs.join(", ")))
            })
    }

    /// A node's relay by name.
    fn relay_named(&self, name: &str, of: NodeIdx) -> Result<NodeIdx, Error> {
        self.names.get(name).copied().ok_or_else(|| {
            Error::invalid(
                "relay",
                format!(
                    "simulated node {} names relay {name:?}, which does not exist",
                    self.nodes[of as usize].name
                ),
            )
        })
    }

    /// How a connection from `from` to `to` goes, and the extra set-up
    /// time of getting through NAT:
    ///
    /// - between a node behind NAT and a public one: direct (the NATed
    ///   side can always connect out); when the public side dials, after
    ///   one signalling round trip through the NATed node's relay, which
    ///   asks it to connect back;
    /// - between two nodes behind NAT, either relay-only: through the
    ///   target's relay (else the dialer's);
    /// - between two punchable nodes: direct, after a signalling round
    ///   trip through the target's relay.
    ///
    /// Connections with a relay itself are direct.
    fn plan_route(&mut self, from: NodeIdx, to: NodeIdx) -> Result<(Option<NodeIdx>, u64), Error> {
        let reach = |n: NodeIdx| self.nodes[n as usize].cfg.reach.clone();
        let (rf, rt) = (reach(from), reach(to));
        let relay_of = |this: &Self, r: &Reach, n: NodeIdx| -> Result<Option<NodeIdx>, Error> {
            match r {
                Reach::Public => Ok(None),
                Reach::Punchable { relay } | Reach::RelayOnly { relay } => {
                    this.relay_named(relay, n).map(Some)
                }
            }
        };
        let (relay_from, relay_to) = (relay_of(self, &rf, from)?, relay_of(self, &rt, to)?);
        let is_relay_of_either = |r: NodeIdx| r == from || r == to;
        let relay_only = |r: &Reach| matches!(r, Reach::RelayOnly { .. });
        let via =
            if relay_from.is_some() && relay_to.is_some() && (relay_only(&rf) || relay_only(&rt)) {
                relay_to.or(relay_from).filter(|r| !is_relay_of_either(*r))
            } else {
                None
            };
        if let Some(r) = via {
            if !self.nodes[r as usize].up {
                return Err(Error::unreachable(format!(
                    "simulated node {} can only be reached through relay {}, which is down",
                    self.nodes[to as usize].name, self.nodes[r as usize].name
                )));
            }
            return Ok((Some(r), 0));
        }
        // Direct; a NATed target is first asked through its relay.
        let mut extra = 0;
        if let Some(r) = relay_to.filter(|r| !is_relay_of_either(*r)) {
            extra = self.delay_via(from, to, Some(r)) + self.delay_via(to, from, Some(r));
        }
        Ok((None, extra))
    }

    /// Starts a dial; the answer arrives on the returned channel.
    pub(crate) fn connect(
        &mut self,
        from: NodeIdx,
        inc: u64,
        addr: &PeerAddr,
    ) -> Result<(u64, DialReply), Error> {
        self.node_live(from, inc)?;
        let to = self.resolve(addr)?;
        let (via, extra) = self.plan_route(from, to)?;
        let (tx, rx) = oneshot::channel();
        let id = self.id();
        self.pending.insert(
            id,
            PendingConnect {
                from,
                from_inc: inc,
                to,
                via,
                expect: addr.id,
                tx: Some(tx),
                conn: None,
            },
        );
        let blocked = match via {
            Some(r) => self.is_blocked(from, r) || self.is_blocked(r, to),
            None => self.is_blocked(from, to),
        };
        if !blocked {
            let mut at = self.now + extra + self.delay_via(from, to, via);
            if self.lost(from, to) {
                at += self.rto(from, to);
            }
            self.schedule(at, Event::ConnectArrive { pending: id });
        } else {
            self.record(TraceKind::ConnectFailed, from, to, id, 0, 0);
        }
        Ok((id, rx))
    }

    /// The dialer gave up waiting: forget the attempt and close any
    /// half-made connection.
    pub(crate) fn connect_timed_out(&mut self, pending: u64) {
        if let Some(p) = self.pending.remove(&pending) {
            self.record(TraceKind::ConnectFailed, p.from, p.to, pending, 1, 0);
            if let Some(c) = p.conn {
                self.abandon_dial(c, "the dialer gave up waiting");
            }
        }
    }

    /// The dialer's handle for `c` will never exist: close its end.
    pub(super) fn abandon_dial(&mut self, c: ConnId, reason: &str) {
        if let Some(conn) = self.conns.get_mut(&c) {
            conn.ends[0].handle = false;
        }
        self.close_end(c, 0, reason, true);
        self.maybe_gc_conn(c);
    }

    fn reply(&mut self, pending: u64, to: NodeIdx, from: NodeIdx, result: Result<ConnId, Error>) {
        if self.is_blocked(to, from) {
            // The answer is lost; the dialer times out.
            return;
        }
        let at = self.now + self.delay(to, from);
        self.schedule(at, Event::ConnectReply { pending, result });
    }

    pub(super) fn connect_arrive(&mut self, pending: u64) {
        let Some(p) = self.pending.get(&pending) else {
            return;
        };
        let (from, from_inc, to, expect, via) = (p.from, p.from_inc, p.to, p.expect, p.via);
        let dialer = &self.nodes[from as usize];
        if !dialer.up || dialer.inc != from_inc {
            self.pending.remove(&pending);
            return;
        }
        let target = &self.nodes[to as usize];
        if !target.up {
            // Nobody answers for a machine that is down: the dialer times out.
            self.record(TraceKind::ConnectFailed, from, to, pending, 2, 0);
            return;
        }
        if target.id != expect {
            let err = Error::unreachable(format!(
                "simulated node {} has peer id {}, not the expected {}",
                target.name,
                target.id.short(),
                expect.short()
            ));
            self.record(TraceKind::ConnectFailed, from, to, pending, 3, 0);
            self.reply(pending, to, from, Err(err));
            return;
        }
        let Some(listener) = target.listener.clone().filter(|l| !l.is_closed()) else {
            let err = Error::unreachable(format!(
                "connection refused: simulated node {} is not listening",
                target.name
            ));
            self.record(TraceKind::ConnectFailed, from, to, pending, 4, 0);
            self.reply(pending, to, from, Err(err));
            return;
        };
        let to_inc = target.inc;
        let conn = self.id();
        let end = |node, inc| End {
            node,
            inc,
            closed: None,
            accept_q: VecDeque::new(),
            accept_wakers: Vec::new(),
            handle: true,
        };
        self.conns.insert(
            conn,
            Conn {
                ends: [end(from, from_inc), end(to, to_inc)],
                flows: Vec::new(),
                via,
            },
        );
        self.nodes[from as usize].conns.insert(conn);
        self.nodes[to as usize].conns.insert(conn);
        if let Some(r) = via {
            self.nodes[r as usize].relaying.insert(conn);
        }
        if let Some(p) = self.pending.get_mut(&pending) {
            p.conn = Some(conn);
        }
        self.stats.connections += 1;
        self.record(TraceKind::Connect, from, to, conn, 0, 0);
        let remote = self.nodes[from as usize].id;
        self.effects.push(Effect::Accept {
            tx: listener,
            conn,
            remote,
        });
        self.reply(pending, to, from, Ok(conn));
    }

    pub(super) fn connect_reply(&mut self, pending: u64, result: Result<ConnId, Error>) {
        let Some(mut p) = self.pending.remove(&pending) else {
            return;
        };
        let alive = {
            let n = &self.nodes[p.from as usize];
            n.up && n.inc == p.from_inc
        };
        let Some(tx) = p.tx.take() else { return };
        if !alive {
            if let Ok(c) = result {
                self.abandon_dial(c, "the dialer went down");
            }
            return;
        }
        let remote = self.nodes[p.to as usize].id;
        self.effects.push(Effect::Reply {
            tx,
            result: result.map(|c| (c, remote)),
        });
    }
}
