//! The join endpoint's two jobs. A master (a node holding the operator key) admits: it checks
//! the token, runs the handshake, decides (`admit`), adds the node, signs the new policy and
//! writes it where netguard and clusterd read it (clusterd then carries it to every member),
//! and answers with it. Any other member relays the connection, bytes only, to a master
//! through the tunnels: the exchange stays end to end between joiner and master.
//!
//! Here: joins with a token. `approval`: joins without a token. `leave`: a member leaving.
//! `signing`: the policy in force and signing the next serial. `settle`: forks with another
//! master. `relay`: a member's side.

use std::io::{Read, Write};
use std::net::IpAddr;
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use ed25519_dalek::SigningKey;
use jiff::Timestamp;
use policy::Role;

use crate::admit::{Admission, Binding, JoinAnswer, JoinRequest, Replaceable, decide};
use crate::token::{TokenId, TokenStore};
use crate::wire::{self, Hello, WireError};

mod approval;
mod leave;
mod membership;
mod relay;
mod settle;
mod signing;

pub use leave::{CLOSE_WAIT, LeaveAnswer, LeaveRefusal};
pub use relay::{RelayError, relay};
pub use settle::Forked;
pub use signing::{
    EXPIRED_KEPT_FOR, SharedPolicy, effective_in_force, expired_for_good, policy_in_force,
};

/// What a master signs with.
#[derive(Debug)]
pub enum Signer {
    /// The operator key: the master edits and signs the policy itself (clusters made before
    /// admission keys, and those that keep the operator key on a master).
    Operator(SigningKey),
    /// Its admission key: the master signs only its membership, within the limits the
    /// operator's policy gives the key; the policy stays the operator's.
    Admission(SigningKey),
}

/// A request is a key, a name and an address: a few hundred bytes.
const MAX_REQUEST: usize = 4096;
/// How long a join without a token waits for the operator's decision.
pub const APPROVAL_WAIT: Duration = Duration::from_secs(600);

/// Where the joins waiting for approval are kept: beside the tokens.
pub fn pending_path(tokens: &std::path::Path) -> PathBuf {
    tokens.with_file_name("pending.json")
}

/// The role of a node admitted by the operator's approval (no token to say): one like the
/// master, as `tyd init`'s first token does. A master on a RAM root admits drones (which owe
/// certaintyd); one on a disk admits servers (which do not, and are not quarantined for it).
pub fn approval_role(master_root_in_ram: bool) -> Role {
    if master_root_in_ram {
        Role::Drone
    } else {
        Role::Server
    }
}

/// Whether `/` is a RAM filesystem (tmpfs or ramfs) here (`tyd init` asks too).
pub fn root_in_ram() -> bool {
    // ramfs's magic (linux/magic.h) is not among nix's constants.
    const RAMFS_MAGIC: i64 = 0x8584_58f6;
    nix::sys::statfs::statfs("/").is_ok_and(|s| {
        let t = s.filesystem_type();
        t == nix::sys::statfs::TMPFS_MAGIC || t.0 == RAMFS_MAGIC
    })
}

/// Joins without a token a master begins (handshakes) per minute, from all sources: each
/// shows a fresh code, so a party in the middle holding a joiner's code could otherwise open
/// connections until the master's code matched (295 a second were measured): at this rate a
/// 10-minute wait gives it 200 tries at a one-in-10^6 code. Joins with a token are not
/// counted.
pub const APPROVALS_PER_MINUTE: usize = 20;

/// How long a relay waits to reach a master.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Where a connection to the join port came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// From the LAN: a joiner itself.
    Lan(IpAddr),
    /// From a member's tunnel address: that member leaving, or a join relayed by a member
    /// that sent no record of where the joiner came from (its claimed endpoint is taken).
    Tunnel(IpAddr),
    /// A join relayed by the member at `relay`, which saw the joiner at `seen` on its LAN.
    Relayed { relay: IpAddr, seen: IpAddr },
}

impl Source {
    /// Where the joiner was seen: the connection's source, or the relay's record of it.
    pub fn seen(self) -> Option<IpAddr> {
        match self {
            Source::Lan(ip) | Source::Relayed { seen: ip, .. } => Some(ip),
            Source::Tunnel(_) => None,
        }
    }
}

