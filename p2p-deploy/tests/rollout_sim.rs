//! Agents and controllers on the simulator: rollouts by plan, health gates
//! and rollback, crashes of agents and controllers, partitions,
//! authorization, logs, and determinism.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use p2p_core::{Ed25519Signer, LogSelection, LogStream, PeerAddr, PeerId, Provider};
use p2p_deploy::proto::{Activation, Outcome, Reply, Request};
use p2p_deploy::{
    AgentConfig, BatchSize, BuildOptions, Controller, ControllerConfig, FailureLimit, NodeInfo,
    NodeResult, PackageFile, Plan, Progress, Release, RolloutPlan, RolloutReport, Selector,
    TrustStore, build,
};
use p2p_sim::{LinkSpec, NodeConfig, Script, SimClock, SimNet};
use tokio::sync::mpsc;

mod common;

const APP: &str = "web";

fn publisher() -> Ed25519Signer {
    Ed25519Signer::from_seed(&[7; 32])
}

/// A signed release of `web` at `version`, with an HTTP health check
/// (gate of 3 probes, one a second).
async fn release(version: &str) -> Arc<Release> {
    release_with(version, "").await
}

/// The same, with `health` added to the `[health]` table.
async fn release_with(version: &str, health: &str) -> Arc<Release> {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("app");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("p2p.toml"),
        format!(
            "name = \"{APP}\"\nversion = \"{version}\"\nentrypoint = \"run\"\n\
             [health]\nhttp = \"http://127.0.0.1:8080/health\"\ninterval = \"1s\"\nretries = 2\ngate = 3\n{health}\n"
        ),
    )
    .unwrap();
    // Some bytes so that there are several chunks to fetch.
    let blob: Vec<u8> = (0..300_000u32).map(|i| (i * 7919 % 251) as u8).collect();
    std::fs::write(dir.join("run"), &blob).unwrap();
    let out = t.path().join("web.p2p");
    let opts = BuildOptions {
        chunk_size: 64 * 1024,
        ..BuildOptions::default()
    };
    build(&dir, &out, &SimClock::new(0), opts).unwrap();
    let mut pkg = PackageFile::open(&out).unwrap();
    pkg.sign(&publisher()).await.unwrap();
    let pkg = PackageFile::open(&out).unwrap();
    // Read into memory: the temporary directory goes away.
    let mut archive = Vec::new();
    std::io::Read::read_to_end(&mut pkg.archive_reader().unwrap(), &mut archive).unwrap();
    Arc::new(Release::from_parts(pkg.descriptor, pkg.signatures, archive).unwrap())
}

fn trust() -> TrustStore {
    TrustStore::new([publisher().key_id()])
}

fn agent_config(i: usize, operators: Option<BTreeSet<PeerId>>) -> AgentConfig {
    let mut cfg = AgentConfig::new(trust());
    cfg.name = format!("n{i:02}");
    cfg.labels = BTreeMap::from([
        ("zone".to_string(), ["a", "b"][i % 2].to_string()),
        ("role".to_string(), "web".to_string()),
    ]);
    cfg.operators = operators;
    cfg
}

struct Fleet {
    net: SimNet,
    names: Vec<String>,
}

fn fleet(seed: u64, n: usize, operators: Option<BTreeSet<PeerId>>) -> Fleet {
    let net = SimNet::builder(seed)
        .default_link(LinkSpec::latency(Duration::from_millis(10)))
        .build();
    let mut names = Vec::new();
    for i in 0..n {
        let name = format!("n{i:02}");
        let cfg = agent_config(i, operators.clone());
        common::spawn_agent(&net, &name, cfg);
        names.push(name);
    }
    Fleet { net, names }
}

impl Fleet {
    fn addrs(&self) -> Vec<PeerAddr> {
        self.names
            .iter()
            .map(|n| self.net.provider(n).unwrap().local_addr())
            .collect()
    }

    fn controller(&self, name: &str) -> Controller {
        let p = self
            .net
            .add_node_with(name, NodeConfig::default().mbit(100))
            .unwrap();
        Controller::new(
            Arc::new(p),
            ControllerConfig {
                bootstrap: self.addrs(),
                ..ControllerConfig::default()
            },
        )
    }
}

