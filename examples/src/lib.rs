//! # p2p-examples
//!
//! The SDK as tools a person runs. For now the offline half of `p2pctl`:
//! keys, packages, signatures, verification and pre-shared keys.
//!
//! ```text
//! cargo run -p p2p-examples --bin p2pctl -- keygen --out alice
//! cargo run -p p2p-examples --bin p2pctl -- package ./web
//! cargo run -p p2p-examples --bin p2pctl -- sign web-1.0.0.p2p --key alice.key
//! cargo run -p p2p-examples --bin p2pctl -- verify web-1.0.0.p2p --trust ./trusted
//! cargo run -p p2p-examples --bin p2pctl -- inspect web-1.0.0.p2p --json
//! ```
