//! Swarm transfer: the targets of a deploy fetch a release's chunks from
//! the controller and from each other.
//!
//! # How a release spreads
//!
//! - The deploy request carries the release's descriptor (a hash per
//!   chunk: 13 KB for 100 MB in 256 KiB chunks). Only the first
//!   [`ControllerConfig::descriptor_copies`](crate::ControllerConfig::descriptor_copies)
//!   targets get it whole; the others get [`Request::DeployRef`](crate::proto::Request::DeployRef), take
//!   the descriptor from two of those with [`Request::Release`](crate::proto::Request::Release), and ask
//!   the controller only if neither has it after a few tries. Any copy is
//!   checked against the release id, its hash. At 500 targets this keeps
//!   6.5 MB of descriptors off the controller's uplink at the start.
//! - The controller is the *seed*. A target asks it for "any chunk"
//!   ([`Request::FetchAny`](crate::proto::Request::FetchAny)) and the seed chooses one the target lacks
//!   and the fleet holds fewest copies of, serving a few at a time (two at
//!   first, so that the first chunks arrive soon, then up to twelve). So
//!   the seed's uplink, the scarcest resource at the start, sends every
//!   chunk once before it sends any twice.
//! - Each target opens *swarm sessions* ([`Request::Swarm`](crate::proto::Request::Swarm)) to peers
//!   from the deploy's peer list until it has [`SwarmConfig::dial`]
//!   neighbours, counting the sessions others opened to it: both sides
//!   send their have-map ([`Bitfield`]) and then announce each chunk as it
//!   arrives. The seed keeps a session with every target, so its choices
//!   follow the fleet.
//! - A target fetches from its neighbours with [`Request::FetchChunks`](crate::proto::Request::FetchChunks),
//!   a few requests in flight per neighbour, the rarest chunk among its
//!   neighbours first with random tie-breaks (the agent's seeded RNG);
//!   neighbours that failed it or sent bad chunks are asked last. A
//!   target that fell behind its neighbours asks each for twice as many
//!   at once, and so catches up instead of finishing last.
//! - A node serves [`SwarmConfig::upload_slots`] chunk requests at once
//!   and answers "busy" to more, so the copies of a chunk new to the fleet
//!   leave its first holders at a good share of their uplink, and the
//!   askers it turned away go to other holders.
//! - Every chunk is checked against the descriptor before it is stored or
//!   served; a peer that sends a bad one, or fails requests repeatedly,
//!   loses [`Reputation`] and is banned for a while past a threshold.
//! - Chunks are kept in the [`ChunkStore`](crate::chunks::ChunkStore) as
//!   they arrive, so a transfer that is interrupted resumes where it was.
//!   Once every chunk exists somewhere in the fleet, the seed may go away.
//!
//! # Finding and fetching releases
//!
//! Every agent answers [`Request::Catalog`](crate::proto::Request::Catalog) with the releases it holds
//! (name, version, id, chunks held, installed, active), and
//! [`Request::Release`](crate::proto::Request::Release) with a held release's descriptor and the
//! signatures it arrived with. [`Controller::search`](crate::Controller::search)
//! asks the whole fleet, by name (`web`) or prefix (`web*`) and a semver
//! requirement; [`Request::Fetch`](crate::proto::Request::Fetch) (or
//! [`Controller::prefetch`](crate::Controller::prefetch)) has an agent
//! take a release from the peers that hold it: the descriptor and
//! signatures are checked against the agent's own trust store before a
//! single chunk is fetched, the chunks come through the same swarm, and
//! the release is kept without being installed, so that a later deploy
//! of it starts with every chunk present. It is dropped once the node
//! installs a version of the app as high or higher, since a deploy never
//! goes below an installed version.
//!
//! # Bandwidth
//!
//! [`SwarmConfig::upload_limit`] and [`SwarmConfig::download_limit`] cap
//! the chunk bytes an agent serves and fetches per second (a [`Throttle`]
//! on tokio time, so simulated runs stay deterministic). Session
//! announcements and other requests are small and not counted.
//!
//! # Measured
//!
//! `bench-report swarm` (the simulator, 100 MB, every node at 100 Mbit/s,
//! 20 ms latency, 256 KiB chunks) and `bench-report swarm-netns` (real
//! iroh connections between network namespaces shaped with `tbf`); the
//! figures and the commands are in the repository's README.

mod config;
mod fetch;
mod host;
mod peer;
mod reputation;
mod schedule;
mod seed;
mod session;
mod sources;
mod throttle;
mod transfer;

pub use crate::proto::{Bitfield, PeerScore};
pub use config::SwarmConfig;
pub(crate) use fetch::fetch;
pub(crate) use host::Host;
pub(crate) use peer::SwarmPeer;
pub use reputation::{Reputation, ReputationPolicy};
pub(crate) use seed::Seed;
pub(crate) use session::serve_session;
pub use throttle::Throttle;
pub(crate) use transfer::Transfer;
