//! # p2p-benches
//!
//! Benchmarks for the p2p deployment SDK. The `bench-report` binary runs
//! named groups and prints one line per figure:
//!
//! ```text
//! group name: value unit (target T, baseline B, ratio=R)
//! ```
//!
//! where the baseline is measured in the same run (never a number from
//! another machine or day) and the ratio compares the figure with it.
//! Speed targets are checked here, never by timed assertions in tests.
//!
//! Usage: `cargo run --release -p p2p-benches --bin bench-report -- [GROUP...]`
//!
//! ```
//! let f = p2p_benches::Figure::new("sim", "speed", 120.0, "x")
//!     .target(">= 100x")
//!     .baseline(1.0, "x (real time)");
//! assert_eq!(f.to_string(), "sim speed: 120.0 x (target >= 100x, baseline 1.0 x (real time), ratio=120.00)");
//! ```

use std::fmt;

pub mod alloc;
pub mod groups;
pub mod swarm;

/// One measured figure.
#[derive(Debug, Clone, PartialEq)]
pub struct Figure {
    /// Benchmark group (`sim`, `transport`, ...).
    pub group: &'static str,
    /// Figure name within the group.
    pub name: String,
    /// Measured value.
    pub value: f64,
    /// Unit of `value`.
    pub unit: String,
    /// The target, as text (`>= 100x`).
    pub target: Option<String>,
    /// Baseline measured in the same run, with its unit.
    pub baseline: Option<(f64, String)>,
    /// The target in a form that can be checked.
    pub goal: Option<Goal>,
}

/// A target a figure can be checked against: its value, or its ratio to
/// the baseline, at most or at least a bound.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Goal {
    /// `value <= bound`.
    AtMost(f64),
    /// `value >= bound`.
    AtLeast(f64),
    /// `value / baseline <= bound`.
    RatioAtMost(f64),
    /// `value / baseline >= bound`.
    RatioAtLeast(f64),
}

impl Figure {
    /// A figure without target or baseline.
    pub fn new(
        group: &'static str,
        name: impl Into<String>,
        value: f64,
        unit: impl Into<String>,
    ) -> Self {
        Figure {
            group,
            name: name.into(),
            value,
            unit: unit.into(),
            target: None,
            baseline: None,
            goal: None,
        }
    }

    /// Adds the target.
    pub fn target(mut self, target: impl Into<String>) -> Self {
        self.target = Some(target.into());
        self
    }

    /// Adds the checkable form of the target.
    pub fn goal(mut self, goal: Goal) -> Self {
        self.goal = Some(goal);
        self
    }

    /// Whether the goal is met; `None` without a goal (or without the
    /// baseline a ratio goal needs).
    pub fn met(&self) -> Option<bool> {
        match self.goal? {
            Goal::AtMost(b) => Some(self.value <= b),
            Goal::AtLeast(b) => Some(self.value >= b),
            Goal::RatioAtMost(b) => self.ratio().map(|r| r <= b),
            Goal::RatioAtLeast(b) => self.ratio().map(|r| r >= b),
        }
    }

    /// Adds the baseline; the ratio printed is `value / baseline`.
    pub fn baseline(mut self, value: f64, unit: impl Into<String>) -> Self {
        self.baseline = Some((value, unit.into()));
        self
    }

    /// `value / baseline`, when there is a non-zero baseline.
    pub fn ratio(&self) -> Option<f64> {
        self.baseline
            .as_ref()
            .filter(|(b, _)| *b != 0.0)
            .map(|(b, _)| self.value / b)
    }
}

impl fmt::Display for Figure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {}: {:.1} {}",
            self.group, self.name, self.value, self.unit
        )?;
        let mut extra = Vec::new();
        if let Some(t) = &self.target {
            extra.push(format!("target {t}"));
        }
        if let Some((b, u)) = &self.baseline {
            extra.push(format!("baseline {b:.1} {u}"));
        }
        if let Some(r) = self.ratio() {
            extra.push(format!("ratio={r:.2}"));
        }
        if !extra.is_empty() {
            write!(f, " ({})", extra.join(", "))?;
        }
        Ok(())
    }
}

/// Every figure as one Markdown table: figure, value, target, baseline,
/// ratio, and whether the target is met (`yes`, `NO`, or `-` when the
/// figure has no checkable target).
///
/// ```
/// use p2p_benches::{Figure, Goal, table};
/// let f = Figure::new("agent", "idle_rss", 19.0, "MB").target("<= 20 MB").goal(Goal::AtMost(20.0));
/// let t = table(&[f]);
/// assert!(t.contains("| agent idle_rss | 19.0 MB | <= 20 MB | - | - | yes |"));
/// ```
pub fn table(figures: &[Figure]) -> String {
    let mut out = String::from(
        "| figure | value | target | baseline (same run) | ratio | met |\n|---|---|---|---|---|---|\n",
    );
    for f in figures {
        let baseline = f
            .baseline
            .as_ref()
            .map_or("-".to_string(), |(b, u)| format!("{b:.1} {u}"));
        let ratio = f.ratio().map_or("-".to_string(), |r| format!("{r:.2}"));
        let met = match f.met() {
            Some(true) => "yes",
            Some(false) => "NO",
            None => "-",
        };
        out.push_str(&format!(
            "| {} {} | {:.1} {} | {} | {baseline} | {ratio} | {met} |\n",
            f.group,
            f.name,
            f.value,
            f.unit,
            f.target.as_deref().unwrap_or("-"),
        ));
    }
    out
}
