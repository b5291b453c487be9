//! Safe unpacking: an archive into `versions/<name>/<version>`, or
//! nothing at all.
//!
//! Entries are extracted into a staging directory next to the target,
//! refusing (with an error naming the entry):
//!
//! - absolute paths and paths with `..`;
//! - paths that pass through a symlink (so no write lands outside through
//!   a link made by an earlier entry);
//! - symlinks whose target leaves the package, and hard links to anything
//!   but a file already extracted;
//! - device files, fifos and any other special entry;
//! - more than [`UnpackLimits::max_bytes`] of content or
//!   [`UnpackLimits::max_entries`] entries (and the decompressor's window
//!   is capped, so a small archive cannot claim a huge buffer).
//!
//! Files are written with mode 0755 or 0644 (by the execute bit) and
//! synced, directories synced, and the staging directory renamed into
//! place atomically. On any failure the staging directory is removed.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Component, Path, PathBuf};

use p2p_core::{Error, Result};

use super::archive::link_stays_inside;
use crate::manifest::check_name;

/// Bounds on what an archive may unpack to.
#[derive(Debug, Clone, Copy)]
pub struct UnpackLimits {
    /// Total bytes of file content.
    pub max_bytes: u64,
    /// Number of entries.
    pub max_entries: u64,
}

impl Default for UnpackLimits {
    /// 8 GiB, 1 million entries.
    fn default() -> Self {
        UnpackLimits {
            max_bytes: 8 << 30,
            max_entries: 1_000_000,
        }
    }
}

/// What is wrong with an archive that was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Refusal {
    /// An entry with an absolute path.
    AbsolutePath,
    /// An entry whose path contains `..`.
    ParentDir,
    /// An entry with an empty path.
    EmptyPath,
    /// An entry whose path passes through a symlink or a file.
    ThroughLink,
    /// A symlink or hard link that points outside the package.
    LinkOutside,
    /// A link without a usable target, or a hard link to anything but a
    /// file extracted before it.
    BadLink,
    /// A character or block device.
    DeviceFile,
    /// A fifo.
    Fifo,
    /// Any other special entry.
    UnsupportedEntry,
    /// More entries than [`UnpackLimits::max_entries`].
    TooManyEntries,
    /// More content than [`UnpackLimits::max_bytes`].
    TooLarge,
    /// An entry shorter than its header says.
    Truncated,
    /// Not a readable tar + zstd archive.
    Unreadable,
    /// An entry that could not be created (it exists already, say).
    NotWritable,
}

/// Why an archive was not unpacked. Nothing is left behind either way.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UnpackError {
    /// The archive is unsafe or malformed.
    #[error("invalid archive: {}{detail}", entry.as_ref().map(|e| format!("entry {e:?}: ")).unwrap_or_default())]
    Refused {
        /// What is wrong.
        kind: Refusal,
        /// The entry, when one entry is to blame.
        entry: Option<String>,
        /// The details, for people.
        detail: String,
    },
    /// Something else failed: the disk, or the version exists already
    /// ([`Error::AlreadyExists`]).
    #[error(transparent)]
    Other(#[from] Error),
}

impl UnpackError {
    /// The refusal's kind, if the archive was refused.
    pub fn refusal(&self) -> Option<Refusal> {
        match self {
            UnpackError::Refused { kind, .. } => Some(*kind),
            UnpackError::Other(_) => None,
        }
    }
}

impl From<UnpackError> for Error {
    fn from(e: UnpackError) -> Self {
        match e {
            UnpackError::Refused {
                entry: Some(entry),
                detail,
                ..
            } => Error::invalid("archive", format!("entry {entry:?}: {detail}")),
            UnpackError::Refused {
                entry: None,
                detail,
                ..
            } => Error::invalid("archive", detail),
            UnpackError::Other(e) => e,
        }
    }
}

fn refuse(entry: &str, kind: Refusal, why: impl std::fmt::Display) -> UnpackError {
    UnpackError::Refused {
        kind,
        entry: Some(entry.to_string()),
        detail: why.to_string(),
    }
}

fn refuse_archive(kind: Refusal, why: impl std::fmt::Display) -> UnpackError {
    UnpackError::Refused {
        kind,
        entry: None,
        detail: why.to_string(),
    }
}

