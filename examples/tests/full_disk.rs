//! A node whose disk fills up: its data directory on a small tmpfs the
//! test mounts. A deploy that runs out of space fails with "no space
//! left" and the path; the active version runs on, the node's state stays
//! readable, what the deploy had received is removed, and the next
//! deploy, once there is room, succeeds. An app whose logs cannot be
//! written (the disk full) keeps running.
//!
//! Needs root (to mount the tmpfs); otherwise it prints `SKIPPED` and
//! why. Under `CI=true` as root it must not skip.
#![allow(clippy::unwrap_used)]
// Real processes: deadlines are on the wall clock.
#![allow(clippy::disallowed_methods)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

mod common;
use common::*;

/// A tmpfs of `mib` MiB mounted at `at`, unmounted on drop.
struct SmallFs(PathBuf);

impl SmallFs {
    fn mount(at: &Path, mib: u64) -> Option<SmallFs> {
        let uid = Command::new("id").arg("-u").output().ok()?;
        if String::from_utf8_lossy(&uid.stdout).trim() != "0" {
            println!("SKIPPED: mounting a small filesystem needs root");
            return None;
        }
        std::fs::create_dir_all(at).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(at)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            assert!(
                std::env::var("CI").is_err(),
                "CI: mounting a tmpfs at {} failed",
                at.display()
            );
            println!("SKIPPED: cannot mount a tmpfs here");
            return None;
        }
        Some(SmallFs(at.to_path_buf()))
    }

    /// Bytes free.
    fn avail(&self) -> u64 {
        let o = Command::new("df")
            .args(["-B1", "--output=avail"])
            .arg(&self.0)
            .output()
            .unwrap();
        String::from_utf8_lossy(&o.stdout)
            .lines()
            .nth(1)
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }

    /// Fills the filesystem with `file` until `leave` bytes are free
    /// (or none).
    fn fill(&self, file: &str, leave: u64) {
        let want = self.avail().saturating_sub(leave);
        let mut f = std::fs::File::create(self.0.join(file)).unwrap();
        let block = vec![0x5au8; 1 << 20];
        let mut left = want;
        while left > 0 {
            let n = left.min(block.len() as u64) as usize;
            if std::io::Write::write_all(&mut f, &block[..n]).is_err() {
                break;
            }
            left -= n as u64;
        }
        let _ = f.sync_all();
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn a_full_disk_fails_the_deploy_cleanly_and_the_app_runs_on() {
    let w = World::new();
    let Some(fs) = SmallFs::mount(&w.path().join("n1"), 96) else {
        return;
    };
    let d1 = w.node("n1", "iroh");
    let mut node = Some(Daemon::start(&d1, &[]));
    let bs = node.as_ref().unwrap().addr();
    let v1 = w.package("1.0.0", "\"--name\", \"v1\"");
    w.ok(&["deploy", &v1, "--bootstrap", &bs]);
    assert_eq!(healthy(&w, &bs, "n1"), "1.0.0");

    // Room for less than the next release: the deploy fails, naming the
    // disk and the path, and leaves the disk as it found it.
    let v2 = w.package_with("2.0.0", "\"--name\", \"v2\"", 24 << 20);
    fs.fill("filler", 12 << 20);
    let before = fs.avail();
    let begun = Instant::now();
    let o = w.ctl(&["deploy", &v2, "--bootstrap", &bs]);
    let took = begun.elapsed();
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let out = text(&o);
    assert!(
        out.contains("no space left") && out.contains(fs.0.to_str().unwrap()),
        "{out}"
    );
    assert!(took < Duration::from_secs(60), "the deploy took {took:?}");
    let after = fs.avail();
    assert!(
        after + (1 << 20) >= before,
        "the failed deploy left {} KiB behind",
        (before - after) >> 10
    );
    // The node is fine: its state reads, the old version runs.
    assert_eq!(
        active(&w, &bs),
        vec![("n1".to_string(), "1.0.0".to_string())]
    );
    assert_eq!(healthy(&w, &bs, "n1"), "1.0.0");

    // Once there is room, the same deploy goes through.
    std::fs::remove_file(fs.0.join("filler")).unwrap();
    w.ok(&["deploy", &v2, "--bootstrap", &bs]);
    assert_eq!(healthy(&w, &bs, "n1"), "2.0.0");

    // The disk full to the last byte: the app cannot log and runs on; the
    // node says so once, not once a line.
    fs.fill("filler", 0);
    // The log files' last pages have some room left: the first failed
    // write comes when it is used up (a health probe logs a line every
    // 200 ms).
    let begun = Instant::now();
    while !node
        .as_ref()
        .unwrap()
        .log()
        .contains("cannot write an app log")
    {
        assert!(
            begun.elapsed() < Duration::from_secs(90),
            "the app's log writes never failed"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(healthy(&w, &bs, "n1"), "2.0.0");
    let log = node.as_ref().unwrap().log();
    let complaints = log.matches("cannot write an app log").count();
    assert!(
        (1..=3).contains(&complaints),
        "{complaints} complaints about the app log:\n{log}"
    );
    std::fs::remove_file(fs.0.join("filler")).unwrap();
    // And its lines are written again.
    let begun = Instant::now();
    loop {
        let logs = w.ok(&["logs", "demo", "--tail", "3", "--bootstrap", &bs]);
        if logs.contains("GET /health") {
            break;
        }
        assert!(
            begun.elapsed() < Duration::from_secs(20),
            "no new log line: {logs}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    drop(node.take());
}
