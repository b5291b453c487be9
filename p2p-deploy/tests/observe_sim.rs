//! What an operator watches a fleet by, on the simulator: each node's
//! event log (what a deploy, a failed gate, a restart and a refusal
//! record; read from an index; followed across a node's crash without an
//! event lost or shown twice; bounded, and saying which events are
//! gone), the metrics an agent and a metered provider keep, and a deploy's
//! dry run (batches, bytes to move, who would refuse and why, and that it
//! changes nothing).
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use p2p_core::metrics::{Metered, Registry, encode};
use p2p_core::{PeerId, Provider};
use p2p_deploy::controller::{FleetEvent, Resume};
use p2p_deploy::events::EventKind;
use p2p_deploy::proto::{ErrorKind, Reply, Request};
use p2p_deploy::{
    Agent, AgentConfig, AgentParts, BatchSize, Controller, ControllerConfig, MemInstaller,
    NodeInfo, Plan, Release, RolloutPlan, TrustStore,
};
use p2p_sim::{LinkSpec, NodeConfig, Script, SimNet};
use tokio::sync::mpsc;

mod common;

const APP: &str = "web";
const HEALTH: &str =
    "[health]\nhttp = \"http://127.0.0.1:8080/health\"\ninterval = \"1s\"\nretries = 1\ngate = 2\n";

/// Each node's metrics registry, as of its latest start.
type Registries = Arc<Mutex<BTreeMap<String, Arc<Registry>>>>;

/// Starts an agent on `name` as `p2pd` composes one: a metered provider,
/// and the agent's metrics in the same registry.
fn spawn(net: &SimNet, name: &str, cfg: AgentConfig, registries: &Registries) {
    let registries = registries.clone();
    net.spawn_node(name, NodeConfig::default().mbit(100), move |ctx| {
        let cfg = cfg.clone();
        let registries = registries.clone();
        async move {
            let mut registry = p2p_core::metrics::new_registry();
            let provider = Metered::wrap(
                Arc::new(ctx.provider),
                registry.sub_registry_with_prefix("p2p"),
            );
            let agent = Agent::new(
                cfg,
                AgentParts {
                    provider,
                    runtime: ctx.runtime.clone(),
                    storage: Arc::new(ctx.storage),
                    installer: Arc::new(MemInstaller::new()),
                    clock: Arc::new(ctx.clock),
                    seed: ctx.seed,
                },
            );
            agent.register_metrics(registry.sub_registry_with_prefix("p2p"));
            registries
                .lock()
                .unwrap()
                .insert(ctx.name.clone(), Arc::new(registry));
            let _ = agent.run().await;
        }
    })
    .unwrap();
}

fn config(i: usize, operators: Option<BTreeSet<PeerId>>, events_kept: usize) -> AgentConfig {
    let mut cfg = AgentConfig::new(TrustStore::new([common::publisher().key_id()]));
    cfg.name = format!("n{i}");
    cfg.operators = operators;
    cfg.events_kept = events_kept;
    cfg
}

struct Lab {
    net: SimNet,
    ctl: Controller,
    targets: Vec<NodeInfo>,
    registries: Registries,
}

/// `n` agents (the first `denying` of them with an operator list that
/// leaves the controller out) and a controller whose provider is metered.
async fn lab(seed: u64, n: usize, denying: usize, events_kept: usize) -> (Lab, Registry) {
    let net = SimNet::builder(seed)
        .default_link(LinkSpec::latency(Duration::from_millis(5)))
        .build();
    let registries = Registries::default();
    let stranger: BTreeSet<PeerId> = [net.key_for("stranger").peer_id()].into();
    for i in 0..n {
        let ops = (i < denying).then(|| stranger.clone());
        spawn(
            &net,
            &format!("n{i}"),
            config(i, ops, events_kept),
            &registries,
        );
    }
    let mut ctl_registry = Registry::default();
    let p: Arc<dyn Provider> = Arc::new(
        net.add_node_with("ctl", NodeConfig::default().mbit(100))
            .unwrap(),
    );
    let p = Metered::wrap(p, &mut ctl_registry);
    let addrs = (0..n)
        .map(|i| net.provider(&format!("n{i}")).unwrap().local_addr())
        .collect();
    let ctl = Controller::new(
        p,
        ControllerConfig {
            bootstrap: addrs,
            ..ControllerConfig::default()
        },
    );
    let views = ctl.nodes().await;
    let mut targets = Controller::select(&views, None, &[]).unwrap();
    targets.sort_by(|a, b| a.name.cmp(&b.name));
    assert_eq!(targets.len(), n);
    (
        Lab {
            net,
            ctl,
            targets,
            registries,
        },
        ctl_registry,
    )
}

