//! [`Libp2pConfig`]: everything an embedder can set on a libp2p provider.

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use p2p_core::{PeerAddr, PeerId, PreSharedKey};

/// Configuration of a [`Libp2pProvider`](crate::Libp2pProvider).
///
/// The defaults are for a node on a LAN: listen on an ephemeral port on
/// all IPv4 interfaces (TCP, and QUIC on UDP), mDNS on, no pre-shared key,
/// no allow-list.
///
/// ```
/// use p2p_core::PreSharedKey;
/// use p2p_libp2p::Libp2pConfig;
/// let cfg = Libp2pConfig::default()
///     .bind("0.0.0.0:4001".parse().unwrap())
///     .psk(PreSharedKey::from_bytes([7; 32])) // TCP only from here on
///     .mdns(false);
/// assert!(!cfg.quic_enabled());
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Libp2pConfig {
    /// Socket addresses to listen on: TCP at each, and QUIC on the same IP
    /// (its own ephemeral port when the port is 0, else the same port
    /// number on UDP) when QUIC is enabled. Empty means `0.0.0.0:0`.
    pub bind_addrs: Vec<SocketAddr>,
    /// Listen on and dial QUIC as well as TCP. Ignored, and QUIC stays off,
    /// when a pre-shared key is set: see [`Libp2pConfig::quic_enabled`].
    /// (mDNS, when on, uses UDP port 5353 for discovery either way; it
    /// carries no connections.)
    pub quic: bool,
    /// The private network key. Every TCP connection starts with the pnet
    /// handshake under this key, so a peer without it cannot complete the
    /// transport handshake.
    pub psk: Option<PreSharedKey>,
    /// Find peers on the local network by mDNS and answer their queries.
    pub mdns: bool,
    /// How often mDNS asks the network who is there, after a quick series
    /// of probes at start-up. Nodes that are already up learn of a
    /// newcomer at their next query, so this bounds how late they see it.
    pub mdns_query_interval: Duration,
    /// When set, only these peers may connect to or be dialed by this node
    /// (libp2p's allow-list behaviour refuses everyone else when the
    /// connection is set up).
    pub allow_list: Option<BTreeSet<PeerId>>,
    /// Bound on [`Provider::connect`](p2p_core::Provider::connect): dial,
    /// transport handshake and the peer's welcome. Also bounds the
    /// pre-shared-key nonce exchange and an inbound hand-over.
    pub connect_timeout: Duration,
    /// A libp2p connection that carries no SDK connection for this long is
    /// closed. SDK connections keep theirs open however long they are idle.
    pub idle_timeout: Duration,
    /// Pings go out this often on every connection; a connection whose
    /// ping fails (no answer within the same interval) is closed, so a
    /// vanished peer is noticed even when no data flows.
    pub ping_interval: Duration,
    /// Streams this node keeps open towards one peer, across all SDK
    /// connections to it; `open_bi` waits for room beyond it. A quarter of
    /// it is the queue of streams waiting in one connection's `accept_bi`,
    /// and the most opens of one connection that may wait for room in the
    /// peer's queue. yamux allows twice this per libp2p connection (at
    /// least 1024), for both sides together. At most 2000.
    pub max_concurrent_streams: usize,
    /// Established libp2p connections per peer (simultaneous dials can
    /// make two).
    pub max_connections_per_peer: u32,
    /// Peers with established inbound libp2p connections; a new peer
    /// beyond it is refused. Counted per peer, so that the TCP and QUIC
    /// connections of one dial never take two places.
    pub max_incoming_connections: u32,
    /// Inbound connections in their handshake at once.
    pub max_pending_incoming: u32,
    /// Inbound SDK connections accepted by the transport but not yet taken
    /// by [`Listener::accept`](p2p_core::Listener::accept); beyond this a
    /// dialer is told the node is busy.
    pub accept_backlog: usize,
    /// How long [`Provider::close`](p2p_core::Provider::close) waits for
    /// close reasons to be sent, and then for the libp2p connections to
    /// close, before it goes on anyway: `close` returns within twice this.
    pub close_timeout: Duration,
    /// Depth of the bounded channel from provider handles to the task that
    /// drives the libp2p swarm.
    pub command_buffer: usize,
    /// Circuit relay v2 nodes this node reserves a slot on, so that peers
    /// that cannot reach it directly (it is behind NAT) reach it through
    /// one of them; the node's address then carries
    /// `<relay addr>/p2p/<relay>/p2p-circuit`. Peers known by id alone are
    /// dialed through them too. With an allow-list, the relays are allowed
    /// at the transport (they cannot open SDK connections unless listed).
    pub relays: Vec<PeerAddr>,
    /// Serve as a circuit relay for other nodes (no limit on bytes; a
    /// relayed connection lasts at most `relay_circuit_duration`).
    pub relay_server: bool,
    /// The longest a connection relayed by this node lasts (libp2p relays
    /// always set one); a peer still relayed after it reconnects.
    pub relay_circuit_duration: Duration,
    /// How soon a relay that could not be reached, or refused a
    /// reservation, is tried again.
    pub relay_retry: Duration,
    /// How long `connect` waits, once it reached a peer through a relay,
    /// for hole punching to give a direct connection, so that the SDK
    /// connection starts on the direct path (and survives the relay going
    /// away). Returns at once when hole punching fails; zero: no wait. At
    /// most half of `connect_timeout` is used.
    pub hole_punch_wait: Duration,
}

