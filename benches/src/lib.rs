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
        }
    }

    /// Adds the target.
    pub fn target(mut self, target: impl Into<String>) -> Self {
        self.target = Some(target.into());
        self
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
