//! `p2pctl`: the controller's command line. The offline commands work on
//! files alone: make a signing key, package a directory, sign, verify and
//! inspect packages, make a pre-shared key. The online commands talk to
//! the nodes (`p2pd`): `nodes`, `status`, `deploy`, `start`, `stop`,
//! `restart`, `switch`, `rollback`, `remove`, `logs`, `events`, `peers`,
//! `search`; `deploy --dry-run` shows what a deploy would do.
//!
//! Exit codes, one rule for every command: 0 when every node asked did
//! it; 3 when some did and some did not (refused, failed, or did not
//! answer); 1 when none did, or the input was bad (a package that does
//! not verify, a missing file); 2 for usage errors. The last line, on
//! stderr, says what happened.
//!
//! Run: `cargo run -p p2p-examples --bin p2pctl -- --help`

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, anyhow};
use clap::{Parser, Subcommand};
use p2p_core::{Ed25519Signer, Ed25519Verifier, PreSharedKey, SystemClock, Verifier};
use p2p_deploy::trust::{read_secret_key, write_key_pair};
use p2p_deploy::{BuildOptions, PackageFile, TrustStore, build};
use serde::Serialize;

mod observe;
mod online;

#[derive(Parser)]
#[command(
    name = "p2pctl",
    version,
    about = "Deploy signed apps to a fleet over peer-to-peer networks",
    after_help = "Exit codes: 0 every node asked did it; 3 some did, some did not (refused, \
failed, or did not answer); 1 none did, or bad input (a package that does not verify, a missing \
file); 2 usage. The last line, on stderr, says what happened.\n\
Settings: flags, else P2PCTL_* variables, else the config file."
)]
struct Cli {
    /// More output on stderr (repeat for more).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

// Parsed once per run: the size of the network options does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    #[command(flatten)]
    Online(online::Online),
    /// Print shell completions for bash, zsh, fish, elvish or powershell.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Make a signing key pair: OUT.key (secret, mode 0600) and OUT.pub.
    Keygen {
        /// Base path of the two files.
        #[arg(long, default_value = "p2p-signing")]
        out: PathBuf,
        /// A comment stored with the key (who, where).
        #[arg(long, default_value = "")]
        comment: String,
    },
    /// Package a directory holding p2p.toml into one file.
    Package {
        /// The app directory.
        dir: PathBuf,
        /// The package file (default: NAME-VERSION.p2p here).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Average chunk size in KiB (4 to 4096); chunks are cut where the
        /// content says, a quarter to twice that. Smaller chunks
        /// spread through the swarm sooner and make smaller deltas, but
        /// compress a little worse; each adds about 40 bytes to the
        /// descriptor. With SOURCE_DATE_EPOCH set (seconds), the package's
        /// creation time is that, and the same files give the same package
        /// and id.
        #[arg(long, default_value_t = p2p_deploy::package::DEFAULT_CHUNK_SIZE / 1024)]
        chunk_kib: u32,
    },
    /// Sign a package in place.
    Sign {
        /// The package file.
        package: PathBuf,
        /// The signing key's secret file (OUT.key from `keygen`).
        #[arg(long)]
        signing_key: PathBuf,
    },
    /// Verify a package against a trust store directory: signatures, then
    /// every byte.
    Verify {
        /// The package file.
        package: PathBuf,
        /// Directory of trusted *.pub keys (and revoked/).
        #[arg(long)]
        trust: PathBuf,
        /// Valid signatures from distinct trusted keys required.
        #[arg(long, default_value_t = 1)]
        threshold: usize,
        /// One JSON object on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Show a package: manifest, id, size, chunks, signatures, and
    /// whether every byte of its archive matches (exit 1 when not, or
    /// when a signature is invalid).
    Inspect {
        /// The package file.
        package: PathBuf,
        /// Also say which signers are trusted here.
        #[arg(long)]
        trust: Option<PathBuf>,
        /// A package file of a version the nodes hold (repeat for more):
        /// show how much of this package it already covers, in chunks and
        /// bytes, and how many bytes a deploy would move to a node that
        /// holds it.
        #[arg(long = "against", value_name = "OLD")]
        against: Vec<PathBuf>,
        /// One JSON object on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Make a pre-shared key file (mode 0600) for a private network.
    Psk {
        /// Where to write it.
        #[arg(long, default_value = "p2p.psk")]
        out: PathBuf,
    },
}

/// Logs on stderr: none by default (p2pctl prints its own errors), then
/// more with each `-v`: the SDK's info (where it bound, which relay), its
/// debug, everything's debug. `RUST_LOG` wins when set.
fn init_logs(verbose: u8) {
    let default = match verbose {
        0 => "off",
        1 => "warn,p2p_examples=info,p2p_iroh=info,p2p_libp2p=info,p2p_deploy=info",
        2 => "warn,p2p_examples=debug,p2p_iroh=debug,p2p_libp2p=debug,p2p_deploy=debug",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logs(cli.verbose);
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("p2pctl: cannot start: {e}");
            return ExitCode::from(1);
        }
    };
    let result = match cli.command {
        Command::Online(cmd) => rt.block_on(online::run(cmd)),
        Command::Completions { shell } => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut cmd, "p2pctl", &mut script);
            // A closed pipe (`| head`) is not an error worth a panic.
            let _ = std::io::stdout().write_all(&script);
            Ok(ExitCode::SUCCESS)
        }
        other => rt.block_on(run(other)),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("p2pctl: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn write_secret_file(path: &Path, text: &str) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing {} (it must not exist yet)", path.display()))?;
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    Ok(())
}

