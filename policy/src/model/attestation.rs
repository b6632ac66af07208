//! `[attestation]`: which nodes must prove their boot with TPM quotes to every peer, which
//! images they may have booted (PCR 4 as `drone build --uki` predicts it), and how fresh a
//! quote must be. A node's attestation key is pinned in its entry (`attestation_key`).

use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::{Role, duration};

pub use attest::{AttestationKey, PcrValue};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Attestation {
    /// Nodes with one of these roles must attest, or are quarantined ("not attested").
    /// Empty (the default): nobody.
    #[serde(default)]
    pub require: Vec<Role>,
    /// The PCR 4 values of the images nodes may run, hex (several while an upgrade rolls).
    #[serde(default, with = "pcr_list")]
    pub images: Vec<PcrValue>,
    /// How often a node quotes (its TPM is asked no more often).
    #[serde(default = "default_interval", with = "duration")]
    pub interval: Duration,
    /// How old the last valid quote over a peer's own challenge may be before that peer
    /// quarantines the node.
    #[serde(default = "default_within", with = "duration")]
    pub within: Duration,
}

impl Default for Attestation {
    fn default() -> Self {
        Self {
            require: Vec::new(),
            images: Vec::new(),
            interval: default_interval(),
            within: default_within(),
        }
    }
}

impl Attestation {
    pub fn is_default(&self) -> bool {
        self == &Self::default()
    }

    /// Must a node with these roles attest?
    pub fn required_of(&self, roles: &[Role]) -> bool {
        roles.iter().any(|r| self.require.contains(r))
    }
}

fn default_interval() -> Duration {
    Duration::from_secs(2)
}
fn default_within() -> Duration {
    Duration::from_secs(8)
}

mod pcr_list {
    use super::*;

    pub fn serialize<S: Serializer>(v: &[PcrValue], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(v.iter().map(hex::encode))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<PcrValue>, D::Error> {
        Vec::<String>::deserialize(d)?
            .iter()
            .map(|t| parse_pcr(t).map_err(serde::de::Error::custom))
            .collect()
    }
}

/// A SHA-256 PCR value from 64 hex digits.
pub fn parse_pcr(text: &str) -> Result<PcrValue, String> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(text, &mut out)
        .map_err(|_| format!("{text:?} is not a SHA-256 PCR value (64 hex digits)"))?;
    Ok(out)
}

/// A node's `attestation_key`, base64 in the file.
pub(crate) mod opt_key {
    use super::*;

    pub fn serialize<S: Serializer>(k: &Option<AttestationKey>, s: S) -> Result<S::Ok, S::Error> {
        match k {
            Some(k) => s.serialize_str(&k.to_string()),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<AttestationKey>, D::Error> {
        let text = String::deserialize(d)?;
        text.parse()
            .map(Some)
            .map_err(|e| serde::de::Error::custom(format!("attestation_key: {e}")))
    }
}
