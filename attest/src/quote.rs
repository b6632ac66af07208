//! A quote as a heartbeat carries it, and the check every peer makes of it. What a member
//! sends reaches this code: the size is checked first, then the signature under the key the
//! policy pins for that node, and only then is the structure parsed (by `tpm2-protocol`,
//! bounded) and its fields compared.

use p256::ecdsa::Signature;
use p256::ecdsa::signature::Verifier;
use tpm2_protocol::TpmUnmarshal;
use tpm2_protocol::constant::TPM_GENERATED_VALUE;
use tpm2_protocol::data::{TpmSt, TpmsAttest, TpmuAttest};

use crate::key::AttestationKey;
use crate::pcr::{self, PcrState, PcrValue};

/// The largest `TPMS_ATTEST` accepted: a quote of one bank with 32 bytes of qualifying data
/// and a SHA-256 key name is about 145 bytes.
pub const MAX_ATTEST: usize = 256;
/// An ECDSA P-256 signature as `r || s`.
pub const SIGNATURE_LEN: usize = 64;

/// A quote: the `TPMS_ATTEST` the TPM made and its signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quote {
    pub attest: Vec<u8>,
    pub signature: [u8; SIGNATURE_LEN],
}

/// Why a quote is refused: one line each.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuoteError {
    #[error("quote of {0} bytes is over the {MAX_ATTEST}-byte limit")]
    TooLarge(usize),
    #[error("signature of {0} bytes, expected {SIGNATURE_LEN}")]
    SignatureLength(usize),
    #[error("signature does not verify under the node's attestation key")]
    Signature,
    #[error("not a TPM attestation: {0}")]
    Malformed(String),
    #[error("an attestation of another kind than a quote")]
    NotAQuote,
    #[error("made over other challenges than the ones named (stale, replayed or forged)")]
    Nonce,
    #[error("over other PCRs than 4 and 15 of the SHA-256 bank")]
    Selection,
    #[error("its integrity-lost PCR is set: integrity was lost in this boot")]
    RatchetSet,
    #[error("its PCRs are not those of a pinned image")]
    NotPinned,
}

/// What a valid quote says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attested {
    /// Which pinned image (an index into the pins given).
    pub image: usize,
    /// The TPM's clock (ms, counts while powered) and its reset and restart counters: they
    /// never go backwards within one boot on an honest TPM.
    pub clock: u64,
    pub reset_count: u32,
    pub restart_count: u32,
}

/// The fields of a `TPMS_ATTEST` a peer looks at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parsed {
    pub extra_data: Vec<u8>,
    pub clock: u64,
    pub reset_count: u32,
    pub restart_count: u32,
    /// (hash algorithm, PCR bitmap) per bank selected.
    pub selection: Vec<(u16, Vec<u8>)>,
    pub pcr_digest: Vec<u8>,
}

/// Parses a quote's `TPMS_ATTEST` (no signature check: see [`verify_quote`]).
pub fn parse_attest(bytes: &[u8]) -> Result<Parsed, QuoteError> {
    if bytes.len() > MAX_ATTEST {
        return Err(QuoteError::TooLarge(bytes.len()));
    }
    if bytes.len() < 4
        || u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) != TPM_GENERATED_VALUE
    {
        return Err(QuoteError::Malformed("no TPM_GENERATED_VALUE".into()));
    }
    let (a, rest) =
        TpmsAttest::unmarshal(bytes).map_err(|e| QuoteError::Malformed(e.to_string()))?;
    if !rest.is_empty() {
        return Err(QuoteError::Malformed(format!(
            "{} bytes after it",
            rest.len()
        )));
    }
    if a.attest_type != TpmSt::AttestQuote {
        return Err(QuoteError::NotAQuote);
    }
    let TpmuAttest::Quote(q) = &a.attested else {
        return Err(QuoteError::NotAQuote);
    };
    Ok(Parsed {
        extra_data: a.extra_data.to_vec(),
        clock: a.clock_info.clock.into(),
        reset_count: a.clock_info.reset_count.into(),
        restart_count: a.clock_info.restart_count.into(),
        selection: q
            .pcr_select
            .iter()
            .map(|s| (s.hash.value(), s.pcr_select.to_vec()))
            .collect(),
        pcr_digest: q.pcr_digest.to_vec(),
    })
}

/// Checks `quote` as node `key`'s answer over `nonce`, its PCRs one of the pinned `images`
/// with a clean ratchet.
pub fn verify_quote(
    key: &AttestationKey,
    quote: &Quote,
    nonce: &[u8; 32],
    images: &[PcrValue],
) -> Result<Attested, QuoteError> {
    if quote.attest.len() > MAX_ATTEST {
        return Err(QuoteError::TooLarge(quote.attest.len()));
    }
    let sig = Signature::from_slice(&quote.signature).map_err(|_| QuoteError::Signature)?;
    key.verifying_key()
        .verify(&quote.attest, &sig)
        .map_err(|_| QuoteError::Signature)?;
    let p = parse_attest(&quote.attest)?;
    if p.extra_data != nonce {
        return Err(QuoteError::Nonce);
    }
    if p.selection != [(pcr::SHA256_ALG, pcr::SELECT.to_vec())] {
        return Err(QuoteError::Selection);
    }
    let image = match pcr::classify(&p.pcr_digest, images) {
        PcrState::Clean(n) => n,
        PcrState::Ratcheted(_) => return Err(QuoteError::RatchetSet),
        PcrState::NotPinned => return Err(QuoteError::NotPinned),
    };
    Ok(Attested {
        image,
        clock: p.clock,
        reset_count: p.reset_count,
        restart_count: p.restart_count,
    })
}
