//! A fault campaign on the simulator: for each seed, a random fleet gets
//! random rollouts (good and bad versions, every plan, random failure
//! limits) under random faults (loss up to 10%, partitions, agent crashes
//! and restarts, a controller crash, slow nodes, a peer serving corrupt
//! chunks), and after each rollout the invariants a user relies on are
//! checked:
//!
//! 1. every rollout ends (completed or halted, with its rollbacks) within
//!    a bound of virtual time;
//! 2. no node keeps active, or runs, a version that cannot pass its health
//!    gate;
//! 3. every node's active version is one of its recorded (installed)
//!    versions, and its runtime runs exactly that version;
//! 4. a node the report calls activated (and did not roll back after a
//!    halt) is on the new version;
//! 5. nothing panics, in the test or in any task of any node.
//!
//! 200 seeds by default; `P2P_CAMPAIGN_SEEDS=N` runs N, and
//! `P2P_CAMPAIGN_SEED=S` replays seed S alone. A failing seed prints the
//! command that replays it.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use p2p_core::{PeerAddr, Provider};
use p2p_deploy::proto::Outcome;
use p2p_deploy::{
    AgentConfig, BatchSize, Controller, ControllerConfig, FailureLimit, NodeInfo, NodeResult, Plan,
    Release, RolloutPlan, RolloutReport, Selector, TrustStore,
};
use p2p_sim::{LinkSpec, NodeConfig, SimNet};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

mod common;
use common::{Kind, publisher, release_with, spawn_agent, spawn_mallory};

const APP: &str = "app";
const HEALTH: &str = "[health]\nhttp = \"http://127.0.0.1:8080/health\"\ninterval = \"1s\"\n\
                      retries = 2\ngate = 3\nstart_period = \"8s\"\n";
/// Virtual time a rollout may take, faults included.
const BOUND: Duration = Duration::from_secs(45 * 60);

/// Panics anywhere in the process (node tasks included) since the start.
static PANICS: AtomicUsize = AtomicUsize::new(0);

fn install_panic_counter() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            PANICS.fetch_add(1, Ordering::SeqCst);
            default(info);
        }));
    });
}

struct World {
    net: SimNet,
    names: Vec<String>,
    controllers: usize,
    kinds: BTreeMap<String, Kind>,
    log: Vec<String>,
}

impl World {
    fn new(seed: u64, rng: &mut ChaCha8Rng) -> World {
        let loss = if rng.random_bool(0.5) {
            rng.random_range(0.0..0.10)
        } else {
            0.0
        };
        let latency = Duration::from_millis(rng.random_range(2..40));
        let net = SimNet::builder(seed)
            .default_link(LinkSpec::latency(latency).with_loss(loss))
            .build();
        let n = rng.random_range(3..=8);
        let mut names = Vec::new();
        for i in 0..n {
            let name = format!("n{i}");
            let mut cfg = AgentConfig::new(TrustStore::new([publisher().key_id()]));
            cfg.name = name.clone();
            cfg.labels
                .insert("zone".into(), ["a", "b"][i % 2].to_string());
            spawn_agent(&net, &name, cfg);
            names.push(name);
        }
        let log = vec![format!(
            "{n} agents, latency {latency:?}, loss {:.1}%",
            loss * 100.0
        )];
        World {
            net,
            names,
            controllers: 0,
            kinds: BTreeMap::new(),
            log,
        }
    }

    fn addrs(&self) -> Vec<PeerAddr> {
        self.names
            .iter()
            .map(|n| self.net.provider(n).unwrap().local_addr())
            .collect()
    }

    /// A new controller on a new node.
    fn controller(&mut self) -> (String, Arc<Controller>) {
        self.controllers += 1;
        let name = format!("ctl{}", self.controllers);
        let p = self
            .net
            .add_node_with(&name, NodeConfig::default().mbit(100))
            .unwrap();
        let ctl = Controller::new(
            Arc::new(p),
            ControllerConfig {
                bootstrap: self.addrs(),
                ..ControllerConfig::default()
            },
        );
        (name, Arc::new(ctl))
    }

    async fn release(&mut self, version: &str, kind: Kind) -> Arc<Release> {
        self.net.scripts().set(APP, version, kind.script());
        self.kinds.insert(version.to_string(), kind);
        release_with(APP, version, 200_000, HEALTH).await
    }
}

