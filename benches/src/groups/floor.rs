//! The floor of a node's CPU per byte (issue 27): two processes doing
//! only the work a node cannot avoid for the bytes of a release, on the
//! same transport and the same bytes as the agents they are compared with.
//!
//! - The receiver takes one raw stream (an iroh QUIC stream: decryption),
//!   checks the SHA-256 of every chunk against the descriptor and, when
//!   given a directory, writes each chunk to its own file (not synced, as
//!   the chunk store does), decompresses it (zstd) and appends the result
//!   to one file, the unpacked archive, synced at the end (as an install
//!   syncs what it unpacks); without one, it keeps each chunk in
//!   memory (as an agent on a `MemStorage` does).
//! - The sender reads every chunk from the package file and writes it to
//!   the stream (encryption): what a node does for each chunk it passes
//!   on, and what a seed does for each one it sends.
//!
//! Both report their own CPU time (user and system, from `/proc/self/stat`)
//! from the connection's start to the last byte, as one line on stdout:
//! `floor cpu=<seconds> bytes=<bytes>`.
//!
//! `bench-report` runs itself as either role ([`child_main`]), so the
//! figures are those of separate processes, like the agents'.

#![allow(clippy::disallowed_methods)] // benchmarks measure wall time

use std::io::{BufRead, Read, Seek, SeekFrom, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use p2p_core::{NodeKey, PeerAddr};
use p2p_deploy::PackageFile;
use p2p_examples::net::{self, Backend, NetOptions};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// `recv` or `send` in a child playing a floor role.
const ROLE_VAR: &str = "P2P_BENCH_FLOOR";
/// The package whose chunks travel.
const PACKAGE_VAR: &str = "P2P_BENCH_FLOOR_PACKAGE";
/// The receiver's directory for chunks and the unpacked archive; absent:
/// chunks are kept in memory (a node with its chunks in memory).
const DIR_VAR: &str = "P2P_BENCH_FLOOR_DIR";
/// The sender's peers: the receivers' addresses in text form, separated
/// by spaces.
const PEER_VAR: &str = "P2P_BENCH_FLOOR_PEER";
/// The address to bind (default `127.0.0.1:0`).
const BIND_VAR: &str = "P2P_BENCH_FLOOR_BIND";

/// How long a receiver waits for the sender to connect.
const ACCEPT_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

/// What the floor processes used.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Floor {
    /// The receiver's CPU seconds per MiB received.
    pub(crate) receive_ms_per_mib: f64,
    /// The sender's CPU seconds per MiB sent.
    pub(crate) send_ms_per_mib: f64,
}

/// CPU time (user and system) this process used so far, in seconds.
pub(crate) fn own_cpu_secs() -> f64 {
    proc_cpu_secs("self")
}

/// CPU time of process `pid` (`self` for this one), from `/proc/<pid>/stat`
/// (USER_HZ ticks, 100 a second on Linux).
pub(crate) fn proc_cpu_secs(pid: &str) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) in brackets.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15 of the whole line: 11 and 12
    // counted from the state field.
    (ticks(11) + ticks(12)) / 100.0
}

/// Good chunks the agents at `addrs` say they got from other agents: the
/// sum of their swarm peer scores, which count peers and not the seed.
/// Set against the chunks they got in all, it is the fraction they passed
/// on to each other.
pub(crate) async fn chunks_from_peers(
    ctl: &p2p_deploy::Controller,
    addrs: &[PeerAddr],
) -> Result<u64, String> {
    let mut n = 0;
    for a in addrs {
        match ctl.request(a, p2p_deploy::proto::Request::Info).await {
            Ok(p2p_deploy::proto::Reply::Info(info)) => {
                n += info.peers.iter().map(|s| s.good).sum::<u64>();
            }
            other => return Err(format!("no info from {}: {other:?}", a.id.short())),
        }
    }
    Ok(n)
}

