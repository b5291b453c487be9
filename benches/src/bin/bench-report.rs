//! Runs benchmark groups and prints one line per figure as it is
//! measured, `group name: value unit (target T, baseline B, ratio=R)`,
//! then every figure in one table (value, target, baseline from the same
//! run, ratio, whether the target is met) and the targets missed.
//!
//! Usage: cargo run --release -p p2p-benches --bin bench-report -- [GROUP...]

use clap::Parser;
use p2p_benches::groups::ALL;

#[derive(Parser)]
#[command(about = "Run benchmark groups and print their figures")]
struct Args {
    /// Groups to run (all when none is named).
    groups: Vec<String>,
    /// List the groups and exit.
    #[arg(long)]
    list: bool,
}

fn main() {
    // A child process of the `swarm-netns` group plays its role and exits.
    if let Some(code) = p2p_benches::groups::swarm_netns::child_main() {
        std::process::exit(code)
    }
    // And those of the `nat-netns` group.
    if let Some(code) = p2p_benches::groups::nat_netns::child_main() {
        std::process::exit(code)
    }
    // And the floor programs the `agent` and `swarm-netns` groups compare with.
    if let Some(code) = p2p_benches::groups::floor::child_main() {
        std::process::exit(code)
    }
    // So does an agent of the `agent` group.
    if let Some(code) = p2p_benches::groups::agent::child_main() {
        std::process::exit(code)
    }
    let args = Args::parse();
    if args.list {
        for g in ALL {
            println!("{}: {}", g.name, g.about);
        }
        return;
    }
    for name in &args.groups {
        if !ALL.iter().any(|g| g.name == name) {
            let known: Vec<&str> = ALL.iter().map(|g| g.name).collect();
            eprintln!("unknown group {name:?}; known groups: {}", known.join(", "));
            std::process::exit(2);
        }
    }
    if cfg!(debug_assertions) {
        eprintln!("warning: a debug build; run with --release for meaningful figures");
    }
    let mut all = Vec::new();
    for g in ALL
        .iter()
        .filter(|g| args.groups.is_empty() || args.groups.iter().any(|n| n == g.name))
    {
        for figure in (g.run)() {
            println!("{figure}");
            all.push(figure);
        }
    }
    if !all.is_empty() {
        println!("\n{}", p2p_benches::table(&all));
        let missed: Vec<String> = all
            .iter()
            .filter(|f| f.met() == Some(false))
            .map(|f| format!("{} {}", f.group, f.name))
            .collect();
        if missed.is_empty() {
            println!("every checkable target met");
        } else {
            println!("targets missed: {}", missed.join("; "));
        }
    }
}
