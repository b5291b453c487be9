//! `p2pd` and `p2pctl` on separate hosts, as a user runs them: each
//! process in its own network namespace on a shared bridge, the nodes on
//! every interface (IPv4 and IPv6), the controller with its defaults. The
//! flows of the loopback tests (nodes, deploy, status, logs and logs -f,
//! stop and start, rollback, refusal without the pre-shared key), over
//! iroh and over libp2p, with the bootstrap list pasted from what `p2pd id`
//! prints. A loopback-only assumption anywhere fails here.
//!
//! Needs root and iproute2; otherwise each test prints `SKIPPED` and why.
#![allow(clippy::unwrap_used)]
// Real processes: deadlines are on the wall clock.
#![allow(clippy::disallowed_methods)]

use p2p_examples::netlab::{Host, Lab, lab_for_test};
use std::process::Stdio;
use std::time::{Duration, Instant};

mod common;
use common::*;

struct Site {
    lab: Lab,
    n1: Host,
    n2: Host,
    ctl: Host,
}

fn site(test: &str, tag: &str, net: u8) -> Option<Site> {
    let mut lab = lab_for_test(test, tag, false)?;
    let lan = lab.segment("lan", [10, net, 0, 0]).unwrap();
    let n1 = lab.host("n1").unwrap();
    lab.attach(&n1, lan, 1).unwrap();
    let n2 = lab.host("n2").unwrap();
    lab.attach(&n2, lan, 2).unwrap();
    let ctl = lab.host("ctl").unwrap();
    lab.attach(&ctl, lan, 9).unwrap();
    Some(Site { lab, n1, n2, ctl })
}

