//! Packages end to end: determinism, the ignore file, signing, and every
//! way a package can be wrong refused with its own error.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use p2p_core::{Ed25519Signer, Error, Signer, Timestamp};
use p2p_deploy::package::{ChunkInfo, FormatError};
use p2p_deploy::trust::{read_public_key, read_secret_key, write_key_pair};
use p2p_deploy::{
    BuildOptions, Descriptor, PackageFile, TrustStore, VerifyError, build, check_not_downgrade,
};
use proptest::prelude::*;

struct FixedClock;
impl p2p_core::Clock for FixedClock {
    fn now(&self) -> Timestamp {
        Timestamp(1_700_000_000_000)
    }
}

fn write(p: &Path, content: &[u8], mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, content).unwrap();
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// Incompressible bytes, the same every time.
fn noise(n: usize) -> Vec<u8> {
    use rand::{Rng, SeedableRng};
    let mut v = vec![0u8; n];
    rand_chacha::ChaCha8Rng::seed_from_u64(7).fill_bytes(&mut v);
    v
}

/// An app directory with a manifest, a script, data and a subdirectory.
fn app_dir(root: &Path, version: &str) -> PathBuf {
    let d = root.join(format!("app-{version}"));
    write(
        &d.join("p2p.toml"),
        format!("name = \"web\"\nversion = \"{version}\"\nentrypoint = \"bin/run.sh\"\n")
            .as_bytes(),
        0o644,
    );
    write(
        &d.join("bin/run.sh"),
        b"#!/bin/sh\nexec sleep 1000\n",
        0o755,
    );
    write(&d.join("data/big.bin"), &noise(300_000), 0o600);
    write(&d.join("README"), b"hello\n", 0o640);
    std::os::unix::fs::symlink("bin/run.sh", d.join("start")).unwrap();
    d
}

fn opts() -> BuildOptions {
    BuildOptions {
        chunk_size: 64 * 1024,
        ..BuildOptions::default()
    }
}

fn signer(n: u8) -> Ed25519Signer {
    Ed25519Signer::from_seed(&[n; 32])
}

async fn signed(root: &Path, version: &str, signers: &[u8]) -> PackageFile {
    let out = root.join(format!("web-{version}.p2p"));
    build(&app_dir(root, version), &out, &FixedClock, opts()).unwrap();
    let mut pkg = PackageFile::open(&out).unwrap();
    for n in signers {
        pkg.sign(&signer(*n)).await.unwrap();
    }
    PackageFile::open(&out).unwrap()
}

fn trust(keys: &[u8]) -> TrustStore {
    TrustStore::new(keys.iter().map(|n| signer(*n).key_id()))
}

#[test]
fn the_same_directory_gives_the_same_bytes() {
    let t = tempfile::tempdir().unwrap();
    let d = app_dir(t.path(), "1.0.0");
    build(&d, &t.path().join("a.p2p"), &FixedClock, opts()).unwrap();
    // Times, owners and non-executable mode bits do not matter.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(d.join("README"), std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::write(d.join("data/big.bin"), noise(300_000)).unwrap();
    build(&d, &t.path().join("b.p2p"), &FixedClock, opts()).unwrap();
    let (a, b) = (
        std::fs::read(t.path().join("a.p2p")).unwrap(),
        std::fs::read(t.path().join("b.p2p")).unwrap(),
    );
    assert!(a == b, "two builds of one directory differ");
    // The executable bit does.
    std::fs::set_permissions(d.join("bin/run.sh"), std::fs::Permissions::from_mode(0o644)).unwrap();
    build(&d, &t.path().join("c.p2p"), &FixedClock, opts()).unwrap();
    assert_ne!(a, std::fs::read(t.path().join("c.p2p")).unwrap());
}

