//! Model-based: one agent in the simulator, driven by a random sequence of
//! operations, with its invariants checked after each.
//!
//! The input is read two bytes at a time, an operation and its argument
//! (at most 12 operations):
//!
//! | byte % 13 | operation (by the operator, unless said) |
//! |---|---|
//! | 0 | deploy version `arg % 4`; its behaviour, the first time, is `arg / 4 % 5` (healthy, slow to start, never healthy, crashing, failing to start) |
//! | 1 | switch to version `arg % 4` |
//! | 2 | roll back |
//! | 3, 4, 5 | stop, start, restart |
//! | 6 | remove version `arg % 4` |
//! | 7 | remove the app |
//! | 8 | crash the agent, restart it `arg % 30 + 1` s later |
//! | 9 | let `arg` seconds pass |
//! | 10 | a stranger sends the next `arg` bytes as a raw stream |
//! | 11 | a stranger (not an operator) sends a mutating request |
//! | 12 | deploy version `arg % 4` and crash the agent `arg / 4 * 100` ms in |
//!
//! Checked after every operation, once the node settled:
//!
//! - the agent answers;
//! - its active version is one of its installed versions, could pass its
//!   health gate, and was recorded as activated on this node;
//! - an app the node keeps running runs its active version, and one it
//!   keeps stopped does not run;
//! - a deploy the agent reported as activated left that version active;
//! - nothing a stranger sends changes anything;
//! - every operation ends within a bound of virtual time;
//! - nothing panics, in any task (libFuzzer's panic hook aborts).
#![no_main]
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use p2p_core::{PeerAddr, Provider};
use p2p_deploy::proto::{ActivateOptions, AppInfo, Request};
use p2p_deploy::{
    AgentConfig, Controller, ControllerConfig, NodeInfo, NodeResult, Release, RolloutPlan,
    TrustStore,
};
use p2p_sim::{NodeConfig, SimNet};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[path = "../../p2p-deploy/tests/common/mod.rs"]
mod common;
use common::Kind;

const APP: &str = "app";
const HEALTH: &str = "[health]\nhttp = \"http://127.0.0.1:8080/health\"\ninterval = \"1s\"\n\
                      retries = 2\ngate = 3\nstart_period = \"8s\"\n";
const VERSIONS: [&str; 4] = ["1.0.0", "1.1.0", "1.2.0", "1.3.0"];
/// Virtual time any one operation may take.
const BOUND: Duration = Duration::from_secs(30 * 60);
/// Virtual time the node gets to settle after an operation.
const SETTLE: Duration = Duration::from_secs(20);
/// After the agent restarts: recovery and a reconcile round.
const RECOVER: Duration = Duration::from_secs(60);

struct Model {
    net: SimNet,
    agent: PeerAddr,
    ctl: Arc<Controller>,
    stranger: Arc<Controller>,
    stranger_provider: Arc<dyn Provider>,
    releases: BTreeMap<&'static str, (Kind, Arc<Release>)>,
    log: Vec<String>,
}

impl Model {
    fn new() -> Model {
        let net = SimNet::new(7);
        let ctl_provider = net
            .add_node_with("ctl", NodeConfig::default().mbit(100))
            .unwrap();
        let stranger_provider: Arc<dyn Provider> = Arc::new(
            net.add_node_with("stranger", NodeConfig::default().mbit(100))
                .unwrap(),
        );
        let mut cfg = AgentConfig::new(TrustStore::new([common::publisher().key_id()]));
        cfg.name = "agent".into();
        cfg.operators = Some([ctl_provider.local_id()].into_iter().collect());
        // The model checks state, not the request rate: no limit.
        cfg.request_rate = p2p_deploy::RequestRate {
            per_second: f64::MAX,
            burst: f64::MAX,
        };
        common::spawn_agent(&net, "agent", cfg);
        let agent = net.provider("agent").unwrap().local_addr();
        let config = || ControllerConfig {
            bootstrap: vec![agent.clone()],
            ..ControllerConfig::default()
        };
        let ctl = Arc::new(Controller::new(Arc::new(ctl_provider), config()));
        let stranger = Arc::new(Controller::new(stranger_provider.clone(), config()));
        Model {
            net,
            agent,
            ctl,
            stranger,
            stranger_provider,
            releases: BTreeMap::new(),
            log: Vec::new(),
        }
    }

    async fn release(&mut self, v: u8, kind: u8) -> (Kind, Arc<Release>) {
        let version = VERSIONS[usize::from(v) % VERSIONS.len()];
        if let Some(r) = self.releases.get(version) {
            return r.clone();
        }
        let kind = Kind::ALL[usize::from(kind) % Kind::ALL.len()];
        self.net.scripts().set(APP, version, kind.script());
        let r = (
            kind,
            common::release_with(APP, version, 20_000, HEALTH).await,
        );
        self.releases.insert(version, r.clone());
        r
    }

    fn kind_of(&self, version: &str) -> Option<Kind> {
        self.releases.get(version).map(|(k, _)| *k)
    }

