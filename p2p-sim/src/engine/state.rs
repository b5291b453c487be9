//! The model's state: nodes, connections, stream directions ("flows"),
//! segments, and the queue of timed events, with the few primitives every
//! part of the model uses (ids, scheduling, the trace).
//!
//! Everything here is plain data, changed by methods that read the virtual
//! time from `State::now`, which the driver sets; nothing in the model
//! sleeps, spawns or locks. The files beside this one add the behaviour,
//! each an `impl State` block, in the layers the engine's module docs list.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::task::Waker;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use p2p_core::{Error, MemStorage, NodeKey, PeerAddr, PeerId};
use rand_chacha::ChaCha20Rng;
use tokio::sync::{mpsc, oneshot};
use tokio::task::AbortHandle;

use super::stats::{NetStats, NodeTraffic};
use crate::link::{LinkSpec, NodeConfig};
use crate::trace::{Trace, TraceEvent, TraceKind};

pub(crate) type NodeIdx = u32;
pub(crate) type ConnId = u64;
pub(crate) type FlowId = u64;

/// Tunables of the model.
#[derive(Debug, Clone)]
pub(crate) struct Config {
    pub(crate) mss: usize,
    pub(crate) window: usize,
    pub(crate) connect_timeout: Duration,
    pub(crate) idle_timeout: Duration,
    pub(crate) rto_min: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            mss: 64 * 1024,
            window: 2 * 1024 * 1024,
            connect_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(30),
            rto_min: Duration::from_millis(20),
        }
    }
}

/// Side effects that must run without the state lock held: they may drop
/// connection handles, whose `Drop` takes the lock.
pub(crate) enum Effect {
    Accept {
        tx: mpsc::Sender<Arc<dyn p2p_core::Connection>>,
        conn: ConnId,
        remote: PeerId,
    },
    Reply {
        tx: oneshot::Sender<Result<Arc<dyn p2p_core::Connection>, Error>>,
        result: Result<(ConnId, PeerId), Error>,
    },
    Abort(Vec<AbortHandle>),
    Hooks(Vec<Box<dyn FnOnce() + Send>>),
}

/// At most `mss` bytes of one flow (or its open or finish marker), on its
/// way through uplinks, links and downlinks.
#[derive(Clone)]
pub(super) struct Segment {
    pub(super) flow: FlowId,
    pub(super) seq: u64,
    pub(super) kind: SegKind,
    /// 0 on its way from the sender, 1 from the relay (relayed flows only).
    pub(super) hop: u8,
}

#[derive(Clone)]
pub(super) enum SegKind {
    Open,
    Data(Bytes),
    Fin,
}

impl Segment {
    pub(super) fn len(&self) -> usize {
        match &self.kind {
            SegKind::Data(b) => b.len(),
            _ => 0,
        }
    }
}

/// Something held back by a partition until heal.
pub(super) enum Parked {
    Segment(Segment),
    Close {
        conn: ConnId,
        side: usize,
        reason: String,
    },
}

/// Something that happens at a virtual time: the queue in [`State`] holds
/// them in (time, sequence) order; `events.rs` dispatches them.
pub(super) enum Event {
    UplinkDone {
        node: NodeIdx,
        inc: u64,
        seg: Segment,
    },
    Arrive {
        seg: Segment,
    },
    DownlinkDone {
        node: NodeIdx,
        inc: u64,
        seg: Segment,
    },
    Retransmit {
        seg: Segment,
    },
    Credit {
        flow: FlowId,
        bytes: usize,
    },
    ConnectArrive {
        pending: u64,
    },
    ConnectReply {
        pending: u64,
        result: Result<ConnId, Error>,
    },
    CloseArrive {
        conn: ConnId,
        side: usize,
        reason: String,
    },
    Announce {
        from: NodeIdx,
        from_inc: u64,
        to: NodeIdx,
    },
    IdleCheck {
        conn: ConnId,
    },
    /// A segment finished crossing a site's WAN uplink (`up`) or downlink.
    WanDone {
        site: usize,
        up: bool,
        seg: Segment,
    },
    /// A segment reached a site's WAN downlink.
    WanArrive {
        site: usize,
        seg: Segment,
    },
}

/// Whether a stream half's handle (reader or writer) exists yet, still, or
/// no more.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Handle {
    NotYet,
    Alive,
    Gone,
}

