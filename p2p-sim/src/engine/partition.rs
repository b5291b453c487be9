//! Partitions: cutting directed paths, ending connections that stay cut
//! for the idle timeout, and healing (parked segments and closes resume,
//! nodes re-announce themselves).

use super::state::{ConnId, Event, NodeIdx, Parked, State};

impl State {
    pub(crate) fn block(&mut self, a: NodeIdx, b: NodeIdx) {
        if a == b || self.blocked.contains_key(&(a, b)) {
            return;
        }
        self.blocked.insert((a, b), self.now);
        // Connections across the cut time out unless it heals first, as
        // keep-alives would notice on a real transport.
        let at = self.now + self.cfg.idle_timeout.as_nanos() as u64;
        let crossing: Vec<ConnId> = self.nodes[a as usize]
            .conns
            .iter()
            .copied()
            .filter(|c| {
                self.conns
                    .get(c)
                    .is_some_and(|conn| conn.ends.iter().any(|e| e.node == b))
            })
            .collect();
        for conn in crossing {
            self.schedule(at, Event::IdleCheck { conn });
        }
    }

    /// Ends a connection whose path has been cut for the idle timeout.
    pub(super) fn idle_check(&mut self, c: ConnId) {
        let Some(conn) = self.conns.get(&c) else {
            return;
        };
        let (x, y) = (conn.ends[0].node, conn.ends[1].node);
        let since = [(x, y), (y, x)]
            .iter()
            .filter_map(|k| self.blocked.get(k).copied())
            .min();
        let Some(since) = since else { return };
        let idle = self.cfg.idle_timeout.as_nanos() as u64;
        if self.now < since + idle {
            // Healed and cut again since this check was scheduled.
            self.schedule(since + idle, Event::IdleCheck { conn: c });
            return;
        }
        let reason = format!(
            "connection timed out: no word from the peer for {:?}",
            self.cfg.idle_timeout
        );
        for side in 0..2 {
            self.close_end(c, side, &reason, false);
        }
    }

    /// Removes every partition; parked traffic resumes and nodes on both
    /// sides re-announce themselves.
    pub(crate) fn heal(&mut self) {
        let was = std::mem::take(&mut self.blocked);
        let parked = std::mem::take(&mut self.parked);
        for ((a, b), held) in parked {
            for p in held {
                let at = self.now + self.delay(a, b);
                let ev = match p {
                    Parked::Segment(seg) => Event::Arrive { seg },
                    Parked::Close { conn, side, reason } => {
                        Event::CloseArrive { conn, side, reason }
                    }
                };
                self.schedule(at, ev);
            }
        }
        for (a, b) in was.into_keys() {
            let (na, nb) = (&self.nodes[a as usize], &self.nodes[b as usize]);
            if na.up && nb.up && na.cfg.lan == nb.cfg.lan && !nb.subs.is_empty() {
                let inc = na.inc;
                let at = self.now + self.delay(a, b);
                self.schedule(
                    at,
                    Event::Announce {
                        from: a,
                        from_inc: inc,
                        to: b,
                    },
                );
            }
        }
    }
}
