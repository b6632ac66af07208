//! Quotes made in software, as a TPM makes them, signed by any P-256 key: for tests, the
//! simulation and the fuzz corpus. A quote made here verifies only under the key that
//! signed it, so this forges nothing a peer would take from a node with a pinned TPM key.

use p256::ecdsa::signature::Signer;
use p256::ecdsa::{Signature, SigningKey};
use tpm2_protocol::data::{
    Tpm2bData, Tpm2bDigest, Tpm2bName, TpmAlgId, TpmSt, TpmlPcrSelection, TpmsAttest,
    TpmsClockInfo, TpmsPcrSelection, TpmsQuoteInfo, TpmuAttest,
};
use tpm2_protocol::{TpmMarshal, TpmWriter};

use crate::quote::{MAX_ATTEST, Quote};

/// What to put in a made-up quote.
#[derive(Debug, Clone)]
pub struct Fields {
    pub nonce: Vec<u8>,
    /// (hash algorithm, PCR bitmap) per bank.
    pub selection: Vec<(u16, Vec<u8>)>,
    pub pcr_digest: Vec<u8>,
    pub clock: u64,
    pub reset_count: u32,
    pub restart_count: u32,
    /// TPM_ST_ATTEST_QUOTE unless changed.
    pub kind: TpmSt,
}

impl Fields {
    /// A quote over PCRs 4 and 15 with these values.
    pub fn quote(nonce: &[u8; 32], image: &[u8; 32], ratchet: &[u8; 32]) -> Self {
        Fields {
            nonce: nonce.to_vec(),
            selection: vec![(crate::pcr::SHA256_ALG, crate::pcr::SELECT.to_vec())],
            pcr_digest: crate::pcr::quote_digest(image, ratchet).to_vec(),
            clock: 1000,
            reset_count: 1,
            restart_count: 0,
            kind: TpmSt::AttestQuote,
        }
    }
}

/// The `TPMS_ATTEST` bytes of `f`; None if a field is out of what the structure holds.
pub fn attest_bytes(f: &Fields) -> Option<Vec<u8>> {
    let mut extra = Tpm2bData::default();
    extra.try_extend_from_slice(&f.nonce).ok()?;
    let mut sel = TpmlPcrSelection::default();
    for (alg, bits) in &f.selection {
        sel.try_push(TpmsPcrSelection {
            hash: TpmAlgId::try_from(*alg).ok()?,
            pcr_select: bits[..].try_into().ok()?,
        })
        .ok()?;
    }
    let mut digest = Tpm2bDigest::default();
    digest.try_extend_from_slice(&f.pcr_digest).ok()?;
    let mut name = Tpm2bName::default();
    name.try_extend_from_slice(&[0, 0x0B]).ok()?;
    name.try_extend_from_slice(&[0x5A; 32]).ok()?;
    let a = TpmsAttest {
        attest_type: f.kind,
        qualified_signer: name,
        extra_data: extra,
        clock_info: TpmsClockInfo {
            clock: f.clock.into(),
            reset_count: f.reset_count.into(),
            restart_count: f.restart_count.into(),
            safe: true.into(),
        },
        firmware_version: 0x2023_0101u64.into(),
        attested: TpmuAttest::Quote(TpmsQuoteInfo {
            pcr_select: sel,
            pcr_digest: digest,
        }),
    };
    let mut buf = vec![0u8; MAX_ATTEST * 4];
    let mut w = TpmWriter::new(&mut buf);
    a.marshal(&mut w).ok()?;
    let len = w.len();
    buf.truncate(len);
    Some(buf)
}

/// `attest` signed by `key`, as a TPM signs a quote (ECDSA P-256 over SHA-256).
pub fn sign(key: &SigningKey, attest: Vec<u8>) -> Quote {
    let sig: Signature = key.sign(&attest);
    let mut signature = [0u8; 64];
    signature.copy_from_slice(&sig.to_bytes());
    Quote { attest, signature }
}
