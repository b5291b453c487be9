//! Signed releases for simulated fleets: random bytes standing in for a
//! package, or a real directory packaged as `p2pctl package` does.

use std::path::Path;
use std::sync::Arc;

use p2p_core::{Clock, Ed25519Signer, Signer, Timestamp};
use p2p_deploy::{BuildOptions, Descriptor, Manifest, PackageFile, Release, build};
use sha2::{Digest, Sha256};

/// A release of random bytes: what a simulated fleet needs when the
/// contents do not matter. Simulated agents install with
/// [`MemInstaller`](p2p_deploy::MemInstaller), which checks every chunk
/// against the signed descriptor but never unpacks, so the bytes need not
/// be an archive; simulated processes follow
/// [`Script`](p2p_sim::Script)s, not the entrypoint.
///
/// ```
/// use p2p_core::Ed25519Signer;
/// use p2p_testkit::RandomRelease;
///
/// let signer = Ed25519Signer::from_seed(&[1; 32]);
/// let web = RandomRelease::new("web", "1.2.0", 300_000)
///     .manifest("[health]\nhttp = \"http://127.0.0.1:8080/health\"\ngate = 3")
///     .sign(&signer);
/// assert_eq!(web.descriptor.chunks.len(), 5); // 64 KiB chunks
/// ```
#[derive(Debug, Clone)]
pub struct RandomRelease {
    name: String,
    version: String,
    size: usize,
    chunk_size: u32,
    manifest: String,
    seed: Option<u64>,
    changed: Option<(f64, u64)>,
}

/// The chunk size of a [`RandomRelease`] unless set: small, so that even a
/// small release has several chunks for the swarm to spread.
pub const RANDOM_CHUNK_SIZE: u32 = 64 * 1024;

impl RandomRelease {
    /// `size` random bytes as version `version` of app `name`, in chunks
    /// of [`RANDOM_CHUNK_SIZE`], with a manifest that names `run` as the
    /// entrypoint. The bytes are drawn from a seed made of the name, the
    /// version and the size: the same release every time, and no chunk in
    /// common between two versions.
    pub fn new(name: &str, version: &str, size: usize) -> Self {
        RandomRelease {
            name: name.to_string(),
            version: version.to_string(),
            size,
            chunk_size: RANDOM_CHUNK_SIZE,
            manifest: String::new(),
            seed: None,
            changed: None,
        }
    }

    /// Cut into chunks of `bytes`.
    pub fn chunk_size(mut self, bytes: u32) -> Self {
        self.chunk_size = bytes;
        self
    }

    /// Appends `toml` to the manifest (`p2p.toml`): a `[health]` table,
    /// `keep_versions`, `args`, ...
    pub fn manifest(mut self, toml: &str) -> Self {
        self.manifest.push('\n');
        self.manifest.push_str(toml);
        self
    }

    /// Draws the bytes from `seed` instead: releases with the same seed and
    /// size have the same bytes, so their chunks are shared.
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    /// Redraws about `fraction` of the chunks (chosen by `salt`, spread
    /// over the release) from other random bytes: with the same
    /// [`seed`](Self::seed) as an earlier release, a new version that
    /// shares all but those chunks with it, as a delta release would.
    pub fn changed(mut self, fraction: f64, salt: u64) -> Self {
        self.changed = Some((fraction, salt));
        self
    }

