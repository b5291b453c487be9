//! Delta releases: content-defined chunks that a new version shares with
//! the old one, so a node that holds the old one fetches only what
//! changed; reproducible packages; descriptors that lie about their
//! chunks refused, leaving nothing behind; chunks damaged on disk never
//! served.
#![allow(clippy::unwrap_used)]

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use p2p_core::{MemStorage, Timestamp};
use p2p_deploy::chunks::ChunkStore;
use p2p_deploy::{BuildOptions, Descriptor, DirInstaller, Installer, PackageFile, build};
use p2p_testkit::{noise, text};

struct Clock(u64);
impl p2p_core::Clock for Clock {
    fn now(&self) -> Timestamp {
        Timestamp(self.0)
    }
}

/// An app of `files` files of 128 KiB (noise and text in turn) plus a
/// manifest, at version `version`.
fn app(root: &Path, name: &str, version: &str, files: usize) -> PathBuf {
    let d = root.join(name);
    std::fs::create_dir_all(d.join("lib")).unwrap();
    std::fs::write(
        d.join("p2p.toml"),
        format!("name = \"web\"\nversion = \"{version}\"\nentrypoint = \"lib/f00\"\n"),
    )
    .unwrap();
    for i in 0..files {
        let body = if i % 2 == 0 {
            noise(128 << 10, i as u64)
        } else {
            text(128 << 10, i as u64)
        };
        std::fs::write(d.join(format!("lib/f{i:02}")), body).unwrap();
    }
    d
}

fn opts() -> BuildOptions {
    BuildOptions {
        chunk_size: 32 << 10,
        ..BuildOptions::default()
    }
}

fn package(dir: &Path, out: &Path) -> PackageFile {
    build(dir, out, &Clock(1), opts()).unwrap();
    PackageFile::open(out).unwrap()
}

/// The chunks of `new` that `old` lacks: what a node holding `old` moves.
fn to_move(new: &Descriptor, old: &Descriptor) -> (usize, u64) {
    let held: HashSet<[u8; 32]> = old.chunks.iter().map(|c| c.sha256).collect();
    let fresh: Vec<_> = new
        .chunks
        .iter()
        .filter(|c| !held.contains(&c.sha256))
        .collect();
    (fresh.len(), fresh.iter().map(|c| u64::from(c.size)).sum())
}

fn set_version(dir: &Path, version: &str) {
    std::fs::write(
        dir.join("p2p.toml"),
        format!("name = \"web\"\nversion = \"{version}\"\nentrypoint = \"lib/f00\"\n"),
    )
    .unwrap();
}

#[test]
fn a_changed_file_moves_about_its_own_size() {
    let t = tempfile::tempdir().unwrap();
    let dir = app(t.path(), "app", "1.0.0", 16);
    let v1 = package(&dir, &t.path().join("v1.p2p"));
    // Rewrite one incompressible file of 128 KiB in the middle.
    set_version(&dir, "1.1.0");
    std::fs::write(dir.join("lib/f08"), noise(128 << 10, 99)).unwrap();
    let v2 = package(&dir, &t.path().join("v2.p2p"));
    let (n, bytes) = to_move(&v2.descriptor, &v1.descriptor);
    // The file, the manifest's chunk, and at most a chunk's worth of
    // neighbours on each side.
    assert!(
        bytes <= (128 << 10) + 2 * (32 << 10) + 4096,
        "{bytes} bytes in {n} chunks moved for a 128 KiB change"
    );
    assert!(bytes >= 128 << 10, "{bytes}");
}

#[test]
fn one_changed_byte_moves_at_most_two_chunks() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("app");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("p2p.toml"),
        "name = \"web\"\nversion = \"1.0.0\"\nentrypoint = \"bin\"\n",
    )
    .unwrap();
    let mut bin = noise(2 << 20, 5);
    std::fs::write(dir.join("bin"), &bin).unwrap();
    let v1 = package(&dir, &t.path().join("v1.p2p"));
    bin[1 << 20] ^= 0x40;
    std::fs::write(dir.join("bin"), &bin).unwrap();
    let v2 = package(&dir, &t.path().join("v2.p2p"));
    let (n, bytes) = to_move(&v2.descriptor, &v1.descriptor);
    assert!(n <= 2, "{n} chunks ({bytes} bytes) for one byte");
    assert!(n >= 1);
}

