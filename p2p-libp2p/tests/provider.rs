//! Behaviour of the libp2p provider beyond the transport conformance suite
//! (`tests/conformance.rs`, which also covers closing and dropping the
//! provider and its connections, listeners, wrong identities and
//! discovery): QUIC and TCP, the native allow-list and connection limits,
//! libp2p's address notation and settings, idle connections, listener
//! backlogs, and bursts of streams from many peers.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use p2p_core::{
    Admission, Admitted, Connection, Error, Listener, NodeKey, PeerAddr, PreSharedKey, Provider,
    Result,
};
use p2p_libp2p::{Libp2pConfig, Libp2pProvider};
use rand::SeedableRng;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::timeout;

const STEP: Duration = Duration::from_secs(20);

fn key(n: u8) -> NodeKey {
    NodeKey::from_seed([n; 32])
}

fn cfg() -> Libp2pConfig {
    Libp2pConfig::loopback().connect_timeout(Duration::from_secs(5))
}

async fn node(n: u8) -> Libp2pProvider {
    node_with(n, cfg()).await
}

async fn node_with(n: u8, c: Libp2pConfig) -> Libp2pProvider {
    Libp2pProvider::bind(&key(n), c).await.unwrap()
}

/// `from` dials `to` while `to`'s listener `l` accepts; both results.
async fn link(
    from: &dyn Provider,
    to: &dyn Provider,
    l: &mut Box<dyn Listener>,
) -> (Result<Arc<dyn Connection>>, Result<Arc<dyn Connection>>) {
    let addr = to.local_addr();
    link_to(from, &addr, l).await
}

async fn link_to(
    from: &dyn Provider,
    addr: &PeerAddr,
    l: &mut Box<dyn Listener>,
) -> (Result<Arc<dyn Connection>>, Result<Arc<dyn Connection>>) {
    let mut connect = std::pin::pin!(from.connect(addr));
    let mut accept = std::pin::pin!(l.accept());
    let (mut c, mut a) = (None, None);
    timeout(STEP, async {
        while c.is_none() || a.is_none() {
            tokio::select! {
                r = &mut connect, if c.is_none() => {
                    // A failed dial is never accepted: report it at once.
                    if let Err(e) = r {
                        panic!("connect to {addr} failed: {e}");
                    }
                    c = Some(r);
                }
                r = &mut accept, if a.is_none() => a = Some(r),
            }
        }
    })
    .await
    .unwrap_or_else(|_| {
        panic!(
            "connect ({}) and accept ({}) within the step bound",
            if c.is_some() { "done" } else { "pending" },
            if a.is_some() { "done" } else { "pending" }
        )
    });
    (c.expect("connected"), a.expect("accepted"))
}

/// A round trip on a new stream from `a` to `b`.
async fn echo(a: &dyn Connection, b: &dyn Connection, msg: &[u8]) {
    let (mut s, mut r) = a.open_bi().await.unwrap();
    s.write_all(msg).await.unwrap();
    s.shutdown().await.unwrap();
    let (mut bs, mut br) = b.accept_bi().await.unwrap();
    let mut got = Vec::new();
    br.read_to_end(&mut got).await.unwrap();
    bs.write_all(&got).await.unwrap();
    bs.shutdown().await.unwrap();
    let mut back = Vec::new();
    r.read_to_end(&mut back).await.unwrap();
    assert_eq!(back, msg);
}

fn denied_reason<T>(r: Result<T>, what: &str) -> String {
    match r {
        Err(Error::Denied { reason }) => reason,
        Err(other) => panic!("{what}: expected Denied, got {other}"),
        Ok(_) => panic!("{what}: succeeded, must be denied"),
    }
}

