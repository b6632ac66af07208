//! A member's TPM quote, bytes and a signature in, checked against a fixed nonce and pinned
//! image or refused; never a panic. The first byte chooses whether the rest is signed by the
//! node's key (reaching the parser and every check) or ends with 64 attacker-chosen
//! signature bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = attest::fuzzing::verify_quote_input(data);
});
