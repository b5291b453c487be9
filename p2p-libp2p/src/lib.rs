//! # p2p-libp2p
//!
//! The libp2p transport of the p2p deployment SDK: a p2p-core
//! [`Provider`](p2p_core::Provider) over a libp2p 0.57 swarm on tokio. The
//! deploy layer only sees the p2p-core traits, so swapping this for
//! `p2p-iroh` or the simulator changes one constructor call.
//!
//! ```no_run
//! use p2p_core::{NodeKey, PreSharedKey, Provider};
//! use p2p_libp2p::{Libp2pConfig, Libp2pProvider};
//! use tokio::io::AsyncWriteExt;
//!
//! # async fn demo(key: NodeKey, psk: PreSharedKey, peer: p2p_core::PeerAddr) -> p2p_core::Result<()> {
//! // A private network: pnet under `psk`, TCP only.
//! let node = Libp2pProvider::bind(&key, Libp2pConfig::default().psk(psk)).await?;
//! println!("dial me at {}", node.local_addr()); // id@/ip4/192.0.2.7/tcp/4001,...
//! let conn = node.connect(&peer).await?;
//! let (mut send, _recv) = conn.open_bi().await?;
//! send.write_all(b"hello").await.map_err(|e| p2p_core::Error::io("send", e))?;
//! node.close("shutting down").await;
//! # Ok(()) }
//! ```
//!
//! ## The stack
//!
//! Every node speaks TCP + noise + yamux. Without a pre-shared key it also
//! listens on and dials QUIC (`/udp/<port>/quic-v1`); with one it uses TCP
//! only and opens no UDP socket for connections (mDNS, when on, still uses
//! UDP port 5353 for discovery).
//!
//! **Why no QUIC with a pre-shared key.** libp2p's private networks (pnet)
//! encrypt the raw byte stream under the key *before* the security
//! handshake, so a peer without the key never gets as far as noise. QUIC
//! carries its own TLS handshake inside UDP datagrams that pnet cannot
//! wrap: a QUIC listener would let anyone complete a handshake and open
//! streams, key or not. So [`Libp2pConfig::quic_enabled`] is false whenever
//! a key is set, whatever `quic` says, QUIC addresses are not listened on,
//! and a peer address with only QUIC addresses is refused with
//! [`Error::Invalid`](p2p_core::Error::Invalid).
//!
//! Other behaviours on the swarm: the allow-list (`allow-block-list`),
//! connection limits, ping (a connection whose ping goes unanswered for a
//! `ping_interval` is closed, so a vanished peer is noticed while idle),
//! mDNS, identify, circuit relay (client, and server when configured),
//! DCUtR, and streams for the SDK (a copy of `libp2p-stream`, below). One task owns the
//! swarm; provider handles talk to it through a bounded command channel.
//!
//! ## Configuration
//!
//! | [`Libp2pConfig`] field | default | meaning |
//! |---|---|---|
//! | `bind_addrs` | `0.0.0.0:0` | TCP at each, and QUIC on the same IP when enabled; [`Libp2pConfig::loopback`] binds `127.0.0.1:0` with mDNS off |
//! | `quic` | on | QUIC beside TCP, only without a key (above) |
//! | `psk` | none | the private network key (pnet) |
//! | `mdns`, `mdns_query_interval` | on, 30 s | LAN discovery; nodes already up see a newcomer at their next query |
//! | `allow_list` | none | peers allowed both ways |
//! | `connect_timeout` | 10 s | bound on `connect`; transport set-up gets three quarters of it |
//! | `idle_timeout` | 60 s | a libp2p connection without SDK connections closes after this; SDK connections keep theirs open while idle |
//! | `ping_interval` | 15 s | liveness of idle connections |
//! | `max_concurrent_streams` | 256 | streams this node keeps open to one peer; a quarter of it is one connection's `accept_bi` queue; yamux allows twice it (at least 1024) per libp2p connection |
//! | `max_connections_per_peer` | 4 | established libp2p connections per peer |
//! | `max_incoming_connections` | 1024 | peers with inbound libp2p connections (a peer's TCP and QUIC connections count once) |
//! | `max_pending_incoming` | 128 | inbound connections in their handshake |
//! | `accept_backlog` | 64 | inbound connections waiting for `Listener::accept`; beyond it dialers hear "busy" |
//! | `close_timeout` | 3 s | how long `close` waits for peers to answer its close reasons |
//! | `command_buffer` | 64 | depth of the channel to the swarm task |
//! | `relays` | none | circuit relay v2 nodes to reserve a slot on (below) |
//! | `relay_server` | off | serve as a circuit relay for other nodes |
//! | `relay_circuit_duration` | 24 h | the longest a connection this node relays lasts |
//! | `relay_retry` | 15 s | how soon an unreachable or refusing relay is tried again |
//! | `hole_punch_wait` | 3 s | how long `connect` through a relay waits for a direct path (at most half of `connect_timeout`) |
//!
//! [`Libp2pProvider::bind`] checks every field and fails with
//! [`Error::Invalid`](p2p_core::Error::Invalid) naming it; a fixed port that
//! is taken is refused too (libp2p sets `SO_REUSEPORT` on its listeners, so
//! without that check a second node would quietly share the port).
//!
//! ## Identities and addresses
//!
//! The [`NodeKey`](p2p_core::NodeKey) seed becomes a libp2p ed25519
//! keypair, so a [`PeerId`](p2p_core::PeerId) maps one to one onto a libp2p
//! peer id ([`addr`] has the conversions). Addresses in a
//! [`PeerAddr`](p2p_core::PeerAddr) are multiaddrs without the `/p2p/`
//! suffix (`<id>@/ip4/192.0.2.7/tcp/4001,/ip4/192.0.2.7/udp/4001/quic-v1`);
//! the suffix is added for dialing, so noise proves the id, and an address
//! that turns out to belong to another peer is an error, never a
//! connection.
//!
//! ## Connections and streams
//!
//! libp2p keeps about one connection per peer and `libp2p-stream` opens
//! streams to a peer rather than on a connection, so an SDK
//! [`Connection`](p2p_core::Connection) is a *session* on top: the dialer
//! opens a control stream, the accepting side answers with a welcome once a
//! listener takes the connection (or refuses: `Unreachable` "not accepting"
//! or "busy", `Denied`), and every later stream names its session in a
//! 20-byte header, so the inbound streams of a peer are demultiplexed to
//! their connections. Several SDK connections to one peer share its libp2p
//! connection. Closing one sends the reason on its control stream: the
//! peer's `accept_bi` fails with [`Error::Closed`](p2p_core::Error::Closed)
//! carrying it, and the streams of that connection end on both sides.
//! When the last handle and the last stream of a connection are dropped it
//! is closed the same way. Streams are libp2p streams adapted to tokio I/O;
//! nothing is added per byte.
//!
//! `libp2p-stream` hands inbound streams over through a channel with room
//! for one and drops a stream that arrives while it is full (libp2p issue
//! #5651). So the receiver answers every stream header at once with one
//! byte, and at most one stream to a given peer is between opened and
//! answered at a time; a stream still lost to a burst from several peers
//! is opened again. A second byte follows once the stream is queued for
//! the peer's `accept_bi`, and `open_bi` returns after it: when a
//! connection's queue (a quarter of `max_concurrent_streams`) is full,
//! `open_bi` waits for room, and at most as many opens of one connection
//! wait at once, so a peer that does not accept on one connection does not
//! starve the others. The streams this node opens to one peer, over all
//! connections to it, are limited to `max_concurrent_streams`; `open_bi`
//! waits beyond that too, which keeps both sides well under yamux's limit
//! (twice that, at least 1024), past which yamux would end the libp2p
//! connection. The cost is one round trip per `open_bi`, and opens to one
//! peer start at most one per round trip; data on open streams is not
//! affected. Dropping a send half without `shutdown` finishes it.
//!
//! Bounds: `connect` returns or fails within `connect_timeout`. A close
//! reaches the peer in one trip of its control message; a peer that
//! vanishes without closing is noticed when ping fails, within about twice
//! `ping_interval`.
//!
//! ## Relays and hole punching
//!
//! A node behind NAT lists relay nodes in `relays` (any provider with
//! `relay_server` on, such as `p2pd relay --backend libp2p`). It connects to
//! each, learns from the relay's identify the address its NAT shows, and
//! reserves a slot; its [`local_addr`](p2p_core::Provider::local_addr) then
//! carries `<relay addr>/p2p/<relay>/p2p-circuit`, and peers given that
//! (or only its id, through their own relays) reach it through the relay.
//! Then DCUtR punches a direct TCP path: both sides dial each other's
//! observed address at once. New streams take a direct connection before a
//! relayed one (the crate's copy of `libp2p-stream` is changed for that),
//! and `connect` through a relay waits up to `hole_punch_wait` for the
//! direct connection, so that an SDK connection starts on it and does not
//! end with the relay. [`Connection::path`](p2p_core::Connection::path)
//! says which path new streams take, with the ping round trip; a hole
//! punched, or a failed attempt, is logged.
//!
//! The relayed circuit goes through the same pnet and noise handshakes as
//! a direct connection: the relay forwards bytes it cannot read, must
//! itself hold the pre-shared key to be reached, and a peer without the
//! key gets no further through it than directly. With an allow-list the
//! relays are let in at the transport, but cannot open SDK connections
//! unless listed. A relay that cannot be reached, or refuses the
//! reservation, is logged as a warning naming it and the reason
//! ([`Libp2pProvider::relay_reports`]); the node keeps working on direct
//! paths and tries again every `relay_retry`. Circuits through a relay
//! wait until this node is connected to it (concurrent circuits through a
//! relay being dialed fail in libp2p's relay client).
//!
//! TCP hole punching needs a NAT that keeps a node's port (most home and
//! office NATs do); behind one NAT, give each node its own listen port. A
//! symmetric NAT (a new port per flow) defeats it, and traffic stays on the
//! relay.
//!
//! ## Admission
//!
//! With `psk` set, every TCP connection starts with the pnet nonce exchange
//! and is encrypted under the key from the first byte; a peer with another
//! key, or none, cannot complete the handshake, and `connect` reports
//! [`Error::Denied`](p2p_core::Error::Denied) ("refused the transport
//! handshake"), not a timeout. With `allow_list` set, libp2p's allow-list
//! behaviour refuses to dial anyone else (`connect` fails at once with
//! `Denied`) and closes connections from anyone else as soon as they are
//! established, which the dialer also gets as `Denied`. Connections beyond
//! the connection limits are refused the same way. The p2p-core
//! [`Admitted`](p2p_core::Admitted) wrapper works on top, for an
//! admission check that is the same on every backend.
//!
//! ## Discovery
//!
//! With `mdns` on, the node answers and sends libp2p mDNS queries
//! (`_p2p._udp.local`), dials peers by id alone through what it learned, and
//! lists the peers it sees in
//! [`Provider::discovered`](p2p_core::Provider::discovered): each
//! subscription first yields the peers already known, then news. libp2p
//! mDNS has no service name, so any libp2p node on the LAN with an ed25519
//! key is listed; admission decides who may connect. Peers with other key
//! types cannot be p2p-deploy nodes and are skipped. mDNS packets are not
//! covered by the pre-shared key: a node in a private network still
//! announces its id and addresses on the LAN unless `mdns` is off.
//!
//! ## Shutdown
//!
//! [`Provider::close`](p2p_core::Provider::close) sends the reason on every
//! connection (peers get [`Error::Closed`](p2p_core::Error::Closed) carrying
//! it), stops accepting, closes the libp2p connections and the listeners,
//! and ends discovery subscriptions. It waits at most `close_timeout` for
//! the peers to answer the close reasons (each answers by finishing its
//! side of the control stream; without that wait a QUIC connection closed
//! next would drop a reason not yet sent) and as long again for the
//! connections to close, so it returns within twice `close_timeout`. It is idempotent;
//! dropping the last provider handle does the same in the background.
//!
//! ## Performance
//!
//! Over libp2p itself the SDK adds the session hand-over (one round trip)
//! to `connect`, one round trip to `open_bi`, and on data nothing but the
//! tokio adapter and a check for the connection's end.
//! Measured figures (throughput, connect time, memory per connection) are
//! in the workspace README;
//! `cargo run --release -p p2p-benches --bin bench-report -- transport`
//! measures them on your machine.

pub mod addr;
mod config;
mod driver;
mod paths;
mod provider;
mod session;
mod streams;
mod transport;

pub use config::Libp2pConfig;
pub use driver::RelayReport;
pub use provider::{Libp2pListener, Libp2pProvider};
pub use session::{Libp2pConnection, PROTOCOL};
pub use transport::build_transport;
