//! Group `swarm`: a release to N agents on the simulator through the
//! swarm, against the Kumar-Ross bound and against every byte coming
//! from the controller, measured in the same run (see [`crate::swarm`]).
//!
//! One line per scenario, `swarm sim ...: <completion> s (target <= 1.3x
//! bound, baseline <bound> s (Kumar-Ross bound), ratio=<completion/bound>)`,
//! with the controller-only time in the name. `SWARM_NODES` (comma
//! separated, default `10,100`: what a 2-core machine runs in a few
//! minutes; `500` adds about 7 minutes) picks the fleet sizes.

use crate::Figure;
use crate::swarm::{SwarmOutcome, SwarmScenario};

/// Runs the group.
pub fn run() -> Vec<Figure> {
    let sizes: Vec<usize> = std::env::var("SWARM_NODES")
        .ok()
        .map(|v| v.split(',').filter_map(|n| n.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![10, 100]);
    let mut out = Vec::new();
    for &n in &sizes {
        let base = SwarmScenario::new(n);
        let mut variants = vec![("", base.clone())];
        if n <= 100 {
            let mut lossy = base.clone();
            lossy.loss = 0.01;
            variants.push((" loss=1%", lossy));
            let mut slow = base.clone();
            slow.slow_share = 0.2;
            variants.push((" slow=20%@1/10", slow));
        }
        for (label, s) in variants {
            let swarm = s.run();
            let mut serial = s.clone();
            serial.swarm = false;
            let serial = serial.run();
            out.push(figure(n, label, &swarm, &serial));
        }
    }
    out
}

fn figure(n: usize, label: &str, swarm: &SwarmOutcome, serial: &SwarmOutcome) -> Figure {
    let name = format!(
        "sim N={n} 100MB 100Mbit/s 20ms{label} (controller only {:.1} s, {:.1}x slower; {}/{n} complete, the first at {:.1} s; wall {:.0} s)",
        serial.completion().as_secs_f64(),
        serial.completion().as_secs_f64() / swarm.completion().as_secs_f64().max(1e-9),
        swarm.complete(),
        swarm
            .finished
            .first()
            .copied()
            .unwrap_or_default()
            .as_secs_f64(),
        (swarm.wall + serial.wall).as_secs_f64(),
    );
    Figure::new("swarm", name, swarm.completion().as_secs_f64(), "s")
        .target("<= 1.3x bound")
        .goal(crate::Goal::RatioAtMost(1.3))
        .baseline(swarm.bound.as_secs_f64(), "s (Kumar-Ross bound)")
}
