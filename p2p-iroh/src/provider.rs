//! [`IrohProvider`]: an iroh endpoint as a p2p-core [`Provider`].

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use iroh::endpoint::{
    self, ConnectError, ConnectOptions, ConnectWithOptsError, ConnectingError, ConnectionError,
    Incoming, PortmapperConfig, QuicTransportConfig, WeakConnectionHandle, presets,
};
use iroh::{Endpoint, NetReportConfig, RelayMode, RelayUrl};
use iroh_mdns_address_lookup::MdnsAddressLookup;
use p2p_core::{
    Connection, Discovered, Error, Listener, NodeKey, PeerAddr, PeerId, Provider, Result,
};
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::addr::{secret_key, to_endpoint_addr, to_peer_addr};
use crate::config::{Connectivity, IrohConfig};
use crate::conn::{
    CLOSE_NORMAL, CLOSE_REFUSED, DENIED_PREFIX, IrohConnection, close_with, connection_error,
};
use crate::discovery::run_mdns;
use crate::hooks::AllowListHooks;
use p2p_core::discovery::PeerBook;
use p2p_core::sync::lock;

/// The one ALPN of the SDK. Which protocol a stream speaks is named at the
/// start of the stream by p2p-core's versioned hello
/// ([`Framed::hello`](p2p_core::framing::Framed::hello)), so a node serves
/// every SDK protocol over one connection per peer.
pub const ALPN: &[u8] = b"p2p-deploy/1";

/// Sent by the accepting side on a unidirectional stream once a connection
/// has passed its hooks and reached a listener; the dialer's `connect`
/// returns only after reading it.
const WELCOME: &[u8] = b"p2p-iroh welcome v1";

/// Why a connection was refused for lack of a listener; the dialer maps it
/// to [`Error::Unreachable`].
const NOT_ACCEPTING: &str = "not accepting connections: no listener";

/// Inbound connections waiting for [`Listener::accept`].
const ACCEPT_QUEUE: usize = 64;

type ReasonSlot = Arc<Mutex<Option<String>>>;

/// Connections of this provider, so that `close` can give each a reason.
/// Every connection is registered right after its handshake, on both
/// sides; once the provider closes, a connection registered late is closed
/// at once with the provider's reason.
#[derive(Default)]
struct Registry {
    conns: BTreeMap<usize, (WeakConnectionHandle, ReasonSlot)>,
    closed: Option<String>,
}

impl Registry {
    /// Registers `conn`, or returns the provider's close reason.
    fn track(&mut self, conn: &endpoint::Connection, slot: ReasonSlot) -> Option<String> {
        if let Some(reason) = &self.closed {
            return Some(reason.clone());
        }
        self.conns
            .retain(|_, (weak, _)| weak.upgrade().is_some_and(|c| c.close_reason().is_none()));
        self.conns
            .insert(conn.stable_id(), (conn.weak_handle(), slot));
        None
    }

    /// Marks the provider closed and returns the connections still open.
    fn close(&mut self, reason: &str) -> Vec<(endpoint::Connection, ReasonSlot)> {
        self.closed = Some(reason.to_string());
        std::mem::take(&mut self.conns)
            .into_values()
            .filter_map(|(weak, slot)| weak.upgrade().map(|c| (c, slot)))
            .filter(|(c, _)| c.close_reason().is_none())
            .collect()
    }
}

/// Closes `conns` with `reason`, recording it as their local reason.
fn close_all(conns: Vec<(endpoint::Connection, ReasonSlot)>, reason: &str) {
    for (conn, slot) in conns {
        lock(&slot).get_or_insert_with(|| reason.to_string());
        close_with(&conn, CLOSE_NORMAL, reason);
    }
}

/// The listener's side of the hand-over: a connection is sent only while
/// `open` is true, checked under the lock that the listener's drop takes,
/// so no connection lands in a queue nobody reads.
type Gate = Arc<Mutex<bool>>;

