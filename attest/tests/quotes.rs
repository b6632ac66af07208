//! The bad input, each as a peer would receive it from a member: every quote is
//! refused with its own reason, nothing panics.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use attest::forge::{self, Fields};
use attest::pcr::{self, PcrValue};
use attest::quote::parse_attest;
use attest::{AttestationKey, MAX_ATTEST, Quote, QuoteError, verify_quote};
use p256::ecdsa::SigningKey;

const IMAGE: PcrValue = [4; 32];
const NONCE: [u8; 32] = [7; 32];

fn node_key() -> (SigningKey, AttestationKey) {
    let sk = SigningKey::from_slice(&[1u8; 32]).unwrap();
    let k = AttestationKey::from(*sk.verifying_key());
    (sk, k)
}

fn quote_with(f: &Fields) -> Quote {
    forge::sign(&node_key().0, forge::attest_bytes(f).unwrap())
}

fn good() -> Fields {
    Fields::quote(&NONCE, &IMAGE, &[0; 32])
}

fn check(q: &Quote) -> Result<attest::Attested, QuoteError> {
    verify_quote(&node_key().1, q, &NONCE, &[[9; 32], IMAGE])
}

/// A valid quote is taken, and names which pinned image.
#[test]
fn a_quote_over_the_challenge_and_a_pinned_image_is_taken() {
    let ok = check(&quote_with(&good())).unwrap();
    assert_eq!(ok.image, 1);
    assert_eq!((ok.clock, ok.reset_count), (1000, 1));
}

/// Steps: a replayed quote (made over an older challenge) is checked against the new one:
/// refused as Nonce. So is a quote with no qualifying data, or a longer one.
#[test]
fn a_replayed_quote_over_an_old_challenge_is_refused() {
    let mut f = good();
    f.nonce = vec![6; 32];
    assert_eq!(check(&quote_with(&f)), Err(QuoteError::Nonce));
    f.nonce = vec![];
    assert_eq!(check(&quote_with(&f)), Err(QuoteError::Nonce));
    f.nonce = [NONCE.to_vec(), vec![0]].concat();
    assert_eq!(check(&quote_with(&f)), Err(QuoteError::Nonce));
}

/// Steps: quotes over another PCR set (PCR 4 alone, PCRs 0-15, the SHA-1 bank, two banks)
/// whose digest is the pinned one: all refused as Selection (a quote of PCRs that leave out
/// the ratchet would hide a lost integrity).
#[test]
fn a_quote_over_other_pcrs_is_refused_even_with_the_pinned_digest() {
    for selection in [
        vec![(pcr::SHA256_ALG, vec![0x10, 0, 0])],
        vec![(pcr::SHA256_ALG, vec![0xff, 0xff, 0])],
        vec![(0x0004, pcr::SELECT.to_vec())],
        vec![
            (pcr::SHA256_ALG, pcr::SELECT.to_vec()),
            (0x0004, pcr::SELECT.to_vec()),
        ],
        vec![(pcr::SHA256_ALG, vec![0x10, 0x80])],
        vec![],
    ] {
        let mut f = good();
        f.selection = selection.clone();
        assert_eq!(
            check(&quote_with(&f)),
            Err(QuoteError::Selection),
            "{selection:?}"
        );
    }
}

/// Steps: an image one byte off, the ratchet set once (integrity lost in this boot), the
/// ratchet set otherwise, and a digest of another length: NotPinned, RatchetSet, NotPinned,
/// NotPinned.
#[test]
fn a_quote_of_another_image_or_a_set_ratchet_is_refused() {
    let mut off = IMAGE;
    off[31] ^= 1;
    assert_eq!(
        check(&quote_with(&Fields::quote(&NONCE, &off, &[0; 32]))),
        Err(QuoteError::NotPinned)
    );
    assert_eq!(
        check(&quote_with(&Fields::quote(
            &NONCE,
            &IMAGE,
            &pcr::ratcheted()
        ))),
        Err(QuoteError::RatchetSet)
    );
    assert_eq!(
        check(&quote_with(&Fields::quote(&NONCE, &IMAGE, &[1; 32]))),
        Err(QuoteError::NotPinned)
    );
    let mut f = good();
    f.pcr_digest.truncate(20);
    assert_eq!(check(&quote_with(&f)), Err(QuoteError::NotPinned));
}

