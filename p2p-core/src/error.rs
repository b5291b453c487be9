//! The one error type of the SDK, named by meaning.
//!
//! Backends keep their own error types and map them into [`Error`]: a caller
//! that retries on [`Error::Unreachable`] or [`Error::Timeout`] behaves the
//! same whichever transport is underneath.

use std::time::Duration;

/// Result alias used throughout the SDK.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Boxed source error carried by [`Error::Backend`] and [`Error::Io`].
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Everything that can go wrong, grouped by what the caller can do about it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The peer could not be reached: no route, refused, not listening.
    #[error("peer unreachable: {reason}")]
    Unreachable {
        /// What was tried and why it failed.
        reason: String,
    },
    /// An operation did not finish within its deadline.
    #[error("timed out after {after:?} while {during}")]
    Timeout {
        /// What was being waited for.
        during: String,
        /// The deadline that passed.
        after: Duration,
    },
    /// The connection, stream, listener or provider is closed.
    #[error("closed: {reason}")]
    Closed {
        /// Why it was closed, as reported by whichever side closed it.
        reason: String,
    },
    /// The peer was refused by admission (pre-shared key or allow-list) or
    /// by authorization.
    #[error("denied: {reason}")]
    Denied {
        /// Which rule refused the peer.
        reason: String,
    },
    /// The peer sent something that violates the protocol.
    #[error("protocol error: {reason}")]
    Protocol {
        /// What was wrong with what the peer sent.
        reason: String,
    },
    /// The two sides share no protocol version.
    #[error(
        "protocol {protocol}: version mismatch: we speak {ours_min}..={ours_max}, \
         peer speaks {theirs_min}..={theirs_max}; upgrade the older side"
    )]
    VersionMismatch {
        /// The protocol name from the hello.
        protocol: String,
        /// Oldest version we accept.
        ours_min: u16,
        /// Newest version we speak.
        ours_max: u16,
        /// Oldest version the peer accepts.
        theirs_min: u16,
        /// Newest version the peer speaks.
        theirs_max: u16,
    },
    /// A frame's announced length exceeds the allowed maximum. Nothing of
    /// that size was allocated.
    #[error("frame of {len} bytes exceeds the maximum of {max} bytes")]
    FrameTooLarge {
        /// Length announced by the frame header.
        len: u64,
        /// Maximum accepted by the reader.
        max: u32,
    },
    /// An argument is malformed (a peer id, an address, a storage key, ...).
    #[error("invalid {what}: {reason}")]
    Invalid {
        /// What was being parsed or checked.
        what: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// The named thing does not exist.
    #[error("not found: {what}")]
    NotFound {
        /// What was looked up.
        what: String,
    },
    /// The named thing already exists.
    #[error("already exists: {what}")]
    AlreadyExists {
        /// What collided.
        what: String,
    },
    /// Another operation holds the thing; try again when it ends.
    #[error("busy: {what}")]
    Busy {
        /// What is busy, and with what.
        what: String,
    },
    /// A signature did not verify, or a key is not trusted.
    #[error("bad signature: {reason}")]
    BadSignature {
        /// Which check failed.
        reason: String,
    },
    /// The operation is not supported by this implementation.
    #[error("not supported: {what}")]
    NotSupported {
        /// What was asked for.
        what: String,
    },
    /// An I/O error, with what was being done.
    #[error("{context}: {source}")]
    Io {
        /// What the SDK was doing, including any path involved.
        context: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// An error from a backend that has no better mapping.
    #[error("{backend} backend: {source}")]
    Backend {
        /// Which backend (`iroh`, `libp2p`, `sim`, ...).
        backend: &'static str,
        /// The backend's own error.
        #[source]
        source: BoxError,
    },
}

/// Cuts a close reason (or any message bound for the wire) to at most
/// `max` bytes, on a character boundary.
///
/// ```
/// assert_eq!(p2p_core::error::truncate_reason("héllo", 2), "h");
/// assert_eq!(p2p_core::error::truncate_reason("short", 64), "short");
/// ```
pub fn truncate_reason(reason: &str, max: usize) -> &str {
    if reason.len() <= max {
        return reason;
    }
    let mut end = max;
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    &reason[..end]
}

impl Error {
    /// Shorthand for [`Error::Closed`].
    pub fn closed(reason: impl Into<String>) -> Self {
        Error::Closed {
            reason: reason.into(),
        }
    }

    /// Shorthand for [`Error::Denied`].
    pub fn denied(reason: impl Into<String>) -> Self {
        Error::Denied {
            reason: reason.into(),
        }
    }

    /// Shorthand for [`Error::Protocol`].
    pub fn protocol(reason: impl Into<String>) -> Self {
        Error::Protocol {
            reason: reason.into(),
        }
    }

    /// Shorthand for [`Error::Unreachable`].
    pub fn unreachable(reason: impl Into<String>) -> Self {
        Error::Unreachable {
            reason: reason.into(),
        }
    }

    /// Shorthand for [`Error::Invalid`].
    pub fn invalid(what: &'static str, reason: impl Into<String>) -> Self {
        Error::Invalid {
            what,
            reason: reason.into(),
        }
    }

    /// Shorthand for [`Error::Timeout`].
    pub fn timeout(during: impl Into<String>, after: Duration) -> Self {
        Error::Timeout {
            during: during.into(),
            after,
        }
    }

    /// Shorthand for [`Error::Io`].
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }

    /// Maps an I/O error from a stream into the error a caller acts on:
    /// resets and broken pipes become [`Error::Closed`], unexpected end of
    /// stream becomes [`Error::Protocol`], timeouts [`Error::Timeout`].
    pub fn from_stream_io(during: &str, err: std::io::Error) -> Self {
        use std::io::ErrorKind::*;
        match err.kind() {
            ConnectionReset | ConnectionAborted | BrokenPipe | NotConnected => {
                Error::closed(format!("{during}: {err}"))
            }
            UnexpectedEof => Error::protocol(format!("{during}: stream ended early")),
            TimedOut => Error::timeout(during.to_string(), Duration::ZERO),
            _ => Error::io(during.to_string(), err),
        }
    }

    /// Converts this error into an [`std::io::Error`] for use inside
    /// `AsyncRead`/`AsyncWrite` implementations, keeping the kind a stream
    /// user expects (`ConnectionReset` for [`Error::Closed`], and so on).
    pub fn into_io(self) -> std::io::Error {
        use std::io::ErrorKind;
        let kind = match &self {
            Error::Closed { .. } => ErrorKind::ConnectionReset,
            Error::Timeout { .. } => ErrorKind::TimedOut,
            Error::Denied { .. } => ErrorKind::PermissionDenied,
            Error::Unreachable { .. } => ErrorKind::NotConnected,
            Error::Invalid { .. } => ErrorKind::InvalidInput,
            Error::Protocol { .. } | Error::FrameTooLarge { .. } => ErrorKind::InvalidData,
            Error::Io { source, .. } => source.kind(),
            _ => ErrorKind::Other,
        };
        std::io::Error::new(kind, self)
    }

    /// True when retrying later may succeed (unreachable, timeout,
    /// closed, busy).
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            Error::Unreachable { .. }
                | Error::Timeout { .. }
                | Error::Closed { .. }
                | Error::Busy { .. }
        )
    }
}
