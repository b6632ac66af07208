//! TPM quotes between peers (issue 29): every peer checks every other peer's quote, with no
//! central verifier.
//!
//! - [`key`]: a node's attestation key, as the policy pins it.
//! - [`pcr`]: which PCRs are quoted, what a pinned image makes them, and the ratchet PCR that
//!   certaintyd extends when integrity is lost.
//! - [`nonce`]: the qualifying data a quote is made over: a Merkle root of its peers'
//!   challenges, and each peer's proof of its own.
//! - [`quote`]: parsing and checking a quote (pure; what a member sends reaches it).
//! - [`tpm`]: the thin shell that talks to a TPM (a device or swtpm's socket).

pub mod forge;
pub mod fuzzing;
pub mod key;
pub mod nonce;
pub mod pcr;
pub mod quote;
pub mod tpm;

pub use key::{AttestationKey, KeyError};
pub use nonce::{
    CHALLENGE_LEN, Challenge, Challenges, Covered, Inclusion, included, qualifying_data, root_of,
};
pub use pcr::{IMAGE_PCR, PcrValue, RATCHET_PCR};
pub use quote::{Attested, MAX_ATTEST, Quote, QuoteError, SIGNATURE_LEN, verify_quote};
