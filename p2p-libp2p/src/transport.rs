//! The libp2p transport stack, and what its dial errors mean to a caller.
//!
//! TCP or a circuit through a relay, then (with a pre-shared key) the pnet
//! handshake, then multistream-select, noise and yamux; QUIC beside it only
//! when no key is set. A relayed connection goes through the same pnet and
//! noise handshakes as a direct one, end to end: the relay forwards bytes
//! it cannot read, and a peer without the key gets no further through a
//! relay than directly. Errors are labelled with the stage that failed ([`DialStage`]) so
//! that [`classify`] can tell "nobody listens there" from "the peer is
//! there but refused our handshake".

use std::error::Error as StdError;
use std::io;
use std::time::Duration;

use either::Either;
use libp2p::core::muxing::StreamMuxerBox;
use libp2p::core::transport::timeout::{TransportTimeout, TransportTimeoutError};
use libp2p::core::transport::upgrade::Version;
use libp2p::core::transport::{Boxed, OptionalTransport, TransportError};
use libp2p::identity::Keypair;
use libp2p::multiaddr::Protocol;
use libp2p::{Multiaddr, Transport, noise, pnet, quic, relay, tcp, yamux};
use p2p_core::Error;

use crate::config::Libp2pConfig;

/// The stage of connection set-up that failed, carried inside the
/// `io::Error`s libp2p reports for a dial.
#[derive(Debug, thiserror::Error)]
pub(crate) enum DialStage {
    /// The TCP connection itself.
    #[error("TCP connection failed: {0}")]
    Tcp(io::Error),
    /// The pnet nonce exchange (the peer did not answer it).
    #[error("pre-shared key handshake failed: {0}")]
    Psk(String),
    /// multistream-select, noise or yamux after the connection was made.
    #[error("security handshake failed: {0}")]
    Handshake(String),
    /// The whole set-up took longer than the connect timeout.
    #[error("connection set-up timed out")]
    Timeout,
    /// A QUIC dial.
    #[error("QUIC connection failed: {0}")]
    Quic(String),
    /// A circuit through a relay (reaching the relay, or the relay
    /// reaching the peer).
    #[error("relayed connection failed: {0}")]
    Relay(String),
}

/// Carries a [`DialStage`] through libp2p's error wrappers: those forward
/// `source()` of what they wrap but hide the wrapped error itself, so the
/// stage is put one level further down, where `source()` reaches it.
#[derive(Debug)]
struct Labelled(DialStage);

impl std::fmt::Display for Labelled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl StdError for Labelled {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        Some(&self.0)
    }
}

fn labelled(stage: DialStage) -> io::Error {
    io::Error::other(Labelled(stage))
}

/// Labels what the upgraded stack reports: a timeout of the whole set-up,
/// a stage labelled further down, or else a failed security handshake.
///
/// The TCP connect has its own, shorter bound, so a set-up that times out
/// had a TCP connection whose handshake never completed. With keys that
/// differ, or a key on one side only, that is what happens: one side
/// reads pnet's random bytes as a handshake message announcing more bytes
/// than will come, and waits for them.
fn from_upgrade<X: StdError + Send + Sync + 'static>(
    e: TransportTimeoutError<X>,
    psk: bool,
    setup: Duration,
) -> io::Error {
    match e {
        TransportTimeoutError::Timeout if psk => labelled(DialStage::Psk(format!(
            "no handshake within {setup:?} although the peer accepted the TCP connection \
             and sent its nonce: most likely a different key"
        ))),
        TransportTimeoutError::Timeout => labelled(DialStage::Handshake(format!(
            "no handshake within {setup:?} although the peer accepted the TCP connection; \
             it may require a pre-shared key"
        ))),
        TransportTimeoutError::TimerError(e) => labelled(DialStage::Handshake(e.to_string())),
        TransportTimeoutError::Other(x) if stage_of(&x).is_some() => io::Error::other(x),
        TransportTimeoutError::Other(x) => labelled(DialStage::Handshake(x.to_string())),
    }
}

/// Streams yamux allows on one connection, both directions together (and
/// QUIC in each direction): at
/// least 1024, and room for both sides' budgets. A receiver holds a
/// stream until its app drops it, which can be after the opener let go,
/// so the limit leaves headroom over the budgets.
pub(crate) fn yamux_stream_limit(config: &Libp2pConfig) -> usize {
    (2 * config.max_concurrent_streams + 8).max(1024)
}

