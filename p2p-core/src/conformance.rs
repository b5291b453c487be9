//! The conformance suites: this module's for transport backends
//! ([`Provider`]), [`runtime`] for [`Runtime`](crate::Runtime)
//! implementations, and [`mdns`] for backends with LAN discovery.
//!
//! # Transport
//!
//! Each case is a generic `async fn` over a [`TestNet`], which a backend
//! implements in a few lines: how to make a node from a key, and an address
//! where nobody listens. Where a backend genuinely differs from the others
//! it says so through a flag with a default ([`TestNet::provider_drop_closes`],
//! [`TestNet::dialing_itself_is_refused`]), and the case checks the
//! declared behaviour. [`conformance_tests!`](crate::conformance_tests)
//! expands one `#[tokio::test]` per case, twice: once with the backend's own
//! provider type, and once with every provider behind `Arc<dyn Provider>`
//! (module `dyn_provider`). A backend's whole `tests/conformance.rs`:
//!
//! ```text
//! mod plain {
//!     p2p_core::conformance_tests!(my_backend::TestNet::new(), #[tokio::test]);
//! }
//! mod admitted {
//!     use p2p_core::conformance::AdmittedNet;
//!     p2p_core::conformance_tests!(AdmittedNet::new(my_backend::TestNet::new()), #[tokio::test]);
//! }
//! ```
//!
//! The nodes a `TestNet` makes must not discover peers outside the test
//! (mDNS off, or an isolated network). Cases panic with a message saying
//! which guarantee broke. Every wait is bounded, so a broken backend fails
//! instead of hanging.

#![allow(clippy::unwrap_used, missing_docs)]

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use rand::SeedableRng;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::addr::PeerAddr;
use crate::admission::{Admission, Admitted, PreSharedKey};
use crate::error::Error;
use crate::id::{NodeKey, PeerId};
use crate::transport::{Connection, Listener, Provider, RecvStream, SendStream};

pub mod mdns;
pub mod runtime;

/// Time bounds a backend promises; the suite fails a case that exceeds them.
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    /// A dial to an address where nobody listens fails within this.
    pub unreachable: Duration,
    /// A close is seen by the peer within this.
    pub close_propagation: Duration,
    /// Any single step of a case (connect, accept, a round trip) finishes
    /// within this.
    pub step: Duration,
    /// The 64 MiB transfer finishes within this.
    pub large_transfer: Duration,
    /// [`Provider::close`] returns within this, the first time and again.
    pub close: Duration,
}

impl Default for Bounds {
    fn default() -> Self {
        Bounds {
            unreachable: Duration::from_secs(30),
            close_propagation: Duration::from_secs(10),
            step: Duration::from_secs(20),
            large_transfer: Duration::from_secs(120),
            close: Duration::from_secs(10),
        }
    }
}

/// A backend under test: makes nodes.
#[async_trait]
pub trait TestNet: Send + Sync + 'static {
    /// The backend's provider type.
    type Node: Provider;

    /// A node with identity `key`. Called again with the same key after the
    /// previous node was closed, it must give the restarted node.
    async fn node(&self, key: NodeKey) -> Self::Node;

    /// A node enforcing `admission`. The default wraps [`TestNet::node`] in
    /// [`Admitted`]; a backend that enforces admission natively (libp2p
    /// pnet) overrides it to test its own mechanism.
    async fn node_with_admission(&self, key: NodeKey, admission: Admission) -> Arc<dyn Provider> {
        Arc::new(Admitted::new(self.node(key).await, admission))
    }

    /// An address for `id` where nothing listens.
    async fn unreachable_addr(&self, id: PeerId) -> PeerAddr;

    /// The time bounds this backend promises.
    fn bounds(&self) -> Bounds {
        Bounds::default()
    }

    /// Whether dropping a node (without `close`) closes its connections.
    /// True for backends whose provider owns its node (iroh, libp2p);
    /// false where a provider is one of many handles to a node that lives
    /// on without it (the simulator, whose nodes belong to the network).
    /// The suite checks whichever is declared.
    fn provider_drop_closes(&self) -> bool {
        true
    }

    /// Whether a dial to the node's own address is refused with
    /// [`Error::Invalid`] (iroh, libp2p). False where a node can connect
    /// to itself (the simulator); the suite then checks that the
    /// connection reaches the node itself.
    fn dialing_itself_is_refused(&self) -> bool {
        true
    }
}

/// Runs the suite with every node behind `Arc<dyn Provider>`.
pub struct DynNet<N>(pub N);

impl<N> DynNet<N> {
    /// Wraps a test net.
    pub fn new(net: N) -> Self {
        DynNet(net)
    }
}

#[async_trait]
impl<N: TestNet> TestNet for DynNet<N> {
    type Node = Arc<dyn Provider>;
    async fn node(&self, key: NodeKey) -> Arc<dyn Provider> {
        Arc::new(self.0.node(key).await)
    }
    async fn node_with_admission(&self, key: NodeKey, admission: Admission) -> Arc<dyn Provider> {
        self.0.node_with_admission(key, admission).await
    }
    async fn unreachable_addr(&self, id: PeerId) -> PeerAddr {
        self.0.unreachable_addr(id).await
    }
    fn bounds(&self) -> Bounds {
        self.0.bounds()
    }
    fn provider_drop_closes(&self) -> bool {
        self.0.provider_drop_closes()
    }
    fn dialing_itself_is_refused(&self) -> bool {
        self.0.dialing_itself_is_refused()
    }
}

