//! The seed corpora: well-formed inputs for every target, so that the
//! fuzzer starts past the first checks. `cargo run --example seed_corpus`
//! (from `fuzz/`) writes them to `corpus/<target>/seed-*`; they are
//! committed, and regenerating them is only needed when a format changes.

use std::path::Path;

use p2p_core::admission::ADMISSION_PROTOCOL;
use p2p_core::framing::Hello;
use p2p_core::runtime::{LogLine, LogSelection, LogStream};
use p2p_core::{Clock, Ed25519Signer, PeerAddr, Timestamp};
use p2p_deploy::proto::{
    ActivateOptions, Activation, DeployEvent, Envelope, ErrorKind, Frame, PROTOCOL, Reply, Request,
    RpcError,
};
use p2p_deploy::{Bitfield, BuildOptions, PackageFile, build};
use serde::Serialize;

use crate::tarball::{self, Entry, Kind, Part};
use crate::{frame, peer};

/// One seed: its file name (after `seed-`) and its bytes.
pub type Seed = (String, Vec<u8>);

fn enc<T: Serialize>(v: &T) -> Vec<u8> {
    postcard::to_allocvec(v).expect("encoding in memory")
}

fn with(prefix: &[u8], rest: &[u8]) -> Vec<u8> {
    let mut v = prefix.to_vec();
    v.extend_from_slice(rest);
    v
}

fn requests() -> Vec<(&'static str, Request)> {
    let v = semver::Version::new(1, 2, 0);
    let package = p2p_deploy::PackageId([5; 32]);
    vec![
        ("info", Request::Info),
        ("list", Request::List),
        ("status", Request::Status { app: "web".into() }),
        ("stop", Request::Stop { app: "web".into() }),
        (
            "switch",
            Request::Switch {
                app: "web".into(),
                version: v.clone(),
                options: ActivateOptions::default(),
            },
        ),
        (
            "remove",
            Request::Remove {
                app: "web".into(),
                version: Some(v),
            },
        ),
        (
            "logs",
            Request::Logs {
                app: "web".into(),
                selection: LogSelection {
                    stream: LogStream::Stdout,
                    tail: Some(10),
                    follow: true,
                },
            },
        ),
        (
            "deploy",
            Request::Deploy {
                descriptor: vec![1, 2, 3],
                signatures: Vec::new(),
                options: ActivateOptions::default(),
                peers: vec![PeerAddr::new(peer(4), ["127.0.0.1:4000"]).expect("an address")],
            },
        ),
        (
            "fetch-chunks",
            Request::FetchChunks {
                package,
                indexes: vec![0, 1, 7],
            },
        ),
        (
            "swarm",
            Request::Swarm {
                package,
                have: half(20),
            },
        ),
        ("catalog", Request::Catalog),
        (
            "fetch",
            Request::Fetch {
                package,
                from: vec![PeerAddr::id_only(peer(4))],
            },
        ),
        (
            "deploy-ref",
            Request::DeployRef {
                package,
                signatures: Vec::new(),
                options: ActivateOptions::default(),
                from: vec![PeerAddr::id_only(peer(5))],
                peers: vec![PeerAddr::new(peer(4), ["127.0.0.1:4000"]).expect("an address")],
            },
        ),
        (
            "events",
            Request::Events {
                after: 12,
                follow: true,
            },
        ),
        (
            "plan",
            Request::Plan {
                descriptor: vec![1, 2, 3],
                signatures: Vec::new(),
            },
        ),
    ]
}

fn half(n: usize) -> Bitfield {
    let mut b = Bitfield::new(n);
    for i in (0..n).step_by(2) {
        b.set(i);
    }
    b
}

