//! The simulated network's model: bandwidth, fair sharing, partitions,
//! crashes, restarts, discovery and loss, all in virtual time.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::StreamExt;
use p2p_core::{Connection, Error, PathKind, Provider, Storage};
use p2p_sim::{LinkSpec, NodeConfig, Reach, SimNet, SimProvider};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

const MBIT_100: u64 = 100_000_000 / 8;

fn net(seed: u64) -> SimNet {
    SimNet::builder(seed)
        .default_link(LinkSpec::latency(Duration::from_millis(1)))
        .build()
}

/// Connects `a` to `b` and returns both ends.
async fn connect(a: &SimProvider, b: &SimProvider) -> (Arc<dyn Connection>, Arc<dyn Connection>) {
    let mut l = b.listen().await.unwrap();
    let addr = b.local_addr();
    let (x, y) = tokio::join!(a.connect(&addr), l.accept());
    (x.unwrap(), y.unwrap())
}

/// Nodes "a" and "b" at `mbit` Mbit/s, connected: a's side, then b's.
async fn pair_at(net: &SimNet, mbit: u64) -> (Arc<dyn Connection>, Arc<dyn Connection>) {
    let a = net
        .add_node_with("a", NodeConfig::default().mbit(mbit))
        .unwrap();
    let b = net
        .add_node_with("b", NodeConfig::default().mbit(mbit))
        .unwrap();
    connect(&a, &b).await
}

/// Streams `total` bytes from `from` to a reader on `to` that counts them
/// into `counter`; returns when the reader saw the end.
async fn stream_bytes(
    from: Arc<dyn Connection>,
    to: Arc<dyn Connection>,
    total: usize,
    counter: Arc<AtomicU64>,
) {
    let writer = tokio::spawn(async move {
        let (mut send, _r) = from.open_bi().await.unwrap();
        let chunk = vec![0xa5u8; 1 << 20];
        let mut left = total;
        while left > 0 {
            let n = left.min(chunk.len());
            if send.write_all(&chunk[..n]).await.is_err() {
                return;
            }
            left -= n;
        }
        let _ = send.shutdown().await;
        // Keep the connection until the reader is done.
        tokio::time::sleep(Duration::from_secs(3600)).await;
    });
    let (_s, mut recv) = to.accept_bi().await.unwrap();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        match recv.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                counter.fetch_add(n as u64, Ordering::Relaxed);
            }
        }
    }
    writer.abort();
}

#[tokio::test(start_paused = true)]
async fn hundred_megabytes_over_a_100_mbit_path_take_eight_seconds() {
    let net = net(1);
    let (ab, ba) = pair_at(&net, 100).await;
    let got = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    stream_bytes(ab, ba, 100_000_000, got.clone()).await;
    let took = start.elapsed().as_secs_f64();
    assert_eq!(got.load(Ordering::Relaxed), 100_000_000);
    assert!(
        (took - 8.0).abs() / 8.0 < 0.02,
        "100 MB at 100 Mbit/s took {took:.3} s of virtual time, expected 8 s within 2%"
    );
}

/// Each node's traffic counters: what left its uplink and what went
/// through its downlink, the payload and not much more.
#[tokio::test(start_paused = true)]
async fn traffic_counts_what_each_node_sent_and_received() {
    let net = net(2);
    let (ab, ba) = pair_at(&net, 100).await;
    let before = (net.traffic("a").unwrap(), net.traffic("b").unwrap());
    stream_bytes(ab, ba, 5_000_000, Arc::new(AtomicU64::new(0))).await;
    let (ta, tb) = (net.traffic("a").unwrap(), net.traffic("b").unwrap());
    let sent = ta.sent - before.0.sent;
    let received = tb.received - before.1.received;
    for (what, n) in [("a sent", sent), ("b received", received)] {
        assert!(
            (5_000_000..5_100_000).contains(&n),
            "{what} {n} bytes for a 5 MB stream"
        );
    }
    // The other way only credit and stream control went.
    assert!(tb.sent - before.1.sent < 100_000, "{tb:?}");
    assert!(ta.received - before.0.received < 100_000, "{ta:?}");
    assert!(net.traffic("nobody").is_err());
}

