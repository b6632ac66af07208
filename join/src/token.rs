//! Join tokens: `<id>.<secret>`, like kubeadm's. The id is public (it names the token in
//! lists, logs and the first, clear-text frame of a join); the secret never crosses the wire:
//! both sides derive the Noise pre-shared key from the whole token. The master keeps that
//! derived key, never the token text, with the token's limits: uses, expiry, roles,
//! revocation.

use std::fmt;
use std::path::Path;
use std::str::FromStr;

use jiff::Timestamp;
use policy::Role;
use rand_core::RngCore;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

/// Characters of ids and secrets: lower-case letters and digits (easy to read out and type).
const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
pub const ID_LEN: usize = 6;
/// 16 characters of 36: about 82 bits, with guessing rate-limited by the endpoint.
pub const SECRET_LEN: usize = 16;
/// Domain separation for the pre-shared key derived from a token.
const PSK_CONTEXT: &str = "tyd join token 2026-11 noise psk";

/// A token's public id.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct TokenId(String);

impl TokenId {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for TokenId {
    type Error = TokenError;
    fn try_from(s: String) -> Result<Self, TokenError> {
        if s.len() == ID_LEN && s.bytes().all(|b| ALPHABET.contains(&b)) {
            Ok(TokenId(s))
        } else {
            Err(TokenError::BadId(policy::parse::shown(&s)))
        }
    }
}

impl From<TokenId> for String {
    fn from(id: TokenId) -> String {
        id.0
    }
}

impl fmt::Display for TokenId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A whole token, as the operator hands it to a joining node. Its Debug output hides the
/// secret.
#[derive(Clone, PartialEq, Eq)]
pub struct Token {
    pub id: TokenId,
    secret: Zeroizing<String>,
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Token({}.<secret>)", self.id)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("token id {0} is not {ID_LEN} lower-case letters or digits")]
    BadId(String),
    #[error(
        "not a join token: expected <id>.<secret>, {ID_LEN} and {SECRET_LEN} lower-case letters or digits"
    )]
    Malformed,
}

fn random_text(rng: &mut dyn RngCore, len: usize) -> String {
    // Rejection sampling keeps every character equally likely (256 is not a multiple of 36).
    let limit = 256 - (256 % ALPHABET.len());
    let mut out = String::with_capacity(len);
    while out.len() < len {
        let mut b = [0u8; 1];
        rng.fill_bytes(&mut b);
        if usize::from(b[0]) < limit {
            out.push(char::from(ALPHABET[usize::from(b[0]) % ALPHABET.len()]));
        }
    }
    out
}

impl Token {
    pub fn generate(rng: &mut dyn RngCore) -> Self {
        Token {
            id: TokenId(random_text(rng, ID_LEN)),
            secret: Zeroizing::new(random_text(rng, SECRET_LEN)),
        }
    }

    /// The Noise pre-shared key both sides derive from the token (BLAKE3's key derivation).
    pub fn psk(&self) -> Psk {
        let material = Zeroizing::new(format!("{}.{}", self.id, self.secret.as_str()));
        Psk(Zeroizing::new(blake3::derive_key(
            PSK_CONTEXT,
            material.as_bytes(),
        )))
    }

    /// The token as the operator types it.
    pub fn reveal(&self) -> Zeroizing<String> {
        Zeroizing::new(format!("{}.{}", self.id, self.secret.as_str()))
    }
}

impl FromStr for Token {
    type Err = TokenError;
    fn from_str(s: &str) -> Result<Self, TokenError> {
        let (id, secret) = s.trim().split_once('.').ok_or(TokenError::Malformed)?;
        let ok = |t: &str, len| t.len() == len && t.bytes().all(|b| ALPHABET.contains(&b));
        if !ok(id, ID_LEN) || !ok(secret, SECRET_LEN) {
            return Err(TokenError::Malformed);
        }
        Ok(Token {
            id: TokenId(id.to_string()),
            secret: Zeroizing::new(secret.to_string()),
        })
    }
}

/// A Noise pre-shared key (32 bytes), wiped when dropped.
#[derive(Clone, PartialEq, Eq)]
pub struct Psk(Zeroizing<[u8; 32]>);

impl Psk {
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    fn from_hex(s: &str) -> Option<Self> {
        if s.len() != 64 {
            return None;
        }
        let mut out = [0u8; 32];
        for (i, o) in out.iter_mut().enumerate() {
            *o = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
        }
        Some(Psk(Zeroizing::new(out)))
    }
}

