//! Embedding the SDK: a node agent and a controller in your own program,
//! composed from the traits' implementations you choose. Here: iroh on
//! loopback, real processes, state and versions on disk; one signed
//! release of a shell-script app deployed to the agent.
//!
//! Run: `cargo run --example embed`. `cargo test` compiles it.

use std::sync::Arc;

use anyhow::Result;
use p2p_core::{Ed25519Signer, FsStorage, NodeKey, Provider, SystemClock};
use p2p_deploy::{
    Agent, AgentConfig, AgentParts, BuildOptions, Controller, ControllerConfig, DirInstaller,
    PackageFile, Release, RolloutPlan, TrustStore, UnpackLimits, build,
};
use p2p_iroh::{IrohConfig, IrohProvider};
use p2p_runtime::{ProcessRuntime, RuntimeConfig};

#[tokio::main]
async fn main() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let rng = &mut rand::rng();

    // The publisher's key signs releases; agents trust its public half.
    let publisher = Ed25519Signer::generate(rng);

    // An agent: transport, process runtime, state, installer, clock.
    let node = NodeKey::generate(rng);
    let provider = Arc::new(IrohProvider::bind(&node, IrohConfig::loopback()).await?);
    let runtime = Arc::new(ProcessRuntime::new(
        RuntimeConfig::new(dir.path().join("runtime")),
        Arc::new(SystemClock),
    )?);
    let mut cfg = AgentConfig::new(TrustStore::new([publisher.key_id()]));
    cfg.name = "edge-1".into();
    cfg.labels.insert("role".into(), "web".into());
    let agent = Agent::new(
        cfg,
        AgentParts {
            provider: provider.clone(),
            runtime: runtime.clone(),
            storage: Arc::new(FsStorage::open(dir.path().join("state")).await?),
            installer: Arc::new(DirInstaller::new(
                dir.path().join("versions"),
                UnpackLimits::default(),
            )),
            clock: Arc::new(SystemClock),
            seed: 1,
        },
    );
    let serving = tokio::spawn(async move { agent.run().await });

    // A release: a directory with p2p.toml, packaged and signed.
    let app = dir.path().join("hello");
    std::fs::create_dir_all(&app)?;
    let script = app.join("run.sh");
    std::fs::write(
        &script,
        "#!/bin/sh\nwhile true; do echo hello; sleep 1; done\n",
    )?;
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    std::fs::write(
        app.join("p2p.toml"),
        "name = \"hello\"\nversion = \"1.0.0\"\nentrypoint = \"run.sh\"\n",
    )?;
    let file = dir.path().join("hello-1.0.0.p2p");
    build(&app, &file, &SystemClock, BuildOptions::default())?;
    PackageFile::open(&file)?.sign(&publisher).await?;
    let release = Arc::new(Release::from_package(&PackageFile::open(&file)?));

    // A controller: finds the node, picks targets by label, deploys.
    let ctl_key = NodeKey::generate(rng);
    let ctl = Controller::new(
        Arc::new(IrohProvider::bind(&ctl_key, IrohConfig::loopback()).await?),
        ControllerConfig {
            bootstrap: vec![provider.local_addr()],
            ..ControllerConfig::default()
        },
    );
    let views = ctl.nodes().await;
    let targets = Controller::select(&views, Some(&"role=web".parse()?), &[])?;
    let (progress, _) = tokio::sync::mpsc::channel(1);
    let report = ctl
        .deploy(release, &targets, &RolloutPlan::default(), progress)
        .await;
    println!("{report:?}");
    assert!(report.is_success());

    serving.abort();
    runtime.shutdown().await;
    Ok(())
}