#[tokio::test(start_paused = true)]
async fn two_flows_sharing_an_uplink_each_get_half() {
    let net = net(2);
    let a = net
        .add_node_with("a", NodeConfig::default().mbit(100))
        .unwrap();
    let b = net.add_node("b").unwrap();
    let c = net.add_node("c").unwrap();
    let (ab, ba) = connect(&a, &b).await;
    let (ac, ca) = connect(&a, &c).await;
    let (to_b, to_c) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let t1 = tokio::spawn(stream_bytes(ab, ba, 200_000_000, to_b.clone()));
    let t2 = tokio::spawn(stream_bytes(ac, ca, 200_000_000, to_c.clone()));
    tokio::time::sleep(Duration::from_secs(4)).await;
    let half = (MBIT_100 * 4 / 2) as f64;
    for (who, n) in [
        ("b", to_b.load(Ordering::Relaxed)),
        ("c", to_c.load(Ordering::Relaxed)),
    ] {
        let share = n as f64 / half;
        assert!(
            (share - 1.0).abs() < 0.05,
            "flow to {who} got {n} bytes in 4 s, expected {half} (half the uplink) within 5%"
        );
    }
    t1.abort();
    t2.abort();
}

#[tokio::test(start_paused = true)]
async fn two_flows_into_one_downlink_each_get_half() {
    let net = net(3);
    let a = net.add_node("a").unwrap();
    let b = net.add_node("b").unwrap();
    let c = net
        .add_node_with("c", NodeConfig::default().mbit(100))
        .unwrap();
    let (ac, ca) = connect(&a, &c).await;
    let (bc, cb) = connect(&b, &c).await;
    let (from_a, from_b) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let t1 = tokio::spawn(stream_bytes(ac, ca, 200_000_000, from_a.clone()));
    let t2 = tokio::spawn(stream_bytes(bc, cb, 200_000_000, from_b.clone()));
    tokio::time::sleep(Duration::from_secs(4)).await;
    let half = (MBIT_100 * 4 / 2) as f64;
    for n in [
        from_a.load(Ordering::Relaxed),
        from_b.load(Ordering::Relaxed),
    ] {
        assert!(
            (n as f64 / half - 1.0).abs() < 0.05,
            "got {n}, expected {half} within 5%"
        );
    }
    t1.abort();
    t2.abort();
}

#[tokio::test(start_paused = true)]
async fn partition_stops_traffic_and_heal_resumes_it() {
    let net = net(4);
    let a = net
        .add_node_with("a", NodeConfig::default().mbit(10))
        .unwrap();
    let b = net.add_node("b").unwrap();
    let (ab, ba) = connect(&a, &b).await;
    let got = Arc::new(AtomicU64::new(0));
    let total = 10_000_000;
    let transfer = tokio::spawn(stream_bytes(ab.clone(), ba.clone(), total, got.clone()));
    tokio::time::sleep(Duration::from_secs(2)).await;
    net.partition(&["a"], &["b"]).unwrap();
    assert!(net.is_partitioned("a", "b") && net.is_partitioned("b", "a"));
    tokio::time::sleep(Duration::from_millis(100)).await;
    let frozen = got.load(Ordering::Relaxed);
    assert!(frozen > 0 && frozen < total as u64);
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(
        got.load(Ordering::Relaxed),
        frozen,
        "traffic crossed a partition"
    );
    assert!(net.stats().segments_parked > 0);
    net.heal();
    tokio::time::timeout(Duration::from_secs(30), transfer)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        got.load(Ordering::Relaxed),
        total as u64,
        "transfer resumed after heal and completed intact"
    );
    assert!(
        ab.is_connected() && ba.is_connected(),
        "a short partition must not kill the connection"
    );
}