#[test]
fn a_file_inserted_early_moves_about_its_size() {
    let t = tempfile::tempdir().unwrap();
    let dir = app(t.path(), "app", "1.0.0", 12);
    let v1 = package(&dir, &t.path().join("v1.p2p"));
    set_version(&dir, "1.1.0");
    // "lib/a-new" sorts before every other file in lib/.
    std::fs::write(dir.join("lib/a-new"), noise(100 << 10, 77)).unwrap();
    let v2 = package(&dir, &t.path().join("v2.p2p"));
    let (n, bytes) = to_move(&v2.descriptor, &v1.descriptor);
    assert!(
        bytes as f64 <= 1.5 * f64::from(100u32 << 10),
        "{bytes} bytes in {n} chunks moved for a 100 KiB insertion"
    );
}

/// The same files and creation time give the same package, byte for
/// byte, and the same id; another creation time changes the id and no
/// chunk.
#[test]
fn packages_are_reproducible() {
    let t = tempfile::tempdir().unwrap();
    let dir = app(t.path(), "app", "1.0.0", 6);
    let at = BuildOptions {
        created_at: Some(Timestamp(1_700_000_000_000)),
        ..opts()
    };
    let a = build(&dir, &t.path().join("a.p2p"), &Clock(5), at).unwrap();
    let b = build(&dir, &t.path().join("b.p2p"), &Clock(9), at).unwrap();
    assert_eq!(a.id(), b.id());
    assert_eq!(
        std::fs::read(t.path().join("a.p2p")).unwrap(),
        std::fs::read(t.path().join("b.p2p")).unwrap()
    );
    let c = build(&dir, &t.path().join("c.p2p"), &Clock(5), opts()).unwrap();
    let d = build(&dir, &t.path().join("d.p2p"), &Clock(9), opts()).unwrap();
    assert_ne!(c.id(), d.id(), "the clock's time is in the descriptor");
    assert_eq!(c.chunks, d.chunks);
    assert_eq!(c.chunks, a.chunks);
}

/// The store keeps a chunk once for every release that lists it: a node
/// holding v1 misses only v2's new chunks, installs v2 from them, and
/// keeps the shared chunks when v1 goes.
#[tokio::test]
async fn a_node_holding_v1_fetches_only_what_v2_adds() {
    let t = tempfile::tempdir().unwrap();
    let dir = app(t.path(), "app", "1.0.0", 10);
    let v1 = package(&dir, &t.path().join("v1.p2p"));
    set_version(&dir, "1.1.0");
    std::fs::write(dir.join("lib/f03"), text(128 << 10, 1234)).unwrap();
    let v2 = package(&dir, &t.path().join("v2.p2p"));
    let store = ChunkStore::new(Arc::new(MemStorage::new()));
    let archive = |p: &PackageFile| {
        let mut b = Vec::new();
        std::io::Read::read_to_end(&mut p.archive_reader().unwrap(), &mut b).unwrap();
        b
    };
    let put_all = async |p: &PackageFile, only: &[usize]| {
        let bytes = archive(p);
        let off = p.descriptor.offsets();
        for &i in only {
            store
                .put(
                    &p.descriptor,
                    i,
                    &bytes[off[i] as usize..off[i + 1] as usize],
                )
                .await
                .unwrap();
        }
    };
    let (d1, d2) = (&v1.descriptor, &v2.descriptor);
    store.add_release(d1).await.unwrap();
    put_all(&v1, &(0..d1.chunks.len()).collect::<Vec<_>>()).await;
    store.add_release(d2).await.unwrap();
    let missing = store.missing(d2).await.unwrap();
    let (n, _) = to_move(d2, d1);
    assert_eq!(missing.len(), n);
    assert!(n < d2.chunks.len() / 2, "{n} of {}", d2.chunks.len());
    put_all(&v2, &missing).await;
    let root = t.path().join("versions");
    let installed = DirInstaller::new(&root, p2p_deploy::UnpackLimits::default())
        .install(d2, &store)
        .await
        .unwrap();
    assert_eq!(
        std::fs::read(installed.join("lib/f03")).unwrap(),
        text(128 << 10, 1234)
    );
    assert_eq!(
        std::fs::read(installed.join("lib/f04")).unwrap(),
        noise(128 << 10, 4)
    );
    // v1 goes: its own chunks are collected, the shared ones stay.
    store.remove_release(&d1.id()).await.unwrap();
    let gone = store.collect().await.unwrap();
    assert_eq!(gone, to_move(d1, d2).0);
    assert!(store.missing(d2).await.unwrap().is_empty());
}

