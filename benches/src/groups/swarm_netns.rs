//! Group `swarm-netns`: the swarm on real sockets and a real kernel
//! network. A controller and 8 agents, each in a network namespace this
//! benchmark creates, every node's link shaped to 40 Mbit/s up and
//! 40 Mbit/s down, a 32 MiB release over iroh (QUIC), measured twice in
//! the same run:
//!
//! - serial push: every byte from the controller (`ControllerConfig::swarm`
//!   off), release `1.0.0`;
//! - swarm: targets also fetch from each other, release `2.0.0` (different
//!   bytes, same size; versions increase because agents refuse downgrades).
//!
//! Each figure is the time from the start of the rollout until the last
//! target reported holding the whole release (`Progress::Transfer` with
//! `bytes == total`); activation is not counted. Both rollouts use
//! [`Plan::All`](p2p_deploy::Plan::All): the serial push sends to the 8
//! targets at once, which takes as long as one after another since the
//! controller's 40 Mbit/s uplink is the bottleneck either way.
//!
//! Two lines:
//!
//! ```text
//! swarm-netns iroh 8 agents 32 MiB 40 Mbit/s swarm completion (8/8 complete): S s (target <= 1.5x bound, baseline B s (Kumar-Ross bound), ratio=S/B)
//! swarm-netns iroh 8 agents 32 MiB 40 Mbit/s serial push completion (...): P s (target ratio >= 4 ..., baseline S s (swarm, same run), ratio=P/S)
//! ```
//!
//! Three more lines give CPU time per MiB (user and system, read from
//! `/proc/<pid>/stat` of the processes themselves as the controller
//! starts and ends each rollout): the seed's per MiB sent in the serial
//! push (where it sends every byte), and the agents' per MiB received in
//! each rollout. Each is set against the floor programs
//! ([`super::floor`]) run afterwards in the same namespaces, over the
//! same shaped links, on a package of the same size: a raw iroh stream
//! and a SHA-256 per chunk, the chunk then kept in memory (where the
//! agents here store chunks).
//!
//! - The seed and the agents in the serial push are set against one floor
//!   sender in the controller's namespace sending the package to a floor
//!   receiver in each of the 8 agents' namespaces at once: the same
//!   eight streams sharing the controller's uplink, each at about an
//!   eighth of it. At a paced rate the same bytes cost more per byte
//!   than at the full rate (a wake-up, a decryption and an
//!   acknowledgement per few packets), so a floor at another rate would
//!   not be the floor of this work.
//! - The agents in the swarm are set against one floor receiver fed by
//!   one floor sender between the controller's namespace and an agent's
//!   at the full rate, plus the sender's per MiB times the fraction of
//!   their chunks they got from each other (their swarm peer scores).
//!
//! Targets: at most 1.5x the floor.
//!
//! The bound is Kumar-Ross (see [`crate::swarm`]): max(F/u_s, F/d_min,
//! N F / (u_s + N u)) with F = 32 MiB in bits, every rate 40 Mbit/s and
//! N = 8, which is F/u_s = 6.7 s. Targets: the swarm within 1.5x the
//! bound, and at least 4x faster than the serial push.
//!
//! # Topology
//!
//! Namespaces are named after the benchmark's pid: a hub `p2psw<pid>h`
//! holding a bridge `br0`, the controller `p2psw<pid>c` and agents
//! `p2psw<pid>a0` to `a7`. Node `i` (0 the controller, 1 to 8 the agents)
//! has a veth pair `h<i>` (in the hub, a port of `br0`) / `n<i>` (in the
//! node, address `10.231.0.<i+1>/24`, `lo` up). The root namespace is not
//! touched. Both ends are shaped with `tbf`:
//!
//! ```text
//! tc qdisc add dev <end> root tbf rate 40mbit burst 64kb latency 50ms
//! ```
//!
//! `n<i>` limits what the node sends (its upload), `h<i>` what the bridge
//! delivers to it (its download). `burst 64kb` is above rate/HZ for any
//! HZ and holds a whole 64 KiB GSO super-packet, so tbf neither starves
//! nor splits it; `latency 50ms` bounds the queue at about 250 KB, far
//! above the bandwidth-delay product of a veth path (well under a
//! millisecond), so that a loss-based congestion controller keeps the link
//! busy after backing off, while the round trip stays bounded.
//!
//! Every namespace is deleted when the benchmark ends, panics included
//! (the agents are killed first). An interrupted run (Ctrl-C) can leave
//! some behind: `ip netns list | grep p2psw`, then `ip netns del` them.
//!
//! # Processes
//!
//! `bench-report` runs itself under `ip netns exec` with
//! `P2P_SWARM_NETNS_ROLE` set to `agent` or `controller` ([`child_main`]):
//!
//! - an agent binds an [`IrohProvider`] to its namespace's address (relays,
//!   DNS and mDNS off), prints its [`PeerAddr`] in text form and serves
//!   until killed. It runs the real [`Agent`] with a [`MemStorage`], the
//!   swarm benchmark's record-only installer, and a
//!   [`SimRuntime`] on real tokio time (apps are recorded as running
//!   after the script's 1 s startup; no process is started), so that the
//!   deploy's activation succeeds;
//! - the controller gets the agents' addresses, waits until all 8 answer,
//!   runs the two rollouts and prints one result line.
//!
//! Children also exit when their stdin (a pipe from the benchmark) closes,
//! so that none outlives a benchmark that died without cleaning up.
//!
//! Needs root, iproute2 (`ip`, `tc`) and a kernel that allows network
//! namespaces (checked by making one); otherwise it prints
//! `swarm-netns: skipped: <reason>` and gives no figures. Anything that
//! breaks after that check prints `swarm-netns: failed: <reason>`. Build as
//! yourself and run as root (so that `target/` stays yours):
//!
//! ```text
//! cargo build --release -p p2p-benches --bin bench-report
//! sudo ./target/release/bench-report swarm-netns
//! ```

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::mpsc::Receiver;
use std::time::Duration;

