//! `tyd keygen`: operator signing keys and node WireGuard keys.

use std::path::{Path, PathBuf};

use ed25519_dalek::SigningKey;
use policy::fsutil::{self, atomic_write, write_new_secret};
use policy::keys::{KeyKind, parse_key_file};
use policy::{OperatorPublicKey, WgPublicKey};
use rand_core::{OsRng, RngCore};
use zeroize::Zeroizing;

use crate::failure::{CliResult, Exit, Failure};

pub fn pub_path(secret: &Path) -> PathBuf {
    let mut name = secret.as_os_str().to_owned();
    name.push(".pub");
    PathBuf::from(name)
}

/// Writes a new operator key pair: `out` (secret, 0600) and `out.pub`.
pub fn operator(out: &Path) -> CliResult<OperatorPublicKey> {
    let key = SigningKey::generate(&mut OsRng);
    let secret = Zeroizing::new(KeyKind::OperatorSecret.file_text(key.as_bytes()));
    write_new_secret(out, secret.as_bytes())?;
    let public = OperatorPublicKey::from(&key);
    let text = KeyKind::OperatorPublic.file_text(public.verifying_key().as_bytes());
    atomic_write(&pub_path(out), text.as_bytes(), 0o644)?;
    Ok(public)
}

/// Writes a new admission key (a master's: it signs only that master's membership) to `out`
/// (0600, never over an existing file), and returns it.
pub fn admission(out: &Path) -> CliResult<SigningKey> {
    let key = SigningKey::generate(&mut OsRng);
    let secret = Zeroizing::new(KeyKind::AdmissionSecret.file_text(key.as_bytes()));
    write_new_secret(out, secret.as_bytes())?;
    Ok(key)
}

/// Writes a new WireGuard private key to `out` (0600) and its public key to `out.pub`.
pub fn node(out: &Path) -> CliResult<WgPublicKey> {
    let mut secret = Zeroizing::new([0u8; 32]);
    OsRng.fill_bytes(secret.as_mut());
    // Clamp as `wg genkey` does, so the file is byte-identical in form to wg's.
    secret[0] &= 248;
    secret[31] = (secret[31] & 127) | 64;
    let public = WgPublicKey::from_secret(&secret);
    let text = Zeroizing::new(KeyKind::NodeSecret.file_text(&secret));
    write_new_secret(out, text.as_bytes())?;
    let text = KeyKind::NodePublic.file_text(public.as_bytes());
    atomic_write(&pub_path(out), text.as_bytes(), 0o644)?;
    Ok(public)
}

/// Reads an operator secret key, refusing one readable by group or others, or another kind.
pub fn load_operator(path: &Path) -> CliResult<SigningKey> {
    let seed = Zeroizing::new(load_secret_key(path, KeyKind::OperatorSecret)?);
    Ok(SigningKey::from_bytes(&seed))
}

/// Reads a node's WireGuard private key (as `tyd keygen node` or `wg genkey` writes it).
pub fn load_node_secret(path: &Path) -> CliResult<[u8; 32]> {
    load_secret_key(path, KeyKind::NodeSecret)
}

/// Reads a node's public key file, as `tyd keygen node` writes to `KEY.pub` (or `wg pubkey`
/// prints). A secret key offered here is refused: it would end up in the policy.
pub fn read_public_key_file(path: &Path) -> CliResult<WgPublicKey> {
    let bytes = fsutil::read_limited(path, 4096)?;
    let text = String::from_utf8_lossy(&bytes);
    parse_key_file(&text, KeyKind::NodePublic)
        .map(WgPublicKey::from_bytes)
        .map_err(|e| Failure::new(Exit::KeyFile, format!("{}: {e}", path.display())))
}

/// Reads a 32-byte secret key of `kind`, refusing a file readable by group or others.
fn load_secret_key(path: &Path, kind: KeyKind) -> CliResult<[u8; 32]> {
    policy::keys::read_secret_key(path, kind)
        .map(|k| *k)
        .map_err(|e| Failure::new((&e).into(), e.to_string()))
}

/// The fingerprint of the operator key in a trust file (the first, if it lists several: the
/// one `tyd policy sign` uses on this master should come first).
pub fn operator_fingerprint(trust: &Path) -> CliResult<String> {
    let bytes = fsutil::read_limited(trust, 64 << 10)?;
    let keys = policy::TrustedKeys::parse(&String::from_utf8_lossy(&bytes))
        .map_err(|e| Failure::new(Exit::KeyFile, format!("{}: {e}", trust.display())))?;
    keys.keys()
        .first()
        .map(policy::OperatorPublicKey::fingerprint)
        .ok_or_else(|| {
            Failure::new(
                Exit::KeyFile,
                format!("{}: no operator key", trust.display()),
            )
        })
}