/// A fleet of `n` agents without an operator list, a controller "ctl",
/// every node as a target, and 1.0.0 rolled out to all of them.
async fn fleet_on_v1(seed: u64, n: usize) -> (Fleet, Controller, Vec<NodeInfo>) {
    let f = fleet(seed, n, None);
    let ctl = f.controller("ctl");
    let t = targets(&ctl, "").await;
    let v1 = release("1.0.0").await;
    assert!(run(&ctl, &v1, &t, plan(Plan::All)).await.is_success());
    (f, ctl, t)
}

async fn targets(ctl: &Controller, selector: &str) -> Vec<NodeInfo> {
    let views = ctl.nodes().await;
    let sel: Selector = selector.parse().unwrap();
    let mut t = Controller::select(&views, Some(&sel), &[]).unwrap();
    t.sort_by(|a, b| a.name.cmp(&b.name));
    t
}

async fn run(
    ctl: &Controller,
    r: &Arc<Release>,
    t: &[NodeInfo],
    plan: RolloutPlan,
) -> RolloutReport {
    let (tx, _) = mpsc::channel(1);
    ctl.deploy(r.clone(), t, &plan, tx).await
}

/// Each node's active version and whether the runtime runs exactly it.
async fn states(ctl: &Controller) -> BTreeMap<String, (Option<String>, Option<String>)> {
    let mut out = BTreeMap::new();
    for v in ctl.nodes().await {
        let info = v.info.unwrap();
        let app = info.apps.iter().find(|a| a.name == APP);
        let active = app.and_then(|a| a.active.as_ref().map(|v| v.to_string()));
        let running = app
            .and_then(|a| a.status.as_ref())
            .filter(|s| s.state.is_live())
            .map(|s| s.version.clone());
        out.insert(info.name, (active, running));
    }
    out
}

fn all_on(s: &BTreeMap<String, (Option<String>, Option<String>)>, v: &str) -> bool {
    s.values()
        .all(|(a, r)| a.as_deref() == Some(v) && r.as_deref() == Some(v))
}

fn plan(plan: Plan) -> RolloutPlan {
    RolloutPlan {
        plan,
        ..RolloutPlan::default()
    }
}

#[tokio::test(start_paused = true)]
async fn fifty_nodes_with_each_plan() {
    let f = fleet(1, 50, None);
    let ctl = f.controller("ctl");
    let t = targets(&ctl, "role=web").await;
    assert_eq!(t.len(), 50);

    // Read after the rollout: room for every event.
    let (tx, mut rx) = mpsc::channel(16 * 1024);
    let v1 = release("1.0.0").await;
    let report = ctl.deploy(v1.clone(), &t, &plan(Plan::All), tx).await;
    assert!(report.is_success(), "{report:?}");
    let mut events = Vec::new();
    while let Ok(e) = rx.try_recv() {
        events.push(e);
    }
    // Progress: selection, transfer up to the full size, gates, done.
    assert!(matches!(events[0], Progress::Selected { ref nodes } if nodes.len() == 50));
    let full = events
        .iter()
        .filter(|e| matches!(e, Progress::Transfer { bytes, total, .. } if bytes == total))
        .count();
    assert_eq!(full, 50, "every node reports its transfer complete");
    assert_eq!(
        events
            .iter()
            .filter(|e| matches!(e, Progress::HealthPassed { .. }))
            .count(),
        50
    );
    assert!(matches!(events.last(), Some(Progress::Done(_))));
    assert!(all_on(&states(&ctl).await, "1.0.0"));

    let v2 = release("2.0.0").await;
    let rolling = plan(Plan::Rolling {
        batch: BatchSize::Nodes(10),
    });
    // Read after the rollout: room for every event.
    let (tx, mut rx) = mpsc::channel(16 * 1024);
    let report = ctl.deploy(v2, &t, &rolling, tx).await;
    assert!(report.is_success(), "{report:?}");
    let batches = std::iter::from_fn(|| rx.try_recv().ok())
        .filter(|e| matches!(e, Progress::Batch { .. }))
        .count();
    assert_eq!(batches, 5);
    assert!(all_on(&states(&ctl).await, "2.0.0"));

    let v3 = release("3.0.0").await;
    let canary = plan(Plan::Canary {
        canary: 5,
        batch: Some(BatchSize::Percent(20)),
    });
    let report = run(&ctl, &v3, &t, canary).await;
    assert!(report.is_success(), "{report:?}");
    let s = states(&ctl).await;
    assert!(all_on(&s, "3.0.0"), "{s:?}");

    // The same release again changes nothing.
    let report = run(&ctl, &v3, &t, plan(Plan::All)).await;
    assert!(
        report
            .nodes
            .values()
            .all(|r| *r == NodeResult::AlreadyActive),
        "{report:?}"
    );
    // Label selection picks half the fleet.
    assert_eq!(targets(&ctl, "zone=a").await.len(), 25);
    assert_eq!(targets(&ctl, "zone in (a,b),role").await.len(), 50);
}

