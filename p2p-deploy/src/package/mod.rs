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

mod archive;
mod build;
mod descriptor;
mod error;
mod file;
pub mod manifest;
mod release;
pub mod trust;
pub mod unpack;

pub use archive::{ArchiveHashes, IGNORE_FILE};
pub use build::{BuildOptions, build, hash_archive};
pub use descriptor::{DEFAULT_CHUNK_SIZE, Descriptor, PackageId, SIGNING_DOMAIN};
pub use error::FormatError;
pub use file::{FORMAT_VERSION, MAGIC, PackageFile};
pub use release::Release;
