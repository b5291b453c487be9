//! Node identities: [`NodeKey`] (the secret) and [`PeerId`] (its public key).
//!
//! A node key is a 32-byte Ed25519 seed. Every backend derives its own
//! identity from the same seed (iroh `SecretKey::from_bytes`, libp2p
//! `Keypair::ed25519_from_bytes`), so one node has one [`PeerId`] whichever
//! transport it runs.

use std::fmt;
use std::io::Write;
use std::path::Path;
use std::str::FromStr;

use ed25519_dalek::{Signer as _, SigningKey, Verifier as _, VerifyingKey};
use rand::CryptoRng;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use zeroize::Zeroizing;

use crate::error::{Error, Result};

/// Length of the hex form of a [`PeerId`].
const PEER_ID_HEX_LEN: usize = 64;
/// Number of hex characters in [`PeerId::short`].
const SHORT_LEN: usize = 10;
/// First line of a node key file.
const KEY_FILE_HEADER: &str =
    "# p2p node key (Ed25519 seed, hex). Keep this file private (mode 0600).";

/// Peer ids found to be valid points, so that each is checked once per
/// process (cleared when [`VALID_IDS_KEPT`] is reached). Only valid ids
/// are kept: a hit means the same check passed before.
static VALID_IDS: std::sync::Mutex<Option<std::collections::HashSet<[u8; 32]>>> =
    std::sync::Mutex::new(None);
const VALID_IDS_KEPT: usize = 100_000;

/// The public identity of a node: a 32-byte Ed25519 public key.
///
/// Displayed in full as 64 lowercase hex characters (the same form iroh uses
/// for endpoint ids); [`PeerId::short`] gives the first 10 for tables and
/// logs. Serialized as that string in human-readable formats and as 32 raw
/// bytes in binary ones.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PeerId([u8; 32]);

impl PeerId {
    /// Builds a peer id from raw public key bytes, checking that they are a
    /// valid Ed25519 point.
    pub fn from_bytes(bytes: [u8; 32]) -> Result<Self> {
        // Checking the point costs a square root (tens of microseconds),
        // and the same ids come in every message a peer sends (membership
        // digests carry thousands): ids found valid are remembered.
        if crate::sync::lock(&VALID_IDS)
            .as_ref()
            .is_some_and(|set| set.contains(&bytes))
        {
            return Ok(PeerId(bytes));
        }
        VerifyingKey::from_bytes(&bytes)
            .map_err(|_| Error::invalid("peer id", "not a valid Ed25519 public key"))?;
        let mut valid = crate::sync::lock(&VALID_IDS);
        let set = valid.get_or_insert_with(Default::default);
        if set.len() >= VALID_IDS_KEPT {
            set.clear();
        }
        set.insert(bytes);
        Ok(PeerId(bytes))
    }

    /// The raw public key bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The first 10 hex characters: enough to tell nodes apart in a table,
    /// not enough to address one.
    pub fn short(&self) -> String {
        let mut s = hex::encode(self.0);
        s.truncate(SHORT_LEN);
        s
    }

    /// Verifies an Ed25519 signature made by the node that owns this id.
    pub fn verify(&self, message: &[u8], signature: &[u8; 64]) -> Result<()> {
        let key = VerifyingKey::from_bytes(&self.0)
            .map_err(|_| Error::invalid("peer id", "not a valid Ed25519 public key"))?;
        key.verify(message, &ed25519_dalek::Signature::from_bytes(signature))
            .map_err(|_| Error::BadSignature {
                reason: format!("signature does not verify for peer {}", self.short()),
            })
    }
}

impl fmt::Display for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PeerId({})", self.short())
    }
}

impl FromStr for PeerId {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let s = s.trim();
        if s.len() != PEER_ID_HEX_LEN {
            return Err(Error::invalid(
                "peer id",
                format!(
                    "expected {PEER_ID_HEX_LEN} hex characters, got {} in {s:?}",
                    s.len()
                ),
            ));
        }
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(s, &mut bytes)
            .map_err(|e| Error::invalid("peer id", format!("{s:?} is not hex: {e}")))?;
        PeerId::from_bytes(bytes)
    }
}

impl Serialize for PeerId {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if serializer.is_human_readable() {
            serializer.collect_str(self)
        } else {
            self.0.serialize(serializer)
        }
    }
}