/// Found by an embedder: `select` with neither a selector nor ids picked
/// nothing, and a rollout to nothing reported success.
#[tokio::test(start_paused = true)]
async fn no_selector_means_every_node_and_a_rollout_to_none_is_no_success() {
    let f = fleet(3, 4, None);
    let ctl = f.controller("ctl");
    let views = ctl.nodes().await;
    assert_eq!(Controller::select(&views, None, &[]).unwrap().len(), 4);
    let only = Controller::select(&views, None, &[views[0].addr.id]).unwrap();
    assert_eq!(only.len(), 1, "ids alone pick only those");
    let db: Selector = "role=db".parse().unwrap();
    let none = Controller::select(&views, Some(&db), &[]).unwrap();
    assert!(none.is_empty());
    let report = run(&ctl, &release("1.0.0").await, &none, plan(Plan::All)).await;
    assert!(!report.is_success(), "{report:?}");
    let halted = report.halted.as_deref().unwrap_or_default();
    assert!(halted.contains("matched no node"), "{report:?}");
}

#[tokio::test(start_paused = true)]
async fn canary_failure_halts_before_the_rest() {
    let (f, ctl, t) = fleet_on_v1(2, 12).await;
    f.net.scripts().set(APP, "2.0.0", Script::never_healthy());
    let v2 = release("2.0.0").await;
    let report = run(
        &ctl,
        &v2,
        &t,
        plan(Plan::Canary {
            canary: 2,
            batch: None,
        }),
    )
    .await;
    // The reason names the canaries by name (n00, n01 sort first).
    let halted = report.halted.as_deref().unwrap_or_default();
    assert!(halted.contains("canary node(s) failed: n0"), "{report:?}");
    let failed = report.nodes.values().filter(|r| r.is_failure()).count();
    let skipped = report
        .nodes
        .values()
        .filter(|r| **r == NodeResult::Skipped)
        .count();
    assert_eq!((failed, skipped), (2, 10), "{report:?}");
    // Every node, canaries included, runs 1.0.0.
    assert!(all_on(&states(&ctl).await, "1.0.0"));
}

#[tokio::test(start_paused = true)]
async fn max_failures_halts_and_rolls_back_the_nodes_already_changed() {
    let (f, ctl, t) = fleet_on_v1(3, 12).await;
    let v2 = release("2.0.0").await;
    let (tx, mut rx) = mpsc::channel(1024);
    let rolling = RolloutPlan {
        plan: Plan::Rolling {
            batch: BatchSize::Nodes(4),
        },
        max_failures: FailureLimit::Count(1),
        ..RolloutPlan::default()
    };
    let scripts = f.net.scripts().clone();
    // After the first batch of 4 succeeds, 2.0.0 turns bad.
    let watch = async move {
        let mut done = 0;
        while let Some(e) = rx.recv().await {
            if matches!(e, Progress::NodeDone { .. }) {
                done += 1;
                if done == 4 {
                    scripts.set(APP, "2.0.0", Script::exits_after(1, Duration::from_secs(2)));
                }
            }
        }
    };
    let (report, ()) = tokio::join!(ctl.deploy(v2, &t, &rolling, tx), watch);
    assert!(report.halted.is_some(), "{report:?}");
    let activated: Vec<_> = report
        .nodes
        .iter()
        .filter(|(_, r)| **r == NodeResult::Activated)
        .map(|(id, _)| *id)
        .collect();
    assert_eq!(activated.len(), 4, "{report:?}");
    assert_eq!(
        report.nodes.values().filter(|r| r.is_failure()).count(),
        4,
        "the second batch fails: 4 > 1 allowed"
    );
    let mut rolled = report.rolled_back.clone();
    rolled.sort();
    assert_eq!(rolled, activated, "the changed nodes are rolled back");
    assert!(all_on(&states(&ctl).await, "1.0.0"));
}