impl Default for Libp2pConfig {
    fn default() -> Self {
        Libp2pConfig {
            bind_addrs: Vec::new(),
            quic: true,
            psk: None,
            mdns: true,
            mdns_query_interval: Duration::from_secs(30),
            allow_list: None,
            connect_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            ping_interval: Duration::from_secs(15),
            max_concurrent_streams: 256,
            max_connections_per_peer: 4,
            max_incoming_connections: 1024,
            max_pending_incoming: 128,
            accept_backlog: 64,
            close_timeout: Duration::from_secs(3),
            command_buffer: 64,
            relays: Vec::new(),
            relay_server: false,
            relay_circuit_duration: Duration::from_secs(24 * 3600),
            relay_retry: Duration::from_secs(15),
            hole_punch_wait: Duration::from_secs(3),
        }
    }
}

impl Libp2pConfig {
    /// Loopback only, mDNS off: for tests and single-machine demos.
    pub fn loopback() -> Self {
        Libp2pConfig::default()
            .bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
            .mdns(false)
    }

    /// Adds a listen address (the first call replaces the default).
    pub fn bind(mut self, addr: SocketAddr) -> Self {
        self.bind_addrs.push(addr);
        self
    }

    /// Switches QUIC on or off (it is off anyway with a pre-shared key).
    pub fn quic(mut self, on: bool) -> Self {
        self.quic = on;
        self
    }

    /// Makes this node a member of the private network of `key`.
    pub fn psk(mut self, key: PreSharedKey) -> Self {
        self.psk = Some(key);
        self
    }

    /// Switches mDNS discovery on or off.
    pub fn mdns(mut self, on: bool) -> Self {
        self.mdns = on;
        self
    }

    /// Restricts connections both ways to `peers`.
    pub fn allow_list(mut self, peers: impl IntoIterator<Item = PeerId>) -> Self {
        self.allow_list = Some(peers.into_iter().collect());
        self
    }

    /// Reserves slots on these relay nodes (see [`Libp2pConfig::relays`]).
    pub fn relays(mut self, relays: impl IntoIterator<Item = PeerAddr>) -> Self {
        self.relays.extend(relays);
        self
    }

    /// Serves as a circuit relay for other nodes, or not.
    pub fn relay_server(mut self, on: bool) -> Self {
        self.relay_server = on;
        self
    }

    /// Sets the connect timeout.
    pub fn connect_timeout(mut self, d: Duration) -> Self {
        self.connect_timeout = d;
        self
    }

    /// Sets the idle timeout of libp2p connections without SDK connections.
    pub fn idle_timeout(mut self, d: Duration) -> Self {
        self.idle_timeout = d;
        self
    }

    /// Whether this config listens on and dials QUIC: only when asked for
    /// *and* no pre-shared key is set. pnet encrypts a byte stream before
    /// the security handshake; QUIC brings its own TLS handshake over UDP
    /// datagrams that pnet cannot wrap, so a QUIC listener would let
    /// anyone without the key complete a handshake. With a key the node
    /// therefore neither listens on nor dials UDP for connections (mDNS,
    /// if on, still uses UDP for discovery).
    pub fn quic_enabled(&self) -> bool {
        self.quic && self.psk.is_none()
    }

