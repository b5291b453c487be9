//! Group `agent`: the node agent as a process, composed exactly as `p2pd
//! run` composes it ([`RunningNode`] from a data directory with a
//! `p2pd.toml`), over iroh on loopback. `bench-report` re-executes itself
//! as the agent (environment variable `P2P_BENCH_AGENT` = the data
//! directory), so the figures are those of a separate process.
//!
//! Agents run with `MALLOC_ARENA_MAX=2`, as the sample systemd unit
//! (`examples/systemd/p2pd.service`) runs p2pd.
//!
//! - `idle_rss`: resident memory of an agent 2 s after it is ready, with no
//!   app. Target at most 20 MB. Baseline: the same executable idling
//!   without an agent (its floor).
//! - `start_to_ready`: from spawning the process to its `p2pd.addr`
//!   written (key loaded, transport bound, runtime and state open), median
//!   of 5. Target at most 300 ms. Baseline: spawning the same executable
//!   to exit at once.
//! - `status_p50`: a `Status` request from a controller over an open
//!   connection to the answer, median of 300. Target at most 5 ms.
//!   Baseline: a 64-byte request and answer over loopback TCP.
//! - `release_100mb_to_10`: a 100 MB release (incompressible; `AGENT_MB`
//!   sets another size, in MB, in every figure of the deploy) deployed to
//!   10 agent processes at once: until every agent holds it, and until
//!   every agent runs it behind its health check, the median of three
//!   deploys (each of a release of fresh bytes). The design's target was
//!   under 30 s. Baseline: copying the same bytes once over loopback TCP
//!   to one peer.
//! - `release_100mb_receiver_cpu_per_mib`: the CPU time (user and system,
//!   from `/proc/<pid>/stat`) each agent process used during a deploy,
//!   per MiB of the release, the mean over the agents (the most in the
//!   name), and of the three deploys the median. It covers all the agent
//!   does for it: receiving, verifying, storing, passing chunks on to
//!   peers, unpacking and starting the app. Target at most 1.5x the
//!   floor. Baseline: the floor programs ([`super::floor`]) on the same
//!   package over iroh on loopback, as many floor receivers at once as
//!   there are agents, fed by one floor sender (so that the floor meets
//!   the same machine the agents met: ten processes writing into the
//!   page cache and sharing the two cores), run just before each deploy
//!   (three rounds of a floor run and a deploy, taken in turns, as one
//!   deploy's figure moves by a quarter between runs on this kind of
//!   machine), the median of the three: the receivers' CPU per MiB
//!   (receive, SHA-256, write each chunk to its own file, decompress,
//!   write the unpacked archive and sync it) plus the sender's (read from
//!   the package file and send) times the fraction of their chunks the
//!   agents got from each other in that deploy, which is what they passed
//!   on (from their swarm peer scores). The baseline text gives every
//!   round, and one floor receiver alone, fed by one sender, for
//!   comparison. Just before each deploy and each floor run the group
//!   writes and deletes a file as large as what that phase will write,
//!   so that every phase writes into memory the machine has just handed
//!   out (on a virtual machine that gives freed memory back to its host,
//!   a write into a page the host took back costs ten times as much; see
//!   `warm_page_cache`).
//! - `release_100mb_receiver_peak_rss`: the most resident memory
//!   (`VmHWM`) any of those agents had, start included. Target at most
//!   64 MB (issue 27 sets it for a 200 MB release).

#![allow(clippy::disallowed_methods)] // benchmarks measure wall time

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use p2p_core::{Ed25519Signer, NodeKey, PeerAddr, SystemClock};
use p2p_deploy::proto::Request;
use p2p_deploy::trust::write_key_pair;
use p2p_deploy::{
    BuildOptions, Controller, ControllerConfig, PackageFile, Plan, Progress, Release, RolloutPlan,
    build,
};
use p2p_examples::daemon::{ADDR_FILE, CONFIG_FILE, DaemonConfig, OnShutdown};
use p2p_examples::fleet::node_dir;
use p2p_examples::net::{self, Backend, NetOptions};
use p2p_examples::node::RunningNode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::Figure;

