//! [`ProcessHealthChecker`]: the four probes against real processes and
//! sockets.

use async_trait::async_trait;
use bytes::Bytes;
use http_body_util::Empty;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use p2p_core::runtime::{HealthCheckSpec, HealthChecker, HealthOutcome, HealthProbe, ProbeTarget};
use tokio::io::AsyncReadExt;

/// Probes real processes: alive, TCP connect, HTTP GET (through hyper's
/// client; plain `http://` only, which is what an app's local health
/// endpoint speaks), or a command's exit status.
///
/// ```no_run
/// use p2p_core::runtime::{HealthCheckSpec, HealthChecker, HealthProbe, ProbeTarget};
/// use p2p_runtime::ProcessHealthChecker;
/// # async fn demo() {
/// let checker = ProcessHealthChecker::new();
/// let spec = HealthCheckSpec::new(HealthProbe::Http { url: "http://127.0.0.1:8080/health".into() });
/// let target = ProbeTarget { name: "web".into(), version: "1.0.0".into(), pid: None };
/// println!("{:?}", checker.probe(&target, &spec).await);
/// # }
/// ```
#[derive(Clone)]
pub struct ProcessHealthChecker {
    http: Client<HttpConnector, Empty<Bytes>>,
}

impl std::fmt::Debug for ProcessHealthChecker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ProcessHealthChecker")
    }
}

impl Default for ProcessHealthChecker {
    fn default() -> Self {
        Self::new()
    }
}

impl ProcessHealthChecker {
    /// A checker with its own HTTP client (no proxies, redirects not
    /// followed: a 3xx answer is unhealthy).
    pub fn new() -> Self {
        let http = Client::builder(TokioExecutor::new()).build_http();
        ProcessHealthChecker { http }
    }
}

#[async_trait]
impl HealthChecker for ProcessHealthChecker {
    async fn probe(&self, target: &ProbeTarget, spec: &HealthCheckSpec) -> HealthOutcome {
        match tokio::time::timeout(spec.timeout, self.run(target, &spec.probe)).await {
            Ok(outcome) => outcome,
            Err(_) => HealthOutcome::Unhealthy(format!(
                "{} timed out after {:?}",
                describe(&spec.probe),
                spec.timeout
            )),
        }
    }
}

fn describe(p: &HealthProbe) -> String {
    match p {
        HealthProbe::Process => "process check".into(),
        HealthProbe::Tcp { addr } => format!("TCP connect to {addr}"),
        HealthProbe::Http { url } => format!("HTTP GET {url}"),
        HealthProbe::Exec { command, .. } => format!("command {command}"),
    }
}

impl ProcessHealthChecker {
    async fn run(&self, target: &ProbeTarget, probe: &HealthProbe) -> HealthOutcome {
        let bad = HealthOutcome::Unhealthy;
        match probe {
            HealthProbe::Process => match target.pid {
                Some(pid) if process_alive(pid) => HealthOutcome::Healthy,
                Some(pid) => bad(format!("process {pid} is not running")),
                None => bad("no process".into()),
            },
            HealthProbe::Tcp { addr } => {
                match tokio::net::TcpStream::connect(addr.as_str()).await {
                    Ok(_) => HealthOutcome::Healthy,
                    Err(e) => bad(format!("TCP connect to {addr}: {e}")),
                }
            }
            HealthProbe::Http { url } => {
                let uri = match url.parse::<hyper::Uri>() {
                    Ok(u) => u,
                    Err(e) => return bad(format!("HTTP GET {url}: {e}")),
                };
                match self.http.get(uri).await {
                    Ok(r) if r.status().is_success() => HealthOutcome::Healthy,
                    Ok(r) => bad(format!("HTTP GET {url}: status {}", r.status())),
                    Err(e) => bad(format!("HTTP GET {url}: {}", error_chain(&e))),
                }
            }
            HealthProbe::Exec { command, args } => {
                let child = tokio::process::Command::new(command)
                    .args(args)
                    .stdin(std::process::Stdio::null())
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::piped())
                    .kill_on_drop(true)
                    .spawn();
                let mut child = match child {
                    Ok(c) => c,
                    Err(e) => return bad(format!("cannot run {command}: {e}")),
                };
                let mut err = Vec::new();
                if let Some(mut s) = child.stderr.take() {
                    // The first bytes say why; the rest is drained.
                    let mut buf = [0u8; 4096];
                    while let Ok(n) = s.read(&mut buf).await {
                        if n == 0 {
                            break;
                        }
                        if err.len() < 512 {
                            err.extend_from_slice(&buf[..n.min(512 - err.len())]);
                        }
                    }
                }
                match child.wait().await {
                    Ok(s) if s.success() => HealthOutcome::Healthy,
                    Ok(s) => {
                        let why = String::from_utf8_lossy(&err);
                        let why = why.trim();
                        if why.is_empty() {
                            bad(format!("{command} exited with {s}"))
                        } else {
                            bad(format!("{command} exited with {s}: {why}"))
                        }
                    }
                    Err(e) => bad(format!("waiting for {command}: {e}")),
                }
            }
        }
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// Alive and not a zombie.
pub(crate) fn process_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the command name in parentheses.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}