/// The yamux settings of a config.
///
/// yamux counts the streams of both directions together and closes the
/// connection when the peer opens one past its limit, so the limit is
/// twice what each side may open (plus room for ping): each side keeps to
/// `max_concurrent_streams` through the per-peer budget in the session
/// layer.
fn yamux_config(config: &Libp2pConfig) -> yamux::Config {
    let mut y = yamux::Config::default();
    y.set_max_num_streams(yamux_stream_limit(config));
    y
}

/// Builds the transport a provider with `config` uses: TCP, or circuits
/// through `relay_client` when given (it must be the transport half of the
/// relay client behaviour in the same swarm), + (pnet) + noise + yamux, and
/// QUIC when [`Libp2pConfig::quic_enabled`]. Public so that a raw libp2p
/// swarm can be built on exactly the provider's stack (the `transport`
/// benchmark does).
pub fn build_transport(
    key: &Keypair,
    config: &Libp2pConfig,
    relay_client: Option<relay::client::Transport>,
) -> p2p_core::Result<Boxed<(libp2p::PeerId, StreamMuxerBox)>> {
    let backend = |e: noise::Error| Error::Backend {
        backend: "libp2p",
        source: Box::new(e),
    };
    let noise = noise::Config::new(key).map_err(backend)?;
    let yamux = yamux_config(config);
    let setup = config.setup_timeout();
    let tcp_wait = config.tcp_timeout();
    let tcp = TransportTimeout::with_outgoing_timeout(
        tcp::tokio::Transport::new(tcp::Config::new().nodelay(true)),
        tcp_wait,
    )
    .map_err(move |e| {
        labelled(DialStage::Tcp(match e {
            TransportTimeoutError::Timeout => io::Error::new(
                io::ErrorKind::TimedOut,
                format!("no TCP connection within {tcp_wait:?}"),
            ),
            TransportTimeoutError::TimerError(e) | TransportTimeoutError::Other(e) => e,
        }))
    });
    let relay = match relay_client {
        Some(t) => OptionalTransport::some(t),
        None => OptionalTransport::none(),
    }
    .map_err(|e: relay::client::transport::Error| {
        // The error's text is generic; its cause says what failed.
        let why = StdError::source(&e)
            .map(|s| format!(": {s}"))
            .unwrap_or_default();
        labelled(DialStage::Relay(format!("{e}{why}")))
    });
    let tcp = relay.or_transport(tcp).map_err(|e| match e {
        Either::Left(e) | Either::Right(e) => e,
    });
    let stream_stack = match &config.psk {
        Some(psk) => {
            let psk = pnet::PreSharedKey::new(*psk.as_bytes());
            // TCP connect and the nonce exchange get a third of the set-up
            // time each, so that a peer that never answers the nonce (it
            // has no key) is reported as a refused handshake, and a set-up
            // that times out after both succeeded had a TCP connection and
            // a nonce from the peer but no handshake: keys that differ.
            let nonce_wait = setup / 3;
            tcp.and_then(move |socket, _| async move {
                match tokio::time::timeout(nonce_wait, pnet::PnetConfig::new(psk).handshake(socket))
                    .await
                {
                    Ok(Ok(out)) => Ok(out),
                    Ok(Err(e)) => Err(labelled(DialStage::Psk(e.to_string()))),
                    Err(_) => Err(labelled(DialStage::Psk(format!(
                        "the peer sent no pre-shared-key nonce within {nonce_wait:?}"
                    )))),
                }
            })
            .upgrade(Version::V1Lazy)
            .authenticate(noise)
            .multiplex(yamux)
            .timeout(setup)
            .map_err(move |e| from_upgrade(e, true, setup))
            .map(|(peer, muxer), _| (peer, StreamMuxerBox::new(muxer)))
            .boxed()
        }
        None => tcp
            .upgrade(Version::V1Lazy)
            .authenticate(noise)
            .multiplex(yamux)
            .timeout(setup)
            .map_err(move |e| from_upgrade(e, false, setup))
            .map(|(peer, muxer), _| (peer, StreamMuxerBox::new(muxer)))
            .boxed(),
    };
    if !config.quic_enabled() {
        return Ok(stream_stack);
    }
    let mut qc = quic::Config::new(key);
    qc.handshake_timeout = setup;
    // The same headroom as yamux: a receiver holds a stream until its app
    // drops it, and ping and identify open streams outside the budget. At
    // exactly the budget, one stream still held by the peer made QUIC hold
    // back the next open, and with it every later open on the connection.
    qc.max_concurrent_stream_limit = u32::try_from(yamux_stream_limit(config))
        .map_err(|_| Error::invalid("max_concurrent_streams", "too large for QUIC"))?;
    let quic = quic::tokio::Transport::new(qc)
        .map_err(|e| {
            labelled(match e {
                quic::Error::HandshakeTimedOut => DialStage::Timeout,
                other => DialStage::Quic(other.to_string()),
            })
        })
        .map(|(peer, conn), _| (peer, StreamMuxerBox::new(conn)));
    Ok(stream_stack
        .or_transport(quic)
        .map_err(|e| match e {
            Either::Left(e) | Either::Right(e) => e,
        })
        .map(|either, _| either.into_inner())
        .boxed())
}

