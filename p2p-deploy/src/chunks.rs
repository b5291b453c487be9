//! The chunk store: release chunks on a p2p-core [`Storage`], content
//! addressed, verified on the way in, kept while a release refers to them.
//!
//! Keys: `chunks/<sha256 hex>` holds a chunk, `releases/<package id hex>`
//! the descriptor of a release this node keeps and `signatures/<id>` the
//! signatures it came with. A chunk is referenced by
//! every kept release that lists its hash; [`ChunkStore::collect`] deletes
//! the rest (mark and sweep over the kept descriptors, so a crash between
//! steps can never leave a count that is wrong). A release being received
//! resumes from the chunks already present: [`ChunkStore::missing`].
//!
//! ```
//! # use p2p_deploy::chunks::ChunkStore;
//! # use p2p_core::MemStorage;
//! # use std::sync::Arc;
//! # async fn demo(d: p2p_deploy::Descriptor, chunk0: Vec<u8>) -> p2p_core::Result<()> {
//! let store = ChunkStore::new(Arc::new(MemStorage::new()));
//! store.add_release(&d).await?;
//! store.put(&d, 0, &chunk0).await?; // refused unless it hashes right
//! println!("still to fetch: {:?}", store.missing(&d).await?);
//! # Ok(()) }
//! ```

use std::collections::BTreeSet;
use std::io::Write;
use std::sync::Arc;

use p2p_core::{Error, Result, Signature, Storage};
use sha2::{Digest, Sha256};

use crate::package::FormatError;
use crate::package::{Descriptor, PackageId};

/// Why a chunk was not stored. The swarm scores its sender by the kind:
/// a chunk out of range or corrupt is the sender's fault, a storage
/// failure is the node's own.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ChunkError {
    /// The release has no chunk with that index.
    #[error("chunk {index} is out of range: the release has {chunks} chunks")]
    OutOfRange {
        /// The index asked for.
        index: usize,
        /// Chunks in the release.
        chunks: usize,
    },
    /// The bytes do not match the chunk's length and SHA-256 in the
    /// descriptor.
    #[error("chunk {index} does not match its hash")]
    Corrupt {
        /// The chunk.
        index: usize,
    },
    /// The storage failed (a full disk, say).
    #[error(transparent)]
    Store(#[from] Error),
}

impl From<ChunkError> for Error {
    fn from(e: ChunkError) -> Self {
        match e {
            ChunkError::OutOfRange { .. } => Error::invalid("chunk index", e.to_string()),
            ChunkError::Corrupt { .. } => Error::protocol(e.to_string()),
            ChunkError::Store(e) => e,
        }
    }
}

/// Chunks and kept releases on a [`Storage`].
#[derive(Clone)]
pub struct ChunkStore {
    storage: Arc<dyn Storage>,
    /// Writers (adding a release, storing a chunk) share it; a collection
    /// takes it alone, so it never deletes a chunk stored for a release
    /// it did not see.
    sweep: Arc<tokio::sync::RwLock<()>>,
}

fn chunk_key(hash: &[u8; 32]) -> String {
    format!("chunks/{}", hex::encode(hash))
}

fn release_key(id: &PackageId) -> String {
    format!("releases/{id}")
}

fn signatures_key(id: &PackageId) -> String {
    format!("signatures/{id}")
}

/// The length of chunk `index` of `d`.
pub fn chunk_len(d: &Descriptor, index: usize) -> u64 {
    let cs = u64::from(d.chunk_size);
    let start = index as u64 * cs;
    d.archive_size.saturating_sub(start).min(cs)
}

impl ChunkStore {
    /// A store on `storage`.
    pub fn new(storage: Arc<dyn Storage>) -> Self {
        ChunkStore {
            storage,
            sweep: Arc::new(tokio::sync::RwLock::new(())),
        }
    }

    /// Keeps `d`: its chunks are referenced until [`remove_release`](Self::remove_release).
    pub async fn add_release(&self, d: &Descriptor) -> Result<PackageId> {
        let id = d.id();
        let _w = self.sweep.read().await;
        self.storage.put(&release_key(&id), &d.to_bytes()).await?;
        Ok(id)
    }

