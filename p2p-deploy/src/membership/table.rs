//! The membership table: the newest verified record of every node, the
//! unreachable claims against them, and the digests that let two nodes
//! find what differs between their tables without sending them.
//!
//! Pure: no I/O and no clock of its own (times come in as wall-clock
//! milliseconds), so that the merge rules are tested directly.

use std::collections::BTreeMap;

use p2p_core::PeerId;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use super::record::{Claim, NodeRecord, SignedRecord};

/// Digest buckets: a node's id picks its bucket.
pub const BUCKETS: usize = 64;

/// What a table says about one node, in a digest: enough to tell whether
/// the other side's entry is newer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DigestItem {
    /// The node.
    pub id: PeerId,
    /// Its record's sequence number.
    pub seq: u64,
    /// Whether a claim marks it unreachable.
    pub down: bool,
}

impl DigestItem {
    /// Whether an entry with this digest replaces one with `other`: a
    /// higher sequence number, or the same one found unreachable.
    pub fn newer_than(&self, other: &DigestItem) -> bool {
        (self.seq, self.down) > (other.seq, other.down)
    }
}

/// A record with the claim against it, as it travels.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberEntry {
    /// The node's signed record.
    pub record: SignedRecord,
    /// The claim that it is unreachable, if one was made against this
    /// record.
    pub down: Option<Claim>,
}

#[derive(Debug, Clone)]
pub(crate) struct Entry {
    pub(crate) signed: SignedRecord,
    pub(crate) record: NodeRecord,
    pub(crate) down: Option<Claim>,
}

impl Entry {
    fn digest(&self) -> DigestItem {
        DigestItem {
            id: self.record.id,
            seq: self.record.seq,
            down: self.down.is_some(),
        }
    }

    pub(crate) fn to_wire(&self) -> MemberEntry {
        MemberEntry {
            record: self.signed.clone(),
            down: self.down.clone(),
        }
    }
}

/// What became of a record offered to the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Merge {
    /// A node not known before.
    New,
    /// A newer record of a known node.
    Updated,
    /// The same record as held.
    Same,
    /// Older than the one held: dropped.
    Stale,
    /// Of a node forgotten after being unreachable, and not newer than
    /// what it had then: dropped.
    Forgotten,
    /// The table is full: dropped.
    Full,
}

/// What became of a claim offered to the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ClaimMerge {
    /// It marks a node unreachable.
    Applied,
    /// About this node itself: it must publish a newer record.
    AboutMe,
    /// About a record already replaced, a node not known, or one already
    /// marked: nothing to do.
    Ignored,
}

fn bucket_of(id: &PeerId) -> usize {
    (id.as_bytes()[0] as usize) % BUCKETS
}

fn item_hash(d: &DigestItem) -> u64 {
    let mut h = Sha256::new();
    h.update(d.id.as_bytes());
    h.update(d.seq.to_be_bytes());
    h.update([d.down as u8]);
    let out = h.finalize();
    u64::from_be_bytes(out[..8].try_into().expect("8 bytes"))
}

pub(crate) struct Table {
    me: PeerId,
    entries: BTreeMap<PeerId, Entry>,
    /// XOR of the item hashes in each bucket, kept up to date.
    buckets: [u64; BUCKETS],
    /// Forgotten nodes: the sequence number they had and until when
    /// (wall-clock ms) an entry not newer than that is refused.
    tombs: BTreeMap<PeerId, (u64, u64)>,
    max_entries: usize,
}

impl Table {
    pub(crate) fn new(me: PeerId, max_entries: usize) -> Self {
        Table {
            me,
            entries: BTreeMap::new(),
            buckets: [0; BUCKETS],
            tombs: BTreeMap::new(),
            max_entries: max_entries.max(1),
        }
    }

    fn toggle(&mut self, d: &DigestItem) {
        self.buckets[bucket_of(&d.id)] ^= item_hash(d);
    }

    fn put(&mut self, e: Entry) {
        if let Some(old) = self.entries.get(&e.record.id) {
            let d = old.digest();
            self.toggle(&d);
        }
        let d = e.digest();
        self.toggle(&d);
        self.entries.insert(e.record.id, e);
    }

    fn remove(&mut self, id: &PeerId) -> Option<Entry> {
        let e = self.entries.remove(id)?;
        let d = e.digest();
        self.toggle(&d);
        Some(e)
    }

    /// Offers a verified record. A newer one replaces the held one and
    /// clears any claim against it (the node spoke since).
    pub(crate) fn offer(&mut self, signed: SignedRecord, record: NodeRecord, now_ms: u64) -> Merge {
        let id = record.id;
        if let Some(&(seq, until)) = self.tombs.get(&id) {
            if now_ms >= until {
                self.tombs.remove(&id);
            } else if record.seq <= seq {
                return Merge::Forgotten;
            }
        }
        let merge = match self.entries.get(&id) {
            Some(held) if held.record.seq > record.seq => return Merge::Stale,
            Some(held) if held.record.seq == record.seq => return Merge::Same,
            Some(_) => Merge::Updated,
            None if self.entries.len() >= self.max_entries && id != self.me => {
                return Merge::Full;
            }
            None => Merge::New,
        };
        self.tombs.remove(&id);
        self.put(Entry {
            signed,
            record,
            down: None,
        });
        merge
    }

