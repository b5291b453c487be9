//! Where installed versions live: the [`Installer`] trait, with
//! [`DirInstaller`] (unpacked on disk, for real nodes) and
//! [`MemInstaller`] (checked and recorded in memory, for the simulator,
//! whose processes need no files).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use p2p_core::{Error, Result};

use crate::chunks::ChunkStore;
use crate::package::Descriptor;
use crate::unpack::{UnpackLimits, unpack, version_dir};

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
        let mut tmp = tempfile::Builder::new()
            .prefix(".incoming-")
            .tempfile_in(&self.root)
            .map_err(|e| Error::io(format!("creating a file in {}", self.root.display()), e))?;
        chunks.assemble(d, tmp.as_file_mut()).await?;
        let target = version_dir(&self.root, &m.name, &m.version)?;
        if target.exists() {
            // Left by an install that was never recorded: replace it.
            tracing::info!(dir = %target.display(), "replacing an unrecorded install");
            std::fs::remove_dir_all(&target)
                .map_err(|e| Error::io(format!("removing {}", target.display()), e))?;
        }
        let (root, name, version, limits) = (
            self.root.clone(),
            m.name.clone(),
            m.version.clone(),
            self.limits,
        );
        tokio::task::spawn_blocking(move || {
            use std::io::Seek;
            let mut f = tmp
                .reopen()
                .map_err(|e| Error::io("reading the archive", e))?;
            f.seek(std::io::SeekFrom::Start(0))
                .map_err(|e| Error::io("reading the archive", e))?;
            let dir = unpack(std::io::BufReader::new(f), &root, &name, &version, limits);
            drop(tmp);
            dir
        })
        .await
        .map_err(|e| Error::io("unpacking", std::io::Error::other(e)))?
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
        self.installed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[async_trait]
impl Installer for MemInstaller {
    async fn install(&self, d: &Descriptor, chunks: &ChunkStore) -> Result<PathBuf> {
        chunks.assemble(d, &mut std::io::sink()).await?;
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
