//! Building a package: a directory with its `p2p.toml` to a package
//! file, archived, compressed and hashed in one pass.

use std::io::{self, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::Path;

use p2p_core::{Clock, Error, Result};

use super::archive::{ArchiveHashes, HashingWriter, hash_parallel, pack};
use super::descriptor::{DEFAULT_CHUNK_SIZE, Descriptor};
use super::file::{HEADER_LEN, MAX_SECTION, header, write_signatures};
use super::manifest::Manifest;

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
