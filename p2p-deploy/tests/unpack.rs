//! Unpacking: a good archive lands whole and atomically; every unsafe
//! entry is refused by name and leaves nothing behind.
#![allow(clippy::unwrap_used)]

use std::io::Write;
use std::path::Path;

use p2p_deploy::unpack::{Refusal, UnpackError};
use p2p_deploy::{Descriptor, UnpackLimits, unpack, unpack_release};

fn v(s: &str) -> semver::Version {
    semver::Version::parse(s).unwrap()
}

/// A tar stream from raw entries, names written as given (the tar crate's
/// builder would refuse the bad ones).
fn tar(entries: &[(&str, tar::EntryType, &[u8], Option<&str>)]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, kind, data, link) in entries {
        let mut h = tar::Header::new_old();
        let raw = &mut h.as_old_mut().name;
        raw[..name.len()].copy_from_slice(name.as_bytes());
        if let Some(l) = link {
            let lr = &mut h.as_old_mut().linkname;
            lr[..l.len()].copy_from_slice(l.as_bytes());
        }
        h.set_entry_type(*kind);
        h.set_mode(0o644);
        h.set_size(data.len() as u64);
        h.set_cksum();
        b.append(&h, *data).unwrap();
    }
    b.into_inner().unwrap()
}

/// The tar stream as one zstd stream (what [`unpack`] reads).
fn zst(tar: &[u8]) -> Vec<u8> {
    let mut z = zstd::stream::write::Encoder::new(Vec::new(), 3).unwrap();
    z.write_all(tar).unwrap();
    z.finish().unwrap()
}

/// The tar stream as a format-2 release of `web` `version`: 1 KiB pieces,
/// each its own zstd frame (what agents unpack, with
/// [`unpack_release`]).
fn release(tar: &[u8], version: &str) -> (Vec<u8>, Descriptor) {
    let (archive, chunks) = p2p_deploy::package::frame_pieces(tar, 1024, 3).unwrap();
    let m = p2p_deploy::Manifest::parse(&format!(
        "name = \"web\"\nversion = \"{version}\"\nentrypoint = \"run\"\n"
    ))
    .unwrap();
    (archive, Descriptor::new(m, chunks, p2p_core::Timestamp(0)))
}

/// A tar + zstd archive from raw entries, as one zstd stream.
fn archive(entries: &[(&str, tar::EntryType, &[u8], Option<&str>)]) -> Vec<u8> {
    zst(&tar(entries))
}

fn leftovers(root: &Path) -> Vec<String> {
    let app = root.join("web");
    match std::fs::read_dir(&app) {
        Err(_) => Vec::new(),
        Ok(rd) => rd
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect(),
    }
}

use tar::EntryType::*;

#[test]
fn a_good_archive_lands_whole() {
    let t = tempfile::tempdir().unwrap();
    let a = archive(&[
        ("bin/", Directory, b"", None),
        ("bin/run", Regular, b"#!/bin/sh\n", None),
        ("data.txt", Regular, b"hello", None),
        ("link", Symlink, b"", Some("bin/run")),
        ("hard", Link, b"", Some("data.txt")),
    ]);
    let dir = unpack(
        &a[..],
        t.path(),
        "web",
        &v("1.0.0"),
        UnpackLimits::default(),
    )
    .unwrap();
    assert_eq!(dir, t.path().join("web/1.0.0"));
    assert_eq!(std::fs::read(dir.join("data.txt")).unwrap(), b"hello");
    assert_eq!(std::fs::read(dir.join("hard")).unwrap(), b"hello");
    assert_eq!(
        std::fs::read_link(dir.join("link")).unwrap(),
        Path::new("bin/run")
    );
    assert_eq!(leftovers(t.path()), ["1.0.0"], "no staging directory left");
    // The same version again is refused, and the first stays.
    let e = unpack(
        &a[..],
        t.path(),
        "web",
        &v("1.0.0"),
        UnpackLimits::default(),
    )
    .unwrap_err();
    assert!(
        matches!(e, UnpackError::Other(p2p_core::Error::AlreadyExists { .. })),
        "{e}"
    );
    // The same entries as a format-2 release, in chunks.
    let (a2, d) = release(
        &tar(&[
            ("bin/", Directory, b"", None),
            ("bin/run", Regular, b"#!/bin/sh\n", None),
            ("data.txt", Regular, &[7u8; 5000], None),
            ("link", Symlink, b"", Some("bin/run")),
        ]),
        "1.1.0",
    );
    assert!(d.chunks.len() >= 4);
    let dir = unpack_release(&a2[..], &d, t.path(), UnpackLimits::default()).unwrap();
    assert_eq!(dir, t.path().join("web/1.1.0"));
    assert_eq!(std::fs::read(dir.join("data.txt")).unwrap(), [7u8; 5000]);
}

