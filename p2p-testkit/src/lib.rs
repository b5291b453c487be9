//! # p2p-testkit
//!
//! Test your deployments on the simulator in a few lines: a [`Fleet`] is
//! N agents with labels on a simulated network ([`p2p_sim::SimNet`]), a
//! controller that knows them, and a publisher key they trust. Make a
//! signed release from random bytes ([`Fleet::release`]) or from a real
//! directory ([`Fleet::package`]), roll it out by label with any plan
//! ([`Fleet::deploy`]), and throw partitions, crashes and loss at the
//! fleet while it runs. The agents and the controller are the SDK's own
//! ([`p2p_deploy::Agent`], [`p2p_deploy::Controller`]), on simulated
//! transport, processes and storage, in virtual time: an hour of rollout
//! costs milliseconds, and one seed gives the same run every time
//! ([`Fleet::trace_hash`]).
//!
//! ```
//! use std::time::Duration;
//! use p2p_deploy::{BatchSize, FailureLimit, Plan, Progress, RolloutPlan};
//! use p2p_testkit::{Fleet, Node};
//!
//! p2p_testkit::block_on(async {
//!     let fleet = Fleet::builder(7)
//!         .nodes(12, |i| Node::new(format!("n{i:02}")).label("zone", if i < 9 { "a" } else { "b" }))
//!         .build();
//!     let v1 = fleet.release("web", "1.0.0", 200_000);
//!     let v2 = fleet.release("web", "2.0.0", 200_000);
//!     assert!(fleet.deploy(&v1, "", &RolloutPlan::default()).await.is_success());
//!
//!     // Roll v2 out 3 nodes at a time; cut zone b off when the second
//!     // batch begins. Up to 3 failures are tolerated.
//!     let zone_b = fleet.names("zone=b");
//!     let plan = RolloutPlan {
//!         plan: Plan::Rolling { batch: BatchSize::Nodes(3) },
//!         max_failures: FailureLimit::Count(3),
//!         ..RolloutPlan::default()
//!     };
//!     let rollout = fleet
//!         .deploy_with(&v2, "", &plan, |p| {
//!             if matches!(p, Progress::Batch { index: 1, .. }) {
//!                 fleet.cut_off(&zone_b);
//!             }
//!         })
//!         .await;
//!     assert_eq!(rollout.halted(), None, "{rollout}");
//!     assert_eq!(rollout.failed(), zone_b, "{rollout}");
//!
//!     // The rest runs v2; once healed, zone b is on v1 still.
//!     fleet.heal();
//!     fleet.run_for(Duration::from_secs(60)).await;
//!     let running = fleet.running("web").await;
//!     assert_eq!(running.len(), 12, "every node answers once healed");
//!     for (name, version) in running {
//!         let want = if zone_b.contains(&name) { "1.0.0" } else { "2.0.0" };
//!         assert_eq!(version.as_deref(), Some(want), "{name}");
//!     }
//!     println!("trace {}", fleet.trace_hash());
//! });
//! ```
//!
//! `p2p-testkit/tests/rollout_with_partition.rs` does the same with 200
//! nodes, and checks that the same seed gives the same trace.
//!
//! ## What a fleet is made of
//!
//! - Each agent ([`Node`]: name, labels, bandwidth, NAT) runs the real
//!   agent on its own simulated node, with the simulator's processes
//!   ([`p2p_sim::SimRuntime`]: set how a version behaves with
//!   [`Fleet::script`]; by default every version starts and passes its
//!   health checks), storage (kept across [`Fleet::crash`] and
//!   [`Fleet::restart`]) and clock, and an installer that checks every
//!   chunk and records the version without unpacking it. Change any of
//!   that with [`FleetBuilder::agent_config`] and
//!   [`FleetBuilder::agent_parts`], or add agents to a network of your own
//!   with [`spawn_agent`].
//! - The controller runs on node [`CONTROLLER`] with every agent in its
//!   bootstrap list ([`FleetBuilder::controller`] configures it,
//!   [`Fleet::add_controller`] adds another).
//! - Links default to 10 ms one way without loss, nodes to 100 Mbit/s up
//!   and down ([`FleetBuilder::link`], [`Node::mbit`]).
//! - [`Fleet::deploy`] takes the targets in name order and returns a
//!   [`Rollout`]: the controller's report with every node named as the
//!   fleet names it. A node whose labels match but that does not answer
//!   the controller is listed in [`Rollout::unanswered`] and makes the
//!   rollout no success. [`Fleet::net`], [`Fleet::controller`] and
//!   [`Fleet::signer`] give the parts for anything the kit does not wrap.
//!
//! ## Running it: paused time, and optimised dependencies
//!
//! Everything runs on a current-thread tokio runtime with paused time, so
//! idle time jumps to the next timer: write tests as
//! `#[tokio::test(start_paused = true)]` (the kit enables tokio's
//! `test-util` feature that this needs), or run a future with
//! [`block_on`]. [`FleetBuilder::build`] panics on a multi-thread
//! runtime or one without paused time (the simulator refuses them: the
//! run would take real time and differ every time), saying so.
//!
//! Simulated agents hash every chunk they move with SHA-256 and check
//! every release's Ed25519 signature. This workspace compiles `sha2`,
//! `p2p-sim` and `p2p-deploy` optimised even in debug builds; a project
//! outside it does not inherit that, and its simulations run 1.3x to 2.1x
//! slower (measured: a 16 KiB release to 200 nodes, and a 4 MiB one to
//! 50). Put the same in your own `Cargo.toml`, and `curve25519-dalek` too:
//! unoptimised, the signature checks are most of a rollout's time, and
//! optimising them made the 200-node rollout of
//! `tests/rollout_with_partition.rs` about 3x faster.
//!
//! ```toml
//! [profile.dev.package.sha2]
//! opt-level = 3
//! [profile.dev.package.curve25519-dalek]
//! opt-level = 3
//!
//! [profile.dev.package.p2p-sim]
//! opt-level = 2
//! [profile.dev.package.p2p-deploy]
//! opt-level = 2
//! ```
//!
//! The kit re-exports [`p2p_core`], [`p2p_deploy`] and [`p2p_sim`]
//! (`p2p_testkit::p2p_deploy::RolloutPlan`), so a test needs this crate
//! and, for `#[tokio::test(start_paused = true)]`, tokio with the
//! `macros`, `rt` and `test-util` features (or [`block_on`] without it).

// The crates a fleet is made of, so that a test needs one dependency.
pub use p2p_core;
pub use p2p_deploy;
pub use p2p_sim;

mod agent;
mod fleet;
mod release;
mod rollout;

pub use agent::{PartsHook, spawn_agent, spawn_agent_with_membership};
pub use fleet::{CONTROLLER, Fleet, FleetBuilder, Node};
pub use release::{RANDOM_CHUNK_SIZE, RandomRelease, noise, package, text};
pub use rollout::Rollout;

/// Runs `fut` to completion on a new current-thread tokio runtime with
/// paused time, as `#[tokio::test(start_paused = true)]` runs a test: for
/// a plain `#[test]` or `main` that runs several fleets, each on its own
/// runtime (and so its own virtual clock).
///
/// # Panics
/// When the runtime cannot be built, or `fut` panics.
pub fn block_on<F: std::future::Future>(fut: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .unwrap_or_else(|e| panic!("a current-thread tokio runtime: {e}"))
        .block_on(fut)
}
