//! The `fleet` example's story, checked: agents composed as `p2pd`
//! composes them (own data directory, process runtime, HTTP service with
//! an exec health check, one private network) over iroh and over libp2p,
//! and the same story on the simulator. v1 rolls out two nodes at a
//! time; v2 fails its health check, the rollout halts and every node it
//! reached is back on v1; logs come back from every node.
#![allow(clippy::unwrap_used)]

use p2p_deploy::NodeResult;
use p2p_examples::fleet::{
    RealOptions, Summary, batch_for, build_demo_app, run_real, run_sim_blocking,
};
use p2p_examples::net::Backend;

fn check(s: &Summary, nodes: usize) {
    s.check().unwrap();
    assert_eq!(s.active.len(), nodes);
    // Rolling, halting at the first failure: the first
    // batch is rolled back by the agents, the rest never touched.
    let rolled_back =
        s.v2.nodes
            .values()
            .filter(|r| matches!(r, NodeResult::RolledBack { reason } if !reason.is_empty()))
            .count();
    let skipped =
        s.v2.nodes
            .values()
            .filter(|r| **r == NodeResult::Skipped)
            .count();
    assert_eq!(rolled_back, batch_for(nodes).min(nodes), "{:?}", s.v2);
    assert_eq!(skipped, nodes - rolled_back, "{:?}", s.v2);
}

async fn real(backend: Backend) {
    let t = tempfile::tempdir().unwrap();
    let opts = RealOptions {
        nodes: 3,
        backend,
        root: t.path().to_path_buf(),
        demo_app: build_demo_app(&std::env::current_exe().unwrap()).unwrap(),
        keep: false,
    };
    let s = run_real(&opts).await.unwrap();
    check(&s, 3);
    for r in s.v2.nodes.values() {
        if let NodeResult::RolledBack { reason } = r {
            assert!(reason.contains("503"), "{backend}: {reason}");
        }
    }
    // Each node's data directory is one p2pd can run: config, key,
    // trusted publisher key, state; the address file is gone once the
    // node stopped.
    for i in 1..=3 {
        let dir = t.path().join(format!("n{i}"));
        let cfg = p2p_examples::daemon::DaemonConfig::load(&dir.join("p2pd.toml")).unwrap();
        assert_eq!(cfg.name, format!("n{i}"));
        assert!(dir.join("node.key").is_file());
        assert!(dir.join("trusted/publisher.pub").is_file());
        assert!(!dir.join("p2pd.addr").exists());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_story_over_iroh() {
    real(Backend::Iroh).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_story_over_libp2p() {
    real(Backend::Libp2p).await;
}

#[test]
fn the_story_on_the_simulator_is_deterministic() {
    let a = tempfile::tempdir().unwrap();
    let s = run_sim_blocking(20, 7, a.path()).unwrap();
    check(&s, 20);
    let b = tempfile::tempdir().unwrap();
    let again = run_sim_blocking(20, 7, b.path()).unwrap();
    assert!(s.trace_hash.is_some());
    assert_eq!(s.trace_hash, again.trace_hash, "same seed, same trace");
    let c = tempfile::tempdir().unwrap();
    let other = run_sim_blocking(20, 8, c.path()).unwrap();
    assert_ne!(
        s.trace_hash, other.trace_hash,
        "another seed, another trace"
    );
}
