//! The session layer's wire format: the stream header, the receiver's
//! answers, the control messages (see the [module docs](super)).

use libp2p::{Stream, StreamProtocol};
use p2p_core::{Error, Result};
use serde::{Deserialize, Serialize};
use tokio_util::compat::Compat;

/// The one libp2p protocol the SDK speaks; which SDK protocol a stream
/// carries is named by p2p-core's hello at its start.
pub const PROTOCOL: StreamProtocol = StreamProtocol::new("/p2p-deploy/1");

const MAGIC: [u8; 2] = *b"PD";
const VERSION: u8 = 1;
pub(crate) const HEADER_LEN: usize = 20;
/// Control frames are small: a reason is cut to [`MAX_REASON`] bytes.
pub(crate) const MAX_CONTROL_FRAME: u32 = 4096;
const MAX_REASON: usize = 1024;
/// The receiver took the stream from `libp2p-stream` and read its header.
pub(crate) const RECEIVED: u8 = 0x7e;
/// A data stream was queued for the peer's `accept_bi`.
pub(crate) const ACK_OK: u8 = 1;
/// The receiver has no such session (it was closed).
pub(crate) const ACK_NO_SESSION: u8 = 2;

/// A libp2p stream as tokio I/O.
pub(crate) type Io = Compat<Stream>;

/// What a stream header announces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// Open a session.
    Open,
    /// A data stream; `opener_dialed` tells whose id the session id is.
    Data { opener_dialed: bool },
}

/// A parsed stream header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Header {
    pub(crate) kind: Kind,
    pub(crate) session: u128,
}

impl Header {
    pub(crate) fn encode(&self) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        out[..2].copy_from_slice(&MAGIC);
        out[2] = VERSION;
        out[3] = match self.kind {
            Kind::Open => 1,
            Kind::Data {
                opener_dialed: true,
            } => 2,
            Kind::Data {
                opener_dialed: false,
            } => 3,
        };
        out[4..].copy_from_slice(&self.session.to_be_bytes());
        out
    }

    pub(crate) fn decode(b: &[u8; HEADER_LEN]) -> Result<Header> {
        if b[..2] != MAGIC {
            return Err(Error::protocol(
                "stream does not start with the p2p-deploy header",
            ));
        }
        if b[2] != VERSION {
            return Err(Error::VersionMismatch {
                protocol: "p2p-libp2p stream header".into(),
                ours_min: u16::from(VERSION),
                ours_max: u16::from(VERSION),
                theirs_min: u16::from(b[2]),
                theirs_max: u16::from(b[2]),
            });
        }
        let kind = match b[3] {
            1 => Kind::Open,
            2 => Kind::Data {
                opener_dialed: true,
            },
            3 => Kind::Data {
                opener_dialed: false,
            },
            k => return Err(Error::protocol(format!("unknown stream kind {k}"))),
        };
        let mut id = [0u8; 16];
        id.copy_from_slice(&b[4..]);
        Ok(Header {
            kind,
            session: u128::from_be_bytes(id),
        })
    }
}

/// The receiver's answer to an open.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum OpenReply {
    /// A listener took the connection.
    Welcome,
    /// Refused, with why.
    Refused { code: Refusal, reason: String },
}

/// Why an open was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Refusal {
    /// No listener.
    NotAccepting,
    /// Admission refused the peer.
    Denied,
    /// The accept backlog is full.
    Busy,
    /// The node is shutting down.
    Closing,
}

impl OpenReply {
    /// The error a dialer reports for a refusal.
    pub(crate) fn into_result(self, who: &str) -> Result<()> {
        match self {
            OpenReply::Welcome => Ok(()),
            OpenReply::Refused { code, reason } => Err(match code {
                Refusal::NotAccepting => {
                    Error::unreachable(format!("{who} is not accepting connections: {reason}"))
                }
                Refusal::Denied => Error::denied(format!("{who}: {reason}")),
                Refusal::Busy => Error::unreachable(format!("{who} is busy: {reason}")),
                Refusal::Closing => Error::unreachable(format!("{who} is shutting down: {reason}")),
            }),
        }
    }
}

/// Messages on the control stream after the welcome.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum ControlMsg {
    /// The sender closed the connection.
    Close { reason: String },
}

/// Cuts `reason` to [`MAX_REASON`] bytes on a character boundary.
pub(crate) fn truncate(reason: &str) -> &str {
    p2p_core::error::truncate_reason(reason, MAX_REASON)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_round_trip_and_bad_ones_are_named() {
        for kind in [
            Kind::Open,
            Kind::Data {
                opener_dialed: true,
            },
            Kind::Data {
                opener_dialed: false,
            },
        ] {
            let h = Header {
                kind,
                session: 0x0102_0304_0506_0708_090a_0b0c_0d0e_0f10,
            };
            assert_eq!(Header::decode(&h.encode()).unwrap(), h);
        }
        let mut b = Header {
            kind: Kind::Open,
            session: 1,
        }
        .encode();
        b[2] = 9;
        assert!(matches!(
            Header::decode(&b),
            Err(Error::VersionMismatch { .. })
        ));
        b[2] = VERSION;
        b[3] = 7;
        assert!(
            Header::decode(&b)
                .unwrap_err()
                .to_string()
                .contains("kind 7")
        );
        b[0] = b'X';
        assert!(
            Header::decode(&b)
                .unwrap_err()
                .to_string()
                .contains("header")
        );
    }

    #[test]
    fn refusals_map_to_the_errors_a_dialer_acts_on() {
        let r = |code| OpenReply::Refused {
            code,
            reason: "why".into(),
        };
        assert!(OpenReply::Welcome.into_result("p").is_ok());
        assert!(matches!(
            r(Refusal::NotAccepting).into_result("p"),
            Err(Error::Unreachable { .. })
        ));
        assert!(matches!(
            r(Refusal::Denied).into_result("p"),
            Err(Error::Denied { .. })
        ));
        assert!(matches!(
            r(Refusal::Busy).into_result("p"),
            Err(Error::Unreachable { .. })
        ));
    }
}