/// State shared by the provider handle and its background tasks.
struct Core {
    endpoint: Endpoint,
    config: IrohConfig,
    listener: Mutex<Option<(mpsc::Sender<IrohConnection>, Gate)>>,
    registry: Mutex<Registry>,
    stop: CancellationToken,
    close_reason: ReasonSlot,
    /// QUIC settings for dialing: like the endpoint's, but accepting the
    /// one unidirectional stream that carries the welcome.
    dial_transport: QuicTransportConfig,
    /// Where the node stands with its relays.
    relay_health: Mutex<crate::relay::RelayHealth>,
    /// The node's key, for diagnostic connections to its relays.
    key: iroh::SecretKey,
    /// Its own relays (`Connectivity::CustomRelays`), parsed.
    relays: Option<Vec<RelayUrl>>,
    /// Hole punches tried and succeeded ([`Provider::stats`]).
    punches: Arc<Punches>,
}

/// Connections that began relayed (iroh then tries to punch a direct
/// path), and those of them that became direct.
#[derive(Debug, Default)]
struct Punches {
    tried: std::sync::atomic::AtomicU64,
    succeeded: std::sync::atomic::AtomicU64,
}

impl Core {
    fn closed_error(&self) -> Error {
        Error::closed(
            lock(&self.close_reason)
                .clone()
                .unwrap_or_else(|| "provider closed".to_string()),
        )
    }

    /// Wraps and registers a connection that just finished its handshake;
    /// fails (closing it) when the provider is closed.
    fn wrap(&self, conn: endpoint::Connection) -> Result<IrohConnection> {
        // The task holds the path events, never the connection: dropping
        // the last handle must still close it.
        let peer = crate::addr::peer_id(&conn.remote_id()).short();
        let events = conn.path_events();
        let now = crate::conn::selected_path(&conn);
        tokio::spawn(log_paths(peer, now, events, self.punches.clone()));
        let c = IrohConnection::new(conn);
        let refused = lock(&self.registry).track(c.inner(), c.reason_slot());
        match refused {
            None => Ok(c),
            Some(reason) => {
                close_all(vec![(c.inner().clone(), c.reason_slot())], &reason);
                Err(Error::closed(reason))
            }
        }
    }

    /// Marks the provider closed and closes its open connections with
    /// `reason`; connections registered later are refused with it.
    fn close_connections(&self, reason: &str) {
        let live = lock(&self.registry).close(reason);
        close_all(live, reason);
    }

    /// The live listener's sender and gate, if there is one.
    fn live_listener(&self) -> Option<(mpsc::Sender<IrohConnection>, Gate)> {
        lock(&self.listener)
            .clone()
            .filter(|(tx, gate)| !tx.is_closed() && *lock(gate))
    }

    /// Closes the endpoint in a task of its own and waits for it at most
    /// `close_timeout`: dropping iroh's close future half way would leave
    /// its actors running.
    async fn close_endpoint(&self) {
        let ep = self.endpoint.clone();
        let closing = tokio::spawn(async move { ep.close().await });
        if tokio::time::timeout(self.config.close_timeout, closing)
            .await
            .is_err()
        {
            tracing::debug!(
                "iroh endpoint still draining after close_timeout; peers that did not acknowledge notice by idle timeout"
            );
        }
    }
}

/// A p2p-core [`Provider`] over an iroh endpoint.
///
/// Built with [`IrohProvider::bind`]; cheap to clone (clones share the
/// endpoint). Dropping the last clone stops its background tasks; call
/// [`Provider::close`] first so that peers see a reason.
#[derive(Clone)]
pub struct IrohProvider {
    inner: Arc<Handle>,
}

/// Owned by the provider clones only; its drop stops the tasks.
struct Handle {
    core: Arc<Core>,
    id: PeerId,
    book: PeerBook,
    _mdns: Option<MdnsAddressLookup>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.core.stop.cancel();
        self.book.close();
        for t in &self.tasks {
            t.abort();
        }
        // Dropped without `close`: still tell peers and release the socket.
        if !self.core.endpoint.is_closed() {
            self.core.close_connections("node shut down");
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                let ep = self.core.endpoint.clone();
                rt.spawn(async move { ep.close().await });
            }
        }
    }
}

