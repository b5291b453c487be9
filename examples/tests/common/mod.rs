//! Helpers shared by the tests that run `p2pd` and `p2pctl` as
//! processes: a daemon in its data directory, a world with a publisher
//! key and a private HOME, packages of demo-app, and status queries.
#![allow(
    clippy::unwrap_used,
    clippy::disallowed_methods,
    dead_code,
    unreachable_pub
)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use p2p_examples::netlab::{Host, Lab};

pub struct Daemon {
    pub child: Child,
    pub dir: PathBuf,
    /// Another daemon runs on `dir` now: what is left there is its.
    handed_over: bool,
}

impl Daemon {
    pub fn start(dir: &Path, args: &[&str]) -> Daemon {
        Daemon::start_with(Command::new(env!("CARGO_BIN_EXE_p2pd")), dir, args)
    }

    /// `p2pd run` on host `host` of `lab`.
    pub fn start_in(lab: &Lab, host: &Host, dir: &Path, args: &[&str]) -> Daemon {
        Daemon::start_with(lab.command(host, env!("CARGO_BIN_EXE_p2pd")), dir, args)
    }

    /// `p2pd run` on host `host` of `lab`, logging JSON at `filter`.
    pub fn start_logged_in(
        lab: &Lab,
        host: &Host,
        dir: &Path,
        args: &[&str],
        filter: &str,
    ) -> Daemon {
        let mut c = lab.command(host, env!("CARGO_BIN_EXE_p2pd"));
        c.env("P2PD_LOG_FORMAT", "json")
            .env("P2P_TEST_RUST_LOG", filter);
        Daemon::start_with(c, dir, args)
    }