/// One direction of a stream: the writer's buffer and credit, its place in
/// the uplink and downlink rings, and the reader's reorder and receive
/// buffers.
pub(super) struct Flow {
    pub(super) conn: ConnId,
    /// Side of the connection that writes this flow.
    pub(super) src_side: usize,
    pub(super) src: NodeIdx,
    pub(super) dst: NodeIdx,
    pub(super) reverse: FlowId,
    // Writer side.
    pub(super) needs_open: bool,
    pub(super) send_buf: BytesMut,
    pub(super) credit: usize,
    pub(super) fin_queued: bool,
    pub(super) fin_sent: bool,
    pub(super) next_seq: u64,
    pub(super) retx: VecDeque<Segment>,
    pub(super) in_up_ring: bool,
    pub(super) writer: Handle,
    pub(super) writer_waker: Option<Waker>,
    pub(super) writer_error: Option<String>,
    // At the receiver's downlink.
    pub(super) down_queue: VecDeque<Segment>,
    pub(super) in_down_ring: bool,
    // Relayed flows: the relay that forwards every segment, the segments
    // at its downlink, and those waiting for its uplink.
    pub(super) via: Option<NodeIdx>,
    pub(super) relay_down: VecDeque<Segment>,
    pub(super) in_relay_down_ring: bool,
    pub(super) transit: VecDeque<Segment>,
    pub(super) in_relay_up_ring: bool,
    // Reader side.
    pub(super) expected: u64,
    pub(super) reorder: BTreeMap<u64, Segment>,
    pub(super) recv_buf: VecDeque<Bytes>,
    pub(super) fin_received: bool,
    pub(super) consumed_unacked: usize,
    pub(super) reader: Handle,
    pub(super) reader_waker: Option<Waker>,
    pub(super) reader_error: Option<String>,
}

impl Flow {
    pub(super) fn has_work(&self) -> bool {
        self.writer_error.is_none()
            && (!self.retx.is_empty()
                || self.needs_open
                || !self.send_buf.is_empty()
                || (self.fin_queued && !self.fin_sent))
    }
}

/// One side of a connection.
pub(super) struct End {
    pub(super) node: NodeIdx,
    pub(super) inc: u64,
    pub(super) closed: Option<String>,
    pub(super) accept_q: VecDeque<FlowId>,
    pub(super) accept_wakers: Vec<Waker>,
    pub(super) handle: bool,
}

/// A connection between two nodes, possibly through a relay.
pub(super) struct Conn {
    pub(super) ends: [End; 2],
    pub(super) flows: Vec<FlowId>,
    /// The relay every byte goes through, for a relayed connection.
    pub(super) via: Option<NodeIdx>,
}

/// A dial on its way: from the dialer to the target and the answer back.
pub(super) struct PendingConnect {
    pub(super) from: NodeIdx,
    pub(super) from_inc: u64,
    pub(super) to: NodeIdx,
    pub(super) via: Option<NodeIdx>,
    pub(super) expect: PeerId,
    pub(super) tx: Option<oneshot::Sender<Result<Arc<dyn p2p_core::Connection>, Error>>>,
    pub(super) conn: Option<ConnId>,
}

/// The largest segment a WAN link sends ahead of the bulk.
pub(super) const SMALL_SEGMENT: usize = 4096;

/// A site's WAN link and its state.
pub(crate) struct SiteState {
    pub(crate) name: String,
    pub(crate) link: crate::link::SiteLink,
    pub(super) up: WanDir,
    pub(super) down: WanDir,
    pub(crate) traffic: super::stats::NodeTraffic,
}

/// One direction of a site's WAN link: the streams with segments waiting,
/// served round robin, small segments first.
#[derive(Default)]
pub(crate) struct WanDir {
    pub(super) busy: bool,
    /// Segments of at most [`SMALL_SEGMENT`] bytes (requests, heartbeats,
    /// announcements, stream control), sent before the bulk: as a router
    /// with fair queueing serves a sparse flow's packet before the next
    /// packet of a bulk one.
    pub(super) small: VecDeque<Segment>,
    pub(super) ring: VecDeque<FlowId>,
    pub(super) queues: HashMap<FlowId, VecDeque<Segment>>,
}

impl State {
    /// The index of site `name`, made (with an unlimited link) if new.
    pub(crate) fn site_index(&mut self, name: &str) -> usize {
        if let Some(i) = self.sites.iter().position(|s| s.name == name) {
            return i;
        }
        self.sites.push(SiteState {
            name: name.to_string(),
            link: crate::link::SiteLink::default(),
            up: WanDir::default(),
            down: WanDir::default(),
            traffic: Default::default(),
        });
        self.sites.len() - 1
    }
}

