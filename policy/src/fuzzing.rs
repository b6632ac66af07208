//! The fuzz harness body, shared by the cargo-fuzz target and the corpus regression test.
//!
//! Besides "no panic", it checks properties that must hold for every input: every refusal
//! is one line per problem, every accepted policy's openMosix map round-trips, and a policy
//! parsed by its `[[node]]` blocks (cold, then with its blocks kept) is the whole parse's.

use ed25519_dalek::SigningKey;
use jiff::Timestamp;

use crate::{
    MosixMap, NodeBlocks, NodeMap, NodeMapDiff, Policy, TrustedKeys, VerifyError, sign,
    verify_policy,
};

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
    if let Ok(text) = std::str::from_utf8(rest) {
        split_parse_is_whole_parse(&mut NodeBlocks::default(), text);
    }
}

/// Whenever `blocks` splits `text`, with what it keeps and then with `text`'s own blocks
/// kept, the result is what parsing it whole gives. Also run by the property test in
/// `blocks`.
pub fn split_parse_is_whole_parse(blocks: &mut NodeBlocks, text: &str) {
    for _ in 0..2 {
        if let Some((policy, parsed)) = blocks.parse(text) {
            let whole: Option<Policy> = toml::from_str(text).ok();
            assert_eq!(whole.as_ref(), Some(&policy), "split parse differs");
            blocks.keep(parsed);
        }
    }
}
