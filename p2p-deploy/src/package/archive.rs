//! Deterministic archives: a directory packed as a tar stream, cut into
//! content-defined chunks, each compressed on its own with zstd, so that
//! the same files give the same bytes on every run and every machine, and
//! a small change to the files changes few chunks.
//!
//! # Why chunks are cut over the tar stream, at file boundaries too
//!
//! The cut points come from the content (FastCDC, through the `fastcdc`
//! crate): an edit changes the chunks it touches, and the cuts after it
//! fall where they fell before. Cutting the whole tar stream, rather than
//! each file on its own, packs small files together into chunks of the
//! average size, so a tree of many small files does not become a list of
//! many tiny chunks (each costs a hash in the descriptor and a request in
//! the swarm). On top of that, once a chunk has reached the minimum size
//! it is also cut where an entry of the tar stream ends: a changed or
//! inserted file then changes its own chunks and at most the one chunk of
//! small files it lands among, not the chunk that happens to straddle it
//! and its neighbour. A chunk is compressed on its own (one zstd frame
//! with its content size), so that a chunk shared by two releases is the
//! same bytes in both; compressing chunks separately costs a few percent
//! of size against one zstd stream, which the `delta` benchmark measures.
//!
//! Entries are sorted by path; every mtime is 0, owner and group 0 with
//! empty names; files get mode 0755 if any execute bit is set, else 0644;
//! directories 0755. Symlinks are kept when they point inside the
//! directory. Other file types (fifos, sockets, devices) are refused.
//! A `.p2pignore` file (gitignore syntax, any directory) leaves paths out.

use std::fs;
use std::io::{self, Read, Write};
use std::path::{Component, Path, PathBuf};

use p2p_core::{Error, Result};

use super::descriptor::ChunkInfo;
use super::error::FormatError;

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

/// Cuts a stream into content-defined chunks: between `min` and `max`
/// bytes, `avg` on average, and at the end of a tar entry once the chunk
/// has `min` bytes. The cuts depend only on the bytes (and the entry
/// ends), never on how the stream was handed in.
pub(crate) struct Chunker<F> {
    pending: Vec<u8>,
    min: u32,
    avg: u32,
    max: u32,
    emit: F,
}

/// A chunk handed on: a range of a buffer shared by the chunks cut from
/// it, so that no chunk is copied on its way to the compressing threads.
pub(crate) type Piece = (std::sync::Arc<Vec<u8>>, std::ops::Range<usize>);

impl<F: FnMut(Piece) -> io::Result<()>> Chunker<F> {
    /// Chunks of about `avg` bytes on average, a quarter to twice that,
    /// each handed to `emit` in order. FastCDC is asked for three quarters
    /// of `avg`: with the minimum it skips, that gives a mean near `avg`
    /// (8 MiB of noise asked for 256 KiB with a cap of four times came out
    /// at 356 KiB on average with a 1 MiB chunk, and the swarm between
    /// sites then brought more copies into a site than with chunks of the
    /// size it is tuned for).
    pub(crate) fn new(avg: u32, emit: F) -> Self {
        Chunker {
            pending: Vec::new(),
            min: avg / 4,
            avg: avg / 4 * 3,
            max: avg.saturating_mul(2),
            emit,
        }
    }

    /// Emits the chunks of `pending`: every one when `all`, else only
    /// those whose cut cannot depend on bytes still to come (the ones that
    /// start at least `max` bytes before the end).
    fn cut(&mut self, all: bool) -> io::Result<()> {
        let len = self.pending.len();
        let mut cuts = Vec::new();
        {
            let cdc = fastcdc::v2020::FastCDC::new(&self.pending, self.min, self.avg, self.max);
            let mut start = 0;
            while start < len && (all || len - start >= self.max as usize) {
                let (_, end) = cdc.cut(start, len - start);
                cuts.push(start..end);
                start = end;
            }
        }
        let Some(last) = cuts.last().map(|r| r.end) else {
            return Ok(());
        };
        let buf = std::sync::Arc::new(std::mem::take(&mut self.pending));
        self.pending = Vec::with_capacity(5 * self.max as usize);
        self.pending.extend_from_slice(&buf[last..]);
        for r in cuts {
            (self.emit)((buf.clone(), r))?;
        }
        Ok(())
    }

