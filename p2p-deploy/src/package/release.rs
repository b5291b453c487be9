//! A release as a controller holds it to deploy and serve: the signed
//! descriptor and its archive, in memory or in a package file.

use std::path::PathBuf;
use std::sync::Arc;

use p2p_core::{Error, Result, Signature};
use sha2::{Digest, Sha256};

use super::{Descriptor, PackageFile, PackageId};

/// A release the controller deploys and serves.
#[derive(Debug, Clone)]
pub struct Release {
    /// The signed descriptor, decoded.
    pub descriptor: Descriptor,
    /// Its canonical bytes (what was signed).
    pub descriptor_bytes: Vec<u8>,
    /// The signatures sent with every deploy of it.
    pub signatures: Vec<Signature>,
    archive: Archive,
    offsets: Arc<Vec<u64>>,
}

#[derive(Debug, Clone)]
enum Archive {
    Memory(Arc<Vec<u8>>),
    File { path: PathBuf, offset: u64 },
}

impl Release {
    /// The release in a package file (the archive is read from the file
    /// as chunks are asked for). Nothing is checked here: call
    /// [`PackageFile::check_archive`] first (as `p2pctl deploy` does), or a
    /// changed byte is found only by the nodes, each of which then fails
    /// the deploy naming the chunk.
    pub fn from_package(pkg: &PackageFile) -> Self {
        Release {
            descriptor: pkg.descriptor.clone(),
            descriptor_bytes: pkg.descriptor_bytes.clone(),
            signatures: pkg.signatures.clone(),
            archive: Archive::File {
                path: pkg.path.clone(),
                offset: pkg.archive_offset,
            },
            offsets: Arc::new(pkg.descriptor.offsets()),
        }
    }

    /// A release held in memory; the archive must match the descriptor.
    pub fn from_parts(
        descriptor: Descriptor,
        signatures: Vec<Signature>,
        archive: Vec<u8>,
    ) -> Result<Self> {
        let offsets = descriptor.offsets();
        if archive.len() as u64 != descriptor.archive_size {
            return Err(super::FormatError::ArchiveSize {
                expected: descriptor.archive_size,
                actual: archive.len() as u64,
            }
            .into());
        }
        for (index, c) in descriptor.chunks.iter().enumerate() {
            let bytes = &archive[offsets[index] as usize..offsets[index + 1] as usize];
            if Sha256::digest(bytes).as_slice() != c.sha256 {
                return Err(super::FormatError::ChunkHash { index }.into());
            }
        }
        Ok(Release {
            descriptor_bytes: descriptor.to_bytes(),
            descriptor,
            signatures,
            archive: Archive::Memory(Arc::new(archive)),
            offsets: Arc::new(offsets),
        })
    }

    /// The package id.
    pub fn id(&self) -> PackageId {
        self.descriptor.id()
    }

    /// Whether the archive is held in memory (else it is read from a
    /// package file).
    pub(crate) fn in_memory(&self) -> bool {
        matches!(self.archive, Archive::Memory(_))
    }

    /// Chunk `index`.
    pub fn chunk(&self, index: usize) -> Result<Vec<u8>> {
        if index >= self.descriptor.chunks.len() {
            return Err(Error::NotFound {
                what: format!("chunk {index} of {}", self.id()),
            });
        }
        let start = self.offsets[index];
        let len = self.descriptor.chunks[index].size as usize;
        match &self.archive {
            Archive::Memory(b) => Ok(b[start as usize..start as usize + len].to_vec()),
            Archive::File { path, offset } => {
                use std::io::{Read, Seek, SeekFrom};
                let ioe = |e| Error::io(format!("reading {}", path.display()), e);
                let mut f = std::fs::File::open(path).map_err(ioe)?;
                f.seek(SeekFrom::Start(offset + start)).map_err(ioe)?;
                let mut buf = vec![0u8; len];
                f.read_exact(&mut buf).map_err(ioe)?;
                Ok(buf)
            }
        }
    }
}
