//! Writing a fetched policy where netguard reads it (and certaintyd at its start), without ever replacing a
//! policy another writer put there meanwhile (issue 26 #10: two masters admitting at once
//! both signed serial 12; one master's clusterd fetched the other's serial 12 before its own
//! poll had read the file its joind had just written, and overwrote it).
//!
//! The rule: the fetched pair replaces the file only if its serial is strictly higher than
//! the serial of the file on disk *when it is renamed into place*. The file on disk is read
//! again and its signature checked just before the renames, with the policy's directory
//! locked (flock, exclusive), the lock `policy::fsutil::write_signed_pair` takes for its
//! renames and readers of the pair take shared: a writer that takes it cannot land its pair
//! between this check and these renames, and no reader that takes it sees one file new and
//! the other old. A file that cannot be read, or whose signature does not verify (torn,
//! tampered, signed by an unknown key), counts for nothing and may be replaced. A signed file
//! counts by its serial even when it is expired or otherwise refused: an operator's newer
//! file is never rolled back on disk.

use std::path::Path;
use std::time::Duration;

use policy::TrustedKeys;
use policy::fsutil::{self, FileError, PairWrite};
use serde::Deserialize;

/// How long the writer waits for the directory lock (other writers hold it for two renames,
/// readers for two reads) before it checks and writes without it.
const LOCK_WAIT: Duration = Duration::from_secs(1);
const MAX_SIGNATURE_BYTES: u64 = 64 << 10;

/// What was on disk when the fetched pair was to be put in place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OnDisk {
    Missing,
    /// Unreadable, unsigned, or its signature does not verify.
    Invalid(String),
    /// A signed policy of this serial (and BLAKE3 digest, hex).
    Signed {
        serial: u64,
        digest: String,
    },
}

/// What [`write_if_newer`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Written {
    /// The fetched pair is in place; this was there before.
    Replaced { was: OnDisk, locked: bool },
    /// The file on disk has a serial at least the fetched one: kept, nothing written.
    Kept { serial: u64, digest: String },
}

#[derive(Deserialize)]
struct Head {
    cluster: ClusterHead,
}

#[derive(Deserialize)]
struct ClusterHead {
    serial: u64,
}

/// The policy file on disk now, as far as overwriting it goes. `known` is a policy this node
/// verified already (digest, serial): a file with that digest is not verified again.
pub fn on_disk(path: &Path, trust: &TrustedKeys, known: Option<(&str, u64)>) -> OnDisk {
    let bytes = match fsutil::read_limited(path, policy::load::MAX_POLICY_BYTES) {
        Ok(b) => b,
        Err(FileError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            return OnDisk::Missing;
        }
        Err(e) => return OnDisk::Invalid(e.to_string()),
    };
    let digest = blake3::hash(&bytes).to_hex().to_string();
    if let Some((d, serial)) = known
        && d == digest
    {
        return OnDisk::Signed { serial, digest };
    }
    let sig = match fsutil::read_limited(&policy::signature_path(path), MAX_SIGNATURE_BYTES) {
        Ok(s) => s,
        Err(e) => return OnDisk::Invalid(format!("{e} (the policy is not signed)")),
    };
    let file = path.display().to_string();
    // The signature first; then only the serial is read: an expired or otherwise refused
    // policy the operator signed still counts by its serial.
    match policy::signature::verify_signed(&file, &bytes, &sig, trust, |b| {
        Ok(toml::from_slice::<Head>(b).ok().map(|h| h.cluster.serial))
    }) {
        Ok(v) => match *v {
            Some(serial) => OnDisk::Signed {
                serial,
                digest: v.digest_hex(),
            },
            None => OnDisk::Invalid(format!("{file}: signed, but no [cluster] serial")),
        },
        Err(e) => OnDisk::Invalid(e.to_string()),
    }
}

/// Puts a verified fetched pair (`bytes` of `serial`, `signature`) at `path` and beside it,
/// unless the file there has a serial at least `serial` when it is renamed in: see the module.
/// The check and the renames are `policy::fsutil::replace_signed_pair`'s.
pub fn write_if_newer(
    path: &Path,
    bytes: &[u8],
    signature: &[u8],
    serial: u64,
    trust: &TrustedKeys,
    known: Option<(&str, u64)>,
) -> Result<Written, FileError> {
    let mut was = OnDisk::Missing;
    let written = fsutil::replace_signed_pair(
        path,
        &policy::signature_path(path),
        bytes,
        signature,
        0o644,
        Some(LOCK_WAIT),
        || {
            was = on_disk(path, trust, known);
            match &was {
                OnDisk::Signed { serial: s, digest } if *s >= serial => Some(Written::Kept {
                    serial: *s,
                    digest: digest.clone(),
                }),
                _ => None,
            }
        },
    )?;
    Ok(match written {
        PairWrite::Kept(kept) => kept,
        PairWrite::Written { locked } => Written::Replaced { was, locked },
    })
}

