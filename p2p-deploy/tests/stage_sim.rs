//! Staging (preheating) on the simulator: a release spread to the nodes'
//! chunk stores without being activated, then deployed with nothing left
//! to move; refused where a deploy would be.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::time::Duration;

use p2p_deploy::{NodeResult, Progress, RolloutPlan};
use p2p_testkit::{Fleet, Node, block_on};

fn stage_plan() -> RolloutPlan {
    RolloutPlan {
        stage: true,
        ..RolloutPlan::default()
    }
}

#[test]
fn a_staged_release_is_held_not_run_and_its_deploy_moves_nothing() {
    block_on(async {
        let fleet = Fleet::builder(31)
            .nodes(12, |i| Node::new(format!("n{i:02}")).mbit(20))
            .build();
        let v1 = fleet.release("web", "1.0.0", 64 << 10);
        assert!(
            fleet
                .deploy(&v1, "", &RolloutPlan::default())
                .await
                .is_success()
        );
        let v2 = fleet.release("web", "2.0.0", 4 << 20);
        let staged = fleet.deploy(&v2, "", &stage_plan()).await;
        assert!(staged.is_success(), "{staged}");
        assert!(
            staged.results().values().all(|r| **r == NodeResult::Staged),
            "{staged}"
        );
        // Held, not installed, not running.
        for (name, running) in fleet.running("web").await {
            assert_eq!(running.as_deref(), Some("1.0.0"), "{name}");
        }
        let ctl_sent = fleet.net().traffic("ctl").unwrap().sent;
        // The deploy: every node says it held the whole release already,
        // and the controller sends next to nothing.
        let mut held: BTreeMap<String, (u64, u64)> = BTreeMap::new();
        let deployed = fleet
            .deploy_with(&v2, "", &RolloutPlan::default(), |p| {
                if let Progress::AlreadyHeld { node, bytes, total } = p {
                    held.insert(fleet.name_of(node), (*bytes, *total));
                }
            })
            .await;
        assert!(deployed.is_success(), "{deployed}");
        assert_eq!(held.len(), 12, "{held:?}");
        assert!(held.values().all(|(b, t)| b == t && *t > 0), "{held:?}");
        let sent = fleet.net().traffic("ctl").unwrap().sent - ctl_sent;
        assert!(
            sent < 512 << 10,
            "the controller sent {sent} bytes for a staged 4 MiB release"
        );
        for (name, running) in fleet.running("web").await {
            assert_eq!(running.as_deref(), Some("2.0.0"), "{name}");
        }
    });
}

#[test]
fn a_deploy_of_an_unstaged_release_says_nothing_was_held() {
    block_on(async {
        let fleet = Fleet::builder(32)
            .nodes(3, |i| Node::new(format!("n{i}")))
            .build();
        let v1 = fleet.release("web", "1.0.0", 256 << 10);
        let mut held = Vec::new();
        let r = fleet
            .deploy_with(&v1, "", &RolloutPlan::default(), |p| {
                if let Progress::AlreadyHeld { bytes, .. } = p {
                    held.push(*bytes);
                }
            })
            .await;
        assert!(r.is_success(), "{r}");
        assert_eq!(held, vec![0, 0, 0]);
    });
}

#[test]
fn staging_is_refused_where_a_deploy_would_be() {
    block_on(async {
        let fleet = Fleet::builder(33)
            .nodes(2, |i| Node::new(format!("n{i}")))
            .build();
        let v2 = fleet.release("web", "2.0.0", 64 << 10);
        assert!(
            fleet
                .deploy(&v2, "", &RolloutPlan::default())
                .await
                .is_success()
        );
        // A lower version: the anti-downgrade rule.
        let v1 = fleet.release("web", "1.0.0", 64 << 10);
        let r = fleet.deploy(&v1, "", &stage_plan()).await;
        assert!(!r.is_success());
        for (name, result) in r.results() {
            let NodeResult::Failed { error } = result else {
                panic!("{name}: {result:?}");
            };
            assert!(error.contains("1.0.0"), "{error}");
        }
        // Signed by a key the nodes do not trust.
        let other = p2p_core::Ed25519Signer::from_seed(&[5; 32]);
        let stranger = p2p_testkit::RandomRelease::new("web", "3.0.0", 64 << 10).sign(&other);
        let r = fleet.deploy(&stranger, "", &stage_plan()).await;
        for (name, result) in r.results() {
            let NodeResult::Failed { error } = result else {
                panic!("{name}: {result:?}");
            };
            assert!(error.contains("trust"), "{error}");
        }
        fleet.run_for(Duration::from_secs(1)).await;
        for (name, running) in fleet.running("web").await {
            assert_eq!(running.as_deref(), Some("2.0.0"), "{name}");
        }
    });
}
