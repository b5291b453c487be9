//! Deterministic archives: a directory packed as tar + zstd so that the
//! same files give the same bytes on every run and every machine.
//!
//! Entries are sorted by path; every mtime is 0, owner and group 0 with
//! empty names; files get mode 0755 if any execute bit is set, else 0644;
//! directories 0755. Symlinks are kept when they point inside the
//! directory. Other file types (fifos, sockets, devices) are refused.
//! A `.p2pignore` file (gitignore syntax, any directory) leaves paths out.

use std::fs;
use std::io::{self, Write};
use std::path::{Component, Path, PathBuf};

use p2p_core::{Error, Result};
use sha2::{Digest, Sha256};

/// The ignore file's name.
pub const IGNORE_FILE: &str = ".p2pignore";

#[derive(Debug, Clone, PartialEq, Eq)]
enum Kind {
    Dir,
    File { executable: bool },
    Symlink(PathBuf),
}

#[derive(Debug, Clone)]
struct Entry {
    /// Relative path with `/` separators.
    rel: String,
    abs: PathBuf,
    kind: Kind,
}

fn io_err(p: &Path, e: impl std::fmt::Display) -> Error {
    Error::invalid("package directory", format!("{}: {e}", p.display()))
}

/// Whether `target`, as a symlink at `rel` (relative to the root), stays
/// inside the root.
pub(crate) fn link_stays_inside(rel: &Path, target: &Path) -> bool {
    if target.is_absolute() {
        return false;
    }
    let mut depth: i64 = rel.components().count() as i64 - 1;
    for c in target.components() {
        match c {
            Component::ParentDir => depth -= 1,
            Component::Normal(_) => depth += 1,
            Component::CurDir => {}
            _ => return false,
        }
        if depth < 0 {
            return false;
        }
    }
    true
}

fn collect(root: &Path) -> Result<Vec<Entry>> {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    let walker = ignore::WalkBuilder::new(root)
        .standard_filters(false)
        .add_custom_ignore_filename(IGNORE_FILE)
        .follow_links(false)
        .build();
    let mut out = Vec::new();
    for item in walker {
        let item = item.map_err(|e| io_err(root, e))?;
        let abs = item.path().to_path_buf();
        let rel_path = abs.strip_prefix(root).map_err(|e| io_err(&abs, e))?;
        if rel_path.as_os_str().is_empty() {
            continue;
        }
        let rel = rel_path
            .to_str()
            .ok_or_else(|| io_err(&abs, "the path is not UTF-8"))?
            .to_string();
        let meta = fs::symlink_metadata(&abs).map_err(|e| io_err(&abs, e))?;
        let ft = meta.file_type();
        let kind = if ft.is_dir() {
            Kind::Dir
        } else if ft.is_file() {
            Kind::File {
                executable: meta.permissions().mode() & 0o111 != 0,
            }
        } else if ft.is_symlink() {
            let target = fs::read_link(&abs).map_err(|e| io_err(&abs, e))?;
            if !link_stays_inside(rel_path, &target) {
                return Err(io_err(
                    &abs,
                    format!("symlink to {} points outside the package", target.display()),
                ));
            }
            Kind::Symlink(target)
        } else {
            let what = if ft.is_fifo() {
                "a fifo"
            } else if ft.is_socket() {
                "a socket"
            } else {
                "a device file"
            };
            return Err(io_err(&abs, format!("{what} cannot be packaged")));
        };
        out.push(Entry { rel, abs, kind });
    }
    out.sort_by(|a, b| a.rel.as_bytes().cmp(b.rel.as_bytes()));
    Ok(out)
}

/// What describes an archive's bytes: its length, its SHA-256, and the
/// SHA-256 of each chunk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchiveHashes {
    /// Length in bytes.
    pub len: u64,
    /// SHA-256 of all the bytes.
    pub sha256: [u8; 32],
    /// SHA-256 of each `chunk_size` piece (the last may be shorter; an
    /// empty archive has one chunk, the hash of nothing).
    pub chunks: Vec<[u8; 32]>,
}

/// Chunk hashes and length of a stream fed in pieces.
struct ChunkHasher {
    chunk: Sha256,
    in_chunk: u64,
    chunk_size: u64,
    len: u64,
    chunks: Vec<[u8; 32]>,
}

impl ChunkHasher {
    fn new(chunk_size: u32) -> Self {
        ChunkHasher {
            chunk: Sha256::new(),
            in_chunk: 0,
            chunk_size: u64::from(chunk_size),
            len: 0,
            chunks: Vec::new(),
        }
    }