async fn infos(ctl: &Controller) -> Vec<NodeInfo> {
    let views = ctl.nodes().await;
    let every: Selector = "".parse().unwrap();
    let mut t = Controller::select(&views, Some(&every), &[]).unwrap();
    t.sort_by(|a, b| a.name.cmp(&b.name));
    t
}

fn random_plan(rng: &mut ChaCha8Rng, n: usize) -> RolloutPlan {
    let plan = match rng.random_range(0..3) {
        0 => Plan::All,
        1 => Plan::Rolling {
            batch: BatchSize::Nodes(rng.random_range(1..=3)),
        },
        _ => Plan::Canary {
            canary: rng.random_range(1..=2),
            batch: Some(BatchSize::Percent(rng.random_range(20..=60))),
        },
    };
    let max_failures = if rng.random_bool(0.5) {
        FailureLimit::Count(rng.random_range(0..n.min(3)))
    } else {
        FailureLimit::Percent(rng.random_range(0..=50))
    };
    RolloutPlan {
        plan,
        max_failures,
        rollback_on_halt: rng.random_bool(0.85),
        ..RolloutPlan::default()
    }
}

/// Schedules this rollout's faults; returns a description of each.
fn faults(w: &mut World, rng: &mut ChaCha8Rng, ctl_node: &str) -> Vec<String> {
    let mut said = Vec::new();
    let names = w.names.clone();
    if rng.random_bool(0.4) {
        let victim = names[rng.random_range(0..names.len())].clone();
        let at = Duration::from_millis(rng.random_range(0..15_000));
        let down = Duration::from_millis(rng.random_range(200..20_000));
        said.push(format!("crash {victim} at {at:?} for {down:?}"));
        let net = w.net.clone();
        tokio::spawn(async move {
            tokio::time::sleep(at).await;
            let _ = net.crash(&victim);
            tokio::time::sleep(down).await;
            let _ = net.restart(&victim);
        });
    }
    if rng.random_bool(0.4) {
        let victim = names[rng.random_range(0..names.len())].clone();
        let at = Duration::from_millis(rng.random_range(0..15_000));
        let cut = Duration::from_millis(rng.random_range(500..120_000));
        said.push(format!("partition {victim} at {at:?} for {cut:?}"));
        let mut others: Vec<String> = names.iter().filter(|n| **n != victim).cloned().collect();
        others.push(ctl_node.to_string());
        let net = w.net.clone();
        tokio::spawn(async move {
            tokio::time::sleep(at).await;
            let others: Vec<&str> = others.iter().map(String::as_str).collect();
            let _ = net.partition(&others, &[victim.as_str()]);
            tokio::time::sleep(cut).await;
            net.heal();
        });
    }
    if rng.random_bool(0.3) {
        let slow = names[rng.random_range(0..names.len())].clone();
        let bytes = rng.random_range(20_000..200_000);
        said.push(format!("{slow} slowed to {bytes} B/s"));
        w.net
            .set_bandwidth(&slow, Some(bytes), Some(bytes))
            .unwrap();
    }
    said
}

/// Runs one rollout of `release` under faults; returns the report of the
/// run that ended it (a second controller's, when the first crashed).
async fn rollout(
    w: &mut World,
    rng: &mut ChaCha8Rng,
    release: Arc<Release>,
    plan: RolloutPlan,
) -> Result<RolloutReport, String> {
    let (ctl_name, ctl) = w.controller();
    let targets = infos(&ctl).await;
    if targets.len() != w.names.len() {
        return Err(format!(
            "{} of {} agents answered before the rollout",
            targets.len(),
            w.names.len()
        ));
    }
    let said = faults(w, rng, &ctl_name);
    w.log.extend(said);
    if rng.random_bool(0.2) {
        let mallory = w
            .net
            .add_node_with(
                &format!("mallory{}", w.controllers),
                NodeConfig::default().mbit(100),
            )
            .unwrap();
        spawn_mallory(Arc::new(mallory), w.addrs(), release.descriptor.clone());
        w.log.push("a peer serving corrupt chunks".into());
    }
    let crash_ctl = rng
        .random_bool(0.2)
        .then(|| Duration::from_millis(rng.random_range(0..20_000)));
    let (tx, rx) = tokio::sync::oneshot::channel();
    {
        let (ctl, release, targets, plan) =
            (ctl.clone(), release.clone(), targets.clone(), plan.clone());
        w.net
            .spawn_on(&ctl_name, async move {
                let (ptx, _) = tokio::sync::mpsc::channel(1);
                let report = ctl.deploy(release, &targets, &plan, ptx).await;
                let _ = tx.send(report);
            })
            .unwrap();
    }
    if let Some(at) = crash_ctl {
        w.log.push(format!("controller crash at {at:?}"));
        tokio::time::sleep(at).await;
        w.net.crash(&ctl_name).unwrap();
    }
    let first = match tokio::time::timeout(BOUND, rx).await {
        Ok(Ok(report)) => Some(report),
        Ok(Err(_)) => None, // the controller died with its node
        Err(_) => return Err(format!("the rollout did not end within {BOUND:?}")),
    };
    match first {
        Some(r) => Ok(r),
        None => {
            // A new controller takes over: the same release again.
            let (_, ctl) = w.controller();
            tokio::time::sleep(Duration::from_secs(5)).await;
            let targets = infos(&ctl).await;
            let (ptx, _) = tokio::sync::mpsc::channel(1);
            tokio::time::timeout(BOUND, ctl.deploy(release, &targets, &plan, ptx))
                .await
                .map_err(|_| {
                    format!("the second controller's rollout did not end within {BOUND:?}")
                })
        }
    }
}

