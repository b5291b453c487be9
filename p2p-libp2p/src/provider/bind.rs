//! Starting a node: the transport, the behaviours and the swarm built
//! from a [`Libp2pConfig`], the swarm task listening, and the task that
//! routes inbound streams.

use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

use libp2p::multiaddr::Protocol;
use libp2p::swarm::Swarm;
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::{Multiaddr, allow_block_list, connection_limits, dcutr, identify, mdns, ping, relay};
use p2p_core::discovery::PeerBook;
use p2p_core::{Error, NodeKey, Result};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::inbound::{MAX_INBOUND_HANDOVERS, route_inbound};
use super::state::Core;
use super::{Handle, Libp2pProvider};
use crate::addr;
use crate::config::Libp2pConfig;
use crate::driver::{Behaviour, Driver};
use crate::paths::PathBook;
use crate::session::{Gates, PROTOCOL, Registry};
use crate::transport::build_transport;

/// The identify protocol version nodes announce.
const IDENTIFY_PROTOCOL: &str = "/p2p-deploy/1.0.0";

fn listen_multiaddrs(config: &Libp2pConfig) -> Vec<Multiaddr> {
    let binds: Vec<SocketAddr> = if config.bind_addrs.is_empty() {
        vec![SocketAddr::from(([0, 0, 0, 0], 0))]
    } else {
        config.bind_addrs.clone()
    };
    let mut out = Vec::new();
    for b in binds {
        out.push(addr::tcp_multiaddr(b));
        if config.quic_enabled() {
            out.push(
                addr::ip_multiaddr(b.ip())
                    .with(Protocol::Udp(b.port()))
                    .with(Protocol::QuicV1),
            );
        }
    }
    out
}

/// Fails when a fixed port is taken. libp2p's TCP listeners set
/// `SO_REUSEPORT`, so a second node on the same port would otherwise start
/// and silently share the port's inbound connections with the first.
fn check_ports_free(config: &Libp2pConfig) -> Result<()> {
    for b in config.bind_addrs.iter().filter(|b| b.port() != 0) {
        let taken = |proto: &str, e: std::io::Error| {
            Error::invalid("bind_addrs", format!("cannot listen on {proto} {b}: {e}"))
        };
        std::net::TcpListener::bind(b).map_err(|e| taken("TCP", e))?;
        if config.quic_enabled() {
            std::net::UdpSocket::bind(b).map_err(|e| taken("UDP", e))?;
        }
    }
    Ok(())
}

/// A per-process random number, so that session ids of a restarted node
/// never collide with those of its previous run.
fn random_epoch() -> u64 {
    use std::hash::BuildHasher;
    std::collections::hash_map::RandomState::new().hash_one(std::process::id())
}

