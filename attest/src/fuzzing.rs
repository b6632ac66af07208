//! The `verify_quote` fuzz target's body, here so that the seeds' test runs the same code.
//! Input: the first byte chooses whether the rest is signed by the node's key (reaching the
//! parser and every check) or ends with 64 attacker-chosen signature bytes. The rest is also
//! parsed alone.

use p256::ecdsa::SigningKey;

use crate::quote::{Quote, QuoteError, parse_attest, verify_quote};
use crate::{AttestationKey, forge};

/// The nonce and pinned image the target checks against.
pub const NONCE: [u8; 32] = [7; 32];
pub const IMAGE: [u8; 32] = [4; 32];

fn key() -> Option<SigningKey> {
    SigningKey::from_slice(&[1u8; 32]).ok()
}

/// Runs one input; returns what the check decided.
pub fn verify_quote_input(data: &[u8]) -> Option<Result<crate::Attested, QuoteError>> {
    let (first, rest) = data.split_first()?;
    let _ = parse_attest(rest);
    let sk = key()?;
    let quote = if first & 1 == 0 {
        forge::sign(&sk, rest.to_vec())
    } else {
        if rest.len() < 64 {
            return None;
        }
        let (attest, sig) = rest.split_at(rest.len() - 64);
        let mut signature = [0u8; 64];
        signature.copy_from_slice(sig);
        Quote {
            attest: attest.to_vec(),
            signature,
        }
    };
    Some(verify_quote(
        &AttestationKey::from(*sk.verifying_key()),
        &quote,
        &NONCE,
        &[IMAGE],
    ))
}
