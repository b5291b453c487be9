//! Group `sites`: a 100 MB release to 200 simulated agents at five sites
//! of 40 (1 Gbit/s inside a site, 50 Mbit/s up and down on each site's
//! WAN link, 10 ms), the controller at a sixth site behind the same link.
//! Measured twice in the same run: with site awareness, and with the same
//! swarm blind to sites (the baseline). See [`crate::swarm`].
//!
//! Figures: the most bytes one site's WAN downlink carried, in releases
//! (target <= 1.3, the blind swarm as baseline); and the rollout's time
//! against the topology's bound, F / 50 Mbit/s (every site's WAN downlink
//! must carry the release once, and the controller's WAN uplink must send
//! it once), target <= 1.3x. `SITES_NODES` and `SITES_MB` change the size
//! (defaults 200 and 100).

use crate::swarm::{SwarmOutcome, SwarmScenario};
use crate::{Figure, Goal};

/// Runs the group.
pub fn run() -> Vec<Figure> {
    let nodes = env_or("SITES_NODES", 200);
    let size = env_or("SITES_MB", 100) * 1_000_000;
    let aware = SwarmScenario::five_sites(nodes, size, true).run();
    let blind = SwarmScenario::five_sites(nodes, size, false).run();
    let label = format!(
        "sim N={nodes} at 5 sites, {} MB, WAN 50 Mbit/s",
        size / 1_000_000
    );
    let most = |o: &SwarmOutcome| {
        o.site_wan_down.iter().map(|(_, b)| *b).max().unwrap_or(0) as f64 / size as f64
    };
    let per_site = |o: &SwarmOutcome| {
        o.site_wan_down
            .iter()
            .map(|(s, b)| format!("{s} {:.2}", *b as f64 / size as f64))
            .collect::<Vec<_>>()
            .join(", ")
    };
    vec![
        Figure::new(
            "sites",
            format!(
                "{label}: most WAN downlink bytes of one site, in releases (aware: {}; blind: {})",
                per_site(&aware),
                per_site(&blind)
            ),
            most(&aware),
            "releases",
        )
        .target("<= 1.3 releases")
        .goal(Goal::AtMost(1.3))
        .baseline(most(&blind), "releases (the same swarm blind to sites)"),
        Figure::new(
            "sites",
            format!(
                "{label}: rollout time, {}/{nodes} complete (blind to sites: {:.1} s, {}/{nodes}; wall {:.0} s)",
                aware.complete(),
                blind.completion().as_secs_f64(),
                blind.complete(),
                (aware.wall + blind.wall).as_secs_f64()
            ),
            aware.completion().as_secs_f64(),
            "s",
        )
        .target("<= 1.3x bound")
        .goal(Goal::RatioAtMost(1.3))
        .baseline(aware.bound.as_secs_f64(), "s (bound: F / WAN rate)"),
    ]
}

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(default)
}