/// A descriptor that lists a chunk the node holds (another release's)
/// with another length, or says a chunk decompresses to another size
/// than its frame does, is refused naming the chunk, and nothing is left
/// outside the chunk store.
#[tokio::test]
async fn lying_chunk_lists_are_refused_and_leave_nothing_behind() {
    let t = tempfile::tempdir().unwrap();
    let dir = app(t.path(), "app", "1.0.0", 4);
    let v1 = package(&dir, &t.path().join("v1.p2p"));
    let d1 = &v1.descriptor;
    let store = ChunkStore::new(Arc::new(MemStorage::new()));
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(&mut v1.archive_reader().unwrap(), &mut bytes).unwrap();
    store.add_release(d1).await.unwrap();
    let off = d1.offsets();
    for i in 0..d1.chunks.len() {
        store
            .put(d1, i, &bytes[off[i] as usize..off[i + 1] as usize])
            .await
            .unwrap();
    }
    let root = t.path().join("versions");
    let installer = DirInstaller::new(&root, p2p_deploy::UnpackLimits::default());
    let nothing_written = || {
        let left: Vec<_> = std::fs::read_dir(&root)
            .map(|rd| rd.map(|e| e.unwrap().file_name()).collect())
            .unwrap_or_default();
        assert!(left.is_empty(), "{left:?}");
    };
    // Chunk 2 listed with v1's hash and one byte more.
    let mut longer = d1.clone();
    longer.manifest.version = semver::Version::new(2, 0, 0);
    longer.chunks[2].size += 1;
    longer.archive_size += 1;
    let longer = Descriptor::from_bytes(&longer.to_bytes()).unwrap();
    store.add_release(&longer).await.unwrap();
    assert!(
        store.missing(&longer).await.unwrap().is_empty(),
        "the node holds every hash"
    );
    let e = installer
        .install(&longer, &store)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("chunk 2 of web 2.0.0") && e.contains("descriptor says"),
        "{e}"
    );
    nothing_written();
    // Chunk 1 said to decompress to more than its frame holds.
    let mut bigger = d1.clone();
    bigger.manifest.version = semver::Version::new(3, 0, 0);
    bigger.chunks[1].raw_size += 4096;
    let e = installer
        .install(&bigger, &store)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("chunk 1 of the archive: it decompresses to")
            && e.contains(&format!("descriptor says {}", bigger.chunks[1].raw_size)),
        "{e}"
    );
    nothing_written();
    // The honest one installs.
    installer.install(d1, &store).await.unwrap();
}

/// A chunk damaged on disk after it was stored is never installed: the
/// store checks every chunk it hands to an install against its hash, drops
/// a bad one so that the node lists it as missing and fetches it again,
/// and the install refuses the release until it is whole again.
#[tokio::test]
async fn a_chunk_damaged_on_disk_is_never_installed_and_is_fetched_again() {
    let t = tempfile::tempdir().unwrap();
    let (dir, d, release, store) = stored_release(t.path()).await;
    assert!(store.missing(&d).await.unwrap().is_empty());
    // One byte of chunk 3 flips on disk.
    let bad = 3;
    let (file, bytes) = damage_chunk(&t.path().join("store"), &d, bad);

    let installer = DirInstaller::new(t.path().join("apps"), p2p_deploy::UnpackLimits::default());
    let e = installer.install(&d, &store).await.unwrap_err().to_string();
    assert!(e.contains(&format!("chunk {bad}")), "{e}");
    assert!(
        !t.path().join("apps/web").exists(),
        "nothing is unpacked from a damaged release"
    );
    // Dropped from the store, and so fetched again.
    assert_eq!(store.get(&d, bad).await.unwrap(), None);
    assert!(!file.exists());
    assert_eq!(store.missing(&d).await.unwrap(), vec![bad]);
    // Damaged bytes offered again are refused; the good ones make it whole.
    assert!(store.put(&d, bad, &bytes).await.is_err());
    store
        .put(&d, bad, &release.chunk(bad).unwrap())
        .await
        .unwrap();
    let at = installer.install(&d, &store).await.unwrap();
    assert_eq!(
        std::fs::read(at.join("lib/f03")).unwrap(),
        std::fs::read(dir.join("lib/f03")).unwrap()
    );
}

