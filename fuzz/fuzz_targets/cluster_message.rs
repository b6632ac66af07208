//! What a member (or anything reaching the distribution port through a tunnel) sends to
//! clusterd over UDP: heartbeats and offers. Never a panic; what decodes encodes to a message
//! that decodes to the same.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = proto::cluster::Message::decode(data) {
        let again = proto::cluster::Message::decode(&m.encode());
        assert!(again.is_ok_and(|a| a == m));
    }
});
