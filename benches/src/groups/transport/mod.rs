//! Group `transport`: what the SDK's transports cost over the raw libraries.
//!
//! iroh, on loopback in one process:
//!
//! - `iroh_sdk_stream`: 256 MiB over one stream through `IrohProvider`
//!   (`Provider::connect`, `Connection::open_bi`, boxed tokio streams),
//!   against the same transfer through a raw iroh endpoint and stream with
//!   the same QUIC settings (the baseline). Target: ratio >= 0.9.
//! - `iroh_raw_stream`: the raw iroh transfer, against a plain tokio TCP
//!   socket copy of the same bytes (what QUIC in user space costs).
//! - `iroh_connect_p50`: median time of 100 `Provider::connect` calls (QUIC
//!   handshake plus the SDK's welcome), against raw iroh `Endpoint::connect`.
//! - `iroh_idle_conn_heap`: live heap bytes per idle connection, both ends
//!   counted (both are in this process), over 200 connections.
//!
//! Each throughput figure is the median of three runs, interleaved so that
//! background noise hits all of them alike.

//!
//! libp2p, on loopback in one process, TCP + noise + yamux on both sides:
//!
//! - `libp2p_sdk_stream`: 256 MiB over one stream through `Libp2pProvider`,
//!   against the same transfer over a raw `libp2p-stream` stream on a swarm
//!   built from the same transport (`p2p_libp2p::build_transport`) and the
//!   same swarm settings. Target: ratio >= 0.9.
//! - `libp2p_raw_stream`: the raw libp2p transfer against the TCP copy.
//! - `libp2p_connect_p50`: median time of 100 `Provider::connect` calls
//!   from a fresh node (TCP, noise, yamux, then the SDK's hand-over),
//!   against a raw swarm dial to an established connection.
//! - `libp2p_idle_conn_heap`: live heap bytes per idle connection from a
//!   distinct peer (its own libp2p connection), both ends, over 50 peers.
//! - `libp2p_idle_session_heap`: live heap bytes per further idle SDK
//!   connection between the same two peers (they share one libp2p
//!   connection), both ends, over 200 connections.

#![allow(clippy::disallowed_methods)] // benchmarks measure wall time

mod iroh_figures;
mod libp2p_figures;

use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::Figure;

const TOTAL: usize = 256 * 1024 * 1024;
const CHUNK: usize = 1024 * 1024;
const RUNS: usize = 5;
const CONNECTS: usize = 100;
const IDLE_CONNS: usize = 200;

/// Runs the group.
pub fn run() -> Vec<Figure> {
    super::block_on(async {
        let mut figures = iroh_figures::figures().await;
        figures.extend(libp2p_figures::figures().await);
        figures
    })
}

/// Medians of [`RUNS`] interleaved runs of the SDK transfer, the raw
/// library's and the TCP copy, so that background noise hits all alike.
pub(super) async fn interleaved<S, R>(sdk: impl Fn() -> S, raw: impl Fn() -> R) -> (f64, f64, f64)
where
    S: Future<Output = f64>,
    R: Future<Output = f64>,
{
    let (mut a, mut b, mut c) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..RUNS {
        a.push(sdk().await);
        b.push(raw().await);
        c.push(tcp_throughput().await);
    }
    (median(a), median(b), median(c))
}

pub(super) fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

pub(super) fn mib_per_s(bytes: usize, d: Duration) -> f64 {
    bytes as f64 / (1024.0 * 1024.0) / d.as_secs_f64().max(1e-9)
}

/// Writes [`TOTAL`] bytes and finishes the stream.
async fn send_all(mut w: impl AsyncWrite + Unpin) {
    let buf = vec![0xa5u8; CHUNK];
    let mut sent = 0;
    while sent < TOTAL {
        w.write_all(&buf).await.expect("write");
        sent += CHUNK;
    }
    w.shutdown().await.expect("finish");
}

/// Reads to end of stream; returns the byte count.
async fn recv_all(mut r: impl AsyncRead + Unpin) -> usize {
    let mut buf = vec![0u8; CHUNK];
    let mut total = 0;
    loop {
        let n = r.read(&mut buf).await.expect("read");
        if n == 0 {
            return total;
        }
        total += n;
    }
}

/// Moves [`TOTAL`] bytes from the stream `open` gives to the one `accept`
/// gives; MiB/s from the first write to the reader's end of stream.
pub(super) async fn timed_transfer<W, R>(
    open: impl Future<Output = W>,
    accept: impl Future<Output = R>,
) -> f64
where
    W: AsyncWrite + Unpin,
    R: AsyncRead + Unpin,
{
    let started = Instant::now();
    let ((), got) = tokio::join!(async { send_all(open.await).await }, async {
        recv_all(accept.await).await
    });
    let elapsed = started.elapsed();
    assert_eq!(got, TOTAL, "receiver got a different byte count");
    mib_per_s(TOTAL, elapsed)
}

pub(super) async fn tcp_throughput() -> f64 {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind tcp");
    let addr = l.local_addr().expect("addr");
    let (c, s) = tokio::join!(tokio::net::TcpStream::connect(addr), l.accept());
    let (c, (s, _)) = (c.expect("tcp connect"), s.expect("tcp accept"));
    let started = Instant::now();
    let ((), got) = tokio::join!(send_all(c), recv_all(s));
    let elapsed = started.elapsed();
    assert_eq!(got, TOTAL);
    mib_per_s(TOTAL, elapsed)
}