const GROUP: &str = "agent";
/// Set in a child: the data directory to run an agent in, or `idle` /
/// `exit` for the baselines.
const ROLE_VAR: &str = "P2P_BENCH_AGENT";
/// The release's size in MB: 100, or `AGENT_MB` (the peak memory
/// target is set for 200).
fn release_mb() -> usize {
    std::env::var("AGENT_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&mb| mb > 0)
        .unwrap_or(100)
}
const AGENTS: usize = 10;

/// In a child process started by this group: plays its role until its
/// stdin closes, and returns the exit code. `None` in any other process.
pub fn child_main() -> Option<i32> {
    let role = std::env::var_os(ROLE_VAR)?;
    if role == "exit" {
        return Some(0);
    }
    if role == "idle" {
        let _ = std::io::Read::read(&mut std::io::stdin(), &mut [0u8; 1]);
        return Some(0);
    }
    let dir = PathBuf::from(role);
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("{GROUP} agent: {e}");
            return Some(1);
        }
    };
    let result: anyhow::Result<()> = rt.block_on(async {
        let cfg = DaemonConfig::load(&dir.join(CONFIG_FILE))?;
        let node = RunningNode::start(&dir, &cfg).await?;
        // Until the bench closes our stdin (or dies).
        let mut buf = [0u8; 1];
        let _ = tokio::io::stdin().read(&mut buf).await;
        node.shutdown(OnShutdown::Restart).await;
        Ok(())
    });
    Some(match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("{GROUP} agent: {e:#}");
            1
        }
    })
}

/// An agent (or baseline) process; closing its stdin stops it.
struct Proc {
    child: Child,
}

impl Proc {
    fn spawn(role: &Path) -> Proc {
        let exe = std::env::current_exe().expect("bench-report's path");
        let child = Command::new(exe)
            .env(ROLE_VAR, role)
            .env("RUST_LOG", "error")
            // As the sample systemd unit runs p2pd.
            .env("MALLOC_ARENA_MAX", "2")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawning a child");
        Proc { child }
    }

    /// A memory figure of `/proc/<pid>/status` (`VmRSS`, `VmHWM`), in bytes.
    fn status_bytes(&self, key: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map_or(0, |kb| kb * 1024)
    }

    fn rss_bytes(&self) -> u64 {
        self.status_bytes("VmRSS")
    }

    /// CPU time (user and system) the process has used so far.
    fn cpu_secs(&self) -> f64 {
        super::floor::proc_cpu_secs(&self.child.id().to_string())
    }

    /// The most resident memory the process has had (`VmHWM`).
    fn peak_rss_bytes(&self) -> u64 {
        self.status_bytes("VmHWM")
    }