impl std::fmt::Debug for IrohProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IrohProvider")
            .field("id", &self.inner.id.short())
            .field("bound", &self.inner.core.endpoint.bound_sockets())
            .finish()
    }
}

impl IrohProvider {
    /// Binds an endpoint with identity `key` and starts accepting
    /// handshakes (connections reach a [`Listener`] once one exists).
    ///
    /// Fails with [`Error::Invalid`] naming the field for a bad config, and
    /// with [`Error::Io`] when the socket cannot be bound (address in use,
    /// address not on this host).
    pub async fn bind(key: &NodeKey, config: IrohConfig) -> Result<Self> {
        config.validate()?;
        let endpoint = build_endpoint(key, &config).await?;
        let id = crate::addr::peer_id(&endpoint.id());
        let book = PeerBook::default();
        let core = Arc::new(Core {
            endpoint: endpoint.clone(),
            config: config.clone(),
            listener: Mutex::new(None),
            registry: Mutex::new(Registry::default()),
            stop: CancellationToken::new(),
            close_reason: Arc::new(Mutex::new(None)),
            dial_transport: config.quic_transport_config()?,
            key: secret_key(key),
            relays: relay_urls(&config.connectivity),
            punches: Arc::default(),
            relay_health: Mutex::new(match config.connectivity {
                Connectivity::LocalOnly => crate::relay::RelayHealth::Off,
                _ => crate::relay::RelayHealth::Connecting,
            }),
        });
        let mut tasks = vec![tokio::spawn(accept_loop(core.clone()))];
        if core.relays.is_some() {
            tasks.push(tokio::spawn(watch_relays(core.clone())));
        }
        let mdns = if config.mdns {
            let mdns = MdnsAddressLookup::builder()
                .service_name(config.mdns_service.clone())
                .build(endpoint.id())
                .map_err(|e| {
                    Error::io(
                        "starting mDNS discovery (switch it off with IrohConfig::mdns(false))",
                        std::io::Error::other(e.to_string()),
                    )
                })?;
            endpoint
                .address_lookup()
                .map_err(|e| Error::protocol(format!("iroh address lookup unavailable: {e}")))?
                .add(mdns.clone());
            tasks.push(tokio::spawn(run_mdns(
                mdns.clone(),
                book.clone(),
                core.stop.clone(),
            )));
            Some(mdns)
        } else {
            None
        };
        tracing::info!(
            id = %id.short(),
            bound = ?endpoint.bound_sockets(),
            mdns = config.mdns,
            connectivity = ?config.connectivity,
            "iroh provider bound"
        );
        Ok(IrohProvider {
            inner: Arc::new(Handle {
                core,
                id,
                book,
                _mdns: mdns,
                tasks,
            }),
        })
    }

    /// The underlying iroh endpoint, for features the SDK does not wrap.
    pub fn endpoint(&self) -> &Endpoint {
        &self.inner.core.endpoint
    }

    /// The local sockets the endpoint is bound to.
    pub fn bound_sockets(&self) -> Vec<SocketAddr> {
        self.inner.core.endpoint.bound_sockets()
    }

    /// The configuration it was built with.
    pub fn config(&self) -> &IrohConfig {
        &self.inner.core.config
    }

    /// Where the node stands with its relays: off, connecting, connected to
    /// its home relay, or unreachable and why (also logged as it changes).
    pub fn relay_health(&self) -> crate::relay::RelayHealth {
        lock(&self.inner.core.relay_health).clone()
    }

    /// Waits up to `limit` for a home relay; returns its URL, or `None`
    /// when there is none by then (see [`relay_health`](Self::relay_health)
    /// for why). Returns `None` at once with relays off.
    pub async fn wait_for_relay(&self, limit: std::time::Duration) -> Option<String> {
        let core = &self.inner.core;
        if core.config.connectivity == Connectivity::LocalOnly {
            return None;
        }
        let _ = tokio::time::timeout(limit, core.endpoint.online()).await;
        crate::relay::home_relay(&core.endpoint)
    }

