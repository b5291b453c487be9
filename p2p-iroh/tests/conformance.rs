//! The transport conformance suite on iroh over loopback: plain, and
//! through the p2p-core admission wrapper.

use std::time::Duration;

use async_trait::async_trait;
use p2p_core::conformance::{AdmittedNet, Bounds, TestNet};
use p2p_core::{NodeKey, PeerAddr, PeerId};
use p2p_iroh::{IrohConfig, IrohProvider};

struct IrohTestNet;

#[async_trait]
impl TestNet for IrohTestNet {
    type Node = IrohProvider;

    async fn node(&self, key: NodeKey) -> IrohProvider {
        let cfg = IrohConfig::loopback().connect_timeout(Duration::from_secs(5));
        IrohProvider::bind(&key, cfg)
            .await
            .expect("bind iroh provider on loopback")
    }

    async fn unreachable_addr(&self, id: PeerId) -> PeerAddr {
        // A UDP port that was just free: nobody answers QUIC there.
        let sock = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind probe socket");
        let port = sock.local_addr().expect("probe addr").port();
        drop(sock);
        PeerAddr::new(id, [format!("127.0.0.1:{port}")]).expect("addr")
    }

    fn bounds(&self) -> Bounds {
        Bounds {
            unreachable: Duration::from_secs(6),
            close_propagation: Duration::from_secs(5),
            ..Bounds::default()
        }
    }
}

mod plain {
    use super::*;
    p2p_core::conformance_tests!(IrohTestNet, #[tokio::test(flavor = "multi_thread", worker_threads = 2)]);
}

mod admitted {
    use super::*;
    p2p_core::conformance_tests!(AdmittedNet::new(IrohTestNet), #[tokio::test(flavor = "multi_thread", worker_threads = 2)]);
}
