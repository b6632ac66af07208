//! Bytes and a signature in, a verified policy or an error out; never a panic.
//!
//! Input layout: the first byte chooses whether the policy part is signed by the trusted key
//! (so the fuzzer reaches the parser and validator) or carries attacker-chosen signature bytes
//! (so it exercises signature decoding and checking).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    policy::fuzzing::verify_policy_input(data);
});