/// How one join connection ended, for the log.
#[derive(Debug)]
pub enum Outcome {
    /// A join without a token ended. `decided`: the operator approved or denied it, or let
    /// it wait out; otherwise it ended before (no valid request, a refusal at once, a full
    /// list, a hang-up) and counts against its source like a failed attempt: a party in the
    /// middle that opens connections until the master's code equals the joiner's ends each
    /// one that way.
    ApprovalEnded {
        code: String,
        result: String,
        decided: bool,
    },
    /// Too many joins without a token began in the last minute ([`APPROVALS_PER_MINUTE`]):
    /// closed before the handshake.
    ApprovalsBusy,
    /// A member left (removed at its own request).
    Left {
        id: u16,
        name: String,
        serial: u64,
    },
    LeaveRefused {
        from: IpAddr,
        reason: String,
    },
    /// A member was told it was removed, but the new policy could not be written.
    LeaveNotWritten {
        id: u16,
        name: String,
        reason: String,
    },
    Joined {
        token: TokenId,
        id: u16,
        name: String,
        serial: u64,
        /// An ephemeral drone's lost entry, now under its new key.
        replaced: bool,
    },
    /// The key was already a member (a retry): answered with the policy in force.
    Already {
        token: TokenId,
        id: u16,
        name: String,
    },
    /// Authenticated, but refused (the joiner is told why).
    Refused {
        token: TokenId,
        reason: String,
    },
    /// No join exchange: a wrong token, garbage, a timeout. Counts against the source.
    Failed(WireError),
    /// A relayed join with a token this master did not make: the relay asks another.
    NotMine {
        token: TokenId,
    },
}

impl Outcome {
    /// What the connection tells about the joiner behind it, for its back-off.
    pub fn verdict(&self) -> crate::guard::Verdict {
        use crate::guard::Verdict;
        match self {
            Outcome::Failed(_) | Outcome::ApprovalEnded { decided: false, .. } => Verdict::Failed,
            // The approvals of the minute were used up by others: not this joiner's doing
            // (whoever used them up is backed off by its own cut-short joins).
            Outcome::ApprovalEnded { decided: true, .. }
            | Outcome::NotMine { .. }
            | Outcome::ApprovalsBusy => Verdict::Neutral,
            Outcome::Joined { .. }
            | Outcome::Already { .. }
            | Outcome::Refused { .. }
            | Outcome::Left { .. }
            | Outcome::LeaveRefused { .. }
            | Outcome::LeaveNotWritten { .. } => Verdict::Proved,
        }
    }
}

