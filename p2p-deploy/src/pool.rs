//! Connections to peers, reused while they last: one per peer, dialed
//! without holding the pool's lock (one slow peer must not hold up the
//! others), with a hook that starts serving each new one.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use p2p_core::{Connection, Error, PeerAddr, PeerId, Provider, Result};

#[derive(Default)]
pub(crate) struct Pool {
    conns: Mutex<BTreeMap<PeerId, Arc<dyn Connection>>>,
}

impl Pool {
    fn live(&self, id: &PeerId) -> Option<Arc<dyn Connection>> {
        p2p_core::sync::lock(&self.conns)
            .get(id)
            .filter(|c| c.is_connected())
            .cloned()
    }

    /// The live connection to `addr`, or a new one within `timeout`;
    /// `serve` is called once for each new connection kept.
    pub(crate) async fn connect(
        &self,
        provider: &dyn Provider,
        addr: &PeerAddr,
        timeout: Duration,
        serve: impl FnOnce(Arc<dyn Connection>),
    ) -> Result<Arc<dyn Connection>> {
        if let Some(c) = self.live(&addr.id) {
            return Ok(c);
        }
        let conn = tokio::time::timeout(timeout, provider.connect(addr))
            .await
            .map_err(|_| Error::timeout(format!("connecting to {}", addr.id.short()), timeout))??;
        // Another task may have connected meanwhile: keep one.
        let existing = {
            let mut conns = p2p_core::sync::lock(&self.conns);
            match conns.get(&addr.id).filter(|c| c.is_connected()) {
                Some(c) => Some(c.clone()),
                None => {
                    conns.insert(addr.id, conn.clone());
                    None
                }
            }
        };
        if let Some(c) = existing {
            conn.close("a connection to this peer exists").await;
            return Ok(c);
        }
        serve(conn.clone());
        Ok(conn)
    }
}
