//! The package manifest, `p2p.toml`: what an app is and how to run it.
//!
//! ```
//! use p2p_deploy::Manifest;
//! let m = Manifest::parse(r#"
//!     name = "web"
//!     version = "1.4.2"
//!     entrypoint = "bin/web"
//!     args = ["--port", "8080"]
//!
//!     [health]
//!     http = "http://127.0.0.1:8080/health"
//!     interval = "2s"
//!
//!     [limits]
//!     memory = "256MiB"
//!     cpu = 1.5
//! "#)?;
//! assert_eq!(m.version.to_string(), "1.4.2");
//! assert_eq!(m.limits.memory_bytes, Some(256 << 20));
//! assert_eq!(m.limits.cpu_millis, Some(1500));
//! # Ok::<(), p2p_core::Error>(())
//! ```
//!
//! | key | meaning | default |
//! |---|---|---|
//! | `name` | app name: letters, digits, `-`, `_`, `.` (1 to 64) | required |
//! | `version` | semantic version (`1.4.2`, `2.0.0-rc.1`) | required |
//! | `description` | one line for people | none |
//! | `entrypoint` | program, relative to the package root | required |
//! | `args` | arguments | none |
//! | `env` | table of environment variables | none |
//! | `keep_versions` | installed versions kept per node, 1 to 100 | 3 |
//! | `[health]` | exactly one of `process = true`, `tcp = "host:port"`, `http = "http://..."`, `exec = ["cmd", "arg"]`; and `interval`, `timeout`, `retries`, `start_period`, `gate` (consecutive passes a deploy waits for) | none: running is healthy |
//! | `[restart]` | `mode` (`never`, `on-failure`, `always`), `initial_backoff`, `max_backoff`, `stable_after`, `max_restarts` | on-failure, 500ms, 60s, 60s, 10 |
//! | `[limits]` | `memory` (`"256MiB"`, `"1G"`, or bytes), `cpu` (cores, `0.5`) | none |
//! | `stop_grace` | time between TERM and KILL | `"10s"` |
//!
//! Durations are written `"500ms"`, `"2s"`, `"1m 30s"`. Unknown keys are
//! errors, so a typo never goes unnoticed.

use std::collections::BTreeMap;
use std::path::{Component, Path};
use std::time::Duration;

use p2p_core::runtime::{
    AppSpec, HealthCheckSpec, HealthProbe, ResourceLimits, RestartMode, RestartPolicy,
    check_app_name,
};
use p2p_core::{Error, Result};
use serde::{Deserialize, Serialize};

/// The file name of the manifest in a package's root.
pub const MANIFEST_FILE: &str = "p2p.toml";

/// A validated manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// App name.
    pub name: String,
    /// Version.
    pub version: semver::Version,
    /// One line for people.
    pub description: Option<String>,
    /// Program, relative to the package root.
    pub entrypoint: String,
    /// Arguments passed to the entrypoint.
    pub args: Vec<String>,
    /// Environment variables set for the app (nothing else is inherited).
    pub env: BTreeMap<String, String>,
    /// The health check and gate; `None`: running counts as healthy.
    pub health: Option<Health>,
    /// When the app is restarted after it exits, with backoff.
    pub restart: RestartPolicy,
    /// Memory and CPU limits, applied where the host allows.
    pub limits: ResourceLimits,
    /// Installed versions kept per node.
    pub keep_versions: u32,
    /// Time between TERM and KILL.
    pub stop_grace: Duration,
}

