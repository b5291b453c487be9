//! Captured output: each stream to its own size-rotated file, a combined
//! file for reading both in arrival order, tail without reading whole
//! files, and follow through a broadcast that never blocks the app.

mod rotation;
mod tail;

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use p2p_core::runtime::{LogLine, LogLines, LogSelection, LogStream};
use p2p_core::sync::lock;
use p2p_core::{Error, Result};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt as _, BufReader};
use tokio::sync::broadcast;

pub use rotation::LogRotation;
use rotation::Rotated;
use tail::{open_set, tail_of_set};

/// A line longer than this is split; protects the supervisor from an app
/// that writes without newlines.
pub(crate) const MAX_LINE: usize = 64 * 1024;
/// Lines a follower may fall behind before it loses some.
const FOLLOW_BUFFER: usize = 4096;

/// The current file of each stream, and of both.
struct Files {
    stdout: Rotated,
    stderr: Rotated,
    /// Both streams, each line tagged `o ` or `e `.
    combined: Rotated,
}

/// The captured output of one app, across its restarts.
pub(crate) struct AppLogs {
    dir: PathBuf,
    rotation: LogRotation,
    files: Mutex<Files>,
    followers: Mutex<Followers>,
    /// Failed writes (a full disk) are logged once per period, not once
    /// per line; the app keeps running and its output keeps being read.
    write_errors: p2p_core::ratelog::LogLimiter,
}

/// The live-line channel, made when the first follower comes and dropped
/// when the last one goes, so that an app nobody follows costs no buffer.
#[derive(Default)]
struct Followers {
    tx: Option<broadcast::Sender<LogLine>>,
    /// Set when the app is removed: no more followers.
    closed: bool,
}

impl AppLogs {
    /// Opens (creating) the log files of an app in `dir`.
    pub(crate) fn open(dir: PathBuf, rotation: LogRotation) -> Result<Arc<Self>> {
        fs::create_dir_all(&dir)
            .map_err(|e| Error::io(format!("creating log directory {}", dir.display()), e))?;
        let open = |name: &str| {
            let p = dir.join(name);
            Rotated::open(p.clone()).map_err(|e| Error::io(format!("opening {}", p.display()), e))
        };
        let files = Files {
            stdout: open("stdout.log")?,
            stderr: open("stderr.log")?,
            combined: open("combined.log")?,
        };
        Ok(Arc::new(AppLogs {
            dir,
            rotation,
            files: Mutex::new(files),
            followers: Mutex::new(Followers::default()),
            write_errors: p2p_core::ratelog::LogLimiter::new(std::time::Duration::from_secs(30)),
        }))
    }

    /// The directory holding the files.
    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    /// Records one line (without its newline).
    pub(crate) fn write(&self, stream: LogStream, line: &str) {
        let rot = self.rotation;
        {
            let mut files = lock(&self.files);
            let (file, tag) = match stream {
                LogStream::Stderr => (&mut files.stderr, b"e "),
                _ => (&mut files.stdout, b"o "),
            };
            // One buffer: the tagged line for the combined file, and the
            // same bytes without the tag for the stream's own file.
            let mut tagged = Vec::with_capacity(line.len() + 3);
            tagged.extend_from_slice(tag);
            tagged.extend_from_slice(line.as_bytes());
            tagged.push(b'\n');
            let written = file
                .write(&tagged[tag.len()..], rot)
                .and_then(|()| files.combined.write(&tagged, rot));
            if let Err(e) = written
                && let Some(held) = self.write_errors.allow("write")
            {
                tracing::warn!(
                    dir = %self.dir.display(),
                    error = %e,
                    "cannot write an app log; its lines are lost until this is fixed, the app runs on{}",
                    p2p_core::ratelog::held_back(held)
                );
            }
            // Sent under the file lock, so that a new follower's tail and
            // its live lines neither overlap nor leave a gap.
            let mut followers = lock(&self.followers);
            if let Some(tx) = followers.tx.as_ref() {
                if tx.receiver_count() == 0 {
                    followers.tx = None;
                } else {
                    let _ = tx.send(LogLine {
                        stream,
                        line: line.to_string(),
                    });
                }
            }
        }
    }

    /// Ends every follower; later writes reach only the files.
    pub(crate) fn close_followers(&self) {
        let mut f = lock(&self.followers);
        f.closed = true;
        f.tx = None;
    }

    /// The selected lines: a tail from the files, then (with `follow`)
    /// live lines until the app is removed.
    ///
    /// Under the write lock it only subscribes and opens the files (open
    /// handles stay valid across rotation); the tail is read afterwards on
    /// a blocking thread, so a large tail never holds up the app's output.
    pub(crate) async fn read(&self, sel: &LogSelection) -> Result<LogLines> {
        let want = sel.tail.unwrap_or(usize::MAX);
        let (snapshot, live) = {
            let files = lock(&self.files);
            let live = if sel.follow {
                let mut f = lock(&self.followers);
                if f.closed {
                    None
                } else {
                    Some(
                        f.tx.get_or_insert_with(|| broadcast::channel(FOLLOW_BUFFER).0)
                            .subscribe(),
                    )
                }
            } else {
                None
            };
            let path = match sel.stream {
                LogStream::Stdout => &files.stdout.path,
                LogStream::Stderr => &files.stderr.path,
                LogStream::Both => &files.combined.path,
            };
            let snapshot = if want == 0 {
                Vec::new()
            } else {
                open_set(path, self.rotation)?
            };
            (snapshot, live)
        };
        let stream = sel.stream;
        let tail = tokio::task::spawn_blocking(move || tail_of_set(snapshot, want))
            .await
            .map_err(|e| Error::io("reading logs", io::Error::other(e)))??;
        let tail: Vec<LogLine> = tail
            .into_iter()
            .map(|line| match stream {
                LogStream::Both => untag(line),
                s => LogLine { stream: s, line },
            })
            .collect();
        let head = futures::stream::iter(tail.into_iter().map(Ok));
        match live {
            None => Ok(head.boxed()),
            Some(rx) => {
                let follow = futures::stream::unfold(rx, move |mut rx| async move {
                    loop {
                        match rx.recv().await {
                            Ok(l) if stream == LogStream::Both || l.stream == stream => {
                                return Some((Ok(l), rx));
                            }
                            Ok(_) => {}
                            Err(broadcast::error::RecvError::Lagged(n)) => {
                                tracing::debug!(lost = n, "a log follower fell behind");
                            }
                            Err(broadcast::error::RecvError::Closed) => return None,
                        }
                    }
                });
                Ok(head.chain(follow).boxed())
            }
        }
    }
}