/// A master's membership fetched from a peer, put beside the policy where netguard reads it,
/// by the same rule as the policy: only over a file whose serial is lower (or that is not a
/// membership signed by `key`, the master's admission key in the policy in force), checked
/// again under the directory's lock just before the renames. Returns whether it was written.
pub fn write_membership_if_newer(
    path: &Path,
    bytes: &[u8],
    signature: &[u8],
    serial: u64,
    key: &policy::OperatorPublicKey,
) -> Result<bool, FileError> {
    let written = fsutil::replace_signed_pair(
        path,
        &policy::signature_path(path),
        bytes,
        signature,
        0o644,
        Some(LOCK_WAIT),
        || {
            let on_disk = membership_serial_on_disk(path, key)?;
            (on_disk >= serial).then_some(())
        },
    )?;
    Ok(matches!(written, PairWrite::Written { .. }))
}

/// The serial of the membership at `path`, if it is one signed by `key`. Read without the
/// pair's shared lock, as [`on_disk`] reads the policy: the caller holds the directory's
/// exclusive lock, and a shared one taken beside it would wait for it (half a second) in vain.
fn membership_serial_on_disk(path: &Path, key: &policy::OperatorPublicKey) -> Option<u64> {
    let limit = policy::membership::MAX_MEMBERSHIP_BYTES as u64;
    let bytes = fsutil::read_limited(path, limit).ok()?;
    let sig = fsutil::read_limited(&policy::signature_path(path), MAX_SIGNATURE_BYTES).ok()?;
    let trust = TrustedKeys::new(vec![*key]);
    let file = path.display().to_string();
    let v = policy::verify_signed(&file, &bytes, &sig, &trust, |b| {
        policy::membership::parse_membership(&file, b).map_err(policy::VerifyError::from)
    })
    .ok()?;
    Some(v.membership.serial)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::SigningKey;
    use std::fs::{self, File};
    use std::path::PathBuf;
    use std::time::Instant;

    fn text(serial: u64, note: &str) -> String {
        let expires = jiff::Timestamp::now() + jiff::SignedDuration::from_hours(1);
        format!(
            "{}\n# {note}\n",
            policy::template::init_template("lab", expires)
                .replace("serial = 1", &format!("serial = {serial}"))
        )
    }

    fn setup() -> (tempfile::TempDir, PathBuf, SigningKey, TrustedKeys) {
        let dir = tempfile::tempdir().unwrap();
        let key = SigningKey::from_bytes(&[7; 32]);
        let trust = TrustedKeys::parse(&format!(
            "{}\n",
            policy::OperatorPublicKey::from(&key).to_base64()
        ))
        .unwrap();
        let path = dir.path().join("cluster.toml");
        (dir, path, key, trust)
    }

    fn put(path: &Path, text: &str, key: &SigningKey) {
        fs::write(
            policy::signature_path(path),
            policy::sign(text.as_bytes(), key),
        )
        .unwrap();
        fs::write(path, text).unwrap();
    }

    #[test]
    fn a_fetched_policy_replaces_only_a_lower_serial_or_an_invalid_file() {
        let (dir, path, key, trust) = setup();
        // Nothing there: written.
        let t10 = text(10, "ten");
        let sig10 = policy::sign(t10.as_bytes(), &key);
        let w = write_if_newer(&path, t10.as_bytes(), sig10.as_bytes(), 10, &trust, None);
        assert!(
            matches!(
                w,
                Ok(Written::Replaced {
                    was: OnDisk::Missing,
                    locked: true
                })
            ),
            "{w:?}"
        );
        assert_eq!(fs::read_to_string(&path).unwrap(), t10);
        // A higher serial on disk (the operator's, expired or not): kept.
        let t14 = text(14, "fourteen");
        put(&path, &t14, &key);
        let t13 = text(13, "thirteen");
        let sig13 = policy::sign(t13.as_bytes(), &key);
        let w = write_if_newer(&path, t13.as_bytes(), sig13.as_bytes(), 13, &trust, None);
        assert!(matches!(w, Ok(Written::Kept { serial: 14, .. })), "{w:?}");
        assert_eq!(fs::read_to_string(&path).unwrap(), t14);
        // A file whose signature does not verify counts for nothing.
        fs::write(&path, text(99, "tampered")).unwrap();
        let w = write_if_newer(&path, t13.as_bytes(), sig13.as_bytes(), 13, &trust, None);
        assert!(
            matches!(
                w,
                Ok(Written::Replaced {
                    was: OnDisk::Invalid(_),
                    ..
                })
            ),
            "{w:?}"
        );
        assert_eq!(fs::read_to_string(&path).unwrap(), t13);
        assert_eq!(
            fs::read_to_string(policy::signature_path(&path)).unwrap(),
            sig13
        );
        // No temp file is left beside it.
        let left: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with('.'))
            .collect();
        assert!(left.is_empty(), "{left:?}");
    }

    /// The same serial on disk with other content is kept too, and said to be one: two
    /// policies signed at one serial.
    #[test]
    fn the_same_serial_on_disk_is_kept_and_its_digest_given() {
        let (_dir, path, key, trust) = setup();
        let a = text(12, "admitted by this master");
        put(&path, &a, &key);
        let b = text(12, "admitted by the other master");
        let sig_b = policy::sign(b.as_bytes(), &key);
        let w = write_if_newer(&path, b.as_bytes(), sig_b.as_bytes(), 12, &trust, None).unwrap();
        assert_eq!(
            w,
            Written::Kept {
                serial: 12,
                digest: blake3::hash(a.as_bytes()).to_hex().to_string()
            }
        );
        assert_eq!(fs::read_to_string(&path).unwrap(), a);
    }

    /// While another writer holds the directory's lock, nothing is renamed in.
    #[test]
    fn the_write_waits_for_another_writers_lock() {
        let (dir, path, key, trust) = setup();
        put(&path, &text(11, "eleven"), &key);
        let held = nix::fcntl::Flock::lock(
            File::open(dir.path()).unwrap(),
            nix::fcntl::FlockArg::LockExclusive,
        )
        .unwrap();
        let t12 = text(12, "twelve");
        let sig12 = policy::sign(t12.as_bytes(), &key);
        let started = Instant::now();
        let (p, t, s, tr) = (path.clone(), t12.clone(), sig12.clone(), trust.clone());
        let writer = std::thread::spawn(move || {
            write_if_newer(&p, t.as_bytes(), s.as_bytes(), 12, &tr, None)
        });
        std::thread::sleep(Duration::from_millis(200));
        // The other writer lands serial 12 (other content) under its lock, then lets go.
        let theirs = text(12, "the other writer's twelve");
        put(&path, &theirs, &key);
        drop(held);
        let w = writer.join().unwrap().unwrap();
        assert!(started.elapsed() >= Duration::from_millis(200));
        assert!(matches!(w, Written::Kept { serial: 12, .. }), "{w:?}");
        assert_eq!(fs::read_to_string(&path).unwrap(), theirs);
    }

    /// A fetched membership replaces only a lower serial of that master's, signed by its key
    /// (the master's joind may just have written a newer one); a file another key signed
    /// counts for nothing.
    #[test]
    fn a_fetched_membership_replaces_only_a_lower_serial_signed_by_its_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("membership-1.toml");
        let key = SigningKey::from_bytes(&[8; 32]);
        let public = policy::OperatorPublicKey::from(&key);
        let doc = |serial: u64| {
            let t = format!("[membership]\ncluster = \"lab\"\nmaster = 1\nserial = {serial}\n");
            let sig = policy::sign(t.as_bytes(), &key);
            (t, sig)
        };
        let write = |serial: u64| {
            let (t, sig) = doc(serial);
            write_membership_if_newer(&path, t.as_bytes(), sig.as_bytes(), serial, &public).unwrap()
        };
        assert!(write(3), "nothing there");
        assert!(!write(3), "as new");
        assert!(!write(2), "older");
        assert!(write(4), "newer");
        assert!(fs::read_to_string(&path).unwrap().contains("serial = 4"));
        // Another key's file counts for nothing.
        let (t, _) = doc(9);
        let other = policy::sign(t.as_bytes(), &SigningKey::from_bytes(&[9; 32]));
        policy::write_signed_pair(&path, t.as_bytes(), other.as_bytes()).unwrap();
        assert!(write(5), "over a file another key signed");
    }
}
