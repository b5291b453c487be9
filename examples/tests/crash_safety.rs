//! Crash safety on a real disk: `p2pd` killed with SIGKILL at random
//! points of 50 deploys in a row (transfer, verification, unpacking,
//! start, health gate, commit), restarted each time, and checked:
//!
//! - it comes back and runs the app healthy, on the version it ran before
//!   the deploy or on the new one, and nothing else;
//! - exactly one copy of the app runs;
//! - every installed version's files are byte for byte the package's,
//!   and nothing else is left in the versions directory (no staging
//!   directory, no half-written archive);
//! - the agent's records still load (it answers status with them).
//!
//! `P2P_CRASH_SEED=<n>` picks the kill points (default 2026); the seed is
//! printed so a failure can be replayed.
#![allow(clippy::unwrap_used)]
// Real processes: deadlines are on the wall clock.
#![allow(clippy::disallowed_methods)]

use std::time::Duration;

use rand::{RngExt, SeedableRng};

mod common;
use common::*;

const ITERATIONS: usize = 50;

#[test]
fn sigkill_at_random_points_of_fifty_deploys_leaves_a_consistent_node() {
    let seed: u64 = std::env::var("P2P_CRASH_SEED")
        .ok()
        .map(|s| s.parse().expect("P2P_CRASH_SEED: a number"))
        .unwrap_or(2026);
    eprintln!("crash safety: P2P_CRASH_SEED={seed}");
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let w = World::new();
    let dir = w.node("n1", "iroh");
    let mut node = Daemon::start(&dir, &[]);
    let v1 = w.package("1.0.0", "\"--name\", \"v1\"");
    w.ok(&["deploy", &v1, "--bootstrap", &node.addr()]);
    let source = std::fs::read(w.path().join("app-1.0.0/demo-app")).unwrap();
    let mut current = "1.0.0".to_string();
    let mut landed = 0;

    for i in 1..=ITERATIONS {
        let version = format!("1.{i}.0");
        let pkg = w.package(&version, "\"--name\", \"next\"");
        let kill_at = Duration::from_millis(rng.random_range(0..800));
        node = w.sigkill_during_deploy(node, &pkg, kill_at);
        let bs = node.addr();
        let at = format!("iteration {i}, SIGKILL {kill_at:?} into the deploy of {version}");
        let active = healthy(&w, &bs, "n1");
        assert!(
            active == current || active == version,
            "{at}: active {active}, expected {current} or {version}"
        );
        if active == version {
            landed += 1;
        }
        current = active;

        let procs = processes_under(&dir);
        assert_eq!(procs.len(), 1, "{at}: app processes {procs:?}");

        let st = status_of(&w, &bs, "n1");
        let installed: Vec<String> = st[0]["app"]["installed"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v[0].as_str().unwrap().to_string())
            .collect();
        assert!(installed.contains(&current), "{at}: {installed:?}");
        for v in &installed {
            let bin = dir.join("versions/demo").join(v).join("demo-app");
            assert_eq!(
                std::fs::read(&bin).unwrap(),
                source,
                "{at}: {} differs from the package's",
                bin.display()
            );
            let manifest =
                std::fs::read_to_string(dir.join("versions/demo").join(v).join("p2p.toml"))
                    .unwrap();
            assert!(
                manifest.contains(&format!("version = \"{v}\"")),
                "{at}: {manifest}"
            );
        }
        // Nothing but the installed versions under versions/.
        let mut on_disk: Vec<String> = std::fs::read_dir(dir.join("versions/demo"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        on_disk.sort();
        let mut want = installed.clone();
        want.sort();
        assert_eq!(
            on_disk, want,
            "{at}: versions/demo holds more than the installed versions"
        );
        let top: Vec<String> = std::fs::read_dir(dir.join("versions"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            top,
            vec!["demo".to_string()],
            "{at}: versions/ holds {top:?}"
        );
    }
    eprintln!("crash safety: {landed} of {ITERATIONS} killed deploys had landed before the kill");
    assert!(
        landed > 0 && landed < ITERATIONS,
        "kill points should fall both before and after the commit ({landed} of {ITERATIONS} landed)"
    );
}