fn untag(l: String) -> LogLine {
    match l.split_at_checked(2) {
        Some(("e ", rest)) => LogLine {
            stream: LogStream::Stderr,
            line: rest.to_string(),
        },
        Some(("o ", rest)) => LogLine {
            stream: LogStream::Stdout,
            line: rest.to_string(),
        },
        _ => LogLine {
            stream: LogStream::Stdout,
            line: l,
        },
    }
}

/// Copies an app's output stream into `logs`, line by line, until the
/// stream ends (the process exited). Lines over [`MAX_LINE`] are split.
pub(crate) async fn pump(logs: Arc<AppLogs>, stream: LogStream, out: impl AsyncRead + Unpin) {
    let mut r = BufReader::with_capacity(4 * 1024, out);
    let mut buf = Vec::with_capacity(256);
    loop {
        buf.clear();
        let mut limited = (&mut r).take(MAX_LINE as u64);
        match limited.read_until(b'\n', &mut buf).await {
            Ok(0) => return,
            Ok(_) => {
                if buf.last() == Some(&b'\n') {
                    buf.pop();
                    if buf.last() == Some(&b'\r') {
                        buf.pop();
                    }
                }
                logs.write(stream, &String::from_utf8_lossy(&buf));
            }
            Err(e) => {
                tracing::debug!(error = %e, "reading app output failed");
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::rotation::rotated_path;
    use super::tail::tail_lines;
    use super::*;

    fn rot(max: u64, files: usize) -> LogRotation {
        LogRotation {
            max_bytes: max,
            files,
        }
    }

    #[test]
    fn tail_reads_backwards_across_blocks_and_files() {
        let dir = tempfile::tempdir().unwrap();
        let logs = AppLogs::open(dir.path().to_path_buf(), rot(10_000, 3)).unwrap();
        for i in 0..5000 {
            logs.write(LogStream::Stdout, &format!("line {i}"));
        }
        let path = dir.path().join("stdout.log");
        let got = tail_lines(&path, rot(10_000, 3), 3).unwrap();
        assert_eq!(got, ["line 4997", "line 4998", "line 4999"]);
        // Rotation happened; the tail spans files.
        assert!(rotated_path(&path, 1).exists());
        let got = tail_lines(&path, rot(10_000, 3), 6000).unwrap();
        let first: usize = got[0].strip_prefix("line ").unwrap().parse().unwrap();
        assert_eq!(got.len(), 5000 - first, "a contiguous run up to the end");
        assert_eq!(got.last().unwrap(), "line 4999");
        assert!(!rotated_path(&path, 3).exists(), "only 3 files are kept");
    }

    #[test]
    fn a_single_file_starts_over_when_full() {
        let dir = tempfile::tempdir().unwrap();
        let logs = AppLogs::open(dir.path().to_path_buf(), rot(1024, 1)).unwrap();
        for i in 0..500 {
            logs.write(LogStream::Stdout, &format!("line {i}"));
        }
        let path = dir.path().join("stdout.log");
        assert!(std::fs::metadata(&path).unwrap().len() <= 1024);
        assert!(!rotated_path(&path, 1).exists());
        assert_eq!(tail_lines(&path, rot(1024, 1), 1).unwrap(), ["line 499"]);
    }

    #[test]
    fn tail_of_short_and_empty_files() {
        let dir = tempfile::tempdir().unwrap();
        let logs = AppLogs::open(dir.path().to_path_buf(), LogRotation::default()).unwrap();
        let path = dir.path().join("stderr.log");
        assert!(
            tail_lines(&path, LogRotation::default(), 5)
                .unwrap()
                .is_empty()
        );
        logs.write(LogStream::Stderr, "only");
        logs.write(LogStream::Stderr, "");
        logs.write(LogStream::Stderr, "last");
        assert_eq!(
            tail_lines(&path, LogRotation::default(), 10).unwrap(),
            ["only", "", "last"]
        );
    }

    #[tokio::test]
    async fn both_streams_come_back_in_arrival_order() {
        let dir = tempfile::tempdir().unwrap();
        let logs = AppLogs::open(dir.path().to_path_buf(), LogRotation::default()).unwrap();
        logs.write(LogStream::Stdout, "a");
        logs.write(LogStream::Stderr, "b");
        logs.write(LogStream::Stdout, "c");
        let sel = LogSelection {
            stream: LogStream::Both,
            tail: None,
            follow: false,
        };
        let got: Vec<LogLine> = logs
            .read(&sel)
            .await
            .unwrap()
            .map(|l| l.unwrap())
            .collect()
            .await;
        let text: Vec<(LogStream, &str)> =
            got.iter().map(|l| (l.stream, l.line.as_str())).collect();
        assert_eq!(
            text,
            [
                (LogStream::Stdout, "a"),
                (LogStream::Stderr, "b"),
                (LogStream::Stdout, "c")
            ]
        );
    }
}
