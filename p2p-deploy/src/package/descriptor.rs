//! The release descriptor (manifest, the list of chunks with their
//! hashes and sizes, creation time) in canonical postcard bytes, and the
//! package id: the SHA-256 of those bytes. A signature covers
//! [`SIGNING_DOMAIN`] followed by the descriptor bytes, so a verified
//! descriptor vouches for every byte of the archive.

use p2p_core::Timestamp;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::error::FormatError;
use super::manifest::Manifest;

/// What a signature covers, before the descriptor bytes. Format 2 has its
/// own domain, so no signature over a format-1 descriptor can ever be
/// taken for one over a format-2 descriptor.
pub const SIGNING_DOMAIN: &[u8] = b"p2p-deploy release v2\0";
/// The descriptor format this crate writes and reads. It is also the
/// package file's format version.
pub const DESCRIPTOR_FORMAT: u16 = 2;
/// Default average chunk size: 256 KiB of uncompressed archive. Chunks
/// are cut where the content says (content-defined chunking), between a
/// quarter and twice the average, and always where a file starts or
/// ends once the chunk has its minimum size. The swarm moves a release
/// chunk by chunk, and a chunk is passed on only once it has arrived
/// whole, so smaller chunks spread sooner; each chunk is compressed on its
/// own, so smaller chunks compress worse. In the simulator's swarm
/// benchmark (100 targets, 100 MB) 256 KiB chunks finished at 1.24x the
/// bound and 1 MiB chunks at 1.68x.
pub const DEFAULT_CHUNK_SIZE: u32 = 256 << 10;
/// No chunk is larger than this, compressed or not.
pub const MAX_CHUNK_BYTES: u32 = 16 << 20;

/// One chunk of a release: a zstd frame holding `raw_size` bytes of the
/// uncompressed archive, stored and moved as the `size` bytes it was
/// compressed to, and addressed by their SHA-256.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ChunkInfo {
    /// SHA-256 of the chunk's bytes as stored and moved (compressed).
    pub sha256: [u8; 32],
    /// Length of those bytes.
    pub size: u32,
    /// Length of the bytes they decompress to.
    pub raw_size: u32,
}

impl ChunkInfo {
    /// Describes `bytes`, which decompress to `raw_size` bytes.
    pub fn of(bytes: &[u8], raw_size: u32) -> Self {
        ChunkInfo {
            sha256: Sha256::digest(bytes).into(),
            size: bytes.len() as u32,
            raw_size,
        }
    }
}

/// What a release is: the manifest and its chunks. The archive is the
/// chunks' bytes one after another: a series of zstd frames that
/// decompress, one after another, to a tar stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Descriptor {
    /// The descriptor format, [`DESCRIPTOR_FORMAT`].
    pub format: u16,
    /// The manifest inside the archive.
    pub manifest: Manifest,
    /// Archive size in bytes: the sum of the chunks' sizes.
    pub archive_size: u64,
    /// The chunks, in archive order.
    pub chunks: Vec<ChunkInfo>,
    /// When the package was built: `SOURCE_DATE_EPOCH` when the builder
    /// gave it, else the clock (see [`BuildOptions`](super::BuildOptions)).
    pub created_at: Timestamp,
}

/// The layout of format 1, kept to recognise such a descriptor and name
/// its format when refusing it, and so that a node upgraded from format 1
/// still reads the manifests and chunk lists of the versions it installed
/// then ([`legacy_v1`]).
#[derive(Deserialize)]
#[allow(dead_code)]
struct DescriptorV1 {
    manifest: Manifest,
    archive_size: u64,
    archive_sha256: [u8; 32],
    chunk_size: u32,
    chunks: Vec<[u8; 32]>,
    created_at: Timestamp,
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

/// The manifest and chunk hashes of a format-1 descriptor, if `bytes` is
/// one: what a node that installed versions under format 1 needs to keep
/// running them (their manifest) and to keep their chunks while it keeps
/// them. Such a release is never deployed, served or fetched again.
pub fn legacy_v1(bytes: &[u8]) -> Option<(Manifest, Vec<[u8; 32]>)> {
    postcard::from_bytes::<DescriptorV1>(bytes)
        .ok()
        .filter(|d| d.manifest.validate().is_ok())
        .map(|d| (d.manifest, d.chunks))
}

impl Descriptor {
    /// A descriptor of the current format for `manifest` and `chunks`.
    pub fn new(manifest: Manifest, chunks: Vec<ChunkInfo>, created_at: Timestamp) -> Self {
        Descriptor {
            format: DESCRIPTOR_FORMAT,
            manifest,
            archive_size: chunks.iter().map(|c| u64::from(c.size)).sum(),
            chunks,
            created_at,
        }
    }

