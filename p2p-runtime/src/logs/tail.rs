//! Reading the last lines of a rotated file set backwards in blocks, so
//! that a tail costs the lines returned, not the size of the files.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::Path;

use p2p_core::{Error, Result};

use super::rotation::{LogRotation, rotated_path};

/// The files of a rotated set, newest first, opened with their lengths
/// now: lines written later are not read from them.
pub(super) fn open_set(path: &Path, rot: LogRotation) -> Result<Vec<(File, u64)>> {
    let mut out = Vec::new();
    for k in 0..rot.files.max(1) {
        let p = rotated_path(path, k);
        match File::open(&p) {
            Ok(f) => {
                let len = f
                    .metadata()
                    .map_err(|e| Error::io(format!("reading {}", p.display()), e))?
                    .len();
                out.push((f, len));
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io(format!("reading {}", p.display()), e)),
        }
    }
    Ok(out)
}

/// The last `n` lines of opened files (newest first), oldest line first.
pub(super) fn tail_of_set(files: Vec<(File, u64)>, n: usize) -> Result<Vec<String>> {
    let mut lines: Vec<Vec<u8>> = Vec::new();
    for (mut f, len) in files {
        if lines.len() >= n {
            break;
        }
        let need = n - lines.len();
        let mut found =
            tail_of_file(&mut f, len, need).map_err(|e| Error::io("reading a log file", e))?;
        found.append(&mut lines);
        lines = found;
    }
    let start = lines.len().saturating_sub(n);
    Ok(lines
        .drain(start..)
        .map(|l| String::from_utf8_lossy(&l).into_owned())
        .collect())
}

/// The last `n` lines of a rotated file set, oldest first, read backwards
/// in blocks: memory is bounded by the lines returned, not the files.
#[cfg(test)]
pub(super) fn tail_lines(path: &Path, rot: LogRotation, n: usize) -> Result<Vec<String>> {
    tail_of_set(open_set(path, rot)?, n)
}

/// The last `n` lines of one file, oldest first. Reads blocks from the
/// end until it has seen enough line ends.
fn tail_of_file(f: &mut File, len: u64, n: usize) -> io::Result<Vec<Vec<u8>>> {
    const BLOCK: u64 = 16 * 1024;
    if len == 0 || n == 0 {
        return Ok(Vec::new());
    }
    let mut pos = len;
    let mut blocks: Vec<Vec<u8>> = Vec::new();
    let mut newlines = 0usize;
    while pos > 0 && newlines <= n {
        let take = BLOCK.min(pos);
        pos -= take;
        let mut block = vec![0u8; take as usize];
        f.seek(SeekFrom::Start(pos))?;
        f.read_exact(&mut block)?;
        newlines += block.iter().filter(|b| **b == b'\n').count();
        blocks.push(block);
    }
    let mut data: Vec<u8> = blocks.into_iter().rev().flatten().collect();
    if data.last() == Some(&b'\n') {
        data.pop();
    }
    let mut lines: Vec<Vec<u8>> = data.split(|b| *b == b'\n').map(<[u8]>::to_vec).collect();
    // Without reaching the file's start, the first piece may be cut.
    if pos > 0 {
        lines.remove(0);
    }
    let start = lines.len().saturating_sub(n);
    Ok(lines.split_off(start))
}
