//! Behaviour of the iroh provider beyond the conformance suite: the native
//! allow-list, graceful shutdown, refusals and address handling.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use p2p_core::{
    Admission, Admitted, Connection, Error, Listener, NodeKey, PeerAddr, PreSharedKey, Provider,
    Result,
};
use p2p_iroh::{IrohConfig, IrohProvider};
use rand::SeedableRng;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::timeout;

const STEP: Duration = Duration::from_secs(20);

fn key(n: u8) -> NodeKey {
    NodeKey::from_seed([n; 32])
}

fn cfg() -> IrohConfig {
    IrohConfig::loopback().connect_timeout(Duration::from_secs(5))
}

async fn node(n: u8) -> IrohProvider {
    IrohProvider::bind(&key(n), cfg()).await.unwrap()
}

async fn node_with(n: u8, c: IrohConfig) -> IrohProvider {
    IrohProvider::bind(&key(n), c).await.unwrap()
}

/// `from` dials `to` while `to`'s listener `l` accepts; both results.
async fn link(
    from: &dyn Provider,
    to: &dyn Provider,
    l: &mut Box<dyn Listener>,
) -> (Result<Arc<dyn Connection>>, Result<Arc<dyn Connection>>) {
    let addr = to.local_addr();
    timeout(STEP, async {
        tokio::join!(from.connect(&addr), l.accept())
    })
    .await
    .expect("connect and accept within the step bound")
}

