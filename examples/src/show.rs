//! Showing a fleet to people: the node table, the app status table, and a
//! rollout's progress (a bar per node on a terminal, one line per change
//! otherwise, one JSON object per event with `--json`). `p2pctl` and the
//! `fleet` example print through this module, so both look the same.

use std::collections::BTreeMap;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use p2p_core::{AppState, PathInfo, PeerId};
use p2p_deploy::{NodeInfo, NodeResult, NodeView, Progress, RolloutReport};
use serde::Serialize;

/// A node's health in one word or phrase: `ok`, or how many of its apps
/// are not healthy. An app the node keeps stopped counts as healthy.
pub fn health(info: &NodeInfo) -> String {
    let total = info.apps.len();
    let ok = info
        .apps
        .iter()
        .filter(|a| {
            !a.running
                || a.status
                    .as_ref()
                    .is_some_and(|s| s.state == AppState::Healthy || s.state == AppState::Running)
        })
        .count();
    if total == ok {
        "ok".into()
    } else {
        format!("{} of {total} apps unhealthy", total - ok)
    }
}

/// Labels as `k=v,k=v`.
pub fn labels_text(l: &BTreeMap<String, String>) -> String {
    l.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// How a node's deploy ended, for people.
pub fn result_text(r: &NodeResult) -> String {
    match r {
        NodeResult::Activated => "activated".into(),
        NodeResult::AlreadyActive => "already active".into(),
        NodeResult::RolledBack { reason } => format!("ROLLED BACK: {reason}"),
        NodeResult::Failed { error } => format!("FAILED: {error}"),
        NodeResult::Skipped => "skipped (the rollout halted first)".into(),
        NodeResult::Staged => "staged".into(),
        other => format!("{other:?}"),
    }
}

/// Orders node names as people count: `n2` before `n10` (shorter names
/// first, then alphabetically).
pub fn by_name(a: &str, b: &str) -> std::cmp::Ordering {
    (a.len(), a).cmp(&(b.len(), b))
}

/// An app's state as it is spelled in JSON output (`healthy`,
/// `backing_off`, ...).
pub fn state_name(state: &p2p_core::AppState) -> String {
    serde_json::to_value(state)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_else(|| format!("{state:?}").to_lowercase())
}

/// A rollout's report for people: a summary line, then one line per
/// node, by name.
pub fn report_lines(report: &RolloutReport, names: &BTreeMap<PeerId, String>) -> Vec<String> {
    let mut out = vec![format!(
        "{} {}: {}",
        report.app,
        report.version,
        match &report.halted {
            None => "completed".to_string(),
            Some(r) => format!("HALTED: {r}"),
        }
    )];
    let mut nodes: Vec<(String, &NodeResult)> = report
        .nodes
        .iter()
        .map(|(id, r)| (names.get(id).cloned().unwrap_or_else(|| id.short()), r))
        .collect();
    nodes.sort_by(|a, b| by_name(&a.0, &b.0));
    for (name, r) in nodes {
        out.push(format!("  {name:<14} {}", result_text(r)));
    }
    for (id, e) in &report.rollback_failed {
        let name = names.get(id).cloned().unwrap_or_else(|| id.short());
        out.push(format!("  {name:<14} could NOT be rolled back: {e}"));
    }
    out
}

/// One row of the node table (`p2pctl nodes`).
#[derive(Debug, Clone, Serialize)]
pub struct NodeRow {
    /// Peer id.
    pub id: String,
    /// Name (empty when the node did not answer).
    pub name: String,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Where it was reached: the address of the controller's connection,
    /// else the node's first listen address.
    pub address: String,
    /// How it was reached: `direct`, `relayed` (or `unknown`), when it was.
    pub path: Option<String>,
    /// The connection's round trip, milliseconds.
    pub rtt_ms: Option<f64>,
    /// `app@active-version` for each app.
    pub apps: Vec<String>,
    /// `ok`, `unreachable`, or how many apps are unhealthy.
    pub health: String,
    /// Why the node did not answer.
    pub error: Option<String>,
}

impl NodeRow {
    /// The row of a node that answered, reached over `path`.
    pub fn of(i: &NodeInfo, path: Option<&PathInfo>) -> Self {
        NodeRow {
            id: i.id.to_string(),
            name: i.name.clone(),
            labels: i.labels.clone(),
            address: path
                .and_then(|p| p.remote.clone())
                .or_else(|| i.addr.addrs.first().cloned())
                .unwrap_or_default(),
            path: path.map(|p| p.kind.to_string()),
            rtt_ms: path
                .and_then(|p| p.rtt)
                .map(|r| (r.as_secs_f64() * 10_000.0).round() / 10.0),
            apps: i
                .apps
                .iter()
                .map(|a| match &a.active {
                    Some(v) => format!("{}@{v}", a.name),
                    None => a.name.clone(),
                })
                .collect(),
            health: health(i),
            error: None,
        }
    }

    /// The row of a node that did not answer.
    pub fn unreachable(v: &NodeView, error: &str) -> Self {
        NodeRow {
            id: v.addr.id.to_string(),
            name: String::new(),
            labels: BTreeMap::new(),
            address: v.addr.addrs.first().cloned().unwrap_or_default(),
            path: None,
            rtt_ms: None,
            apps: Vec::new(),
            health: "unreachable".into(),
            error: Some(error.to_string()),
        }
    }

    /// The table's header line.
    pub fn header() -> String {
        format!(
            "{:<12} {:<14} {:<24} {:<28} {:<16} {:<24} HEALTH",
            "ID", "NAME", "LABELS", "ADDRESS", "PATH", "APPS"
        )
    }

    /// The row as a table line.
    pub fn line(&self) -> String {
        let path = match (&self.path, self.rtt_ms) {
            (Some(p), Some(ms)) => format!("{p} {ms} ms"),
            (Some(p), None) => p.clone(),
            (None, _) => "-".into(),
        };
        format!(
            "{:<12} {:<14} {:<24} {:<28} {:<16} {:<24} {}",
            self.id.get(..10).unwrap_or(&self.id),
            self.name,
            labels_text(&self.labels),
            self.address,
            path,
            self.apps.join(","),
            self.health
        )
    }
}

/// One row of the membership table (`p2pctl peers`): a node as the
/// fleet's gossip knows it.
#[derive(Debug, Clone, Serialize)]
pub struct PeerRow {
    /// Peer id.
    pub id: String,
    /// Name (may be empty).
    pub name: String,
    /// Its site (the `site` label), if any.
    pub site: Option<String>,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// The addresses it publishes.
    pub addrs: Vec<String>,
    /// `up`, or `unreachable`.
    pub state: String,
    /// Since when it is unreachable (milliseconds since the Unix epoch).
    pub unreachable_since_ms: Option<u64>,
    /// Which node found it unreachable.
    pub reported_by: Option<String>,
    /// Its record's sequence number.
    pub seq: u64,
    /// Releases it holds, as `app@version` (`*` after an active one).
    pub held: Vec<String>,
}

impl PeerRow {
    /// The row of `m`.
    pub fn of(m: &p2p_deploy::membership::Member) -> Self {
        let r = &m.record;
        PeerRow {
            id: r.id.to_string(),
            name: r.name.clone(),
            site: r.site.clone(),
            labels: r.labels.clone(),
            addrs: r.addrs.clone(),
            state: if m.is_up() { "up" } else { "unreachable" }.into(),
            unreachable_since_ms: m.down.as_ref().map(|c| c.since_ms),
            reported_by: m.down.as_ref().map(|c| c.by.to_string()),
            seq: r.seq,
            held: r
                .held
                .iter()
                .map(|h| {
                    format!(
                        "{}@{}{}",
                        h.name,
                        h.version,
                        if h.active { "*" } else { "" }
                    )
                })
                .collect(),
        }
    }

    /// The table's header line.
    pub fn header() -> String {
        format!(
            "{:<12} {:<14} {:<10} {:<24} {:<34} STATE",
            "ID", "NAME", "SITE", "LABELS", "ADDRESSES"
        )
    }

    /// The row as a table line; `now_ms` turns the unreachable time into
    /// an age.
    pub fn line(&self, now_ms: u64) -> String {
        let state = match (self.unreachable_since_ms, &self.reported_by) {
            (Some(since), Some(by)) => format!(
                "unreachable for {} (found by {})",
                humantime::format_duration(Duration::from_secs(
                    now_ms.saturating_sub(since) / 1000
                )),
                by.get(..10).unwrap_or(by)
            ),
            _ => self.state.clone(),
        };
        let mut addrs = self.addrs.first().cloned().unwrap_or_else(|| "-".into());
        if self.addrs.len() > 1 {
            addrs.push_str(&format!(" (+{})", self.addrs.len() - 1));
        }
        format!(
            "{:<12} {:<14} {:<10} {:<24} {:<34} {}",
            self.id.get(..10).unwrap_or(&self.id),
            self.name,
            self.site.as_deref().unwrap_or("-"),
            labels_text(&self.labels),
            addrs,
            state
        )
    }
}

/// One row of the app status table (`p2pctl status`): one app on one
/// node.
#[derive(Debug, Clone, Serialize)]
pub struct StatusRow {
    /// The node's name, else its short id.
    pub node: String,
    /// The app.
    pub app: String,
    /// The active version.
    pub active: Option<String>,
    /// The runtime's state, lower case (`healthy`, `running`, `stopped`,
    /// ...), `-` when the runtime does not know the app.
    pub state: String,
    /// The version active before.
    pub previous: Option<String>,
    /// Restarts of the current process.
    pub restarts: u32,
    /// Installed versions, lowest first.
    pub installed: Vec<String>,
}

impl StatusRow {
    /// The rows of `nodes`, for `app` or every app.
    pub fn of(nodes: &[NodeInfo], app: Option<&str>) -> Vec<StatusRow> {
        let mut rows = Vec::new();
        for n in nodes {
            for a in n.apps.iter().filter(|a| app.is_none_or(|x| x == a.name)) {
                rows.push(StatusRow {
                    node: n.label(),
                    app: a.name.clone(),
                    active: a.active.as_ref().map(ToString::to_string),
                    state: a
                        .status
                        .as_ref()
                        .map(|st| state_name(&st.state))
                        .unwrap_or_else(|| "-".into()),
                    previous: a.previous.as_ref().map(ToString::to_string),
                    restarts: a.status.as_ref().map_or(0, |st| st.restarts),
                    installed: a.installed.iter().map(|(v, _)| v.to_string()).collect(),
                });
            }
        }
        rows
    }

    /// The row of a node that did not answer.
    pub fn unreachable(node: &str, app: Option<&str>) -> StatusRow {
        StatusRow {
            node: node.to_string(),
            app: app.unwrap_or("-").to_string(),
            active: None,
            state: "unreachable".into(),
            previous: None,
            restarts: 0,
            installed: Vec::new(),
        }
    }

    /// The table's header line.
    pub fn header() -> String {
        format!(
            "{:<14} {:<12} {:<10} {:<10} {:<10} {:<8} INSTALLED",
            "NODE", "APP", "ACTIVE", "STATE", "PREVIOUS", "RESTARTS"
        )
    }

    /// The row as a table line.
    pub fn line(&self) -> String {
        format!(
            "{:<14} {:<12} {:<10} {:<10} {:<10} {:<8} {}",
            self.node,
            self.app,
            self.active.as_deref().unwrap_or("-"),
            self.state,
            self.previous.as_deref().unwrap_or("-"),
            self.restarts,
            self.installed.join(",")
        )
    }
}

/// Where a node stands in a rollout, as the progress events told it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NodeProgress {
    /// Bytes of the release it holds.
    pub bytes: u64,
    /// The release's size (0 until the first transfer event).
    pub total: u64,
    /// Its latest step, for people: `waiting`, `transferring`,
    /// `installed`, `health gate`, `healthy`, `health FAILED: ..`,
    /// `rolled back to ..`, `activated`, ...
    pub step: String,
    /// Whether its deploy ended.
    pub done: bool,
}