/// A health check and the deploy gate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    /// The probe and its schedule.
    pub check: HealthCheckSpec,
    /// Consecutive passing probes a deploy waits for before it commits.
    pub gate: u32,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawManifest {
    name: String,
    version: String,
    description: Option<String>,
    entrypoint: String,
    #[serde(default)]
    args: Vec<String>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    health: Option<RawHealth>,
    restart: Option<RawRestart>,
    limits: Option<RawLimits>,
    keep_versions: Option<i64>,
    stop_grace: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHealth {
    process: Option<bool>,
    tcp: Option<String>,
    http: Option<String>,
    exec: Option<Vec<String>>,
    interval: Option<String>,
    timeout: Option<String>,
    retries: Option<i64>,
    start_period: Option<String>,
    gate: Option<i64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRestart {
    mode: Option<String>,
    initial_backoff: Option<String>,
    max_backoff: Option<String>,
    stable_after: Option<String>,
    max_restarts: Option<i64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    memory: Option<toml::Value>,
    cpu: Option<toml::Value>,
}

fn bad(field: &str, reason: impl std::fmt::Display) -> Error {
    Error::invalid("manifest", format!("{field}: {reason}"))
}

fn duration(field: &str, text: Option<&str>, default: Duration) -> Result<Duration> {
    match text {
        None => Ok(default),
        Some(t) => humantime::parse_duration(t).map_err(|e| {
            bad(
                field,
                format!("{t:?} is not a duration like \"500ms\" or \"2s\" ({e})"),
            )
        }),
    }
}

fn count(field: &str, v: Option<i64>, default: u32, min: u32, max: u32) -> Result<u32> {
    match v {
        None => Ok(default),
        Some(n) if n >= i64::from(min) && n <= i64::from(max) => Ok(n as u32),
        Some(n) => Err(bad(field, format!("{n} is not between {min} and {max}"))),
    }
}

/// Parses `"256MiB"`, `"1G"`, `"512k"`, `"1048576"` or an integer.
fn memory(v: &toml::Value) -> Result<u64> {
    let text = match v {
        toml::Value::Integer(n) if *n > 0 => return Ok(*n as u64),
        toml::Value::String(s) => s.trim().to_string(),
        other => {
            return Err(bad(
                "limits.memory",
                format!("{other} is not a size like \"256MiB\""),
            ));
        }
    };
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (num, unit) = text.split_at(split);
    let n: u64 = num.parse().map_err(|_| {
        bad(
            "limits.memory",
            format!("{text:?} is not a size like \"256MiB\""),
        )
    })?;
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "k" | "K" | "KiB" | "kB" | "KB" => 1 << 10,
        "M" | "MiB" | "MB" => 1 << 20,
        "G" | "GiB" | "GB" => 1 << 30,
        "T" | "TiB" | "TB" => 1 << 40,
        u => {
            return Err(bad(
                "limits.memory",
                format!("unknown unit {u:?} in {text:?}"),
            ));
        }
    };
    n.checked_mul(mult)
        .ok_or_else(|| bad("limits.memory", format!("{text:?} is too large")))
}

/// Checks an app name ([`check_app_name`], the rule every runtime uses);
/// the error names `field`.
pub fn check_name(field: &str, name: &str) -> Result<()> {
    check_app_name(name).map_err(|why| bad(field, why))
}

/// A path inside the package: relative, no `..`, not empty.
fn check_inner_path(field: &str, p: &str) -> Result<()> {
    let path = Path::new(p);
    if p.is_empty()
        || path.is_absolute()
        || path
            .components()
            .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir))
    {
        return Err(bad(
            field,
            format!("{p:?} must be a path inside the package (relative, without '..')"),
        ));
    }
    Ok(())
}

impl Manifest {
    /// Parses and validates manifest text. Errors name the field and the
    /// problem (TOML syntax errors give the line).
    pub fn parse(text: &str) -> Result<Manifest> {
        let raw: RawManifest = toml::from_str(text)
            .map_err(|e| Error::invalid("manifest", e.to_string().trim().to_string()))?;
        check_name("name", &raw.name)?;
        let version = semver::Version::parse(raw.version.trim()).map_err(|e| {
            bad(
                "version",
                format!("{:?} is not a semantic version ({e})", raw.version),
            )
        })?;
        let health = raw.health.map(parse_health).transpose()?;
        let restart = parse_restart(raw.restart)?;
        let limits = match raw.limits {
            None => ResourceLimits::default(),
            Some(l) => {
                let memory_bytes = l.memory.as_ref().map(memory).transpose()?;
                if memory_bytes.is_some_and(|m| m < 1 << 20) {
                    return Err(bad("limits.memory", "at least 1 MiB"));
                }
                let cpu_millis = match l.cpu {
                    None => None,
                    Some(v) => {
                        let cores = v
                            .as_float()
                            .or_else(|| v.as_integer().map(|i| i as f64))
                            .ok_or_else(|| {
                                bad("limits.cpu", format!("{v} is not a number of cores"))
                            })?;
                        if !(0.01..=1024.0).contains(&cores) {
                            return Err(bad(
                                "limits.cpu",
                                format!("{cores} is not between 0.01 and 1024 cores"),
                            ));
                        }
                        Some((cores * 1000.0).round() as u32)
                    }
                };
                ResourceLimits {
                    memory_bytes,
                    cpu_millis,
                }
            }
        };
        let m = Manifest {
            name: raw.name,
            version,
            description: raw.description,
            entrypoint: raw.entrypoint,
            args: raw.args,
            env: raw.env,
            health,
            restart,
            limits,
            keep_versions: count("keep_versions", raw.keep_versions, 3, 1, 100)?,
            stop_grace: duration(
                "stop_grace",
                raw.stop_grace.as_deref(),
                Duration::from_secs(10),
            )?,
        };
        m.validate()?;
        Ok(m)
    }