async fn release(version: &str, size: usize) -> Arc<Release> {
    common::release_with(APP, version, size, HEALTH).await
}

async fn deploy(lab: &Lab, r: &Arc<Release>, plan: RolloutPlan) -> p2p_deploy::RolloutReport {
    let (tx, _) = mpsc::channel(1);
    lab.ctl.deploy(r.clone(), &lab.targets, &plan, tx).await
}

/// Every event the nodes keep, per node name, after `from`.
async fn read(lab: &Lab, from: &Resume) -> (BTreeMap<String, Vec<(u64, EventKind)>>, Vec<String>) {
    let mut events: BTreeMap<String, Vec<(u64, EventKind)>> = BTreeMap::new();
    let mut failed = Vec::new();
    let mut s = lab.ctl.events(&lab.targets, from, false);
    while let Some(item) = s.next().await {
        match item {
            FleetEvent::Event { name, event, .. } => events
                .entry(name)
                .or_default()
                .push((event.index, event.kind)),
            FleetEvent::Failed { name, error, .. } => failed.push(format!("{name}: {error}")),
            other => panic!("not following, yet {other:?}"),
        }
    }
    (events, failed)
}

fn names(events: &[(u64, EventKind)]) -> Vec<&'static str> {
    events.iter().map(|(_, k)| k.name()).collect()
}