#[test]
fn the_ignore_file_leaves_paths_out_and_the_archive_unpacks_to_the_files() {
    let t = tempfile::tempdir().unwrap();
    let d = app_dir(t.path(), "1.0.0");
    write(&d.join(".p2pignore"), b"*.log\ntmp/\n", 0o644);
    write(&d.join("debug.log"), b"noise", 0o644);
    write(&d.join("tmp/x"), b"scratch", 0o644);
    let out = t.path().join("w.p2p");
    build(&d, &out, &FixedClock, opts()).unwrap();
    let pkg = PackageFile::open(&out).unwrap();
    let dec = zstd::stream::read::Decoder::new(pkg.archive_reader().unwrap()).unwrap();
    let mut ar = tar::Archive::new(dec);
    let mut names: Vec<(String, u32)> = ar
        .entries()
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.path().unwrap().display().to_string(),
                e.header().mode().unwrap(),
            )
        })
        .collect();
    names.sort();
    let paths: Vec<&str> = names.iter().map(|(p, _)| p.as_str()).collect();
    assert_eq!(
        paths,
        [
            ".p2pignore",
            "README",
            "bin/",
            "bin/run.sh",
            "data/",
            "data/big.bin",
            "p2p.toml",
            "start"
        ]
    );
    let mode = |p: &str| names.iter().find(|(n, _)| n == p).unwrap().1;
    assert_eq!(mode("bin/run.sh"), 0o755);
    assert_eq!(mode("data/big.bin"), 0o644);
}

#[test]
fn bad_directories_are_refused_with_nothing_written() {
    let t = tempfile::tempdir().unwrap();
    let out = t.path().join("out.p2p");
    // No manifest.
    let empty = t.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let e = build(&empty, &out, &FixedClock, opts())
        .unwrap_err()
        .to_string();
    assert!(e.contains("p2p.toml"), "{e}");
    // A malformed manifest names the file and the field.
    let d = app_dir(t.path(), "1.0.0");
    write(
        &d.join("p2p.toml"),
        b"name = \"web\"\nversion = \"one\"\nentrypoint = \"x\"\n",
        0o644,
    );
    let e = build(&d, &out, &FixedClock, opts())
        .unwrap_err()
        .to_string();
    assert!(e.contains("p2p.toml") && e.contains("version"), "{e}");
    // A symlink out of the package.
    let d = app_dir(t.path(), "2.0.0");
    std::os::unix::fs::symlink("../../etc/passwd", d.join("data/escape")).unwrap();
    let e = build(&d, &out, &FixedClock, opts())
        .unwrap_err()
        .to_string();
    assert!(e.contains("outside"), "{e}");
    // A fifo.
    let d = app_dir(t.path(), "3.0.0");
    let st = std::process::Command::new("mkfifo")
        .arg(d.join("pipe"))
        .status()
        .unwrap();
    assert!(st.success());
    let e = build(&d, &out, &FixedClock, opts())
        .unwrap_err()
        .to_string();
    assert!(e.contains("fifo"), "{e}");
    assert!(!out.exists(), "a failed build left a file");
}

#[tokio::test]
async fn a_signed_package_verifies_and_inspects() {
    let t = tempfile::tempdir().unwrap();
    let pkg = signed(t.path(), "1.2.3", &[1]).await;
    assert_eq!(pkg.descriptor.manifest.version.to_string(), "1.2.3");
    assert_eq!(pkg.descriptor.created_at, FixedClock.now());
    assert_eq!(pkg.id(), pkg.descriptor.id());
    // Content-defined chunks of 64 KiB on average: at most 256 KiB each,
    // adding up to the archive and to the tar stream.
    let d = &pkg.descriptor;
    assert!(d.chunks.len() >= 3, "{} chunks", d.chunks.len());
    assert!(d.chunks.iter().all(|c| c.raw_size <= 256 * 1024));
    assert_eq!(
        pkg.archive_len,
        d.chunks.iter().map(|c| u64::from(c.size)).sum::<u64>()
    );
    assert!(d.unpacked_size() > 300_000 && d.unpacked_size() % 512 == 0);
    let keys = pkg.verify(&trust(&[1])).unwrap();
    assert_eq!(keys, [signer(1).key_id()]);
    // Signing again with the same key replaces, not adds.
    let mut again = PackageFile::open(&pkg.path).unwrap();
    again.sign(&signer(1)).await.unwrap();
    assert_eq!(PackageFile::open(&pkg.path).unwrap().signatures.len(), 1);
}

