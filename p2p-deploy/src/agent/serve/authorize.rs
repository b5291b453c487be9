//! Who may change a node. With an operator list configured, changes
//! ([`Request::is_mutating`]) are accepted only from an operator or from
//! the node itself (in-process; a remote peer cannot claim another's id,
//! since the transports authenticate every connection). Every admitted
//! peer may read.

use std::collections::BTreeSet;

use p2p_core::PeerId;

use crate::proto::{ErrorKind, Request, RpcError};

/// Whether `from` may send `request` to the node `local`, given its
/// `operators` (`None`: every admitted peer may); the refusal names the
/// request and the peer.
pub(crate) fn authorize(
    request: &Request,
    from: PeerId,
    operators: Option<&BTreeSet<PeerId>>,
    local: PeerId,
) -> Result<(), RpcError> {
    match operators {
        Some(ops) if request.is_mutating() && !ops.contains(&from) && from != local => {
            Err(RpcError::new(
                ErrorKind::Denied,
                format!(
                    "{} refused: peer {} is not an operator of this node",
                    request.kind(),
                    from.short()
                ),
            ))
        }
        _ => Ok(()),
    }
}

/// Whether `from` may deploy to the node, for a deploy's plan (which
/// anyone may ask for): the refusal a deploy would get.
pub(crate) fn authorize_plan(
    from: PeerId,
    operators: Option<&BTreeSet<PeerId>>,
    local: PeerId,
) -> Result<(), RpcError> {
    match operators {
        Some(ops) if !ops.contains(&from) && from != local => Err(RpcError::new(
            ErrorKind::Denied,
            format!(
                "deploy refused: peer {} is not an operator of this node",
                from.short()
            ),
        )),
        _ => Ok(()),
    }
}
