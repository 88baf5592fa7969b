//! Fuzz the native SPA decoder: header checks, key lookup and AEAD open
//! must never panic. (Authenticated-but-malformed bodies are covered by the
//! proptest `never_panics_on_arbitrary_authenticated_bodies`.) The same bytes
//! go through the sealed knock decoder (`proto/sealed.md`), whose input is
//! as untrusted: the ports a sender knocked.
#![no_main]

use knockgate_proto::sealed::{self, SealedKeys};
use knockgate_proto::spa::{self, SpaKey};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let key = SpaKey::from_secret([7; 32]);
    let _ = spa::peek_key_id(data);
    let _ = spa::open(&key, data);
    let _ = spa::open_with(data, |_| Some(&key));
    let source = std::net::IpAddr::from([192, 0, 2, 1]);
    let _ = sealed::open(&SealedKeys::derive(&key), "gw1", source, data);
});
