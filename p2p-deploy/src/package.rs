//! Releases and package files: the descriptor, its id, signatures, and
//! the one-file package a user copies, signs, inspects and verifies.
//!
//! # File layout (format 1)
//!
//! | offset | size | content |
//! |---|---|---|
//! | 0 | 8 | magic `P2PDPKG\n` |
//! | 8 | 2 | format version, big-endian (1) |
//! | 10 | 6 | zero |
//! | 16 | 8 | archive length `A`, big-endian |
//! | 24 | 4 | descriptor length `D`, big-endian |
//! | 28 | 4 | zero |
//! | 32 | `A` | the archive (tar + zstd) |
//! | 32 + `A` | `D` | the descriptor, canonical postcard |
//! | 32 + `A` + `D` | 4 | signature section length `S`, big-endian |
//! | 36 + `A` + `D` | `S` | the signatures, postcard `Vec<Signature>` |
//!
//! The file ends there: anything after is an error. Signing rewrites only
//! the signature section, in place, so signing a large package costs
//! nothing but the signature.
//!
//! A signature covers [`SIGNING_DOMAIN`] followed by the descriptor bytes;
//! the package id is the SHA-256 of the descriptor bytes. The descriptor
//! holds the archive's size and SHA-256 and the SHA-256 of each chunk, so
//! a verified descriptor vouches for every byte of the archive.

use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use p2p_core::{Clock, Error, KeyId, Result, Signature, Signer, Timestamp};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub use crate::archive::ArchiveHashes;
use crate::archive::{HashingWriter, hash_parallel, pack};
use crate::manifest::Manifest;
use crate::trust::{TrustStore, VerifyError};

