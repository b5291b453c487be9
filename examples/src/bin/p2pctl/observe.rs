//! `p2pctl events` and `p2pctl deploy --dry-run`.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use anyhow::{Result, anyhow, bail};
use bytesize::ByteSize;
use futures::StreamExt;
use p2p_deploy::controller::{DryRun, FleetEvent, PlannedNode, Resume, RolloutPlan};
use p2p_deploy::events::NodeEvent;
use p2p_deploy::{Controller, Release};

use crate::online::{Settings, Tally, Targets, out, pick, resolve};

/// Parses `--since`: `N` for every node, `NODE=N` for one.
fn since_of(views: &[p2p_deploy::NodeView], since: &[String]) -> Result<Resume> {
    let mut r = Resume::default();
    let mut default_set = false;
    for s in since {
        let (node, n) = match s.split_once('=') {
            Some((node, n)) => (Some(node), n),
            None => (None, s.as_str()),
        };
        let n: u64 = n.trim().parse().map_err(|_| {
            anyhow!("--since {s}: expected an event index (a number), or NODE=INDEX")
        })?;
        match node {
            Some(node) => {
                let id = resolve(views, node.trim()).map_err(|e| {
                    anyhow!("--since {s}: {}", e.to_string().replace("--nodes ", ""))
                })?;
                r.nodes.insert(id, n);
            }
            None if default_set => bail!("--since: one index for every node, or NODE=INDEX each"),
            None => {
                r.default = n;
                default_set = true;
            }
        }
    }
    Ok(r)
}

/// The time of an event, for people (UTC); a time a node got wrong
/// beyond what RFC 3339 can write (year 10000 on) as milliseconds.
fn when(at_ms: u64) -> String {
    // 9999-12-31T23:59:59Z.
    const LAST: u64 = 253_402_300_799_000;
    if at_ms > LAST {
        return format!("@{at_ms}ms");
    }
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_millis(at_ms)).to_string()
}

/// An event as one JSON object: the node, the index, the time, the type
/// and the event's own fields.
fn event_json(node: &p2p_core::PeerId, name: &str, e: &NodeEvent) -> serde_json::Value {
    let mut obj = serde_json::Map::new();
    obj.insert("node".into(), node.to_string().into());
    obj.insert("name".into(), name.into());
    obj.insert("index".into(), e.index.into());
    obj.insert("at_ms".into(), e.at_ms.into());
    obj.insert("type".into(), e.kind.name().into());
    if let Ok(serde_json::Value::Object(tagged)) = serde_json::to_value(&e.kind) {
        for (_, fields) in tagged {
            if let serde_json::Value::Object(fields) = fields {
                obj.extend(fields);
            }
        }
    }
    serde_json::Value::Object(obj)
}

fn print_event(s: &Settings, width: usize, node: &p2p_core::PeerId, name: &str, e: &NodeEvent) {
    out(s, &event_json(node, name, e), || {
        println!(
            "{}  {name:<width$}  #{:<6} {:<15} {}",
            when(e.at_ms),
            e.index,
            e.kind.name(),
            e.kind
        )
    });
}

/// `p2pctl events`.
pub(crate) async fn events(
    s: &Settings,
    ctl: &Controller,
    targets: &Targets,
    since: &[String],
    follow: bool,
) -> Result<ExitCode> {
    let (views, chosen) = pick(ctl, targets).await?;
    let resume = since_of(&views, since)?;
    let mut tally = Tally::new("events");
    if targets.nodes.is_empty() {
        tally.unanswered(&views);
    }
    if chosen.is_empty() && tally.failed.is_empty() {
        bail!("no node matches the selector");
    }
    let width = chosen.iter().map(|n| n.label().len()).max().unwrap_or(8);
    let mut stream = ctl.events(&chosen, &resume, follow);
    let mut failed: BTreeMap<p2p_core::PeerId, ()> = BTreeMap::new();
    // Without --follow the logs are read to their ends and shown in time
    // order; following, each event as it comes.
    let mut backlog = Vec::new();
    while let Some(item) = stream.next().await {
        match item {
            FleetEvent::Event { node, name, event } => {
                if follow {
                    print_event(s, width, &node, &name, &event);
                } else {
                    backlog.push((node, name, event));
                }
            }
            FleetEvent::Lost {
                name, after, error, ..
            } => eprintln!(
                "p2pctl: node {name}: lost after event {after} ({error}); waiting for it to answer again"
            ),
            FleetEvent::Resumed { name, after, .. } => {
                eprintln!("p2pctl: node {name}: answers again; reading on after event {after}")
            }
            FleetEvent::Failed { node, name, error } => {
                eprintln!("p2pctl: node {name}: {error}");
                failed.insert(node, ());
                tally.failed(name, error);
            }
            _ => {}
        }
    }
    backlog.sort_by(|a, b| (a.2.at_ms, &a.1, a.2.index).cmp(&(b.2.at_ms, &b.1, b.2.index)));
    for (node, name, event) in &backlog {
        print_event(s, width, node, name, event);
    }
    for n in &chosen {
        if !failed.contains_key(&n.id) {
            tally.done();
        }
    }
    Ok(tally.finish(false))
}

