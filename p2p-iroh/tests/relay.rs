//! Relays on loopback: a node dialed by its id and relay URL alone is
//! reached through the relay; a relay whose certificate the node does not
//! trust is reported, named, with the reason; the path a connection uses
//! is visible.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use p2p_core::{NodeKey, PathKind, PeerAddr, Provider};
use p2p_iroh::relay::{RelayHealth, certs_from_pem};
use p2p_iroh::relay_server::{RelayServer, RelayServerConfig, RelayTls};
use p2p_iroh::{Connectivity, IrohConfig, IrohProvider};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const STEP: Duration = Duration::from_secs(20);

/// A self-signed relay on 127.0.0.1 with free ports and no QUIC address
/// discovery (it would need the fixed port 7842).
async fn relay(dir: &std::path::Path) -> RelayServer {
    let mut cfg = RelayServerConfig::new(RelayTls::SelfSigned {
        names: vec!["127.0.0.1".into()],
        dir: dir.to_path_buf(),
    });
    cfg.https_addr = "127.0.0.1:0".parse().unwrap();
    cfg.http_addr = "127.0.0.1:0".parse().unwrap();
    cfg.quic_addr = None;
    RelayServer::spawn(cfg).await.unwrap()
}

fn with_relay(url: &str, cert: Option<&str>) -> IrohConfig {
    let mut c = IrohConfig::loopback()
        .connectivity(Connectivity::CustomRelays(vec![url.to_string()]))
        .connect_timeout(Duration::from_secs(8));
    if let Some(pem) = cert {
        c = c.trust_relay_certs(certs_from_pem(pem.as_bytes()).unwrap());
    }
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_known_by_id_and_relay_alone_is_reached_through_the_relay() {
    let dir = tempfile::tempdir().unwrap();
    let relay = relay(dir.path()).await;
    let url = relay.url("127.0.0.1");
    let cert = relay.cert_pem().unwrap().to_string();
    let a = IrohProvider::bind(&NodeKey::from_seed([1; 32]), with_relay(&url, Some(&cert)))
        .await
        .unwrap();
    let b = IrohProvider::bind(&NodeKey::from_seed([2; 32]), with_relay(&url, Some(&cert)))
        .await
        .unwrap();
    let home = a.wait_for_relay(STEP).await;
    assert_eq!(home.as_deref(), Some(url.as_str()), "{}", a.relay_health());
    // Its address now carries the relay.
    assert!(a.local_addr().addrs.contains(&url), "{:?}", a.local_addr());

    let mut l = a.listen().await.unwrap();
    let only_relay = PeerAddr::new(a.local_id(), [url.clone()]).unwrap();
    let (dialed, accepted) = tokio::time::timeout(STEP, async {
        tokio::join!(b.connect(&only_relay), l.accept())
    })
    .await
    .unwrap();
    let (dialed, accepted) = (dialed.unwrap(), accepted.unwrap());
    let (mut send, _recv) = dialed.open_bi().await.unwrap();
    send.write_all(b"through the relay").await.unwrap();
    send.shutdown().await.unwrap();
    let (_s, mut recv) = accepted.accept_bi().await.unwrap();
    let mut got = Vec::new();
    recv.read_to_end(&mut got).await.unwrap();
    assert_eq!(got, b"through the relay");
    // The transport says which path it uses: first the relay, then, both
    // being on one host, a direct one.
    let path = dialed.path();
    assert_ne!(path.kind, PathKind::Unknown, "{path}");
    let begun = tokio::time::Instant::now();
    while dialed.path().kind != PathKind::Direct {
        assert!(begun.elapsed() < STEP, "never direct: {}", dialed.path());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(dialed.path().rtt.is_some());

    // By id alone: at the relays this node uses.
    let c = IrohProvider::bind(&NodeKey::from_seed([9; 32]), with_relay(&url, Some(&cert)))
        .await
        .unwrap();
    let by_id = PeerAddr::id_only(a.local_id());
    let (dialed, accepted) =
        tokio::time::timeout(STEP, async { tokio::join!(c.connect(&by_id), l.accept()) })
            .await
            .unwrap();
    dialed.unwrap();
    accepted.unwrap();
    for p in [&a, &b, &c] {
        p.close("done").await;
    }
    relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_with_an_untrusted_certificate_is_named_and_direct_paths_keep_working() {
    let dir = tempfile::tempdir().unwrap();
    let relay = relay(dir.path()).await;
    let url = relay.url("127.0.0.1");
    // No relay_ca: the self-signed certificate is not trusted.
    let a = IrohProvider::bind(&NodeKey::from_seed([3; 32]), with_relay(&url, None))
        .await
        .unwrap();
    // A peer only the relay leads to: refused before any dial (not after
    // the connect timeout), saying why.
    let via_relay = PeerAddr::new(NodeKey::from_seed([8; 32]).peer_id(), [url.clone()]).unwrap();
    let e = a.connect(&via_relay).await.err().unwrap().to_string();
    assert!(
        e.contains("can only be reached through a relay")
            && e.contains("not trusted")
            && e.contains(&url),
        "{e}"
    );
    let b = IrohProvider::bind(&NodeKey::from_seed([4; 32]), IrohConfig::loopback())
        .await
        .unwrap();
    let begun = tokio::time::Instant::now();
    let why = loop {
        if let RelayHealth::Unreachable(why) = a.relay_health() {
            break why;
        }
        assert!(
            begun.elapsed() < Duration::from_secs(40),
            "{}",
            a.relay_health()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(why.contains(&url) && why.contains("not trusted"), "{why}");
    // Direct paths are unaffected.
    let mut l = a.listen().await.unwrap();
    let a_addr = a.local_addr();
    let (dialed, accepted) =
        tokio::time::timeout(STEP, async { tokio::join!(b.connect(&a_addr), l.accept()) })
            .await
            .unwrap();
    dialed.unwrap();
    accepted.unwrap();
    a.close("done").await;
    b.close("done").await;
    relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_only_address_with_relays_off_fails_at_once_and_says_why() {
    let a = IrohProvider::bind(&NodeKey::from_seed([5; 32]), IrohConfig::loopback())
        .await
        .unwrap();
    let peer = PeerAddr::new(
        NodeKey::from_seed([6; 32]).peer_id(),
        ["https://relay.example.com./"],
    )
    .unwrap();
    let e = a.connect(&peer).await.err().unwrap().to_string();
    assert!(e.contains("relay") && e.contains("relays off"), "{e}");
    a.close("done").await;
}

#[tokio::test]
async fn bad_relay_settings_are_refused_with_the_setting_named() {
    let e = IrohProvider::bind(
        &NodeKey::from_seed([7; 32]),
        IrohConfig::loopback().connectivity(Connectivity::CustomRelays(vec!["relay:443".into()])),
    )
    .await
    .err()
    .unwrap()
    .to_string();
    assert!(e.contains("relay:443"), "{e}");
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("none.pem");
    let mut cfg = RelayServerConfig::new(RelayTls::Files {
        cert: missing.clone(),
        key: missing.clone(),
    });
    cfg.https_addr = "127.0.0.1:0".parse().unwrap();
    cfg.http_addr = "127.0.0.1:0".parse().unwrap();
    cfg.quic_addr = None;
    let e = RelayServer::spawn(cfg).await.err().unwrap().to_string();
    assert!(e.contains("none.pem"), "{e}");
}
