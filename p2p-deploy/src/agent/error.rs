//! Why a deploy (or a fetch of a release ahead of one) did not happen.
//! Typed inside the agent, so that a cause keeps its type (a trust store's
//! [`VerifyError`], a storage [`Error`]); it becomes the wire's
//! [`RpcError`] only where the request is answered.

use std::time::Duration;

use p2p_core::Error;

use crate::package::{FormatError, PackageId};
use crate::proto::{ErrorKind, RpcError};
use crate::trust::VerifyError;

/// Why a deploy, or a fetch of a release, did not happen. The agent's
/// deploy and fetch paths return it; [`Agent::handle`](crate::Agent::handle)
/// answers with the [`RpcError`] it converts to (same kind and message).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DeployError {
    /// The descriptor sent does not decode.
    #[error(transparent)]
    Malformed(#[from] FormatError),
    /// The release's signatures do not satisfy the trust store.
    #[error("{release}: {source}")]
    Untrusted {
        /// Name and version.
        release: String,
        /// The trust store's refusal.
        source: VerifyError,
    },
    /// The release would go below a version installed here.
    #[error("{app}: {source}")]
    Downgrade {
        /// The app's name.
        app: String,
        /// The refusal ([`VerifyError::Downgrade`]).
        source: VerifyError,
    },
    /// The version is installed here from another package.
    #[error("{release} is installed from another package ({other}); publish a new version instead")]
    Conflict {
        /// Name and version.
        release: String,
        /// The package installed.
        other: PackageId,
    },
    /// Fetching the chunks failed (a chunk no source could give, no peer
    /// reachable, the transfer's own deadline).
    #[error("{release}: {source}")]
    Transfer {
        /// Name and version.
        release: String,
        /// Why, as the swarm said.
        source: Error,
    },
    /// The node's disk filled up while the release came in; what arrived
    /// was removed again.
    #[error(
        "{release}: no space left on the node's disk: {source}; {cleanup}, the active version runs on"
    )]
    OutOfSpace {
        /// Name and version.
        release: String,
        /// The write that failed.
        source: Error,
        /// What became of the chunks received.
        cleanup: String,
    },
    /// The request's deadline passed first.
    #[error("{what} did not finish within {after:?}")]
    TimedOut {
        /// What did not finish.
        what: String,
        /// The request's deadline.
        after: Duration,
    },
    /// An error already in its wire form: a peer's answer, or what the
    /// activation that followed said.
    #[error("{0}")]
    Wire(RpcError),
    /// This node failed (its storage, its installer).
    #[error(transparent)]
    Node(#[from] Error),
}

impl DeployError {
    /// The kind the error travels as.
    pub fn kind(&self) -> ErrorKind {
        match self {
            DeployError::Malformed(_) => ErrorKind::Corrupt,
            DeployError::Untrusted { .. } => ErrorKind::BadSignature,
            DeployError::Downgrade { .. } => ErrorKind::Downgrade,
            DeployError::Conflict { .. } => ErrorKind::Invalid,
            DeployError::Transfer { source, .. } => match source {
                Error::Timeout { .. } => ErrorKind::Timeout,
                Error::Invalid { .. } => ErrorKind::Invalid,
                Error::Unreachable { .. } => ErrorKind::Unreachable,
                // A chunk that came bad from every source that had it.
                Error::Protocol { .. } => ErrorKind::Corrupt,
                _ => ErrorKind::Internal,
            },
            DeployError::OutOfSpace { .. } => ErrorKind::Internal,
            DeployError::TimedOut { .. } => ErrorKind::Timeout,
            DeployError::Wire(e) => e.kind,
            DeployError::Node(e) => RpcError::from_error(e).kind,
        }
    }
}

impl From<RpcError> for DeployError {
    fn from(e: RpcError) -> Self {
        DeployError::Wire(e)
    }
}

impl From<DeployError> for RpcError {
    fn from(e: DeployError) -> Self {
        match e {
            DeployError::Wire(e) => e,
            // The reason of a chunk nobody could give names the release,
            // the chunk and the peer already.
            DeployError::Transfer {
                source: Error::Protocol { reason },
                ..
            } => RpcError::new(ErrorKind::Corrupt, reason),
            DeployError::Node(e) => RpcError::from_error(&e),
            e => RpcError::new(e.kind(), e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_deploy_error_travels_with_the_kind_of_its_cause() {
        let e = RpcError::from(DeployError::Untrusted {
            release: "web 1.0.0".into(),
            source: VerifyError::Unsigned,
        });
        assert_eq!(e.kind, ErrorKind::BadSignature);
        assert_eq!(
            e.message,
            "web 1.0.0: the release is not signed, and signatures are required"
        );
        // A chunk nobody could give: its reason already names it all.
        let e = RpcError::from(DeployError::Transfer {
            release: "web 1.0.0".into(),
            source: Error::protocol("chunk 3 of web 1.0.0 does not match its hash"),
        });
        assert_eq!(e.kind, ErrorKind::Corrupt);
        assert_eq!(e.message, "chunk 3 of web 1.0.0 does not match its hash");
        let e = RpcError::from(DeployError::Transfer {
            release: "web 1.0.0".into(),
            source: Error::unreachable("no peer holding chunk 2 can be reached"),
        });
        assert_eq!(e.kind, ErrorKind::Unreachable);
        assert!(e.message.starts_with("web 1.0.0: "), "{}", e.message);
        let e = RpcError::from(DeployError::TimedOut {
            what: "fetching release x".into(),
            after: Duration::from_secs(3),
        });
        assert_eq!(e.kind, ErrorKind::Timeout);
        assert_eq!(e.message, "fetching release x did not finish within 3s");
        let malformed = DeployError::from(FormatError::DescriptorCorrupt("chunk size 0".into()));
        assert_eq!(RpcError::from(malformed).kind, ErrorKind::Corrupt);
    }
}
