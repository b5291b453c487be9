//! Wire framing: a big-endian `u32` length, then that many bytes of
//! postcard. The length is checked against a maximum *before* any buffer is
//! allocated, so a peer that announces 4 GiB costs us nothing.
//!
//! Every protocol stream starts with a [`Hello`] from both sides, naming the
//! protocol and the range of versions each side speaks; [`Framed::hello`]
//! exchanges them and picks the highest common version, or fails with
//! [`Error::VersionMismatch`] naming both ranges.
//!
//! ```
//! # use p2p_core::framing::{Framed, ProtocolId};
//! # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
//! const PING: ProtocolId = ProtocolId { name: "example/ping", min: 1, max: 2 };
//! let (a, b) = tokio::io::duplex(1024);
//! let (ar, aw) = tokio::io::split(a);
//! let (br, bw) = tokio::io::split(b);
//! let mut left = Framed::new(Box::new(aw), Box::new(ar));
//! let mut right = Framed::new(Box::new(bw), Box::new(br));
//! let (l, r) = tokio::join!(left.hello(&PING), right.hello(&PING));
//! assert_eq!((l?, r?), (2, 2));
//! left.send(&"ping".to_string()).await?;
//! assert_eq!(right.recv::<String>().await?, "ping");
//! # Ok::<(), p2p_core::Error>(())
//! # }).unwrap();
//! ```

use serde::{Deserialize, Serialize, de::DeserializeOwned};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::error::{Error, Result};
use crate::transport::{RecvStream, SendStream};

/// Default maximum frame size: 4 MiB, enough for a chunk plus its header.
pub const DEFAULT_MAX_FRAME: u32 = 4 * 1024 * 1024;

/// Maximum size of a hello frame; a hello is a few dozen bytes.
const MAX_HELLO_FRAME: u32 = 1024;

/// Magic bytes at the start of every hello, so that a peer speaking
/// something else entirely is told so instead of "malformed frame".
pub const HELLO_MAGIC: [u8; 4] = *b"P2PS";

/// Writes one frame holding `msg`.
pub async fn write_frame<W, T>(w: &mut W, msg: &T, max: u32) -> Result<()>
where
    W: AsyncWrite + Unpin + ?Sized,
    T: Serialize + ?Sized,
{
    let body =
        postcard::to_stdvec(msg).map_err(|e| Error::protocol(format!("encoding frame: {e}")))?;
    write_frame_bytes(w, &body, max).await
}

/// Writes one frame holding `body` as is.
pub async fn write_frame_bytes<W>(w: &mut W, body: &[u8], max: u32) -> Result<()>
where
    W: AsyncWrite + Unpin + ?Sized,
{
    write_frame_parts(w, &[body], max).await
}

/// Writes one frame whose body is `parts` one after another, without
/// joining them first: a header encoded apart from a large payload (a
/// chunk) goes out without the payload being copied into a message.
pub async fn write_frame_parts<W>(w: &mut W, parts: &[&[u8]], max: u32) -> Result<()>
where
    W: AsyncWrite + Unpin + ?Sized,
{
    let total: u64 = parts.iter().map(|p| p.len() as u64).sum();
    if total > u64::from(max) {
        return Err(Error::FrameTooLarge { len: total, max });
    }
    let len = (total as u32).to_be_bytes();
    w.write_all(&len)
        .await
        .map_err(|e| Error::from_stream_io("writing frame", e))?;
    for part in parts {
        w.write_all(part)
            .await
            .map_err(|e| Error::from_stream_io("writing frame", e))?;
    }
    Ok(())
}

/// Reads one frame's bytes into `buf` (reusing its allocation). Returns
/// `Ok(false)` on a clean end of stream before a frame starts, and an error
/// when the stream ends inside a frame or the length exceeds `max`.
pub async fn read_frame_bytes<R>(r: &mut R, buf: &mut Vec<u8>, max: u32) -> Result<bool>
where
    R: AsyncRead + Unpin + ?Sized,
{
    Ok(read_frame_bytes_if(r, buf, max, 0, |_| true)
        .await?
        .is_some())
}