    /// Offers a verified claim.
    pub(crate) fn offer_claim(&mut self, claim: Claim) -> ClaimMerge {
        let Some(held) = self.entries.get(&claim.about) else {
            return ClaimMerge::Ignored;
        };
        if held.record.seq != claim.seq {
            return ClaimMerge::Ignored;
        }
        if claim.about == self.me {
            return ClaimMerge::AboutMe;
        }
        if held.down.is_some() {
            return ClaimMerge::Ignored;
        }
        let mut e = held.clone();
        e.down = Some(claim);
        self.put(e);
        ClaimMerge::Applied
    }

    /// Drops the nodes found unreachable at least `after_ms` ago, and keeps
    /// a tombstone of each for as long again, so that a table that has not
    /// dropped it yet cannot bring it back. Returns the dropped ids.
    pub(crate) fn forget(&mut self, now_ms: u64, after_ms: u64) -> Vec<PeerId> {
        let gone: Vec<PeerId> = self
            .entries
            .values()
            .filter(|e| {
                e.down
                    .as_ref()
                    .is_some_and(|c| now_ms.saturating_sub(c.since_ms) >= after_ms)
            })
            .map(|e| e.record.id)
            .collect();
        for id in &gone {
            if let Some(e) = self.remove(id) {
                self.tombs
                    .insert(*id, (e.record.seq, now_ms.saturating_add(after_ms)));
            }
        }
        self.tombs.retain(|_, (_, until)| *until > now_ms);
        gone
    }

    pub(crate) fn get(&self, id: &PeerId) -> Option<&Entry> {
        self.entries.get(id)
    }

    pub(crate) fn entries(&self) -> impl Iterator<Item = &Entry> {
        self.entries.values()
    }

    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    pub(crate) fn buckets(&self) -> &[u64; BUCKETS] {
        &self.buckets
    }

    /// One number for the whole table: equal roots, equal tables (but for
    /// a hash collision, which the next change resolves).
    pub(crate) fn root(&self) -> u64 {
        let mut h = Sha256::new();
        for b in &self.buckets {
            h.update(b.to_be_bytes());
        }
        h.update((self.entries.len() as u64).to_be_bytes());
        let out = h.finalize();
        u64::from_be_bytes(out[..8].try_into().expect("8 bytes"))
    }

    /// The buckets whose hash differs from `theirs`.
    pub(crate) fn differing(&self, theirs: &[u64]) -> Vec<u8> {
        (0..BUCKETS)
            .filter(|&i| theirs.get(i) != Some(&self.buckets[i]))
            .map(|i| i as u8)
            .collect()
    }

    /// The digest of every entry in `buckets`.
    pub(crate) fn digests(&self, buckets: &[u8]) -> Vec<DigestItem> {
        let wanted: std::collections::BTreeSet<usize> =
            buckets.iter().map(|&b| b as usize).collect();
        self.entries
            .values()
            .filter(|e| wanted.contains(&bucket_of(&e.record.id)))
            .map(Entry::digest)
            .collect()
    }

    /// Given the other side's digests of `buckets`: our entries in those
    /// buckets that are newer than theirs or that they lack (at most
    /// `limit`), and the ids whose entries they have newer.
    pub(crate) fn compare(
        &self,
        buckets: &[u8],
        theirs: &[DigestItem],
        limit: usize,
    ) -> (Vec<MemberEntry>, Vec<PeerId>) {
        let theirs_by_id: BTreeMap<PeerId, &DigestItem> =
            theirs.iter().map(|d| (d.id, d)).collect();
        let mut send = Vec::new();
        for d in self.digests(buckets) {
            let newer = match theirs_by_id.get(&d.id) {
                Some(t) => d.newer_than(t),
                None => true,
            };
            if newer && send.len() < limit {
                send.push(self.entries[&d.id].to_wire());
            }
        }
        let want = theirs
            .iter()
            .filter(|t| match self.entries.get(&t.id) {
                Some(e) => t.newer_than(&e.digest()),
                None => true,
            })
            .map(|t| t.id)
            .collect();
        (send, want)
    }

