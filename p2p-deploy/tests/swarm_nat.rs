//! The swarm through NAT, on the simulator: 200 agents, 30% of them
//! behind a NAT nothing gets through (relay-only: every connection with
//! another NATed node goes through the fleet's relay; outbound ones to
//! public nodes are direct), 30% behind a NAT that hole punching gets
//! through, 40% public. The relay is a node with its own 100 Mbit/s. The
//! rollout completes, and the relay-only agents take most of their chunks
//! over direct paths: the relay carries well under one copy of the
//! release per relay-only agent.
//!
//! The figure (`relay share`: relay bytes over release size x relay-only
//! agents) is printed; `cargo test -p p2p-deploy --test swarm_nat --
//! --nocapture` shows it.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use p2p_core::{PeerAddr, Provider};
use p2p_deploy::{
    AgentConfig, Controller, ControllerConfig, NodeResult, Plan, RolloutPlan, Selector, TrustStore,
};
use p2p_sim::{LinkSpec, NodeConfig, Reach, SimNet};
use tokio::sync::mpsc;

mod common;
use common::{publisher, release_of, spawn_agent_on};

const AGENTS: usize = 200;
const SIZE: usize = 8 << 20;

#[tokio::test(start_paused = true)]
async fn relay_only_agents_take_most_chunks_from_direct_peers() {
    let net = SimNet::builder(2026)
        .default_link(LinkSpec::latency(Duration::from_millis(10)))
        .build();
    net.add_node_with("relay", NodeConfig::default().mbit(100))
        .unwrap();
    let mut names = Vec::new();
    let mut relay_only = 0;
    for i in 0..AGENTS {
        let name = format!("a{i:03}");
        // Every tenth agent's kind repeats: 3 relay-only, 3 punchable, 4
        // public.
        let reach = match i % 10 {
            0..=2 => {
                relay_only += 1;
                Reach::RelayOnly {
                    relay: "relay".into(),
                }
            }
            3..=5 => Reach::Punchable {
                relay: "relay".into(),
            },
            _ => Reach::Public,
        };
        let mut cfg = AgentConfig::new(TrustStore::new([publisher().key_id()]));
        cfg.name = name.clone();
        spawn_agent_on(
            &net,
            &name,
            NodeConfig::default().mbit(100).reach(reach),
            cfg,
        );
        names.push(name);
    }
    let ctl_node = net
        .add_node_with("ctl", NodeConfig::default().mbit(100))
        .unwrap();
    let bootstrap: Vec<PeerAddr> = names
        .iter()
        .map(|n| net.provider(n).unwrap().local_addr())
        .collect();
    let ctl = Controller::new(
        Arc::new(ctl_node),
        ControllerConfig {
            bootstrap,
            ..ControllerConfig::default()
        },
    );
    let release = release_of("app", "1.0.0", SIZE).await;
    let views = ctl.nodes().await;
    let every: Selector = "".parse().unwrap();
    let targets = Controller::select(&views, Some(&every), &[]).unwrap();
    assert_eq!(targets.len(), AGENTS);
    let before = net.traffic("relay").unwrap();
    let begun = tokio::time::Instant::now();
    let (tx, _) = mpsc::channel(1);
    let plan = RolloutPlan {
        plan: Plan::All,
        ..RolloutPlan::default()
    };
    let report = ctl.deploy(release, &targets, &plan, tx).await;
    assert!(report.is_success(), "{report:?}");
    assert!(
        report
            .nodes
            .values()
            .all(|r| matches!(r, NodeResult::Activated)),
        "{report:?}"
    );
    let took = begun.elapsed();
    let relayed = net.traffic("relay").unwrap().sent - before.sent;
    let share = relayed as f64 / (SIZE as f64 * relay_only as f64);
    println!(
        "swarm through NAT: {AGENTS} agents, {relay_only} relay-only: rollout {:.1} s of virtual \
         time, the relay carried {:.1} MB, relay share {share:.2} of one release per relay-only agent",
        took.as_secs_f64(),
        relayed as f64 / 1e6
    );
    // Most of what relay-only agents get comes over direct paths: the
    // relay carries well under a quarter of a release each (0.05 here).
    assert!(share < 0.25, "relay share {share:.2}");
}