impl<'de> Deserialize<'de> for PeerId {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        if deserializer.is_human_readable() {
            let s = String::deserialize(deserializer)?;
            s.parse().map_err(serde::de::Error::custom)
        } else {
            let bytes = <[u8; 32]>::deserialize(deserializer)?;
            PeerId::from_bytes(bytes).map_err(serde::de::Error::custom)
        }
    }
}

/// A node's secret identity: a 32-byte Ed25519 seed.
///
/// The seed is zeroed on drop and never printed by `Debug`. Persist it with
/// [`NodeKey::save`] so that the node keeps its [`PeerId`] across restarts.
#[derive(Clone)]
pub struct NodeKey {
    signing: SigningKey,
}

impl NodeKey {
    /// Generates a new key from the given RNG. Pass a seeded RNG in tests
    /// and simulations, an OS-backed one in production.
    pub fn generate<R: CryptoRng + ?Sized>(rng: &mut R) -> Self {
        let mut seed = Zeroizing::new([0u8; 32]);
        rng.fill_bytes(seed.as_mut());
        Self::from_seed(*seed)
    }

    /// Builds a key from its 32-byte seed.
    pub fn from_seed(seed: [u8; 32]) -> Self {
        NodeKey {
            signing: SigningKey::from_bytes(&seed),
        }
    }

    /// The 32-byte seed. Handle with care.
    pub fn seed(&self) -> [u8; 32] {
        self.signing.to_bytes()
    }

    /// The public identity of this key.
    pub fn peer_id(&self) -> PeerId {
        PeerId(self.signing.verifying_key().to_bytes())
    }

    /// Signs a message with this node's key.
    pub fn sign(&self, message: &[u8]) -> [u8; 64] {
        self.signing.sign(message).to_bytes()
    }

    /// Loads a key written by [`NodeKey::save`].
    ///
    /// Refuses a file that group or others may read or write (mode must be
    /// 0600 or stricter), naming the path and the mode found, because a
    /// leaked node key lets anyone impersonate the node.
    pub fn load(path: &Path) -> Result<Self> {
        check_private_mode(path)?;
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::io(format!("reading node key {}", path.display()), e))?;
        let text = Zeroizing::new(text);
        let hex_line = text
            .lines()
            .map(str::trim)
            .find(|l| !l.is_empty() && !l.starts_with('#'))
            .ok_or_else(|| {
                Error::invalid("node key file", format!("{} holds no key", path.display()))
            })?;
        let mut seed = Zeroizing::new([0u8; 32]);
        if hex_line.len() != 64 || hex::decode_to_slice(hex_line, seed.as_mut()).is_err() {
            return Err(Error::invalid(
                "node key file",
                format!("{}: expected 64 hex characters", path.display()),
            ));
        }
        Ok(Self::from_seed(*seed))
    }

    /// Writes the key to `path` with mode 0600, atomically: a temporary file
    /// in the same directory is written, synced and renamed over `path`.
    pub fn save(&self, path: &Path) -> Result<()> {
        let dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        let text = Zeroizing::new(format!(
            "{KEY_FILE_HEADER}\n# peer id: {}\n{}\n",
            self.peer_id(),
            hex::encode(self.seed())
        ));
        let tmp = dir.join(format!(
            ".{}.tmp",
            path.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| "node-key".into())
        ));
        let ctx = |what: &str| format!("{what} node key {}", path.display());
        {
            let mut opts = std::fs::OpenOptions::new();
            opts.write(true).create(true).truncate(true);
            #[cfg(unix)]
            {
                use std::os::unix::fs::OpenOptionsExt;
                opts.mode(0o600);
            }
            let mut f = opts.open(&tmp).map_err(|e| Error::io(ctx("writing"), e))?;
            set_private_mode(&f).map_err(|e| Error::io(ctx("protecting"), e))?;
            f.write_all(text.as_bytes())
                .and_then(|()| f.sync_all())
                .map_err(|e| Error::io(ctx("writing"), e))?;
        }
        std::fs::rename(&tmp, path).map_err(|e| Error::io(ctx("installing"), e))?;
        if let Ok(d) = std::fs::File::open(dir) {
            // Directory fsync makes the rename durable; not all platforms
            // support it, and the key is already written either way.
            let _ = d.sync_all();
        }
        Ok(())
    }

    /// Loads the key at `path`, or generates one with `rng` and saves it
    /// there when the file does not exist.
    pub fn load_or_generate<R: CryptoRng + ?Sized>(path: &Path, rng: &mut R) -> Result<Self> {
        match std::fs::metadata(path) {
            Ok(_) => Self::load(path),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key = Self::generate(rng);
                key.save(path)?;
                Ok(key)
            }
            Err(e) => Err(Error::io(format!("reading node key {}", path.display()), e)),
        }
    }
}

