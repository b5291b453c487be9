//! `p2pd` and `p2pctl` as processes on loopback, as a user runs them:
//! init, run, deploy, status, logs (tail and follow), stop and start,
//! rollback and switch, a tampered package refused, SIGTERM and restart,
//! SIGKILL mid-deploy and restart into a consistent state; over iroh, and
//! over libp2p with a pre-shared key that a controller without it cannot
//! get past, an allow-list, and an operator list.
#![allow(clippy::unwrap_used)]
// Real processes: deadlines are on the wall clock.
#![allow(clippy::disallowed_methods)]

use std::process::Stdio;
use std::time::{Duration, Instant};

mod common;
use common::*;

#[test]
fn a_fleet_of_two_daemons_over_iroh() {
    let w = World::new();
    let (d1, d2) = (w.node("n1", "iroh"), w.node("n2", "iroh"));
    let n1 = Daemon::start(&d1, &["--label", "role=web,zone=a"]);
    let n2 = Daemon::start(&d2, &["--label", "role=web,zone=b"]);
    let bs = format!("{},{}", n1.addr(), n2.addr());
    let v1 = w.package("1.0.0", "\"--name\", \"v1\"");
    let v2 = w.package("2.0.0", "\"--name\", \"v2\"");

    let nodes = json_lines(&w.ok(&["nodes", "--json", "--bootstrap", &bs]));
    assert_eq!(nodes.len(), 2, "{nodes:?}");
    assert!(
        nodes
            .iter()
            .any(|n| n["name"] == "n1" && n["labels"]["zone"] == "a")
    );
    let picked = json_lines(&w.ok(&["nodes", "--json", "-l", "zone=b", "--bootstrap", &bs]));
    assert_eq!(picked.len(), 1);
    assert_eq!(picked[0]["name"], "n2");

    let o = w.ctl(&[
        "deploy",
        &v1,
        "--plan",
        "rolling",
        "--batch",
        "1",
        "--bootstrap",
        &bs,
    ]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("healthy"), "progress shown: {}", text(&o));
    assert_eq!(active(&w, &bs), pair("1.0.0", "1.0.0"));

    let logs = w.ok(&["logs", "demo", "--tail", "5", "--bootstrap", &bs]);
    assert!(logs.lines().any(|l| l.starts_with("n1 ")), "{logs}");
    assert!(logs.lines().any(|l| l.starts_with("n2 ")), "{logs}");

    // Follow: lines keep coming from both nodes (the health probes log).
    follow_until_lines_from(
        w.spawn_ctl(
            &["logs", "demo", "-f", "--tail", "0", "--bootstrap", &bs],
            Stdio::piped(),
        ),
        2,
    );

    w.ok(&["stop", "demo", "--nodes", "n1", "--bootstrap", &bs]);
    let st = status_of(&w, &bs, "n1");
    assert_eq!(st[0]["app"]["running"], false, "{st:?}");
    w.ok(&["start", "demo", "--nodes", "n1", "--bootstrap", &bs]);

    w.ok(&["deploy", &v2, "--bootstrap", &bs]);
    assert_eq!(active(&w, &bs), pair("2.0.0", "2.0.0"));
    w.ok(&["rollback", "demo", "--bootstrap", &bs]);
    assert_eq!(active(&w, &bs), pair("1.0.0", "1.0.0"));
    w.ok(&[
        "switch",
        "demo",
        "2.0.0",
        "--nodes",
        "n2",
        "--bootstrap",
        &bs,
    ]);
    assert_eq!(active(&w, &bs), pair("1.0.0", "2.0.0"));

    // A package whose signature bytes were changed: every node refuses
    // it, nothing changes.
    let v3 = w.package("3.0.0", "\"--name\", \"v3\"");
    let mut bytes = std::fs::read(w.path().join(&v3)).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(w.path().join(&v3), bytes).unwrap();
    let o = w.ctl(&["deploy", &v3, "--bootstrap", &bs]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("every node refused"), "{}", text(&o));
    assert_eq!(active(&w, &bs), pair("1.0.0", "2.0.0"));

    // A package with a byte of its archive changed (its signatures hold):
    // p2pctl refuses it itself, naming the chunk, before any node hears
    // of it.
    let v4 = w.package("4.0.0", "\"--name\", \"v4\"");
    let at = p2p_deploy::PackageFile::open(&w.path().join(&v4))
        .unwrap()
        .archive_offset
        + 5;
    let mut bytes = std::fs::read(w.path().join(&v4)).unwrap();
    bytes[at as usize] ^= 0x01;
    std::fs::write(w.path().join(&v4), bytes).unwrap();
    let o = w.ctl(&["deploy", &v4, "--bootstrap", &bs]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        text(&o).contains("chunk 0 of the archive does not match its hash")
            && text(&o).contains("nothing was sent"),
        "{}",
        text(&o)
    );
    assert_eq!(active(&w, &bs), pair("1.0.0", "2.0.0"));
    let search = json_lines(&w.ok(&["search", "demo", "--json", "--bootstrap", &bs]));
    assert!(
        search.iter().all(|h| h["version"] != "4.0.0"),
        "a node holds the refused package: {search:?}"
    );

    let search = json_lines(&w.ok(&["search", "dem*", "--json", "--bootstrap", &bs]));
    assert!(search.iter().any(|h| h["version"] == "2.0.0"), "{search:?}");

    // SIGTERM stops the agent and its apps; a new p2pd brings them back.
    assert!(n1.terminate().success());
    let n1 = Daemon::start(&d1, &["--label", "role=web,zone=a"]);
    let bs = format!("{},{}", n1.addr(), n2.addr());
    let begun = Instant::now();
    loop {
        let st = status_of(&w, &bs, "n1");
        if st[0]["app"]["status"]["state"] == "healthy" {
            assert_eq!(st[0]["app"]["active"], "1.0.0");
            break;
        }
        assert!(begun.elapsed() < Duration::from_secs(30), "{st:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn a_private_network_over_libp2p() {
    let w = World::new();
    w.ok(&["psk", "--out", "net.psk"]);
    let psk = w.path().join("net.psk");
    let d1 = w.node("n1", "libp2p");
    let n1 = Daemon::start(&d1, &["--psk-file", psk.to_str().unwrap()]);
    let bs = n1.addr();
    let v1 = w.package("1.0.0", "\"--name\", \"v1\"");

    let o = w.ctl(&[
        "deploy",
        &v1,
        "--backend",
        "libp2p",
        "--psk-file",
        "net.psk",
        "--bootstrap",
        &bs,
    ]);
    assert!(o.status.success(), "{}", text(&o));

    // Without the key: nothing is seen, nothing is changed.
    let o = w.ctl(&["nodes", "--json", "--backend", "libp2p", "--bootstrap", &bs]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let rows = json_lines(&String::from_utf8_lossy(&o.stdout));
    assert!(
        rows.iter().all(|r| r["health"] == "unreachable"),
        "{rows:?}"
    );
    let o = w.ctl(&[
        "stop",
        "demo",
        "--backend",
        "libp2p",
        "--nodes",
        "n1",
        "--bootstrap",
        &bs,
    ]);
    assert!(!o.status.success(), "{}", text(&o));
    let o = w.ctl(&[
        "status",
        "demo",
        "--json",
        "--backend",
        "libp2p",
        "--psk-file",
        "net.psk",
        "--bootstrap",
        &bs,
    ]);
    let st = json_lines(&String::from_utf8_lossy(&o.stdout));
    assert_eq!(st[0]["app"]["running"], true, "{}", text(&o));
}

#[test]
fn an_agent_killed_mid_deploy_restarts_consistent() {
    let w = World::new();
    let d1 = w.node("n1", "iroh");
    let mut n1 = Daemon::start(&d1, &[]);
    let v1 = w.package("1.0.0", "\"--name\", \"v1\"");
    w.ok(&["deploy", &v1, "--bootstrap", &n1.addr()]);
    let source = std::fs::read(w.path().join("app-1.0.0/demo-app")).unwrap();

    // SIGKILL during the transfer, the install, and the health gate.
    for (i, delay_ms) in [50u64, 400, 1000].into_iter().enumerate() {
        let version = format!("{}.0.0", i + 2);
        let pkg = w.package(&version, "\"--name\", \"next\"");
        n1 = w.sigkill_during_deploy(n1, &pkg, Duration::from_millis(delay_ms));
        let bs = n1.addr();
        let before = format!("{}.0.0", i + 1);
        let active = healthy(&w, &bs, "n1");
        assert!(
            active == before || active == version,
            "kill at {delay_ms} ms: active {active}, expected {before} or {version}"
        );
        // One copy of the app runs: the one the restarted agent started;
        // the killed agent's orphan was stopped. A health probe (`demo-app
        // --probe`, every 200 ms) may be seen for an instant besides: an
        // orphan stays, a probe goes.
        let begun = Instant::now();
        let mut procs = processes_under(&d1);
        while procs.len() != 1 && begun.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(100));
            procs = processes_under(&d1);
        }
        assert_eq!(procs.len(), 1, "kill at {delay_ms} ms: {procs:?}");
        // Every installed version is whole.
        let st = status_of(&w, &bs, "n1");
        for v in st[0]["app"]["installed"].as_array().unwrap() {
            let v = v[0].as_str().unwrap();
            let bin = d1.join("versions/demo").join(v).join("demo-app");
            assert_eq!(
                std::fs::read(&bin).unwrap(),
                source,
                "kill at {delay_ms} ms: {} differs from the package's",
                bin.display()
            );
        }
        // The same deploy again completes.
        w.ok(&["deploy", &pkg, "--bootstrap", &bs]);
        assert_eq!(healthy(&w, &bs, "n1"), version);
    }
}

#[test]
fn operators_and_the_allow_list_over_libp2p() {
    let w = World::new();
    w.ok(&["psk", "--out", "net.psk"]);
    let psk = w.path().join("net.psk");
    let id_of = |key: Option<&str>| {
        let mut args = vec!["id"];
        if let Some(k) = key {
            args.extend(["--key", k]);
        }
        w.ok(&args).trim().to_string()
    };
    let (a, b, c) = (id_of(None), id_of(Some("b.key")), id_of(Some("c.key")));
    let d1 = w.node("n1", "libp2p");
    let n1 = Daemon::start(
        &d1,
        &[
            "--psk-file",
            psk.to_str().unwrap(),
            "--allow-peer",
            &format!("{a},{b}"),
            "--operator",
            &a,
        ],
    );
    let bs = n1.addr();
    let net = [
        "--backend",
        "libp2p",
        "--psk-file",
        "net.psk",
        "--bootstrap",
    ];
    let with = |key: Option<&str>, args: &[&str]| {
        let mut all: Vec<&str> = args.to_vec();
        all.extend(net);
        all.push(&bs);
        if let Some(k) = key {
            all.extend(["--key", k]);
        }
        w.ctl(&all)
    };

    // The operator deploys.
    let v1 = w.package("1.0.0", "\"--name\", \"v1\"");
    let o = with(None, &["deploy", &v1]);
    assert!(o.status.success(), "{}", text(&o));

    // An allowed peer that is not an operator reads, and is refused
    // every change.
    let o = with(Some("b.key"), &["status", "demo", "--json"]);
    assert!(o.status.success(), "{}", text(&o));
    for change in [
        vec!["stop", "demo"],
        vec!["rollback", "demo"],
        vec!["remove", "demo"],
    ] {
        let o = with(Some("b.key"), &change);
        assert_eq!(o.status.code(), Some(1), "{change:?}: {}", text(&o));
        assert!(
            text(&o).contains("not an operator"),
            "{change:?}: {}",
            text(&o)
        );
    }
    let o = with(Some("b.key"), &["deploy", &v1]);
    assert!(!o.status.success(), "{}", text(&o));

    // A peer with the key but not on the allow-list sees nothing.
    let o = with(Some("c.key"), &["nodes", "--json"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let rows = json_lines(&String::from_utf8_lossy(&o.stdout));
    assert!(
        rows.iter().all(|r| r["health"] == "unreachable"),
        "{rows:?}"
    );
    let o = with(Some("c.key"), &["stop", "demo", "--nodes", &n1_id(&d1)]);
    assert!(!o.status.success(), "{}", text(&o));
    let _ = c;

    // Through all of it the app kept running.
    let o = with(None, &["status", "demo", "--json"]);
    let st = json_lines(&String::from_utf8_lossy(&o.stdout));
    assert_eq!(st[0]["app"]["running"], true, "{}", text(&o));
    assert_eq!(st[0]["app"]["active"], "1.0.0", "{}", text(&o));
}

/// Bad relay settings stop p2pd and p2pctl at start, with the setting
/// named.
#[test]
fn bad_relay_settings_are_refused_at_start() {
    let w = World::new();
    let d1 = w.node("n1", "iroh");
    let p2pd = |args: &[&str]| {
        let mut all = vec!["--data-dir", d1.to_str().unwrap(), "run"];
        all.extend(args);
        w.run(env!("CARGO_BIN_EXE_p2pd"), &all)
    };
    for (args, says) in [
        (vec!["--relay", "relay:443"], "relays"),
        (vec!["--relay", "ftp://relay.example.com"], "relays"),
        (
            vec![
                "--relay",
                "https://relay.example.com",
                "--relay-ca",
                "none.pem",
            ],
            "relay_ca",
        ),
        (vec!["--connectivity", "relays"], "connectivity"),
    ] {
        let o = p2pd(&args);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {}", text(&o));
        assert!(text(&o).contains(says), "{args:?}: {}", text(&o));
    }
    let id = key_file_peer_id(&d1);
    let o = w.ctl(&["nodes", "--relay", "relay:443", "--bootstrap", &id]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("relays"), "{}", text(&o));
}

/// The peer id in a node's key file (a line `# peer id: <id>`).
fn key_file_peer_id(dir: &std::path::Path) -> String {
    let text = std::fs::read_to_string(dir.join("node.key")).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("# peer id: "))
        .unwrap()
        .trim()
        .to_string()
}