    /// Entries by id, for the other side's wants (unknown ids skipped).
    pub(crate) fn wanted(&self, ids: &[PeerId], limit: usize) -> Vec<MemberEntry> {
        ids.iter()
            .filter_map(|id| self.entries.get(id))
            .take(limit)
            .map(Entry::to_wire)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use p2p_core::NodeKey;

    fn rec(n: u8, seq: u64) -> (SignedRecord, NodeRecord) {
        let key = NodeKey::from_seed([n; 32]);
        let r = NodeRecord {
            id: key.peer_id(),
            seq,
            addrs: vec![format!("10.0.0.{n}:1")],
            name: format!("n{n}"),
            labels: BTreeMap::new(),
            site: None,
            held: Vec::new(),
        };
        (r.sign(&key), r)
    }

    fn id(n: u8) -> PeerId {
        NodeKey::from_seed([n; 32]).peer_id()
    }

    fn table(me: u8, nodes: &[(u8, u64)]) -> Table {
        let mut t = Table::new(id(me), 100);
        for &(n, seq) in nodes {
            let (s, r) = rec(n, seq);
            t.offer(s, r, 0);
        }
        t
    }

    #[test]
    fn newer_records_replace_older_and_never_the_reverse() {
        let mut t = table(1, &[(2, 5)]);
        let (s, r) = rec(2, 4);
        assert_eq!(t.offer(s, r, 0), Merge::Stale);
        let (s, r) = rec(2, 5);
        assert_eq!(t.offer(s, r, 0), Merge::Same);
        let (s, r) = rec(2, 6);
        assert_eq!(t.offer(s, r, 0), Merge::Updated);
        assert_eq!(t.get(&id(2)).unwrap().record.seq, 6);
    }

    #[test]
    fn equal_tables_have_equal_roots_whatever_the_order() {
        let a = table(1, &[(2, 1), (3, 7), (4, 2)]);
        let b = table(9, &[(4, 1), (3, 7), (2, 1), (4, 2)]);
        assert_eq!(a.root(), b.root());
        let c = table(1, &[(2, 1), (3, 8), (4, 2)]);
        assert_ne!(a.root(), c.root());
    }

    #[test]
    fn comparing_digests_finds_both_directions() {
        let a = table(1, &[(2, 1), (3, 7), (4, 2)]);
        let b = table(9, &[(2, 3), (3, 7), (5, 1)]);
        let diff = a.differing(b.buckets());
        let (send, want) = a.compare(&diff, &b.digests(&diff), 100);
        let sent: Vec<PeerId> = send
            .iter()
            .map(|e| e.record.open(&Default::default()).unwrap().id)
            .collect();
        // a has 4 that b lacks; b has newer 2 and 5 that a lacks.
        assert_eq!(sent, vec![id(4)]);
        let mut want = want;
        want.sort();
        let mut expected = vec![id(2), id(5)];
        expected.sort();
        assert_eq!(want, expected);
    }

    #[test]
    fn a_claim_marks_the_record_it_names_until_a_newer_one_comes() {
        let reporter = NodeKey::from_seed([1; 32]);
        let mut t = table(1, &[(2, 5)]);
        let before = t.root();
        // A claim about an older record is ignored.
        assert_eq!(
            t.offer_claim(Claim::new(&reporter, id(2), 4, 10)),
            ClaimMerge::Ignored
        );
        assert_eq!(
            t.offer_claim(Claim::new(&reporter, id(2), 5, 10)),
            ClaimMerge::Applied
        );
        assert!(t.get(&id(2)).unwrap().down.is_some());
        assert_ne!(t.root(), before);
        let (s, r) = rec(2, 6);
        assert_eq!(t.offer(s, r, 20), Merge::Updated);
        assert!(t.get(&id(2)).unwrap().down.is_none());
        // About me: the caller must refute.
        let mut me = table(2, &[(2, 6)]);
        assert_eq!(
            me.offer_claim(Claim::new(&reporter, id(2), 6, 30)),
            ClaimMerge::AboutMe
        );
    }

    #[test]
    fn forgotten_nodes_stay_out_until_they_publish_anew() {
        let reporter = NodeKey::from_seed([1; 32]);
        let mut t = table(1, &[(2, 5), (3, 1)]);
        t.offer_claim(Claim::new(&reporter, id(2), 5, 1_000));
        assert!(t.forget(1_500, 1_000).is_empty());
        assert_eq!(t.forget(2_000, 1_000), vec![id(2)]);
        assert!(t.get(&id(2)).is_none());
        let (s, r) = rec(2, 5);
        assert_eq!(t.offer(s, r, 2_100), Merge::Forgotten);
        let (s, r) = rec(2, 6);
        assert_eq!(t.offer(s, r, 2_200), Merge::New);
    }

    #[test]
    fn a_full_table_takes_no_new_node() {
        let mut t = Table::new(id(1), 2);
        for n in 2..=3 {
            let (s, r) = rec(n, 1);
            t.offer(s, r, 0);
        }
        let (s, r) = rec(4, 1);
        assert_eq!(t.offer(s, r, 0), Merge::Full);
        // Updates of known nodes still come in.
        let (s, r) = rec(2, 2);
        assert_eq!(t.offer(s, r, 0), Merge::Updated);
    }
}