/// Runs the suite with every node behind the [`Admitted`] wrapper and one
/// shared pre-shared key, so that every case also holds through admission.
pub struct AdmittedNet<N> {
    inner: N,
    psk: PreSharedKey,
}

impl<N> AdmittedNet<N> {
    /// Wraps a test net.
    pub fn new(inner: N) -> Self {
        AdmittedNet {
            inner,
            psk: PreSharedKey::from_bytes([0x5a; 32]),
        }
    }
}

#[async_trait]
impl<N: TestNet> TestNet for AdmittedNet<N> {
    type Node = Admitted<N::Node>;
    async fn node(&self, key: NodeKey) -> Self::Node {
        let policy = Admission::new(&mut rng(key.seed()[0])).with_psk(self.psk.clone());
        Admitted::new(self.inner.node(key).await, policy)
    }
    async fn node_with_admission(&self, key: NodeKey, admission: Admission) -> Arc<dyn Provider> {
        self.inner.node_with_admission(key, admission).await
    }
    async fn unreachable_addr(&self, id: PeerId) -> PeerAddr {
        self.inner.unreachable_addr(id).await
    }
    fn bounds(&self) -> Bounds {
        self.inner.bounds()
    }
    fn provider_drop_closes(&self) -> bool {
        self.inner.provider_drop_closes()
    }
    fn dialing_itself_is_refused(&self) -> bool {
        self.inner.dialing_itself_is_refused()
    }
}

