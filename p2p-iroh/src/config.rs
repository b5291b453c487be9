//! [`IrohConfig`]: everything an embedder can set on an iroh provider.

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use iroh::endpoint::{IdleTimeout, QuicTransportConfig, VarInt};
use p2p_core::PeerId;

/// Where the provider may reach beyond the local network.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Connectivity {
    /// Direct addresses only: no relay servers, no DNS or pkarr lookups, no
    /// port mapping, no probes to outside hosts. Peers are reached at the
    /// socket addresses in their [`PeerAddr`](p2p_core::PeerAddr) or found
    /// by mDNS. This is the default.
    #[default]
    LocalOnly,
    /// The number 0 public infrastructure: the default relay servers (for
    /// hole punching and as a fallback path) and the `iroh.link` DNS/pkarr
    /// service, so that peers behind NAT can be dialed by id alone.
    N0Relays,
    /// Your own relay servers (`https://relay.example.com`, or
    /// `http://10.0.0.5:3340` for a relay without TLS), no DNS or pkarr
    /// lookups. The node keeps a connection to the closest one (its home
    /// relay), through which peers reach it before and unless hole punching
    /// gives them a direct path. A relay's QUIC address discovery, when it
    /// serves it, is expected on the default port 7842.
    CustomRelays(Vec<String>),
}

/// Configuration of an [`IrohProvider`](crate::IrohProvider).
///
/// The defaults are for a node on a LAN: bind an ephemeral port on all
/// interfaces, local-only [`Connectivity`], mDNS discovery on, no
/// allow-list, and QUIC windows sized for a gigabit link with a few
/// milliseconds of round trip (see the crate docs for the measurements).
///
/// ```
/// use p2p_iroh::IrohConfig;
/// let cfg = IrohConfig::default()
///     .bind("127.0.0.1:4433".parse().unwrap())
///     .mdns(false);
/// assert_eq!(cfg.bind_addrs, ["127.0.0.1:4433".parse().unwrap()]);
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct IrohConfig {
    /// Socket addresses to bind. Empty means the iroh default: an ephemeral
    /// port on `0.0.0.0` and, where the host has IPv6, on `[::]`. One
    /// address per IP family.
    pub bind_addrs: Vec<SocketAddr>,
    /// Relays and lookups beyond the local network.
    pub connectivity: Connectivity,
    /// Find peers on the local network by mDNS and advertise this node.
    pub mdns: bool,
    /// The mDNS service name; nodes only discover nodes with the same name.
    pub mdns_service: String,
    /// When set, only these peers may connect to or be dialed by this node,
    /// enforced in the endpoint's hooks before a connection is handed up.
    pub allow_list: Option<BTreeSet<PeerId>>,
    /// Bound on [`Provider::connect`](p2p_core::Provider::connect): QUIC
    /// handshake plus the peer's welcome.
    pub connect_timeout: Duration,
    /// A connection with no traffic for this long is closed. Keep-alives
    /// are sent at a third of it, so an idle but healthy connection stays up.
    pub idle_timeout: Duration,
    /// Bytes the peer may send on one stream before it is read
    /// (`stream_receive_window`).
    pub stream_receive_window: u32,
    /// Bytes the peer may send on all streams of a connection before they
    /// are read (`receive_window`).
    pub receive_window: u32,
    /// Bytes in flight to the peer without acknowledgement (`send_window`).
    pub send_window: u64,
    /// Streams the peer may have open towards us at once; more wait for
    /// credit in `open_bi`.
    pub max_concurrent_streams: u32,
    /// How long [`Provider::close`](p2p_core::Provider::close) waits for
    /// peers to acknowledge the close before returning anyway.
    pub close_timeout: Duration,
    /// Inbound handshakes in progress at once; further connection attempts
    /// wait in the QUIC accept queue.
    pub max_pending_handshakes: usize,
    /// Certificates (DER) trusted for relays besides the usual web roots:
    /// a self-signed relay's certificate, or a private CA. Read PEM files
    /// with [`crate::relay::certs_from_pem`].
    pub relay_ca_certs: Vec<Vec<u8>>,
}

impl Default for IrohConfig {
    fn default() -> Self {
        IrohConfig {
            bind_addrs: Vec::new(),
            connectivity: Connectivity::LocalOnly,
            mdns: true,
            mdns_service: "p2p-deploy".to_string(),
            allow_list: None,
            connect_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(30),
            stream_receive_window: 2 * 1024 * 1024,
            receive_window: 16 * 1024 * 1024,
            send_window: 16 * 1024 * 1024,
            max_concurrent_streams: 256,
            close_timeout: Duration::from_secs(3),
            max_pending_handshakes: 64,
            relay_ca_certs: Vec::new(),
        }
    }
}

impl IrohConfig {
    /// Loopback only, mDNS off: for tests and single-machine demos.
    pub fn loopback() -> Self {
        IrohConfig::default()
            .bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
            .mdns(false)
    }

    /// Binds `addr` (replacing the default bind addresses on the first call;
    /// call again to add the other IP family).
    pub fn bind(mut self, addr: SocketAddr) -> Self {
        self.bind_addrs.push(addr);
        self
    }

    /// Switches mDNS discovery on or off.
    pub fn mdns(mut self, on: bool) -> Self {
        self.mdns = on;
        self
    }

    /// Sets the mDNS service name.
    pub fn mdns_service(mut self, name: impl Into<String>) -> Self {
        self.mdns_service = name.into();
        self
    }

    /// Restricts connections both ways to `peers`.
    pub fn allow_list(mut self, peers: impl IntoIterator<Item = PeerId>) -> Self {
        self.allow_list = Some(peers.into_iter().collect());
        self
    }

