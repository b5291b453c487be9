//! [`SimHealthChecker`]: health probes answered from a runtime's process
//! table and the probed instance's script.

use std::fmt;
use std::sync::Weak;

use async_trait::async_trait;
use p2p_core::{HealthCheckSpec, HealthChecker, HealthOutcome, ProbeTarget};

use super::table::Shared;

/// A [`HealthChecker`] answering from a [`SimRuntime`](super::SimRuntime)'s process table: a
/// probe passes iff the target's instance is live (and has the target's pid,
/// when one is given) and its script says it passes at the current virtual
/// time since the instance spawned. It answers at once, so it always returns
/// within `spec.timeout`.
#[derive(Clone)]
pub struct SimHealthChecker {
    // Weak so that a checker kept by the agent does not keep a dropped
    // runtime's table alive.
    pub(super) shared: Weak<Shared>,
}

impl fmt::Debug for SimHealthChecker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimHealthChecker")
            .field("runtime_alive", &(self.shared.strong_count() > 0))
            .finish()
    }
}

#[async_trait]
impl HealthChecker for SimHealthChecker {
    async fn probe(&self, target: &ProbeTarget, spec: &HealthCheckSpec) -> HealthOutcome {
        let Some(shared) = self.shared.upgrade() else {
            return HealthOutcome::Unhealthy("runtime is gone".to_string());
        };
        let table = shared.lock();
        let Some(entry) = table.apps.get(&target.name) else {
            return HealthOutcome::Unhealthy(format!("no app named {}", target.name));
        };
        let Some(instance) = &entry.instance else {
            return HealthOutcome::Unhealthy(format!(
                "{} is not running ({:?})",
                target.name, entry.status.state
            ));
        };
        if let Some(pid) = target.pid
            && entry.status.pid != Some(pid)
        {
            return HealthOutcome::Unhealthy(format!("pid {pid} is not running"));
        }
        instance
            .script
            .probe_at(&spec.probe, instance.spawned.elapsed())
    }
}
