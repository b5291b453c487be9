//! Logs from many nodes, merged into one stream.

use futures::stream::{BoxStream, StreamExt};
use p2p_core::{Error, LogLine, LogSelection, Result};

use super::Controller;
use crate::proto::{Call, Frame, NodeInfo, Request, unexpected};

impl Controller {
    /// Follows (or tails) `app`'s logs on every node in `nodes`, merged
    /// as lines arrive, each with the node's name (or short id). The
    /// requests are opened concurrently. A node that cannot be asked, or
    /// whose stream breaks, yields one error (naming the node) in the
    /// stream; the other nodes go on.
    pub async fn logs(
        &self,
        nodes: &[NodeInfo],
        app: &str,
        selection: LogSelection,
    ) -> BoxStream<'static, Result<(String, LogLine)>> {
        let opened = futures::future::join_all(nodes.iter().map(|n| {
            let request = Request::Logs {
                app: app.to_string(),
                selection: selection.clone(),
            };
            async move {
                let conn = self.connect(&n.addr).await?;
                let c = Call::open(&*conn, request, self.cfg.request_timeout).await?;
                Ok::<_, Error>((c, conn))
            }
        }))
        .await;
        let follow = selection.follow;
        let streams = nodes.iter().zip(opened).map(|(n, opened)| {
            let prefix = n.label();
            futures::stream::unfold(Some(opened), move |state| {
                let prefix = prefix.clone();
                async move {
                    let (mut c, conn) = match state? {
                        Ok(open) => open,
                        Err(e) => return Some((Err(e), None)),
                    };
                    let next = if follow {
                        c.next_unbounded().await
                    } else {
                        c.next().await
                    };
                    match next {
                        Ok(Frame::Log(l)) => Some((Ok((prefix, l)), Some(Ok((c, conn))))),
                        Ok(Frame::Done(_)) => None,
                        Ok(other) => Some((
                            Err(unexpected(&conn.remote_id(), "a log line", &other)),
                            None,
                        )),
                        Err(e) => Some((Err(e), None)),
                    }
                }
            })
            .boxed()
        });
        futures::stream::select_all(streams).boxed()
    }
}
