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

use std::collections::{BTreeMap, BTreeSet};
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
///
/// Every chunk is checked against its SHA-256 on the way in
/// ([`put`](Self::put)) and checked again on every read for an install
/// ([`get`](Self::get)). Serving a chunk to a peer ([`serve`](Self::serve))
/// skips the second check for a chunk this process checked in the last
/// [`SERVE_UNHASHED_FOR`]; why that is safe is said there.
///
/// # Checks on the way out
///
/// A chunk this process has not checked yet (stored before it started)
/// is read back against its SHA-256. One it checked is read back against
/// a MAC of the bytes that passed: their keyed BLAKE3 hash, under a key
/// drawn from the system's random source when the store was made and
/// kept in memory only, never written anywhere. Bytes changed on disk in
/// any way, by the disk or by anyone who can write to the node's data
/// directory, fail it as surely as they fail the SHA-256: making other
/// bytes with the same MAC needs the key. It costs about a quarter of a
/// SHA-256 (0.21 against 0.77 ms per MiB on the machines of the
/// benchmarks), and the MAC is taken on the way in, while the bytes are
/// still in the cache; the install's read-back check was the largest
/// cost of a node's that the floor of its CPU per byte does not have.
///
/// # Durability
///
/// Chunks are stored without waiting for the disk
/// ([`Storage::put_unsynced`]): a write and a rename, no sync. A process
/// that dies leaves every chunk whole or absent, but a power loss (or a
/// kernel crash) may leave chunks stored just before it missing, cut short
/// or damaged. That costs nothing but a fetch: a chunk stored by an
/// earlier process is hashed before this one uses it (by
/// [`to_fetch`](Self::to_fetch) when a transfer starts, by
/// [`serve`](Self::serve) and [`get`](Self::get)), and one that fails is
/// dropped and fetched again. What must survive is synced as before: the
/// descriptors and signatures of kept releases, and the files an install
/// unpacks. A sync per chunk (two, with the directory's) was most of the
/// time a node spent storing a release on an SD card, and 13% of its CPU
/// time here.
#[derive(Clone)]
pub struct ChunkStore {
    storage: Arc<dyn Storage>,
    /// Writers (adding a release, storing a chunk) share it; a collection
    /// takes it alone, so it never deletes a chunk stored for a release
    /// it did not see.
    sweep: Arc<tokio::sync::RwLock<()>>,
    /// Chunks this process checked against their hash, and when: stored
    /// by [`put`](Self::put), or read whole by [`get`](Self::get). Shared
    /// by clones.
    checked: Arc<std::sync::Mutex<BTreeMap<[u8; 32], Checked>>>,
    /// The key of the MACs in `checked`: drawn at random when the store
    /// is made, kept in memory only (`None` if the system had no random
    /// bytes to give: then every read is checked by its SHA-256).
    mac_key: Option<[u8; 32]>,
    /// Descriptors of kept releases as [`release_to_serve`](Self::release_to_serve)
    /// read them, by id, and how many releases were removed so far (a read
    /// that a removal overtook is not kept).
    served: Arc<std::sync::Mutex<Served>>,
}

/// A chunk this process checked against its SHA-256.
#[derive(Clone, Copy)]
struct Checked {
    /// When.
    at: tokio::time::Instant,
    /// The keyed BLAKE3 hash of the bytes that passed, under the store's
    /// `mac_key`.
    mac: Option<blake3::Hash>,
}

/// Descriptors kept for serving, and how many releases were removed.
#[derive(Default)]
struct Served {
    removals: u64,
    releases: BTreeMap<PackageId, Arc<Descriptor>>,
}

/// How long after this process checked a chunk against its hash it serves
/// the chunk to peers without hashing it again ([`ChunkStore::serve`]):
/// about as long as a rollout passes a chunk on.
pub const SERVE_UNHASHED_FOR: std::time::Duration = std::time::Duration::from_secs(300);

fn chunk_key(hash: &[u8; 32]) -> String {
    format!("chunks/{}", hex::encode(hash))
}

fn release_key(id: &PackageId) -> String {
    format!("releases/{id}")
}

fn signatures_key(id: &PackageId) -> String {
    format!("signatures/{id}")
}