/// `frame`: a hello and requests, as a client's stream to an agent.
pub fn frame_seeds() -> Vec<Seed> {
    let hello = frame(&enc(&Hello::new(&PROTOCOL)));
    let mut out = Vec::new();
    for (name, request) in requests() {
        let env = Envelope {
            timeout_ms: 30_000,
            request,
        };
        let mut stream = vec![3u8];
        stream.extend_from_slice(&hello);
        stream.extend_from_slice(&frame(&enc(&env)));
        out.push((format!("hello-{name}"), stream));
    }
    out.push(("hello-only".into(), with(&[1], &hello)));
    out.push((
        "admission-hello".into(),
        with(&[2], &frame(&enc(&Hello::new(&ADMISSION_PROTOCOL)))),
    ));
    out.push(("truncated".into(), with(&[3], &hello[..hello.len() - 2])));
    out
}

/// `rpc`: one body of each message type (byte 0 picks the type, in the
/// order of the target's `match`).
pub fn rpc_seeds(descriptor: &[u8]) -> Vec<Seed> {
    let mut out = vec![(
        "hello".to_string(),
        with(&[0], &enc(&Hello::new(&PROTOCOL))),
    )];
    for (name, request) in requests() {
        let env = Envelope {
            timeout_ms: 1000,
            request: request.clone(),
        };
        out.push((format!("envelope-{name}"), with(&[1], &enc(&env))));
        out.push((format!("request-{name}"), with(&[2], &enc(&request))));
    }
    let replies = [
        ("ok", Reply::Ok),
        (
            "activated",
            Reply::Activation(Activation::Activated {
                version: semver::Version::new(2, 0, 0),
                previous: Some(semver::Version::new(1, 0, 0)),
            }),
        ),
        (
            "release",
            Reply::Release {
                descriptor: descriptor.to_vec(),
                signatures: Vec::new(),
            },
        ),
    ];
    for (name, r) in &replies {
        out.push((format!("reply-{name}"), with(&[3], &enc(r))));
    }
    let frames = [
        (
            "chunk",
            Frame::Chunk {
                index: 3,
                bytes: vec![0xAB; 64],
            },
        ),
        ("have", Frame::Have(half(33))),
        ("got", Frame::Got(9)),
        (
            "log",
            Frame::Log(LogLine {
                stream: LogStream::Stderr,
                line: "listening on :8080".into(),
            }),
        ),
        ("done", Frame::Done(Reply::Ok)),
        (
            "error",
            Frame::Error(RpcError::new(ErrorKind::NotFound, "no app \"web\"")),
        ),
        ("alive", Frame::Alive),
        (
            "node-event",
            Frame::NodeEvent(p2p_deploy::events::NodeEvent {
                index: 7,
                at_ms: 1_700_000_000_000,
                kind: p2p_deploy::events::EventKind::Installed {
                    app: "web".into(),
                    version: semver::Version::new(1, 2, 0),
                },
            }),
        ),
    ];
    for (name, f) in &frames {
        out.push((format!("frame-{name}"), with(&[4], &enc(f))));
    }
    out.push(("event".into(), with(&[5], &enc(&DeployEvent::Verified))));
    out.push((
        "error".into(),
        with(
            &[6],
            &enc(&RpcError::new(ErrorKind::Denied, "not an operator")),
        ),
    ));
    out.push(("bitfield".into(), with(&[7], &enc(&half(17)))));
    out.push(("descriptor".into(), with(&[8], descriptor)));
    out
}

/// The admission messages, shaped as `p2p_core::admission` encodes them.
#[derive(Serialize)]
enum Msg {
    Offer {
        nonce: [u8; 32],
        has_key: bool,
    },
    Challenge {
        nonce: [u8; 32],
        proof: Option<[u8; 32]>,
    },
    Proof {
        proof: Option<[u8; 32]>,
    },
    Admitted,
    Denied {
        reason: String,
    },
}