    /// The bound on transport set-up (TCP or QUIC, pnet, noise, yamux):
    /// three quarters of `connect_timeout`, leaving the rest for the
    /// welcome, so that a failed handshake is reported as what it is
    /// rather than as `connect` timing out.
    pub(crate) fn setup_timeout(&self) -> Duration {
        self.connect_timeout * 3 / 4
    }

    /// The bound on a TCP connect: a third of the set-up time, so that a
    /// set-up that times out later had a TCP connection (see
    /// `transport::from_upgrade`).
    pub(crate) fn tcp_timeout(&self) -> Duration {
        self.setup_timeout() / 3
    }

    pub(crate) fn validate(&self) -> p2p_core::Result<()> {
        let bad = |what: &'static str, reason: &str| Err(p2p_core::Error::invalid(what, reason));
        if self.connect_timeout.is_zero() {
            return bad("connect_timeout", "must be more than zero");
        }
        if self.idle_timeout.is_zero() {
            return bad("idle_timeout", "must be more than zero");
        }
        if self.mdns_query_interval < Duration::from_secs(1) {
            return bad("mdns_query_interval", "must be at least 1 s");
        }
        if self.ping_interval < Duration::from_millis(100) {
            return bad("ping_interval", "must be at least 100 ms");
        }
        if self.max_concurrent_streams < 2 || self.max_concurrent_streams > 2000 {
            return bad("max_concurrent_streams", "must be 2 to 2000");
        }
        if self.max_connections_per_peer == 0 {
            return bad("max_connections_per_peer", "must be at least 1");
        }
        if self.max_incoming_connections == 0 {
            return bad("max_incoming_connections", "must be at least 1");
        }
        if self.max_pending_incoming == 0 {
            return bad("max_pending_incoming", "must be at least 1");
        }
        if self.accept_backlog == 0 {
            return bad("accept_backlog", "must be at least 1");
        }
        if self.command_buffer == 0 {
            return bad("command_buffer", "must be at least 1");
        }
        if self.relay_circuit_duration < Duration::from_secs(10)
            || self.relay_circuit_duration.as_secs() > u64::from(u32::MAX)
        {
            return bad("relay_circuit_duration", "must be 10 s to 136 years");
        }
        if self.relay_retry < Duration::from_millis(100) {
            return bad("relay_retry", "must be at least 100 ms");
        }
        for r in &self.relays {
            if r.addrs.is_empty() {
                return Err(p2p_core::Error::invalid(
                    "relays",
                    format!(
                        "relay {} has no address: give it as <id>@/ip4/.../tcp/...",
                        r.id
                    ),
                ));
            }
            crate::addr::to_multiaddrs(r)
                .map_err(|e| p2p_core::Error::invalid("relays", format!("relay {}: {e}", r.id)))?;
            if r.addrs.iter().any(|a| a.contains("p2p-circuit")) {
                return Err(p2p_core::Error::invalid(
                    "relays",
                    format!(
                        "relay {}: a relay must be reachable directly, not through another relay",
                        r.id
                    ),
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        let c = Libp2pConfig::default();
        c.validate().unwrap();
        assert!(c.quic_enabled() && c.mdns && c.psk.is_none());
        Libp2pConfig::loopback().validate().unwrap();
    }

    #[test]
    fn a_pre_shared_key_switches_quic_off() {
        let c = Libp2pConfig::default().psk(PreSharedKey::from_bytes([1; 32]));
        assert!(c.quic, "the request stays recorded");
        assert!(!c.quic_enabled(), "but QUIC must not be used with a key");
        assert!(!Libp2pConfig::default().quic(false).quic_enabled());
    }

    #[test]
    fn bad_settings_name_the_field() {
        let c = Libp2pConfig {
            max_concurrent_streams: 0,
            ..Libp2pConfig::default()
        };
        let cases = [
            (
                Libp2pConfig::default().connect_timeout(Duration::ZERO),
                "connect_timeout",
            ),
            (
                Libp2pConfig::default().idle_timeout(Duration::ZERO),
                "idle_timeout",
            ),
            (c, "max_concurrent_streams"),
        ];
        for (cfg, field) in cases {
            let e = cfg.validate().unwrap_err().to_string();
            assert!(e.contains(field), "{field}: {e}");
        }
    }
}