/// A simulated node: identity, incarnation, link rates and rings, the
/// listener and discovery subscriptions, its tasks, and its storage.
pub(crate) struct Node {
    pub(crate) name: String,
    /// Its site, an index into `State::sites`.
    pub(crate) site: Option<usize>,
    /// Where it is dialed: its name, until [`SimNet::restart_at`](crate::SimNet::restart_at) moves it.
    pub(crate) addr: String,
    pub(crate) key: NodeKey,
    pub(crate) id: PeerId,
    pub(crate) up: bool,
    pub(crate) inc: u64,
    pub(crate) down_reason: String,
    pub(crate) cfg: NodeConfig,
    /// Flows with something to send, and whether as their relay.
    pub(super) up_ring: VecDeque<(FlowId, bool)>,
    pub(super) up_busy: bool,
    /// Flows with something arriving, and whether as their relay.
    pub(super) down_ring: VecDeque<(FlowId, bool)>,
    pub(super) down_busy: bool,
    pub(super) listener: Option<mpsc::Sender<Arc<dyn p2p_core::Connection>>>,
    pub(super) subs: Vec<mpsc::Sender<PeerAddr>>,
    pub(crate) tasks: Vec<AbortHandle>,
    pub(crate) hooks: Vec<Box<dyn FnOnce() + Send>>,
    pub(crate) storage: MemStorage,
    pub(super) conns: BTreeSet<ConnId>,
    /// Connections this node relays.
    pub(super) relaying: BTreeSet<ConnId>,
    pub(super) traffic: NodeTraffic,
}

/// The whole model: every node, connection and flow, and the event queue.
pub(crate) struct State {
    pub(crate) cfg: Config,
    pub(crate) seed: u64,
    pub(super) rng: ChaCha20Rng,
    /// Virtual time (ns) of the event or call being processed.
    pub(super) now: u64,
    pub(super) seq: u64,
    pub(super) events: BTreeMap<(u64, u64), Event>,
    pub(super) scheduled: bool,
    pub(super) effects: Vec<Effect>,
    pub(crate) nodes: Vec<Node>,
    pub(crate) names: BTreeMap<String, NodeIdx>,
    /// Nodes by the address they are dialed at.
    pub(crate) addrs: BTreeMap<String, NodeIdx>,
    /// Sites: their WAN links, when each is free next, their traffic.
    pub(crate) sites: Vec<SiteState>,
    pub(super) ids: BTreeMap<PeerId, NodeIdx>,
    pub(crate) default_link: LinkSpec,
    pub(super) links: BTreeMap<(NodeIdx, NodeIdx), LinkSpec>,
    /// Cut directed paths and since when (virtual ns).
    pub(super) blocked: BTreeMap<(NodeIdx, NodeIdx), u64>,
    pub(super) parked: BTreeMap<(NodeIdx, NodeIdx), Vec<Parked>>,
    pub(super) conns: HashMap<ConnId, Conn>,
    pub(super) flows: HashMap<FlowId, Flow>,
    pub(super) pending: BTreeMap<u64, PendingConnect>,
    pub(super) next_id: u64,
    pub(crate) trace: Trace,
    pub(crate) stats: NetStats,
}

impl State {
    pub(crate) fn new(seed: u64, cfg: Config, default_link: LinkSpec, rng: ChaCha20Rng) -> Self {
        State {
            cfg,
            seed,
            rng,
            now: 0,
            seq: 0,
            events: BTreeMap::new(),
            scheduled: false,
            effects: Vec::new(),
            nodes: Vec::new(),
            names: BTreeMap::new(),
            addrs: BTreeMap::new(),
            sites: Vec::new(),
            ids: BTreeMap::new(),
            default_link,
            links: BTreeMap::new(),
            blocked: BTreeMap::new(),
            parked: BTreeMap::new(),
            conns: HashMap::new(),
            flows: HashMap::new(),
            pending: BTreeMap::new(),
            next_id: 1,
            trace: Trace::new(seed),
            stats: NetStats::default(),
        }
    }

    pub(super) fn id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    pub(super) fn schedule(&mut self, at: u64, ev: Event) {
        self.seq += 1;
        self.events.insert((at, self.seq), ev);
        self.scheduled = true;
    }

    pub(super) fn record(
        &mut self,
        kind: TraceKind,
        from: NodeIdx,
        to: NodeIdx,
        conn: u64,
        seq: u64,
        bytes: u64,
    ) {
        self.trace.record(TraceEvent {
            at: Duration::from_nanos(self.now),
            kind,
            from,
            to,
            conn,
            seq,
            bytes,
        });
    }

    pub(crate) fn node_live(&self, n: NodeIdx, inc: u64) -> Result<&Node, Error> {
        let node = &self.nodes[n as usize];
        if !node.up || node.inc != inc {
            return Err(Error::closed(format!(
                "simulated node {} is down ({})",
                node.name, node.down_reason
            )));
        }
        Ok(node)
    }

    pub(crate) fn flow_count(&self) -> usize {
        self.flows.len()
    }

    pub(crate) fn conn_count(&self) -> usize {
        self.conns.len()
    }
}
