//! Admission: who may talk to this node at all.
//!
//! [`Admitted`] wraps any [`Provider`] and, before a connection is handed up
//! on either side, enforces an [`Admission`] policy:
//!
//! - an **allow-list** of peer ids: a peer not on it is refused, whether it
//!   dials us or we dial it;
//! - a **pre-shared key** ([`PreSharedKey`]): both sides prove knowledge of
//!   the same 32-byte key with HMAC-SHA256 over a transcript that binds both
//!   peer ids (as verified by the transport) and a fresh nonce from each
//!   side, so a proof cannot be replayed to another peer or in another
//!   session, and neither side learns anything about a key it does not hold.
//!
//! A refused dial fails with [`Error::Denied`] carrying the reason; a
//! refused inbound connection is closed with the reason and never yielded by
//! the listener. The wrapper works over every backend; backends may also
//! enforce natively (libp2p pnet, iroh hooks), and the wrapper gives the
//! same guarantee everywhere.
//!
//! ## Handshake (`p2p/admission` v1, on the first stream of a connection)
//!
//! ```text
//! dialer -> listener  hello, Offer { nonce_d, has_key }
//! listener            refuses if the dialer is not allow-listed or key presence differs
//! listener -> dialer  Challenge { nonce_l, proof_l = HMAC(k, "listener" | ids | nonces) }
//! dialer              refuses if proof_l is wrong
//! dialer -> listener  Proof { proof_d = HMAC(k, "dialer" | ids | nonces) }
//! listener -> dialer  Admitted, or Denied { reason }
//! ```
//!
//! ```
//! # use p2p_core::{Admission, PreSharedKey};
//! # use rand::SeedableRng;
//! let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(1);
//! let key = PreSharedKey::generate(&mut rng);
//! let policy = Admission::new(&mut rng).with_psk(key);
//! // let provider = p2p_core::Admitted::new(inner_provider, policy);
//! # let _ = policy;
//! ```

use std::collections::BTreeSet;
use std::fmt;
use std::path::Path;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use hmac::{KeyInit, Mac};
use rand::{CryptoRng, SeedableRng};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinHandle;
use zeroize::Zeroizing;

use crate::addr::PeerAddr;
use crate::error::{Error, Result};
use crate::framing::{Framed, ProtocolId};
use crate::id::PeerId;
use crate::transport::{Connection, Discovered, Listener, Provider};

/// The admission protocol spoken on the first stream of every connection.
pub const ADMISSION_PROTOCOL: ProtocolId = ProtocolId {
    name: "p2p/admission",
    min: 1,
    max: 1,
};

/// Largest admission message; they are all well under 200 bytes.
const MAX_ADMISSION_FRAME: u32 = 1024;
/// Prefix of the close reason when a peer is refused; the dialer maps a
/// connection closed with it into [`Error::Denied`].
const DENIED_PREFIX: &str = "admission denied: ";
/// Inbound handshakes run concurrently up to this many; more wait.
const MAX_PENDING_HANDSHAKES: usize = 64;
/// Admitted inbound connections waiting for `accept`.
const ACCEPT_QUEUE: usize = 32;
/// How long a refusing side waits for the peer to read the refusal and
/// hang up before it closes the connection itself.
const LINGER_AFTER_DENIAL: Duration = Duration::from_secs(2);

/// A 32-byte pre-shared network key. Never printed by `Debug`; zeroed on drop.
///
/// Its text form (files, environment) is 64 hex characters.
#[derive(Clone)]
pub struct PreSharedKey(Zeroizing<[u8; 32]>);

impl PreSharedKey {
    /// Generates a new key from `rng`.
    pub fn generate<R: CryptoRng + ?Sized>(rng: &mut R) -> Self {
        let mut k = Zeroizing::new([0u8; 32]);
        rng.fill_bytes(k.as_mut());
        PreSharedKey(k)
    }

    /// A key from raw bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        PreSharedKey(Zeroizing::new(bytes))
    }

    /// The raw key bytes (for backends that enforce the key natively).
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The key as 64 hex characters.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0.as_ref())
    }

    /// Loads a key file: the first line that is not empty and not a `#`
    /// comment holds 64 hex characters.
    pub fn load(path: &Path) -> Result<Self> {
        let text = Zeroizing::new(
            std::fs::read_to_string(path)
                .map_err(|e| Error::io(format!("reading pre-shared key {}", path.display()), e))?,
        );
        let line = text
            .lines()
            .map(str::trim)
            .find(|l| !l.is_empty() && !l.starts_with('#'))
            .unwrap_or("");
        line.parse()
            .map_err(|e| Error::invalid("pre-shared key file", format!("{}: {e}", path.display())))
    }
}