/// A chunk store over `store_dir`, as a node process opens it.
async fn open_store(store_dir: &Path) -> ChunkStore {
    ChunkStore::new(Arc::new(
        p2p_core::FsStorage::open(store_dir).await.unwrap(),
    ))
}

/// An app of 8 files packaged as version 1.0.0 under `root`, and every
/// chunk of it stored in a chunk store at `<root>/store`: the app's
/// directory, the release's descriptor and chunks, and the store.
async fn stored_release(root: &Path) -> (PathBuf, Descriptor, p2p_deploy::Release, ChunkStore) {
    let dir = app(root, "app", "1.0.0", 8);
    let pkg = package(&dir, &root.join("v1.p2p"));
    let d = pkg.descriptor.clone();
    let release = p2p_deploy::Release::from_package(&pkg);
    let store = open_store(&root.join("store")).await;
    store.add_release(&d).await.unwrap();
    for i in 0..d.chunks.len() {
        store.put(&d, i, &release.chunk(i).unwrap()).await.unwrap();
    }
    (dir, d, release, store)
}

/// The file of chunk `index` of `d` in the store under `store_dir`.
fn chunk_file(store_dir: &Path, d: &Descriptor, index: usize) -> PathBuf {
    let hex: String = d.chunks[index]
        .sha256
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    store_dir.join("chunks").join(hex)
}

/// Flips one byte in the middle of the stored file of chunk `index` of
/// `d` under `store_dir`; returns the file's path and its damaged bytes.
fn damage_chunk(store_dir: &Path, d: &Descriptor, index: usize) -> (PathBuf, Vec<u8>) {
    let file = chunk_file(store_dir, d, index);
    let mut bytes = std::fs::read(&file).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01;
    std::fs::write(&file, &bytes).unwrap();
    (file, bytes)
}

/// Serving a chunk to a peer hashes it again only if this process has not
/// checked it in the last `SERVE_UNHASHED_FOR`. A chunk damaged on disk
/// while the node was down is caught on its first serve: not served,
/// dropped, listed as missing. One damaged under a running node soon after
/// it was checked is served, and the peer, which checks every chunk it
/// receives, refuses it; this node's own install still refuses it, and
/// drops it, so it is not served again; and once the trust has lapsed
/// the next serve catches it.
#[tokio::test]
async fn a_chunk_damaged_on_disk_is_caught_when_served() {
    let t = tempfile::tempdir().unwrap();
    let (_, d, release, store) = stored_release(t.path()).await;
    let at = t.path().join("store");
    let open = || open_store(&at);

    // Damaged while the node was down: the restarted node has not checked
    // it, so it hashes it on the first serve.
    let (file, _) = damage_chunk(&at, &d, 2);
    let restarted = open().await;
    assert_eq!(restarted.serve(&d, 2).await.unwrap(), None);
    assert!(!file.exists(), "a damaged chunk is dropped");
    assert_eq!(restarted.missing(&d).await.unwrap(), vec![2]);
    // The others are served as stored, and checked once.
    assert_eq!(
        restarted.serve(&d, 1).await.unwrap().unwrap(),
        release.chunk(1).unwrap()
    );
    // Fetched again, it is whole again.
    restarted
        .put(&d, 2, &release.chunk(2).unwrap())
        .await
        .unwrap();

    // Damaged under the running node after it stored (and hashed) it: it
    // is served as it is now...
    let (file, damaged) = damage_chunk(&at, &d, 5);
    let served = store.serve(&d, 5).await.unwrap().unwrap();
    assert_eq!(served, damaged);
    // ...and the peer refuses it: every chunk is checked on arrival.
    let peer = ChunkStore::new(Arc::new(MemStorage::new()));
    peer.add_release(&d).await.unwrap();
    let e = peer.put(&d, 5, &served).await.unwrap_err();
    assert!(
        matches!(e, p2p_deploy::chunks::ChunkError::Corrupt { index: 5 }),
        "{e}"
    );
    assert!(peer.missing(&d).await.unwrap().contains(&5));
    // This node's install refuses it and drops it: not served again.
    let installer = DirInstaller::new(t.path().join("apps"), p2p_deploy::UnpackLimits::default());
    let e = installer.install(&d, &store).await.unwrap_err().to_string();
    assert!(e.contains("chunk 5"), "{e}");
    assert!(
        !t.path().join("apps/web").exists(),
        "nothing is unpacked from a damaged release"
    );
    assert_eq!(store.get(&d, 5).await.unwrap(), None);
    assert!(!file.exists());
    assert_eq!(store.serve(&d, 5).await.unwrap(), None);

    // Cut short (another length than the descriptor gives): hashed again
    // on the serve, dropped, not served.
    let file = chunk_file(&at, &d, 6);
    let bytes = std::fs::read(&file).unwrap();
    std::fs::write(&file, &bytes[..bytes.len() - 1]).unwrap();
    assert_eq!(store.serve(&d, 6).await.unwrap(), None);
    assert!(!file.exists());

    // Trusted only for a while: once SERVE_UNHASHED_FOR has passed since
    // the node checked a chunk, its next serve hashes it again.
    let (file, _) = damage_chunk(&at, &d, 0);
    tokio::time::pause();
    tokio::time::advance(
        p2p_deploy::chunks::SERVE_UNHASHED_FOR + std::time::Duration::from_secs(1),
    )
    .await;
    assert_eq!(store.serve(&d, 0).await.unwrap(), None);
    assert!(!file.exists());
}

