//! The simulator's [`Provider`]: [`SimProvider`] and its connection and
//! stream handles.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use async_trait::async_trait;
use futures::StreamExt;
use p2p_core::{
    Connection, Discovered, Error, Listener, PeerAddr, PeerId, Provider, RecvStream, Result,
    SendStream,
};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::mpsc;

use crate::engine::{ConnId, FlowId, NodeIdx, Shared};

/// One incarnation of a simulated node, as a [`Provider`].
///
/// Addresses are node names: `local_addr()` is `<peer id>@<name>` (or the
/// address given to [`SimNet::restart_at`](crate::SimNet::restart_at)). After the
/// node crashes or the provider is closed, every call fails with
/// [`Error::Closed`]; a restarted node gets a new `SimProvider`.
///
/// Bounds (virtual time): a dial to a name that does not exist fails at
/// once with [`Error::Unreachable`], one to a node that is not listening
/// after one round trip, one to a node that is down or cut off by a
/// partition with [`Error::Timeout`] after the connect timeout (10 s by
/// default). A close reaches the peer after one link latency, or after the
/// idle timeout (30 s by default) when a partition is in the way.
#[derive(Clone)]
pub struct SimProvider {
    pub(crate) shared: Arc<Shared>,
    pub(crate) node: NodeIdx,
    pub(crate) inc: u64,
    pub(crate) id: PeerId,
    pub(crate) name: String,
    /// The address it is dialed at (its name unless moved).
    pub(crate) addr: String,
}

impl std::fmt::Debug for SimProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "SimProvider({} {}, incarnation {})",
            self.name,
            self.id.short(),
            self.inc
        )
    }
}

impl SimProvider {
    /// The simulated node's name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

#[async_trait]
impl Provider for SimProvider {
    fn backend(&self) -> &'static str {
        "sim"
    }

    fn local_id(&self) -> PeerId {
        self.id
    }

    fn local_addr(&self) -> PeerAddr {
        PeerAddr {
            id: self.id,
            addrs: vec![self.addr.clone()],
        }
    }

    async fn connect(&self, peer: &PeerAddr) -> Result<Arc<dyn Connection>> {
        let (pending, rx) = self
            .shared
            .with(|st| st.connect(self.node, self.inc, peer))?;
        // If the caller gives up first (its own timeout, a select!), the
        // attempt must still be forgotten and any half-made connection closed.
        let mut guard = DialGuard {
            shared: self.shared.clone(),
            pending: Some(pending),
        };
        let timeout = self.shared.with(|st| st.cfg.connect_timeout);
        let outcome = tokio::time::timeout(timeout, rx).await;
        if outcome.is_ok() {
            guard.pending = None;
        }
        match outcome {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(Error::closed(format!(
                "simulated node {} went down while dialing",
                self.name
            ))),
            Err(_) => {
                drop(guard);
                Err(Error::timeout(
                    format!("connecting to {}", peer.id.short()),
                    timeout,
                ))
            }
        }
    }

    async fn listen(&self) -> Result<Box<dyn Listener>> {
        let rx = self.shared.with(|st| st.listen(self.node, self.inc))?;
        Ok(Box::new(SimListener {
            rx,
            shared: self.shared.clone(),
            node: self.node,
            inc: self.inc,
        }))
    }

    fn discovered(&self) -> Discovered {
        match self.shared.with(|st| st.subscribe(self.node, self.inc)) {
            Ok(rx) => {
                futures::stream::unfold(
                    rx,
                    |mut rx| async move { rx.recv().await.map(|a| (a, rx)) },
                )
                .boxed()
            }
            Err(_) => futures::stream::empty().boxed(),
        }
    }

    async fn close(&self, reason: &str) {
        let (node, inc) = (self.node, self.inc);
        self.shared.with(|st| {
            if st.nodes[node as usize].inc == inc {
                st.take_down(node, reason, true);
            }
        });
    }
}

struct DialGuard {
    shared: Arc<Shared>,
    pending: Option<u64>,
}

impl Drop for DialGuard {
    fn drop(&mut self) {
        if let Some(p) = self.pending.take() {
            self.shared.with(|st| st.connect_timed_out(p));
        }
    }
}

