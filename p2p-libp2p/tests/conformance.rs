//! The transport conformance suite on libp2p over loopback: plain, with
//! admission enforced natively (pnet and the allow-list behaviour), and
//! through the p2p-core admission wrapper.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use p2p_core::conformance::{AdmittedNet, Bounds, TestNet};
use p2p_core::{Admission, NodeKey, PeerAddr, PeerId, Provider};
use p2p_libp2p::{Libp2pConfig, Libp2pProvider};

/// Plain nodes; admission cases go through the p2p-core wrapper.
struct Libp2pTestNet;

fn config() -> Libp2pConfig {
    Libp2pConfig::loopback().connect_timeout(Duration::from_secs(5))
}

async fn bind(key: NodeKey, cfg: Libp2pConfig) -> Libp2pProvider {
    Libp2pProvider::bind(&key, cfg)
        .await
        .expect("bind libp2p provider on loopback")
}

fn unreachable(id: PeerId) -> PeerAddr {
    // A TCP port that was just free: the dial is refused.
    let sock = std::net::TcpListener::bind("127.0.0.1:0").expect("bind probe socket");
    let port = sock.local_addr().expect("probe addr").port();
    drop(sock);
    PeerAddr::new(id, [format!("/ip4/127.0.0.1/tcp/{port}")]).expect("addr")
}

fn bounds() -> Bounds {
    Bounds {
        unreachable: Duration::from_secs(6),
        close_propagation: Duration::from_secs(5),
        ..Bounds::default()
    }
}

#[async_trait]
impl TestNet for Libp2pTestNet {
    type Node = Libp2pProvider;

    async fn node(&self, key: NodeKey) -> Libp2pProvider {
        bind(key, config()).await
    }

    async fn unreachable_addr(&self, id: PeerId) -> PeerAddr {
        unreachable(id)
    }

    fn bounds(&self) -> Bounds {
        bounds()
    }
}

/// Admission enforced by libp2p itself: the pre-shared key through pnet,
/// the allow-list through the allow-block-list behaviour.
struct NativeNet;

#[async_trait]
impl TestNet for NativeNet {
    type Node = Libp2pProvider;

    async fn node(&self, key: NodeKey) -> Libp2pProvider {
        bind(key, config()).await
    }

    async fn node_with_admission(&self, key: NodeKey, admission: Admission) -> Arc<dyn Provider> {
        let mut cfg = config();
        cfg.psk = admission.psk().cloned();
        cfg.allow_list = admission.allow_list().cloned();
        Arc::new(bind(key, cfg).await)
    }

    async fn unreachable_addr(&self, id: PeerId) -> PeerAddr {
        unreachable(id)
    }

    fn bounds(&self) -> Bounds {
        bounds()
    }
}

mod plain {
    use super::*;
    p2p_core::conformance_tests!(Libp2pTestNet, #[tokio::test(flavor = "multi_thread", worker_threads = 2)]);
}

mod native {
    use super::*;
    p2p_core::conformance_tests!(NativeNet, #[tokio::test(flavor = "multi_thread", worker_threads = 2)]);
}

mod admitted {
    use super::*;
    p2p_core::conformance_tests!(AdmittedNet::new(Libp2pTestNet), #[tokio::test(flavor = "multi_thread", worker_threads = 2)]);
}
