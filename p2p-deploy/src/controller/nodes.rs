//! The fleet as a controller sees it: every known node asked for its
//! info, and targets picked from them by label.

use p2p_core::{Error, PeerAddr, PeerId, Result};
use serde::{Deserialize, Serialize};

use super::Controller;
use crate::proto::{NodeInfo, Reply, Request, call_watched};
use crate::selector::Selector;

/// A node as the controller sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeView {
    /// Where it was reached (or tried).
    pub addr: PeerAddr,
    /// What it said, or why it could not be asked.
    pub info: std::result::Result<NodeInfo, String>,
    /// How the controller's connection reached it (direct or relayed, the
    /// round trip), when there was one.
    #[serde(default)]
    pub path: Option<p2p_core::PathInfo>,
}

impl NodeView {
    /// The views that hold an error instead of the node's info.
    pub fn unanswered(views: &[NodeView]) -> impl Iterator<Item = &NodeView> {
        views.iter().filter(|v| v.info.is_err())
    }

    /// What the node said, with the address it was reached at first in
    /// its address list (the one it reports itself may not be reachable
    /// from here).
    fn reached(&self) -> Option<NodeInfo> {
        let mut i = self.info.clone().ok()?;
        let mut addrs = self.addr.addrs.clone();
        for a in &i.addr.addrs {
            if !addrs.contains(a) {
                addrs.push(a.clone());
            }
        }
        i.addr = PeerAddr { id: i.id, addrs };
        Some(i)
    }

    /// The node's name, else its short id.
    pub fn label(&self) -> String {
        match &self.info {
            Ok(i) => i.label(),
            Err(_) => self.addr.id.short(),
        }
    }
}

impl Controller {
    /// Asks every known node for its info, concurrently.
    pub async fn nodes(&self) -> Vec<NodeView> {
        let addrs = self.known();
        futures::future::join_all(addrs.into_iter().map(|addr| async move {
            let conn = match self.connect(&addr).await {
                Ok(c) => c,
                Err(e) => {
                    return NodeView {
                        addr,
                        info: Err(e.to_string()),
                        path: None,
                    };
                }
            };
            let info = match call_watched(
                &conn,
                Request::Info,
                self.cfg.request_timeout,
                self.cfg.node_silence,
            )
            .await
            {
                Ok(Reply::Info(i)) => Ok(*i),
                Ok(other) => Err(format!("unexpected answer {other:?}")),
                Err(e) => Err(e.to_string()),
            };
            NodeView {
                addr,
                info,
                path: Some(conn.path()),
            }
        }))
        .await
    }

    /// The nodes among `views` that answered and match `selector`, plus
    /// those named in `ids` (which must have answered). With neither a
    /// selector nor ids, every node that answered. Nodes that did not
    /// answer cannot be matched by label: [`NodeView::unanswered`] lists
    /// them, for a caller to warn about.
    pub fn select(
        views: &[NodeView],
        selector: Option<&Selector>,
        ids: &[PeerId],
    ) -> Result<Vec<NodeInfo>> {
        let mut out = Vec::new();
        for id in ids {
            match views.iter().find(|v| v.addr.id == *id) {
                Some(v @ NodeView { info: Ok(_), .. }) => out.extend(v.reached()),
                Some(NodeView { info: Err(e), .. }) => {
                    return Err(Error::unreachable(format!("node {}: {e}", id.short())));
                }
                None => {
                    return Err(Error::NotFound {
                        what: format!("node {} is not known", id.short()),
                    });
                }
            }
        }
        let every = Selector::default();
        let selector = match selector {
            Some(sel) => Some(sel),
            None if ids.is_empty() => Some(&every),
            None => None,
        };
        if let Some(sel) = selector {
            for v in views {
                if let Ok(i) = &v.info
                    && sel.matches(&i.labels)
                    && !out.iter().any(|o| o.id == i.id)
                {
                    out.extend(v.reached());
                }
            }
        }
        Ok(out)
    }
}