    /// Dials `peer` and waits for its welcome; returns the raw iroh
    /// connection. Shared by `connect` and the benchmarks.
    async fn dial(&self, peer: &PeerAddr) -> Result<IrohConnection> {
        let core = &self.inner.core;
        if core.stop.is_cancelled() {
            return Err(core.closed_error());
        }
        if peer.id == self.inner.id {
            return Err(Error::invalid(
                "peer address",
                "a node cannot connect to itself",
            ));
        }
        let mut addr = to_endpoint_addr(peer)?;
        if addr.addrs.is_empty()
            && let Some(urls) = &core.relays
        {
            // Known by id alone: look for it at this node's relays (a relay
            // forwards to the nodes connected to it).
            for u in urls {
                addr.addrs.insert(iroh::TransportAddr::Relay(u.clone()));
            }
        }
        let relays_off = core.config.connectivity == Connectivity::LocalOnly;
        if addr.addrs.is_empty() && !core.config.mdns && relays_off {
            return Err(Error::unreachable(format!(
                "no address for peer {} and discovery is off: give its address as id@ip:port",
                peer.id.short()
            )));
        }
        if relays_off && !addr.addrs.is_empty() && addr.ip_addrs().next().is_none() {
            return Err(Error::unreachable(format!(
                "peer {} can only be reached through a relay ({}), and this node has relays \
                 off: configure relays (connectivity)",
                peer.id.short(),
                peer.addrs.join(", ")
            )));
        }
        let via_relay = addr.relay_urls().next().is_some();
        let who = peer.id.short();
        // Only a relay leads there, and this node has none yet: if the
        // relay will not take this node (certificate, access), say so now
        // rather than after the connect timeout.
        let checked = via_relay
            && addr.ip_addrs().next().is_none()
            && crate::relay::home_relay(&core.endpoint).is_none();
        if checked {
            let urls: Vec<RelayUrl> = addr.relay_urls().cloned().collect();
            let problems = crate::relay::problems(&core.endpoint, &core.key, &urls).await;
            if problems.len() == urls.len() {
                return Err(Error::unreachable(format!(
                    "peer {who} can only be reached through a relay: {}",
                    problems.join("; ")
                )));
            }
        }
        let limit = core.config.connect_timeout;
        let options = ConnectOptions::new().with_transport_config(core.dial_transport.clone());
        let attempt = async {
            let connecting = core
                .endpoint
                .connect_with_opts(addr, ALPN, options)
                .await
                .map_err(|e| connect_error(e.into(), &who))?;
            let conn = connecting
                .await
                .map_err(|e| connect_error(e.into(), &who))?;
            let conn = core.wrap(conn)?;
            await_welcome(conn.inner(), &who).await?;
            Ok::<_, Error>(conn)
        };
        let result = tokio::select! {
            biased;
            _ = core.stop.cancelled() => return Err(core.closed_error()),
            r = tokio::time::timeout(limit, attempt) => match r {
                Ok(r) => r,
                Err(_) => Err(Error::timeout(format!("connecting to peer {who}"), limit)),
            },
        };
        match result {
            Ok(conn) => Ok(conn),
            // A peer known through a relay, and our relays in trouble: the
            // relay's problem is most likely the reason.
            Err(e) if via_relay => match self.relay_health() {
                crate::relay::RelayHealth::Unreachable(why) => Err(Error::unreachable(format!(
                    "{e}; and this node has no relay: {why}"
                ))),
                // Not known yet (a short-lived node, such as p2pctl), nor
                // looked at before the dial: find out now.
                crate::relay::RelayHealth::Connecting
                    if !checked && crate::relay::home_relay(&core.endpoint).is_none() =>
                {
                    let urls = core.relays.as_deref().unwrap_or_default();
                    let why = crate::relay::diagnose_all(&core.endpoint, &core.key, urls).await;
                    Err(Error::unreachable(format!("{e}; relays: {why}")))
                }
                _ => Err(e),
            },
            Err(e) => Err(e),
        }
    }
}

