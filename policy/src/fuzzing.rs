//! The fuzz harness body, shared by the cargo-fuzz target and the corpus regression test.
//!
//! Besides "no panic", it checks properties that must hold for every input: every refusal
//! is one line per problem, and every accepted policy's openMosix map round-trips.

use ed25519_dalek::SigningKey;
use jiff::Timestamp;

use crate::{MosixMap, NodeMap, NodeMapDiff, TrustedKeys, VerifyError, sign, verify_policy};

/// The length of a signature file: 88 base64 characters and a newline.
const SIG_LEN: usize = 89;

/// Runs one fuzz input. The first byte picks the mode: even, the rest is a policy signed by
/// the trusted key (reaching the parser and validator); odd, the rest ends with attacker-chosen
/// signature bytes.
pub fn verify_policy_input(data: &[u8]) {
    let key = SigningKey::from_bytes(&[42; 32]);
    let trust = TrustedKeys::new(vec![(&key).into()]);
    let Ok(now) = "2026-06-01T00:00:00Z".parse::<Timestamp>() else {
        return;
    };
    let Some((mode, rest)) = data.split_first() else {
        return;
    };
    let result = if mode & 1 == 0 {
        let sig = sign(rest, &key);
        verify_policy("fuzz.toml", rest, sig.as_bytes(), &trust, now)
    } else {
        let (policy, sig) = rest.split_at(rest.len().saturating_sub(SIG_LEN));
        verify_policy("fuzz.toml", policy, sig, &trust, now)
    };
    match result {
        Ok(policy) => {
            let map = MosixMap::from_policy(&policy);
            let parsed = MosixMap::parse("map", &map.render());
            assert_eq!(parsed.as_ref(), Ok(&map), "map round trip");
            let nodes = NodeMap::from(&*policy);
            assert!(NodeMapDiff::new(&nodes, &nodes).is_empty());
        }
        Err(VerifyError::Invalid(invalid)) => {
            assert!(!invalid.0.is_empty());
            for d in &invalid.0 {
                assert!(!d.to_string().contains('\n'), "multi-line diagnostic: {d}");
            }
        }
        Err(e) => assert!(!e.to_string().contains('\n'), "multi-line error: {e}"),
    }
    let _ = MosixMap::parse("fuzz.map", &String::from_utf8_lossy(rest));
}
