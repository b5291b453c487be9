//! The transport conformance suite on the simulator: plain, and through the
//! admission wrapper. Runs in paused virtual time.

use async_trait::async_trait;
use p2p_core::conformance::{AdmittedNet, TestNet};
use p2p_core::{NodeKey, PeerAddr, PeerId};
use p2p_sim::{SimNet, SimProvider};

/// One simulated network per test; nodes are named after their keys so a
/// second `node()` with the same key restarts the same node.
struct SimTestNet {
    net: SimNet,
}

impl SimTestNet {
    fn new() -> Self {
        SimTestNet {
            net: SimNet::new(0xC0FFEE),
        }
    }
}

#[async_trait]
impl TestNet for SimTestNet {
    type Node = SimProvider;

    async fn node(&self, key: NodeKey) -> SimProvider {
        let name = format!("n-{}", key.peer_id().short());
        if self.net.node_names().contains(&name) {
            self.net.restart(&name).expect("restart simulated node")
        } else {
            self.net
                .add_node_with(&name, p2p_sim::NodeConfig::default().with_key(key))
                .expect("add simulated node")
        }
    }

    async fn unreachable_addr(&self, id: PeerId) -> PeerAddr {
        // A node that exists but is down: nobody answers, so the dial must
        // give up on its own (connect timeout).
        let name = format!("down-{}", id.short());
        let key = NodeKey::from_seed([0xdd; 32]);
        self.net
            .add_node_with(&name, p2p_sim::NodeConfig::default().with_key(key))
            .expect("add node");
        self.net.crash(&name).expect("crash node");
        PeerAddr::new(self.net.peer_id(&name).expect("id"), [name]).expect("addr")
    }

    fn provider_drop_closes(&self) -> bool {
        // A SimProvider is a handle to a node the network owns: the node
        // runs until it is closed, crashed or removed.
        false
    }

    fn dialing_itself_is_refused(&self) -> bool {
        // A simulated node reaches itself like any other node.
        false
    }
}

mod plain {
    use super::*;
    p2p_core::conformance_tests!(SimTestNet::new(), #[tokio::test(start_paused = true)]);
}

mod admitted {
    use super::*;
    p2p_core::conformance_tests!(AdmittedNet::new(SimTestNet::new()), #[tokio::test(start_paused = true)]);
}
