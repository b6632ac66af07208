//! Key newtypes that validate at the edge: a value of these types is always well formed.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use ed25519_dalek::{SigningKey, VerifyingKey};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Why a key's text is not a key of the kind expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyTextError {
    #[error("key is not valid base64")]
    Base64,
    #[error("key must be 32 bytes, got {0}")]
    Length(usize),
    #[error("not a valid ed25519 public key")]
    NotEd25519,
    /// The file's label line names another kind.
    #[error("this is {}, expected {}", .found.with_article(), .expected.with_article())]
    WrongKind { found: KeyKind, expected: KeyKind },
    #[error("no key found (expected {})", .0.with_article())]
    Missing(KeyKind),
    #[error("more than one key line (expected {})", .0.with_article())]
    SeveralLines(KeyKind),
}

/// Decode standard base64 into exactly 32 bytes.
pub fn decode_key32(text: &str) -> Result<[u8; 32], KeyTextError> {
    let bytes = B64.decode(text.trim()).map_err(|_| KeyTextError::Base64)?;
    <[u8; 32]>::try_from(bytes.as_slice()).map_err(|_| KeyTextError::Length(bytes.len()))
}

pub fn encode(bytes: &[u8]) -> String {
    B64.encode(bytes)
}

/// What a key file holds. All five are 32 bytes of base64, so a file says which it is on a
/// label line (`# tyd node secret key`); a mix-up (a node's secret key offered as its public
/// key, a WireGuard key offered for signing) is refused with what was expected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    /// ed25519 seed: signs policies and maintenance windows.
    OperatorSecret,
    OperatorPublic,
    /// WireGuard (X25519) private key.
    NodeSecret,
    NodePublic,
    /// ed25519 seed: a master's admission key, signs only its membership.
    AdmissionSecret,
}

impl KeyKind {
    const ALL: [KeyKind; 5] = [
        KeyKind::OperatorSecret,
        KeyKind::OperatorPublic,
        KeyKind::NodeSecret,
        KeyKind::NodePublic,
        KeyKind::AdmissionSecret,
    ];

    fn label(self) -> &'static str {
        match self {
            KeyKind::OperatorSecret => "operator secret key",
            KeyKind::OperatorPublic => "operator public key",
            KeyKind::NodeSecret => "node secret key",
            KeyKind::NodePublic => "node public key",
            KeyKind::AdmissionSecret => "admission secret key",
        }
    }

    /// "an operator secret key", "a node public key".
    pub fn with_article(self) -> String {
        let article = if self.label().starts_with(['a', 'o']) {
            "an"
        } else {
            "a"
        };
        format!("{article} {}", self.label())
    }

    /// The label line `tyd keygen` writes first.
    pub fn label_line(self) -> String {
        format!("# tyd {}", self.label())
    }

    /// A whole key file: the label line, then the key.
    pub fn file_text(self, key: &[u8; 32]) -> String {
        format!("{}\n{}\n", self.label_line(), encode(key))
    }

    /// The kind a line labels, if it is a label line.
    fn of_label(line: &str) -> Option<KeyKind> {
        Self::ALL.into_iter().find(|k| line == k.label_line())
    }
}

impl fmt::Display for KeyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

/// The kind a key file's label line names, if it has one.
pub fn labelled_kind(text: &str) -> Option<KeyKind> {
    text.lines().map(str::trim).find_map(KeyKind::of_label)
}