/// The invariants, once faults are over and the nodes settled.
async fn check(w: &mut World, version: &str, report: &RolloutReport) -> Result<(), String> {
    w.net.heal();
    for n in &w.names {
        if !w.net.is_up(n) {
            let _ = w.net.restart(n);
        }
    }
    // Restarted agents recover and reconcile; partitioned ones catch up.
    tokio::time::sleep(Duration::from_secs(60)).await;
    let (_, ctl) = w.controller();
    let infos = infos(&ctl).await;
    if infos.len() != w.names.len() {
        return Err(format!(
            "{} of {} agents answer",
            infos.len(),
            w.names.len()
        ));
    }
    for info in &infos {
        let Some(app) = info.apps.iter().find(|a| a.name == APP) else {
            return Err(format!("{} lost the app", info.name));
        };
        let Some(active) = app.active.as_ref().map(ToString::to_string) else {
            return Err(format!("{} has no active version", info.name));
        };
        if !app.installed.iter().any(|(v, _)| v.to_string() == active) {
            return Err(format!(
                "{}: active {active} is not among its installed versions {:?}",
                info.name, app.installed
            ));
        }
        let kind = w.kinds.get(&active).copied();
        if kind.is_none_or(Kind::bad) {
            return Err(format!(
                "{}: active {active} ({kind:?}) cannot pass its health gate",
                info.name
            ));
        }
        // It passed its gate on this node: a deploy, switch or rollback
        // to it was recorded as activated.
        let passed = app
            .history
            .iter()
            .any(|h| h.version.to_string() == active && matches!(h.outcome, Outcome::Activated));
        if !passed {
            return Err(format!(
                "{}: active {active} never passed its gate here; history {:?}",
                info.name, app.history
            ));
        }
        match &app.status {
            Some(s) if s.state.is_live() => {
                if s.version != active {
                    return Err(format!(
                        "{}: runs {} while {active} is active",
                        info.name, s.version
                    ));
                }
            }
            other => {
                return Err(format!(
                    "{}: active {active} is not running: {other:?}",
                    info.name
                ));
            }
        }
        if let Some(NodeResult::Activated) = report.nodes.get(&info.id)
            && !report.rolled_back.contains(&info.id)
            && active != version
        {
            return Err(format!(
                "{}: reported activated on {version}, but {active} is active",
                info.name
            ));
        }
    }
    Ok(())
}

