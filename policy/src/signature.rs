//! Detached ed25519 signatures over exact file bytes, and the [`Verified`] proof type.
//!
//! `Verified<T>` has no public constructor: the only way to get one is to pass the bytes
//! through signature verification, so daemons cannot act on an unverified policy by accident.

use std::fmt;
use std::ops::Deref;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use ed25519_dalek::{Signature, Signer as _, SigningKey};
use jiff::Timestamp;

use crate::blocks::NodeBlocks;
use crate::keys::OperatorPublicKey;
use crate::model::Policy;
use crate::parse::{Invalid, parse_policy, parse_policy_reusing};

/// The operator keys a node pins; a signature by any one of them is accepted.
#[derive(Debug, Clone, Default)]
pub struct TrustedKeys(Vec<OperatorPublicKey>);

/// Why a trust file holds no usable key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TrustFileError {
    #[error("this is {}, expected operator public keys", .0.with_article())]
    WrongKind(crate::keys::KeyKind),
    #[error("line {line}: {error}")]
    Line {
        line: usize,
        error: crate::keys::KeyTextError,
    },
    #[error("no operator public key found")]
    Empty,
}

impl TrustedKeys {
    pub fn new(keys: Vec<OperatorPublicKey>) -> Self {
        Self(keys)
    }

    /// One base64 key a line; blank lines and `#` comments are ignored. A file labelled as
    /// another kind of key (a node's, or a secret) is refused.
    pub fn parse(text: &str) -> Result<Self, TrustFileError> {
        if let Some(kind) = crate::keys::labelled_kind(text)
            && kind != crate::keys::KeyKind::OperatorPublic
        {
            return Err(TrustFileError::WrongKind(kind));
        }
        let mut keys = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let key = line
                .parse::<OperatorPublicKey>()
                .map_err(|error| TrustFileError::Line { line: n + 1, error })?;
            keys.push(key);
        }
        if keys.is_empty() {
            return Err(TrustFileError::Empty);
        }
        Ok(Self(keys))
    }

    pub fn keys(&self) -> &[OperatorPublicKey] {
        &self.0
    }
}

/// A value whose source bytes carried a valid signature by a trusted key.
#[derive(Clone)]
pub struct Verified<T> {
    value: T,
    digest: blake3::Hash,
    signer: OperatorPublicKey,
}

impl<T> Verified<T> {
    /// BLAKE3 of the exact signed bytes: what the rollback store records.
    pub fn digest_hex(&self) -> String {
        self.digest.to_hex().to_string()
    }

    pub fn signer(&self) -> &OperatorPublicKey {
        &self.signer
    }
}

impl<T> Deref for Verified<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.value
    }
}

impl<T: fmt::Debug> fmt::Debug for Verified<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Verified")
            .field("signer", &self.signer.key_id())
            .field("digest", &self.digest_hex())
            .field("value", &self.value)
            .finish()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("{file}: signature is not base64 of 64 bytes")]
    MalformedSignature { file: String },
    #[error("{file}: signature does not match any of the {trusted} trusted operator key(s)")]
    Untrusted { file: String, trusted: usize },
    /// The signature names a trusted signer but does not verify: the bytes changed after
    /// signing (tampered with, or damaged).
    #[error(
        "{file}: signature does not match: the file was changed after trusted operator key {key_id} signed it"
    )]
    Tampered { file: String, key_id: String },
    /// The signature names a signer this node does not trust.
    #[error(
        "{file}: signed by operator key {key_id}, which is not one of the {trusted} trusted here"
    )]
    UntrustedSigner {
        file: String,
        key_id: String,
        trusted: usize,
    },
    #[error("no trusted operator key was given")]
    NoTrustedKeys,
    #[error("{0}")]
    Invalid(#[from] Invalid),
    #[error("{file}: {reason}")]
    Content { file: String, reason: String },
}

/// What the second signature signs: this context, then the BLAKE3 digest of the file. The
/// NUL keeps it from being any text file's bytes (TOML and JSON forbid NUL), so no signature
/// over a whole file is ever a signature over a digest, or the reverse.
const DIGEST_CONTEXT: &[u8] = b"tyd signed file, ed25519 over blake3\0";

/// The message the digest signature covers.
fn digest_message(digest: &blake3::Hash) -> Vec<u8> {
    [DIGEST_CONTEXT, digest.as_bytes().as_slice()].concat()
}

/// The comment that carries the digest signature.
const DIGEST_LINE: &str = "blake3 ";

/// The text of a detached signature file: base64 of an ed25519 signature over the exact bytes
/// and a newline; a comment naming the signer's key id; and a comment `# blake3 <base64>`, an
/// ed25519 signature by the same key over the file's BLAKE3 digest ([`DIGEST_CONTEXT`]).
///
/// Why two: ed25519 hashes the whole message with SHA-512, 3.5 ms for a 10,000-node policy,
/// while a verifier computes the BLAKE3 digest anyway (the rollback store records it), and a
/// signature over it checks in about 0.05 ms. Versions that predate the digest signature read
/// the second comment as a comment and check the first line, so a cluster mid-upgrade keeps
/// accepting policies. The comments are not signed: one removed or garbled only sends a
/// verifier back to the first line.
pub fn sign(bytes: &[u8], key: &SigningKey) -> String {
    let digest = blake3::hash(bytes);
    format!(
        "{}\n# signer {}\n# {DIGEST_LINE}{}\n",
        B64.encode(key.sign(bytes).to_bytes()),
        OperatorPublicKey::from(key).key_id(),
        B64.encode(key.sign(&digest_message(&digest)).to_bytes()),
    )
}

