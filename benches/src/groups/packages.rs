//! Group `packages`: building and verifying packages against plain
//! SHA-256 of the same bytes, measured in the same run.
//!
//! - `package_build`: a 512 MiB directory (8 files of incompressible
//!   bytes) packed, compressed and hashed (`p2p_deploy::build`), against
//!   reading and SHA-256 hashing the same files. Target at least 0.8.
//! - `package_verify`: checking every archive byte against the descriptor
//!   (`PackageFile::check_archive`: the total hash and every chunk hash),
//!   against reading and SHA-256 hashing the archive. Target at least 0.8.

#![allow(clippy::disallowed_methods)] // benchmarks measure wall time

use std::io::Read;
use std::time::Instant;

use p2p_core::SystemClock;
use p2p_deploy::{BuildOptions, PackageFile, build};
use rand::{Rng, SeedableRng};
use sha2::{Digest, Sha256};

use crate::Figure;

const FILES: usize = 8;
const FILE_MIB: usize = 64;

fn mib_s(bytes: u64, secs: f64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0) / secs.max(1e-9)
}

fn sha_files(paths: &[std::path::PathBuf]) -> (u64, f64) {
    let started = Instant::now();
    let mut total = 0u64;
    let mut buf = vec![0u8; 1 << 20];
    for p in paths {
        let mut f = std::fs::File::open(p).expect("open");
        let mut h = Sha256::new();
        loop {
            let n = f.read(&mut buf).expect("read");
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
            total += n as u64;
        }
        std::hint::black_box(h.finalize());
    }
    (total, started.elapsed().as_secs_f64())
}

/// Runs the group.
pub fn run() -> Vec<Figure> {
    let t = tempfile::tempdir().expect("temp dir");
    let dir = t.path().join("app");
    std::fs::create_dir_all(dir.join("data")).expect("mkdir");
    std::fs::write(
        dir.join("p2p.toml"),
        "name = \"bench\"\nversion = \"1.0.0\"\nentrypoint = \"run\"\n",
    )
    .expect("manifest");
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(512);
    let mut files = Vec::new();
    let mut buf = vec![0u8; FILE_MIB << 20];
    for i in 0..FILES {
        rng.fill_bytes(&mut buf);
        let p = dir.join(format!("data/blob-{i}"));
        std::fs::write(&p, &buf).expect("write data");
        files.push(p);
    }
    drop(buf);
    // Warm the page cache for both runs alike.
    let _ = sha_files(&files);

    let (bytes, sha_secs) = sha_files(&files);
    let out = t.path().join("bench.p2p");
    let started = Instant::now();
    let d = build(&dir, &out, &SystemClock, BuildOptions::default()).expect("build");
    let build_secs = started.elapsed().as_secs_f64();

    let pkg = PackageFile::open(&out).expect("open package");
    let (_, _) = sha_files(std::slice::from_ref(&out));
    let started = Instant::now();
    pkg.check_archive().expect("verify");
    let verify_secs = started.elapsed().as_secs_f64();
    let (abytes, asha_secs) = sha_files(std::slice::from_ref(&out));

    vec![
        Figure::new(
            "packages",
            "package_build",
            mib_s(bytes, build_secs),
            "MiB/s",
        )
        .target(">= 0.8 x plain SHA-256")
        .baseline(mib_s(bytes, sha_secs), "MiB/s plain SHA-256 of the files"),
        Figure::new(
            "packages",
            "package_verify",
            mib_s(d.archive_size, verify_secs),
            "MiB/s",
        )
        .target(">= 0.8 x plain SHA-256")
        .baseline(
            mib_s(abytes, asha_secs),
            "MiB/s plain SHA-256 of the package file",
        ),
    ]
}