/// The directory a version is installed in: `<root>/<name>/<version>`.
pub fn version_dir(root: &Path, name: &str, version: &semver::Version) -> Result<PathBuf> {
    check_name("name", name)?;
    Ok(root.join(name).join(version.to_string()))
}

/// Unpacks the tar + zstd `archive` (one zstd stream, or frames one
/// after another) into `<root>/<name>/<version>`.
/// Refuses an unsafe or malformed archive with [`UnpackError::Refused`]
/// (its [`Refusal`] says why), fails with [`Error::AlreadyExists`] if that
/// version is there already, and leaves nothing behind on any error.
/// Agents unpack with [`unpack_release`], which also holds each chunk to
/// its declared size.
pub fn unpack(
    archive: impl Read,
    root: &Path,
    name: &str,
    version: &semver::Version,
    limits: UnpackLimits,
) -> std::result::Result<PathBuf, UnpackError> {
    let mut dec = zstd::stream::read::Decoder::new(archive)
        .map_err(|e| Error::io("starting decompression", e))?;
    dec.window_log_max(27)
        .map_err(|e| Error::io("limiting the decompression window", e))?;
    unpack_tar(dec, root, name, version, limits)
}

/// Unpacks release `d` from `archive` (its chunks, one after another)
/// into `<root>/<name>/<version>`: each chunk is decompressed to exactly
/// the size the descriptor gives (one that is not a single frame of that
/// size is refused, naming it), then the tar stream is unpacked as
/// [`unpack`] does, with the same refusals, and nothing left behind on
/// any error.
pub fn unpack_release(
    archive: impl Read,
    d: &super::Descriptor,
    root: &Path,
    limits: UnpackLimits,
) -> std::result::Result<PathBuf, UnpackError> {
    unpack_chunks(super::archive::Sequential(archive), d, root, limits)
}

/// [`unpack_release`] with the chunks handed over one by one, as they
/// are (an install's, from the chunk store): none is copied into a
/// stream first.
pub(crate) fn unpack_chunks(
    chunks: impl super::archive::ChunkSource,
    d: &super::Descriptor,
    root: &Path,
    limits: UnpackLimits,
) -> std::result::Result<PathBuf, UnpackError> {
    let tar = super::archive::FrameReader::from_chunks(chunks, &d.chunks)
        .map_err(|e| Error::io("starting decompression", e))?;
    unpack_tar(tar, root, &d.manifest.name, &d.manifest.version, limits).map_err(|e| {
        // A bad chunk surfaces as a read error wherever the tar reader
        // was (inside a file's content, say): it is the archive's fault.
        match &e {
            UnpackError::Other(Error::Io { source, .. }) => {
                match source
                    .get_ref()
                    .and_then(|inner| inner.downcast_ref::<super::FormatError>())
                {
                    Some(bad) => refuse_archive(Refusal::Unreadable, bad),
                    None => e,
                }
            }
            _ => e,
        }
    })
}

/// Unpacks the uncompressed tar stream `tar` into
/// `<root>/<name>/<version>`, as [`unpack`] does.
pub fn unpack_tar(
    tar: impl Read,
    root: &Path,
    name: &str,
    version: &semver::Version,
    limits: UnpackLimits,
) -> std::result::Result<PathBuf, UnpackError> {
    let target = version_dir(root, name, version)?;
    if target.exists() {
        return Err(UnpackError::Other(Error::AlreadyExists {
            what: format!("{}", target.display()),
        }));
    }
    let app_dir = target
        .parent()
        .expect("a version dir has a parent")
        .to_path_buf();
    fs::create_dir_all(&app_dir)
        .map_err(|e| Error::io(format!("creating {}", app_dir.display()), e))?;
    let staging = tempfile::Builder::new()
        .prefix(".staging-")
        .tempdir_in(&app_dir)
        .map_err(|e| {
            Error::io(
                format!("creating a staging directory in {}", app_dir.display()),
                e,
            )
        })?;
    extract(tar, staging.path(), limits)?;
    sync_dir(staging.path())?;
    let staged = staging.keep();
    if let Err(e) = fs::rename(&staged, &target) {
        let _ = fs::remove_dir_all(&staged);
        return Err(Error::io(format!("moving into {}", target.display()), e).into());
    }
    sync_dir(&app_dir)?;
    Ok(target)
}

