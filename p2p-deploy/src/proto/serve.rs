//! The server side of a request: read hello and request within a bound,
//! answer with frames, end with one `Done` or `Error`.

use std::time::Duration;

use p2p_core::framing::Framed;
use p2p_core::{Error, PeerId, Result};

use super::error::{ErrorKind, RpcError};
use super::wire::{Envelope, Frame, PROTOCOL, Reply, SDK_VERSION, chunk_header};
use crate::package::PackageId;

/// How long a server waits for a client's hello and request.
pub(crate) const REQUEST_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// The server side of a stream: reads the client's hello and request
/// within [`REQUEST_READ_TIMEOUT`]. A request that does not decode is
/// answered with an [`ErrorKind::Invalid`] error naming the problem (a
/// client of another SDK version, most often); a stream that is not this
/// protocol at all is dropped. `None`: there is nothing to serve.
/// Returns the request and the protocol version both sides speak.
pub(crate) async fn accept_request(framed: &mut Framed, peer: &PeerId) -> Option<(Envelope, u16)> {
    let read = async {
        let version = framed.hello(&PROTOCOL).await?;
        match framed.recv::<Envelope>().await {
            Ok(env) => Ok(Ok((env, version))),
            Err(e @ (Error::Protocol { .. } | Error::FrameTooLarge { .. })) => Ok(Err(e)),
            Err(e) => Err(e),
        }
    };
    match tokio::time::timeout(REQUEST_READ_TIMEOUT, read).await {
        Ok(Ok(Ok(got))) => Some(got),
        Ok(Ok(Err(e))) => {
            tracing::debug!(peer = %peer.short(), error = %e, "malformed request");
            let answer = Frame::Error(RpcError::new(
                ErrorKind::Invalid,
                format!(
                    "malformed request ({e}); this node runs SDK {SDK_VERSION}, \
                     check that the client speaks the same protocol version"
                ),
            ));
            end_with(framed, answer).await;
            None
        }
        Ok(Err(e)) => {
            tracing::debug!(peer = %peer.short(), error = %e, "bad request stream");
            None
        }
        Err(_) => {
            tracing::debug!(peer = %peer.short(), "no request within {REQUEST_READ_TIMEOUT:?}");
            None
        }
    }
}

/// Sends the frame that ends a request and finishes the stream (a client
/// that went away is no error).
pub(crate) async fn end_with(framed: &mut Framed, end: Frame) {
    if framed.send(&end).await.is_ok() {
        let _ = framed.finish().await;
    }
}

/// Most chunks served for one fetch request.
pub const MAX_FETCH_INDEXES: usize = 256;

/// Answers [`Request::FetchChunks`]: sends each chunk `get` returns as a
/// [`Frame::Chunk`] and returns the frame that ends the request. A
/// request for too many chunks, or for one `get` does not have, ends in
/// an error; a client that goes away ends it quietly.
pub(crate) async fn send_chunks<F>(
    framed: &mut Framed,
    package: &PackageId,
    indexes: &[u32],
    mut get: impl FnMut(u32) -> F,
) -> Frame
where
    F: std::future::Future<Output = Result<Option<Vec<u8>>>>,
{
    if indexes.len() > MAX_FETCH_INDEXES {
        return Frame::Error(RpcError::new(
            ErrorKind::Invalid,
            format!(
                "{} chunks asked for in one request; at most {MAX_FETCH_INDEXES}",
                indexes.len()
            ),
        ));
    }
    for &index in indexes {
        match get(index).await {
            Ok(Some(bytes)) => {
                if send_chunk(framed, index, &bytes).await.is_err() {
                    return Frame::Done(Reply::Ok);
                }
            }
            Ok(None) => {
                return Frame::Error(RpcError::new(
                    ErrorKind::NotFound,
                    format!("chunk {index} of release {package}"),
                ));
            }
            Err(e) => return Frame::Error(RpcError::from_error(&e)),
        }
    }
    Frame::Done(Reply::Ok)
}

/// Sends chunk `index` as a [`Frame::Chunk`]: its header, then its bytes
/// as they are (not copied into an encoded frame first).
pub(crate) async fn send_chunk(framed: &mut Framed, index: u32, bytes: &[u8]) -> Result<()> {
    framed
        .send_parts(&[&chunk_header(index, bytes.len()), bytes])
        .await
}

/// Names a peer for messages.
pub(crate) fn unexpected(peer: &PeerId, what: &str, got: &Frame) -> Error {
    let shown = match got {
        Frame::Event(_) => "a deploy event",
        Frame::Log(_) => "a log line",
        Frame::Chunk { .. } => "a chunk",
        Frame::Have(_) => "a have-map",
        Frame::Got(_) => "a chunk announcement",
        Frame::Done(_) => "a reply",
        Frame::Error(_) => "an error",
        Frame::Alive => "a heartbeat",
        Frame::NodeEvent(_) => "an event",
    };
    Error::protocol(format!(
        "node {} sent {shown} where {what} was expected",
        peer.short()
    ))
}