/// How a [`DeployView`] draws.
pub enum ViewStyle {
    /// A progress bar per node, drawn to this target (see
    /// [`ProgressDrawTarget::stderr`]; `hidden` for tests).
    Bars(ProgressDrawTarget),
    /// One line on stderr per change of a node's step (transfer at every
    /// quarter).
    Lines,
    /// One JSON object per event on stdout: `{"progress": ...}`.
    Json,
}

impl ViewStyle {
    /// JSON when asked for, bars when stderr is a terminal, else lines.
    pub fn auto(json: bool) -> Self {
        if json {
            ViewStyle::Json
        } else if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
            ViewStyle::Bars(ProgressDrawTarget::stderr())
        } else {
            ViewStyle::Lines
        }
    }
}

/// Shows a rollout's [`Progress`] events as they arrive.
///
/// ```
/// use std::collections::BTreeMap;
/// use p2p_examples::show::{DeployView, ViewStyle};
/// use p2p_deploy::Progress;
///
/// let mut view = DeployView::new(BTreeMap::new(), ViewStyle::Lines);
/// view.show(&Progress::Selected { nodes: vec![] }); // "deploying to 0 node(s)"
/// view.finish();
/// ```
pub struct DeployView {
    names: BTreeMap<PeerId, String>,
    nodes: BTreeMap<PeerId, NodeProgress>,
    mode: Mode,
    bars: BTreeMap<PeerId, ProgressBar>,
    /// Per node, the transfer quarter last printed (lines style).
    shown: BTreeMap<PeerId, u64>,
    /// Nodes whose steps are drawn; `None`: all.
    drawn: Option<std::collections::BTreeSet<PeerId>>,
    /// Draw the steps of the first this many selected nodes only.
    limit: Option<usize>,
    /// Per node, the bytes it held before the deploy, and the total.
    held: BTreeMap<PeerId, (u64, u64)>,
}

