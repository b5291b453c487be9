//! Getting a release onto the node: its descriptor from peers (checked
//! against the release id and the trust store), its chunks through the
//! swarm, a fetch ahead of a deploy, and the cleanup when the disk fills.

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use p2p_core::sync::lock;
use p2p_core::{Connection, Error, PeerAddr, PeerId, Result};

use super::error::DeployError;
use super::{Agent, Events, Res, emit, not_found, rpc};
use crate::chunks::ChunkStore;
use crate::package::{Descriptor, PackageId};
use crate::proto::{DeployEvent, ErrorKind, Reply, Request, RpcError};
use crate::swarm::{self, Reputation, SwarmConfig, Throttle, Transfer};

/// How long a node waits for one peer's answer to [`Request::Release`]:
/// when fetching a release, and when looking for a [`Request::DeployRef`]'s
/// descriptor (where the sender is asked if the peers named are slow).
const DESCRIPTOR_WAIT: Duration = Duration::from_secs(30);
const DESCRIPTOR_REF_WAIT: Duration = Duration::from_secs(5);

/// For a [`Request::DeployRef`]: how many times the holders named are
/// asked for the descriptor before the sender is, and the rest between.
const DESCRIPTOR_ROUNDS: usize = 4;
const DESCRIPTOR_REST: Duration = Duration::from_millis(100);
/// Whether `e` is a write that failed for want of disk space.
pub(super) fn no_space(e: &Error) -> bool {
    match e {
        Error::Io { source, .. } => {
            source.kind() == std::io::ErrorKind::StorageFull
                || source.kind() == std::io::ErrorKind::QuotaExceeded
                || source.raw_os_error() == Some(28)
        }
        _ => false,
    }
}

/// Where a deploy's chunks come from.
pub(super) struct Sources {
    /// The sender, a seed answering fetch-any (the controller).
    pub(super) seed: Option<Arc<dyn Connection>>,
    /// Other nodes of the swarm.
    pub(super) peers: Vec<PeerAddr>,
}

impl swarm::Host for Agent {
    fn chunks(&self) -> &ChunkStore {
        &self.inner.chunks
    }

    fn metrics(&self) -> &crate::metrics::DeployMetrics {
        &self.inner.metrics
    }

    fn reputation(&self) -> &Reputation {
        &self.inner.swarm.reputation
    }

    fn swarm_config(&self) -> &SwarmConfig {
        &self.inner.cfg.swarm
    }

    fn download_limit(&self) -> Option<Arc<Throttle>> {
        self.inner.swarm.download.clone()
    }

    fn local_id(&self) -> PeerId {
        self.inner.parts.provider.local_id()
    }

    fn random(&self, n: usize) -> usize {
        self.inner.swarm.random(n)
    }

    fn spawn(&self, f: BoxFuture<'static, ()>) {
        let _ = self.inner.background.send(f);
    }

    fn dial(&self, addr: PeerAddr) -> BoxFuture<'static, Result<Arc<dyn Connection>>> {
        let me = self.clone();
        Box::pin(async move { me.dial_peer(addr).await })
    }

    fn site(&self) -> Option<String> {
        self.inner.cfg.labels.get("site").cloned()
    }

    fn site_of(&self, peer: &PeerId) -> Option<String> {
        self.inner.membership.get()?.site_of(peer)
    }
}

impl Agent {
    /// Checks `signatures` over `d` against the trust store and returns
    /// those that counted: what the node keeps and passes on to peers that
    /// fetch the release from it, not whatever else came along.
    pub(super) fn trusted(
        &self,
        d: &Descriptor,
        signatures: &[p2p_core::Signature],
    ) -> std::result::Result<Vec<p2p_core::Signature>, crate::trust::VerifyError> {
        let counted = self.inner.cfg.trust.check(d, signatures)?;
        Ok(signatures
            .iter()
            .filter(|s| counted.contains(&s.key))
            .cloned()
            .collect())
    }

    /// The transfer of `d`: the one registered (a fetch in progress),
    /// else a new one over the chunks held,
    /// registered so that sessions opened from now on share it. Call it
    /// before storing the release, so that no session finds the release
    /// without finding the transfer.
    pub(super) async fn transfer(&self, d: &Descriptor) -> Result<Arc<Transfer>> {
        if let Some(t) = self.inner.swarm.receiving(&d.id()) {
            return Ok(t);
        }
        let t = Transfer::from_store(d.clone(), &self.inner.chunks).await?;
        Ok(lock(&self.inner.swarm.transfers)
            .entry(d.id())
            .or_insert(t)
            .clone())
    }

