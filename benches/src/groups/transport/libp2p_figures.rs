//! The libp2p half of group `transport`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{AsyncReadExt as _, AsyncWriteExt as _, StreamExt};
use libp2p::swarm::{Swarm, SwarmEvent};
use libp2p::{Multiaddr, StreamProtocol};
use p2p_core::{NodeKey, Provider};
use p2p_libp2p::{Libp2pConfig, Libp2pProvider};

use super::timed_transfer;
use super::{CHUNK, CONNECTS, IDLE_CONNS, TOTAL, interleaved, mib_per_s};
use crate::Figure;

/// Distinct peers for the per-connection heap figure.
const IDLE_PEERS: usize = 50;

const RAW_PROTOCOL: StreamProtocol = StreamProtocol::new("/bench/raw/1");

/// TCP only on both sides, so the SDK and the raw baseline use one stack.
fn config() -> Libp2pConfig {
    Libp2pConfig::loopback().quic(false)
}

/// The libp2p figures; the TCP baseline is measured alongside.
pub(super) async fn figures() -> Vec<Figure> {
    let (sdk, raw, tcp) = interleaved(sdk_throughput, raw_throughput).await;
    let (sdk_connect, raw_connect) = connect_times().await;
    let conn_heap = idle_heap_per_peer().await;
    let session_heap = idle_heap_per_session().await;
    vec![
        Figure::new("transport", "libp2p_sdk_stream", sdk, "MiB/s")
            .target(">= 0.9 x raw libp2p")
            .goal(crate::Goal::RatioAtLeast(0.9))
            .baseline(raw, "MiB/s raw libp2p-stream stream"),
        Figure::new("transport", "libp2p_raw_stream", raw, "MiB/s")
            .baseline(tcp, "MiB/s tokio TCP copy"),
        Figure::new(
            "transport",
            "libp2p_connect_p50",
            sdk_connect.as_secs_f64() * 1e3,
            "ms",
        )
        .baseline(raw_connect.as_secs_f64() * 1e3, "ms raw libp2p dial"),
        Figure::new(
            "transport",
            "libp2p_idle_conn_heap",
            conn_heap / 1024.0,
            "KiB per connection (both ends)",
        ),
        Figure::new(
            "transport",
            "libp2p_idle_session_heap",
            session_heap / 1024.0,
            "KiB per further connection to the same peer (both ends)",
        ),
    ]
}

fn key(n: u8) -> NodeKey {
    NodeKey::from_seed([n; 32])
}

async fn bind(n: u8) -> Libp2pProvider {
    Libp2pProvider::bind(&key(n), config())
        .await
        .expect("bind libp2p provider")
}

async fn sdk_throughput() -> f64 {
    let (a, b) = (bind(1).await, bind(2).await);
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

/// A raw swarm: the provider's transport and swarm settings, with only
/// `libp2p-stream` on top. Driven by its own task until `stop` fires.
struct RawNode {
    peer: libp2p::PeerId,
    addr: Multiaddr,
    control: libp2p_stream::Control,
    dialer: tokio::sync::mpsc::Sender<(
        libp2p::PeerId,
        Multiaddr,
        tokio::sync::oneshot::Sender<Duration>,
    )>,
    stop: tokio::sync::oneshot::Sender<()>,
}

async fn raw_node(n: u8) -> RawNode {
    let keypair = p2p_libp2p::addr::keypair(&key(n));
    let peer = keypair.public().to_peer_id();
    let cfg = config();
    let transport = p2p_libp2p::build_transport(&keypair, &cfg, None).expect("transport");
    let behaviour = libp2p_stream::Behaviour::new();
    let control = behaviour.new_control();
    let swarm_config = libp2p::swarm::Config::with_tokio_executor()
        .with_idle_connection_timeout(cfg.idle_timeout)
        .with_substream_upgrade_protocol_override(libp2p::core::upgrade::Version::V1Lazy);
    let mut swarm = Swarm::new(transport, behaviour, peer, swarm_config);
    swarm
        .listen_on("/ip4/127.0.0.1/tcp/0".parse().expect("multiaddr"))
        .expect("listen");
    let addr = loop {
        if let SwarmEvent::NewListenAddr { address, .. } = swarm.select_next_some().await {
            break address;
        }
    };
    let (dialer, mut dials) = tokio::sync::mpsc::channel::<(
        libp2p::PeerId,
        Multiaddr,
        tokio::sync::oneshot::Sender<Duration>,
    )>(4);
    let (stop, mut stopped) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let mut waiting: Option<(
            libp2p::PeerId,
            Instant,
            tokio::sync::oneshot::Sender<Duration>,
        )> = None;
        loop {
            tokio::select! {
                _ = &mut stopped => return,
                Some((p, a, reply)) = dials.recv() => {
                    let started = Instant::now();
                    swarm.dial(a).expect("dial");
                    waiting = Some((p, started, reply));
                }
                ev = swarm.select_next_some() => {
                    if let SwarmEvent::ConnectionEstablished { peer_id, .. } = ev
                        && waiting.as_ref().is_some_and(|(p, _, _)| *p == peer_id)
                        && let Some((_, started, reply)) = waiting.take()
                    {
                        let _ = reply.send(started.elapsed());
                    }
                }
            }
        }
    });
    RawNode {
        peer,
        addr,
        control,
        dialer,
        stop,
    }
}

