//! The controller's chunk server: while a rollout runs, targets fetch the
//! release's chunks, its descriptor and "any chunk" from the controller,
//! which seeds the swarm.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use futures::future::BoxFuture;
use p2p_core::framing::Framed;
use p2p_core::sync::lock;
use p2p_core::{Connection, Error, Result};

use crate::package::{PackageId, Release};
use crate::proto::{
    ErrorKind, Frame, MAX_FRAME, Reply, Request, RpcError, accept_request, end_with, send_chunks,
};
use crate::swarm::Seed;

/// The releases a controller serves, each with the number of rollouts
/// that use it.
pub(super) type Served = Arc<Mutex<BTreeMap<PackageId, (Arc<Seeding>, usize)>>>;

/// A release being served, with what the seed knows of its spread.
pub(super) struct Seeding {
    release: Arc<Release>,
    seed: Seed,
}

/// Serves a release while a rollout runs; the last one to end stops it.
pub(super) struct Serving {
    served: Served,
    id: PackageId,
}

impl Serving {
    pub(super) fn new(served: &Served, release: &Arc<Release>, seed: u64) -> Self {
        let id = release.id();
        lock(served)
            .entry(id)
            .or_insert_with(|| {
                let seeding = Seeding {
                    release: release.clone(),
                    seed: Seed::new(release.descriptor.clone(), seed),
                };
                (Arc::new(seeding), 0)
            })
            .1 += 1;
        Serving {
            served: served.clone(),
            id,
        }
    }
}

impl Serving {
    /// Tells the seed each target's site (see `Seed::set_sites`).
    pub(super) fn set_sites(&self, sites: &BTreeMap<p2p_core::PeerId, String>) {
        if let Some((seeding, _)) = lock(&self.served).get(&self.id) {
            seeding.seed.set_sites(sites);
        }
    }
}

impl Drop for Serving {
    fn drop(&mut self) {
        let mut served = lock(&self.served);
        if let Some((_, users)) = served.get_mut(&self.id) {
            *users -= 1;
            if *users == 0 {
                served.remove(&self.id);
            }
        }
    }
}

/// Serves a target on a controller's connection until it closes: chunk
/// fetches, swarm sessions, "any chunk" requests and descriptors
/// ([`Request::Release`]) for the releases being deployed.
pub(super) async fn serve_chunks(conn: Arc<dyn Connection>, releases: Served) {
    let peer = conn.remote_id();
    while let Ok((send, recv)) = conn.accept_bi().await {
        let releases = releases.clone();
        tokio::spawn(async move {
            let mut framed = Framed::with_max(send, recv, MAX_FRAME);
            let Some((env, _)) = accept_request(&mut framed, &peer).await else {
                return;
            };
            let package = match &env.request {
                Request::FetchChunks { package, .. }
                | Request::Swarm { package, .. }
                | Request::FetchAny { package, .. }
                | Request::Release { package } => *package,
                other => {
                    let e = RpcError::new(
                        ErrorKind::Invalid,
                        format!("{} is not served by a controller", other.kind()),
                    );
                    end_with(&mut framed, Frame::Error(e)).await;
                    return;
                }
            };
            let served = lock(&releases).get(&package).map(|(s, _)| s.clone());
            let Some(s) = served else {
                // To a seed's "any chunk" request: Unreachable, not
                // NotFound, so that the node stops asking this seed rather
                // than wait and ask again.
                let kind = if matches!(env.request, Request::FetchAny { .. }) {
                    ErrorKind::Unreachable
                } else {
                    ErrorKind::NotFound
                };
                let e = RpcError::new(
                    kind,
                    format!("release {package} is not served here (any more)"),
                );
                end_with(&mut framed, Frame::Error(e)).await;
                return;
            };
            match env.request {
                Request::FetchChunks { indexes, .. } => {
                    let r = &s.release;
                    let end = send_chunks(&mut framed, &package, &indexes, |i| {
                        read_chunk(r.clone(), i as usize)
                    })
                    .await;
                    end_with(&mut framed, end).await;
                }
                Request::Swarm { have, .. } => s.seed.session(peer, framed, have).await,
                Request::FetchAny { have, .. } => {
                    let r = s.release.clone();
                    let read = move |i| read_chunk(r, i);
                    if let Some(end) = s.seed.fetch_any(peer, &mut framed, have, read).await {
                        end_with(&mut framed, end).await;
                    }
                }
                Request::Release { .. } => {
                    let reply = Reply::Release {
                        descriptor: s.release.descriptor_bytes.clone(),
                        signatures: s.release.signatures.clone(),
                    };
                    end_with(&mut framed, Frame::Done(reply)).await;
                }
                _ => {}
            }
        });
    }
}

/// Chunk `i` of `r`; a package file is read off the async threads.
fn read_chunk(r: Arc<Release>, i: usize) -> BoxFuture<'static, Result<Option<Vec<u8>>>> {
    Box::pin(async move {
        if r.in_memory() {
            return r.chunk(i).map(Some);
        }
        tokio::task::spawn_blocking(move || r.chunk(i))
            .await
            .map_err(|e| Error::io("reading a chunk", std::io::Error::other(e)))?
            .map(Some)
    })
}