/// The first bytes of every package file.
pub const MAGIC: [u8; 8] = *b"P2PDPKG\n";
/// The package file format this crate writes and reads.
pub const FORMAT_VERSION: u16 = 1;
/// What a signature covers, before the descriptor bytes.
pub const SIGNING_DOMAIN: &[u8] = b"p2p-deploy release v1\0";
/// Default chunk size: 256 KiB. The swarm moves a release chunk by
/// chunk, and a chunk is passed on only once it has arrived whole, so
/// smaller chunks spread sooner; each costs a 32-byte hash in the
/// descriptor (13 KB for 100 MB). In the simulator's swarm benchmark
/// (100 targets, 100 MB) 256 KiB chunks finished at 1.24x the bound
/// and 1 MiB chunks at 1.68x.
pub const DEFAULT_CHUNK_SIZE: u32 = 256 << 10;
const HEADER_LEN: u64 = 32;
/// Descriptors and signature sections larger than this are refused
/// before they are read (a 100 GiB archive has 100k chunk hashes, 3 MiB).
const MAX_SECTION: u32 = 16 << 20;

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
    pub fn from_bytes(bytes: &[u8]) -> std::result::Result<Self, VerifyError> {
        let d: Descriptor = postcard::from_bytes(bytes)
            .map_err(|e| VerifyError::DescriptorCorrupt(e.to_string()))?;
        if d.to_bytes() != bytes {
            return Err(VerifyError::DescriptorCorrupt(
                "not in canonical form".into(),
            ));
        }
        if d.chunk_size == 0 {
            return Err(VerifyError::DescriptorCorrupt("chunk size 0".into()));
        }
        d.manifest
            .validate()
            .map_err(|e| VerifyError::DescriptorCorrupt(e.to_string()))?;
        let want = d.archive_size.div_ceil(u64::from(d.chunk_size)).max(1);
        if d.chunks.len() as u64 != want {
            return Err(VerifyError::DescriptorCorrupt(format!(
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

/// Options for [`build`].
#[derive(Debug, Clone, Copy)]
pub struct BuildOptions {
    /// Chunk size in bytes (default [`DEFAULT_CHUNK_SIZE`], 256 KiB).
    pub chunk_size: u32,
    /// zstd level (default 3).
    pub level: i32,
}

impl Default for BuildOptions {
    fn default() -> Self {
        BuildOptions {
            chunk_size: DEFAULT_CHUNK_SIZE,
            level: 3,
        }
    }
}

fn file_err(path: &Path, what: &str, e: impl std::fmt::Display) -> Error {
    Error::invalid("package file", format!("{}: {what}: {e}", path.display()))
}

/// Packages directory `dir` (which holds a valid `p2p.toml`) into the
/// package file `out`, unsigned. The archive is compressed and hashed in
/// one pass as it is written. Nothing is left at `out` on failure; an
/// existing file there is replaced only on success.
pub fn build(dir: &Path, out: &Path, clock: &dyn Clock, opts: BuildOptions) -> Result<Descriptor> {
    let manifest = Manifest::load(dir)?;
    if opts.chunk_size < 4096 || opts.chunk_size > MAX_SECTION {
        return Err(Error::invalid(
            "chunk size",
            format!("{} is not between 4 KiB and 16 MiB", opts.chunk_size),
        ));
    }
    let parent = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let tmp = tempfile::NamedTempFile::new_in(parent)
        .map_err(|e| Error::io(format!("creating a file in {}", parent.display()), e))?;
    let werr = |e: io::Error| Error::io(format!("writing {}", tmp.path().display()), e);
    let mut f = BufWriter::with_capacity(1 << 20, tmp.as_file());
    f.write_all(&[0u8; HEADER_LEN as usize]).map_err(werr)?;
    let hashing = pack(dir, HashingWriter::new(&mut f, opts.chunk_size), opts.level)?;
    let (_, hashes) = hashing.finish();
    let descriptor = Descriptor {
        manifest,
        archive_size: hashes.len,
        archive_sha256: hashes.sha256,
        chunk_size: opts.chunk_size,
        chunks: hashes.chunks,
        created_at: clock.now(),
    };
    let dbytes = descriptor.to_bytes();
    f.write_all(&dbytes).map_err(werr)?;
    write_signatures(&mut f, &[]).map_err(werr)?;
    f.seek(SeekFrom::Start(0)).map_err(werr)?;
    f.write_all(&header(descriptor.archive_size, dbytes.len() as u32))
        .map_err(werr)?;
    f.flush().map_err(werr)?;
    drop(f);
    tmp.as_file().sync_all().map_err(werr)?;
    tmp.persist(out)
        .map_err(|e| Error::io(format!("writing {}", out.display()), e.error))?;
    Ok(descriptor)
}

/// Hashes archive bytes the way [`build`] describes them (length,
/// SHA-256, SHA-256 of each `chunk_size` piece), the whole and the chunk
/// hashes on two threads: for checking an archive obtained elsewhere
/// against a [`Descriptor`].
pub fn hash_archive(r: impl Read, chunk_size: u32) -> io::Result<ArchiveHashes> {
    hash_parallel(r, chunk_size)
}

fn header(archive_len: u64, descriptor_len: u32) -> [u8; HEADER_LEN as usize] {
    let mut h = [0u8; HEADER_LEN as usize];
    h[..8].copy_from_slice(&MAGIC);
    h[8..10].copy_from_slice(&FORMAT_VERSION.to_be_bytes());
    h[16..24].copy_from_slice(&archive_len.to_be_bytes());
    h[24..28].copy_from_slice(&descriptor_len.to_be_bytes());
    h
}

fn write_signatures(w: &mut impl Write, sigs: &[Signature]) -> io::Result<()> {
    let body = postcard::to_allocvec(sigs).map_err(io::Error::other)?;
    w.write_all(&(body.len() as u32).to_be_bytes())?;
    w.write_all(&body)
}

/// A package file's sections, read and checked for shape (not yet
/// verified).
#[derive(Debug, Clone)]
pub struct PackageFile {
    /// Where it was read from.
    pub path: PathBuf,
    /// The decoded descriptor.
    pub descriptor: Descriptor,
    /// The descriptor's bytes as stored.
    pub descriptor_bytes: Vec<u8>,
    /// The attached signatures.
    pub signatures: Vec<Signature>,
    /// Where the archive starts in the file.
    pub archive_offset: u64,
    /// The archive length the header gives.
    pub archive_len: u64,
    signatures_offset: u64,
}

impl PackageFile {
    /// Reads the header, descriptor and signatures of `path`. A file that
    /// is not a package, of another format version, or truncated is an
    /// error naming the file.
    pub fn open(path: &Path) -> std::result::Result<Self, VerifyError> {
        let io = |e: io::Error| VerifyError::Io(format!("{}: {e}", path.display()));
        let mut f = File::open(path).map_err(io)?;
        let size = f.metadata().map_err(io)?.len();
        let mut h = [0u8; HEADER_LEN as usize];
        if size < HEADER_LEN {
            return Err(VerifyError::NotAPackage(path.display().to_string()));
        }
        f.read_exact(&mut h).map_err(io)?;
        if h[..8] != MAGIC {
            return Err(VerifyError::NotAPackage(path.display().to_string()));
        }
        let version = u16::from_be_bytes([h[8], h[9]]);
        if version != FORMAT_VERSION {
            return Err(VerifyError::UnsupportedFormat(version));
        }
        let archive_len = u64::from_be_bytes(h[16..24].try_into().expect("8 bytes"));
        let dlen = u32::from_be_bytes(h[24..28].try_into().expect("4 bytes"));
        let truncated = |what: &str| VerifyError::Truncated(format!("{}: {what}", path.display()));
        if dlen > MAX_SECTION {
            return Err(truncated("descriptor length out of range"));
        }
        // Lengths come from the file: a header claiming more than the
        // file holds must not overflow the offsets computed from it.
        let soff = HEADER_LEN
            .checked_add(archive_len)
            .and_then(|d| d.checked_add(u64::from(dlen)))
            .filter(|s| s.saturating_add(4) <= size)
            .ok_or_else(|| truncated("the file ends before its signatures"))?;
        let doff = soff - u64::from(dlen);
        f.seek(SeekFrom::Start(doff)).map_err(io)?;
        let mut descriptor_bytes = vec![0u8; dlen as usize];
        f.read_exact(&mut descriptor_bytes).map_err(io)?;
        let mut l = [0u8; 4];
        f.read_exact(&mut l).map_err(io)?;
        let slen = u32::from_be_bytes(l);
        if slen > MAX_SECTION || soff + 4 + u64::from(slen) != size {
            return Err(truncated("the signature section does not end the file"));
        }
        let mut sbytes = vec![0u8; slen as usize];
        f.read_exact(&mut sbytes).map_err(io)?;
        let signatures: Vec<Signature> = postcard::from_bytes(&sbytes)
            .map_err(|e| VerifyError::SignaturesCorrupt(e.to_string()))?;
        let descriptor = Descriptor::from_bytes(&descriptor_bytes)?;
        if descriptor.archive_size != archive_len {
            return Err(VerifyError::ArchiveSize {
                expected: descriptor.archive_size,
                actual: archive_len,
            });
        }
        Ok(PackageFile {
            path: path.to_path_buf(),
            descriptor,
            descriptor_bytes,
            signatures,
            archive_offset: HEADER_LEN,
            archive_len,
            signatures_offset: soff,
        })
    }

    /// The package id.
    pub fn id(&self) -> PackageId {
        PackageId(Sha256::digest(&self.descriptor_bytes).into())
    }

    /// Checks every archive byte against the descriptor, in one pass
    /// (the total and the chunk hashes on two threads): size, each
    /// chunk's hash (the first bad one is named), the total.
    pub fn check_archive(&self) -> std::result::Result<(), VerifyError> {
        let io = |e: io::Error| VerifyError::Io(format!("{}: {e}", self.path.display()));
        let mut f = File::open(&self.path).map_err(io)?;
        f.seek(SeekFrom::Start(self.archive_offset)).map_err(io)?;
        let ArchiveHashes {
            len,
            sha256: total,
            chunks,
        } = hash_parallel(f.take(self.archive_len), self.descriptor.chunk_size).map_err(io)?;
        if len != self.descriptor.archive_size {
            return Err(VerifyError::ArchiveSize {
                expected: self.descriptor.archive_size,
                actual: len,
            });
        }
        if let Some(i) = (0..chunks.len()).find(|i| chunks[*i] != self.descriptor.chunks[*i]) {
            return Err(VerifyError::ChunkHash { index: i });
        }
        if total != self.descriptor.archive_sha256 {
            return Err(VerifyError::ArchiveHash);
        }
        Ok(())
    }

    /// Verifies the package: signatures against `trust` (threshold,
    /// revocations), then every archive byte. Returns the keys whose
    /// signatures counted.
    pub fn verify(&self, trust: &TrustStore) -> std::result::Result<Vec<KeyId>, VerifyError> {
        let keys = trust.check(&self.descriptor, &self.signatures)?;
        self.check_archive()?;
        Ok(keys)
    }

    /// Adds `signer`'s signature (replacing an earlier one by the same
    /// key) and rewrites the signature section in place.
    pub async fn sign(&mut self, signer: &dyn Signer) -> Result<()> {
        let sig = signer.sign(&self.descriptor.signing_message()).await?;
        self.signatures.retain(|s| s.key != sig.key);
        self.signatures.push(sig);
        self.signatures
            .sort_by(|a, b| a.key.as_bytes().cmp(b.key.as_bytes()));
        let mut f = OpenOptions::new()
            .write(true)
            .open(&self.path)
            .map_err(|e| file_err(&self.path, "opening to sign", e))?;
        let werr = |e: io::Error| file_err(&self.path, "writing signatures", e);
        f.set_len(self.signatures_offset).map_err(werr)?;
        f.seek(SeekFrom::Start(self.signatures_offset))
            .map_err(werr)?;
        write_signatures(&mut f, &self.signatures).map_err(werr)?;
        f.sync_all().map_err(werr)?;
        Ok(())
    }

    /// Reads the archive bytes (for unpacking or serving chunks).
    pub fn archive_reader(&self) -> Result<impl Read> {
        let mut f = File::open(&self.path)
            .map_err(|e| Error::io(format!("reading {}", self.path.display()), e))?;
        f.seek(SeekFrom::Start(self.archive_offset))
            .map_err(|e| Error::io(format!("reading {}", self.path.display()), e))?;
        Ok(f.take(self.archive_len))
    }
}
