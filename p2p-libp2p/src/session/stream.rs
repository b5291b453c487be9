//! The SDK streams of a session: a libp2p stream split into a send and a
//! receive half, which keep the session open, end with it, and finish
//! their direction when a send half is dropped without `shutdown`.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use p2p_core::{RecvStream, SendStream};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf, ReadHalf, WriteHalf};
use tokio_util::sync::WaitForCancellationFutureOwned;

use super::opening::Slot;
use super::state::Guard;
use super::wire::Io;

/// The two halves of stream `io` of the session `guard` keeps open;
/// `slot` is this node's share of the peer's budget, for a stream it
/// opened.
pub(super) fn wrap(io: Io, guard: &Arc<Guard>, slot: Option<Slot>) -> (SendStream, RecvStream) {
    let (r, w) = tokio::io::split(io);
    let slot = slot.map(Arc::new);
    let life = || Life {
        guard: guard.clone(),
        ended: Box::pin(guard.session.closed.clone().cancelled_owned()),
        _slot: slot.clone(),
    };
    (
        Box::new(SdkSend {
            inner: Some(w),
            finished: false,
            life: life(),
        }),
        Box::new(SdkRecv {
            inner: r,
            life: life(),
        }),
    )
}

/// What every stream of a session holds: the session alive, and a way to
/// wake up when it ends.
struct Life {
    guard: Arc<Guard>,
    ended: Pin<Box<WaitForCancellationFutureOwned>>,
    /// This node's share of the peer's stream budget, for streams it
    /// opened; shared by both halves, returned when both are gone.
    _slot: Option<Arc<Slot>>,
}

impl Life {
    fn error(&self) -> io::Error {
        self.guard.session.closed_error().into_io()
    }

    /// Ready when the session has ended; registers `cx` otherwise.
    fn poll_ended(&mut self, cx: &mut Context<'_>) -> bool {
        self.ended.as_mut().poll(cx).is_ready()
    }

    fn is_ended(&self) -> bool {
        self.guard.session.closed.is_cancelled()
    }
}

struct SdkRecv {
    inner: ReadHalf<Io>,
    life: Life,
}

impl AsyncRead for SdkRecv {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.life.is_ended() {
            return Poll::Ready(Err(self.life.error()));
        }
        match Pin::new(&mut self.inner).poll_read(cx, buf) {
            Poll::Pending if self.life.poll_ended(cx) => Poll::Ready(Err(self.life.error())),
            other => other,
        }
    }
}

struct SdkSend {
    /// `None` only while being dropped.
    inner: Option<WriteHalf<Io>>,
    /// Shut down cleanly: nothing to do on drop.
    finished: bool,
    life: Life,
}

impl SdkSend {
    fn guarded<T>(
        &mut self,
        cx: &mut Context<'_>,
        f: impl FnOnce(Pin<&mut WriteHalf<Io>>, &mut Context<'_>) -> Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        if self.life.is_ended() {
            return Poll::Ready(Err(self.life.error()));
        }
        let Some(inner) = self.inner.as_mut() else {
            return Poll::Ready(Err(io::Error::other("stream dropped")));
        };
        match f(Pin::new(inner), cx) {
            Poll::Pending if self.life.poll_ended(cx) => Poll::Ready(Err(self.life.error())),
            other => other,
        }
    }
}

impl AsyncWrite for SdkSend {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.guarded(cx, |w, cx| w.poll_write(cx, buf))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.guarded(cx, |w, cx| w.poll_flush(cx))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let r = self.guarded(cx, |w, cx| w.poll_shutdown(cx));
        if matches!(r, Poll::Ready(Ok(()))) {
            self.finished = true;
        }
        r
    }
}

impl Drop for SdkSend {
    /// The two halves share one yamux stream, which ends only when both
    /// are gone; so a send half dropped without `shutdown` finishes its
    /// direction here, and the peer reads end of stream.
    fn drop(&mut self) {
        if self.finished || self.life.is_ended() {
            return;
        }
        let (Some(mut w), Ok(rt)) = (self.inner.take(), tokio::runtime::Handle::try_current())
        else {
            return;
        };
        let limit = self.life.guard.session.env.close_timeout;
        // Keep the connection open and the budget taken until the finish
        // is sent.
        let held = (self.life.guard.clone(), self.life._slot.take());
        rt.spawn(async move {
            let _ = tokio::time::timeout(limit, w.shutdown()).await;
            drop(held);
        });
    }
}