/// The relays of `c`, when it has its own.
fn relay_urls(c: &Connectivity) -> Option<Vec<RelayUrl>> {
    match c {
        Connectivity::CustomRelays(urls) => {
            Some(urls.iter().filter_map(|u| u.parse().ok()).collect())
        }
        _ => None,
    }
}

/// Follows the node's relays until it stops: records and logs each change
/// (the first home relay, losing it, and why none is reachable).
async fn watch_relays(core: Arc<Core>) {
    use crate::relay::{RelayHealth, diagnose_all, home_relay};
    let ep = core.endpoint.clone();
    let urls = core.relays.clone().unwrap_or_default();
    tokio::select! {
        biased;
        _ = core.stop.cancelled() => return,
        _ = tokio::time::timeout(crate::relay::FIRST_WAIT, ep.online()) => {}
    }
    loop {
        let now = match home_relay(&ep) {
            Some(url) => RelayHealth::Connected(url),
            None => {
                let why = tokio::select! {
                    biased;
                    _ = core.stop.cancelled() => return,
                    why = diagnose_all(&ep, &core.key, &urls) => why,
                };
                RelayHealth::Unreachable(why)
            }
        };
        let changed = {
            let mut h = lock(&core.relay_health);
            let changed = *h != now;
            *h = now.clone();
            changed
        };
        if changed {
            match &now {
                RelayHealth::Connected(url) => tracing::info!(relay = %url, "home relay connected"),
                other => tracing::warn!(
                    "{other}; the node keeps working on direct paths and tries again"
                ),
            }
        }
        tokio::select! {
            biased;
            _ = core.stop.cancelled() => return,
            _ = tokio::time::sleep(crate::relay::RECHECK) => {}
        }
    }
}

async fn build_endpoint(key: &NodeKey, config: &IrohConfig) -> Result<Endpoint> {
    // Accepted connections take no unidirectional streams at all.
    let transport = config.quic_transport_config_with_uni(0)?;
    let mut b = match config.connectivity {
        Connectivity::N0Relays => Endpoint::builder(presets::N0),
        _ => Endpoint::builder(presets::Minimal),
    };
    b = b
        .secret_key(secret_key(key))
        .alpns(vec![ALPN.to_vec()])
        .transport_config(transport)
        .portmapper_config(PortmapperConfig::Disabled);
    b = match &config.connectivity {
        Connectivity::LocalOnly => b
            .relay_mode(RelayMode::Disabled)
            .clear_address_lookup()
            .net_report_config(NetReportConfig::minimal()),
        Connectivity::CustomRelays(urls) => {
            let urls: Vec<RelayUrl> = urls.iter().filter_map(|u| u.parse().ok()).collect();
            // No captive-portal check: it asks the relay host on port 80,
            // which a self-hosted relay rarely serves.
            let mut report = NetReportConfig::default();
            report.captive_portal_check = false;
            b.relay_mode(RelayMode::custom(urls))
                .clear_address_lookup()
                .net_report_config(report)
        }
        Connectivity::N0Relays => b,
    };
    if !config.relay_ca_certs.is_empty() {
        b = b.ca_tls_config(crate::relay::ca_config(&config.relay_ca_certs));
    }
    if !config.bind_addrs.is_empty() {
        b = b.clear_ip_transports();
        for a in &config.bind_addrs {
            b = b
                .bind_addr(*a)
                .map_err(|e| Error::invalid("bind_addrs", format!("{a}: {e}")))?;
        }
    }
    if let Some(allowed) = &config.allow_list {
        b = b.hooks(AllowListHooks {
            allowed: allowed.clone(),
        });
    }
    b.bind().await.map_err(|e| {
        Error::io(
            format!("binding iroh endpoint on {:?}", config.bind_addrs),
            std::io::Error::other(e.to_string()),
        )
    })
}