/// Chunks are stored without a sync, so a power loss may leave some cut
/// short, damaged or gone. The next process finds out before it relies on
/// them: a transfer starting over the store (`to_fetch`) hashes every
/// chunk an earlier process stored, drops the bad ones and fetches them
/// again, and only those; it reads a release through once, not on every
/// transfer.
#[tokio::test]
async fn chunks_a_power_loss_damaged_are_fetched_again_by_the_next_process() {
    let t = tempfile::tempdir().unwrap();
    let (_, d, release, before) = stored_release(t.path()).await;
    let store_dir = t.path().join("store");
    let open = || open_store(&store_dir);
    assert!(d.chunks.len() >= 4, "{} chunks", d.chunks.len());
    // Nothing left behind by the writes but the chunks themselves.
    let names: Vec<String> = std::fs::read_dir(store_dir.join("chunks"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names.len(), d.chunks.len());
    assert!(names.iter().all(|n| !n.starts_with('.')), "{names:?}");
    // What a power loss can do: one chunk damaged, one cut short, one
    // emptied, one gone.
    damage_chunk(&store_dir, &d, 0);
    let cut = chunk_file(&store_dir, &d, 1);
    let bytes = std::fs::read(&cut).unwrap();
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    std::fs::write(chunk_file(&store_dir, &d, 2), b"").unwrap();
    std::fs::remove_file(chunk_file(&store_dir, &d, 3)).unwrap();
    // The process that stored them checked them: it does not read them
    // again (its install would: `..._is_never_installed_...`).
    assert_eq!(before.to_fetch(&d).await.unwrap(), vec![3]);
    drop(before);

    let after = open().await;
    // A listing alone counts the damaged chunks as held.
    assert_eq!(after.missing(&d).await.unwrap(), vec![3]);
    assert_eq!(after.to_fetch(&d).await.unwrap(), vec![0, 1, 2, 3]);
    // Dropped: listed missing from now on.
    assert_eq!(after.missing(&d).await.unwrap(), vec![0, 1, 2, 3]);
    for i in 0..3 {
        assert!(!chunk_file(&store_dir, &d, i).exists(), "chunk {i} dropped");
    }
    for i in 0..4 {
        after.put(&d, i, &release.chunk(i).unwrap()).await.unwrap();
    }
    assert_eq!(after.to_fetch(&d).await.unwrap(), Vec::<usize>::new());
    // Checked once per process: a chunk damaged now, under this process,
    // is not found by another listing (the install's hash finds it).
    damage_chunk(&store_dir, &d, 5);
    assert_eq!(after.to_fetch(&d).await.unwrap(), Vec::<usize>::new());
    let installer = DirInstaller::new(t.path().join("apps"), p2p_deploy::UnpackLimits::default());
    let e = installer.install(&d, &after).await.unwrap_err().to_string();
    assert!(e.contains("chunk 5"), "{e}");
    assert_eq!(after.to_fetch(&d).await.unwrap(), vec![5]);
}
