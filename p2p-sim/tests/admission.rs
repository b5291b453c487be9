//! Admission against peers that do not follow the handshake: garbage,
//! oversized frames and silence are refused with clear errors, never a
//! panic, and the listener never yields such a peer.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use p2p_core::{Admission, Admitted, Error, PreSharedKey, Provider};
use p2p_sim::SimNet;
use rand::SeedableRng;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn policy() -> Admission {
    Admission::new(&mut rand_chacha::ChaCha20Rng::seed_from_u64(1))
        .with_psk(PreSharedKey::from_bytes([4; 32]))
        .with_handshake_timeout(Duration::from_secs(5))
}

#[tokio::test(start_paused = true)]
async fn garbage_from_a_dialer_is_refused_and_never_yielded() {
    let net = SimNet::new(1);
    let raw = net.add_node("raw").unwrap();
    let guarded = Admitted::new(net.add_node("guarded").unwrap(), policy());
    let mut listener = guarded.listen().await.unwrap();
    for junk in [
        &b"GET / HTTP/1.1\r\n\r\n"[..],
        &[0xff; 64][..],
        &u32::MAX.to_be_bytes()[..],
    ] {
        let conn = raw.connect(&guarded.local_addr()).await.unwrap();
        let (mut send, mut recv) = conn.open_bi().await.unwrap();
        send.write_all(junk).await.unwrap();
        let mut buf = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(10), recv.read_to_end(&mut buf)).await;
        let err = tokio::time::timeout(Duration::from_secs(10), conn.accept_bi())
            .await
            .expect("the guarded side must hang up")
            .err()
            .unwrap();
        assert!(err.to_string().contains("admission denied"), "{err}");
    }
    let yielded = tokio::time::timeout(Duration::from_secs(10), listener.accept()).await;
    assert!(yielded.is_err(), "a peer that sent garbage was yielded");
}

#[tokio::test(start_paused = true)]
async fn a_listener_speaking_garbage_gives_the_dialer_a_protocol_error() {
    let net = SimNet::new(2);
    let raw = net.add_node("raw").unwrap();
    let mut raw_listener = raw.listen().await.unwrap();
    let guarded = Admitted::new(net.add_node("guarded").unwrap(), policy());
    tokio::spawn(async move {
        while let Ok(conn) = raw_listener.accept().await {
            tokio::spawn(async move {
                if let Ok((mut send, _recv)) = conn.accept_bi().await {
                    let _ = send.write_all(b"SSH-2.0-OpenSSH_9.6\r\n").await;
                }
                std::future::pending::<()>().await;
            });
        }
    });
    let err = guarded.connect(&raw.local_addr()).await.err().unwrap();
    assert!(
        matches!(&err, Error::Protocol { reason } if reason.contains("does not speak")),
        "{err}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_silent_peer_times_out_on_both_sides() {
    let net = SimNet::new(3);
    let raw = net.add_node("raw").unwrap();
    let mut raw_listener = raw.listen().await.unwrap();
    let guarded = Admitted::new(net.add_node("guarded").unwrap(), policy());
    let held = tokio::spawn(async move { raw_listener.accept().await });
    let err = guarded.connect(&raw.local_addr()).await.err().unwrap();
    assert!(matches!(err, Error::Timeout { .. }), "{err}");
    drop(held);

    // A dialer that connects and says nothing is dropped by the listener.
    let mut listener = guarded.listen().await.unwrap();
    let conn = raw.connect(&guarded.local_addr()).await.unwrap();
    let err = tokio::time::timeout(Duration::from_secs(10), conn.accept_bi())
        .await
        .unwrap()
        .err()
        .unwrap();
    assert!(err.to_string().contains("timed out"), "{err}");
    assert!(
        tokio::time::timeout(Duration::from_secs(5), listener.accept())
            .await
            .is_err()
    );
}

#[tokio::test(start_paused = true)]
async fn dropping_an_admitted_listener_frees_the_inner_one_at_once() {
    let net = SimNet::new(4);
    let guarded = Admitted::new(net.add_node("guarded").unwrap(), policy());
    let l = guarded.listen().await.unwrap();
    drop(l);
    let mut again = guarded
        .listen()
        .await
        .expect("listen again right after dropping the listener");
    let dialer = Admitted::new(net.add_node("dialer").unwrap(), policy());
    let addr = guarded.local_addr();
    let (c, a) = tokio::join!(dialer.connect(&addr), again.accept());
    c.unwrap();
    assert_eq!(a.unwrap().remote_id(), dialer.local_id());
}

#[tokio::test(start_paused = true)]
async fn handshakes_progress_while_nobody_waits_in_accept() {
    let net = SimNet::new(5);
    let guarded = Admitted::new(net.add_node("guarded").unwrap(), policy());
    let mut listener = guarded.listen().await.unwrap();
    let dialer = Admitted::new(net.add_node("dialer").unwrap(), policy());
    // Sequential code: the dial completes before anyone calls accept.
    let conn = tokio::time::timeout(
        Duration::from_secs(5),
        dialer.connect(&guarded.local_addr()),
    )
    .await
    .expect("admission must not wait for accept to be called")
    .unwrap();
    let inbound = listener.accept().await.unwrap();
    assert_eq!(inbound.remote_id(), dialer.local_id());
    assert_eq!(conn.remote_id(), guarded.local_id());
}
