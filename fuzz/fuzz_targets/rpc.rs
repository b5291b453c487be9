//! Every message of the deploy protocol, decoded from arbitrary bytes.
//!
//! Byte 0 picks the type; the rest is the frame body. Checked: decoding
//! never panics, and whatever decodes encodes and decodes back to the same
//! value (so what an agent understood is what it would say back). A
//! descriptor that decodes is in canonical form and consistent (chunk
//! count against size, manifest rules).
#![no_main]

use libfuzzer_sys::fuzz_target;
use p2p_core::framing::{self, Hello};
use p2p_deploy::proto::{DeployEvent, Envelope, Frame, Reply, Request, RpcError};
use p2p_deploy::{Bitfield, Descriptor};
use serde::Serialize;
use serde::de::DeserializeOwned;

fn roundtrip<T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug>(
    body: &[u8],
) -> Option<T> {
    let v: T = framing::decode(body).ok()?;
    let bytes = postcard::to_allocvec(&v).expect("a decoded message encodes");
    let back: T = postcard::from_bytes(&bytes).expect("an encoded message decodes");
    assert_eq!(back, v, "encode/decode changed the message");
    Some(v)
}

fuzz_target!(|data: &[u8]| {
    let Some((&pick, body)) = data.split_first() else {
        return;
    };
    match pick % 9 {
        0 => {
            roundtrip::<Hello>(body);
        }
        1 => {
            if let Some(env) = roundtrip::<Envelope>(body) {
                let _ = (env.request.kind(), env.request.is_mutating());
            }
        }
        2 => {
            roundtrip::<Request>(body);
        }
        3 => {
            roundtrip::<Reply>(body);
        }
        4 => {
            roundtrip::<Frame>(body);
        }
        5 => {
            roundtrip::<DeployEvent>(body);
        }
        6 => {
            roundtrip::<RpcError>(body);
        }
        7 => {
            // As a peer's have-map arrives in a swarm request.
            if let Some(b) = roundtrip::<Bitfield>(body) {
                assert!(
                    b.count() <= b.len(),
                    "{b:?} holds more chunks than it covers"
                );
                assert_eq!(b.ones().count(), b.count());
                assert_eq!(b.is_full(), b.count() == b.len());
                if let Some(last) = b.len().checked_sub(1) {
                    let _ = b.get(last);
                    let _ = b.union(&Bitfield::full(b.len())).is_full();
                }
            }
        }
        _ => {
            if let Ok(d) = Descriptor::from_bytes(body) {
                assert_eq!(
                    d.to_bytes(),
                    body,
                    "a descriptor is accepted only in canonical form"
                );
                assert!(!d.chunks.is_empty());
                let sum: u64 = d.chunks.iter().map(|c| u64::from(c.size)).sum();
                assert_eq!(sum, d.archive_size, "the chunks add up to the archive");
                d.manifest
                    .validate()
                    .expect("an accepted descriptor's manifest is valid");
                let _ = (d.id(), d.signing_message());
            }
        }
    }
});
