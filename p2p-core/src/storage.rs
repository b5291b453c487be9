//! Key-value [`Storage`] for agent state and chunks, with an in-memory
//! ([`MemStorage`]) and a directory-backed ([`FsStorage`]) implementation.
//!
//! Keys are `/`-separated paths of segments made of ASCII letters, digits,
//! `-`, `_` and `.`, where no segment starts with `.` (so `..` and hidden
//! temporary files are impossible) and the whole key is at most
//! [`MAX_KEY_LEN`] bytes. [`validate_key`] enforces this before any
//! implementation touches its backing store, so a key can never escape an
//! `FsStorage` root.
//!
//! ```
//! # use p2p_core::{MemStorage, Storage};
//! # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
//! let store = MemStorage::new();
//! store.put("apps/web/desired", b"1.2.0").await?;
//! assert_eq!(store.get("apps/web/desired").await?.as_deref(), Some(&b"1.2.0"[..]));
//! assert_eq!(store.list("apps/").await?, ["apps/web/desired"]);
//! assert!(store.put("../etc/passwd", b"x").await.is_err());
//! # Ok::<(), p2p_core::Error>(())
//! # }).unwrap();
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use async_trait::async_trait;

use crate::error::{Error, Result};

/// Longest accepted key, in bytes.
pub const MAX_KEY_LEN: usize = 512;

/// Durable key-value storage.
///
/// # Contract
///
/// - Keys are checked with [`validate_key`]; an invalid key fails with
///   [`Error::Invalid`] naming the problem, before anything is read or written.
/// - [`put`](Storage::put) is atomic: after a crash at any point, a reader
///   sees either the old value or the new one, never a mix or a truncation.
///   When `put` returns, the value is durable.
/// - [`put_unsynced`](Storage::put_unsynced) is atomic against the process
///   dying, but not durable: after a power loss the key may be missing or
///   hold a damaged value. Use it only for values checked when read.
/// - [`get`](Storage::get) of a missing key is `Ok(None)`.
/// - [`delete`](Storage::delete) returns whether the key existed.
/// - [`list`](Storage::list) returns every key starting with `prefix`
///   (a plain string prefix), sorted.
/// - A key is a leaf: `a/b` and `a/b/c` cannot both exist; putting one when
///   the other exists fails with [`Error::AlreadyExists`].
#[async_trait]
pub trait Storage: Send + Sync {
    /// Stores `value` under `key`, replacing any previous value atomically.
    async fn put(&self, key: &str, value: &[u8]) -> Result<()>;
    /// [`put`](Storage::put) with a value the storage may keep or move
    /// without copying it: a chunk received in a frame buffer goes to disk
    /// as it came. The same contract as `put`; the default calls it.
    async fn put_bytes(&self, key: &str, value: bytes::Bytes) -> Result<()> {
        self.put(key, &value).await
    }
    /// [`put_bytes`](Storage::put_bytes) without waiting for the disk: as
    /// atomic against the process dying (a reader sees the old value or
    /// the new one, whole), but not durable: after a power loss or a
    /// kernel crash the key may be missing, or hold a value cut short or
    /// damaged. For values that are checked whenever they are read after
    /// a restart and can be had again, such as content-addressed chunks;
    /// on slow storage (an SD card) a sync per value is what takes the
    /// time. The default is `put_bytes`.
    async fn put_unsynced(&self, key: &str, value: bytes::Bytes) -> Result<()> {
        self.put_bytes(key, value).await
    }
    /// Reads the value under `key`.
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>>;
    /// Removes `key`; returns whether it existed.
    async fn delete(&self, key: &str) -> Result<bool>;
    /// Lists keys starting with `prefix`, sorted.
    async fn list(&self, prefix: &str) -> Result<Vec<String>>;
}

/// Checks that `key` is a valid storage key (see the [module docs](self)).
pub fn validate_key(key: &str) -> Result<()> {
    let bad = |reason: String| Err(Error::invalid("storage key", format!("{key:?}: {reason}")));
    if key.is_empty() {
        return bad("empty key".into());
    }
    if key.len() > MAX_KEY_LEN {
        return bad(format!("{} bytes, the maximum is {MAX_KEY_LEN}", key.len()));
    }
    for seg in key.split('/') {
        if seg.is_empty() {
            return bad("empty path segment (leading, trailing or double '/')".into());
        }
        if seg.starts_with('.') {
            return bad(format!("segment {seg:?} starts with '.'"));
        }
        if let Some(c) = seg
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
        {
            return bad(format!(
                "character {c:?} is not allowed (use A-Z a-z 0-9 - _ .)"
            ));
        }
    }
    Ok(())
}

