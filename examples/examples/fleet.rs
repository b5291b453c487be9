//! The whole deploy story on one machine, with no config and no service
//! to start:
//!
//! ```text
//! cargo run --release --example fleet                 # 5 agents over iroh
//! cargo run --release --example fleet -- --backend libp2p --nodes 8
//! cargo run --release --example fleet -- --backend sim --nodes 200
//! cargo run --release --example fleet -- --keep       # then drive it with p2pctl
//! ```
//!
//! It starts a fleet of agents on loopback (each with its own data
//! directory under a temporary directory, all in one private network),
//! makes a signing key, packages and signs `demo-app` (a small HTTP
//! service of this repository, built here with `cargo build -p demo-app`), rolls v1 out two
//! nodes at a time with progress, prints the status table, rolls out a v2
//! whose health check fails and shows it rolled back, and prints merged
//! logs. Exit code 0 when the story went as told, 1 otherwise.

use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::{Parser, ValueEnum};
use p2p_examples::fleet::{self, RealOptions, Summary};
use p2p_examples::net::Backend;

#[derive(Parser)]
#[command(about = "Deploy, fail, roll back and read logs on a local fleet")]
struct Args {
    /// Agents to start.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u16).range(1..=500))]
    nodes: u16,
    /// The transport, or the deterministic simulator.
    #[arg(long, value_enum, default_value_t = FleetBackend::Iroh)]
    backend: FleetBackend,
    /// Leave the fleet running (until Ctrl-C) and print the `p2pctl`
    /// commands that talk to it. Real transports only.
    #[arg(long)]
    keep: bool,
    /// The simulated network's seed (`--backend sim`): the same seed
    /// gives the same run and trace hash.
    #[arg(long, default_value_t = 2026)]
    seed: u64,
}

#[derive(Clone, Copy, ValueEnum)]
enum FleetBackend {
    Iroh,
    Libp2p,
    Sim,
}

fn main() -> ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("error")),
        )
        .with_writer(std::io::stderr)
        .init();
    match run(&args) {
        Ok(summary) => match summary.check() {
            Ok(()) => {
                println!(
                    "\nfleet: done. v1 on all {} nodes; v2 failed its health check and was rolled back.",
                    summary.nodes
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("fleet: the story did not go as told: {e:#}");
                ExitCode::FAILURE
            }
        },
        Err(e) => {
            eprintln!("fleet: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> Result<Summary> {
    let tmp = tempfile::Builder::new().prefix("p2p-fleet-").tempdir()?;
    let backend = match args.backend {
        FleetBackend::Sim => {
            if args.keep {
                bail!("--keep needs a real transport: the simulated fleet lives in virtual time");
            }
            return fleet::run_sim_blocking(usize::from(args.nodes), args.seed, tmp.path());
        }
        FleetBackend::Iroh => Backend::Iroh,
        FleetBackend::Libp2p => Backend::Libp2p,
    };
    println!("building demo-app (cargo build -p demo-app)");
    let exe = std::env::current_exe().context("locating this example")?;
    let demo_app = fleet::build_demo_app(&exe)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let root = if args.keep {
        // Kept: the fleet's directories outlive this process.
        tmp.keep()
    } else {
        tmp.path().to_path_buf()
    };
    rt.block_on(fleet::run_real(&RealOptions {
        nodes: usize::from(args.nodes),
        backend,
        root,
        demo_app,
        keep: args.keep,
    }))
}