/// One target of a dry run as a JSON object.
fn planned_json(batch: usize, n: &PlannedNode) -> serde_json::Value {
    match &n.plan {
        Ok(p) => serde_json::json!({
            "batch": batch + 1,
            "node": n.node.to_string(),
            "name": n.name,
            "active": p.active.as_ref().map(|v| v.to_string()),
            "already_active": p.already_active,
            "installed": p.installed,
            "held_bytes": p.held_bytes,
            "missing_bytes": p.missing_bytes,
            "missing_chunks": p.missing_chunks,
            "refusal": p.refusal.as_ref().map(|r| serde_json::json!({
                "kind": r.kind.name(),
                "message": r.message,
            })),
        }),
        Err(e) => serde_json::json!({
            "batch": batch + 1,
            "node": n.node.to_string(),
            "name": n.name,
            "error": e,
        }),
    }
}

/// One target of a dry run as a line.
fn planned_line(width: usize, version: &semver::Version, n: &PlannedNode) -> String {
    let name = &n.name;
    match &n.plan {
        Err(e) => format!("  {name:<width$}  WOULD FAIL: {e}"),
        Ok(p) => {
            let from = p
                .active
                .as_ref()
                .map_or_else(|| "-".to_string(), |v| v.to_string());
            let what = if p.already_active {
                "already active: nothing to do".to_string()
            } else if p.installed {
                "installed already: activation only".to_string()
            } else {
                format!(
                    "fetch {} of {} ({} chunk(s))",
                    ByteSize(p.missing_bytes).display().iec(),
                    ByteSize(p.held_bytes + p.missing_bytes).display().iec(),
                    p.missing_chunks
                )
            };
            match &p.refusal {
                Some(r) => format!(
                    "  {name:<width$}  {from} -> {version}  WOULD REFUSE ({}): {}",
                    r.kind.name(),
                    r.message
                ),
                None => format!("  {name:<width$}  {from} -> {version}  {what}"),
            }
        }
    }
}

/// `p2pctl deploy --dry-run`.
pub(crate) async fn dry_run(
    s: &Settings,
    ctl: &Controller,
    release: Arc<Release>,
    targets: &Targets,
    rollout: &RolloutPlan,
) -> Result<ExitCode> {
    let m = release.descriptor.manifest.clone();
    let (views, chosen) = pick(ctl, targets).await?;
    let mut tally = Tally::new(format!("dry run: deploy {} {}", m.name, m.version));
    if targets.nodes.is_empty() {
        tally.unanswered(&views);
    }
    if chosen.is_empty() {
        if tally.failed.is_empty() {
            bail!("no node matches the selector: nothing to deploy to");
        }
        return Ok(tally.finish(true));
    }
    let run: DryRun = ctl.dry_run(release, &chosen, rollout).await;
    let width = chosen.iter().map(|n| n.label().len()).max().unwrap_or(8);
    if !s.json {
        println!(
            "dry run (nothing was changed): deploy {} {} to {} node(s) in {} batch(es)",
            m.name,
            m.version,
            chosen.len(),
            run.batches.len()
        );
    }
    // Counted as the deploy would count them: after a halt, the later
    // batches are skipped, and (unless --no-rollback) the nodes changed
    // before it are rolled back.
    let rolls_back = rollout.rollback_on_halt && !rollout.stage;
    for (i, batch) in run.batches.iter().enumerate() {
        if !s.json {
            println!("batch {}", i + 1);
        }
        let skipped = run.halts_after.is_some_and(|h| i > h);
        for n in batch {
            out(s, &planned_json(i, n), || {
                println!("{}", planned_line(width, &m.version, n))
            });
            let name = n.name.clone();
            match &n.plan {
                Err(e) => tally.failed(name, e.clone()),
                Ok(p) => match &p.refusal {
                    Some(r) => tally.failed(name, format!("would refuse: {}", r.message)),
                    None if skipped => tally.failed(
                        name,
                        format!(
                            "would be skipped: the rollout halts after batch {}",
                            run.halts_after.map_or(0, |h| h + 1)
                        ),
                    ),
                    None if run.halts_after.is_some() && rolls_back && !p.already_active => {
                        tally.failed(name, "would be rolled back when the rollout halts")
                    }
                    None => tally.done(),
                },
            }
        }
    }
    let halt = run
        .halts_after
        .zip(run.halt_reason.as_ref())
        .map(|(b, why)| format!("the rollout would halt after batch {}: {why}", b + 1));
    out(
        s,
        &serde_json::json!({
            "dry_run": {
                "app": m.name,
                "version": m.version.to_string(),
                "batches": run.batches.len(),
                "bytes_to_move": run.bytes_to_move(),
                "would_fail": run.failing(),
                "failures_allowed": run.failures_allowed,
                "halts_after_batch": run.halts_after.map(|b| b + 1),
            }
        }),
        || {
            println!(
                "{} would move to the nodes in all (from this controller and from each other)",
                ByteSize(run.bytes_to_move()).display().iec()
            );
            if let Some(h) = &halt {
                println!("{h}");
            }
        },
    );
    Ok(tally.finish(true))
}