/// A signature file, decoded.
struct Decoded {
    /// Over the exact bytes (the first line; every version checks it).
    whole: Signature,
    /// Over the BLAKE3 digest, if the file carries a well-formed one.
    digest: Option<Signature>,
    /// The signer's key id, if the file names one.
    signer: Option<String>,
}

fn signature_from_base64(text: &str) -> Option<Signature> {
    let raw = B64.decode(text.trim()).ok()?;
    let raw: [u8; 64] = raw.as_slice().try_into().ok()?;
    Some(Signature::from_bytes(&raw))
}

fn decode_signature(file: &str, text: &[u8]) -> Result<Decoded, VerifyError> {
    let malformed = || VerifyError::MalformedSignature {
        file: file.to_string(),
    };
    let text = std::str::from_utf8(text).map_err(|_| malformed())?;
    let mut signer = None;
    let mut digest = None;
    let mut sig = None;
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        match line.strip_prefix('#').map(str::trim) {
            Some(comment) => {
                if let Some(id) = comment.strip_prefix("signer ") {
                    let id = id.trim();
                    if id.len() == 16 && id.bytes().all(|b| b.is_ascii_hexdigit()) {
                        signer = Some(id.to_ascii_lowercase());
                    }
                } else if let Some(b64) = comment.strip_prefix(DIGEST_LINE) {
                    // A garbled one is ignored, like any comment: the first line decides.
                    digest = signature_from_base64(b64);
                }
            }
            None if sig.is_none() => sig = Some(line),
            None => return Err(malformed()),
        }
    }
    let whole = signature_from_base64(sig.ok_or_else(malformed)?).ok_or_else(malformed)?;
    Ok(Decoded {
        whole,
        digest,
        signer,
    })
}

/// The trusted key that signed `bytes`: the digest signature is tried with every key first
/// (cheap), then the signature over the whole bytes (SHA-512 of all of them, per key).
fn find_signer(
    trust: &TrustedKeys,
    bytes: &[u8],
    digest: &blake3::Hash,
    sig: &Decoded,
) -> Option<OperatorPublicKey> {
    if let Some(d) = &sig.digest {
        let message = digest_message(digest);
        if let Some(k) = trust
            .0
            .iter()
            .find(|k| k.verifying_key().verify_strict(&message, d).is_ok())
        {
            return Some(*k);
        }
    }
    trust
        .0
        .iter()
        .find(|k| k.verifying_key().verify_strict(bytes, &sig.whole).is_ok())
        .copied()
}

/// Checks the signature first, then lets `parse` read the (now trusted) bytes.
pub fn verify_signed<T>(
    file: &str,
    bytes: &[u8],
    signature: &[u8],
    trust: &TrustedKeys,
    parse: impl FnOnce(&[u8]) -> Result<T, VerifyError>,
) -> Result<Verified<T>, VerifyError> {
    if trust.0.is_empty() {
        return Err(VerifyError::NoTrustedKeys);
    }
    let sig = decode_signature(&format!("{file}.sig"), signature)?;
    let digest = blake3::hash(bytes);
    let signer = find_signer(trust, bytes, &digest, &sig).ok_or_else(|| {
        let file = file.to_string();
        let trusted = trust.0.len();
        match sig.signer {
            Some(key_id) if trust.0.iter().any(|k| k.key_id() == key_id) => {
                VerifyError::Tampered { file, key_id }
            }
            Some(key_id) => VerifyError::UntrustedSigner {
                file,
                key_id,
                trusted,
            },
            None => VerifyError::Untrusted { file, trusted },
        }
    })?;
    let value = parse(bytes)?;
    Ok(Verified {
        value,
        digest,
        signer,
    })
}

/// The entry point daemons use: signature, then syntax, schema, validation and expiry.
pub fn verify_policy(
    file: &str,
    bytes: &[u8],
    signature: &[u8],
    trust: &TrustedKeys,
    now: Timestamp,
) -> Result<Verified<Policy>, VerifyError> {
    verify_signed(file, bytes, signature, trust, |b| {
        Ok(parse_policy(file, b, now)?)
    })
}

/// [`verify_policy`] for a daemon that verifies one policy after another: the `[[node]]`
/// blocks it accepted last are not parsed again ([`NodeBlocks`]).
pub fn verify_policy_reusing(
    file: &str,
    bytes: &[u8],
    signature: &[u8],
    trust: &TrustedKeys,
    now: Timestamp,
    blocks: &mut NodeBlocks,
) -> Result<Verified<Policy>, VerifyError> {
    verify_signed(file, bytes, signature, trust, |b| {
        Ok(parse_policy_reusing(file, b, now, blocks)?)
    })
}