/// Steps: a quote signed by another key (a swapped TPM, a member signing in software), one
/// bit of the signature flipped, one bit of the attestation flipped after signing, and an
/// all-zero signature: all refused as Signature, before anything is parsed.
#[test]
fn a_quote_signed_by_another_key_or_altered_is_refused() {
    let other = SigningKey::from_slice(&[2u8; 32]).unwrap();
    let bytes = forge::attest_bytes(&good()).unwrap();
    assert_eq!(
        check(&forge::sign(&other, bytes.clone())),
        Err(QuoteError::Signature)
    );
    let mut q = quote_with(&good());
    q.signature[10] ^= 1;
    assert_eq!(check(&q), Err(QuoteError::Signature));
    let mut q = quote_with(&good());
    q.attest[40] ^= 1;
    assert_eq!(check(&q), Err(QuoteError::Signature));
    let mut q = quote_with(&good());
    q.signature = [0; 64];
    assert_eq!(check(&q), Err(QuoteError::Signature));
}

/// Steps: the structure truncated at every length, with a trailing byte, oversized, of
/// another attestation type, and with a wrong magic, each signed by the node's own key so
/// that the parser is reached: Malformed, TooLarge or NotAQuote, never a panic.
#[test]
fn a_truncated_oversized_or_other_structure_is_refused_plainly() {
    let bytes = forge::attest_bytes(&good()).unwrap();
    for n in 0..bytes.len() {
        let r = check(&forge::sign(&node_key().0, bytes[..n].to_vec()));
        assert!(matches!(r, Err(QuoteError::Malformed(_))), "{n}: {r:?}");
        assert!(parse_attest(&bytes[..n]).is_err());
    }
    let mut longer = bytes.clone();
    longer.push(0);
    assert!(matches!(
        check(&forge::sign(&node_key().0, longer)),
        Err(QuoteError::Malformed(_))
    ));
    let big = vec![0xffu8; MAX_ATTEST + 1];
    assert_eq!(
        check(&Quote {
            attest: big,
            signature: [0; 64]
        }),
        Err(QuoteError::TooLarge(MAX_ATTEST + 1))
    );
    let mut f = good();
    f.kind = tpm2_protocol::data::TpmSt::AttestCertify;
    // A certify body is another shape: the quote body under a certify tag is malformed or
    // not a quote, either way refused.
    let r = check(&quote_with(&f));
    assert!(
        matches!(r, Err(QuoteError::NotAQuote | QuoteError::Malformed(_))),
        "{r:?}"
    );
    let mut magic = bytes.clone();
    magic[0] = 0;
    assert!(matches!(
        check(&forge::sign(&node_key().0, magic)),
        Err(QuoteError::Malformed(_))
    ));
}

/// The fuzz corpus's seeds (fuzz/corpus/verify_quote) decide as their names say, so the
/// fuzzer starts from inputs that reach each check. Steps: each seed through the target's
/// own body.
#[test]
fn the_fuzz_seeds_decide_as_named() {
    use attest::fuzzing::{IMAGE, NONCE, verify_quote_input};
    let seed = |f: &Fields| [vec![0u8], forge::attest_bytes(f).unwrap()].concat();
    let good = Fields::quote(&NONCE, &IMAGE, &[0; 32]);
    let mut stale = good.clone();
    stale.nonce = vec![1; 32];
    let mut sel = good.clone();
    sel.selection = vec![(pcr::SHA256_ALG, vec![0x10, 0, 0])];
    let seeds: Vec<(&str, Vec<u8>)> = vec![
        ("seed-good", seed(&good)),
        ("seed-stale-nonce", seed(&stale)),
        ("seed-selection", seed(&sel)),
        (
            "seed-ratchet",
            seed(&Fields::quote(&NONCE, &IMAGE, &pcr::ratcheted())),
        ),
        (
            "seed-unsigned",
            [vec![1u8], forge::attest_bytes(&good).unwrap(), vec![0; 64]].concat(),
        ),
    ];
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/verify_quote");
    for (name, bytes) in &seeds {
        let path = dir.join(name);
        if std::env::var_os("WRITE_SEEDS").is_some() {
            std::fs::write(&path, bytes).unwrap();
        }
        assert_eq!(&std::fs::read(&path).unwrap(), bytes, "{name} is stale");
        let got = verify_quote_input(bytes).unwrap();
        let ok = match *name {
            "seed-good" => got.is_ok(),
            "seed-stale-nonce" => got == Err(QuoteError::Nonce),
            "seed-selection" => got == Err(QuoteError::Selection),
            "seed-ratchet" => got == Err(QuoteError::RatchetSet),
            _ => got == Err(QuoteError::Signature),
        };
        assert!(ok, "{name}: {got:?}");
    }
}
