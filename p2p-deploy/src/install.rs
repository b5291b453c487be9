//! Where installed versions live: the [`Installer`] trait, with
//! [`DirInstaller`] (unpacked on disk, for real nodes) and
//! [`MemInstaller`] (checked and recorded in memory, for the simulator,
//! whose processes need no files).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use p2p_core::{Error, Result};

use crate::chunks::ChunkStore;
use crate::package::Descriptor;
use crate::package::archive::ChunkSource;
use crate::unpack::{UnpackLimits, unpack_chunks, version_dir};

/// Installs and removes versions of apps.
///
/// # Contract
///
/// - `install` is all or nothing: on error no trace of the version is
///   left, and a version left over from an install the agent did not
///   record (it crashed in between) is replaced.
/// - `install` reads every byte of the archive from the chunk store and
///   fails if they do not match the descriptor.
#[async_trait]
pub trait Installer: Send + Sync {
    /// Installs release `d` (all its chunks in `chunks`); returns the
    /// directory the app runs in.
    async fn install(&self, d: &Descriptor, chunks: &ChunkStore) -> Result<PathBuf>;
    /// The directory an installed version runs in.
    fn workdir(&self, name: &str, version: &semver::Version) -> PathBuf;
    /// Removes a version; removing an absent one is not an error.
    async fn uninstall(&self, name: &str, version: &semver::Version) -> Result<()>;
    /// Called by the agent at start, before any install: removes what
    /// interrupted installs left (partial archives, staging directories)
    /// and, for each app in `installed`, the versions it does not list.
    /// Apps not in `installed` are left alone. Returns how many entries
    /// were removed. The default removes nothing.
    async fn clean(
        &self,
        installed: &BTreeMap<String, BTreeSet<semver::Version>>,
    ) -> Result<usize> {
        let _ = installed;
        Ok(0)
    }
}

/// Versions unpacked under `<root>/<name>/<version>` (the safe unpack of
/// [`unpack`](mod@crate::unpack)).
#[derive(Debug, Clone)]
pub struct DirInstaller {
    root: PathBuf,
    limits: UnpackLimits,
}

impl DirInstaller {
    /// Installs under `root` (created if missing).
    pub fn new(root: impl Into<PathBuf>, limits: UnpackLimits) -> Self {
        DirInstaller {
            root: root.into(),
            limits,
        }
    }

    /// The root.
    pub fn root(&self) -> &Path {
        &self.root
    }
}

#[async_trait]
impl Installer for DirInstaller {
    async fn install(&self, d: &Descriptor, chunks: &ChunkStore) -> Result<PathBuf> {
        let m = &d.manifest;
        std::fs::create_dir_all(&self.root)
            .map_err(|e| Error::io(format!("creating {}", self.root.display()), e))?;
        let target = version_dir(&self.root, &m.name, &m.version)?;
        if target.exists() {
            // Left by an install that was never recorded: replace it.
            tracing::info!(dir = %target.display(), "replacing an unrecorded install");
            std::fs::remove_dir_all(&target)
                .map_err(|e| Error::io(format!("removing {}", target.display()), e))?;
        }
        // The chunks go from the store to the unpacking thread a few at a
        // time: the archive is never written out whole. Each is checked on
        // its way out of the store (hash, size, one frame of the size the
        // descriptor gives), in the one pass that unpacks it: the files
        // go to a staging directory that only becomes the version's
        // directory once every chunk passed, and is removed otherwise.
        let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<Vec<u8>>>(4);
        let (root, limits, desc) = (self.root.clone(), self.limits, d.clone());
        let unpacking = tokio::task::spawn_blocking(move || {
            unpack_chunks(ChunkFeed { rx }, &desc, &root, limits)
        });
        let mut sent = 0;
        let mut bad_chunk = None;
        while sent < d.chunks.len() {
            match chunks.get_frame(d, sent).await {
                Ok(chunk) => {
                    if tx.send(Ok(chunk)).await.is_err() {
                        // The unpacking stopped (its error is reported
                        // below, or the archive ended early).
                        break;
                    }
                    sent += 1;
                }
                Err(e) => {
                    let _ = tx.send(Err(std::io::Error::other(e.to_string()))).await;
                    bad_chunk = Some(e);
                    break;
                }
            }
        }
        drop(tx);
        let dir = unpacking
            .await
            .map_err(|e| Error::io("unpacking", std::io::Error::other(e)))?;
        // Chunks the unpacking did not read (the end of the archive's
        // padding) are checked too: a release installs whole or not at all.
        if bad_chunk.is_none() && dir.is_ok() {
            for i in sent..d.chunks.len() {
                if let Err(e) = chunks.get_frame(d, i).await {
                    bad_chunk = Some(e);
                    break;
                }
            }
        }
        let result = match (bad_chunk, dir) {
            // A damaged chunk is the error to report, whatever the
            // unpacking made of the bytes before it.
            (Some(e), dir) => {
                if let Ok(dir) = dir {
                    let _ = std::fs::remove_dir_all(&dir);
                }
                Err(e)
            }
            (None, dir) => Ok(dir?),
        };
        if result.is_err()
            && let Some(app_dir) = target.parent()
        {
            // The app's directory goes too if this install made it (it is
            // empty then).
            let _ = std::fs::remove_dir(app_dir);
        }
        result
    }

