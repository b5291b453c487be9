//! Node lifecycle: adding a node, bringing it up as a new incarnation, and
//! taking it down by a crash (tasks abort, peers see a reset) or a
//! graceful close.

use std::collections::{BTreeSet, VecDeque};

use p2p_core::{Error, MemStorage, NodeKey};

use super::state::{ConnId, Effect, Event, Node, NodeIdx, State};
use super::stats::NodeTraffic;
use crate::link::NodeConfig;
use crate::trace::TraceKind;

impl State {
    pub(crate) fn add_node(
        &mut self,
        name: &str,
        key: NodeKey,
        cfg: NodeConfig,
    ) -> Result<NodeIdx, Error> {
        if name.is_empty()
            || name
                .chars()
                .any(|c| c.is_whitespace() || c == ',' || c == '@')
        {
            return Err(Error::invalid(
                "simulated node name",
                format!("{name:?}: use a non-empty name without spaces, ',' or '@'"),
            ));
        }
        if self.names.contains_key(name) || self.addrs.contains_key(name) {
            return Err(Error::AlreadyExists {
                what: format!("simulated node {name:?}"),
            });
        }
        let id = key.peer_id();
        if let Some(&other) = self.ids.get(&id) {
            return Err(Error::AlreadyExists {
                what: format!(
                    "a simulated node with peer id {} ({})",
                    id.short(),
                    self.nodes[other as usize].name
                ),
            });
        }
        let idx = self.nodes.len() as NodeIdx;
        let site = cfg.site.as_deref().map(|s| self.site_index(s));
        self.nodes.push(Node {
            site,
            name: name.to_string(),
            addr: name.to_string(),
            key,
            id,
            up: false,
            inc: 0,
            down_reason: "not started".into(),
            cfg,
            up_ring: VecDeque::new(),
            up_busy: false,
            down_ring: VecDeque::new(),
            down_busy: false,
            listener: None,
            subs: Vec::new(),
            tasks: Vec::new(),
            hooks: Vec::new(),
            storage: MemStorage::new(),
            conns: BTreeSet::new(),
            relaying: BTreeSet::new(),
            traffic: NodeTraffic::default(),
        });
        self.names.insert(name.to_string(), idx);
        self.addrs.insert(name.to_string(), idx);
        self.ids.insert(id, idx);
        Ok(idx)
    }

    pub(crate) fn traffic(&self, n: NodeIdx) -> NodeTraffic {
        self.nodes[n as usize].traffic
    }

    /// Brings a node up as a new incarnation; returns its generation.
    pub(crate) fn bring_up(&mut self, n: NodeIdx) -> u64 {
        let node = &mut self.nodes[n as usize];
        // After a graceful close the old incarnation's tasks and processes
        // may still run; a new incarnation replaces them.
        let tasks = std::mem::take(&mut node.tasks);
        let hooks = std::mem::take(&mut node.hooks);
        node.inc += 1;
        node.up = true;
        self.effects.push(Effect::Abort(tasks));
        self.effects.push(Effect::Hooks(hooks));
        let node = &self.nodes[n as usize];
        let inc = node.inc;
        let lan = node.cfg.lan;
        self.record(TraceKind::Up, n, n, 0, inc, 0);
        for j in 0..self.nodes.len() as NodeIdx {
            let other = &self.nodes[j as usize];
            if j != n && other.up && other.cfg.lan == lan && !other.subs.is_empty() {
                let at = self.now + self.delay(n, j);
                self.schedule(
                    at,
                    Event::Announce {
                        from: n,
                        from_inc: inc,
                        to: j,
                    },
                );
            }
        }
        inc
    }

    /// Takes a node down: crash (`graceful == false`: peers see a reset,
    /// tasks are aborted) or provider close (peers see `reason`).
    pub(crate) fn take_down(&mut self, n: NodeIdx, reason: &str, graceful: bool) {
        let node = &mut self.nodes[n as usize];
        if !node.up {
            return;
        }
        node.up = false;
        node.down_reason = reason.to_string();
        node.listener = None;
        node.subs.clear();
        node.up_ring.clear();
        node.down_ring.clear();
        node.up_busy = false;
        node.down_busy = false;
        let name = node.name.clone();
        let conns: Vec<ConnId> = node.conns.iter().copied().collect();
        if !graceful {
            let tasks = std::mem::take(&mut node.tasks);
            let hooks = std::mem::take(&mut node.hooks);
            self.effects.push(Effect::Abort(tasks));
            self.effects.push(Effect::Hooks(hooks));
            self.record(TraceKind::Crash, n, n, 0, 0, 0);
        }
        for c in conns {
            for side in 0..2 {
                let mine = self.conns.get(&c).is_some_and(|conn| {
                    conn.ends[side].node == n && conn.ends[side].closed.is_none()
                });
                if !mine {
                    continue;
                }
                if graceful {
                    self.close_end(c, side, reason, true);
                } else {
                    self.close_end(c, side, reason, false);
                    let msg = format!("connection reset: peer {name} crashed");
                    self.send_close(c, side, msg);
                }
            }
        }
        // The connections it relayed end for both of their nodes.
        let relayed: Vec<ConnId> = std::mem::take(&mut self.nodes[n as usize].relaying)
            .into_iter()
            .collect();
        for c in relayed {
            let msg = format!("connection lost: relay {name} went down");
            for side in 0..2 {
                self.close_end(c, side, &msg, false);
            }
        }
        self.parked.retain(|(a, b), _| *a != n && *b != n);
        // Dials from this node are abandoned.
        let dead: Vec<u64> = self
            .pending
            .iter()
            .filter(|(_, p)| p.from == n)
            .map(|(k, _)| *k)
            .collect();
        for k in dead {
            if let Some(p) = self.pending.remove(&k)
                && let Some(c) = p.conn
            {
                self.abandon_dial(c, "the dialer went down");
            }
        }
    }
}