#[derive(Serialize)]
struct SignatureInfo {
    key: String,
    verifies: bool,
    trusted: Option<bool>,
}

#[derive(Serialize)]
struct Inspection {
    file: String,
    id: String,
    name: String,
    version: String,
    description: Option<String>,
    entrypoint: String,
    archive_bytes: u64,
    unpacked_bytes: u64,
    chunks: usize,
    created_at_ms: u64,
    /// Whether every byte of the archive matches the descriptor.
    archive_ok: bool,
    /// Which chunk does not, when one does not.
    archive_error: Option<String>,
    signatures: Vec<SignatureInfo>,
    /// Coverage by each `--against` package, and by all of them.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    against: Vec<Coverage>,
    #[serde(skip_serializing_if = "Option::is_none")]
    covered: Option<Coverage>,
}

/// How much of a package another one already holds.
#[derive(Serialize)]
struct Coverage {
    /// The other package file ("all" for the union).
    file: String,
    /// Its app and version, when one file.
    version: Option<String>,
    shared_chunks: usize,
    shared_bytes: u64,
    /// What a node holding it would fetch.
    to_move_bytes: u64,
}

fn coverage(
    new: &p2p_deploy::Descriptor,
    file: String,
    version: Option<String>,
    held: &std::collections::HashSet<[u8; 32]>,
) -> Coverage {
    let (mut shared_chunks, mut shared_bytes) = (0, 0);
    for c in &new.chunks {
        if held.contains(&c.sha256) {
            shared_chunks += 1;
            shared_bytes += u64::from(c.size);
        }
    }
    Coverage {
        file,
        version,
        shared_chunks,
        shared_bytes,
        to_move_bytes: new.archive_size - shared_bytes,
    }
}