impl FromStr for PreSharedKey {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let s = s.trim();
        let mut k = Zeroizing::new([0u8; 32]);
        if s.len() != 64 || hex::decode_to_slice(s, k.as_mut()).is_err() {
            return Err(Error::invalid(
                "pre-shared key",
                format!("expected 64 hex characters, got {} characters", s.len()),
            ));
        }
        Ok(PreSharedKey(k))
    }
}

impl fmt::Debug for PreSharedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PreSharedKey(redacted)")
    }
}

/// An admission policy: optional pre-shared key, optional allow-list.
///
/// With neither set, every peer the transport authenticates is admitted
/// (the handshake still runs, so both ends agree that no key is in use).
pub struct Admission {
    psk: Option<PreSharedKey>,
    allow: Option<BTreeSet<PeerId>>,
    handshake_timeout: Duration,
    nonces: Mutex<rand_chacha::ChaCha20Rng>,
}

impl fmt::Debug for Admission {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Admission")
            .field("psk", &self.psk.as_ref().map(|_| "set"))
            .field("allow", &self.allow.as_ref().map(BTreeSet::len))
            .field("handshake_timeout", &self.handshake_timeout)
            .finish()
    }
}

impl Admission {
    /// An open policy. `rng` seeds the generator of handshake nonces: an
    /// OS-backed RNG in production, a seeded one in simulations.
    pub fn new<R: CryptoRng + ?Sized>(rng: &mut R) -> Self {
        let mut seed = [0u8; 32];
        rng.fill_bytes(&mut seed);
        Admission {
            psk: None,
            allow: None,
            handshake_timeout: Duration::from_secs(10),
            nonces: Mutex::new(rand_chacha::ChaCha20Rng::from_seed(seed)),
        }
    }

    /// Requires every peer to prove `key`.
    pub fn with_psk(mut self, key: PreSharedKey) -> Self {
        self.psk = Some(key);
        self
    }

    /// Admits only the listed peers (in both directions).
    pub fn with_allow_list(mut self, peers: impl IntoIterator<Item = PeerId>) -> Self {
        self.allow = Some(peers.into_iter().collect());
        self
    }

    /// How long a handshake may take before the connection is dropped
    /// (default 10 s).
    pub fn with_handshake_timeout(mut self, timeout: Duration) -> Self {
        self.handshake_timeout = timeout;
        self
    }

    /// The pre-shared key, if one is required.
    pub fn psk(&self) -> Option<&PreSharedKey> {
        self.psk.as_ref()
    }

    /// The allow-list, if one is set.
    pub fn allow_list(&self) -> Option<&BTreeSet<PeerId>> {
        self.allow.as_ref()
    }

    /// Checks `peer` against the allow-list.
    pub fn check_allowed(&self, peer: &PeerId) -> Result<()> {
        match &self.allow {
            Some(list) if !list.contains(peer) => Err(Error::denied(format!(
                "peer {} is not in the allow-list",
                peer.short()
            ))),
            _ => Ok(()),
        }
    }

    fn nonce(&self) -> [u8; 32] {
        let mut n = [0u8; 32];
        let mut rng = crate::sync::lock(&self.nonces);
        rand::Rng::fill_bytes(&mut *rng, &mut n);
        n
    }

    fn proof(&self, role: &[u8], t: &Transcript) -> Option<[u8; 32]> {
        let key = self.psk.as_ref()?;
        let mut mac = <hmac::Hmac<Sha256> as KeyInit>::new_from_slice(key.as_bytes())
            .expect("HMAC accepts keys of any length");
        t.feed(role, &mut mac);
        Some(mac.finalize().into_bytes().into())
    }

    fn verify(&self, role: &[u8], t: &Transcript, proof: &[u8; 32]) -> bool {
        let Some(key) = self.psk.as_ref() else {
            return false;
        };
        let mut mac = <hmac::Hmac<Sha256> as KeyInit>::new_from_slice(key.as_bytes())
            .expect("HMAC accepts keys of any length");
        t.feed(role, &mut mac);
        // Constant-time comparison.
        mac.verify_slice(proof).is_ok()
    }
}

struct Transcript {
    dialer: PeerId,
    listener: PeerId,
    nonce_d: [u8; 32],
    nonce_l: [u8; 32],
}

impl Transcript {
    fn feed(&self, role: &[u8], mac: &mut hmac::Hmac<Sha256>) {
        mac.update(b"p2p-admission-v1\0");
        mac.update(role);
        mac.update(b"\0");
        mac.update(self.dialer.as_bytes());
        mac.update(self.listener.as_bytes());
        mac.update(&self.nonce_d);
        mac.update(&self.nonce_l);
    }
}

