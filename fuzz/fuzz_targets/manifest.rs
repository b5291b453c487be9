//! Manifest parsing (`p2p.toml`), as `p2pctl package` and every agent do.
//!
//! Checked: parsing never panics; a manifest that parses also validates
//! (the rules an agent applies to one that arrives inside a descriptor),
//! survives the descriptor's encoding unchanged, and yields an app spec.
#![no_main]

use libfuzzer_sys::fuzz_target;
use p2p_deploy::Manifest;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(m) = Manifest::parse(text) else {
        return;
    };
    m.validate().expect("a parsed manifest validates");
    let bytes = postcard::to_allocvec(&m).unwrap();
    let back: Manifest = postcard::from_bytes(&bytes).unwrap();
    assert_eq!(back, m, "the manifest changed through its encoding");
    back.validate().expect("the decoded manifest validates");
    let spec = m.app_spec(std::path::Path::new("/srv/app"));
    assert_eq!(spec.name, m.name);
});
