//! The event engine behind [`crate::SimNet`].
//!
//! One mutex-protected [`State`] holds every node, connection and stream
//! direction ("flow"), and a queue of timed events ordered by (virtual time,
//! sequence number). A single driver task pops due events and sleeps on
//! tokio's (paused) clock until the next one, so idle time costs nothing.
//!
//! Data path of one segment (at most `mss` bytes of one flow):
//!
//! ```text
//! writer -> flow send buffer -> sender uplink (fair round robin over flows,
//!   serialization time = size / upload) -> link (latency + jitter; loss
//!   schedules a retransmission; a partition parks it until heal)
//!   -> receiver downlink (fair round robin, size / download)
//!   -> reorder buffer -> reader
//! ```
//!
//! A writer may have at most `window` bytes not yet consumed by the reader;
//! consumed bytes return as credit one link latency later.
//!
//! Every event is processed at its own virtual timestamp (nanoseconds), even
//! though tokio's timer wakes the driver on millisecond ticks, so bandwidth
//! figures are exact rather than rounded to the tick.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use p2p_core::{Error, MemStorage, NodeKey, PeerAddr, PeerId};
use rand::RngExt;
use rand_chacha::ChaCha20Rng;
use tokio::sync::{Notify, mpsc, oneshot};
use tokio::task::AbortHandle;
use tokio::time::Instant;

use crate::link::{LinkSpec, NodeConfig, Reach};
use crate::trace::{Trace, TraceEvent, TraceKind};

pub(crate) type NodeIdx = u32;
pub(crate) type ConnId = u64;
pub(crate) type FlowId = u64;
/// Where the result of a dial arrives.
pub(crate) type DialReply = oneshot::Receiver<Result<Arc<dyn p2p_core::Connection>, Error>>;

/// Streams waiting to be accepted on one side of a connection; past this,
/// new streams are reset.
const MAX_ACCEPT_QUEUE: usize = 1024;
/// Capacity of a listener's queue of inbound connections.
pub(crate) const LISTEN_QUEUE: usize = 128;
/// Capacity of one discovery subscription.
pub(crate) const DISCOVERY_QUEUE: usize = 256;

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

/// Totals since the network started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NetStats {
    /// Payload bytes delivered to receivers.
    pub bytes_delivered: u64,
    /// Segments delivered.
    pub segments_delivered: u64,
    /// Segments lost and retransmitted.
    pub segments_lost: u64,
    /// Segments held back by partitions.
    pub segments_parked: u64,
    /// Connections established.
    pub connections: u64,
    /// Events processed by the engine.
    pub events: u64,
}

/// Bytes one node's links carried since the network started (every
/// incarnation), segment headers not counted: with the node's rates they
/// tell how busy its uplink and downlink were.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NodeTraffic {
    /// Bytes that left its uplink (retransmissions included).
    pub sent: u64,
    /// Bytes that went through its downlink (duplicates included).
    pub received: u64,
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

pub(crate) struct Shared {
    state: Mutex<State>,
    pub(crate) notify: Arc<Notify>,
    pub(crate) epoch: Instant,
}

impl Drop for Shared {
    fn drop(&mut self) {
        // Let the driver notice that the network is gone and exit.
        self.notify.notify_one();
    }
}

