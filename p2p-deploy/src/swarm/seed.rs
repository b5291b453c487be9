//! The seed: the controller serving a release's chunks, each once before
//! any twice, the one the fleet holds fewest copies of first.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::time::Duration;

use futures::future::BoxFuture;

use p2p_core::framing::Framed;
use p2p_core::{PeerId, Result};

use super::schedule::fewest;
use crate::package::Descriptor;
use crate::proto::{Bitfield, ErrorKind, Frame, Reply, RpcError, end_with, send_chunk};

/// What a seed (the controller) knows of one release's spread.
pub(crate) struct SeedState {
    haves: BTreeMap<PeerId, Bitfield>,
    /// Copies of each chunk in the fleet, as the sessions report.
    held: Vec<u32>,
    /// Copies the seed sent.
    sent: Vec<u32>,
    sending: BTreeMap<PeerId, BTreeSet<u32>>,
    /// Each target's site (an index), when the controller knows them.
    site_of: BTreeMap<PeerId, usize>,
    /// Per site, copies of each chunk held there or sent there.
    site_counts: Vec<Vec<u32>>,
    /// Per site, the target designated to bring each chunk in (see
    /// `schedule::designee`).
    designees: Vec<Vec<Option<PeerId>>>,
}

impl SeedState {
    fn count_at_site(&mut self, peer: &PeerId, i: usize) {
        if let Some(&s) = self.site_of.get(peer) {
            self.site_counts[s][i] += 1;
        }
    }
}

/// A release a seed serves: the bytes, the fleet's have-maps, and the
/// upload slots that "any chunk" requests queue for.
pub(crate) struct Seed {
    pub(crate) d: Descriptor,
    st: Mutex<SeedState>,
    slots: tokio::sync::Semaphore,
    /// Slots opened so far: a few at first, so that the first chunks
    /// arrive (and are passed on) soon, one more per chunk sent.
    opened: std::sync::atomic::AtomicUsize,
    rng: Mutex<rand_chacha::ChaCha8Rng>,
}

/// "Any chunk" requests a seed serves at once. A slot is held until the
/// chunk has arrived, and a target's downlink is shared with its peers'
/// uploads, so a few slots leave the seed's uplink idle while their
/// chunks crawl through busy downlinks. In the simulator with 100
/// targets, before the first slots were few and before upload slots, 8
/// slots sent one copy of every chunk at 84% of the seed's rate, 12 at
/// 93% and 16 at 99%, but with 16 each first copy took so long to arrive
/// that the spread lagged more: 12 finished first (1.36x the bound
/// against 1.39x with 8 and 1.38x with 16).
pub(crate) const SEED_SLOTS: usize = 12;

/// Slots a seed opens at first; one more opens for each chunk sent, up
/// to [`SEED_SLOTS`]. The first chunks go out at a large share of the
/// uplink, so they arrive, and are passed on, sooner: with 12 slots from
/// the start, the first chunks took 250 ms to arrive in the simulator
/// with 100 targets, and nothing moved between targets for half a
/// second.
const SEED_FIRST_SLOTS: usize = 2;

impl Seed {
    pub(crate) fn new(d: Descriptor, seed: u64) -> Self {
        use rand::SeedableRng;
        let n = d.chunks.len();
        Seed {
            d,
            st: Mutex::new(SeedState {
                haves: BTreeMap::new(),
                held: vec![0; n],
                sent: vec![0; n],
                sending: BTreeMap::new(),
                site_of: BTreeMap::new(),
                site_counts: Vec::new(),
                designees: Vec::new(),
            }),
            slots: tokio::sync::Semaphore::new(SEED_FIRST_SLOTS),
            opened: std::sync::atomic::AtomicUsize::new(SEED_FIRST_SLOTS),
            rng: Mutex::new(rand_chacha::ChaCha8Rng::seed_from_u64(seed)),
        }
    }

    /// Tells the seed each target's site: "any chunk" then goes for the
    /// chunk the asker's site holds fewest copies of (then the fleet), so
    /// that the seed's uplink spreads each chunk to every site once before
    /// any site twice. Targets not named here are served as before.
    pub(crate) fn set_sites(&self, sites: &BTreeMap<PeerId, String>) {
        let n = self.d.chunks.len();
        let mut names: Vec<&String> = sites.values().collect();
        names.sort();
        names.dedup();
        let mut st = self.st();
        st.site_counts = vec![vec![0; n]; names.len()];
        st.site_of = sites
            .iter()
            .filter_map(|(id, s)| Some((*id, names.iter().position(|x| *x == s)?)))
            .collect();
        // A site's roster: the targets there, as the controller gives
        // each of them the others as peers.
        st.designees = (0..names.len())
            .map(|s| {
                let roster: Vec<PeerId> = st
                    .site_of
                    .iter()
                    .filter(|(_, x)| **x == s)
                    .map(|(id, _)| *id)
                    .collect();
                (0..n)
                    .map(|i| super::schedule::designee(&roster, i))
                    .collect()
            })
            .collect();
        // What sessions reported before.
        let haves: Vec<(PeerId, Bitfield)> =
            st.haves.iter().map(|(p, h)| (*p, h.clone())).collect();
        for (p, h) in haves {
            for i in h.ones() {
                st.count_at_site(&p, i);
            }
        }
    }

