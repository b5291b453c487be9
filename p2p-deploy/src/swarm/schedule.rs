//! Scheduling: which chunk to ask of which neighbour, rarest first with
//! random tie-breaks, neighbours with a clean record first, relayed
//! neighbours only for what no direct one holds, and a larger window
//! for a node that fell behind. Pure: no I/O, time passed in.

use p2p_core::PeerId;
use tokio::time::Instant;

use super::config::SwarmConfig;
use super::reputation::Reputation;
use super::transfer::{SITE_STALL, TState};
use crate::proto::Bitfield;

/// The node of `roster` that brings chunk `i` into its site: the one whose
/// hash of (id, chunk) is highest (rendezvous hashing). Every node of a
/// site, and the seed, computes the same from the same roster.
pub(super) fn designee(roster: &[PeerId], i: usize) -> Option<PeerId> {
    roster.iter().copied().max_by_key(|p| rendezvous(p, i))
}

fn rendezvous(peer: &PeerId, i: usize) -> u64 {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(peer.as_bytes());
    h.update((i as u64).to_be_bytes());
    let out = h.finalize();
    u64::from_be_bytes(out[..8].try_into().expect("8 bytes"))
}

/// Shuffles `v` (Fisher-Yates; `random(k)` is uniform in `0..k`).
pub(super) fn shuffle<T>(v: &mut [T], mut random: impl FnMut(usize) -> usize) {
    for i in (1..v.len()).rev() {
        v.swap(i, random(i + 1));
    }
}

/// The index with the lowest count among `(count, index)` pairs, ties
/// broken at random (`random(k)` is uniform in `0..k`), in one pass.
pub(super) fn fewest(
    candidates: impl Iterator<Item = (u32, usize)>,
    mut random: impl FnMut(usize) -> usize,
) -> Option<usize> {
    let mut best: Option<(u32, usize)> = None;
    let mut ties = 0;
    for (count, i) in candidates {
        match best {
            Some((b, _)) if count > b => {}
            Some((b, _)) if count == b => {
                ties += 1;
                if random(ties) == 0 {
                    best = Some((count, i));
                }
            }
            _ => {
                best = Some((count, i));
                ties = 1;
            }
        }
    }
    best.map(|(_, i)| i)
}