/// How a [`DeployView`] draws, once its bars (if any) exist.
enum Mode {
    Bars(MultiProgress),
    Lines,
    Json,
}

impl DeployView {
    /// A view of a rollout to the nodes in `names` (id to name).
    pub fn new(names: BTreeMap<PeerId, String>, style: ViewStyle) -> Self {
        let mode = match style {
            ViewStyle::Bars(target) => Mode::Bars(MultiProgress::with_draw_target(target)),
            ViewStyle::Lines => Mode::Lines,
            ViewStyle::Json => Mode::Json,
        };
        DeployView {
            names,
            nodes: BTreeMap::new(),
            mode,
            bars: BTreeMap::new(),
            shown: BTreeMap::new(),
            drawn: None,
            limit: None,
            held: BTreeMap::new(),
        }
    }

    /// What the targets held before the deploy, in all: how much did not
    /// have to move (a staged release moves nothing).
    pub fn held_summary(&self) -> Option<String> {
        if self.held.is_empty() {
            return None;
        }
        let (held, total) = self
            .held
            .values()
            .fold((0u64, 0u64), |(h, t), (b, n)| (h + b, t + n));
        let pct = (held * 100).checked_div(total).unwrap_or(100);
        Some(format!(
            "already held on the {} node(s) that fetched: {held} of {total} bytes ({pct}%); \
             {} bytes to move",
            self.held.len(),
            total - held
        ))
    }