#[derive(Debug, Serialize, Deserialize)]
enum Msg {
    Offer {
        nonce: [u8; 32],
        has_key: bool,
    },
    Challenge {
        nonce: [u8; 32],
        proof: Option<[u8; 32]>,
    },
    Proof {
        proof: Option<[u8; 32]>,
    },
    Admitted,
    Denied {
        reason: String,
    },
}

/// A [`Provider`] that admits only peers passing an [`Admission`] policy.
///
/// See the [module docs](self) for the guarantees and the handshake.
pub struct Admitted<P> {
    inner: P,
    policy: Arc<Admission>,
    accept_loop: Mutex<Option<(JoinHandle<()>, AcceptTx)>>,
}

type AcceptTx = mpsc::Sender<Result<Arc<dyn Connection>>>;

impl<P: fmt::Debug> fmt::Debug for Admitted<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Admitted")
            .field("inner", &self.inner)
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

impl<P: Provider> Admitted<P> {
    /// Wraps `inner` with `policy`.
    pub fn new(inner: P, policy: Admission) -> Self {
        Admitted {
            inner,
            policy: Arc::new(policy),
            accept_loop: Mutex::new(None),
        }
    }

    /// The wrapped provider.
    pub fn inner(&self) -> &P {
        &self.inner
    }

    /// The policy in force.
    pub fn policy(&self) -> &Admission {
        &self.policy
    }
}

#[async_trait]
impl<P: Provider> Provider for Admitted<P> {
    fn backend(&self) -> &'static str {
        self.inner.backend()
    }

    fn local_id(&self) -> PeerId {
        self.inner.local_id()
    }

    fn stats(&self) -> crate::TransportStats {
        self.inner.stats()
    }

    fn local_addr(&self) -> PeerAddr {
        self.inner.local_addr()
    }

    async fn connect(&self, peer: &PeerAddr) -> Result<Arc<dyn Connection>> {
        // Refuse before dialing when we already know the id is not allowed.
        self.policy.check_allowed(&peer.id)?;
        let conn = self.inner.connect(peer).await?;
        let local = self.inner.local_id();
        let timeout = self.policy.handshake_timeout;
        let outcome = match tokio::time::timeout(timeout, dial(&self.policy, local, &*conn)).await {
            Ok(r) => r,
            Err(_) => Err(Error::timeout("running the admission handshake", timeout)),
        };
        match outcome {
            Ok(()) => Ok(conn),
            Err(e) => {
                let e = into_denied(e);
                if !matches!(e, Error::Closed { .. }) {
                    conn.close(&format!("{DENIED_PREFIX}{}", denial_text(&e)))
                        .await;
                }
                Err(e)
            }
        }
    }

    async fn listen(&self) -> Result<Box<dyn Listener>> {
        let previous = {
            let mut slot = crate::sync::lock(&self.accept_loop);
            match slot.take() {
                Some((task, tx)) if !tx.is_closed() => {
                    *slot = Some((task, tx));
                    return Err(Error::AlreadyExists {
                        what: "a listener on this admitted provider".into(),
                    });
                }
                other => other,
            }
        };
        // The previous listener was dropped: its accept loop notices at its
        // next poll; wait for it so that it has released the inner listener.
        if let Some((task, _)) = previous {
            let _ = task.await;
        }
        let mut inner = self.inner.listen().await?;
        let (tx, rx) = mpsc::channel(ACCEPT_QUEUE);
        let policy = self.policy.clone();
        let local = self.inner.local_id();
        let limit = Arc::new(Semaphore::new(MAX_PENDING_HANDSHAKES));
        let refusals = Arc::new(crate::ratelog::LogLimiter::new(REFUSAL_LOG_PERIOD));
        let loop_tx = tx.clone();
        let task = tokio::spawn(async move {
            let tx = loop_tx;
            loop {
                let next = tokio::select! {
                    biased;
                    () = tx.closed() => break,
                    next = inner.accept() => next,
                };
                let conn = match next {
                    Ok(c) => c,
                    Err(e) => {
                        let stop = matches!(e, Error::Closed { .. });
                        if tx.send(Err(e)).await.is_err() || stop {
                            break;
                        }
                        continue;
                    }
                };
                let permit = tokio::select! {
                    biased;
                    () = tx.closed() => break,
                    p = limit.clone().acquire_owned() => p,
                };
                let Ok(permit) = permit else { break };
                let (policy, tx, refusals) = (policy.clone(), tx.clone(), refusals.clone());
                tokio::spawn(async move {
                    let _permit = permit;
                    let remote = conn.remote_id();
                    let address = conn.path().remote.unwrap_or_else(|| "unknown".into());
                    let timeout = policy.handshake_timeout;
                    let res = tokio::time::timeout(timeout, answer(&policy, local, &*conn)).await;
                    let why = match res {
                        Ok(Ok(())) => {
                            let _ = tx.send(Ok(conn)).await;
                            return;
                        }
                        Ok(Err(e)) => denial_text(&e),
                        Err(_) => format!("handshake timed out after {timeout:?}"),
                    };
                    // One line per peer address per period: a peer that
                    // keeps trying cannot flood the log.
                    if let Some(held) = refusals.allow(&address) {
                        tracing::warn!(
                            peer = %remote.short(),
                            %address,
                            "admission refused an inbound peer: {why}{}",
                            crate::ratelog::held_back(held)
                        );
                    }
                    conn.close(&format!("{DENIED_PREFIX}{why}")).await;
                });
            }
        });
        *crate::sync::lock(&self.accept_loop) = Some((task, tx));
        Ok(Box::new(AdmittedListener { rx }))
    }

    fn discovered(&self) -> Discovered {
        self.inner.discovered()
    }

    async fn close(&self, reason: &str) {
        self.inner.close(reason).await
    }
}