    /// Sets the reach beyond the local network.
    pub fn connectivity(mut self, c: Connectivity) -> Self {
        self.connectivity = c;
        self
    }

    /// Trusts `certs` (DER) for relays, besides the usual web roots.
    pub fn trust_relay_certs(mut self, certs: impl IntoIterator<Item = Vec<u8>>) -> Self {
        self.relay_ca_certs.extend(certs);
        self
    }

    /// Sets the connect timeout.
    pub fn connect_timeout(mut self, d: Duration) -> Self {
        self.connect_timeout = d;
        self
    }

    /// Sets the idle timeout.
    pub fn idle_timeout(mut self, d: Duration) -> Self {
        self.idle_timeout = d;
        self
    }

    /// Sets the three flow-control windows together. Raise them for links
    /// with a large bandwidth-delay product: a window of `rate x RTT` bytes
    /// per stream keeps one stream at `rate`.
    pub fn windows(mut self, stream_receive: u32, receive: u32, send: u64) -> Self {
        self.stream_receive_window = stream_receive;
        self.receive_window = receive;
        self.send_window = send;
        self
    }

    /// The QUIC transport settings this config gives an endpoint: the
    /// windows, stream limits, idle timeout and keep-alive. Public so that a
    /// raw iroh endpoint can be built with exactly the provider's settings
    /// (the `transport` benchmark does).
    pub fn quic_transport_config(&self) -> p2p_core::Result<QuicTransportConfig> {
        self.quic_transport_config_with_uni(1)
    }

    pub(crate) fn quic_transport_config_with_uni(
        &self,
        uni_streams: u32,
    ) -> p2p_core::Result<QuicTransportConfig> {
        let idle: IdleTimeout = self
            .idle_timeout
            .try_into()
            .map_err(|_| p2p_core::Error::invalid("idle_timeout", "too large"))?;
        let keep_alive = (self.idle_timeout / 3).min(Duration::from_secs(5));
        Ok(QuicTransportConfig::builder()
            .stream_receive_window(VarInt::from_u32(self.stream_receive_window))
            .receive_window(VarInt::from_u32(self.receive_window))
            .send_window(self.send_window)
            .max_concurrent_bidi_streams(VarInt::from_u32(self.max_concurrent_streams))
            // The dialer takes one inbound uni stream, the welcome; the
            // accepting side takes none. The SDK uses no others.
            .max_concurrent_uni_streams(VarInt::from_u32(uni_streams))
            .max_idle_timeout(Some(idle))
            .keep_alive_interval(keep_alive)
            .build())
    }

    pub(crate) fn validate(&self) -> p2p_core::Result<()> {
        let bad = |what: &'static str, reason: &str| Err(p2p_core::Error::invalid(what, reason));
        if self.bind_addrs.iter().filter(|a| a.is_ipv4()).count() > 1
            || self.bind_addrs.iter().filter(|a| a.is_ipv6()).count() > 1
        {
            return bad("bind_addrs", "at most one IPv4 and one IPv6 address");
        }
        if self.connect_timeout.is_zero() {
            return bad("connect_timeout", "must be more than zero");
        }
        if self.idle_timeout < Duration::from_millis(300) {
            return bad("idle_timeout", "must be at least 300 ms");
        }
        if self.stream_receive_window < 16 * 1024 {
            return bad("stream_receive_window", "must be at least 16 KiB");
        }
        if self.receive_window < self.stream_receive_window {
            return bad(
                "receive_window",
                "must be at least the stream receive window",
            );
        }
        if self.send_window < 16 * 1024 {
            return bad("send_window", "must be at least 16 KiB");
        }
        if self.max_concurrent_streams == 0 {
            return bad("max_concurrent_streams", "must be at least 1");
        }
        if self.max_pending_handshakes == 0 {
            return bad("max_pending_handshakes", "must be at least 1");
        }
        if self.mdns_service.is_empty()
            || self.mdns_service.len() > 15
            || !self
                .mdns_service
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            return bad(
                "mdns_service",
                "must be 1 to 15 characters of letters, digits and '-' (a DNS-SD service name)",
            );
        }
        if let Connectivity::CustomRelays(urls) = &self.connectivity {
            if urls.is_empty() {
                return bad("connectivity", "custom relays need at least one URL");
            }
            for u in urls {
                crate::relay::parse_relay_url(u)
                    .map_err(|e| p2p_core::Error::invalid("connectivity", e.to_string()))?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_local_only() {
        let c = IrohConfig::default();
        c.validate().unwrap();
        assert_eq!(c.connectivity, Connectivity::LocalOnly);
        assert!(c.mdns);
        IrohConfig::loopback().validate().unwrap();
    }

    #[test]
    fn bad_settings_name_the_field() {
        let cases = [
            (
                IrohConfig::default()
                    .bind("127.0.0.1:1".parse().unwrap())
                    .bind("127.0.0.1:2".parse().unwrap()),
                "bind_addrs",
            ),
            (
                IrohConfig::default().connect_timeout(Duration::ZERO),
                "connect_timeout",
            ),
            (
                IrohConfig::default().idle_timeout(Duration::from_millis(1)),
                "idle_timeout",
            ),
            (
                IrohConfig::default().windows(1 << 20, 1 << 10, 1 << 20),
                "receive_window",
            ),
            (
                IrohConfig::default().mdns_service("has space"),
                "mdns_service",
            ),
            (
                IrohConfig::default()
                    .connectivity(Connectivity::CustomRelays(vec!["not a url".into()])),
                "connectivity",
            ),
        ];
        for (cfg, field) in cases {
            let e = cfg.validate().unwrap_err().to_string();
            assert!(e.contains(field), "{field}: {e}");
        }
    }
}
