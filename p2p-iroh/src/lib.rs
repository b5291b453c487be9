//! # p2p-iroh
//!
//! The iroh transport of the p2p deployment SDK: a p2p-core
//! [`Provider`](p2p_core::Provider) over an iroh 1.x QUIC endpoint. The
//! deploy layer only sees the p2p-core traits, so swapping this for
//! `p2p-libp2p` or the simulator changes one constructor call.
//!
//! ```no_run
//! use p2p_core::{NodeKey, Provider};
//! use p2p_iroh::{IrohConfig, IrohProvider};
//! use tokio::io::AsyncWriteExt;
//!
//! # async fn demo(key: NodeKey, peer: p2p_core::PeerAddr) -> p2p_core::Result<()> {
//! let node = IrohProvider::bind(&key, IrohConfig::default()).await?;
//! println!("dial me at {}", node.local_addr()); // id@ip:port,...
//! let conn = node.connect(&peer).await?;
//! let (mut send, _recv) = conn.open_bi().await?;
//! send.write_all(b"hello").await.map_err(|e| p2p_core::Error::io("send", e))?;
//! node.close("shutting down").await;
//! # Ok(()) }
//! ```
//!
//! ## Local-only by default
//!
//! [`IrohConfig::default`] never talks to anything outside the local network:
//! iroh's `presets::Minimal`, relays disabled, no DNS or pkarr lookups, no
//! port mapping (UPnP/PCP/NAT-PMP), network reports without HTTPS probes or
//! captive-portal checks, and nothing waits for a relay. Peers are dialed at
//! the socket addresses in their [`PeerAddr`](p2p_core::PeerAddr)
//! (`<id>@192.168.1.7:4433`) or found by mDNS.
//!
//! To work across the internet, choose a [`Connectivity`]:
//!
//! - [`Connectivity::CustomRelays`]: your own relays, no DNS. Run one with
//!   [`relay_server::RelayServer`] (feature `relay-server`; `p2pd relay`
//!   does it from the command line). A self-signed relay's certificate is
//!   trusted through [`IrohConfig::trust_relay_certs`].
//! - [`Connectivity::N0Relays`]: the number 0 public relays (hole punching,
//!   relayed fallback) and their DNS/pkarr service, so peers behind NAT can
//!   be dialed by id alone. The node then publishes its addresses there.
//!
//! A node with relays keeps a connection to one (its home relay), and its
//! [`local_addr`](p2p_core::Provider::local_addr) carries that relay's URL
//! next to its socket addresses
//! (`<id>@192.168.1.7:4433,https://relay.example.com/`). A peer given that
//! address, or only `<id>@https://relay.example.com/`, reaches the node
//! through the relay at once, then both punch a direct path through their
//! NATs (helped by the relay's QUIC address discovery) and move to it; where
//! NAT does not allow it (symmetric NAT on both sides), traffic stays on
//! the relay. [`Connection::path`](p2p_core::Connection::path) says which
//! path a connection uses, with its round-trip time, and each change
//! (relayed to direct, or back) is logged.
//!
//! A relay that cannot be reached does not stop the node: it keeps working
//! on direct paths, and [`IrohProvider::relay_health`] (logged as a
//! warning when it changes) names the relay and the reason, such as a
//! certificate the node does not trust. A relay-only address with relays
//! off fails at once, saying so.
//!
//! ## Configuration
//!
//! | [`IrohConfig`] field | default | meaning |
//! |---|---|---|
//! | `bind_addrs` | `0.0.0.0:0` and `[::]:0` | one socket per IP family; [`IrohConfig::loopback`] binds `127.0.0.1:0` |
//! | `connectivity` | `LocalOnly` | relays and lookups, above |
//! | `mdns`, `mdns_service` | on, `p2p-deploy` | LAN discovery; only nodes with the same service name see each other |
//! | `allow_list` | none | peers allowed both ways, enforced in endpoint hooks |
//! | `connect_timeout` | 10 s | bound on `connect` (handshake plus welcome), and on an inbound hand-over |
//! | `idle_timeout` | 30 s | keep-alives every third of it (at most 5 s) |
//! | `stream_receive_window` | 2 MiB | per stream; keeps one stream at 1 Gbit/s up to 16 ms RTT |
//! | `receive_window`, `send_window` | 16 MiB | per connection |
//! | `max_concurrent_streams` | 256 | streams a peer may have open towards us |
//! | `close_timeout` | 3 s | how long `close` waits for peers to acknowledge |
//! | `relay_ca_certs` | none | certificates trusted for relays besides the web roots |
//!
//! Every field is checked by [`IrohProvider::bind`]; a bad value fails with
//! [`Error::Invalid`](p2p_core::Error::Invalid) naming the field.
//!
//! Raising `stream_receive_window` helps on long fat links, but the QUIC
//! stack (noq) closes a connection whose stream reassembly buffer holds more
//! than 1024 gaps, so under heavy packet loss a window much above
//! 2 x 1024 packets (about 2.4 MB) can kill a connection with `too many gaps
//! in stream buffer`. The 2 MiB default stays under that bound; iroh's own
//! default is 1.25 MB.
//!
//! ## Identities, addresses, streams
//!
//! The [`NodeKey`](p2p_core::NodeKey) seed is the iroh `SecretKey`, so a
//! [`PeerId`](p2p_core::PeerId) is the iroh endpoint id, byte for byte
//! ([`addr`] has the conversions). The TLS handshake proves the id; a
//! different key at the dialed address is an error, never a connection.
//!
//! The SDK uses one ALPN, [`ALPN`]. Which protocol a stream speaks is named
//! at the start of the stream by p2p-core's versioned hello, so one
//! connection per peer carries every SDK protocol. A stream opened with
//! `open_bi` reaches the peer's `accept_bi` with its first byte.
//!
//! ## Admission
//!
//! With `allow_list` set, the endpoint's hooks refuse to dial a peer outside
//! the list before any packet is sent ([`Error::Denied`](p2p_core::Error::Denied)
//! at once), and close any connection from one right after the handshake,
//! with a reason the dialer receives as `Denied`. iroh has no pre-shared-key
//! mechanism; wrap the provider in [`p2p_core::Admitted`] for a PSK (and for
//! a second, transport-independent allow-list check). Both together work.
//!
//! `connect` returns only after the accepting side has passed its hooks and
//! handed the connection to a listener, which it signals with a short
//! welcome on a unidirectional stream. So a refusal is an error from
//! `connect` (`Denied`, or `Unreachable` when the peer has no listener),
//! not a connection that dies a moment later. A dialer that does not take
//! the welcome within `connect_timeout` is disconnected, so it cannot hold
//! one of the `max_pending_handshakes` slots for long.
//!
//! ## Discovery
//!
//! With `mdns` on, the node advertises its direct addresses by mDNS
//! (`iroh-mdns-address-lookup`), dials peers by id alone through the same
//! lookup, and lists the peers it sees in
//! [`Provider::discovered`](p2p_core::Provider::discovered): each
//! subscription first yields the peers already known, then news. Multicast
//! needs an interface that carries it; loopback does not.
//!
//! ## Shutdown
//!
//! [`Provider::close`](p2p_core::Provider::close) closes every connection
//! with the given reason (peers get [`Error::Closed`](p2p_core::Error::Closed)
//! carrying it), stops accepting, ends discovery subscriptions, and waits at
//! most `close_timeout` for peers to acknowledge. It is idempotent.
//!
//! ## Performance
//!
//! `cargo run --release -p p2p-benches --bin bench-report -- transport`
//! measures streams, connects and memory against raw iroh and tokio TCP
//! in the same run; the figures are in the README's benchmark section.
//! The SDK adds a boxed stream and nothing per byte; connect adds the
//! welcome, half a round trip.

pub mod addr;
mod config;
mod conn;
mod discovery;
mod hooks;
mod provider;
pub mod relay;
#[cfg(feature = "relay-server")]
pub mod relay_server;

pub use config::{Connectivity, IrohConfig};
pub use conn::IrohConnection;
pub use provider::{ALPN, IrohListener, IrohProvider};
