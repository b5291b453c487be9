//! The runtime conformance suite on real processes: each behaviour is a
//! `sh -c` one-liner, and its health probe checks a file the app makes
//! once it is healthy.
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use p2p_core::SystemClock;
use p2p_core::conformance::runtime::{Behaviour, TestRuntime};
use p2p_core::runtime::{AppSpec, HealthCheckSpec, HealthProbe, Runtime};
use p2p_runtime::{ProcessRuntime, RuntimeConfig};

struct ProcessTestRuntime {
    dir: tempfile::TempDir,
    rt: ProcessRuntime,
}

impl ProcessTestRuntime {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let rt = ProcessRuntime::new(
            RuntimeConfig::new(dir.path().join("rt")),
            Arc::new(SystemClock),
        )
        .unwrap();
        ProcessTestRuntime { dir, rt }
    }

    /// The file app `name` makes once it is healthy.
    fn healthy_file(&self, name: &str) -> PathBuf {
        self.dir.path().join(format!("{name}.healthy"))
    }
}

#[async_trait]
impl TestRuntime for ProcessTestRuntime {
    fn runtime(&self) -> &dyn Runtime {
        &self.rt
    }

    fn app(&self, name: &str, behaviour: &Behaviour) -> AppSpec {
        let healthy = format!("touch {name}.healthy");
        let script = match behaviour {
            Behaviour::Healthy => format!("{healthy}; exec sleep 1000"),
            Behaviour::ExitsAfter { code, after } => {
                format!("{healthy}; sleep {:.3}; exit {code}", after.as_secs_f64())
            }
            Behaviour::NeverHealthy => "exec sleep 1000".to_string(),
            Behaviour::WritesLines { every } => format!(
                "{healthy}; n=0; while :; do n=$((n+1)); echo \"line $n\"; sleep {:.3}; done",
                every.as_secs_f64()
            ),
            // An ignored signal stays ignored across exec.
            Behaviour::IgnoresStop => format!("trap '' TERM; {healthy}; exec sleep 1000"),
        };
        AppSpec {
            workdir: self.dir.path().to_path_buf(),
            args: vec!["-c".into(), script],
            health: Some(HealthCheckSpec::new(HealthProbe::Exec {
                command: "test".into(),
                args: vec!["-e".into(), self.healthy_file(name).display().to_string()],
            })),
            stop_grace: Duration::from_secs(5),
            ..AppSpec::new(name, "1.0.0", "sh")
        }
    }

    fn line_number(&self, line: &str) -> Option<u64> {
        line.strip_prefix("line ")?.parse().ok()
    }

    async fn shutdown(&self) {
        self.rt.shutdown().await;
    }
}

p2p_core::runtime_conformance_tests!(
    ProcessTestRuntime::new(),
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
);
