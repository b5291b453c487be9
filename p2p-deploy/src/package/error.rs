//! Package-format errors: every way a package file, a descriptor or an
//! archive can be malformed, before any question of trust.

use p2p_core::Error;

/// Why a package file, descriptor or archive is malformed. Each way has
/// its own variant, so that callers and tests can tell them apart.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FormatError {
    /// The file does not start with the package magic.
    #[error("{0} is not a p2p-deploy package")]
    NotAPackage(String),
    /// A format version this build does not read.
    #[error(
        "package format {0} is not supported: this build reads format {f} \
         (build the package again with this version's `p2pctl package`)",
        f = super::descriptor::DESCRIPTOR_FORMAT
    )]
    UnsupportedFormat(u16),
    /// The file is shorter or longer than its header says.
    #[error("truncated or malformed package: {0}")]
    Truncated(String),
    /// The descriptor does not decode, or is not canonical.
    #[error("the package descriptor is corrupt: {0}")]
    DescriptorCorrupt(String),
    /// The signature section does not decode.
    #[error("the signature section is corrupt: {0}")]
    SignaturesCorrupt(String),
    /// The archive's length differs from the descriptor's.
    #[error("the archive is {actual} bytes, the descriptor says {expected}")]
    ArchiveSize {
        /// From the descriptor.
        expected: u64,
        /// Found.
        actual: u64,
    },
    /// A chunk's SHA-256 differs from the descriptor's.
    #[error("chunk {index} of the archive does not match its hash")]
    ChunkHash {
        /// The first bad chunk.
        index: usize,
    },
    /// A chunk is not one zstd frame that decompresses to the size the
    /// descriptor gives.
    #[error("chunk {index} of the archive: {detail}")]
    ChunkContent {
        /// The chunk.
        index: usize,
        /// What is wrong with it.
        detail: String,
    },
    /// Reading the file failed.
    #[error("{0}")]
    Io(String),
}

impl From<FormatError> for Error {
    fn from(e: FormatError) -> Self {
        match &e {
            FormatError::Io(m) => Error::io(m.clone(), std::io::Error::other(e.to_string())),
            _ => Error::protocol(e.to_string()),
        }
    }
}
