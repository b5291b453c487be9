//! Circuit relays on loopback: a node reserves a slot on a relay and its
//! address then carries the circuit; a peer that knows it by id alone
//! reaches it through the relay, and hole punching moves the connection to
//! a direct path; the pre-shared key holds through the relay; a relay that
//! cannot be reached is reported, named, while direct paths keep working.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use p2p_core::{Error, NodeKey, PathKind, PeerAddr, PreSharedKey, Provider};
use p2p_libp2p::{Libp2pConfig, Libp2pProvider};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const STEP: Duration = Duration::from_secs(20);

fn key(n: u8) -> NodeKey {
    NodeKey::from_seed([n; 32])
}

fn cfg() -> Libp2pConfig {
    Libp2pConfig::loopback()
        .quic(false)
        .connect_timeout(Duration::from_secs(8))
}

async fn relay_node(n: u8, psk: Option<&PreSharedKey>) -> Libp2pProvider {
    let mut c = cfg().relay_server(true);
    if let Some(k) = psk {
        c = c.psk(k.clone());
    }
    Libp2pProvider::bind(&key(n), c).await.unwrap()
}

async fn behind(n: u8, relay: &Libp2pProvider, psk: Option<&PreSharedKey>) -> Libp2pProvider {
    let mut c = cfg().relays([relay.local_addr()]);
    if let Some(k) = psk {
        c = c.psk(k.clone());
    }
    Libp2pProvider::bind(&key(n), c).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_known_by_id_alone_is_reached_through_its_relay_then_directly() {
    let psk = PreSharedKey::from_bytes([9; 32]);
    let relay = relay_node(1, Some(&psk)).await;
    let a = behind(2, &relay, Some(&psk)).await;
    let b = behind(3, &relay, Some(&psk)).await;
    assert!(a.wait_for_relay(STEP).await, "{:?}", a.relay_reports());
    let circuit = a
        .local_addr()
        .addrs
        .into_iter()
        .find(|x| x.contains("p2p-circuit"))
        .unwrap_or_else(|| panic!("no circuit address in {}", a.local_addr()));
    assert!(circuit.contains(&p2p_libp2p::addr::to_libp2p(&relay.local_id()).to_string()));

    let mut l = a.listen().await.unwrap();
    // Only the circuit: the connection must go through the relay.
    let through = PeerAddr::new(a.local_id(), [circuit.clone()]).unwrap();
    let (dialed, accepted) = tokio::time::timeout(STEP, async {
        tokio::join!(b.connect(&through), l.accept())
    })
    .await
    .unwrap();
    let (dialed, accepted) = (dialed.unwrap(), accepted.unwrap());
    let (mut send, _r) = dialed.open_bi().await.unwrap();
    send.write_all(b"hello").await.unwrap();
    send.shutdown().await.unwrap();
    let (_s, mut recv) = accepted.accept_bi().await.unwrap();
    let mut got = Vec::new();
    recv.read_to_end(&mut got).await.unwrap();
    assert_eq!(got, b"hello");
    // Hole punching (trivial on one host) makes the path direct.
    let begun = tokio::time::Instant::now();
    while dialed.path().kind != PathKind::Direct {
        assert!(begun.elapsed() < STEP, "never direct: {}", dialed.path());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // By id alone: through the relay B knows.
    drop(dialed);
    let c = behind(4, &relay, Some(&psk)).await;
    let by_id = PeerAddr::id_only(a.local_id());
    let (dialed, accepted) =
        tokio::time::timeout(STEP, async { tokio::join!(c.connect(&by_id), l.accept()) })
            .await
            .unwrap();
    dialed.unwrap();
    accepted.unwrap();
    for p in [&a, &b, &c, &relay] {
        p.close("done").await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pre_shared_key_holds_through_a_relay() {
    let psk = PreSharedKey::from_bytes([5; 32]);
    let relay = relay_node(11, Some(&psk)).await;
    let a = behind(12, &relay, Some(&psk)).await;
    assert!(a.wait_for_relay(STEP).await, "{:?}", a.relay_reports());
    let _l = a.listen().await.unwrap();
    let circuit = a
        .local_addr()
        .addrs
        .into_iter()
        .filter(|x| x.contains("p2p-circuit"))
        .collect::<Vec<_>>();
    let through = PeerAddr::new(a.local_id(), circuit).unwrap();
    // Another key: not even the relay lets it in.
    let other = Libp2pProvider::bind(&key(13), cfg().psk(PreSharedKey::from_bytes([6; 32])))
        .await
        .unwrap();
    let r = tokio::time::timeout(STEP, other.connect(&through))
        .await
        .unwrap();
    assert!(
        matches!(r, Err(Error::Denied { .. } | Error::Unreachable { .. })),
        "{:?}",
        r.err()
    );
    for p in [&a, &other, &relay] {
        p.close("done").await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_relay_is_named_and_direct_paths_keep_working() {
    // A relay address where nothing listens.
    let gone = Libp2pProvider::bind(&key(21), cfg()).await.unwrap();
    let gone_addr = gone.local_addr();
    gone.close("gone").await;
    let a = Libp2pProvider::bind(
        &key(22),
        cfg()
            .relays([gone_addr.clone()])
            .connect_timeout(Duration::from_secs(3)),
    )
    .await
    .unwrap();
    let begun = tokio::time::Instant::now();
    let problem = loop {
        if let Some(p) = a.relay_reports().into_iter().find_map(|r| r.problem) {
            break p;
        }
        assert!(begun.elapsed() < STEP, "{:?}", a.relay_reports());
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(problem.contains("unreachable"), "{problem}");
    let b = Libp2pProvider::bind(&key(23), cfg()).await.unwrap();
    let mut l = a.listen().await.unwrap();
    let a_addr = a.local_addr();
    let (dialed, accepted) =
        tokio::time::timeout(STEP, async { tokio::join!(b.connect(&a_addr), l.accept()) })
            .await
            .unwrap();
    assert_eq!(dialed.unwrap().path().kind, PathKind::Direct);
    accepted.unwrap();
    a.close("done").await;
    b.close("done").await;
}

#[tokio::test]
async fn a_relay_without_an_address_is_refused_with_the_setting_named() {
    let e = Libp2pProvider::bind(
        &key(31),
        cfg().relays([PeerAddr::id_only(key(32).peer_id())]),
    )
    .await
    .err()
    .unwrap()
    .to_string();
    assert!(e.contains("relays") && e.contains("no address"), "{e}");
}
