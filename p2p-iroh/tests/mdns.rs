//! Two iroh providers find each other by mDNS and connect by id alone, in
//! two network namespaces (see `p2p_core::conformance::mdns`; skipped with
//! a printed reason where namespaces cannot be made).

use p2p_core::conformance::mdns::{MdnsTest, run};
use p2p_iroh::{IrohConfig, IrohProvider};

#[test]
fn two_providers_discover_each_other_and_connect_by_id() {
    let t = MdnsTest {
        test_name: "two_providers_discover_each_other_and_connect_by_id",
        role_var: "P2P_IROH_MDNS_ROLE",
        prefix: "p2pi",
        subnet: 213,
    };
    run(&t, |key| async move {
        let cfg = IrohConfig::default().mdns(true).mdns_service("p2p-test");
        IrohProvider::bind(&key, cfg)
            .await
            .expect("bind iroh provider")
    });
}