/// [`read_frame_bytes`], with a look at the frame before the rest of it
/// is read: once its first `head` bytes (all of it, when it is shorter)
/// are in `buf`, `go_on` says whether to read the rest. `Ok(None)`: the
/// stream ended cleanly before a frame; `Ok(Some(true))`: the whole body
/// is in `buf`; `Ok(Some(false))`: `go_on` declined it and the rest is
/// left unread, so the stream is of no more use (dropping it tells the
/// sender to stop).
pub async fn read_frame_bytes_if<R>(
    r: &mut R,
    buf: &mut Vec<u8>,
    max: u32,
    head: usize,
    go_on: impl FnOnce(&[u8]) -> bool,
) -> Result<Option<bool>>
where
    R: AsyncRead + Unpin + ?Sized,
{
    let mut len = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        let n = r
            .read(&mut len[got..])
            .await
            .map_err(|e| Error::from_stream_io("reading frame length", e))?;
        if n == 0 {
            if got == 0 {
                return Ok(None);
            }
            return Err(Error::protocol(format!(
                "stream ended inside a frame header ({got} of 4 bytes)"
            )));
        }
        got += n;
    }
    let len = u32::from_be_bytes(len);
    if len > max {
        return Err(Error::FrameTooLarge {
            len: u64::from(len),
            max,
        });
    }
    // Read into the buffer's spare capacity, which is not zeroed first (a
    // chunk frame is a quarter of a MiB).
    buf.clear();
    buf.reserve(len as usize);
    let first = head.min(len as usize) as u64;
    read_more(r, buf, first, len).await?;
    if !go_on(buf) {
        return Ok(Some(false));
    }
    read_more(r, buf, u64::from(len) - first, len).await?;
    Ok(Some(true))
}

/// Appends the next `n` bytes of `r` to `buf`, of a frame of `len`.
async fn read_more<R>(r: &mut R, buf: &mut Vec<u8>, n: u64, len: u32) -> Result<()>
where
    R: AsyncRead + Unpin + ?Sized,
{
    if n == 0 {
        return Ok(());
    }
    let got = (&mut *r)
        .take(n)
        .read_to_end(buf)
        .await
        .map_err(|e| Error::from_stream_io("reading frame", e))?;
    if (got as u64) < n {
        return Err(Error::protocol(format!(
            "stream ended inside a frame of {len} bytes"
        )));
    }
    Ok(())
}

/// Decodes a frame body, naming the expected type in the error.
pub fn decode<T: DeserializeOwned>(body: &[u8]) -> Result<T> {
    postcard::from_bytes(body).map_err(|e| {
        Error::protocol(format!(
            "malformed {} frame ({} bytes): {e}",
            short_type_name::<T>(),
            body.len()
        ))
    })
}

fn short_type_name<T>() -> &'static str {
    let full = std::any::type_name::<T>();
    full.rsplit("::").next().unwrap_or(full)
}

/// A protocol's name and the versions this side speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProtocolId {
    /// Protocol name, e.g. `p2p/deploy`.
    pub name: &'static str,
    /// Oldest version this side still accepts.
    pub min: u16,
    /// Newest version this side speaks.
    pub max: u16,
}

/// The first frame each side sends on a protocol stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// Always `P2PS`.
    pub magic: [u8; 4],
    /// Protocol name.
    pub protocol: String,
    /// Oldest version accepted.
    pub min: u16,
    /// Newest version spoken.
    pub max: u16,
}

impl Hello {
    /// The hello this side sends for `ours`.
    pub fn new(ours: &ProtocolId) -> Self {
        Hello {
            magic: HELLO_MAGIC,
            protocol: ours.name.to_string(),
            min: ours.min,
            max: ours.max,
        }
    }
}

/// A frame received by [`Framed::recv_raw_if`].
#[derive(Debug)]
pub enum Peeked {
    /// Its whole body, undecoded.
    Body(Vec<u8>),
    /// Declined after its first bytes; the rest is unread, and the stream
    /// is of no more use.
    Declined,
    /// The peer finished the stream before a frame began.
    Ended,
}

/// A framed bidirectional stream: typed send and receive with a size limit.
pub struct Framed {
    send: SendStream,
    recv: RecvStream,
    max: u32,
    buf: Vec<u8>,
}

impl std::fmt::Debug for Framed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Framed")
            .field("max", &self.max)
            .finish_non_exhaustive()
    }
}

impl Framed {
    /// Wraps a stream with the [`DEFAULT_MAX_FRAME`] limit.
    pub fn new(send: SendStream, recv: RecvStream) -> Self {
        Self::with_max(send, recv, DEFAULT_MAX_FRAME)
    }

