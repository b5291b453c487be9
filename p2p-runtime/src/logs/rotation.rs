//! Size-rotated log files: `<name>`, `<name>.1` (newest rotated) ...
//! `<name>.<files-1>`, rotated before a write would take the current one
//! past [`LogRotation::max_bytes`].

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// Log file sizes and counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogRotation {
    /// A file is rotated when a write would take it past this.
    pub max_bytes: u64,
    /// Files kept per stream, the current one included.
    pub files: usize,
}

impl Default for LogRotation {
    /// 10 MiB x 5 files per stream.
    fn default() -> Self {
        LogRotation {
            max_bytes: 10 * 1024 * 1024,
            files: 5,
        }
    }
}

/// One rotated file: `<name>`, `<name>.1` (newest rotated) ... `<name>.<files-1>`.
pub(super) struct Rotated {
    pub(super) path: PathBuf,
    file: File,
    len: u64,
}

impl Rotated {
    pub(super) fn open(path: PathBuf) -> io::Result<Self> {
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        let len = file.metadata()?.len();
        Ok(Rotated { path, file, len })
    }

    pub(super) fn write(&mut self, bytes: &[u8], rot: LogRotation) -> io::Result<()> {
        if self.len > 0 && self.len + bytes.len() as u64 > rot.max_bytes {
            self.rotate(rot)?;
        }
        self.file.write_all(bytes)?;
        self.len += bytes.len() as u64;
        Ok(())
    }

    fn rotate(&mut self, rot: LogRotation) -> io::Result<()> {
        let keep = rot.files.max(1);
        if keep == 1 {
            // One file: start a new one. Unlinked rather than truncated,
            // so that a reader holding the old file keeps its bytes.
            fs::remove_file(&self.path)?;
            self.file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.path)?;
            self.len = 0;
            return Ok(());
        }
        let numbered = |n: usize| rotated_path(&self.path, n);
        // Drop the oldest, shift the rest up by one.
        let _ = fs::remove_file(numbered(keep - 1));
        for n in (1..keep - 1).rev() {
            let from = numbered(n);
            if from.exists() {
                fs::rename(&from, numbered(n + 1))?;
            }
        }
        fs::rename(&self.path, numbered(1))?;
        self.file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)?;
        self.len = 0;
        Ok(())
    }
}

/// The `n`th file of the set of `path` (`path` itself for 0).
pub(super) fn rotated_path(path: &Path, n: usize) -> PathBuf {
    if n == 0 {
        return path.to_path_buf();
    }
    let mut s = path.as_os_str().to_owned();
    s.push(format!(".{n}"));
    PathBuf::from(s)
}
