//! Unpacking an archive into `versions/<name>/<version>`, as an agent
//! installs a verified release.
//!
//! Byte 0 picks how the rest is read: entries (structured, so that
//! traversal, absolute names, links out of the tree, devices and links
//! through links are easy to reach), a raw tar, or raw compressed bytes.
//! Checked after every unpack, successful or not:
//!
//! - nothing was created, changed or removed outside the versions root
//!   (a sentinel directory next to it stays as it was);
//! - on success, the version directory holds only directories, regular
//!   files within the size limit, and symlinks that stay inside it;
//! - on failure, nothing is left: no version directory, no staging
//!   directory.
#![no_main]

use std::path::{Component, Path, PathBuf};

use arbitrary::{Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;
use p2p_deploy::{UnpackLimits, unpack};
use p2p_fuzz::tarball::{self, Entry};

const LIMITS: UnpackLimits = UnpackLimits {
    max_bytes: 1 << 20,
    max_entries: 256,
};

/// Every path under `dir` (not following links), with what it is and,
/// for files, its content.
fn walk(dir: &Path, out: &mut Vec<(PathBuf, String)>) {
    let mut names: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    names.sort();
    for p in names {
        let m = std::fs::symlink_metadata(&p).unwrap();
        let what = if m.is_dir() {
            "dir".to_string()
        } else if m.is_symlink() {
            format!("link -> {:?}", std::fs::read_link(&p).unwrap())
        } else if m.is_file() {
            format!("file {:?}", std::fs::read(&p).unwrap())
        } else {
            format!("special {:?}", m.file_type())
        };
        out.push((p.clone(), what));
        if m.is_dir() {
            walk(&p, out);
        }
    }
}

/// Whether `target`, a link at `link` inside `top`, resolves lexically
/// inside `top`.
fn stays_inside(top: &Path, link: &Path, target: &Path) -> bool {
    if target.is_absolute() {
        return false;
    }
    let mut at: Vec<_> = link
        .parent()
        .unwrap()
        .strip_prefix(top)
        .unwrap()
        .components()
        .collect();
    for c in target.components() {
        match c {
            Component::Normal(_) => at.push(c),
            Component::CurDir => {}
            Component::ParentDir => {
                if at.pop().is_none() {
                    return false;
                }
            }
            Component::RootDir | Component::Prefix(_) => return false,
        }
    }
    true
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("versions");
    let outside = tmp.path().join("outside");
    std::fs::create_dir(&root).unwrap();
    std::fs::create_dir(&outside).unwrap();
    std::fs::write(outside.join("keep"), b"keep").unwrap();
    std::fs::create_dir(outside.join("bin")).unwrap();
    let archive = match mode % 3 {
        0 => {
            let Ok(entries) = Vec::<Entry>::arbitrary_take_rest(Unstructured::new(rest)) else {
                return;
            };
            tarball::compress(&tarball::build(&entries, &outside))
        }
        1 => tarball::compress(rest),
        _ => rest.to_vec(),
    };
    let mut before = Vec::new();
    walk(&outside, &mut before);

    let version = semver::Version::new(1, 0, 0);
    let result = unpack(&archive[..], &root, "app", &version, LIMITS);

    let mut after = Vec::new();
    walk(&outside, &mut after);
    assert_eq!(
        before, after,
        "unpacking changed something outside the versions root"
    );
    let mut top = Vec::new();
    walk(tmp.path(), &mut top);
    for (p, what) in &top {
        assert!(
            p.starts_with(&root) || p.starts_with(&outside),
            "unpacking created {p:?} ({what}) outside the versions root"
        );
    }
    let target = root.join("app").join("1.0.0");
    let mut inside = Vec::new();
    walk(&root, &mut inside);
    match result {
        Ok(dir) => {
            assert_eq!(dir, target);
            let mut bytes = 0u64;
            let mut inodes = std::collections::BTreeSet::new();
            for (p, what) in &inside {
                if p == &root.join("app") {
                    continue;
                }
                assert!(
                    p.starts_with(&target),
                    "{p:?} ({what}) left beside the version"
                );
                let m = std::fs::symlink_metadata(p).unwrap();
                if m.is_symlink() {
                    let to = std::fs::read_link(p).unwrap();
                    assert!(stays_inside(&target, p, &to), "{p:?} links out to {to:?}");
                } else if m.is_file() {
                    // Hard links share their bytes.
                    if inodes.insert(std::os::unix::fs::MetadataExt::ino(&m)) {
                        bytes += m.len();
                    }
                } else {
                    assert!(m.is_dir(), "{p:?} is {what}");
                }
            }
            assert!(bytes <= LIMITS.max_bytes);
        }
        Err(_) => {
            for (p, what) in &inside {
                assert!(
                    p == &root.join("app"),
                    "a failed unpack left {p:?} ({what})"
                );
            }
        }
    }
});
