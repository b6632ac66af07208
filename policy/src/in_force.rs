//! The policy in force: the one way every daemon (netguard, clusterd, joind, certaintyd)
//! notices, loads and accepts a policy.
//!
//! [`PolicyInForce`] reads the signed pair when its files change (their stamp, or a
//! [`watch`](crate::watch) event), verifies it reusing the last policy's node blocks, puts it
//! through this daemon's [`RollbackStore`] and holds what the store returned: an
//! [`Accepted`], which nothing else can make. A refused file leaves the policy in force as it
//! is, and says whether its reason is new, so a daemon logs each refusal once.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use jiff::Timestamp;

use crate::blocks::NodeBlocks;
use crate::fsutil::FileError;
use crate::load::{self, LoadError, SignedFiles};
use crate::signature::{TrustedKeys, VerifyError, verify_policy_reusing};
use crate::signature_path;
use crate::store::{Accepted, RollbackStore, StoreError};

mod memberships;

pub use memberships::{Checked, Combined, Effective, MembershipEvent};

/// A refusal already reported is reported again after this long.
pub const REPORT_AGAIN_AFTER: Duration = Duration::from_secs(600);
/// How many distinct refusals are remembered as reported.
const REPORTED_KEPT: usize = 16;

/// Where a daemon's policy comes from and where its rollback state is kept.
#[derive(Debug, Clone)]
pub struct PolicyPaths {
    /// The signed policy (its signature beside it, `<policy>.sig`).
    pub policy: PathBuf,
    /// The operator public keys, one base64 key a line.
    pub trust: PathBuf,
    /// This daemon's rollback state (each daemon keeps its own).
    pub state: PathBuf,
}

impl PolicyPaths {
    pub fn new(policy: &Path, trust: &Path, state: &Path) -> Self {
        Self {
            policy: policy.to_path_buf(),
            trust: trust.to_path_buf(),
            state: state.to_path_buf(),
        }
    }
}

/// Why the files in place are not (or not yet) the policy in force.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    /// Unreadable, unsigned, badly signed or invalid.
    #[error("{0}")]
    Load(#[from] LoadError),
    /// Verified, but older than, or replaying, what this node accepted; or another
    /// cluster's; or expired.
    #[error("{path}: {source}")]
    Store { path: String, source: StoreError },
}

/// What reading the files did.
#[derive(Debug)]
pub enum Outcome {
    /// The files did not change since they were last read: nothing was read.
    Unread,
    /// The files hold an acceptable policy. `new`: it was not in force before (else it is
    /// the one in force, read again). `recovered`: the files were refused at the last read.
    Accepted {
        policy: Arc<Accepted>,
        new: bool,
        recovered: bool,
    },
    /// The files are refused; the policy in force (if any) stays. `first`: this reason was
    /// not the last read's (log it once, not at every read).
    Refused { reason: Refusal, first: bool },
}

/// (modified, length, inode) of the policy and of its signature: they change together when a
/// new policy is put in place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp([Option<(SystemTime, u64, u64)>; 2]);

impl Stamp {
    pub fn of(policy: &Path) -> Self {
        use std::os::unix::fs::MetadataExt;
        let of = |p: &Path| {
            let m = std::fs::metadata(p).ok()?;
            Some((m.modified().ok()?, m.len(), m.ino()))
        };
        Stamp([of(policy), of(&signature_path(policy))])
    }
}

/// The policy a daemon has in force, and how it gets the next one.
#[derive(Debug)]
pub struct PolicyInForce {
    paths: PolicyPaths,
    store: RollbackStore,
    /// The `[[node]]` blocks of the last policy verified: the next is parsed by its changed
    /// blocks only.
    blocks: NodeBlocks,
    /// The files' stamp when last read.
    stamp: Option<Stamp>,
    current: Option<Arc<Accepted>>,
    /// The last read's refusal, if it was refused.
    refusal: Option<String>,
    /// The refusals reported lately, and when: one is reported again only after
    /// [`REPORT_AGAIN_AFTER`], or once a newer policy has been accepted (two bad files
    /// written in turn are two reports, not one per write).
    reported: Vec<(String, Instant)>,
    last_load: Duration,
    /// The masters' memberships in force beside the policy, and their rollback record.
    memberships: crate::membership::MembershipsInForce,
    membership_store: crate::membership::MembershipStore,
    /// Each membership file's stamp when last read.
    membership_stamps: std::collections::BTreeMap<crate::NodeId, Stamp>,
    /// Memberships a new policy dropped, for the next read to report.
    dropped: Vec<crate::membership::Dropped>,
    /// The policy and the memberships: the node map in force.
    effective: Option<Arc<Effective>>,
    /// The memberships' generation `effective` was made from (with the policy it holds).
    effective_generation: Option<u64>,
    /// The first expiry of a key whose membership is in force: the memberships are checked
    /// again then.
    membership_recheck_at: Option<Timestamp>,
    /// Membership nodes left out of the node map, as last told, and what is yet to be told.
    told_left_out: std::collections::BTreeSet<(crate::NodeId, crate::NodeId)>,
    left_out_events: Vec<MembershipEvent>,
}