/// `admission`: byte 0 the side (even: we dial), byte 1 the policy, then
/// what the peer says.
pub fn admission_seeds() -> Vec<Seed> {
    let hello = frame(&enc(&Hello::new(&ADMISSION_PROTOCOL)));
    let m = |msg: &Msg| frame(&enc(msg));
    let mut out = Vec::new();
    for policy in 0..4u8 {
        let has_key = policy < 2;
        let proof = has_key.then_some([0x11; 32]);
        // It dials us: hello, offer, proof.
        let mut s = hello.clone();
        s.extend(m(&Msg::Offer {
            nonce: [1; 32],
            has_key,
        }));
        s.extend(m(&Msg::Proof { proof }));
        out.push((format!("inbound-{policy}"), with(&[1, policy], &s)));
        // We dial it: hello, challenge, admitted.
        let mut s = hello.clone();
        s.extend(m(&Msg::Challenge {
            nonce: [2; 32],
            proof,
        }));
        s.extend(m(&Msg::Admitted));
        out.push((format!("outbound-{policy}"), with(&[0, policy], &s)));
    }
    let mut s = hello.clone();
    s.extend(m(&Msg::Denied {
        reason: "wrong key".into(),
    }));
    out.push(("outbound-denied".into(), with(&[0, 0], &s)));
    out
}

/// `manifest`: manifests using every table.
pub fn manifest_seeds() -> Vec<Seed> {
    let texts = [
        (
            "minimal",
            "name = \"web\"\nversion = \"1.0.0\"\nentrypoint = \"bin/web\"\n",
        ),
        (
            "full",
            r#"name = "web"
version = "1.4.2-rc.1+build.5"
description = "the web tier"
entrypoint = "bin/web"
args = ["--port", "8080"]
keep_versions = 5
stop_grace = "1m 30s"

[env]
RUST_LOG = "info"

[health]
http = "http://127.0.0.1:8080/health"
interval = "2s"
timeout = "500ms"
retries = 3
start_period = "10s"
gate = 3

[restart]
mode = "always"
initial_backoff = "250ms"
max_backoff = "30s"
stable_after = "1m"
max_restarts = 20

[limits]
memory = "256MiB"
cpu = 1.5
"#,
        ),
        (
            "exec-health",
            "name = \"job\"\nversion = \"0.1.0\"\nentrypoint = \"run.sh\"\n[health]\nexec = [\"./check\", \"--quick\"]\n[limits]\nmemory = 1048576\ncpu = 2\n",
        ),
        (
            "tcp-health",
            "name = \"db\"\nversion = \"3.0.0\"\nentrypoint = \"db\"\n[health]\ntcp = \"127.0.0.1:5432\"\n[restart]\nmode = \"never\"\n",
        ),
    ];
    texts
        .iter()
        .map(|(n, t)| (n.to_string(), t.as_bytes().to_vec()))
        .collect()
}

struct Epoch;

impl Clock for Epoch {
    fn now(&self) -> Timestamp {
        Timestamp(1_700_000_000_000)
    }
}

