//! Key newtypes that validate at the edge: a value of these types is always well formed.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use ed25519_dalek::{SigningKey, VerifyingKey};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Decode standard base64 into exactly 32 bytes.
pub fn decode_key32(text: &str) -> Result<[u8; 32], String> {
    let bytes = B64
        .decode(text.trim())
        .map_err(|_| "key is not valid base64".to_string())?;
    <[u8; 32]>::try_from(bytes.as_slice())
        .map_err(|_| format!("key must be 32 bytes, got {}", bytes.len()))
}

pub fn encode(bytes: &[u8]) -> String {
    B64.encode(bytes)
}

/// A WireGuard (Curve25519) public key, base64 on the wire as `wg` prints it.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct WgPublicKey([u8; 32]);

impl WgPublicKey {
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// The public key of a WireGuard private key (X25519).
    pub fn from_secret(secret: &[u8; 32]) -> Self {
        let s = x25519_dalek::StaticSecret::from(*secret);
        Self(x25519_dalek::PublicKey::from(&s).to_bytes())
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    pub fn to_base64(&self) -> String {
        encode(&self.0)
    }
}

impl std::str::FromStr for WgPublicKey {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        decode_key32(s).map(Self)
    }
}

impl fmt::Display for WgPublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_base64())
    }
}

impl fmt::Debug for WgPublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "WgPublicKey({})", self.to_base64())
    }
}

impl Serialize for WgPublicKey {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_base64())
    }
}

impl<'de> Deserialize<'de> for WgPublicKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// An operator's ed25519 public key: signs policies and maintenance windows.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct OperatorPublicKey(VerifyingKey);

impl OperatorPublicKey {
    pub fn verifying_key(&self) -> &VerifyingKey {
        &self.0
    }

    pub fn to_base64(&self) -> String {
        encode(self.0.as_bytes())
    }

    /// A short, stable name for logs: the first 8 bytes of the key's BLAKE3 hash, in hex.
    pub fn key_id(&self) -> String {
        let hash = blake3::hash(self.0.as_bytes());
        hash.to_hex()[..16].to_string()
    }
}

impl From<VerifyingKey> for OperatorPublicKey {
    fn from(k: VerifyingKey) -> Self {
        Self(k)
    }
}

impl From<&SigningKey> for OperatorPublicKey {
    fn from(k: &SigningKey) -> Self {
        Self(k.verifying_key())
    }
}

impl std::str::FromStr for OperatorPublicKey {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bytes = decode_key32(s)?;
        VerifyingKey::from_bytes(&bytes)
            .map(Self)
            .map_err(|_| "not a valid ed25519 public key".to_string())
    }
}

impl fmt::Display for OperatorPublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_base64())
    }
}

impl fmt::Debug for OperatorPublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "OperatorPublicKey({})", self.key_id())
    }
}

impl Serialize for OperatorPublicKey {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_base64())
    }
}

impl<'de> Deserialize<'de> for OperatorPublicKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wg_key_roundtrip_and_errors() {
        let k = WgPublicKey::from_bytes([7; 32]);
        assert_eq!(k.to_base64().parse::<WgPublicKey>(), Ok(k));
        assert_eq!(
            "abc".parse::<WgPublicKey>().unwrap_err(),
            "key is not valid base64"
        );
        assert_eq!(
            encode(&[1; 16]).parse::<WgPublicKey>().unwrap_err(),
            "key must be 32 bytes, got 16"
        );
    }
}
