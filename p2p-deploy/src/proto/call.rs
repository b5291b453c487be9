//! The client side of a request: open a stream, send hello and request,
//! read frames to the end, with deadlines and heartbeats.

use std::time::Duration;

use p2p_core::framing::Framed;
use p2p_core::{Error, PeerId, Result};

use p2p_core::framing::{Hello, Peeked, negotiate};

use super::wire::{
    ALIVE_VERSION, CHUNK_HEAD, Envelope, Frame, Incoming, MAX_FRAME, PROTOCOL, Reply, Request,
    chunk_index,
};

/// A client side of one request stream.
pub struct Call {
    framed: Framed,
    peer: PeerId,
    timeout: Duration,
    deadline: tokio::time::Instant,
    /// Fail when nothing comes for this long (a server that sends
    /// [`Frame::Alive`] only), and close `conn`.
    silence: Option<Duration>,
    conn: Option<std::sync::Arc<dyn p2p_core::Connection>>,
    /// The protocol version both sides speak.
    version: u16,
}

impl std::fmt::Debug for Call {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Call(to {})", self.peer.short())
    }
}

/// Extra time the client waits past the server's deadline for its answer.
const CLIENT_SLACK: Duration = Duration::from_secs(5);

impl Call {
    /// Opens a stream on `conn`, sends hello and `request` with `timeout`,
    /// and checks the server's hello.
    pub async fn open(
        conn: &dyn p2p_core::Connection,
        request: Request,
        timeout: Duration,
    ) -> Result<Call> {
        Call::start(conn, request, timeout, None).await
    }

    /// As [`open`](Self::open), and with `silence` set, the request fails
    /// as soon as the node sends nothing for that long: its hello, or
    /// while it works, a frame or a heartbeat ([`Frame::Alive`], every
    /// [`HEARTBEAT`](super::HEARTBEAT)). A node that was killed or cut off mid-deploy is
    /// then reported ("stopped answering") after `silence`, not after
    /// the transport's idle timeout. A node of protocol version 1 sends
    /// no heartbeats: only its hello is watched.
    ///
    /// The connection of a node that stopped answering is closed: nothing
    /// still queued on it (this request, say a rollback) may reach the
    /// node later, when the network heals, unknown to the caller.
    pub async fn open_watched(
        conn: &std::sync::Arc<dyn p2p_core::Connection>,
        request: Request,
        timeout: Duration,
        silence: Option<Duration>,
    ) -> Result<Call> {
        let watched = silence.map(|s| (s, conn.clone()));
        Call::start(&**conn, request, timeout, watched).await
    }

    async fn start(
        conn: &dyn p2p_core::Connection,
        request: Request,
        timeout: Duration,
        watched: Option<(Duration, std::sync::Arc<dyn p2p_core::Connection>)>,
    ) -> Result<Call> {
        let (silence, watched_conn) = match watched {
            Some((s, c)) => (Some(s), Some(c)),
            None => (None, None),
        };
        let peer = conn.remote_id();
        let now = tokio::time::Instant::now();
        let deadline = now + timeout + CLIENT_SLACK;
        let open_by = silence.map_or(deadline, |s| deadline.min(now + s));
        let opened = tokio::time::timeout_at(open_by, async {
            let (send, recv) = conn.open_bi().await?;
            let mut framed = Framed::with_max(send, recv, MAX_FRAME);
            framed.send(&Hello::new(&PROTOCOL)).await?;
            framed
                .send(&Envelope {
                    timeout_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
                    request,
                })
                .await?;
            let theirs: Hello =
                framed.recv().await.map_err(|e| match e {
                    Error::Protocol { .. } | Error::FrameTooLarge { .. } => Error::protocol(
                        format!("node {} does not speak {}", peer.short(), PROTOCOL.name),
                    ),
                    other => other,
                })?;
            let version = negotiate(&PROTOCOL, &theirs)?;
            Ok::<_, Error>((framed, version))
        })
        .await;
        let (framed, version) = match opened {
            Ok(r) => r?,
            Err(_) if open_by < deadline => {
                return Err(stopped_answering(&peer, silence, watched_conn.as_ref()).await);
            }
            Err(_) => {
                return Err(Error::timeout(
                    format!("opening a request to {}", peer.short()),
                    timeout,
                ));
            }
        };
        Ok(Call {
            framed,
            peer,
            timeout,
            deadline,
            silence: silence.filter(|_| version >= ALIVE_VERSION),
            conn: watched_conn,
            version,
        })
    }

    /// The protocol version both sides speak (the server's answers to
    /// newer requests depend on it).
    pub fn version(&self) -> u16 {
        self.version
    }

    /// The stream, for a session that goes on past the request.
    pub fn into_framed(self) -> Framed {
        self.framed
    }

    /// The next frame; `Frame::Error` comes back as an `Err`.
    pub async fn next(&mut self) -> Result<Frame> {
        self.next_until(Some(self.deadline)).await
    }

    /// [`next`](Self::next), with a chunk's bytes left in the buffer they
    /// arrived in instead of copied into a [`Frame::Chunk`].
    pub(crate) async fn next_incoming(&mut self) -> Result<Incoming> {
        self.incoming_until(Some(self.deadline)).await
    }

    /// [`next_incoming`](Self::next_incoming), with a say on a chunk
    /// before its bytes are read: `take(index)` is asked as soon as the
    /// chunk's header is in. `Ok(None)` when it declined: the rest is
    /// left unread, and dropping the call tells the sender to stop.
    pub(crate) async fn next_chunk_if(
        &mut self,
        take: &mut (dyn FnMut(u32) -> bool + Send),
    ) -> Result<Option<Incoming>> {
        self.incoming_checked(Some(self.deadline), Some(take)).await
    }

