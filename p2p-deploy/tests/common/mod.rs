//! Helpers shared by the simulator tests. Fleets, agents and releases
//! come from `p2p-testkit`; what stays here tests the SDK itself rather
//! than a deployment: a peer that serves corrupt chunks, and the versions
//! of the fault campaign.
#![allow(clippy::unwrap_used, dead_code, unreachable_pub)]

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use p2p_core::framing::Framed;
use p2p_core::{Ed25519Signer, PeerAddr, PeerId, Provider};
use p2p_deploy::chunks::chunk_len;
use p2p_deploy::proto::{Call, Envelope, Frame, MAX_FRAME, PROTOCOL, Reply, Request};
use p2p_deploy::{AgentConfig, Bitfield, Descriptor, Release};
use p2p_sim::{NodeConfig, Script, SimNet};
use p2p_testkit::RandomRelease;

/// Starts an agent with `cfg` on a new 100 Mbit/s node `name` of `net`
/// ([`p2p_testkit::spawn_agent`]).
pub fn spawn_agent(net: &SimNet, name: &str, cfg: AgentConfig) {
    spawn_agent_on(net, name, NodeConfig::default().mbit(100), cfg);
}

/// The same on a node configured as `node` (bandwidth, NAT).
pub fn spawn_agent_on(net: &SimNet, name: &str, node: NodeConfig, cfg: AgentConfig) {
    p2p_testkit::spawn_agent(net, name, node, cfg).unwrap();
}

/// The publisher every simulated agent trusts.
pub fn publisher() -> Ed25519Signer {
    Ed25519Signer::from_seed(&[9; 32])
}

/// A signed release of `name` at `version`: `size` random bytes in 64 KiB
/// chunks (the sim installer only checks the bytes, it does not unpack
/// them).
pub async fn release_of(name: &str, version: &str, size: usize) -> Arc<Release> {
    release_with(name, version, size, "").await
}

/// The same, with `extra` appended to the manifest (a `[health]` table).
/// Versions of one name and size share their bytes.
pub async fn release_with(name: &str, version: &str, size: usize, extra: &str) -> Arc<Release> {
    RandomRelease::new(name, version, size)
        .manifest(extra)
        .seed(size as u64 + name.len() as u64)
        .sign(&publisher())
}

/// A node that claims every chunk of `d` and serves garbage: it opens a
/// swarm session to each of `targets` as soon as their transfer exists,
/// and answers every chunk request on those connections with bytes of the
/// right length that fail verification. Records whom it got a session
/// with.
pub fn spawn_mallory(
    provider: Arc<dyn Provider>,
    targets: Vec<PeerAddr>,
    d: Descriptor,
) -> Arc<Mutex<BTreeSet<PeerId>>> {
    let joined = Arc::new(Mutex::new(BTreeSet::new()));
    for addr in targets {
        let (provider, d, joined) = (provider.clone(), d.clone(), joined.clone());
        tokio::spawn(async move {
            let conn = provider.connect(&addr).await.unwrap();
            let server = conn.clone();
            let d2 = d.clone();
            tokio::spawn(async move {
                while let Ok((send, recv)) = server.accept_bi().await {
                    let d = d2.clone();
                    tokio::spawn(async move {
                        let mut framed = Framed::with_max(send, recv, MAX_FRAME);
                        framed.hello(&PROTOCOL).await.unwrap();
                        let env: Envelope = framed.recv().await.unwrap();
                        if let Request::FetchChunks { indexes, .. } = env.request {
                            for index in indexes {
                                let bytes = vec![0xAA; chunk_len(&d, index as usize) as usize];
                                let _ = framed.send(&Frame::Chunk { index, bytes }).await;
                            }
                            let _ = framed.send(&Frame::Done(Reply::Ok)).await;
                            let _ = framed.finish().await;
                        }
                    });
                }
            });
            // The session: "I hold everything", kept open.
            for _ in 0..400 {
                let request = Request::Swarm {
                    package: d.id(),
                    have: Bitfield::full(d.chunks.len()),
                };
                let mut call = match Call::open(&*conn, request, Duration::from_secs(600)).await {
                    Ok(c) => c,
                    Err(_) => return,
                };
                match call.next().await {
                    Ok(Frame::Have(_)) => {
                        joined.lock().unwrap().insert(addr.id);
                        while call.next_unbounded().await.is_ok() {}
                        return;
                    }
                    // Its deploy has not reached it yet.
                    _ => tokio::time::sleep(Duration::from_millis(20)).await,
                }
            }
        });
    }
    joined
}

/// What a simulated version does when started (the fault campaign's and
/// the `agent_model` fuzz target's versions).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Kind {
    /// Starts and passes every probe.
    Healthy,
    /// Passes its probes only after 4 s.
    SlowStart,
    /// Runs, and every probe fails.
    NeverHealthy,
    /// Healthy for 2 s, then exits with 3.
    Crashes,
    /// Exits with 127 the moment it spawns.
    FailsToStart,
}

impl Kind {
    /// Every kind, in a fixed order.
    pub const ALL: [Kind; 5] = [
        Kind::Healthy,
        Kind::SlowStart,
        Kind::NeverHealthy,
        Kind::Crashes,
        Kind::FailsToStart,
    ];

    /// The simulator script that behaves so.
    pub fn script(self) -> Script {
        match self {
            Kind::Healthy => Script::healthy(),
            Kind::SlowStart => Script::slow_start(Duration::from_secs(4)),
            Kind::NeverHealthy => Script::never_healthy(),
            Kind::Crashes => Script::exits_after(3, Duration::from_secs(2)),
            Kind::FailsToStart => Script::fails_to_start(127),
        }
    }

    /// Whether it can never pass a health gate.
    pub fn bad(self) -> bool {
        !matches!(self, Kind::Healthy | Kind::SlowStart)
    }
}