/// Logs the path changes of `conn` until it closes: the first path chosen
/// at debug level, every change after it (a relayed connection that hole
/// punching made direct, a direct one that fell back to the relay) at info;
/// and counts the hole punches: a move onto the relay is one tried, a move
/// from the relay to a direct path one succeeded.
async fn log_paths(
    peer: String,
    now: p2p_core::PathInfo,
    mut events: endpoint::PathEventStream,
    punches: Arc<Punches>,
) {
    use futures::StreamExt;
    use std::sync::atomic::Ordering::Relaxed;
    let mut last: Option<p2p_core::PathKind> = None;
    // Each time the connection goes onto the relay (at first, or falling
    // back), iroh sets out to punch a direct path: one tried; each move
    // from the relay to a direct path: one succeeded.
    let count = |was: Option<p2p_core::PathKind>, kind: p2p_core::PathKind| match (was, kind) {
        (Some(p2p_core::PathKind::Relayed), p2p_core::PathKind::Direct) => {
            punches.succeeded.fetch_add(1, Relaxed);
        }
        (w, p2p_core::PathKind::Relayed) if w != Some(p2p_core::PathKind::Relayed) => {
            punches.tried.fetch_add(1, Relaxed);
        }
        _ => {}
    };
    // The path chosen during the handshake, read after subscribing, so
    // that no choice goes unlogged.
    if now.kind != p2p_core::PathKind::Unknown {
        let remote = now.remote.unwrap_or_default();
        tracing::debug!(%peer, path = %now.kind, %remote, "path selected");
        count(None, now.kind);
        last = Some(now.kind);
    }
    while let Some(ev) = events.next().await {
        let endpoint::PathEvent::Selected { remote_addr, .. } = ev else {
            continue;
        };
        let (kind, remote) = crate::conn::describe(&remote_addr);
        let remote = remote.unwrap_or_default();
        if last == Some(kind) {
            continue;
        }
        count(last, kind);
        match last {
            None => tracing::debug!(%peer, path = %kind, %remote, "path selected"),
            Some(was) => tracing::info!(%peer, path = %kind, was = %was, %remote, "path changed"),
        }
        last = Some(kind);
    }
}

/// Reads the accepting side's welcome, or turns its refusal into the error
/// the caller should see.
async fn await_welcome(conn: &endpoint::Connection, who: &str) -> Result<()> {
    let mut uni = conn.accept_uni().await.map_err(|e| refusal(e, who))?;
    let msg = uni
        .read_to_end(WELCOME.len())
        .await
        .map_err(|e| match conn.close_reason() {
            Some(c) => refusal(c, who),
            None => {
                close_with(conn, CLOSE_REFUSED, "protocol error: broken welcome");
                Error::protocol(format!("peer {who} sent a broken welcome: {e}"))
            }
        })?;
    if msg != WELCOME {
        close_with(conn, CLOSE_REFUSED, "protocol error: bad welcome");
        return Err(Error::protocol(format!(
            "peer {who} is not a p2p-iroh node (unexpected welcome)"
        )));
    }
    Ok(())
}

/// A connection the peer closed before welcoming us.
fn refusal(e: ConnectionError, who: &str) -> Error {
    if let ConnectionError::ApplicationClosed(c) = &e {
        let reason = String::from_utf8_lossy(&c.reason);
        if let Some(r) = reason.strip_prefix(DENIED_PREFIX) {
            return Error::denied(format!("peer {who} refused us: {r}"));
        }
        if reason == NOT_ACCEPTING {
            return Error::unreachable(format!(
                "peer {who} is up but not accepting connections (no listener)"
            ));
        }
    }
    // The connection never opened for the caller: whatever ended it, the
    // peer could not be reached as a working connection.
    Error::unreachable(format!(
        "peer {who} ended the connection before accepting it: {}",
        connection_error(e, None)
    ))
}

