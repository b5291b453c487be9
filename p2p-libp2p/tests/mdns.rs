//! Two libp2p providers find each other by mDNS and connect by id alone,
//! in two network namespaces (see `p2p_core::conformance::mdns`; skipped
//! with a printed reason where namespaces cannot be made).

use std::time::Duration;

use p2p_core::conformance::mdns::{MdnsTest, run};
use p2p_libp2p::{Libp2pConfig, Libp2pProvider};

#[test]
fn two_providers_discover_each_other_and_connect_by_id() {
    let t = MdnsTest {
        test_name: "two_providers_discover_each_other_and_connect_by_id",
        role_var: "P2P_LIBP2P_MDNS_ROLE",
        prefix: "p2pl",
        subnet: 214,
    };
    run(&t, |key| async move {
        let cfg = Libp2pConfig::default()
            .mdns(true)
            .connect_timeout(Duration::from_secs(10));
        Libp2pProvider::bind(&key, cfg)
            .await
            .expect("bind libp2p provider")
    });
}
