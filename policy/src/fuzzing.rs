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

/// The policy [`verify_membership_input`] checks memberships under: master 1 holds an
/// admission key (seed 42) for drones, ids 100-199 in 10.77.0.128/26, 8 nodes at most; node
/// 2 is the operator's.
fn membership_policy() -> Option<&'static Policy> {
    static POLICY: std::sync::OnceLock<Option<Policy>> = std::sync::OnceLock::new();
    POLICY
        .get_or_init(|| {
            let now = "2026-06-01T00:00:00Z".parse::<Timestamp>().ok()?;
            let key = crate::OperatorPublicKey::from(&SigningKey::from_bytes(&[42; 32]));
            let mut text = crate::template::init_template("lab", "2027-01-01T00:00:00Z".parse().ok()?);
            text.push_str(&format!(
                "\n[[admission]]\nmaster = 1\nkey = \"{key}\"\nroles = [\"drone\"]\nids = \"100-199\"\naddresses = [\"10.77.0.128/26\"]\nmax_nodes = 8\nexpires = \"2027-01-01T00:00:00Z\"\n"
            ));
            for (id, role) in [(1u16, "master"), (2, "server")] {
                let wg = crate::WgPublicKey::from_bytes([id as u8; 32]);
                text.push_str(&format!(
                    "\n[[node]]\nid = {id}\nname = \"n{id}\"\npublic_key = \"{wg}\"\naddresses = [\"10.77.0.{id}\"]\nroles = [\"{role}\"]\n"
                ));
            }
            crate::parse_policy("fuzz.toml", text.as_bytes(), now).ok()
        })
        .as_ref()
}

/// Runs one membership fuzz input, as [`verify_policy_input`] does for a policy: the first
/// byte picks whether the rest is signed by master 1's admission key or ends with
/// attacker-chosen signature bytes. A membership accepted is within the key's limits and apart
/// from the policy's nodes; every refusal is one line.
pub fn verify_membership_input(data: &[u8]) {
    let (Some(policy), Ok(now)) = (
        membership_policy(),
        "2026-06-01T00:00:00Z".parse::<Timestamp>(),
    ) else {
        return;
    };
    let Some((mode, rest)) = data.split_first() else {
        return;
    };
    let master = crate::NodeId::MIN;
    let result = if mode & 1 == 0 {
        let sig = sign(rest, &SigningKey::from_bytes(&[42; 32]));
        crate::membership::verify_membership("m.toml", master, rest, sig.as_bytes(), policy, now)
    } else {
        let (doc, sig) = rest.split_at(rest.len().saturating_sub(SIG_LEN));
        crate::membership::verify_membership("m.toml", master, doc, sig, policy, now)
    };
    match result {
        Ok(m) => {
            assert!(crate::membership::check_limits(policy, &m).is_ok());
            let key = policy.admission_of(master).map(|a| a.ids);
            assert!(
                m.nodes
                    .iter()
                    .all(|n| key.is_some_and(|ids| ids.contains(n.id)))
            );
        }
        Err(e) => assert!(!e.to_string().contains('\n'), "multi-line refusal: {e}"),
    }
}

/// The harness's decision on a membership signed by master 1's admission key: `Ok`, or the
/// refusal's line, or why a node of it is left out of the map (for the corpus test's seeds).
pub fn membership_verdict(doc: &[u8]) -> Result<(), String> {
    let policy = membership_policy().ok_or("no policy")?;
    let now = "2026-06-01T00:00:00Z"
        .parse::<Timestamp>()
        .map_err(|e| e.to_string())?;
    let sig = sign(doc, &SigningKey::from_bytes(&[42; 32]));
    let mut in_force = crate::membership::MembershipsInForce::default();
    let mut store = crate::membership::MembershipStore::in_memory();
    in_force
        .offer(
            policy,
            &mut store,
            crate::NodeId::MIN,
            "m.toml",
            doc.to_vec(),
            sig.into_bytes(),
            now,
        )
        .map_err(|e| e.to_string())?;
    // Accepted, but a node another claims too is left out of the map.
    match in_force.excluded().values().next() {
        Some(why) => Err(format!("left out: {why}")),
        None => Ok(()),
    }
}