    /// An entry of the tar stream ended here: cut, if the chunk has its
    /// minimum size.
    pub(crate) fn entry_end(&mut self) -> io::Result<()> {
        if self.pending.len() >= self.min as usize {
            self.cut(true)?;
        }
        Ok(())
    }

    /// Emits what is left.
    pub(crate) fn finish(mut self) -> io::Result<F> {
        self.cut(true)?;
        Ok(self.emit)
    }
}

impl<F: FnMut(Piece) -> io::Result<()>> Write for Chunker<F> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.pending.extend_from_slice(buf);
        if self.pending.len() >= 4 * self.max as usize {
            self.cut(false)?;
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Compresses chunks (each its own zstd frame, with its content size and
/// no checksum: the chunk's hash covers it) on a pool of one thread per
/// core, each with its own reused compressor, while the caller goes on
/// cutting; writes them in order to `out`, noting each one's hash and
/// sizes.
pub(crate) struct FrameWriter<W> {
    out: W,
    jobs: Option<std::sync::mpsc::SyncSender<(usize, Piece)>>,
    done: std::sync::mpsc::Receiver<(usize, io::Result<Framed>)>,
    workers: Vec<std::thread::JoinHandle<()>>,
    sent: usize,
    next: usize,
    waiting: std::collections::BTreeMap<usize, Framed>,
    chunks: Vec<ChunkInfo>,
    in_flight: usize,
}

/// A compressed chunk and its description.
type Framed = (Vec<u8>, ChunkInfo);

impl<W: Write> FrameWriter<W> {
    pub(crate) fn new(out: W, level: i32) -> Self {
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        let in_flight = 4 * threads;
        let (jobs, queue) = std::sync::mpsc::sync_channel::<(usize, Piece)>(in_flight);
        let queue = std::sync::Arc::new(std::sync::Mutex::new(queue));
        let (finished, done) = std::sync::mpsc::channel();
        let workers = (0..threads)
            .map(|_| {
                let (queue, finished) = (queue.clone(), finished.clone());
                std::thread::spawn(move || {
                    let mut z = FrameCompressor::new(level);
                    loop {
                        let job = p2p_core::sync::lock(&queue).recv();
                        let Ok((seq, (buf, range))) = job else { return };
                        let raw = &buf[range];
                        let framed = z.compress(raw).map(|bytes| {
                            let info = ChunkInfo::of(&bytes, raw.len() as u32);
                            (bytes, info)
                        });
                        if finished.send((seq, framed)).is_err() {
                            return;
                        }
                    }
                })
            })
            .collect();
        FrameWriter {
            out,
            jobs: Some(jobs),
            done,
            workers,
            sent: 0,
            next: 0,
            waiting: std::collections::BTreeMap::new(),
            chunks: Vec::new(),
            in_flight,
        }
    }

    /// Adds one chunk of uncompressed bytes.
    pub(crate) fn push(&mut self, raw: Piece) -> io::Result<()> {
        let gone = || io::Error::other("a compressing thread stopped");
        self.jobs
            .as_ref()
            .ok_or_else(gone)?
            .send((self.sent, raw))
            .map_err(|_| gone())?;
        self.sent += 1;
        while let Ok((seq, framed)) = self.done.try_recv() {
            self.take(seq, framed)?;
        }
        while self.sent - self.next > self.in_flight {
            let (seq, framed) = self.done.recv().map_err(|_| gone())?;
            self.take(seq, framed)?;
        }
        Ok(())
    }

    /// Takes a compressed chunk and writes what is now in order.
    fn take(&mut self, seq: usize, framed: io::Result<Framed>) -> io::Result<()> {
        self.waiting.insert(seq, framed?);
        while let Some((bytes, info)) = self.waiting.remove(&self.next) {
            self.out.write_all(&bytes)?;
            self.chunks.push(info);
            self.next += 1;
        }
        Ok(())
    }

    /// Writes what is left; returns the output and the chunks written.
    pub(crate) fn finish(mut self) -> io::Result<(W, Vec<ChunkInfo>)> {
        self.jobs = None;
        while self.next < self.sent {
            let (seq, framed) = self
                .done
                .recv()
                .map_err(|_| io::Error::other("a compressing thread stopped"))?;
            self.take(seq, framed)?;
        }
        for w in std::mem::take(&mut self.workers) {
            let _ = w.join();
        }
        Ok((self.out, self.chunks))
    }
}

/// A zstd compressor for chunks, reused from chunk to chunk.
struct FrameCompressor {
    level: i32,
    z: Option<zstd::bulk::Compressor<'static>>,
}

impl FrameCompressor {
    fn new(level: i32) -> Self {
        FrameCompressor { level, z: None }
    }

    fn compress(&mut self, raw: &[u8]) -> io::Result<Vec<u8>> {
        if self.z.is_none() {
            let mut c = zstd::bulk::Compressor::new(self.level)?;
            c.include_checksum(false)?;
            c.include_contentsize(true)?;
            self.z = Some(c);
        }
        self.z.as_mut().expect("made above").compress(raw)
    }
}

/// Checks that chunk `index`'s bytes are one zstd frame that says it
/// holds `raw_size` bytes, without decompressing it: a chunk that would
/// decompress to anything else is refused before it is unpacked.
pub fn check_frame(
    index: usize,
    bytes: &[u8],
    raw_size: u32,
) -> std::result::Result<(), FormatError> {
    use zstd::zstd_safe;
    let bad = |detail: String| FormatError::ChunkContent { index, detail };
    match zstd_safe::find_frame_compressed_size(bytes) {
        Ok(n) if n == bytes.len() => {}
        Ok(n) => {
            return Err(bad(format!(
                "its first zstd frame is {n} of its {} bytes",
                bytes.len()
            )));
        }
        Err(_) => return Err(bad("it is not a zstd frame".into())),
    }
    match zstd_safe::get_frame_content_size(bytes) {
        Ok(Some(n)) if n == u64::from(raw_size) => Ok(()),
        Ok(Some(n)) => Err(bad(format!(
            "it decompresses to {n} bytes, the descriptor says {raw_size}"
        ))),
        _ => Err(bad("its zstd frame does not give its content size".into())),
    }
}

/// Where a [`FrameReader`] takes each chunk's compressed bytes from.
pub(crate) trait ChunkSource {
    /// Puts the next chunk's bytes, `len` of them, in `buf` (replacing
    /// what it held).
    fn next_chunk(&mut self, len: usize, buf: &mut Vec<u8>) -> io::Result<()>;
}

/// Chunks read one after another from a byte stream (an archive file).
pub(crate) struct Sequential<R>(pub(crate) R);

impl<R: Read> ChunkSource for Sequential<R> {
    fn next_chunk(&mut self, len: usize, buf: &mut Vec<u8>) -> io::Result<()> {
        buf.resize(len, 0);
        self.0.read_exact(buf)
    }
}

/// Decompresses an archive chunk by chunk, each to exactly the size the
/// descriptor gives (a frame that would produce more is stopped at that
/// size and refused): the tar stream the archive holds.
pub(crate) struct FrameReader<'d, S> {
    source: S,
    chunks: &'d [ChunkInfo],
    next: usize,
    out: Vec<u8>,
    at: usize,
    zin: Vec<u8>,
    dec: zstd::bulk::Decompressor<'static>,
}

#[cfg(test)]
impl<'d, R: Read> FrameReader<'d, Sequential<R>> {
    /// A reader of the archive `inner` holds.
    pub(crate) fn new(inner: R, chunks: &'d [ChunkInfo]) -> io::Result<Self> {
        FrameReader::from_chunks(Sequential(inner), chunks)
    }
}

impl<'d, S: ChunkSource> FrameReader<'d, S> {
    /// A reader of the archive whose chunks `source` gives.
    pub(crate) fn from_chunks(source: S, chunks: &'d [ChunkInfo]) -> io::Result<Self> {
        Ok(FrameReader {
            source,
            chunks,
            next: 0,
            out: Vec::new(),
            at: 0,
            zin: Vec::new(),
            dec: zstd::bulk::Decompressor::new()?,
        })
    }

    fn fill(&mut self) -> io::Result<bool> {
        let Some(c) = self.chunks.get(self.next) else {
            return Ok(false);
        };
        let index = self.next;
        self.source.next_chunk(c.size as usize, &mut self.zin)?;
        if self.zin.len() != c.size as usize {
            return Err(io::Error::other(FormatError::ChunkContent {
                index,
                detail: format!("{} bytes, the descriptor says {}", self.zin.len(), c.size),
            }));
        }
        check_frame(index, &self.zin, c.raw_size).map_err(io::Error::other)?;
        // Into the same buffer every time, room for the size the
        // descriptor gives and no more than the buffer had already.
        self.out.clear();
        self.out.reserve(c.raw_size as usize);
        self.dec
            .decompress_to_buffer(&self.zin, &mut self.out)
            .map_err(|e| {
                io::Error::other(FormatError::ChunkContent {
                    index,
                    detail: format!("it does not decompress to {} bytes: {e}", c.raw_size),
                })
            })?;
        if self.out.len() != c.raw_size as usize {
            return Err(io::Error::other(FormatError::ChunkContent {
                index,
                detail: format!(
                    "it decompresses to {} bytes, the descriptor says {}",
                    self.out.len(),
                    c.raw_size
                ),
            }));
        }
        self.at = 0;
        self.next += 1;
        Ok(true)
    }
}

impl<S: ChunkSource> Read for FrameReader<'_, S> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.at == self.out.len() {
            if !self.fill()? {
                return Ok(0);
            }
        }
        let n = buf.len().min(self.out.len() - self.at);
        buf[..n].copy_from_slice(&self.out[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

/// Writes `root` to `out` as a deterministic tar stream (uncompressed),
/// calling `entry_end` after each entry. It is what [`build`](super::build)
/// chunks; `tar | zstd` of the same stream is the benchmarks' baseline.
pub fn write_tar<W: Write>(
    root: &Path,
    out: W,
    mut entry_end: impl FnMut(&mut W) -> io::Result<()>,
) -> Result<W> {
    let entries = collect(root)?;
    let mut tar = tar::Builder::new(out);
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
        entry_end(tar.get_mut()).map_err(|err| Error::io("packing", err))?;
    }
    tar.into_inner()
        .map_err(|e| Error::io("finishing the archive", e))
}

/// Packs `root` into `out`: the tar stream cut into content-defined chunks
/// of `avg` bytes on average, each compressed at `level`. Returns the
/// output and the chunks.
pub(crate) fn pack<W: Write>(
    root: &Path,
    out: W,
    avg: u32,
    level: i32,
) -> Result<(W, Vec<ChunkInfo>)> {
    // Three stages at once: a thread reads the files into the tar stream,
    // this one cuts it, and the pool compresses and hashes. Reading and
    // cutting on one thread made that thread the pace on incompressible
    // files, which zstd gets through quickly.
    let (tx, rx) = std::sync::mpsc::sync_channel::<TarMsg>(8);
    std::thread::scope(|s| {
        let reader = s.spawn(move || {
            let blocks = BlockSender {
                block: Vec::with_capacity(BLOCK),
                tx,
            };
            let mut blocks = write_tar(root, blocks, |w| w.entry_end())?;
            blocks.send_block().map_err(|e| Error::io("packing", e))
        });
        let mut frames = FrameWriter::new(out, level);
        let cut = (|| -> io::Result<()> {
            let mut chunker = Chunker::new(avg, |raw: Piece| frames.push(raw));
            for msg in rx.iter() {
                match msg {
                    TarMsg::Data(b) => chunker.write_all(&b)?,
                    TarMsg::EntryEnd => chunker.entry_end()?,
                }
            }
            chunker.finish().map(|_| ())
        })();
        // A reader still sending learns here that nobody listens.
        drop(rx);
        let read = reader.join().expect("packing does not panic");
        match (read, cut) {
            (_, Err(e)) => Err(Error::io("writing the archive", e)),
            (Err(e), Ok(())) => Err(e),
            (Ok(()), Ok(())) => frames
                .finish()
                .map_err(|e| Error::io("writing the archive", e)),
        }
    })
}

/// What the reading thread hands the cutting one.
enum TarMsg {
    /// The next bytes of the tar stream.
    Data(Vec<u8>),
    /// An entry ended here.
    EntryEnd,
}

/// The size of the blocks the reading thread hands on.
const BLOCK: usize = 1 << 20;

/// Collects the tar stream into blocks for the cutting thread.
struct BlockSender {
    block: Vec<u8>,
    tx: std::sync::mpsc::SyncSender<TarMsg>,
}

impl BlockSender {
    fn send(&self, msg: TarMsg) -> io::Result<()> {
        self.tx
            .send(msg)
            .map_err(|_| io::Error::other("the archive writer stopped"))
    }

    fn send_block(&mut self) -> io::Result<()> {
        if !self.block.is_empty() {
            let full = std::mem::replace(&mut self.block, Vec::with_capacity(BLOCK));
            self.send(TarMsg::Data(full))?;
        }
        Ok(())
    }

    fn entry_end(&mut self) -> io::Result<()> {
        self.send_block()?;
        self.send(TarMsg::EntryEnd)
    }
}

impl Write for BlockSender {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.block.extend_from_slice(buf);
        if self.block.len() >= BLOCK {
            self.send_block()?;
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Cuts `raw` into pieces of `piece` bytes and compresses each on its
/// own at `level`: an archive of zstd frames and its chunk list, for
/// bytes that are not a directory (test and benchmark releases).
pub fn frame_pieces(raw: &[u8], piece: usize, level: i32) -> io::Result<(Vec<u8>, Vec<ChunkInfo>)> {
    let mut w = FrameWriter::new(Vec::new(), level);
    let all = std::sync::Arc::new(raw.to_vec());
    if raw.is_empty() {
        w.push((all.clone(), 0..0))?;
    }
    let piece = piece.max(1);
    for start in (0..raw.len()).step_by(piece) {
        w.push((all.clone(), start..(start + piece).min(raw.len())))?;
    }
    w.finish()
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

    fn noise(len: usize, seed: u64) -> Vec<u8> {
        use rand::{RngExt, SeedableRng};
        let mut b = vec![0u8; len];
        rand_chacha::ChaCha8Rng::seed_from_u64(seed).fill(&mut b[..]);
        b
    }

    fn cuts(data: &[u8], pieces: usize, avg: u32) -> Vec<usize> {
        let mut lens = Vec::new();
        let mut c = Chunker::new(avg, |(_, r): Piece| {
            lens.push(r.len());
            Ok(())
        });
        for p in data.chunks(pieces) {
            c.write_all(p).unwrap();
        }
        let _ = c.finish().unwrap();
        lens
    }

    /// The cuts depend on the bytes alone, not on how they were written.
    #[test]
    fn cuts_do_not_depend_on_how_the_stream_is_written() {
        let data = noise(3 << 20, 1);
        let whole = cuts(&data, data.len(), 16 << 10);
        assert_eq!(whole.iter().sum::<usize>(), data.len());
        for pieces in [1, 4095, 65536, 1 << 20] {
            assert_eq!(
                cuts(&data, pieces, 16 << 10),
                whole,
                "written {pieces} at a time"
            );
        }
        assert!(whole.iter().all(|&l| l <= 64 << 10));
        assert!(whole[..whole.len() - 1].iter().all(|&l| l >= 4 << 10));
    }

    /// After a change, cuts fall where they fell: one changed byte changes
    /// one or two chunks.
    #[test]
    fn one_changed_byte_changes_at_most_two_chunks() {
        let mut data = noise(2 << 20, 2);
        let sha = |b: &[u8]| -> [u8; 32] {
            sha2::Digest::finalize(<sha2::Sha256 as sha2::Digest>::new_with_prefix(b)).into()
        };
        let hashes = |data: &[u8]| {
            let mut out = std::collections::BTreeSet::new();
            let mut c = Chunker::new(16 << 10, |(b, r): Piece| {
                out.insert(sha(&b[r]));
                Ok(())
            });
            c.write_all(data).unwrap();
            let _ = c.finish().unwrap();
            out
        };
        let before = hashes(&data);
        data[1 << 20] ^= 1;
        let after = hashes(&data);
        assert!(after.difference(&before).count() <= 2);
    }

    #[test]
    fn frames_read_back_and_lying_frames_are_named() {
        let raw = noise(200_000, 3);
        let (archive, chunks) = frame_pieces(&raw, 65536, 3).unwrap();
        assert_eq!(chunks.len(), 4);
        let mut back = Vec::new();
        FrameReader::new(&archive[..], &chunks)
            .unwrap()
            .read_to_end(&mut back)
            .unwrap();
        assert_eq!(back, raw);
        // A descriptor that says chunk 1 holds fewer bytes than it does.
        let mut lying = chunks.clone();
        lying[1].raw_size -= 1;
        let e = FrameReader::new(&archive[..], &lying)
            .unwrap()
            .read_to_end(&mut Vec::new())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("chunk 1") && e.contains("decompresses to 65536"),
            "{e}"
        );
        let e = check_frame(0, b"not zstd at all", 5)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("chunk 0") && e.contains("not a zstd frame"),
            "{e}"
        );
    }
}
