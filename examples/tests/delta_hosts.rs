//! Delta releases between hosts: two `p2pd` nodes and `p2pctl` in network
//! namespaces on a bridge. Version 1 (an app with 8 MiB of data) is
//! deployed; version 2 changes only its manifest and arguments, so the
//! nodes already hold nearly every chunk. `p2pctl deploy` says how many
//! bytes each node will move, and the controller's link carries a small
//! fraction of the package (the first deploy carries it all). Over iroh
//! and over libp2p.
//!
//! Needs root and iproute2; otherwise each test prints `SKIPPED` and why.
#![allow(clippy::unwrap_used)]
// Real processes: deadlines are on the wall clock.
#![allow(clippy::disallowed_methods)]

use p2p_examples::netlab::lab_for_test;

mod common;
use common::*;

fn story(test: &str, tag: &str, net: u8, backend: &str) {
    let Some(mut lab) = lab_for_test(test, tag, false) else {
        return;
    };
    let lan = lab.segment("lan", [10, net, 0, 0]).unwrap();
    let ctl = lab.host("ctl").unwrap();
    lab.attach(&ctl, lan, 9).unwrap();
    let w = World::new();
    let mut daemons = Vec::new();
    let mut addrs = Vec::new();
    for i in 1..=2u8 {
        let name = format!("n{i}");
        let host = lab.host(&name).unwrap();
        lab.attach(&host, lan, i).unwrap();
        let dir = w.node_on(&name, backend, "0.0.0.0:7401");
        let d = Daemon::start_in(&lab, &host, &dir, &["--label", "role=web"]);
        addrs.push(d.addr());
        daemons.push(d);
    }
    let bs = addrs.join(",");
    let env = [
        ("P2PCTL_BOOTSTRAP", bs.as_str()),
        ("P2PCTL_BACKEND", backend),
    ];
    let deploy = |pkg: &str| {
        let sent = lab.link_bytes(&ctl, lan).unwrap().1;
        let o = w.ctl_in(&lab, &ctl, &env, &["deploy", pkg]);
        assert!(o.status.success(), "{}", text(&o));
        (lab.link_bytes(&ctl, lan).unwrap().1 - sent, text(&o))
    };
    let ballast = 8 << 20;
    // The same ballast (seeded by its size) and demo-app in both versions.
    let v1 = w.package_with("1.0.0", "\"--name\", \"v1\"", ballast);
    let v2 = w.package_with("2.0.0", "\"--name\", \"v2\"", ballast);
    let size = std::fs::metadata(w.path().join(&v2)).unwrap().len();
    let (full, _) = deploy(&v1);
    let (delta, out) = deploy(&v2);
    eprintln!(
        "{backend}: the controller sent {full} bytes for v1 and {delta} for v2 (package {size} bytes)"
    );
    assert!(
        full > size,
        "v1 reached two nodes with only {full} bytes sent"
    );
    assert!(
        delta < size / 8,
        "v2 differs from v1 in its manifest only, yet {delta} bytes left the controller: {out}"
    );
    // What the nodes said they would move, as p2pctl prints it.
    let line = out
        .lines()
        .find(|l| l.contains("already held on the 2 node(s)"))
        .unwrap_or_else(|| panic!("no summary of what was held: {out}"));
    let to_move: u64 = line
        .split("; ")
        .nth(1)
        .and_then(|s| s.strip_suffix(" bytes to move"))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("{line}"));
    assert!(
        to_move < 2 * size / 16,
        "the nodes were to move {to_move} of 2 x {size} bytes: {line}"
    );
    let o = w.ctl_in(&lab, &ctl, &env, &["status", "demo", "--json"]);
    assert_eq!(
        active_in(&String::from_utf8_lossy(&o.stdout)),
        pair("2.0.0", "2.0.0")
    );
}

#[test]
fn a_new_version_moves_only_what_changed_over_iroh() {
    story(
        "a_new_version_moves_only_what_changed_over_iroh",
        "dli",
        87,
        "iroh",
    );
}

#[test]
fn a_new_version_moves_only_what_changed_over_libp2p() {
    story(
        "a_new_version_moves_only_what_changed_over_libp2p",
        "dll",
        88,
        "libp2p",
    );
}
