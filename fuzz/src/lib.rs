//! What the fuzz targets share: a paused tokio runtime, a fake transport
//! whose streams carry the fuzzer's bytes (for the admission handshake),
//! a tar writer that writes any header at all (for unpacking), and the
//! generators of the committed seed corpora (`examples/seed_corpus.rs`).
#![allow(clippy::unwrap_used)]

use std::io::Cursor;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use async_trait::async_trait;
use futures::StreamExt;
use p2p_core::{
    Connection, Discovered, Listener, NodeKey, PeerAddr, PeerId, Provider, RecvStream, Result,
    SendStream,
};

pub mod seeds;
pub mod tarball;

/// The publisher key every fuzz target trusts; the same seed as the
/// simulator tests' publisher (`p2p-deploy/tests/common`).
pub const PUBLISHER_SEED: [u8; 32] = [9; 32];

/// A current-thread runtime with paused time: timers fire as soon as
/// every task is idle, so a handshake timeout costs no real time.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap()
}

/// A frame as `p2p_core::framing` writes it: a 4-byte big-endian length,
/// then the body.
pub fn frame(body: &[u8]) -> Vec<u8> {
    let mut out = (body.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(body);
    out
}

/// The peer id of `NodeKey::from_seed([n; 32])`.
pub fn peer(n: u8) -> PeerId {
    NodeKey::from_seed([n; 32]).peer_id()
}

/// A connection to a peer that says `script` on the first stream (in
/// whichever direction it is opened) and then nothing; whatever is sent
/// to it is discarded.
pub struct ScriptedConn {
    remote: PeerId,
    script: Arc<Vec<u8>>,
    streams: AtomicUsize,
    closed: AtomicBool,
}

impl ScriptedConn {
    /// A connection from or to `remote`.
    pub fn new(remote: PeerId, script: Arc<Vec<u8>>) -> Arc<Self> {
        Arc::new(ScriptedConn {
            remote,
            script,
            streams: AtomicUsize::new(0),
            closed: AtomicBool::new(false),
        })
    }

    fn stream(&self) -> Option<(SendStream, RecvStream)> {
        if self.streams.fetch_add(1, Ordering::SeqCst) > 0 {
            return None;
        }
        let recv = Cursor::new(self.script.as_ref().clone());
        Some((Box::new(tokio::io::sink()), Box::new(recv)))
    }
}

#[async_trait]
impl Connection for ScriptedConn {
    fn remote_id(&self) -> PeerId {
        self.remote
    }

    async fn open_bi(&self) -> Result<(SendStream, RecvStream)> {
        match self.stream() {
            Some(s) => Ok(s),
            None => std::future::pending().await,
        }
    }

    async fn accept_bi(&self) -> Result<(SendStream, RecvStream)> {
        match self.stream() {
            Some(s) => Ok(s),
            None => std::future::pending().await,
        }
    }

    fn is_connected(&self) -> bool {
        !self.closed.load(Ordering::SeqCst)
    }

    async fn close(&self, _reason: &str) {
        self.closed.store(true, Ordering::SeqCst);
    }
}

/// A provider whose one inbound connection, and every outbound one, is a
/// [`ScriptedConn`] playing `script`.
pub struct ScriptedProvider {
    local: PeerId,
    inbound_from: PeerId,
    script: Arc<Vec<u8>>,
}

impl ScriptedProvider {
    /// Node `local`; its inbound connection claims to be from
    /// `inbound_from`.
    pub fn new(local: PeerId, inbound_from: PeerId, script: Vec<u8>) -> Self {
        ScriptedProvider {
            local,
            inbound_from,
            script: Arc::new(script),
        }
    }
}

struct OneShotListener(Option<Arc<dyn Connection>>);

#[async_trait]
impl Listener for OneShotListener {
    async fn accept(&mut self) -> Result<Arc<dyn Connection>> {
        match self.0.take() {
            Some(c) => Ok(c),
            None => std::future::pending().await,
        }
    }
}

#[async_trait]
impl Provider for ScriptedProvider {
    fn backend(&self) -> &'static str {
        "scripted"
    }

    fn local_id(&self) -> PeerId {
        self.local
    }

    fn local_addr(&self) -> PeerAddr {
        PeerAddr::id_only(self.local)
    }

    async fn connect(&self, peer: &PeerAddr) -> Result<Arc<dyn Connection>> {
        Ok(ScriptedConn::new(peer.id, self.script.clone()))
    }

    async fn listen(&self) -> Result<Box<dyn Listener>> {
        let conn: Arc<dyn Connection> = ScriptedConn::new(self.inbound_from, self.script.clone());
        Ok(Box::new(OneShotListener(Some(conn))))
    }

    fn discovered(&self) -> Discovered {
        futures::stream::empty().boxed()
    }

    async fn close(&self, _reason: &str) {}
}