impl fmt::Debug for Psk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Psk(<hidden>)")
    }
}

/// What the master keeps of a token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenRecord {
    pub id: TokenId,
    /// The derived pre-shared key, hex (the token text itself is not kept).
    psk: String,
    pub created: Timestamp,
    pub expires: Timestamp,
    /// Joins it allows in all.
    pub uses: u32,
    pub used: u32,
    /// What a node that joins with it becomes.
    pub roles: Vec<Role>,
    pub revoked: bool,
    /// For RAM drones (a new key each boot): a node it admitted that comes back at its address
    /// with a new key takes over its entry once the cluster has lost it.
    #[serde(default)]
    pub ephemeral: bool,
}

/// Why a token does not admit a join. What the joiner is told is only "refused" (it learns
/// nothing about which tokens exist); the master's log names the reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("no such token")]
    Unknown,
    #[error("the token has expired")]
    Expired,
    #[error("the token has been used up")]
    UsedUp,
    #[error("the token was revoked")]
    Revoked,
}

impl TokenRecord {
    pub fn psk(&self) -> Option<Psk> {
        Psk::from_hex(&self.psk)
    }

    /// Whether it admits one more join at `now`.
    pub fn admits(&self, now: Timestamp) -> Result<(), Refusal> {
        if self.revoked {
            Err(Refusal::Revoked)
        } else if now >= self.expires {
            Err(Refusal::Expired)
        } else if self.used >= self.uses {
            Err(Refusal::UsedUp)
        } else {
            Ok(())
        }
    }
}

/// Limits for a new token.
#[derive(Debug, Clone)]
pub struct Limits {
    pub uses: u32,
    pub valid_for: std::time::Duration,
    pub roles: Vec<Role>,
    pub ephemeral: bool,
}

/// A node an ephemeral token admitted, with the key it was admitted with (an entry with
/// another key under the same id is not this node any more).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EphemeralNode {
    pub id: u16,
    pub public_key: String,
}

/// The master's tokens: a JSON file, mode 0600, replaced atomically.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenStore {
    pub tokens: Vec<TokenRecord>,
    #[serde(default)]
    pub ephemeral_nodes: Vec<EphemeralNode>,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    File(#[from] crate::statefile::StateFileError),
    #[error("no token {0}")]
    NoSuchToken(String),
    #[error("{path}: cannot lock the token store: {source}")]
    Lock {
        path: String,
        source: std::io::Error,
    },
}