/// A secret key file that cannot be used: unreadable or unsafe (the file error names it), or
/// not a key of the expected kind.
#[derive(Debug, thiserror::Error)]
pub enum SecretKeyError {
    #[error("{0}")]
    File(#[from] crate::fsutil::FileError),
    #[error("{path}: {why}")]
    Key { path: String, why: KeyTextError },
}

/// Reads a secret key file of `kind`: refused if group or others can read it, if it is not a
/// regular file, or if it is labelled as another kind. The text is wiped after parsing.
pub fn read_secret_key(
    path: &std::path::Path,
    kind: KeyKind,
) -> Result<zeroize::Zeroizing<[u8; 32]>, SecretKeyError> {
    let text = zeroize::Zeroizing::new(crate::fsutil::read_secret(path)?);
    parse_key_file(&text, kind)
        .map(zeroize::Zeroizing::new)
        .map_err(|why| SecretKeyError::Key {
            path: path.display().to_string(),
            why,
        })
}

/// Reads a key file's text as `expected`: `#` comment lines, at most one label line, and one
/// base64 line of 32 bytes. A file labelled as another kind is refused, naming both; an
/// unlabelled one (`wg genkey` output, keys written by an older tyd) is taken as `expected`.
pub fn parse_key_file(text: &str, expected: KeyKind) -> Result<[u8; 32], KeyTextError> {
    if let Some(found) = labelled_kind(text)
        && found != expected
    {
        return Err(KeyTextError::WrongKind { found, expected });
    }
    let mut lines = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'));
    let key = lines.next().ok_or(KeyTextError::Missing(expected))?;
    if lines.next().is_some() {
        return Err(KeyTextError::SeveralLines(expected));
    }
    decode_key32(key)
}

/// A WireGuard (Curve25519) public key, base64 on the wire as `wg` prints it.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct WgPublicKey([u8; 32]);

/// The bytes' order, compared as two big-endian 128-bit halves instead of through `memcmp`:
/// netguard's peer maps are keyed by public key, and sorting 10,000 of them was 0.6 ms.
impl Ord for WgPublicKey {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        let halves = |k: &[u8; 32]| {
            let (hi, lo) = k.split_at(16);
            let half = |h: &[u8]| u128::from_be_bytes(h.try_into().unwrap_or([0; 16]));
            (half(hi), half(lo))
        };
        halves(&self.0).cmp(&halves(&other.0))
    }
}

impl PartialOrd for WgPublicKey {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

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
    type Err = KeyTextError;
    fn from_str(s: &str) -> Result<Self, KeyTextError> {
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

    /// What a joining node pins (`tyd join --operator`): the key's whole BLAKE3 hash.
    pub fn fingerprint(&self) -> String {
        format!("blake3:{}", blake3::hash(self.0.as_bytes()).to_hex())
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
    type Err = KeyTextError;
    fn from_str(s: &str) -> Result<Self, KeyTextError> {
        let bytes = decode_key32(s)?;
        VerifyingKey::from_bytes(&bytes)
            .map(Self)
            .map_err(|_| KeyTextError::NotEd25519)
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

    proptest::proptest! {
        /// The halves comparison is the bytes' lexicographic order (what the derived order
        /// was), keys sharing any prefix included.
        #[test]
        fn public_keys_order_as_their_bytes(
            a in proptest::array::uniform32(0u8..4),
            b in proptest::array::uniform32(0u8..4),
            cut in 0usize..32,
        ) {
            let mut b = b;
            b[..cut].copy_from_slice(&a[..cut]);
            let (ka, kb) = (WgPublicKey::from_bytes(a), WgPublicKey::from_bytes(b));
            proptest::prop_assert_eq!(ka.cmp(&kb), a.cmp(&b));
            proptest::prop_assert_eq!(ka.partial_cmp(&kb), Some(a.cmp(&b)));
        }
    }

    /// Regression (issue 9 item 4): keys had no type. A node's secret key given as
    /// `tyd node add --public-key-file` went into the policy (and every drone image); a
    /// WireGuard key given to `tyd policy sign --key` signed. Labelled files are told apart.
    #[test]
    fn a_key_of_another_kind_is_refused_and_an_unlabelled_one_is_taken_as_asked() {
        let k = [5u8; 32];
        let secret = KeyKind::NodeSecret.file_text(&k);
        assert_eq!(parse_key_file(&secret, KeyKind::NodeSecret), Ok(k));
        assert_eq!(
            parse_key_file(&secret, KeyKind::NodePublic)
                .unwrap_err()
                .to_string(),
            "this is a node secret key, expected a node public key"
        );
        assert_eq!(
            parse_key_file(&secret, KeyKind::OperatorSecret)
                .unwrap_err()
                .to_string(),
            "this is a node secret key, expected an operator secret key"
        );
        // `wg genkey` output: one bare line.
        let raw = format!("{}\n", encode(&k));
        for kind in KeyKind::ALL {
            assert_eq!(parse_key_file(&raw, kind), Ok(k));
        }
        assert!(parse_key_file("# just a comment\n", KeyKind::NodePublic).is_err());
        let two = format!("{raw}{raw}");
        assert!(parse_key_file(&two, KeyKind::NodePublic).is_err());
    }

    #[test]
    fn wg_key_roundtrip_and_errors() {
        let k = WgPublicKey::from_bytes([7; 32]);
        assert_eq!(k.to_base64().parse::<WgPublicKey>(), Ok(k));
        assert_eq!(
            "abc".parse::<WgPublicKey>().unwrap_err().to_string(),
            "key is not valid base64"
        );
        assert_eq!(
            encode(&[1; 16])
                .parse::<WgPublicKey>()
                .unwrap_err()
                .to_string(),
            "key must be 32 bytes, got 16"
        );
    }
}
