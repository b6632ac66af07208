//! Attestation between peers (issue 29): each heartbeat carries the sender's fresh challenge;
//! a quote message, once per quote interval to each peer, carries the sender's latest TPM
//! quote with the receiver's proof that its challenge is covered. Bytes as base64; every
//! length is bounded here, before anything else reads them.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The largest `TPMS_ATTEST` carried, and the longest inclusion proof (in hashes): what the
/// check accepts, no more.
pub use attest::MAX_ATTEST;
pub use attest::nonce::MAX_PROOF;

/// A random challenge, new in each heartbeat: the receiver's next quote covers it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct WireChallenge(#[serde(with = "fixed")] pub attest::Challenge);

/// A node's latest quote, to one peer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuoteMessage {
    /// The sender (it must be the node whose tunnel address sent it).
    pub node: u16,
    /// The boot it was made in (part of what the TPM signed).
    pub boot_id: String,
    pub quote: WireQuote,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WireQuote {
    /// The TPM's `TPMS_ATTEST`.
    #[serde(with = "bounded")]
    pub attest: Vec<u8>,
    /// ECDSA P-256, `r || s`.
    #[serde(with = "fixed")]
    pub sig: [u8; 64],
    /// The receiver's challenge in the Merkle root the quote is made over: the receiver makes
    /// the root from it and its own challenge.
    pub proof: WireInclusion,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WireInclusion {
    /// The seq of the receiver's heartbeat whose challenge is covered.
    pub seq: u64,
    pub index: u16,
    pub leaves: u16,
    /// The proof's hashes, concatenated.
    #[serde(with = "hashes")]
    pub path: Vec<[u8; 32]>,
}

fn decode<'de, D: Deserializer<'de>>(d: D, max: usize) -> Result<Vec<u8>, D::Error> {
    let text = String::deserialize(d)?;
    if text.len() > max.div_ceil(3) * 4 {
        return Err(serde::de::Error::custom(format!(
            "base64 of {} characters is over the {max}-byte limit",
            text.len()
        )));
    }
    STANDARD
        .decode(text.as_bytes())
        .map_err(|_| serde::de::Error::custom("not base64"))
}

mod fixed {
    use super::*;

    pub fn serialize<S: Serializer, const N: usize>(v: &[u8; N], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD.encode(v))
    }

    pub fn deserialize<'de, D: Deserializer<'de>, const N: usize>(
        d: D,
    ) -> Result<[u8; N], D::Error> {
        let bytes = decode(d, N)?;
        <[u8; N]>::try_from(bytes.as_slice())
            .map_err(|_| serde::de::Error::custom(format!("{} bytes, expected {N}", bytes.len())))
    }
}

mod bounded {
    use super::*;

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD.encode(v))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let bytes = decode(d, MAX_ATTEST)?;
        if bytes.len() > MAX_ATTEST {
            return Err(serde::de::Error::custom("quote over the limit"));
        }
        Ok(bytes)
    }
}

mod hashes {
    use super::*;

    pub fn serialize<S: Serializer>(v: &[[u8; 32]], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD.encode(v.concat()))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<[u8; 32]>, D::Error> {
        let bytes = decode(d, MAX_PROOF * 32)?;
        if bytes.len() % 32 != 0 || bytes.len() > MAX_PROOF * 32 {
            return Err(serde::de::Error::custom("a proof is whole 32-byte hashes"));
        }
        Ok(bytes
            .chunks_exact(32)
            .map(|c| {
                let mut h = [0u8; 32];
                h.copy_from_slice(c);
                h
            })
            .collect())
    }
}