fn sync_dir(d: &Path) -> Result<()> {
    File::open(d)
        .and_then(|f| f.sync_all())
        .map_err(|e| Error::io(format!("syncing {}", d.display()), e))
}

/// Checks an entry path: relative, plain components only.
fn clean_path(raw: &Path, shown: &str) -> std::result::Result<PathBuf, UnpackError> {
    let mut out = PathBuf::new();
    for c in raw.components() {
        match c {
            Component::Normal(p) => out.push(p),
            Component::CurDir => {}
            Component::ParentDir => return Err(refuse(shown, Refusal::ParentDir, "contains '..'")),
            Component::RootDir | Component::Prefix(_) => {
                return Err(refuse(shown, Refusal::AbsolutePath, "is an absolute path"));
            }
        }
    }
    if out.as_os_str().is_empty() {
        return Err(refuse(shown, Refusal::EmptyPath, "is empty"));
    }
    Ok(out)
}

/// Refuses a path whose existing ancestors (inside `root`) are not all
/// real directories.
fn no_link_on_the_way(
    root: &Path,
    rel: &Path,
    shown: &str,
) -> std::result::Result<(), UnpackError> {
    let mut cur = root.to_path_buf();
    let parts: Vec<_> = rel.components().collect();
    for c in &parts[..parts.len().saturating_sub(1)] {
        cur.push(c);
        match fs::symlink_metadata(&cur) {
            Ok(m) if m.file_type().is_dir() => {}
            Ok(_) => {
                return Err(refuse(
                    shown,
                    Refusal::ThroughLink,
                    "passes through a symlink or a file",
                ));
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io(format!("checking {}", cur.display()), e).into()),
        }
    }
    Ok(())
}

/// The size of the writes that unpack a file.
const WRITE_BLOCK: usize = 256 << 10;

