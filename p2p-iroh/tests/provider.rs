//! Behaviour of the iroh provider beyond the transport conformance suite
//! (`tests/conformance.rs`, which also covers closing and dropping the
//! provider and its connections, listeners, wrong identities and
//! discovery): the native allow-list, iroh's address notation and
//! settings, and a dialer that stalls the hand-over.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

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

/// Addresses in iroh's notation (socket addresses): what `local_addr`
/// lists, what a dial refuses and why; bind settings that cannot work are
/// named. (Text round trip, self-dials and unknown ids: the conformance
/// suite.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socket_addresses_are_listed_and_checked_and_bad_settings_named() {
    let a = node(1).await;
    let addr = a.local_addr();
    assert!(
        addr.addrs.iter().any(|s| s.starts_with("127.0.0.1:")),
        "local_addr must list the loopback socket: {addr}"
    );

    let bad = PeerAddr::new(key(2).peer_id(), ["not-an-address"]).unwrap();
    match a.connect(&bad).await {
        Err(Error::Invalid { reason, .. }) => assert!(reason.contains("not-an-address")),
        other => panic!("expected Invalid, got {other:?}"),
    }
    match a.connect(&PeerAddr::id_only(key(2).peer_id())).await {
        Err(Error::Unreachable { reason }) => assert!(reason.contains("discovery is off")),
        other => panic!("expected Unreachable, got {other:?}"),
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
