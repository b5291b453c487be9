//! The framing layer as a server reads a stream: length-prefixed frames
//! under a maximum, the hello exchange, then requests.
//!
//! Byte 0 picks the maximum frame size; the rest is the stream. Checked:
//! no frame over the maximum is ever returned, frames never claim more
//! bytes than the stream had, a clean end is reported only at a frame
//! boundary, every frame written back reads back the same, and a server
//! reading a hello and then envelopes (as the agent does) never panics
//! and accepts only a well-formed hello.
#![no_main]

use libfuzzer_sys::fuzz_target;
use p2p_core::framing::{
    self, DEFAULT_MAX_FRAME, Framed, Hello, read_frame_bytes, write_frame_bytes,
};
use p2p_deploy::proto::{Envelope, PROTOCOL};

const MAXES: [u32; 4] = [16, 1024, 64 << 10, DEFAULT_MAX_FRAME];

fuzz_target!(|data: &[u8]| {
    let Some((&pick, stream)) = data.split_first() else {
        return;
    };
    let max = MAXES[usize::from(pick) % MAXES.len()];
    let rt = p2p_fuzz::runtime();
    rt.block_on(async {
        // Frame by frame.
        let mut r = stream;
        let mut buf = Vec::new();
        let mut consumed = 0usize;
        loop {
            match read_frame_bytes(&mut r, &mut buf, max).await {
                Ok(true) => {
                    assert!(buf.len() as u64 <= u64::from(max), "frame over the maximum");
                    consumed += 4 + buf.len();
                    assert!(consumed <= stream.len(), "frame beyond the stream");
                    assert_eq!(&stream[consumed - buf.len()..consumed], &buf[..]);
                    let mut out = Vec::new();
                    write_frame_bytes(&mut out, &buf, max).await.unwrap();
                    let mut back = Vec::new();
                    assert!(
                        read_frame_bytes(&mut &out[..], &mut back, max)
                            .await
                            .unwrap()
                    );
                    assert_eq!(back, buf);
                    if let Ok(h) = framing::decode::<Hello>(&buf) {
                        let _ = framing::negotiate(&PROTOCOL, &h);
                        let again: Hello =
                            postcard::from_bytes(&postcard::to_allocvec(&h).unwrap()).unwrap();
                        assert_eq!(again, h);
                    }
                }
                Ok(false) => {
                    assert_eq!(consumed, stream.len(), "clean end inside a frame");
                    break;
                }
                Err(_) => break,
            }
        }

        // As the agent's server reads a stream: hello, then envelopes.
        let recv = Box::new(std::io::Cursor::new(stream.to_vec()));
        let mut framed = Framed::with_max(Box::new(tokio::io::sink()), recv, max);
        if let Ok(version) = framed.hello(&PROTOCOL).await {
            assert!((PROTOCOL.min..=PROTOCOL.max).contains(&version));
            let mut len = [0u8; 4];
            len.copy_from_slice(&stream[..4]);
            let hello: Hello = framing::decode(&stream[4..4 + u32::from_be_bytes(len) as usize])
                .expect("an accepted hello decodes");
            assert_eq!(hello.magic, framing::HELLO_MAGIC);
            assert_eq!(hello.protocol, PROTOCOL.name);
            while let Ok(Some(env)) = framed.recv_opt::<Envelope>().await {
                let _ = (env.request.kind(), env.request.is_mutating());
            }
        }
    });
});