use p2p_core::{Ed25519Signer, MemStorage, NodeKey, PeerAddr, Provider, SystemClock};
use p2p_deploy::{
    Agent, AgentConfig, AgentParts, Controller, ControllerConfig, NodeInfo, NodeView, Release,
    Selector, TrustStore,
};
use p2p_iroh::{Connectivity, IrohConfig, IrohProvider};
use p2p_sim::{ScriptBook, SimRuntime};

use super::children::{Children, exit_with_parent, say, wait_line};
use crate::Figure;
use crate::swarm::{RecordOnly, SwarmScenario, release_of, timed_deploy};

const GROUP: &str = "swarm-netns";
/// Agents (the controller comes on top).
const AGENTS: usize = 8;
/// Release size.
const SIZE: usize = 32 << 20;
/// Chunk size (as in the simulator's swarm benchmark).
const CHUNK: u32 = 256 << 10;
/// Every node's upload and download, Mbit/s.
const MBIT: u64 = 40;
/// `tbf` bucket size (see the module docs).
const TBF_BURST: &str = "64kb";
/// `tbf` queue bound, as the time its bytes take at the rate.
const TBF_LATENCY: &str = "50ms";
/// Seed of the publisher key every agent trusts: the swarm benchmark's
/// deterministic bench key, not a secret.
const SIGNER_SEED: [u8; 32] = [3; 32];

/// Tells a child its role: `agent` or `controller`.
const ROLE_VAR: &str = "P2P_SWARM_NETNS_ROLE";
/// The child's IPv4 address to bind.
const ADDR_VAR: &str = "P2P_SWARM_NETNS_ADDR";
/// An agent's index, 0 to 7.
const INDEX_VAR: &str = "P2P_SWARM_NETNS_INDEX";
/// The agents' addresses for the controller, in text form, space separated.
const AGENTS_VAR: &str = "P2P_SWARM_NETNS_AGENTS";

/// Prefix of an agent's one line of output.
const ADDR_LINE: &str = "swarm-netns-addr ";
/// Prefix of the controller's last line of output.
const RESULT_LINE: &str = "swarm-netns-result ";
/// Prefix of the controller's lines as a rollout starts and ends (the
/// parent reads the agents' CPU time then).
const PHASE_LINE: &str = "swarm-netns-phase ";

/// How long an agent may take to print its address.
const AGENT_WAIT: Duration = Duration::from_secs(30);
/// How long the controller may take for both rollouts.
const RESULT_WAIT: Duration = Duration::from_secs(300);
/// How long the controller waits for every agent to answer.
const AGENTS_ANSWER_WAIT: Duration = Duration::from_secs(60);

