//! One swarm run on the simulator, shown from the inside: when the
//! targets finished, and how busy the links were over time (every 100 ms
//! for the first 2 s, then every 0.5 s). For tuning
//! the swarm; `bench-report swarm` is the benchmark.
//!
//! ```text
//! cargo run --release -p p2p-benches --example swarm_timeline
//! N=500 SEED=3 DIAL=10 cargo run --release -p p2p-benches --example swarm_timeline
//! ```
//!
//! Settings (environment): `N` targets (100), `SEED` (the scenario's),
//! the agents' `DIAL`, `PER_PEER`, `UPLOAD_SLOTS`, `SEED_INFLIGHT`, and
//! the controller's `COPIES` (descriptors sent whole), and the variants'
//! `LOSS_PCT` (packets lost) and `SLOW_PCT` (nodes at a tenth of the rate).
//! The scenario is the issue's: 100 MB in 256 KiB chunks, 100 Mbit/s
//! everywhere, 20 ms latency.

use std::time::Duration;

use p2p_benches::swarm::{SwarmScenario, TrafficSample};

fn setting(name: &str) -> Option<usize> {
    let v = std::env::var(name).ok()?;
    match v.parse() {
        Ok(n) => Some(n),
        Err(_) => {
            eprintln!("{name}={v:?} is not a number");
            std::process::exit(2);
        }
    }
}

fn main() {
    let n = setting("N").unwrap_or(100);
    let mut s = SwarmScenario::new(n);
    if let Some(seed) = setting("SEED") {
        s.seed = seed as u64;
    }
    let agent = &mut s.agent;
    for (name, field) in [
        ("DIAL", &mut agent.dial),
        ("PER_PEER", &mut agent.per_peer),
        ("UPLOAD_SLOTS", &mut agent.upload_slots),
        ("SEED_INFLIGHT", &mut agent.seed_inflight),
    ] {
        if let Some(v) = setting(name) {
            *field = v;
        }
    }
    if let Some(copies) = setting("COPIES") {
        s.descriptor_copies = copies;
    }
    // Percent of packets lost, percent of nodes at a tenth of the rate.
    if let Some(loss) = setting("LOSS_PCT") {
        s.loss = loss as f64 / 100.0;
    }
    if let Some(slow) = setting("SLOW_PCT") {
        s.slow_share = slow as f64 / 100.0;
    }
    s.sample_every = Some(Duration::from_millis(100));
    let o = s.run();
    let f = &o.finished;
    if f.is_empty() {
        println!("no target finished: {:?}", o.report);
        std::process::exit(1);
    }
    let at = |q: f64| f[((f.len() - 1) as f64 * q) as usize].as_secs_f64();
    println!(
        "{n} targets, {} finished; bound {:.2} s; first {:.2}, p10 {:.2}, p50 {:.2}, p90 {:.2}, last {:.2} s; ratio {:.3}; wall {:.0} s",
        f.len(),
        o.bound.as_secs_f64(),
        at(0.0),
        at(0.1),
        at(0.5),
        at(0.9),
        at(1.0),
        o.ratio(),
        o.wall.as_secs_f64()
    );
    // Bytes per second of one node's link.
    let rate = s.mbit as f64 * 1e6 / 8.0;
    println!("\n  time   controller uplink   targets' downlinks (mean)");
    let mut last: Option<&TrafficSample> = None;
    // Every 100 ms for the first 2 s (the start), then every 0.5 s.
    let shown = o
        .traffic
        .iter()
        .enumerate()
        .filter(|(i, _)| *i <= 20 || i % 5 == 0)
        .map(|(_, t)| t);
    for t in shown {
        if let Some(p) = last {
            let dt = (t.at - p.at).as_secs_f64();
            let seed = (t.seed_sent - p.seed_sent) as f64 / dt / rate;
            let fleet = (t.targets_received() - p.targets_received()) as f64 / dt / rate / n as f64;
            println!(
                "{:>6.1} s {:>12.0}% {:>18.0}%",
                t.at.as_secs_f64(),
                seed * 100.0,
                fleet * 100.0
            );
        }
        last = Some(t);
    }
    // How evenly the work was shared, over the middle of the run.
    let done = at(0.5);
    let (a, b) = (done * 0.3, done * 0.7);
    let near = |x: f64| {
        o.traffic
            .iter()
            .min_by_key(|t| (t.at.as_secs_f64() - x).abs().to_bits())
    };
    if let (Some(a), Some(b)) = (near(a), near(b))
        && b.at > a.at
    {
        let dt = (b.at - a.at).as_secs_f64();
        let spread = |f: &dyn Fn(&p2p_sim::NodeTraffic) -> u64| {
            let mut v: Vec<f64> = a
                .targets
                .iter()
                .zip(&b.targets)
                .map(|(x, y)| (f(y) - f(x)) as f64 / dt / rate * 100.0)
                .collect();
            v.sort_by(f64::total_cmp);
            let q = |p: f64| v[((v.len() - 1) as f64 * p) as usize];
            format!(
                "min {:.0}%, p10 {:.0}%, p50 {:.0}%, p90 {:.0}%, max {:.0}%",
                q(0.0),
                q(0.1),
                q(0.5),
                q(0.9),
                q(1.0)
            )
        };
        println!(
            "\nfrom {:.1} s to {:.1} s, per target:\n  uplink   {}\n  downlink {}",
            a.at.as_secs_f64(),
            b.at.as_secs_f64(),
            spread(&|t| t.sent),
            spread(&|t| t.received)
        );
    }
    // The last target to take in the release's size: what it took in
    // every half second.
    let reached = |i: usize| {
        o.traffic
            .iter()
            .position(|t| t.targets[i].received >= s.size as u64)
    };
    if let Some((i, k)) = (0..n)
        .filter_map(|i| reached(i).map(|k| (i, k)))
        .max_by_key(|&(_, k)| k)
    {
        let steps: Vec<String> = o.traffic[..=k]
            .iter()
            .step_by(5)
            .collect::<Vec<_>>()
            .windows(2)
            .map(|w| {
                let dt = (w[1].at - w[0].at).as_secs_f64();
                let got = w[1].targets[i].received - w[0].targets[i].received;
                format!("{:.0}", got as f64 / dt / rate * 100.0)
            })
            .collect();
        println!(
            "
last to take in {} MB: target {i}, at {:.1} s; its downlink every 0.5 s (%): {}",
            s.size / 1_000_000,
            o.traffic[k].at.as_secs_f64(),
            steps.join(" ")
        );
    }
}