    /// Wraps a stream with a custom frame size limit.
    pub fn with_max(send: SendStream, recv: RecvStream, max: u32) -> Self {
        Framed {
            send,
            recv,
            max,
            buf: Vec::new(),
        }
    }

    /// The frame size limit.
    pub fn max_frame(&self) -> u32 {
        self.max
    }

    /// The two halves, to read and write from separate tasks (with
    /// [`read_frame_bytes`] and [`write_frame`]). Nothing is buffered past
    /// the last frame received, so no bytes are lost.
    pub fn into_parts(self) -> (SendStream, RecvStream) {
        (self.send, self.recv)
    }

    /// Sends one message.
    pub async fn send<T: Serialize + ?Sized>(&mut self, msg: &T) -> Result<()> {
        write_frame(&mut self.send, msg, self.max).await?;
        self.send
            .flush()
            .await
            .map_err(|e| Error::from_stream_io("flushing frame", e))
    }

    /// Sends one frame whose body is `parts` one after another (see
    /// [`write_frame_parts`]).
    pub async fn send_parts(&mut self, parts: &[&[u8]]) -> Result<()> {
        write_frame_parts(&mut self.send, parts, self.max).await?;
        self.send
            .flush()
            .await
            .map_err(|e| Error::from_stream_io("flushing frame", e))
    }

    /// Receives one frame's body undecoded, in a buffer of its own that
    /// the caller keeps (nothing is copied out of it), or `None` when the
    /// peer finished the stream. Decode it with [`decode`].
    pub async fn recv_raw(&mut self) -> Result<Option<Vec<u8>>> {
        let mut body = Vec::new();
        if !read_frame_bytes(&mut self.recv, &mut body, self.max).await? {
            return Ok(None);
        }
        Ok(Some(body))
    }

    /// [`recv_raw`](Self::recv_raw), with a look at the frame before the
    /// rest of it is read (see [`read_frame_bytes_if`]): once `head`
    /// bytes are in, `go_on` says whether to read on.
    pub async fn recv_raw_if(
        &mut self,
        head: usize,
        go_on: impl FnOnce(&[u8]) -> bool,
    ) -> Result<Peeked> {
        let mut body = Vec::new();
        Ok(
            match read_frame_bytes_if(&mut self.recv, &mut body, self.max, head, go_on).await? {
                None => Peeked::Ended,
                Some(false) => Peeked::Declined,
                Some(true) => Peeked::Body(body),
            },
        )
    }

    /// Receives one message; end of stream is an error.
    pub async fn recv<T: DeserializeOwned>(&mut self) -> Result<T> {
        match self.recv_opt().await? {
            Some(m) => Ok(m),
            None => Err(Error::closed(format!(
                "peer finished the stream while we expected a {}",
                short_type_name::<T>()
            ))),
        }
    }

    /// Receives one message, or `None` when the peer finished the stream.
    pub async fn recv_opt<T: DeserializeOwned>(&mut self) -> Result<Option<T>> {
        if !read_frame_bytes(&mut self.recv, &mut self.buf, self.max).await? {
            return Ok(None);
        }
        decode(&self.buf).map(Some)
    }

    /// Finishes the sending half; the peer's next receive sees end of stream.
    pub async fn finish(&mut self) -> Result<()> {
        self.send
            .shutdown()
            .await
            .map_err(|e| Error::from_stream_io("finishing stream", e))
    }

    /// Exchanges hellos and returns the highest version both sides speak.
    ///
    /// Both sides send first and then read, so either side may call this
    /// first. Fails with [`Error::Protocol`] when the peer speaks another
    /// protocol (or not this framing at all) and with
    /// [`Error::VersionMismatch`] when the version ranges do not overlap.
    pub async fn hello(&mut self, ours: &ProtocolId) -> Result<u16> {
        let hello = Hello::new(ours);
        write_frame(&mut self.send, &hello, MAX_HELLO_FRAME).await?;
        self.send
            .flush()
            .await
            .map_err(|e| Error::from_stream_io("sending hello", e))?;
        let got = read_frame_bytes(&mut self.recv, &mut self.buf, MAX_HELLO_FRAME)
            .await
            .map_err(|e| match e {
                Error::FrameTooLarge { len, .. } => Error::protocol(format!(
                    "expected a {} hello, got a {len}-byte frame: the peer does not speak this protocol",
                    ours.name
                )),
                other => other,
            })?;
        if !got {
            return Err(Error::closed(format!(
                "peer finished the stream before its {} hello",
                ours.name
            )));
        }
        let theirs: Hello = decode(&self.buf).map_err(|_| {
            Error::protocol(format!(
                "expected a {} hello: the peer does not speak this protocol",
                ours.name
            ))
        })?;
        negotiate(ours, &theirs)
    }
}

