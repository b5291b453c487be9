//! Release signing: the [`Signer`] and [`Verifier`] traits and their Ed25519
//! implementation, [`Ed25519Signer`].
//!
//! Signing is async so that a key can live in a hardware token or a remote
//! signing service; verification is local and synchronous.
//!
//! ```
//! # use p2p_core::{Ed25519Signer, Signer, Verifier};
//! # use rand::SeedableRng;
//! # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
//! let signer = Ed25519Signer::generate(&mut rand_chacha::ChaCha20Rng::seed_from_u64(1));
//! let sig = signer.sign(b"descriptor bytes").await?;
//! signer.verifier().verify(b"descriptor bytes", &sig)?;
//! assert!(signer.verifier().verify(b"tampered", &sig).is_err());
//! # Ok::<(), p2p_core::Error>(())
//! # }).unwrap();
//! ```

use std::fmt;
use std::str::FromStr;

use async_trait::async_trait;
use ed25519_dalek::{Signer as _, SigningKey, VerifyingKey};
use rand::CryptoRng;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use zeroize::Zeroizing;

use crate::error::{Error, Result};

/// Identifies a signing key: its 32-byte Ed25519 public key.
///
/// Text form: 64 lowercase hex characters; [`KeyId::short`] for display.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct KeyId([u8; 32]);

impl KeyId {
    /// A key id from public key bytes, checking they are a valid point.
    pub fn from_bytes(bytes: [u8; 32]) -> Result<Self> {
        VerifyingKey::from_bytes(&bytes)
            .map_err(|_| Error::invalid("key id", "not a valid Ed25519 public key"))?;
        Ok(KeyId(bytes))
    }

    /// The public key bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// First 16 hex characters, for messages and tables.
    pub fn short(&self) -> String {
        hex::encode(&self.0[..8])
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({})", self.short())
    }
}

impl FromStr for KeyId {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let s = s.trim();
        let mut b = [0u8; 32];
        if s.len() != 64 || hex::decode_to_slice(s, &mut b).is_err() {
            return Err(Error::invalid(
                "key id",
                format!("expected 64 hex characters, got {s:?}"),
            ));
        }
        KeyId::from_bytes(b)
    }
}

impl Serialize for KeyId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.collect_str(self)
        } else {
            self.0.serialize(s)
        }
    }
}

impl<'de> Deserialize<'de> for KeyId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        if d.is_human_readable() {
            String::deserialize(d)?
                .parse()
                .map_err(serde::de::Error::custom)
        } else {
            KeyId::from_bytes(<[u8; 32]>::deserialize(d)?).map_err(serde::de::Error::custom)
        }
    }
}

/// A signature together with the key that made it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Signature {
    /// The signing key.
    pub key: KeyId,
    /// The 64-byte Ed25519 signature, stored as two halves because serde
    /// has no 64-byte array impl.
    bytes: ([u8; 32], [u8; 32]),
}

impl Signature {
    /// Builds a signature from its parts.
    pub fn new(key: KeyId, bytes: [u8; 64]) -> Self {
        let mut a = [0u8; 32];
        let mut b = [0u8; 32];
        a.copy_from_slice(&bytes[..32]);
        b.copy_from_slice(&bytes[32..]);
        Signature { key, bytes: (a, b) }
    }

    /// The raw 64 signature bytes.
    pub fn to_bytes(&self) -> [u8; 64] {
        let mut out = [0u8; 64];
        out[..32].copy_from_slice(&self.bytes.0);
        out[32..].copy_from_slice(&self.bytes.1);
        out
    }
}

impl fmt::Debug for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Signature(by {})", self.key.short())
    }
}

/// Something that signs messages, such as release descriptors.
///
/// # Contract
///
/// - [`sign`](Signer::sign) returns a [`Signature`] whose `key` equals
///   [`key_id`](Signer::key_id) and which the matching [`Verifier`]
///   accepts for exactly the bytes that were signed.
/// - Signing the same message twice may give different bytes only if the
///   scheme is randomized; Ed25519 is deterministic.
#[async_trait]
pub trait Signer: Send + Sync {
    /// The key this signer signs with.
    fn key_id(&self) -> KeyId;
    /// Signs `message`.
    async fn sign(&self, message: &[u8]) -> Result<Signature>;
}

/// Something that checks signatures made by one key.
///
/// # Contract
///
/// - [`verify`](Verifier::verify) succeeds only when `signature.key` equals
///   [`key_id`](Verifier::key_id) and the signature is valid for `message`;
///   otherwise it fails with [`Error::BadSignature`] saying which check failed.
/// - Verification is strict: malleable (non-canonical) signatures are refused.
pub trait Verifier: Send + Sync {
    /// The key this verifier checks against.
    fn key_id(&self) -> KeyId;
    /// Verifies `signature` over `message`.
    fn verify(&self, message: &[u8], signature: &Signature) -> Result<()>;
}

