//! Tar archives with any header at all: absolute names, `..`, links out
//! of the tree, devices. The `tar` crate's builder refuses to write most
//! of these, so names and link targets go into the header bytes directly.

use std::path::Path;

use arbitrary::Arbitrary;

/// One path component, chosen so that escapes are easy to reach.
#[derive(Arbitrary, Debug, Clone)]
pub enum Part {
    /// One of a few names, `outside` among them.
    Name(u8),
    /// `.`
    Dot,
    /// `..`
    Parent,
    /// The absolute path of the directory next to the unpack root (the
    /// one nothing may be written into).
    Outside,
    /// A leading `/`.
    Root,
    /// Anything.
    Raw(String),
}

const NAMES: [&str; 6] = ["a", "b", "bin", "run", "outside", "p2p.toml"];

/// What kind of entry.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum Kind {
    /// A regular file.
    File,
    /// A directory.
    Dir,
    /// A symbolic link to `link`.
    Symlink,
    /// A hard link to `link`.
    Hardlink,
    /// A character device.
    CharDevice,
    /// A block device.
    BlockDevice,
    /// A fifo.
    Fifo,
    /// Any other type byte.
    Other(u8),
}

/// One archive entry.
#[derive(Arbitrary, Debug, Clone)]
pub struct Entry {
    /// Its name.
    pub path: Vec<Part>,
    /// Its type.
    pub kind: Kind,
    /// The link target, for links.
    pub link: Vec<Part>,
    /// Mode bits.
    pub mode: u16,
    /// Content, for files.
    pub data: Vec<u8>,
}

/// Renders `parts` as a path; [`Part::Outside`] becomes `outside`.
pub fn render(parts: &[Part], outside: &Path) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, p) in parts.iter().enumerate() {
        if i > 0 {
            out.push(b'/');
        }
        match p {
            Part::Name(n) => out.extend_from_slice(NAMES[usize::from(*n) % NAMES.len()].as_bytes()),
            Part::Dot => out.push(b'.'),
            Part::Parent => out.extend_from_slice(b".."),
            Part::Outside => out.extend_from_slice(outside.as_os_str().as_encoded_bytes()),
            Part::Root => {}
            Part::Raw(s) => out.extend_from_slice(s.as_bytes()),
        }
    }
    out
}

fn put(field: &mut [u8], value: &[u8]) {
    let n = value.len().min(field.len());
    field.fill(0);
    field[..n].copy_from_slice(&value[..n]);
}

/// An uncompressed tar of `entries` (names and link targets cut at 100
/// bytes, the header's fields).
pub fn build(entries: &[Entry], outside: &Path) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        let mut h = tar::Header::new_gnu();
        let kind = match e.kind {
            Kind::File => tar::EntryType::Regular,
            Kind::Dir => tar::EntryType::Directory,
            Kind::Symlink => tar::EntryType::Symlink,
            Kind::Hardlink => tar::EntryType::Link,
            Kind::CharDevice => tar::EntryType::Char,
            Kind::BlockDevice => tar::EntryType::Block,
            Kind::Fifo => tar::EntryType::Fifo,
            Kind::Other(t) => tar::EntryType::new(t),
        };
        h.set_entry_type(kind);
        h.set_mode(u32::from(e.mode));
        let data: &[u8] = if matches!(e.kind, Kind::File | Kind::Other(_)) {
            &e.data
        } else {
            &[]
        };
        h.set_size(data.len() as u64);
        {
            let gnu = h.as_gnu_mut().expect("a GNU header");
            put(&mut gnu.name, &render(&e.path, outside));
            put(&mut gnu.linkname, &render(&e.link, outside));
        }
        h.set_cksum();
        b.append(&h, data).expect("writing to a Vec");
    }
    b.into_inner().expect("writing to a Vec")
}

/// `tar` compressed as the package format stores archives (zstd).
pub fn compress(tar: &[u8]) -> Vec<u8> {
    zstd::encode_all(tar, 1).expect("compressing in memory")
}