    fn st(&self) -> std::sync::MutexGuard<'_, SeedState> {
        p2p_core::sync::lock(&self.st)
    }

    /// Answers a session: our (full) have-map, then their announcements
    /// until they hold everything or go.
    pub(crate) async fn session(&self, peer: PeerId, mut framed: Framed, theirs: Bitfield) {
        let n = self.d.chunks.len();
        if let Err(e) = theirs.check(n) {
            end_with(&mut framed, Frame::Error(RpcError::from_error(&e))).await;
            return;
        }
        {
            let mut st = self.st();
            let st = &mut *st;
            let have = st.haves.entry(peer).or_insert_with(|| Bitfield::new(n));
            let mut new = Vec::new();
            for i in theirs.ones() {
                if have.set(i) {
                    st.held[i] += 1;
                    new.push(i);
                }
            }
            for i in new {
                st.count_at_site(&peer, i);
            }
        }
        if framed.send(&Frame::Have(Bitfield::full(n))).await.is_err() {
            return;
        }
        loop {
            if self.st().haves.get(&peer).is_some_and(Bitfield::is_full) {
                let _ = framed.finish().await;
                return;
            }
            match framed.recv_opt::<Frame>().await {
                Ok(Some(Frame::Got(i))) if (i as usize) < n => {
                    let mut st = self.st();
                    let st = &mut *st;
                    if let Some(have) = st.haves.get_mut(&peer)
                        && have.set(i as usize)
                    {
                        st.held[i as usize] += 1;
                        // Sent by the seed: counted at the site then.
                        let from_seed = st.sending.get(&peer).is_some_and(|s| s.contains(&i));
                        if !from_seed {
                            st.count_at_site(&peer, i as usize);
                        }
                    }
                }
                _ => return,
            }
        }
    }

    /// Answers [`Request::FetchAny`]: waits for an upload slot, then sends
    /// the chunk `peer` lacks that the fleet holds fewest copies of.
    pub(crate) async fn fetch_any(
        &self,
        peer: PeerId,
        framed: &mut Framed,
        have: Bitfield,
        read: impl FnOnce(usize) -> BoxFuture<'static, Result<Option<Vec<u8>>>>,
    ) -> Option<Frame> {
        let n = self.d.chunks.len();
        if let Err(e) = have.check(n) {
            return Some(Frame::Error(RpcError::from_error(&e)));
        }
        let Ok(_slot) = self.slots.acquire().await else {
            return Some(Frame::Error(RpcError::new(
                ErrorKind::Busy,
                "the seed is closing",
            )));
        };
        let site = self.st().site_of.get(&peer).copied();
        let pick = {
            let mut st = self.st();
            let st = &mut *st;
            let known = st.haves.get(&peer);
            let sending = st.sending.entry(peer).or_default();
            let mut rng = p2p_core::sync::lock(&self.rng);
            let (held, sent, site_counts, designees) =
                (&st.held, &st.sent, &st.site_counts, &st.designees);
            let lacking = (0..n)
                .filter(|&i| {
                    !have.get(i)
                        && !known.is_some_and(|k| k.get(i))
                        && !sending.contains(&(i as u32))
                })
                .map(|i| {
                    let fleet = (held[i] + sent[i]).min(0xffff);
                    // At a known site: the chunks this target is to bring
                    // into it first (so that each enters the site once,
                    // whether from here or from another site), then the
                    // fewest copies there.
                    let (others, at_site) = site.map_or((0, 0), |s| {
                        let theirs = designees[s].get(i).copied().flatten() != Some(peer);
                        (u32::from(theirs), site_counts[s][i].min(0x3fff))
                    });
                    (others << 30 | at_site << 16 | fleet, i)
                });
            let best = fewest(lacking, |ties| {
                rand::RngExt::random_range(&mut *rng, 0..ties)
            });
            if let Some(i) = best {
                st.sent[i] += 1;
                sending.insert(i as u32);
                if let Some(s) = site {
                    st.site_counts[s][i] += 1;
                }
            }
            best
        };
        let Some(i) = pick else {
            return Some(Frame::Error(RpcError::new(
                ErrorKind::NotFound,
                "nothing left that this node lacks",
            )));
        };
        let end = match read(i).await {
            Ok(None) => Some(Frame::Error(RpcError::new(
                ErrorKind::NotFound,
                format!("chunk {i} is not held here"),
            ))),
            Ok(Some(bytes)) => {
                let sent = send_chunk(framed, i as u32, &bytes).await.is_ok();
                if !sent {
                    // Not sent whole (the node went away, or declined it
                    // at its header before all of it was written): one
                    // copy fewer than counted.
                    let mut st = self.st();
                    st.sent[i] = st.sent[i].saturating_sub(1);
                    if let Some(s) = site {
                        st.site_counts[s][i] = st.site_counts[s][i].saturating_sub(1);
                    }
                }
                let sent = sent && framed.send(&Frame::Done(Reply::Ok)).await.is_ok();
                if sent {
                    // The slot is free once the chunk has arrived: the
                    // client closes its side after reading it.
                    let _ = framed.finish().await;
                    let _ =
                        tokio::time::timeout(Duration::from_secs(60), framed.recv_opt::<Frame>())
                            .await;
                }
                None
            }
            Err(e) => Some(Frame::Error(RpcError::from_error(&e))),
        };
        if let Some(s) = self.st().sending.get_mut(&peer) {
            s.remove(&(i as u32));
        }
        let more = |o: usize| (o < SEED_SLOTS).then_some(o + 1);
        let relaxed = std::sync::atomic::Ordering::Relaxed;
        if self.opened.fetch_update(relaxed, relaxed, more).is_ok() {
            self.slots.add_permits(1);
        }
        end
    }
}