use p2p_core::Clock;

fn flip(path: &Path, offset: u64) {
    let mut b = std::fs::read(path).unwrap();
    b[offset as usize] ^= 0x01;
    std::fs::write(path, b).unwrap();
}

// The security matrix, package cases: each way a package can be wrong,
// refused with its own error (README, "Security").

fn verify(p: &Path, trusted: &TrustStore) -> Result<(), VerifyError> {
    PackageFile::open(p)?.verify(trusted).map(|_| ())
}

#[tokio::test]
async fn security_tampered_archive_is_refused() {
    let t = tempfile::tempdir().unwrap();
    // A byte of the archive, in its third chunk.
    let pkg = signed(t.path(), "1.0.0", &[1]).await;
    flip(
        &pkg.path,
        pkg.archive_offset + pkg.descriptor.chunk_offset(2) + 5,
    );
    assert_eq!(
        verify(&pkg.path, &trust(&[1])).unwrap_err(),
        VerifyError::Format(FormatError::ChunkHash { index: 2 })
    );
}

#[tokio::test]
async fn security_truncated_package_is_refused() {
    let t = tempfile::tempdir().unwrap();
    // The archive cut short: header and descriptor disagree.
    let pkg = signed(t.path(), "1.0.1", &[1]).await;
    let mut b = std::fs::read(&pkg.path).unwrap();
    b.truncate(b.len() - 10);
    std::fs::write(&pkg.path, &b).unwrap();
    assert!(matches!(
        verify(&pkg.path, &trust(&[1])).unwrap_err(),
        VerifyError::Format(FormatError::Truncated(_))
    ));
}

/// Found by the `package` fuzz target: a header whose archive length is
/// near `u64::MAX` overflowed the offset arithmetic (a panic with overflow
/// checks, a wrapped offset without).
#[tokio::test]
async fn security_header_lengths_past_the_file_are_refused() {
    let t = tempfile::tempdir().unwrap();
    let pkg = signed(t.path(), "1.0.1", &[1]).await;
    let good = std::fs::read(&pkg.path).unwrap();
    for archive_len in [u64::MAX, u64::MAX - 0x7c, u64::MAX - 40, 1 << 40] {
        let mut b = good.clone();
        b[16..24].copy_from_slice(&archive_len.to_be_bytes());
        std::fs::write(&pkg.path, &b).unwrap();
        match PackageFile::open(&pkg.path).unwrap_err() {
            FormatError::Truncated(m) => assert!(m.contains("ends before its signatures"), "{m}"),
            other => panic!("archive length {archive_len}: {other:?}"),
        }
    }
}

#[tokio::test]
async fn security_tampered_descriptor_is_refused() {
    let t = tempfile::tempdir().unwrap();
    // A byte of the descriptor, inside a chunk hash it vouches for.
    let pkg = signed(t.path(), "1.0.2", &[1]).await;
    let d_off = pkg.archive_offset + pkg.archive_len;
    let hash_at = pkg
        .descriptor_bytes
        .windows(32)
        .position(|w| w == pkg.descriptor.chunks[1].sha256)
        .unwrap() as u64;
    flip(&pkg.path, d_off + hash_at + 3);
    assert!(matches!(
        verify(&pkg.path, &trust(&[1])).unwrap_err(),
        VerifyError::BadSignature { .. }
    ));
}

#[tokio::test]
async fn security_bad_signature_is_refused() {
    let t = tempfile::tempdir().unwrap();
    // A byte of the signature.
    let pkg = signed(t.path(), "1.0.3", &[1]).await;
    let size = std::fs::metadata(&pkg.path).unwrap().len();
    flip(&pkg.path, size - 3);
    assert!(matches!(
        verify(&pkg.path, &trust(&[1])).unwrap_err(),
        VerifyError::BadSignature { .. }
    ));
}

