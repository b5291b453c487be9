//! The deploy flow on real transports and real processes: three agents on
//! loopback (over iroh, then over libp2p with a pre-shared key), each with
//! its own disk state, running `demo-app` (built from this repository)
//! under the process runtime with an HTTP health check; v1 rolls out, v2
//! fails its health check and is rolled back on every node.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use p2p_core::{Ed25519Signer, FsStorage, NodeKey, PreSharedKey, Provider, Runtime, SystemClock};
use p2p_deploy::{
    Agent, AgentConfig, AgentParts, BatchSize, BuildOptions, Controller, ControllerConfig,
    DirInstaller, FailureLimit, NodeResult, PackageFile, Plan, Release, RolloutPlan, TrustStore,
    UnpackLimits, build,
};
use p2p_runtime::{ProcessRuntime, RuntimeConfig};
use rand::SeedableRng;

async fn package(dir: &Path, version: &str, args: &str) -> Arc<Release> {
    let app = dir.join(format!("src-{version}"));
    std::fs::create_dir_all(&app).unwrap();
    std::fs::copy(env!("CARGO_BIN_EXE_demo-app"), app.join("demo-app")).unwrap();
    std::fs::write(
        app.join("p2p.toml"),
        format!(
            "name = \"demo\"\nversion = \"{version}\"\nentrypoint = \"demo-app\"\nargs = [{args}]\n\
             stop_grace = \"2s\"\n\
             [health]\nexec = [\"./demo-app\", \"--probe\"]\ninterval = \"200ms\"\n\
             timeout = \"2s\"\nretries = 3\ngate = 3\nstart_period = \"10s\"\n"
        ),
    )
    .unwrap();
    let out = dir.join(format!("demo-{version}.p2p"));
    build(&app, &out, &SystemClock, BuildOptions::default()).unwrap();
    let mut pkg = PackageFile::open(&out).unwrap();
    pkg.sign(&Ed25519Signer::from_seed(&[9; 32])).await.unwrap();
    Arc::new(Release::from_package(&PackageFile::open(&out).unwrap()))
}

struct Node {
    runtime: Arc<ProcessRuntime>,
    task: tokio::task::JoinHandle<()>,
}

async fn agent(root: &Path, i: usize, provider: Arc<dyn Provider>) -> Node {
    let dir = root.join(format!("node{i}"));
    let runtime = Arc::new(
        ProcessRuntime::new(
            RuntimeConfig::new(dir.join("runtime")),
            Arc::new(SystemClock),
        )
        .unwrap(),
    );
    let mut cfg = AgentConfig::new(TrustStore::new([
        Ed25519Signer::from_seed(&[9; 32]).key_id()
    ]));
    cfg.name = format!("node{i}");
    cfg.labels.insert("role".into(), "demo".into());
    let agent = Agent::new(
        cfg,
        AgentParts {
            provider,
            runtime: runtime.clone(),
            storage: Arc::new(FsStorage::open(dir.join("state")).await.unwrap()),
            installer: Arc::new(DirInstaller::new(
                dir.join("versions"),
                UnpackLimits::default(),
            )),
            clock: Arc::new(SystemClock),
            seed: i as u64,
        },
    );
    let task = tokio::spawn(async move {
        agent.run().await.unwrap();
    });
    Node { runtime, task }
}

async fn scenario(backend: &str) {
    let t = tempfile::tempdir().unwrap();
    let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(5);
    let psk = PreSharedKey::generate(&mut rng);
    let bind = |key: NodeKey| {
        let psk = psk.clone();
        async move {
            let p: Arc<dyn Provider> = match backend {
                "iroh" => Arc::new(
                    p2p_iroh::IrohProvider::bind(&key, p2p_iroh::IrohConfig::loopback())
                        .await
                        .unwrap(),
                ),
                _ => Arc::new(
                    p2p_libp2p::Libp2pProvider::bind(
                        &key,
                        p2p_libp2p::Libp2pConfig::loopback().psk(psk),
                    )
                    .await
                    .unwrap(),
                ),
            };
            p
        }
    };
    let mut nodes = Vec::new();
    let mut addrs = Vec::new();
    for i in 0..3 {
        let p = bind(NodeKey::generate(&mut rng)).await;
        addrs.push(p.local_addr());
        nodes.push(agent(t.path(), i, p).await);
    }
    let ctl = Controller::new(
        bind(NodeKey::generate(&mut rng)).await,
        ControllerConfig {
            bootstrap: addrs,
            ..ControllerConfig::default()
        },
    );
    let views = ctl.nodes().await;
    let targets = Controller::select(&views, Some(&"role=demo".parse().unwrap()), &[]).unwrap();
    assert_eq!(targets.len(), 3, "{views:?}");

    let v1 = package(t.path(), "1.0.0", "\"--name\", \"v1\"").await;
    let rolling = RolloutPlan {
        plan: Plan::Rolling {
            batch: BatchSize::Nodes(2),
        },
        ..RolloutPlan::default()
    };
    let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
    let report = ctl.deploy(v1, &targets, &rolling, tx).await;
    assert!(report.is_success(), "{backend}: {report:?}");
    for n in &nodes {
        let s = n.runtime.status("demo").await.unwrap();
        assert_eq!(s.version, "1.0.0");
        assert!(s.healthy_streak >= 3, "{backend}: {s:?}");
    }

    let v2 = package(t.path(), "2.0.0", "\"--unhealthy\"").await;
    // Probes fail from the start; within the start period they do not
    // count, so the gate's own deadline ends it.
    let tolerant = RolloutPlan {
        max_failures: FailureLimit::Percent(100),
        options: p2p_deploy::ActivateOptions {
            gate_timeout: Some(Duration::from_secs(4)),
            ..Default::default()
        },
        ..RolloutPlan::default()
    };
    let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
    let report = ctl.deploy(v2, &targets, &tolerant, tx).await;
    for r in report.nodes.values() {
        match r {
            NodeResult::RolledBack { reason } => {
                assert!(reason.contains("503"), "{backend}: {reason}")
            }
            other => panic!("{backend}: {other:?}"),
        }
    }
    for n in &nodes {
        let s = n.runtime.status("demo").await.unwrap();
        assert_eq!(s.version, "1.0.0", "{backend}: back on v1");
        assert!(s.state.is_live(), "{backend}: {s:?}");
    }
    for n in nodes {
        n.task.abort();
        n.runtime.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_and_rollback_over_iroh() {
    scenario("iroh").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_and_rollback_over_libp2p_with_a_psk() {
    scenario("libp2p").await;
}