    fn stop(mut self) {
        drop(self.child.stdin.take());
        let begun = Instant::now();
        while matches!(self.child.try_wait(), Ok(None)) && begun.elapsed() < Duration::from_secs(15)
        {
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Spawns the agent of `dir` and waits until it is ready.
fn start_agent(dir: &Path) -> (Proc, Duration) {
    let _ = std::fs::remove_file(dir.join(ADDR_FILE));
    let begun = Instant::now();
    let mut p = Proc::spawn(dir);
    while !dir.join(ADDR_FILE).exists() {
        if let Ok(Some(st)) = p.child.try_wait() {
            panic!("{GROUP}: the agent in {} exited: {st}", dir.display());
        }
        assert!(
            begun.elapsed() < Duration::from_secs(60),
            "{GROUP}: the agent in {} did not get ready",
            dir.display()
        );
        std::thread::sleep(Duration::from_micros(500));
    }
    (p, begun.elapsed())
}

fn addr_of(dir: &Path) -> PeerAddr {
    std::fs::read_to_string(dir.join(ADDR_FILE))
        .expect("p2pd.addr")
        .trim()
        .parse()
        .expect("a peer address")
}

/// The middle of `v` (not empty), durations or figures alike.
fn median<T: Copy + PartialOrd>(mut v: Vec<T>) -> T {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    v[v.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// Runs the group.
pub fn run() -> Vec<Figure> {
    let root = tempfile::tempdir().expect("temp dir");
    let root = root.path();
    let publisher = Ed25519Signer::generate(&mut rand::rng());
    write_key_pair(&root.join("publisher"), &publisher, "bench").expect("publisher key");
    let dirs: Vec<PathBuf> = (1..=AGENTS)
        .map(|i| {
            let dir = root.join(format!("n{i}"));
            node_dir(&dir, i, Backend::Iroh, None).expect("node dir");
            std::fs::copy(
                root.join("publisher.pub"),
                dir.join("trusted/publisher.pub"),
            )
            .expect("trusting the publisher");
            dir
        })
        .collect();
    let mut figures = Vec::new();

    // Start to ready, against a process start of the same executable.
    let mut ready = Vec::new();
    let mut exits = Vec::new();
    for _ in 0..5 {
        let (p, took) = start_agent(&dirs[0]);
        ready.push(took);
        p.stop();
        let begun = Instant::now();
        let mut e = Proc::spawn(Path::new("exit"));
        let _ = e.child.wait();
        exits.push(begun.elapsed());
    }
    figures.push(
        Figure::new(GROUP, "start_to_ready", ms(median(ready)), "ms")
            .target("<= 300 ms")
            .goal(crate::Goal::AtMost(300.0))
            .baseline(
                ms(median(exits)),
                "ms (the executable starting and exiting)",
            ),
    );

    // Idle memory, against the executable idling without an agent.
    let (agent, _) = start_agent(&dirs[0]);
    let idle = Proc::spawn(Path::new("idle"));
    std::thread::sleep(Duration::from_secs(2));
    let (rss, floor) = (agent.rss_bytes(), idle.rss_bytes());
    idle.stop();
    figures.push(
        Figure::new(GROUP, "idle_rss", rss as f64 / 1e6, "MB")
            .target("<= 20 MB")
            .goal(crate::Goal::AtMost(20.0))
            .baseline(floor as f64 / 1e6, "MB (the same executable, no agent)"),
    );

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let status = rt.block_on(status_p50(addr_of(&dirs[0])));
    let tcp = rt.block_on(tcp_round_trip_p50());
    figures.push(
        Figure::new(GROUP, "status_p50", us(status), "us")
            .target("<= 5000 us")
            .goal(crate::Goal::AtMost(5000.0))
            .baseline(us(tcp), "us (64 bytes there and back over loopback TCP)"),
    );
    agent.stop();

    // 100 MB (or AGENT_MB) to 10 agents, against one loopback TCP copy of
    // the bytes. Three rounds, each a floor run and then a deploy of a
    // release of fresh bytes: a deploy's CPU per MiB moves by a quarter
    // between runs on this kind of machine, and the medians of three
    // interleaved pairs move less than one pair does.
    let mb = release_mb();
    let release_bytes = mb * 1_000_000;
    let agents: Vec<Proc> = dirs.iter().map(|d| start_agent(d).0).collect();
    let addrs: Vec<PeerAddr> = dirs.iter().map(|d| addr_of(d)).collect();
    let packages: Vec<PathBuf> = (0..ROUNDS)
        .map(|k| rt.block_on(package_of(root, &publisher, release_bytes, k)))
        .collect();
    // Memory the guest frees stays with it while the group measures CPU
    // (see `PagesKept`); restored when this goes out of scope.
    let _kept = PagesKept::keep();
    let mut floors = Vec::new();
    let mut rounds = Vec::new();
    let mut ok = true;
    let mut from_peers_before = 0;
    for (k, package) in packages.iter().enumerate() {
        floors.push(floor_run(root, package, k, AGENTS));
        // What the agents write: each its chunks and the unpacked files.
        warm_page_cache(root, page_cache_of(AGENTS, release_bytes));
        let cpu_before: Vec<f64> = agents.iter().map(Proc::cpu_secs).collect();
        let (held, done, round_ok) = rt.block_on(deploy_to_all(package, addrs.clone()));
        ok &= round_ok;
        let cpu: Vec<f64> = agents
            .iter()
            .zip(&cpu_before)
            .map(|(a, before)| a.cpu_secs() - before)
            .collect();
        let chunks = PackageFile::open(package).map_or(1, |p| p.descriptor.chunks.len());
        // The agents' peer scores count every deploy so far.
        let from_peers = rt.block_on(chunks_from_peers(&addrs));
        let passed_on = from_peers.map_or(1.0, |n| {
            n.saturating_sub(from_peers_before) as f64 / (AGENTS * chunks).max(1) as f64
        });
        from_peers_before = from_peers.unwrap_or(from_peers_before);
        let mib = PackageFile::open(package)
            .map(|p| p.descriptor.archive_size)
            .unwrap_or(release_bytes as u64) as f64
            / (1024.0 * 1024.0);
        rounds.push(Round {
            held,
            done,
            cpu_ms_per_mib: cpu.iter().map(|c| c * 1000.0 / mib).collect(),
            passed_on,
        });
    }
    let peak = agents.iter().map(Proc::peak_rss_bytes).max().unwrap_or(0);
    let copy = rt.block_on(tcp_copy(release_bytes));
    for a in agents {
        a.stop();
    }
    // One receiver alone, for comparison.
    let alone = floor_run(root, &packages[0], ROUNDS, 1);
    let floors: Result<Vec<super::floor::Floor>, String> = floors.into_iter().collect();
    let held = median(rounds.iter().map(|r| r.held).collect());
    let done = median(rounds.iter().map(|r| r.done).collect());
    let base = ms(copy);
    if !ok {
        eprintln!("{GROUP}: the deploy to {AGENTS} agents did not complete");
    }
    figures.push(
        Figure::new(
            GROUP,
            format!("release_{mb}mb_to_{AGENTS}_held"),
            ms(held),
            "ms",
        )
        .target("< 30000 ms")
        .goal(crate::Goal::AtMost(30000.0))
        .baseline(base, "ms (one loopback TCP copy of the bytes)"),
    );
    figures.push(
        Figure::new(
            GROUP,
            format!(
                "release_{mb}mb_to_{AGENTS}_running{}",
                if ok { "" } else { "_FAILED" }
            ),
            ms(done),
            "ms",
        )
        .target("< 30000 ms")
        .goal(crate::Goal::AtMost(30000.0))
        .baseline(base, "ms (one loopback TCP copy of the bytes)"),
    );
    // Each round: the agents' mean and the most; the floor's receiver
    // plus its sender times what the agents passed on in that round.
    let agents_mean: Vec<f64> = rounds
        .iter()
        .map(|r| r.cpu_ms_per_mib.iter().sum::<f64>() / r.cpu_ms_per_mib.len().max(1) as f64)
        .collect();
    let most = rounds
        .iter()
        .flat_map(|r| r.cpu_ms_per_mib.iter().copied())
        .fold(0.0, f64::max);
    let passed_on = median(rounds.iter().map(|r| r.passed_on).collect());
    let name = format!(
        "release_{mb}mb_receiver_cpu_per_mib (median of {ROUNDS} deploys of the mean of {AGENTS}; the most {most:.1} ms/MiB; receive, verify, store, pass on, unpack and start; passed on {passed_on:.2} of what they received)",
    );
    let agents_text = agents_mean
        .iter()
        .map(|a| format!("{a:.1}"))
        .collect::<Vec<_>>()
        .join(", ");
    match floors {
        Ok(floors) => {
            // What the floor does for the bytes an agent received, and
            // for its share of those it passed on, round by round.
            let bases: Vec<f64> = floors
                .iter()
                .zip(&rounds)
                .map(|(f, r)| f.receive_ms_per_mib + r.passed_on * f.send_ms_per_mib)
                .collect();
            let runs = |v: &[f64]| {
                v.iter()
                    .map(|x| format!("{x:.1}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            let recv: Vec<f64> = floors.iter().map(|f| f.receive_ms_per_mib).collect();
            let send: Vec<f64> = floors.iter().map(|f| f.send_ms_per_mib).collect();
            figures.push(
                Figure::new(GROUP, name, median(agents_mean.clone()), "ms/MiB")
                    .target("<= 1.5x the floor")
                    .goal(crate::Goal::RatioAtMost(1.5))
                    .baseline(
                        median(bases.clone()),
                        format!(
                            "ms/MiB (the floor, median of {ROUNDS} rounds, each run just before its deploy with {AGENTS} receivers at once: {} against the agents' {agents_text}; to receive, verify, store and unpack a MiB {}, to send one {}, times what the agents passed on; one receiver alone: {})",
                            runs(&bases),
                            runs(&recv),
                            runs(&send),
                            match &alone {
                                Ok(a) => format!("{:.1} to receive, {:.1} to send", a.receive_ms_per_mib, a.send_ms_per_mib),
                                Err(e) => format!("failed: {e}"),
                            }
                        ),
                    ),
            );
        }
        Err(e) => {
            eprintln!("{GROUP}: the floor programs failed: {e}");
            figures.push(
                Figure::new(GROUP, name, median(agents_mean), "ms/MiB")
                    .target("<= 1.5x the floor (the floor failed)"),
            );
        }
    }
    figures.push(
        Figure::new(
            GROUP,
            format!("release_{mb}mb_receiver_peak_rss"),
            peak as f64 / 1e6,
            "MB",
        )
        .target("<= 64 MB (for 200 MB)")
        .goal(crate::Goal::AtMost(64.0)),
    );
    figures
}

/// The good chunks the agents at `addrs` say they got from each other
/// so far (their swarm peer scores, which count peers and not the seed);
/// `None` when one did not say.
async fn chunks_from_peers(addrs: &[PeerAddr]) -> Option<u64> {
    let ctl = controller(addrs.to_vec()).await;
    match super::floor::chunks_from_peers(&ctl, addrs).await {
        Ok(n) => Some(n),
        Err(e) => {
            eprintln!("{GROUP}: {e}; counting all as passed on");
            None
        }
    }
}

/// One round of the deploy: until every agent held the release, until
/// the rollout completed, each agent's CPU per MiB, and the fraction of
/// what they received that they passed on to each other.
struct Round {
    held: Duration,
    done: Duration,
    cpu_ms_per_mib: Vec<f64>,
    passed_on: f64,
}

/// Floor runs and deploys, taken in turns.
const ROUNDS: usize = 3;

/// The page cache `receivers` receivers of a release of `release_bytes`
/// fill: its chunks and its unpacked files, each about the release's size,
/// and a tenth more.
fn page_cache_of(receivers: usize, release_bytes: usize) -> u64 {
    2 * receivers as u64 * release_bytes as u64 * 11 / 10
}

/// Writes `bytes` of zeros to a file under `dir` and deletes it, just
/// before a measured phase, so that the page cache the phase fills reuses
/// memory the machine has just handed out, for every phase alike.
///
/// On a virtual machine that hands the memory its guest frees back to the
/// host within seconds (virtio-balloon free page reporting, as on the
/// Firecracker machines these figures come from), a write into a page the
/// host has taken back costs ten times the system time of a write into a
/// page freed a moment ago: `dd` of 2 GB into the page cache took 5.07 s
/// of system time 10 s after an earlier 2 GB file was deleted, and 0.50 s
/// right after. Which of the two a phase met depended on what ran just
/// before it, and made the ratio to the floor swing from 1.25x to 3.5x
/// between runs. Capped at 80% of the memory available.
fn warm_page_cache(dir: &Path, bytes: u64) {
    let available = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemAvailable:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024);
    let bytes = bytes.min(available / 10 * 8);
    let path = dir.join("warm");
    let begun = Instant::now();
    let block = vec![0u8; 1 << 20];
    let written = (|| -> std::io::Result<()> {
        let mut f = std::fs::File::create(&path)?;
        let mut left = bytes;
        while left > 0 {
            let n = left.min(block.len() as u64) as usize;
            f.write_all(&block[..n])?;
            left -= n as u64;
        }
        Ok(())
    })();
    let _ = std::fs::remove_file(&path);
    match written {
        Ok(()) => eprintln!(
            "{GROUP}: warmed {:.1} GB of the page cache in {:.1} s",
            bytes as f64 / 1e9,
            begun.elapsed().as_secs_f64()
        ),
        Err(e) => eprintln!("{GROUP}: could not warm the page cache: {e}"),
    }
}

/// The kernel's free page reporting (virtio-balloon: the guest tells the
/// host which memory it freed, and the host takes it back) turned off
/// while this lives, by raising the smallest block it reports past the
/// largest there is, and turned back on when it drops.
///
/// On such a virtual machine the first write into a page the host took
/// back costs many times what a write into a page freed a moment ago does
/// (see `warm_page_cache`), and whether a phase of the group met such
/// pages depended on how long it ran after the last warm-up: in one
/// profile the agents' writes of the files they unpacked took 1.7 ms of
/// CPU time per MiB, where a write into warm memory takes about 0.1.
/// That is the virtual machine's cost, not the node's, and it fell on the
/// agents and the floor unevenly. Needs root and
/// `/sys/module/page_reporting`; without them the group says so and runs
/// as it is (the warm-ups still apply). If the run is killed before it
/// ends, `echo <order> > /sys/module/page_reporting/parameters/page_reporting_order`
/// with the order it printed turns reporting back on.
struct PagesKept {
    restore: Option<String>,
}

const PAGE_REPORTING_ORDER: &str = "/sys/module/page_reporting/parameters/page_reporting_order";

impl PagesKept {
    fn keep() -> PagesKept {
        let Ok(order) = std::fs::read_to_string(PAGE_REPORTING_ORDER) else {
            eprintln!("{GROUP}: no free page reporting on this machine ({PAGE_REPORTING_ORDER})");
            return PagesKept { restore: None };
        };
        let order = order.trim().to_string();
        // Order 11 is past the largest block (order 10): nothing is reported.
        match std::fs::write(PAGE_REPORTING_ORDER, "11") {
            Ok(()) => {
                eprintln!(
                    "{GROUP}: free page reporting off while CPU is measured (page_reporting_order \
                     {order} -> 11; set back to {order} after)"
                );
                PagesKept {
                    restore: Some(order),
                }
            }
            Err(e) => {
                eprintln!(
                    "{GROUP}: free page reporting stays on ({e}; needs root): CPU figures of \
                     the deploy and the floor may differ by what the virtual machine charges \
                     for memory its host took back"
                );
                PagesKept { restore: None }
            }
        }
    }
}

impl Drop for PagesKept {
    fn drop(&mut self) {
        if let Some(order) = &self.restore
            && let Err(e) = std::fs::write(PAGE_REPORTING_ORDER, order)
        {
            eprintln!(
                "{GROUP}: could not set page_reporting_order back to {order}: {e}; \
                 run: echo {order} > {PAGE_REPORTING_ORDER}"
            );
        }
    }
}

/// One run of the floor programs on `package`, `receivers` receivers fed
/// by one sender, writing under `root`.
fn floor_run(
    root: &Path,
    package: &Path,
    n: usize,
    receivers: usize,
) -> Result<super::floor::Floor, String> {
    let dir = root.join(format!("floor{n}"));
    std::fs::create_dir_all(&dir).map_err(|e| format!("floor dir: {e}"))?;
    let size = std::fs::metadata(package).map_or(0, |m| m.len() as usize);
    warm_page_cache(root, page_cache_of(receivers, size));
    // The files stay until the group ends (its temporary directory goes
    // then): on ext4 without a journal, as on the machines these figures
    // come from, every file created looks past each inode deleted in the
    // last 5 min (300 more while its inode table is dirty) in its block
    // group, one at a time. Deleting a floor run's thousands of chunk
    // files made the phase after it pay for them: File::create was 11% of
    // the agents' CPU time in a profile of a deploy that came right after
    // such a deletion.
    super::floor::measure(package, Some(&dir), receivers)
}

async fn controller(bootstrap: Vec<PeerAddr>) -> Controller {
    let key = NodeKey::generate(&mut rand::rng());
    let provider = net::bind(&key, &NetOptions::loopback(Backend::Iroh))
        .await
        .expect("binding the controller");
    Controller::new(
        provider,
        ControllerConfig {
            bootstrap,
            ..ControllerConfig::default()
        },
    )
}

async fn status_p50(addr: PeerAddr) -> Duration {
    let ctl = controller(vec![addr.clone()]).await;
    let ask = || Request::Status {
        app: "none".to_string(),
    };
    for _ in 0..20 {
        let _ = ctl.request(&addr, ask()).await;
    }
    let mut took = Vec::new();
    for _ in 0..300 {
        let begun = Instant::now();
        // An unknown app: the answer is an error reply, still a full
        // round trip through the agent.
        let _ = ctl.request(&addr, ask()).await;
        took.push(begun.elapsed());
    }
    median(took)
}

async fn tcp_round_trip_p50() -> Duration {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("tcp listener");
    let at = listener.local_addr().expect("tcp address");
    let server = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.expect("accept");
        let mut buf = [0u8; 64];
        while s.read_exact(&mut buf).await.is_ok() {
            if s.write_all(&buf).await.is_err() {
                break;
            }
        }
    });
    let mut c = tokio::net::TcpStream::connect(at).await.expect("connect");
    c.set_nodelay(true).expect("nodelay");
    let mut buf = [7u8; 64];
    let mut took = Vec::new();
    for i in 0..320 {
        let begun = Instant::now();
        c.write_all(&buf).await.expect("write");
        c.read_exact(&mut buf).await.expect("read");
        if i >= 20 {
            took.push(begun.elapsed());
        }
    }
    drop(c);
    let _ = server.await;
    median(took)
}

async fn tcp_copy(bytes: usize) -> Duration {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("tcp listener");
    let at = listener.local_addr().expect("tcp address");
    let data = vec![0x5au8; 1 << 20];
    let begun = Instant::now();
    let sender = tokio::spawn(async move {
        let mut s = tokio::net::TcpStream::connect(at).await.expect("connect");
        let mut left = bytes;
        while left > 0 {
            let n = left.min(data.len());
            s.write_all(&data[..n]).await.expect("write");
            left -= n;
        }
    });
    let (mut r, _) = listener.accept().await.expect("accept");
    let mut buf = vec![0u8; 1 << 20];
    let mut got = 0;
    while got < bytes {
        let n = r.read(&mut buf).await.expect("read");
        if n == 0 {
            break;
        }
        got += n;
    }
    let _ = sender.await;
    begun.elapsed()
}

/// A signed package of a shell-script app carrying `bytes` of fresh
/// random bytes, version `1.0.<k>`, with a health check that passes at
/// once. It keeps enough versions that no deploy of the group uninstalls
/// one (collecting the old chunks would fall into the next round).
async fn package_of(root: &Path, publisher: &Ed25519Signer, bytes: usize, k: usize) -> PathBuf {
    let app = root.join("app");
    std::fs::create_dir_all(&app).expect("app dir");
    let mut data = vec![0u8; bytes];
    rand::Rng::fill_bytes(&mut rand::rng(), &mut data);
    std::fs::write(app.join("payload.bin"), &data).expect("payload");
    let script = app.join("run.sh");
    let mut f = std::fs::File::create(&script).expect("run.sh");
    f.write_all(b"#!/bin/sh\nexec sleep 3600\n")
        .expect("run.sh");
    drop(f);
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("run.sh mode");
    std::fs::write(
        app.join("p2p.toml"),
        format!(
            "name = \"payload\"\nversion = \"1.0.{k}\"\nentrypoint = \"run.sh\"\n\
             keep_versions = {}\n\
             [health]\nexec = [\"true\"]\ninterval = \"100ms\"\ngate = 1\n",
            ROUNDS + 1
        ),
    )
    .expect("manifest");
    let out = root.join(format!("payload-1.0.{k}.p2p"));
    build(&app, &out, &SystemClock, BuildOptions::default()).expect("package");
    PackageFile::open(&out)
        .expect("package")
        .sign(publisher)
        .await
        .expect("sign");
    out
}

/// Deploys to every agent at once: (until every agent holds the whole
/// release, until the rollout completed, whether it succeeded).
async fn deploy_to_all(package: &Path, addrs: Vec<PeerAddr>) -> (Duration, Duration, bool) {
    let ctl = controller(addrs).await;
    let views = ctl.nodes().await;
    let every: p2p_deploy::Selector = "".parse().expect("the empty selector");
    let targets = Controller::select(&views, Some(&every), &[]).expect("targets");
    assert_eq!(targets.len(), AGENTS, "{GROUP}: agents answering");
    let release = Arc::new(Release::from_package(
        &PackageFile::open(package).expect("package"),
    ));
    let plan = RolloutPlan {
        plan: Plan::All,
        ..RolloutPlan::default()
    };
    let (tx, mut rx) = tokio::sync::mpsc::channel(1024);
    let begun = Instant::now();
    let watch = tokio::spawn(async move {
        let mut held = BTreeMap::new();
        let mut all_held = None;
        while let Some(p) = rx.recv().await {
            if let Progress::Transfer { node, bytes, total } = p
                && bytes >= total
            {
                held.insert(node, ());
                if held.len() == AGENTS && all_held.is_none() {
                    all_held = Some(begun.elapsed());
                }
            }
        }
        all_held
    });
    let report = ctl.deploy(release, &targets, &plan, tx).await;
    let done = begun.elapsed();
    let held = watch.await.ok().flatten().unwrap_or(done);
    (held, done, report.is_success())
}
