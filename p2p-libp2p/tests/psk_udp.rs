//! With a pre-shared key the node opens no UDP socket at all: pnet cannot
//! protect QUIC, so a QUIC listener would let peers without the key finish
//! a handshake. Counted from `/proc`, in a test binary of its own so that
//! no other test's sockets are counted.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::time::Duration;

use p2p_core::{NodeKey, PreSharedKey};
use p2p_libp2p::{Libp2pConfig, Libp2pProvider};

/// Inodes of the UDP sockets this process holds, or `None` without /proc.
fn udp_sockets() -> Option<BTreeSet<u64>> {
    let mut udp_inodes = BTreeSet::new();
    for table in ["/proc/self/net/udp", "/proc/self/net/udp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            if let Some(inode) = line.split_whitespace().nth(9) {
                udp_inodes.insert(inode.parse::<u64>().ok()?);
            }
        }
    }
    let mut ours = BTreeSet::new();
    for fd in std::fs::read_dir("/proc/self/fd").ok()? {
        let Ok(target) = std::fs::read_link(fd.ok()?.path()) else {
            continue;
        };
        let t = target.to_string_lossy();
        if let Some(inode) = t.strip_prefix("socket:[").and_then(|s| s.strip_suffix(']')) {
            let inode: u64 = inode.parse().ok()?;
            if udp_inodes.contains(&inode) {
                ours.insert(inode);
            }
        }
    }
    Some(ours)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_with_a_key_opens_no_udp_socket() {
    let Some(before) = udp_sockets() else {
        println!("SKIPPED: /proc is not available to count sockets");
        return;
    };
    let cfg = Libp2pConfig::loopback()
        .connect_timeout(Duration::from_secs(5))
        .psk(PreSharedKey::from_bytes([1; 32]));
    let keyed = Libp2pProvider::bind(&NodeKey::from_seed([1; 32]), cfg)
        .await
        .unwrap();
    let with_key = udp_sockets().unwrap();
    assert_eq!(
        with_key, before,
        "a node with a pre-shared key opened UDP sockets"
    );
    // The count does see QUIC: a node without a key opens one.
    let plain = Libp2pProvider::bind(&NodeKey::from_seed([2; 32]), Libp2pConfig::loopback())
        .await
        .unwrap();
    let without_key = udp_sockets().unwrap();
    assert!(
        without_key.len() > with_key.len(),
        "a node without a key should listen on QUIC (UDP)"
    );
    drop((keyed, plain));
}