async fn campaign(seed: u64) -> Result<Vec<String>, (String, Vec<String>)> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut w = World::new(seed, &mut rng);
    // Everyone on a good 1.0.0 first, without faults.
    let v1 = w.release("1.0.0", Kind::Healthy).await;
    let (_, ctl) = w.controller();
    let t = infos(&ctl).await;
    let (ptx, _) = tokio::sync::mpsc::channel(1);
    let r = ctl.deploy(v1, &t, &RolloutPlan::default(), ptx).await;
    if !r.is_success() {
        return Err((
            format!("the fault-free 1.0.0 did not roll out: {r:?}"),
            w.log,
        ));
    }
    let kinds = Kind::ALL;
    for minor in 1..=3 {
        let version = format!("1.{minor}.0");
        let kind = kinds[rng.random_range(0..kinds.len())];
        let plan = random_plan(&mut rng, w.names.len());
        w.log
            .push(format!("rollout {version} ({kind:?}) with {plan:?}"));
        let release = w.release(&version, kind).await;
        let report = match rollout(&mut w, &mut rng, release, plan).await {
            Ok(r) => r,
            Err(e) => return Err((e, w.log)),
        };
        w.log.push(format!(
            "  halted: {:?}; results: {:?}",
            report.halted,
            report.nodes.values().collect::<Vec<_>>()
        ));
        if let Err(e) = check(&mut w, &version, &report).await {
            return Err((e, w.log));
        }
        w.log
            .push(format!("  checked at {:?} of virtual time", w.net.now()));
        // Slow nodes get their bandwidth back for the next rollout.
        for n in w.names.clone() {
            let b = 100_000_000 / 8;
            w.net.set_bandwidth(&n, Some(b), Some(b)).unwrap();
        }
    }
    if std::env::var_os("P2P_CAMPAIGN_SEED").is_some() {
        eprintln!("seed {seed}:\n    {}", w.log.join("\n    "));
    }
    Ok(w.log)
}

fn run_seed(seed: u64) -> Result<Vec<String>, String> {
    let before = PANICS.load(Ordering::SeqCst);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    let outcome =
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| rt.block_on(campaign(seed))));
    drop(rt);
    let panics = PANICS.load(Ordering::SeqCst) - before;
    match outcome {
        Err(_) => Err("panicked".to_string()),
        Ok(Err((e, log))) => Err(format!("{e}\n    {}", log.join("\n    "))),
        Ok(Ok(_)) if panics > 0 => Err(format!("{panics} panic(s) in node tasks")),
        Ok(Ok(log)) => Ok(log),
    }
}

#[test]
fn random_rollouts_under_random_faults_keep_every_invariant() {
    install_panic_counter();
    let seeds: Vec<u64> = match std::env::var("P2P_CAMPAIGN_SEED") {
        Ok(s) => vec![s.parse().expect("P2P_CAMPAIGN_SEED: a number")],
        Err(_) => {
            let n: u64 = std::env::var("P2P_CAMPAIGN_SEEDS")
                .ok()
                .map(|s| s.parse().expect("P2P_CAMPAIGN_SEEDS: a number"))
                .unwrap_or(200);
            (0..n).collect()
        }
    };
    // Two threads: the machines this runs on have two cores.
    let failures = std::sync::Mutex::new(Vec::new());
    let logs = std::sync::Mutex::new(Vec::new());
    let next = AtomicUsize::new(0);
    std::thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    let Some(&seed) = seeds.get(i) else { break };
                    match run_seed(seed) {
                        Ok(log) => logs.lock().unwrap().extend(log),
                        Err(e) => failures.lock().unwrap().push((seed, e)),
                    }
                }
            });
        }
    });
    // What the seeds exercised, so that a campaign that stopped injecting
    // some fault shows it.
    let logs = logs.into_inner().unwrap();
    let count = |what: &str| logs.iter().filter(|l| l.contains(what)).count();
    let exercised = [
        ("rollouts", count("rollout 1.")),
        ("halted", count("halted: Some")),
        ("agent crashes", count("crash n")),
        ("partitions", count("partition n")),
        ("slow nodes", count("slowed to")),
        ("controller crashes", count("controller crash")),
        ("corrupt peers", count("corrupt chunks")),
        (
            "lossy fleets",
            logs.iter()
                .filter(|l| l.contains("loss") && !l.contains("loss 0.0%"))
                .count(),
        ),
    ];
    eprintln!("fault campaign over {} seed(s): {exercised:?}", seeds.len());
    if seeds.len() >= 100 {
        for (what, n) in exercised {
            assert!(n > 0, "no seed exercised {what}");
        }
    }
    let mut failures = failures.into_inner().unwrap();
    failures.sort_by_key(|(s, _)| *s);
    for (seed, e) in &failures {
        eprintln!(
            "seed {seed} FAILED: {e}\n  replay: P2P_CAMPAIGN_SEED={seed} cargo test -p p2p-deploy --test fault_campaign -- --nocapture"
        );
    }
    assert!(
        failures.is_empty(),
        "{} of {} seeds failed (each printed above with the command that replays it)",
        failures.len(),
        seeds.len()
    );
}
