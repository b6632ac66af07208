//! The PCRs a quote covers, in the SHA-256 bank: PCR 4, where UEFI firmware measures the
//! unified kernel image it starts (the only PCR a peer can predict offline from the image),
//! and PCR 15, the ratchet: certaintyd extends it once with [`RATCHET_EVENT`] when the node
//! loses integrity, before any other action, and nothing takes that back until a reboot.

use sha2::{Digest, Sha256};

/// Where the firmware measures the image it boots.
pub const IMAGE_PCR: u8 = 4;
/// The one-way "integrity lost" flag.
pub const RATCHET_PCR: u8 = 15;

/// One SHA-256 PCR value.
pub type PcrValue = [u8; 32];

/// What certaintyd extends into the ratchet PCR (its SHA-256 is the extended digest).
pub const RATCHET_EVENT: &[u8] = b"tyd: integrity lost";

/// TPM_ALG_SHA256.
pub const SHA256_ALG: u16 = 0x000B;

/// The PCR bitmap of a quote: PCRs 4 and 15, three bytes (PCRs 0-23).
pub const SELECT: [u8; 3] = [1 << IMAGE_PCR, 1 << (RATCHET_PCR - 8), 0];

/// The digest certaintyd extends.
pub fn ratchet_digest() -> [u8; 32] {
    Sha256::digest(RATCHET_EVENT).into()
}

/// PCR_Extend as the TPM computes it: `new = SHA-256(old || digest)`.
pub fn extend(pcr: &PcrValue, digest: &[u8; 32]) -> PcrValue {
    let mut h = Sha256::new();
    h.update(pcr);
    h.update(digest);
    h.finalize().into()
}

/// The ratchet PCR after one "integrity lost" extend from reset.
pub fn ratcheted() -> PcrValue {
    extend(&[0; 32], &ratchet_digest())
}

/// The digest a quote carries for these PCR values (selected in index order).
pub fn quote_digest(image: &PcrValue, ratchet: &PcrValue) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(image);
    h.update(ratchet);
    h.finalize().into()
}

/// What a quote's PCR digest says, against the pinned images.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PcrState {
    /// Pinned image `n` (an index into the pins), ratchet clean.
    Clean(usize),
    /// Pinned image `n`, and the ratchet was extended: integrity was lost in this boot.
    Ratcheted(usize),
    /// None of the pinned images (or a ratchet extended otherwise).
    NotPinned,
}

pub fn classify(digest: &[u8], images: &[PcrValue]) -> PcrState {
    let ratchet = ratcheted();
    for (n, image) in images.iter().enumerate() {
        if digest == quote_digest(image, &[0; 32]) {
            return PcrState::Clean(n);
        }
        if digest == quote_digest(image, &ratchet) {
            return PcrState::Ratcheted(n);
        }
    }
    PcrState::NotPinned
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ratchet_is_told_apart_from_a_clean_boot_and_from_an_unpinned_image() {
        let img = [4u8; 32];
        let pins = [[9u8; 32], img];
        assert_eq!(
            classify(&quote_digest(&img, &[0; 32]), &pins),
            PcrState::Clean(1)
        );
        assert_eq!(
            classify(&quote_digest(&img, &ratcheted()), &pins),
            PcrState::Ratcheted(1)
        );
        let twice = extend(&ratcheted(), &ratchet_digest());
        assert_eq!(
            classify(&quote_digest(&img, &twice), &pins),
            PcrState::NotPinned
        );
        assert_eq!(
            classify(&quote_digest(&[5; 32], &[0; 32]), &pins),
            PcrState::NotPinned
        );
        assert_eq!(classify(b"short", &pins), PcrState::NotPinned);
    }
}
