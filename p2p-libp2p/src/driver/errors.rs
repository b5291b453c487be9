//! The errors the swarm task hands back for failed dials, and an error's
//! causes as one line for its logs.

use std::time::Duration;

use libp2p::swarm::DialError;
use p2p_core::Error;

use crate::transport::classify;

/// The error of a dial whose every address went through relays this node
/// could not reach: the relay's own failure, with the peer named.
pub(super) fn through_failed_relays(who: &str, relay: &Error) -> Error {
    let say =
        |m: &str| format!("{who} is reached only through relays this node could not reach: {m}");
    match relay {
        Error::Denied { reason } => Error::denied(say(reason)),
        Error::Timeout { during, after } => Error::timeout(say(during), *after),
        other => Error::unreachable(say(&other.to_string())),
    }
}

/// An error with its causes, `: `-separated.
pub(super) fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut next = e.source();
    while let Some(cause) = next {
        let c = cause.to_string();
        if !text.contains(&c) {
            text.push_str(": ");
            text.push_str(&c);
        }
        next = cause.source();
    }
    text
}

/// `Error` is not `Clone`: the waiters after the first get the same kind
/// of error with the same text.
pub(super) fn same_error(e: &Error) -> Error {
    match e {
        Error::Denied { reason } => Error::denied(reason.clone()),
        Error::Closed { reason } => Error::closed(reason.clone()),
        Error::Timeout { during, after } => Error::timeout(during.clone(), *after),
        Error::Invalid { what, reason } => Error::invalid(what, reason.clone()),
        Error::Unreachable { reason } => Error::unreachable(reason.clone()),
        other => Error::unreachable(other.to_string()),
    }
}

/// Maps a failed dial into the error the caller of `connect` gets.
pub(crate) fn dial_error(who: &str, e: DialError, setup: Duration, tcp_wait: Duration) -> Error {
    match e {
        DialError::Transport(list) => classify(who, &list, setup, tcp_wait),
        DialError::NoAddresses => Error::unreachable(format!(
            "no address known for {who}: give one in its peer address, or enable mDNS"
        )),
        DialError::LocalPeerId { .. } => {
            Error::invalid("peer address", format!("{who} is this node itself"))
        }
        DialError::WrongPeerId { obtained, address } => Error::unreachable(format!(
            "{address} belongs to peer {obtained}, not to {who}"
        )),
        DialError::Denied { cause } => Error::denied(format!(
            "admission denied: this node refuses to dial {who}: {cause}"
        )),
        DialError::Aborted => Error::closed(format!("dial to {who} aborted")),
        DialError::DialPeerConditionFalse(_) => {
            Error::unreachable(format!("dial to {who} was not started"))
        }
    }
}