    /// Checks the rules [`parse`](Self::parse) enforces on a manifest that
    /// arrived some other way (inside a descriptor from the network).
    pub fn validate(&self) -> Result<()> {
        check_name("name", &self.name)?;
        check_inner_path("entrypoint", &self.entrypoint)?;
        if let Some(d) = &self.description
            && (d.len() > 512 || d.contains('\n'))
        {
            return Err(bad("description", "one line of at most 512 bytes"));
        }
        for (k, v) in &self.env {
            if k.is_empty() || k.contains(['=', '\0']) || v.contains('\0') {
                return Err(bad("env", format!("{k:?} is not a valid variable")));
            }
        }
        if self.args.iter().any(|a| a.contains('\0')) {
            return Err(bad("args", "an argument contains a NUL byte"));
        }
        let within = |field: &str, n: u32, min: u32, max: u32| {
            count(field, Some(i64::from(n)), n, min, max).map(|_| ())
        };
        within("keep_versions", self.keep_versions, 1, 100)?;
        if let Some(h) = &self.health {
            within("health.gate", h.gate, 1, 1000)?;
            within("health.retries", h.check.retries, 1, 100)?;
            if h.check.interval.is_zero() || h.check.timeout.is_zero() {
                return Err(bad("health", "interval and timeout must be more than zero"));
            }
        }
        if self.limits.memory_bytes.is_some_and(|m| m < 1 << 20) {
            return Err(bad("limits.memory", "at least 1 MiB"));
        }
        if let Some(c) = self.limits.cpu_millis {
            within("limits.cpu (millicores)", c, 10, 1_024_000)?;
        }
        Ok(())
    }

    /// Reads and validates `dir/p2p.toml`; errors name the file.
    pub fn load(dir: &Path) -> Result<Manifest> {
        let path = dir.join(MANIFEST_FILE);
        let text = std::fs::read_to_string(&path)
            .map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
        Manifest::parse(&text).map_err(|e| match e {
            Error::Invalid { reason, .. } => {
                Error::invalid("manifest", format!("{}: {reason}", path.display()))
            }
            other => other,
        })
    }

    /// The runtime spec for running this version from `workdir` (where
    /// the package was unpacked).
    pub fn app_spec(&self, workdir: &Path) -> AppSpec {
        AppSpec {
            workdir: workdir.to_path_buf(),
            args: self.args.clone(),
            env: self.env.clone(),
            health: self.health.as_ref().map(|h| h.check.clone()),
            restart: self.restart,
            limits: self.limits,
            stop_grace: self.stop_grace,
            ..AppSpec::new(
                self.name.clone(),
                self.version.to_string(),
                format!("./{}", self.entrypoint.trim_start_matches("./")),
            )
        }
    }
}

fn parse_health(h: RawHealth) -> Result<Health> {
    let mut probes = Vec::new();
    if h.process == Some(true) {
        probes.push(HealthProbe::Process);
    }
    if let Some(addr) = h.tcp {
        match addr.rsplit_once(':') {
            Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => {}
            _ => return Err(bad("health.tcp", format!("{addr:?} is not host:port"))),
        }
        probes.push(HealthProbe::Tcp { addr });
    }
    if let Some(url) = h.http {
        let ok = url
            .strip_prefix("http://")
            .is_some_and(|rest| !rest.is_empty() && !rest.starts_with('/'));
        if !ok {
            return Err(bad(
                "health.http",
                format!("{url:?} is not an http:// URL with a host"),
            ));
        }
        probes.push(HealthProbe::Http { url });
    }
    if let Some(mut cmd) = h.exec {
        if cmd.is_empty() || cmd[0].is_empty() {
            return Err(bad("health.exec", "the command is empty"));
        }
        let command = cmd.remove(0);
        probes.push(HealthProbe::Exec { command, args: cmd });
    }
    let probe = match probes.len() {
        1 => probes.remove(0),
        0 => {
            return Err(bad(
                "health",
                "needs one of process = true, tcp, http or exec",
            ));
        }
        _ => {
            return Err(bad(
                "health",
                "has more than one of process, tcp, http, exec",
            ));
        }
    };
    let d = HealthCheckSpec::new(probe.clone());
    let check = HealthCheckSpec {
        probe,
        interval: duration("health.interval", h.interval.as_deref(), d.interval)?,
        timeout: duration("health.timeout", h.timeout.as_deref(), d.timeout)?,
        retries: count("health.retries", h.retries, d.retries, 1, 100)?,
        start_period: duration(
            "health.start_period",
            h.start_period.as_deref(),
            d.start_period,
        )?,
    };
    if check.interval.is_zero() || check.timeout.is_zero() {
        return Err(bad("health", "interval and timeout must be more than zero"));
    }
    Ok(Health {
        check,
        gate: count("health.gate", h.gate, 3, 1, 1000)?,
    })
}

