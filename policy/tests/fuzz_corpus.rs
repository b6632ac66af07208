//! Replays the fuzz corpus (seeds and anything the fuzzer kept) as a regression test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[test]
fn fuzz_corpus_replays_without_failure() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/verify_policy");
    let mut count = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with('.'))
        {
            continue;
        }
        policy::fuzzing::verify_policy_input(&std::fs::read(&path).unwrap());
        count += 1;
    }
    assert!(
        count >= 7,
        "corpus at {} has only {count} inputs",
        dir.display()
    );
}

#[test]
fn the_valid_seed_is_accepted() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/verify_policy");
    let bytes = std::fs::read(dir.join("valid")).unwrap();
    let key = ed25519_dalek::SigningKey::from_bytes(&[42; 32]);
    let sig = policy::sign(&bytes[1..], &key);
    let trust = policy::TrustedKeys::new(vec![(&key).into()]);
    let now = "2026-06-01T00:00:00Z".parse().unwrap();
    policy::verify_policy("valid", &bytes[1..], sig.as_bytes(), &trust, now).unwrap();
}

#[test]
fn the_membership_corpus_replays_and_its_seeds_decide_as_named() {
    let dir =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/verify_membership");
    let mut count = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        policy::fuzzing::verify_membership_input(&std::fs::read(&path).unwrap());
        count += 1;
    }
    assert!(
        count >= 5,
        "corpus at {} has only {count} inputs",
        dir.display()
    );
    // The seeds reach the decisions they are named for (through the harness's own policy).
    let decide = |name: &str| {
        let bytes = std::fs::read(dir.join(name)).unwrap();
        policy::fuzzing::membership_verdict(&bytes[1..])
    };
    assert_eq!(decide("valid"), Ok(()));
    assert!(
        decide("out_of_range")
            .unwrap_err()
            .contains("outside master 1's ids")
    );
    assert!(
        decide("policy_key")
            .unwrap_err()
            .contains("left out: its public key")
    );
}