impl PolicyInForce {
    /// Opens this daemon's rollback store (`min_serial`: the floor of a node that keeps no
    /// state across boots). Nothing is read yet.
    pub fn open(paths: PolicyPaths, min_serial: u64) -> Result<Self, StoreError> {
        let store = RollbackStore::open(&paths.state, min_serial)?;
        let membership_store = crate::membership::MembershipStore::open(
            &crate::membership::MembershipStore::path_beside(&paths.state),
        )?;
        Ok(Self {
            paths,
            store,
            blocks: NodeBlocks::default(),
            stamp: None,
            current: None,
            refusal: None,
            reported: Vec::new(),
            last_load: Duration::ZERO,
            memberships: crate::membership::MembershipsInForce::default(),
            membership_store,
            membership_stamps: std::collections::BTreeMap::new(),
            dropped: Vec::new(),
            effective: None,
            effective_generation: None,
            membership_recheck_at: None,
            told_left_out: std::collections::BTreeSet::new(),
            left_out_events: Vec::new(),
        })
    }

    pub fn paths(&self) -> &PolicyPaths {
        &self.paths
    }

    /// The policy in force, if any was accepted.
    pub fn current(&self) -> Option<&Arc<Accepted>> {
        self.current.as_ref()
    }

    /// The rollback store, to ask whether a policy would be accepted.
    pub fn store(&self) -> &RollbackStore {
        &self.store
    }

    /// How long the last read of the files took (read, verify, accept).
    pub fn last_load(&self) -> Duration {
        self.last_load
    }

    /// Reads the files if their stamp changed since the last read (the fall-back when no
    /// change event is had, and the way of a daemon that polls).
    pub fn poll(&mut self, now: Timestamp) -> Outcome {
        let stamp = Stamp::of(&self.paths.policy);
        if self.stamp == Some(stamp) {
            return Outcome::Unread;
        }
        let read = self.read(stamp, now);
        self.outcome(read)
    }

    /// Reads the files whatever their stamp (a change event, a timer, a file just written).
    pub fn reload(&mut self, now: Timestamp) -> Outcome {
        let read = self.read(Stamp::of(&self.paths.policy), now);
        self.outcome(read)
    }

    /// Reads the files now: the policy in force, or why they are refused (for a daemon that
    /// cannot start without one).
    pub fn load_now(&mut self, now: Timestamp) -> Result<Arc<Accepted>, Refusal> {
        let read = self.read(Stamp::of(&self.paths.policy), now);
        if read.is_ok() {
            self.refusal = None;
        }
        read.map(|(policy, _)| policy)
    }

    /// Reads, verifies and offers the files (their `stamp` taken just before); `bool`: the
    /// policy is new in force.
    fn read(&mut self, stamp: Stamp, now: Timestamp) -> Result<(Arc<Accepted>, bool), Refusal> {
        let started = Instant::now();
        self.stamp = Some(stamp);
        let path = self.paths.policy.clone();
        let read = load::load_signed_reusing(&path, &self.paths.trust, now, &mut self.blocks)
            .map_err(Refusal::Load)
            .and_then(|files| self.take(files, &path, now));
        self.last_load = started.elapsed();
        read
    }

    /// Puts `files` (read from `origin`, named in a refusal) through the store and in force;
    /// `bool`: it was not in force already.
    fn take(
        &mut self,
        files: SignedFiles,
        origin: &Path,
        now: Timestamp,
    ) -> Result<(Arc<Accepted>, bool), Refusal> {
        if let Some(cur) = &self.current
            && cur.digest_hex() == files.verified.digest_hex()
        {
            return Ok((cur.clone(), false));
        }
        let (accepted, _) = self
            .store
            .accept(files, now)
            .map_err(|source| Refusal::Store {
                path: origin.display().to_string(),
                source,
            })?;
        let policy = Arc::new(accepted);
        self.current = Some(policy.clone());
        // A newer policy: a refusal after it is news again.
        self.reported.clear();
        self.after_new_policy(now);
        Ok((policy, true))
    }

