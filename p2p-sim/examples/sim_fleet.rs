//! A 100-node simulated fleet moving data under loss, a partition and a
//! crash, in virtual time. Prints virtual time, wall time, their ratio, the
//! transfer outcomes and the trace hash: the same seed prints the same hash
//! on every run and every machine.
//!
//! Usage: cargo run -p p2p-sim --example sim_fleet -- [--seed N] [--nodes N]

use clap::Parser;
use p2p_sim::scenario::Scenario;

#[derive(Parser)]
#[command(about = "Run a simulated fleet and print its trace hash")]
struct Args {
    /// Network seed: the same seed gives the same run.
    #[arg(long, default_value_t = 2026)]
    seed: u64,
    /// Number of nodes.
    #[arg(long, default_value_t = 100)]
    nodes: usize,
    /// Transfers per node.
    #[arg(long, default_value_t = 3)]
    transfers: usize,
    /// Bytes per transfer.
    #[arg(long, default_value_t = 256 * 1024)]
    bytes: usize,
}

fn main() {
    let args = Args::parse();
    let scenario =
        Scenario::fleet(args.nodes, args.seed).with_transfers(args.transfers, args.bytes);
    println!(
        "simulating {} nodes at {} Mbit/s, {:?} latency, {:.0}% loss, a partition and a crash (seed {})",
        scenario.nodes,
        scenario.mbit,
        scenario.link.latency,
        scenario.link.loss * 100.0,
        scenario.seed
    );
    #[allow(clippy::disallowed_methods)] // wall time of the whole run, outside the simulation
    let started = std::time::Instant::now();
    let report = scenario.run_blocking();
    let wall = started.elapsed();
    let ratio = report.virtual_time.as_secs_f64() / wall.as_secs_f64().max(1e-9);
    println!(
        "transfers: {} ok, {} failed; {} MB delivered in {} segments ({} lost, {} held by the partition)",
        report.transfers_ok,
        report.transfers_failed,
        report.stats.bytes_delivered / 1_000_000,
        report.stats.segments_delivered,
        report.stats.segments_lost,
        report.stats.segments_parked
    );
    println!("virtual time: {:.3} s", report.virtual_time.as_secs_f64());
    println!("wall time: {:.3} s", wall.as_secs_f64());
    println!("virtual/wall: {ratio:.1}x");
    println!("trace events: {}", report.trace_events);
    println!("trace hash: {}", report.trace_hash);
}