    fn update(&mut self, mut buf: &[u8]) {
        self.len += buf.len() as u64;
        while !buf.is_empty() {
            let room = (self.chunk_size - self.in_chunk) as usize;
            let take = room.min(buf.len());
            self.chunk.update(&buf[..take]);
            self.in_chunk += take as u64;
            buf = &buf[take..];
            if self.in_chunk == self.chunk_size {
                let done = std::mem::replace(&mut self.chunk, Sha256::new());
                self.chunks.push(done.finalize().into());
                self.in_chunk = 0;
            }
        }
    }

    fn finish(mut self) -> (u64, Vec<[u8; 32]>) {
        if self.in_chunk > 0 || self.chunks.is_empty() {
            self.chunks.push(self.chunk.finalize().into());
        }
        (self.len, self.chunks)
    }
}

const BLOCK: usize = 1 << 20;
type Block = std::sync::Arc<Vec<u8>>;

/// Hashes a stream, the whole and each chunk, on two threads of its own:
/// about as fast as one SHA-256 pass where a core is free, and off the
/// thread that produces the bytes (compression, disk reads).
pub(crate) struct ParallelHasher {
    senders: Option<(
        std::sync::mpsc::SyncSender<Block>,
        std::sync::mpsc::SyncSender<Block>,
    )>,
    total: std::thread::JoinHandle<[u8; 32]>,
    chunks: std::thread::JoinHandle<(u64, Vec<[u8; 32]>)>,
    block: Vec<u8>,
}

impl ParallelHasher {
    pub(crate) fn new(chunk_size: u32) -> Self {
        let (to_total, for_total) = std::sync::mpsc::sync_channel::<Block>(4);
        let (to_chunks, for_chunks) = std::sync::mpsc::sync_channel::<Block>(4);
        let total = std::thread::spawn(move || {
            let mut h = Sha256::new();
            for b in for_total {
                h.update(&b[..]);
            }
            <[u8; 32]>::from(h.finalize())
        });
        let chunks = std::thread::spawn(move || {
            let mut h = ChunkHasher::new(chunk_size);
            for b in for_chunks {
                h.update(&b[..]);
            }
            h.finish()
        });
        ParallelHasher {
            senders: Some((to_total, to_chunks)),
            total,
            chunks,
            block: Vec::with_capacity(BLOCK),
        }
    }

    /// Hands a block to both threads.
    fn push(&mut self, block: Vec<u8>) {
        if let Some((t, c)) = &self.senders {
            let b = std::sync::Arc::new(block);
            // A send fails only if a thread is gone, which `finish` reports.
            let _ = t.send(b.clone());
            let _ = c.send(b);
        }
    }

    /// Adds bytes.
    pub(crate) fn update(&mut self, mut buf: &[u8]) {
        while !buf.is_empty() {
            let take = (BLOCK - self.block.len()).min(buf.len());
            self.block.extend_from_slice(&buf[..take]);
            buf = &buf[take..];
            if self.block.len() == BLOCK {
                let full = std::mem::replace(&mut self.block, Vec::with_capacity(BLOCK));
                self.push(full);
            }
        }
    }

    /// Waits for both threads and returns the hashes.
    pub(crate) fn finish(mut self) -> ArchiveHashes {
        let rest = std::mem::take(&mut self.block);
        if !rest.is_empty() {
            self.push(rest);
        }
        self.senders = None;
        let sha256 = self
            .total
            .join()
            .expect("the hashing thread does not panic");
        let (len, chunks) = self
            .chunks
            .join()
            .expect("the hashing thread does not panic");
        ArchiveHashes {
            len,
            sha256,
            chunks,
        }
    }
}

/// Writes through to `inner` and hashes what was written.
pub(crate) struct HashingWriter<W> {
    inner: W,
    hasher: ParallelHasher,
}

impl<W: Write> HashingWriter<W> {
    pub(crate) fn new(inner: W, chunk_size: u32) -> Self {
        HashingWriter {
            inner,
            hasher: ParallelHasher::new(chunk_size),
        }
    }