#[tokio::test(start_paused = true)]
async fn partition_longer_than_the_idle_timeout_ends_connections_on_both_sides() {
    let net = SimNet::builder(5)
        .idle_timeout(Duration::from_secs(20))
        .build();
    let a = net.add_node("a").unwrap();
    let b = net.add_node("b").unwrap();
    let (ab, ba) = connect(&a, &b).await;
    net.partition(&["a"], &["b"]).unwrap();
    ab.close("giving up").await;
    let err = tokio::time::timeout(Duration::from_secs(25), ba.accept_bi())
        .await
        .unwrap()
        .err()
        .unwrap();
    assert!(
        matches!(&err, Error::Closed { reason } if reason.contains("timed out")),
        "{err}"
    );
    // Dials across the partition time out instead of hanging.
    let r = a.connect(&b.local_addr()).await;
    assert!(matches!(r, Err(Error::Timeout { .. })), "{r:?}");
}

#[tokio::test(start_paused = true)]
async fn one_way_partition_blocks_only_that_direction() {
    let net = net(6);
    let a = net.add_node("a").unwrap();
    let b = net.add_node("b").unwrap();
    let (ab, ba) = connect(&a, &b).await;
    net.partition_oneway(&["a"], &["b"]).unwrap();
    assert!(net.is_partitioned("a", "b") && !net.is_partitioned("b", "a"));
    // b -> a still flows.
    let (mut s, _r) = ba.open_bi().await.unwrap();
    s.write_all(b"from b").await.unwrap();
    s.shutdown().await.unwrap();
    let (_s2, mut r) = tokio::time::timeout(Duration::from_secs(1), ab.accept_bi())
        .await
        .unwrap()
        .unwrap();
    let mut got = Vec::new();
    r.read_to_end(&mut got).await.unwrap();
    assert_eq!(got, b"from b");
    // a -> b is held back until heal.
    let (mut s, _r) = ab.open_bi().await.unwrap();
    s.write_all(b"from a").await.unwrap();
    s.shutdown().await.unwrap();
    assert!(
        tokio::time::timeout(Duration::from_secs(5), ba.accept_bi())
            .await
            .is_err(),
        "a's stream crossed a one-way partition"
    );
    net.heal();
    let (_s, mut r) = tokio::time::timeout(Duration::from_secs(1), ba.accept_bi())
        .await
        .unwrap()
        .unwrap();
    let mut got = Vec::new();
    r.read_to_end(&mut got).await.unwrap();
    assert_eq!(got, b"from a");
}

