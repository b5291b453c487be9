//! The allow-list, enforced in iroh's endpoint hooks.

use std::collections::BTreeSet;

use iroh::EndpointAddr;
use iroh::endpoint::{
    AfterHandshakeOutcome, BeforeConnectOutcome, Connection, EndpointHooks, VarInt,
};
use p2p_core::PeerId;

use crate::conn::{CLOSE_REFUSED, DENIED_PREFIX};

/// Refuses to dial a peer outside the list (before any packet is sent) and
/// closes any connection, inbound or outbound, whose verified remote id is
/// outside it, right after the TLS handshake proved that id.
#[derive(Debug)]
pub(crate) struct AllowListHooks {
    pub(crate) allowed: BTreeSet<PeerId>,
}

impl AllowListHooks {
    fn allows(&self, id: &iroh::EndpointId) -> bool {
        self.allowed.contains(&crate::addr::peer_id(id))
    }
}

impl EndpointHooks for AllowListHooks {
    async fn before_connect<'a>(
        &'a self,
        remote_addr: &'a EndpointAddr,
        _alpn: &'a [u8],
    ) -> BeforeConnectOutcome {
        if self.allows(&remote_addr.id) {
            BeforeConnectOutcome::Accept
        } else {
            tracing::info!(peer = %remote_addr.id.fmt_short(), "refusing to dial a peer outside the allow-list");
            BeforeConnectOutcome::Reject
        }
    }

    async fn after_handshake<'a>(&'a self, conn: &'a Connection) -> AfterHandshakeOutcome {
        let remote = conn.remote_id();
        if self.allows(&remote) {
            return AfterHandshakeOutcome::accept();
        }
        tracing::info!(peer = %remote.fmt_short(), "refused a connection from a peer outside the allow-list");
        AfterHandshakeOutcome::Reject {
            error_code: VarInt::from_u32(CLOSE_REFUSED),
            reason: format!(
                "{DENIED_PREFIX}peer {} is not in the allow-list",
                crate::addr::peer_id(&remote).short()
            )
            .into_bytes(),
        }
    }
}