    /// Fetches what the node lacks of `t`'s release through the swarm.
    /// However it ends (done, failed, or dropped at a caller's deadline)
    /// the transfer is unregistered, and closed unless complete, so the
    /// next attempt starts from the chunks stored with no stale bookings.
    pub(super) async fn fetch(
        &self,
        t: Arc<Transfer>,
        sources: Sources,
        events: Option<&Events>,
        deadline: tokio::time::Instant,
    ) -> std::result::Result<(), DeployError> {
        struct Unregister<'a>(&'a Agent, Arc<Transfer>);
        impl Drop for Unregister<'_> {
            fn drop(&mut self) {
                let t = &self.1;
                let mut transfers = lock(&self.0.inner.swarm.transfers);
                if transfers.get(&t.id).is_some_and(|r| Arc::ptr_eq(r, t)) {
                    transfers.remove(&t.id);
                }
                drop(transfers);
                if !t.have().is_full() {
                    t.close();
                }
            }
        }
        let _unregister = Unregister(self, t.clone());
        let d = &t.d;
        let total = d.archive_size;
        let mut progress = |bytes: u64| emit(events, DeployEvent::Transfer { bytes, total });
        let result = swarm::fetch(
            self,
            &t,
            sources.seed,
            sources.peers,
            deadline,
            &mut progress,
        )
        .await;
        match result {
            Ok(()) => Ok(()),
            Err(e) if no_space(&e) => Err(self.out_of_space(d, e).await),
            Err(source) => Err(DeployError::Transfer {
                release: format!("{} {}", d.manifest.name, d.manifest.version),
                source,
            }),
        }
    }

    /// A release that ran out of disk space on the way in: its chunks
    /// (those no other release holds) are removed, so that the disk is as
    /// it was before the deploy and the apps running keep their room (for
    /// their logs, say); the error names what could not be written.
    pub(super) async fn out_of_space(&self, d: &Descriptor, source: Error) -> DeployError {
        let id = d.id();
        let freed = match self.inner.chunks.remove_release(&id).await {
            Ok(_) => self.inner.chunks.collect().await,
            Err(e) => Err(e),
        };
        let cleanup = match freed {
            Ok(n) => format!("its {n} chunk(s) received were removed"),
            Err(c) => format!("removing what was received failed too: {c}"),
        };
        DeployError::OutOfSpace {
            release: format!("{} {}", d.manifest.name, d.manifest.version),
            source,
            cleanup,
        }
    }

    /// Answers [`Request::Fetch`]: the release's descriptor and
    /// signatures from one of `from` (checked against the trust store),
    /// then its chunks from all of them through the swarm. The release is
    /// kept, not installed.
    pub(super) async fn fetch_release(
        &self,
        package: &PackageId,
        from: Vec<PeerAddr>,
        events: Option<&Events>,
        timeout: Duration,
    ) -> std::result::Result<Reply, DeployError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let me = self.inner.parts.provider.local_id();
        let from: Vec<PeerAddr> = from.into_iter().filter(|a| a.id != me).collect();
        let work = async {
            let t = match self.inner.chunks.release(package).await? {
                Some(d) => self.transfer(&d).await?,
                None => {
                    let (d, signatures) = self.release_from(package, &from).await?;
                    let m = &d.manifest;
                    // Kept only to be installed later: never below a
                    // version already installed.
                    if let Some(rec) = self.load(&m.name).await? {
                        rec.check_not_below(m)?;
                    }
                    let t = self.transfer(&d).await?;
                    self.inner.chunks.add_release(&d).await?;
                    self.inner
                        .chunks
                        .add_signatures(package, &signatures)
                        .await?;
                    tracing::info!(app = %m.name, version = %m.version, "fetching a release from peers");
                    t
                }
            };
            let sources = Sources {
                seed: None,
                peers: from.clone(),
            };
            self.fetch(t, sources, events, deadline).await
        };
        tokio::time::timeout_at(deadline, work)
            .await
            .map_err(|_| DeployError::TimedOut {
                what: format!("fetching release {package}"),
                after: timeout,
            })??;
        let entry = self
            .catalog()
            .await?
            .into_iter()
            .filter(|e| e.id == *package)
            .collect();
        Ok(Reply::Catalog(entry))
    }

    /// The descriptor and signatures of `package` from the first of
    /// `from` that holds it and whose copy passes the trust store. When
    /// none does, the error names what went wrong with each peer (its
    /// kind: a refused signature if any peer's copy was refused, else the
    /// last peer's).
    pub(super) async fn release_from(
        &self,
        package: &PackageId,
        from: &[PeerAddr],
    ) -> Res<(Descriptor, Vec<p2p_core::Signature>)> {
        let mut failed: Vec<RpcError> = Vec::new();
        for addr in from {
            match self.release_from_one(package, addr).await {
                Ok(found) => return Ok(found),
                Err(e) => failed.push(e),
            }
        }
        let Some(last) = failed.last() else {
            return Err(RpcError::new(
                ErrorKind::Invalid,
                format!(
                    "release {package} is not held here and no peer to fetch it from was given"
                ),
            ));
        };
        let kind = if failed.iter().any(|e| e.kind == ErrorKind::BadSignature) {
            ErrorKind::BadSignature
        } else {
            last.kind
        };
        let all: Vec<&str> = failed.iter().map(|e| e.message.as_str()).collect();
        Err(RpcError::new(kind, all.join("; ")))
    }

    /// [`release_from`](Self::release_from), one peer.
    pub(super) async fn release_from_one(
        &self,
        package: &PackageId,
        addr: &PeerAddr,
    ) -> Res<(Descriptor, Vec<p2p_core::Signature>)> {
        let (d, signatures) = self
            .descriptor_from_peer(package, addr, DESCRIPTOR_WAIT)
            .await?;
        match self.trusted(&d, &signatures) {
            Ok(counted) => Ok((d, counted)),
            Err(e) => {
                let peer = addr.id.short();
                tracing::warn!(app = %d.manifest.name, version = %d.manifest.version, peer = %peer, error = %e, "release refused");
                Err(RpcError::new(
                    ErrorKind::BadSignature,
                    format!(
                        "{} {} from peer {peer}: {e}",
                        d.manifest.name, d.manifest.version
                    ),
                ))
            }
        }
    }

    /// The descriptor of `package` and the signatures that came with it,
    /// from the peer at `addr` (not checked against the trust store).
    pub(super) async fn descriptor_from_peer(
        &self,
        package: &PackageId,
        addr: &PeerAddr,
        wait: Duration,
    ) -> Res<(Descriptor, Vec<p2p_core::Signature>)> {
        if self.inner.swarm.reputation.is_banned(&addr.id) {
            return Err(RpcError::new(
                ErrorKind::Denied,
                format!("peer {} is banned here", addr.id.short()),
            ));
        }
        // Boxed: a request handler that dials (this) is itself served on
        // dialed connections, and an unboxed future would contain itself.
        match swarm::Host::dial(self, addr.clone()).await {
            Ok(conn) => Box::pin(self.descriptor_over(&*conn, package, wait)).await,
            Err(e) => Err(RpcError::new(
                RpcError::from_error(&e).kind,
                format!("release {package} from peer {}: {e}", addr.id.short()),
            )),
        }
    }

    /// The descriptor of `package` and its signatures, asked for with
    /// [`Request::Release`] on `conn`. A copy that does not decode, or
    /// is of another release, counts against the peer's reputation.
    pub(super) async fn descriptor_over(
        &self,
        conn: &dyn Connection,
        package: &PackageId,
        wait: Duration,
    ) -> Res<(Descriptor, Vec<p2p_core::Signature>)> {
        let id = conn.remote_id();
        let peer = id.short();
        let answer = crate::proto::call(conn, Request::Release { package: *package }, wait).await;
        let (bytes, signatures) = match answer {
            Ok(Reply::Release {
                descriptor,
                signatures,
            }) => (descriptor, signatures),
            Ok(other) => {
                return Err(RpcError::new(
                    ErrorKind::Corrupt,
                    format!("peer {peer} answered a release request with {other:?}"),
                ));
            }
            Err(e) => {
                return Err(RpcError::new(
                    RpcError::from_error(&e).kind,
                    format!("release {package} from peer {peer}: {e}"),
                ));
            }
        };
        match Descriptor::from_bytes(&bytes) {
            Ok(d) if d.id() == *package => Ok((d, signatures)),
            Ok(d) => {
                self.inner.swarm.reputation.corrupt(id);
                Err(RpcError::new(
                    ErrorKind::Corrupt,
                    format!(
                        "peer {peer} sent release {} when asked for {package}",
                        d.id()
                    ),
                ))
            }
            Err(e) => {
                self.inner.swarm.reputation.corrupt(id);
                Err(RpcError::new(
                    ErrorKind::Corrupt,
                    format!("peer {peer} sent a descriptor that does not decode: {e}"),
                ))
            }
        }
    }

    /// The descriptor of a [`Request::DeployRef`]'s release: from the
    /// store when the release is held; else from `holders`, in order, in
    /// up to [`DESCRIPTOR_ROUNDS`] rounds [`DESCRIPTOR_REST`] apart (a
    /// holder may be receiving the descriptor itself); else from the
    /// sender over `seed`. Every copy is checked against `package` (its
    /// hash), so any peer's will do; the signatures are the sender's.
    pub(super) async fn descriptor_for(
        &self,
        package: &PackageId,
        holders: &[PeerAddr],
        seed: Option<&Arc<dyn Connection>>,
    ) -> Res<Descriptor> {
        if let Some(d) = self.inner.chunks.release(package).await.map_err(rpc)? {
            return Ok(d);
        }
        let me = self.inner.parts.provider.local_id();
        let mut ask: Vec<&PeerAddr> = Vec::new();
        for a in holders {
            if a.id != me && !ask.iter().any(|b| b.id == a.id) {
                ask.push(a);
            }
        }
        // Errors of peers not asked again, and of the last round.
        let mut failed: Vec<String> = Vec::new();
        let mut last: Vec<String> = Vec::new();
        for round in 0..DESCRIPTOR_ROUNDS {
            if ask.is_empty() {
                break;
            }
            if round > 0 {
                tokio::time::sleep(DESCRIPTOR_REST).await;
            }
            last.clear();
            let mut again = Vec::new();
            for addr in ask {
                match self
                    .descriptor_from_peer(package, addr, DESCRIPTOR_REF_WAIT)
                    .await
                {
                    Ok((d, _)) => return Ok(d),
                    // Not there yet: ask again.
                    Err(e) if e.kind == ErrorKind::NotFound => {
                        again.push(addr);
                        last.push(e.message);
                    }
                    // Unreachable, banned, or sent garbage: not again.
                    Err(e) => failed.push(e.message),
                }
            }
            ask = again;
        }
        failed.append(&mut last);
        let Some(seed) = seed else {
            failed.push("and there is no sender to ask".into());
            return Err(RpcError::new(
                ErrorKind::NotFound,
                format!("no descriptor of release {package}: {}", failed.join("; ")),
            ));
        };
        if !failed.is_empty() {
            tracing::debug!(release = %package, tried = %failed.join("; "), "asking the sender for a descriptor");
        }
        match Box::pin(self.descriptor_over(&**seed, package, DESCRIPTOR_WAIT)).await {
            Ok((d, _)) => Ok(d),
            Err(e) if failed.is_empty() => Err(e),
            Err(e) => {
                failed.push(e.message);
                Err(RpcError::new(
                    e.kind,
                    format!("no descriptor of release {package}: {}", failed.join("; ")),
                ))
            }
        }
    }

    /// The transfer a swarm session is about: the registered one (a
    /// fetch in progress), or one over the chunks held of a kept release.
    pub(super) async fn transfer_for(&self, package: &PackageId) -> Res<Arc<Transfer>> {
        if let Some(t) = self.inner.swarm.receiving(package) {
            return Ok(t);
        }
        let d = self
            .inner
            .chunks
            .release(package)
            .await
            .map_err(rpc)?
            .ok_or_else(|| not_found(format!("release {package} is not held here")))?;
        Transfer::from_store(d, &self.inner.chunks)
            .await
            .map_err(rpc)
    }

    /// A connection to a swarm peer, reused; its inbound streams are
    /// served like those of accepted connections.
    pub(super) async fn dial_peer(&self, addr: PeerAddr) -> Result<Arc<dyn Connection>> {
        let me = self.clone();
        let serve = move |c: Arc<dyn Connection>| {
            let bg = me.inner.background.clone();
            let _ = bg.send(Box::pin(async move {
                while let Ok((send, recv)) = c.accept_bi().await {
                    let (me2, c2) = (me.clone(), c.clone());
                    let _ = me.inner.background.send(Box::pin(async move {
                        me2.serve_stream(c2, send, recv).await;
                    }));
                }
            }));
        };
        let provider = &*self.inner.parts.provider;
        self.inner
            .swarm
            .dialed
            .connect(provider, &addr, Duration::from_secs(10), serve)
            .await
    }
}