/// An exclusive hold on a token store, from reading it to writing it back: joind admitting
/// and `tyd token create/revoke` run in different processes, and each rewrites the whole
/// file. Released when dropped.
#[derive(Debug)]
pub struct StoreLock(#[allow(dead_code)] nix::fcntl::Flock<std::fs::File>);

/// Expired or used-up tokens are kept this long for `tyd token list`, then dropped.
const KEEP_ENDED: jiff::SignedDuration = jiff::SignedDuration::from_hours(24);

impl TokenStore {
    /// Waits for, then holds, the store's lock (`tokens.json.lock` beside it, made if
    /// missing: the store itself is replaced on every write, so it cannot carry the lock).
    pub fn lock(path: &Path) -> Result<StoreLock, StoreError> {
        let mut name = path.as_os_str().to_owned();
        name.push(".lock");
        let lock_path = std::path::PathBuf::from(name);
        let fail = |source: std::io::Error| StoreError::Lock {
            path: lock_path.display().to_string(),
            source,
        };
        if let Some(dir) = lock_path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(fail)?;
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&lock_path)
            .map_err(fail)?;
        nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive)
            .map(StoreLock)
            .map_err(|(_, e)| fail(e.into()))
    }

    /// Reads the store; a missing file is an empty store.
    pub fn load(path: &Path) -> Result<Self, StoreError> {
        Ok(crate::statefile::load(path, "a token store")?)
    }

    pub fn save(&self, path: &Path) -> Result<(), StoreError> {
        Ok(crate::statefile::save(path, self)?)
    }

    /// A new token with `limits`, recorded; the token itself is returned once, to be shown.
    pub fn create(&mut self, limits: &Limits, now: Timestamp, rng: &mut dyn RngCore) -> Token {
        let token = loop {
            let t = Token::generate(rng);
            if self.get(&t.id).is_none() {
                break t;
            }
        };
        let valid_for =
            jiff::SignedDuration::try_from(limits.valid_for).unwrap_or(jiff::SignedDuration::MAX);
        self.tokens.push(TokenRecord {
            id: token.id.clone(),
            psk: token.psk().to_hex(),
            created: now,
            expires: now.checked_add(valid_for).unwrap_or(Timestamp::MAX),
            uses: limits.uses,
            used: 0,
            roles: limits.roles.clone(),
            revoked: false,
            ephemeral: limits.ephemeral,
        });
        token
    }

    pub fn get(&self, id: &TokenId) -> Option<&TokenRecord> {
        self.tokens.iter().find(|t| &t.id == id)
    }

    /// The record for a join attempt with token `id`, if it admits one at `now`.
    pub fn check(&self, id: &TokenId, now: Timestamp) -> Result<&TokenRecord, Refusal> {
        let t = self.get(id).ok_or(Refusal::Unknown)?;
        t.admits(now)?;
        Ok(t)
    }

    /// Counts a completed join against token `id`.
    pub fn consume(&mut self, id: &TokenId) {
        if let Some(t) = self.tokens.iter_mut().find(|t| &t.id == id) {
            t.used = t.used.saturating_add(1);
        }
    }

    /// Records that node `id` joined with `key` through an ephemeral token (replacing any
    /// earlier record of that id).
    pub fn record_ephemeral(&mut self, id: u16, key: &policy::WgPublicKey) {
        self.ephemeral_nodes.retain(|n| n.id != id);
        self.ephemeral_nodes.push(EphemeralNode {
            id,
            public_key: key.to_base64(),
        });
        self.ephemeral_nodes.sort_by_key(|n| n.id);
    }

    /// The ephemeral nodes still in `policy` under the key they joined with (the others are
    /// forgotten: removed, or their id given to another node).
    pub fn ephemeral_in(
        &self,
        policy: &policy::Policy,
    ) -> Vec<(policy::NodeId, policy::WgPublicKey)> {
        self.ephemeral_nodes
            .iter()
            .filter_map(|n| {
                let id = policy::NodeId::new(n.id)?;
                let key: policy::WgPublicKey = n.public_key.parse().ok()?;
                (policy.node_by_id(id)?.public_key == key).then_some((id, key))
            })
            .collect()
    }

    /// Drops records of ephemeral nodes no longer in `policy` with their key.
    pub fn forget_departed(&mut self, policy: &policy::Policy) {
        let kept = self.ephemeral_in(policy);
        self.ephemeral_nodes
            .retain(|n| kept.iter().any(|(id, _)| id.get() == n.id));
    }

    pub fn revoke(&mut self, id: &str) -> Result<(), StoreError> {
        let t = self
            .tokens
            .iter_mut()
            .find(|t| t.id.as_str() == id)
            .ok_or_else(|| StoreError::NoSuchToken(policy::parse::shown(id)))?;
        t.revoked = true;
        Ok(())
    }

    /// Drops tokens that ended (expired, used up or revoked) more than a day ago.
    pub fn prune(&mut self, now: Timestamp) {
        self.tokens.retain(|t| {
            let ended = t.revoked || t.used >= t.uses || now >= t.expires;
            !ended || now < t.expires.checked_add(KEEP_ENDED).unwrap_or(Timestamp::MAX)
        });
    }
}

use std::os::unix::fs::OpenOptionsExt;

#[cfg(test)]
mod tests {
    use super::*;
    use rand_core::OsRng;
    use std::time::Duration;

    fn limits(uses: u32) -> Limits {
        Limits {
            uses,
            ephemeral: false,
            valid_for: Duration::from_secs(3600),
            roles: vec![Role::Drone],
        }
    }

    #[test]
    fn a_token_round_trips_through_its_text_and_both_sides_derive_one_key() {
        let t = Token::generate(&mut OsRng);
        let text = t.reveal();
        assert_eq!(text.len(), ID_LEN + 1 + SECRET_LEN);
        let back: Token = text.parse().unwrap();
        assert_eq!(back, t);
        assert_eq!(back.psk(), t.psk());
        assert!(!format!("{t:?}").contains(text.split('.').nth(1).unwrap()));
        // Another secret under the same id is another key.
        let other: Token = format!("{}.{}", t.id, "a".repeat(SECRET_LEN))
            .parse()
            .unwrap();
        assert_ne!(other.psk(), t.psk());
    }