/// Checks a list prefix: empty, or a key-like string that may end in `/`.
fn validate_prefix(prefix: &str) -> Result<()> {
    if prefix.is_empty() {
        return Ok(());
    }
    let trimmed = prefix.strip_suffix('/').unwrap_or(prefix);
    validate_key(trimmed).map_err(|_| {
        Error::invalid(
            "storage prefix",
            format!("{prefix:?} is not a key or a key followed by '/'"),
        )
    })
}

/// In-memory storage for tests and the simulator. Clones share contents,
/// so a simulated node keeps its storage across a crash and restart.
#[derive(Debug, Clone, Default)]
pub struct MemStorage {
    map: std::sync::Arc<Mutex<BTreeMap<String, Vec<u8>>>>,
}

impl MemStorage {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Vec<u8>>> {
        crate::sync::lock(&self.map)
    }

    /// Total bytes held in values.
    pub fn bytes_used(&self) -> usize {
        self.lock().values().map(Vec::len).sum()
    }
}

fn leaf_conflict(map: &BTreeMap<String, Vec<u8>>, key: &str) -> Option<String> {
    // An ancestor of `key` exists as a leaf?
    let mut end = 0;
    while let Some(i) = key[end..].find('/') {
        let anc = &key[..end + i];
        if map.contains_key(anc) {
            return Some(anc.to_string());
        }
        end += i + 1;
    }
    // A descendant of `key` exists?
    let dir = format!("{key}/");
    map.range(dir.clone()..)
        .next()
        .filter(|(k, _)| k.starts_with(&dir))
        .map(|(k, _)| k.clone())
}

#[async_trait]
impl Storage for MemStorage {
    async fn put(&self, key: &str, value: &[u8]) -> Result<()> {
        validate_key(key)?;
        let mut map = self.lock();
        if let Some(other) = leaf_conflict(&map, key) {
            return Err(Error::AlreadyExists {
                what: format!("storage key {other:?} conflicts with {key:?}"),
            });
        }
        map.insert(key.to_string(), value.to_vec());
        Ok(())
    }

    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        validate_key(key)?;
        Ok(self.lock().get(key).cloned())
    }

    async fn delete(&self, key: &str) -> Result<bool> {
        validate_key(key)?;
        Ok(self.lock().remove(key).is_some())
    }

    async fn list(&self, prefix: &str) -> Result<Vec<String>> {
        validate_prefix(prefix)?;
        Ok(self
            .lock()
            .range(prefix.to_string()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, _)| k.clone())
            .collect())
    }
}

/// Storage in a directory: each key is a file under the root.
///
/// `put` writes a temporary file next to the target, syncs it, renames it
/// over the target and syncs the directory, so a crash leaves the old value
/// or the new one. `put_unsynced` writes and renames without the two syncs.
/// Temporary files left by a crash start with `.` and are
/// ignored by `list` (and removed by [`FsStorage::open`]).
#[derive(Debug, Clone)]
pub struct FsStorage {
    root: PathBuf,
}

impl FsStorage {
    /// Opens (creating if needed) a store rooted at `root`, removing
    /// temporary files left by an interrupted `put`.
    pub async fn open(root: impl Into<PathBuf>) -> Result<Self> {
        let root = root.into();
        let r = root.clone();
        blocking(move || {
            std::fs::create_dir_all(&r)
                .map_err(|e| Error::io(format!("creating storage root {}", r.display()), e))?;
            remove_stale_temps(&r);
            Ok(())
        })
        .await?;
        Ok(FsStorage { root })
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn path(&self, key: &str) -> Result<PathBuf> {
        validate_key(key)?;
        Ok(self.root.join(key))
    }

    /// Writes `value` under `key` on the blocking pool, synced or not.
    async fn put_with(&self, key: &str, value: bytes::Bytes, sync: Durability) -> Result<()> {
        let path = self.path(key)?;
        let (root, key) = (self.root.clone(), key.to_string());
        blocking(move || put_file(&root, &path, &key, &value, sync)).await
    }
}

fn remove_stale_temps(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let name = name.to_string_lossy();
        let Ok(ft) = e.file_type() else { continue };
        if ft.is_dir() {
            remove_stale_temps(&e.path());
        } else if name.starts_with(".tmp-") {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::io("storage task", std::io::Error::other(e.to_string())))?
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

static TEMP_COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Whether a put waits for the disk ([`Storage::put`]) or not
/// ([`Storage::put_unsynced`]).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Durability {
    Durable,
    Unsynced,
}

fn put_file(root: &Path, path: &Path, key: &str, value: &[u8], sync: Durability) -> Result<()> {
    use std::io::Write;
    let ctx = |what: &str| format!("{what} storage key {key:?} at {}", path.display());
    let dir = path.parent().unwrap_or(root);
    // Refuse to turn a directory into a file or a file into a directory.
    if path.is_dir() {
        return Err(Error::AlreadyExists {
            what: format!("storage key {key:?} is a prefix of other keys"),
        });
    }
    let mut anc = dir;
    while anc != root {
        if anc.is_file() {
            return Err(Error::AlreadyExists {
                what: format!(
                    "storage key {:?} conflicts with {key:?}",
                    anc.strip_prefix(root).unwrap_or(anc).display()
                ),
            });
        }
        anc = anc.parent().unwrap_or(root);
    }
    std::fs::create_dir_all(dir).map_err(|e| Error::io(ctx("creating directory for"), e))?;
    let n = TEMP_COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = dir.join(format!(".tmp-{}-{n}", std::process::id()));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(value)?;
        if sync == Durability::Unsynced {
            // The rename alone makes the value appear whole or not at all
            // to readers; the disk catches up in its own time.
            return std::fs::rename(&tmp, path);
        }
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        sync_dir(dir)
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(Error::io(ctx("writing"), e));
    }
    Ok(())
}

