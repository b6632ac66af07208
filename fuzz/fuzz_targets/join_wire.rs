//! What anyone on the LAN (or a relay) can send to the join port: a relay's record, the hello,
//! then the Noise handshake and
//! frames (with a token, and without one for an approval join). Never a panic, and never a
//! frame larger than asked for.
#![no_main]

use std::io::{Read, Write};

use libfuzzer_sys::fuzz_target;

/// The fuzzer's bytes as what the peer sends; what the master writes goes nowhere.
struct Peer<'a>(&'a [u8]);

impl Read for Peer<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.0.read(buf)
    }
}

impl Write for Peer<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fuzz_target!(|data: &[u8]| {
    let mut peer = Peer(data);
    // From a member's tunnel address, a relay's record of the joiner's address comes first.
    if join::wire::starts_with_seen(data) && join::wire::read_seen(&mut peer).is_err() {
        return;
    }
    let Ok(hello) = join::wire::read_hello(&mut peer) else {
        return;
    };
    let channel = match hello {
        join::wire::Hello::Join(id) => {
            let token: join::token::Token = match "abcdef.0123456789abcdef".parse() {
                Ok(t) => t,
                Err(_) => return,
            };
            join::wire::accept(peer, &id, Some(&token.psk())).ok()
        }
        join::wire::Hello::Approval => join::wire::accept_for_approval(peer).ok().map(|(c, _)| c),
        join::wire::Hello::Leave => None,
    };
    if let Some(mut ch) = channel {
        while let Ok(m) = ch.receive_limited(4096) {
            assert!(m.len() <= 4096);
        }
    }
});
