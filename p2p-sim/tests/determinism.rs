//! Determinism: a 50-node scenario with loss, a partition and a crash gives
//! the same trace hash for the same seed, in this process and in a freshly
//! spawned one, and different hashes for different seeds.

#![allow(clippy::unwrap_used)]

use std::process::Command;

use p2p_sim::scenario::{Report, Scenario};

const CHILD_SEED: &str = "P2P_SIM_DETERMINISM_CHILD_SEED";

fn run(seed: u64) -> Report {
    Scenario::fleet(50, seed)
        .with_transfers(2, 128 * 1024)
        .run_blocking()
}

#[test]
fn same_seed_gives_the_same_trace_hash_in_another_process() {
    if let Ok(seed) = std::env::var(CHILD_SEED) {
        // Child mode: print the hash for the parent to compare.
        let report = run(seed.parse().unwrap());
        println!("child trace hash: {}", report.trace_hash);
        return;
    }
    let here = run(42);
    assert!(
        here.trace_events > 500,
        "the scenario must actually move traffic: {here:?}"
    );
    assert_eq!(
        here.faults_applied, 4,
        "partition, crash, restart and heal must all happen: {here:?}"
    );
    assert!(
        here.stats.segments_parked > 0,
        "the partition must hold traffic back: {here:?}"
    );
    assert!(
        here.stats.segments_lost > 0,
        "the scenario must see loss: {here:?}"
    );
    assert!(here.transfers_ok > 0, "transfers must succeed: {here:?}");
    assert_eq!(
        run(42),
        here,
        "same seed, same process: the whole report must repeat"
    );

    let exe = std::env::current_exe().unwrap();
    let out = Command::new(exe)
        .args([
            "--exact",
            "same_seed_gives_the_same_trace_hash_in_another_process",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_SEED, "42")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "child failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let child = stdout
        .lines()
        .find_map(|l| l.split_once("child trace hash: ").map(|(_, h)| h))
        .unwrap_or_else(|| panic!("child printed no hash: {stdout}"));
    assert_eq!(
        child.trim(),
        here.trace_hash,
        "another process must reproduce the trace hash"
    );
}

#[test]
fn different_seeds_give_different_trace_hashes() {
    let a = run(1);
    let b = run(2);
    assert_ne!(a.trace_hash, b.trace_hash);
}