fn parse_restart(r: Option<RawRestart>) -> Result<RestartPolicy> {
    let d = RestartPolicy::default();
    let Some(r) = r else { return Ok(d) };
    let mode = match r.mode.as_deref() {
        None => d.mode,
        Some("never") => RestartMode::Never,
        Some("on-failure") => RestartMode::OnFailure,
        Some("always") => RestartMode::Always,
        Some(other) => {
            return Err(bad(
                "restart.mode",
                format!("{other:?} is not never, on-failure or always"),
            ));
        }
    };
    let p = RestartPolicy {
        mode,
        initial_backoff: duration(
            "restart.initial_backoff",
            r.initial_backoff.as_deref(),
            d.initial_backoff,
        )?,
        max_backoff: duration(
            "restart.max_backoff",
            r.max_backoff.as_deref(),
            d.max_backoff,
        )?,
        stable_after: duration(
            "restart.stable_after",
            r.stable_after.as_deref(),
            d.stable_after,
        )?,
        max_restarts: count(
            "restart.max_restarts",
            r.max_restarts,
            d.max_restarts,
            0,
            10_000,
        )?,
    };
    if p.max_backoff < p.initial_backoff {
        return Err(bad("restart.max_backoff", "is less than initial_backoff"));
    }
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: &str = "name = \"web\"\nversion = \"1.0.0\"\nentrypoint = \"run.sh\"\n";

    #[test]
    fn defaults_fill_a_minimal_manifest() {
        let m = Manifest::parse(MIN).unwrap();
        assert_eq!(m.keep_versions, 3);
        assert_eq!(m.restart, RestartPolicy::default());
        assert!(m.health.is_none());
        let spec = m.app_spec(Path::new("/v/web/1.0.0"));
        assert_eq!(spec.entrypoint, "./run.sh");
        assert_eq!(spec.version, "1.0.0");
    }

    #[test]
    fn errors_name_the_field_and_the_problem() {
        let cases = [
            (
                "name = \"../x\"\nversion = \"1.0.0\"\nentrypoint = \"a\"",
                "name",
            ),
            (
                "name = \"x\"\nversion = \"1.0\"\nentrypoint = \"a\"",
                "version",
            ),
            (
                "name = \"x\"\nversion = \"1.0.0\"\nentrypoint = \"../a\"",
                "entrypoint",
            ),
            (
                "name = \"x\"\nversion = \"1.0.0\"\nentrypoint = \"/bin/a\"",
                "entrypoint",
            ),
            (&format!("{MIN}keep_versions = 0"), "keep_versions"),
            (&format!("{MIN}colour = \"blue\""), "colour"),
            (&format!("{MIN}[health]\ntcp = \"nope\""), "health.tcp"),
            (
                &format!("{MIN}[health]\nhttp = \"https://x/\""),
                "health.http",
            ),
            (&format!("{MIN}[health]\ninterval = \"2s\""), "health"),
            (
                &format!("{MIN}[health]\nprocess = true\ninterval = \"soon\""),
                "health.interval",
            ),
            (
                &format!("{MIN}[restart]\nmode = \"sometimes\""),
                "restart.mode",
            ),
            (
                &format!("{MIN}[limits]\nmemory = \"12 parsecs\""),
                "limits.memory",
            ),
            (&format!("{MIN}[limits]\nmemory = \"1k\""), "limits.memory"),
            (&format!("{MIN}[limits]\ncpu = 0"), "limits.cpu"),
            ("name = \"x\"\nversion = ", "TOML"),
        ];
        for (text, field) in cases {
            let e = Manifest::parse(text).unwrap_err().to_string();
            assert!(
                e.contains(field) || (field == "TOML" && e.contains("line")),
                "{field}: {e}"
            );
        }
    }

    #[test]
    fn sizes_and_cores_parse() {
        let m = Manifest::parse(&format!("{MIN}[limits]\nmemory = \"1G\"\ncpu = 2")).unwrap();
        assert_eq!(m.limits.memory_bytes, Some(1 << 30));
        assert_eq!(m.limits.cpu_millis, Some(2000));
        let m = Manifest::parse(&format!("{MIN}[limits]\nmemory = 2097152")).unwrap();
        assert_eq!(m.limits.memory_bytes, Some(2 << 20));
    }
}
