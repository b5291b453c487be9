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
//! - No chunk comes twice: a chunk asked of a neighbour is asked of no
//!   other, and the target looks at the seed's choice as soon as its
//!   header arrives: one it holds, or has asked a neighbour for, it
//!   declines there (dropping the stream stops the seed sending the
//!   rest); any other it books, so that no neighbour is asked for it
//!   while it arrives. (The seed's choice, the fleet's rarest chunk, is
//!   also what the target's rarest-first asks its neighbours for, and the
//!   have-map in the request is as old as the wait for an upload slot: a
//!   tenth of the seed's chunks came from a neighbour too, before.)
//!   `chunk_duplicate_bytes_total` counts what still comes twice.
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
//! # Sites
//!
//! A fleet at several sites, each behind a slow WAN link, would otherwise
//! pull many copies of every chunk over each site's link: neighbours are
//! picked at random, and most of a node's are at other sites. With
//! [`SwarmConfig::sites`] (on by default), a node's site is its `site`
//! label, and its neighbours' sites come from their membership records
//! (so site awareness needs [membership](crate::membership); without it,
//! or without the label, the swarm is as above):
//!
//! - The controller gives each target every other target at its site (up
//!   to [`SITE_PEERS`](crate::controller::SITE_PEERS)) and
//!   [`ControllerConfig::remote_peers`](crate::ControllerConfig::remote_peers)
//!   at other sites, and a target dials a couple of those first.
//! - The seed sends "any chunk" requests the chunk the asker's *site*
//!   holds fewest copies of (then the fleet), so each chunk goes to every
//!   site once before any site twice.
//! - A target asks neighbours at other sites only for chunks that no
//!   neighbour at its own site holds, and of those only for the ones it is
//!   *designated* for: each chunk is assigned to one node of the site's
//!   peers in the deploy, the one whose hash of (id, chunk) is highest
//!   (rendezvous hashing), which every node of the site computes alike
//!   without talking. So each chunk crosses the site's link about once,
//!   and the site's nodes share the work of bringing it in. A node whose
//!   site has had nothing for it for two seconds while it lacks chunks
//!   fetches any of them from other sites: a designated node may be down.
//!
//! `bench-report sites` measures it: five sites of 40 targets (1 Gbit/s
//! inside, 50 Mbit/s WAN links), against the same swarm blind to sites.
//!
//! # Finding and fetching releases
//!
//! Every agent answers [`Request::Catalog`](crate::proto::Request::Catalog) with the releases it holds
//! (name, version, id, chunks held, installed, active), and
//! [`Request::Release`](crate::proto::Request::Release) with a held release's descriptor and the
//! signatures it arrived with, and each node's membership record lists
//! what it holds. [`Controller::search`](crate::Controller::search)
//! answers from one node's membership table (or, without membership,
//! asks every node), by name (`web`) or prefix (`web*`) and a semver
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