/// Runs the group.
pub fn run() -> Vec<Figure> {
    match measure() {
        // A time over the targets that finished would flatter the run.
        Ok(m) if m.serial.complete < AGENTS || m.swarm.complete < AGENTS => {
            eprintln!(
                "{GROUP}: failed: not every agent got the release (serial push {}/{AGENTS}, swarm {}/{AGENTS})",
                m.serial.complete, m.swarm.complete
            );
            Vec::new()
        }
        Ok(m) => {
            let mut f = figures(m.serial, m.swarm);
            f.extend(cpu_figures(&m));
            f
        }
        Err(Stop::Skip(why)) => {
            eprintln!("{GROUP}: skipped: {why}");
            Vec::new()
        }
        Err(Stop::Fail(why)) => {
            eprintln!("{GROUP}: failed: {why}");
            Vec::new()
        }
    }
}

/// In a child process of this group (`P2P_SWARM_NETNS_ROLE` set), plays
/// its role and returns the exit code; `None` in any other process.
/// `bench-report` calls it first thing in `main`.
pub fn child_main() -> Option<i32> {
    let role = std::env::var(ROLE_VAR).ok()?;
    let result = match role.as_str() {
        "agent" => agent_child(),
        "controller" => controller_child(),
        other => Err(format!("unknown role {other:?}")),
    };
    Some(match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("{GROUP} {role}: {e}");
            1
        }
    })
}

/// Why there are no figures.
enum Stop {
    /// The machine cannot run the benchmark (not root, no iproute2, no
    /// namespaces).
    Skip(String),
    /// The benchmark ran and broke.
    Fail(String),
}

/// One rollout as the controller measured it.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Rollout {
    /// Seconds until the last target held the whole release.
    secs: f64,
    /// Targets that got the whole release.
    complete: usize,
    /// The rollout report's `is_success()`.
    ok: bool,
    /// CPU seconds the controller (the seed) used during the rollout.
    seed_cpu: f64,
    /// Of the chunks the agents got, the fraction they got from each
    /// other (from their swarm peer scores).
    passed_on: f64,
}

/// Everything one run measured.
struct Measured {
    serial: Rollout,
    swarm: Rollout,
    /// CPU seconds all agents used together during each rollout.
    agents_cpu: (f64, f64),
    /// The floor programs between two of the namespaces.
    floor: Result<super::floor::Floor, String>,
    /// One floor sender in the controller's namespace, a floor receiver in
    /// every agent's: the serial push's floor.
    fanout_floor: Result<super::floor::Floor, String>,
}

impl Rollout {
    /// `<name>_s=.. <name>_complete=.. <name>_ok=..`
    fn to_fields(self, name: &str) -> String {
        format!(
            "{name}_s={:.3} {name}_complete={} {name}_ok={} {name}_seedcpu={:.3} {name}_passedon={:.4}",
            self.secs, self.complete, self.ok, self.seed_cpu, self.passed_on
        )
    }

    fn from_fields(fields: &BTreeMap<&str, &str>, name: &str) -> Result<Self, String> {
        let bad = |key: &str, e: &dyn std::fmt::Display| format!("{name}_{key}: {e}");
        Ok(Rollout {
            secs: field(fields, &format!("{name}_s"))?
                .parse::<f64>()
                .map_err(|e| bad("s", &e))?,
            complete: field(fields, &format!("{name}_complete"))?
                .parse::<usize>()
                .map_err(|e| bad("complete", &e))?,
            ok: field(fields, &format!("{name}_ok"))?
                .parse::<bool>()
                .map_err(|e| bad("ok", &e))?,
            seed_cpu: field(fields, &format!("{name}_seedcpu"))?
                .parse::<f64>()
                .map_err(|e| bad("seedcpu", &e))?,
            passed_on: field(fields, &format!("{name}_passedon"))?
                .parse::<f64>()
                .map_err(|e| bad("passedon", &e))?,
        })
    }
}

fn field<'a>(fields: &BTreeMap<&str, &'a str>, key: &str) -> Result<&'a str, String> {
    fields
        .get(key)
        .copied()
        .ok_or_else(|| format!("no {key} in the controller's result"))
}

fn parse_result(line: &str) -> Result<(Rollout, Rollout), String> {
    let fields: BTreeMap<&str, &str> = line
        .split_whitespace()
        .filter_map(|kv| kv.split_once('='))
        .collect();
    Ok((
        Rollout::from_fields(&fields, "serial")?,
        Rollout::from_fields(&fields, "swarm")?,
    ))
}