fn connect_error(e: ConnectError, who: &str) -> Error {
    match e {
        ConnectError::Connect { source, .. } => match source {
            ConnectWithOptsError::LocallyRejected { .. } => Error::denied(format!(
                "peer {who} is not in this node's allow-list; refusing to dial it"
            )),
            ConnectWithOptsError::SelfConnect { .. } => {
                Error::invalid("peer address", "a node cannot connect to itself")
            }
            ConnectWithOptsError::NoAddress { .. } => Error::unreachable(format!(
                "no address known for peer {who}: give its address as id@ip:port or enable discovery"
            )),
            ConnectWithOptsError::EndpointClosed { .. } => Error::closed("provider closed"),
            other => Error::unreachable(format!("cannot dial peer {who}: {other}")),
        },
        ConnectError::Connecting { source, .. } => match source {
            ConnectingError::ConnectionError { source, .. } => match source {
                ConnectionError::TimedOut => {
                    Error::unreachable(format!("no answer from any address of peer {who}"))
                }
                // The TLS handshake checks the id: another node at the
                // address (or a wrong id) fails here. The peer asked for
                // is not reachable there, as on every backend.
                ConnectionError::TransportError(t) => Error::unreachable(format!(
                    "peer {who} is not at that address: the handshake failed: {t} (another node answers there, or the peer id is wrong)"
                )),
                ConnectionError::ConnectionClosed(c) => Error::protocol(format!(
                    "peer {who} refused the QUIC handshake: {c} (not a p2p-iroh node, or another ALPN than {:?})",
                    String::from_utf8_lossy(ALPN)
                )),
                other => refusal(other, who),
            },
            ConnectingError::LocallyRejected { .. } => {
                Error::denied(format!("peer {who} is not in this node's allow-list"))
            }
            other => Error::protocol(format!("handshake with peer {who} failed: {other}")),
        },
        ConnectError::Connection { source, .. } => refusal(source, who),
        other => Error::unreachable(format!("cannot connect to peer {who}: {other}")),
    }
}

/// Accepts QUIC connections until the provider stops; each handshake runs
/// in its own task, at most `max_pending_handshakes` at once.
async fn accept_loop(core: Arc<Core>) {
    let pending = Arc::new(Semaphore::new(core.config.max_pending_handshakes));
    loop {
        let incoming = tokio::select! {
            biased;
            _ = core.stop.cancelled() => break,
            i = core.endpoint.accept() => i,
        };
        let Some(incoming) = incoming else { break };
        let permit = tokio::select! {
            biased;
            _ = core.stop.cancelled() => break,
            p = pending.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let core = core.clone();
        tokio::spawn(async move {
            handle_incoming(&core, incoming).await;
            drop(permit);
        });
    }
}

async fn handle_incoming(core: &Core, incoming: Incoming) {
    let from = format!("{:?}", incoming.remote_addr());
    let accepting = match incoming.accept() {
        Ok(a) => a,
        Err(e) => {
            tracing::debug!(%from, error = %e, "inbound connection failed before the handshake");
            return;
        }
    };
    let limit = core.config.connect_timeout;
    let conn = tokio::select! {
        biased;
        _ = core.stop.cancelled() => return,
        r = tokio::time::timeout(limit, accepting) => match r {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => {
                tracing::debug!(%from, error = %e, "inbound handshake failed or was refused");
                return;
            }
            Err(_) => {
                tracing::debug!(%from, "inbound handshake timed out");
                return;
            }
        },
    };
    let Ok(conn) = core.wrap(conn) else { return };
    // Everything from here is bounded: a dialer that never takes the
    // welcome (no uni stream credit) must not hold a slot for long.
    let handover = async {
        let (permit, gate) = reserve(core).await.ok_or(NOT_ACCEPTING)?;
        let mut uni = conn.inner().open_uni().await.map_err(|_| "closed")?;
        uni.write_all(WELCOME).await.map_err(|_| "closed")?;
        uni.finish().map_err(|_| "closed")?;
        Ok::<_, &'static str>((permit, gate))
    };
    let outcome = tokio::select! {
        biased;
        _ = core.stop.cancelled() => return,
        r = tokio::time::timeout(limit, handover) => r.unwrap_or(Err("welcome timed out")),
    };
    match outcome {
        Ok((permit, gate)) => {
            let open = lock(&gate);
            if *open {
                permit.send(conn);
            } else {
                close_with(conn.inner(), CLOSE_REFUSED, NOT_ACCEPTING);
            }
        }
        Err(why) => {
            tracing::debug!(%from, why, "inbound connection not handed to a listener");
            close_with(conn.inner(), CLOSE_REFUSED, why);
        }
    }
}

/// A slot in the live listener's queue. Tries twice, so that a listener
/// replaced while we waited is still found.
async fn reserve(core: &Core) -> Option<(mpsc::OwnedPermit<IrohConnection>, Gate)> {
    for _ in 0..2 {
        let (tx, gate) = core.live_listener()?;
        if let Ok(permit) = tx.reserve_owned().await {
            return Some((permit, gate));
        }
    }
    None
}

/// Inbound connections of an [`IrohProvider`].
pub struct IrohListener {
    rx: mpsc::Receiver<IrohConnection>,
    gate: Gate,
    core: Arc<Core>,
}

impl std::fmt::Debug for IrohListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IrohListener").finish_non_exhaustive()
    }
}