fn denied_reason<T>(r: p2p_core::Result<T>, what: &str) -> String {
    match r {
        Err(Error::Denied { reason }) => reason,
        Err(other) => panic!("{what}: expected Denied, got {other}"),
        Ok(_) => panic!("{what}: succeeded, must be denied"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn native_allow_list_refuses_strangers_both_ways() {
    let strict = node_with(1, cfg().allow_list([key(2).peer_id()])).await;
    let friend = node(2).await;
    let stranger = node(3).await;
    let mut strict_l = strict.listen().await.unwrap();
    let mut stranger_l = stranger.listen().await.unwrap();

    // A stranger dialing in is refused after the handshake, and told why.
    let r = timeout(STEP, stranger.connect(&strict.local_addr()))
        .await
        .unwrap();
    let reason = denied_reason(r, "stranger dialing the strict node");
    assert!(reason.contains("allow-list"), "{reason}");
    assert!(reason.contains(&strict.local_id().short()), "{reason}");

    // The strict node will not even dial a stranger.
    let r = timeout(STEP, strict.connect(&stranger.local_addr()))
        .await
        .unwrap();
    let reason = denied_reason(r, "strict node dialing a stranger");
    assert!(reason.contains("allow-list"), "{reason}");

    // The friend gets through both ways, and the strict listener yields it
    // and nothing else.
    let (c, a) = link(&friend, &strict, &mut strict_l).await;
    c.unwrap();
    assert_eq!(a.unwrap().remote_id(), friend.local_id());
    let extra = timeout(Duration::from_secs(2), strict_l.accept()).await;
    assert!(
        extra.is_err(),
        "strict listener yielded a second connection"
    );
    let mut friend_l = friend.listen().await.unwrap();
    let (c, a) = link(&strict, &friend, &mut friend_l).await;
    c.unwrap();
    a.unwrap();
    // The stranger's listener never saw the strict node's refused dial.
    let extra = timeout(Duration::from_secs(1), stranger_l.accept()).await;
    assert!(
        extra.is_err(),
        "refused dial reached the stranger's listener"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn native_allow_list_and_admission_wrapper_stack() {
    let psk = PreSharedKey::from_bytes([9; 32]);
    let policy = |n: u64, allowed: u8| {
        Admission::new(&mut rand_chacha::ChaCha20Rng::seed_from_u64(n))
            .with_psk(psk.clone())
            .with_allow_list([key(allowed).peer_id()])
    };
    let a = Admitted::new(
        node_with(1, cfg().allow_list([key(2).peer_id()])).await,
        policy(1, 2),
    );
    let b = Admitted::new(
        node_with(2, cfg().allow_list([key(1).peer_id()])).await,
        policy(2, 1),
    );
    let mut bl = b.listen().await.unwrap();
    let (c, d) = link(&a, &b, &mut bl).await;
    let (c, d) = (c.unwrap(), d.unwrap());
    let (mut s, mut r) = c.open_bi().await.unwrap();
    s.write_all(b"through both layers").await.unwrap();
    s.shutdown().await.unwrap();
    let (_s2, mut r2) = d.accept_bi().await.unwrap();
    let mut got = Vec::new();
    r2.read_to_end(&mut got).await.unwrap();
    assert_eq!(got, b"through both layers");
    drop(r.read(&mut [0u8; 1]));

    // A third node with the key but outside both lists is refused by the
    // native hooks before admission even starts.
    let c3 = Admitted::new(node(3).await, policy(3, 2));
    let r = timeout(STEP, c3.connect(&b.local_addr())).await.unwrap();
    denied_reason(r, "node outside the native allow-list");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closing_the_provider_tells_peers_why_and_returns_promptly() {
    let a = node(1).await;
    let b = node(2).await;
    let mut bl = b.listen().await.unwrap();
    let mut al = a.listen().await.unwrap();
    let (ab, ba) = link(&a, &b, &mut bl).await;
    let (ab, ba) = (ab.unwrap(), ba.unwrap());
    // A second connection, the other way, with an open stream.
    let c = node(3).await;
    let (ca, ac) = link(&c, &a, &mut al).await;
    let (ca, _ac) = (ca.unwrap(), ac.unwrap());
    let (mut s, _r) = ca.open_bi().await.unwrap();
    s.write_all(b"x").await.unwrap();
    s.flush().await.unwrap();

    // Bounded: close_timeout (3 s) plus slack, never the idle timeout.
    timeout(Duration::from_secs(10), a.close("node a is upgrading"))
        .await
        .expect("close must return within its bound");
    for (who, conn) in [("b", &ba), ("c", &ca)] {
        let e = timeout(STEP, conn.accept_bi())
            .await
            .unwrap()
            .err()
            .unwrap();
        match e {
            Error::Closed { reason } => {
                assert!(reason.contains("node a is upgrading"), "{who}: {reason}")
            }
            other => panic!("{who}: expected Closed, got {other}"),
        }
    }
    // Our own handle reports our reason; the provider refuses new work.
    let e = ab.open_bi().await.err().unwrap();
    assert!(e.to_string().contains("node a is upgrading"), "{e}");
    let e = al.accept().await.err().unwrap();
    assert!(matches!(e, Error::Closed { .. }), "{e}");
    let e = a.connect(&b.local_addr()).await.err().unwrap();
    assert!(matches!(e, Error::Closed { .. }), "{e}");
    assert!(a.listen().await.is_err());
    // Idempotent and quick the second time.
    timeout(Duration::from_secs(1), a.close("again"))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_listener_dials_are_refused_not_hung() {
    let a = node(1).await;
    let b = node(2).await;
    let r = timeout(STEP, a.connect(&b.local_addr())).await.unwrap();
    match r {
        Err(Error::Unreachable { reason }) => {
            assert!(reason.contains("not accepting"), "{reason}")
        }
        Err(other) => panic!("expected Unreachable, got {other}"),
        Ok(_) => panic!("connected to a node without a listener"),
    }
    // One listener at a time; dropping it lets a new one start.
    let l = b.listen().await.unwrap();
    match b.listen().await {
        Err(Error::AlreadyExists { .. }) => {}
        other => panic!("second listener: {other:?}"),
    }
    drop(l);
    let mut l = b.listen().await.unwrap();
    let (c, d) = link(&a, &b, &mut l).await;
    c.unwrap();
    d.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_different_identity_at_the_address_is_an_error() {
    let a = node(1).await;
    let b = node(2).await;
    let _bl = b.listen().await.unwrap();
    let impostor = PeerAddr::new(key(7).peer_id(), b.local_addr().addrs).unwrap();
    let r = timeout(STEP, a.connect(&impostor)).await.unwrap();
    assert!(r.is_err(), "connected to the wrong identity");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn addresses_are_checked_and_printed_dialable() {
    let a = node(1).await;
    let addr = a.local_addr();
    assert_eq!(addr.id, key(1).peer_id());
    assert!(
        addr.addrs.iter().any(|s| s.starts_with("127.0.0.1:")),
        "local_addr must list the loopback socket: {addr}"
    );
    let text = addr.to_string();
    assert_eq!(text.parse::<PeerAddr>().unwrap(), addr);

    let bad = PeerAddr::new(key(2).peer_id(), ["not-an-address"]).unwrap();
    match a.connect(&bad).await {
        Err(Error::Invalid { reason, .. }) => assert!(reason.contains("not-an-address")),
        other => panic!("expected Invalid, got {other:?}"),
    }
    match a.connect(&PeerAddr::id_only(key(2).peer_id())).await {
        Err(Error::Unreachable { reason }) => assert!(reason.contains("discovery is off")),
        other => panic!("expected Unreachable, got {other:?}"),
    }
    match a.connect(&addr).await {
        Err(Error::Invalid { .. }) => {}
        other => panic!("dialing itself: {other:?}"),
    }
    let e = IrohProvider::bind(&key(3), IrohConfig::loopback().idle_timeout(Duration::ZERO))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("idle_timeout"), "{e}");
    // The port a is bound to is taken.
    let taken = a.bound_sockets()[0];
    let e = IrohProvider::bind(&key(4), IrohConfig::default().mdns(false).bind(taken))
        .await
        .unwrap_err();
    assert!(e.to_string().contains(&taken.to_string()), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_discovery_off_the_stream_waits_then_ends_on_close() {
    let a = Arc::new(node(1).await);
    let mut d = a.discovered();
    let r = timeout(Duration::from_millis(300), d.next()).await;
    assert!(r.is_err(), "discovery off must yield nothing");
    a.close("bye").await;
    let end = timeout(STEP, d.next()).await.unwrap();
    assert!(end.is_none(), "stream must end when the provider closes");
}

/// A dialer that never takes the welcome (it grants no stream credit) is
/// cut off after the connect timeout and cannot block other peers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dialer_refusing_the_welcome_cannot_block_the_acceptor() {
    use iroh::endpoint::{QuicTransportConfig, VarInt, presets};
    let mut c = cfg().connect_timeout(Duration::from_secs(2));
    c.max_pending_handshakes = 2;
    let b = node_with(2, c).await;
    let mut bl = b.listen().await.unwrap();
    let evil = iroh::Endpoint::builder(presets::Minimal)
        .relay_mode(iroh::RelayMode::Disabled)
        .clear_ip_transports()
        .bind_addr("127.0.0.1:0")
        .unwrap()
        .secret_key(iroh::SecretKey::from_bytes(&[0xee; 32]))
        .transport_config(
            QuicTransportConfig::builder()
                .max_concurrent_uni_streams(VarInt::from_u32(0))
                .build(),
        )
        .bind()
        .await
        .unwrap();
    let target = p2p_iroh::addr::to_endpoint_addr(&b.local_addr()).unwrap();
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(evil.connect(target.clone(), p2p_iroh::ALPN).await.unwrap());
    }
    // A good peer still gets in, once the stalled hand-overs time out.
    let good = node(3).await;
    let (c, a) = link(&good, &b, &mut bl).await;
    c.unwrap();
    assert_eq!(a.unwrap().remote_id(), good.local_id());
    for conn in &held {
        let e = timeout(STEP, conn.closed()).await.unwrap();
        assert!(e.to_string().contains("welcome timed out"), "{e}");
    }
    evil.close().await;
}

/// Dropping a provider without `close` still tells its peers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_provider_closes_its_connections_with_a_reason() {
    let a = node(1).await;
    let b = node(2).await;
    let mut bl = b.listen().await.unwrap();
    let (ab, ba) = link(&a, &b, &mut bl).await;
    let (ab, ba) = (ab.unwrap(), ba.unwrap());
    // The connection handle outlives the provider: only the provider's
    // drop can have closed it.
    drop(a);
    match timeout(STEP, ba.accept_bi()).await.unwrap() {
        Err(Error::Closed { reason }) => assert!(reason.contains("shut down"), "{reason}"),
        other => panic!("expected Closed, got {:?}", other.map(|_| ())),
    }
    assert!(!ab.is_connected());
}

/// The contract: when the last handle to a connection (and its streams) is
/// dropped, the connection closes and the peer notices.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_last_connection_handle_closes_it() {
    let a = node(1).await;
    let b = node(2).await;
    let mut bl = b.listen().await.unwrap();
    let (ab, ba) = link(&a, &b, &mut bl).await;
    let (ab, ba) = (ab.unwrap(), ba.unwrap());
    drop(ab);
    let r = timeout(STEP, ba.accept_bi()).await.unwrap();
    assert!(
        matches!(r, Err(Error::Closed { .. })),
        "peer must see the close"
    );
}