fn figures(serial: Rollout, swarm: Rollout) -> Vec<Figure> {
    let bound = SwarmScenario {
        nodes: AGENTS,
        size: SIZE,
        chunk_size: CHUNK,
        mbit: MBIT,
        ..SwarmScenario::new(AGENTS)
    }
    .bound()
    .as_secs_f64();
    let state = |r: &Rollout| {
        format!(
            "{}/{AGENTS} complete{}",
            r.complete,
            if r.ok { "" } else { ", rollout failed" }
        )
    };
    let what = format!("iroh {AGENTS} agents {} MiB {MBIT} Mbit/s", SIZE >> 20);
    vec![
        Figure::new(
            GROUP,
            format!("{what} swarm completion ({})", state(&swarm)),
            swarm.secs,
            "s",
        )
        .target("<= 1.5x bound")
        .goal(crate::Goal::RatioAtMost(1.5))
        .baseline(bound, "s (Kumar-Ross bound)"),
        Figure::new(
            GROUP,
            format!(
                "{what} serial push completion ({}; swarm {:.1}x faster)",
                state(&serial),
                serial.secs / swarm.secs.max(1e-9)
            ),
            serial.secs,
            "s",
        )
        .target("ratio >= 4, the swarm at least 4x faster")
        .goal(crate::Goal::RatioAtLeast(4.0))
        .baseline(swarm.secs, "s (swarm, same run)"),
    ]
}

/// CPU per MiB: the seed's per MiB sent in the serial push (it sends
/// every byte), the agents' per MiB received in both rollouts: the first
/// two against one floor sender feeding a floor receiver in every agent's
/// namespace, the last against one floor receiver and one sender.
fn cpu_figures(m: &Measured) -> Vec<Figure> {
    let mib = SIZE as f64 / (1024.0 * 1024.0);
    let all = AGENTS as f64 * mib;
    let per_mib = |secs: f64| secs * 1000.0 / all;
    let what = format!("iroh {AGENTS} agents {} MiB {MBIT} Mbit/s", SIZE >> 20);
    let seed = per_mib(m.serial.seed_cpu);
    let serial = per_mib(m.agents_cpu.0);
    let swarm = per_mib(m.agents_cpu.1);
    let names = [
        format!("{what} seed cpu per MiB sent (serial push)"),
        format!("{what} receiver cpu per MiB (serial push: receive and verify)"),
        format!(
            "{what} receiver cpu per MiB (swarm: receive, verify, pass on {:.2} of it)",
            m.swarm.passed_on
        ),
    ];
    let failed = |e: &String| {
        eprintln!("{GROUP}: the floor programs failed: {e}");
    };
    let goal = |fig: Figure, base: f64, how: String| {
        fig.target("<= 1.5x the floor")
            .goal(crate::Goal::RatioAtMost(1.5))
            .baseline(base, how)
    };
    let unmet = |fig: Figure| fig.target("<= 1.5x the floor (it failed)");
    let [n_seed, n_serial, n_swarm] = names;
    let mut figures = Vec::new();
    match &m.fanout_floor {
        Ok(f) => {
            figures.push(goal(
                Figure::new(GROUP, n_seed, seed, "ms/MiB"),
                f.send_ms_per_mib,
                format!("ms/MiB (the floor: read and send a MiB, on {AGENTS} streams at once)"),
            ));
            figures.push(goal(
                Figure::new(GROUP, n_serial, serial, "ms/MiB"),
                f.receive_ms_per_mib,
                format!(
                    "ms/MiB (the floor: receive a MiB on one of {AGENTS} streams from one sender, hash it, keep it)"
                ),
            ));
        }
        Err(e) => {
            failed(e);
            figures.push(unmet(Figure::new(GROUP, n_seed, seed, "ms/MiB")));
            figures.push(unmet(Figure::new(GROUP, n_serial, serial, "ms/MiB")));
        }
    }
    figures.push(match &m.floor {
        Ok(f) => goal(
            Figure::new(GROUP, n_swarm, swarm, "ms/MiB"),
            f.receive_ms_per_mib + m.swarm.passed_on * f.send_ms_per_mib,
            format!(
                "ms/MiB (the floor: {:.1} to receive and hash a MiB, {:.1} to send one, times {:.2})",
                f.receive_ms_per_mib, f.send_ms_per_mib, m.swarm.passed_on
            ),
        ),
        Err(e) => {
            failed(e);
            unmet(Figure::new(GROUP, n_swarm, swarm, "ms/MiB"))
        }
    });
    figures
}