#[async_trait]
impl Listener for IrohListener {
    async fn accept(&mut self) -> Result<Arc<dyn Connection>> {
        tokio::select! {
            biased;
            _ = self.core.stop.cancelled() => Err(self.core.closed_error()),
            c = self.rx.recv() => match c {
                Some(c) => Ok(Arc::new(c) as Arc<dyn Connection>),
                None => Err(self.core.closed_error()),
            },
        }
    }
}

impl Drop for IrohListener {
    fn drop(&mut self) {
        let mut open = lock(&self.gate);
        *open = false;
        self.rx.close();
        while let Ok(c) = self.rx.try_recv() {
            close_with(c.inner(), CLOSE_REFUSED, NOT_ACCEPTING);
        }
    }
}

#[async_trait]
impl Provider for IrohProvider {
    fn backend(&self) -> &'static str {
        "iroh"
    }

    fn local_id(&self) -> PeerId {
        self.inner.id
    }

    fn local_addr(&self) -> PeerAddr {
        let ep = &self.inner.core.endpoint;
        let mut addr = to_peer_addr(&ep.addr());
        if addr.addrs.is_empty() {
            // Before the first interface scan: the bound sockets, minus
            // unspecified ones nobody can dial.
            addr.addrs = ep
                .bound_sockets()
                .into_iter()
                .filter(|a| !a.ip().is_unspecified())
                .map(|a| a.to_string())
                .collect();
        }
        addr
    }

    async fn connect(&self, peer: &PeerAddr) -> Result<Arc<dyn Connection>> {
        Ok(Arc::new(self.dial(peer).await?))
    }

    async fn listen(&self) -> Result<Box<dyn Listener>> {
        let core = &self.inner.core;
        if core.stop.is_cancelled() {
            return Err(core.closed_error());
        }
        if core.live_listener().is_some() {
            return Err(Error::AlreadyExists {
                what: "a listener on this iroh provider".to_string(),
            });
        }
        let (tx, rx) = mpsc::channel(ACCEPT_QUEUE);
        let gate: Gate = Arc::new(Mutex::new(true));
        *lock(&core.listener) = Some((tx, gate.clone()));
        Ok(Box::new(IrohListener {
            rx,
            gate,
            core: core.clone(),
        }))
    }

    fn discovered(&self) -> Discovered {
        self.inner.book.subscribe()
    }

    fn stats(&self) -> p2p_core::TransportStats {
        use std::sync::atomic::Ordering::Relaxed;
        let p = &self.inner.core.punches;
        p2p_core::TransportStats {
            hole_punches_tried: p.tried.load(Relaxed),
            hole_punches_succeeded: p.succeeded.load(Relaxed),
        }
    }

    async fn close(&self, reason: &str) {
        let core = &self.inner.core;
        {
            let mut r = lock(&core.close_reason);
            if r.is_some() {
                return;
            }
            *r = Some(reason.to_string());
        }
        core.stop.cancel();
        self.inner.book.close();
        lock(&core.listener).take();
        core.close_connections(reason);
        core.close_endpoint().await;
        tracing::info!(id = %self.inner.id.short(), reason, "iroh provider closed");
    }
}
