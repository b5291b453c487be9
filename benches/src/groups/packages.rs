//! Group `packages`: building and verifying packages, each against a
//! baseline measured in the same run.
//!
//! - `package_build_mem`: a 512 MiB directory (8 files of incompressible
//!   bytes) packed, compressed and hashed (`p2p_deploy::build`) into a
//!   package on a memory file system (`/dev/shm`), so the descriptor
//!   pipeline sets the pace, not the disk; against reading and SHA-256
//!   hashing the same files. No target of its own: on two cores it is
//!   bounded by the compression on two cores; the figure tracks it.
//! - `package_build_mem_vs_format1`: the same build against format 1's
//!   pipeline (the same tar stream as one zstd stream, SHA-256 of every
//!   256 KiB chunk and of the whole on a thread of its own) into the same
//!   place. Target at least 0.8.
//! - `package_build_disk`: the same build onto the disk (with the fsync a
//!   package gets before it is renamed into place), against copying the
//!   same files into one file on that disk with an fsync: packaging should
//!   cost about what writing the bytes costs. Target at least 0.8.
//! - `package_verify`: checking every archive byte against the descriptor
//!   (`PackageFile::check_archive`: every chunk's hash and zstd frame
//!   header), against reading and SHA-256 hashing the archive. Target at
//!   least 0.8.
//!
//! Format 2 computes the chunk hashes while it builds (one SHA-256 pass
//! over the compressed chunks, on the compressing threads), so the
//! separate `descriptor_create` figure of format 1 is gone; the `delta`
//! group compares build throughput with format 1's pipeline.

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

fn copy_files(paths: &[std::path::PathBuf], out: &std::path::Path) -> (u64, f64) {
    let started = Instant::now();
    let mut o = std::fs::File::create(out).expect("create copy");
    let mut total = 0u64;
    for p in paths {
        let mut f = std::fs::File::open(p).expect("open");
        total += std::io::copy(&mut f, &mut o).expect("copy");
    }
    o.sync_all().expect("sync copy");
    let secs = started.elapsed().as_secs_f64();
    drop(o);
    std::fs::remove_file(out).expect("remove copy");
    (total, secs)
}

fn timed_build(dir: &std::path::Path, out: &std::path::Path) -> (p2p_deploy::Descriptor, f64) {
    let started = Instant::now();
    let d = build(dir, out, &SystemClock, BuildOptions::default()).expect("build");
    (d, started.elapsed().as_secs_f64())
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
    // A memory file system where there is one, else the disk (and the
    // figure says so).
    let shm = std::path::Path::new("/dev/shm");
    let (mem_out, mem_note) = if shm.is_dir() {
        (
            tempfile::tempdir_in(shm).expect("temp dir in /dev/shm"),
            "into /dev/shm",
        )
    } else {
        (
            tempfile::tempdir().expect("temp dir"),
            "no /dev/shm: onto the disk",
        )
    };
    let (_, mem_secs) = timed_build(&dir, &mem_out.path().join("bench.p2p"));
    std::fs::remove_file(mem_out.path().join("bench.p2p")).expect("remove");
    let started = Instant::now();
    let _ = crate::groups::delta::format1(&dir, &mem_out.path().join("bench.f1"), 3);
    let f1_secs = started.elapsed().as_secs_f64();
    drop(mem_out);

    let out = t.path().join("bench.p2p");
    let (copied, copy_secs) = copy_files(&files, &t.path().join("copy"));
    let (d, build_secs) = timed_build(&dir, &out);

    let pkg = PackageFile::open(&out).expect("open package");
    // Warm the page cache once for the three passes over the package.
    let _ = sha_files(std::slice::from_ref(&out));
    let started = Instant::now();
    pkg.check_archive().expect("verify");
    let verify_secs = started.elapsed().as_secs_f64();
    let (abytes, asha_secs) = sha_files(std::slice::from_ref(&out));

    vec![
        Figure::new(
            "packages",
            "package_build_mem",
            mib_s(bytes, mem_secs),
            "MiB/s",
        )
        .target("none; tracked (2 cores carry two SHA-256 passes and zstd)")
        .baseline(
            mib_s(bytes, sha_secs),
            format!("MiB/s plain SHA-256 of the files; built {mem_note}"),
        ),
        Figure::new(
            "packages",
            "package_build_mem_vs_format1",
            mib_s(bytes, mem_secs),
            "MiB/s",
        )
        .target(">= 0.8 x format 1's build")
        .goal(crate::Goal::RatioAtLeast(0.8))
        .baseline(
            mib_s(bytes, f1_secs),
            format!("MiB/s format 1's pipeline (tar | zstd -3, fixed chunks) {mem_note}"),
        ),
        Figure::new(
            "packages",
            "package_build_disk",
            mib_s(bytes, build_secs),
            "MiB/s",
        )
        .target(">= 0.8 x copying the files to disk")
        .goal(crate::Goal::RatioAtLeast(0.8))
        .baseline(
            mib_s(copied, copy_secs),
            "MiB/s copying the files into one file with fsync",
        ),
        Figure::new(
            "packages",
            "package_verify",
            mib_s(d.archive_size, verify_secs),
            "MiB/s",
        )
        .target(">= 0.8 x plain SHA-256")
        .goal(crate::Goal::RatioAtLeast(0.8))
        .baseline(
            mib_s(abytes, asha_secs),
            "MiB/s plain SHA-256 of the package file",
        ),
    ]
}