/// The parent: namespaces, children, their answers.
fn measure() -> Result<Measured, Stop> {
    preflight().map_err(Stop::Skip)?;
    let exe = std::env::current_exe()
        .map_err(|e| Stop::Fail(format!("cannot find this program's path: {e}")))?;
    // The machine allows namespaces (the preflight made one): a failure
    // now is the benchmark's, not a reason to skip.
    let topo = Topology::create()
        .map_err(|e| Stop::Fail(format!("cannot create the network namespaces: {e}")))?;
    // Declared after `topo`, so dropped (killed) before the namespaces go.
    let mut children = Children::default();
    let mut agent_lines = Vec::new();
    for i in 0..AGENTS {
        let node = i + 1;
        let lines = spawn(
            &exe,
            &topo.node(node),
            "agent",
            &[
                (ADDR_VAR, node_ip(node).to_string()),
                (INDEX_VAR, i.to_string()),
            ],
            &mut children,
        )
        .map_err(Stop::Fail)?;
        agent_lines.push(lines);
    }
    let mut agents = Vec::new();
    for (i, lines) in agent_lines.iter().enumerate() {
        let line = wait_line(lines, ADDR_LINE, AGENT_WAIT)
            .map_err(|e| Stop::Fail(format!("agent a{i}: {e}")))?;
        let addr = line
            .parse::<PeerAddr>()
            .map_err(|e| Stop::Fail(format!("agent a{i} printed {line:?}: {e}")))?;
        agents.push(addr.to_string());
    }
    let lines = spawn(
        &exe,
        &topo.node(0),
        "controller",
        &[
            (ADDR_VAR, node_ip(0).to_string()),
            (AGENTS_VAR, agents.join(" ")),
        ],
        &mut children,
    )
    .map_err(Stop::Fail)?;
    let agents_cpu = || -> f64 {
        children
            .pids()
            .take(AGENTS)
            .map(|pid| super::floor::proc_cpu_secs(&pid.to_string()))
            .sum()
    };
    let mut at = Vec::new();
    for _ in 0..4 {
        wait_line(&lines, PHASE_LINE, RESULT_WAIT)
            .map_err(|e| Stop::Fail(format!("controller: {e}")))?;
        at.push(agents_cpu());
    }
    let line = wait_line(&lines, RESULT_LINE, RESULT_WAIT)
        .map_err(|e| Stop::Fail(format!("controller: {e}")))?;
    let (serial, swarm) = parse_result(&line).map_err(Stop::Fail)?;
    drop(children);
    // The floors, over the same shaped links, on a package of the same
    // size: one receiver and one sender between an agent's namespace and
    // the controller's, then one sender in the controller's namespace and
    // a receiver in each agent's.
    let package = floor_package();
    let ips: Vec<Ipv4Addr> = (1..=AGENTS).map(node_ip).collect();
    let namespaces: Vec<String> = (1..=AGENTS).map(|i| topo.node(i)).collect();
    let wraps: Vec<[&str; 4]> = namespaces
        .iter()
        .map(|ns| ["ip", "netns", "exec", ns.as_str()])
        .collect();
    let receivers: Vec<Option<super::floor::Place<'_>>> = wraps
        .iter()
        .zip(&ips)
        .map(|(w, ip)| Some((&w[..], SocketAddr::from((*ip, 0)))))
        .collect();
    let send_ns = topo.node(0);
    let sender_wrap = ["ip", "netns", "exec", send_ns.as_str()];
    let sender = Some((&sender_wrap[..], SocketAddr::from((node_ip(0), 0))));
    let floor_run = |n: usize| {
        let (_dir, package) = package.as_ref().map_err(Clone::clone)?;
        super::floor::measure_on(package, None, &receivers[..n], sender)
    };
    let floor = floor_run(1);
    let fanout_floor = floor_run(AGENTS);
    drop(topo);
    Ok(Measured {
        serial,
        swarm,
        agents_cpu: (at[1] - at[0], at[3] - at[2]),
        floor,
        fanout_floor,
    })
}

/// A signed-off package of `SIZE` random bytes for the floor programs,
/// in a temporary directory kept while it is used.
fn floor_package() -> Result<(tempfile::TempDir, std::path::PathBuf), String> {
    let dir = tempfile::tempdir().map_err(|e| format!("temp dir: {e}"))?;
    let app = dir.path().join("app");
    std::fs::create_dir_all(&app).map_err(|e| format!("app dir: {e}"))?;
    std::fs::write(app.join("payload.bin"), p2p_testkit::noise(SIZE, 7))
        .map_err(|e| format!("payload: {e}"))?;
    let script = app.join("run.sh");
    std::fs::write(&script, "#!/bin/sh\nexec sleep 3600\n").map_err(|e| format!("run.sh: {e}"))?;
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .map_err(|e| format!("run.sh: {e}"))?;
    std::fs::write(
        app.join("p2p.toml"),
        "name = \"floor\"\nversion = \"1.0.0\"\nentrypoint = \"run.sh\"\n",
    )
    .map_err(|e| format!("manifest: {e}"))?;
    let out = dir.path().join("floor.p2p");
    p2p_deploy::build(
        &app,
        &out,
        &SystemClock,
        p2p_deploy::BuildOptions::default(),
    )
    .map_err(|e| format!("package: {e}"))?;
    Ok((dir, out))
}