/// The length of chunk `index` of `d` as stored and moved (0 past the
/// end).
pub fn chunk_len(d: &Descriptor, index: usize) -> u64 {
    d.chunks.get(index).map_or(0, |c| u64::from(c.size))
}

impl ChunkStore {
    /// A store on `storage`.
    pub fn new(storage: Arc<dyn Storage>) -> Self {
        let mut key = [0u8; 32];
        let mac_key = match getrandom::fill(&mut key) {
            Ok(()) => Some(key),
            Err(e) => {
                tracing::warn!(error = %e, "no random key for chunk MACs; every chunk read is hashed");
                None
            }
        };
        ChunkStore {
            storage,
            sweep: Arc::new(tokio::sync::RwLock::new(())),
            checked: Arc::default(),
            mac_key,
            served: Arc::default(),
        }
    }

    fn checked(&self) -> std::sync::MutexGuard<'_, BTreeMap<[u8; 32], Checked>> {
        p2p_core::sync::lock(&self.checked)
    }

    /// The MAC of `bytes` under the store's key.
    fn mac_of(&self, bytes: &[u8]) -> Option<blake3::Hash> {
        self.mac_key.map(|k| blake3::keyed_hash(&k, bytes))
    }

    /// Records that chunk `hash`, whose bytes have the MAC `mac`, passed
    /// its SHA-256 check now.
    fn record_checked(&self, hash: [u8; 32], mac: Option<blake3::Hash>) {
        let at = tokio::time::Instant::now();
        self.checked().insert(hash, Checked { at, mac });
    }

    fn served(&self) -> std::sync::MutexGuard<'_, Served> {
        p2p_core::sync::lock(&self.served)
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
        let removed = self.storage.delete(&release_key(id)).await;
        // After the delete: a `release_to_serve` that read the descriptor
        // before it sees the count change and does not keep it.
        {
            let mut served = self.served();
            served.removals += 1;
            served.releases.remove(id);
        }
        let removed = removed?;
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

    /// Release `id`, if kept, as [`release`](Self::release) reads it, kept
    /// in memory after the first read until the release is removed: what
    /// serving chunks to peers looks up on every request.
    pub async fn release_to_serve(&self, id: &PackageId) -> Result<Option<Arc<Descriptor>>> {
        let removals = {
            let served = self.served();
            if let Some(d) = served.releases.get(id) {
                return Ok(Some(d.clone()));
            }
            served.removals
        };
        let Some(d) = self.release(id).await? else {
            return Ok(None);
        };
        let d = Arc::new(d);
        let mut served = self.served();
        if served.removals == removals {
            served.releases.insert(*id, d.clone());
        }
        Ok(Some(d))
    }

    /// The manifest of release `id`, if kept: from its descriptor, or from
    /// a format-1 descriptor stored before an upgrade (such a release is
    /// installed and runs, but is never served or fetched again).
    pub async fn manifest(&self, id: &PackageId) -> Result<Option<crate::Manifest>> {
        let Some(bytes) = self.storage.get(&release_key(id)).await? else {
            return Ok(None);
        };
        match Descriptor::from_bytes(&bytes) {
            Ok(d) => Ok(Some(d.manifest)),
            Err(e) => match crate::package::legacy_v1(&bytes) {
                Some((m, _)) => Ok(Some(m)),
                None => Err(Error::protocol(format!(
                    "stored release {id} is corrupt: {e}"
                ))),
            },
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
        self.put_bytes(d, index, bytes::Bytes::copy_from_slice(bytes))
            .await
    }

    /// [`put`](Self::put) with bytes the storage takes as they are (a
    /// chunk received into a frame buffer is written from there, not
    /// copied first: [`Storage::put_bytes`]).
    pub async fn put_bytes(
        &self,
        d: &Descriptor,
        index: usize,
        bytes: bytes::Bytes,
    ) -> std::result::Result<(), ChunkError> {
        let hash = Self::check_in(d, index, &bytes)?;
        let mac = self.mac_of(&bytes);
        let _w = self.sweep.read().await;
        // Not synced: see "Durability" in the type's docs.
        self.storage.put_unsynced(&chunk_key(&hash), bytes).await?;
        self.record_checked(hash, mac);
        Ok(())
    }

    /// Checks `bytes` against chunk `index` of `d` (length and SHA-256);
    /// its hash if they match.
    fn check_in(
        d: &Descriptor,
        index: usize,
        bytes: &[u8],
    ) -> std::result::Result<[u8; 32], ChunkError> {
        let want = d.chunks.get(index).ok_or(ChunkError::OutOfRange {
            index,
            chunks: d.chunks.len(),
        })?;
        if bytes.len() != want.size as usize || Sha256::digest(bytes).as_slice() != want.sha256 {
            return Err(ChunkError::Corrupt { index });
        }
        Ok(want.sha256)
    }

    /// Chunk `index` of `d`, if present (checked again on the way out, so
    /// a chunk damaged on disk is never served). A chunk held under the
    /// same hash with another length than `d` gives is an error naming
    /// it: `d` lists a hash it cannot have.
    pub async fn get(&self, d: &Descriptor, index: usize) -> Result<Option<Vec<u8>>> {
        let Some(want) = d.chunks.get(index) else {
            return Ok(None);
        };
        let read = self.storage.get(&chunk_key(&want.sha256)).await?;
        self.check_read(d, index, read).await
    }

    /// What [`get`](Self::get) makes of `read`, the stored bytes of chunk
    /// `index` of `d` (which has it): checked against its hash and size,
    /// recorded as checked, or dropped from the store if damaged.
    async fn check_read(
        &self,
        d: &Descriptor,
        index: usize,
        read: Option<Vec<u8>>,
    ) -> Result<Option<Vec<u8>>> {
        let want = &d.chunks[index];
        // The bytes this process checked, if it did: then their MAC says
        // whether these are the same bytes, at a quarter of the cost of
        // SHA-256 (see "Checks on the way out" in the type's docs).
        let mac = self.checked().get(&want.sha256).and_then(|c| c.mac);
        let passes = |bytes: &[u8]| match (mac, self.mac_key) {
            (Some(mac), Some(key)) => blake3::keyed_hash(&key, bytes) == mac,
            _ => Sha256::digest(bytes).as_slice() == want.sha256,
        };
        match read {
            Some(bytes) if passes(&bytes) => {
                if bytes.len() != want.size as usize {
                    return Err(Error::protocol(format!(
                        "chunk {index} of {} {}: this node holds a chunk with its hash \
                         of {} bytes, the descriptor says {}",
                        d.manifest.name,
                        d.manifest.version,
                        bytes.len(),
                        want.size
                    )));
                }
                let mac = mac.or_else(|| self.mac_of(&bytes));
                self.record_checked(want.sha256, mac);
                Ok(Some(bytes))
            }
            Some(_) => {
                tracing::warn!(index, "a stored chunk is damaged; dropping it");
                self.checked().remove(&want.sha256);
                self.storage.delete(&chunk_key(&want.sha256)).await?;
                Ok(None)
            }
            None => {
                self.checked().remove(&want.sha256);
                Ok(None)
            }
        }
    }

    /// Chunk `index` of `d`, if present, to send to a peer.
    ///
    /// A chunk this process checked in the last [`SERVE_UNHASHED_FOR`]
    /// (it stored it after [`put`](Self::put) hashed it, or read it whole
    /// through [`get`](Self::get)) is read back without hashing it again,
    /// only its length checked. Any other (one stored before a restart,
    /// while the node was down, or checked longer ago, kept for a
    /// rollback or a late node) is read as `get` reads it: hashed, dropped
    /// if damaged, and then trusted for as long again. Skipping the hash
    /// is safe:
    ///
    /// - the store holds nothing that did not pass its hash on the way
    ///   in, and a storage writes each value whole or not at all
    ///   ([`Storage::put`]), so what is read back is what was checked;
    ///   minutes after it was written it is most likely read from the page
    ///   cache, not the disk;
    /// - it could differ only if the disk damaged it silently under a
    ///   running node, or another process wrote into the node's data
    ///   directory (which could as well replace its trust store). Either
    ///   way the peer checks every chunk it receives against the hash in
    ///   its own copy of the signed descriptor, refuses a bad one and gets
    ///   it elsewhere, and this node's own install checks every chunk again
    ///   (its hash, or the MAC of the bytes that passed it: see "Checks on
    ///   the way out") before it writes anything outside the store. The cost of such a
    ///   chunk falls on this node: each peer it sends it to scores it down
    ///   (and bans it for a while after two), which is why the trust lasts
    ///   only [`SERVE_UNHASHED_FOR`].
    ///
    /// Hashing again on every serve was about 30% of a node's hashing in a
    /// rollout where it passed most of what it got on to its peers (the
    /// `agent` benchmark: it passed on 0.84 of the chunks it received).
    pub async fn serve(&self, d: &Descriptor, index: usize) -> Result<Option<Vec<u8>>> {
        let Some(want) = d.chunks.get(index) else {
            return Ok(None);
        };
        let fresh = self
            .checked()
            .get(&want.sha256)
            .is_some_and(|c| c.at.elapsed() < SERVE_UNHASHED_FOR);
        let read = self.storage.get(&chunk_key(&want.sha256)).await?;
        match read {
            Some(bytes) if fresh && bytes.len() == want.size as usize => Ok(Some(bytes)),
            // Not checked lately, or not what was checked: check it now.
            read => self.check_read(d, index, read).await,
        }
    }

    /// Chunk `index` of `d`, which must be present, checked as
    /// [`get`](Self::get) does and as one zstd frame of the size `d` gives.
    pub async fn get_frame(&self, d: &Descriptor, index: usize) -> Result<Vec<u8>> {
        let name = || format!("{} {}", d.manifest.name, d.manifest.version);
        let bytes = self.get(d, index).await?.ok_or_else(|| Error::NotFound {
            what: format!("chunk {index} of {}", name()),
        })?;
        crate::package::check_frame(index, &bytes, d.chunks[index].raw_size)
            .map_err(|e| Error::protocol(format!("{}: {e}", name())))?;
        Ok(bytes)
    }

    /// Checks that every chunk of `d` is present, matches its hash and
    /// size, and is one zstd frame that says it decompresses to the size
    /// `d` gives: what an install checks before it writes anything
    /// outside the store.
    pub async fn check_release(&self, d: &Descriptor) -> Result<()> {
        for i in 0..d.chunks.len() {
            self.get_frame(d, i).await?;
        }
        Ok(())
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
                    .filter(|c| have.contains(&chunk_key(&c.sha256)))
                    .count()
            })
            .collect())
    }

    /// Bytes of the chunks stored that the kept releases list (each chunk
    /// once, however many releases share it).
    pub async fn stored_bytes(&self) -> Result<u64> {
        let have = self.stored_keys().await?;
        let mut sizes = std::collections::BTreeMap::new();
        for d in self.releases().await? {
            for c in &d.chunks {
                let k = chunk_key(&c.sha256);
                if have.contains(&k) {
                    sizes.insert(k, c.size);
                }
            }
        }
        Ok(sizes.values().map(|s| u64::from(*s)).sum())
    }

    /// Indexes of the chunks of `d` that a transfer must fetch: those not
    /// stored, and those stored before this process started (as a process
    /// it succeeds after a power loss may find them) that no longer match
    /// their hash, which are dropped here. Each chunk it hashes counts as
    /// checked from then on, so a release is read through once per
    /// process at most. See "Durability" in the type's docs.
    pub async fn to_fetch(&self, d: &Descriptor) -> Result<Vec<usize>> {
        let have = self.stored_keys().await?;
        let mut out = Vec::new();
        for (i, c) in d.chunks.iter().enumerate() {
            let key = chunk_key(&c.sha256);
            if !have.contains(&key) {
                out.push(i);
                continue;
            }
            if self.checked().contains_key(&c.sha256) {
                continue;
            }
            let read = self.storage.get(&key).await?;
            if self.check_read(d, i, read).await?.is_none() {
                out.push(i);
            }
        }
        Ok(out)
    }

    /// Indexes of the chunks of `d` not stored (a listing: their contents
    /// are not read; [`to_fetch`](Self::to_fetch) also checks them).
    pub async fn missing(&self, d: &Descriptor) -> Result<Vec<usize>> {
        let have = self.stored_keys().await?;
        Ok((0..d.chunks.len())
            .filter(|i| !have.contains(&chunk_key(&d.chunks[*i].sha256)))
            .collect())
    }

    /// Writes the whole archive of `d` to `out` (its chunks one after
    /// another), each chunk checked as [`get_frame`](Self::get_frame) does.
    pub async fn assemble(&self, d: &Descriptor, out: &mut impl Write) -> Result<()> {
        for i in 0..d.chunks.len() {
            let bytes = self.get_frame(d, i).await?;
            out.write_all(&bytes)
                .map_err(|e| Error::io("writing the archive", e))?;
        }
        Ok(())
    }

    /// Deletes every chunk no kept release refers to; returns how many.
    pub async fn collect(&self) -> Result<usize> {
        let _alone = self.sweep.write().await;
        let mut live = BTreeSet::new();
        // Every release's chunks must be known before any is deleted.
        for key in self.storage.list("releases/").await? {
            let Some(bytes) = self.storage.get(&key).await? else {
                continue;
            };
            match Descriptor::from_bytes(&bytes) {
                Ok(d) => live.extend(d.chunks.iter().map(|c| chunk_key(&c.sha256))),
                Err(e) => match crate::package::legacy_v1(&bytes) {
                    // Kept from before an upgrade: its chunks stay with it.
                    Some((_, chunks)) => live.extend(chunks.iter().map(chunk_key)),
                    None => {
                        return Err(Error::protocol(format!(
                            "stored release {key} is corrupt ({e}); no chunk collected"
                        )));
                    }
                },
            }
        }
        let mut gone = 0;
        for key in self.storage.list("chunks/").await? {
            if !live.contains(&key) && self.storage.delete(&key).await? {
                gone += 1;
            }
        }
        self.checked().retain(|h, _| live.contains(&chunk_key(h)));
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
        Descriptor::new(
            Manifest::parse(&format!(
                "name = \"app\"\nversion = \"{version}\"\nentrypoint = \"run\"\n"
            ))
            .unwrap(),
            vec![crate::package::ChunkInfo::of(bytes, bytes.len() as u32)],
            Timestamp(0),
        )
    }

    /// A node upgraded from format 1 keeps what it installed then: the
    /// manifest reads, the chunks are kept while the release is, and the
    /// release is left out of the catalog.
    #[tokio::test]
    async fn format_1_releases_stored_before_an_upgrade_stay_usable() {
        #[derive(serde::Serialize)]
        struct V1 {
            manifest: Manifest,
            archive_size: u64,
            archive_sha256: [u8; 32],
            chunk_size: u32,
            chunks: Vec<[u8; 32]>,
            created_at: Timestamp,
        }
        let storage = Arc::new(MemStorage::new());
        let store = ChunkStore::new(storage.clone());
        let old_chunk = b"a chunk of a format-1 archive";
        let hash: [u8; 32] = Sha256::digest(old_chunk).into();
        let m = descriptor("1.0.0", b"x").manifest;
        let v1 = postcard::to_allocvec(&V1 {
            manifest: m.clone(),
            archive_size: old_chunk.len() as u64,
            archive_sha256: hash,
            chunk_size: 256 << 10,
            chunks: vec![hash],
            created_at: Timestamp(0),
        })
        .unwrap();
        let id = PackageId(Sha256::digest(&v1).into());
        storage.put(&release_key(&id), &v1).await.unwrap();
        storage.put(&chunk_key(&hash), old_chunk).await.unwrap();
        storage.put(&chunk_key(&[9; 32]), b"orphan").await.unwrap();
        assert_eq!(store.manifest(&id).await.unwrap(), Some(m));
        assert!(store.releases().await.unwrap().is_empty());
        let e = store.release(&id).await.unwrap_err().to_string();
        assert!(e.contains("format 1"), "{e}");
        assert_eq!(store.collect().await.unwrap(), 1, "only the orphan goes");
        assert!(storage.get(&chunk_key(&hash)).await.unwrap().is_some());
        store.remove_release(&id).await.unwrap();
        assert_eq!(store.collect().await.unwrap(), 1);
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
        let b_chunk = storage.get(&chunk_key(&b.chunks[0].sha256)).await.unwrap();
        assert_eq!(b_chunk.as_deref(), Some(&b"second"[..]));
    }
}
