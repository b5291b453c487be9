//! Event dispatch: runs every due event of the queue, in (time, sequence)
//! order, each at its own virtual timestamp, handing it to the part of the
//! model it belongs to.

use super::state::{Event, Segment, State};

impl State {
    /// Processes every event due at or before `now`; returns when the next
    /// one is due.
    pub(crate) fn run_due(&mut self, now: u64) -> Option<u64> {
        while let Some(entry) = self.events.first_entry() {
            let (at, _) = *entry.key();
            if at > now {
                return Some(at);
            }
            let ev = entry.remove();
            self.now = at;
            self.stats.events += 1;
            self.process(ev);
        }
        self.scheduled = false;
        None
    }

    fn process(&mut self, ev: Event) {
        match ev {
            Event::UplinkDone { node, inc, seg } => {
                // A completion from before a crash belongs to a dead incarnation.
                if self.nodes[node as usize].inc != inc {
                    return;
                }
                let n = &mut self.nodes[node as usize];
                n.up_busy = false;
                n.traffic.sent += seg.len() as u64;
                self.route(seg);
                self.uplink_next(node);
            }
            Event::Arrive { seg } => self.arrive(seg),
            Event::DownlinkDone { node, inc, seg } => {
                if self.nodes[node as usize].inc != inc {
                    return;
                }
                let n = &mut self.nodes[node as usize];
                n.down_busy = false;
                n.traffic.received += seg.len() as u64;
                let relaying = seg.hop == 0
                    && self
                        .flows
                        .get(&seg.flow)
                        .is_some_and(|f| f.via == Some(node));
                if relaying {
                    // Through the relay's downlink: on to its uplink.
                    let fid = seg.flow;
                    if let Some(f) = self.flows.get_mut(&fid) {
                        f.transit.push_back(Segment { hop: 1, ..seg });
                    }
                    self.enqueue_transit(fid);
                } else {
                    self.deliver(seg);
                }
                self.downlink_next(node);
            }
            Event::Retransmit { seg } => {
                let Some(f) = self.flows.get_mut(&seg.flow) else {
                    return;
                };
                if f.writer_error.is_some() {
                    return;
                }
                let fid = seg.flow;
                if seg.hop == 1 {
                    // Lost after the relay: the relay sends it again.
                    f.transit.push_front(seg);
                    self.enqueue_transit(fid);
                } else {
                    f.retx.push_back(seg);
                    self.enqueue(fid);
                }
            }
            Event::Credit { flow, bytes } => {
                if let Some(f) = self.flows.get_mut(&flow) {
                    f.credit += bytes;
                    if let Some(w) = f.writer_waker.take() {
                        w.wake();
                    }
                }
            }
            Event::ConnectArrive { pending } => self.connect_arrive(pending),
            Event::ConnectReply { pending, result } => self.connect_reply(pending, result),
            Event::CloseArrive { conn, side, reason } => self.close_end(conn, side, &reason, false),
            Event::Announce { from, from_inc, to } => self.announce(from, from_inc, to),
            Event::IdleCheck { conn } => self.idle_check(conn),
            Event::WanDone { site, up, seg } => self.wan_done(site, up, seg),
            Event::WanArrive { site, seg } => self.wan_enqueue(site, false, seg),
        }
    }
}
