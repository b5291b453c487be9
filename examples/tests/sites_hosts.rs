//! Sites between hosts: two sites of four `p2pd` nodes, each site behind
//! a router whose WAN link is shaped to 20 Mbit/s, and `p2pctl` on the
//! WAN side knowing one node. The nodes carry `site` labels and take part
//! in membership, so a deploy brings each chunk into each site about once:
//! the bytes into a site over its router's WAN link stay near one copy of
//! the package (under 1.8 with the transports' headers and
//! acknowledgements; 1.31 to 1.58 measured with content-defined chunks,
//! 1.27 to 1.48 with format 1's fixed ones), where the same nodes without
//! site labels pulled 2.25 (libp2p) to 3.2 (iroh) copies. Over iroh and
//! over libp2p.
//!
//! Needs root and iproute2 (and `tc` for the shaping); otherwise each test
//! prints `SKIPPED` and why.
#![allow(clippy::unwrap_used)]
// Real processes: deadlines are on the wall clock.
#![allow(clippy::disallowed_methods)]

use std::time::{Duration, Instant};

use p2p_examples::netlab::lab_for_test;

mod common;
use common::*;

fn story(test: &str, tag: &str, net: u8, backend: &str) {
    let Some(mut lab) = lab_for_test(test, tag, false) else {
        return;
    };
    let wan = lab.segment("wan", [10, net, 0, 0]).unwrap();
    let sites = [
        lab.segment("s1", [10, net, 1, 0]).unwrap(),
        lab.segment("s2", [10, net, 2, 0]).unwrap(),
    ];
    let ctl = lab.host("ctl").unwrap();
    lab.attach(&ctl, wan, 9).unwrap();
    let routers = [
        lab.router("r1", (wan, 1), (sites[0], 254)).unwrap(),
        lab.router("r2", (wan, 2), (sites[1], 254)).unwrap(),
    ];
    let (gw1, gw2) = (lab.addr(wan, 1), lab.addr(wan, 2));
    lab.route_via(&ctl, sites[0], gw1).unwrap();
    lab.route_via(&ctl, sites[1], gw2).unwrap();
    lab.route_via(&routers[0], sites[1], gw2).unwrap();
    lab.route_via(&routers[1], sites[0], gw1).unwrap();
    for r in &routers {
        lab.shape(r, wan, 20).unwrap();
    }
    let w = World::new();
    let mut daemons = Vec::new();
    let mut first: Option<String> = None;
    for (s, seg) in sites.iter().enumerate() {
        for i in 1..=4u8 {
            let name = format!("s{}n{i}", s + 1);
            let host = lab.host(&name).unwrap();
            lab.attach(&host, *seg, i).unwrap();
            let dir = w.node_on(&name, backend, "0.0.0.0:7401");
            let labels = format!("role=web,site=s{}", s + 1);
            let mut args = vec!["--label", labels.as_str()];
            let bootstrap;
            if let Some(f) = &first {
                bootstrap = f.clone();
                args.extend(["--bootstrap", bootstrap.as_str()]);
            }
            let d = Daemon::start_in(&lab, &host, &dir, &args);
            if first.is_none() {
                first = Some(d.addr());
            }
            daemons.push(d);
        }
    }
    let first = first.unwrap();
    let env = [
        ("P2PCTL_BOOTSTRAP", first.as_str()),
        ("P2PCTL_BACKEND", backend),
    ];
    let ctl_run = |args: &[&str]| w.ctl_in(&lab, &ctl, &env, args);
    // Every node knows every other's site before the deploy.
    let begun = Instant::now();
    loop {
        let o = ctl_run(&["peers", "--json"]);
        let rows = json_lines(&String::from_utf8_lossy(&o.stdout));
        if rows.iter().filter(|r| r["state"] == "up").count() == 8 {
            break;
        }
        assert!(
            begun.elapsed() < Duration::from_secs(30),
            "membership did not list eight nodes: {}",
            text(&o)
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    // Let the last records reach every node, not only the one asked.
    std::thread::sleep(Duration::from_secs(4));

    let ballast = 8 << 20;
    let pkg = w.package_with("1.0.0", "\"--name\", \"v1\"", ballast);
    let size = std::fs::metadata(w.path().join(&pkg)).unwrap().len() as f64;
    let before: Vec<u64> = routers
        .iter()
        .map(|r| lab.link_bytes(r, wan).unwrap().0)
        .collect();
    let o = ctl_run(&["deploy", &pkg]);
    assert!(o.status.success(), "{}", text(&o));
    for (s, r) in routers.iter().enumerate() {
        let into = lab.link_bytes(r, wan).unwrap().0 - before[s];
        let copies = into as f64 / size;
        eprintln!(
            "{backend}: site s{} took in {into} bytes over its WAN link: {copies:.2} copies of the package",
            s + 1
        );
        assert!(
            // Blind to sites, 2.25 and more. Content-defined chunks vary in
            // size, which spreads the figure: 1.71 was seen once under CI
            // load with the chunks up to four times the average.
            copies <= 1.8,
            "site s{} took in {copies:.2} copies of the package over its WAN link",
            s + 1
        );
    }
}

#[test]
fn each_site_takes_in_a_release_about_once_over_iroh() {
    story(
        "each_site_takes_in_a_release_about_once_over_iroh",
        "sti",
        85,
        "iroh",
    );
}

#[test]
fn each_site_takes_in_a_release_about_once_over_libp2p() {
    story(
        "each_site_takes_in_a_release_about_once_over_libp2p",
        "stl",
        86,
        "libp2p",
    );
}
