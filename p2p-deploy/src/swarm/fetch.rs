//! The fetch driver: asks the seed for "any chunk" and neighbours for the
//! chunks the [scheduler](super::schedule) picks, verifies and stores
//! what comes, scores the senders, and ends with every chunk held or a
//! named reason (a chunk no source can give, a deadline).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use p2p_core::{Connection, Error, PathKind, PeerAddr, PeerId, Result};
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::config::SwarmConfig;
use super::host::Host;
use super::schedule;
use super::session::{dial_peers, open_session};
use super::sources::{BadChunks, orphan_chunk, usable_neighbors};
use super::throttle::Throttle;
use super::transfer::{BUSY_REST, NO_SOURCE_GRACE, SEED_GONE_GRACE, SEED_WAIT, SiteRole, Transfer};
use crate::chunks::{ChunkError, chunk_len};
use crate::proto::{Bitfield, Call, Frame, Incoming, Reply, Request, unexpected};

enum Fetched {
    Chunk {
        from: PeerId,
        index: u32,
        bytes: bytes::Bytes,
        /// From the seed, for a [`Request::FetchAny`].
        seed: bool,
        /// The chunk booked in `requested` for this request: the one
        /// asked of a neighbour, or the one the seed chose.
        booked: Option<u32>,
        took: Duration,
    },
    Failed {
        from: PeerId,
        seed: bool,
        booked: Option<u32>,
        error: Error,
    },
    /// The seed chose a chunk this node holds or has asked a neighbour
    /// for: seen at the chunk's header, and the rest of it left unsent.
    Declined { index: u32 },
}

/// Fetches one chunk: the one a [`Request::FetchChunks`] names, or the
/// one the seed chooses for a [`Request::FetchAny`]. The seed's choice is
/// looked at as soon as its header arrives: a chunk this node holds, or
/// has asked a neighbour for, is declined there (the stream is dropped,
/// which stops the seed sending it), and any other is booked in
/// `requested`, so that no neighbour is asked for it while it arrives.
/// Without that, in the `agent` benchmark a tenth of the seed's chunks
/// also came from a neighbour: 3 to 5% of what each node received.
/// Under a download cap, waits for `len` bytes' turn first (the chunk's
/// timeout starts after that).
async fn fetch_one(
    t: Arc<Transfer>,
    conn: Arc<dyn Connection>,
    request: Request,
    timeout: Duration,
    cap: Option<(Arc<Throttle>, u64)>,
) -> Fetched {
    let from = conn.remote_id();
    let asked = match &request {
        Request::FetchChunks { indexes, .. } => indexes.first().copied(),
        _ => None,
    };
    let seed = asked.is_none();
    if let Some((throttle, len)) = cap {
        throttle.take(len).await;
    }
    let begun = Instant::now();
    let mut booked = asked;
    let mut declined = 0;
    let run = async {
        let mut call = Call::open(&*conn, request, timeout).await?;
        // The chunk's bytes stay in the buffer they arrived in, on to the
        // store.
        let incoming = if seed {
            let mut take = |i: u32| {
                let mut st = t.st();
                let at = i as usize;
                if at >= st.have.len() {
                    return true; // refused as out of range on arrival
                }
                if st.have.get(at) || st.requested.get(at) {
                    declined = i;
                    return false;
                }
                st.requested.set(at);
                booked = Some(i);
                true
            };
            call.next_chunk_if(&mut take).await?
        } else {
            Some(call.next_incoming().await?)
        };
        let (got, bytes) = match incoming {
            Some(Incoming::Chunk { index, bytes }) => (index, bytes),
            Some(Incoming::Frame(other)) => return Err(unexpected(&from, "a chunk", &other)),
            None => return Ok(None),
        };
        if asked.is_some_and(|i| i != got) {
            return Err(Error::protocol(format!(
                "peer {} sent chunk {got} for chunk {}",
                from.short(),
                asked.unwrap_or_default()
            )));
        }
        match call.next().await? {
            Frame::Done(Reply::Ok) => Ok(Some((got, bytes))),
            other => Err(unexpected(&from, "the end of the chunks", &other)),
        }
    };
    let result = run.await;
    match result {
        Ok(Some((index, bytes))) => Fetched::Chunk {
            from,
            index,
            bytes,
            seed,
            booked,
            took: begun.elapsed(),
        },
        Ok(None) => Fetched::Declined { index: declined },
        Err(error) => Fetched::Failed {
            from,
            seed,
            booked,
            error,
        },
    }
}

