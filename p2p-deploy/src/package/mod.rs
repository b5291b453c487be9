//! Packages: what a release is and how it is built, signed, checked and
//! unpacked.
//!
//! - [`manifest`]: `p2p.toml`, validated with errors that name the field.
//! - [`descriptor`](Descriptor): the signed description of a release, and
//!   its [`PackageId`].
//! - [`build`]: a directory to a deterministic archive and package file.
//! - [`PackageFile`]: the one-file package; signing in place; verification.
//! - [`trust`]: key files, the [`TrustStore`](trust::TrustStore) and the
//!   anti-downgrade rule.
//! - [`unpack`](mod@unpack): an archive into a version directory, or nothing.
//! - [`Release`]: a release as a controller deploys and serves it.
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
//! | 32 | `A` | the archive: the chunks, one after another |
//! | 32 + `A` | `D` | the descriptor, canonical postcard |
//! | 32 + `A` + `D` | 4 | signature section length `S`, big-endian |
//! | 36 + `A` + `D` | `S` | the signatures, postcard `Vec<Signature>` |
//!
//! The file ends there: anything after is an error. Signing rewrites only
//! the signature section, in place, so signing a large package costs
//! nothing but the signature.
//!
//! # Chunks and delta releases
//!
//! The archive is a deterministic tar stream cut into content-defined
//! chunks (FastCDC; 256 KiB on average, a quarter to twice that, and
//! also cut where a file ends once a chunk has its minimum size), each
//! compressed on its own as one zstd frame that records its content size.
//! The frames one after another are still one valid zstd stream of the
//! tar. A chunk is addressed by the SHA-256 of its compressed bytes, and
//! the descriptor lists each chunk's hash, size and uncompressed size.
//! Because cut points follow the content, a new version that changes one
//! file changes only the chunks of that file: the chunk store keeps each
//! chunk once for every release that lists it, and a node that holds the
//! old version fetches only the chunks it lacks. See [the `archive`
//! module's notes](archive) for why the cuts are made over the tar stream.
//!
//! A signature covers [`SIGNING_DOMAIN`] followed by the descriptor bytes;
//! the package id is the SHA-256 of the descriptor bytes. The descriptor
//! holds every chunk's hash and size, which add up to the archive, so a
//! verified descriptor vouches for every byte of it.
//!
//! # Reproducible packages
//!
//! The same files give the same archive, byte for byte: entries sorted,
//! times, owners and modes normalised, cut points and compression
//! deterministic. The descriptor also holds the creation time: with
//! `SOURCE_DATE_EPOCH` set (see [`BuildOptions::with_source_date_epoch`],
//! which `p2pctl package` uses) two builds of the same files are the same
//! file with the same package id, so two builders can each build a
//! release and co-sign one id. Without it, the creation time is the
//! clock's, and two builds differ in that field, and so in their ids,
//! but not in any chunk: a node that holds one fetches nothing of the
//! other. The zstd library's version is part of the recipe: another
//! version may compress differently (the package is still valid, and
//! still unpacks to the same files, but its chunk hashes differ).
//!
//! # Format 1
//!
//! Format 1 (one zstd stream cut into fixed 256 KiB chunks, with no
//! format field in the descriptor) is refused wherever a release is to be
//! deployed, fetched or served: a package file, a descriptor on the wire,
//! with an error that names format 1 and format 2 (rebuild the package
//! with this version's `p2pctl package`). A node upgraded from format 1
//! keeps what it installed then: the versions stay installed and run, can
//! be switched to and rolled back to (the agent reads their manifests
//! with [`legacy_v1`]), and their chunks are kept while the versions are;
//! they are left out of the catalog and are not served to peers.

pub mod archive;
mod build;
mod descriptor;
mod error;
mod file;
pub mod manifest;
mod release;
pub mod trust;
pub mod unpack;

pub use archive::{IGNORE_FILE, check_frame, frame_pieces, write_tar};
pub use build::{BuildOptions, build};
pub use descriptor::{
    ChunkInfo, DEFAULT_CHUNK_SIZE, DESCRIPTOR_FORMAT, Descriptor, MAX_CHUNK_BYTES, PackageId,
    SIGNING_DOMAIN, legacy_v1,
};
pub use error::FormatError;
pub use file::{FORMAT_VERSION, MAGIC, PackageFile};
pub use release::Release;
