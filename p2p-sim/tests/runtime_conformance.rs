//! The runtime conformance suite on simulated processes, in paused
//! virtual time: each behaviour is a [`Script`] in the runtime's book.

use std::sync::Arc;

use async_trait::async_trait;
use p2p_core::conformance::runtime::{Behaviour, TestRuntime};
use p2p_core::runtime::{AppSpec, HealthCheckSpec, HealthProbe, Runtime};
use p2p_sim::SimClock;
use p2p_sim::process::{Script, ScriptBook, SimRuntime};

const VERSION: &str = "1.0.0";

struct SimTestRuntime {
    book: ScriptBook,
    rt: SimRuntime,
}

impl SimTestRuntime {
    fn new() -> Self {
        let book = ScriptBook::new();
        let clock = Arc::new(SimClock::new(SimClock::DEFAULT_START_MS));
        let rt = SimRuntime::new(book.clone(), clock, 7);
        SimTestRuntime { book, rt }
    }
}

#[async_trait]
impl TestRuntime for SimTestRuntime {
    fn runtime(&self) -> &dyn Runtime {
        &self.rt
    }

    fn app(&self, name: &str, behaviour: &Behaviour) -> AppSpec {
        let script = match behaviour {
            Behaviour::Healthy => Script::healthy(),
            Behaviour::ExitsAfter { code, after } => Script::exits_after(*code, *after),
            Behaviour::NeverHealthy => Script::never_healthy(),
            Behaviour::WritesLines { every } => Script::healthy().with_logs_every(*every),
            Behaviour::IgnoresStop => Script::healthy().ignoring_term(),
        };
        self.book.set(name, VERSION, script);
        AppSpec {
            // Every probe but a process probe follows the script.
            health: Some(HealthCheckSpec::new(HealthProbe::Http {
                url: "http://127.0.0.1:8080/health".into(),
            })),
            ..AppSpec::new(name, VERSION, "./app")
        }
    }

    fn line_number(&self, line: &str) -> Option<u64> {
        // `NAME VERSION heartbeat N`
        line.rsplit_once(" heartbeat ")?.1.parse().ok()
    }

    async fn shutdown(&self) {
        self.rt.shutdown();
    }
}

p2p_core::runtime_conformance_tests!(SimTestRuntime::new(), #[tokio::test(start_paused = true)]);