    fn workdir(&self, name: &str, version: &semver::Version) -> PathBuf {
        self.root.join(name).join(version.to_string())
    }

    async fn uninstall(&self, name: &str, version: &semver::Version) -> Result<()> {
        let dir = version_dir(&self.root, name, version)?;
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io(format!("removing {}", dir.display()), e)),
        }
    }

    async fn clean(
        &self,
        installed: &BTreeMap<String, BTreeSet<semver::Version>>,
    ) -> Result<usize> {
        let (root, installed) = (self.root.clone(), installed.clone());
        tokio::task::spawn_blocking(move || clean_dir(&root, &installed))
            .await
            .map_err(|e| Error::io("cleaning up installs", std::io::Error::other(e)))?
    }
}

fn clean_dir(
    root: &Path,
    installed: &BTreeMap<String, BTreeSet<semver::Version>>,
) -> Result<usize> {
    let read = |dir: &Path| -> Result<Vec<(String, PathBuf, bool)>> {
        let entries = match std::fs::read_dir(dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(Error::io(format!("reading {}", dir.display()), e)),
        };
        let mut out = Vec::new();
        for e in entries {
            let e = e.map_err(|e| Error::io(format!("reading {}", dir.display()), e))?;
            let is_dir = e.file_type().is_ok_and(|t| t.is_dir());
            out.push((
                e.file_name().to_string_lossy().into_owned(),
                e.path(),
                is_dir,
            ));
        }
        Ok(out)
    };
    let remove = |path: &Path, is_dir: bool| -> Result<()> {
        tracing::info!(path = %path.display(), "removing what an interrupted install left");
        let r = if is_dir {
            std::fs::remove_dir_all(path)
        } else {
            std::fs::remove_file(path)
        };
        r.map_err(|e| Error::io(format!("removing {}", path.display()), e))
    };
    let mut gone = 0;
    for (name, path, is_dir) in read(root)? {
        if name.starts_with(".incoming-") && !is_dir {
            remove(&path, false)?;
            gone += 1;
            continue;
        }
        if !is_dir {
            continue;
        }
        let keep = installed.get(&name);
        for (entry, path, is_dir) in read(&path)? {
            let stale = if entry.starts_with(".staging-") {
                is_dir
            } else {
                match (keep, semver::Version::parse(&entry)) {
                    (Some(keep), Ok(v)) => is_dir && !keep.contains(&v),
                    _ => false,
                }
            };
            if stale {
                remove(&path, is_dir)?;
                gone += 1;
            }
        }
    }
    Ok(gone)
}

/// Versions checked against their descriptor and recorded in memory; the
/// workdir is a made-up path. For the simulator, whose processes read no
/// files.
#[derive(Debug, Clone, Default)]
pub struct MemInstaller {
    installed: Arc<Mutex<BTreeSet<(String, semver::Version)>>>,
}

impl MemInstaller {
    /// An empty one.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether a version is installed.
    pub fn contains(&self, name: &str, version: &semver::Version) -> bool {
        self.lock().contains(&(name.to_string(), version.clone()))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeSet<(String, semver::Version)>> {
        p2p_core::sync::lock(&self.installed)
    }
}

#[async_trait]
impl Installer for MemInstaller {
    async fn install(&self, d: &Descriptor, chunks: &ChunkStore) -> Result<PathBuf> {
        chunks.check_release(d).await?;
        let m = &d.manifest;
        self.lock().insert((m.name.clone(), m.version.clone()));
        Ok(self.workdir(&m.name, &m.version))
    }

    fn workdir(&self, name: &str, version: &semver::Version) -> PathBuf {
        PathBuf::from(format!("/sim/versions/{name}/{version}"))
    }

    async fn uninstall(&self, name: &str, version: &semver::Version) -> Result<()> {
        self.lock().remove(&(name.to_string(), version.clone()));
        Ok(())
    }
}

/// Chunks handed over a channel, each given to the unpacking as it came.
struct ChunkFeed {
    rx: tokio::sync::mpsc::Receiver<std::io::Result<Vec<u8>>>,
}

impl ChunkSource for ChunkFeed {
    fn next_chunk(&mut self, _len: usize, buf: &mut Vec<u8>) -> std::io::Result<()> {
        match self.rx.blocking_recv() {
            Some(chunk) => {
                *buf = chunk?;
                Ok(())
            }
            None => Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the chunks ended before the archive",
            )),
        }
    }
}
