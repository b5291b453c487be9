//! Membership on a simulated fleet: nodes that each know one other node
//! find the whole fleet, a controller that knows one node lists them all,
//! a partition that heals converges again, a node gone is shown
//! unreachable and then dropped, and a node back at a new address is
//! found there.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use p2p_core::Provider;
use p2p_deploy::membership::MembershipConfig;
use p2p_deploy::{Controller, ControllerConfig};
use p2p_testkit::{Fleet, Node, block_on};
use rand::{RngExt, SeedableRng};

/// `n` agents; each joins through one agent added before it, picked at
/// random (the first joins through nobody).
fn fleet(seed: u64, n: usize, cfg: MembershipConfig) -> Fleet {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    Fleet::builder(seed)
        .membership(cfg)
        .nodes(n, |i| {
            let node = Node::new(format!("n{i:04}"));
            if i == 0 {
                node
            } else {
                node.join(format!("n{:04}", rng.random_range(0..i)))
            }
        })
        .build()
}

/// A controller on its own node that knows only `agent`.
fn controller_knowing(fleet: &Fleet, name: &str, agent: &str) -> Controller {
    let provider = fleet.net().add_node(name).unwrap();
    let target = fleet.net().provider(agent).unwrap().local_addr();
    Controller::new(
        Arc::new(provider),
        ControllerConfig {
            bootstrap: vec![target],
            connect_timeout: Duration::from_secs(3),
            ..ControllerConfig::default()
        },
    )
}

/// How many of the fleet's live agents the controller's answering node
/// lists as up.
async fn seen_up(fleet: &Fleet, ctl: &Controller) -> usize {
    let m = ctl.members().await.unwrap();
    assert!(m.refused.is_empty(), "{:?}", m.refused);
    m.up()
        .filter(|m| fleet.net().is_up(&fleet.name_of(&m.record.id)))
        .count()
}

fn total_bytes(fleet: &Fleet) -> u64 {
    fleet
        .agents()
        .map(|n| fleet.net().traffic(n).unwrap().sent)
        .sum()
}

/// The scale figures of the issue: 1,000 nodes booting at once, each
/// knowing one other; a controller that knows one sees 99.9% of them
/// within 10 s; then the steady-state traffic per node.
#[test]
fn a_thousand_nodes_converge_within_seconds_and_then_stay_quiet() {
    block_on(async {
        let n = 1000;
        let fleet = fleet(7, n, MembershipConfig::default());
        let ctl = controller_knowing(&fleet, "ctl-one", "n0500");
        let mut converged = None;
        for s in 1..=30 {
            fleet.run_for(Duration::from_secs(1)).await;
            let seen = seen_up(&fleet, &ctl).await;
            println!("t={s:>2}s: the controller's node lists {seen} of {n} nodes up");
            if seen * 1000 >= n * 999 && converged.is_none() {
                converged = Some(s);
                break;
            }
        }
        let converged = converged.expect("membership did not converge within 30 s");
        assert!(
            converged <= 10,
            "99.9% of the fleet seen only after {converged} s"
        );
        // Steady state: a minute to settle, then a minute measured.
        fleet.run_for(Duration::from_secs(60)).await;
        let before = total_bytes(&fleet);
        fleet.run_for(Duration::from_secs(60)).await;
        let per_node = (total_bytes(&fleet) - before) as f64 / n as f64 / 60.0;
        println!(
            "converged (99.9%) after {converged} s; steady state: {per_node:.0} bytes/s sent per node"
        );
        assert!(per_node <= 1024.0, "{per_node:.0} bytes/s per node");
        // Every node's own view is complete too.
        let sample = fleet.net().provider("n0999").unwrap().local_addr();
        let ctl2 = controller_knowing(&fleet, "ctl-two", "n0999");
        let m = ctl2.members().await.unwrap();
        assert_eq!(m.from, sample.id);
        assert_eq!(m.up().count(), n);
    });
}

fn quick() -> MembershipConfig {
    MembershipConfig {
        forget_after: Duration::from_secs(120),
        ..MembershipConfig::default()
    }
}

