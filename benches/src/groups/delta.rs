//! Group `delta`: what a new version moves to a node that holds the old
//! one, with content-defined chunks (format 2), each figure against a
//! baseline from the same run.
//!
//! The app is 100 files of 1 MiB under `lib/` (even files incompressible,
//! odd files text that zstd shrinks about 4:1), built with the defaults
//! (256 KiB average chunks, zstd level 3). "Moved" is the bytes of the
//! chunks of v2 that v1 does not list (what a node's chunk store reports
//! missing, and all the swarm fetches: `p2p-deploy/tests/delta.rs` checks
//! that end to end) plus v2's descriptor. The baseline is format 1, built
//! in the same run: the same tar stream as one zstd stream at the same
//! level, cut into fixed 256 KiB chunks.
//!
//! - `one file changed`: one incompressible 1 MiB file rewritten. Target:
//!   at most 1.5 MiB plus the descriptor.
//! - `one byte changed`: one byte in the middle of a 50 MiB binary (its own
//!   app; 64 KiB runs of noise and text in turn, so it compresses about as
//!   an executable does; the byte is in a text run, since in a noise run
//!   format 1 changes little too). Target: at most two average chunks.
//! - `file inserted`: a 1 MiB incompressible file added first in archive
//!   order. Target: at most 1.5x its size.
//! - `package size`: the package's archive against `tar | zstd` of the same
//!   tar stream at the same level. Target: at most 1.05x.
//! - `build throughput`: `build` against format 1's pipeline (tar, one zstd
//!   stream, SHA-256 of every 256 KiB chunk and of the whole on a thread of
//!   its own) on the same files, both into a temporary directory. Target
//!   at least 0.8x.
//! - `sim rollout`: on the simulator, 100 targets (100 Mbit/s, 20 ms) that
//!   hold v1 of a 100 MB release get a v2 with 2% of its chunks changed,
//!   against the same fleet getting a v2 that shares nothing (the full
//!   release). Target (ours): at most 0.25x. `DELTA_NODES` and `DELTA_MB`
//!   change the size (`DELTA_NODES=0` leaves this figure out).

#![allow(clippy::disallowed_methods)] // benchmarks measure wall time

use std::collections::HashSet;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use p2p_core::SystemClock;
use p2p_deploy::{BuildOptions, Descriptor, build};
use p2p_testkit::{noise, text};
use sha2::{Digest, Sha256};

use crate::swarm::SwarmScenario;
use crate::{Figure, Goal};

const MIB: u64 = 1 << 20;
const FORMAT1_CHUNK: usize = 256 << 10;

fn write_manifest(dir: &Path, version: &str) {
    std::fs::write(
        dir.join("p2p.toml"),
        format!("name = \"bench\"\nversion = \"{version}\"\nentrypoint = \"lib/f000\"\n"),
    )
    .expect("manifest");
}

/// The 100-file app.
fn app(dir: &Path) {
    std::fs::create_dir_all(dir.join("lib")).expect("mkdir");
    write_manifest(dir, "1.0.0");
    for i in 0..100u64 {
        let body = if i % 2 == 0 {
            noise(MIB as usize, i)
        } else {
            text(MIB as usize, i)
        };
        std::fs::write(dir.join(format!("lib/f{i:03}")), body).expect("write");
    }
}

/// Format 1's chunk hashes and archive size for `dir`: the same tar
/// stream as one zstd stream at `level`, cut into fixed chunks, hashed
/// (each chunk and the whole) on a thread of its own as format 1 did.
pub(crate) fn format1(dir: &Path, out: &Path, level: i32) -> (Vec<[u8; 32]>, u64) {
    struct Hashing {
        file: io::BufWriter<std::fs::File>,
        block: Vec<u8>,
        tx: Option<std::sync::mpsc::SyncSender<Vec<u8>>>,
    }
    impl Write for Hashing {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.file.write_all(buf)?;
            self.block.extend_from_slice(buf);
            if self.block.len() >= MIB as usize {
                let full = std::mem::take(&mut self.block);
                if let Some(tx) = &self.tx {
                    let _ = tx.send(full);
                }
            }
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            self.file.flush()
        }
    }
    let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<u8>>(4);
    let hasher = std::thread::spawn(move || {
        let (mut total, mut chunk, mut in_chunk) = (Sha256::new(), Sha256::new(), 0usize);
        let (mut chunks, mut len) = (Vec::new(), 0u64);
        for mut b in rx {
            total.update(&b);
            len += b.len() as u64;
            let mut rest = &mut b[..];
            while !rest.is_empty() {
                let take = (FORMAT1_CHUNK - in_chunk).min(rest.len());
                chunk.update(&rest[..take]);
                in_chunk += take;
                rest = &mut rest[take..];
                if in_chunk == FORMAT1_CHUNK {
                    chunks.push(<[u8; 32]>::from(
                        std::mem::replace(&mut chunk, Sha256::new()).finalize(),
                    ));
                    in_chunk = 0;
                }
            }
        }
        if in_chunk > 0 {
            chunks.push(chunk.finalize().into());
        }
        std::hint::black_box(total.finalize());
        (chunks, len)
    });
    let file = std::fs::File::create(out).expect("create");
    let w = Hashing {
        file: io::BufWriter::with_capacity(MIB as usize, file),
        block: Vec::new(),
        tx: Some(tx),
    };
    let enc = zstd::stream::write::Encoder::new(w, level).expect("zstd");
    let enc = p2p_deploy::package::write_tar(dir, enc, |_| Ok(())).expect("tar");
    let mut w = enc.finish().expect("finish");
    w.flush().expect("flush");
    let rest = std::mem::take(&mut w.block);
    if let Some(tx) = w.tx.take() {
        if !rest.is_empty() {
            let _ = tx.send(rest);
        }
        drop(tx);
    }
    w.file.get_ref().sync_all().expect("sync");
    hasher.join().expect("hasher")
}

