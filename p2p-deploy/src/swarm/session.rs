//! Swarm sessions: two nodes exchange have-maps and announce each chunk
//! as it arrives; a target dials peers until it has enough neighbours.

use std::collections::{BTreeSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use p2p_core::framing::{Framed, read_frame_bytes, write_frame};
use p2p_core::sync::lock;
use p2p_core::{Connection, Error, PathKind, PeerAddr, RecvStream, Result, SendStream};
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::host::Host;
use super::schedule::shuffle;
use super::transfer::{DIALS_AT_ONCE, Neighbor, Transfer};
use crate::proto::{
    Bitfield, Call, ErrorKind, Frame, MAX_FRAME, Request, RpcError, end_with, unexpected,
};

/// How long a session may last.
const SESSION_MAX: Duration = Duration::from_secs(30 * 60);

/// Opens a swarm session to `conn` for `t`: sends our have-map, reads
/// theirs, and runs the session in the background.
pub(crate) async fn open_session<H: Host>(
    host: &H,
    t: &Arc<Transfer>,
    conn: Arc<dyn Connection>,
    seed: bool,
) -> Result<()> {
    let timeout = Duration::from_secs(10);
    let mut call = Call::open(
        &*conn,
        Request::Swarm {
            package: t.id,
            have: t.have(),
        },
        timeout,
    )
    .await?;
    let theirs = match call.next().await? {
        Frame::Have(b) => b,
        other => return Err(unexpected(&conn.remote_id(), "a have-map", &other)),
    };
    theirs.check(t.d.chunks.len())?;
    let (send, recv) = call.into_framed().into_parts();
    host.spawn(Box::pin(session(t.clone(), conn, send, recv, theirs, seed)));
    Ok(())
}

/// Answers a [`Request::Swarm`] on a node: our have-map, then the session.
pub(crate) async fn serve_session(
    t: Arc<Transfer>,
    conn: Arc<dyn Connection>,
    mut framed: Framed,
    theirs: Bitfield,
    max_neighbors: usize,
) {
    let refused = match theirs.check(t.d.chunks.len()) {
        Err(e) => Some(RpcError::from_error(&e)),
        Ok(()) if t.neighbors() >= max_neighbors => Some(RpcError::new(
            ErrorKind::Busy,
            format!("this node has {max_neighbors} neighbours for that release already"),
        )),
        Ok(()) => None,
    };
    if let Some(e) = refused {
        end_with(&mut framed, Frame::Error(e)).await;
        return;
    }
    if framed.send(&Frame::Have(t.have())).await.is_err() {
        return;
    }
    let (send, recv) = framed.into_parts();
    session(t, conn, send, recv, theirs, false).await;
}

/// One session, either side: our announcements out, theirs in, until both
/// sides hold everything, either side closes, or the transfer is closed.
async fn session(
    t: Arc<Transfer>,
    conn: Arc<dyn Connection>,
    mut send: SendStream,
    mut recv: RecvStream,
    theirs: Bitfield,
    seed: bool,
) {
    let peer = conn.remote_id();
    let len = t.d.chunks.len();
    let relayed = conn.path().kind == PathKind::Relayed;
    let (tx, mut rx) = mpsc::unbounded_channel();
    {
        let mut st = t.st();
        if st.closed {
            return;
        }
        st.subs.push(tx);
        let st = &mut *st;
        let n = st.neighbors.entry(peer).or_insert_with(|| Neighbor {
            conn: conn.clone(),
            have: Bitfield::new(len),
            inflight: 0,
            sessions: 0,
            seed,
            rest_until: None,
            window: None,
            relayed,
            path_checked: Instant::now(),
            remote: None,
        });
        n.sessions += 1;
        n.seed |= seed;
        for i in theirs.ones() {
            if n.have.set(i) {
                st.counts[i] += 1;
            }
        }
    }
    t.wake.notify_one();
    let both_full = |t: &Transfer| {
        let st = t.st();
        st.have.is_full() && st.neighbors.get(&peer).is_some_and(|n| n.have.is_full())
    };
    let reader = async {
        let mut buf = Vec::new();
        loop {
            if both_full(&t) {
                return;
            }
            match read_frame_bytes(&mut recv, &mut buf, MAX_FRAME).await {
                Ok(true) => {}
                _ => return,
            }
            let Ok(Frame::Got(i)) = p2p_core::framing::decode::<Frame>(&buf) else {
                tracing::debug!(peer = %peer.short(), "unexpected frame in a swarm session");
                return;
            };
            let i = i as usize;
            if i >= len {
                return;
            }
            {
                let mut st = t.st();
                let st = &mut *st;
                if let Some(n) = st.neighbors.get_mut(&peer)
                    && n.have.set(i)
                {
                    st.counts[i] += 1;
                }
            }
            t.wake.notify_one();
        }
    };
    let writer = async {
        loop {
            if both_full(&t) {
                let _ = send.shutdown().await;
                // Let the peer read to the end before we go.
                std::future::pending::<()>().await;
            }
            let Some(i) = rx.recv().await else {
                let _ = send.shutdown().await;
                return;
            };
            if write_frame(&mut send, &Frame::Got(i), MAX_FRAME)
                .await
                .is_err()
                || send.flush().await.is_err()
            {
                return;
            }
        }
    };
    tokio::select! {
        () = reader => {}
        () = writer => {}
        () = tokio::time::sleep(SESSION_MAX) => {}
    }
    {
        let mut st = t.st();
        let st = &mut *st;
        if let Some(n) = st.neighbors.get_mut(&peer) {
            n.sessions -= 1;
            if n.sessions == 0
                && let Some(n) = st.neighbors.remove(&peer)
            {
                for i in n.have.ones() {
                    st.counts[i] -= 1;
                }
            }
        }
    }
    t.wake.notify_one();
}

/// Opens sessions to `peers` (in random order, [`DIALS_AT_ONCE`] at a
/// time, in the background) until the transfer has `want` neighbours
/// besides the seed; a peer that does not know the release yet (its
/// deploy is still on the way) is asked again a few times.
pub(super) fn dial_peers<H: Host>(
    host: &H,
    t: &Arc<Transfer>,
    mut peers: Vec<PeerAddr>,
    want: usize,
    deadline: Instant,
) {
    let me = host.local_id();
    peers.retain(|p| p.id != me);
    let mut seen = BTreeSet::new();
    peers.retain(|p| seen.insert(p.id));
    shuffle(&mut peers, |k| host.random(k));
    if host.swarm_config().sites
        && let Some(site) = host.site()
    {
        // A couple of neighbours at other sites first (the chunks this
        // node brings into its site come from them), then its own site's.
        let (mut remote, local): (Vec<PeerAddr>, Vec<PeerAddr>) = peers
            .into_iter()
            .partition(|p| host.site_of(&p.id).is_some_and(|s| s != site));
        let rest = remote.split_off(remote.len().min(REMOTE_DIALS));
        peers = remote.into_iter().chain(local).chain(rest).collect();
    }
    let queue = Arc::new(Mutex::new(VecDeque::from(peers)));
    for _ in 0..DIALS_AT_ONCE.min(want) {
        let (host2, t, queue) = (host.clone(), t.clone(), queue.clone());
        host.spawn(Box::pin(async move {
            loop {
                let next = lock(&queue).pop_front();
                let Some(addr) = next else { return };
                // Neighbours through a relay count for little: keep
                // dialing until enough are direct (or twice as many in
                // all).
                let enough = t.direct_peers() >= want || t.peers() >= 2 * want;
                if t.st().closed || Instant::now() >= deadline || enough {
                    return;
                }
                join_peer(&host2, &t, addr, deadline).await;
            }
        }));
    }
}

/// Neighbours at other sites a node dials first, when it knows sites.
const REMOTE_DIALS: usize = 2;

/// Dials one peer and opens a session with it, unless it is banned or a
/// neighbour already.
async fn join_peer<H: Host>(host: &H, t: &Arc<Transfer>, addr: PeerAddr, deadline: Instant) {
    let id = addr.id;
    if host.reputation().is_banned(&id) {
        return;
    }
    if t.st().neighbors.contains_key(&id) {
        return; // it opened one to us
    }
    let conn = match host.dial(addr).await {
        Ok(c) => c,
        Err(e) => {
            tracing::debug!(peer = %id.short(), error = %e, "cannot reach a swarm peer");
            return;
        }
    };
    for _ in 0..50 {
        match open_session(host, t, conn.clone(), false).await {
            Ok(()) => return,
            Err(Error::NotFound { .. }) if Instant::now() < deadline => {
                // Its deploy has not reached it yet.
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => {
                tracing::debug!(peer = %id.short(), error = %e, "no swarm session");
                return;
            }
        }
    }
}
