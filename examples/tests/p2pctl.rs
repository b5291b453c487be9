//! `p2pctl`'s offline commands, run as a user would run them.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::{Command, Output};

fn p2pctl(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_p2pctl"))
        .current_dir(dir)
        .args(args)
        .output()
        .unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn keygen_package_sign_verify_inspect_psk() {
    use std::os::unix::fs::PermissionsExt;
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    std::fs::create_dir_all(d.join("web/bin")).unwrap();
    std::fs::write(
        d.join("web/p2p.toml"),
        "name = \"web\"\nversion = \"1.0.0\"\nentrypoint = \"bin/run\"\ndescription = \"demo\"\n",
    )
    .unwrap();
    std::fs::write(d.join("web/bin/run"), "#!/bin/sh\n").unwrap();

    let o = p2pctl(d, &["keygen", "--out", "alice", "--comment", "alice@test"]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(
        std::fs::metadata(d.join("alice.key"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o600
    );
    let o = p2pctl(d, &["keygen", "--out", "alice"]);
    assert_eq!(
        o.status.code(),
        Some(1),
        "keygen must not overwrite: {}",
        text(&o)
    );

    let o = p2pctl(d, &["package", "web"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(d.join("web-1.0.0.p2p").exists());

    std::fs::create_dir(d.join("trusted")).unwrap();
    std::fs::copy(d.join("alice.pub"), d.join("trusted/alice.pub")).unwrap();
    let o = p2pctl(
        d,
        &["verify", "web-1.0.0.p2p", "--trust", "trusted", "--json"],
    );
    assert_eq!(
        o.status.code(),
        Some(1),
        "unsigned must not verify: {}",
        text(&o)
    );
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["ok"], false);
    assert!(v["error"].as_str().unwrap().contains("not signed"));

    let o = p2pctl(d, &["sign", "web-1.0.0.p2p", "--key", "alice.key"]);
    assert!(o.status.success(), "{}", text(&o));
    let o = p2pctl(
        d,
        &["verify", "web-1.0.0.p2p", "--trust", "trusted", "--json"],
    );
    assert!(o.status.success(), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["ok"], true);
    assert_eq!(v["signed_by"].as_array().unwrap().len(), 1);

    let o = p2pctl(
        d,
        &["inspect", "web-1.0.0.p2p", "--trust", "trusted", "--json"],
    );
    assert!(o.status.success(), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["name"], "web");
    assert_eq!(v["version"], "1.0.0");
    assert_eq!(v["description"], "demo");
    assert_eq!(v["signatures"][0]["verifies"], true);
    assert_eq!(v["signatures"][0]["trusted"], true);

    // A key file that is too open is refused by name.
    std::fs::set_permissions(d.join("alice.key"), std::fs::Permissions::from_mode(0o644)).unwrap();
    let o = p2pctl(d, &["sign", "web-1.0.0.p2p", "--key", "alice.key"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).contains("alice.key"), "{}", text(&o));

    // A file that is not a package.
    std::fs::write(d.join("notes.txt"), "hello").unwrap();
    let o = p2pctl(d, &["inspect", "notes.txt"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        text(&o).contains("not a p2p-deploy package"),
        "{}",
        text(&o)
    );

    let o = p2pctl(d, &["psk", "--out", "net.psk"]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(
        std::fs::metadata(d.join("net.psk"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o600
    );
    p2p_core::PreSharedKey::load(&d.join("net.psk")).unwrap();

    // Usage errors exit 2.
    let o = p2pctl(d, &["sign", "web-1.0.0.p2p"]);
    assert_eq!(o.status.code(), Some(2));
}