/// Yields connections admitted by the provider's accept loop, which runs
/// in the background so that handshakes progress even while nobody is
/// waiting in `accept`.
struct AdmittedListener {
    rx: mpsc::Receiver<Result<Arc<dyn Connection>>>,
}

#[async_trait]
impl Listener for AdmittedListener {
    async fn accept(&mut self) -> Result<Arc<dyn Connection>> {
        match self.rx.recv().await {
            Some(r) => r,
            None => Err(Error::closed("listener closed")),
        }
    }
}

fn denial_text(e: &Error) -> String {
    match e {
        Error::Denied { reason } => reason.clone(),
        other => other.to_string(),
    }
}

/// A connection closed by the peer with an admission refusal means we were
/// denied; say so with the peer's reason.
fn into_denied(e: Error) -> Error {
    let text = e.to_string();
    match text.find(DENIED_PREFIX) {
        Some(i) if !matches!(e, Error::Denied { .. }) => Error::denied(format!(
            "peer refused us: {}",
            &text[i + DENIED_PREFIX.len()..]
        )),
        _ => e,
    }
}

/// Sends a refusal and waits (bounded) for the peer to hang up, so that the
/// refusal is read before the connection is torn down.
async fn refuse(framed: &mut Framed, reason: &str) {
    let _ = framed
        .send(&Msg::Denied {
            reason: reason.to_string(),
        })
        .await;
    let _ = framed.finish().await;
    let _ = tokio::time::timeout(LINGER_AFTER_DENIAL, framed.recv_opt::<Msg>()).await;
}

async fn dial(policy: &Admission, local: PeerId, conn: &dyn Connection) -> Result<()> {
    let remote = conn.remote_id();
    policy.check_allowed(&remote)?;
    let (send, recv) = conn.open_bi().await?;
    let mut f = Framed::with_max(send, recv, MAX_ADMISSION_FRAME);
    f.hello(&ADMISSION_PROTOCOL).await?;
    let nonce_d = policy.nonce();
    f.send(&Msg::Offer {
        nonce: nonce_d,
        has_key: policy.psk.is_some(),
    })
    .await?;
    let (nonce_l, proof_l) = match f.recv::<Msg>().await? {
        Msg::Challenge { nonce, proof } => (nonce, proof),
        Msg::Denied { reason } => return Err(Error::denied(format!("peer refused us: {reason}"))),
        other => return Err(unexpected("a challenge", &other)),
    };
    let t = Transcript {
        dialer: local,
        listener: remote,
        nonce_d,
        nonce_l,
    };
    if policy.psk.is_some() {
        let ok = proof_l.is_some_and(|p| policy.verify(b"listener", &t, &p));
        if !ok {
            let reason = if proof_l.is_none() {
                "peer has no pre-shared key, this node requires one"
            } else {
                "peer failed to prove the pre-shared key (wrong key)"
            };
            refuse(&mut f, reason).await;
            return Err(Error::denied(reason));
        }
    } else if proof_l.is_some() {
        let reason = "peer requires a pre-shared key, this node has none";
        refuse(&mut f, reason).await;
        return Err(Error::denied(reason));
    }
    f.send(&Msg::Proof {
        proof: policy.proof(b"dialer", &t),
    })
    .await?;
    match f.recv::<Msg>().await? {
        Msg::Admitted => Ok(()),
        Msg::Denied { reason } => Err(Error::denied(format!("peer refused us: {reason}"))),
        other => Err(unexpected("a verdict", &other)),
    }
}