/// Expands one test per conformance case, for `$net` as is and through
/// `Arc<dyn Provider>` (in a submodule `dyn_provider`).
///
/// `$net` is an expression evaluated afresh in every test; the attributes
/// (for example `#[tokio::test(start_paused = true)]`) go on every test.
#[macro_export]
macro_rules! conformance_tests {
    ($net:expr, $(#[$m:meta])+) => {
        $crate::conformance_tests!(@suite $net, [$(#[$m])+]);
        mod dyn_provider {
            #[allow(unused_imports)]
            use super::*;
            $crate::conformance_tests!(@suite $crate::conformance::DynNet::new($net), [$(#[$m])+]);
        }
    };
    (@suite $net:expr, $attrs:tt) => {
        $crate::conformance_tests!(@cases $net, $attrs,
            connect_and_accept_both_ways
            stream_round_trip
            many_concurrent_streams
            large_transfer_is_intact
            half_close_lets_the_reader_answer
            close_propagates_to_the_peer
            unreachable_peer_fails_in_bounded_time
            right_key_is_admitted
            wrong_key_is_denied_on_both_sides
            missing_key_is_denied_on_both_sides
            peer_not_allow_listed_is_denied_on_both_sides
            same_key_gives_same_id_after_restart
            closing_the_provider_tells_peers_why_and_refuses_new_work
            a_node_without_a_listener_refuses_dials
            one_listener_at_a_time_and_dropping_it_frees_the_slot
            a_different_identity_at_the_address_is_refused
            local_addr_names_the_node_and_reads_back_from_its_text
            dialing_an_unknown_id_is_unreachable
            dialing_itself_is_refused_as_invalid_or_reaches_itself
            a_lone_nodes_discovery_yields_nothing_and_ends_on_close
            dropping_the_provider_closes_its_connections_as_declared
            a_connection_closes_when_its_last_handle_and_stream_are_dropped
        );
    };
    (@cases $net:expr, $attrs:tt, ) => {};
    (@cases $net:expr, $attrs:tt, $case:ident $($rest:ident)*) => {
        $crate::conformance_tests!(@one $net, $attrs, $case);
        $crate::conformance_tests!(@cases $net, $attrs, $($rest)*);
    };
    (@one $net:expr, [$(#[$m:meta])+], $case:ident) => {
        $(#[$m])+
        async fn $case() {
            let net = $net;
            $crate::conformance::$case(&net).await;
        }
    };
}

fn rng(seed: u8) -> rand_chacha::ChaCha20Rng {
    rand_chacha::ChaCha20Rng::seed_from_u64(u64::from(seed) + 1000)
}

/// A fixed key per role, so failures are reproducible.
fn key(n: u8) -> NodeKey {
    NodeKey::from_seed([n; 32])
}

async fn within<T>(d: Duration, what: &str, f: impl std::future::Future<Output = T>) -> T {
    match tokio::time::timeout(d, f).await {
        Ok(v) => v,
        Err(_) => panic!("conformance: {what} did not finish within {d:?}"),
    }
}

async fn read_all(recv: &mut RecvStream) -> Vec<u8> {
    let mut out = Vec::new();
    recv.read_to_end(&mut out)
        .await
        .expect("reading a stream to its end");
    out
}

async fn write_and_finish(send: &mut SendStream, data: &[u8]) {
    send.write_all(data).await.expect("writing to a stream");
    send.shutdown().await.expect("finishing a stream");
}

struct Pair {
    a: Arc<dyn Provider>,
    b: Arc<dyn Provider>,
    _b_listener: Box<dyn Listener>,
    ab: Arc<dyn Connection>,
    ba: Arc<dyn Connection>,
}

async fn pair<N: TestNet>(net: &N) -> Pair {
    let s = net.bounds().step;
    let a: Arc<dyn Provider> = Arc::new(net.node(key(1)).await);
    let b: Arc<dyn Provider> = Arc::new(net.node(key(2)).await);
    let mut b_listener = within(s, "listen", b.listen()).await.expect("listen");
    let b_addr = b.local_addr();
    let (ab, ba) = within(s, "connect and accept", async {
        tokio::join!(a.connect(&b_addr), b_listener.accept())
    })
    .await;
    let ab = ab.expect("connect to a listening peer");
    let ba = ba.expect("accept an inbound connection");
    Pair {
        a,
        b,
        _b_listener: b_listener,
        ab,
        ba,
    }
}

/// Opens a stream on `from`, sends `msg`, and checks it arrives on `to`.
async fn check_stream(from: &dyn Connection, to: &dyn Connection, msg: &[u8], s: Duration) {
    let ((mut send, _r), accepted) = within(s, "open and accept a stream", async {
        let opened = from.open_bi().await.expect("open_bi");
        (opened, to.accept_bi())
    })
    .await;
    write_and_finish(&mut send, msg).await;
    let (_s2, mut recv) = within(s, "accept_bi", accepted).await.expect("accept_bi");
    let got = within(s, "read a stream", read_all(&mut recv)).await;
    assert_eq!(got, msg, "stream data arrived changed");
}

/// Dialer and listener both see the other's verified id, in both directions.
pub async fn connect_and_accept_both_ways<N: TestNet>(net: &N) {
    let s = net.bounds().step;
    let p = pair(net).await;
    assert_eq!(
        p.ab.remote_id(),
        p.b.local_id(),
        "dialer sees the listener's id"
    );
    assert_eq!(
        p.ba.remote_id(),
        p.a.local_id(),
        "listener sees the dialer's id"
    );
    assert!(p.ab.is_connected() && p.ba.is_connected());
    check_stream(&*p.ab, &*p.ba, b"a to b", s).await;
    check_stream(&*p.ba, &*p.ab, b"b opens to a", s).await;

    let mut a_listener = within(s, "listen", p.a.listen())
        .await
        .expect("listen on a");
    let a_addr = p.a.local_addr();
    let (c, d) = within(s, "reverse connect and accept", async {
        tokio::join!(p.b.connect(&a_addr), a_listener.accept())
    })
    .await;
    let (c, d) = (c.expect("b connects to a"), d.expect("a accepts b"));
    assert_eq!(c.remote_id(), p.a.local_id());
    assert_eq!(d.remote_id(), p.b.local_id());
    check_stream(&*c, &*d, b"b to a", s).await;
}

/// A request and a reply on one stream.
pub async fn stream_round_trip<N: TestNet>(net: &N) {
    let s = net.bounds().step;
    let p = pair(net).await;
    let server = async {
        let (mut send, mut recv) = p.ba.accept_bi().await.expect("accept_bi");
        let req = read_all(&mut recv).await;
        assert_eq!(req, b"ping");
        write_and_finish(&mut send, b"pong").await;
    };
    let client = async {
        let (mut send, mut recv) = p.ab.open_bi().await.expect("open_bi");
        write_and_finish(&mut send, b"ping").await;
        read_all(&mut recv).await
    };
    let ((), reply) = within(s, "round trip", async { tokio::join!(server, client) }).await;
    assert_eq!(reply, b"pong");
}

/// 64 streams at once on one connection, each echoed intact.
pub async fn many_concurrent_streams<N: TestNet>(net: &N) {
    const STREAMS: usize = 64;
    let s = net.bounds().step;
    let p = pair(net).await;
    let ba = p.ba.clone();
    let server = tokio::spawn(async move {
        let mut echoes = Vec::new();
        for _ in 0..STREAMS {
            let (mut send, mut recv) = ba.accept_bi().await.expect("accept_bi");
            echoes.push(tokio::spawn(async move {
                let data = read_all(&mut recv).await;
                write_and_finish(&mut send, &data).await;
            }));
        }
        for e in echoes {
            e.await.expect("echo task");
        }
    });
    let clients = (0..STREAMS).map(|i| {
        let ab = p.ab.clone();
        tokio::spawn(async move {
            let payload: Vec<u8> = (0..16 * 1024 + i).map(|j| (i * 31 + j) as u8).collect();
            let (mut send, mut recv) = ab.open_bi().await.expect("open_bi");
            write_and_finish(&mut send, &payload).await;
            let echo = read_all(&mut recv).await;
            assert!(
                echo == payload,
                "stream {i}: echo differs from what was sent"
            );
        })
    });
    let clients: Vec<_> = clients.collect();
    within(s * 3, "64 concurrent echoes", async {
        for c in clients {
            c.await.expect("client task");
        }
        server.await.expect("server task");
    })
    .await;
}

/// 64 MiB over one stream arrives complete, with the same SHA-256.
pub async fn large_transfer_is_intact<N: TestNet>(net: &N) {
    const TOTAL: usize = 64 * 1024 * 1024;
    let bounds = net.bounds();
    let p = pair(net).await;
    let receiver = async {
        let (mut send, mut recv) = p.ba.accept_bi().await.expect("accept_bi");
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 64 * 1024];
        let mut total = 0usize;
        loop {
            let n = recv.read(&mut buf).await.expect("reading the transfer");
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            total += n;
        }
        let digest: [u8; 32] = hasher.finalize().into();
        write_and_finish(&mut send, &digest).await;
        total
    };
    let sender = async {
        let (mut send, mut recv) = p.ab.open_bi().await.expect("open_bi");
        let mut data_rng = rand_chacha::ChaCha8Rng::seed_from_u64(64);
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 256 * 1024];
        let mut sent = 0;
        while sent < TOTAL {
            rand::Rng::fill_bytes(&mut data_rng, &mut buf);
            send.write_all(&buf).await.expect("writing the transfer");
            hasher.update(&buf);
            sent += buf.len();
        }
        send.shutdown().await.expect("finishing the transfer");
        let digest: [u8; 32] = hasher.finalize().into();
        (digest, read_all(&mut recv).await)
    };
    let (received, (sent_digest, their_digest)) =
        within(bounds.large_transfer, "64 MiB transfer", async {
            tokio::join!(receiver, sender)
        })
        .await;
    assert_eq!(received, TOTAL, "receiver got a different number of bytes");
    assert_eq!(
        their_digest, sent_digest,
        "SHA-256 of received data differs"
    );
}

/// After the opener finishes its half, the reader sees end of stream and
/// can still write back on the other half.
pub async fn half_close_lets_the_reader_answer<N: TestNet>(net: &N) {
    let s = net.bounds().step;
    let p = pair(net).await;
    let (mut a_send, mut a_recv) = within(s, "open_bi", p.ab.open_bi()).await.expect("open_bi");
    write_and_finish(&mut a_send, b"question").await;
    let (mut b_send, mut b_recv) = within(s, "accept_bi", p.ba.accept_bi())
        .await
        .expect("accept_bi");
    let q = within(s, "read to end of stream", read_all(&mut b_recv)).await;
    assert_eq!(q, b"question");
    let mut one = [0u8; 1];
    let n = within(s, "read after end", b_recv.read(&mut one))
        .await
        .expect("read after end");
    assert_eq!(n, 0, "end of stream must stay end of stream");
    // The reader answers after it saw the end; the opener, whose sending
    // half is finished, still reads.
    b_send
        .write_all(b"answer, ")
        .await
        .expect("write after peer finished");
    b_send
        .write_all(b"in two parts")
        .await
        .expect("second write");
    b_send.shutdown().await.expect("finish the answer");
    let a = within(s, "read the answer", read_all(&mut a_recv)).await;
    assert_eq!(a, b"answer, in two parts");
}

/// Closing a connection ends it for the peer, with the reason, in bounded time.
pub async fn close_propagates_to_the_peer<N: TestNet>(net: &N) {
    let bounds = net.bounds();
    let p = pair(net).await;
    // An open stream on the peer's side must end too.
    let (mut send, _recv) = within(bounds.step, "open_bi", p.ab.open_bi())
        .await
        .expect("open_bi");
    send.write_all(b"x").await.expect("write");
    send.flush().await.expect("flush");
    let (_bs, mut b_recv) = within(bounds.step, "accept_bi", p.ba.accept_bi())
        .await
        .expect("accept_bi");
    let mut one = [0u8; 1];
    b_recv.read_exact(&mut one).await.expect("first byte");

    p.ab.close("conformance says goodbye").await;
    assert!(
        !p.ab.is_connected(),
        "closer must see its connection closed at once"
    );
    let err = within(
        bounds.close_propagation,
        "peer noticing the close",
        p.ba.accept_bi(),
    )
    .await
    .err()
    .expect("accept_bi on a closed connection must fail");
    match &err {
        Error::Closed { reason } => assert!(
            reason.contains("conformance says goodbye"),
            "peer must see the close reason, got {reason:?}"
        ),
        other => panic!("expected Error::Closed, got {other}"),
    }
    within(
        bounds.close_propagation,
        "peer's is_connected turning false",
        async {
            while p.ba.is_connected() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        },
    )
    .await;
    let r = within(bounds.close_propagation, "open stream ending", async {
        let mut buf = [0u8; 16];
        b_recv.read(&mut buf).await
    })
    .await;
    assert!(
        matches!(r, Ok(0) | Err(_)),
        "stream of a closed connection must end, got {r:?}"
    );
    let r = within(
        bounds.step,
        "open_bi on a closed connection",
        p.ab.open_bi(),
    )
    .await;
    assert!(r.is_err(), "open_bi on a closed connection must fail");
}

/// Dialing an address where nobody listens fails with `Unreachable` or
/// `Timeout` in bounded time.
pub async fn unreachable_peer_fails_in_bounded_time<N: TestNet>(net: &N) {
    let bounds = net.bounds();
    let a = net.node(key(1)).await;
    let ghost = key(9).peer_id();
    let addr = net.unreachable_addr(ghost).await;
    let slack = Duration::from_secs(5);
    let r = within(
        bounds.unreachable + slack,
        "dial to an unreachable peer",
        a.connect(&addr),
    )
    .await;
    match r {
        Err(Error::Unreachable { .. } | Error::Timeout { .. }) => {}
        Err(other) => panic!("expected Unreachable or Timeout, got {other}"),
        Ok(_) => panic!("dial to an unreachable peer succeeded"),
    }
}

async fn admitted_node<N: TestNet>(
    net: &N,
    n: u8,
    psk: Option<[u8; 32]>,
    allow: Option<Vec<PeerId>>,
) -> Arc<dyn Provider> {
    let mut policy = Admission::new(&mut rng(n)).with_handshake_timeout(Duration::from_secs(5));
    if let Some(k) = psk {
        policy = policy.with_psk(PreSharedKey::from_bytes(k));
    }
    if let Some(list) = allow {
        policy = policy.with_allow_list(list);
    }
    net.node_with_admission(key(n), policy).await
}

fn assert_denied<T>(r: crate::Result<T>, what: &str) {
    match r {
        Err(Error::Denied { .. }) => {}
        Err(other) => panic!("{what}: expected Error::Denied, got {other}"),
        Ok(_) => panic!("{what}: was admitted, must be denied"),
    }
}

/// The listener yields the good peer's connection and nothing else: the
/// refused one never comes up.
async fn only_good_peer_is_yielded(
    listener: &mut Box<dyn Listener>,
    good: &Arc<dyn Provider>,
    target: &PeerAddr,
    s: Duration,
) {
    let (c, acc) = within(s, "good peer connecting", async {
        tokio::join!(good.connect(target), listener.accept())
    })
    .await;
    c.expect("a peer with the right credentials is admitted");
    let acc = acc.expect("listener accepts the good peer");
    assert_eq!(
        acc.remote_id(),
        good.local_id(),
        "listener yielded a connection that admission should have refused"
    );
    let extra = tokio::time::timeout(Duration::from_secs(2), listener.accept()).await;
    if let Ok(Ok(conn)) = extra {
        panic!("listener yielded refused peer {}", conn.remote_id().short());
    }
}

/// Peers with the same key are admitted both ways and talk.
pub async fn right_key_is_admitted<N: TestNet>(net: &N) {
    let s = net.bounds().step;
    let k = Some([7u8; 32]);
    let a = admitted_node(net, 1, k, Some(vec![key(2).peer_id()])).await;
    let b = admitted_node(net, 2, k, Some(vec![key(1).peer_id()])).await;
    let mut bl = within(s, "listen", b.listen()).await.expect("listen");
    let mut al = within(s, "listen", a.listen()).await.expect("listen");
    let (a_addr, b_addr) = (a.local_addr(), b.local_addr());
    let (ab, ba) = within(s, "admitted connect", async {
        tokio::join!(a.connect(&b_addr), bl.accept())
    })
    .await;
    let (ab, ba) = (
        ab.expect("right key admitted (dialer)"),
        ba.expect("right key admitted (listener)"),
    );
    check_stream(&*ab, &*ba, b"admitted", s).await;
    let (c, d) = within(s, "admitted reverse connect", async {
        tokio::join!(b.connect(&a_addr), al.accept())
    })
    .await;
    check_stream(
        &*c.expect("reverse dial admitted"),
        &*d.expect("reverse accept"),
        b"both ways",
        s,
    )
    .await;
}

/// Different keys: the dialer gets `Denied`, the listener yields nothing.
pub async fn wrong_key_is_denied_on_both_sides<N: TestNet>(net: &N) {
    let s = net.bounds().step;
    let a = admitted_node(net, 1, Some([1; 32]), None).await;
    let b = admitted_node(net, 2, Some([2; 32]), None).await;
    let good = admitted_node(net, 3, Some([2; 32]), None).await;
    let mut bl = within(s, "listen", b.listen()).await.expect("listen");
    let mut al = within(s, "listen", a.listen()).await.expect("listen");
    assert_denied(
        within(s, "dial with wrong key", a.connect(&b.local_addr())).await,
        "dial with a wrong key",
    );
    only_good_peer_is_yielded(&mut bl, &good, &b.local_addr(), s).await;
    assert_denied(
        within(s, "reverse dial", b.connect(&a.local_addr())).await,
        "reverse dial with a wrong key",
    );
    let a_good = admitted_node(net, 4, Some([1; 32]), None).await;
    only_good_peer_is_yielded(&mut al, &a_good, &a.local_addr(), s).await;
}

/// One side has a key and the other none: denied whichever side dials.
pub async fn missing_key_is_denied_on_both_sides<N: TestNet>(net: &N) {
    let s = net.bounds().step;
    let keyless = admitted_node(net, 1, None, None).await;
    let keyed = admitted_node(net, 2, Some([2; 32]), None).await;
    let mut keyed_l = within(s, "listen", keyed.listen()).await.expect("listen");
    let mut keyless_l = within(s, "listen", keyless.listen()).await.expect("listen");
    assert_denied(
        within(s, "keyless dial", keyless.connect(&keyed.local_addr())).await,
        "dial without a key into a keyed network",
    );
    let good = admitted_node(net, 3, Some([2; 32]), None).await;
    only_good_peer_is_yielded(&mut keyed_l, &good, &keyed.local_addr(), s).await;
    assert_denied(
        within(s, "keyed dial", keyed.connect(&keyless.local_addr())).await,
        "keyed dial to a keyless peer",
    );
    let good = admitted_node(net, 4, None, None).await;
    only_good_peer_is_yielded(&mut keyless_l, &good, &keyless.local_addr(), s).await;
}

/// A peer missing from the allow-list is denied whether it dials or is dialed.
pub async fn peer_not_allow_listed_is_denied_on_both_sides<N: TestNet>(net: &N) {
    let s = net.bounds().step;
    let k = Some([3u8; 32]);
    let stranger = admitted_node(net, 1, k, None).await;
    let strict = admitted_node(net, 2, k, Some(vec![key(3).peer_id()])).await;
    let friend = admitted_node(net, 3, k, None).await;
    let mut strict_l = within(s, "listen", strict.listen()).await.expect("listen");
    assert_denied(
        within(s, "stranger dial", stranger.connect(&strict.local_addr())).await,
        "dial from a peer outside the allow-list",
    );
    only_good_peer_is_yielded(&mut strict_l, &friend, &strict.local_addr(), s).await;

    // The strict node refuses to dial a peer outside its list, and that peer
    // yields nothing either.
    let mut stranger_l = within(s, "listen", stranger.listen())
        .await
        .expect("listen");
    assert_denied(
        within(
            s,
            "dial to a stranger",
            strict.connect(&stranger.local_addr()),
        )
        .await,
        "dial to a peer outside the allow-list",
    );
    let other = admitted_node(net, 4, k, None).await;
    only_good_peer_is_yielded(&mut stranger_l, &other, &stranger.local_addr(), s).await;
}

/// Closing a node and making it again from the same key gives the same id,
/// and peers can reach it again.
pub async fn same_key_gives_same_id_after_restart<N: TestNet>(net: &N) {
    let s = net.bounds().step;
    let b = net.node(key(2)).await;
    let first_id = b.local_id();
    assert_eq!(
        first_id,
        key(2).peer_id(),
        "id is the node key's public key"
    );
    b.close("restarting").await;
    drop(b);
    let b: Arc<dyn Provider> = Arc::new(net.node(key(2)).await);
    assert_eq!(
        b.local_id(),
        first_id,
        "same key must give the same id after restart"
    );
    let a: Arc<dyn Provider> = Arc::new(net.node(key(1)).await);
    let mut bl = within(s, "listen", b.listen())
        .await
        .expect("listen after restart");
    let b_addr = b.local_addr();
    let (ab, ba) = within(s, "connect after restart", async {
        tokio::join!(a.connect(&b_addr), bl.accept())
    })
    .await;
    let (ab, ba) = (
        ab.expect("dial restarted node"),
        ba.expect("restarted node accepts"),
    );
    assert_eq!(ab.remote_id(), first_id);
    check_stream(&*ab, &*ba, b"hello again", s).await;
}

/// `from` dials `to` while `to`'s listener accepts; both ends.
async fn link(
    from: &dyn Provider,
    to: &dyn Provider,
    listener: &mut Box<dyn Listener>,
    s: Duration,
) -> (Arc<dyn Connection>, Arc<dyn Connection>) {
    let addr = to.local_addr();
    let (c, a) = within(s, "connect and accept", async {
        tokio::join!(from.connect(&addr), listener.accept())
    })
    .await;
    (
        c.expect("connect to a listening peer"),
        a.expect("accept an inbound connection"),
    )
}

fn assert_closed_with<T>(r: crate::Result<T>, reason: &str, what: &str) {
    match r {
        Err(Error::Closed { reason: got }) => assert!(
            got.contains(reason),
            "{what}: the close reason must reach the peer, got {got:?}"
        ),
        Err(other) => panic!("{what}: expected Error::Closed, got {other}"),
        Ok(_) => panic!("{what}: succeeded on a closed connection"),
    }
}

/// `close` ends every connection, inbound and outbound, with a reason the
/// peers see; it returns within its bound, leaves a provider that refuses
/// new work, and closing again is harmless.
pub async fn closing_the_provider_tells_peers_why_and_refuses_new_work<N: TestNet>(net: &N) {
    const WHY: &str = "node a is upgrading";
    let bounds = net.bounds();
    let s = bounds.step;
    let a: Arc<dyn Provider> = Arc::new(net.node(key(1)).await);
    let b: Arc<dyn Provider> = Arc::new(net.node(key(2)).await);
    let c: Arc<dyn Provider> = Arc::new(net.node(key(3)).await);
    let mut bl = within(s, "listen", b.listen()).await.expect("listen");
    let mut al = within(s, "listen", a.listen()).await.expect("listen");
    let (ab, ba) = link(&*a, &*b, &mut bl, s).await;
    // A second connection, the other way, with an open stream.
    let (ca, _ac) = link(&*c, &*a, &mut al, s).await;
    let (mut send, _recv) = within(s, "open_bi", ca.open_bi()).await.expect("open_bi");
    send.write_all(b"x").await.expect("write");
    send.flush().await.expect("flush");

    within(bounds.close, "closing the provider", a.close(WHY)).await;
    for (who, conn) in [("dialed peer b", &ba), ("dialing peer c", &ca)] {
        let r = within(
            bounds.close_propagation,
            "peer noticing the close",
            conn.accept_bi(),
        )
        .await;
        assert_closed_with(r, WHY, who);
    }
    let e = within(s, "open_bi after close", ab.open_bi())
        .await
        .err()
        .expect("open_bi on a closed provider's connection must fail");
    assert!(
        e.to_string().contains(WHY),
        "the closer's own handle must report its reason, got {e}"
    );
    let r = within(s, "accept after close", al.accept()).await;
    assert!(
        matches!(r, Err(Error::Closed { .. })),
        "accept on a closed provider must fail with Closed, got {:?}",
        r.map(|c| c.remote_id())
    );
    let r = within(s, "connect after close", a.connect(&b.local_addr())).await;
    assert!(
        matches!(r, Err(Error::Closed { .. })),
        "connect from a closed provider must fail with Closed, got {:?}",
        r.map(|c| c.remote_id())
    );
    assert!(
        within(s, "listen after close", a.listen()).await.is_err(),
        "listen on a closed provider must fail"
    );
    within(bounds.close, "closing again", a.close("again")).await;
}

/// A dial to a node that exists but has no listener fails with
/// `Unreachable` within the step bound, instead of hanging.
pub async fn a_node_without_a_listener_refuses_dials<N: TestNet>(net: &N) {
    let s = net.bounds().step;
    let a = net.node(key(1)).await;
    let b = net.node(key(2)).await;
    match within(
        s,
        "dial to a node without a listener",
        a.connect(&b.local_addr()),
    )
    .await
    {
        Err(Error::Unreachable { .. }) => {}
        Err(other) => panic!("expected Error::Unreachable, got {other}"),
        Ok(_) => panic!("connected to a node without a listener"),
    }
}

/// A second `listen` while one listener is live fails with
/// `AlreadyExists`; once it is dropped, a new one starts and accepts.
pub async fn one_listener_at_a_time_and_dropping_it_frees_the_slot<N: TestNet>(net: &N) {
    let s = net.bounds().step;
    let a = net.node(key(1)).await;
    let b = net.node(key(2)).await;
    let first = within(s, "listen", b.listen()).await.expect("listen");
    match within(s, "second listen", b.listen()).await {
        Err(Error::AlreadyExists { .. }) => {}
        Err(other) => panic!("second listener: expected Error::AlreadyExists, got {other}"),
        Ok(_) => panic!("a second listener started while the first is live"),
    }
    drop(first);
    let mut l = within(s, "listen after the first was dropped", b.listen())
        .await
        .expect("listen again after dropping the listener");
    let (ab, ba) = link(&a, &b, &mut l, s).await;
    check_stream(&*ab, &*ba, b"through the new listener", s).await;
}

/// Dialing a listening node under another node's id fails with
/// `Unreachable` (the peer asked for is not there), and the listener
/// yields nothing: never a connection to an identity other than the one
/// asked for.
pub async fn a_different_identity_at_the_address_is_refused<N: TestNet>(net: &N) {
    let s = net.bounds().step;
    let a = net.node(key(1)).await;
    let b = net.node(key(2)).await;
    let mut bl = within(s, "listen", b.listen()).await.expect("listen");
    let impostor = PeerAddr::new(key(7).peer_id(), b.local_addr().addrs).expect("addr");
    match within(s, "dial under a wrong id", a.connect(&impostor)).await {
        Err(Error::Unreachable { .. }) => {}
        Err(other) => panic!("expected Error::Unreachable, got {other}"),
        Ok(c) => panic!(
            "connected to {} when {} was asked for",
            c.remote_id().short(),
            impostor.id.short()
        ),
    }
    if let Ok(Ok(c)) = tokio::time::timeout(Duration::from_secs(2), bl.accept()).await {
        panic!(
            "the listener yielded {} from a dial meant for another identity",
            c.remote_id().short()
        );
    }
}

/// `local_addr` carries the node's id and at least one address, and its
/// text form parses back to the same address.
pub async fn local_addr_names_the_node_and_reads_back_from_its_text<N: TestNet>(net: &N) {
    let a = net.node(key(1)).await;
    let addr = a.local_addr();
    assert_eq!(
        addr.id,
        key(1).peer_id(),
        "local_addr carries the node's id"
    );
    assert_eq!(addr.id, a.local_id());
    assert!(
        !addr.addrs.is_empty(),
        "local_addr lists no address: {addr}"
    );
    let text = addr.to_string();
    let back: PeerAddr = text.parse().expect("local_addr's text form parses");
    assert_eq!(back, addr, "local_addr does not read back from {text:?}");
}

/// Dialing an id that nobody has, with no address, fails with
/// `Unreachable` within the step bound.
pub async fn dialing_an_unknown_id_is_unreachable<N: TestNet>(net: &N) {
    let s = net.bounds().step;
    let a = net.node(key(1)).await;
    let nobody = PeerAddr::id_only(key(9).peer_id());
    match within(s, "dial to an unknown id", a.connect(&nobody)).await {
        Err(Error::Unreachable { .. }) => {}
        Err(other) => panic!("unknown id: expected Error::Unreachable, got {other}"),
        Ok(_) => panic!("connected to an id that no node has"),
    }
}

/// Dialing its own address is refused with `Invalid`; where the backend
/// declares that a node may connect to itself
/// ([`TestNet::dialing_itself_is_refused`] false), the connection reaches
/// the node itself and carries streams.
pub async fn dialing_itself_is_refused_as_invalid_or_reaches_itself<N: TestNet>(net: &N) {
    let s = net.bounds().step;
    let a = net.node(key(1)).await;
    let mut l = within(s, "listen", a.listen()).await.expect("listen");
    if net.dialing_itself_is_refused() {
        match within(s, "dial to itself", a.connect(&a.local_addr())).await {
            Err(Error::Invalid { .. }) => {}
            Err(other) => panic!("dialing itself: expected Error::Invalid, got {other}"),
            Ok(_) => panic!("a node connected to itself"),
        }
    } else {
        let (out, inn) = link(&a, &a, &mut l, s).await;
        assert_eq!(out.remote_id(), a.local_id());
        assert_eq!(inn.remote_id(), a.local_id());
        check_stream(&*out, &*inn, b"to myself", s).await;
    }
}

/// With nobody to find, `discovered` yields nothing; it ends when the
/// provider closes, so a task reading it does not wait forever.
pub async fn a_lone_nodes_discovery_yields_nothing_and_ends_on_close<N: TestNet>(net: &N) {
    use futures::StreamExt;
    let s = net.bounds().step;
    let a = net.node(key(1)).await;
    let mut found = a.discovered();
    if let Ok(Some(peer)) = tokio::time::timeout(Duration::from_secs(1), found.next()).await {
        panic!("a lone node discovered {peer}");
    }
    within(net.bounds().close, "close", a.close("bye")).await;
    let end = within(s, "the discovery stream ending", found.next()).await;
    assert!(
        end.is_none(),
        "discovery must end when the provider closes, got {end:?}"
    );
}

/// Dropping a node without `close` closes its connections (the peer sees
/// `Closed`) when the backend's provider owns its node; where a provider
/// is one handle to a node that lives on (declared by
/// [`TestNet::provider_drop_closes`]), its connections stay up.
pub async fn dropping_the_provider_closes_its_connections_as_declared<N: TestNet>(net: &N) {
    let bounds = net.bounds();
    let s = bounds.step;
    let a = net.node(key(1)).await;
    let b = net.node(key(2)).await;
    let mut bl = within(s, "listen", b.listen()).await.expect("listen");
    let (ab, ba) = link(&a, &b, &mut bl, s).await;
    // The connection handles outlive the provider: only its drop can
    // close them.
    drop(a);
    if net.provider_drop_closes() {
        let r = within(
            bounds.close_propagation,
            "peer noticing the dropped provider",
            ba.accept_bi(),
        )
        .await;
        assert!(
            matches!(r, Err(Error::Closed { .. })),
            "peer of a dropped provider must see Closed, got {:?}",
            r.map(|_| ())
        );
        within(
            bounds.close_propagation,
            "is_connected turning false",
            async {
                while ab.is_connected() {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            },
        )
        .await;
    } else {
        // Longer than a close takes to reach the peer.
        tokio::time::sleep(bounds.close_propagation).await;
        assert!(
            ab.is_connected() && ba.is_connected(),
            "dropping one handle to a node that lives on closed its connection"
        );
        check_stream(&*ab, &*ba, b"still connected", s).await;
    }
}

/// A stream keeps its connection open after the connection handle is
/// dropped; once the last handle and stream are gone, the peer sees
/// `Closed`.
pub async fn a_connection_closes_when_its_last_handle_and_stream_are_dropped<N: TestNet>(net: &N) {
    let bounds = net.bounds();
    let s = bounds.step;
    let a = net.node(key(1)).await;
    let b = net.node(key(2)).await;
    let mut bl = within(s, "listen", b.listen()).await.expect("listen");

    let (ab, ba) = link(&a, &b, &mut bl, s).await;
    let (mut send, mut recv) = within(s, "open_bi", ab.open_bi()).await.expect("open_bi");
    drop(ab);
    write_and_finish(&mut send, b"after the handle").await;
    let (mut b_send, mut b_recv) = within(s, "accept_bi", ba.accept_bi())
        .await
        .expect("a stream keeps its connection open after the handle is dropped");
    let got = within(s, "read", read_all(&mut b_recv)).await;
    assert_eq!(got, b"after the handle");
    write_and_finish(&mut b_send, b"ok").await;
    let reply = within(s, "read the reply", read_all(&mut recv)).await;
    assert_eq!(reply, b"ok");
    assert!(
        ba.is_connected(),
        "the connection closed while a stream was open"
    );
    drop((send, recv));
    let r = within(
        bounds.close_propagation,
        "peer noticing the last stream dropped",
        ba.accept_bi(),
    )
    .await;
    assert!(
        matches!(r, Err(Error::Closed { .. })),
        "dropping the last stream must close the connection, got {:?}",
        r.map(|_| ())
    );

    // Without any stream, dropping the handle closes it at once.
    let (ab, ba) = link(&a, &b, &mut bl, s).await;
    drop(ab);
    let r = within(
        bounds.close_propagation,
        "peer noticing the handle dropped",
        ba.accept_bi(),
    )
    .await;
    assert!(
        matches!(r, Err(Error::Closed { .. })),
        "dropping the last handle must close the connection, got {:?}",
        r.map(|_| ())
    );
}