/// Where a floor process runs: a command prefix to start it through (for
/// example `ip netns exec <ns>`; empty for none) and the address it binds.
pub(crate) type Place<'a> = (&'a [&'a str], SocketAddr);

/// Runs the floor processes over loopback: `receivers` receivers at once
/// and one sender that sends every chunk of `package` to each of them, as
/// a seed does to the nodes it serves. With `dir`, receiver `i` writes
/// under `dir/r<i>`.
pub(crate) fn measure(
    package: &Path,
    dir: Option<&Path>,
    receivers: usize,
) -> Result<Floor, String> {
    measure_on(package, dir, &vec![None; receivers.max(1)], None)
}

/// As [`measure`], with one receiver per entry of `receivers` and each
/// process started and bound where its [`Place`] says (`None`: directly,
/// on loopback).
pub(crate) fn measure_on(
    package: &Path,
    dir: Option<&Path>,
    receivers: &[Option<Place<'_>>],
    sender: Option<Place<'_>>,
) -> Result<Floor, String> {
    let exe = std::env::current_exe().map_err(|e| format!("bench-report's path: {e}"))?;
    let command = |wrap: Option<Place<'_>>| {
        let mut c = match wrap {
            Some((prefix, _)) if !prefix.is_empty() => {
                let mut c = Command::new(prefix[0]);
                c.args(&prefix[1..]).arg(&exe);
                c
            }
            _ => Command::new(&exe),
        };
        if let Some((_, at)) = wrap {
            c.env(BIND_VAR, at.to_string());
        }
        c.env(PACKAGE_VAR, package)
            .env("RUST_LOG", "error")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        c
    };
    // Every receiver, each printing its address first. Children still
    // running when this returns early are killed by `Running`'s drop.
    let mut running = Running(Vec::new());
    let mut outs = Vec::new();
    let mut addrs = Vec::new();
    for (i, place) in receivers.iter().enumerate() {
        let mut recv = command(*place);
        recv.env(ROLE_VAR, "recv").stdin(Stdio::null());
        if let Some(d) = dir {
            let d = d.join(format!("r{i}"));
            std::fs::create_dir_all(&d).map_err(|e| format!("floor dir {}: {e}", d.display()))?;
            recv.env(DIR_VAR, d);
        }
        let mut child = recv.spawn().map_err(|e| format!("floor receiver: {e}"))?;
        let out = child.stdout.take().ok_or("receiver stdout")?;
        running.0.push(child);
        let mut out = std::io::BufReader::new(out);
        let mut addr = String::new();
        out.read_line(&mut addr)
            .map_err(|e| format!("floor receiver {i}'s address: {e}"))?;
        if addr.trim().is_empty() {
            return Err(format!("floor receiver {i} exited before it listened"));
        }
        addrs.push(addr.trim().to_string());
        outs.push(out);
    }
    let mut send = command(sender)
        .env(ROLE_VAR, "send")
        .env(PEER_VAR, addrs.join(" "))
        .stdin(Stdio::null())
        .spawn()
        .map_err(|e| format!("floor sender: {e}"))?;
    let mut send_out = String::new();
    if let Some(mut s) = send.stdout.take() {
        let _ = s.read_to_string(&mut send_out);
    }
    // A sender that failed leaves receivers waiting for bytes that will
    // not come: returning kills them (`Running`'s drop).
    if !send.wait().is_ok_and(|s| s.success()) {
        return Err("the floor sender failed (its error is above)".into());
    }
    let recv_outs: Vec<String> = outs
        .into_iter()
        .map(|mut out| {
            let mut s = String::new();
            let _ = out.read_to_string(&mut s);
            s
        })
        .collect();
    if !running.wait_all() {
        return Err("a floor process failed (its error is above)".into());
    }
    let used = |line: &str, who: &str| -> Result<(f64, f64), String> {
        let field = |k: &str| {
            line.split_whitespace()
                .find_map(|f| f.strip_prefix(k))
                .and_then(|v| v.parse::<f64>().ok())
                .ok_or_else(|| format!("floor {who} printed {line:?}"))
        };
        Ok((field("cpu=")?, field("bytes=")? / (1024.0 * 1024.0)))
    };
    let (mut cpu, mut mib) = (0.0, 0.0);
    for out in &recv_outs {
        let (c, m) = used(out, "receiver")?;
        cpu += c;
        mib += m;
    }
    let (send_cpu, send_mib) = used(&send_out, "sender")?;
    Ok(Floor {
        receive_ms_per_mib: cpu * 1000.0 / mib,
        send_ms_per_mib: send_cpu * 1000.0 / send_mib,
    })
}

/// Floor processes, killed if still running when dropped.
struct Running(Vec<std::process::Child>);

impl Running {
    /// Waits for every process; whether all exited with success.
    fn wait_all(&mut self) -> bool {
        let mut ok = true;
        for mut c in self.0.drain(..) {
            ok &= c.wait().is_ok_and(|s| s.success());
        }
        ok
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// In a child started by [`measure`]: plays its role and returns the exit
/// code. `None` in any other process.
pub fn child_main() -> Option<i32> {
    let role = std::env::var(ROLE_VAR).ok()?;
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("floor {role}: {e}");
            return Some(1);
        }
    };
    let result = rt.block_on(async {
        let package = PathBuf::from(std::env::var(PACKAGE_VAR).map_err(|_| "no package")?);
        let package = PackageFile::open(&package).map_err(|e| e.to_string())?;
        let bind: SocketAddr = match std::env::var(BIND_VAR) {
            Ok(v) => v.parse().map_err(|e| format!("{BIND_VAR}: {e}"))?,
            Err(_) => SocketAddr::from(([127, 0, 0, 1], 0)),
        };
        let opts = NetOptions {
            listen: vec![bind],
            ..NetOptions::loopback(Backend::Iroh)
        };
        let key = NodeKey::generate(&mut rand::rng());
        let provider = net::bind(&key, &opts).await.map_err(|e| e.to_string())?;
        match role.as_str() {
            "recv" => {
                let dir = std::env::var_os(DIR_VAR).map(PathBuf::from);
                receive(&*provider, &package, dir.as_deref()).await
            }
            "send" => {
                let peers = std::env::var(PEER_VAR)
                    .map_err(|_| "no peer")?
                    .split_whitespace()
                    .map(|p| p.parse().map_err(|e| format!("{PEER_VAR}: {e}")))
                    .collect::<Result<Vec<PeerAddr>, String>>()?;
                send(&*provider, &package, &peers).await
            }
            other => Err(format!("unknown floor role {other:?}")),
        }
    });
    Some(match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("floor {role}: {e}");
            1
        }
    })
}