/// Fetches every chunk of `t` that the node lacks, from `seed` (which
/// answers [`Request::FetchAny`]) and from sessions with `peers` (and any
/// peer that opens one to us), until the deadline. `progress` hears the
/// bytes held as they grow.
pub(crate) async fn fetch<H: Host>(
    host: &H,
    t: &Arc<Transfer>,
    seed: Option<Arc<dyn Connection>>,
    peers: Vec<PeerAddr>,
    deadline: Instant,
    progress: &mut (dyn FnMut(u64) + Send),
) -> Result<()> {
    let cfg = host.swarm_config().clone();
    let rep = host.reputation();
    let package = t.id;
    let total = t.d.archive_size;
    if t.have().is_full() {
        progress(total);
        return Ok(());
    }
    if seed.is_none() && peers.is_empty() && t.neighbors() == 0 {
        return Err(Error::invalid(
            "transfer",
            "chunks are missing and there is no peer to fetch them from",
        ));
    }
    progress(t.have_bytes());
    if cfg.sites {
        take_site_role(host, t, &peers);
    }
    if let Some(conn) = &seed
        && let Err(e) = open_session(host, t, conn.clone(), true).await
    {
        tracing::debug!(peer = %conn.remote_id().short(), error = %e, "no session with the seed");
    }
    dial_peers(host, t, peers, cfg.dial, deadline);

    let mut inflight: JoinSet<Fetched> = JoinSet::new();
    let mut seed_inflight = 0usize;
    let mut seed_rest_until: Option<Instant> = None;
    let mut seed_alive = seed.is_some();
    let mut last_shown = 0u64;
    let begun = Instant::now();
    let mut alone_since: Option<Instant> = None;
    // The last chunk stored: a transfer that moves is not given up on.
    let mut last_progress = Instant::now();
    // Chunks received from each source, for the log line at the end.
    let mut sources: BTreeMap<PeerId, u32> = BTreeMap::new();
    // Chunks that came bad, and from whom.
    let mut bad = BadChunks::default();
    let seed_id = seed.as_ref().map(|c| c.remote_id());
    // Chunks that arrived twice, and the seed's choices declined at their
    // header (held already, or on their way from a neighbour).
    let (mut duplicates, mut declined) = (0u32, 0u32);
    loop {
        if t.have().is_full() {
            if last_shown != total {
                progress(total);
            }
            let from_seed = seed_id.and_then(|s| sources.get(&s)).copied().unwrap_or(0);
            let peers: Vec<String> = sources
                .iter()
                .filter(|(p, _)| Some(**p) != seed_id)
                .map(|(p, n)| format!("{}={n}", p.short()))
                .collect();
            tracing::info!(
                app = %t.d.manifest.name,
                version = %t.d.manifest.version,
                from_seed,
                from_peers = %peers.join(","),
                duplicates,
                seed_declined = declined,
                "release fetched"
            );
            return Ok(());
        }
        let now = Instant::now();
        let seed_usable = seed_alive && seed_id.is_some_and(|s| !rep.is_banned(&s));
        // A chunk that came bad and that no usable source can still give:
        // the release cannot be completed, so say which chunk and who.
        // Without a seed (a fetch from peers), holders still being dialed
        // get the no-source grace first.
        let settled = seed.is_some() || (inflight.is_empty() && now - begun >= NO_SOURCE_GRACE);
        if settled
            && let Some((i, from)) = bad.unobtainable(t, rep, seed_id.filter(|_| seed_usable))
        {
            t.close();
            let who = if Some(from) == seed_id {
                " (the sender of the release)"
            } else {
                ""
            };
            return Err(Error::protocol(format!(
                "chunk {i} of {} {} does not match its hash as sent by peer {}{who}, and no \
                 other source holds it ({} of {} chunks held)",
                t.d.manifest.name,
                t.d.manifest.version,
                from.short(),
                t.have().count(),
                t.d.chunks.len()
            )));
        }
        // No usable seed, and a missing chunk that no neighbour holds
        // (with no neighbour at all, every one): give up after a while
        // without progress.
        // Dials in progress get that long to bring a holder; less once
        // the seed is known to be gone, as then the chunk may be nowhere.
        let orphan = if seed_usable {
            None
        } else {
            orphan_chunk(t, rep)
        };
        // The wait starts over whenever a chunk arrives, and only runs
        // while nothing is on its way: neighbours that are still fetching
        // announce what they get.
        if let Some(i) = orphan.filter(|_| inflight.is_empty()) {
            let since = (*alone_since.get_or_insert(now)).max(last_progress);
            let grace = if seed.is_some() {
                SEED_GONE_GRACE
            } else {
                NO_SOURCE_GRACE
            };
            if now - since >= grace {
                t.close();
                let seed = match seed_id {
                    Some(s) => format!(
                        "the sender of the release (peer {}) is gone and ",
                        s.short()
                    ),
                    None => String::new(),
                };
                return Err(Error::unreachable(format!(
                    "no peer holding chunk {i} of {} {} can be reached: {seed}none of the {} \
                     peer(s) connected holds it ({} of {} chunks held)",
                    t.d.manifest.name,
                    t.d.manifest.version,
                    usable_neighbors(t, rep),
                    t.have().count(),
                    t.d.chunks.len()
                )));
            }
        } else {
            alone_since = None;
        }
        if now >= deadline {
            t.close();
            return Err(Error::timeout(
                format!(
                    "fetching the chunks of {} {}",
                    t.d.manifest.name, t.d.manifest.version
                ),
                now - begun,
            ));
        }
        // Seed: "any chunk" requests, a few at a time.
        if let Some(conn) = &seed
            && seed_usable
            && seed_rest_until.is_none_or(|u| now >= u)
        {
            while seed_inflight < cfg.seed_inflight {
                // Chunks the seed sent bad count as held: it would only
                // send them bad again.
                let have = {
                    let st = t.st();
                    let mut have = st.have.union(&st.requested);
                    for i in bad.sent_bad_by(seed_id) {
                        have.set(i);
                    }
                    have
                };
                seed_inflight += 1;
                let request = Request::FetchAny { package, have };
                let timeout = (deadline - now).min(cfg.chunk_timeout.max(SEED_WAIT));
                let cap = host
                    .download_limit()
                    .map(|limit| (limit, u64::from(t.d.max_chunk_size())));
                inflight.spawn(fetch_one(t.clone(), conn.clone(), request, timeout, cap));
            }
        }
        request_chunks(host, t, &cfg, &mut inflight, deadline);
        tokio::select! {
            biased;
            Some(done) = inflight.join_next() => {
                let Ok(done) = done else { continue };
                match done {
                    Fetched::Chunk { from, index, bytes, seed: is_seed, booked, took } => {
                        finish_request(t, from, is_seed, &mut seed_inflight);
                        if !is_seed {
                            adapt(t, &cfg, from, Some(took));
                        }
                        let i = index as usize;
                        let len = bytes.len();
                        if t.st().have.get(i) {
                            unbook(t, booked);
                            host.metrics().duplicate(is_seed, len);
                            duplicates += 1;
                            continue;
                        }
                        let stored = host.chunks().put_bytes(&t.d, i, bytes).await;
                        if stored.is_err() {
                            unbook(t, booked);
                        }
                        match stored {
                            Ok(()) => {
                                host.metrics().chunks_verified.inc();
                                host.metrics().chunk("received", is_seed, len);
                                if !is_seed {
                                    rep.good(from);
                                }
                                t.got(i);
                                last_progress = Instant::now();
                                *sources.entry(from).or_default() += 1;
                                let have = t.have_bytes();
                                // Progress at most every 1% of the size.
                                if have - last_shown >= total / 100 || have == total {
                                    last_shown = have;
                                    progress(have);
                                }
                            }
                            Err(ChunkError::OutOfRange { .. }) => {
                                tracing::debug!(peer = %from.short(), index, "a chunk out of range");
                                host.metrics().refused("out_of_range");
                                rep.corrupt(from);
                            }
                            Err(e @ ChunkError::Corrupt { .. }) => {
                                if bad.first_from(from) {
                                    tracing::warn!(peer = %from.short(), index, error = %e, "a bad chunk");
                                } else {
                                    tracing::debug!(peer = %from.short(), index, error = %e, "a bad chunk");
                                }
                                host.metrics().refused("corrupt");
                                bad.record(i, from);
                                // The seed is not asked again for it
                                // (`bad`); its standing is left alone, so
                                // that one bad package does not ban a
                                // controller from later, good deploys.
                                if !is_seed {
                                    rep.corrupt(from);
                                }
                            }
                            Err(ChunkError::Store(e)) => {
                                t.close();
                                return Err(e);
                            }
                        }
                    }
                    Fetched::Failed { from, seed: is_seed, booked, error } => {
                        finish_request(t, from, is_seed, &mut seed_inflight);
                        unbook(t, booked);
                        if is_seed {
                            match &error {
                                Error::NotFound { .. } | Error::Busy { .. } => {
                                    seed_rest_until = Some(Instant::now() + SEED_REST);
                                }
                                e => {
                                    tracing::info!(error = %e, "the seed is gone; going on with peers");
                                    seed_alive = false;
                                }
                            }
                        } else {
                            adapt(t, &cfg, from, None);
                            tracing::debug!(peer = %from.short(), error = %error, "a chunk request failed");
                            match error {
                                Error::Protocol { .. } => rep.corrupt(from),
                                // At its upload cap: no fault, ask it later.
                                Error::Busy { .. } => {
                                    if let Some(n) = t.st().neighbors.get_mut(&from) {
                                        n.rest_until = Some(Instant::now() + BUSY_REST);
                                    }
                                }
                                _ => rep.failed(from),
                            }
                        }
                    }
                    Fetched::Declined { index } => {
                        seed_inflight = seed_inflight.saturating_sub(1);
                        tracing::trace!(index, "the seed's choice is held or on its way: declined");
                        declined += 1;
                    }
                }
            }
            () = t.wake.notified() => {}
            () = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
    }
}

/// Frees the chunk a request booked (it did not end stored), for another
/// source.
fn unbook(t: &Transfer, booked: Option<u32>) {
    if let Some(i) = booked {
        t.st().requested.clear(i as usize);
    }
}

/// How long the seed is left alone after it had nothing to send or was
/// busy.
const SEED_REST: Duration = Duration::from_millis(200);

/// Books a finished request: a chunk asked of neighbour `from`, or an
/// "any chunk" request to the seed (`seed`). The chunk it booked stays
/// booked until it is stored ([`Transfer::got`]) or [`unbook`]ed.
fn finish_request(t: &Transfer, from: PeerId, seed: bool, seed_inflight: &mut usize) {
    if seed {
        *seed_inflight = seed_inflight.saturating_sub(1);
        return;
    }
    let mut st = t.st();
    if let Some(n) = st.neighbors.get_mut(&from) {
        n.inflight = n.inflight.saturating_sub(1);
    }
}

/// Moves `from`'s request window after a chunk request to it ended: a
/// failure (or a busy answer) closes it to one; a chunk that came faster
/// than this node's typical fetch widens it again, up to
/// [`SwarmConfig::per_peer`], and one that took more than twice as long
/// narrows it. Requests go where they are served soonest.
fn adapt(t: &Transfer, cfg: &SwarmConfig, from: PeerId, took: Option<Duration>) {
    let mut st = t.st();
    let st = &mut *st;
    let max = cfg.per_peer.max(1) as f64;
    let Some(n) = st.neighbors.get_mut(&from) else {
        return;
    };
    let window = n.window.get_or_insert(max);
    let Some(took) = took.map(|d| d.as_secs_f64()) else {
        *window = 1.0;
        return;
    };
    let typical = *st.typical.get_or_insert(took);
    if took < typical {
        *window = (*window + 0.5).min(max);
    } else if took > 2.0 * typical {
        *window = (*window - 1.0).max(1.0);
    }
    st.typical = Some(typical * 0.9 + took * 0.1);
}

/// How often a neighbour's path (direct or relayed) is looked at again:
/// hole punching can turn a relayed connection direct after a while.
const PATH_RECHECK: Duration = Duration::from_secs(1);

/// With the node's site known: the chunks this node brings into its site
/// from other sites. Each chunk goes to one node of the site's peers in
/// the deploy (this node and those of `peers` at its site): the one whose
/// hash of (its id, the chunk) is highest, so every node of the site
/// computes the same split without talking (rendezvous hashing).
fn take_site_role<H: Host>(host: &H, t: &Transfer, peers: &[PeerAddr]) {
    let Some(site) = host.site() else { return };
    let me = host.local_id();
    let mut roster: Vec<PeerId> = peers
        .iter()
        .filter(|p| p.id != me && host.site_of(&p.id).as_deref() == Some(site.as_str()))
        .map(|p| p.id)
        .collect();
    roster.sort();
    roster.dedup();
    let n = t.d.chunks.len();
    let mut designated = Bitfield::new(n);
    roster.push(me);
    for i in 0..n {
        if schedule::designee(&roster, i) == Some(me) {
            designated.set(i);
        }
    }
    let mut st = t.st();
    if st.site.is_none() {
        tracing::debug!(
            %site,
            peers_at_site = roster.len(),
            designated = designated.count(),
            "fetching by site"
        );
        st.site = Some(SiteRole {
            site,
            designated,
            site_held: 0,
            last_news: None,
        });
    }
}

/// Asks neighbours for the chunks the [scheduler](schedule::plan) picks,
/// each request a task in `inflight`, after looking again at which
/// neighbours are reached through a relay.
fn request_chunks<H: Host>(
    host: &H,
    t: &Arc<Transfer>,
    cfg: &SwarmConfig,
    inflight: &mut JoinSet<Fetched>,
    deadline: Instant,
) {
    let mut st = t.st();
    let st = &mut *st;
    let now = Instant::now();
    for n in st.neighbors.values_mut() {
        if now >= n.path_checked + PATH_RECHECK {
            n.relayed = n.conn.path().kind == PathKind::Relayed;
            n.path_checked = now;
        }
    }
    if let Some(role) = &st.site {
        for (id, n) in st.neighbors.iter_mut().filter(|(_, n)| n.remote.is_none()) {
            n.remote = Some(host.site_of(id).is_some_and(|theirs| theirs != role.site));
        }
    }
    let wanted = schedule::plan(st, cfg, host.reputation(), now, |k| host.random(k));
    for (peer, i) in wanted {
        let Some(n) = st.neighbors.get(&peer) else {
            continue;
        };
        let request = Request::FetchChunks {
            package: t.id,
            indexes: vec![i as u32],
        };
        let timeout = cfg
            .chunk_timeout
            .min(deadline.saturating_duration_since(now));
        let cap = host
            .download_limit()
            .map(|limit| (limit, chunk_len(&t.d, i)));
        inflight.spawn(fetch_one(t.clone(), n.conn.clone(), request, timeout, cap));
    }
}