#[tokio::test(start_paused = true)]
async fn crash_resets_peers_aborts_tasks_and_restart_keeps_storage() {
    let net = net(7);
    let runs = Arc::new(AtomicU64::new(0));
    let ticks = Arc::new(AtomicU64::new(0));
    let (r2, t2) = (runs.clone(), ticks.clone());
    net.spawn_node("server", NodeConfig::default(), move |ctx| {
        let (runs, ticks) = (r2.clone(), t2.clone());
        async move {
            runs.fetch_add(1, Ordering::Relaxed);
            let boots = ctx.storage.get("boots").await.unwrap().map_or(0, |v| v[0]);
            ctx.storage.put("boots", &[boots + 1]).await.unwrap();
            let ticks2 = ticks.clone();
            ctx.spawn(async move {
                loop {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    ticks2.fetch_add(1, Ordering::Relaxed);
                }
            });
            let mut l = ctx.provider.listen().await.unwrap();
            let mut held = Vec::new();
            while let Ok(c) = l.accept().await {
                held.push(c);
            }
        }
    })
    .unwrap();
    let client = net.add_node("client").unwrap();
    tokio::time::sleep(Duration::from_millis(10)).await;
    let server_addr = net.provider("server").unwrap().local_addr();
    let conn = client.connect(&server_addr).await.unwrap();
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let before = ticks.load(Ordering::Relaxed);
    assert_eq!(before, 3);

    net.crash("server").unwrap();
    assert!(!net.is_up("server"));
    let err = tokio::time::timeout(Duration::from_secs(1), conn.accept_bi())
        .await
        .unwrap()
        .err()
        .unwrap();
    assert!(
        err.to_string().contains("crashed"),
        "peer must see a reset naming the crash: {err}"
    );
    assert!(!conn.is_connected());
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(
        ticks.load(Ordering::Relaxed),
        before,
        "tasks of a crashed node must stop"
    );
    let r = client.connect(&server_addr).await;
    assert!(
        matches!(r, Err(Error::Timeout { .. })),
        "a crashed node does not answer: {r:?}"
    );

    let again = net.restart("server").unwrap();
    assert_eq!(again.local_id(), server_addr.id, "same key after restart");
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(
        runs.load(Ordering::Relaxed),
        2,
        "factory runs again on restart"
    );
    assert_eq!(
        net.storage("server").unwrap().get("boots").await.unwrap(),
        Some(vec![2]),
        "storage survives the crash"
    );
    client.connect(&server_addr).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn crash_kills_the_nodes_simulated_processes() {
    let net = net(13);
    let slot: Arc<std::sync::Mutex<Option<Arc<p2p_sim::SimRuntime>>>> = Arc::default();
    let s2 = slot.clone();
    net.spawn_node("box", NodeConfig::default(), move |ctx| {
        let slot = s2.clone();
        async move {
            ctx.runtime
                .start(p2p_core::AppSpec::new("web", "1.0.0", "web"))
                .await
                .unwrap();
            *slot.lock().unwrap() = Some(ctx.runtime.clone());
            std::future::pending::<()>().await;
        }
    })
    .unwrap();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let rt = slot.lock().unwrap().clone().unwrap();
    use p2p_core::Runtime;
    assert!(rt.status("web").await.unwrap().state.is_live());
    net.crash("box").unwrap();
    tokio::time::sleep(Duration::from_millis(10)).await;
    let st = rt.status("web").await.unwrap();
    assert!(
        !st.state.is_live(),
        "a crashed machine's apps must be dead, got {st:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn old_provider_handle_fails_after_crash() {
    let net = net(8);
    let a = net.add_node("a").unwrap();
    net.add_node("b").unwrap();
    net.crash("a").unwrap();
    let b_addr = net.provider("b").unwrap().local_addr();
    assert!(matches!(
        a.connect(&b_addr).await,
        Err(Error::Closed { .. })
    ));
    assert!(matches!(a.listen().await, Err(Error::Closed { .. })));
    let a2 = net.restart("a").unwrap();
    assert!(
        a.connect(&b_addr).await.is_err(),
        "old incarnation stays dead"
    );
    assert!(a2.listen().await.is_ok());
}

#[tokio::test(start_paused = true)]
async fn discovery_finds_peers_on_the_same_lan_only_and_after_restart() {
    let net = net(9);
    let a = net.add_node("a").unwrap();
    net.add_node("b").unwrap();
    net.add_node_with("other-lan", NodeConfig::default().in_lan(2))
        .unwrap();
    let mut found = a.discovered();
    let first = tokio::time::timeout(Duration::from_secs(1), found.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first.addrs, ["b"]);
    assert!(
        tokio::time::timeout(Duration::from_secs(5), found.next())
            .await
            .is_err(),
        "a node on another LAN was discovered"
    );
    net.add_node("c").unwrap();
    let next = tokio::time::timeout(Duration::from_secs(1), found.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(next.addrs, ["c"]);
    // A discovered address is dialable.
    let c = net.provider("c").unwrap();
    let _l = c.listen().await.unwrap();
    a.connect(&next).await.unwrap();
    net.crash("b").unwrap();
    net.restart("b").unwrap();
    let back = tokio::time::timeout(Duration::from_secs(1), found.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(back.addrs, ["b"], "a restarted node announces itself again");
}

#[tokio::test(start_paused = true)]
async fn loss_delays_streams_but_never_corrupts_them() {
    async fn transfer(loss: f64) -> (Duration, [u8; 32], u64) {
        let net = SimNet::builder(10)
            .default_link(LinkSpec::latency(Duration::from_millis(5)).with_loss(loss))
            .build();
        let (ab, ba) = pair_at(&net, 50).await;
        let start = Instant::now();
        let data: Vec<u8> = (0..10_000_000u32)
            .map(|i| (i * 7 + i / 251) as u8)
            .collect();
        let want: [u8; 32] = Sha256::digest(&data).into();
        let w = tokio::spawn(async move {
            let (mut s, _r) = ab.open_bi().await.unwrap();
            s.write_all(&data).await.unwrap();
            s.shutdown().await.unwrap();
            tokio::time::sleep(Duration::from_secs(3600)).await;
        });
        let (_s, mut r) = ba.accept_bi().await.unwrap();
        let mut got = Vec::new();
        r.read_to_end(&mut got).await.unwrap();
        w.abort();
        let digest: [u8; 32] = Sha256::digest(&got).into();
        assert_eq!(digest, want, "data changed under loss {loss}");
        (start.elapsed(), digest, net.stats().segments_lost)
    }
    let (clean, _, lost0) = transfer(0.0).await;
    let (lossy, _, lost) = transfer(0.05).await;
    assert_eq!(lost0, 0);
    assert!(lost > 0, "5% loss lost nothing");
    assert!(lossy > clean, "loss must cost time: {lossy:?} vs {clean:?}");
}

#[tokio::test(start_paused = true)]
async fn streams_and_connections_are_freed_when_done() {
    let net = net(11);
    let a = net.add_node("a").unwrap();
    let b = net.add_node("b").unwrap();
    {
        let (ab, ba) = connect(&a, &b).await;
        for _ in 0..50 {
            let (mut s, mut r) = ab.open_bi().await.unwrap();
            s.write_all(b"x").await.unwrap();
            s.shutdown().await.unwrap();
            let (mut s2, mut r2) = ba.accept_bi().await.unwrap();
            let mut v = Vec::new();
            r2.read_to_end(&mut v).await.unwrap();
            s2.shutdown().await.unwrap();
            r.read_to_end(&mut v).await.unwrap();
            drop((s, r, s2, r2));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(net.live_objects().1, 0, "finished streams must be freed");
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        net.live_objects(),
        (0, 0),
        "dropped connections must be freed"
    );
}

#[tokio::test(start_paused = true)]
async fn bad_names_and_unknown_nodes_are_clear_errors() {
    let net = net(12);
    net.add_node("a").unwrap();
    for bad in ["", "a b", "x,y", "p@q"] {
        let e = net.add_node(bad).unwrap_err();
        assert!(matches!(e, Error::Invalid { .. }), "{bad:?}: {e}");
    }
    assert!(matches!(
        net.add_node("a"),
        Err(Error::AlreadyExists { .. })
    ));
    assert!(matches!(net.crash("nope"), Err(Error::NotFound { .. })));
    let a = net.provider("a").unwrap();
    let ghost = p2p_core::PeerAddr::new(net.key_for("ghost").peer_id(), ["ghost"]).unwrap();
    let e = a.connect(&ghost).await.err().unwrap();
    assert!(
        matches!(&e, Error::Unreachable { reason } if reason.contains("ghost")),
        "{e}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_stream_refused_for_a_full_accept_queue_fails_the_openers_reader() {
    let net = net(20);
    let a = net.add_node("a").unwrap();
    let b = net.add_node("b").unwrap();
    let (ab, _ba) = connect(&a, &b).await;
    let mut kept = Vec::new();
    for _ in 0..1024 {
        let (mut s, r) = ab.open_bi().await.unwrap();
        s.write_all(b"x").await.unwrap();
        kept.push((s, r));
    }
    let (mut s, mut r) = ab.open_bi().await.unwrap();
    s.write_all(b"one too many").await.unwrap();
    s.shutdown().await.unwrap();
    let mut buf = Vec::new();
    let res = tokio::time::timeout(Duration::from_secs(5), r.read_to_end(&mut buf))
        .await
        .expect("the opener's reader must not hang");
    let err = res.unwrap_err();
    assert!(err.to_string().contains("accept queue is full"), "{err}");
}

#[tokio::test(start_paused = true)]
async fn a_lasting_partition_times_out_idle_connections_on_both_sides() {
    let net = SimNet::builder(21)
        .idle_timeout(Duration::from_secs(20))
        .build();
    let a = net.add_node("a").unwrap();
    let b = net.add_node("b").unwrap();
    let (ab, ba) = connect(&a, &b).await;
    net.partition_oneway(&["a"], &["b"]).unwrap();
    for (who, c) in [("dialer", &ab), ("listener", &ba)] {
        let err = tokio::time::timeout(Duration::from_secs(25), c.accept_bi())
            .await
            .unwrap_or_else(|_| panic!("{who} never noticed the partition"))
            .err()
            .unwrap();
        assert!(err.to_string().contains("timed out"), "{who}: {err}");
        assert!(!c.is_connected());
    }
}

#[tokio::test(start_paused = true)]
async fn a_close_held_by_a_short_partition_arrives_on_heal_with_its_reason() {
    let net = net(22);
    let a = net.add_node("a").unwrap();
    let b = net.add_node("b").unwrap();
    let (ab, ba) = connect(&a, &b).await;
    net.partition(&["a"], &["b"]).unwrap();
    ab.close("maintenance").await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(ba.is_connected(), "the close cannot cross the partition");
    net.heal();
    let err = tokio::time::timeout(Duration::from_secs(1), ba.accept_bi())
        .await
        .unwrap()
        .err()
        .unwrap();
    assert!(err.to_string().contains("maintenance"), "{err}");
}

#[tokio::test(start_paused = true)]
async fn an_abandoned_dial_leaves_nothing_behind() {
    let net = net(23);
    let a = net.add_node("a").unwrap();
    let b = net.add_node("b").unwrap();
    let mut l = b.listen().await.unwrap();
    // The answer cannot come back, and the caller gives up before the
    // provider's own connect timeout.
    net.partition_oneway(&["b"], &["a"]).unwrap();
    let r = tokio::time::timeout(Duration::from_secs(1), a.connect(&b.local_addr())).await;
    assert!(r.is_err());
    let half_open = l.accept().await.unwrap();
    let err = tokio::time::timeout(Duration::from_secs(1), half_open.accept_bi())
        .await
        .unwrap()
        .err()
        .unwrap();
    assert!(matches!(err, Error::Closed { .. }), "{err}");
    drop(half_open);
    net.heal();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        net.live_objects(),
        (0, 0),
        "the half-made connection must be freed"
    );

    // A dialer that crashes mid-dial leaks nothing either.
    let pending = {
        let a = a.clone();
        let addr = b.local_addr();
        tokio::spawn(async move { a.connect(&addr).await.map(|_| ()) })
    };
    tokio::time::sleep(Duration::from_millis(3)).await;
    net.crash("a").unwrap();
    let _ = pending.await;
    if let Ok(Ok(c)) = tokio::time::timeout(Duration::from_millis(100), l.accept()).await {
        drop(c);
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(net.live_objects(), (0, 0));
}

#[tokio::test(start_paused = true)]
async fn restart_after_a_graceful_close_replaces_the_old_incarnation() {
    let net = net(24);
    let ticks = Arc::new(AtomicU64::new(0));
    let t2 = ticks.clone();
    net.spawn_node("n", NodeConfig::default(), move |ctx| {
        let ticks = t2.clone();
        async move {
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                ticks.fetch_add(1, Ordering::Relaxed);
                let _ = ctx.provider.local_id();
            }
        }
    })
    .unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    net.provider("n").unwrap().close("shutting down").await;
    net.restart("n").unwrap();
    let before = ticks.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(10_100)).await;
    let after = ticks.load(Ordering::Relaxed) - before;
    assert_eq!(after, 10, "exactly one incarnation may run after restart");
}

#[tokio::test(start_paused = true)]
async fn open_streams_keep_their_connection_alive() {
    let net = net(25);
    let a = net.add_node("a").unwrap();
    let b = net.add_node("b").unwrap();
    let (ab, ba) = connect(&a, &b).await;
    let (mut s, mut r) = ab.open_bi().await.unwrap();
    drop(ab);
    s.write_all(b"still here").await.unwrap();
    s.shutdown().await.unwrap();
    let (mut s2, mut r2) = ba.accept_bi().await.unwrap();
    let mut got = Vec::new();
    r2.read_to_end(&mut got).await.unwrap();
    assert_eq!(got, b"still here");
    s2.write_all(b"reply").await.unwrap();
    s2.shutdown().await.unwrap();
    let mut reply = Vec::new();
    r.read_to_end(&mut reply).await.unwrap();
    assert_eq!(reply, b"reply");
    drop((s, r));
    let err = tokio::time::timeout(Duration::from_secs(1), ba.accept_bi())
        .await
        .unwrap()
        .err()
        .unwrap();
    assert!(
        matches!(err, Error::Closed { .. }),
        "closing after the last stream: {err}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_closed_providers_listener_hands_out_nothing_queued() {
    let net = net(26);
    let a = net.add_node("a").unwrap();
    let b = net.add_node("b").unwrap();
    let mut l = b.listen().await.unwrap();
    let _c = a.connect(&b.local_addr()).await.unwrap();
    b.close("bye").await;
    let r = l.accept().await;
    assert!(matches!(r, Err(Error::Closed { .. })), "{r:?}");
}

/// A relay-only node's connections with other nodes behind NAT go through
/// its relay: every byte crosses the relay's downlink and uplink, at the
/// relay's rate when it is the slowest, and the connection says it is
/// relayed. With a public node it connects directly.
#[tokio::test(start_paused = true)]
async fn a_relay_only_node_is_reached_through_its_relay_at_the_relays_rate() {
    let net = net(21);
    net.add_node_with("relay", NodeConfig::default().mbit(50))
        .unwrap();
    let a = net
        .add_node_with(
            "a",
            NodeConfig::default().mbit(100).reach(Reach::RelayOnly {
                relay: "relay".into(),
            }),
        )
        .unwrap();
    let b = net
        .add_node_with(
            "b",
            NodeConfig::default().mbit(100).reach(Reach::Punchable {
                relay: "relay".into(),
            }),
        )
        .unwrap();
    let public = net.add_node("public").unwrap();
    let (pa, _) = connect(&public, &a).await;
    assert_eq!(pa.path().kind, PathKind::Direct);
    let (ba, ab) = connect(&b, &a).await;
    let path = ba.path();
    assert_eq!(path.kind, PathKind::Relayed, "{path}");
    assert_eq!(path.remote.as_deref(), Some("relay"));
    assert_eq!(ab.path().kind, PathKind::Relayed);
    let before = net.traffic("relay").unwrap();
    let got = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    stream_bytes(ba, ab, 10_000_000, got.clone()).await;
    let took = start.elapsed().as_secs_f64();
    assert_eq!(got.load(Ordering::Relaxed), 10_000_000);
    // 10 MB at the relay's 50 Mbit/s: 1.6 s (the ends could do twice it).
    assert!((took - 1.6).abs() / 1.6 < 0.05, "took {took:.3} s");
    let t = net.traffic("relay").unwrap();
    for (what, n) in [
        ("relayed in", t.received - before.received),
        ("relayed out", t.sent - before.sent),
    ] {
        assert!((10_000_000..10_200_000).contains(&n), "{what} {n}");
    }
}

/// Connections with the relay itself, and between public nodes, stay
/// direct; a punchable node's connections are direct too, after the
/// signalling through its relay.
#[tokio::test(start_paused = true)]
async fn punchable_nodes_connect_directly_after_signalling_through_their_relay() {
    let net = net(22);
    let relay = net.add_node("relay").unwrap();
    let reach = Reach::Punchable {
        relay: "relay".into(),
    };
    let a = net
        .add_node_with("a", NodeConfig::default().reach(reach))
        .unwrap();
    let b = net.add_node("b").unwrap();
    let c = net.add_node("c").unwrap();
    let (ar, _) = connect(&a, &relay).await;
    assert_eq!(ar.path().kind, PathKind::Direct);
    let begun = Instant::now();
    let (bc, _) = connect(&b, &c).await;
    let plain = begun.elapsed();
    assert_eq!(bc.path().kind, PathKind::Direct);
    let begun = Instant::now();
    let (ba, _) = connect(&b, &a).await;
    let punched = begun.elapsed();
    assert_eq!(ba.path().kind, PathKind::Direct);
    assert_eq!(ba.path().remote.as_deref(), Some("a"));
    // The signalling is one more round trip through the relay: 4 ms on
    // 1 ms links.
    assert!(
        punched >= plain + Duration::from_millis(4),
        "{punched:?} vs {plain:?}"
    );
}

/// A relay that goes down ends the connections it carried, on both nodes,
/// and a relay-only node cannot be reached from behind NAT until it is
/// back.
#[tokio::test(start_paused = true)]
async fn a_relay_going_down_ends_its_connections_and_says_why() {
    let net = net(23);
    net.add_node("relay").unwrap();
    let behind = |r: Reach| NodeConfig::default().reach(r);
    let a = net
        .add_node_with(
            "a",
            behind(Reach::RelayOnly {
                relay: "relay".into(),
            }),
        )
        .unwrap();
    let b = net
        .add_node_with(
            "b",
            behind(Reach::RelayOnly {
                relay: "relay".into(),
            }),
        )
        .unwrap();
    let (ba, ab) = connect(&b, &a).await;
    net.crash("relay").unwrap();
    assert!(!ba.is_connected() && !ab.is_connected());
    let e = ba.accept_bi().await.err().unwrap().to_string();
    assert!(e.contains("relay relay went down"), "{e}");
    let mut l = a.listen().await.unwrap();
    let e = b.connect(&a.local_addr()).await.err().unwrap();
    assert!(
        matches!(e, Error::Unreachable { .. }) && e.to_string().contains("relay"),
        "{e}"
    );
    net.restart("relay").unwrap();
    let addr = a.local_addr();
    let (ba, _) = tokio::join!(b.connect(&addr), l.accept());
    assert_eq!(ba.unwrap().path().kind, PathKind::Relayed);
}

/// Two sites behind 10 Mbit/s WAN links, nodes at 1 Gbit/s: a flow
/// between sites runs at the WAN rate and is counted on both WAN links;
/// a flow inside a site does not touch them; two flows out of one site
/// share its uplink.
#[tokio::test(start_paused = true)]
async fn traffic_between_sites_crosses_and_shares_their_wan_links() {
    use p2p_sim::SiteLink;
    let net = net(4);
    for site in ["s1", "s2"] {
        net.set_site_link(site, SiteLink::mbit(10, Duration::from_millis(10)));
    }
    let node = |name: &str, site: &str| {
        net.add_node_with(name, NodeConfig::default().mbit(1000).at_site(site))
            .unwrap()
    };
    let (a1, b1, a2, b2) = (
        node("a1", "s1"),
        node("b1", "s1"),
        node("a2", "s2"),
        node("b2", "s2"),
    );
    // Inside site 1: at the nodes' rate, nothing on the WAN.
    let (x, y) = connect(&a1, &b1).await;
    let start = Instant::now();
    stream_bytes(x, y, 10_000_000, Arc::new(AtomicU64::new(0))).await;
    assert!(
        start.elapsed() < Duration::from_millis(300),
        "{:?}",
        start.elapsed()
    );
    let wan = net.site_traffic("s1").unwrap();
    assert!(wan.sent < 10_000 && wan.received < 10_000, "{wan:?}");
    // Site 1 to site 2: 10 Mbit/s, so 5 MB take 4 s.
    let (x, y) = connect(&a1, &a2).await;
    let start = Instant::now();
    stream_bytes(x, y, 5_000_000, Arc::new(AtomicU64::new(0))).await;
    let took = start.elapsed().as_secs_f64();
    assert!(
        (took - 4.0).abs() < 0.2,
        "5 MB over a 10 Mbit/s WAN took {took:.2} s"
    );
    let (s1, s2) = (
        net.site_traffic("s1").unwrap(),
        net.site_traffic("s2").unwrap(),
    );
    assert!((5_000_000..5_100_000).contains(&s1.sent), "{s1:?}");
    assert!((5_000_000..5_100_000).contains(&s2.received), "{s2:?}");
    // Two flows out of site 1 share its uplink: 2 x 2.5 MB take 4 s.
    let (x1, y1) = connect(&a1, &a2).await;
    let (x2, y2) = connect(&b1, &b2).await;
    let start = Instant::now();
    tokio::join!(
        stream_bytes(x1, y1, 2_500_000, Arc::new(AtomicU64::new(0))),
        stream_bytes(x2, y2, 2_500_000, Arc::new(AtomicU64::new(0)))
    );
    let took = start.elapsed().as_secs_f64();
    assert!(
        (took - 4.0).abs() < 0.3,
        "two flows sharing the WAN took {took:.2} s"
    );
    assert!(net.site_traffic("nowhere").is_err());
}
