//! # p2p-core
//!
//! The foundation of the p2p deployment SDK: node identities, the traits that
//! the rest of the SDK is written against, wire framing, and admission.
//!
//! - **Identities**: [`NodeKey`] (an Ed25519 seed) and [`PeerId`] (its public
//!   key), the same on every transport; [`PeerAddr`] with a pasteable text form.
//! - **Transport traits**: [`Provider`], [`Listener`], [`Connection`], with
//!   boxed tokio streams and half-close. Backends: `p2p-iroh`, `p2p-libp2p`,
//!   and the deterministic simulator `p2p-sim`.
//! - **Node traits**: [`Runtime`] and [`HealthChecker`] (apps), [`Signer`] and
//!   [`Verifier`] (releases), [`Storage`] (state), [`Clock`] (wall time).
//! - **Framing** ([`framing`]): length-prefixed postcard frames with a size
//!   limit checked before allocation, and a versioned hello on every stream.
//! - **Admission** ([`admission`]): a provider wrapper enforcing a pre-shared
//!   key and an allow-list on both sides of every connection.
//! - **Conformance** (feature `conformance`): the contract suites every
//!   transport ([`Provider`]) and every [`Runtime`] must pass.
//! - **Metrics** ([`metrics`]): the Prometheus registry the SDK fills, a
//!   provider wrapper that counts connections and bytes, and the process
//!   collector.
//! - **Locking** ([`sync::lock`]): the one poison-ignoring lock the SDK
//!   uses.
//!
//! Every trait documents what implementations guarantee under a `# Contract`
//! heading. Errors are one [`Error`] enum named by meaning.
//!
//! ```
//! use p2p_core::{NodeKey, PeerAddr};
//! use rand::SeedableRng;
//!
//! let key = NodeKey::generate(&mut rand_chacha::ChaCha20Rng::seed_from_u64(42));
//! let addr = PeerAddr::new(key.peer_id(), ["127.0.0.1:4433"])?;
//! let pasted: PeerAddr = addr.to_string().parse()?;
//! assert_eq!(pasted.id, key.peer_id());
//! println!("node {} listening at {addr}", key.peer_id().short());
//! # Ok::<(), p2p_core::Error>(())
//! ```

pub mod addr;
pub mod admission;
pub mod clock;
#[cfg(feature = "conformance")]
pub mod conformance;
pub mod discovery;
pub mod error;
pub mod framing;
pub mod id;
pub mod metrics;
pub mod ratelog;
pub mod runtime;
pub mod signing;
pub mod storage;
pub mod sync;
pub mod transport;

pub use addr::PeerAddr;
pub use admission::{Admission, Admitted, PreSharedKey};
pub use clock::{Clock, SystemClock, Timestamp};
pub use error::{Error, Result};
pub use id::{NodeKey, PeerId};
pub use runtime::{
    AppSpec, AppState, AppStatus, ExitStatus, HealthCheckSpec, HealthChecker, HealthOutcome,
    HealthProbe, LogLine, LogLines, LogSelection, LogStream, ProbeTarget, ResourceLimits,
    RestartDecision, RestartMode, RestartPolicy, RestartTracker, Runtime,
};
pub use signing::{Ed25519Signer, Ed25519Verifier, KeyId, Signature, Signer, Verifier};
pub use storage::{FsStorage, MemStorage, Storage};
pub use transport::{
    Connection, Discovered, Listener, PathInfo, PathKind, Provider, RecvStream, SendStream,
    TransportStats,
};