async fn receive(
    provider: &dyn p2p_core::Provider,
    package: &PackageFile,
    dir: Option<&Path>,
) -> Result<(), String> {
    let mut listener = provider.listen().await.map_err(|e| e.to_string())?;
    println!("{}", provider.local_addr());
    std::io::stdout().flush().map_err(|e| e.to_string())?;
    let conn = tokio::time::timeout(ACCEPT_WAIT, listener.accept())
        .await
        .map_err(|_| format!("no sender connected within {ACCEPT_WAIT:?}"))?
        .map_err(|e| e.to_string())?;
    let begun = own_cpu_secs();
    let (mut tx, mut rx) = conn.accept_bi().await.map_err(|e| e.to_string())?;
    let d = &package.descriptor;
    let mut unpacked = match dir {
        Some(dir) => Some(
            std::fs::File::create(dir.join("archive.tar")).map_err(|e| format!("output: {e}"))?,
        ),
        None => None,
    };
    let mut unzstd = zstd::bulk::Decompressor::new().map_err(|e| e.to_string())?;
    let mut buf = Vec::new();
    let mut raw = Vec::new();
    let mut bytes = 0u64;
    let mut kept = Vec::new();
    for c in &d.chunks {
        buf.resize(c.size as usize, 0);
        rx.read_exact(&mut buf)
            .await
            .map_err(|e| format!("receiving: {e}"))?;
        if Sha256::digest(&buf).as_slice() != c.sha256 {
            return Err("a chunk arrived damaged".into());
        }
        bytes += u64::from(c.size);
        if let (Some(dir), Some(out)) = (dir, unpacked.as_mut()) {
            let name: String = c.sha256.iter().map(|b| format!("{b:02x}")).collect();
            let name = dir.join(name);
            let mut f = std::fs::File::create(&name).map_err(|e| format!("chunk file: {e}"))?;
            f.write_all(&buf).map_err(|e| format!("chunk file: {e}"))?;
            raw.clear();
            raw.reserve(c.raw_size as usize);
            unzstd
                .decompress_to_buffer(&buf, &mut raw)
                .map_err(|e| format!("decompressing: {e}"))?;
            out.write_all(&raw).map_err(|e| format!("output: {e}"))?;
        } else {
            kept.push(std::mem::take(&mut buf));
        }
    }
    if let Some(out) = unpacked {
        out.sync_all().map_err(|e| format!("output: {e}"))?;
    }
    let used = own_cpu_secs() - begun;
    // Tell the sender it all arrived, so it does not exit before.
    tx.write_all(b"k").await.map_err(|e| e.to_string())?;
    tx.shutdown().await.map_err(|e| e.to_string())?;
    // And wait for it to close the connection once it has the answer.
    let _ = tokio::time::timeout(std::time::Duration::from_secs(10), conn.accept_bi()).await;
    println!("floor cpu={used} bytes={bytes}");
    provider.close("done").await;
    Ok(())
}