/// Root, `ip` and `tc`, and a network namespace made and removed, or
/// the reason to skip.
fn preflight() -> Result<(), String> {
    let out = Command::new("id")
        .arg("-u")
        .output()
        .map_err(|e| format!("cannot run `id -u` to check for root: {e}"))?;
    let uid = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if uid != "0" {
        return Err(format!(
            "needs root to create network namespaces (running as uid {uid:?}); run it with sudo"
        ));
    }
    for tool in ["ip", "tc"] {
        Command::new(tool)
            .arg("-V")
            .output()
            .map_err(|e| format!("cannot run `{tool}` (iproute2): {e}"))?;
    }
    let probe = format!("p2p-probe-{}", std::process::id());
    cmd("ip", &["netns", "add", &probe])
        .map_err(|e| format!("this machine does not allow network namespaces: {e}"))?;
    cmd("ip", &["netns", "del", &probe])
        .map_err(|e| format!("cannot remove the probe namespace {probe}: {e}"))?;
    Ok(())
}

/// Node 0 is the controller, node `i >= 1` agent `i - 1`.
fn node_ip(node: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 231, 0, node as u8 + 1)
}

/// Runs `program` with `args`; the error says what failed.
fn cmd(program: &str, args: &[&str]) -> Result<(), String> {
    p2p_examples::netlab::run(program, args).map(drop)
}

fn ip(args: &[&str]) -> Result<(), String> {
    cmd("ip", args)
}

/// Shapes what leaves `dev` in namespace `ns` to [`MBIT`].
fn shape(ns: &str, dev: &str) -> Result<(), String> {
    let rate = format!("{MBIT}mbit");
    ip(&[
        "netns",
        "exec",
        ns,
        "tc",
        "qdisc",
        "add",
        "dev",
        dev,
        "root",
        "tbf",
        "rate",
        &rate,
        "burst",
        TBF_BURST,
        "latency",
        TBF_LATENCY,
    ])
}

/// The namespaces of one run (see the module docs); deleted on drop.
struct Topology {
    /// `p2psw<pid>`.
    prefix: String,
    /// Namespaces created so far, in order.
    created: Vec<String>,
}

impl Topology {
    fn hub(&self) -> String {
        format!("{}h", self.prefix)
    }

    /// Node 0 is the controller, node `i >= 1` agent `i - 1`.
    fn node(&self, node: usize) -> String {
        if node == 0 {
            format!("{}c", self.prefix)
        } else {
            format!("{}a{}", self.prefix, node - 1)
        }
    }

    /// Builds it; on an error, what was made so far is deleted.
    fn create() -> Result<Self, String> {
        let mut t = Topology {
            prefix: format!("p2psw{}", std::process::id()),
            created: Vec::new(),
        };
        let hub = t.hub();
        t.add_namespace(&hub)?;
        ip(&["-n", &hub, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &hub, "link", "set", "br0", "up"])?;
        for node in 0..=AGENTS {
            let ns = t.node(node);
            t.add_namespace(&ns)?;
            let (outer, inner) = (format!("h{node}"), format!("n{node}"));
            // Both ends are made in the hub, then one moves: nothing is
            // ever created in the root namespace.
            ip(&[
                "-n", &hub, "link", "add", &outer, "type", "veth", "peer", "name", &inner,
            ])?;
            ip(&["-n", &hub, "link", "set", &inner, "netns", &ns])?;
            ip(&["-n", &hub, "link", "set", &outer, "master", "br0"])?;
            ip(&["-n", &hub, "link", "set", &outer, "up"])?;
            let addr = format!("{}/24", node_ip(node));
            ip(&["-n", &ns, "addr", "add", &addr, "dev", &inner])?;
            ip(&["-n", &ns, "link", "set", &inner, "up"])?;
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
            shape(&ns, &inner)?; // the node's upload
            shape(&hub, &outer)?; // the node's download
        }
        Ok(t)
    }