#[tokio::test]
async fn security_signature_of_another_package_is_refused() {
    let t = tempfile::tempdir().unwrap();
    let a = signed(t.path(), "2.0.0", &[1]).await;
    let mut forged = signed(t.path(), "2.0.1", &[]).await;
    forged.signatures = vec![a.signatures[0].clone()];
    assert!(matches!(
        forged.verify(&trust(&[1])).unwrap_err(),
        VerifyError::BadSignature { .. }
    ));
}

#[tokio::test]
async fn security_unsigned_package_is_refused() {
    let t = tempfile::tempdir().unwrap();
    let b = signed(t.path(), "2.0.1", &[]).await;
    assert_eq!(b.verify(&trust(&[1])).unwrap_err(), VerifyError::Unsigned);
    // Only an explicit opt-out accepts it.
    b.verify(&trust(&[1]).allow_unsigned()).unwrap();
}

#[tokio::test]
async fn security_untrusted_key_is_refused() {
    let t = tempfile::tempdir().unwrap();
    let by2 = signed(t.path(), "3.0.0", &[2]).await;
    assert!(matches!(
        by2.verify(&trust(&[1])).unwrap_err(),
        VerifyError::UntrustedKey { .. }
    ));
}

#[tokio::test]
async fn security_revoked_key_is_refused() {
    let t = tempfile::tempdir().unwrap();
    let revoked = trust(&[1, 2]).revoke(signer(2).key_id());
    let both = signed(t.path(), "3.0.1", &[1, 2]).await;
    assert!(matches!(
        both.verify(&revoked).unwrap_err(),
        VerifyError::RevokedKey { .. }
    ));
}

#[tokio::test]
async fn security_below_threshold_is_refused() {
    let t = tempfile::tempdir().unwrap();
    let one = signed(t.path(), "2.0.0", &[1]).await;
    assert_eq!(
        one.verify(&trust(&[1, 2]).with_threshold(2)).unwrap_err(),
        VerifyError::BelowThreshold {
            valid: 1,
            needed: 2
        }
    );
    let both = signed(t.path(), "3.0.1", &[1, 2]).await;
    both.verify(&trust(&[1, 2]).with_threshold(2)).unwrap();
}

#[test]
fn foreign_and_truncated_files_are_named() {
    let t = tempfile::tempdir().unwrap();
    let p = t.path().join("photo.jpg");
    std::fs::write(&p, b"\xff\xd8\xff\xe0 not a package at all, just bytes").unwrap();
    let e = PackageFile::open(&p).unwrap_err();
    assert!(
        matches!(&e, FormatError::NotAPackage(f) if f.contains("photo.jpg")),
        "{e}"
    );
    std::fs::write(&p, b"P2PDPKG\n\x00\x09").unwrap();
    assert!(matches!(
        PackageFile::open(&p).unwrap_err(),
        FormatError::NotAPackage(_)
    ));
    let mut h = b"P2PDPKG\n".to_vec();
    h.extend_from_slice(&[0, 9]);
    h.resize(40, 0);
    std::fs::write(&p, &h).unwrap();
    assert_eq!(
        PackageFile::open(&p).unwrap_err(),
        FormatError::UnsupportedFormat(9)
    );
    h[9] = 1;
    std::fs::write(&p, &h).unwrap();
    let e = PackageFile::open(&p).unwrap_err().to_string();
    assert!(
        e.contains("format 1 is not supported") && e.contains("reads format 2"),
        "{e}"
    );
}

#[test]
fn security_downgrade_needs_an_explicit_rollback_to_an_installed_version() {
    let v = |s: &str| semver::Version::parse(s).unwrap();
    let installed = [v("1.0.0"), v("1.2.0")];
    check_not_downgrade(&v("1.3.0"), &installed, false).unwrap();
    check_not_downgrade(&v("1.2.0"), &installed, false).unwrap();
    assert!(matches!(
        check_not_downgrade(&v("1.1.0"), &installed, false).unwrap_err(),
        VerifyError::Downgrade { .. }
    ));
    check_not_downgrade(&v("1.0.0"), &installed, true).unwrap();
    assert!(
        check_not_downgrade(&v("1.1.0"), &installed, true).is_err(),
        "rollback only to an installed version"
    );
    assert!(matches!(
        Error::from(check_not_downgrade(&v("0.9.0"), &installed, false).unwrap_err()),
        Error::Denied { .. }
    ));
}