impl Libp2pProvider {
    /// Starts a node with identity `key`: builds the swarm, listens on the
    /// configured addresses and waits until it has addresses to give out.
    ///
    /// Fails with [`Error::Invalid`] naming the field for a bad config or
    /// an address it cannot listen on.
    pub async fn bind(key: &NodeKey, config: Libp2pConfig) -> Result<Self> {
        config.validate()?;
        check_ports_free(&config)?;
        let keypair = addr::keypair(key);
        let lp_local = keypair.public().to_peer_id();
        let (relay_transport, relay_client) = relay::client::new(lp_local);
        let transport = build_transport(&keypair, &config, Some(relay_transport))?;
        let stream = crate::streams::Behaviour::new();
        let mut control = stream.new_control();
        let incoming = control.accept(PROTOCOL).map_err(|e| Error::Backend {
            backend: "libp2p",
            source: Box::new(e),
        })?;
        let allow = config.allow_list.as_ref().map(|list| {
            let mut b = allow_block_list::Behaviour::<allow_block_list::AllowedPeers>::default();
            // The relays carry connections for this node: the transport
            // lets them in; SDK connections still need the list.
            for p in list.iter().chain(config.relays.iter().map(|r| &r.id)) {
                b.allow_peer(addr::to_libp2p(p));
            }
            b
        });
        let limits = connection_limits::ConnectionLimits::default()
            .with_max_established_per_peer(Some(config.max_connections_per_peer))
            .with_max_pending_incoming(Some(config.max_pending_incoming));
        let mdns = if config.mdns {
            let mc = mdns::Config {
                query_interval: config.mdns_query_interval,
                ..mdns::Config::default()
            };
            Some(
                mdns::tokio::Behaviour::new(mc, lp_local)
                    .map_err(|e| Error::io("starting mDNS", e))?,
            )
        } else {
            None
        };
        let ping = ping::Behaviour::new(
            ping::Config::new()
                .with_interval(config.ping_interval)
                .with_timeout(config.ping_interval),
        );
        let identify = identify::Behaviour::new(
            identify::Config::new(IDENTIFY_PROTOCOL.to_string(), keypair.public())
                .with_agent_version(format!("p2p-libp2p/{}", env!("CARGO_PKG_VERSION"))),
        );
        let relay_server = config.relay_server.then(|| {
            relay::Behaviour::new(
                lp_local,
                relay::Config {
                    max_reservations: 1024,
                    max_reservations_per_peer: 8,
                    // Every node of a site shares its NAT's address: no
                    // per-IP rate limits.
                    reservation_rate_limiters: Vec::new(),
                    circuit_src_rate_limiters: Vec::new(),
                    max_circuits: 1024,
                    max_circuits_per_peer: 64,
                    // 0: no limit on the bytes of a circuit (a release
                    // may cross it).
                    max_circuit_bytes: 0,
                    max_circuit_duration: config.relay_circuit_duration,
                    ..relay::Config::default()
                },
            )
        });
        let behaviour = Behaviour {
            allow: Toggle::from(allow),
            limits: connection_limits::Behaviour::new(limits),
            incoming: crate::driver::IncomingPeers::new(config.max_incoming_connections),
            stream,
            ping,
            mdns: Toggle::from(mdns),
            identify,
            relay_client,
            dcutr: dcutr::Behaviour::new(lp_local),
            relay: Toggle::from(relay_server),
        };
        let swarm_config = libp2p::swarm::Config::with_tokio_executor()
            .with_idle_connection_timeout(config.idle_timeout)
            .with_substream_upgrade_protocol_override(libp2p::core::upgrade::Version::V1Lazy);
        let swarm = Swarm::new(transport, behaviour, lp_local, swarm_config);

        let listen_addrs = Arc::new(Mutex::new(Vec::new()));
        let book = PeerBook::default();
        let paths = PathBook::default();
        let relay_reports = Arc::new(Mutex::new(Vec::new()));
        let mut driver = Driver::new(
            swarm,
            listen_addrs.clone(),
            book.clone(),
            paths.clone(),
            relay_reports.clone(),
            &config,
        );
        driver.listen(&listen_multiaddrs(&config)).await?;
        let (tx, rx) = mpsc::channel(config.command_buffer);
        tokio::spawn(driver.run(rx));

        let stream_budget = config.max_concurrent_streams;
        let core = Arc::new(Core {
            local: key.peer_id(),
            config,
            commands: tx,
            control,
            gates: Arc::new(Gates::new(stream_budget)),
            registry: Arc::new(Registry::default()),
            listener: Mutex::new(None),
            inbound: Arc::new(tokio::sync::Semaphore::new(MAX_INBOUND_HANDOVERS)),
            handovers: Mutex::default(),
            closed: Mutex::new(None),
            stop: CancellationToken::new(),
            listen_addrs,
            book,
            paths,
            relay_reports,
            epoch: random_epoch(),
            next_session: AtomicU64::new(0),
        });
        tokio::spawn(route_inbound(core.clone(), incoming));
        Ok(Libp2pProvider {
            _handle: Arc::new(Handle { core: core.clone() }),
            core,
        })
    }
}