    fn add_namespace(&mut self, ns: &str) -> Result<(), String> {
        ip(&["netns", "add", ns])?;
        self.created.push(ns.to_string());
        Ok(())
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        // Deleting a namespace deletes the veth ends in it, and with them
        // their peers; the bridge goes with the hub.
        for ns in self.created.iter().rev() {
            if let Err(e) = ip(&["netns", "del", ns]) {
                eprintln!("{GROUP}: cleanup: {e}");
            }
        }
    }
}

/// Starts this program in namespace `ns` as `role`, with `env`; returns
/// its stdout, line by line.
fn spawn(
    exe: &Path,
    ns: &str,
    role: &str,
    env: &[(&str, String)],
    children: &mut Children,
) -> Result<Receiver<String>, String> {
    let mut command = Command::new("ip");
    command.args(["netns", "exec", ns]).arg(exe);
    super::children::spawn(command, ROLE_VAR, role, env, children)
}

fn env_var(name: &str) -> Result<String, String> {
    std::env::var(name).map_err(|e| format!("{name}: {e}"))
}

fn bind_ip() -> Result<Ipv4Addr, String> {
    env_var(ADDR_VAR)?
        .parse::<Ipv4Addr>()
        .map_err(|e| format!("{ADDR_VAR}: {e}"))
}

/// Local-only iroh on `ip`: no relays, no DNS or pkarr, no mDNS.
fn iroh_config(ip: Ipv4Addr) -> IrohConfig {
    IrohConfig::default()
        .bind(SocketAddr::from((ip, 0)))
        .connectivity(Connectivity::LocalOnly)
        .mdns(false)
}

/// The agent child.
fn agent_child() -> Result<(), String> {
    let ip = bind_ip()?;
    let index = env_var(INDEX_VAR)?
        .parse::<u64>()
        .map_err(|e| format!("{INDEX_VAR}: {e}"))?;
    exit_with_parent();
    let key = NodeKey::generate(&mut rand::rng());
    super::block_on(agent_async(key, ip, index))
}

async fn agent_async(key: NodeKey, ip: Ipv4Addr, index: u64) -> Result<(), String> {
    let provider = IrohProvider::bind(&key, iroh_config(ip))
        .await
        .map_err(|e| format!("binding iroh on {ip}: {e}"))?;
    // The bound socket, which is what the others can dial here.
    let addr = PeerAddr::new(
        provider.local_id(),
        provider
            .bound_sockets()
            .into_iter()
            .filter(|a| !a.ip().is_unspecified())
            .map(|a| a.to_string()),
    )
    .map_err(|e| format!("own address: {e}"))?;
    let signer = Ed25519Signer::from_seed(&SIGNER_SEED);
    let mut cfg = AgentConfig::new(TrustStore::new([signer.key_id()]));
    cfg.name = format!("a{index}");
    let seed = 2026 + index;
    let agent = Agent::new(
        cfg,
        AgentParts {
            provider: Arc::new(provider),
            // Records apps as running, on real tokio time, without
            // starting anything: the activation after the transfer
            // succeeds and costs next to nothing.
            runtime: Arc::new(SimRuntime::new(
                ScriptBook::new(),
                Arc::new(SystemClock),
                seed,
            )),
            storage: Arc::new(MemStorage::new()),
            installer: Arc::new(RecordOnly),
            clock: Arc::new(SystemClock),
            seed,
        },
    );
    // The controller retries until the agent answers, so printing before
    // `run` has its listener up is fine.
    say(&format!("{ADDR_LINE}{addr}"))?;
    agent.run().await.map_err(|e| format!("agent stopped: {e}"))
}