struct SimListener {
    rx: mpsc::Receiver<Arc<dyn Connection>>,
    shared: Arc<Shared>,
    node: NodeIdx,
    inc: u64,
}

#[async_trait]
impl Listener for SimListener {
    async fn accept(&mut self) -> Result<Arc<dyn Connection>> {
        let (n, inc) = (self.node, self.inc);
        let down = || {
            self.shared.with(|st| {
                st.node_live(n, inc).err().map(|_| {
                    let node = &st.nodes[n as usize];
                    Error::closed(format!(
                        "simulated node {} stopped listening ({})",
                        node.name, node.down_reason
                    ))
                })
            })
        };
        // Connections still queued when the node went down are not handed out.
        if let Some(e) = down() {
            return Err(e);
        }
        match self.rx.recv().await {
            Some(c) => match down() {
                Some(e) => Err(e),
                None => Ok(c),
            },
            None => Err(down().unwrap_or_else(|| Error::closed("listener closed"))),
        }
    }
}

/// Keeps one side of a connection open; held by the connection handle
/// and by every stream, so that (as with QUIC) open streams keep their
/// connection alive after the `Connection` handle is dropped.
struct ConnGuard {
    shared: Arc<Shared>,
    conn: ConnId,
    side: usize,
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        let (c, side) = (self.conn, self.side);
        self.shared.with(|st| st.handle_dropped(c, side));
    }
}

/// One side of a simulated connection.
pub(crate) struct SimConnection {
    end: Arc<ConnGuard>,
    remote: PeerId,
}

impl SimConnection {
    pub(crate) fn new(shared: Arc<Shared>, conn: ConnId, side: usize, remote: PeerId) -> Self {
        SimConnection {
            end: Arc::new(ConnGuard { shared, conn, side }),
            remote,
        }
    }

    fn streams(&self, (out, inn): (FlowId, FlowId)) -> (SendStream, RecvStream) {
        (
            Box::new(SimSend {
                flow: out,
                conn: self.end.clone(),
            }),
            Box::new(SimRecv {
                flow: inn,
                conn: self.end.clone(),
            }),
        )
    }
}

#[async_trait]
impl Connection for SimConnection {
    fn remote_id(&self) -> PeerId {
        self.remote
    }

    async fn open_bi(&self) -> Result<(SendStream, RecvStream)> {
        let flows = self
            .end
            .shared
            .with(|st| st.open_stream(self.end.conn, self.end.side))?;
        Ok(self.streams(flows))
    }

    async fn accept_bi(&self) -> Result<(SendStream, RecvStream)> {
        let flows = std::future::poll_fn(|cx| {
            self.end
                .shared
                .with(|st| st.poll_accept(self.end.conn, self.end.side, cx))
        })
        .await?;
        Ok(self.streams(flows))
    }

    fn is_connected(&self) -> bool {
        self.end
            .shared
            .with(|st| st.is_connected(self.end.conn, self.end.side))
    }

    fn path(&self) -> p2p_core::PathInfo {
        self.end
            .shared
            .with(|st| st.path(self.end.conn, self.end.side))
    }

    async fn close(&self, reason: &str) {
        self.end
            .shared
            .with(|st| st.close_end(self.end.conn, self.end.side, reason, true));
    }
}

struct SimSend {
    flow: FlowId,
    /// Keeps the connection open while the stream lives.
    conn: Arc<ConnGuard>,
}

impl AsyncWrite for SimSend {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let flow = self.flow;
        self.conn.shared.with(|st| st.poll_write(flow, cx, buf))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let flow = self.flow;
        Poll::Ready(self.conn.shared.with(|st| st.shutdown(flow)))
    }
}

impl Drop for SimSend {
    fn drop(&mut self) {
        let flow = self.flow;
        self.conn.shared.with(|st| st.writer_dropped(flow));
    }
}

struct SimRecv {
    flow: FlowId,
    /// Keeps the connection open while the stream lives.
    conn: Arc<ConnGuard>,
}

impl AsyncRead for SimRecv {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let flow = self.flow;
        self.conn.shared.with(|st| st.poll_read(flow, cx, buf))
    }
}

impl Drop for SimRecv {
    fn drop(&mut self) {
        let flow = self.flow;
        self.conn.shared.with(|st| st.reader_dropped(flow));
    }
}
