//! Keys and trust: publisher key files, the trust store that decides
//! whether a release's signatures are enough, and anti-downgrade.
//!
//! Key files are one line of text, so they can be read, mailed and
//! diffed:
//!
//! ```text
//! p2p-ed25519-public 3b6a27bcceb6a42d62a3a8d02a6f0d73653215771de243a63ac048a18b59da29 alice@build-01
//! p2p-ed25519-secret 9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60 alice@build-01
//! ```
//!
//! A secret key file must not be readable by group or others (mode 0600).
//! A trust store is a directory: every `*.pub` file in it is a trusted
//! publisher key, every `*.pub` file in its `revoked/` subdirectory a
//! revoked one (a revoked key never counts, even if also trusted).

use std::collections::BTreeSet;
use std::path::Path;

use p2p_core::{Ed25519Signer, Ed25519Verifier, Error, KeyId, Result, Signature, Verifier};

use crate::package::{Descriptor, FormatError};

const PUBLIC_TAG: &str = "p2p-ed25519-public";
const SECRET_TAG: &str = "p2p-ed25519-secret";

/// Why a package or release was refused: the trust store's refusals
/// (signatures, keys, threshold, downgrade), and a malformed package
/// ([`VerifyError::Format`]). Each has its own variant, so that callers
/// and tests can tell them apart.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum VerifyError {
    /// No signatures, and they are required.
    #[error("the release is not signed, and signatures are required")]
    Unsigned,
    /// A signature does not verify with its key.
    #[error("the signature by key {key} does not verify")]
    BadSignature {
        /// The key the signature names.
        key: String,
    },
    /// A signature by a key the trust store does not hold.
    #[error("key {key} is not trusted")]
    UntrustedKey {
        /// The key.
        key: String,
    },
    /// A signature by a revoked key.
    #[error("key {key} is revoked")]
    RevokedKey {
        /// The key.
        key: String,
    },
    /// Fewer valid trusted signatures than the threshold.
    #[error("{valid} valid signature(s) from trusted keys, {needed} required")]
    BelowThreshold {
        /// Counted.
        valid: usize,
        /// Required.
        needed: usize,
    },
    /// A lower version than one already installed, without a rollback.
    #[error(
        "version {offered} is lower than installed {installed}; only an explicit rollback to an installed version may go back"
    )]
    Downgrade {
        /// Highest installed.
        installed: String,
        /// Offered.
        offered: String,
    },
    /// The package or release is malformed (see [`FormatError`]).
    #[error(transparent)]
    Format(#[from] FormatError),
}

impl From<VerifyError> for Error {
    fn from(e: VerifyError) -> Self {
        match &e {
            VerifyError::BadSignature { .. }
            | VerifyError::UntrustedKey { .. }
            | VerifyError::RevokedKey { .. }
            | VerifyError::BelowThreshold { .. }
            | VerifyError::Unsigned => Error::BadSignature {
                reason: e.to_string(),
            },
            VerifyError::Downgrade { .. } => Error::denied(e.to_string()),
            VerifyError::Format(f) => f.clone().into(),
        }
    }
}

/// Reads a public key file (`p2p-ed25519-public <hex> [comment]`); errors
/// name the file.
pub fn read_public_key(path: &Path) -> Result<KeyId> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
    parse_key_line(path, &text, PUBLIC_TAG).and_then(KeyId::from_bytes)
}

/// Reads a secret key file; it must be mode 0600 or stricter.
pub fn read_secret_key(path: &Path) -> Result<Ed25519Signer> {
    use std::os::unix::fs::PermissionsExt;
    let meta =
        std::fs::metadata(path).map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(Error::invalid(
            "key file",
            format!(
                "{} is readable by others (mode {:o}); make it 0600",
                path.display(),
                meta.permissions().mode() & 0o777
            ),
        ));
    }
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
    let seed = parse_key_line(path, &text, SECRET_TAG)?;
    Ok(Ed25519Signer::from_seed(&seed))
}

fn parse_key_line(path: &Path, text: &str, tag: &str) -> Result<[u8; 32]> {
    let bad = |why: String| Error::invalid("key file", format!("{}: {why}", path.display()));
    let line = text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with('#'))
        .ok_or_else(|| bad("empty".into()))?;
    let mut parts = line.split_whitespace();
    let found = parts.next().unwrap_or("");
    if found != tag {
        return Err(bad(format!("expected a {tag} line, found {found:?}")));
    }
    let hexkey = parts
        .next()
        .ok_or_else(|| bad("no key after the tag".into()))?;
    let bytes = hex::decode(hexkey).map_err(|e| bad(format!("the key is not hex ({e})")))?;
    bytes
        .try_into()
        .map_err(|b: Vec<u8>| bad(format!("the key is {} bytes, not 32", b.len())))
}

