//! Checking an [`AppSpec`] before anything runs, so that a typo is an
//! [`Error::Invalid`] naming the field at start, never an app that fails
//! later.

use std::path::Path;
use std::time::Duration;

use p2p_core::runtime::{AppSpec, HealthProbe, check_app_name};
use p2p_core::{Error, Result};

use crate::program::resolve_program;

/// Checks everything about a spec that can be checked before anything
/// runs; each problem is an [`Error::Invalid`] naming the field.
pub(crate) fn validate(spec: &AppSpec) -> Result<Option<(u32, u32)>> {
    check_app_name(&spec.name).map_err(|why| Error::invalid("name", why))?;
    match std::fs::metadata(&spec.workdir) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => {
            return Err(Error::invalid(
                "workdir",
                format!("{} is not a directory", spec.workdir.display()),
            ));
        }
        Err(e) => {
            return Err(Error::invalid(
                "workdir",
                format!("{}: {e}", spec.workdir.display()),
            ));
        }
    }
    resolve_program(
        &spec.entrypoint,
        &spec.workdir,
        spec.env.get("PATH").map(String::as_str),
    )?;
    if let Some(h) = &spec.health {
        check_probe(&h.probe, &spec.workdir)?;
        if h.interval.is_zero() || h.timeout.is_zero() {
            return Err(Error::invalid(
                "health check",
                "interval and timeout must be more than zero",
            ));
        }
    }
    const DAY: Duration = Duration::from_secs(24 * 3600);
    let durations = [
        ("stop_grace", Some(spec.stop_grace)),
        ("restart", Some(spec.restart.initial_backoff)),
        ("restart", Some(spec.restart.max_backoff)),
        ("restart", Some(spec.restart.stable_after)),
        ("health check", spec.health.as_ref().map(|h| h.interval)),
        ("health check", spec.health.as_ref().map(|h| h.timeout)),
        ("health check", spec.health.as_ref().map(|h| h.start_period)),
    ];
    for (field, d) in durations {
        if d.is_some_and(|d| d > DAY) {
            return Err(Error::invalid(field, "a duration of more than a day"));
        }
    }
    if spec.limits.memory_bytes.is_some_and(|m| m < 1024 * 1024) {
        return Err(Error::invalid("limits", "a memory limit below 1 MiB"));
    }
    if spec.limits.cpu_millis.is_some_and(|c| c < 10) {
        return Err(Error::invalid(
            "limits",
            "a CPU limit under 10 thousandths of a core",
        ));
    }
    if spec.user.is_some() && resolve_program("setpriv", Path::new("/"), None).is_err() {
        return Err(Error::invalid(
            "user",
            "running an app as another user needs `setpriv` (util-linux) on this host",
        ));
    }
    let user = match &spec.user {
        None => None,
        Some(u) => {
            let found = match u.parse::<u32>() {
                Ok(uid) => nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)),
                Err(_) => nix::unistd::User::from_name(u),
            };
            match found {
                Ok(Some(user)) => Some((user.uid.as_raw(), user.gid.as_raw())),
                Ok(None) => return Err(Error::invalid("user", format!("no user {u:?}"))),
                Err(e) => return Err(Error::invalid("user", format!("looking up {u:?}: {e}"))),
            }
        }
    };
    Ok(user)
}

/// Checks a probe's target before an app starts, so that a typo is an
/// error at start rather than an app that never becomes healthy.
fn check_probe(probe: &HealthProbe, workdir: &Path) -> Result<()> {
    let bad = |reason: String| Err(Error::invalid("health check", reason));
    match probe {
        HealthProbe::Process => Ok(()),
        HealthProbe::Tcp { addr } => {
            let Some((host, port)) = addr.rsplit_once(':') else {
                return bad(format!("TCP target {addr:?} is not host:port"));
            };
            if host.is_empty() || port.parse::<u16>().is_err() {
                return bad(format!("TCP target {addr:?} is not host:port"));
            }
            Ok(())
        }
        HealthProbe::Http { url } => {
            let u: hyper::Uri = url
                .parse()
                .map_err(|e| Error::invalid("health check", format!("URL {url:?}: {e}")))?;
            match u.scheme_str() {
                Some("http") if u.host().is_some() => Ok(()),
                Some("http") => bad(format!("URL {url:?} has no host")),
                Some("https") => bad(format!(
                    "URL {url:?}: https is not supported by health checks; probe the app over http"
                )),
                Some(other) => bad(format!("URL {url:?}: scheme {other:?} is not http")),
                None => bad(format!(
                    "URL {url:?} is not absolute (http://host:port/path)"
                )),
            }
        }
        HealthProbe::Exec { command, .. } => resolve_program(command, workdir, None)
            .map(|_| ())
            .map_err(|e| match e {
                Error::Invalid { reason, .. } => Error::invalid("health check", reason),
                other => other,
            }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_targets_are_named_at_start() {
        let wd = Path::new("/");
        for (p, want) in [
            (
                HealthProbe::Tcp {
                    addr: "localhost".into(),
                },
                "host:port",
            ),
            (
                HealthProbe::Tcp {
                    addr: "h:99999".into(),
                },
                "host:port",
            ),
            (
                HealthProbe::Http {
                    url: "not a url".into(),
                },
                "URL",
            ),
            (
                HealthProbe::Http {
                    url: "https://x/".into(),
                },
                "https",
            ),
            (
                HealthProbe::Exec {
                    command: "no-such-program-p2p".into(),
                    args: vec![],
                },
                "not found",
            ),
        ] {
            let e = check_probe(&p, wd).unwrap_err().to_string();
            assert!(e.contains(want) && e.contains("health check"), "{e}");
        }
        check_probe(
            &HealthProbe::Tcp {
                addr: "127.0.0.1:80".into(),
            },
            wd,
        )
        .unwrap();
        check_probe(
            &HealthProbe::Http {
                url: "http://127.0.0.1:1/h".into(),
            },
            wd,
        )
        .unwrap();
    }
}
