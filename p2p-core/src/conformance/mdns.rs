//! The mDNS test for backends with LAN discovery: two providers find each
//! other by mDNS and connect by id alone.
//!
//! Loopback does not carry multicast, and tests must not send it on the
//! host's real interfaces, so the test builds two network namespaces joined
//! by a veth pair and runs one provider in each: it re-runs its own test
//! binary under `ip netns exec`, with an environment variable telling the
//! child which side it plays. Where namespaces cannot be made (not root, no
//! `ip`), it prints why and skips. A backend's whole test:
//!
//! ```text
//! #[test]
//! fn two_providers_discover_each_other_and_connect_by_id() {
//!     let t = p2p_core::conformance::mdns::MdnsTest {
//!         test_name: "two_providers_discover_each_other_and_connect_by_id",
//!         role_var: "MY_BACKEND_MDNS_ROLE",
//!         prefix: "p2pm",
//!         subnet: 215,
//!     };
//!     p2p_core::conformance::mdns::run(&t, |key| async move {
//!         MyProvider::bind(&key, MyConfig::default().mdns(true)).await.unwrap()
//!     });
//! }
//! ```

use std::future::Future;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use futures::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::timeout;

use crate::{NodeKey, PeerAddr, Provider};

/// Names the test and keeps concurrent backends' namespaces apart.
pub struct MdnsTest {
    /// The `#[test]` function's name, which the children run.
    pub test_name: &'static str,
    /// The environment variable that tells a child its role.
    pub role_var: &'static str,
    /// Prefix of namespace and interface names (at most 5 characters).
    pub prefix: &'static str,
    /// Second octet of the `10.x.y.0/24` network between the namespaces.
    pub subnet: u8,
}

const WAIT: Duration = Duration::from_secs(40);

fn key(role: &str) -> NodeKey {
    NodeKey::from_seed(if role == "a" { [0xa1; 32] } else { [0xb2; 32] })
}

fn other(role: &str) -> &'static str {
    if role == "a" { "b" } else { "a" }
}

/// The child: one provider with mDNS on, in its own namespace.
async fn child<P: Provider>(role: &str, p: P) {
    let mut listener = p.listen().await.unwrap();
    println!("ID {}", p.local_id());
    let want = key(other(role)).peer_id();
    let mut found = p.discovered();
    let seen: PeerAddr = timeout(WAIT, async {
        loop {
            let addr = found.next().await.expect("discovery stream ended");
            if addr.id == want {
                break addr;
            }
        }
    })
    .await
    .expect("peer not discovered in time");
    println!("DISCOVERED {seen}");
    if role == "b" {
        // Dial by id alone: the address comes from the mDNS lookup.
        let conn = timeout(WAIT, p.connect(&PeerAddr::id_only(want)))
            .await
            .unwrap()
            .unwrap();
        let (mut s, mut r) = conn.open_bi().await.unwrap();
        s.write_all(b"hello over mdns").await.unwrap();
        s.shutdown().await.unwrap();
        let mut echo = Vec::new();
        r.read_to_end(&mut echo).await.unwrap();
        assert_eq!(echo, b"hello over mdns");
        println!("ROUNDTRIP ok");
        conn.close("done").await;
    } else {
        let conn = timeout(WAIT, listener.accept()).await.unwrap().unwrap();
        let (mut s, mut r) = conn.accept_bi().await.unwrap();
        let mut msg = Vec::new();
        r.read_to_end(&mut msg).await.unwrap();
        s.write_all(&msg).await.unwrap();
        s.shutdown().await.unwrap();
        println!("ACCEPTED {}", conn.remote_id());
        let _ = timeout(WAIT, conn.accept_bi()).await;
    }
    p.close("test over").await;
}

/// Runs `ip` with `args`; the error says what failed.
fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run `ip`: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "`ip {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Two namespaces joined by a veth pair; removed on drop.
struct Namespaces {
    a: String,
    b: String,
}