    /// Prints [`held_summary`](Self::held_summary) on stderr, if any.
    pub fn print_held(&self) {
        if let Some(line) = self.held_summary() {
            eprintln!("{line}");
        }
    }

    /// Draws the steps of the first `n` selected nodes only (batches,
    /// halts and every node's state are still followed): for fleets
    /// larger than a screen.
    pub fn limit(mut self, n: usize) -> Self {
        self.limit = Some(n);
        self
    }

    fn drawn(&self, node: &PeerId) -> bool {
        self.drawn.as_ref().is_none_or(|d| d.contains(node))
    }

    /// Where `node` stands.
    pub fn node(&self, node: &PeerId) -> Option<&NodeProgress> {
        self.nodes.get(node)
    }

    fn name(&self, id: &PeerId) -> String {
        self.names.get(id).cloned().unwrap_or_else(|| id.short())
    }

    /// Prints a line above the bars, or on stderr.
    fn say(&self, text: &str) {
        match &self.mode {
            Mode::Bars(m) => {
                let _ = m.println(text);
            }
            _ => eprintln!("{text}"),
        }
    }

    fn bar(&mut self, node: &PeerId) -> Option<&ProgressBar> {
        let Mode::Bars(multi) = &self.mode else {
            return None;
        };
        if !self.bars.contains_key(node) {
            let style = ProgressStyle::with_template(
                "  {prefix:<14} [{bar:30}] {bytes:>10}/{total_bytes:<10} {msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
            let bar = multi.add(ProgressBar::new(0).with_style(style));
            bar.set_prefix(self.name(node));
            bar.enable_steady_tick(Duration::from_millis(200));
            self.bars.insert(*node, bar);
        }
        self.bars.get(node)
    }

    fn step(&mut self, node: &PeerId, step: String, done: bool) {
        let p = self.nodes.entry(*node).or_default();
        p.step = step.clone();
        p.done |= done;
        if !self.drawn(node) {
            return;
        }
        match self.mode {
            Mode::Bars(_) => {
                if let Some(bar) = self.bar(node) {
                    bar.set_message(step);
                    if done {
                        bar.disable_steady_tick();
                        bar.tick();
                    }
                }
            }
            Mode::Lines => {
                let name = self.name(node);
                eprintln!("  {name:<14} {step}");
            }
            Mode::Json => {}
        }
    }

    /// Shows one event.
    pub fn show(&mut self, p: &Progress) {
        if matches!(self.mode, Mode::Json) && !matches!(p, Progress::Done(_)) {
            match serde_json::to_string(&serde_json::json!({ "progress": p })) {
                Ok(line) => println!("{line}"),
                Err(e) => eprintln!("cannot encode a progress event: {e}"),
            }
        }
        match p {
            Progress::Selected { nodes } => {
                if let Some(limit) = self.limit {
                    self.drawn = Some(nodes.iter().take(limit).copied().collect());
                }
                for n in nodes {
                    self.nodes.insert(
                        *n,
                        NodeProgress {
                            step: "waiting".into(),
                            ..NodeProgress::default()
                        },
                    );
                }
                if !matches!(self.mode, Mode::Json) {
                    self.say(&format!("deploying to {} node(s)", nodes.len()));
                }
                if let Mode::Bars(_) = self.mode {
                    let drawn: Vec<PeerId> =
                        nodes.iter().filter(|n| self.drawn(n)).copied().collect();
                    for n in &drawn {
                        if let Some(bar) = self.bar(n) {
                            bar.set_message("waiting");
                        }
                    }
                }
            }
            Progress::Batch { index, nodes } if !matches!(self.mode, Mode::Json) => {
                let mut names: Vec<String> = nodes.iter().take(8).map(|n| self.name(n)).collect();
                if nodes.len() > 8 {
                    names.push(format!("and {} more", nodes.len() - 8));
                }
                self.say(&format!("batch {index}: {}", names.join(", ")));
            }
            Progress::Transfer { node, bytes, total } => {
                let p = self.nodes.entry(*node).or_default();
                p.bytes = *bytes;
                p.total = *total;
                let step = if bytes >= total {
                    "transferred"
                } else {
                    "transferring"
                };
                p.step = step.into();
                if !self.drawn(node) {
                    return;
                }
                match self.mode {
                    Mode::Bars(_) => {
                        if let Some(bar) = self.bar(node) {
                            bar.set_length(*total);
                            bar.set_position(*bytes);
                            bar.set_message(step);
                        }
                    }
                    Mode::Lines => {
                        let pct = if *total == 0 {
                            100
                        } else {
                            bytes * 100 / total
                        };
                        let last = self.shown.entry(*node).or_insert(u64::MAX);
                        if *last == u64::MAX || pct / 25 > *last / 25 {
                            *last = pct;
                            let name = self.name(node);
                            eprintln!("  {name:<14} transfer {pct:>3}% of {total} bytes");
                        }
                    }
                    Mode::Json => {}
                }
            }
            Progress::AlreadyHeld { node, bytes, total } => {
                self.held.insert(*node, (*bytes, *total));
                let pct = (bytes * 100).checked_div(*total).unwrap_or(100);
                let to_move = total.saturating_sub(*bytes);
                self.step(
                    node,
                    format!("{to_move} bytes to move ({pct}% of {total} already held)"),
                    false,
                )
            }
            Progress::Installed { node } => self.step(node, "installed".into(), false),
            Progress::Started { node } => {
                self.step(node, "started, health gate running".into(), false)
            }
            Progress::HealthPassed { node } => self.step(node, "healthy".into(), false),
            Progress::HealthFailed { node, reason } => {
                self.step(node, format!("health check FAILED: {reason}"), false)
            }
            Progress::RolledBack { node, to } => {
                let to = to
                    .as_ref()
                    .map(ToString::to_string)
                    .unwrap_or("nothing".into());
                self.step(node, format!("rolled back to {to}"), false)
            }
            Progress::NodeDone { node, result } => {
                // The failure's reason was shown with the failed check.
                let text = match result {
                    NodeResult::RolledBack { .. } => "ROLLED BACK".to_string(),
                    other => result_text(other),
                };
                self.step(node, format!("done: {text}"), true)
            }
            Progress::RollbackFailed { node, error } => {
                self.step(node, format!("could NOT be rolled back: {error}"), true)
            }
            Progress::Halted { reason } if !matches!(self.mode, Mode::Json) => {
                self.say(&format!("rollout halted: {reason}"));
            }
            Progress::Done(_) => self.finish(),
            // Batches and halts in JSON mode (printed above), and events
            // this build does not know: shown in JSON only.
            _ => {}
        }
    }

    /// Stops the bars' animation, leaving them drawn.
    pub fn finish(&self) {
        for bar in self.bars.values() {
            bar.disable_steady_tick();
            bar.tick();
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use p2p_core::NodeKey;
    use rand::SeedableRng;

    fn id(n: u8) -> PeerId {
        NodeKey::generate(&mut rand_chacha::ChaCha20Rng::seed_from_u64(u64::from(n))).peer_id()
    }

    fn events(a: PeerId, b: PeerId) -> Vec<Progress> {
        vec![
            Progress::Selected { nodes: vec![a, b] },
            Progress::Batch {
                index: 1,
                nodes: vec![a, b],
            },
            Progress::Transfer {
                node: a,
                bytes: 50,
                total: 200,
            },
            Progress::Transfer {
                node: a,
                bytes: 200,
                total: 200,
            },
            Progress::Installed { node: a },
            Progress::Started { node: a },
            Progress::HealthFailed {
                node: a,
                reason: "GET /health: 503".into(),
            },
            Progress::RolledBack {
                node: a,
                to: Some(semver::Version::new(1, 0, 0)),
            },
            Progress::NodeDone {
                node: a,
                result: NodeResult::RolledBack {
                    reason: "503".into(),
                },
            },
            Progress::Halted {
                reason: "too many failures".into(),
            },
        ]
    }

    #[test]
    fn bars_follow_each_node() {
        let (a, b) = (id(1), id(2));
        let names = BTreeMap::from([(a, "n1".to_string()), (b, "n2".to_string())]);
        let mut view = DeployView::new(names, ViewStyle::Bars(ProgressDrawTarget::hidden()));
        let evs = events(a, b);
        view.show(&evs[0]);
        assert_eq!(view.node(&b).unwrap().step, "waiting");
        view.show(&evs[2]);
        assert_eq!(view.bars[&a].position(), 50);
        assert_eq!(view.bars[&a].length(), Some(200));
        assert_eq!(view.bars[&a].message(), "transferring");
        for e in &evs[3..] {
            view.show(e);
        }
        let na = view.node(&a).unwrap();
        assert_eq!((na.bytes, na.total), (200, 200));
        assert!(na.done);
        assert_eq!(na.step, "done: ROLLED BACK");
        assert_eq!(view.bars[&a].message(), "done: ROLLED BACK");
        // The node the halt skipped is still waiting, with its own bar.
        assert_eq!(view.node(&b).unwrap().step, "waiting");
        assert!(!view.node(&b).unwrap().done);
        assert_eq!(view.bars[&b].prefix(), "n2");
        view.finish();
    }

    #[test]
    fn lines_and_json_track_the_same_state() {
        let (a, b) = (id(1), id(2));
        for style in [ViewStyle::Lines, ViewStyle::Json] {
            let mut view = DeployView::new(BTreeMap::new(), style);
            for e in events(a, b) {
                view.show(&e);
            }
            assert!(view.bars.is_empty());
            let na = view.node(&a).unwrap();
            assert_eq!(na.step, "done: ROLLED BACK");
            assert!(na.done);
        }
    }

    #[test]
    fn tables_name_every_column() {
        let header = StatusRow::header();
        for col in [
            "NODE",
            "APP",
            "ACTIVE",
            "STATE",
            "PREVIOUS",
            "RESTARTS",
            "INSTALLED",
        ] {
            assert!(header.contains(col), "{header}");
        }
        let row = StatusRow {
            node: "n1".into(),
            app: "demo".into(),
            active: Some("1.0.0".into()),
            state: "healthy".into(),
            previous: None,
            restarts: 2,
            installed: vec!["1.0.0".into(), "2.0.0".into()],
        };
        let line = row.line();
        assert!(line.starts_with("n1 "), "{line}");
        assert!(
            line.contains(" 1.0.0 ") && line.ends_with("1.0.0,2.0.0"),
            "{line}"
        );
        assert!(
            line.contains(" - "),
            "no previous version shows as -: {line}"
        );
    }
}
