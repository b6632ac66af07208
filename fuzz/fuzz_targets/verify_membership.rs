//! A master's membership, bytes and a signature in, verified under a fixed policy or refused;
//! never a panic. Input layout as `verify_policy`: the first byte chooses whether the rest is
//! signed by the master's admission key (reaching the parser and the limits) or ends with
//! attacker-chosen signature bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    policy::fuzzing::verify_membership_input(data);
});