impl Namespaces {
    fn create(t: &MdnsTest) -> Result<Self, String> {
        let tag = std::process::id() % 100_000;
        let prefix = t.prefix;
        let ns = Namespaces {
            a: format!("{prefix}-{tag}-a"),
            b: format!("{prefix}-{tag}-b"),
        };
        let (va, vb) = (format!("{prefix}{tag}a"), format!("{prefix}{tag}b"));
        let net = 10 + tag % 200;
        let octet = t.subnet;
        let (ip_a, ip_b) = (
            format!("10.{octet}.{net}.1/24"),
            format!("10.{octet}.{net}.2/24"),
        );
        ip(&["netns", "add", &ns.a])?;
        ip(&["netns", "add", &ns.b])?;
        ip(&["link", "add", &va, "type", "veth", "peer", "name", &vb])?;
        for (n, v, addr) in [(&ns.a, &va, &ip_a), (&ns.b, &vb, &ip_b)] {
            ip(&["link", "set", v, "netns", n])?;
            ip(&["-n", n, "addr", "add", addr, "dev", v])?;
            ip(&["-n", n, "link", "set", v, "up", "multicast", "on"])?;
            ip(&["-n", n, "link", "set", "lo", "up"])?;
            ip(&["-n", n, "route", "add", "224.0.0.0/4", "dev", v])?;
        }
        Ok(ns)
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        // Deleting a namespace deletes its end of the veth pair, and with
        // it the other end.
        let _ = ip(&["netns", "del", &self.a]);
        let _ = ip(&["netns", "del", &self.b]);
    }
}

fn spawn(t: &MdnsTest, ns: &str, role: &str) -> Child {
    let exe = std::env::current_exe().unwrap();
    Command::new("ip")
        .args(["netns", "exec", ns])
        .arg(exe)
        .args(["--exact", t.test_name, "--nocapture", "--test-threads=1"])
        .env(t.role_var, role)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn finish(role: &str, child: Child) -> Vec<String> {
    let out = child.wait_with_output().unwrap();
    let lines: Vec<String> = BufReader::new(&out.stdout[..])
        .lines()
        .map_while(Result::ok)
        .collect();
    assert!(
        out.status.success(),
        "side {role} failed: {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        lines.join("\n"),
        String::from_utf8_lossy(&out.stderr)
    );
    lines
}

/// Runs the test: in the test process, makes the namespaces and runs
/// itself as the two children; in a child (its role variable set), binds a
/// provider with `make` and plays its side. Prints `SKIPPED` with the
/// reason where namespaces cannot be made.
pub fn run<P, F, Fut>(t: &MdnsTest, make: F)
where
    P: Provider,
    F: FnOnce(NodeKey) -> Fut,
    Fut: Future<Output = P>,
{
    if let Ok(role) = std::env::var(t.role_var) {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let p = make(key(&role)).await;
            child(&role, p).await
        });
        return;
    }
    let ns = match Namespaces::create(t) {
        Ok(ns) => ns,
        Err(why) => {
            println!(
                "SKIPPED {}: cannot create network namespaces ({why}); needs root and iproute2",
                t.test_name
            );
            return;
        }
    };
    let a = spawn(t, &ns.a, "a");
    let b = spawn(t, &ns.b, "b");
    let (a_out, b_out) = (finish("a", a), finish("b", b));
    println!("side a: {a_out:?}\nside b: {b_out:?}");
    let has = |lines: &[String], prefix: &str| lines.iter().any(|l| l.starts_with(prefix));
    let b_id = key("b").peer_id().to_string();
    assert!(
        has(&a_out, &format!("DISCOVERED {}", key("b").peer_id())),
        "a did not discover b: {a_out:?}"
    );
    assert!(
        has(&b_out, &format!("DISCOVERED {}", key("a").peer_id())),
        "b did not discover a: {b_out:?}"
    );
    assert!(has(&b_out, "ROUNDTRIP ok"), "{b_out:?}");
    assert!(has(&a_out, &format!("ACCEPTED {b_id}")), "{a_out:?}");
}
