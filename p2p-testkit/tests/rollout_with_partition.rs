//! A 200-node rolling rollout that a partition cuts in two, written as a
//! user testing their deployment would write it with the kit: zone b (30
//! nodes, the last taken) is cut off from the controller and the rest of
//! the fleet while the rollout is under way.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use p2p_deploy::{BatchSize, FailureLimit, Plan, Progress, RolloutPlan};
use p2p_testkit::{Fleet, Node, Rollout};

/// 200 agents on web 1.0.0, n170 to n199 in zone b; web 2.0.0 rolled out
/// 20 nodes at a time, tolerating `max_failures`; zone b cut off when the
/// fifth batch (of 10) begins, and healed a minute after the rollout.
async fn partitioned_rollout(seed: u64, max_failures: usize) -> (Fleet, Rollout) {
    let fleet = Fleet::builder(seed)
        .nodes(200, |i| {
            let zone = if i < 170 { "a" } else { "b" };
            Node::new(format!("n{i:03}")).label("zone", zone)
        })
        .build();
    // Small: what is under test is the rollout, not the transfer.
    let v1 = fleet.release("web", "1.0.0", 16 << 10);
    let v2 = fleet.release("web", "2.0.0", 16 << 10);
    let first = fleet.deploy(&v1, "", &RolloutPlan::default()).await;
    assert!(first.is_success(), "{first}");
    let plan = RolloutPlan {
        plan: Plan::Rolling {
            batch: BatchSize::Nodes(20),
        },
        max_failures: FailureLimit::Count(max_failures),
        ..RolloutPlan::default()
    };
    let zone_b = fleet.names("zone=b");
    let rollout = fleet
        .deploy_with(&v2, "", &plan, |p| {
            if matches!(p, Progress::Batch { index: 4, .. }) {
                fleet.cut_off(&zone_b);
            }
        })
        .await;
    fleet.run_for(Duration::from_secs(60)).await;
    fleet.heal();
    (fleet, rollout)
}

#[test]
fn a_partition_within_the_failure_limit_fails_the_cut_nodes_and_the_rest_runs_v2() {
    let trace = p2p_testkit::block_on(async {
        let (fleet, rollout) = partitioned_rollout(2026, 30).await;
        let zone_b = fleet.names("zone=b");
        assert_eq!(rollout.halted(), None, "{rollout}");
        assert_eq!(rollout.failed(), zone_b, "{rollout}");
        assert_eq!(rollout.activated().len(), 170, "{rollout}");
        let running = fleet.running("web").await;
        assert_eq!(running.len(), 200, "every node answers once healed");
        for (name, version) in &running {
            let want = if zone_b.contains(name) {
                "1.0.0"
            } else {
                "2.0.0"
            };
            assert_eq!(version.as_deref(), Some(want), "{name}");
        }
        (fleet.trace_hash(), rollout.report)
    });
    let again = p2p_testkit::block_on(async {
        let (fleet, rollout) = partitioned_rollout(2026, 30).await;
        fleet.running("web").await;
        (fleet.trace_hash(), rollout.report)
    });
    assert_eq!(trace, again, "the same seed gives the same run");
}

#[tokio::test(start_paused = true)]
async fn a_partition_past_the_failure_limit_halts_and_rolls_every_node_back() {
    let (fleet, rollout) = partitioned_rollout(2026, 5).await;
    let zone_b = fleet.names("zone=b");
    assert!(rollout.halted().is_some(), "{rollout}");
    // The ninth batch (n160 to n179) meets the cut: 10 failures, past 5.
    assert_eq!(rollout.failed(), zone_b[..10], "{rollout}");
    assert_eq!(rollout.skipped(), zone_b[10..], "{rollout}");
    assert_eq!(rollout.rolled_back().len(), 170, "{rollout}");
    let running = fleet.running("web").await;
    assert_eq!(running.len(), 200, "every node answers once healed");
    assert!(
        running.values().all(|v| v.as_deref() == Some("1.0.0")),
        "{running:?}"
    );
}
