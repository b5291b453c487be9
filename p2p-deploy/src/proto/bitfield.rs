//! Have-maps: which chunks of a release a peer holds, as they go over the
//! wire.

use p2p_core::{Error, Result};
use serde::{Deserialize, Serialize};

/// Which chunks of a release a peer holds, one bit per chunk.
///
/// One decoded from the network is well formed (one byte per 8 chunks,
/// no bit set past the last chunk) or not decoded at all; whether it fits
/// a release is [`check`](Bitfield::check)ed where it is used.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "RawBitfield")]
pub struct Bitfield {
    len: u32,
    bits: Vec<u8>,
}

/// A bitfield as it arrives, before its shape is checked.
#[derive(Deserialize)]
struct RawBitfield {
    len: u32,
    bits: Vec<u8>,
}

impl TryFrom<RawBitfield> for Bitfield {
    type Error = String;

    fn try_from(raw: RawBitfield) -> std::result::Result<Self, String> {
        let len = raw.len as usize;
        if raw.bits.len() != len.div_ceil(8) {
            return Err(format!(
                "a bitfield of {len} chunks in {} bytes",
                raw.bits.len()
            ));
        }
        let tail_clean =
            len.is_multiple_of(8) || raw.bits.last().is_none_or(|&b| b >> (len % 8) == 0);
        if !tail_clean {
            return Err(format!(
                "a bitfield of {len} chunks with bits past the last"
            ));
        }
        Ok(Bitfield {
            len: raw.len,
            bits: raw.bits,
        })
    }
}

impl std::fmt::Debug for Bitfield {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Bitfield({}/{})", self.count(), self.len)
    }
}

impl Bitfield {
    /// `len` chunks, none held.
    pub fn new(len: usize) -> Self {
        Bitfield {
            len: len as u32,
            bits: vec![0; len.div_ceil(8)],
        }
    }

    /// `len` chunks, all held.
    pub fn full(len: usize) -> Self {
        let mut b = Bitfield::new(len);
        for i in 0..len {
            b.set(i);
        }
        b
    }

    /// The number of chunks it covers.
    pub fn len(&self) -> usize {
        self.len as usize
    }

    /// Whether it covers no chunks.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether chunk `i` is held.
    pub fn get(&self, i: usize) -> bool {
        i < self.len() && self.bits[i / 8] & (1 << (i % 8)) != 0
    }

    /// Marks chunk `i` held; true if it was not. Out of range: no change.
    pub fn set(&mut self, i: usize) -> bool {
        if i >= self.len() || self.get(i) {
            return false;
        }
        self.bits[i / 8] |= 1 << (i % 8);
        true
    }

    /// Marks chunk `i` not held.
    pub fn clear(&mut self, i: usize) {
        if i < self.len() {
            self.bits[i / 8] &= !(1 << (i % 8));
        }
    }

    /// How many chunks are held.
    pub fn count(&self) -> usize {
        self.bits.iter().map(|b| b.count_ones() as usize).sum()
    }

    /// Whether every chunk is held.
    pub fn is_full(&self) -> bool {
        self.count() == self.len()
    }

    /// The held chunks, in order.
    pub fn ones(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.len()).filter(|&i| self.get(i))
    }

    /// Both sets together.
    pub fn union(&self, other: &Bitfield) -> Bitfield {
        let mut out = self.clone();
        for i in other.ones() {
            out.set(i);
        }
        out
    }

    /// Checks one that came from a peer against a release of `len`
    /// chunks (its shape was checked when it was decoded).
    pub fn check(&self, len: usize) -> Result<()> {
        if self.len() != len {
            return Err(Error::protocol(format!(
                "a have-map for {} chunks where the release has {len}",
                self.len
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by the `rpc` fuzz target: a have-map claiming 85 chunks in 3
    /// bytes decoded, and `get` on it panicked. A decoded bitfield is now
    /// well formed or an error.
    #[test]
    fn malformed_bitfields_do_not_decode() {
        let crash = [0x55, 0x03, 0x55, 0x11, 0x01];
        assert!(postcard::from_bytes::<Bitfield>(&crash).is_err());
        let raw = RawBitfield {
            len: 85,
            bits: vec![0x55, 0x11, 0x01],
        };
        let e = Bitfield::try_from(raw).unwrap_err();
        assert!(e.contains("85 chunks in 3 bytes"), "{e}");
        // A bit past the last chunk.
        let stray = postcard::to_allocvec(&(3u32, vec![0b1000u8])).unwrap();
        assert!(postcard::from_bytes::<Bitfield>(&stray).is_err());
        let raw = RawBitfield {
            len: 3,
            bits: vec![0b1000],
        };
        let e = Bitfield::try_from(raw).unwrap_err();
        assert!(e.contains("bits past the last"), "{e}");
        // Well formed ones round-trip.
        let mut b = Bitfield::new(11);
        b.set(0);
        b.set(10);
        let back: Bitfield = postcard::from_bytes(&postcard::to_allocvec(&b).unwrap()).unwrap();
        assert_eq!(back, b);
        assert_eq!(back.ones().collect::<Vec<_>>(), vec![0, 10]);
        assert!(back.check(11).is_ok());
        assert!(back.check(12).is_err());
    }
}
