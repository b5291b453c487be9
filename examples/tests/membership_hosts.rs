//! Joining a fleet with one address, between hosts: `p2pd` on three
//! network namespaces, two of them given only the first node's address,
//! and `p2pctl` on a fourth that knows only the third node. The
//! controller lists the whole fleet (`peers`, `nodes`), deploys by label
//! to nodes it was never told of, finds the release with `search`
//! through membership, gets past a bootstrap address that does not
//! answer, sees a killed node as unreachable, and finds it again at its
//! new address after a restart. Over iroh and over libp2p.
//!
//! Needs root and iproute2; otherwise each test prints `SKIPPED` and why.
#![allow(clippy::unwrap_used)]
// Real processes: deadlines are on the wall clock.
#![allow(clippy::disallowed_methods)]

use std::time::{Duration, Instant};

use p2p_examples::netlab::lab_for_test;

mod common;
use common::*;

/// Polls `f` every half second until it gives `Some`, for at most `secs`.
fn within<T>(secs: u64, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let begun = Instant::now();
    loop {
        if let Some(t) = f() {
            return t;
        }
        assert!(
            begun.elapsed() < Duration::from_secs(secs),
            "{what}: not within {secs} s"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn story(test: &str, tag: &str, net: u8, backend: &str) {
    let Some(mut lab) = lab_for_test(test, tag, false) else {
        return;
    };
    let lan = lab.segment("lan", [10, net, 0, 0]).unwrap();
    let hosts: Vec<_> = ["n1", "n2", "n3", "ctl"]
        .iter()
        .zip([1u8, 2, 3, 9])
        .map(|(name, i)| {
            let h = lab.host(name).unwrap();
            lab.attach(&h, lan, i).unwrap();
            h
        })
        .collect();
    let (h1, h2, h3, hctl) = (&hosts[0], &hosts[1], &hosts[2], &hosts[3]);
    let w = World::new();
    w.ok(&["psk", "--out", "net.psk"]);
    let psk = w.path().join("net.psk");
    let psk = psk.to_str().unwrap();
    let listen = "0.0.0.0:7401,[::]:7401";
    let d: Vec<_> = ["n1", "n2", "n3"]
        .iter()
        .map(|n| w.node_on(n, backend, listen))
        .collect();
    let n1 = Daemon::start_in(
        &lab,
        h1,
        &d[0],
        &["--label", "role=web,site=a", "--psk-file", psk],
    );
    let id1 = n1.addr();
    // n2 and n3 know only n1.
    let mut n2 = Daemon::start_in(
        &lab,
        h2,
        &d[1],
        &[
            "--label",
            "role=web,site=b",
            "--psk-file",
            psk,
            "--bootstrap",
            &id1,
        ],
    );
    let n3 = Daemon::start_in(
        &lab,
        h3,
        &d[2],
        &[
            "--label",
            "role=db,site=b",
            "--psk-file",
            psk,
            "--bootstrap",
            &id1,
        ],
    );
    let id3 = n3.addr();
    let n2_id = n2.addr().split('@').next().unwrap().to_string();

    // The controller knows n3 only.
    let env = [
        ("P2PCTL_BOOTSTRAP", id3.as_str()),
        ("P2PCTL_BACKEND", backend),
        ("P2PCTL_PSK_FILE", "net.psk"),
    ];
    let ctl = |args: &[&str]| w.ctl_in(&lab, hctl, &env, args);
    let peers = || {
        let o = ctl(&["peers", "--json"]);
        assert!(o.status.success(), "{}", text(&o));
        json_lines(&String::from_utf8_lossy(&o.stdout))
    };
    let rows = within(30, "three nodes up in n3's table", || {
        let rows = peers();
        (rows.iter().filter(|r| r["state"] == "up").count() == 3).then_some(rows)
    });
    for r in &rows {
        let addrs = r["addrs"].as_array().unwrap();
        assert!(
            addrs.iter().all(|a| {
                let a = a.as_str().unwrap();
                !a.contains("127.0.0.1") && !a.contains("[::1]")
            }),
            "a loopback address published: {r}"
        );
        assert!(
            addrs
                .iter()
                .any(|a| a.as_str().unwrap().contains(&format!("10.{net}.0."))),
            "{r}"
        );
    }
    let site_of = |name: &str| {
        rows.iter().find(|r| r["name"] == name).unwrap()["site"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert_eq!(
        (site_of("n1"), site_of("n2"), site_of("n3")),
        ("a".into(), "b".into(), "b".into())
    );
    let o = ctl(&["peers"]);
    assert!(text(&o).contains("3 up, 0 unreachable"), "{}", text(&o));

    // Every node answers, though only n3 was given.
    let nodes = json_lines(&String::from_utf8_lossy(&ctl(&["nodes", "--json"]).stdout));
    assert_eq!(nodes.len(), 3, "{nodes:?}");
    assert!(
        nodes.iter().all(|n| n["health"] != "unreachable"),
        "{nodes:?}"
    );

    // Deployed by label to n1 and n2, which the controller was never told of.
    let v1 = w.package("1.0.0", "\"--name\", \"v1\"");
    let o = ctl(&["deploy", &v1, "--selector", "role=web"]);
    assert!(o.status.success(), "{}", text(&o));
    let st = json_lines(&String::from_utf8_lossy(
        &ctl(&["status", "demo", "--json"]).stdout,
    ));
    let mut on: Vec<String> = st
        .iter()
        .map(|r| r["name"].as_str().unwrap().to_string())
        .collect();
    on.sort();
    assert_eq!(on, ["n1", "n2"], "{st:?}");

    // Search through membership: each holder's record lists it.
    within(20, "search lists both holders", || {
        let o = ctl(&["search", "demo", "--json"]);
        let hits = json_lines(&String::from_utf8_lossy(&o.stdout));
        hits.iter()
            .find(|h| h["version"] == "1.0.0")
            .filter(|h| h["holders"].as_array().unwrap().len() == 2)
            .cloned()
    });

    // Staged, then deployed: held already, nothing moves.
    let v2 = w.package_with("2.0.0", "\"--name\", \"v2\"", 2 << 20);
    let o = ctl(&["stage", &v2, "--selector", "role=web"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("stage demo 2.0.0: done on 2 node(s)"),
        "{}",
        text(&o)
    );
    let st = json_lines(&String::from_utf8_lossy(
        &ctl(&["status", "demo", "--json"]).stdout,
    ));
    assert!(
        st.iter().all(|r| r["app"]["active"] == "1.0.0"),
        "staging activated something: {st:?}"
    );
    let o = ctl(&["deploy", &v2, "--selector", "role=web"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("(100%)") && text(&o).contains("2 node(s) that fetched"),
        "{}",
        text(&o)
    );

    // A bootstrap address that does not answer is reported and the next
    // is used, in about the connect timeout.
    let ghost = String::from_utf8_lossy(&w.ctl(&["id", "--key", "ghost.key"]).stdout)
        .trim()
        .to_string();
    assert_eq!(ghost.len(), 64, "{ghost:?}");
    let dead_addr = match backend {
        "libp2p" => format!("/ip4/10.{net}.0.77/tcp/7401"),
        _ => format!("10.{net}.0.77:7401"),
    };
    let dead_first = format!("{ghost}@{dead_addr},{id3}");
    let env_dead = [
        ("P2PCTL_BOOTSTRAP", dead_first.as_str()),
        ("P2PCTL_BACKEND", backend),
        ("P2PCTL_PSK_FILE", "net.psk"),
    ];
    let begun = Instant::now();
    let o = w.ctl_in(
        &lab,
        hctl,
        &env_dead,
        &["peers", "--json", "--connect-timeout", "2s"],
    );
    let took = begun.elapsed();
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("did not answer"), "{}", text(&o));
    assert!(took < Duration::from_secs(10), "took {took:?}");
    assert_eq!(json_lines(&String::from_utf8_lossy(&o.stdout)).len(), 3);

    // n2 killed: shown unreachable, with since when.
    n2.kill();
    let down = within(60, "n2 shown unreachable", || {
        peers()
            .into_iter()
            .find(|r| r["id"] == n2_id.as_str() && r["state"] == "unreachable")
    });
    assert!(down["unreachable_since_ms"].as_u64().unwrap() > 0, "{down}");

    // Back on another port: found there.
    let _n2 = Daemon::start_in(
        &lab,
        h2,
        &d[1],
        &[
            "--label",
            "role=web,site=b",
            "--psk-file",
            psk,
            "--bootstrap",
            &id1,
            "--listen",
            "0.0.0.0:7411,[::]:7411",
        ],
    );
    let back = within(30, "n2 up at its new address", || {
        peers().into_iter().find(|r| {
            r["id"] == n2_id.as_str()
                && r["state"] == "up"
                && r["addrs"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|a| a.as_str().unwrap().contains("7411"))
        })
    });
    assert!(
        back["addrs"]
            .as_array()
            .unwrap()
            .iter()
            .all(|a| !a.as_str().unwrap().contains("7401")),
        "{back}"
    );
    let o = ctl(&["status", "demo", "--json", "--nodes", "n2"]);
    assert!(
        o.status.success(),
        "n2 reached at its new address: {}",
        text(&o)
    );
}

#[test]
fn joining_a_fleet_with_one_address_over_iroh() {
    story(
        "joining_a_fleet_with_one_address_over_iroh",
        "mbi",
        83,
        "iroh",
    );
}

#[test]
fn joining_a_fleet_with_one_address_over_libp2p() {
    story(
        "joining_a_fleet_with_one_address_over_libp2p",
        "mbl",
        84,
        "libp2p",
    );
}
