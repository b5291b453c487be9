//! Group `nat-netns`: relays and hole punching on a real kernel network,
//! over iroh and over libp2p. Network namespaces this benchmark makes
//! (with `p2p_examples::netlab`): an internet segment with the relay
//! (`p2p_examples::relay`, what `p2pd relay` runs) and a public client, a
//! site behind a NAT router (masquerading) with server `a`, and a site
//! behind a NAT router whose firewall lets only the relay through, with
//! server `b`. No link is shaped: the figures are what the machine does.
//!
//! Per transport, four lines:
//!
//! ```text
//! nat-netns <t> relayed stream: R MiB/s (baseline D MiB/s (direct, hole punched, same run), ratio=R/D)
//! nat-netns <t> dial to a direct path, p50 of 10: P ms (baseline C ms (dial to a relayed connection, p50, same run), ratio=P/C)
//! ```
//!
//! The stream figures move 64 MiB over one stream from the client to `a`
//! once its connection went direct (hole punched), and to `b` through the
//! relay. The dial figures take a fresh client endpoint each time, give it
//! only `a`'s relay address (iroh: `<id>@<relay url>`; libp2p: the
//! circuit), and time until the connection is up (relayed), then until
//! the transport reports a direct path. No targets: the figures say what
//! relaying costs and how soon hole punching ends it. libp2p runs with a
//! pre-shared key, so over TCP.
//!
//! Needs root, iproute2 and nftables or iptables; otherwise it prints
//! `nat-netns: skipped: <reason>`. Build as yourself, run as root:
//!
//! ```text
//! cargo build --release -p p2p-benches --bin bench-report
//! sudo ./target/release/bench-report nat-netns
//! ```

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::mpsc::Receiver;
use std::time::Duration;

use p2p_core::{Connection, NodeKey, PathKind, PeerAddr, PreSharedKey, Provider};
use p2p_examples::net::{self, Backend, NetOptions, Reach, Relays};
use p2p_examples::netlab::{Host, Lab, Nat};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::children::{Children, exit_with_parent, say, wait_line};
use crate::Figure;

const GROUP: &str = "nat-netns";
/// Bytes per stream figure.
const SIZE: usize = 64 << 20;
/// Dials for the p50s.
const DIALS: usize = 10;
/// How long a path may take to turn direct.
const PUNCH_WAIT: Duration = Duration::from_secs(10);

const ROLE_VAR: &str = "P2P_NAT_NETNS_ROLE";
const BACKEND_VAR: &str = "P2P_NAT_NETNS_BACKEND";
const DIR_VAR: &str = "P2P_NAT_NETNS_DIR";
const RELAY_VAR: &str = "P2P_NAT_NETNS_RELAY";
const TARGETS_VAR: &str = "P2P_NAT_NETNS_TARGETS";
const ADDR_LINE: &str = "nat-netns-addr ";
const RESULT_LINE: &str = "nat-netns-result ";
const RELAY_IP: Ipv4Addr = Ipv4Addr::new(172, 30, 0, 2);
/// The network's pre-shared key (libp2p): a benchmark constant, not a
/// secret.
const PSK: [u8; 32] = [7; 32];

/// Runs the group.
pub fn run() -> Vec<Figure> {
    if let Err(why) = Lab::preflight(true) {
        eprintln!("{GROUP}: skipped: {why}");
        return Vec::new();
    }
    let mut out = Vec::new();
    for backend in [Backend::Iroh, Backend::Libp2p] {
        match measure(backend) {
            Ok(fig) => out.extend(fig),
            Err(why) => eprintln!("{GROUP}: {backend}: failed: {why}"),
        }
    }
    out
}

/// In a child process of this group, plays its role; `None` elsewhere.
pub fn child_main() -> Option<i32> {
    let role = std::env::var(ROLE_VAR).ok()?;
    exit_with_parent();
    let result = match role.as_str() {
        "relay" => relay_child(),
        "server" => super::block_on(server_child()),
        "client" => super::block_on(client_child()),
        other => Err(format!("unknown role {other:?}")),
    };
    Some(match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("{GROUP} {role}: {e}");
            1
        }
    })
}