// The security matrix, archive cases: every unsafe entry refused by name,
// nothing left behind, nothing written outside (README, "Security").

/// Unpacks `tar`, as one zstd stream and as a format-2 release in
/// chunks, each into a fresh directory, and checks it was refused for
/// `kind`, with a message naming `want`, and that nothing was written,
/// inside or outside.
fn refused(what: &str, tar: &[u8], kind: Refusal, want: &str) {
    refused_by(
        what,
        |root, limits| unpack(&zst(tar)[..], root, "web", &v("2.0.0"), limits),
        kind,
        want,
    );
    let (archive, d) = release(tar, "2.0.0");
    refused_by(
        what,
        |root, limits| unpack_release(&archive[..], &d, root, limits),
        kind,
        want,
    );
}

fn refused_by(
    what: &str,
    unpack: impl FnOnce(&Path, UnpackLimits) -> Result<std::path::PathBuf, UnpackError>,
    kind: Refusal,
    want: &str,
) {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("versions");
    std::fs::create_dir_all(&root).unwrap();
    let limits = UnpackLimits {
        max_bytes: 4096,
        max_entries: 100,
    };
    let e = unpack(&root, limits)
        .err()
        .unwrap_or_else(|| panic!("{what}: unpacked"));
    assert!(
        matches!(e, UnpackError::Refused { kind: k, .. } if k == kind),
        "{what}: {e:?}"
    );
    let msg = e.to_string();
    assert!(msg.contains(want), "{what}: {msg}");
    assert!(
        leftovers(&root).is_empty(),
        "{what}: left {:?}",
        leftovers(&root)
    );
    // Nothing outside the root either.
    let outside: Vec<String> = std::fs::read_dir(t.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(outside, vec!["versions".to_string()], "{what}");
}

#[test]
fn security_absolute_path_is_refused() {
    refused(
        "absolute",
        &tar(&[("/etc/evil", Regular, b"x", None)]),
        Refusal::AbsolutePath,
        "absolute",
    );
}

#[test]
fn security_path_traversal_is_refused() {
    refused(
        "dotdot",
        &tar(&[("a/../../evil", Regular, b"x", None)]),
        Refusal::ParentDir,
        "..",
    );
}

#[test]
fn security_escaping_symlinks_are_refused() {
    refused(
        "symlink out",
        &tar(&[("l", Symlink, b"", Some("../../etc"))]),
        Refusal::LinkOutside,
        "outside",
    );
    refused(
        "symlink absolute",
        &tar(&[("l", Symlink, b"", Some("/etc/passwd"))]),
        Refusal::LinkOutside,
        "outside",
    );
}

#[test]
fn security_writing_through_a_symlink_is_refused() {
    refused(
        "through a symlink",
        &tar(&[("d", Symlink, b"", Some(".")), ("d/f", Regular, b"x", None)]),
        Refusal::ThroughLink,
        "symlink",
    );
}

#[test]
fn security_escaping_hardlinks_are_refused() {
    refused(
        "hardlink out",
        &tar(&[("h", Link, b"", Some("../../etc/passwd"))]),
        Refusal::LinkOutside,
        "outside",
    );
    refused(
        "hardlink to nothing",
        &tar(&[("h", Link, b"", Some("missing"))]),
        Refusal::BadLink,
        "not a file",
    );
}

#[test]
fn security_device_files_and_fifos_are_refused() {
    refused(
        "char device",
        &tar(&[("dev", Char, b"", None)]),
        Refusal::DeviceFile,
        "device",
    );
    refused(
        "block device",
        &tar(&[("dev", Block, b"", None)]),
        Refusal::DeviceFile,
        "device",
    );
    refused(
        "fifo",
        &tar(&[("p", Fifo, b"", None)]),
        Refusal::Fifo,
        "fifo",
    );
}

#[test]
fn security_oversized_archive_is_refused() {
    refused(
        "too big",
        &tar(&[("big", Regular, &[0u8; 5000], None)]),
        Refusal::TooLarge,
        "more than 4096 bytes",
    );
}

#[test]
fn security_not_an_archive_is_refused() {
    let plain = b"plain text, not zstd";
    refused_by(
        "not an archive",
        |root, limits| unpack(&plain[..], root, "web", &v("2.0.0"), limits),
        Refusal::Unreadable,
        "archive",
    );
    // A release whose one chunk is not a zstd frame.
    let (_, mut d) = release(b"", "2.0.0");
    d.chunks = vec![p2p_deploy::package::ChunkInfo::of(plain, 20)];
    d.archive_size = plain.len() as u64;
    refused_by(
        "a chunk that is not a frame",
        |root, limits| unpack_release(&plain[..], &d, root, limits),
        Refusal::Unreadable,
        "chunk 0 of the archive: it is not a zstd frame",
    );
}

/// A chunk that decompresses to more (or less) than the descriptor says
/// is refused by index, and nothing is left; so is one whose frame does
/// not say its size.
#[test]
fn security_a_chunk_of_another_size_than_declared_is_refused() {
    let tar = tar(&[("data.txt", Regular, &[7u8; 3000], None)]);
    let (archive, d) = release(&tar, "2.0.0");
    for (i, delta) in [(1usize, -1i64), (2, 1)] {
        let mut lying = d.clone();
        lying.chunks[i].raw_size = (i64::from(lying.chunks[i].raw_size) + delta) as u32;
        refused_by(
            "a chunk of another size",
            |root, limits| unpack_release(&archive[..], &lying, root, limits),
            Refusal::Unreadable,
            &format!("chunk {i} of the archive: it decompresses to 1024 bytes"),
        );
    }
    // A frame without its content size (zstd's streaming encoder).
    let mut streamed = zstd::stream::write::Encoder::new(Vec::new(), 3).unwrap();
    streamed.write_all(&tar).unwrap();
    let streamed = streamed.finish().unwrap();
    let (_, mut d) = release(b"", "2.0.0");
    d.chunks = vec![p2p_deploy::package::ChunkInfo::of(
        &streamed,
        tar.len() as u32,
    )];
    d.archive_size = streamed.len() as u64;
    refused_by(
        "a frame without its size",
        |root, limits| unpack_release(&streamed[..], &d, root, limits),
        Refusal::Unreadable,
        "does not give its content size",
    );
}

#[test]
fn a_built_package_unpacks_to_its_files() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path().join("src");
    std::fs::create_dir_all(d.join("bin")).unwrap();
    std::fs::write(
        d.join("p2p.toml"),
        "name = \"web\"\nversion = \"1.0.0\"\nentrypoint = \"bin/run\"\n",
    )
    .unwrap();
    std::fs::write(d.join("bin/run"), "#!/bin/sh\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(d.join("bin/run"), std::fs::Permissions::from_mode(0o750)).unwrap();
    let out = t.path().join("w.p2p");
    p2p_deploy::build(
        &d,
        &out,
        &p2p_core::SystemClock,
        p2p_deploy::BuildOptions::default(),
    )
    .unwrap();
    let pkg = p2p_deploy::PackageFile::open(&out).unwrap();
    let dir = unpack_release(
        pkg.archive_reader().unwrap(),
        &pkg.descriptor,
        &t.path().join("versions"),
        UnpackLimits::default(),
    )
    .unwrap();
    // The chunks one after another are also one zstd stream of the tar.
    let other = unpack(
        pkg.archive_reader().unwrap(),
        &t.path().join("stream"),
        "web",
        &v("1.0.0"),
        UnpackLimits::default(),
    )
    .unwrap();
    assert_eq!(
        std::fs::read(other.join("bin/run")).unwrap(),
        std::fs::read(dir.join("bin/run")).unwrap()
    );
    assert_eq!(
        std::fs::metadata(dir.join("bin/run"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o755
    );
    assert!(dir.join("p2p.toml").exists());
}

/// At start the agent has the installer clean what interrupted installs
/// left: partial archives, staging directories, and versions of a known
/// app that its record does not list. Other apps' files are left alone.
#[tokio::test]
async fn the_installer_cleans_what_interrupted_installs_left() {
    use p2p_deploy::{DirInstaller, Installer};
    use std::collections::{BTreeMap, BTreeSet};
    let t = tempfile::tempdir().unwrap();
    let root = t.path();
    std::fs::write(root.join(".incoming-abc"), b"half an archive").unwrap();
    for d in [
        "web/.staging-xyz/bin",
        "web/1.0.0/bin",
        "web/2.0.0/bin",
        "db/1.0.0",
    ] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::write(root.join("web/notes.txt"), b"not ours").unwrap();
    let inst = DirInstaller::new(root, UnpackLimits::default());
    let installed = BTreeMap::from([("web".to_string(), BTreeSet::from([v("2.0.0")]))]);
    assert_eq!(inst.clean(&installed).await.unwrap(), 3);
    assert!(!root.join(".incoming-abc").exists());
    assert!(!root.join("web/.staging-xyz").exists());
    assert!(!root.join("web/1.0.0").exists());
    assert!(root.join("web/2.0.0/bin").is_dir());
    assert!(root.join("web/notes.txt").is_file());
    assert!(
        root.join("db/1.0.0").is_dir(),
        "an app without a record is left alone"
    );
    assert_eq!(inst.clean(&installed).await.unwrap(), 0);
}
