//! The admission handshake against a peer that says anything at all.
//!
//! Byte 0 picks the side (we dial it, or it dials us), byte 1 the policy
//! (a pre-shared key; a key and an allow-list; an allow-list without the
//! peer; nothing), and the rest is what the peer sends on the handshake
//! stream. Checked: nothing panics or hangs, and a peer that does not hold
//! the key, or is not on the allow-list, is never admitted, on either
//! side.
#![no_main]

use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use p2p_core::{Admission, Admitted, PeerAddr, PreSharedKey, Provider};
use p2p_fuzz::{ScriptedProvider, peer};
use rand::SeedableRng;

fuzz_target!(|data: &[u8]| {
    let [side, policy, script @ ..] = data else {
        return;
    };
    let (us, them) = (peer(1), peer(2));
    let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(u64::from(*policy));
    let key = PreSharedKey::from_bytes([7; 32]);
    let (admission, must_refuse) = match policy % 4 {
        0 => (Admission::new(&mut rng).with_psk(key), true),
        1 => (
            Admission::new(&mut rng)
                .with_psk(key)
                .with_allow_list([them]),
            true,
        ),
        2 => (Admission::new(&mut rng).with_allow_list([peer(3)]), true),
        _ => (Admission::new(&mut rng), false),
    };
    let admission = admission.with_handshake_timeout(Duration::from_secs(10));
    let provider = Admitted::new(ScriptedProvider::new(us, them, script.to_vec()), admission);
    let rt = p2p_fuzz::runtime();
    rt.block_on(async {
        if side % 2 == 0 {
            let got = provider.connect(&PeerAddr::id_only(them)).await;
            if must_refuse {
                assert!(
                    got.is_err(),
                    "dialing: a peer without the key or not allowed was admitted"
                );
            }
        } else {
            let mut listener = provider.listen().await.unwrap();
            let got = tokio::time::timeout(Duration::from_secs(60), listener.accept()).await;
            if must_refuse {
                assert!(
                    !matches!(got, Ok(Ok(_))),
                    "listening: a peer without the key or not allowed was admitted"
                );
            }
        }
    });
});