    async fn info(&self) -> NodeInfo {
        match self.ctl.request(&self.agent, Request::Info).await {
            Ok(p2p_deploy::proto::Reply::Info(info)) => *info,
            other => self.fail(&format!("the agent does not answer info: {other:?}")),
        }
    }

    async fn app(&self) -> Option<AppInfo> {
        self.info().await.apps.into_iter().find(|a| a.name == APP)
    }

    fn fail(&self, what: &str) -> ! {
        panic!("{what}\noperations:\n  {}", self.log.join("\n  "))
    }

    async fn request(&mut self, request: Request) {
        let kind = request.kind();
        let r = bounded(self.ctl.request(&self.agent, request)).await;
        self.log.push(format!("  {kind}: {r:?}"));
    }

    /// Deploys through the controller; true when it reported the node
    /// activated.
    async fn deploy(&mut self, release: Arc<Release>) -> bool {
        let targets = self.targets().await;
        let (tx, _) = tokio::sync::mpsc::channel(1);
        let report = bounded(
            self.ctl
                .deploy(release, &targets, &RolloutPlan::default(), tx),
        )
        .await;
        let result = report.nodes.values().next().cloned();
        self.log.push(format!("  deploy: {result:?}"));
        matches!(result, Some(NodeResult::Activated))
    }

    async fn targets(&self) -> Vec<NodeInfo> {
        vec![self.info().await]
    }

    async fn crash(&mut self, down: Duration) {
        self.net.crash("agent").unwrap();
        tokio::time::sleep(down).await;
        self.net.restart("agent").unwrap();
        tokio::time::sleep(RECOVER).await;
    }

    /// What a stranger must not change.
    fn essence(app: &Option<AppInfo>) -> String {
        match app {
            Some(a) => format!(
                "active {:?}, running {}, installed {:?}, previous {:?}, history {:?}",
                a.active, a.running, a.installed, a.previous, a.history
            ),
            None => "no app".into(),
        }
    }

    async fn check(&self, activated: Option<&str>) {
        let Some(app) = self.app().await else {
            if let Some(v) = activated {
                self.fail(&format!("{v} was reported activated, and the app is gone"));
            }
            return;
        };
        if let Some(v) = activated
            && app.active.as_ref().map(ToString::to_string).as_deref() != Some(v)
        {
            self.fail(&format!(
                "{v} was reported activated, and {:?} is active",
                app.active
            ));
        }
        let Some(active) = app.active.as_ref().map(ToString::to_string) else {
            if app.status.as_ref().is_some_and(|s| s.state.is_live()) {
                self.fail(&format!("nothing is active, yet it runs: {:?}", app.status));
            }
            return;
        };
        if !app.installed.iter().any(|(v, _)| v.to_string() == active) {
            self.fail(&format!(
                "active {active} is not installed: {:?}",
                app.installed
            ));
        }
        let kind = self.kind_of(&active);
        if kind.is_none_or(Kind::bad) {
            self.fail(&format!("active {active} ({kind:?}) cannot pass its gate"));
        }
        let passed = app.history.iter().any(|h| {
            h.version.to_string() == active
                && matches!(h.outcome, p2p_deploy::proto::Outcome::Activated)
        });
        if !passed {
            self.fail(&format!(
                "active {active} never passed its gate here: {:?}",
                app.history
            ));
        }
        let live = app.status.as_ref().filter(|s| s.state.is_live());
        match (app.running, live) {
            (true, Some(s)) if s.version == active => {}
            (false, None) => {}
            (running, status) => self.fail(&format!(
                "kept running: {running}, active {active}, runtime: {status:?}"
            )),
        }
    }

    async fn stranger_stream(&mut self, bytes: &[u8]) {
        let before = Self::essence(&self.app().await);
        let conn = bounded(self.stranger_provider.connect(&self.agent)).await;
        if let Ok(conn) = conn
            && let Ok((mut send, mut recv)) = conn.open_bi().await
        {
            let _ = send.write_all(bytes).await;
            let _ = send.shutdown().await;
            let mut sink = Vec::new();
            let _ =
                tokio::time::timeout(Duration::from_secs(30), recv.read_to_end(&mut sink)).await;
            conn.close("done").await;
        }
        tokio::time::sleep(SETTLE).await;
        let after = Self::essence(&self.app().await);
        if before != after {
            self.fail(&format!(
                "a stranger's {} bytes changed the app: {before:?} -> {after:?}",
                bytes.len()
            ));
        }
    }