/// Copies `r` to `w` in writes of `buf`'s whole size, the last one
/// excepted: every write starts on a multiple of it, so on a block
/// boundary.
///
/// `io::copy` wrote in pieces of 8 KiB as the decompressor handed them
/// over, rarely on a block boundary; for each write the file system
/// zeroed the rest of the block it ended in before the next write filled
/// it. In a profile of the agent receiving 100 MB, that zeroing was an
/// eighth of all its CPU time.
fn copy_blocks(r: &mut impl Read, w: &mut impl Write, buf: &mut [u8]) -> io::Result<u64> {
    let mut total = 0u64;
    loop {
        let mut n = 0;
        while n < buf.len() {
            match r.read(&mut buf[n..]) {
                Ok(0) => break,
                Ok(k) => n += k,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        w.write_all(&buf[..n])?;
        total += n as u64;
        if n < buf.len() {
            return Ok(total);
        }
    }
}

fn extract(
    tar: impl Read,
    dest: &Path,
    limits: UnpackLimits,
) -> std::result::Result<(), UnpackError> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut ar = tar::Archive::new(tar);
    let mut total: u64 = 0;
    let mut count: u64 = 0;
    let mut block = vec![0u8; WRITE_BLOCK];
    let entries = ar
        .entries()
        .map_err(|e| refuse_archive(Refusal::Unreadable, format!("unreadable: {e}")))?;
    for entry in entries {
        let mut entry = entry
            .map_err(|e| refuse_archive(Refusal::Unreadable, format!("unreadable entry: {e}")))?;
        count += 1;
        if count > limits.max_entries {
            return Err(refuse_archive(
                Refusal::TooManyEntries,
                format!("more than {} entries", limits.max_entries),
            ));
        }
        let raw = entry
            .path()
            .map_err(|e| {
                refuse_archive(
                    Refusal::Unreadable,
                    format!("an entry path is not valid: {e}"),
                )
            })?
            .into_owned();
        let shown = raw.display().to_string();
        let rel = clean_path(&raw, &shown)?;
        no_link_on_the_way(dest, &rel, &shown)?;
        let path = dest.join(&rel);
        let kind = entry.header().entry_type();
        match kind {
            tar::EntryType::Directory => {
                fs::create_dir_all(&path)
                    .map_err(|e| Error::io(format!("creating {}", path.display()), e))?;
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                let size = entry.size();
                total = total.saturating_add(size);
                if total > limits.max_bytes {
                    return Err(refuse_archive(
                        Refusal::TooLarge,
                        format!("unpacks to more than {} bytes", limits.max_bytes),
                    ));
                }
                if let Some(parent) = path.parent() {
                    fs::create_dir_all(parent)
                        .map_err(|e| Error::io(format!("creating {}", parent.display()), e))?;
                }
                let exec = entry.header().mode().unwrap_or(0o644) & 0o111 != 0;
                let mut f = OpenOptions::new()
                    .write(true)
                    // Never through an existing file or symlink.
                    .create_new(true)
                    .mode(if exec { 0o755 } else { 0o644 })
                    .open(&path)
                    .map_err(|e| {
                        refuse(
                            &shown,
                            Refusal::NotWritable,
                            format!("cannot be written: {e}"),
                        )
                    })?;
                let copied = copy_blocks(&mut (&mut entry).take(size), &mut f, &mut block)
                    .map_err(|e| Error::io(format!("writing {}", path.display()), e))?;
                if copied != size {
                    return Err(refuse(
                        &shown,
                        Refusal::Truncated,
                        "is shorter than its header says",
                    ));
                }
                f.flush()
                    .and_then(|_| f.sync_all())
                    .map_err(|e| Error::io(format!("syncing {}", path.display()), e))?;
            }
            tar::EntryType::Symlink => {
                let target = entry
                    .link_name()
                    .map_err(|e| refuse(&shown, Refusal::BadLink, format!("bad link target: {e}")))?
                    .ok_or_else(|| refuse(&shown, Refusal::BadLink, "a symlink without a target"))?
                    .into_owned();
                if !link_stays_inside(&rel, &target) {
                    return Err(refuse(
                        &shown,
                        Refusal::LinkOutside,
                        format!("symlink to {} points outside the package", target.display()),
                    ));
                }
                if let Some(parent) = path.parent() {
                    fs::create_dir_all(parent)
                        .map_err(|e| Error::io(format!("creating {}", parent.display()), e))?;
                }
                std::os::unix::fs::symlink(&target, &path).map_err(|e| {
                    refuse(
                        &shown,
                        Refusal::NotWritable,
                        format!("cannot be created: {e}"),
                    )
                })?;
            }
            tar::EntryType::Link => {
                let target = entry
                    .link_name()
                    .map_err(|e| refuse(&shown, Refusal::BadLink, format!("bad link target: {e}")))?
                    .ok_or_else(|| {
                        refuse(&shown, Refusal::BadLink, "a hard link without a target")
                    })?
                    .into_owned();
                let target_shown = target.display().to_string();
                let trel = clean_path(&target, &target_shown).map_err(|_| {
                    refuse(
                        &shown,
                        Refusal::LinkOutside,
                        format!("hard link to {target_shown} points outside the package"),
                    )
                })?;
                no_link_on_the_way(dest, &trel, &shown)?;
                let tpath = dest.join(&trel);
                match fs::symlink_metadata(&tpath) {
                    Ok(m) if m.file_type().is_file() => {}
                    _ => {
                        return Err(refuse(
                            &shown,
                            Refusal::BadLink,
                            format!(
                                "hard link to {target_shown}, which is not a file extracted before it"
                            ),
                        ));
                    }
                }
                fs::hard_link(&tpath, &path).map_err(|e| {
                    refuse(
                        &shown,
                        Refusal::NotWritable,
                        format!("cannot be created: {e}"),
                    )
                })?;
            }
            tar::EntryType::Char | tar::EntryType::Block => {
                return Err(refuse(&shown, Refusal::DeviceFile, "is a device file"));
            }
            tar::EntryType::Fifo => return Err(refuse(&shown, Refusal::Fifo, "is a fifo")),
            tar::EntryType::XGlobalHeader
            | tar::EntryType::XHeader
            | tar::EntryType::GNULongName
            | tar::EntryType::GNULongLink => {}
            other => {
                return Err(refuse(
                    &shown,
                    Refusal::UnsupportedEntry,
                    format!("has unsupported type {other:?}"),
                ));
            }
        }
    }
    // Directories were made as their contents arrived; sync them all.
    Ok(sync_tree(dest)?)
}

fn sync_tree(dir: &Path) -> Result<()> {
    for e in fs::read_dir(dir).map_err(|e| Error::io(format!("reading {}", dir.display()), e))? {
        let e = e.map_err(|e| Error::io(format!("reading {}", dir.display()), e))?;
        if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            sync_tree(&e.path())?;
        }
    }
    sync_dir(dir)
}