async fn run(cmd: Command) -> Result<ExitCode> {
    match cmd {
        Command::Online(_) | Command::Completions { .. } => {
            unreachable!("handled in main")
        }
        Command::Keygen { out, comment } => {
            let signer = Ed25519Signer::generate(&mut rand::rng());
            let (secret, public) = write_key_pair(&out, &signer, &comment)?;
            println!("key id  {}", hex::encode(signer.key_id().as_bytes()));
            println!("secret  {} (keep it private)", secret.display());
            println!(
                "public  {} (give it to every node's trust store)",
                public.display()
            );
        }
        Command::Package {
            dir,
            out,
            chunk_kib,
        } => {
            let manifest = p2p_deploy::Manifest::load(&dir)?;
            let out = out.unwrap_or_else(|| {
                PathBuf::from(format!("{}-{}.p2p", manifest.name, manifest.version))
            });
            let opts = BuildOptions {
                chunk_size: chunk_kib
                    .checked_mul(1024)
                    .filter(|b| (4096..=4 << 20).contains(b))
                    .ok_or_else(|| {
                        anyhow!("--chunk-kib {chunk_kib} is not between 4 and 4096 (KiB)")
                    })?,
                ..BuildOptions::default()
            }
            .with_source_date_epoch()?;
            let d = build(&dir, &out, &SystemClock, opts)?;
            println!(
                "{} {} {} ({} bytes, {} chunks), unsigned",
                out.display(),
                d.manifest.name,
                d.manifest.version,
                d.archive_size,
                d.chunks.len()
            );
            println!("id {}", d.id());
        }
        Command::Sign {
            package,
            signing_key,
        } => {
            let signer = read_secret_key(&signing_key)?;
            let mut pkg =
                PackageFile::open(&package).map_err(|e| anyhow!("{}: {e}", package.display()))?;
            pkg.sign(&signer).await?;
            println!(
                "signed {} with key {} ({} signature(s) now)",
                package.display(),
                hex::encode(signer.key_id().as_bytes()),
                pkg.signatures.len()
            );
        }
        Command::Verify {
            package,
            trust,
            threshold,
            json,
        } => {
            let store = TrustStore::load(&trust)?.with_threshold(threshold);
            let result = PackageFile::open(&package)
                .map_err(p2p_deploy::VerifyError::from)
                .and_then(|p| p.verify(&store).map(|k| (p, k)));
            match result {
                Ok((pkg, keys)) => {
                    let keys: Vec<String> =
                        keys.iter().map(|k| hex::encode(k.as_bytes())).collect();
                    if json {
                        println!(
                            "{}",
                            serde_json::json!({"file": package.display().to_string(), "ok": true, "id": pkg.id().to_string(), "signed_by": keys})
                        );
                    } else {
                        println!(
                            "{}: OK, signed by {} trusted key(s)",
                            package.display(),
                            keys.len()
                        );
                    }
                }
                Err(e) => {
                    if json {
                        println!(
                            "{}",
                            serde_json::json!({"file": package.display().to_string(), "ok": false, "error": e.to_string()})
                        );
                    } else {
                        eprintln!("{}: REFUSED: {e}", package.display());
                    }
                    return Ok(ExitCode::from(1));
                }
            }
        }
        Command::Inspect {
            package,
            trust,
            against,
            json,
        } => {
            let pkg =
                PackageFile::open(&package).map_err(|e| anyhow!("{}: {e}", package.display()))?;
            let store = trust.as_deref().map(TrustStore::load).transpose()?;
            let message = pkg.descriptor.signing_message();
            let signatures = pkg
                .signatures
                .iter()
                .map(|s| SignatureInfo {
                    key: hex::encode(s.key.as_bytes()),
                    verifies: Ed25519Verifier::new(s.key)
                        .and_then(|v| v.verify(&message, s))
                        .is_ok(),
                    // Trusted, not revoked, and valid: would a node count it?
                    trusted: store.as_ref().map(|t| {
                        t.trusted().contains(&s.key)
                            && t.check(&pkg.descriptor, std::slice::from_ref(s)).is_ok()
                    }),
                })
                .collect::<Vec<_>>();
            let archive = pkg.check_archive().err().map(|e| e.to_string());
            let bad = archive.is_some() || signatures.iter().any(|s| !s.verifies);
            let m = &pkg.descriptor.manifest;
            let mut info = Inspection {
                file: package.display().to_string(),
                id: pkg.id().to_string(),
                name: m.name.clone(),
                version: m.version.to_string(),
                description: m.description.clone(),
                entrypoint: m.entrypoint.clone(),
                archive_bytes: pkg.descriptor.archive_size,
                unpacked_bytes: pkg.descriptor.unpacked_size(),
                chunks: pkg.descriptor.chunks.len(),
                created_at_ms: pkg.descriptor.created_at.as_millis(),
                archive_ok: archive.is_none(),
                archive_error: archive,
                signatures,
                against: Vec::new(),
                covered: None,
            };
            if !against.is_empty() {
                let mut all = std::collections::HashSet::new();
                for old in &against {
                    let o = PackageFile::open(old)
                        .map_err(|e| anyhow!("--against {}: {e}", old.display()))?;
                    let held: std::collections::HashSet<[u8; 32]> =
                        o.descriptor.chunks.iter().map(|c| c.sha256).collect();
                    let om = &o.descriptor.manifest;
                    info.against.push(coverage(
                        &pkg.descriptor,
                        old.display().to_string(),
                        Some(format!("{} {}", om.name, om.version)),
                        &held,
                    ));
                    all.extend(held);
                }
                if against.len() > 1 {
                    info.covered = Some(coverage(&pkg.descriptor, "all".into(), None, &all));
                }
            }
            if json {
                println!("{}", serde_json::to_string(&info)?);
            } else {
                println!("file        {}", info.file);
                println!("app         {} {}", info.name, info.version);
                if let Some(d) = &info.description {
                    println!("description {d}");
                }
                println!("id          {}", info.id);
                println!("entrypoint  {}", info.entrypoint);
                println!(
                    "archive     {} bytes in {} chunks ({} unpacked), {}",
                    info.archive_bytes,
                    info.chunks,
                    info.unpacked_bytes,
                    match &info.archive_error {
                        None => "every byte matches".to_string(),
                        Some(e) => format!("CORRUPT: {e}"),
                    }
                );
                for c in info.against.iter().chain(&info.covered) {
                    let pct = |part: u64| 100.0 * part as f64 / info.archive_bytes.max(1) as f64;
                    println!(
                        "against     {}{}: {} of {} chunks, {} of {} bytes held ({:.1}%); \
                         {} bytes to move",
                        c.file,
                        c.version
                            .as_ref()
                            .map(|v| format!(" ({v})"))
                            .unwrap_or_default(),
                        c.shared_chunks,
                        info.chunks,
                        c.shared_bytes,
                        info.archive_bytes,
                        pct(c.shared_bytes),
                        c.to_move_bytes,
                    );
                }
                if info.signatures.is_empty() {
                    println!("signatures  none");
                }
                for s in &info.signatures {
                    let trusted = match s.trusted {
                        Some(true) => ", trusted",
                        Some(false) => ", NOT trusted here",
                        None => "",
                    };
                    let ok = if s.verifies { "valid" } else { "INVALID" };
                    println!("signature   {} {ok}{trusted}", s.key);
                }
            }
            if bad {
                return Ok(ExitCode::from(1));
            }
        }
        Command::Psk { out } => {
            let key = PreSharedKey::generate(&mut rand::rng());
            write_secret_file(
                &out,
                &format!(
                    "# p2p-deploy pre-shared key: give it only to this network's nodes\n{}\n",
                    key.to_hex()
                ),
            )?;
            println!("wrote {} (mode 0600)", out.display());
        }
    }
    Ok(ExitCode::SUCCESS)
}