    /// The outcome of a read or an offer, its refusal de-duplicated.
    fn outcome(&mut self, read: Result<(Arc<Accepted>, bool), Refusal>) -> Outcome {
        match read {
            Ok((policy, new)) => Outcome::Accepted {
                policy,
                new,
                recovered: self.refusal.take().is_some(),
            },
            Err(reason) => {
                let text = reason.to_string();
                let first = self.report(&text);
                self.refusal = Some(text);
                Outcome::Refused { reason, first }
            }
        }
    }

    /// Whether the refusal `text` is to be reported now (not reported within
    /// [`REPORT_AGAIN_AFTER`]); remembered as reported if so.
    fn report(&mut self, text: &str) -> bool {
        let now = Instant::now();
        self.reported
            .retain(|(_, at)| now.duration_since(*at) < REPORT_AGAIN_AFTER);
        if self.reported.iter().any(|(t, _)| t == text) {
            return false;
        }
        if self.reported.len() >= REPORTED_KEPT {
            self.reported.remove(0);
        }
        self.reported.push((text.to_string(), now));
        true
    }

    /// [`reload`](Self::reload) right after a change event, when the signature may still be
    /// on its way: a refusal is not taken as reported (the next read's `first` is as if this
    /// one had not happened), so the caller can log it quietly and check again shortly.
    pub fn reload_tentatively(&mut self, now: Timestamp) -> Outcome {
        let before = (self.refusal.clone(), self.reported.clone());
        let outcome = self.reload(now);
        if matches!(outcome, Outcome::Refused { .. }) {
            (self.refusal, self.reported) = before;
        }
        outcome
    }

    /// A verified policy from elsewhere (`origin`, named in a refusal: a peer): through the
    /// store, then in force if it is new.
    pub fn offer(&mut self, files: SignedFiles, origin: &str, now: Timestamp) -> Outcome {
        let taken = self.take(files, Path::new(origin), now);
        self.outcome(taken)
    }

    /// Verifies a policy that did not come from the files (a peer's), against `keys`,
    /// reusing the node blocks of the last one verified. `name` says where it came from in
    /// an error. It still has to be [`offer`](Self::offer)ed to be in force.
    pub fn verify(
        &mut self,
        name: &str,
        policy: Vec<u8>,
        signature: Vec<u8>,
        keys: &TrustedKeys,
        now: Timestamp,
    ) -> Result<SignedFiles, VerifyError> {
        let verified =
            verify_policy_reusing(name, &policy, &signature, keys, now, &mut self.blocks)?;
        Ok(SignedFiles {
            verified,
            policy,
            signature,
            trust: Vec::new(),
        })
    }

    /// Takes the files as read at their present stamp without reading them: what a change
    /// the next [`poll`](Self::poll) must not see looks like (tests of a missed change).
    #[doc(hidden)]
    pub fn mark_read(&mut self) {
        self.stamp = Some(Stamp::of(&self.paths.policy));
    }

    /// Forgets the files' stamp: the next [`poll`](Self::poll) reads them.
    pub fn forget_stamp(&mut self) {
        self.stamp = None;
    }

    /// Where this daemon keeps a copy of the policy in force ([`load::in_force_path`]).
    pub fn copy_path(&self) -> PathBuf {
        load::in_force_path(&self.paths.state)
    }

    /// Keeps a copy of the policy in force beside the rollback state: what `tyd status`
    /// shows, and what [`fall_back_to_copy`](Self::fall_back_to_copy) reads after a restart.
    pub fn keep_copy(&self) -> Result<(), FileError> {
        match &self.current {
            Some(p) => {
                load::save_in_force(&self.paths.state, &p.files().policy, &p.files().signature)
            }
            None => Ok(()),
        }
    }

    /// At start, while the files are refused: the copy of the policy in force before the
    /// restart, if there is one, it still verifies and the store accepts it (it is what the
    /// store last accepted). `None` when a policy is in force already or there is no copy.
    pub fn fall_back_to_copy(&mut self, now: Timestamp) -> Option<Outcome> {
        let copy = self.copy_path();
        if self.current.is_some() || !copy.exists() {
            return None;
        }
        let refusal = self.refusal.take();
        let taken = load::load_signed(&copy, &self.paths.trust, now)
            .map_err(Refusal::Load)
            .and_then(|files| self.take(files, &copy, now));
        let outcome = self.outcome(taken);
        // The files in place are still refused (the next read of them says whether that is
        // news).
        self.refusal = refusal;
        Some(outcome)
    }
}