    /// Stops keeping release `id` (its chunks go at the next collect).
    pub async fn remove_release(&self, id: &PackageId) -> Result<bool> {
        let removed = self.storage.delete(&release_key(id)).await?;
        self.storage.delete(&signatures_key(id)).await?;
        Ok(removed)
    }

    /// Keeps `signatures` with release `id` (added to those kept, each
    /// key once), so that peers fetching the release from this node can
    /// check it against their own trust store.
    pub async fn add_signatures(&self, id: &PackageId, signatures: &[Signature]) -> Result<()> {
        let mut all = self.signatures(id).await?;
        for s in signatures {
            if !all.iter().any(|k| k.key == s.key) {
                all.push(s.clone());
            }
        }
        let bytes = postcard::to_allocvec(&all)
            .map_err(|e| Error::protocol(format!("encoding signatures: {e}")))?;
        self.storage.put(&signatures_key(id), &bytes).await
    }

    /// The signatures kept with release `id` (none if there are none).
    pub async fn signatures(&self, id: &PackageId) -> Result<Vec<Signature>> {
        match self.storage.get(&signatures_key(id)).await? {
            Some(bytes) => postcard::from_bytes(&bytes).map_err(|e| {
                Error::protocol(format!(
                    "stored signatures of release {id} are corrupt: {e}"
                ))
            }),
            None => Ok(Vec::new()),
        }
    }

    /// Release `id`, if kept.
    pub async fn release(&self, id: &PackageId) -> Result<Option<Descriptor>> {
        match self.storage.get(&release_key(id)).await? {
            Some(bytes) => Descriptor::from_bytes(&bytes)
                .map(Some)
                .map_err(|e| Error::protocol(format!("stored release {id} is corrupt: {e}"))),
            None => Ok(None),
        }
    }

    /// The releases kept. A stored descriptor that does not decode is
    /// skipped with a warning (and left where it is): one damaged record
    /// must not hide every other release from the catalog, or stop an
    /// agent from resuming the transfers it had under way.
    pub async fn releases(&self) -> Result<Vec<Descriptor>> {
        let mut out = Vec::new();
        for (key, d) in self.stored_releases().await? {
            match d {
                Ok(d) => out.push(d),
                Err(e) => tracing::warn!(%key, error = %e, "a stored release is corrupt; skipped"),
            }
        }
        Ok(out)
    }

    /// Every stored descriptor record with its key, decoded or not.
    async fn stored_releases(
        &self,
    ) -> Result<Vec<(String, std::result::Result<Descriptor, FormatError>)>> {
        let mut out = Vec::new();
        for key in self.storage.list("releases/").await? {
            if let Some(bytes) = self.storage.get(&key).await? {
                out.push((key, Descriptor::from_bytes(&bytes)));
            }
        }
        Ok(out)
    }

    /// Stores chunk `index` of `d` after checking its length and hash; a
    /// chunk that does not match is refused with [`ChunkError::Corrupt`]
    /// and nothing is stored.
    pub async fn put(
        &self,
        d: &Descriptor,
        index: usize,
        bytes: &[u8],
    ) -> std::result::Result<(), ChunkError> {
        let want = d.chunks.get(index).ok_or(ChunkError::OutOfRange {
            index,
            chunks: d.chunks.len(),
        })?;
        let hash: [u8; 32] = Sha256::digest(bytes).into();
        if bytes.len() as u64 != chunk_len(d, index) || &hash != want {
            return Err(ChunkError::Corrupt { index });
        }
        let _w = self.sweep.read().await;
        Ok(self.storage.put(&chunk_key(want), bytes).await?)
    }

    /// Chunk `index` of `d`, if present (checked again on the way out, so
    /// a chunk damaged on disk is never served).
    pub async fn get(&self, d: &Descriptor, index: usize) -> Result<Option<Vec<u8>>> {
        let Some(want) = d.chunks.get(index) else {
            return Ok(None);
        };
        match self.storage.get(&chunk_key(want)).await? {
            Some(bytes) if Sha256::digest(&bytes).as_slice() == want => Ok(Some(bytes)),
            Some(_) => {
                tracing::warn!(index, "a stored chunk is damaged; dropping it");
                self.storage.delete(&chunk_key(want)).await?;
                Ok(None)
            }
            None => Ok(None),
        }
    }

    /// The keys of every chunk stored.
    async fn stored_keys(&self) -> Result<BTreeSet<String>> {
        Ok(self.storage.list("chunks/").await?.into_iter().collect())
    }

