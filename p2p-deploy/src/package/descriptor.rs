//! The release descriptor (manifest, archive size and hash, a hash per
//! chunk, creation time) in canonical postcard bytes, and the package id:
//! the SHA-256 of those bytes. A signature covers [`SIGNING_DOMAIN`]
//! followed by the descriptor bytes, so a verified descriptor vouches for
//! every byte of the archive.

use p2p_core::Timestamp;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::error::FormatError;
use super::manifest::Manifest;

/// What a signature covers, before the descriptor bytes.
pub const SIGNING_DOMAIN: &[u8] = b"p2p-deploy release v1\0";
/// Default chunk size: 256 KiB. The swarm moves a release chunk by
/// chunk, and a chunk is passed on only once it has arrived whole, so
/// smaller chunks spread sooner; each costs a 32-byte hash in the
/// descriptor (13 KB for 100 MB). In the simulator's swarm benchmark
/// (100 targets, 100 MB) 256 KiB chunks finished at 1.24x the bound
/// and 1 MiB chunks at 1.68x.
pub const DEFAULT_CHUNK_SIZE: u32 = 256 << 10;

/// What a release is: the manifest and the archive's hashes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Descriptor {
    /// The manifest inside the archive.
    pub manifest: Manifest,
    /// Archive size in bytes.
    pub archive_size: u64,
    /// SHA-256 of the archive.
    pub archive_sha256: [u8; 32],
    /// Chunk size for transfer and resume.
    pub chunk_size: u32,
    /// SHA-256 of each chunk, in order; the last may be short.
    pub chunks: Vec<[u8; 32]>,
    /// When the package was built (the injected clock).
    pub created_at: Timestamp,
}

/// A package id: the SHA-256 of the descriptor's canonical bytes. In
/// JSON (and other human-readable formats) it is 64 hex characters; on
/// the wire and on disk, its 32 bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PackageId(pub [u8; 32]);

impl Serialize for PackageId {
    fn serialize<S: serde::Serializer>(
        &self,
        serializer: S,
    ) -> std::result::Result<S::Ok, S::Error> {
        if serializer.is_human_readable() {
            serializer.collect_str(self)
        } else {
            // As the derived newtype encoding: the bytes themselves.
            self.0.serialize(serializer)
        }
    }
}

impl<'de> Deserialize<'de> for PackageId {
    fn deserialize<D: serde::Deserializer<'de>>(
        deserializer: D,
    ) -> std::result::Result<Self, D::Error> {
        if deserializer.is_human_readable() {
            let s = String::deserialize(deserializer)?;
            let mut bytes = [0u8; 32];
            hex::decode_to_slice(&s, &mut bytes).map_err(|e| {
                serde::de::Error::custom(format!("package id {s:?} is not 64 hex characters: {e}"))
            })?;
            Ok(PackageId(bytes))
        } else {
            <[u8; 32]>::deserialize(deserializer).map(PackageId)
        }
    }
}

impl std::fmt::Display for PackageId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl Descriptor {
    /// The canonical bytes: postcard, fields in declaration order, maps
    /// sorted. Decoding and encoding again gives the same bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        postcard::to_allocvec(self).expect("a descriptor always serializes")
    }

    /// Decodes canonical bytes; anything else (trailing bytes, a
    /// non-canonical encoding) is an error.
    pub fn from_bytes(bytes: &[u8]) -> std::result::Result<Self, FormatError> {
        let d: Descriptor = postcard::from_bytes(bytes)
            .map_err(|e| FormatError::DescriptorCorrupt(e.to_string()))?;
        if d.to_bytes() != bytes {
            return Err(FormatError::DescriptorCorrupt(
                "not in canonical form".into(),
            ));
        }
        if d.chunk_size == 0 {
            return Err(FormatError::DescriptorCorrupt("chunk size 0".into()));
        }
        d.manifest
            .validate()
            .map_err(|e| FormatError::DescriptorCorrupt(e.to_string()))?;
        let want = d.archive_size.div_ceil(u64::from(d.chunk_size)).max(1);
        if d.chunks.len() as u64 != want {
            return Err(FormatError::DescriptorCorrupt(format!(
                "{} chunk hashes for {} bytes in chunks of {}",
                d.chunks.len(),
                d.archive_size,
                d.chunk_size
            )));
        }
        Ok(d)
    }

    /// The package id.
    pub fn id(&self) -> PackageId {
        PackageId(Sha256::digest(self.to_bytes()).into())
    }

    /// The bytes a signature covers.
    pub fn signing_message(&self) -> Vec<u8> {
        let mut m = SIGNING_DOMAIN.to_vec();
        m.extend_from_slice(&self.to_bytes());
        m
    }
}
