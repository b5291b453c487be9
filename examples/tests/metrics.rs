//! `p2pd`'s metrics endpoint as an operator meets it: the text passes
//! `promtool check metrics`, a real Prometheus server scrapes it and
//! answers a query for a deploy counted, and an address that cannot be
//! bound stops `p2pd` at start, naming it, before any app starts.
//!
//! `promtool` and `prometheus` come from the distribution's `prometheus`
//! package (`.ci/run` installs it); without them the tests print
//! `SKIPPED` and why.
#![allow(clippy::unwrap_used)]
// Real processes: deadlines are on the wall clock.
#![allow(clippy::disallowed_methods)]

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::*;

/// A scrape of `addr`'s `/metrics`, waiting for the endpoint to come up.
fn scrape(addr: &str) -> String {
    let begun = Instant::now();
    loop {
        match http_get(addr, "/metrics") {
            Ok((200, body)) => return body,
            other => {
                assert!(
                    begun.elapsed() < Duration::from_secs(20),
                    "no metrics at {addr}: {other:?}"
                );
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    }
}

/// The `p2p_*` and `process_*` metric names a PromQL expression uses.
fn metric_names(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let bytes: Vec<char> = expr.chars().collect();
    let mut i = 0;
    while i < bytes.len() {
        let rest: String = bytes[i..].iter().collect();
        let starts = (rest.starts_with("p2p_") || rest.starts_with("process_"))
            && (i == 0 || !(bytes[i - 1].is_alphanumeric() || bytes[i - 1] == '_'));
        if starts {
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            i += name.len();
            out.push(name);
        } else {
            i += 1;
        }
    }
    out
}

fn text_of(o: &std::process::Output) -> String {
    text(o)
}

fn value(text: &str, sample: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(sample)?.strip_prefix(' ')?.parse().ok())
}

#[test]
fn metrics_pass_promtool_and_a_prometheus_server_scrapes_them() {
    let test = "metrics_pass_promtool_and_a_prometheus_server_scrapes_them";
    let Some(promtool) = tool_for_test(test, "promtool") else {
        return;
    };
    let Some(prometheus) = tool_for_test(test, "prometheus") else {
        return;
    };
    let w = World::new();
    let d1 = w.node("n1", "iroh");
    let metrics = format!("127.0.0.1:{}", free_port());
    let n1 = Daemon::start(&d1, &["--metrics-addr", &metrics]);
    let bs = n1.addr();
    let v1 = w.package("1.0.0", "\"--name\", \"v1\"");
    w.ok(&["deploy", &v1, "--bootstrap", &bs]);
    assert_eq!(healthy(&w, &bs, "n1"), "1.0.0");

    // What a scrape without an Accept header gets (the classic format),
    // and what promtool thinks of it. The app states are read every 2 s.
    let state = "p2p_app_state{app=\"demo\",version=\"1.0.0\",state=\"healthy\"}";
    let begun = Instant::now();
    let text = loop {
        let text = scrape(&metrics);
        if value(&text, state).is_some() || begun.elapsed() > Duration::from_secs(10) {
            break text;
        }
        std::thread::sleep(Duration::from_millis(300));
    };
    for sample in [
        "p2p_deploys_total{outcome=\"activated\"}",
        "p2p_connections_established_total{direction=\"in\"}",
        "p2p_chunks_verified_total",
        "p2p_chunk_duplicate_bytes_total{peer=\"peer\"}",
        "p2p_health_gate_duration_seconds_count{outcome=\"passed\"}",
        "p2p_app_state{app=\"demo\",version=\"1.0.0\",state=\"healthy\"}",
        "p2p_chunk_store_bytes",
        "process_resident_memory_bytes",
        "process_cpu_seconds_total",
    ] {
        assert!(value(&text, sample).is_some(), "{sample} missing:\n{text}");
    }
    assert_eq!(
        value(&text, "p2p_deploys_total{outcome=\"activated\"}"),
        Some(1.0)
    );
    let received = value(
        &text,
        "p2p_chunk_bytes_total{direction=\"received\",peer=\"seed\"}",
    )
    .unwrap();
    let store = value(&text, "p2p_chunk_store_bytes").unwrap();
    assert_eq!(received, store, "the one release's bytes, fetched and kept");
    let (ok, said) = promtool_check(&promtool, &text);
    assert!(ok, "promtool check metrics: {said}\n{text}");
    // The sample dashboard and alerting rules ask only for metrics that
    // p2pd serves, and the rules are valid.
    let monitoring = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("monitoring");
    let dash: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(monitoring.join("grafana-dashboard.json")).unwrap(),
    )
    .unwrap();
    let mut exprs: Vec<String> = dash["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["targets"].as_array().unwrap().clone())
        .map(|t| t["expr"].as_str().unwrap().to_string())
        .collect();
    let rules = monitoring.join("alerts.yml");
    exprs.extend(
        std::fs::read_to_string(&rules)
            .unwrap()
            .lines()
            .filter_map(|l| l.trim().strip_prefix("expr:").map(str::to_string)),
    );
    assert!(exprs.len() > 15);
    for e in &exprs {
        for name in metric_names(e) {
            assert!(
                text.lines()
                    .any(|l| l.starts_with(&name) || l.starts_with(&format!("# TYPE {name} "))),
                "{name} (in `{e}`) is not among the metrics p2pd serves"
            );
        }
    }
    let o = Command::new(&promtool)
        .args(["check", "rules"])
        .arg(&rules)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text_of(&o));
    // Anything else is not found.
    assert_eq!(http_get(&metrics, "/nope").unwrap().0, 404);

    // A Prometheus server scrapes it (asking for OpenMetrics) and answers
    // a query with the deploy counted.
    let t = tempfile::tempdir().unwrap();
    let web = format!("127.0.0.1:{}", free_port());
    std::fs::write(
        t.path().join("prometheus.yml"),
        format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n\
             scrape_configs:\n  - job_name: p2pd\n    static_configs:\n      - targets: ['{metrics}']\n"
        ),
    )
    .unwrap();
    let mut server = Command::new(&prometheus)
        .arg(format!(
            "--config.file={}",
            t.path().join("prometheus.yml").display()
        ))
        .arg(format!(
            "--storage.tsdb.path={}",
            t.path().join("data").display()
        ))
        .arg(format!("--web.listen-address={web}"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let query = "/api/v1/query?query=p2p_deploys_total%7Boutcome%3D%22activated%22%7D";
    let begun = Instant::now();
    let answer = loop {
        if let Ok((200, body)) = http_get(&web, query) {
            let v: serde_json::Value = serde_json::from_str(&body).unwrap();
            if let Some(r) = v["data"]["result"].as_array().and_then(|r| r.first()) {
                break r.clone();
            }
        }
        if begun.elapsed() > Duration::from_secs(60) {
            let _ = server.kill();
            let o = server.wait_with_output().unwrap();
            panic!(
                "Prometheus never had the metric: {}",
                String::from_utf8_lossy(&o.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    let _ = server.kill();
    let _ = server.wait();
    assert_eq!(answer["metric"]["job"], "p2pd", "{answer}");
    assert_eq!(answer["value"][1], "1", "{answer}");
    drop(n1);
}

#[test]
fn a_metrics_address_that_cannot_be_bound_stops_p2pd_before_any_app_starts() {
    let w = World::new();
    let d1 = w.node("n1", "iroh");
    let metrics = format!("127.0.0.1:{}", free_port());
    // A node with an app, stopped.
    let n1 = Daemon::start(&d1, &[]);
    let bs = n1.addr();
    let v1 = w.package("1.0.0", "\"--name\", \"v1\"");
    w.ok(&["deploy", &v1, "--bootstrap", &bs]);
    assert!(n1.terminate().success());
    assert!(processes_under(&d1).is_empty());

    // The address is taken: p2pd says so and stops, in seconds, and the
    // app is not started meanwhile.
    let _taken = std::net::TcpListener::bind(&metrics).unwrap();
    let begun = Instant::now();
    let o = w.run(
        env!("CARGO_BIN_EXE_p2pd"),
        &[
            "--data-dir",
            d1.to_str().unwrap(),
            "run",
            "--metrics-addr",
            &metrics,
        ],
    );
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(begun.elapsed() < Duration::from_secs(10));
    let said = String::from_utf8_lossy(&o.stderr);
    assert!(
        said.contains(&format!("metrics_addr {metrics}")) && said.contains("in use"),
        "{said}"
    );
    assert!(processes_under(&d1).is_empty(), "an app was started");
    assert!(!d1.join("p2pd.addr").exists());
    // Nothing stored was touched: the next p2pd runs the app again.
    let n1 = Daemon::start(&d1, &[]);
    assert_eq!(healthy(&w, &n1.addr(), "n1"), "1.0.0");
}