fn spawn(
    lab: &Lab,
    host: &Host,
    role: &str,
    env: &[(&str, String)],
    children: &mut Children,
) -> Result<Receiver<String>, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    super::children::spawn(lab.command(host, exe), ROLE_VAR, role, env, children)
}

fn measure(backend: Backend) -> Result<Vec<Figure>, String> {
    let tag = match backend {
        Backend::Iroh => "bni",
        Backend::Libp2p => "bnl",
    };
    let mut lab = Lab::new(tag)?;
    let internet = lab.segment("internet", [172, 30, 0, 0])?;
    let s1 = lab.segment("site1", [10, 71, 1, 0])?;
    let s2 = lab.segment("site2", [10, 71, 2, 0])?;
    let relay = lab.host("relay")?;
    lab.attach(&relay, internet, 2)?;
    let client = lab.host("client")?;
    lab.attach(&client, internet, 3)?;
    lab.nat_router("r1", (internet, 11), (s1, 1), Nat::EndpointIndependent)?;
    let r2 = lab.nat_router("r2", (internet, 12), (s2, 1), Nat::EndpointIndependent)?;
    let a = lab.host("a")?;
    lab.attach(&a, s1, 10)?;
    let b = lab.host("b")?;
    lab.attach(&b, s2, 10)?;
    lab.only_reach(&r2, Ipv4Addr::new(10, 71, 2, 10), RELAY_IP)?;
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let mut children = Children::default();
    let common = |extra: &[(&'static str, String)]| {
        let mut env = vec![
            (BACKEND_VAR, backend.to_string()),
            (DIR_VAR, dir.path().display().to_string()),
        ];
        env.extend(extra.iter().cloned());
        env
    };
    spawn(&lab, &relay, "relay", &common(&[]), &mut children)?;
    let relay_file = dir.path().join("relay.addr");
    // Real processes: the wait is on the wall clock.
    #[allow(clippy::disallowed_methods)]
    let begun = std::time::Instant::now();
    while !relay_file.exists() {
        if begun.elapsed() > Duration::from_secs(30) {
            return Err("the relay did not come up".into());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let relay_addr = std::fs::read_to_string(&relay_file)
        .map_err(|e| e.to_string())?
        .trim()
        .to_string();
    let mut addrs = Vec::new();
    for (host, name) in [(&a, "a"), (&b, "b")] {
        let rx = spawn(
            &lab,
            host,
            "server",
            &common(&[(RELAY_VAR, relay_addr.clone())]),
            &mut children,
        )?;
        let line = wait_line(&rx, ADDR_LINE, Duration::from_secs(60))
            .map_err(|e| format!("server {name}: {e}"))?;
        addrs.push(line);
    }
    let rx = spawn(
        &lab,
        &client,
        "client",
        &common(&[(RELAY_VAR, relay_addr), (TARGETS_VAR, addrs.join(" "))]),
        &mut children,
    )?;
    let line = wait_line(&rx, RESULT_LINE, Duration::from_secs(300))
        .map_err(|e| format!("client: {e}"))?;
    drop(children);
    drop(lab);
    figures(backend, &line)
}

fn figures(backend: Backend, line: &str) -> Result<Vec<Figure>, String> {
    let get = |key: &str| -> Result<f64, String> {
        line.split_whitespace()
            .filter_map(|kv| kv.split_once('='))
            .find(|(k, _)| *k == key)
            .ok_or_else(|| format!("no {key} in {line:?}"))?
            .1
            .parse::<f64>()
            .map_err(|e| format!("{key}: {e}"))
    };
    let (direct, relayed) = (get("direct_mibs")?, get("relayed_mibs")?);
    let (punch, connect, punched) = (
        get("punch_p50_ms")?,
        get("connect_p50_ms")?,
        get("punched")?,
    );
    Ok(vec![
        Figure::new(
            GROUP,
            format!("{backend} relayed stream, 64 MiB"),
            relayed,
            "MiB/s",
        )
        .baseline(direct, "MiB/s (direct, hole punched, same run)"),
        Figure::new(
            GROUP,
            format!("{backend} dial to a direct path, p50 ({punched:.0} of {DIALS} went direct)"),
            punch,
            "ms",
        )
        .baseline(connect, "ms (dial to a relayed connection, p50, same run)"),
    ])
}

fn env(name: &str) -> Result<String, String> {
    std::env::var(name).map_err(|e| format!("{name}: {e}"))
}

fn backend() -> Result<Backend, String> {
    match env(BACKEND_VAR)?.as_str() {
        "iroh" => Ok(Backend::Iroh),
        "libp2p" => Ok(Backend::Libp2p),
        other => Err(format!("backend {other:?}")),
    }
}

fn relay_child() -> Result<(), String> {
    let dir = PathBuf::from(env(DIR_VAR)?);
    let opts = p2p_examples::relay::RelayOptions {
        data_dir: dir,
        backend: backend()?,
        tls: p2p_examples::relay::TlsMode::SelfSigned,
        names: vec![RELAY_IP.to_string()],
        cert: None,
        key: None,
        https: "0.0.0.0:3341".parse().map_err(|e| format!("{e}"))?,
        http: "0.0.0.0:3340".parse().map_err(|e| format!("{e}"))?,
        quic: Some("0.0.0.0:7842".parse().map_err(|e| format!("{e}"))?),
        listen: vec!["0.0.0.0:7402".parse().map_err(|e| format!("{e}"))?],
        psk: Some(PreSharedKey::from_bytes(PSK)),
        allow: None,
    };
    let opts = match opts.backend {
        Backend::Iroh => p2p_examples::relay::RelayOptions { psk: None, ..opts },
        Backend::Libp2p => opts,
    };
    super::block_on(p2p_examples::relay::run(opts, std::future::pending::<()>()))
        .map_err(|e| format!("{e:#}"))
}

/// How a node of this benchmark binds: every interface, the relay, the
/// relay's certificate (iroh) or the network's key (libp2p).
fn options(backend: Backend, relay: &str) -> Result<NetOptions, String> {
    let dir = PathBuf::from(env(DIR_VAR)?);
    let ca_certs = match backend {
        Backend::Iroh => {
            net::read_relay_ca(&dir.join("relay-cert.pem")).map_err(|e| format!("{e:#}"))?
        }
        Backend::Libp2p => Vec::new(),
    };
    Ok(NetOptions {
        backend,
        psk: (backend == Backend::Libp2p).then(|| PreSharedKey::from_bytes(PSK)),
        relays: Relays {
            reach: Reach::Relays,
            relays: vec![relay.to_string()],
            ca_certs,
            serve: false,
        },
        ..NetOptions::default()
    })
}

/// Whether `addr` goes through a relay, in either notation.
fn through_relay(addr: &str) -> bool {
    addr.contains("://") || addr.contains("p2p-circuit")
}

async fn server_child() -> Result<(), String> {
    let backend = backend()?;
    let relay = env(RELAY_VAR)?;
    let key = NodeKey::generate(&mut rand::rng());
    let provider = net::bind(&key, &options(backend, &relay)?)
        .await
        .map_err(|e| format!("{e:#}"))?;
    let mut listener = provider.listen().await.map_err(|e| e.to_string())?;
    // Announce once the address carries the relay.
    let begun = tokio::time::Instant::now();
    loop {
        let addr = provider.local_addr();
        if addr.addrs.iter().any(|a| through_relay(a)) {
            say(&format!("{ADDR_LINE}{addr}"))?;
            break;
        }
        if begun.elapsed() > Duration::from_secs(30) {
            return Err(format!("no relay in the address after 30 s: {addr}"));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    loop {
        let conn = listener.accept().await.map_err(|e| e.to_string())?;
        tokio::spawn(async move {
            while let Ok((mut send, mut recv)) = conn.accept_bi().await {
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 1 << 16];
                    let mut total = 0u64;
                    while let Ok(n) = recv.read(&mut buf).await {
                        if n == 0 {
                            break;
                        }
                        total += n as u64;
                    }
                    let _ = send.write_all(&total.to_be_bytes()).await;
                    let _ = send.shutdown().await;
                });
            }
        });
    }
}

/// Waits until `conn` reports a direct path; how long it took.
async fn until_direct(conn: &Arc<dyn Connection>) -> Option<Duration> {
    let begun = tokio::time::Instant::now();
    while begun.elapsed() < PUNCH_WAIT {
        if conn.path().kind == PathKind::Direct {
            return Some(begun.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    None
}

/// Sends [`SIZE`] bytes on one stream and waits for the count back: MiB/s.
async fn stream(conn: &Arc<dyn Connection>) -> Result<f64, String> {
    let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
    let chunk = vec![0x5au8; 1 << 20];
    let begun = tokio::time::Instant::now();
    for _ in 0..SIZE / chunk.len() {
        send.write_all(&chunk).await.map_err(|e| e.to_string())?;
    }
    send.shutdown().await.map_err(|e| e.to_string())?;
    let mut back = [0u8; 8];
    recv.read_exact(&mut back)
        .await
        .map_err(|e| e.to_string())?;
    if u64::from_be_bytes(back) != SIZE as u64 {
        return Err(format!("the server counted {}", u64::from_be_bytes(back)));
    }
    Ok(SIZE as f64 / (1 << 20) as f64 / begun.elapsed().as_secs_f64())
}

fn p50(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

async fn client_child() -> Result<(), String> {
    let backend = backend()?;
    let relay = env(RELAY_VAR)?;
    let targets: Vec<PeerAddr> = env(TARGETS_VAR)?
        .split_whitespace()
        .map(|t| t.parse::<PeerAddr>().map_err(|e| format!("{t}: {e}")))
        .collect::<Result<_, _>>()?;
    let [a, b] = targets.as_slice() else {
        return Err("two targets expected".into());
    };
    let opts = options(backend, &relay)?;
    let me = net::bind(&NodeKey::generate(&mut rand::rng()), &opts)
        .await
        .map_err(|e| format!("{e:#}"))?;
    // Direct: a, once hole punching made its path direct.
    let to_a = me.connect(a).await.map_err(|e| format!("a: {e}"))?;
    until_direct(&to_a)
        .await
        .ok_or("the path to a never went direct")?;
    let direct = stream(&to_a).await?;
    // Relayed: b, which only the relay reaches.
    let to_b = me.connect(b).await.map_err(|e| format!("b: {e}"))?;
    if to_b.path().kind != PathKind::Relayed {
        return Err(format!("the path to b is {}, not relayed", to_b.path()));
    }
    let relayed = stream(&to_b).await?;
    me.close("measured").await;
    // Dials to a known only through the relay, each from a fresh node.
    let a_relayed = PeerAddr::new(a.id, a.addrs.iter().filter(|x| through_relay(x)).cloned())
        .map_err(|e| e.to_string())?;
    let (mut connects, mut punches) = (Vec::new(), Vec::new());
    for _ in 0..DIALS {
        let fresh = net::bind(&NodeKey::generate(&mut rand::rng()), &opts)
            .await
            .map_err(|e| format!("{e:#}"))?;
        let begun = tokio::time::Instant::now();
        let conn = fresh
            .connect(&a_relayed)
            .await
            .map_err(|e| format!("a through the relay: {e}"))?;
        connects.push(begun.elapsed().as_secs_f64() * 1000.0);
        if until_direct(&conn).await.is_some() {
            punches.push(begun.elapsed().as_secs_f64() * 1000.0);
        }
        fresh.close("measured").await;
    }
    let punched = punches.len();
    say(&format!(
        "{RESULT_LINE}direct_mibs={direct:.1} relayed_mibs={relayed:.1} punch_p50_ms={:.1} connect_p50_ms={:.1} punched={punched}",
        p50(punches),
        p50(connects)
    ))
}
