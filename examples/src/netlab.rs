//! Network labs for tests and benchmarks: hosts in network namespaces on
//! bridged segments, routers with NAT between them, and shaped links, so
//! that `p2pd` and `p2pctl` run as they would on separate machines.
//!
//! ```no_run
//! use p2p_examples::netlab::{Lab, Nat};
//! # fn demo() -> Result<(), String> {
//! Lab::preflight(true)?; // root, iproute2, namespaces, nftables or iptables
//! let mut lab = Lab::new("demo")?;
//! let internet = lab.segment("internet", [172, 31, 0, 0])?;
//! let site = lab.segment("site1", [10, 71, 1, 0])?;
//! let relay = lab.host("relay")?;
//! lab.attach(&relay, internet, 2)?; // 172.31.0.2/24
//! let router = lab.nat_router("r1", (internet, 11), (site, 1), Nat::EndpointIndependent)?;
//! let a = lab.host("a")?;
//! lab.attach(&a, site, 10)?; // 10.71.1.10/24, default route via 10.71.1.1
//! let _ = (router, lab.command(&a, "ping").args(["-c1", "172.31.0.2"]).status());
//! # Ok(()) }
//! ```
//!
//! Every namespace belongs to the [`Lab`] that made it and is deleted when
//! the lab is dropped (panics included); deleting a namespace deletes its
//! interfaces, and the bridges go with the lab's hub namespace. The root
//! namespace is never touched. Namespaces are named
//! `p2plab-<pid>-<lab>-<host>`; a lab that starts deletes those of
//! processes that no longer exist (left by a test that was killed).
//!
//! Addresses are private IPv4 /24s given by the caller. A host attached to
//! a segment that has a router gets its default route through it.
//!
//! NAT ([`Nat`]) is masquerading on the router's upstream interface, with
//! nftables where `nft` is installed, else iptables:
//!
//! - [`Nat::EndpointIndependent`]: Linux masquerading keeps a flow's source
//!   port when it is free, so a host's mapping is the same towards every
//!   destination (endpoint-independent mapping), while only replies to
//!   what went out are let in (address- and port-dependent filtering). UDP
//!   and TCP hole punching work through it.
//! - [`Nat::Symmetric`]: every flow gets a random source port
//!   (`masquerade fully-random`), so the port a relay sees is not the port
//!   a peer would have to reach: hole punching fails, only relayed or
//!   outbound paths work.

use std::ffi::OsStr;
use std::net::Ipv4Addr;
use std::process::Command;

/// How a router translates a site's addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Nat {
    /// Port-preserving masquerading: endpoint-independent mapping.
    EndpointIndependent,
    /// A random source port per flow: endpoint-dependent mapping.
    Symmetric,
}

/// A segment (a bridge in the lab's hub namespace).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentId(usize);

#[derive(Debug)]
struct Segment {
    name: String,
    /// The first three octets of the /24.
    net: [u8; 3],
    /// The router's address here, once a router is attached.
    gateway: Option<Ipv4Addr>,
}

/// A host: one network namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Host {
    /// The name given to [`Lab::host`].
    pub name: String,
    /// Its namespace.
    pub ns: String,
}

