//! A ready-made fleet workload: many nodes moving data to each other under
//! the bandwidth model, with loss, a partition and a crash.
//!
//! Used by the `sim_fleet` example, the determinism tests and the `sim`
//! benchmark group, and handy as a smoke test for changes to the engine.
//!
//! ```
//! let report = p2p_sim::scenario::Scenario::fleet(20, 7).with_transfers(1, 64 * 1024).run_blocking();
//! assert!(report.transfers_ok > 0);
//! println!("{} ok, trace hash {}", report.transfers_ok, report.trace_hash);
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use p2p_core::{Connection, Provider};
use rand::RngExt;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::{LinkSpec, NetStats, NodeConfig, SimNet};

/// Parameters of a fleet workload.
#[derive(Debug, Clone, PartialEq)]
pub struct Scenario {
    /// Network seed.
    pub seed: u64,
    /// Number of nodes (at least 2).
    pub nodes: usize,
    /// Transfers each node makes, one after another, to random peers.
    pub transfers_per_node: usize,
    /// Bytes per transfer.
    pub transfer_bytes: usize,
    /// Upload and download capacity of every node, in Mbit/s.
    pub mbit: u64,
    /// Link between every pair of nodes.
    pub link: LinkSpec,
    /// Pause between one node's transfers.
    pub pause: Duration,
    /// Cut the first fifth of the nodes off from the second fifth from
    /// 50 ms (while the first transfers are in flight) to 2.7 s.
    pub partition: bool,
    /// Crash the node at the quarter mark at 100 ms and restart it at 2.1 s.
    pub crash: bool,
    /// Check every transfer with SHA-256 (the receiver echoes the hash).
    /// Off, the receiver echoes the byte count instead, so a benchmark
    /// measures the simulator rather than hashing.
    pub verify_data: bool,
}

/// What a run did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// Virtual time from start to the last transfer's end.
    pub virtual_time: Duration,
    /// [`SimNet::trace_hash`] at the end.
    pub trace_hash: String,
    /// Trace events recorded.
    pub trace_events: u64,
    /// Network totals.
    pub stats: NetStats,
    /// Transfers whose echoed SHA-256 matched.
    pub transfers_ok: u64,
    /// Transfers that failed (peer crashed, partitioned past a timeout).
    pub transfers_failed: u64,
    /// Faults injected while traffic flowed (partition, crash, restart, heal).
    pub faults_applied: u64,
}

impl Scenario {
    /// `nodes` nodes at 20 Mbit/s with 10 ms +/- 5 ms links and 1% loss, a
    /// partition and a crash; each node makes 3 transfers of 256 KiB.
    pub fn fleet(nodes: usize, seed: u64) -> Self {
        Scenario {
            seed,
            nodes: nodes.max(2),
            transfers_per_node: 3,
            transfer_bytes: 256 * 1024,
            mbit: 20,
            link: LinkSpec::latency(Duration::from_millis(10))
                .with_jitter(Duration::from_millis(5))
                .with_loss(0.01),
            pause: Duration::from_millis(500),
            partition: true,
            crash: true,
            verify_data: true,
        }
    }

    /// This scenario with `count` transfers of `bytes` per node.
    pub fn with_transfers(mut self, count: usize, bytes: usize) -> Self {
        self.transfers_per_node = count;
        self.transfer_bytes = bytes;
        self
    }

    /// Runs the scenario on a fresh current-thread runtime with paused time.
    pub fn run_blocking(&self) -> Report {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .expect("building a current-thread tokio runtime");
        rt.block_on(self.run())
    }

    /// Runs the scenario. Call inside a current-thread runtime with paused
    /// time; the result depends only on the parameters.
    pub async fn run(&self) -> Report {
        let net = SimNet::builder(self.seed).default_link(self.link).build();
        let names: Vec<String> = (0..self.nodes).map(|i| format!("n{i:03}")).collect();
        let verify = self.verify_data;
        for name in &names {
            net.spawn_node(
                name,
                NodeConfig::default().mbit(self.mbit),
                move |ctx| async move {
                    let Ok(mut listener) = ctx.provider.listen().await else {
                        return;
                    };
                    while let Ok(conn) = listener.accept().await {
                        ctx.spawn(serve(conn, verify));
                    }
                },
            )
            .expect("node names are unique and valid");
        }
        let ok = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let mut rng = net.rng("scenario workload");
        let mut clients = Vec::new();
        for (i, name) in names.iter().enumerate() {
            let plan: Vec<usize> = (0..self.transfers_per_node)
                .map(|_| {
                    let j = rng.random_range(0..self.nodes - 1);
                    if j >= i { j + 1 } else { j }
                })
                .collect();
            let targets: Vec<String> = plan.iter().map(|&j| names[j].clone()).collect();
            let (net, name, ok, failed) = (net.clone(), name.clone(), ok.clone(), failed.clone());
            let (bytes, pause) = (self.transfer_bytes, self.pause);
            clients.push(tokio::spawn(async move {
                for (k, target) in targets.iter().enumerate() {
                    if k > 0 {
                        tokio::time::sleep(pause).await;
                    }
                    let seed = (i * 1_000 + k) as u64;
                    match transfer(&net, &name, target, bytes, seed, verify).await {
                        true => ok.fetch_add(1, Ordering::Relaxed),
                        false => failed.fetch_add(1, Ordering::Relaxed),
                    };
                }
            }));
        }
        let applied = Arc::new(AtomicU64::new(0));
        let faults = self.faults(net.clone(), &names, applied.clone());
        for c in clients {
            let _ = c.await;
        }
        let virtual_time = net.now();
        faults.abort();
        Report {
            virtual_time,
            trace_hash: net.trace_hash(),
            trace_events: net.trace_len(),
            stats: net.stats(),
            transfers_ok: ok.load(Ordering::Relaxed),
            transfers_failed: failed.load(Ordering::Relaxed),
            faults_applied: applied.load(Ordering::Relaxed),
        }
    }