async fn answer(policy: &Admission, local: PeerId, conn: &dyn Connection) -> Result<()> {
    let remote = conn.remote_id();
    let (send, recv) = conn.accept_bi().await?;
    let mut f = Framed::with_max(send, recv, MAX_ADMISSION_FRAME);
    f.hello(&ADMISSION_PROTOCOL).await.map_err(|e| match e {
        Error::Protocol { reason } => Error::denied(format!(
            "the peer did not begin the admission handshake: it has no pre-shared key or \
             allow-list settings for this network ({reason})"
        )),
        other => other,
    })?;
    let (nonce_d, has_key) = match f.recv::<Msg>().await? {
        Msg::Offer { nonce, has_key } => (nonce, has_key),
        other => return Err(unexpected("an offer", &other)),
    };
    if let Err(e) = policy.check_allowed(&remote) {
        refuse(&mut f, &denial_text(&e)).await;
        return Err(e);
    }
    let mismatch = match (policy.psk.is_some(), has_key) {
        (true, false) => Some("this network requires a pre-shared key and the peer has none"),
        (false, true) => Some("the peer expects a pre-shared key and this node has none"),
        _ => None,
    };
    if let Some(reason) = mismatch {
        refuse(&mut f, reason).await;
        return Err(Error::denied(reason));
    }
    let nonce_l = policy.nonce();
    let t = Transcript {
        dialer: remote,
        listener: local,
        nonce_d,
        nonce_l,
    };
    f.send(&Msg::Challenge {
        nonce: nonce_l,
        proof: policy.proof(b"listener", &t),
    })
    .await?;
    let proof_d = match f.recv::<Msg>().await? {
        Msg::Proof { proof } => proof,
        Msg::Denied { reason } => return Err(Error::denied(format!("peer refused us: {reason}"))),
        other => return Err(unexpected("a proof", &other)),
    };
    if policy.psk.is_some() && !proof_d.is_some_and(|p| policy.verify(b"dialer", &t, &p)) {
        let reason = "peer failed to prove the pre-shared key (wrong key)";
        refuse(&mut f, reason).await;
        return Err(Error::denied(reason));
    }
    f.send(&Msg::Admitted).await?;
    let _ = f.finish().await;
    Ok(())
}

/// At most one log line per peer address per this period for refused
/// handshakes.
const REFUSAL_LOG_PERIOD: std::time::Duration = std::time::Duration::from_secs(10);

fn unexpected(wanted: &str, got: &Msg) -> Error {
    let name = match got {
        Msg::Offer { .. } => "offer",
        Msg::Challenge { .. } => "challenge",
        Msg::Proof { .. } => "proof",
        Msg::Admitted => "admitted",
        Msg::Denied { .. } => "denied",
    };
    Error::protocol(format!("admission: expected {wanted}, got {name}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn psk_text_form_and_errors() {
        let k: PreSharedKey = "ab".repeat(32).parse().unwrap();
        assert_eq!(k.to_hex(), "ab".repeat(32));
        let e = "abc".parse::<PreSharedKey>().unwrap_err().to_string();
        assert!(e.contains("64 hex characters"), "{e}");
        assert_eq!(format!("{k:?}"), "PreSharedKey(redacted)");
    }

    #[test]
    fn proofs_bind_role_ids_and_nonces() {
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(3);
        let p = Admission::new(&mut rng).with_psk(PreSharedKey::from_bytes([1; 32]));
        let a = crate::NodeKey::from_seed([1; 32]).peer_id();
        let b = crate::NodeKey::from_seed([2; 32]).peer_id();
        let t = Transcript {
            dialer: a,
            listener: b,
            nonce_d: [3; 32],
            nonce_l: [4; 32],
        };
        let proof = p.proof(b"listener", &t).unwrap();
        assert!(p.verify(b"listener", &t, &proof));
        assert!(!p.verify(b"dialer", &t, &proof), "reflection must fail");
        let swapped = Transcript {
            dialer: b,
            listener: a,
            ..t
        };
        assert!(!p.verify(b"listener", &swapped, &proof));
        let other = Admission::new(&mut rng).with_psk(PreSharedKey::from_bytes([2; 32]));
        assert!(!other.verify(b"listener", &t, &proof));
    }
}