/// Bytes of format-1 chunks of `new` not in `old`.
fn format1_moved(new: &[[u8; 32]], new_len: u64, old: &[[u8; 32]]) -> u64 {
    let held: HashSet<&[u8; 32]> = old.iter().collect();
    new.iter()
        .enumerate()
        .filter(|(_, h)| !held.contains(h))
        .map(|(i, _)| {
            let start = (i * FORMAT1_CHUNK) as u64;
            (new_len - start).min(FORMAT1_CHUNK as u64)
        })
        .sum()
}

/// Bytes of chunks of `new` not in `old`, plus `new`'s descriptor.
fn moved(new: &Descriptor, old: &Descriptor) -> (u64, usize) {
    let held: HashSet<[u8; 32]> = old.chunks.iter().map(|c| c.sha256).collect();
    let fresh: Vec<_> = new
        .chunks
        .iter()
        .filter(|c| !held.contains(&c.sha256))
        .collect();
    (
        fresh.iter().map(|c| u64::from(c.size)).sum::<u64>() + new.to_bytes().len() as u64,
        fresh.len(),
    )
}

struct Build {
    d: Descriptor,
    f1: Vec<[u8; 32]>,
    f1_len: u64,
}

fn both(dir: &Path, out: &Path, tag: &str) -> Build {
    let d = build(
        dir,
        &out.join(format!("{tag}.p2p")),
        &SystemClock,
        BuildOptions::default(),
    )
    .expect("build");
    let (f1, f1_len) = format1(dir, &out.join(format!("{tag}.f1")), 3);
    Build { d, f1, f1_len }
}

fn mib(b: u64) -> f64 {
    b as f64 / MIB as f64
}