    #[test]
    fn malformed_tokens_are_refused_plainly() {
        for bad in [
            "",
            "abcdef",
            "abcdef.",
            "ABCDEF.0123456789abcdef",
            "abcde.0123456789abcdef",
            "abcdef.0123456789abcde",
            "abcdef.0123456789abcdef0",
            "abc-ef.0123456789abcdef",
        ] {
            assert_eq!(bad.parse::<Token>(), Err(TokenError::Malformed), "{bad:?}");
        }
        assert!("abcdef.0123456789abcdef".parse::<Token>().is_ok());
    }

    #[test]
    fn a_token_admits_its_uses_until_it_expires_or_is_revoked() {
        let now = Timestamp::now();
        let mut store = TokenStore::default();
        let t = store.create(&limits(2), now, &mut OsRng);
        let rec = store.check(&t.id, now).unwrap();
        assert_eq!(rec.psk(), Some(t.psk()));
        store.consume(&t.id);
        assert!(store.check(&t.id, now).is_ok());
        store.consume(&t.id);
        assert_eq!(store.check(&t.id, now).err(), Some(Refusal::UsedUp));

        let t2 = store.create(&limits(5), now, &mut OsRng);
        let later = now + jiff::SignedDuration::from_secs(3600);
        assert_eq!(store.check(&t2.id, later).err(), Some(Refusal::Expired));
        store.revoke(t2.id.as_str()).unwrap();
        assert_eq!(store.check(&t2.id, now).err(), Some(Refusal::Revoked));
        let unknown = TokenId::try_from("zzzzzz".to_string()).unwrap();
        assert_eq!(store.check(&unknown, now).err(), Some(Refusal::Unknown));
        assert!(matches!(
            store.revoke("nope"),
            Err(StoreError::NoSuchToken(_))
        ));
    }

    #[test]
    fn the_store_keeps_no_token_text_and_drops_ended_tokens_after_a_day() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens.json");
        let now = Timestamp::now();
        let mut store = TokenStore::load(&path).unwrap();
        let t = store.create(&limits(1), now, &mut OsRng);
        store.save(&path).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(!text.contains(t.reveal().split('.').nth(1).unwrap()));
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(&path).unwrap().permissions(),
        );
        assert_eq!(mode & 0o777, 0o600);
        let mut back = TokenStore::load(&path).unwrap();
        assert_eq!(back, store);
        back.prune(now + jiff::SignedDuration::from_hours(2));
        assert_eq!(back.tokens.len(), 1, "ended an hour ago: still listed");
        back.prune(now + jiff::SignedDuration::from_hours(26));
        assert!(back.tokens.is_empty());
        std::fs::write(&path, "{\"tokens\": 3}").unwrap();
        let e = TokenStore::load(&path).unwrap_err().to_string();
        assert!(
            e.contains("tokens.json") && e.contains("not a token store"),
            "{e}"
        );
    }

    /// Attack (a race, issue 26 #7): tokens.json was read, changed and written back with no
    /// lock, so two joins and a `tyd token revoke` at once could lose one of the updates.
    /// Steps: 8 writers at once (threads, each opening the lock file itself, as separate
    /// processes do), each creating 10 tokens under the lock, one revoking the first token
    /// meanwhile: every token created is in the store and the revocation stands.
    #[test]
    fn concurrent_writers_under_the_lock_lose_no_update() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens.json");
        let first = {
            let _l = TokenStore::lock(&path).unwrap();
            let mut s = TokenStore::load(&path).unwrap();
            let t = s.create(&limits(1), Timestamp::now(), &mut OsRng);
            s.save(&path).unwrap();
            t.id.as_str().to_string()
        };
        let writers: Vec<_> = (0..8)
            .map(|w| {
                let (path, first) = (path.clone(), first.clone());
                std::thread::spawn(move || {
                    for i in 0..10 {
                        let _l = TokenStore::lock(&path).unwrap();
                        let mut s = TokenStore::load(&path).unwrap();
                        s.create(&limits(1), Timestamp::now(), &mut OsRng);
                        if w == 0 && i == 5 {
                            s.revoke(&first).unwrap();
                        }
                        std::thread::yield_now();
                        s.save(&path).unwrap();
                    }
                })
            })
            .collect();
        for w in writers {
            w.join().unwrap();
        }
        let s = TokenStore::load(&path).unwrap();
        assert_eq!(s.tokens.len(), 81);
        assert!(s.tokens.iter().any(|t| t.id.as_str() == first && t.revoked));
    }
}
