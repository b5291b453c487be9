//! Reputation: peers that serve good chunks gain score, peers that fail
//! requests or send bad chunks lose it, and are banned for a while past a
//! threshold.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use p2p_core::PeerId;
use tokio::time::Instant;

use crate::proto::PeerScore;

/// How reputation scores move.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReputationPolicy {
    /// Added for each good chunk (up to `max`).
    pub good: i32,
    /// Added for a request that failed or timed out.
    pub failed: i32,
    /// Added for a chunk that failed verification.
    pub corrupt: i32,
    /// The highest score.
    pub max: i32,
    /// At or below this a peer is banned.
    pub ban_at: i32,
    /// For how long.
    pub ban_for: Duration,
}

impl Default for ReputationPolicy {
    fn default() -> Self {
        ReputationPolicy {
            good: 1,
            failed: -10,
            corrupt: -50,
            max: 100,
            ban_at: -100,
            ban_for: Duration::from_secs(600),
        }
    }
}
#[derive(Debug, Clone, Default)]
struct Standing {
    score: i32,
    good: u64,
    failed: u64,
    corrupt: u64,
    banned_until: Option<Instant>,
}

/// Peer scores and bans of one node.
#[derive(Debug, Default)]
pub struct Reputation {
    policy: ReputationPolicy,
    peers: Mutex<BTreeMap<PeerId, Standing>>,
    /// Bans so far.
    bans: std::sync::atomic::AtomicU64,
}

impl Reputation {
    /// Scores under `policy`.
    pub fn new(policy: ReputationPolicy) -> Self {
        Reputation {
            policy,
            peers: Mutex::new(BTreeMap::new()),
            bans: std::sync::atomic::AtomicU64::new(0),
        }
    }

    fn peers(&self) -> std::sync::MutexGuard<'_, BTreeMap<PeerId, Standing>> {
        p2p_core::sync::lock(&self.peers)
    }

    fn change(&self, peer: PeerId, delta: i32, count: impl FnOnce(&mut Standing)) {
        let mut peers = self.peers();
        let s = peers.entry(peer).or_default();
        count(s);
        s.score = s.score.saturating_add(delta).min(self.policy.max);
        if s.score <= self.policy.ban_at && s.banned_until.is_none() {
            tracing::warn!(peer = %peer.short(), score = s.score, "banning a peer");
            s.banned_until = Some(Instant::now() + self.policy.ban_for);
            self.bans.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// A good chunk from `peer`.
    pub fn good(&self, peer: PeerId) {
        self.change(peer, self.policy.good, |s| s.good += 1);
    }

    /// A request to `peer` failed or timed out.
    pub fn failed(&self, peer: PeerId) {
        self.change(peer, self.policy.failed, |s| s.failed += 1);
    }

    /// `peer` sent a chunk that failed verification.
    pub fn corrupt(&self, peer: PeerId) {
        self.change(peer, self.policy.corrupt, |s| s.corrupt += 1);
    }

    /// Whether `peer` is banned now. A ban that ran out is lifted, with
    /// the score set just above the threshold: one more offence bans again.
    pub fn is_banned(&self, peer: &PeerId) -> bool {
        let mut peers = self.peers();
        let Some(s) = peers.get_mut(peer) else {
            return false;
        };
        match s.banned_until {
            Some(t) if Instant::now() < t => true,
            Some(_) => {
                s.banned_until = None;
                s.score = self.policy.ban_at + 1;
                false
            }
            None => false,
        }
    }

    /// Bans so far (a peer banned twice counts twice).
    pub fn bans(&self) -> u64 {
        self.bans.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// `peer`'s score (0 for a peer never seen).
    pub fn score(&self, peer: &PeerId) -> i32 {
        self.peers().get(peer).map_or(0, |s| s.score)
    }

    /// Every peer's standing.
    pub fn snapshot(&self) -> Vec<PeerScore> {
        let now = Instant::now();
        self.peers()
            .iter()
            .map(|(peer, s)| PeerScore {
                peer: *peer,
                score: s.score,
                good: s.good,
                failed: s.failed,
                corrupt: s.corrupt,
                banned_ms: s
                    .banned_until
                    .filter(|t| *t > now)
                    .map(|t| (t - now).as_millis() as u64),
            })
            .collect()
    }
}