#[test]
fn a_node_that_leaves_is_shown_unreachable_then_dropped() {
    block_on(async {
        let fleet = fleet(3, 30, quick());
        let ctl = controller_knowing(&fleet, "ctl-one", "n0000");
        fleet.run_for(Duration::from_secs(15)).await;
        assert_eq!(ctl.members().await.unwrap().up().count(), 30);
        let crashed_at = p2p_core::Clock::now(&fleet.net().clock()).as_millis();
        fleet.crash("n0017");
        let gone = fleet.peer_id("n0017");
        fleet.run_for(Duration::from_secs(30)).await;
        let m = ctl.members().await.unwrap();
        let member = m.members.iter().find(|m| m.record.id == gone).unwrap();
        let claim = member.down.as_ref().expect("n0017 is shown unreachable");
        assert!(
            claim.since_ms >= crashed_at && claim.since_ms <= crashed_at + 30_000,
            "unreachable since {} ms",
            claim.since_ms
        );
        assert_eq!(m.up().count(), 29);
        // Dropped after forget_after.
        fleet.run_for(Duration::from_secs(150)).await;
        let m = ctl.members().await.unwrap();
        assert!(m.members.iter().all(|m| m.record.id != gone));
        assert_eq!(m.members.len(), 29);
        // Back: found again (a newer record beats the tombstone).
        fleet.restart("n0017");
        fleet.run_for(Duration::from_secs(20)).await;
        let m = ctl.members().await.unwrap();
        assert_eq!(m.up().count(), 30, "n0017 is back");
    });
}

#[test]
fn a_healed_partition_converges_again() {
    block_on(async {
        let fleet = fleet(5, 40, quick());
        fleet.run_for(Duration::from_secs(15)).await;
        let names: Vec<String> = fleet.agents().map(String::from).collect();
        let (a, b) = names.split_at(20);
        fleet.partition(a, b);
        // Long enough for each side to mark the other unreachable.
        fleet.run_for(Duration::from_secs(60)).await;
        let ctl = controller_knowing(&fleet, "ctl-a", "n0000");
        let m = ctl.members().await.unwrap();
        assert!(
            m.up().count() <= 25,
            "one side should see the other as unreachable: {} up",
            m.up().count()
        );
        fleet.heal();
        fleet.run_for(Duration::from_secs(30)).await;
        for agent in ["n0000", "n0039"] {
            let ctl = controller_knowing(&fleet, &format!("ctl-{agent}"), agent);
            assert_eq!(ctl.members().await.unwrap().up().count(), 40, "{agent}");
        }
    });
}

#[test]
fn a_node_back_at_a_new_address_is_found_there() {
    block_on(async {
        let fleet = fleet(8, 30, quick());
        fleet.run_for(Duration::from_secs(15)).await;
        let moved = fleet.peer_id("n0012");
        fleet.crash("n0012");
        fleet.run_for(Duration::from_secs(20)).await;
        fleet.restart_at("n0012", "n0012-moved");
        fleet.run_for(Duration::from_secs(15)).await;
        for agent in ["n0000", "n0029"] {
            let ctl = controller_knowing(&fleet, &format!("ctl-{agent}"), agent);
            let m = ctl.members().await.unwrap();
            let member = m.members.iter().find(|m| m.record.id == moved).unwrap();
            assert!(member.is_up(), "{agent}: {member:?}");
            assert_eq!(member.record.addrs, ["n0012-moved"], "{agent}");
            assert_eq!(m.up().count(), 30, "{agent}");
        }
        // And reached there: the controller's request goes to the new
        // address.
        let ctl = controller_knowing(&fleet, "ctl-check", "n0000");
        ctl.members().await.unwrap();
        let views = ctl.nodes().await;
        let v = views.iter().find(|v| v.addr.id == moved).unwrap();
        assert!(v.info.is_ok(), "{v:?}");
    });
}

#[test]
fn the_same_seed_gives_the_same_run() {
    let run = |seed| {
        block_on(async move {
            let fleet = fleet(seed, 20, quick());
            fleet.run_for(Duration::from_secs(20)).await;
            fleet.trace_hash()
        })
    };
    assert_eq!(run(11), run(11));
}
