//! A node's attestation key: the public part of an ECC P-256 signing key that its TPM makes
//! from a fixed template in the endorsement hierarchy (the same TPM makes the same key at
//! every boot, and the private part never leaves it). Written as base64 of the SEC1
//! uncompressed point, as the policy and the join request carry it.

use std::fmt;
use std::str::FromStr;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use p256::EncodedPoint;
use p256::ecdsa::VerifyingKey;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyError {
    #[error("attestation key is not base64")]
    NotBase64,
    #[error("attestation key is {0} bytes, expected 65 (an uncompressed P-256 point)")]
    Length(usize),
    #[error("attestation key is not a point on P-256")]
    NotOnCurve,
}

/// The public attestation key of one node.
#[derive(Clone, PartialEq, Eq)]
pub struct AttestationKey(VerifyingKey);

impl AttestationKey {
    /// From the point's coordinates as the TPM gives them (each at most 32 bytes; a TPM may
    /// leave out leading zeros).
    pub fn from_xy(x: &[u8], y: &[u8]) -> Result<Self, KeyError> {
        let pad = |v: &[u8]| -> Result<[u8; 32], KeyError> {
            if v.len() > 32 {
                return Err(KeyError::Length(v.len()));
            }
            let mut out = [0u8; 32];
            out[32 - v.len()..].copy_from_slice(v);
            Ok(out)
        };
        let (x, y) = (pad(x)?, pad(y)?);
        let point = EncodedPoint::from_affine_coordinates(&x.into(), &y.into(), false);
        VerifyingKey::from_encoded_point(&point)
            .map(Self)
            .map_err(|_| KeyError::NotOnCurve)
    }

    pub fn verifying_key(&self) -> &VerifyingKey {
        &self.0
    }

    /// The SEC1 uncompressed point (65 bytes).
    pub fn to_bytes(&self) -> Vec<u8> {
        self.0.to_encoded_point(false).as_bytes().to_vec()
    }
}

impl From<VerifyingKey> for AttestationKey {
    fn from(k: VerifyingKey) -> Self {
        Self(k)
    }
}

impl FromStr for AttestationKey {
    type Err = KeyError;

    fn from_str(s: &str) -> Result<Self, KeyError> {
        let bytes = STANDARD.decode(s.trim()).map_err(|_| KeyError::NotBase64)?;
        if bytes.len() != 65 || bytes[0] != 4 {
            return Err(KeyError::Length(bytes.len()));
        }
        VerifyingKey::from_sec1_bytes(&bytes)
            .map(Self)
            .map_err(|_| KeyError::NotOnCurve)
    }
}

impl fmt::Display for AttestationKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&STANDARD.encode(self.to_bytes()))
    }
}

/// Written as the policy writes it: base64 of the SEC1 point (a master's journal of
/// admissions keeps it).
impl serde::Serialize for AttestationKey {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for AttestationKey {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = std::borrow::Cow::<'de, str>::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

impl fmt::Debug for AttestationKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AttestationKey({self})")
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use p256::ecdsa::SigningKey;

    #[test]
    fn a_key_round_trips_as_text_and_junk_is_refused_plainly() {
        let sk = SigningKey::from_slice(&[7u8; 32]).unwrap();
        let k = AttestationKey::from(*sk.verifying_key());
        let text = k.to_string();
        assert_eq!(text.len(), 88);
        assert_eq!(text.parse::<AttestationKey>().unwrap(), k);
        let p = sk.verifying_key().to_encoded_point(false);
        assert_eq!(
            AttestationKey::from_xy(p.x().unwrap(), p.y().unwrap()).unwrap(),
            k
        );
        assert_eq!("!!".parse::<AttestationKey>(), Err(KeyError::NotBase64));
        assert_eq!("AAAA".parse::<AttestationKey>(), Err(KeyError::Length(3)));
        let mut off = k.to_bytes();
        off[64] ^= 1;
        assert_eq!(
            STANDARD.encode(off).parse::<AttestationKey>(),
            Err(KeyError::NotOnCurve)
        );
        assert_eq!(
            AttestationKey::from_xy(&[1; 33], &[1; 32]),
            Err(KeyError::Length(33))
        );
    }
}