/// The controller child.
fn controller_child() -> Result<(), String> {
    let ip = bind_ip()?;
    let agents = env_var(AGENTS_VAR)?
        .split_whitespace()
        .map(|a| {
            a.parse::<PeerAddr>()
                .map_err(|e| format!("agent address {a:?}: {e}"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    exit_with_parent();
    let signer = Ed25519Signer::from_seed(&SIGNER_SEED);
    // Versions increase (agents refuse downgrades); different seeds, so the
    // second release shares no chunk with the first.
    let serial_release = release_of(SIZE, CHUNK, &signer, "1.0.0", 1);
    let swarm_release = release_of(SIZE, CHUNK, &signer, "2.0.0", 2);
    let key = NodeKey::generate(&mut rand::rng());
    let (serial, swarm) = super::block_on(controller_async(
        key,
        ip,
        agents,
        serial_release,
        swarm_release,
    ))?;
    say(&format!(
        "{RESULT_LINE}{} {}",
        serial.to_fields("serial"),
        swarm.to_fields("swarm")
    ))
}

async fn controller_async(
    key: NodeKey,
    ip: Ipv4Addr,
    agents: Vec<PeerAddr>,
    serial_release: Arc<Release>,
    swarm_release: Arc<Release>,
) -> Result<(Rollout, Rollout), String> {
    let provider = IrohProvider::bind(&key, iroh_config(ip))
        .await
        .map_err(|e| format!("binding iroh on {ip}: {e}"))?;
    let provider: Arc<dyn Provider> = Arc::new(provider);
    let result = async {
        let serial = measured_rollout(&provider, &agents, false, serial_release).await?;
        let swarm = measured_rollout(&provider, &agents, true, swarm_release).await?;
        Ok::<_, String>((serial, swarm))
    }
    .await;
    provider.close("benchmark over").await;
    result
}

/// One rollout of `release` to every agent, by a controller of its own
/// (on the shared provider) with the swarm on or off.
async fn rollout(
    provider: &Arc<dyn Provider>,
    agents: &[PeerAddr],
    swarm: bool,
    release: Arc<Release>,
) -> Result<Rollout, String> {
    let what = if swarm { "swarm" } else { "serial push" };
    let ctl = Controller::new(
        provider.clone(),
        ControllerConfig {
            bootstrap: agents.to_vec(),
            swarm,
            seed: 2026,
            ..ControllerConfig::default()
        },
    );
    let targets = targets(&ctl, agents.len()).await?;
    let (report, done) = timed_deploy(&ctl, release, &targets).await;
    let ok = report.is_success();
    if !ok {
        eprintln!(
            "{GROUP} controller: the {what} rollout failed (halted: {:?})",
            report.halted
        );
        for (node, result) in &report.nodes {
            if result.is_failure() {
                eprintln!("  {}: {result:?}", node.short());
            }
        }
    }
    Ok(Rollout {
        seed_cpu: 0.0,
        passed_on: 0.0,
        secs: done
            .values()
            .copied()
            .max()
            .unwrap_or_default()
            .as_secs_f64(),
        complete: done.len(),
        ok,
    })
}

/// [`rollout`] between the phase lines the parent reads the agents' CPU
/// time at, with the seed's own CPU time and the fraction of the chunks
/// the agents got from each other (their swarm peer scores, before and
/// after).
async fn measured_rollout(
    provider: &Arc<dyn Provider>,
    agents: &[PeerAddr],
    swarm: bool,
    release: Arc<Release>,
) -> Result<Rollout, String> {
    let phase = if swarm { "swarm" } else { "serial" };
    let ctl = Controller::new(provider.clone(), ControllerConfig::default());
    let before = super::floor::chunks_from_peers(&ctl, agents).await?;
    say(&format!("{PHASE_LINE}{phase}-start"))?;
    let cpu = super::floor::own_cpu_secs();
    let mut r = rollout(provider, agents, swarm, release).await?;
    r.seed_cpu = super::floor::own_cpu_secs() - cpu;
    say(&format!("{PHASE_LINE}{phase}-end"))?;
    let after = super::floor::chunks_from_peers(&ctl, agents).await?;
    let chunks = SIZE.div_ceil(CHUNK as usize);
    r.passed_on = after.saturating_sub(before) as f64 / (AGENTS * chunks) as f64;
    Ok(r)
}

/// Every agent, once all `want` of them answer.
async fn targets(ctl: &Controller, want: usize) -> Result<Vec<NodeInfo>, String> {
    let everyone = ""
        .parse::<Selector>()
        .map_err(|e| format!("selector: {e}"))?;
    let deadline = tokio::time::Instant::now() + AGENTS_ANSWER_WAIT;
    loop {
        let views = ctl.nodes().await;
        let missing: Vec<String> = NodeView::unanswered(&views)
            .map(|v| {
                format!(
                    "{}: {}",
                    v.label(),
                    v.info.as_ref().err().map_or("", String::as_str)
                )
            })
            .collect();
        if missing.is_empty() && views.len() == want {
            let targets = Controller::select(&views, Some(&everyone), &[])
                .map_err(|e| format!("selecting the agents: {e}"))?;
            if targets.len() == want {
                return Ok(targets);
            }
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(format!(
                "{} of {want} agents answered within {AGENTS_ANSWER_WAIT:?}; {}",
                views.len() - missing.len(),
                missing.join("; ")
            ));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