#[tokio::test]
async fn key_files_round_trip_and_bad_ones_are_named() {
    let t = tempfile::tempdir().unwrap();
    let s = signer(5);
    let (secret, public) = write_key_pair(&t.path().join("alice"), &s, "alice@build").unwrap();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&secret).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert_eq!(read_public_key(&public).unwrap(), s.key_id());
    let back = read_secret_key(&secret).unwrap();
    assert_eq!(back.sign(b"m").await.unwrap(), s.sign(b"m").await.unwrap());
    assert!(
        write_key_pair(&t.path().join("alice"), &s, "again").is_err(),
        "no overwrite"
    );
    // Too open.
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o644)).unwrap();
    let e = read_secret_key(&secret).unwrap_err().to_string();
    assert!(e.contains("alice.key") && e.contains("0600"), "{e}");
    // Wrong size.
    let short = t.path().join("short.pub");
    std::fs::write(&short, "p2p-ed25519-public abcd\n").unwrap();
    let e = read_public_key(&short).unwrap_err().to_string();
    assert!(e.contains("short.pub") && e.contains("2 bytes"), "{e}");
    // The trust store reads a directory and its revocations.
    let store = t.path().join("trust");
    std::fs::create_dir_all(store.join("revoked")).unwrap();
    std::fs::copy(&public, store.join("alice.pub")).unwrap();
    let ts = TrustStore::load(&store).unwrap();
    assert!(ts.trusted().contains(&s.key_id()));
    std::fs::copy(&short, store.join("bad.pub")).unwrap();
    let e = TrustStore::load(&store).unwrap_err().to_string();
    assert!(e.contains("bad.pub"), "{e}");
}

proptest! {
    #[test]
    fn descriptors_round_trip_canonically(
        sizes in proptest::collection::vec((1u32..16 << 20, 0u32..16 << 20), 1..50),
        seed in any::<[u8; 32]>(),
        millis in 0u64..4_000_000_000_000,
        name in "[a-z][a-z0-9-]{0,20}",
        major in 0u64..100, minor in 0u64..100, patch in 0u64..100,
    ) {
        let manifest = p2p_deploy::Manifest::parse(&format!(
            "name = \"{name}\"\nversion = \"{major}.{minor}.{patch}\"\nentrypoint = \"run\"\n"
        )).unwrap();
        let chunks = sizes
            .iter()
            .enumerate()
            .map(|(i, &(size, raw_size))| {
                let mut sha256 = seed;
                sha256[0] ^= i as u8;
                sha256[1] ^= (i >> 8) as u8;
                ChunkInfo { sha256, size, raw_size }
            })
            .collect();
        let d = Descriptor::new(manifest, chunks, Timestamp(millis));
        let bytes = d.to_bytes();
        let back = Descriptor::from_bytes(&bytes).unwrap();
        prop_assert_eq!(&back, &d);
        prop_assert_eq!(back.to_bytes(), bytes);
        prop_assert_eq!(back.id(), d.id());
    }
}

fn chunk(n: u8, size: u32, raw_size: u32) -> ChunkInfo {
    ChunkInfo {
        sha256: [n; 32],
        size,
        raw_size,
    }
}

fn manifest() -> p2p_deploy::Manifest {
    p2p_deploy::Manifest::parse("name = \"web\"\nversion = \"1.0.0\"\nentrypoint = \"run\"\n")
        .unwrap()
}