impl RawNode {
    /// Dials `other` and returns how long until the connection was up.
    async fn dial(&self, other: &RawNode) -> Duration {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let addr = other
            .addr
            .clone()
            .with(libp2p::multiaddr::Protocol::P2p(other.peer));
        self.dialer
            .send((other.peer, addr, tx))
            .await
            .expect("swarm task");
        rx.await.expect("connection established")
    }
}

async fn raw_throughput() -> f64 {
    let (a, mut b) = (raw_node(3).await, raw_node(4).await);
    let mut incoming = b.control.accept(RAW_PROTOCOL).expect("accept protocol");
    a.dial(&b).await;
    let mut control = a.control.clone();
    let started = Instant::now();
    let send = async {
        let mut s = control
            .open_stream(b.peer, RAW_PROTOCOL)
            .await
            .expect("open raw stream");
        let buf = vec![0xa5u8; CHUNK];
        let mut sent = 0;
        while sent < TOTAL {
            s.write_all(&buf).await.expect("write");
            sent += CHUNK;
        }
        s.close().await.expect("finish");
    };
    let recv = async {
        let (_, mut s) = incoming.next().await.expect("inbound stream");
        let mut buf = vec![0u8; CHUNK];
        let mut total = 0;
        loop {
            let n = s.read(&mut buf).await.expect("read");
            if n == 0 {
                return total;
            }
            total += n;
        }
    };
    let ((), got) = tokio::join!(send, recv);
    let elapsed = started.elapsed();
    assert_eq!(got, TOTAL, "receiver got a different byte count");
    let _ = a.stop.send(());
    let _ = b.stop.send(());
    mib_per_s(TOTAL, elapsed)
}

/// Median time of `connect` from a fresh node (full TCP, noise and yamux
/// set-up plus the hand-over), and of a raw dial from a fresh swarm.
async fn connect_times() -> (Duration, Duration) {
    let b = bind(2).await;
    let mut l = b.listen().await.expect("listen");
    let addr = b.local_addr();
    let mut sdk = Vec::with_capacity(CONNECTS);
    for i in 0..CONNECTS {
        let a = bind(100 + i as u8).await;
        let started = Instant::now();
        let (c, d) = tokio::join!(a.connect(&addr), l.accept());
        sdk.push(started.elapsed());
        drop((c.expect("connect"), d.expect("accept")));
        a.close("next").await;
    }
    b.close("bench done").await;

    let target = raw_node(5).await;
    let mut raw = Vec::with_capacity(CONNECTS);
    for i in 0..CONNECTS {
        let a = raw_node(100 + i as u8).await;
        raw.push(a.dial(&target).await);
        let _ = a.stop.send(());
    }
    let _ = target.stop.send(());
    sdk.sort();
    raw.sort();
    (sdk[CONNECTS / 2], raw[CONNECTS / 2])
}

/// Heap per idle connection from a distinct peer: its own libp2p
/// connection plus the SDK session, both ends. The dialers are bound
/// before the measurement starts, so their swarms are not counted.
async fn idle_heap_per_peer() -> f64 {
    let b = bind(2).await;
    let mut l = b.listen().await.expect("listen");
    let addr = b.local_addr();
    let mut dialers = Vec::with_capacity(IDLE_PEERS);
    for i in 0..IDLE_PEERS {
        dialers.push(bind(10 + i as u8).await);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before = crate::alloc::live_bytes();
    let mut keep = Vec::with_capacity(IDLE_PEERS);
    for a in &dialers {
        let (c, d) = tokio::join!(a.connect(&addr), l.accept());
        keep.push((c.expect("connect"), d.expect("accept")));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = crate::alloc::live_bytes();
    drop(keep);
    for a in dialers {
        a.close("bench done").await;
    }
    b.close("bench done").await;
    after.saturating_sub(before) as f64 / IDLE_PEERS as f64
}

/// Heap per further idle SDK connection between the same two peers.
async fn idle_heap_per_session() -> f64 {
    let (a, b) = (Arc::new(bind(1).await), bind(2).await);
    let mut l = b.listen().await.expect("listen");
    let addr = b.local_addr();
    let (c, d) = tokio::join!(a.connect(&addr), l.accept());
    let mut keep = vec![(c.expect("connect"), d.expect("accept"))];
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before = crate::alloc::live_bytes();
    for _ in 0..IDLE_CONNS {
        let (c, d) = tokio::join!(a.connect(&addr), l.accept());
        keep.push((c.expect("connect"), d.expect("accept")));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = crate::alloc::live_bytes();
    drop(keep);
    a.close("bench done").await;
    b.close("bench done").await;
    after.saturating_sub(before) as f64 / IDLE_CONNS as f64
}