/// Gives every neighbour with room its rarest missing chunks to send:
/// the `(neighbour, chunk)` requests to make, booked in `st` as in
/// flight. `random(k)` is uniform in `0..k` (the node's seeded RNG).
/// Neighbours with a clean record go first, in random order (ordered by
/// score, the ones that served most were always asked first and became
/// the fleet's hot spots), then those that failed or sent bad chunks.
///
/// A neighbour reached through a relay is asked only for chunks that no
/// directly reached neighbour holds, one at a time: every byte it sends
/// crosses the relay's links, which every node behind NAT shares, so the
/// swarm routes around the relay where a direct path can serve. In the
/// simulator (200 targets, 30% relay-only, 30% punchable; the
/// `swarm_nat` test) the relay carried 0.09 of a release per relay-only
/// target without this rule (its slow, shared links already shrink the
/// windows of relayed neighbours), 0.05 with it.
pub(super) fn plan(
    st: &mut TState,
    cfg: &SwarmConfig,
    rep: &Reputation,
    now: Instant,
    mut random: impl FnMut(usize) -> usize,
) -> Vec<(PeerId, usize)> {
    let mut wanted = Vec::new();
    // What the directly reached neighbours (not the seed) hold; only
    // needed when some neighbour is relayed.
    let direct_has = st.neighbors.values().any(|n| n.relayed).then(|| {
        st.neighbors
            .values()
            .filter(|n| !n.seed && !n.relayed)
            .fold(Bitfield::new(st.have.len()), |acc, n| acc.union(&n.have))
    });
    let theirs = st
        .neighbors
        .values()
        .filter(|n| !n.seed)
        .map(|n| n.have.count());
    let boost = catch_up(st.have.count(), theirs, st.have.len());
    // Site awareness: neighbours at other sites are asked only for
    // chunks no neighbour at this node's site holds, and of those, the
    // ones this node is designated for, unless its site has had nothing
    // for it for a while.
    let sites = st.site.is_some() && st.neighbors.values().any(|n| n.remote == Some(true));
    let local_has = sites.then(|| {
        st.neighbors
            .values()
            .filter(|n| !n.seed && n.remote != Some(true))
            .fold(Bitfield::new(st.have.len()), |acc, n| acc.union(&n.have))
    });
    // The site is stalled when nothing new reached it (this node or its
    // neighbours there) for a while.
    let stalled = match (&mut st.site, &local_has) {
        (Some(role), Some(local)) => {
            let held = local.union(&st.have).count();
            let last = *role.last_news.get_or_insert(now);
            if held > role.site_held {
                role.site_held = held;
                role.last_news = Some(now);
                false
            } else {
                !st.have.is_full() && now.duration_since(last) >= SITE_STALL
            }
        }
        _ => false,
    };
    let designated = st.site.as_ref().map(|r| r.designated.clone());
    let mut order: Vec<(bool, PeerId)> = st
        .neighbors
        .iter()
        .filter(|(id, n)| {
            !n.seed
                && n.inflight < n.window(cfg) * boost
                && n.rest_until.is_none_or(|t| now >= t)
                && !rep.is_banned(id)
        })
        .map(|(id, _)| (rep.score(id) < 0, *id))
        .collect();
    shuffle(&mut order, &mut random);
    order.sort_by_key(|(bad, _)| *bad);
    for (_, id) in order {
        let Some(n) = st.neighbors.get_mut(&id) else {
            continue;
        };
        let relayed = n.relayed;
        let remote = sites && n.remote == Some(true);
        let room = if relayed { 1 } else { n.window(cfg) * boost };
        while n.inflight < room {
            // Rarest first among what this neighbour has and we lack
            // (through a relay: only what no direct neighbour has).
            let wanted_here = n
                .have
                .ones()
                .filter(|&i| !st.have.get(i) && !st.requested.get(i))
                .filter(|&i| !relayed || direct_has.as_ref().is_none_or(|d| !d.get(i)))
                .filter(|&i| {
                    !remote
                        || (local_has.as_ref().is_none_or(|l| !l.get(i))
                            && (stalled || designated.as_ref().is_none_or(|d| d.get(i))))
                })
                .map(|i| (st.counts[i], i));
            let Some(i) = fewest(wanted_here, &mut random) else {
                break;
            };
            st.requested.set(i);
            n.inflight += 1;
            wanted.push((id, i));
        }
    }
    wanted
}

/// How many times its usual window a node asks each neighbour for: twice
/// when it holds `mine` chunks of `n` and its neighbours (`theirs`) hold
/// more by over 2% of the release on average (4 chunks at least), else
/// once. A node that fell behind takes a larger share of its neighbours'
/// uplinks (they all hold chunks it lacks) and catches up; in the
/// simulator with 100 targets this took the last target from 0.5 s
/// behind the median to 0.1 s.
fn catch_up(mine: usize, theirs: impl Iterator<Item = usize>, n: usize) -> usize {
    let (sum, k) = theirs.fold((0, 0), |(sum, k), c| (sum + c, k + 1));
    let margin = (n / 50).max(4);
    if k > 0 && (mine + margin) * k < sum {
        2
    } else {
        1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_behind_its_neighbours_asks_for_more_at_once() {
        // 400 chunks: behind by more than 8 on average.
        assert_eq!(catch_up(100, [110, 109].into_iter(), 400), 2);
        assert_eq!(catch_up(100, [108, 108].into_iter(), 400), 1);
        assert_eq!(catch_up(100, [100, 140, 90].into_iter(), 400), 2);
        assert_eq!(catch_up(100, [95, 105].into_iter(), 400), 1);
        // Small releases: 4 chunks at least.
        assert_eq!(catch_up(2, [6].into_iter(), 20), 1);
        assert_eq!(catch_up(2, [7].into_iter(), 20), 2);
        // No neighbour, nobody to compare with.
        assert_eq!(catch_up(0, std::iter::empty(), 400), 1);
    }
}