/// `package`: a package signed by the fuzz publisher (`seed-signed`,
/// which the target also embeds), the same unsigned, and the same with
/// its archive tampered.
pub async fn package_seeds(scratch: &Path) -> Vec<Seed> {
    let app = scratch.join("app");
    std::fs::create_dir_all(app.join("bin")).expect("scratch");
    std::fs::write(
        app.join("p2p.toml"),
        "name = \"web\"\nversion = \"1.0.0\"\nentrypoint = \"bin/web\"\n",
    )
    .expect("scratch");
    // Incompressible enough for several chunks of 4 KiB on average.
    let body: Vec<u8> = (0..12_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(app.join("bin/web"), body).expect("scratch");
    let out = scratch.join("web.p2pkg");
    let opts = BuildOptions {
        chunk_size: 4096,
        level: 1,
        created_at: None,
    };
    build(&app, &out, &Epoch, opts).expect("building the seed package");
    let unsigned = std::fs::read(&out).expect("reading it back");
    let mut p = PackageFile::open(&out).expect("opening it");
    p.sign(&Ed25519Signer::from_seed(&crate::PUBLISHER_SEED))
        .await
        .expect("signing");
    let signed = std::fs::read(&out).expect("reading it back");
    let mut tampered = signed.clone();
    tampered[40] ^= 0x01;
    vec![
        ("signed".into(), signed),
        ("unsigned".into(), unsigned),
        ("tampered".into(), tampered),
    ]
}

fn e(path: Vec<Part>, kind: Kind, link: Vec<Part>, data: &[u8]) -> Entry {
    Entry {
        path,
        kind,
        link,
        mode: 0o755,
        data: data.to_vec(),
    }
}

/// `unpack`: byte 0 is 1 (a raw tar) or 2 (compressed bytes). Archives
/// that unpack, and each escape the unpacker must refuse.
pub fn unpack_seeds() -> Vec<Seed> {
    use Part::{Name, Parent, Raw, Root};
    let here = Path::new("/nonexistent");
    let good = vec![
        e(vec![Name(2)], Kind::Dir, vec![], b""),
        e(
            vec![Name(2), Name(3)],
            Kind::File,
            vec![],
            b"#!/bin/sh\necho hi\n",
        ),
        e(vec![Name(5)], Kind::File, vec![], b"name = \"app\"\n"),
        e(vec![Name(0)], Kind::Symlink, vec![Name(2), Name(3)], b""),
        e(vec![Name(1)], Kind::Hardlink, vec![Name(5)], b""),
    ];
    let cases: Vec<(&str, Vec<Entry>)> = vec![
        ("good", good.clone()),
        (
            "parent",
            vec![e(
                vec![Parent, Parent, Parent, Name(4), Name(0)],
                Kind::File,
                vec![],
                b"x",
            )],
        ),
        (
            "absolute",
            vec![e(
                vec![Root, Raw("tmp".into()), Name(0)],
                Kind::File,
                vec![],
                b"x",
            )],
        ),
        (
            "symlink-then-write",
            vec![
                e(
                    vec![Name(2)],
                    Kind::Symlink,
                    vec![Parent, Parent, Parent, Name(4)],
                    b"",
                ),
                e(vec![Name(2), Name(0)], Kind::File, vec![], b"x"),
            ],
        ),
        (
            "hardlink-out",
            vec![e(
                vec![Name(0)],
                Kind::Hardlink,
                vec![Parent, Parent, Parent, Name(4), Raw("keep".into())],
                b"",
            )],
        ),
        (
            "device",
            vec![e(vec![Name(0)], Kind::CharDevice, vec![], b"")],
        ),
        ("fifo", vec![e(vec![Name(0)], Kind::Fifo, vec![], b"")]),
    ];
    let mut out = Vec::new();
    for (name, entries) in cases {
        let tar = tarball::build(&entries, here);
        out.push((format!("tar-{name}"), with(&[1], &tar)));
        if name == "good" {
            out.push((format!("zstd-{name}"), with(&[2], &tarball::compress(&tar))));
        }
    }
    out
}

/// `agent_model`: operation sequences (two bytes each; see the target).
pub fn agent_model_seeds() -> Vec<Seed> {
    vec![
        // Deploy 1.0.0 healthy, deploy 1.1.0 never healthy, roll back.
        ("deploy-bad-rollback".into(), vec![0, 0, 0, 9, 2, 0]),
        // Deploy two good versions, switch back, stop, start, remove one.
        (
            "switch-stop-start".into(),
            vec![0, 0, 0, 5, 1, 0, 3, 0, 4, 0, 6, 1],
        ),
        // Deploy, crash the agent, deploy again with a crash half-way.
        ("crashes".into(), vec![0, 0, 8, 3, 13, 21, 9, 30]),
        // Deploy, then a stranger's stream asking to stop the app, and a
        // stranger's remove.
        ("stranger".into(), {
            let mut stream = frame(&enc(&Hello::new(&PROTOCOL)));
            stream.extend(frame(&enc(&Envelope {
                timeout_ms: 5000,
                request: Request::Stop { app: "app".into() },
            })));
            let mut ops = vec![0, 0, 10, stream.len() as u8];
            ops.extend(stream);
            ops.extend([11, 5]);
            ops
        }),
    ]
}