/// Descriptors whose chunk list cannot describe an archive are refused
/// when they are decoded, each naming what is wrong.
#[test]
fn a_descriptor_whose_chunks_do_not_add_up_is_refused() {
    let refused = |d: &Descriptor| {
        Descriptor::from_bytes(&d.to_bytes())
            .unwrap_err()
            .to_string()
    };
    let mut d = Descriptor::new(
        manifest(),
        vec![chunk(1, 100, 200), chunk(2, 50, 80)],
        Timestamp(0),
    );
    assert!(Descriptor::from_bytes(&d.to_bytes()).is_ok());
    d.archive_size = 151;
    let e = refused(&d);
    assert!(
        e.contains("adds up to 150 bytes") && e.contains("151"),
        "{e}"
    );
    let d = Descriptor::new(
        manifest(),
        vec![chunk(1, 100, 200), chunk(1, 101, 200)],
        Timestamp(0),
    );
    let e = refused(&d);
    assert!(
        e.contains("chunks 0 and 1 have the same hash and different sizes"),
        "{e}"
    );
    let d = Descriptor::new(manifest(), vec![chunk(1, 100, 17 << 20)], Timestamp(0));
    let e = refused(&d);
    assert!(e.contains("chunk 0 is 100 bytes"), "{e}");
    let d = Descriptor::new(manifest(), vec![], Timestamp(0));
    assert!(refused(&d).contains("no chunks"));
    // The same hash twice with the same size is a chunk repeated: fine.
    let d = Descriptor::new(
        manifest(),
        vec![chunk(1, 100, 200), chunk(1, 100, 200)],
        Timestamp(0),
    );
    assert!(Descriptor::from_bytes(&d.to_bytes()).is_ok());
}

/// A format-1 descriptor (as format 1 wrote it, without a format field)
/// is named as such wherever it is decoded.
#[test]
fn a_format_1_descriptor_is_named() {
    #[derive(serde::Serialize)]
    struct V1 {
        manifest: p2p_deploy::Manifest,
        archive_size: u64,
        archive_sha256: [u8; 32],
        chunk_size: u32,
        chunks: Vec<[u8; 32]>,
        created_at: Timestamp,
    }
    for name in ["w", "we", "web", "a-much-longer-app-name"] {
        let mut m = manifest();
        m.name = name.into();
        let v1 = V1 {
            manifest: m,
            archive_size: 10,
            archive_sha256: [1; 32],
            chunk_size: 1024,
            chunks: vec![[2; 32]],
            created_at: Timestamp(0),
        };
        let e = Descriptor::from_bytes(&postcard::to_allocvec(&v1).unwrap()).unwrap_err();
        assert_eq!(e, FormatError::UnsupportedFormat(1), "app {name}");
    }
}

/// A descriptor is checked by the manifest's rules when it is decoded: a
/// manifest that `p2p.toml` could never produce (a health gate of zero,
/// which would pass any version at once; an entrypoint outside the
/// package) is refused even inside a well-formed descriptor.
#[test]
fn a_descriptor_with_an_impossible_manifest_is_refused() {
    let good = p2p_deploy::Manifest::parse(
        "name = \"web\"\nversion = \"1.0.0\"\nentrypoint = \"run\"\n\
         [health]\nprocess = true\n",
    )
    .unwrap();
    let with = |m: p2p_deploy::Manifest| Descriptor::new(m, vec![chunk(2, 10, 10)], Timestamp(0));
    assert!(Descriptor::from_bytes(&with(good.clone()).to_bytes()).is_ok());
    let mut gate0 = good.clone();
    gate0.health.as_mut().unwrap().gate = 0;
    let e = Descriptor::from_bytes(&with(gate0).to_bytes()).unwrap_err();
    assert!(e.to_string().contains("health.gate"), "{e}");
    let mut escape = good.clone();
    escape.entrypoint = "../../bin/sh".into();
    let e = Descriptor::from_bytes(&with(escape).to_bytes()).unwrap_err();
    assert!(e.to_string().contains("entrypoint"), "{e}");
    let mut keep = good;
    keep.keep_versions = 0;
    let e = Descriptor::from_bytes(&with(keep).to_bytes()).unwrap_err();
    assert!(e.to_string().contains("keep_versions"), "{e}");
}