/// Runs the group.
pub fn run() -> Vec<Figure> {
    let t = tempfile::tempdir().expect("temp dir");
    let dir = t.path().join("app");
    let out = t.path().join("out");
    std::fs::create_dir_all(&out).expect("mkdir");
    app(&dir);
    let mut figures = Vec::new();

    // Warm the page cache, then time both builds (format 2 twice, format 1
    // twice, interleaved; the faster of each).
    let _ = both(&dir, &out, "warm");
    let (mut f2_secs, mut f1_secs) = (f64::MAX, f64::MAX);
    let mut v1 = None;
    for _ in 0..2 {
        let started = Instant::now();
        let d = build(
            &dir,
            &out.join("v1.p2p"),
            &SystemClock,
            BuildOptions::default(),
        )
        .expect("build");
        f2_secs = f2_secs.min(started.elapsed().as_secs_f64());
        let started = Instant::now();
        let f1 = format1(&dir, &out.join("v1.f1"), 3);
        f1_secs = f1_secs.min(started.elapsed().as_secs_f64());
        v1 = Some(Build {
            d,
            f1: f1.0,
            f1_len: f1.1,
        });
    }
    let v1 = v1.expect("built");
    let input = v1.d.unpacked_size();
    figures.push(
        Figure::new(
            "delta",
            "build throughput, 100 files of 1 MiB (half text), format 2 vs format 1",
            mib(input) / f2_secs,
            "MiB/s",
        )
        .target(">= 0.8 x format 1")
        .goal(Goal::RatioAtLeast(0.8))
        .baseline(
            mib(input) / f1_secs,
            "MiB/s format 1 (tar | zstd -3, fixed 256 KiB chunks)",
        ),
    );
    figures.push(
        Figure::new(
            "delta",
            format!(
                "package size, {} chunks of {:.0} KiB on average",
                v1.d.chunks.len(),
                input as f64 / v1.d.chunks.len() as f64 / 1024.0
            ),
            mib(v1.d.archive_size),
            "MiB",
        )
        .target("<= 1.05 x tar | zstd at the same level")
        .goal(Goal::RatioAtMost(1.05))
        .baseline(mib(v1.f1_len), "MiB tar | zstd -3 of the same tar stream"),
    );

    // One incompressible 1 MiB file rewritten.
    write_manifest(&dir, "1.1.0");
    std::fs::write(dir.join("lib/f050"), noise(MIB as usize, 5050)).expect("write");
    let v2 = both(&dir, &out, "v2");
    let (bytes, n) = moved(&v2.d, &v1.d);
    let desc = v2.d.to_bytes().len() as u64;
    figures.push(
        Figure::new(
            "delta",
            format!("one 1 MiB file of 100 changed: moved ({n} chunks + a {desc}-byte descriptor)"),
            mib(bytes),
            "MiB",
        )
        .target("<= 1.5 MiB + the descriptor")
        .goal(Goal::AtMost(1.5 + mib(desc)))
        .baseline(
            mib(format1_moved(&v2.f1, v2.f1_len, &v1.f1)),
            "MiB moved with format 1",
        ),
    );

    // A 1 MiB file inserted first in archive order.
    write_manifest(&dir, "1.2.0");
    std::fs::write(dir.join("lib/a-new"), noise(MIB as usize, 777)).expect("write");
    let v3 = both(&dir, &out, "v3");
    let (bytes, n) = moved(&v3.d, &v2.d);
    figures.push(
        Figure::new(
            "delta",
            format!("a 1 MiB file inserted first in archive order: moved / its size ({n} chunks)"),
            bytes as f64 / MIB as f64,
            "x its size",
        )
        .target("<= 1.5x its size")
        .goal(Goal::AtMost(1.5))
        .baseline(
            format1_moved(&v3.f1, v3.f1_len, &v2.f1) as f64 / MIB as f64,
            "x its size with format 1",
        ),
    );

    // One byte in the middle of a 50 MiB binary.
    let bin_dir: PathBuf = t.path().join("bin-app");
    std::fs::create_dir_all(&bin_dir).expect("mkdir");
    write_manifest(&bin_dir, "1.0.0");
    // Like a real executable, partly compressible: 64 KiB runs of noise
    // and of text in turn.
    let mut bin: Vec<u8> = (0..800u64)
        .flat_map(|i| {
            if i % 2 == 0 {
                noise(64 << 10, 1000 + i)
            } else {
                text(64 << 10, 1000 + i)
            }
        })
        .collect();
    std::fs::write(bin_dir.join("server"), &bin).expect("write");
    let b1 = both(&bin_dir, &out, "b1");
    // In a text run (block 401): where format 1 changes everything after.
    bin[25 * MIB as usize + (64 << 10) + 1000] ^= 0x20;
    std::fs::write(bin_dir.join("server"), &bin).expect("write");
    let b2 = both(&bin_dir, &out, "b2");
    let (bytes, n) = moved(&b2.d, &b1.d);
    let avg = b2.d.archive_size as f64 / b2.d.chunks.len() as f64;
    let chunk_bytes = bytes - b2.d.to_bytes().len() as u64;
    figures.push(
        Figure::new(
            "delta",
            format!(
                "one byte changed in a 50 MiB binary: moved in average chunks ({n} chunks, {chunk_bytes} bytes; average {avg:.0} bytes)"
            ),
            chunk_bytes as f64 / avg,
            "avg chunks",
        )
        .target("<= 2 average chunks")
        .goal(Goal::AtMost(2.0))
        .baseline(
            format1_moved(&b2.f1, b2.f1_len, &b1.f1) as f64 / avg,
            "avg chunks moved with format 1",
        ),
    );
    drop(t);

    // The rollout on the simulator.
    let nodes = env_or("DELTA_NODES", 100);
    let size = env_or("DELTA_MB", 100) * 1_000_000;
    if nodes == 0 {
        return figures;
    }
    let scenario = |changed: f64| SwarmScenario {
        size,
        previous: Some(changed),
        ..SwarmScenario::new(nodes)
    };
    let delta = scenario(0.02).run();
    let full = scenario(1.0).run();
    figures.push(
        Figure::new(
            "delta",
            format!(
                "sim N={nodes}, {} MB, 100 Mbit/s: v2 with 2% of its chunks changed to nodes holding v1, {}/{nodes} complete (wall {:.0} s)",
                size / 1_000_000,
                delta.complete(),
                (delta.wall + full.wall).as_secs_f64()
            ),
            delta.completion().as_secs_f64(),
            "s",
        )
        .target("<= 0.25x the full release (ours)")
        .goal(Goal::RatioAtMost(0.25))
        .baseline(
            full.completion().as_secs_f64(),
            format!(
                "s a v2 sharing nothing, {}/{nodes} complete",
                full.complete()
            ),
        ),
    );
    figures
}

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(default)
}
