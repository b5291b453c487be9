//! `demo-app`: the small HTTP service that the fleet example and the
//! end-to-end tests package and deploy.
//!
//! - `demo-app [--unhealthy] [--name TEXT]`: listens on a free loopback
//!   port, writes the port to `./port` (in its working directory, the
//!   installed version's directory), and answers `GET /health` with 200
//!   `ok` (or 503 with `--unhealthy`, to play a broken release) and any
//!   other path with a greeting.
//! - `demo-app --probe`: the health check. Reads `port` next to the
//!   executable, asks `GET /health`, and exits 0 on a 200, 1 otherwise
//!   (with the reason on stderr).
//!
//! Run it: `cargo run -p demo-app`, then
//! `curl http://127.0.0.1:$(cat port)/health`.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::time::Duration;

fn port_file_near_exe() -> std::io::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    Ok(exe
        .parent()
        .map(|p| p.join("port"))
        .unwrap_or_else(|| PathBuf::from("port")))
}

fn probe() -> Result<(), String> {
    let path = port_file_near_exe().map_err(|e| format!("locating the port file: {e}"))?;
    let port = std::fs::read_to_string(&path)
        .map_err(|e| format!("{}: {e} (not started yet?)", path.display()))?;
    let port: u16 = port
        .trim()
        .parse()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let mut s = TcpStream::connect(("127.0.0.1", port)).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))
        .map_err(|e| e.to_string())?;
    s.write_all(b"GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .map_err(|e| format!("send: {e}"))?;
    let mut reply = String::new();
    s.read_to_string(&mut reply)
        .map_err(|e| format!("read: {e}"))?;
    let status = reply.lines().next().unwrap_or_default().to_string();
    if status.split_whitespace().nth(1) == Some("200") {
        Ok(())
    } else {
        Err(format!("GET /health: {status}"))
    }
}

fn answer(mut s: TcpStream, healthy: bool, name: &str) {
    let mut line = String::new();
    let mut r = BufReader::new(match s.try_clone() {
        Ok(c) => c,
        Err(_) => return,
    });
    if r.read_line(&mut line).is_err() {
        return;
    }
    // Drain the headers.
    let mut h = String::new();
    while r.read_line(&mut h).is_ok_and(|n| n > 2) {
        h.clear();
    }
    let path = line.split_whitespace().nth(1).unwrap_or("/");
    let (status, body) = match path {
        "/health" if healthy => ("200 OK", "ok\n".to_string()),
        "/health" => (
            "503 Service Unavailable",
            "unhealthy on purpose\n".to_string(),
        ),
        _ => ("200 OK", format!("hello from {name}\n")),
    };
    let _ = write!(
        s,
        "HTTP/1.0 {status}\r\nContent-Length: {}\r\nContent-Type: text/plain\r\n\r\n{body}",
        body.len()
    );
    println!(
        "{} {path} -> {status}",
        line.split_whitespace().next().unwrap_or("?")
    );
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--probe") {
        match probe() {
            Ok(()) => return,
            Err(e) => {
                eprintln!("demo-app probe: {e}");
                std::process::exit(1);
            }
        }
    }
    let healthy = !args.iter().any(|a| a == "--unhealthy");
    let name = args
        .iter()
        .position(|a| a == "--name")
        .and_then(|i| args.get(i + 1))
        .cloned()
        .unwrap_or_else(|| "demo-app".to_string());
    let listener = match TcpListener::bind(("127.0.0.1", 0)) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("demo-app: binding a loopback port: {e}");
            std::process::exit(2);
        }
    };
    let port = listener.local_addr().map(|a| a.port()).unwrap_or(0);
    // Written atomically so that a probe never reads half a number.
    if let Err(e) = std::fs::write("port.tmp", port.to_string())
        .and_then(|()| std::fs::rename("port.tmp", "port"))
    {
        eprintln!("demo-app: writing ./port: {e}");
        std::process::exit(2);
    }
    println!("{name} listening on 127.0.0.1:{port} (healthy: {healthy})");
    for s in listener.incoming().flatten() {
        answer(s, healthy, &name);
    }
}