impl fmt::Debug for NodeKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeKey(peer {}, seed redacted)", self.peer_id().short())
    }
}

#[cfg(unix)]
fn set_private_mode(f: &std::fs::File) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    f.set_permissions(std::fs::Permissions::from_mode(0o600))
}

#[cfg(not(unix))]
fn set_private_mode(_f: &std::fs::File) -> std::io::Result<()> {
    Ok(())
}

#[cfg(unix)]
fn check_private_mode(path: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path)
        .map_err(|e| Error::io(format!("reading node key {}", path.display()), e))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(Error::denied(format!(
            "node key {} has mode {mode:04o}; it must be readable by its owner only \
             (run `chmod 600 {}`)",
            path.display(),
            path.display()
        )));
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_private_mode(_path: &Path) -> Result<()> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn rng() -> rand_chacha::ChaCha20Rng {
        rand_chacha::ChaCha20Rng::seed_from_u64(7)
    }

    #[test]
    fn same_seed_same_peer_id_and_text_round_trip() {
        let key = NodeKey::generate(&mut rng());
        let again = NodeKey::from_seed(key.seed());
        assert_eq!(key.peer_id(), again.peer_id());
        let text = key.peer_id().to_string();
        assert_eq!(text.len(), 64);
        assert_eq!(text.parse::<PeerId>().unwrap(), key.peer_id());
        assert!(text.starts_with(&key.peer_id().short()));
        assert_eq!(key.peer_id().short().len(), 10);
    }

    #[test]
    fn peer_id_parse_errors_name_the_problem() {
        let err = "abc".parse::<PeerId>().unwrap_err().to_string();
        assert!(err.contains("64 hex characters"), "{err}");
        let err = "z".repeat(64).parse::<PeerId>().unwrap_err().to_string();
        assert!(err.contains("not hex"), "{err}");
    }

    #[test]
    fn peer_id_serde_is_string_for_humans_and_bytes_for_postcard() {
        let id = NodeKey::generate(&mut rng()).peer_id();
        let bytes = postcard::to_stdvec(&id).unwrap();
        assert_eq!(bytes.len(), 32);
        assert_eq!(postcard::from_bytes::<PeerId>(&bytes).unwrap(), id);
    }

    #[test]
    fn signatures_verify_only_for_the_signer() {
        let a = NodeKey::generate(&mut rng());
        let b = NodeKey::from_seed([9; 32]);
        let sig = a.sign(b"hello");
        a.peer_id().verify(b"hello", &sig).unwrap();
        assert!(a.peer_id().verify(b"hellp", &sig).is_err());
        assert!(b.peer_id().verify(b"hello", &sig).is_err());
    }

    #[test]
    fn debug_never_shows_the_seed() {
        let key = NodeKey::from_seed([0xab; 32]);
        assert!(!format!("{key:?}").contains("abab"));
    }

    #[cfg(unix)]
    #[test]
    fn key_file_is_private_and_round_trips() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.key");
        let key = NodeKey::load_or_generate(&path, &mut rng()).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let again = NodeKey::load_or_generate(&path, &mut rng()).unwrap();
        assert_eq!(key.peer_id(), again.peer_id());
    }

    #[cfg(unix)]
    #[test]
    fn key_file_readable_by_others_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.key");
        NodeKey::generate(&mut rng()).save(&path).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = NodeKey::load(&path).unwrap_err().to_string();
        assert!(err.contains("0644") && err.contains("chmod 600"), "{err}");
    }

    #[cfg(unix)]
    #[test]
    fn corrupt_key_file_is_a_clear_error() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.key");
        std::fs::write(&path, "not a key\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let err = NodeKey::load(&path).unwrap_err().to_string();
        assert!(err.contains("64 hex characters"), "{err}");
    }
}
