//! `p2pctl`: the controller's command line. The offline commands work on
//! files alone: make a signing key, package a directory, sign, verify and
//! inspect packages, make a pre-shared key. The online commands talk to
//! the nodes (`p2pd`): `nodes`, `status`, `deploy`, `start`, `stop`,
//! `restart`, `switch`, `rollback`, `remove`, `logs`, `search`.
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
        /// Chunk size in KiB (4 to 16384). Smaller chunks spread through
        /// the swarm sooner; each adds a 32-byte hash to the descriptor.
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
    chunk_size: u32,
    chunks: usize,
    created_at_ms: u64,
    /// Whether every byte of the archive matches the descriptor.
    archive_ok: bool,
    /// Which chunk does not, when one does not.
    archive_error: Option<String>,
    signatures: Vec<SignatureInfo>,
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
                    .ok_or_else(|| anyhow!("--chunk-kib {chunk_kib} is too large"))?,
                ..BuildOptions::default()
            };
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
            let info = Inspection {
                file: package.display().to_string(),
                id: pkg.id().to_string(),
                name: m.name.clone(),
                version: m.version.to_string(),
                description: m.description.clone(),
                entrypoint: m.entrypoint.clone(),
                archive_bytes: pkg.descriptor.archive_size,
                chunk_size: pkg.descriptor.chunk_size,
                chunks: pkg.descriptor.chunks.len(),
                created_at_ms: pkg.descriptor.created_at.as_millis(),
                archive_ok: archive.is_none(),
                archive_error: archive,
                signatures,
            };
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
                    "archive     {} bytes, {} chunks of {} bytes, {}",
                    info.archive_bytes,
                    info.chunks,
                    info.chunk_size,
                    match &info.archive_error {
                        None => "every byte matches".to_string(),
                        Some(e) => format!("CORRUPT: {e}"),
                    }
                );
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