/// What went wrong inside a master (its own files), as opposed to a refusal of the joiner:
/// logged on the master; the joiner learns only that the master could not admit it.
#[derive(Debug, thiserror::Error)]
pub enum MasterError {
    #[error(transparent)]
    Edit(#[from] policy::edit::EditError),
    #[error(transparent)]
    File(#[from] policy::fsutil::FileError),
    #[error(transparent)]
    Tokens(#[from] crate::token::StoreError),
    #[error(transparent)]
    Pending(#[from] crate::pending::PendingError),
    #[error(transparent)]
    Journal(#[from] crate::fork::JournalError),
    #[error(transparent)]
    Load(#[from] policy::LoadError),
    #[error("no acceptable policy in force")]
    NoPolicy,
    /// A master with an admission key never signs the policy.
    #[error(
        "this master holds an admission key, not the operator key: the operator signs the policy"
    )]
    NotOperator,
    /// What this master just signed and wrote is not what its own rollback store took.
    #[error("the policy just signed is not in force here: {0}")]
    NotTaken(String),
}

#[derive(Debug, thiserror::Error)]
pub(super) enum ServeError {
    #[error(transparent)]
    Wire(#[from] WireError),
    #[error(transparent)]
    Master(#[from] MasterError),
}

/// A master's side of joins.
#[derive(Debug)]
pub struct Master {
    /// The policy file this node's netguard and clusterd read: replaced by what is signed.
    pub policy: PathBuf,
    /// The policy in force: what is edited and signed.
    in_force: SharedPolicy,
    pub signer: Signer,
    pub tokens: PathBuf,
    /// Joins without a token waiting for the operator (`tyd join list`), beside the tokens.
    pub pending: PathBuf,
    /// How long such a join waits for a decision.
    pub approval_wait: Duration,
    /// This node's clusterd view (`clusterd --view`): which nodes the cluster has lost, for
    /// ephemeral drones coming back with a new key. None: no entry is ever taken over.
    pub view: Option<PathBuf>,
    /// The nodes this master admitted lately (`fork`), beside the tokens.
    pub journal: PathBuf,
    /// The operator keys a fork fetched from a peer must be signed by (`--trust`); None:
    /// this master's own key only.
    pub trust: Option<PathBuf>,
    /// One admission at a time: each reads the policy the previous one wrote.
    lock: Mutex<()>,
    /// When the joins without a token of the last minute began.
    approvals: Mutex<std::collections::VecDeque<std::time::Instant>>,
    /// The policy file's (modified, length) when [`Master::settle_newer`] last looked.
    settled_at: Mutex<Option<(std::time::SystemTime, u64)>>,
    /// joind is stopping: joins waiting for the operator end now ([`Master::stop`]).
    stopping: std::sync::atomic::AtomicBool,
    /// The digest of the policy [`Master::resign_own_membership`] last looked under.
    resigned_for: Mutex<Option<String>>,
}

impl Master {
    /// A master signing with `operator` from the policy `in_force` holds (its file is where
    /// the result is written).
    pub fn new(in_force: SharedPolicy, operator: SigningKey, tokens: PathBuf) -> Self {
        Self::signing_with(in_force, Signer::Operator(operator), tokens)
    }

    /// A master admitting with its admission key `key`: it signs only its membership.
    pub fn admitting(in_force: SharedPolicy, key: SigningKey, tokens: PathBuf) -> Self {
        Self::signing_with(in_force, Signer::Admission(key), tokens)
    }

    /// Whether this master signs with an admission key (never the policy).
    pub fn admits_with_key(&self) -> bool {
        matches!(self.signer, Signer::Admission(_))
    }

    fn signing_with(in_force: SharedPolicy, signer: Signer, tokens: PathBuf) -> Self {
        let policy = in_force
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .paths()
            .policy
            .clone();
        Self {
            policy,
            in_force,
            signer,
            pending: pending_path(&tokens),
            journal: crate::fork::journal_path(&tokens),
            trust: None,
            tokens,
            approval_wait: APPROVAL_WAIT,
            view: None,
            lock: Mutex::new(()),
            approvals: Mutex::new(std::collections::VecDeque::new()),
            settled_at: Mutex::new(None),
            stopping: std::sync::atomic::AtomicBool::new(false),
            resigned_for: Mutex::new(None),
        }
    }

    /// joind is stopping: every join waiting for the operator ends within 0.25 s, its joiner
    /// told to ask again (a stop waited for them, up to 10 minutes).
    pub fn stop(&self) {
        self.stopping
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// Serves one connection to the join port: a join, or a member's leave.
    pub fn serve<S: Read + Write + AsFd>(&self, mut stream: S, from: Source) -> Outcome {
        match wire::read_hello(&mut stream) {
            Err(e) => Outcome::Failed(e),
            Ok(Hello::Join(id)) => {
                // Straight from the joiner: its endpoint must be where it came from. Through a
                // member's tunnel: relayed, the member saw the joiner.
                let relayed = matches!(from, Source::Relayed { .. });
                self.serve_join(stream, id, from.seen(), relayed)
            }
            Ok(Hello::Leave) => match from {
                Source::Tunnel(ip) => self.serve_leave(stream, ip),
                Source::Lan(_) | Source::Relayed { .. } => Outcome::Failed(WireError::NotJoin),
            },
            Ok(Hello::Approval) => {
                if !self.approval_may_begin(std::time::Instant::now()) {
                    return Outcome::ApprovalsBusy;
                }
                self.serve_approval(stream, from.seen())
            }
        }
    }

    fn serve_join<S: Read + Write>(
        &self,
        mut stream: S,
        id: TokenId,
        seen: Option<IpAddr>,
        relayed: bool,
    ) -> Outcome {
        let store = match TokenStore::load(&self.tokens) {
            Ok(s) => s,
            Err(e) => {
                return Outcome::Refused {
                    token: id,
                    reason: format!("master cannot read its tokens: {e}"),
                };
            }
        };
        if relayed {
            // The relay asks each master in turn for the one that made the token.
            let mine = store.get(&id).is_some();
            let byte = if mine {
                wire::RELAY_MINE
            } else {
                wire::RELAY_NOT_MINE
            };
            if let Err(e) = stream.write_all(&[byte]).and_then(|()| stream.flush()) {
                return Outcome::Failed(e.into());
            }
            if !mine {
                return Outcome::NotMine { token: id };
            }
        }
        let psk = store.get(&id).and_then(|t| t.psk());
        let mut ch = match wire::accept(stream, &id, psk.as_ref()) {
            Ok(ch) => ch,
            Err(e) => return Outcome::Failed(e),
        };
        let (answer, outcome) = match self.admit(&mut ch, &id, seen) {
            Ok((answer, outcome)) => (answer, outcome),
            Err(ServeError::Wire(e)) => return Outcome::Failed(e),
            // The joiner learns that it failed, not the master's paths and internals.
            Err(ServeError::Master(reason)) => (
                JoinAnswer::Refused {
                    reason: "the master could not admit this node; its log says why".into(),
                },
                Outcome::Refused {
                    token: id,
                    reason: reason.to_string(),
                },
            ),
        };
        let bytes = serde_json::to_vec(&answer).unwrap_or_default();
        if let Err(e) = ch.send(&bytes) {
            // Admitted but the answer was lost: a retry with the same key gets it again.
            return match outcome {
                Outcome::Joined { .. } | Outcome::Already { .. } => outcome,
                _ => Outcome::Failed(e),
            };
        }
        outcome
    }

    /// A join with a token: the request read, the token checked, the node added and the
    /// token spent.
    fn admit<S: Read + Write>(
        &self,
        ch: &mut wire::Channel<S>,
        id: &TokenId,
        seen: Option<IpAddr>,
    ) -> Result<(JoinAnswer, Outcome), ServeError> {
        let req = match read_request(ch)? {
            Ok(r) => r,
            Err(malformed) => return Ok(token_refused(id, malformed.to_string())),
        };
        let _one_at_a_time = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        // tyd token create/revoke rewrite the store from other processes.
        let _tokens = TokenStore::lock(&self.tokens).map_err(MasterError::from)?;
        let now = Timestamp::now();
        let mut store = TokenStore::load(&self.tokens).map_err(MasterError::from)?;
        let (roles, ephemeral) = match store.check(id, now) {
            Ok(t) => (t.roles.clone(), t.ephemeral),
            Err(r) => return Ok(token_refused(id, r.to_string())),
        };
        let replace = ephemeral.then(|| self.replaceable(&store, now));
        // The token is spent before the policy is written: a crash between the two costs a
        // use, never grants a second join. Taking over a lost ephemeral entry spends nothing
        // (the drone already paid for its place).
        let spend = |admission: &Admission| {
            if let Admission::Add(new) = admission {
                store.consume(id);
                if ephemeral {
                    store.record_ephemeral(new.id.get(), &new.public_key);
                }
            }
            if let Admission::Replace { id, public_key, .. } = admission {
                store.record_ephemeral(id.get(), public_key);
            }
            store.save(&self.tokens).map_err(MasterError::from)
        };
        let exchange = *ch.handshake_hash();
        let asked = Asked::over(&req, seen, &exchange);
        let added = self.add(asked, &roles, replace.as_ref(), spend)?;
        Ok(token_answer(id, added))
    }

    /// The ephemeral entries a join may take over, and which of them the cluster has lost.
    fn replaceable(&self, store: &TokenStore, now: Timestamp) -> Replaceable {
        let ephemeral = match effective_in_force(&self.in_force, now) {
            Some(p) => store.ephemeral_in(&p).into_iter().collect(),
            None => Default::default(),
        };
        let lost = match &self.view {
            None => Default::default(),
            Some(path) => match policy::fsutil::read(path) {
                Ok(bytes) => match crate::lost::lost_nodes(&bytes, now) {
                    Ok(lost) => lost,
                    Err(e) => {
                        tracing::warn!(view = %path.display(), error = %e, "cluster view unusable: no entry is taken over");
                        Default::default()
                    }
                },
                Err(e) => {
                    tracing::warn!(error = %e, "cluster view unreadable: no entry is taken over");
                    Default::default()
                }
            },
        };
        Replaceable { ephemeral, lost }
    }

    /// Decides on `asked` and, if it changes the map, calls `before_write` with the decision
    /// (spending a token) and writes the signed policy. The caller holds the lock.
    fn add(
        &self,
        asked: Asked<'_>,
        roles: &[Role],
        replace: Option<&Replaceable>,
        before_write: impl FnOnce(&Admission) -> Result<(), MasterError>,
    ) -> Result<Added, ServeError> {
        if let Signer::Admission(key) = &self.signer {
            return self.add_to_membership(key, asked, roles, replace, before_write);
        }
        let now = Timestamp::now();
        let (mut edit, current) = self.edit_in_force(now)?;
        let Asked { req, seen, binding } = asked;
        let admission = match decide(&current, req, seen, roles, replace, None, binding) {
            Err(r) if r.is_temporary() => return Ok(Added::Later(r.to_string())),
            Err(r) => return Ok(Added::Refused(r.to_string())),
            Ok(a) => a,
        };
        let (node, name, serial, replaced) = match &admission {
            Admission::Already { id, name } => (id.get(), name.clone(), None, false),
            Admission::Add(new) => {
                edit.add_node(new).map_err(MasterError::from)?;
                before_write(&admission)?;
                let (p, digest) = self.sign_and_write(edit, &current, now)?;
                self.remember(new, p.cluster.serial, digest, now);
                (
                    new.id.get(),
                    new.name.clone(),
                    Some(p.cluster.serial),
                    false,
                )
            }
            Admission::Replace {
                id,
                name,
                public_key,
            } => {
                edit.set_node_key(*id, public_key)
                    .map_err(MasterError::from)?;
                before_write(&admission)?;
                let (p, _) = self.sign_and_write(edit, &current, now)?;
                (id.get(), name.clone(), Some(p.cluster.serial), true)
            }
        };
        // What is in force now: the policy just signed, or the one the node is already in.
        let answer = self.accepted_answer(node, name.clone(), now)?;
        Ok(match serial {
            Some(serial) => Added::New {
                node,
                name,
                serial,
                answer,
                replaced,
            },
            None => Added::Already { node, name, answer },
        })
    }

    /// Journals a node this master added in the policy of `serial` and `digest`, for a fork
    /// (`crate::fork`). A journal that cannot be written costs only that: logged.
    fn remember(&self, new: &policy::edit::NewNode, serial: u64, digest: String, now: Timestamp) {
        let Some(entry) = crate::fork::Admitted::of(new, serial, digest, now) else {
            return;
        };
        let result = crate::fork::Journal::load(&self.journal).and_then(|mut j| {
            j.prune(now);
            j.admitted.push(entry);
            j.save(&self.journal)
        });
        if let Err(e) = result {
            tracing::warn!(error = %e, node = new.id.get(),
                "cannot journal an admission: a fork with another master's signing would not carry it over");
        }
    }
}

/// A join request as it reached this master: what it asks, where the joiner was seen (see
/// [`decide`]), and what its TPM proof must be bound to.
#[derive(Clone, Copy)]
pub(super) struct Asked<'a> {
    pub req: &'a JoinRequest,
    pub seen: Option<IpAddr>,
    pub binding: Binding<'a>,
}

impl<'a> Asked<'a> {
    /// `req`, seen at `seen`, in the exchange of handshake hash `exchange`.
    pub fn over(req: &'a JoinRequest, seen: Option<IpAddr>, exchange: &'a [u8; 32]) -> Self {
        Self {
            req,
            seen,
            binding: Binding::Exchange(exchange),
        }
    }
}

/// What [`Master::add`] did.
pub(super) enum Added {
    Refused(String),
    /// Not now; the joiner may retry.
    Later(String),
    Already {
        node: u16,
        name: String,
        answer: JoinAnswer,
    },
    New {
        node: u16,
        name: String,
        serial: u64,
        answer: JoinAnswer,
        replaced: bool,
    },
}

/// A join with token `id` refused with `reason`: the joiner's answer and the outcome.
fn token_refused(id: &TokenId, reason: String) -> (JoinAnswer, Outcome) {
    (
        JoinAnswer::Refused {
            reason: reason.clone(),
        },
        Outcome::Refused {
            token: id.clone(),
            reason,
        },
    )
}

/// What [`Master::add`] did with a join with token `id`: the joiner's answer and the outcome.
fn token_answer(id: &TokenId, added: Added) -> (JoinAnswer, Outcome) {
    match added {
        Added::Refused(reason) => token_refused(id, reason),
        Added::Later(reason) => (
            JoinAnswer::Later {
                reason: reason.clone(),
            },
            Outcome::Refused {
                token: id.clone(),
                reason,
            },
        ),
        Added::Already { node, name, answer } => (
            answer,
            Outcome::Already {
                token: id.clone(),
                id: node,
                name,
            },
        ),
        Added::New {
            node,
            name,
            serial,
            answer,
            replaced,
        } => (
            answer,
            Outcome::Joined {
                token: id.clone(),
                id: node,
                name,
                serial,
                replaced,
            },
        ),
    }
}

/// A request that is not one (the joiner is told so, made printable).
#[derive(Debug, thiserror::Error)]
#[error("malformed request: {}", policy::parse::shown(&.0.to_string()))]
pub(super) struct Malformed(serde_json::Error);

/// The request, or why it is refused (malformed).
fn read_request<S: Read + Write>(
    ch: &mut wire::Channel<S>,
) -> Result<Result<JoinRequest, Malformed>, ServeError> {
    let raw = ch.receive_limited(MAX_REQUEST)?;
    Ok(serde_json::from_slice(&raw).map_err(Malformed))
}