    /// For each of `releases`, how many of its chunks are stored (one
    /// listing of the store for all of them).
    pub async fn held_counts(&self, releases: &[Descriptor]) -> Result<Vec<usize>> {
        let have = self.stored_keys().await?;
        Ok(releases
            .iter()
            .map(|d| {
                d.chunks
                    .iter()
                    .filter(|h| have.contains(&chunk_key(h)))
                    .count()
            })
            .collect())
    }

    /// Indexes of the chunks of `d` not yet stored.
    pub async fn missing(&self, d: &Descriptor) -> Result<Vec<usize>> {
        let have = self.stored_keys().await?;
        Ok((0..d.chunks.len())
            .filter(|i| !have.contains(&chunk_key(&d.chunks[*i])))
            .collect())
    }

    /// Writes the whole archive of `d` to `out`, checking its SHA-256.
    pub async fn assemble(&self, d: &Descriptor, out: &mut impl Write) -> Result<()> {
        let mut total = Sha256::new();
        for i in 0..d.chunks.len() {
            let bytes = self.get(d, i).await?.ok_or_else(|| Error::NotFound {
                what: format!("chunk {i} of {} {}", d.manifest.name, d.manifest.version),
            })?;
            total.update(&bytes);
            out.write_all(&bytes)
                .map_err(|e| Error::io("writing the archive", e))?;
        }
        if total.finalize().as_slice() != d.archive_sha256 {
            return Err(FormatError::ArchiveHash.into());
        }
        Ok(())
    }

    /// Deletes every chunk no kept release refers to; returns how many.
    pub async fn collect(&self) -> Result<usize> {
        let _alone = self.sweep.write().await;
        let mut live = BTreeSet::new();
        // Every release's chunks must be known before any is deleted.
        for (key, d) in self.stored_releases().await? {
            let d = d.map_err(|e| {
                Error::protocol(format!(
                    "stored release {key} is corrupt ({e}); no chunk collected"
                ))
            })?;
            live.extend(d.chunks.iter().map(chunk_key));
        }
        let mut gone = 0;
        for key in self.storage.list("chunks/").await? {
            if !live.contains(&key) && self.storage.delete(&key).await? {
                gone += 1;
            }
        }
        Ok(gone)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use p2p_core::{MemStorage, Timestamp};

    use super::*;
    use crate::Manifest;

    fn descriptor(version: &str, bytes: &[u8]) -> Descriptor {
        let h = crate::package::hash_archive(bytes, 4096).unwrap();
        Descriptor {
            manifest: Manifest::parse(&format!(
                "name = \"app\"\nversion = \"{version}\"\nentrypoint = \"run\"\n"
            ))
            .unwrap(),
            archive_size: h.len,
            archive_sha256: h.sha256,
            chunk_size: 4096,
            chunks: h.chunks,
            created_at: Timestamp(0),
        }
    }

    /// One damaged descriptor used to fail `releases()`, and with it the
    /// agent's whole catalog.
    #[tokio::test]
    async fn a_corrupt_descriptor_hides_only_itself_and_stops_collection() {
        let storage = Arc::new(MemStorage::new());
        let store = ChunkStore::new(storage.clone());
        let (a, b) = (
            descriptor("1.0.0", b"first"),
            descriptor("2.0.0", b"second"),
        );
        store.add_release(&a).await.unwrap();
        store.add_release(&b).await.unwrap();
        store.put(&a, 0, b"first").await.unwrap();
        store.put(&b, 0, b"second").await.unwrap();
        storage
            .put(&release_key(&b.id()), b"not a descriptor")
            .await
            .unwrap();
        assert_eq!(store.releases().await.unwrap(), vec![a.clone()]);
        // The damaged record stays; nothing is collected while it is there.
        assert!(storage.get(&release_key(&b.id())).await.unwrap().is_some());
        let e = store.collect().await.unwrap_err().to_string();
        assert!(e.contains("corrupt"), "{e}");
        assert_eq!(store.get(&a, 0).await.unwrap().unwrap(), b"first");
        let b_chunk = storage.get(&chunk_key(&b.chunks[0])).await.unwrap();
        assert_eq!(b_chunk.as_deref(), Some(&b"second"[..]));
    }
}
