//! Package files: header, descriptor and signature sections, then full
//! verification against a trust store, as `p2pctl verify` and the agent's
//! local install do.
//!
//! The input is the whole file. Checked: opening never panics and accepts
//! only consistent sections; an archive that passes `check_archive`
//! has the chunks the descriptor lists (hash, size, one zstd frame each); and the only file that verifies
//! against the trusted key is the one that key signed (the committed
//! seed `corpus/package/seed-signed`): same descriptor, same archive.
#![no_main]

use std::io::Read;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use p2p_core::Ed25519Signer;
use p2p_deploy::{PackageFile, TrustStore};

static SIGNED: &[u8] = include_bytes!("../corpus/package/seed-signed");

struct Known {
    descriptor: Vec<u8>,
    archive: Vec<u8>,
    trust: TrustStore,
}

fn archive_of(p: &PackageFile) -> Vec<u8> {
    let mut out = Vec::new();
    p.archive_reader().unwrap().read_to_end(&mut out).unwrap();
    out
}

fn known() -> &'static Known {
    static KNOWN: OnceLock<Known> = OnceLock::new();
    KNOWN.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("signed.p2pkg");
        std::fs::write(&path, SIGNED).unwrap();
        let p = PackageFile::open(&path).unwrap();
        let trust = TrustStore::new([Ed25519Signer::from_seed(&p2p_fuzz::PUBLISHER_SEED).key_id()]);
        p.verify(&trust)
            .expect("the committed signed seed verifies");
        Known {
            descriptor: p.descriptor_bytes.clone(),
            archive: archive_of(&p),
            trust,
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let known = known();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("input.p2pkg");
    std::fs::write(&path, data).unwrap();
    let Ok(p) = PackageFile::open(&path) else {
        return;
    };
    assert_eq!(p.descriptor.to_bytes(), p.descriptor_bytes);
    assert_eq!(p.archive_len, p.descriptor.archive_size);
    if p.check_archive().is_ok() {
        let archive = archive_of(&p);
        let offsets = p.descriptor.offsets();
        assert_eq!(archive.len() as u64, p.descriptor.archive_size);
        for (i, c) in p.descriptor.chunks.iter().enumerate() {
            let bytes = &archive[offsets[i] as usize..offsets[i + 1] as usize];
            assert_eq!(p2p_deploy::package::ChunkInfo::of(bytes, c.raw_size), *c);
            p2p_deploy::package::check_frame(i, bytes, c.raw_size).unwrap();
        }
    }
    if p.verify(&known.trust).is_ok() {
        assert_eq!(
            p.descriptor_bytes, known.descriptor,
            "a descriptor nobody signed verified"
        );
        assert_eq!(
            archive_of(&p),
            known.archive,
            "an archive nobody signed verified"
        );
    }
});
