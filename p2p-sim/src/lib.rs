//! # p2p-sim
//!
//! A deterministic simulator for the p2p deployment SDK: a simulated
//! network whose nodes are ordinary [`p2p_core::Provider`]s, simulated
//! processes behind [`p2p_core::Runtime`], and in-memory storage, all in
//! virtual time and reproducible from one seed. The same agent and
//! controller code that runs on iroh or libp2p runs here, for fleets of
//! hundreds of nodes, with partitions, loss and crashes.
//!
//! - [`SimNet`]: the network. Links have latency, jitter and loss (turned
//!   into retransmission delay on reliable streams, never a silent hole);
//!   nodes have upload and download bandwidth shared fairly between
//!   concurrent flows; partitions can be two-way or one-way and heal;
//!   nodes crash (tasks abort, peers see resets) and restart from a
//!   factory with their storage kept; nodes on one LAN discover each other.
//!   Nodes can sit behind NAT ([`Reach`]): *punchable* nodes connect
//!   directly after a round of signalling through their relay,
//!   *relay-only* ones reach other nodes behind NAT only through their
//!   relay, a node like any other whose own upload and download carry
//!   every relayed byte; [`p2p_core::Connection::path`] says which.
//! - [`SimRuntime`]: scripted processes ([`Script`]: healthy, exits with a
//!   code after a time, unhealthy after a time, never healthy, slow start)
//!   behind the real [`p2p_core::Runtime`] contract, with health checks,
//!   restart policies, backoff and logs in virtual time. Every node started
//!   with [`SimNet::spawn_node`] gets one per incarnation, reading the
//!   network's shared [`ScriptBook`]; a crash kills its processes.
//! - Determinism: one seed, child RNGs per component, ordered maps, events
//!   ordered by (time, sequence), and a trace of every delivery and drop
//!   whose [`SimNet::trace_hash`] is identical for the same seed and
//!   workload, in any process.
//! - Speed: run under a current-thread tokio runtime with paused time
//!   (`#[tokio::test(start_paused = true)]`); idle time jumps to the next
//!   event. A [`SimNet`] refuses any other runtime, where it would run in
//!   real time and give a different trace on every run. `bench-report sim`
//!   measures simulated seconds per wall second for 100 nodes exchanging
//!   traffic under the bandwidth model (the [`scenario`] fleet: 20 Mbit/s
//!   nodes, 10 ms links, 1% loss, a partition and a crash).
//!
//! ## Model notes
//!
//! - Streams are cut into segments of at most 64 KiB; each node's uplink
//!   and downlink serve the flows waiting on them round robin, one segment
//!   at a time, so concurrent flows share capacity fairly.
//! - A writer may have 2 MiB in flight and unread per stream (the window);
//!   credit returns one link latency after the reader consumes data.
//!   Window acknowledgements are not subject to loss or partitions.
//! - A lost segment is sent again after max(3 x RTT, 20 ms); the reader
//!   sees the bytes late and in order, never a hole.
//! - A partition holds segments back; they resume on heal. A connection
//!   whose close cannot cross a partition ends on the far side after the
//!   idle timeout (30 s). A dial into a partition or to a crashed node
//!   times out after the connect timeout (10 s); a dial to a node that is
//!   up but not listening is refused after one round trip.
//! - A crash models a machine: its tasks abort, its simulated processes
//!   die, peers see a reset one latency later; storage survives.
//!
//! ```
//! use p2p_core::Provider;
//! use p2p_sim::{LinkSpec, NodeConfig, SimNet};
//! use tokio::io::{AsyncReadExt, AsyncWriteExt};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> p2p_core::Result<()> {
//! let net = SimNet::builder(7).default_link(LinkSpec::latency(std::time::Duration::from_millis(10))).build();
//! let a = net.add_node_with("a", NodeConfig::default().mbit(100))?;
//! let b = net.add_node("b")?;
//! let mut listener = b.listen().await?;
//! let conn = a.connect(&b.local_addr()).await?;
//! let inbound = listener.accept().await?;
//! let (mut send, _) = conn.open_bi().await?;
//! send.write_all(b"hello").await.unwrap();
//! send.shutdown().await.unwrap();
//! let (_, mut recv) = inbound.accept_bi().await?;
//! let mut got = String::new();
//! recv.read_to_string(&mut got).await.unwrap();
//! assert_eq!(got, "hello");
//! net.partition(&["a"], &["b"])?;
//! net.heal();
//! println!("virtual time {:?}, trace {}", net.now(), net.trace_hash());
//! # Ok(()) }
//! ```

mod clock;
mod engine;
mod link;
mod net;
pub mod process;
mod provider;
pub mod scenario;
pub mod trace;

pub use clock::SimClock;
pub use engine::{NetStats, NodeTraffic};
pub use link::{LinkSpec, NodeConfig, Reach, SiteLink};
pub use net::{NodeCtx, SimNet, SimNetBuilder};
pub use process::{Script, ScriptBook, SimHealthChecker, SimRuntime};
pub use provider::SimProvider;