/// An Ed25519 signing key held in memory.
#[derive(Clone)]
pub struct Ed25519Signer {
    key: SigningKey,
}

impl fmt::Debug for Ed25519Signer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Ed25519Signer({}, secret redacted)",
            self.key_id().short()
        )
    }
}

impl Ed25519Signer {
    /// Generates a new key from `rng`.
    pub fn generate<R: CryptoRng + ?Sized>(rng: &mut R) -> Self {
        let mut seed = Zeroizing::new([0u8; 32]);
        rng.fill_bytes(seed.as_mut());
        Self::from_seed(&seed)
    }

    /// A signer from a 32-byte secret seed.
    pub fn from_seed(seed: &[u8; 32]) -> Self {
        Ed25519Signer {
            key: SigningKey::from_bytes(seed),
        }
    }

    /// The 32-byte secret seed. Handle with care.
    pub fn seed(&self) -> Zeroizing<[u8; 32]> {
        Zeroizing::new(self.key.to_bytes())
    }

    /// The public key that identifies this signer.
    pub fn key_id(&self) -> KeyId {
        KeyId(self.key.verifying_key().to_bytes())
    }

    /// The verifier for this key.
    pub fn verifier(&self) -> Ed25519Verifier {
        Ed25519Verifier {
            key: self.key.verifying_key(),
        }
    }
}

#[async_trait]
impl Signer for Ed25519Signer {
    fn key_id(&self) -> KeyId {
        Ed25519Signer::key_id(self)
    }

    async fn sign(&self, message: &[u8]) -> Result<Signature> {
        Ok(Signature::new(
            self.key_id(),
            self.key.sign(message).to_bytes(),
        ))
    }
}

impl Verifier for Ed25519Signer {
    fn key_id(&self) -> KeyId {
        Ed25519Signer::key_id(self)
    }
    fn verify(&self, message: &[u8], signature: &Signature) -> Result<()> {
        self.verifier().verify(message, signature)
    }
}

/// An Ed25519 public key that verifies signatures.
#[derive(Clone, PartialEq, Eq)]
pub struct Ed25519Verifier {
    key: VerifyingKey,
}

impl fmt::Debug for Ed25519Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Ed25519Verifier({})", self.key_id().short())
    }
}

impl Ed25519Verifier {
    /// A verifier for the given key.
    pub fn new(key: KeyId) -> Result<Self> {
        Ok(Ed25519Verifier {
            key: VerifyingKey::from_bytes(key.as_bytes())
                .map_err(|_| Error::invalid("key id", "not a valid Ed25519 public key"))?,
        })
    }
}

impl Verifier for Ed25519Verifier {
    fn key_id(&self) -> KeyId {
        KeyId(self.key.to_bytes())
    }

    fn verify(&self, message: &[u8], signature: &Signature) -> Result<()> {
        if signature.key != self.key_id() {
            return Err(Error::BadSignature {
                reason: format!(
                    "signature is by key {}, expected key {}",
                    signature.key.short(),
                    self.key_id().short()
                ),
            });
        }
        let sig = ed25519_dalek::Signature::from_bytes(&signature.to_bytes());
        self.key
            .verify_strict(message, &sig)
            .map_err(|_| Error::BadSignature {
                reason: format!(
                    "signature by key {} does not match the signed bytes",
                    self.key_id().short()
                ),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[tokio::test]
    async fn signature_verifies_only_for_its_key_and_bytes() {
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(5);
        let a = Ed25519Signer::generate(&mut rng);
        let b = Ed25519Signer::generate(&mut rng);
        let sig = a.sign(b"msg").await.unwrap();
        assert_eq!(sig.key, Signer::key_id(&a));
        a.verifier().verify(b"msg", &sig).unwrap();
        let e = b.verifier().verify(b"msg", &sig).unwrap_err().to_string();
        assert!(e.contains("expected key"), "{e}");
        let e = a.verifier().verify(b"msh", &sig).unwrap_err().to_string();
        assert!(e.contains("does not match"), "{e}");
        let mut forged = sig.to_bytes();
        forged[3] ^= 1;
        assert!(
            a.verifier()
                .verify(b"msg", &Signature::new(sig.key, forged))
                .is_err()
        );
    }

    #[tokio::test]
    async fn signature_round_trips_through_postcard_and_key_id_text() {
        let a = Ed25519Signer::from_seed(&[4; 32]);
        let sig = a.sign(b"x").await.unwrap();
        let bytes = postcard::to_stdvec(&sig).unwrap();
        assert_eq!(bytes.len(), 96);
        assert_eq!(postcard::from_bytes::<Signature>(&bytes).unwrap(), sig);
        let id = Signer::key_id(&a);
        assert_eq!(id.to_string().parse::<KeyId>().unwrap(), id);
        let v = Ed25519Verifier::new(id).unwrap();
        v.verify(b"x", &sig).unwrap();
    }
}
