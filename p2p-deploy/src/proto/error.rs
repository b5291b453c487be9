//! Errors as they travel: a kind a caller can branch on and a message a
//! user can act on.

use std::time::Duration;

use p2p_core::{Error, PeerId};
use serde::{Deserialize, Serialize};

/// What kind of error a request met.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ErrorKind {
    /// The caller may not do this (not an operator).
    Denied,
    /// No such app, version or release.
    NotFound,
    /// The request is malformed or impossible.
    Invalid,
    /// Signatures or trust refused the release.
    BadSignature,
    /// A lower version than an installed one, without a rollback.
    Downgrade,
    /// Another operation on the app is in progress.
    Busy,
    /// The deadline passed.
    Timeout,
    /// The node could not reach a peer it needed (the sender of a
    /// release's chunks, say).
    Unreachable,
    /// A release's bytes do not match its descriptor.
    Corrupt,
    /// Anything else on the node's side (storage, runtime).
    Internal,
}

impl ErrorKind {
    /// The kind as JSON writes it (`not_found`, `bad_signature`...).
    pub fn name(self) -> &'static str {
        match self {
            ErrorKind::Denied => "denied",
            ErrorKind::NotFound => "not_found",
            ErrorKind::Invalid => "invalid",
            ErrorKind::BadSignature => "bad_signature",
            ErrorKind::Downgrade => "downgrade",
            ErrorKind::Busy => "busy",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Unreachable => "unreachable",
            ErrorKind::Corrupt => "corrupt",
            ErrorKind::Internal => "internal",
        }
    }
}

/// An error as it travels: kind and message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{message}")]
pub struct RpcError {
    /// What kind of error: what a caller branches on.
    pub kind: ErrorKind,
    /// What went wrong, for people: names the app, release, peer or chunk.
    pub message: String,
}

impl RpcError {
    /// An error of `kind`.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        RpcError {
            kind,
            message: message.into(),
        }
    }

    /// Converts a local error for the wire.
    pub fn from_error(e: &Error) -> Self {
        let kind = match e {
            Error::Denied { .. } => ErrorKind::Denied,
            Error::NotFound { .. } => ErrorKind::NotFound,
            Error::Invalid { .. } | Error::AlreadyExists { .. } | Error::NotSupported { .. } => {
                ErrorKind::Invalid
            }
            Error::BadSignature { .. } => ErrorKind::BadSignature,
            Error::Timeout { .. } => ErrorKind::Timeout,
            Error::Busy { .. } => ErrorKind::Busy,
            Error::Unreachable { .. } | Error::Closed { .. } => ErrorKind::Unreachable,
            Error::Protocol { .. } => ErrorKind::Corrupt,
            _ => ErrorKind::Internal,
        };
        RpcError::new(kind, e.to_string())
    }

    /// Back into a p2p-core error, naming the node it came from; `after`
    /// is the deadline of the request, shown by a timeout.
    pub fn into_error(self, node: &PeerId, after: Duration) -> Error {
        let m = format!("node {}: {}", node.short(), self.message);
        match self.kind {
            ErrorKind::Denied | ErrorKind::Downgrade => Error::denied(m),
            ErrorKind::NotFound => Error::NotFound { what: m },
            ErrorKind::Invalid => Error::invalid("request", m),
            ErrorKind::BadSignature => Error::BadSignature { reason: m },
            ErrorKind::Busy => Error::Busy { what: m },
            ErrorKind::Timeout => Error::Timeout { during: m, after },
            ErrorKind::Unreachable => Error::unreachable(m),
            ErrorKind::Corrupt => Error::protocol(m),
            ErrorKind::Internal => Error::Backend {
                backend: "agent",
                source: m.into(),
            },
        }
    }
}