/// Sends every chunk of `package` to each of `peers` at once, each on its
/// own connection and stream, reading each chunk from the package file
/// for every peer (as a node reads a chunk from its store for every peer
/// it serves). Prints the CPU time from the last connection up to the
/// last receiver's answer.
async fn send(
    provider: &dyn p2p_core::Provider,
    package: &PackageFile,
    peers: &[PeerAddr],
) -> Result<(), String> {
    let conns = futures::future::try_join_all(peers.iter().map(|p| provider.connect(p)))
        .await
        .map_err(|e| e.to_string())?;
    let begun = own_cpu_secs();
    let sent = futures::future::try_join_all(conns.iter().map(|c| send_one(&**c, package))).await?;
    let used = own_cpu_secs() - begun;
    println!("floor cpu={used} bytes={}", sent.iter().sum::<u64>());
    provider.close("done").await;
    Ok(())
}

/// Sends every chunk of `package` on one stream of `conn`, waits for the
/// receiver's answer and closes the connection: the bytes sent.
async fn send_one(conn: &dyn p2p_core::Connection, package: &PackageFile) -> Result<u64, String> {
    let (mut tx, mut rx) = conn.open_bi().await.map_err(|e| e.to_string())?;
    let mut file = std::fs::File::open(&package.path).map_err(|e| e.to_string())?;
    let mut buf = Vec::new();
    let mut bytes = 0u64;
    let offsets = package.descriptor.offsets();
    for (c, at) in package.descriptor.chunks.iter().zip(offsets) {
        buf.resize(c.size as usize, 0);
        file.seek(SeekFrom::Start(package.archive_offset + at))
            .and_then(|_| file.read_exact(&mut buf))
            .map_err(|e| format!("reading the package: {e}"))?;
        tx.write_all(&buf)
            .await
            .map_err(|e| format!("sending: {e}"))?;
        bytes += u64::from(c.size);
    }
    tx.shutdown().await.map_err(|e| e.to_string())?;
    let mut ack = [0u8; 1];
    rx.read_exact(&mut ack)
        .await
        .map_err(|e| format!("the receiver's answer: {e}"))?;
    conn.close("done").await;
    Ok(bytes)
}