    async fn stranger_request(&mut self, arg: u8) {
        let version = semver::Version::parse(VERSIONS[usize::from(arg) % 4]).unwrap();
        let app = APP.to_string();
        let request = match arg % 8 {
            0 => Request::Stop { app },
            1 => Request::Start { app },
            2 => Request::Restart { app },
            3 => Request::Switch {
                app,
                version,
                options: ActivateOptions::default(),
            },
            4 => Request::Rollback {
                app,
                options: ActivateOptions::default(),
            },
            5 => Request::Remove { app, version: None },
            6 => {
                let (_, release) = self.release(arg / 8, 0).await;
                Request::DeployRef {
                    package: release.id(),
                    signatures: release.signatures.clone(),
                    options: ActivateOptions::default(),
                    from: Vec::new(),
                    peers: Vec::new(),
                }
            }
            _ => {
                let (_, release) = self.release(arg / 8, 0).await;
                Request::Deploy {
                    descriptor: release.descriptor.to_bytes(),
                    signatures: release.signatures.clone(),
                    options: ActivateOptions::default(),
                    peers: Vec::new(),
                }
            }
        };
        let kind = request.kind();
        let before = Self::essence(&self.app().await);
        let r = bounded(self.stranger.request(&self.agent, request)).await;
        self.log.push(format!("  stranger {kind}: {r:?}"));
        match r {
            Err(p2p_core::Error::Denied { .. }) => {}
            other => self.fail(&format!("a stranger's {kind} was not refused: {other:?}")),
        }
        tokio::time::sleep(SETTLE).await;
        let after = Self::essence(&self.app().await);
        if before != after {
            self.fail(&format!(
                "a stranger's refused {kind} changed the app: {before:?} -> {after:?}"
            ));
        }
    }
}

async fn bounded<F: std::future::Future>(f: F) -> F::Output {
    match tokio::time::timeout(BOUND, f).await {
        Ok(v) => v,
        Err(_) => panic!("an operation did not end within {BOUND:?} of virtual time"),
    }
}

async fn run(data: &[u8]) {
    let mut m = Model::new();
    let mut input = data;
    let mut ops = 0;
    while let [op, arg, rest @ ..] = input {
        input = rest;
        ops += 1;
        if ops > 12 {
            break;
        }
        let (op, arg) = (op % 13, *arg);
        let version = |a: u8| semver::Version::parse(VERSIONS[usize::from(a) % 4]).unwrap();
        let app = APP.to_string();
        let mut activated = None;
        match op {
            0 => {
                let (kind, release) = m.release(arg % 4, arg / 4).await;
                m.log.push(format!("deploy {} ({kind:?})", version(arg)));
                if m.deploy(release).await {
                    activated = Some(VERSIONS[usize::from(arg) % 4]);
                }
            }
            1 => {
                m.log.push(format!("switch to {}", version(arg)));
                m.request(Request::Switch {
                    app,
                    version: version(arg),
                    options: ActivateOptions::default(),
                })
                .await;
            }
            2 => {
                m.log.push("rollback".into());
                m.request(Request::Rollback {
                    app,
                    options: ActivateOptions::default(),
                })
                .await;
            }
            3 => {
                m.log.push("stop".into());
                m.request(Request::Stop { app }).await;
            }
            4 => {
                m.log.push("start".into());
                m.request(Request::Start { app }).await;
            }
            5 => {
                m.log.push("restart".into());
                m.request(Request::Restart { app }).await;
            }
            6 => {
                m.log.push(format!("remove {}", version(arg)));
                m.request(Request::Remove {
                    app,
                    version: Some(version(arg)),
                })
                .await;
            }
            7 => {
                m.log.push("remove the app".into());
                m.request(Request::Remove { app, version: None }).await;
            }
            8 => {
                let down = Duration::from_secs(u64::from(arg % 30) + 1);
                m.log.push(format!("crash the agent for {down:?}"));
                m.crash(down).await;
            }
            9 => {
                m.log.push(format!("wait {arg} s"));
                tokio::time::sleep(Duration::from_secs(u64::from(arg))).await;
            }
            10 => {
                let n = usize::from(arg).min(input.len());
                let (bytes, rest) = input.split_at(n);
                input = rest;
                m.log.push(format!("a stranger sends {bytes:?}"));
                m.stranger_stream(bytes).await;
            }
            11 => {
                m.log.push(format!("a stranger's request {arg}"));
                m.stranger_request(arg).await;
            }
            _ => {
                let (kind, release) = m.release(arg % 4, 0).await;
                let at = Duration::from_millis(u64::from(arg / 4) * 100);
                m.log.push(format!(
                    "deploy {} ({kind:?}), the agent crashing at {at:?}",
                    version(arg)
                ));
                let ctl = m.ctl.clone();
                let targets = m.targets().await;
                let (tx, rx) = tokio::sync::oneshot::channel();
                m.net
                    .spawn_on("ctl", async move {
                        let (ptx, _) = tokio::sync::mpsc::channel(1);
                        let report = ctl
                            .deploy(release, &targets, &RolloutPlan::default(), ptx)
                            .await;
                        let _ = tx.send(report);
                    })
                    .unwrap();
                tokio::time::sleep(at).await;
                m.crash(Duration::from_secs(2)).await;
                let report = bounded(rx).await;
                m.log
                    .push(format!("  deploy: {:?}", report.map(|r| r.nodes)));
            }
        }
        tokio::time::sleep(SETTLE).await;
        m.check(activated).await;
    }
}

fuzz_target!(|data: &[u8]| {
    let rt = p2p_fuzz::runtime();
    rt.block_on(run(data));
});
