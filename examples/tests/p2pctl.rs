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

    let o = p2pctl(d, &["sign", "web-1.0.0.p2p", "--signing-key", "alice.key"]);
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
    let o = p2pctl(d, &["sign", "web-1.0.0.p2p", "--signing-key", "alice.key"]);
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

#[test]
fn each_command_lists_only_its_options_and_bad_input_is_named() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    // Offline commands know nothing of the network.
    for cmd in ["keygen", "package", "sign", "verify", "psk"] {
        let o = p2pctl(d, &[cmd, "--help"]);
        assert!(o.status.success(), "{cmd}: {}", text(&o));
        let help = text(&o);
        for net in ["--bootstrap", "--psk-file", "--backend", "--relay"] {
            assert!(!help.contains(net), "{cmd} --help lists {net}:\n{help}");
        }
    }
    // `id` takes the node key, nothing of the network.
    let help = text(&p2pctl(d, &["id", "--help"]));
    assert!(
        help.contains("--key") && !help.contains("--bootstrap"),
        "{help}"
    );
    // The online commands do.
    let help = text(&p2pctl(d, &["deploy", "--help"]));
    for net in [
        "--bootstrap",
        "--connect-timeout",
        "--node-silence",
        "--key",
    ] {
        assert!(help.contains(net), "deploy --help lacks {net}:\n{help}");
    }

    // A signing key given where the node key goes is named as such.
    let o = p2pctl(d, &["keygen", "--out", "publisher"]);
    assert!(o.status.success(), "{}", text(&o));
    let o = p2pctl(d, &["id", "--key", "publisher.key"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("is a signing key"), "{}", text(&o));

    // Bad values are usage errors, before any node is asked.
    for bad in [
        &["deploy", "x.p2p", "--batch", "0%"][..],
        &["deploy", "x.p2p", "--max-failures", "many"][..],
        &["nodes", "--selector", "role=="][..],
        &["nodes", "--connect-timeout", "soon"][..],
    ] {
        let o = p2pctl(d, bad);
        assert_eq!(o.status.code(), Some(2), "{bad:?}: {}", text(&o));
    }
    let o = p2pctl(d, &["nodes", "--node-silence", "1s"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("node silence"), "{}", text(&o));
}

#[test]
fn a_package_with_a_changed_archive_byte_is_named_by_inspect_and_never_sent() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    std::fs::create_dir_all(d.join("web")).unwrap();
    std::fs::write(
        d.join("web/p2p.toml"),
        "name = \"web\"\nversion = \"1.0.0\"\nentrypoint = \"run\"\n",
    )
    .unwrap();
    std::fs::write(d.join("web/run"), "#!/bin/sh\nexec sleep 1000\n").unwrap();
    for args in [
        &["keygen", "--out", "alice"][..],
        &["package", "web"][..],
        &["sign", "web-1.0.0.p2p", "--signing-key", "alice.key"][..],
    ] {
        let o = p2pctl(d, args);
        assert!(o.status.success(), "{args:?}: {}", text(&o));
    }
    let o = p2pctl(d, &["inspect", "web-1.0.0.p2p"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("every byte matches"), "{}", text(&o));

    let path = d.join("web-1.0.0.p2p");
    let at = p2p_deploy::PackageFile::open(&path).unwrap().archive_offset + 3;
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[at as usize] ^= 0x01;
    std::fs::write(&path, bytes).unwrap();

    let o = p2pctl(d, &["inspect", "web-1.0.0.p2p", "--json"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["archive_ok"], false);
    assert!(
        v["archive_error"].as_str().unwrap().contains("chunk 0"),
        "{v}"
    );
    // The signature itself still verifies: only the archive is wrong.
    assert_eq!(v["signatures"][0]["verifies"], true);

    // deploy refuses it before it binds or dials anything: the bootstrap
    // here leads nowhere.
    let o = p2pctl(
        d,
        &[
            "deploy",
            "web-1.0.0.p2p",
            "--bootstrap",
            "0000000000000000000000000000000000000000000000000000000000000001@127.0.0.1:9",
        ],
    );
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        text(&o).contains("chunk 0 of the archive does not match its hash")
            && text(&o).contains("nothing was sent"),
        "{}",
        text(&o)
    );
}

/// Bytes that do not compress, the same for the same seed.
fn noise(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// `SOURCE_DATE_EPOCH` makes `p2pctl package` reproducible (the same
/// file and id from two builds); `inspect --against` says how much of a
/// new version an old one covers; a package of format 1 is named.
#[test]
fn reproducible_packages_and_what_a_new_version_moves() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    std::fs::create_dir_all(d.join("web/lib")).unwrap();
    let manifest = |v: &str| {
        std::fs::write(
            d.join("web/p2p.toml"),
            format!("name = \"web\"\nversion = \"{v}\"\nentrypoint = \"lib/a\"\n"),
        )
        .unwrap();
    };
    manifest("1.0.0");
    for (i, f) in ["a", "b", "c", "d"].iter().enumerate() {
        std::fs::write(d.join("web/lib").join(f), noise(1 << 20, i as u64)).unwrap();
    }
    let package = |out: &str, epoch: Option<&str>| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_p2pctl"));
        c.current_dir(d).args(["package", "web", "--out", out]);
        match epoch {
            Some(e) => c.env("SOURCE_DATE_EPOCH", e),
            None => c.env_remove("SOURCE_DATE_EPOCH"),
        };
        c.output().unwrap()
    };
    let a = package("a.p2p", Some("1700000000"));
    let b = package("b.p2p", Some("1700000000"));
    assert!(a.status.success(), "{}", text(&a));
    let id = |o: &Output| {
        String::from_utf8_lossy(&o.stdout)
            .lines()
            .find_map(|l| l.strip_prefix("id ").map(str::to_string))
            .unwrap()
    };
    assert_eq!(id(&a), id(&b));
    assert_eq!(
        std::fs::read(d.join("a.p2p")).unwrap(),
        std::fs::read(d.join("b.p2p")).unwrap(),
        "same files, same SOURCE_DATE_EPOCH: the same package"
    );
    let o = package("c.p2p", Some("yesterday"));
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("SOURCE_DATE_EPOCH"), "{}", text(&o));

    // Version 1.1.0 changes one file of four.
    manifest("1.1.0");
    std::fs::write(d.join("web/lib/c"), noise(1 << 20, 99)).unwrap();
    let o = package("new.p2p", None);
    assert!(o.status.success(), "{}", text(&o));
    let o = p2pctl(d, &["inspect", "new.p2p", "--against", "a.p2p", "--json"]);
    assert!(o.status.success(), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let total = v["archive_bytes"].as_u64().unwrap();
    let against = &v["against"][0];
    assert_eq!(against["version"], "web 1.0.0");
    let to_move = against["to_move_bytes"].as_u64().unwrap();
    assert!(
        ((1 << 20)..(1 << 20) + (600 << 10)).contains(&to_move),
        "{to_move} of {total} bytes to move for one changed 1 MiB file: {v}"
    );
    assert_eq!(
        against["shared_bytes"].as_u64().unwrap() + to_move,
        total,
        "{v}"
    );
    let o = p2pctl(d, &["inspect", "new.p2p", "--against", "a.p2p"]);
    assert!(
        text(&o).contains(&format!("{to_move} bytes to move")),
        "{}",
        text(&o)
    );
    let o = p2pctl(d, &["inspect", "new.p2p", "--against", "notes.txt"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).contains("notes.txt"), "{}", text(&o));

    // A package file of format 1 is refused, naming both formats.
    let mut old = std::fs::read(d.join("a.p2p")).unwrap();
    old[9] = 1;
    std::fs::write(d.join("old.p2p"), old).unwrap();
    let o = p2pctl(d, &["inspect", "old.p2p"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        text(&o).contains("format 1 is not supported") && text(&o).contains("format 2"),
        "{}",
        text(&o)
    );
}