/// The deploy story between three hosts over `backend`.
fn story(test: &str, tag: &str, net: u8, backend: &str) {
    let Some(s) = site(test, tag, net) else {
        return;
    };
    let w = World::new();
    w.ok(&["psk", "--out", "net.psk"]);
    let psk = w.path().join("net.psk");
    let listen = "0.0.0.0:7401,[::]:7401";
    let (d1, d2) = (
        w.node_on("n1", backend, listen),
        w.node_on("n2", backend, listen),
    );
    let args = |labels: &'static str| vec!["--label", labels, "--psk-file", psk.to_str().unwrap()];
    // n1 serves its metrics to the monitoring network (here, the LAN).
    let n1_args = [
        &args("role=web,zone=a")[..],
        &["--metrics-addr", "0.0.0.0:9464"],
    ]
    .concat();
    let mut n1 = Daemon::start_in(&s.lab, &s.n1, &d1, &n1_args);
    let mut n2 = Daemon::start_in(&s.lab, &s.n2, &d2, &args("role=web,zone=b"));

    // What `p2pd id` prints is pasted as it is: every address of the host
    // (IPv4 and IPv6), none of them loopback.
    let id_of = |d: &std::path::Path| {
        let o = w.run(
            env!("CARGO_BIN_EXE_p2pd"),
            &["--data-dir", d.to_str().unwrap(), "id"],
        );
        assert!(o.status.success(), "{}", text(&o));
        String::from_utf8_lossy(&o.stdout).trim().to_string()
    };
    let (id1, id2) = (id_of(&d1), id_of(&d2));
    for (id, ip) in [
        (&id1, format!("10.{net}.0.1")),
        (&id2, format!("10.{net}.0.2")),
    ] {
        assert!(id.contains(&ip), "{id}");
        assert!(id.contains("2001:db8:70:"), "no IPv6 address in {id}");
        assert!(!id.contains("127.0.0.1"), "{id}");
    }
    let bs = format!("{id1},{id2}");
    let env = [
        ("P2PCTL_BOOTSTRAP", bs.as_str()),
        ("P2PCTL_BACKEND", backend),
        ("P2PCTL_PSK_FILE", "net.psk"),
    ];
    let ctl = |args: &[&str]| w.ctl_in(&s.lab, &s.ctl, &env, args);
    let ok = |args: &[&str]| {
        let o = ctl(args);
        assert!(o.status.success(), "p2pctl {args:?}: {}", text(&o));
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let active = || active_in(&ok(&["status", "demo", "--json"]));

    // The fleet, reached directly from the controller's host.
    let nodes = json_lines(&ok(&["nodes", "--json", "-v"]));
    assert_eq!(nodes.len(), 2, "{nodes:?}");
    for n in &nodes {
        assert_eq!(n["path"], "direct", "{n}");
        let addr = n["address"].as_str().unwrap();
        assert!(
            addr.contains(&format!("10.{net}.0.")) || addr.contains("2001:db8:70:"),
            "{n}"
        );
    }

    let v1 = w.package("1.0.0", "\"--name\", \"v1\"");
    let v2 = w.package("2.0.0", "\"--name\", \"v2\"");
    // The plan first: two batches, every byte to move, nothing changed.
    let plan = json_lines(&ok(&[
        "deploy",
        &v1,
        "--dry-run",
        "--json",
        "--plan",
        "rolling",
        "--batch",
        "1",
    ]));
    assert_eq!(plan.len(), 3, "{plan:?}");
    for (i, row) in plan[..2].iter().enumerate() {
        assert_eq!(row["batch"], i as u64 + 1, "{row}");
        assert!(row["refusal"].is_null() && row["active"].is_null(), "{row}");
        assert!(row["missing_bytes"].as_u64().unwrap() > 100_000, "{row}");
    }
    assert!(
        plan[2]["dry_run"]["halts_after_batch"].is_null(),
        "{plan:?}"
    );
    let st = json_lines(&ok(&["status", "--json"]));
    assert!(
        st.iter().all(|n| n["app"].is_null()),
        "a dry run installed: {st:?}"
    );
    let o = ctl(&["deploy", &v1, "--plan", "rolling", "--batch", "1"]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(active(), pair("1.0.0", "1.0.0"));
    let plan = json_lines(&ok(&["deploy", &v1, "--dry-run", "--json"]));
    assert!(
        plan[..2]
            .iter()
            .all(|r| r["already_active"] == true && r["missing_bytes"] == 0),
        "{plan:?}"
    );

    // The events of both logs, merged; n1's metrics, scraped from the
    // controller's host, pass promtool.
    let events = json_lines(&ok(&["events", "--json"]));
    for node in ["n1", "n2"] {
        let mine: Vec<_> = events.iter().filter(|e| e["name"] == node).collect();
        let types: Vec<&str> = mine.iter().map(|e| e["type"].as_str().unwrap()).collect();
        assert_eq!(
            types,
            [
                "deploy_accepted",
                "transfer_done",
                "installed",
                "gate_passed"
            ],
            "{node}: {events:?}"
        );
        let idx: Vec<u64> = mine.iter().map(|e| e["index"].as_u64().unwrap()).collect();
        assert_eq!(idx, [1, 2, 3, 4], "{node}");
    }
    let o = ctl(&["events", "--since", "9"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        text(&o).contains("beyond this node's event log, which ends at 4"),
        "{}",
        text(&o)
    );
    if let Some(promtool) = tool_for_test(test, "promtool") {
        let url = format!("http://10.{net}.0.1:9464/metrics");
        let metrics = http_get_in(&s.lab, &s.ctl, &url);
        assert!(
            metrics.contains("p2p_deploys_total{outcome=\"activated\"} 1"),
            "{metrics}"
        );
        let (fine, said) = promtool_check(&promtool, &metrics);
        assert!(fine, "{said}");
    }

    // A follower of the logs sees n1's events across a restart of n1:
    // none lost, none twice.
    let mut follow = w.spawn_ctl_in(
        &s.lab,
        &s.ctl,
        &env,
        &["events", "-f", "--json", "--since", "4"],
        Stdio::piped(),
    );
    let follow_out = follow.stdout.take().unwrap();
    let followed = std::thread::spawn(move || {
        use std::io::BufRead;
        std::io::BufReader::new(follow_out)
            .lines()
            .map_while(Result::ok)
            .collect::<Vec<_>>()
    });
    std::thread::sleep(Duration::from_secs(2));
    assert!(n1.terminate().success());
    n1 = Daemon::start_in(&s.lab, &s.n1, &d1, &n1_args);
    // Events on both while the follower waits for n1 to answer again.
    ok(&["stop", "demo"]);
    ok(&["deploy", &v2, "--nodes", "n1"]);
    std::thread::sleep(Duration::from_secs(4));
    let _ = follow.kill();
    let _ = follow.wait();
    let followed = json_lines(&followed.join().unwrap().join("\n"));
    let n1_idx: Vec<u64> = followed
        .iter()
        .filter(|e| e["name"] == "n1")
        .map(|e| e["index"].as_u64().unwrap())
        .collect();
    assert_eq!(n1_idx, [5, 6, 7, 8], "n1 after its restart: {followed:?}");
    let n1_types: Vec<&str> = followed
        .iter()
        .filter(|e| e["name"] == "n1")
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert_eq!(
        n1_types,
        [
            "deploy_accepted",
            "transfer_done",
            "installed",
            "gate_passed"
        ],
        "{followed:?}"
    );
    ok(&["start", "demo"]);
    ok(&["rollback", "demo", "--nodes", "n1"]);
    assert_eq!(active(), pair("1.0.0", "1.0.0"));

    let logs = ok(&["logs", "demo", "--tail", "5"]);
    assert!(logs.lines().any(|l| l.starts_with("n1 ")), "{logs}");
    assert!(logs.lines().any(|l| l.starts_with("n2 ")), "{logs}");
    follow_until_lines_from(
        w.spawn_ctl_in(
            &s.lab,
            &s.ctl,
            &env,
            &["logs", "demo", "-f", "--tail", "0"],
            Stdio::piped(),
        ),
        2,
    );

    ok(&["stop", "demo", "--nodes", "n1"]);
    let st = json_lines(&ok(&["status", "demo", "--json", "--nodes", "n1"]));
    assert_eq!(st[0]["app"]["running"], false, "{st:?}");
    ok(&["start", "demo", "--nodes", "n1"]);

    ok(&["deploy", &v2]);
    assert_eq!(active(), pair("2.0.0", "2.0.0"));
    ok(&["rollback", "demo"]);
    assert_eq!(active(), pair("1.0.0", "1.0.0"));

    // Without the pre-shared key: nothing seen, nothing changed.
    let without = [
        ("P2PCTL_BOOTSTRAP", bs.as_str()),
        ("P2PCTL_BACKEND", backend),
    ];
    let o = w.ctl_in(&s.lab, &s.ctl, &without, &["nodes", "--json"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let rows = json_lines(&String::from_utf8_lossy(&o.stdout));
    assert!(
        rows.len() == 2 && rows.iter().all(|r| r["health"] == "unreachable"),
        "{rows:?}"
    );
    let o = w.ctl_in(&s.lab, &s.ctl, &without, &["stop", "demo", "--nodes", "n1"]);
    assert!(!o.status.success(), "{}", text(&o));
    let st = json_lines(&ok(&["status", "demo", "--json"]));
    assert!(st.iter().all(|n| n["app"]["running"] == true), "{st:?}");
    // The node said what it refused, and from where, without a line per
    // attempt.
    let log = n1.log();
    let refusals: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("refused an inbound"))
        .collect();
    assert!(
        refusals
            .iter()
            .any(|l| l.contains(&format!("10.{net}.0.9")) || l.contains("2001:db8:70:")),
        "no refusal with the controller's address in n1's log:\n{log}\nlast p2pctl: {}",
        text(&o)
    );
    assert!(refusals.len() <= 6, "{refusals:#?}");

    // A node killed in its health gate (eight seconds long here) is
    // reported once it falls silent, not at the transport's idle timeout
    // (30 s and more), and the rollout goes on within its failure limit.
    let n2_id = id2.split('@').next().unwrap().to_string();
    let v3 = w.package_health(
        "3.0.0",
        "\"--name\", \"v3\"",
        "interval = \"1s\"\ntimeout = \"2s\"\nretries = 3\ngate = 8\n",
    );
    let args = [
        "deploy",
        &v3,
        "--json",
        "--max-failures",
        "1",
        "--node-silence",
        "2s",
    ];
    let mut deploy = w.spawn_ctl_in(&s.lab, &s.ctl, &env, &args, Stdio::piped());
    let (tx, rx) = std::sync::mpsc::channel();
    let out = deploy.stdout.take().unwrap();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
            let _ = tx.send((Instant::now(), line));
        }
    });
    let mut lines = Vec::new();
    let wait = |what: &dyn Fn(&str) -> bool, lines: &mut Vec<String>| loop {
        let (at, line) = rx
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|_| panic!("no such line in {lines:#?}"));
        let hit = what(&line);
        lines.push(line);
        if hit {
            return at;
        }
    };
    wait(
        &|l: &str| l.contains("\"started\"") && l.contains(&n2_id),
        &mut lines,
    );
    std::thread::sleep(Duration::from_secs(1));
    n2.kill();
    let killed = Instant::now();
    let reported = wait(
        &|l: &str| l.contains("\"node_done\"") && l.contains(&n2_id),
        &mut lines,
    );
    let last = lines.last().unwrap().clone();
    assert!(last.contains("stopped answering"), "{last}");
    // Well under the transport's idle timeout, with room for a loaded
    // machine: the heartbeat is what noticed.
    let after = reported - killed;
    assert!(
        after < Duration::from_secs(15),
        "reported {after:?} after the kill"
    );
    let status = deploy.wait().unwrap();
    assert_eq!(status.code(), Some(3), "n1 on 3.0.0, n2 failed: {lines:#?}");

    // With n2 down, listings take the connect timeout and say so; n1 is
    // shown, n2 is unreachable, and the exit code says "some".
    for cmd in [&["nodes", "--json"][..], &["status", "demo", "--json"][..]] {
        let begun = Instant::now();
        let o = ctl(&[cmd, &["--connect-timeout", "2s"]].concat());
        let took = begun.elapsed();
        assert_eq!(o.status.code(), Some(3), "{cmd:?}: {}", text(&o));
        assert!(took < Duration::from_secs(8), "{cmd:?} took {took:?}");
        let rows = json_lines(&String::from_utf8_lossy(&o.stdout));
        let down = rows
            .iter()
            .find(|r| r["node"] == n2_id.as_str() || r["id"] == n2_id.as_str())
            .unwrap_or_else(|| panic!("{cmd:?}: no row for n2: {rows:?}"));
        assert!(
            down["health"] == "unreachable" || down["unreachable"] == true,
            "{down}"
        );
        assert!(text(&o).contains("did not answer"), "{}", text(&o));
    }
    // The same rule for the other commands: n1 did it, n2 did not.
    let o = ctl(&["logs", "demo", "--tail", "1", "--connect-timeout", "2s"]);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    assert!(text(&o).contains("n1 "), "{}", text(&o));
    let o = ctl(&["restart", "demo", "--connect-timeout", "2s"]);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    assert!(
        text(&o).contains("restart demo: done on 1 of 2"),
        "{}",
        text(&o)
    );
}

#[test]
fn a_fleet_on_separate_hosts_over_iroh() {
    story("a_fleet_on_separate_hosts_over_iroh", "bhi", 81, "iroh");
}

#[test]
fn a_fleet_on_separate_hosts_over_libp2p() {
    story("a_fleet_on_separate_hosts_over_libp2p", "bhl", 82, "libp2p");
}