fn list_dir(root: &Path, dir: &Path, prefix: &str, out: &mut Vec<String>) -> std::io::Result<()> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for e in entries {
        let e = e?;
        let name = e.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.starts_with('.') {
            continue;
        }
        let path = e.path();
        let Ok(rel) = path.strip_prefix(root) else {
            continue;
        };
        let Some(key) = rel
            .to_str()
            .map(|s| s.replace(std::path::MAIN_SEPARATOR, "/"))
        else {
            continue;
        };
        let ft = e.file_type()?;
        if ft.is_dir() {
            let dir_key = format!("{key}/");
            if dir_key.starts_with(prefix) || prefix.starts_with(&dir_key) {
                list_dir(root, &path, prefix, out)?;
            }
        } else if ft.is_file() && key.starts_with(prefix) && validate_key(&key).is_ok() {
            out.push(key);
        }
    }
    Ok(())
}

#[async_trait]
impl Storage for FsStorage {
    async fn put(&self, key: &str, value: &[u8]) -> Result<()> {
        self.put_bytes(key, bytes::Bytes::copy_from_slice(value))
            .await
    }

    async fn put_bytes(&self, key: &str, value: bytes::Bytes) -> Result<()> {
        self.put_with(key, value, Durability::Durable).await
    }

    async fn put_unsynced(&self, key: &str, value: bytes::Bytes) -> Result<()> {
        self.put_with(key, value, Durability::Unsynced).await
    }

    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        let path = self.path(key)?;
        let key = key.to_string();
        blocking(move || match std::fs::read(&path) {
            Ok(v) => Ok(Some(v)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) if path.is_dir() => {
                let _ = e;
                Ok(None)
            }
            Err(e) if e.raw_os_error() == Some(20) => Ok(None), // ENOTDIR: an ancestor is a file
            Err(e) => Err(Error::io(format!("reading storage key {key:?}"), e)),
        })
        .await
    }

    async fn delete(&self, key: &str) -> Result<bool> {
        let path = self.path(key)?;
        let key = key.to_string();
        blocking(move || {
            if path.is_dir() {
                return Ok(false);
            }
            match std::fs::remove_file(&path) {
                Ok(()) => {
                    if let Some(dir) = path.parent() {
                        let _ = sync_dir(dir);
                    }
                    Ok(true)
                }
                Err(e)
                    if e.kind() == std::io::ErrorKind::NotFound || e.raw_os_error() == Some(20) =>
                {
                    Ok(false)
                }
                Err(e) => Err(Error::io(format!("deleting storage key {key:?}"), e)),
            }
        })
        .await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<String>> {
        validate_prefix(prefix)?;
        let (root, prefix) = (self.root.clone(), prefix.to_string());
        blocking(move || {
            let mut out = Vec::new();
            list_dir(&root, &root, &prefix, &mut out)
                .map_err(|e| Error::io(format!("listing storage prefix {prefix:?}"), e))?;
            out.sort();
            Ok(out)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn contract(store: &dyn Storage) {
        assert_eq!(store.get("a/b").await.unwrap(), None);
        store.put("a/b", b"1").await.unwrap();
        store.put("a/c.d", b"2").await.unwrap();
        store.put("ab", b"3").await.unwrap();
        store.put("a/b", b"11").await.unwrap();
        assert_eq!(store.get("a/b").await.unwrap().unwrap(), b"11");
        assert_eq!(store.list("a/").await.unwrap(), ["a/b", "a/c.d"]);
        assert_eq!(store.list("a").await.unwrap(), ["a/b", "a/c.d", "ab"]);
        assert_eq!(store.list("").await.unwrap(), ["a/b", "a/c.d", "ab"]);
        assert!(matches!(
            store.put("a/b/c", b"x").await,
            Err(Error::AlreadyExists { .. })
        ));
        assert!(matches!(
            store.put("a", b"x").await,
            Err(Error::AlreadyExists { .. })
        ));
        assert!(store.delete("a/b").await.unwrap());
        assert!(!store.delete("a/b").await.unwrap());
        assert_eq!(store.get("a/b").await.unwrap(), None);
        assert_eq!(store.get("ab/x").await.unwrap(), None);
        let big = vec![7u8; 1 << 20];
        store.put("big", &big).await.unwrap();
        assert_eq!(store.get("big").await.unwrap().unwrap(), big);
        store.put("empty", b"").await.unwrap();
        assert_eq!(store.get("empty").await.unwrap().unwrap(), b"");
        // put_bytes: exactly the slice given, under the same rules.
        let frame = bytes::Bytes::from((0..=255u8).cycle().take(4096).collect::<Vec<u8>>());
        store
            .put_bytes("sliced", frame.slice(10..4000))
            .await
            .unwrap();
        assert_eq!(
            store.get("sliced").await.unwrap().unwrap(),
            &frame[10..4000]
        );
        store.put_bytes("sliced", frame.slice(..3)).await.unwrap();
        assert_eq!(store.get("sliced").await.unwrap().unwrap(), &frame[..3]);
        assert!(matches!(
            store.put_bytes("sliced/x", frame.clone()).await,
            Err(Error::AlreadyExists { .. })
        ));
        assert!(matches!(
            store.put_bytes("../x", frame.clone()).await,
            Err(Error::Invalid { .. })
        ));
        assert_eq!(store.list("sl").await.unwrap(), ["sliced"]);
        // put_unsynced: the same rules, the same value read back.
        store
            .put_unsynced("loose", frame.slice(5..9))
            .await
            .unwrap();
        assert_eq!(store.get("loose").await.unwrap().unwrap(), &frame[5..9]);
        store.put_unsynced("loose", frame.slice(..1)).await.unwrap();
        assert_eq!(store.get("loose").await.unwrap().unwrap(), &frame[..1]);
        assert!(matches!(
            store.put_unsynced("loose/x", frame.clone()).await,
            Err(Error::AlreadyExists { .. })
        ));
        assert!(matches!(
            store.put_unsynced("a/../x", frame).await,
            Err(Error::Invalid { .. })
        ));
    }

    #[tokio::test]
    async fn mem_storage_meets_the_contract() {
        contract(&MemStorage::new()).await;
    }

    #[tokio::test]
    async fn fs_storage_meets_the_contract() {
        let dir = tempfile::tempdir().unwrap();
        contract(&FsStorage::open(dir.path()).await.unwrap()).await;
    }

    #[test]
    fn keys_that_could_escape_or_hide_are_refused() {
        for key in [
            "", "/abs", "a//b", "a/", "..", "../x", "a/../b", ".hidden", "a/.tmp-1", "a\\b", "a b",
            "é", "a\0b", "C:x",
        ] {
            let err = validate_key(key).unwrap_err();
            assert!(
                matches!(
                    err,
                    Error::Invalid {
                        what: "storage key",
                        ..
                    }
                ),
                "{key:?}: {err}"
            );
        }
        assert!(validate_key(&"a".repeat(MAX_KEY_LEN + 1)).is_err());
        for key in ["a", "a/b", "chunks/ab/ab12.bin", "x-y_z.1"] {
            validate_key(key).unwrap();
        }
    }

    #[tokio::test]
    async fn invalid_keys_never_touch_the_disk() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        let store = FsStorage::open(&root).await.unwrap();
        for key in ["../escape", "a/../../escape", "/tmp/escape"] {
            assert!(store.put(key, b"x").await.is_err());
            assert!(store.get(key).await.is_err());
            assert!(store.delete(key).await.is_err());
        }
        assert!(!dir.path().join("escape").exists());
        assert!(store.list("../").await.is_err());
    }

    #[tokio::test]
    async fn stale_temp_files_are_ignored_and_cleaned() {
        let dir = tempfile::tempdir().unwrap();
        let store = FsStorage::open(dir.path()).await.unwrap();
        store.put("k/v", b"good").await.unwrap();
        std::fs::write(dir.path().join("k/.tmp-1-1"), b"torn").unwrap();
        assert_eq!(store.list("").await.unwrap(), ["k/v"]);
        let store = FsStorage::open(dir.path()).await.unwrap();
        assert!(!dir.path().join("k/.tmp-1-1").exists());
        assert_eq!(store.get("k/v").await.unwrap().unwrap(), b"good");
    }
}