    pub(crate) fn finish(self) -> (W, ArchiveHashes) {
        (self.inner, self.hasher.finish())
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Hashes everything `r` yields, the whole and each `chunk_size` piece,
/// with the two hashes on two threads of their own.
pub(crate) fn hash_parallel(mut r: impl io::Read, chunk_size: u32) -> io::Result<ArchiveHashes> {
    let mut h = ParallelHasher::new(chunk_size);
    loop {
        let mut buf = vec![0u8; BLOCK];
        let mut filled = 0;
        while filled < BLOCK {
            match r.read(&mut buf[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        buf.truncate(filled);
        if filled > 0 {
            h.push(buf);
        }
        if filled < BLOCK {
            return Ok(h.finish());
        }
    }
}

/// Packs `root` into `out` as deterministic tar + zstd at `level`.
pub(crate) fn pack<W: Write>(root: &Path, out: W, level: i32) -> Result<W> {
    let entries = collect(root)?;
    let enc = zstd::stream::write::Encoder::new(out, level)
        .map_err(|e| Error::io("starting compression", e))?;
    let mut tar = tar::Builder::new(enc);
    tar.mode(tar::HeaderMode::Deterministic);
    tar.follow_symlinks(false);
    for e in &entries {
        let mut h = tar::Header::new_gnu();
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        let _ = h.set_username("");
        let _ = h.set_groupname("");
        let werr = |err: io::Error| Error::io(format!("packing {}", e.abs.display()), err);
        match &e.kind {
            Kind::Dir => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(0o755);
                h.set_size(0);
                tar.append_data(&mut h, format!("{}/", e.rel), io::empty())
                    .map_err(werr)?;
            }
            Kind::File { executable } => {
                let f = fs::File::open(&e.abs).map_err(werr)?;
                let len = f.metadata().map_err(werr)?.len();
                h.set_entry_type(tar::EntryType::Regular);
                h.set_mode(if *executable { 0o755 } else { 0o644 });
                h.set_size(len);
                // A file that changes size while packed is an error, not a
                // silently short entry.
                let mut limited = io::Read::take(f, len);
                tar.append_data(&mut h, &e.rel, &mut limited)
                    .map_err(werr)?;
            }
            Kind::Symlink(target) => {
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_mode(0o777);
                h.set_size(0);
                tar.append_link(&mut h, &e.rel, target).map_err(werr)?;
            }
        }
    }
    let enc = tar
        .into_inner()
        .map_err(|e| Error::io("finishing the archive", e))?;
    enc.finish()
        .map_err(|e| Error::io("finishing compression", e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_are_judged_against_the_root() {
        let ok = |rel: &str, t: &str| link_stays_inside(Path::new(rel), Path::new(t));
        assert!(ok("a", "b"));
        assert!(ok("d/a", "../b"));
        assert!(!ok("a", "../b"));
        assert!(!ok("d/a", "../../b"));
        assert!(!ok("a", "/etc/passwd"));
        assert!(ok("d/e/a", "../../x/./y"));
    }

    fn one_pass(data: &[u8], chunk_size: usize) -> ArchiveHashes {
        let sha = |b: &[u8]| -> [u8; 32] { Sha256::digest(b).into() };
        let mut chunks: Vec<[u8; 32]> = data.chunks(chunk_size).map(sha).collect();
        if chunks.is_empty() {
            chunks.push(sha(b""));
        }
        ArchiveHashes {
            len: data.len() as u64,
            sha256: sha(data),
            chunks,
        }
    }

    #[test]
    fn parallel_hashing_agrees_with_one_pass() {
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        for len in [0, 1, 65536, 65537, BLOCK, BLOCK + 1, data.len()] {
            let d = &data[..len];
            let p = hash_parallel(d, 65536).unwrap();
            assert_eq!(p, one_pass(d, 65536), "read path, {len} bytes");
            // The writer path, fed in odd pieces.
            let mut w = HashingWriter::new(Vec::new(), 65536);
            for piece in d.chunks(7919) {
                w.write_all(piece).unwrap();
            }
            let (out, h) = w.finish();
            assert_eq!(out, d, "written bytes pass through");
            assert_eq!(h, one_pass(d, 65536), "write path, {len} bytes");
        }
    }

    #[test]
    fn chunk_hashes_cover_every_byte_once() {
        let mut w = HashingWriter::new(Vec::new(), 4);
        w.write_all(b"abcdefghij").unwrap();
        let (out, h) = w.finish();
        assert_eq!(out, b"abcdefghij");
        assert_eq!(h.len, 10);
        let sha = |b: &[u8]| -> [u8; 32] { Sha256::digest(b).into() };
        assert_eq!(h.sha256, sha(b"abcdefghij"));
        assert_eq!(h.chunks, [sha(b"abcd"), sha(b"efgh"), sha(b"ij")]);
    }
}