    fn faults(
        &self,
        net: SimNet,
        names: &[String],
        applied: Arc<AtomicU64>,
    ) -> tokio::task::JoinHandle<()> {
        let fifth = (names.len() / 5).max(1);
        let side_a: Vec<String> = names.iter().take(fifth).cloned().collect();
        let side_b: Vec<String> = names.iter().skip(fifth).take(fifth).cloned().collect();
        let victim = names[names.len() / 4].clone();
        let (partition, crash) = (self.partition, self.crash);
        tokio::spawn(async move {
            let a: Vec<&str> = side_a.iter().map(String::as_str).collect();
            let b: Vec<&str> = side_b.iter().map(String::as_str).collect();
            let at = |ms| tokio::time::sleep(Duration::from_millis(ms));
            at(50).await;
            if partition && net.partition(&a, &b).is_ok() {
                applied.fetch_add(1, Ordering::Relaxed);
            }
            at(50).await;
            if crash && net.crash(&victim).is_ok() {
                applied.fetch_add(1, Ordering::Relaxed);
            }
            at(2000).await;
            if crash && net.restart(&victim).is_ok() {
                applied.fetch_add(1, Ordering::Relaxed);
            }
            at(600).await;
            if partition {
                net.heal();
                applied.fetch_add(1, Ordering::Relaxed);
            }
        })
    }
}

/// What a receiver answers for the bytes it read: their SHA-256, or (when
/// not verifying) their count.
fn summary(h: Option<Sha256>, count: u64) -> [u8; 32] {
    match h {
        Some(h) => h.finalize().into(),
        None => {
            let mut out = [0u8; 32];
            out[..8].copy_from_slice(&count.to_le_bytes());
            out
        }
    }
}

/// Echo service: for each stream, read everything and answer its summary.
async fn serve(conn: Arc<dyn Connection>, verify: bool) {
    while let Ok((mut send, mut recv)) = conn.accept_bi().await {
        tokio::spawn(async move {
            let mut h = verify.then(Sha256::new);
            let mut count = 0u64;
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                match recv.read(&mut buf).await {
                    Ok(0) => break,
                    Ok(n) => {
                        count += n as u64;
                        if let Some(h) = h.as_mut() {
                            h.update(&buf[..n]);
                        }
                    }
                    Err(_) => return,
                }
            }
            let digest = summary(h, count);
            let _ = send.write_all(&digest).await;
            let _ = send.shutdown().await;
        });
    }
}

/// One transfer from `from` to `to`, retried a few times; true when the
/// echoed hash matched.
async fn transfer(
    net: &SimNet,
    from: &str,
    to: &str,
    bytes: usize,
    seed: u64,
    verify: bool,
) -> bool {
    let mut chunk = vec![0u8; 64 * 1024];
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    for b in chunk.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    for attempt in 0..3u64 {
        if attempt > 0 {
            tokio::time::sleep(Duration::from_secs(2 * attempt)).await;
        }
        let (Ok(src), Ok(dst)) = (net.provider(from), net.provider(to)) else {
            return false;
        };
        let Ok(conn) = src.connect(&dst.local_addr()).await else {
            continue;
        };
        let Ok((mut send, mut recv)) = conn.open_bi().await else {
            continue;
        };
        let mut h = verify.then(Sha256::new);
        let mut left = bytes;
        let mut broken = false;
        while left > 0 {
            let n = left.min(chunk.len());
            if send.write_all(&chunk[..n]).await.is_err() {
                broken = true;
                break;
            }
            if let Some(h) = h.as_mut() {
                h.update(&chunk[..n]);
            }
            left -= n;
        }
        if broken || send.shutdown().await.is_err() {
            continue;
        }
        let want = summary(h, bytes as u64);
        let mut got = [0u8; 32];
        match tokio::time::timeout(Duration::from_secs(60), recv.read_exact(&mut got)).await {
            Ok(Ok(_)) if got == want => return true,
            _ => continue,
        }
    }
    false
}