    /// The release, signed by `signer`.
    ///
    /// # Panics
    /// When the manifest does not parse (the name, the version or the
    /// appended TOML is not valid), or the chunk size is 0.
    pub fn sign(&self, signer: &Ed25519Signer) -> Arc<Release> {
        use rand::{RngExt, SeedableRng};
        let seed = self.seed.unwrap_or_else(|| {
            let h = Sha256::new()
                .chain_update(self.name.as_bytes())
                .chain_update([0])
                .chain_update(self.version.as_bytes())
                .chain_update(self.size.to_le_bytes())
                .finalize();
            let mut s = [0u8; 8];
            s.copy_from_slice(&h[..8]);
            u64::from_le_bytes(s)
        });
        let mut bytes = vec![0u8; self.size];
        rand_chacha::ChaCha8Rng::seed_from_u64(seed).fill(&mut bytes[..]);
        if let Some((fraction, salt)) = self.changed {
            let piece = self.chunk_size as usize;
            let mut other = rand_chacha::ChaCha8Rng::seed_from_u64(salt ^ seed.rotate_left(17));
            let n = self.size.div_ceil(piece);
            // Every k-th piece, from an offset the salt picks.
            let k = ((1.0 / fraction.clamp(1e-9, 1.0)).round() as usize).max(1);
            let first = (salt as usize) % k;
            for i in (first..n).step_by(k) {
                let end = ((i + 1) * piece).min(self.size);
                other.fill(&mut bytes[i * piece..end]);
            }
        }
        let text = format!(
            "name = \"{}\"\nversion = \"{}\"\nentrypoint = \"run\"\n{}",
            self.name, self.version, self.manifest
        );
        let manifest = Manifest::parse(&text)
            .unwrap_or_else(|e| panic!("the manifest of a random release: {e}\n{text}"));
        // Each piece is one zstd frame, as a package's chunks are (random
        // bytes stay about their size). Compressing in memory does not fail.
        let (archive, chunks) =
            p2p_deploy::package::frame_pieces(&bytes, self.chunk_size as usize, 1)
                .unwrap_or_else(|e| panic!("compressing a random release: {e}"));
        let descriptor = Descriptor::new(manifest, chunks, Timestamp(0));
        // Ed25519 signing is computation only: nothing here waits on I/O
        // or a timer, so it runs to completion in place.
        let sig = futures::executor::block_on(signer.sign(&descriptor.signing_message()))
            .unwrap_or_else(|e| panic!("signing a random release: {e}"));
        let release = Release::from_parts(descriptor, vec![sig], archive)
            .unwrap_or_else(|e| panic!("a random release: {e}"));
        Arc::new(release)
    }
}

/// Packages the directory `dir` (which holds a `p2p.toml`) into the
/// package file `out` as `p2pctl package` does, signs it with `signer` as
/// `p2pctl sign` does, and returns it as a release held in memory (the
/// simulated controller serves it from there; `out` may be removed). The
/// package's creation time comes from `clock`: pass the network's
/// [`SimNet::clock`](p2p_sim::SimNet::clock) for a release that is the
/// same on every run.
///
/// # Errors
/// The manifest is missing or invalid, a file cannot be read, or `out`
/// cannot be written.
pub async fn package(
    dir: &Path,
    out: &Path,
    signer: &Ed25519Signer,
    clock: &dyn Clock,
    opts: BuildOptions,
) -> p2p_core::Result<Arc<Release>> {
    build(dir, out, clock, opts)?;
    PackageFile::open(out)?.sign(signer).await?;
    let pkg = PackageFile::open(out)?;
    let mut archive = Vec::new();
    std::io::Read::read_to_end(&mut pkg.archive_reader()?, &mut archive)
        .map_err(|e| p2p_core::Error::io(format!("reading {}", out.display()), e))?;
    Ok(Arc::new(Release::from_parts(
        pkg.descriptor,
        pkg.signatures,
        archive,
    )?))
}

/// `n` incompressible bytes, the same for the same `seed`: file contents
/// for packages whose chunks must not compress.
pub fn noise(n: usize, seed: u64) -> Vec<u8> {
    use rand::{RngExt, SeedableRng};
    let mut v = vec![0u8; n];
    rand_chacha::ChaCha8Rng::seed_from_u64(seed).fill(&mut v[..]);
    v
}

/// `n` bytes of text from a small vocabulary (with numbers), the same for
/// the same `seed`: zstd at level 3 takes it to about a quarter.
pub fn text(n: usize, seed: u64) -> Vec<u8> {
    const WORDS: &[&str] = &[
        "deploy", "node", "chunk", "swarm", "release", "health", "gate", "rollback", "fleet",
        "signed", "package", "version", "agent", "peer", "relay", "site", "label", "config",
        "listen", "address", "timeout", "retry", "error", "warning", "info", "debug",
    ];
    let r = noise(n / 3 + 16, seed);
    let mut out = Vec::with_capacity(n + 32);
    for pair in r.chunks(2) {
        out.extend_from_slice(WORDS[pair[0] as usize % WORDS.len()].as_bytes());
        if pair.len() > 1 && pair[1] % 5 == 0 {
            out.extend_from_slice(format!("={}", pair[1]).as_bytes());
        }
        out.push(if pair[0] % 13 == 0 { b'\n' } else { b' ' });
        if out.len() >= n {
            break;
        }
    }
    out.truncate(n);
    out
}
