//! The iroh half of group `transport`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use iroh::endpoint::presets;
use iroh::{Endpoint, RelayMode, SecretKey};
use p2p_core::{NodeKey, Provider};
use p2p_iroh::{ALPN, IrohConfig, IrohProvider};

use super::{CONNECTS, IDLE_CONNS, interleaved, timed_transfer};
use crate::Figure;

/// The iroh figures; the TCP baseline is measured alongside.
pub(super) async fn figures() -> Vec<Figure> {
    let (sdk, raw, tcp) = interleaved(sdk_throughput, raw_throughput).await;
    let (sdk_connect, raw_connect) = connect_times().await;
    let idle = idle_heap_per_connection().await;
    vec![
        Figure::new("transport", "iroh_sdk_stream", sdk, "MiB/s")
            .target(">= 0.9 x raw iroh")
            .goal(crate::Goal::RatioAtLeast(0.9))
            .baseline(raw, "MiB/s raw iroh stream"),
        Figure::new("transport", "iroh_raw_stream", raw, "MiB/s")
            .baseline(tcp, "MiB/s tokio TCP copy"),
        Figure::new(
            "transport",
            "iroh_connect_p50",
            sdk_connect.as_secs_f64() * 1e3,
            "ms",
        )
        .baseline(raw_connect.as_secs_f64() * 1e3, "ms raw iroh connect"),
        Figure::new(
            "transport",
            "iroh_idle_conn_heap",
            idle / 1024.0,
            "KiB per connection (both ends)",
        ),
    ]
}

fn key(n: u8) -> NodeKey {
    NodeKey::from_seed([n; 32])
}

async fn sdk_pair() -> (IrohProvider, IrohProvider) {
    let a = IrohProvider::bind(&key(1), IrohConfig::loopback())
        .await
        .expect("bind");
    let b = IrohProvider::bind(&key(2), IrohConfig::loopback())
        .await
        .expect("bind");
    (a, b)
}

async fn sdk_throughput() -> f64 {
    let (a, b) = sdk_pair().await;
    let mut l = b.listen().await.expect("listen");
    let addr = b.local_addr();
    let (ab, ba) = tokio::join!(a.connect(&addr), l.accept());
    let (ab, ba) = (ab.expect("connect"), ba.expect("accept"));
    let speed = timed_transfer(async { ab.open_bi().await.expect("open_bi").0 }, async {
        ba.accept_bi().await.expect("accept_bi").1
    })
    .await;
    a.close("bench done").await;
    b.close("bench done").await;
    speed
}

/// A raw iroh endpoint on loopback with the QUIC settings `IrohProvider`
/// uses by default.
async fn raw_endpoint(n: u8) -> Endpoint {
    let transport = IrohConfig::loopback()
        .quic_transport_config()
        .expect("default QUIC settings");
    Endpoint::builder(presets::Minimal)
        .relay_mode(RelayMode::Disabled)
        .clear_ip_transports()
        .bind_addr(SocketAddr::from(([127, 0, 0, 1], 0)))
        .expect("bind addr")
        .secret_key(SecretKey::from_bytes(&[n; 32]))
        .alpns(vec![ALPN.to_vec()])
        .transport_config(transport)
        .bind()
        .await
        .expect("bind raw endpoint")
}

fn raw_addr(ep: &Endpoint) -> iroh::EndpointAddr {
    iroh::EndpointAddr::new(ep.id()).with_ip_addr(ep.bound_sockets()[0])
}

async fn raw_connect(
    a: &Endpoint,
    b: &Endpoint,
) -> (iroh::endpoint::Connection, iroh::endpoint::Connection) {
    let addr = raw_addr(b);
    let (c, d) = tokio::join!(a.connect(addr, ALPN), async {
        b.accept()
            .await
            .expect("incoming")
            .accept()
            .expect("accepting")
            .await
    });
    (c.expect("raw connect"), d.expect("raw accept"))
}

async fn raw_throughput() -> f64 {
    let (a, b) = (raw_endpoint(3).await, raw_endpoint(4).await);
    let (ab, ba) = raw_connect(&a, &b).await;
    let speed = timed_transfer(async { ab.open_bi().await.expect("open_bi").0 }, async {
        ba.accept_bi().await.expect("accept_bi").1
    })
    .await;
    ab.close(0u32.into(), b"done");
    a.close().await;
    b.close().await;
    speed
}

/// Median connect time through the SDK and through raw iroh.
async fn connect_times() -> (Duration, Duration) {
    let (a, b) = sdk_pair().await;
    let mut l = b.listen().await.expect("listen");
    let addr = b.local_addr();
    let mut sdk = Vec::with_capacity(CONNECTS);
    for _ in 0..CONNECTS {
        let started = Instant::now();
        let (c, d) = tokio::join!(a.connect(&addr), l.accept());
        sdk.push(started.elapsed());
        let c = c.expect("connect");
        drop(d.expect("accept"));
        c.close("next").await;
    }
    a.close("bench done").await;
    b.close("bench done").await;

    let (a, b) = (raw_endpoint(5).await, raw_endpoint(6).await);
    let mut raw = Vec::with_capacity(CONNECTS);
    for _ in 0..CONNECTS {
        let started = Instant::now();
        let (c, _d) = raw_connect(&a, &b).await;
        raw.push(started.elapsed());
        c.close(0u32.into(), b"next");
    }
    a.close().await;
    b.close().await;
    sdk.sort();
    raw.sort();
    (sdk[CONNECTS / 2], raw[CONNECTS / 2])
}

/// Heap bytes per idle SDK connection.
async fn idle_heap_per_connection() -> f64 {
    let (a, b) = sdk_pair().await;
    let a = Arc::new(a);
    let mut l = b.listen().await.expect("listen");
    let addr = b.local_addr();
    // One connection first, so that per-endpoint state is already there.
    let (c, d) = tokio::join!(a.connect(&addr), l.accept());
    let mut keep = vec![(c.expect("connect"), d.expect("accept"))];
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before = crate::alloc::live_bytes();
    for _ in 0..IDLE_CONNS {
        let (c, d) = tokio::join!(a.connect(&addr), l.accept());
        keep.push((c.expect("connect"), d.expect("accept")));
    }
    // Let handshakes settle and buffers drain.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = crate::alloc::live_bytes();
    let per = after.saturating_sub(before) as f64 / IDLE_CONNS as f64;
    drop(keep);
    a.close("bench done").await;
    b.close("bench done").await;
    per
}