fn only(addr: &PeerAddr, quic: bool) -> PeerAddr {
    let addrs: Vec<String> = addr
        .addrs
        .iter()
        .filter(|a| a.contains("/quic-v1") == quic)
        .cloned()
        .collect();
    assert!(
        !addrs.is_empty(),
        "{addr} has no {} address",
        if quic { "QUIC" } else { "TCP" }
    );
    PeerAddr::new(addr.id, addrs).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quic_and_tcp_both_carry_connections_without_a_key() {
    let a = node(1).await;
    let b = node(2).await;
    let mut bl = b.listen().await.unwrap();
    let full = b.local_addr();
    assert!(full.addrs.iter().any(|a| a.ends_with("/quic-v1")), "{full}");
    assert!(full.addrs.iter().any(|a| a.contains("/tcp/")), "{full}");
    for quic in [true, false] {
        let (c, d) = link_to(&a, &only(&full, quic), &mut bl).await;
        let (c, d) = (c.unwrap(), d.unwrap());
        echo(&*c, &*d, b"over one transport").await;
        c.close("done").await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_key_quic_is_off_and_quic_addresses_are_refused() {
    let psk = PreSharedKey::from_bytes([4; 32]);
    let a = node_with(1, cfg().psk(psk.clone())).await;
    assert!(!a.config().quic_enabled());
    assert!(
        a.listen_addrs()
            .iter()
            .all(|m| !m.to_string().contains("udp")),
        "a node with a pre-shared key must not listen on UDP: {:?}",
        a.listen_addrs()
    );
    let plain = node(2).await;
    let _l = plain.listen().await.unwrap();
    let quic_only = only(&plain.local_addr(), true);
    match a.connect(&quic_only).await {
        Err(Error::Invalid { reason, .. }) => assert!(reason.contains("QUIC"), "{reason}"),
        other => panic!("expected Invalid, got {:?}", other.map(|_| ())),
    }
    // Between two keyed nodes, TCP carries the connection.
    let b = node_with(3, cfg().psk(psk)).await;
    let mut bl = b.listen().await.unwrap();
    let (c, d) = link(&a, &b, &mut bl).await;
    echo(&*c.unwrap(), &*d.unwrap(), b"private network").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn native_allow_list_refuses_strangers_both_ways() {
    let strict = node_with(1, cfg().allow_list([key(2).peer_id()])).await;
    let friend = node(2).await;
    let stranger = node(3).await;
    let mut strict_l = strict.listen().await.unwrap();
    let _stranger_l = stranger.listen().await.unwrap();

    let r = timeout(STEP, stranger.connect(&strict.local_addr()))
        .await
        .unwrap();
    let why = denied_reason(r, "stranger dialing a strict node");
    assert!(why.contains("admission denied"), "{why}");
    let r = timeout(STEP, strict.connect(&stranger.local_addr()))
        .await
        .unwrap();
    let why = denied_reason(r, "strict node dialing a stranger");
    assert!(why.contains("allow-list"), "{why}");

    let (c, d) = link(&friend, &strict, &mut strict_l).await;
    let (c, d) = (c.unwrap(), d.unwrap());
    assert_eq!(d.remote_id(), friend.local_id());
    echo(&*c, &*d, b"friends talk").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn native_admission_and_the_wrapper_stack() {
    let psk = PreSharedKey::from_bytes([9; 32]);
    let policy = |n: u64, allowed: u8| {
        Admission::new(&mut rand_chacha::ChaCha20Rng::seed_from_u64(n))
            .with_psk(PreSharedKey::from_bytes([8; 32]))
            .with_allow_list([key(allowed).peer_id()])
    };
    let native = |allowed: u8| cfg().psk(psk.clone()).allow_list([key(allowed).peer_id()]);
    let a = Admitted::new(node_with(1, native(2)).await, policy(1, 2));
    let b = Admitted::new(node_with(2, native(1)).await, policy(2, 1));
    let mut bl = b.listen().await.unwrap();
    let (c, d) = link(&a, &b, &mut bl).await;
    echo(&*c.unwrap(), &*d.unwrap(), b"through both layers").await;

    // A node with both keys but outside the native list is refused by
    // libp2p before the wrapper's handshake starts.
    let c3 = Admitted::new(node_with(3, cfg().psk(psk)).await, policy(3, 2));
    let r = timeout(STEP, c3.connect(&b.local_addr())).await.unwrap();
    denied_reason(r, "node outside the native allow-list");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_limits_refuse_peers_beyond_them() {
    let mut c = cfg();
    c.max_incoming_connections = 1;
    let b = node_with(1, c).await;
    let mut bl = b.listen().await.unwrap();
    let first = node(2).await;
    let (x, y) = link(&first, &b, &mut bl).await;
    let (x, y) = (x.unwrap(), y.unwrap());
    let second = node(3).await;
    let r = timeout(STEP, second.connect(&b.local_addr()))
        .await
        .unwrap();
    let why = denied_reason(r, "peer beyond the incoming connection limit");
    assert!(why.contains("connection limit"), "{why}");
    // The first peer is unaffected, and more SDK connections from it share
    // its libp2p connection, so the limit does not count them.
    echo(&*x, &*y, b"still fine").await;
    let (x2, y2) = link(&first, &b, &mut bl).await;
    echo(&*x2.unwrap(), &*y2.unwrap(), b"second session").await;
}

/// Addresses in libp2p's notation (multiaddrs): what `local_addr` lists,
/// what a dial refuses and why; bind settings that cannot work are named.
/// (Text round trip, self-dials and unknown ids: the conformance suite.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multiaddrs_are_listed_and_checked_and_bad_settings_named() {
    let a = node(1).await;
    let addr = a.local_addr();
    assert!(
        addr.addrs
            .iter()
            .any(|s| s.starts_with("/ip4/127.0.0.1/tcp/")),
        "local_addr must list the loopback TCP address: {addr}"
    );
    assert!(addr.addrs.iter().all(|s| !s.contains("/p2p/")), "{addr}");

    let bad = PeerAddr::new(key(2).peer_id(), ["127.0.0.1:4001"]).unwrap();
    match a.connect(&bad).await {
        Err(Error::Invalid { reason, .. }) => assert!(reason.contains("127.0.0.1:4001")),
        other => panic!("expected Invalid, got {:?}", other.map(|_| ())),
    }
    match a.connect(&PeerAddr::id_only(key(2).peer_id())).await {
        Err(Error::Unreachable { reason }) => assert!(reason.contains("no address"), "{reason}"),
        other => panic!("expected Unreachable, got {:?}", other.map(|_| ())),
    }
    let e = Libp2pProvider::bind(
        &key(3),
        Libp2pConfig::loopback().idle_timeout(Duration::ZERO),
    )
    .await
    .unwrap_err();
    assert!(e.to_string().contains("idle_timeout"), "{e}");
    // The TCP port a listens on is taken.
    let port = a
        .listen_addrs()
        .iter()
        .find_map(|m| {
            m.iter().find_map(|p| match p {
                libp2p::multiaddr::Protocol::Tcp(port) => Some(port),
                _ => None,
            })
        })
        .unwrap();
    let taken: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let e = Libp2pProvider::bind(
        &key(4),
        Libp2pConfig::default().mdns(false).quic(false).bind(taken),
    )
    .await
    .unwrap_err();
    assert!(e.to_string().contains("bind_addrs"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_connection_outlives_the_idle_timeout() {
    let c = cfg().idle_timeout(Duration::from_millis(300));
    let a = node_with(1, c.clone()).await;
    let b = node_with(2, c).await;
    let mut bl = b.listen().await.unwrap();
    let (ab, ba) = link(&a, &b, &mut bl).await;
    let (ab, ba) = (ab.unwrap(), ba.unwrap());
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(ab.is_connected() && ba.is_connected());
    echo(&*ab, &*ba, b"still here").await;
}

/// Three peers open 40 streams each at once towards one node: every stream
/// arrives, on the right connection, although libp2p-stream drops
/// inbound streams while its hand-off is busy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bursts_of_streams_from_many_peers_all_arrive() {
    bursts_from_many_peers().await;
}

/// The same on one thread, where the task that takes streams from
/// libp2p-stream cannot run between two streams the swarm hands over.
#[tokio::test]
async fn bursts_of_streams_from_many_peers_all_arrive_on_one_thread() {
    bursts_from_many_peers().await;
}

async fn bursts_from_many_peers() {
    const STREAMS: usize = 40;
    let hub = Arc::new(node(1).await);
    let mut hl = hub.listen().await.unwrap();
    let mut pairs = Vec::new();
    for n in 2..5u8 {
        let p = node(n).await;
        let (c, d) = link(&p, &*hub, &mut hl).await;
        pairs.push((p, c.unwrap(), d.unwrap()));
    }
    let mut tasks = Vec::new();
    for (i, (_, c, d)) in pairs.iter().enumerate() {
        let (c, d) = (c.clone(), d.clone());
        tasks.push(tokio::spawn(async move {
            let server = {
                let d = d.clone();
                tokio::spawn(async move {
                    for _ in 0..STREAMS {
                        let (mut s, mut r) = d.accept_bi().await.unwrap();
                        tokio::spawn(async move {
                            let mut got = Vec::new();
                            r.read_to_end(&mut got).await.unwrap();
                            s.write_all(&got).await.unwrap();
                            s.shutdown().await.unwrap();
                        });
                    }
                })
            };
            let clients: Vec<_> = (0..STREAMS)
                .map(|j| {
                    let c = c.clone();
                    tokio::spawn(async move {
                        let msg = format!("peer {i} stream {j}");
                        let (mut s, mut r) = c.open_bi().await.unwrap();
                        s.write_all(msg.as_bytes()).await.unwrap();
                        s.shutdown().await.unwrap();
                        let mut back = String::new();
                        r.read_to_string(&mut back).await.unwrap();
                        assert_eq!(back, msg);
                    })
                })
                .collect();
            for c in clients {
                c.await.unwrap();
            }
            server.await.unwrap();
        }));
    }
    timeout(Duration::from_secs(60), async {
        for t in tasks {
            t.await.unwrap();
        }
    })
    .await
    .expect("all streams within a minute");
}

/// Streams nobody accepts do not break the connection: past the peer's
/// accept queue `open_bi` waits for room, one connection's waiting opens
/// are capped so other connections to the same peer keep working, and
/// everything completes once the peer accepts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unaccepted_streams_wait_for_room_instead_of_breaking_the_connection() {
    let mut c = cfg();
    c.max_concurrent_streams = 8; // queue and waiting opens: 2 per connection
    let a = node_with(1, c.clone()).await;
    let b = node_with(2, c).await;
    let mut bl = b.listen().await.unwrap();
    let (ab, ba) = link(&a, &b, &mut bl).await;
    let (ab, ba) = (ab.unwrap(), ba.unwrap());
    let mut held = Vec::new();
    for _ in 0..2 {
        held.push(timeout(STEP, ab.open_bi()).await.unwrap().unwrap());
    }
    // Three more wait: two for room in b's queue, one for its turn.
    let waiting: Vec<_> = (0..3)
        .map(|_| {
            let ab = ab.clone();
            tokio::spawn(async move { ab.open_bi().await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        waiting.iter().all(|w| !w.is_finished()),
        "open_bi must wait for room"
    );
    // Meanwhile a second connection to the same peer still opens streams.
    let (ab2, ba2) = link(&a, &b, &mut bl).await;
    echo(&*ab2.unwrap(), &*ba2.unwrap(), b"not blocked").await;
    // b accepts: the waiting opens complete, nothing was lost.
    for _ in 0..5 {
        timeout(STEP, ba.accept_bi()).await.unwrap().unwrap();
    }
    for w in waiting {
        timeout(STEP, w).await.unwrap().unwrap().unwrap();
    }
    assert!(ab.is_connected() && ba.is_connected());
    echo(&*ab, &*ba, b"connection intact").await;
}

/// Dropping a send half without `shutdown` finishes the stream: the peer
/// reads to the end while this side still holds the receive half.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_a_send_half_finishes_the_stream() {
    let a = node(1).await;
    let b = node(2).await;
    let mut bl = b.listen().await.unwrap();
    let (ab, ba) = link(&a, &b, &mut bl).await;
    let (ab, ba) = (ab.unwrap(), ba.unwrap());
    let (mut s, mut r) = ab.open_bi().await.unwrap();
    s.write_all(b"request").await.unwrap();
    s.flush().await.unwrap();
    drop(s);
    let (mut bs, mut br) = timeout(STEP, ba.accept_bi()).await.unwrap().unwrap();
    let mut got = Vec::new();
    timeout(STEP, br.read_to_end(&mut got))
        .await
        .expect("the peer must see the end of a dropped send half")
        .unwrap();
    assert_eq!(got, b"request");
    bs.write_all(b"reply").await.unwrap();
    bs.shutdown().await.unwrap();
    let mut reply = Vec::new();
    r.read_to_end(&mut reply).await.unwrap();
    assert_eq!(reply, b"reply");
}

/// A connection closed while the listener is not looking is never yielded
/// after close; `accept` reports the close at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accept_after_close_reports_closed_even_with_a_backlog() {
    let a = node(1).await;
    let b = node(2).await;
    let mut bl = b.listen().await.unwrap();
    // Two connections wait in b's backlog.
    let c1 = timeout(STEP, a.connect(&b.local_addr()))
        .await
        .unwrap()
        .unwrap();
    let c2 = timeout(STEP, a.connect(&b.local_addr()))
        .await
        .unwrap()
        .unwrap();
    b.close("going away").await;
    match timeout(STEP, bl.accept()).await.unwrap() {
        Err(Error::Closed { reason }) => assert!(reason.contains("going away"), "{reason}"),
        other => panic!("expected Closed, got {:?}", other.map(|c| c.remote_id())),
    }
    for c in [c1, c2] {
        let e = timeout(STEP, c.accept_bi()).await.unwrap().err().unwrap();
        assert!(matches!(e, Error::Closed { .. }), "{e}");
    }
}

/// Dropping the listener closes the connections still in its backlog, and
/// their dialers hear of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_listener_closes_its_backlog() {
    let a = node(1).await;
    let b = node(2).await;
    let bl = b.listen().await.unwrap();
    let c = timeout(STEP, a.connect(&b.local_addr()))
        .await
        .unwrap()
        .unwrap();
    drop(bl);
    let e = timeout(STEP, c.accept_bi()).await.unwrap().err().unwrap();
    assert!(matches!(e, Error::Closed { .. }), "{e}");
}

/// An `open_bi` given up while it waits for room (here under a timeout)
/// leaves nothing behind: the peer never yields the abandoned stream, and
/// this node's stream budget is whole again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abandoned_opens_leave_no_ghost_streams_or_lost_budget() {
    let mut c = cfg();
    c.max_concurrent_streams = 8; // queue of 2 per connection
    let a = node_with(1, c.clone()).await;
    let b = node_with(2, c).await;
    let mut bl = b.listen().await.unwrap();
    let (ab, ba) = link(&a, &b, &mut bl).await;
    let (ab, ba) = (ab.unwrap(), ba.unwrap());
    let mut held = Vec::new();
    for _ in 0..2 {
        held.push(ab.open_bi().await.unwrap());
    }
    for _ in 0..20 {
        let r = timeout(Duration::from_millis(50), ab.open_bi()).await;
        assert!(r.is_err(), "the queue is full: open_bi must wait");
    }
    // Give the peer time to notice the abandoned streams.
    tokio::time::sleep(Duration::from_millis(500)).await;
    for _ in 0..2 {
        timeout(STEP, ba.accept_bi()).await.unwrap().unwrap();
    }
    let ghost = timeout(Duration::from_millis(500), ba.accept_bi()).await;
    assert!(ghost.is_err(), "an abandoned stream was yielded");
    drop(held);
    // The budget is whole: a full queue's worth opens at once again.
    for _ in 0..2 {
        timeout(STEP, ab.open_bi()).await.unwrap().unwrap();
    }
    for _ in 0..2 {
        timeout(STEP, ba.accept_bi()).await.unwrap().unwrap();
    }
    timeout(STEP, echo(&*ab, &*ba, b"after the storm"))
        .await
        .unwrap();
}