    /// The canonical bytes: postcard, fields in declaration order, maps
    /// sorted. Decoding and encoding again gives the same bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        postcard::to_allocvec(self).expect("a descriptor always serializes")
    }

    /// Decodes canonical bytes. Anything else is an error that names the
    /// problem: another format (a format-1 descriptor is recognised and
    /// named), trailing bytes, a non-canonical encoding, a chunk list that
    /// does not add up to the archive size, a chunk larger than
    /// [`MAX_CHUNK_BYTES`], or one hash listed with two different sizes.
    pub fn from_bytes(bytes: &[u8]) -> std::result::Result<Self, FormatError> {
        // The format comes first. A format-1 descriptor has none (it starts
        // with the manifest), so it is recognised by decoding it as one.
        let format = postcard::take_from_bytes::<u16>(bytes).map(|(f, _)| f);
        let d: Descriptor = match format {
            Ok(DESCRIPTOR_FORMAT) => postcard::from_bytes(bytes).map_err(|e| {
                if postcard::from_bytes::<DescriptorV1>(bytes).is_ok() {
                    FormatError::UnsupportedFormat(1)
                } else {
                    FormatError::DescriptorCorrupt(e.to_string())
                }
            })?,
            _ if postcard::from_bytes::<DescriptorV1>(bytes).is_ok() => {
                return Err(FormatError::UnsupportedFormat(1));
            }
            Ok(other) => return Err(FormatError::UnsupportedFormat(other)),
            Err(e) => return Err(FormatError::DescriptorCorrupt(e.to_string())),
        };
        if d.to_bytes() != bytes {
            return Err(FormatError::DescriptorCorrupt(
                "not in canonical form".into(),
            ));
        }
        d.manifest
            .validate()
            .map_err(|e| FormatError::DescriptorCorrupt(e.to_string()))?;
        d.check_chunks()?;
        Ok(d)
    }

    fn check_chunks(&self) -> std::result::Result<(), FormatError> {
        let bad = |m: String| Err(FormatError::DescriptorCorrupt(m));
        if self.chunks.is_empty() {
            return bad("no chunks".into());
        }
        let mut sum: u64 = 0;
        let mut seen = std::collections::HashMap::with_capacity(self.chunks.len());
        for (i, c) in self.chunks.iter().enumerate() {
            if c.size == 0 || c.size > MAX_CHUNK_BYTES || c.raw_size > MAX_CHUNK_BYTES {
                return bad(format!(
                    "chunk {i} is {} bytes ({} uncompressed): chunks are 1 byte to {} MiB",
                    c.size,
                    c.raw_size,
                    MAX_CHUNK_BYTES >> 20
                ));
            }
            if let Some((j, size)) = seen.insert(c.sha256, (i, c.size))
                && size != c.size
            {
                return bad(format!(
                    "chunks {j} and {i} have the same hash and different sizes ({size} and {})",
                    c.size
                ));
            }
            sum += u64::from(c.size);
        }
        if sum != self.archive_size {
            return bad(format!(
                "the chunk list adds up to {sum} bytes, the archive size is {}",
                self.archive_size
            ));
        }
        Ok(())
    }

    /// Where chunk `index` starts in the archive (summing the sizes
    /// before it: keep [`offsets`](Self::offsets) for many lookups).
    pub fn chunk_offset(&self, index: usize) -> u64 {
        self.chunks[..index].iter().map(|c| u64::from(c.size)).sum()
    }

    /// Where each chunk starts in the archive, and the archive's end.
    pub fn offsets(&self) -> Vec<u64> {
        let mut at = 0;
        let mut out = Vec::with_capacity(self.chunks.len() + 1);
        for c in &self.chunks {
            out.push(at);
            at += u64::from(c.size);
        }
        out.push(at);
        out
    }

    /// The size of the tar stream the archive decompresses to.
    pub fn unpacked_size(&self) -> u64 {
        self.chunks.iter().map(|c| u64::from(c.raw_size)).sum()
    }

    /// The largest chunk, in bytes as moved.
    pub fn max_chunk_size(&self) -> u32 {
        self.chunks.iter().map(|c| c.size).max().unwrap_or(0)
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
