//! Benchmark groups. Each group is a function that measures and returns its
//! figures; [`ALL`] lists them for `bench-report`.

pub mod agent;
mod children;
pub mod delta;
pub mod floor;
pub mod nat_netns;
pub mod packages;
pub mod runtime;
pub mod sim;
pub mod sites;
pub mod swarm;
pub mod swarm_netns;
pub mod transport;

use crate::Figure;

/// Runs `f` on the two-worker tokio runtime every async group uses.
pub(crate) fn block_on<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
        .block_on(f)
}

/// A benchmark group: its name, what it measures, and its runner.
pub struct Group {
    /// Name used on the command line.
    pub name: &'static str,
    /// One line on what it measures.
    pub about: &'static str,
    /// Runs the group.
    pub run: fn() -> Vec<Figure>,
}

/// Every group, in the order `bench-report` runs them.
pub const ALL: &[Group] = &[
    Group {
        name: "sim",
        about: "simulated seconds per wall second for a 100-node fleet under the bandwidth model",
        run: sim::run,
    },
    Group {
        name: "transport",
        about: "256 MiB over one stream, connect time and idle memory: SDK vs raw library vs TCP",
        run: transport::run,
    },
    Group {
        name: "packages",
        about: "building and verifying a 512 MiB package against plain SHA-256 of the same bytes",
        run: packages::run,
    },
    Group {
        name: "swarm",
        about: "a 100 MB release to 10 and 100 simulated agents (SWARM_NODES=500 for more): swarm vs Kumar-Ross bound vs controller only",
        run: swarm::run,
    },
    Group {
        name: "delta",
        about: "a new version to nodes holding the old: bytes moved for a changed file, a changed byte and an inserted file, package size and build speed, a 2% delta rollout on 100 simulated agents; each against format 1 or a full release",
        run: delta::run,
    },
    Group {
        name: "sites",
        about: "a 100 MB release to 200 simulated agents at 5 sites behind 50 Mbit/s WAN links: WAN bytes per site and time vs the topology's bound, against the swarm blind to sites",
        run: sites::run,
    },
    Group {
        name: "swarm-netns",
        about: "a 32 MiB release to 8 agents in network namespaces shaped to 40 Mbit/s over iroh: swarm vs bound vs serial push",
        run: swarm_netns::run,
    },
    Group {
        name: "nat-netns",
        about: "relays and hole punching in network namespaces (iroh, libp2p): relayed vs direct stream, dial to a direct path",
        run: nat_netns::run,
    },
    Group {
        name: "agent",
        about: "the agent as a process: idle memory, start to ready, status round trip, 100 MB to 10 local agents",
        run: agent::run,
    },
    Group {
        name: "runtime",
        about: "process supervision: crash to replacement running, log line to follower, heap per app",
        run: runtime::run,
    },
];