/// Writes a key pair as `<base>.key` (mode 0600) and `<base>.pub`, with a
/// comment. Refuses to overwrite either file.
pub fn write_key_pair(
    base: &Path,
    signer: &Ed25519Signer,
    comment: &str,
) -> Result<(std::path::PathBuf, std::path::PathBuf)> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let comment = comment.replace(['\n', '\r'], " ");
    let secret = base.with_extension("key");
    let public = base.with_extension("pub");
    for p in [&secret, &public] {
        if p.exists() {
            return Err(Error::AlreadyExists {
                what: p.display().to_string(),
            });
        }
    }
    let write = |p: &Path, mode: u32, line: String| -> Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(p)
            .map_err(|e| Error::io(format!("writing {}", p.display()), e))?;
        f.write_all(line.as_bytes())
            .and_then(|_| f.sync_all())
            .map_err(|e| Error::io(format!("writing {}", p.display()), e))
    };
    write(
        &secret,
        0o600,
        format!("{SECRET_TAG} {} {comment}\n", hex::encode(*signer.seed())),
    )?;
    write(
        &public,
        0o644,
        format!(
            "{PUBLIC_TAG} {} {comment}\n",
            hex::encode(signer.key_id().as_bytes())
        ),
    )?;
    Ok((secret, public))
}

/// Which publishers are trusted, and how many must sign.
#[derive(Debug, Clone)]
pub struct TrustStore {
    trusted: BTreeSet<KeyId>,
    revoked: BTreeSet<KeyId>,
    threshold: usize,
    require_signatures: bool,
}

impl TrustStore {
    /// Trusts `keys`, threshold 1, signatures required.
    pub fn new(keys: impl IntoIterator<Item = KeyId>) -> Self {
        TrustStore {
            trusted: keys.into_iter().collect(),
            revoked: BTreeSet::new(),
            threshold: 1,
            require_signatures: true,
        }
    }

    /// Loads `dir/*.pub` as trusted and `dir/revoked/*.pub` as revoked.
    /// A bad key file is an error naming it.
    pub fn load(dir: &Path) -> Result<Self> {
        let read_dir = |d: &Path| -> Result<BTreeSet<KeyId>> {
            let mut keys = BTreeSet::new();
            let entries = match std::fs::read_dir(d) {
                Ok(e) => e,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound && d != dir => return Ok(keys),
                Err(e) => return Err(Error::io(format!("reading trust store {}", d.display()), e)),
            };
            let mut paths: Vec<_> = entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "pub") && p.is_file())
                .collect();
            paths.sort();
            for p in paths {
                keys.insert(read_public_key(&p)?);
            }
            Ok(keys)
        };
        Ok(TrustStore {
            trusted: read_dir(dir)?,
            revoked: read_dir(&dir.join("revoked"))?,
            threshold: 1,
            require_signatures: true,
        })
    }

    /// Requires `n` valid signatures from distinct trusted keys.
    pub fn with_threshold(mut self, n: usize) -> Self {
        self.threshold = n.max(1);
        self
    }

    /// Revokes `key`.
    pub fn revoke(mut self, key: KeyId) -> Self {
        self.revoked.insert(key);
        self
    }

    /// For development only: accept unsigned releases. Every use logs a
    /// warning.
    pub fn allow_unsigned(mut self) -> Self {
        self.require_signatures = false;
        self
    }

    /// The trusted keys.
    pub fn trusted(&self) -> &BTreeSet<KeyId> {
        &self.trusted
    }

    /// Decides whether `signatures` are enough for `descriptor`: every
    /// signature must verify; a revoked or untrusted signer is refused by
    /// name; at least the threshold of distinct trusted keys must sign.
    /// Returns the keys that counted.
    pub fn check(
        &self,
        descriptor: &Descriptor,
        signatures: &[Signature],
    ) -> std::result::Result<Vec<KeyId>, VerifyError> {
        if signatures.is_empty() {
            if self.require_signatures {
                return Err(VerifyError::Unsigned);
            }
            tracing::warn!(
                app = %descriptor.manifest.name,
                version = %descriptor.manifest.version,
                "accepting an UNSIGNED release: signatures are switched off (development only)"
            );
            return Ok(Vec::new());
        }
        let message = descriptor.signing_message();
        let mut counted = BTreeSet::new();
        for sig in signatures {
            let key = hex::encode(sig.key.as_bytes());
            if self.revoked.contains(&sig.key) {
                return Err(VerifyError::RevokedKey { key });
            }
            let verifier = Ed25519Verifier::new(sig.key)
                .map_err(|_| VerifyError::BadSignature { key: key.clone() })?;
            verifier
                .verify(&message, sig)
                .map_err(|_| VerifyError::BadSignature { key: key.clone() })?;
            // A valid signature by a key we do not trust is not an
            // error by itself (others may co-sign); it just does not count.
            if self.trusted.contains(&sig.key) {
                counted.insert(sig.key);
            }
        }
        if counted.len() < self.threshold {
            if counted.is_empty()
                && let Some(s) = signatures.first()
            {
                return Err(VerifyError::UntrustedKey {
                    key: hex::encode(s.key.as_bytes()),
                });
            }
            return Err(VerifyError::BelowThreshold {
                valid: counted.len(),
                needed: self.threshold,
            });
        }
        Ok(counted.into_iter().collect())
    }
}

/// Anti-downgrade: a release may be installed if its version is at least
/// the highest installed one, or if it is an explicit rollback to a
/// version that is installed.
pub fn check_not_downgrade(
    offered: &semver::Version,
    installed: &[semver::Version],
    rollback: bool,
) -> std::result::Result<(), VerifyError> {
    let Some(highest) = installed.iter().max() else {
        return Ok(());
    };
    if offered >= highest || (rollback && installed.contains(offered)) {
        return Ok(());
    }
    Err(VerifyError::Downgrade {
        installed: highest.to_string(),
        offered: offered.to_string(),
    })
}
