//! Group `sim`: how fast the simulator runs a fleet.
//!
//! 100 nodes at 20 Mbit/s with 10 ms +/- 5 ms links and 1% loss, each making
//! transfers of 256 KiB to random peers with pauses in between, through a
//! partition and a crash: the same fleet scenario as the `sim_fleet`
//! example, with byte counts instead of SHA-256 so that the figure is the
//! simulator's cost. The baseline is real time (1 simulated second per wall
//! second), so the ratio is the speed-up.

#![allow(clippy::disallowed_methods)] // benchmarks measure wall time

use std::time::Instant;

use p2p_sim::scenario::Scenario;

use crate::Figure;

/// Runs the group.
pub fn run() -> Vec<Figure> {
    let mut scenario = Scenario::fleet(100, 2026).with_transfers(5, 256 * 1024);
    scenario.verify_data = false;
    // Warm up allocator and code paths once.
    let _ = Scenario::fleet(20, 1)
        .with_transfers(1, 64 * 1024)
        .run_blocking();
    let started = Instant::now();
    let report = scenario.run_blocking();
    let wall = started.elapsed().as_secs_f64().max(1e-9);
    let virt = report.virtual_time.as_secs_f64();
    let mut unlimited = scenario.clone();
    unlimited.mbit = 1_000_000;
    let started = Instant::now();
    unlimited.run_blocking();
    let free_wall = started.elapsed().as_secs_f64().max(1e-9);
    vec![
        Figure::new(
            "sim",
            "fleet_100_speed",
            virt / wall,
            "simulated s per wall s",
        )
        .target(">= 100")
        .goal(crate::Goal::AtLeast(100.0))
        .baseline(1.0, "(real time)"),
        Figure::new(
            "sim",
            "fleet_100_events_per_s",
            report.stats.events as f64 / wall,
            "events/s",
        ),
        Figure::new(
            "sim",
            "fleet_100_delivered",
            report.stats.bytes_delivered as f64 / 1e6 / wall,
            "MB per wall s",
        ),
        Figure::new("sim", "bandwidth_model_wall_cost", wall * 1e3, "ms")
            .baseline(free_wall * 1e3, "ms without bandwidth limits"),
    ]
}
