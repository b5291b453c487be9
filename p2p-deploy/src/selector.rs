//! Label selectors, as in Kubernetes: `k=v`, `k!=v`, `k in (a,b)`,
//! `k notin (a,b)`, `k` (exists), `!k` (does not exist), combined with
//! commas (all must hold). The empty selector matches every node.
//!
//! ```
//! use std::collections::BTreeMap;
//! use p2p_deploy::selector::Selector;
//!
//! let s: Selector = "region in (eu, us), tier!=db, canary".parse()?;
//! let labels = BTreeMap::from([
//!     ("region".to_string(), "eu".to_string()),
//!     ("canary".to_string(), "yes".to_string()),
//! ]);
//! assert!(s.matches(&labels));
//! # Ok::<(), p2p_core::Error>(())
//! ```

use std::collections::BTreeMap;

use p2p_core::Error;
use serde::{Deserialize, Serialize};

/// One requirement on a node's labels.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Requirement {
    /// `k=v` (or `k==v`).
    Equals(String, String),
    /// `k!=v`: the label is absent or has another value.
    NotEquals(String, String),
    /// `k in (a,b)`.
    In(String, Vec<String>),
    /// `k notin (a,b)`: absent or another value.
    NotIn(String, Vec<String>),
    /// `k`.
    Exists(String),
    /// `!k`.
    Absent(String),
}

/// All of its requirements.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Selector {
    /// Every one must hold for a node to match; none: every node matches.
    pub requirements: Vec<Requirement>,
}

impl Requirement {
    /// Whether `labels` meet it.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        match self {
            Requirement::Equals(k, v) => labels.get(k) == Some(v),
            Requirement::NotEquals(k, v) => labels.get(k) != Some(v),
            Requirement::In(k, vs) => labels.get(k).is_some_and(|x| vs.contains(x)),
            Requirement::NotIn(k, vs) => !labels.get(k).is_some_and(|x| vs.contains(x)),
            Requirement::Exists(k) => labels.contains_key(k),
            Requirement::Absent(k) => !labels.contains_key(k),
        }
    }
}

impl Selector {
    /// Matches every node.
    pub fn all() -> Self {
        Selector::default()
    }

    /// Whether `labels` meet every requirement.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.requirements.iter().all(|r| r.matches(labels))
    }
}

fn bad(text: &str, why: impl std::fmt::Display) -> Error {
    Error::invalid("label selector", format!("{text:?}: {why}"))
}

/// Whether `w` can be a label key or value in a selector: not empty,
/// letters, digits, `-`, `_`, `.` or `/`. Labels given to a node should
/// pass it, or no selector can name them.
pub fn is_label_word(w: &str) -> bool {
    !w.is_empty()
        && w.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c))
}

fn check_word(text: &str, w: &str, what: &str) -> Result<String, Error> {
    if is_label_word(w) {
        Ok(w.to_string())
    } else {
        Err(bad(
            text,
            format!("{what} {w:?} must be letters, digits, '-', '_', '.' or '/'"),
        ))
    }
}

/// Splits on commas outside parentheses.
fn split_top(text: &str) -> Result<Vec<&str>, Error> {
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0i32, 0);
    for (i, c) in text.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => {
                depth -= 1;
                if depth < 0 {
                    return Err(bad(text, "')' without '('"));
                }
            }
            ',' if depth == 0 => {
                parts.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if depth != 0 {
        return Err(bad(text, "'(' without ')'"));
    }
    parts.push(&text[start..]);
    Ok(parts)
}

fn parse_set(text: &str, set: &str) -> Result<Vec<String>, Error> {
    let inner = set
        .trim()
        .strip_prefix('(')
        .and_then(|s| s.strip_suffix(')'))
        .ok_or_else(|| bad(text, "a set must be written (a, b)"))?;
    let vs = inner
        .split(',')
        .map(|v| check_word(text, v.trim(), "value"))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(vs)
}

impl std::str::FromStr for Selector {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self, Error> {
        let mut requirements = Vec::new();
        if text.trim().is_empty() {
            return Ok(Selector { requirements });
        }
        for part in split_top(text)? {
            let p = part.trim();
            if p.is_empty() {
                return Err(bad(text, "an empty requirement (two commas in a row?)"));
            }
            let r = if let Some((k, v)) = p.split_once("!=") {
                Requirement::NotEquals(
                    check_word(text, k.trim(), "key")?,
                    check_word(text, v.trim(), "value")?,
                )
            } else if let Some((k, v)) = p.split_once("==").or_else(|| p.split_once('=')) {
                Requirement::Equals(
                    check_word(text, k.trim(), "key")?,
                    check_word(text, v.trim(), "value")?,
                )
            } else if let Some((k, set)) = p.split_once(" notin ") {
                Requirement::NotIn(check_word(text, k.trim(), "key")?, parse_set(text, set)?)
            } else if let Some((k, set)) = p.split_once(" in ") {
                Requirement::In(check_word(text, k.trim(), "key")?, parse_set(text, set)?)
            } else if let Some(k) = p.strip_prefix('!') {
                Requirement::Absent(check_word(text, k.trim(), "key")?)
            } else {
                Requirement::Exists(check_word(text, p, "key")?)
            };
            requirements.push(r);
        }
        Ok(Selector { requirements })
    }
}

impl std::fmt::Display for Selector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let parts: Vec<String> = self
            .requirements
            .iter()
            .map(|r| match r {
                Requirement::Equals(k, v) => format!("{k}={v}"),
                Requirement::NotEquals(k, v) => format!("{k}!={v}"),
                Requirement::In(k, vs) => format!("{k} in ({})", vs.join(",")),
                Requirement::NotIn(k, vs) => format!("{k} notin ({})", vs.join(",")),
                Requirement::Exists(k) => k.clone(),
                Requirement::Absent(k) => format!("!{k}"),
            })
            .collect();
        f.write_str(&parts.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn every_form_parses_and_matches() {
        let l = labels(&[("region", "eu"), ("tier", "web")]);
        let yes = [
            "",
            "region=eu",
            "region==eu",
            "tier!=db",
            "zone!=x",
            "region in (eu,us)",
            "region in ( eu , us )",
            "region notin (us)",
            "zone notin (a)",
            "region",
            "!zone",
            "region=eu, tier in (web), !zone",
        ];
        for s in yes {
            let sel: Selector = s.parse().unwrap();
            assert!(sel.matches(&l), "{s:?} should match");
            // Display gives a selector that means the same.
            let again: Selector = sel.to_string().parse().unwrap();
            assert_eq!(again, sel, "{s:?}");
        }
        let no = [
            "region=us",
            "tier!=web",
            "region in (us)",
            "region notin (eu)",
            "zone",
            "!region",
            "region=eu,zone",
        ];
        for s in no {
            let sel: Selector = s.parse().unwrap();
            assert!(!sel.matches(&l), "{s:?} should not match");
        }
    }

    #[test]
    fn malformed_selectors_say_what_is_wrong() {
        for (s, says) in [
            ("region in (eu", "without ')'"),
            ("region in eu", "(a, b)"),
            ("a,,b", "empty requirement"),
            ("re gion=eu", "key"),
            ("region=e u", "value"),
            ("a)", "without '('"),
        ] {
            let e = s.parse::<Selector>().unwrap_err().to_string();
            assert!(e.contains(says), "{s:?}: {e}");
            assert!(e.contains("label selector"), "{s:?}: {e}");
        }
    }
}