/// Picks the highest version in both ranges of a hello exchange.
pub fn negotiate(ours: &ProtocolId, theirs: &Hello) -> Result<u16> {
    if theirs.magic != HELLO_MAGIC {
        return Err(Error::protocol(format!(
            "expected a {} hello: bad magic {:?}",
            ours.name, theirs.magic
        )));
    }
    if theirs.protocol != ours.name {
        return Err(Error::protocol(format!(
            "peer speaks protocol {:?}, expected {:?}",
            theirs.protocol, ours.name
        )));
    }
    let top = ours.max.min(theirs.max);
    if theirs.min > theirs.max || top < ours.min.max(theirs.min) {
        return Err(Error::VersionMismatch {
            protocol: ours.name.to_string(),
            ours_min: ours.min,
            ours_max: ours.max,
            theirs_min: theirs.min,
            theirs_max: theirs.max,
        });
    }
    Ok(top)
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: ProtocolId = ProtocolId {
        name: "test/p",
        min: 2,
        max: 3,
    };

    fn pair() -> (Framed, Framed) {
        let (a, b) = tokio::io::duplex(64 * 1024);
        let (ar, aw) = tokio::io::split(a);
        let (br, bw) = tokio::io::split(b);
        (
            Framed::new(Box::new(aw), Box::new(ar)),
            Framed::new(Box::new(bw), Box::new(br)),
        )
    }

    #[tokio::test]
    async fn oversized_frame_is_refused_before_allocating() {
        let (a, mut b) = tokio::io::duplex(64);
        // Announce 4 GiB - 1 and send nothing else: the reader must refuse on
        // the header alone (allocating would abort the test process).
        tokio::io::AsyncWriteExt::write_all(&mut b, &u32::MAX.to_be_bytes())
            .await
            .unwrap();
        let mut a = a;
        let mut buf = Vec::new();
        let err = read_frame_bytes(&mut a, &mut buf, 1024).await.unwrap_err();
        assert!(
            matches!(err, Error::FrameTooLarge { len, max: 1024 } if len == u64::from(u32::MAX))
        );
        assert_eq!(buf.capacity(), 0);
    }

    #[tokio::test]
    async fn writer_refuses_frames_over_the_limit() {
        let (mut a, _b) = tokio::io::duplex(64);
        let err = write_frame_bytes(&mut a, &[0u8; 100], 10)
            .await
            .unwrap_err();
        assert!(matches!(err, Error::FrameTooLarge { len: 100, max: 10 }));
    }

    #[tokio::test]
    async fn truncated_frame_is_a_protocol_error() {
        let (mut a, mut b) = tokio::io::duplex(64);
        tokio::io::AsyncWriteExt::write_all(&mut b, &[0, 0, 0, 10, 1, 2])
            .await
            .unwrap();
        drop(b);
        let err = read_frame_bytes(&mut a, &mut Vec::new(), 1024)
            .await
            .unwrap_err();
        assert!(
            err.to_string().contains("ended inside a frame of 10 bytes"),
            "{err}"
        );
    }

    /// A frame sent in parts is one frame: read whole by `recv`, or raw
    /// by `recv_raw`, with the limit applied to the sum of the parts.
    #[tokio::test]
    async fn a_frame_sent_in_parts_arrives_as_one() {
        let (mut a, mut b) = pair();
        let whole = postcard::to_stdvec(&(7u32, String::from("seven"))).unwrap();
        let (head, tail) = whole.split_at(3);
        a.send_parts(&[head, tail]).await.unwrap();
        a.send_parts(&[&whole, b"", b"xy"]).await.unwrap();
        assert_eq!(
            b.recv::<(u32, String)>().await.unwrap(),
            (7, "seven".into())
        );
        let raw = b.recv_raw().await.unwrap().unwrap();
        assert_eq!(raw, [&whole[..], b"xy"].concat());
        a.finish().await.unwrap();
        assert_eq!(b.recv_raw().await.unwrap(), None);
        let (mut w, _r) = tokio::io::duplex(64);
        let err = write_frame_parts(&mut w, &[&[0; 6], &[0; 6]], 10)
            .await
            .unwrap_err();
        assert!(matches!(err, Error::FrameTooLarge { len: 12, max: 10 }));
    }

    #[tokio::test]
    async fn a_frame_is_looked_at_before_the_rest_of_it_is_read() {
        let (mut a, mut b) = pair();
        let big = vec![7u8; 1000];
        a.send_parts(&[b"keep", &big]).await.unwrap();
        a.send_parts(&[b"drop", &big]).await.unwrap();
        // Looked at after its first 4 bytes, then read whole.
        let mut seen = Vec::new();
        let got = b
            .recv_raw_if(4, |h| {
                seen = h.to_vec();
                true
            })
            .await
            .unwrap();
        assert_eq!(seen, b"keep");
        assert!(matches!(got, Peeked::Body(body) if body == [&b"keep"[..], &big].concat()));
        // Declined after 4 bytes: the rest stays unread.
        let got = b.recv_raw_if(4, |h| h != b"drop").await.unwrap();
        assert!(matches!(got, Peeked::Declined));
        // A frame shorter than the look: shown whole.
        let (mut c, mut d) = pair();
        c.send_parts(&[b"ab"]).await.unwrap();
        let got = d
            .recv_raw_if(16, |h| {
                assert_eq!(h, b"ab");
                true
            })
            .await
            .unwrap();
        assert!(matches!(got, Peeked::Body(body) if body == b"ab"));
        c.finish().await.unwrap();
        assert!(matches!(
            d.recv_raw_if(16, |_| true).await.unwrap(),
            Peeked::Ended
        ));
    }

    #[tokio::test]
    async fn garbage_body_is_a_protocol_error_naming_the_type() {
        let err = decode::<Hello>(&[0xff; 3]).unwrap_err().to_string();
        assert!(err.contains("malformed Hello frame"), "{err}");
    }

    #[tokio::test]
    async fn hello_picks_highest_common_version() {
        let (mut a, mut b) = pair();
        let newer = ProtocolId { max: 5, ..P };
        let (x, y) = tokio::join!(a.hello(&P), b.hello(&newer));
        assert_eq!((x.unwrap(), y.unwrap()), (3, 3));
    }

    #[tokio::test]
    async fn disjoint_versions_fail_on_both_sides_with_both_ranges() {
        let (mut a, mut b) = pair();
        let old = ProtocolId {
            min: 1,
            max: 1,
            ..P
        };
        let (x, y) = tokio::join!(a.hello(&P), b.hello(&old));
        for e in [x.unwrap_err(), y.unwrap_err()] {
            let text = e.to_string();
            assert!(matches!(e, Error::VersionMismatch { .. }), "{text}");
            assert!(text.contains("2..=3") && text.contains("1..=1"), "{text}");
        }
    }

    #[tokio::test]
    async fn other_protocol_is_named_in_the_error() {
        let (mut a, mut b) = pair();
        let other = ProtocolId {
            name: "test/q",
            ..P
        };
        let (x, _) = tokio::join!(a.hello(&P), b.hello(&other));
        let text = x.unwrap_err().to_string();
        assert!(text.contains("test/q") && text.contains("test/p"), "{text}");
    }

    #[tokio::test]
    async fn non_hello_bytes_are_refused_without_allocating_their_length() {
        let (mut a, b) = pair();
        let Framed { send: mut raw, .. } = b;
        let (x, _) = tokio::join!(a.hello(&P), async {
            raw.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        });
        let text = x.unwrap_err().to_string();
        assert!(text.contains("does not speak this protocol"), "{text}");
    }

    #[tokio::test]
    async fn messages_round_trip_and_end_of_stream_is_none() {
        let (mut a, mut b) = pair();
        a.send(&(1u32, "x".to_string())).await.unwrap();
        a.finish().await.unwrap();
        assert_eq!(b.recv::<(u32, String)>().await.unwrap(), (1, "x".into()));
        assert!(b.recv_opt::<u32>().await.unwrap().is_none());
        assert!(matches!(b.recv::<u32>().await, Err(Error::Closed { .. })));
    }
}