/// Finds the [`DialStage`] label in an error chain. `io::Error::source`
/// skips the error it wraps, so each `io::Error` is opened by hand.
fn stage_of<'a>(mut e: &'a (dyn StdError + 'static)) -> Option<&'a DialStage> {
    loop {
        if let Some(stage) = e.downcast_ref::<DialStage>() {
            return Some(stage);
        }
        if let Some(stage) = e
            .downcast_ref::<io::Error>()
            .and_then(|io| io.get_ref())
            .and_then(|inner| stage_of(inner))
        {
            return Some(stage);
        }
        e = e.source()?;
    }
}

/// Whether `addr` goes through a relay.
pub(crate) fn is_relayed(addr: &Multiaddr) -> bool {
    addr.iter().any(|p| p == Protocol::P2pCircuit)
}

/// How bad one failed address is; the most telling one is reported.
fn rank(e: &Error) -> u8 {
    match e {
        Error::Denied { .. } => 3,
        Error::Invalid { .. } => 2,
        Error::Timeout { .. } => 1,
        _ => 0,
    }
}

/// Maps the per-address errors of a failed dial into the error a caller
/// acts on: [`Error::Unreachable`] when nothing answered, [`Error::Timeout`]
/// when set-up took too long, [`Error::Denied`] when the peer was there but
/// the handshake failed (a different pre-shared key, or none).
pub(crate) fn classify(
    who: &str,
    errors: &[(Multiaddr, TransportError<io::Error>)],
    setup: Duration,
    tcp_wait: Duration,
) -> Error {
    // The most telling error wins; between equals, one through a relay (a
    // peer behind NAT usually also lists private addresses nobody else can
    // reach, whose failure says nothing).
    let mut worst: Option<(Error, (u8, bool))> = None;
    for (addr, err) in errors {
        let e = match err {
            TransportError::MultiaddrNotSupported(a) => Error::invalid(
                "peer address",
                format!(
                    "{a} is not an address this node can dial (TCP, or QUIC without a pre-shared key)"
                ),
            ),
            TransportError::Other(io) => match stage_of(io) {
                Some(DialStage::Tcp(tcp)) if tcp.kind() == io::ErrorKind::TimedOut => {
                    Error::timeout(format!("TCP connect to {who} at {addr}"), tcp_wait)
                }
                Some(DialStage::Tcp(tcp)) => {
                    Error::unreachable(format!("{who} at {addr}: TCP connection failed: {tcp}"))
                }
                Some(DialStage::Quic(q)) => {
                    Error::unreachable(format!("{who} at {addr}: QUIC connection failed: {q}"))
                }
                Some(DialStage::Relay(r)) => {
                    Error::unreachable(format!("{who} through the relay at {addr}: {r}"))
                }
                Some(DialStage::Timeout) if is_relayed(addr) => Error::timeout(
                    format!("relayed connection set-up with {who} at {addr}"),
                    setup,
                ),
                Some(DialStage::Timeout) => {
                    Error::timeout(format!("connection set-up with {who} at {addr}"), setup)
                }
                Some(stage @ (DialStage::Psk(_) | DialStage::Handshake(_))) => {
                    Error::denied(format!(
                        "{who} at {addr} refused the transport handshake ({stage}); \
                         it may use a different pre-shared key, or none, or not be a p2p-deploy node"
                    ))
                }
                None => Error::unreachable(format!("{who} at {addr}: {io}")),
            },
        };
        let weight = (rank(&e), is_relayed(addr));
        if worst.as_ref().is_none_or(|(_, w)| weight > *w) {
            worst = Some((e, weight));
        }
    }
    worst
        .map(|(e, _)| e)
        .unwrap_or_else(|| Error::unreachable(format!("{who}: no address could be dialed")))
}
