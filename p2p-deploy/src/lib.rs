//! # p2p-deploy
//!
//! Packages, signing and trust, the node agent and the controller of the
//! p2p deployment SDK: what a release is, how it is built and signed, how
//! a node decides to accept it, installs it and keeps it healthy, and how
//! a fleet is rolled forward (or back). Depends on p2p-core only, like
//! everything above the transports: the same agent and controller run on
//! iroh, libp2p or the simulator.
//!
//! ```no_run
//! use std::path::Path;
//! use p2p_core::{Ed25519Signer, SystemClock};
//! use p2p_deploy::{build, BuildOptions, PackageFile, TrustStore};
//! use p2p_deploy::trust::read_secret_key;
//!
//! # async fn demo() -> p2p_core::Result<()> {
//! // Package a directory holding p2p.toml; same files, same bytes.
//! build(Path::new("./web"), Path::new("web-1.4.2.p2p"), &SystemClock, BuildOptions::default())?;
//! // Sign in place, as many publishers as the fleet's threshold wants.
//! let key = read_secret_key(Path::new("alice.key"))?;
//! let mut pkg = PackageFile::open(Path::new("web-1.4.2.p2p"))?;
//! pkg.sign(&key).await?;
//! // A node verifies against its trust store: signatures, then every byte.
//! let trust = TrustStore::load(Path::new("/etc/p2pd/trusted"))?;
//! let keys = PackageFile::open(Path::new("web-1.4.2.p2p"))?.verify(&trust)?;
//! println!("signed by {} trusted key(s)", keys.len());
//! # Ok(()) }
//! ```
//!
//! Running a node and rolling out to a fleet:
//!
//! ```no_run
//! use std::sync::Arc;
//! use p2p_core::{Provider, Runtime, Storage, SystemClock};
//! use p2p_deploy::*;
//!
//! # async fn demo(provider: Arc<dyn Provider>, runtime: Arc<dyn Runtime>,
//! #     storage: Arc<dyn Storage>, ctl_provider: Arc<dyn Provider>) -> p2p_core::Result<()> {
//! // A node: its transport, runtime and disk, and whom it trusts.
//! let trust = TrustStore::load(std::path::Path::new("/etc/p2pd/trusted"))?;
//! let agent = Agent::new(AgentConfig::new(trust), AgentParts {
//!     provider, runtime, storage,
//!     installer: Arc::new(DirInstaller::new("/var/lib/p2pd/versions", UnpackLimits::default())),
//!     clock: Arc::new(SystemClock),
//!     seed: 1, // on a real node: a random u64 (it drives swarm choices)
//! });
//! tokio::spawn(async move { agent.run().await });
//!
//! // A controller: find nodes, pick some by label, roll out in batches.
//! let ctl = Controller::new(ctl_provider, ControllerConfig::default());
//! let nodes = ctl.nodes().await;
//! let targets = Controller::select(&nodes, Some(&"role=web".parse()?), &[])?;
//! let release = Arc::new(Release::from_package(&PackageFile::open("web-1.4.2.p2p".as_ref())?));
//! let plan = RolloutPlan {
//!     plan: Plan::Rolling { batch: BatchSize::Percent(20) },
//!     ..RolloutPlan::default()
//! };
//! let (events, mut progress) = tokio::sync::mpsc::channel(256);
//! tokio::spawn(async move { while let Some(p) = progress.recv().await { println!("{p:?}") } });
//! let report = ctl.deploy(release, &targets, &plan, events).await;
//! assert!(report.is_success(), "{report:?}");
//! # Ok(()) }
//! ```
//!
//! - [`manifest`]: `p2p.toml`, validated with errors that name the field.
//! - [`build`]: a directory to a deterministic tar stream (sorted entries,
//!   zero times and owners, modes 0644/0755 by the execute bit,
//!   `.p2pignore` in gitignore syntax) cut into content-defined chunks
//!   (256 KiB on average), each compressed on its own and hashed in the
//!   same pass, so that a new version shares every unchanged chunk with
//!   the old one (delta releases: see [`package`]).
//! - [`package`]: the [`Descriptor`] (manifest, each chunk's hash and
//!   sizes, creation time from `SOURCE_DATE_EPOCH` or the injected
//!   clock) in canonical postcard bytes, whose
//!   SHA-256 is the [`PackageId`]; the one-file package format (magic,
//!   version, archive, descriptor, signatures: layout in the module docs);
//!   signing in place; verification of every archive byte in one pass.
//! - [`trust`]: key files, the [`TrustStore`] (trusted and revoked keys,
//!   a threshold, signatures required unless explicitly switched off for
//!   development, with a warning on every use) and the anti-downgrade
//!   rule. Every way a package can be malformed is its own
//!   [`FormatError`](package::FormatError), every trust refusal its own
//!   [`VerifyError`].
//! - [`chunks`]: the chunk store on a p2p-core `Storage`: content
//!   addressed, each chunk verified before it is stored or served, kept
//!   while a release refers to it, collected after; transfers resume from
//!   the chunks present.
//! - [`unpack`](mod@unpack): an archive into `versions/<name>/<version>` through a
//!   staging directory and an atomic rename, refusing every unsafe entry
//!   and every chunk that does not decompress to its declared size, or
//!   nothing at all.
//! - [`proto`]: the deploy RPC protocol (versioned hello, one request per
//!   stream, streamed progress, typed errors, deadlines).
//! - [`agent`]: the node agent: persistent per-app state, reconcile,
//!   activation through a health gate with automatic rollback, crash
//!   recovery, keeping K versions, operator authorization. The gate
//!   itself is pure ([`agent::HealthGate`]: status samples and `now` in,
//!   pass, wait or a typed [`agent::GateFailure`] out); a deploy's errors
//!   stay typed ([`agent::DeployError`]) until the request is answered.
//! - [`controller`]: discovery, [`selector`]s, rollout plans (all, rolling,
//!   canary), failure limits with rollback on halt, progress events,
//!   merged logs from many nodes, merged event logs followed across
//!   disconnects ([`Controller::events`]), and a rollout's dry run
//!   ([`Controller::dry_run`]: each target's plan, nothing changed).
//! - [`events`]: each node's bounded, persisted event log with indexes
//!   that only grow (what was deployed, installed, passed or failed its
//!   gate, rolled back, restarted, refused).
//! - [`metrics`]: the agent's Prometheus metrics
//!   ([`Agent::register_metrics`]), beside the transport's and the
//!   process's from `p2p_core::metrics`.
//! - [`membership`]: signed node records gossiped over the `Provider`, so
//!   that a node joins through one bootstrap address and a controller
//!   that knows one node reaches all ([`Controller::members`]); nodes
//!   found unreachable are marked so by a signed claim, then dropped.
//!   Enable it with [`Agent::set_membership`].
//! - [`install`]: where versions are unpacked ([`DirInstaller`]) or, in
//!   the simulator, recorded ([`MemInstaller`]).
//! - [`swarm`]: how a release spreads: the controller seeds (each chunk
//!   once before any twice), targets exchange have-maps and fetch the
//!   rarest chunks from each other, every chunk is verified, and peers
//!   that send bad chunks or fail are scored and banned. Agents list the
//!   releases they hold ([`Controller::search`] finds them by name, prefix
//!   and version range) and fetch a release from any peer holding it
//!   ([`Controller::prefetch`]); upload and download caps per agent.
//!   `bench-report swarm` measures it on the simulator and `bench-report
//!   swarm-netns` over iroh between network namespaces, both against the
//!   Kumar-Ross bound.
//!
//! ## Performance
//!
//! `cargo run --release -p p2p-benches --bin bench-report -- packages
//! swarm agent` measures building and verifying packages against plain
//! SHA-256, the swarm against the Kumar-Ross bound, and the agent as a
//! process; the figures are in the README's benchmark section.

pub mod agent;
pub mod chunks;
pub mod controller;
pub mod events;
pub mod install;
pub mod membership;
pub mod metrics;
pub mod package;
mod pool;
pub mod proto;
pub mod selector;
pub mod swarm;

pub use agent::{Agent, AgentConfig, AgentParts, RequestRate};
pub use controller::{
    BatchSize, Controller, ControllerConfig, FailureLimit, Holder, Members, NodeResult, NodeView,
    Plan, Progress, RolloutPlan, RolloutReport, Search, SearchHit,
};
pub use install::{DirInstaller, Installer, MemInstaller};
pub use package::manifest::{self, MANIFEST_FILE, Manifest};
pub use package::trust::{self, TrustStore, VerifyError, check_not_downgrade};
pub use package::unpack::{self, UnpackLimits, unpack, unpack_release};
pub use package::{BuildOptions, Descriptor, IGNORE_FILE, PackageFile, PackageId, Release, build};
pub use proto::{ActivateOptions, CatalogEntry, NodeInfo};
pub use selector::Selector;
pub use swarm::{Bitfield, PeerScore, Reputation, ReputationPolicy, SwarmConfig};