    /// The next frame without the request's deadline (a followed log).
    pub async fn next_unbounded(&mut self) -> Result<Frame> {
        self.next_until(None).await
    }

    /// The next frame, heartbeats ([`Frame::Alive`]) included, without
    /// the request's deadline: a follower that watches for silence
    /// itself.
    pub async fn next_or_alive(&mut self) -> Result<Frame> {
        match self
            .framed
            .recv::<Frame>()
            .await
            .map_err(|e| self.gone(e))?
        {
            Frame::Error(e) => Err(e.into_error(&self.peer, self.timeout)),
            other => Ok(other),
        }
    }

    async fn next_until(&mut self, deadline: Option<tokio::time::Instant>) -> Result<Frame> {
        self.incoming_until(deadline)
            .await
            .map(Incoming::into_frame)
    }

    async fn incoming_until(&mut self, deadline: Option<tokio::time::Instant>) -> Result<Incoming> {
        match self.incoming_checked(deadline, None).await? {
            Some(incoming) => Ok(incoming),
            None => Err(Error::protocol("a frame was declined unasked")),
        }
    }

    async fn incoming_checked<'a>(
        &mut self,
        deadline: Option<tokio::time::Instant>,
        mut take: Option<&mut (dyn FnMut(u32) -> bool + Send + 'a)>,
    ) -> Result<Option<Incoming>> {
        loop {
            let frame = match deadline {
                Some(d) => {
                    let quiet = self.silence.map(|s| tokio::time::Instant::now() + s);
                    let until = quiet.map_or(d, |q| q.min(d));
                    match tokio::time::timeout_at(
                        until,
                        recv_incoming(&mut self.framed, take.as_deref_mut()),
                    )
                    .await
                    {
                        Ok(f) => f.map_err(|e| self.gone(e))?,
                        Err(_) if until < d => {
                            return Err(stopped_answering(
                                &self.peer,
                                self.silence,
                                self.conn.as_ref(),
                            )
                            .await);
                        }
                        Err(_) => {
                            return Err(Error::timeout(
                                format!("waiting for node {} to answer", self.peer.short()),
                                self.timeout + CLIENT_SLACK,
                            ));
                        }
                    }
                }
                None => recv_incoming(&mut self.framed, take.as_deref_mut())
                    .await
                    .map_err(|e| self.gone(e))?,
            };
            match frame {
                None => return Ok(None),
                Some(Incoming::Frame(Frame::Alive)) => {}
                Some(Incoming::Frame(Frame::Error(e))) => {
                    return Err(e.into_error(&self.peer, self.timeout));
                }
                Some(other) => return Ok(Some(other)),
            }
        }
    }

    /// A stream that ended before the answer: the node went away (it
    /// stopped or crashed, or its connection broke) mid-request.
    fn gone(&self, e: Error) -> Error {
        match e {
            Error::Closed { reason } => Error::unreachable(format!(
                "node {} stopped answering: its connection ended mid-request ({reason})",
                self.peer.short()
            )),
            other => other,
        }
    }

    /// Reads to the final reply, passing every other frame to `each`.
    pub async fn finish(mut self, mut each: impl FnMut(Frame)) -> Result<Reply> {
        loop {
            match self.next().await? {
                Frame::Done(r) => return Ok(r),
                other => each(other),
            }
        }
    }
}

/// The error of a node that sent nothing for `silence`; its connection
/// `conn` is closed.
/// The next frame of `framed`, a chunk's bytes left in place; the end of
/// the stream is an error, as [`Framed::recv`] makes it.
/// With `take`: a chunk it declines at its header is `None`, its bytes
/// left unread.
async fn recv_incoming<'a>(
    framed: &mut Framed,
    take: Option<&mut (dyn FnMut(u32) -> bool + Send + 'a)>,
) -> Result<Option<Incoming>> {
    let peeked = match take {
        None => match framed.recv_raw().await? {
            Some(body) => Peeked::Body(body),
            None => Peeked::Ended,
        },
        Some(take) => {
            framed
                .recv_raw_if(CHUNK_HEAD, |head| chunk_index(head).is_none_or(&mut *take))
                .await?
        }
    };
    match peeked {
        Peeked::Body(body) => Incoming::decode(body).map(Some),
        Peeked::Declined => Ok(None),
        Peeked::Ended => Err(Error::closed(
            "peer finished the stream while we expected a Frame",
        )),
    }
}

async fn stopped_answering(
    peer: &PeerId,
    silence: Option<Duration>,
    conn: Option<&std::sync::Arc<dyn p2p_core::Connection>>,
) -> Error {
    if let Some(c) = conn {
        c.close("the node stopped answering").await;
    }
    let silence = silence.unwrap_or_default();
    Error::unreachable(format!(
        "node {} stopped answering: nothing from it for {silence:?} (killed, cut off, or its \
         host is down)",
        peer.short()
    ))
}

/// A one-shot request: open, read to the reply.
pub async fn call(
    conn: &dyn p2p_core::Connection,
    request: Request,
    timeout: Duration,
) -> Result<Reply> {
    Call::open(conn, request, timeout)
        .await?
        .finish(|_| {})
        .await
}

/// A one-shot request that fails when the node sends nothing for
/// `silence` (see [`Call::open_watched`]).
pub async fn call_watched(
    conn: &std::sync::Arc<dyn p2p_core::Connection>,
    request: Request,
    timeout: Duration,
    silence: Option<Duration>,
) -> Result<Reply> {
    Call::open_watched(conn, request, timeout, silence)
        .await?
        .finish(|_| {})
        .await
}