    /// The daemon's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.with_extension("log")).unwrap_or_default()
    }

    fn start_with(mut command: Command, dir: &Path, args: &[&str]) -> Daemon {
        // A filter a test asked for wins over the default.
        let filter = command
            .get_envs()
            .find(|(k, _)| *k == "P2P_TEST_RUST_LOG")
            .and_then(|(_, v)| v)
            .map(|v| v.to_string_lossy().into_owned())
            .unwrap_or_else(|| "info".into());
        let _ = std::fs::remove_file(dir.join("p2pd.addr"));
        let log = std::fs::File::create(dir.with_extension("log")).unwrap();
        let child = command
            .arg("--data-dir")
            .arg(dir)
            .arg("run")
            .args(args)
            .env("RUST_LOG", filter)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let d = Daemon {
            child,
            dir: dir.to_path_buf(),
            handed_over: false,
        };
        let begun = Instant::now();
        while !dir.join("p2pd.addr").exists() {
            assert!(
                begun.elapsed() < Duration::from_secs(30),
                "p2pd did not come up: {}",
                std::fs::read_to_string(dir.with_extension("log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        d
    }

    pub fn addr(&self) -> String {
        std::fs::read_to_string(self.dir.join("p2pd.addr"))
            .unwrap()
            .trim()
            .to_string()
    }

    /// SIGKILL, as a crash or a power cut would end it (its apps live
    /// on until the daemon is dropped).
    pub fn kill(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// SIGTERM, and the exit status.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        let begun = Instant::now();
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            assert!(
                begun.elapsed() < Duration::from_secs(20),
                "p2pd ignored SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // SIGTERM stops the apps with the agent; whatever is left (the
        // agent ignored it, or a test killed it) is killed, so no test
        // leaves processes behind.
        if let Ok(None) = self.child.try_wait() {
            let pid = self.child.id().to_string();
            let _ = Command::new("kill").args(["-TERM", &pid]).status();
            let begun = Instant::now();
            while matches!(self.child.try_wait(), Ok(None))
                && begun.elapsed() < Duration::from_secs(10)
            {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        if self.handed_over {
            return;
        }
        for pid in processes_under(&self.dir) {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
    }
}

pub struct World {
    pub dir: tempfile::TempDir,
    pub env: Vec<(String, String)>,
}

impl World {
    pub fn new() -> World {
        let dir = tempfile::tempdir().unwrap();
        let home = dir.path().join("home");
        std::fs::create_dir_all(&home).unwrap();
        let env = vec![
            ("HOME".to_string(), home.display().to_string()),
            (
                "XDG_CONFIG_HOME".to_string(),
                home.join(".config").display().to_string(),
            ),
            (
                "XDG_DATA_HOME".to_string(),
                home.join(".local/share").display().to_string(),
            ),
        ];
        let w = World { dir, env };
        let o = w.ctl(&["keygen", "--out", "publisher"]);
        assert!(o.status.success(), "{}", text(&o));
        w
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn run(&self, bin: &str, args: &[&str]) -> Output {
        Command::new(bin)
            .current_dir(self.path())
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .args(args)
            .output()
            .unwrap()
    }

    pub fn ctl(&self, args: &[&str]) -> Output {
        self.run(env!("CARGO_BIN_EXE_p2pctl"), args)
    }

    /// `p2pctl args` on host `host` of `lab`, with `env` added.
    pub fn ctl_in(&self, lab: &Lab, host: &Host, env: &[(&str, &str)], args: &[&str]) -> Output {
        lab.command(host, env!("CARGO_BIN_EXE_p2pctl"))
            .current_dir(self.path())
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .envs(env.iter().copied())
            .args(args)
            .output()
            .unwrap()
    }

    /// `p2pctl args` left running on host `host` of `lab`, its stdout as
    /// given, stderr dropped.
    pub fn spawn_ctl_in(
        &self,
        lab: &Lab,
        host: &Host,
        env: &[(&str, &str)],
        args: &[&str],
        stdout: Stdio,
    ) -> Child {
        lab.command(host, env!("CARGO_BIN_EXE_p2pctl"))
            .current_dir(self.path())
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .envs(env.iter().copied())
            .args(args)
            .stdout(stdout)
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    }

    /// `p2pctl args` left running, its stdout as given, stderr dropped.
    pub fn spawn_ctl(&self, args: &[&str], stdout: Stdio) -> Child {
        Command::new(env!("CARGO_BIN_EXE_p2pctl"))
            .current_dir(self.path())
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .args(args)
            .stdout(stdout)
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    }

    /// Starts `p2pctl deploy pkg` to `node`, kills the agent with SIGKILL
    /// `after` into it, ends the deploy (the controller would notice only
    /// at its idle timeout), and returns the agent started again.
    pub fn sigkill_during_deploy(&self, node: Daemon, pkg: &str, after: Duration) -> Daemon {
        let mut node = node;
        let mut deploy =
            self.spawn_ctl(&["deploy", pkg, "--bootstrap", &node.addr()], Stdio::null());
        std::thread::sleep(after);
        node.child.kill().unwrap(); // SIGKILL
        node.child.wait().unwrap();
        let _ = deploy.kill();
        let _ = deploy.wait();
        // The new agent must find the killed one's orphans itself.
        let next = Daemon::start(&node.dir, &[]);
        node.handed_over = true;
        next
    }

    pub fn ok(&self, args: &[&str]) -> String {
        let o = self.ctl(args);
        assert!(o.status.success(), "p2pctl {args:?}: {}", text(&o));
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// `p2pd init` of node `name`, the publisher's key trusted.
    pub fn node(&self, name: &str, backend: &str) -> PathBuf {
        self.node_on(name, backend, "127.0.0.1:0")
    }

    /// `p2pd init` of node `name` listening on `listen`, the publisher's
    /// key trusted.
    pub fn node_on(&self, name: &str, backend: &str, listen: &str) -> PathBuf {
        let dir = self.path().join(name);
        let o = self.run(
            env!("CARGO_BIN_EXE_p2pd"),
            &[
                "--data-dir",
                dir.to_str().unwrap(),
                "init",
                "--name",
                name,
                "--backend",
                backend,
                "--listen",
                listen,
            ],
        );
        assert!(o.status.success(), "{}", text(&o));
        std::fs::copy(
            self.path().join("publisher.pub"),
            dir.join("trusted/publisher.pub"),
        )
        .unwrap();
        dir
    }

    /// A signed package of demo-app at `version`.
    pub fn package(&self, version: &str, args: &str) -> String {
        self.package_with(version, args, 0)
    }

    /// A signed package of demo-app at `version` with `ballast` bytes of
    /// incompressible data besides, so that it takes many chunks.
    pub fn package_with(&self, version: &str, args: &str, ballast: usize) -> String {
        self.package_full(version, args, ballast, DEFAULT_HEALTH)
    }

    /// A signed package of demo-app at `version` whose health check
    /// settings (after `exec`) are `health`: `"interval = \"1s\"\ngate =
    /// 8\n"` makes its gate take eight seconds.
    pub fn package_health(&self, version: &str, args: &str, health: &str) -> String {
        self.package_full(version, args, 0, health)
    }

    /// A signed package of demo-app at `version` with `ballast` bytes of
    /// incompressible data and the health settings `health` (see
    /// [`World::package_health`]).
    pub fn package_full(&self, version: &str, args: &str, ballast: usize, health: &str) -> String {
        let app = self.path().join(format!("app-{version}"));
        std::fs::create_dir_all(&app).unwrap();
        if ballast > 0 {
            use rand::{Rng, SeedableRng};
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(ballast as u64);
            let mut data = vec![0u8; ballast];
            rng.fill_bytes(&mut data);
            std::fs::write(app.join("ballast.bin"), data).unwrap();
        }
        let demo_app =
            p2p_examples::fleet::build_demo_app(&std::env::current_exe().unwrap()).unwrap();
        std::fs::copy(demo_app, app.join("demo-app")).unwrap();
        std::fs::write(
            app.join("p2p.toml"),
            format!(
                "name = \"demo\"\nversion = \"{version}\"\nentrypoint = \"demo-app\"\n\
                 args = [{args}]\nstop_grace = \"2s\"\n\
                 [health]\nexec = [\"./demo-app\", \"--probe\"]\n{health}"
            ),
        )
        .unwrap();
        let file = format!("demo-{version}.p2p");
        self.ok(&["package", app.to_str().unwrap(), "--out", &file]);
        self.ok(&["sign", &file, "--signing-key", "publisher.key"]);
        file
    }
}

/// The health settings of [`World::package`]: a gate of two probes, 200
/// ms apart.
const DEFAULT_HEALTH: &str = "interval = \"200ms\"\ntimeout = \"2s\"\nretries = 3\ngate = 2\n";

pub fn text(o: &Output) -> String {
    format!(
        "exit {:?}\n{}{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

pub fn json_lines(s: &str) -> Vec<serde_json::Value> {
    s.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// `{node name: active version}` from `status demo --json`.
pub fn active(w: &World, bs: &str) -> Vec<(String, String)> {
    active_in(&w.ok(&["status", "demo", "--json", "--bootstrap", bs]))
}

/// `{node name: active version}` from the output of `status demo --json`.
pub fn active_in(status_json: &str) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = json_lines(status_json)
        .iter()
        .map(|v| {
            (
                v["name"].as_str().unwrap().to_string(),
                v["app"]["active"].as_str().unwrap_or("-").to_string(),
            )
        })
        .collect();
    out.sort();
    out
}

/// Reads `p2pctl logs -f` (a running child with its stdout piped) until
/// lines came from `nodes` different nodes, then stops it.
pub fn follow_until_lines_from(mut follow: Child, nodes: usize) {
    use std::io::{BufRead, BufReader};
    let mut seen = std::collections::BTreeSet::new();
    let mut lines = BufReader::new(follow.stdout.take().unwrap()).lines();
    while seen.len() < nodes {
        let line = lines.next().unwrap().unwrap();
        seen.insert(line.split_whitespace().next().unwrap().to_string());
    }
    let _ = follow.kill();
    let _ = follow.wait();
}

/// `status demo --json` of one node.
pub fn status_of(w: &World, bs: &str, node: &str) -> Vec<serde_json::Value> {
    json_lines(&w.ok(&[
        "status",
        "demo",
        "--json",
        "--nodes",
        node,
        "--bootstrap",
        bs,
    ]))
}

pub fn pair(a: &str, b: &str) -> Vec<(String, String)> {
    vec![
        ("n1".to_string(), a.to_string()),
        ("n2".to_string(), b.to_string()),
    ]
}

/// The ids of the processes whose executable lies under `dir`.
pub fn processes_under(dir: &Path) -> Vec<u32> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if let Ok(exe) = std::fs::read_link(entry.path().join("exe"))
            && exe.starts_with(dir)
        {
            out.push(pid);
        }
    }
    out
}

/// Waits until node `node` runs `demo` healthy; returns its active
/// version.
pub fn healthy(w: &World, bs: &str, node: &str) -> String {
    let begun = Instant::now();
    loop {
        let st = status_of(w, bs, node);
        if st[0]["app"]["status"]["state"] == "healthy" {
            return st[0]["app"]["active"].as_str().unwrap().to_string();
        }
        assert!(begun.elapsed() < Duration::from_secs(30), "{st:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A node's peer id, from its `p2pd.addr`.
pub fn n1_id(dir: &Path) -> String {
    let addr = std::fs::read_to_string(dir.join("p2pd.addr")).unwrap();
    addr.split('@').next().unwrap().trim().to_string()
}

/// The path of `tool` (`promtool`, `prometheus`), or `None` after saying
/// on stderr that `test` is skipped for want of it. Under `CI=true` as
/// root the tool must be there (`.ci/run` installs it): the test fails.
pub fn tool_for_test(test: &str, tool: &str) -> Option<PathBuf> {
    use std::io::Write;
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join(tool))
            .find(|p| p.is_file())
    });
    if found.is_none() {
        if std::env::var("CI").as_deref() == Ok("true") && p2p_examples::netlab::is_root() {
            panic!("{test}: CI runs as root and must run this test, but `{tool}` is missing");
        }
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED {test}: needs `{tool}` (Debian: apt-get install prometheus)"
        );
    }
    found
}

/// A free TCP port on loopback (bound and let go: good enough for a test).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `GET path` from `addr` over HTTP/1.0: the status code and the body.
pub fn http_get(addr: &str, path: &str) -> std::io::Result<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut raw = String::new();
    s.read_to_string(&mut raw)?;
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((raw.as_str(), ""));
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    Ok((code, body.to_string()))
}

/// Runs `promtool check metrics` on `text`: its verdict and what it said.
pub fn promtool_check(promtool: &Path, text: &str) -> (bool, String) {
    use std::io::Write;
    let mut child = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let o = child.wait_with_output().unwrap();
    (
        o.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ),
    )
}

/// `GET url` from inside `host`'s namespace (with the python3 every CI
/// machine has): the body. Panics when the request fails.
pub fn http_get_in(lab: &Lab, host: &Host, url: &str) -> String {
    let o = lab
        .command(host, "python3")
        .args([
            "-c",
            "import sys, urllib.request; sys.stdout.write(urllib.request.urlopen(sys.argv[1], timeout=10).read().decode())",
            url,
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "GET {url}: {}", text(&o));
    String::from_utf8_lossy(&o.stdout).into_owned()
}
