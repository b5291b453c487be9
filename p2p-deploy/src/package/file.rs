//! The one-file package a user copies, signs, inspects and verifies.
//!
//! # File layout (format 2)
//!
//! | offset | size | content |
//! |---|---|---|
//! | 0 | 8 | magic `P2PDPKG\n` |
//! | 8 | 2 | format version, big-endian (2) |
//! | 10 | 6 | zero |
//! | 16 | 8 | archive length `A`, big-endian |
//! | 24 | 4 | descriptor length `D`, big-endian |
//! | 28 | 4 | zero |
//! | 32 | `A` | the archive: the chunks, each a zstd frame |
//! | 32 + `A` | `D` | the descriptor, canonical postcard |
//! | 32 + `A` + `D` | 4 | signature section length `S`, big-endian |
//! | 36 + `A` + `D` | `S` | the signatures, postcard `Vec<Signature>` |
//!
//! The file ends there: anything after is an error. Signing rewrites only
//! the signature section, in place, so signing a large package costs
//! nothing but the signature.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use p2p_core::{Error, KeyId, Result, Signature, Signer};
use sha2::{Digest, Sha256};

use super::archive::check_frame;
use super::descriptor::{DESCRIPTOR_FORMAT, Descriptor, PackageId};
use super::error::FormatError;
use crate::trust::{TrustStore, VerifyError};

/// The first bytes of every package file.
pub const MAGIC: [u8; 8] = *b"P2PDPKG\n";
/// The package file format this crate writes and reads (the descriptor's
/// format). Format 1 (one zstd stream cut into fixed chunks) is refused
/// with an error that names both versions.
pub const FORMAT_VERSION: u16 = DESCRIPTOR_FORMAT;
pub(super) const HEADER_LEN: u64 = 32;
/// Descriptors and signature sections larger than this are refused
/// before they are read (a 100 GiB archive has 100k chunk hashes, 3 MiB).
pub(super) const MAX_SECTION: u32 = 16 << 20;

pub(super) fn file_err(path: &Path, what: &str, e: impl std::fmt::Display) -> Error {
    Error::invalid("package file", format!("{}: {what}: {e}", path.display()))
}

pub(super) fn header(archive_len: u64, descriptor_len: u32) -> [u8; HEADER_LEN as usize] {
    let mut h = [0u8; HEADER_LEN as usize];
    h[..8].copy_from_slice(&MAGIC);
    h[8..10].copy_from_slice(&FORMAT_VERSION.to_be_bytes());
    h[16..24].copy_from_slice(&archive_len.to_be_bytes());
    h[24..28].copy_from_slice(&descriptor_len.to_be_bytes());
    h
}

pub(super) fn write_signatures(w: &mut impl Write, sigs: &[Signature]) -> io::Result<()> {
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
    pub fn open(path: &Path) -> std::result::Result<Self, FormatError> {
        let io = |e: io::Error| FormatError::Io(format!("{}: {e}", path.display()));
        let mut f = File::open(path).map_err(io)?;
        let size = f.metadata().map_err(io)?.len();
        let mut h = [0u8; HEADER_LEN as usize];
        if size < HEADER_LEN {
            return Err(FormatError::NotAPackage(path.display().to_string()));
        }
        f.read_exact(&mut h).map_err(io)?;
        if h[..8] != MAGIC {
            return Err(FormatError::NotAPackage(path.display().to_string()));
        }
        let version = u16::from_be_bytes([h[8], h[9]]);
        if version != FORMAT_VERSION {
            return Err(FormatError::UnsupportedFormat(version));
        }
        let archive_len = u64::from_be_bytes(h[16..24].try_into().expect("8 bytes"));
        let dlen = u32::from_be_bytes(h[24..28].try_into().expect("4 bytes"));
        let truncated = |what: &str| FormatError::Truncated(format!("{}: {what}", path.display()));
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
            .map_err(|e| FormatError::SignaturesCorrupt(e.to_string()))?;
        let descriptor = Descriptor::from_bytes(&descriptor_bytes)?;
        if descriptor.archive_size != archive_len {
            return Err(FormatError::ArchiveSize {
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

    /// Checks every archive byte against the descriptor, chunk by chunk:
    /// each chunk's hash, and that it is one zstd frame of the size the
    /// descriptor gives. The first bad chunk is named.
    pub fn check_archive(&self) -> std::result::Result<(), FormatError> {
        let io = |e: io::Error| FormatError::Io(format!("{}: {e}", self.path.display()));
        let f = File::open(&self.path).map_err(io)?;
        let mut r = io::BufReader::with_capacity(1 << 20, f);
        r.seek(SeekFrom::Start(self.archive_offset)).map_err(io)?;
        let mut buf = Vec::new();
        for (index, c) in self.descriptor.chunks.iter().enumerate() {
            buf.resize(c.size as usize, 0);
            r.read_exact(&mut buf).map_err(|e| {
                if e.kind() == io::ErrorKind::UnexpectedEof {
                    FormatError::ArchiveSize {
                        expected: self.descriptor.archive_size,
                        actual: self.descriptor.chunk_offset(index),
                    }
                } else {
                    io(e)
                }
            })?;
            if Sha256::digest(&buf).as_slice() != c.sha256 {
                return Err(FormatError::ChunkHash { index });
            }
            check_frame(index, &buf, c.raw_size)?;
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