/// The chunk store takes only chunks that hash right, resumes from what
/// it has, rebuilds the archive, and collects what no release keeps.
#[tokio::test]
async fn chunks_are_verified_resumed_reassembled_and_collected() {
    use p2p_deploy::chunks::ChunkStore;
    use std::io::Read;
    let t = tempfile::tempdir().unwrap();
    let pkg = signed(t.path(), "1.0.0", &[1]).await;
    let d = &pkg.descriptor;
    let mut archive = Vec::new();
    pkg.archive_reader()
        .unwrap()
        .read_to_end(&mut archive)
        .unwrap();
    let offsets = d.offsets();
    let chunk = |i: usize| archive[offsets[i] as usize..offsets[i + 1] as usize].to_vec();
    let storage = std::sync::Arc::new(p2p_core::MemStorage::new());
    let store = ChunkStore::new(storage.clone());
    let id = store.add_release(d).await.unwrap();
    assert!(d.chunks.len() >= 4, "the test needs several chunks");
    // A tampered chunk is refused, and nothing is stored.
    let mut bad = chunk(1);
    bad[0] ^= 1;
    let e = store.put(d, 1, &bad).await.unwrap_err();
    assert!(e.to_string().contains("chunk 1"), "{e}");
    // Half arrives; a restart sees exactly the rest as missing.
    for i in (0..d.chunks.len()).step_by(2) {
        store.put(d, i, &chunk(i)).await.unwrap();
    }
    let again = ChunkStore::new(storage.clone());
    let missing = again.missing(d).await.unwrap();
    assert_eq!(missing, (1..d.chunks.len()).step_by(2).collect::<Vec<_>>());
    for i in missing {
        again.put(d, i, &chunk(i)).await.unwrap();
    }
    let mut rebuilt = Vec::new();
    again.assemble(d, &mut rebuilt).await.unwrap();
    assert!(rebuilt == archive, "reassembled archive differs");
    // Kept while the release is; collected after.
    assert_eq!(again.collect().await.unwrap(), 0);
    again.remove_release(&id).await.unwrap();
    assert_eq!(again.collect().await.unwrap(), d.chunks.len());
    assert!(again.missing(d).await.unwrap().len() == d.chunks.len());
}

proptest! {
    /// Generated manifests parse to what was written and round-trip
    /// through their canonical bytes.
    #[test]
    fn manifests_parse_and_round_trip(
        name in "[a-z][a-z0-9_-]{0,30}",
        major in 0u64..1000, minor in 0u64..1000, patch in 0u64..1000,
        entry in "[a-z]{1,8}(/[a-z]{1,8}){0,2}",
        args in proptest::collection::vec("[ -~&&[^\"\\\\]]{0,12}", 0..5),
        env in proptest::collection::btree_map("[A-Z][A-Z0-9_]{0,8}", "[ -~&&[^\"\\\\]]{0,12}", 0..4),
        keep in 1i64..=100,
        mem_mib in 1u64..4096,
        cpu_tenths in 1u32..64,
    ) {
        let args_toml: Vec<String> = args.iter().map(|a| format!("\"{a}\"")).collect();
        let env_toml: Vec<String> = env.iter().map(|(k, v)| format!("{k} = \"{v}\"")).collect();
        let text = format!(
            "name = \"{name}\"\nversion = \"{major}.{minor}.{patch}\"\nentrypoint = \"{entry}\"\nargs = [{}]\nkeep_versions = {keep}\n[env]\n{}\n[limits]\nmemory = \"{mem_mib}MiB\"\ncpu = {}.{}\n",
            args_toml.join(", "),
            env_toml.join("\n"),
            cpu_tenths / 10,
            cpu_tenths % 10,
        );
        let m = p2p_deploy::Manifest::parse(&text).unwrap();
        prop_assert_eq!(&m.name, &name);
        prop_assert_eq!(m.version.to_string(), format!("{major}.{minor}.{patch}"));
        prop_assert_eq!(&m.args, &args);
        prop_assert_eq!(&m.env, &env);
        prop_assert_eq!(m.keep_versions as i64, keep);
        prop_assert_eq!(m.limits.memory_bytes, Some(mem_mib << 20));
        prop_assert_eq!(m.limits.cpu_millis, Some(cpu_tenths * 100));
        let bytes = postcard::to_allocvec(&m).unwrap();
        let back: p2p_deploy::Manifest = postcard::from_bytes(&bytes).unwrap();
        prop_assert_eq!(back, m);
    }
}