impl Shared {
    pub(crate) fn new(state: State, epoch: Instant) -> Arc<Self> {
        Arc::new(Shared {
            state: Mutex::new(state),
            notify: Arc::new(Notify::new()),
            epoch,
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn now_ns(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    /// Runs `f` on the state at the current virtual time, then performs the
    /// effects it produced (outside the lock) and wakes the driver if
    /// events were scheduled.
    pub(crate) fn with<R>(self: &Arc<Self>, f: impl FnOnce(&mut State) -> R) -> R {
        let now = self.now_ns();
        let (r, effects, scheduled) = {
            let mut st = self.lock();
            // Events already due happen before this call, in time order.
            st.run_due(now);
            st.now = now;
            let r = f(&mut st);
            (
                r,
                std::mem::take(&mut st.effects),
                std::mem::take(&mut st.scheduled),
            )
        };
        self.perform(effects);
        if scheduled {
            self.notify.notify_one();
        }
        r
    }

    fn perform(self: &Arc<Self>, effects: Vec<Effect>) {
        for e in effects {
            match e {
                Effect::Accept { tx, conn, remote } => {
                    let handle: Arc<dyn p2p_core::Connection> = Arc::new(
                        crate::provider::SimConnection::new(self.clone(), conn, 1, remote),
                    );
                    // A full or dropped listener drops the handle, which
                    // closes the connection for the dialer.
                    let _ = tx.try_send(handle);
                }
                Effect::Reply { tx, result } => {
                    let result = result.map(|(conn, remote)| {
                        Arc::new(crate::provider::SimConnection::new(
                            self.clone(),
                            conn,
                            0,
                            remote,
                        )) as Arc<dyn p2p_core::Connection>
                    });
                    let _ = tx.send(result);
                }
                Effect::Abort(handles) => handles.iter().for_each(AbortHandle::abort),
                Effect::Hooks(hooks) => hooks.into_iter().for_each(|h| h()),
            }
        }
    }
}

/// The driver task: processes due events, then sleeps until the next one
/// or until new work is scheduled.
pub(crate) async fn drive(weak: Weak<Shared>, notify: Arc<Notify>, epoch: Instant) {
    let sleep = tokio::time::sleep(Duration::ZERO);
    tokio::pin!(sleep);
    loop {
        let next = {
            let Some(sh) = weak.upgrade() else { return };
            let (next, effects) = {
                let mut st = sh.lock();
                let next = st.run_due(sh.now_ns());
                (next, std::mem::take(&mut st.effects))
            };
            sh.perform(effects);
            next
        };
        match next {
            Some(t) => {
                sleep.as_mut().reset(epoch + Duration::from_nanos(t));
                tokio::select! {
                    biased;
                    () = notify.notified() => {}
                    () = &mut sleep => {}
                }
            }
            None => notify.notified().await,
        }
    }
}

#[derive(Clone)]
pub(crate) struct Segment {
    flow: FlowId,
    seq: u64,
    kind: SegKind,
    /// 0 on its way from the sender, 1 from the relay (relayed flows only).
    hop: u8,
}

#[derive(Clone)]
enum SegKind {
    Open,
    Data(Bytes),
    Fin,
}

impl Segment {
    fn len(&self) -> usize {
        match &self.kind {
            SegKind::Data(b) => b.len(),
            _ => 0,
        }
    }
}

/// Something held back by a partition until heal.
enum Parked {
    Segment(Segment),
    Close {
        conn: ConnId,
        side: usize,
        reason: String,
    },
}

enum Event {
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
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Handle {
    NotYet,
    Alive,
    Gone,
}

struct Flow {
    conn: ConnId,
    /// Side of the connection that writes this flow.
    src_side: usize,
    src: NodeIdx,
    dst: NodeIdx,
    reverse: FlowId,
    // Writer side.
    needs_open: bool,
    send_buf: BytesMut,
    credit: usize,
    fin_queued: bool,
    fin_sent: bool,
    next_seq: u64,
    retx: VecDeque<Segment>,
    in_up_ring: bool,
    writer: Handle,
    writer_waker: Option<Waker>,
    writer_error: Option<String>,
    // At the receiver's downlink.
    down_queue: VecDeque<Segment>,
    in_down_ring: bool,
    // Relayed flows: the relay that forwards every segment, the segments
    // at its downlink, and those waiting for its uplink.
    via: Option<NodeIdx>,
    relay_down: VecDeque<Segment>,
    in_relay_down_ring: bool,
    transit: VecDeque<Segment>,
    in_relay_up_ring: bool,
    // Reader side.
    expected: u64,
    reorder: BTreeMap<u64, Segment>,
    recv_buf: VecDeque<Bytes>,
    fin_received: bool,
    consumed_unacked: usize,
    reader: Handle,
    reader_waker: Option<Waker>,
    reader_error: Option<String>,
}

impl Flow {
    fn has_work(&self) -> bool {
        self.writer_error.is_none()
            && (!self.retx.is_empty()
                || self.needs_open
                || !self.send_buf.is_empty()
                || (self.fin_queued && !self.fin_sent))
    }
}

struct End {
    node: NodeIdx,
    inc: u64,
    closed: Option<String>,
    accept_q: VecDeque<FlowId>,
    accept_wakers: Vec<Waker>,
    handle: bool,
}

struct Conn {
    ends: [End; 2],
    flows: Vec<FlowId>,
    /// The relay every byte goes through, for a relayed connection.
    via: Option<NodeIdx>,
}

struct PendingConnect {
    from: NodeIdx,
    from_inc: u64,
    to: NodeIdx,
    via: Option<NodeIdx>,
    expect: PeerId,
    tx: Option<oneshot::Sender<Result<Arc<dyn p2p_core::Connection>, Error>>>,
    conn: Option<ConnId>,
}

/// A node's boxed main task, made by its factory.
pub(crate) type Factory =
    Arc<dyn Fn(crate::net::NodeCtx) -> futures::future::BoxFuture<'static, ()> + Send + Sync>;

pub(crate) struct Node {
    pub(crate) name: String,
    pub(crate) key: NodeKey,
    pub(crate) id: PeerId,
    pub(crate) up: bool,
    pub(crate) inc: u64,
    pub(crate) down_reason: String,
    pub(crate) cfg: NodeConfig,
    /// Flows with something to send, and whether as their relay.
    up_ring: VecDeque<(FlowId, bool)>,
    up_busy: bool,
    /// Flows with something arriving, and whether as their relay.
    down_ring: VecDeque<(FlowId, bool)>,
    down_busy: bool,
    listener: Option<mpsc::Sender<Arc<dyn p2p_core::Connection>>>,
    subs: Vec<mpsc::Sender<PeerAddr>>,
    pub(crate) tasks: Vec<AbortHandle>,
    pub(crate) hooks: Vec<Box<dyn FnOnce() + Send>>,
    pub(crate) storage: MemStorage,
    pub(crate) factory: Option<Factory>,
    conns: BTreeSet<ConnId>,
    /// Connections this node relays.
    relaying: BTreeSet<ConnId>,
    traffic: NodeTraffic,
}

pub(crate) struct State {
    pub(crate) cfg: Config,
    pub(crate) seed: u64,
    rng: ChaCha20Rng,
    /// Virtual time (ns) of the event or call being processed.
    now: u64,
    seq: u64,
    events: BTreeMap<(u64, u64), Event>,
    scheduled: bool,
    effects: Vec<Effect>,
    pub(crate) nodes: Vec<Node>,
    pub(crate) names: BTreeMap<String, NodeIdx>,
    ids: BTreeMap<PeerId, NodeIdx>,
    pub(crate) default_link: LinkSpec,
    links: BTreeMap<(NodeIdx, NodeIdx), LinkSpec>,
    /// Cut directed paths and since when (virtual ns).
    blocked: BTreeMap<(NodeIdx, NodeIdx), u64>,
    parked: BTreeMap<(NodeIdx, NodeIdx), Vec<Parked>>,
    conns: HashMap<ConnId, Conn>,
    flows: HashMap<FlowId, Flow>,
    pending: BTreeMap<u64, PendingConnect>,
    next_id: u64,
    pub(crate) trace: Trace,
    pub(crate) stats: NetStats,
}

fn tx_ns(bytes: usize, rate: Option<u64>) -> u64 {
    match rate {
        Some(r) if r > 0 => (bytes as u128 * 1_000_000_000 / u128::from(r)) as u64,
        _ => 0,
    }
}

fn closed_io(reason: &str) -> std::io::Error {
    Error::closed(reason.to_string()).into_io()
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

    fn id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    fn schedule(&mut self, at: u64, ev: Event) {
        self.seq += 1;
        self.events.insert((at, self.seq), ev);
        self.scheduled = true;
    }

    fn record(
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

    fn link(&self, a: NodeIdx, b: NodeIdx) -> LinkSpec {
        self.links
            .get(&(a, b))
            .copied()
            .unwrap_or(self.default_link)
    }

    fn delay(&mut self, a: NodeIdx, b: NodeIdx) -> u64 {
        let l = self.link(a, b);
        let jitter = l.jitter.as_nanos() as u64;
        let j = if jitter > 0 {
            self.rng.random_range(0..=jitter)
        } else {
            0
        };
        l.latency.as_nanos() as u64 + j
    }

    /// One-way delay from `a` to `b` along flow `fid`'s path: through its
    /// relay when it has one.
    fn path_delay(&mut self, a: NodeIdx, b: NodeIdx, fid: FlowId) -> u64 {
        let via = self.flows.get(&fid).and_then(|f| f.via);
        self.delay_via(a, b, via)
    }

    /// One-way delay from `a` to `b`, through relay `via` when given.
    fn delay_via(&mut self, a: NodeIdx, b: NodeIdx, via: Option<NodeIdx>) -> u64 {
        match via {
            Some(r) => self.delay(a, r) + self.delay(r, b),
            None => self.delay(a, b),
        }
    }

    fn lost(&mut self, a: NodeIdx, b: NodeIdx) -> bool {
        let loss = self.link(a, b).loss;
        loss > 0.0 && self.rng.random_bool(loss)
    }

    fn rto(&self, a: NodeIdx, b: NodeIdx) -> u64 {
        let l = self.link(a, b);
        let rtt = 2 * (l.latency + l.jitter);
        (rtt * 3).max(self.cfg.rto_min).as_nanos() as u64
    }

    pub(crate) fn is_blocked(&self, a: NodeIdx, b: NodeIdx) -> bool {
        self.blocked.contains_key(&(a, b))
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
        }
    }

    // ----- nodes ---------------------------------------------------------

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
        if self.names.contains_key(name) {
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
        self.nodes.push(Node {
            name: name.to_string(),
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
            factory: None,
            conns: BTreeSet::new(),
            relaying: BTreeSet::new(),
            traffic: NodeTraffic::default(),
        });
        self.names.insert(name.to_string(), idx);
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

    pub(crate) fn set_link(&mut self, a: NodeIdx, b: NodeIdx, spec: LinkSpec) {
        self.links.insert((a, b), spec);
    }

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
    fn idle_check(&mut self, c: ConnId) {
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

    // ----- discovery ------------------------------------------------------

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

    fn announce(&mut self, from: NodeIdx, from_inc: u64, to: NodeIdx) {
        let f = &self.nodes[from as usize];
        if !f.up || f.inc != from_inc || !self.nodes[to as usize].up || self.is_blocked(from, to) {
            return;
        }
        let addr = PeerAddr {
            id: f.id,
            addrs: vec![f.name.clone()],
        };
        let t = &mut self.nodes[to as usize];
        t.subs.retain(|s| !s.is_closed());
        for s in &t.subs {
            // Discovery is best effort: a full subscription misses this one.
            let _ = s.try_send(addr.clone());
        }
        self.record(TraceKind::Discover, from, to, 0, 0, 0);
    }

    // ----- listening and connecting ----------------------------------------

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
            .find_map(|a| self.names.get(a).copied())
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
    fn abandon_dial(&mut self, c: ConnId, reason: &str) {
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

    fn connect_arrive(&mut self, pending: u64) {
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

    fn connect_reply(&mut self, pending: u64, result: Result<ConnId, Error>) {
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

    // ----- connections ----------------------------------------------------

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

    fn send_close(&mut self, c: ConnId, side: usize, reason: String) {
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

    fn maybe_gc_conn(&mut self, c: ConnId) {
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

    // ----- the data path ----------------------------------------------------

    /// Makes sure `flow` is in its sender's uplink ring and the uplink runs.
    fn enqueue(&mut self, flow: FlowId) {
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
    fn enqueue_transit(&mut self, flow: FlowId) {
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

    fn uplink_next(&mut self, n: NodeIdx) {
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

    /// A segment left the sender's uplink: cross the link.
    fn route(&mut self, seg: Segment) {
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
        let at = self.now + self.delay(src, dst);
        self.schedule(at, Event::Arrive { seg });
    }

    fn arrive(&mut self, seg: Segment) {
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

    fn downlink_next(&mut self, n: NodeIdx) {
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

    fn deliver(&mut self, seg: Segment) {
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

    // ----- stream handles -----------------------------------------------------

    pub(crate) fn poll_write(
        &mut self,
        fid: FlowId,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let Some(f) = self.flows.get_mut(&fid) else {
            return Poll::Ready(Err(closed_io("connection closed")));
        };
        if let Some(r) = &f.writer_error {
            return Poll::Ready(Err(closed_io(r)));
        }
        if f.fin_queued {
            return Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::BrokenPipe,
                "write after the stream was finished",
            )));
        }
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        if f.credit == 0 {
            f.writer_waker = Some(cx.waker().clone());
            return Poll::Pending;
        }
        let n = buf.len().min(f.credit);
        f.send_buf.extend_from_slice(&buf[..n]);
        f.credit -= n;
        self.enqueue(fid);
        Poll::Ready(Ok(n))
    }

    pub(crate) fn shutdown(&mut self, fid: FlowId) -> std::io::Result<()> {
        let Some(f) = self.flows.get_mut(&fid) else {
            return Err(closed_io("connection closed"));
        };
        if let Some(r) = &f.writer_error {
            return Err(closed_io(r));
        }
        if !f.fin_queued {
            f.fin_queued = true;
            self.enqueue(fid);
        }
        Ok(())
    }

    pub(crate) fn writer_dropped(&mut self, fid: FlowId) {
        let Some(f) = self.flows.get_mut(&fid) else {
            return;
        };
        f.writer = Handle::Gone;
        f.writer_waker = None;
        if !f.fin_queued && f.writer_error.is_none() {
            // Dropping a send half finishes it.
            f.fin_queued = true;
            self.enqueue(fid);
        }
        self.maybe_gc_flow(fid);
    }

    pub(crate) fn poll_read(
        &mut self,
        fid: FlowId,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let window = self.cfg.window;
        let Some(f) = self.flows.get_mut(&fid) else {
            return Poll::Ready(Err(closed_io("connection closed")));
        };
        if let Some(r) = &f.reader_error {
            return Poll::Ready(Err(closed_io(r)));
        }
        if f.recv_buf.is_empty() {
            if f.fin_received {
                return Poll::Ready(Ok(()));
            }
            f.reader_waker = Some(cx.waker().clone());
            return Poll::Pending;
        }
        let mut copied = 0;
        while buf.remaining() > 0 {
            let Some(front) = f.recv_buf.front_mut() else {
                break;
            };
            let n = front.len().min(buf.remaining());
            buf.put_slice(&front[..n]);
            copied += n;
            if n == front.len() {
                f.recv_buf.pop_front();
            } else {
                let _ = front.split_to(n);
            }
        }
        f.consumed_unacked += copied;
        if f.consumed_unacked >= window / 4 || f.recv_buf.is_empty() {
            let (bytes, src, dst) = (std::mem::take(&mut f.consumed_unacked), f.src, f.dst);
            let at = self.now + self.path_delay(dst, src, fid);
            self.schedule(at, Event::Credit { flow: fid, bytes });
        }
        Poll::Ready(Ok(()))
    }

    pub(crate) fn reader_dropped(&mut self, fid: FlowId) {
        let Some(f) = self.flows.get_mut(&fid) else {
            return;
        };
        f.reader = Handle::Gone;
        f.reader_waker = None;
        let bytes: usize =
            f.recv_buf.drain(..).map(|b| b.len()).sum::<usize>() + f.consumed_unacked;
        f.consumed_unacked = 0;
        if bytes > 0 && f.writer_error.is_none() {
            let (src, dst) = (f.src, f.dst);
            let at = self.now + self.path_delay(dst, src, fid);
            self.schedule(at, Event::Credit { flow: fid, bytes });
        }
        self.maybe_gc_flow(fid);
    }

    fn maybe_gc_flow(&mut self, fid: FlowId) {
        let Some(f) = self.flows.get(&fid) else {
            return;
        };
        let finished = f.fin_received || f.writer_error.is_some() || f.reader_error.is_some();
        let relaying = f.in_relay_up_ring || f.in_relay_down_ring;
        if f.writer == Handle::Gone
            && f.reader == Handle::Gone
            && finished
            && !f.in_up_ring
            && !relaying
        {
            let c = f.conn;
            self.flows.remove(&fid);
            if let Some(conn) = self.conns.get_mut(&c) {
                conn.flows.retain(|x| *x != fid);
            }
        }
    }

    pub(crate) fn flow_count(&self) -> usize {
        self.flows.len()
    }

    pub(crate) fn conn_count(&self) -> usize {
        self.conns.len()
    }
}