/// A set of namespaces, bridges and veth pairs; deleted on drop.
#[derive(Debug)]
pub struct Lab {
    prefix: String,
    hub: String,
    namespaces: Vec<String>,
    segments: Vec<Segment>,
    links: usize,
    nat_tool: Option<NatTool>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum NatTool {
    Nft,
    Iptables,
}

/// Runs `program` with `args`; the error names the command and says what
/// it printed.
pub fn run(program: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| format!("cannot run `{program}`: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "`{program} {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn ip(args: &[&str]) -> Result<(), String> {
    run("ip", args).map(drop)
}

fn has(tool: &str, arg: &str) -> bool {
    Command::new(tool)
        .arg(arg)
        .output()
        .is_ok_and(|o| o.status.success())
}

fn nat_tool() -> Option<NatTool> {
    if has("nft", "--version") {
        Some(NatTool::Nft)
    } else if has("iptables", "--version") {
        Some(NatTool::Iptables)
    } else {
        None
    }
}

/// Whether this process runs as root.
pub fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// A lab for test `test`, or `None` after saying why it is skipped: on
/// stderr past the test harness's capture, so that a skip is never
/// silent. Under `CI=true` as root a lab that cannot be built fails the
/// test instead: CI installs what labs need.
pub fn lab_for_test(test: &str, tag: &str, nat: bool) -> Option<Lab> {
    use std::io::Write;
    match Lab::preflight(nat) {
        Ok(()) => Some(Lab::new(tag).unwrap_or_else(|e| panic!("{test}: building the lab: {e}"))),
        Err(why) => {
            if std::env::var("CI").as_deref() == Ok("true") && is_root() {
                panic!("{test}: CI runs as root and must run this test, but: {why}");
            }
            let _ = writeln!(std::io::stderr(), "SKIPPED {test}: {why}");
            None
        }
    }
}

impl Lab {
    /// Checks that this machine can build labs: root, iproute2, network
    /// namespaces (one is made and removed), and with `nat`, nftables or
    /// iptables able to masquerade inside a namespace. The error is the
    /// reason to skip.
    pub fn preflight(nat: bool) -> Result<(), String> {
        if !is_root() {
            return Err("needs root to create network namespaces".into());
        }
        if !has("ip", "-V") {
            return Err("needs `ip` (iproute2)".into());
        }
        static PROBES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let probe = format!(
            "p2plab-{}-probe{}",
            std::process::id(),
            PROBES.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        ip(&["netns", "add", &probe])
            .map_err(|e| format!("this machine does not allow network namespaces: {e}"))?;
        let checked = if nat {
            match nat_tool() {
                None => Err("needs nftables (`nft`) or iptables for NAT".to_string()),
                Some(tool) => masquerade(&probe, "lo", tool, false)
                    .map_err(|e| format!("cannot set up NAT in a namespace: {e}")),
            }
        } else {
            Ok(())
        };
        let removed = ip(&["netns", "del", &probe]);
        checked?;
        removed.map_err(|e| format!("cannot remove the probe namespace {probe}: {e}"))
    }

    /// A new, empty lab named `tag` (a few letters: it goes into every
    /// namespace name). Deletes what killed runs of any lab left behind.
    pub fn new(tag: &str) -> Result<Lab, String> {
        remove_stale();
        let prefix = format!("p2plab-{}-{tag}", std::process::id());
        let mut lab = Lab {
            hub: format!("{prefix}-hub"),
            prefix,
            namespaces: Vec::new(),
            segments: Vec::new(),
            links: 0,
            nat_tool: nat_tool(),
        };
        let hub = lab.hub.clone();
        lab.add_namespace(&hub)?;
        Ok(lab)
    }

    fn add_namespace(&mut self, ns: &str) -> Result<(), String> {
        ip(&["netns", "add", ns])?;
        self.namespaces.push(ns.to_string());
        ip(&["-n", ns, "link", "set", "lo", "up"])
    }

    /// A segment: a bridge for the /24 starting at `net` (its last octet is
    /// ignored).
    pub fn segment(&mut self, name: &str, net: [u8; 4]) -> Result<SegmentId, String> {
        let id = SegmentId(self.segments.len());
        let br = format!("br{}", id.0);
        ip(&["-n", &self.hub, "link", "add", &br, "type", "bridge"])?;
        ip(&["-n", &self.hub, "link", "set", &br, "up"])?;
        self.segments.push(Segment {
            name: name.to_string(),
            net: [net[0], net[1], net[2]],
            gateway: None,
        });
        Ok(id)
    }

    /// The address `host` (a last octet) has on segment `seg`.
    pub fn addr(&self, seg: SegmentId, host: u8) -> Ipv4Addr {
        let [a, b, c] = self.segments[seg.0].net;
        Ipv4Addr::new(a, b, c, host)
    }

    /// A new host with only `lo`, up.
    pub fn host(&mut self, name: &str) -> Result<Host, String> {
        let ns = format!("{}-{name}", self.prefix);
        self.add_namespace(&ns)?;
        Ok(Host {
            name: name.to_string(),
            ns,
        })
    }

    /// Connects `host` to `seg` with address `.octet`/24 on interface
    /// `eth<segment>`, and IPv6 address [`Lab::addr6`] (reachable on the
    /// segment only: routers route IPv4); where the segment has a router,
    /// the host's default route goes through it. Returns the IPv4 address.
    pub fn attach(&mut self, host: &Host, seg: SegmentId, octet: u8) -> Result<Ipv4Addr, String> {
        let addr = self.link(host, seg, octet)?;
        if let Some(gw) = self.segments[seg.0].gateway {
            ip(&[
                "-n",
                &host.ns,
                "route",
                "add",
                "default",
                "via",
                &gw.to_string(),
            ])?;
        }
        Ok(addr)
    }

    fn link(&mut self, host: &Host, seg: SegmentId, octet: u8) -> Result<Ipv4Addr, String> {
        self.links += 1;
        let outer = format!("v{}", self.links);
        let inner = format!("eth{}", seg.0);
        // Both ends are made in the hub, then one moves: nothing is ever
        // created in the root namespace.
        ip(&[
            "-n", &self.hub, "link", "add", &outer, "type", "veth", "peer", "name", &inner,
        ])?;
        ip(&["-n", &self.hub, "link", "set", &inner, "netns", &host.ns])?;
        ip(&[
            "-n",
            &self.hub,
            "link",
            "set",
            &outer,
            "master",
            &format!("br{}", seg.0),
        ])?;
        ip(&["-n", &self.hub, "link", "set", &outer, "up"])?;
        let addr = self.addr(seg, octet);
        ip(&[
            "-n",
            &host.ns,
            "addr",
            "add",
            &format!("{addr}/24"),
            "dev",
            &inner,
        ])?;
        // No duplicate address detection: the address is usable at once.
        ip(&[
            "-n",
            &host.ns,
            "addr",
            "add",
            &format!("{}/64", self.addr6(seg, octet)),
            "dev",
            &inner,
            "nodad",
        ])?;
        ip(&["-n", &host.ns, "link", "set", &inner, "up"])?;
        Ok(addr)
    }

    /// The IPv6 address host `octet` has on segment `seg`:
    /// `2001:db8:70:<segment>::<octet>`, from the documentation prefix (never
    /// routed anywhere). Not a unique local address: iroh leaves those out
    /// of a node's addresses when it has any other.
    pub fn addr6(&self, seg: SegmentId, octet: u8) -> std::net::Ipv6Addr {
        std::net::Ipv6Addr::new(0x2001, 0xdb8, 0x70, seg.0 as u16, 0, 0, 0, u16::from(octet))
    }

    /// A router between `wan` (its upstream segment and address there) and
    /// `lan` (the site it serves), translating the site's addresses as
    /// `nat` says. Hosts attached to `lan` afterwards route through it.
    pub fn nat_router(
        &mut self,
        name: &str,
        wan: (SegmentId, u8),
        lan: (SegmentId, u8),
        nat: Nat,
    ) -> Result<Host, String> {
        let tool = self
            .nat_tool
            .ok_or("needs nftables (`nft`) or iptables for NAT")?;
        let router = self.router(name, wan, lan)?;
        masquerade(
            &router.ns,
            &format!("eth{}", wan.0.0),
            tool,
            nat == Nat::Symmetric,
        )?;
        Ok(router)
    }

    /// A router between `wan` and `lan` that forwards IPv4 without
    /// translating: a site's link to the others. Hosts attached to `lan`
    /// afterwards route through it; hosts elsewhere reach the site once
    /// told with [`Lab::route_via`].
    pub fn router(
        &mut self,
        name: &str,
        wan: (SegmentId, u8),
        lan: (SegmentId, u8),
    ) -> Result<Host, String> {
        if self.segments[lan.0.0].gateway.is_some() {
            return Err(format!(
                "segment {} has a router already",
                self.segments[lan.0.0].name
            ));
        }
        let router = self.host(name)?;
        self.link(&router, wan.0, wan.1)?;
        let gw = self.link(&router, lan.0, lan.1)?;
        run(
            "ip",
            &[
                "netns",
                "exec",
                &router.ns,
                "sysctl",
                "-qw",
                "net.ipv4.ip_forward=1",
            ],
        )?;
        self.segments[lan.0.0].gateway = Some(gw);
        Ok(router)
    }

    /// Tells `host` that segment `seg`'s /24 is reached through `via` (a
    /// router's address on a segment `host` is on).
    pub fn route_via(&self, host: &Host, seg: SegmentId, via: Ipv4Addr) -> Result<(), String> {
        let [a, b, c] = self.segments[seg.0].net;
        ip(&[
            "-n",
            &host.ns,
            "route",
            "add",
            &format!("{a}.{b}.{c}.0/24"),
            "via",
            &via.to_string(),
        ])
    }

    /// Bytes `host` received and sent on its link to `seg` so far.
    pub fn link_bytes(&self, host: &Host, seg: SegmentId) -> Result<(u64, u64), String> {
        let read = |what: &str| -> Result<u64, String> {
            let path = format!("/sys/class/net/eth{}/statistics/{what}", seg.0);
            let out = run("ip", &["netns", "exec", &host.ns, "cat", &path])?;
            out.trim()
                .parse()
                .map_err(|e| format!("{path} in {}: {e}", host.name))
        };
        Ok((read("rx_bytes")?, read("tx_bytes")?))
    }

    /// Makes `router` forward nothing between `inside` (a host of its site)
    /// and any address but `only`: a host that can reach the outside world
    /// through one address alone, such as a node behind a firewall that
    /// lets only its relay through.
    pub fn only_reach(
        &self,
        router: &Host,
        inside: Ipv4Addr,
        only: Ipv4Addr,
    ) -> Result<(), String> {
        let tool = self
            .nat_tool
            .ok_or("needs nftables (`nft`) or iptables for a firewall")?;
        match tool {
            NatTool::Nft => {
                let rules = format!(
                    "table ip p2plabfw {{ chain guard {{ type filter hook forward priority 0; \
                     ip saddr {inside} ip daddr != {only} drop; \
                     ip daddr {inside} ip saddr != {only} drop; }}; }}"
                );
                run("ip", &["netns", "exec", &router.ns, "nft", &rules]).map(drop)
            }
            NatTool::Iptables => {
                let (inside, only) = (inside.to_string(), only.to_string());
                for (dir_a, dir_b) in [("-s", "-d"), ("-d", "-s")] {
                    run(
                        "ip",
                        &[
                            "netns", "exec", &router.ns, "iptables", "-A", "FORWARD", dir_a,
                            &inside, "!", dir_b, &only, "-j", "DROP",
                        ],
                    )?;
                }
                Ok(())
            }
        }
    }

    /// Shapes `host`'s link on `seg` to `mbit` Mbit/s each way with `tbf`
    /// (its upload on the host's end, its download on the bridge's end).
    pub fn shape(&self, host: &Host, seg: SegmentId, mbit: u64) -> Result<(), String> {
        let rate = format!("{mbit}mbit");
        let tbf = |ns: &str, dev: &str| {
            ip(&[
                "-n", ns, "link", "show", dev, // fails early with a clear name
            ])?;
            run(
                "ip",
                &[
                    "netns", "exec", ns, "tc", "qdisc", "add", "dev", dev, "root", "tbf", "rate",
                    &rate, "burst", "64kb", "latency", "50ms",
                ],
            )
            .map(drop)
        };
        tbf(&host.ns, &format!("eth{}", seg.0))?;
        let outer = self.outer_of(host, seg)?;
        tbf(&self.hub, &outer)
    }

    /// The hub-side end of `host`'s link on `seg`.
    fn outer_of(&self, host: &Host, seg: SegmentId) -> Result<String, String> {
        // The peer of eth<seg> in the host: its ifindex in the hub.
        let out = run(
            "ip",
            &[
                "-n",
                &host.ns,
                "-o",
                "link",
                "show",
                &format!("eth{}", seg.0),
            ],
        )?;
        let peer_index = out
            .split_once('@')
            .and_then(|(_, rest)| rest.split(':').next())
            .and_then(|p| p.trim().strip_prefix("if"))
            .ok_or_else(|| format!("cannot read the veth peer of {}: {out}", host.name))?;
        let hub = run("ip", &["-n", &self.hub, "-o", "link", "show"])?;
        hub.lines()
            .find(|l| l.starts_with(&format!("{peer_index}:")))
            .and_then(|l| l.split(':').nth(1))
            .map(|n| n.trim().split('@').next().unwrap_or_default().to_string())
            .ok_or_else(|| format!("no hub interface with index {peer_index}"))
    }

    /// Takes `host`'s link on `seg` down (`up = false`) or up again: the
    /// host drops off that segment without any process noticing at once.
    pub fn set_link(&self, host: &Host, seg: SegmentId, up: bool) -> Result<(), String> {
        ip(&[
            "-n",
            &host.ns,
            "link",
            "set",
            &format!("eth{}", seg.0),
            if up { "up" } else { "down" },
        ])
    }

    /// A command that runs `program` in `host`'s namespace.
    pub fn command(&self, host: &Host, program: impl AsRef<OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &host.ns]).arg(program);
        c
    }
}

/// Masquerades what leaves `dev` in namespace `ns`; with `random`, with a
/// random source port per flow. New flows that arrive on `dev` for the
/// router itself are dropped, as a home router does: answered instead
/// (ICMP port unreachable, TCP reset), each would leave a connection-
/// tracking entry that makes the router pick another port for the host's
/// own packets to that peer a moment later, which breaks hole punching.
fn masquerade(ns: &str, dev: &str, tool: NatTool, random: bool) -> Result<(), String> {
    let random_flag = if random { " fully-random" } else { "" };
    match tool {
        NatTool::Nft => {
            let rules = format!(
                "table ip p2plab {{ \
                 chain post {{ type nat hook postrouting priority 100; \
                 oifname \"{dev}\" masquerade{random_flag}; }}; \
                 chain guard {{ type filter hook input priority 0; \
                 iifname \"{dev}\" ct state new drop; }}; }}"
            );
            run("ip", &["netns", "exec", ns, "nft", &rules]).map(drop)
        }
        NatTool::Iptables => {
            let mut args = vec![
                "netns",
                "exec",
                ns,
                "iptables",
                "-t",
                "nat",
                "-A",
                "POSTROUTING",
                "-o",
                dev,
                "-j",
                "MASQUERADE",
            ];
            if random {
                args.push("--random-fully");
            }
            run("ip", &args)?;
            run(
                "ip",
                &[
                    "netns",
                    "exec",
                    ns,
                    "iptables",
                    "-A",
                    "INPUT",
                    "-i",
                    dev,
                    "-m",
                    "conntrack",
                    "--ctstate",
                    "NEW",
                    "-j",
                    "DROP",
                ],
            )
            .map(drop)
        }
    }
}

/// Deletes namespaces of labs whose process is gone.
fn remove_stale() {
    let Ok(list) = run("ip", &["netns", "list"]) else {
        return;
    };
    for line in list.lines() {
        let name = line.split_whitespace().next().unwrap_or_default();
        let Some(rest) = name.strip_prefix("p2plab-") else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = ip(&["netns", "del", name]);
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for ns in self.namespaces.iter().rev() {
            if let Err(e) = ip(&["netns", "del", ns]) {
                eprintln!("netlab: cleanup: {e}");
            }
        }
    }
}
