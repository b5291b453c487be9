//! Building a package: a directory with its `p2p.toml` to a package
//! file, archived, chunked, compressed and hashed in one pass.

use std::io::{self, BufWriter, Seek, SeekFrom, Write};
use std::path::Path;

use p2p_core::{Clock, Error, Result, Timestamp};

use super::archive::pack;
use super::descriptor::{DEFAULT_CHUNK_SIZE, Descriptor};
use super::file::{HEADER_LEN, header, write_signatures};
use super::manifest::Manifest;

/// Options for [`build`].
#[derive(Debug, Clone, Copy)]
pub struct BuildOptions {
    /// Average chunk size in bytes (default [`DEFAULT_CHUNK_SIZE`],
    /// 256 KiB), between 4 KiB and 4 MiB. Chunks are a quarter to twice
    /// that.
    pub chunk_size: u32,
    /// zstd level (default 3). Chunks are shared between releases only
    /// when built at the same level.
    pub level: i32,
    /// The creation time written into the descriptor. `None` takes the
    /// clock's time, so two builds of the same files differ in it (and in
    /// their package id) and in nothing else. Set it, or use
    /// [`with_source_date_epoch`](Self::with_source_date_epoch), for a
    /// reproducible package: the same files and time give the same file,
    /// byte for byte, and the same id.
    pub created_at: Option<Timestamp>,
}

impl Default for BuildOptions {
    fn default() -> Self {
        BuildOptions {
            chunk_size: DEFAULT_CHUNK_SIZE,
            level: 3,
            created_at: None,
        }
    }
}

impl BuildOptions {
    /// Takes the creation time from the `SOURCE_DATE_EPOCH` environment
    /// variable (seconds since the Unix epoch, the reproducible-builds
    /// convention) when it is set; a value that is not such a number is an
    /// error naming it.
    pub fn with_source_date_epoch(mut self) -> Result<Self> {
        if let Some(v) = std::env::var_os("SOURCE_DATE_EPOCH") {
            let secs: u64 = v
                .to_str()
                .and_then(|s| s.trim().parse().ok())
                .ok_or_else(|| {
                    Error::invalid(
                        "SOURCE_DATE_EPOCH",
                        format!("{v:?} is not a number of seconds since 1970"),
                    )
                })?;
            let ms = secs.checked_mul(1000).ok_or_else(|| {
                Error::invalid("SOURCE_DATE_EPOCH", format!("{secs} is out of range"))
            })?;
            self.created_at = Some(Timestamp(ms));
        }
        Ok(self)
    }
}

/// Packages directory `dir` (which holds a valid `p2p.toml`) into the
/// package file `out`, unsigned. The tar stream is cut into
/// content-defined chunks, compressed (on every core) and hashed in one
/// pass as it is written. Nothing is left at `out` on failure; an
/// existing file there is replaced only on success.
pub fn build(dir: &Path, out: &Path, clock: &dyn Clock, opts: BuildOptions) -> Result<Descriptor> {
    let manifest = Manifest::load(dir)?;
    if !(4096..=4 << 20).contains(&opts.chunk_size) {
        return Err(Error::invalid(
            "chunk size",
            format!(
                "an average of {} bytes is not between 4 KiB and 4 MiB",
                opts.chunk_size
            ),
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
    let (mut f, chunks) = pack(dir, f, opts.chunk_size, opts.level)?;
    let descriptor = Descriptor::new(
        manifest,
        chunks,
        opts.created_at.unwrap_or_else(|| clock.now()),
    );
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