#[tokio::test(start_paused = true)]
async fn a_changed_node_that_cannot_be_rolled_back_is_reported() {
    let (f, ctl, t) = fleet_on_v1(13, 6).await;
    let v2 = release("2.0.0").await;
    let (tx, mut rx) = mpsc::channel(1024);
    let rolling = plan(Plan::Rolling {
        batch: BatchSize::Nodes(2),
    });
    let net = f.net.clone();
    // After the first batch (n00, n01) activates, cut both off from the
    // controller and make 2.0.0 bad: the second batch fails, the rollout
    // halts, and the first batch cannot be reached to go back.
    let watch = async move {
        let mut done = 0;
        let mut failed = Vec::new();
        while let Some(e) = rx.recv().await {
            match e {
                Progress::NodeDone { .. } => {
                    done += 1;
                    if done == 2 {
                        net.partition(&["ctl"], &["n00", "n01"]).unwrap();
                        net.scripts().set(APP, "2.0.0", Script::never_healthy());
                    }
                }
                Progress::RollbackFailed { node, .. } => failed.push(node),
                _ => {}
            }
        }
        failed
    };
    let (report, mut failed) = tokio::join!(ctl.deploy(v2, &t, &rolling, tx), watch);
    assert!(report.halted.is_some(), "{report:?}");
    assert!(report.rolled_back.is_empty(), "{report:?}");
    let mut want = vec![f.net.peer_id("n00").unwrap(), f.net.peer_id("n01").unwrap()];
    want.sort();
    failed.sort();
    assert_eq!(failed, want, "a progress event for each");
    assert_eq!(
        report.rollback_failed.keys().copied().collect::<Vec<_>>(),
        want,
        "{report:?}"
    );
    // Once reachable again, they are still on 2.0.0 (nothing pretended
    // otherwise) and the others on 1.0.0.
    f.net.heal();
    let s = states(&ctl).await;
    for (name, (active, running)) in &s {
        assert_eq!(active, running, "{name}");
        let want = if name == "n00" || name == "n01" {
            "2.0.0"
        } else {
            "1.0.0"
        };
        assert_eq!(active.as_deref(), Some(want), "{name}: {s:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn a_version_that_crashes_or_never_gets_healthy_is_rolled_back_everywhere() {
    let (f, ctl, t) = fleet_on_v1(4, 10).await;
    let tolerant = RolloutPlan {
        max_failures: FailureLimit::Percent(100),
        ..RolloutPlan::default()
    };
    for (version, script) in [
        ("2.0.0", Script::exits_after(3, Duration::from_millis(1500))),
        ("2.0.1", Script::never_healthy()),
    ] {
        f.net.scripts().set(APP, version, script);
        let r = release(version).await;
        let report = run(&ctl, &r, &t, tolerant.clone()).await;
        assert!(
            report
                .nodes
                .values()
                .all(|r| matches!(r, NodeResult::RolledBack { .. })),
            "{version}: {report:?}"
        );
        assert!(all_on(&states(&ctl).await, "1.0.0"), "{version}");
    }
    // The history says why.
    let views = ctl.nodes().await;
    let app = views[0].info.as_ref().unwrap().apps[0].clone();
    let last = app.history.last().unwrap();
    match &last.outcome {
        Outcome::RolledBack { reason, to } => {
            // The runtime kills it after two failed probes; the gate says so.
            assert!(reason.contains("failing health checks"), "{reason}");
            assert_eq!(to.as_ref().map(|v| v.to_string()).as_deref(), Some("1.0.0"));
        }
        other => panic!("{other:?}"),
    }
}

/// Crashes the only agent `after` into a deploy of 2.0.0 (1.0.0 active),
/// restarts it, and returns (active version, runtime version, last history
/// outcome).
async fn crash_during_deploy(seed: u64, after: Duration) -> (String, String, Outcome) {
    let (f, ctl, t) = fleet_on_v1(seed, 1).await;
    f.net
        .scripts()
        .set(APP, "2.0.0", Script::slow_start(Duration::from_secs(2)));
    let v2 = release("2.0.0").await;
    let net = f.net.clone();
    let crash = async move {
        tokio::time::sleep(after).await;
        net.crash("n00").unwrap();
        tokio::time::sleep(Duration::from_secs(1)).await;
        net.restart("n00").unwrap();
    };
    let (report, ()) = tokio::join!(run(&ctl, &v2, &t, plan(Plan::All)), crash);
    assert!(
        !report.is_success() || after > Duration::from_secs(8),
        "{report:?}"
    );
    // Let the restarted agent recover and reconcile.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let info = ctl.nodes().await.remove(0).info.unwrap();
    let app = info.apps.iter().find(|a| a.name == APP).unwrap();
    let active = app.active.as_ref().unwrap().to_string();
    let status = app.status.as_ref().expect("the runtime runs the app again");
    assert!(status.state.is_live(), "{status:?}");
    (
        active,
        status.version.clone(),
        app.history.last().unwrap().outcome.clone(),
    )
}

#[tokio::test(start_paused = true)]
async fn an_agent_crash_at_any_step_of_activation_leaves_a_consistent_node() {
    // Offsets into the deploy: verifying/transferring, installed, new
    // version just started, inside the health gate, after the commit.
    for (i, ms) in [15u64, 60, 120, 2500, 12_000].into_iter().enumerate() {
        let (active, running, last) =
            crash_during_deploy(100 + i as u64, Duration::from_millis(ms)).await;
        assert_eq!(
            active, running,
            "at {ms} ms the runtime runs the active version"
        );
        if ms >= 12_000 {
            assert_eq!(active, "2.0.0", "committed before the crash");
            assert_eq!(last, Outcome::Activated);
        } else {
            assert_eq!(active, "1.0.0", "at {ms} ms: back on the old version");
            // Once activation had begun, the interruption is recorded.
            if ms >= 2500 {
                assert_eq!(
                    last,
                    Outcome::Interrupted {
                        to: Some("1.0.0".parse().unwrap())
                    },
                    "at {ms} ms"
                );
            }
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_new_controller_finishes_what_a_crashed_one_started() {
    let (f, ctl, t) = fleet_on_v1(5, 12).await;
    let v2 = release("2.0.0").await;
    // The first controller runs as a task of node "ctl" and dies with it.
    let ctl = Arc::new(ctl);
    let (c2, r2, t2) = (ctl.clone(), v2.clone(), t.clone());
    f.net
        .spawn_on("ctl", async move {
            let rolling = plan(Plan::Rolling {
                batch: BatchSize::Nodes(3),
            });
            run(&c2, &r2, &t2, rolling).await;
        })
        .unwrap();
    tokio::time::sleep(Duration::from_secs(6)).await;
    f.net.crash("ctl").unwrap();
    tokio::time::sleep(Duration::from_secs(40)).await;
    let other = f.controller("ctl2");
    let s = states(&other).await;
    let on_v2 = s
        .values()
        .filter(|(a, _)| a.as_deref() == Some("2.0.0"))
        .count();
    assert!(on_v2 > 0 && on_v2 < 12, "crashed mid-rollout: {s:?}");
    for (name, (active, running)) in &s {
        assert_eq!(active, running, "{name} runs its active version");
    }
    let report = run(&other, &v2, &t, plan(Plan::All)).await;
    assert!(report.is_success(), "{report:?}");
    assert_eq!(
        report
            .nodes
            .values()
            .filter(|r| **r == NodeResult::AlreadyActive)
            .count(),
        on_v2
    );
    assert!(all_on(&states(&other).await, "2.0.0"));
}

#[tokio::test(start_paused = true)]
async fn a_partitioned_node_fails_alone_and_stays_consistent() {
    let (f, ctl, t) = fleet_on_v1(6, 6).await;
    let v2 = release("2.0.0").await;
    let net = f.net.clone();
    // Cut n03 off from everyone while it fetches chunks; heal later.
    let cut = async move {
        tokio::time::sleep(Duration::from_millis(15)).await;
        net.partition(&["ctl", "n00", "n01", "n02", "n04", "n05"], &["n03"])
            .unwrap();
        tokio::time::sleep(Duration::from_secs(90)).await;
        net.heal();
    };
    let tolerant = RolloutPlan {
        max_failures: FailureLimit::Count(1),
        ..RolloutPlan::default()
    };
    let (report, ()) = tokio::join!(run(&ctl, &v2, &t, tolerant), cut);
    assert!(report.halted.is_none(), "{report:?}");
    let n03 = f.net.peer_id("n03").unwrap();
    assert!(report.nodes[&n03].is_failure(), "{report:?}");
    let s = states(&ctl).await;
    for (name, (active, running)) in &s {
        assert_eq!(active, running, "{name}");
        let want = if name == "n03" { "1.0.0" } else { "2.0.0" };
        assert_eq!(active.as_deref(), Some(want), "{name}");
    }
}

#[tokio::test(start_paused = true)]
async fn only_operators_may_change_a_node() {
    let net_probe = SimNet::new(7);
    let op_id = net_probe.key_for("op").peer_id();
    drop(net_probe);
    let f = fleet(7, 2, Some(BTreeSet::from([op_id])));
    let op = f.controller("op");
    let stranger = f.controller("stranger");
    let v1 = release("1.0.0").await;
    let t = targets(&stranger, "").await;
    assert_eq!(t.len(), 2, "anyone admitted may read node info");
    let report = run(&stranger, &v1, &t, plan(Plan::All)).await;
    for r in report.nodes.values() {
        match r {
            NodeResult::Failed { error } => {
                assert!(error.contains("not an operator"), "{error}")
            }
            other => panic!("{other:?}"),
        }
    }
    let e = stranger
        .request(&t[0].addr, Request::Stop { app: APP.into() })
        .await
        .unwrap_err();
    assert!(matches!(e, p2p_core::Error::Denied { .. }), "{e}");
    assert!(run(&op, &v1, &t, plan(Plan::All)).await.is_success());
}

#[tokio::test(start_paused = true)]
async fn switch_rollback_stop_start_remove_and_merged_logs() {
    let f = fleet(8, 3, None);
    let ctl = f.controller("ctl");
    let t = targets(&ctl, "").await;
    for v in ["1.0.0", "1.1.0", "1.2.0", "1.3.0"] {
        let r = release(v).await;
        assert!(run(&ctl, &r, &t, plan(Plan::All)).await.is_success(), "{v}");
    }
    let n = &t[0];
    let Reply::App(app) = ctl
        .request(&n.addr, Request::Status { app: APP.into() })
        .await
        .unwrap()
    else {
        panic!()
    };
    let installed: Vec<String> = app.installed.iter().map(|(v, _)| v.to_string()).collect();
    assert_eq!(installed, ["1.1.0", "1.2.0", "1.3.0"], "keep_versions = 3");
    // A downgrade by deploy is refused; rollback goes back explicitly.
    let old = release("1.1.0").await;
    let report = run(&ctl, &old, &t[..1], plan(Plan::All)).await;
    assert!(
        matches!(&report.nodes[&n.id], NodeResult::Failed { error } if error.contains("lower than installed")),
        "{report:?}"
    );
    let r = ctl
        .request(
            &n.addr,
            Request::Rollback {
                app: APP.into(),
                options: Default::default(),
            },
        )
        .await
        .unwrap();
    assert!(
        matches!(&r, Reply::Activation(Activation::Activated { version, .. }) if version.to_string() == "1.2.0"),
        "{r:?}"
    );
    let r = ctl
        .request(
            &n.addr,
            Request::Switch {
                app: APP.into(),
                version: "1.1.0".parse().unwrap(),
                options: Default::default(),
            },
        )
        .await
        .unwrap();
    assert!(
        matches!(r, Reply::Activation(Activation::Activated { .. })),
        "{r:?}"
    );
    let e = ctl
        .request(
            &n.addr,
            Request::Switch {
                app: APP.into(),
                version: "0.9.0".parse().unwrap(),
                options: Default::default(),
            },
        )
        .await
        .unwrap_err();
    assert!(e.to_string().contains("not installed"), "{e}");
    // Stop, then start.
    ctl.request(&n.addr, Request::Stop { app: APP.into() })
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(15)).await; // reconcile keeps it stopped
    let Reply::App(app) = ctl
        .request(&n.addr, Request::Status { app: APP.into() })
        .await
        .unwrap()
    else {
        panic!()
    };
    assert!(!app.running && !app.status.unwrap().state.is_live());
    ctl.request(&n.addr, Request::Start { app: APP.into() })
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(5)).await;
    // Removing the active version is refused; an inactive one goes.
    let e = ctl
        .request(
            &n.addr,
            Request::Remove {
                app: APP.into(),
                version: Some("1.1.0".parse().unwrap()),
            },
        )
        .await
        .unwrap_err();
    assert!(e.to_string().contains("active version"), "{e}");
    ctl.request(
        &n.addr,
        Request::Remove {
            app: APP.into(),
            version: Some("1.3.0".parse().unwrap()),
        },
    )
    .await
    .unwrap();

    // Logs from all three nodes, merged and prefixed.
    let last_two = || async {
        use futures::StreamExt;
        let both = LogSelection {
            stream: LogStream::Both,
            tail: Some(2),
            follow: false,
        };
        ctl.logs(&t, APP, both).await.collect::<Vec<_>>().await
    };
    let lines = last_two().await;
    let prefixes: BTreeSet<String> = lines
        .iter()
        .map(|l| l.as_ref().unwrap().0.clone())
        .collect();
    assert_eq!(
        prefixes,
        BTreeSet::from(["n00".to_string(), "n01".into(), "n02".into()])
    );
    assert_eq!(lines.len(), 6);

    // Removing the app leaves nothing.
    ctl.request(
        &n.addr,
        Request::Remove {
            app: APP.into(),
            version: None,
        },
    )
    .await
    .unwrap();
    let e = ctl
        .request(&n.addr, Request::Status { app: APP.into() })
        .await
        .unwrap_err();
    assert!(matches!(e, p2p_core::Error::NotFound { .. }), "{e}");

    // Logs from the three nodes again: the one without the app yields one
    // error naming it, the others their lines.
    let lines = last_two().await;
    let errors: Vec<String> = lines
        .iter()
        .filter_map(|l| l.as_ref().err().map(|e| e.to_string()))
        .collect();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(errors[0].contains(&n.id.short()), "{errors:?}");
    assert_eq!(lines.len(), 5, "two nodes' lines and one error");
}

#[tokio::test(start_paused = true)]
async fn an_unsigned_or_foreign_release_is_refused() {
    let f = fleet(9, 1, None);
    let ctl = f.controller("ctl");
    let t = targets(&ctl, "").await;
    let good = release("1.0.0").await;
    let mut unsigned = (*good).clone();
    unsigned.signatures.clear();
    let unsigned = Arc::new(unsigned);
    let report = run(&ctl, &unsigned, &t, plan(Plan::All)).await;
    assert!(
        matches!(report.nodes.values().next(), Some(NodeResult::Failed { error }) if error.contains("not signed")),
        "{report:?}"
    );
    let s = states(&ctl).await;
    assert_eq!(s["n00"], (None, None), "nothing installed or run");
}

async fn scenario(seed: u64) -> (String, Vec<(PeerId, NodeResult)>) {
    let f = fleet(seed, 20, None);
    let ctl = f.controller("ctl");
    let t = targets(&ctl, "").await;
    let v1 = release("1.0.0").await;
    run(&ctl, &v1, &t, plan(Plan::All)).await;
    f.net.scripts().set(APP, "2.0.0", Script::never_healthy());
    let v2 = release("2.0.0").await;
    let report = run(
        &ctl,
        &v2,
        &t,
        RolloutPlan {
            plan: Plan::Rolling {
                batch: BatchSize::Percent(25),
            },
            max_failures: FailureLimit::Count(5),
            ..RolloutPlan::default()
        },
    )
    .await;
    (f.net.trace_hash(), report.nodes.into_iter().collect())
}

#[test]
fn the_same_seed_gives_the_same_trace() {
    let rt = || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .unwrap()
    };
    let a = rt().block_on(scenario(42));
    let b = rt().block_on(scenario(42));
    assert_eq!(a, b);
    let c = rt().block_on(scenario(43));
    assert_ne!(a.0, c.0, "another seed, another trace");
}

#[tokio::test(start_paused = true)]
async fn a_node_that_dies_silently_mid_rollout_is_reported_within_seconds() {
    let (f, ctl, t) = fleet_on_v1(21, 4).await;
    // 2.0.0 turns healthy only after 20 s: the live nodes sit in their
    // health gate four times longer than the silence limit, sending
    // heartbeats, and must not be taken for dead.
    f.net
        .scripts()
        .set(APP, "2.0.0", Script::slow_start(Duration::from_secs(20)));
    let v2 = release_with("2.0.0", "start_period = \"30s\"").await;
    let n03 = f.net.peer_id("n03").unwrap();
    let (tx, mut rx) = mpsc::channel(1024);
    let tolerant = RolloutPlan {
        max_failures: FailureLimit::Count(1),
        ..plan(Plan::All)
    };
    let net = f.net.clone();
    // Killed silently in its gate: cut off first, so no reset reaches
    // anyone (a host that lost power, a cable pulled).
    let kill = async move {
        tokio::time::sleep(Duration::from_secs(3)).await;
        net.partition(&["ctl", "n00", "n01", "n02"], &["n03"])
            .unwrap();
        net.crash("n03").unwrap();
        tokio::time::Instant::now()
    };
    let watch = async move {
        while let Some(p) = rx.recv().await {
            if let Progress::NodeDone { node, result } = p
                && node == n03
            {
                return Some((tokio::time::Instant::now(), result));
            }
        }
        None
    };
    let (report, killed, seen) = tokio::join!(ctl.deploy(v2, &t, &tolerant, tx), kill, watch);
    let (at, result) = seen.expect("no result for n03");
    let after = at - killed;
    assert!(
        after <= Duration::from_secs(6),
        "n03 reported {after:?} after it died"
    );
    match result {
        NodeResult::Failed { error } => {
            assert!(error.contains("stopped answering"), "{error}")
        }
        other => panic!("n03: {other:?}"),
    }
    assert!(report.halted.is_none(), "{report:?}");
    for n in t.iter().filter(|n| n.id != n03) {
        assert_eq!(report.nodes[&n.id], NodeResult::Activated, "{}", n.name);
    }
}

#[tokio::test(start_paused = true)]
async fn a_node_that_is_down_costs_a_listing_the_connect_timeout_only() {
    let f = fleet(22, 3, None);
    f.net.crash("n01").unwrap();
    let p = f
        .net
        .add_node_with("ctl", NodeConfig::default().mbit(100))
        .unwrap();
    let ctl = Controller::new(
        Arc::new(p),
        ControllerConfig {
            bootstrap: f.addrs(),
            connect_timeout: Duration::from_secs(3),
            ..ControllerConfig::default()
        },
    );
    let begun = tokio::time::Instant::now();
    let views = ctl.nodes().await;
    let took = begun.elapsed();
    assert!(took <= Duration::from_secs(4), "listing took {took:?}");
    let n01 = f.net.peer_id("n01").unwrap();
    for v in &views {
        assert_eq!(v.info.is_err(), v.addr.id == n01, "{v:?}");
    }
}