/// The value of the sample `name` (labels included, as printed) in the
/// registry's text.
fn sample(registry: &Registry, name: &str) -> Option<f64> {
    let text = encode(registry);
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

#[tokio::test(start_paused = true)]
async fn a_deploy_and_a_failed_gate_are_in_every_log_and_in_the_metrics() {
    let (lab, ctl_registry) = lab(1, 3, 0, 1000).await;
    let v1 = release("1.0.0", 300_000).await;
    assert!(deploy(&lab, &v1, RolloutPlan::default()).await.is_success());
    lab.net.scripts().set(APP, "2.0.0", Script::never_healthy());
    let v2 = release("2.0.0", 400_000).await;
    let report = deploy(&lab, &v2, RolloutPlan::default()).await;
    assert!(!report.is_success());

    let (events, failed) = read(&lab, &Resume::default()).await;
    assert!(failed.is_empty(), "{failed:?}");
    assert_eq!(events.len(), 3);
    for (node, evs) in &events {
        assert_eq!(
            names(evs),
            [
                "deploy_accepted",
                "transfer_done",
                "installed",
                "gate_passed",
                "deploy_accepted",
                "transfer_done",
                "installed",
                "gate_failed",
                "rolled_back"
            ],
            "{node}"
        );
        let idx: Vec<u64> = evs.iter().map(|(i, _)| *i).collect();
        assert_eq!(
            idx,
            (1..=9).collect::<Vec<_>>(),
            "{node}: indexes 1, 2, 3..."
        );
        match &evs[8].1 {
            EventKind::RolledBack { from, to, .. } => {
                assert_eq!(from.to_string(), "2.0.0");
                assert_eq!(
                    to.as_ref().map(ToString::to_string).as_deref(),
                    Some("1.0.0")
                );
            }
            other => panic!("{other:?}"),
        }
        match &evs[1].1 {
            EventKind::TransferDone { fetched, held, .. } => {
                assert_eq!((*fetched, *held), (v1.descriptor.archive_size, 0))
            }
            other => panic!("{other:?}"),
        }
    }

    // Read on after an index: only the later events.
    let from = Resume {
        default: 7,
        nodes: [(lab.targets[0].id, 4)].into(),
    };
    let (later, _) = read(&lab, &from).await;
    assert_eq!(later["n0"].first().map(|e| e.0), Some(5));
    assert_eq!(names(&later["n1"]), ["gate_failed", "rolled_back"]);
    // Beyond the log: refused, naming where it ends.
    let (_, failed) = read(
        &lab,
        &Resume {
            default: 50,
            ..Resume::default()
        },
    )
    .await;
    assert_eq!(failed.len(), 3);
    assert!(
        failed[0].contains("beyond") && failed[0].contains("ends at 9"),
        "{failed:?}"
    );

    // The agent's metrics (the app states are read every 2 s).
    tokio::time::sleep(Duration::from_secs(3)).await;
    let reg = lab.registries.lock().unwrap()["n1"].clone();
    let m = |name: &str| sample(&reg, name).unwrap_or_else(|| panic!("{name}:\n{}", encode(&reg)));
    assert_eq!(m("p2p_deploys_total{outcome=\"activated\"}"), 1.0);
    assert_eq!(m("p2p_deploys_total{outcome=\"rolled_back\"}"), 1.0);
    assert_eq!(m("p2p_rollbacks_total"), 1.0);
    assert_eq!(
        m("p2p_health_gate_duration_seconds_count{outcome=\"passed\"}"),
        1.0
    );
    assert_eq!(
        m("p2p_health_gate_duration_seconds_count{outcome=\"failed\"}"),
        1.0
    );
    let chunks = (v1.descriptor.chunks.len() + v2.descriptor.chunks.len()) as f64;
    assert_eq!(m("p2p_chunks_verified_total"), chunks);
    let received = sample(
        &reg,
        "p2p_chunk_bytes_total{direction=\"received\",peer=\"seed\"}",
    )
    .unwrap_or(0.0)
        + sample(
            &reg,
            "p2p_chunk_bytes_total{direction=\"received\",peer=\"peer\"}",
        )
        .unwrap_or(0.0);
    let sizes = (v1.descriptor.archive_size + v2.descriptor.archive_size) as f64;
    assert_eq!(received, sizes, "every verified chunk byte is counted once");
    assert!(m("p2p_stream_bytes_total{direction=\"received\"}") > sizes);
    assert!(m("p2p_connections_established_total{direction=\"in\"}") >= 1.0);
    assert_eq!(m("p2p_events_total{type=\"gate_failed\"}"), 1.0);
    assert_eq!(
        m("p2p_app_state{app=\"web\",version=\"1.0.0\",state=\"healthy\"}"),
        1.0
    );
    assert_eq!(m("p2p_chunk_store_bytes"), sizes);
    // The controller's metered provider: connections out, timed.
    let out = sample(
        &ctl_registry,
        "connections_established_total{direction=\"out\"}",
    )
    .unwrap();
    assert!(out >= 3.0, "{out}");
    assert_eq!(
        sample(&ctl_registry, "connect_duration_seconds_count"),
        Some(out)
    );
    let active: f64 = ["direct", "relayed", "unknown"]
        .iter()
        .filter_map(|p| {
            sample(
                &ctl_registry,
                &format!("connections_active{{path=\"{p}\"}}"),
            )
        })
        .sum();
    assert_eq!(active, 3.0, "one connection to each node");
}

#[tokio::test(start_paused = true)]
async fn restarts_failures_and_refusals_are_recorded_and_the_bound_names_what_is_gone() {
    let (lab, _) = lab(2, 2, 1, 6).await;
    // n0 refuses the controller (not an operator); n1 takes the deploy,
    // whose app exits after 20 s and is restarted by its policy.
    lab.net.scripts().set(
        APP,
        "1.0.0",
        Script::healthy().with_exit(1, Duration::from_secs(20)),
    );
    let v1 = release("1.0.0", 200_000).await;
    let plan = RolloutPlan {
        max_failures: p2p_deploy::FailureLimit::Count(1),
        ..RolloutPlan::default()
    };
    deploy(&lab, &v1, plan).await;
    tokio::time::sleep(Duration::from_secs(150)).await;
    let (events, failed) = read(&lab, &Resume::default()).await;
    assert!(failed.is_empty(), "{failed:?}");
    let n0 = &events["n0"];
    assert_eq!(names(n0), ["refused"]);
    match &n0[0].1 {
        EventKind::Refused {
            request,
            peer,
            error,
            reason,
        } => {
            assert_eq!((request.as_str(), error.as_str()), ("deploy", "denied"));
            assert_eq!(*peer, lab.net.key_for("ctl").peer_id());
            assert!(reason.contains("not an operator"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
    // n1 kept 6 events: its 4 deploy events and restarts; the oldest
    // went once more came.
    let n1 = &events["n1"];
    let restarts = n1
        .iter()
        .filter(|(_, k)| matches!(k, EventKind::AppRestarted { .. }))
        .count();
    assert!(restarts >= 2, "{n1:?}");
    assert_eq!(n1.len(), 6, "{n1:?}");
    let first = n1[0].0;
    assert!(first > 1);
    let (_, failed) = read(
        &lab,
        &Resume {
            default: 0,
            nodes: [(lab.targets[0].id, 0), (lab.targets[1].id, 0)].into(),
        },
    )
    .await;
    // Asked from 0 (the oldest kept) is fine; asked from 1, events 2..
    // are gone on n1.
    assert!(failed.is_empty(), "{failed:?}");
    let (_, failed) = read(
        &lab,
        &Resume {
            default: 1,
            nodes: BTreeMap::new(),
        },
    )
    .await;
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert!(
        failed[0].starts_with("n1:")
            && failed[0].contains(&format!("events 2..{} are gone", first - 1)),
        "{failed:?}"
    );
    let reg = lab.registries.lock().unwrap()["n1"].clone();
    assert!(sample(&reg, "p2p_app_restarts_total{app=\"web\"}").unwrap() >= restarts as f64);
}

#[tokio::test(start_paused = true)]
async fn a_follower_reads_on_after_a_node_crashes_with_nothing_lost_or_repeated() {
    let (lab, _) = lab(3, 2, 0, 1000).await;
    let v1 = release("1.0.0", 200_000).await;
    assert!(deploy(&lab, &v1, RolloutPlan::default()).await.is_success());
    let seen = Arc::new(Mutex::new(Vec::new()));
    let follow = {
        let seen = seen.clone();
        let (ctl, targets) = (&lab.ctl, &lab.targets);
        async move {
            let mut s = ctl.events(targets, &Resume::default(), true);
            while let Some(item) = s.next().await {
                seen.lock().unwrap().push(item);
            }
        }
    };
    let drive = async {
        tokio::time::sleep(Duration::from_secs(3)).await;
        // n0 goes down; while it is down n1 changes; n0 comes back (its
        // log kept) and changes too.
        lab.net.crash("n0").unwrap();
        lab.net.scripts().set(APP, "2.0.0", Script::never_healthy());
        let v2 = release("2.0.0", 250_000).await;
        let (tx, _) = mpsc::channel(1);
        lab.ctl
            .deploy(v2.clone(), &lab.targets[1..], &RolloutPlan::default(), tx)
            .await;
        lab.net.restart("n0").unwrap();
        tokio::time::sleep(Duration::from_secs(15)).await;
        let (tx, _) = mpsc::channel(1);
        lab.ctl
            .deploy(v2, &lab.targets[..1], &RolloutPlan::default(), tx)
            .await;
        tokio::time::sleep(Duration::from_secs(15)).await;
    };
    tokio::select! {
        () = follow => panic!("a follow does not end by itself"),
        () = drive => {}
    }
    let seen = seen.lock().unwrap().clone();
    let mut per_node: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    let (mut lost, mut resumed) = (0, 0);
    for item in seen.iter() {
        match item {
            FleetEvent::Event { name, event, .. } => {
                per_node.entry(name.clone()).or_default().push(event.index)
            }
            FleetEvent::Lost { name, .. } => {
                assert_eq!(name, "n0");
                lost += 1;
            }
            FleetEvent::Resumed { name, after, .. } => {
                assert_eq!((name.as_str(), *after), ("n0", 4));
                resumed += 1;
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!((lost, resumed), (1, 1), "{seen:?}");
    // v1's 4 events, then v2's 5 (a failed gate and a rollback) on each.
    for (node, idx) in &per_node {
        assert_eq!(idx, &(1..=9).collect::<Vec<_>>(), "{node}: {seen:?}");
    }
    assert_eq!(per_node.len(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_dry_run_shows_batches_bytes_and_refusals_and_changes_nothing() {
    let (lab, _) = lab(4, 4, 1, 1000).await;
    let v1 = release("1.0.0", 300_000).await;
    // n0 refuses; the other three take v1.
    let plan = RolloutPlan {
        max_failures: p2p_deploy::FailureLimit::Count(1),
        ..RolloutPlan::default()
    };
    deploy(&lab, &v1, plan).await;
    let v2 = release("2.0.0", 500_000).await;
    let rolling = RolloutPlan {
        plan: Plan::Rolling {
            batch: BatchSize::Nodes(2),
        },
        ..RolloutPlan::default()
    };
    let before = read(&lab, &Resume::default()).await;
    let run = lab.ctl.dry_run(v2.clone(), &lab.targets, &rolling).await;
    assert_eq!(run.batches.len(), 2);
    assert_eq!(run.batches.iter().map(Vec::len).collect::<Vec<_>>(), [2, 2]);
    let n0 = &run.batches[0][0];
    assert_eq!(n0.name, "n0");
    let refusal = n0.plan.as_ref().unwrap().refusal.clone().unwrap();
    assert_eq!(refusal.kind, ErrorKind::Denied);
    assert!(refusal.message.contains("not an operator"), "{refusal}");
    for n in run.batches.iter().flatten().skip(1) {
        let p = n.plan.as_ref().unwrap();
        assert!(p.refusal.is_none(), "{n:?}");
        assert_eq!(
            p.active.as_ref().map(ToString::to_string).as_deref(),
            Some("1.0.0")
        );
        assert_eq!(p.missing_bytes + p.held_bytes, v2.descriptor.archive_size);
        assert_eq!(p.missing_chunks as usize, v2.descriptor.chunks.len());
    }
    // One failure allowed by default is none: the rollout would halt
    // after the first batch.
    assert_eq!(run.failing(), 1);
    assert_eq!(run.halts_after, Some(0));
    let why = run.halt_reason.as_deref().unwrap();
    assert!(
        why.contains("1 node(s) would fail, more than the 0 allowed: n0"),
        "{why}"
    );
    assert_eq!(run.bytes_to_move(), 3 * v2.descriptor.archive_size);

    // Nothing changed: no node holds v2, no event was recorded.
    for t in &lab.targets {
        match lab.ctl.request(&t.addr, Request::Catalog).await.unwrap() {
            Reply::Catalog(c) => assert!(c.iter().all(|e| e.version.to_string() != "2.0.0")),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(read(&lab, &Resume::default()).await, before);

    // A downgrade, and the release already active.
    let v0 = release("0.9.0", 300_000).await;
    let run = lab.ctl.dry_run(v0, &lab.targets[1..], &rolling).await;
    for n in run.batches.iter().flatten() {
        let r = n.plan.as_ref().unwrap().refusal.as_ref().unwrap();
        assert_eq!(r.kind, ErrorKind::Downgrade, "{r}");
    }
    let run = lab.ctl.dry_run(v1, &lab.targets[1..], &rolling).await;
    for n in run.batches.iter().flatten() {
        let p = n.plan.as_ref().unwrap();
        assert!(
            p.already_active && p.refusal.is_none() && p.missing_bytes == 0,
            "{p:?}"
        );
    }
    // A node that is down would fail, as in a deploy.
    lab.net.crash("n3").unwrap();
    let run = lab.ctl.dry_run(v2, &lab.targets[1..], &rolling).await;
    let n3 = run
        .batches
        .iter()
        .flatten()
        .find(|n| n.name == "n3")
        .unwrap();
    assert!(
        n3.plan.as_ref().unwrap_err().contains("did not answer"),
        "{n3:?}"
    );
}

/// A node of protocol version 3 (before event logs and plans): it answers
/// the hello, and every request with an error, as an older agent answers
/// a request it cannot decode.
fn spawn_old_node(net: &SimNet) -> NodeInfo {
    use p2p_core::framing::{Framed, ProtocolId};
    use p2p_deploy::proto::{Frame, MAX_FRAME, RpcError};
    let p = net.add_node("old").unwrap();
    let addr = p.local_addr();
    tokio::spawn(async move {
        let mut listener = p.listen().await.unwrap();
        while let Ok(conn) = listener.accept().await {
            tokio::spawn(async move {
                while let Ok((send, recv)) = conn.accept_bi().await {
                    tokio::spawn(async move {
                        let mut framed = Framed::with_max(send, recv, MAX_FRAME);
                        let old = ProtocolId {
                            max: 3,
                            ..p2p_deploy::proto::PROTOCOL
                        };
                        if framed.hello(&old).await.is_err() {
                            return;
                        }
                        let _ = framed.recv_opt::<serde_bytes::ByteBuf>().await;
                        let e = RpcError::new(ErrorKind::Invalid, "cannot decode the request");
                        let _ = framed.send(&Frame::Error(e)).await;
                    });
                }
            });
        }
    });
    NodeInfo {
        id: addr.id,
        name: "old".into(),
        labels: BTreeMap::new(),
        addr,
        sdk_version: "0.0.9".into(),
        apps: Vec::new(),
        peers: Vec::new(),
    }
}

#[tokio::test(start_paused = true)]
async fn an_older_node_is_named_as_one_without_events_or_plans() {
    let (lab, _) = lab(5, 1, 0, 1000).await;
    let old = spawn_old_node(&lab.net);
    let nodes = vec![lab.targets[0].clone(), old];
    let mut failed = Vec::new();
    let mut s = lab.ctl.events(&nodes, &Resume::default(), true);
    // The new node has nothing to say yet; the old one is named at once.
    if let Ok(Some(item)) = tokio::time::timeout(Duration::from_secs(5), s.next()).await {
        failed.push(item);
    }
    match &failed[..] {
        [FleetEvent::Failed { name, error, .. }] => {
            assert_eq!(name, "old");
            assert!(
                error.contains("older p2pd (protocol version 3) that keeps no event log"),
                "{error}"
            );
        }
        other => panic!("{other:?}"),
    }
    drop(s);
    let v1 = release("1.0.0", 100_000).await;
    let run = lab.ctl.dry_run(v1, &nodes, &RolloutPlan::default()).await;
    let old = run.batches[0].iter().find(|n| n.name == "old").unwrap();
    assert!(
        old.plan
            .as_ref()
            .unwrap_err()
            .contains("cannot plan a deploy"),
        "{old:?}"
    );
    assert!(
        run.batches[0]
            .iter()
            .find(|n| n.name == "n0")
            .unwrap()
            .plan
            .is_ok()
    );
}

/// A deploy to a fleet moves every chunk to each node once: the seed's
/// "any chunk" choice and the chunks a node asks its neighbours for never
/// overlap (a choice the node holds, or has asked a neighbour for, is
/// declined at its header), and the metrics say so. Seeds and sizes where
/// nodes did fetch chunks twice before (the seed chose the rarest chunk,
/// which the node was fetching from a neighbour at the same time).
#[tokio::test(start_paused = true)]
async fn a_deploy_fetches_no_chunk_twice_and_the_metrics_count_every_byte_once() {
    for seed in [3, 4] {
        let (lab, _) = lab(seed, 12, 0, 100).await;
        let v1 = release("1.0.0", 3_000_000).await;
        let plan = RolloutPlan {
            plan: Plan::All,
            ..RolloutPlan::default()
        };
        assert!(deploy(&lab, &v1, plan).await.is_success());
        let size = v1.descriptor.archive_size as f64;
        let (mut from_peers, mut twice) = (0.0, Vec::new());
        for i in 0..12 {
            let reg = lab.registries.lock().unwrap()[&format!("n{i}")].clone();
            let m = |name: &str| {
                sample(&reg, name).unwrap_or_else(|| panic!("{name}:\n{}", encode(&reg)))
            };
            let seed = m("p2p_chunk_bytes_total{direction=\"received\",peer=\"seed\"}");
            let peers = m("p2p_chunk_bytes_total{direction=\"received\",peer=\"peer\"}");
            assert_eq!(seed + peers, size, "n{i}: every byte counted once");
            from_peers += peers;
            let dup = m("p2p_chunk_duplicate_bytes_total{peer=\"seed\"}")
                + m("p2p_chunk_duplicate_bytes_total{peer=\"peer\"}");
            if dup > 0.0 {
                twice.push(format!("n{i}: {dup} bytes"));
            }
        }
        // The swarm did its work: most bytes came from other nodes.
        assert!(from_peers > 6.0 * size, "seed {seed}: {from_peers}");
        assert!(twice.is_empty(), "seed {seed}: fetched twice: {twice:?}");
    }
}
