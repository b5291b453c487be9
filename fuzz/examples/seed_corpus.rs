//! Writes the committed seed corpora: `corpus/<target>/seed-*`.
//!
//! `cargo run --example seed_corpus` from `fuzz/`. Seeds that exist are
//! overwritten; inputs the fuzzer added are left alone.
#![allow(clippy::unwrap_used)]

use std::path::Path;

use p2p_fuzz::seeds;

fn write(target: &str, seeds: Vec<seeds::Seed>) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(target);
    std::fs::create_dir_all(&dir).unwrap();
    for (name, bytes) in &seeds {
        std::fs::write(dir.join(format!("seed-{name}")), bytes).unwrap();
    }
    println!("{target}: {} seeds", seeds.len());
}

fn main() {
    let scratch = tempfile::tempdir().unwrap();
    let rt = p2p_fuzz::runtime();
    let packages = rt.block_on(seeds::package_seeds(scratch.path()));
    let signed = &packages[0].1;
    let path = scratch.path().join("signed.p2pkg");
    std::fs::write(&path, signed).unwrap();
    let descriptor = p2p_deploy::PackageFile::open(&path)
        .unwrap()
        .descriptor_bytes;
    write("frame", seeds::frame_seeds());
    write("rpc", seeds::rpc_seeds(&descriptor));
    write("admission", seeds::admission_seeds());
    write("manifest", seeds::manifest_seeds());
    write("package", packages);
    write("unpack", seeds::unpack_seeds());
    write("agent_model", seeds::agent_model_seeds());
}
