//! The join endpoint's two jobs. A master (a node holding the operator key) admits: it checks
//! the token, runs the handshake, decides (`admit`), adds the node, signs the new policy and
//! writes it where netguard and clusterd read it (clusterd then carries it to every member),
//! and answers with it. Any other member relays the connection, bytes only, to a master
//! through the tunnels: the exchange stays end to end between joiner and master.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use ed25519_dalek::SigningKey;
use jiff::Timestamp;
use policy::edit::PolicyEdit;
use policy::{OperatorPublicKey, Role};

use crate::admit::{Admission, JoinAnswer, JoinRequest, Replaceable, decide};
use crate::pending::{Decision, PendingStore};
use crate::token::{TokenId, TokenStore};
use crate::wire::{self, Hello, WireError};

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

/// How long after a node's `expires`, by its own clock, a master keeps the entry in the
/// policies it signs. Members stop using the node at the instant by their clocks; a master
/// whose clock ran 3 h ahead signed a node out 2 h before it expired. The entry is dropped
/// once the instant is this far behind, so a master's clock must be a day ahead to drop it
/// early.
pub const EXPIRED_KEPT_FOR: jiff::SignedDuration = jiff::SignedDuration::from_hours(24);

/// Whether a node that expires at `expires` is dropped from a policy signed at `now`.
pub fn expired_for_good(expires: Timestamp, now: Timestamp) -> bool {
    expires
        .checked_add(EXPIRED_KEPT_FOR)
        .is_ok_and(|gone| gone <= now)
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

/// A master's answer to a leave, one JSON line.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum LeaveAnswer {
    Removed { node: u16 },
    Refused { reason: String },
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
            Outcome::Failed(_)
            | Outcome::ApprovalsBusy
            | Outcome::ApprovalEnded { decided: false, .. } => Verdict::Failed,
            Outcome::ApprovalEnded { decided: true, .. } | Outcome::NotMine { .. } => {
                Verdict::Neutral
            }
            Outcome::Joined { .. }
            | Outcome::Already { .. }
            | Outcome::Refused { .. }
            | Outcome::Left { .. }
            | Outcome::LeaveRefused { .. } => Verdict::Proved,
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
    Verify(#[from] policy::VerifyError),
    #[error("{path}: {reason}")]
    Trust { path: String, reason: String },
}

/// Why a member's leave was refused.
#[derive(Debug, thiserror::Error)]
pub enum LeaveRefusal {
    #[error("{0} is no member's tunnel address")]
    NotAMember(IpAddr),
    #[error("the last master cannot leave (tyd node remove, by hand)")]
    LastMaster,
    #[error(transparent)]
    Master(#[from] MasterError),
}

#[derive(Debug, thiserror::Error)]
enum ServeError {
    #[error(transparent)]
    Wire(#[from] WireError),
    #[error(transparent)]
    Master(#[from] MasterError),
}

/// A master's side of joins.
#[derive(Debug)]
pub struct Master {
    /// The policy file this node's netguard and clusterd read: edited, signed, replaced.
    pub policy: PathBuf,
    pub operator: SigningKey,
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
}

impl Master {
    pub fn new(policy: PathBuf, operator: SigningKey, tokens: PathBuf) -> Self {
        Self {
            policy,
            operator,
            pending: pending_path(&tokens),
            journal: crate::fork::journal_path(&tokens),
            trust: None,
            tokens,
            approval_wait: APPROVAL_WAIT,
            view: None,
            lock: Mutex::new(()),
            approvals: Mutex::new(std::collections::VecDeque::new()),
            settled_at: Mutex::new(None),
        }
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

    /// The member at tunnel address `from` leaves: removed from the map, signed, written.
    fn serve_leave<S: Read + Write>(&self, mut stream: S, from: IpAddr) -> Outcome {
        let (answer, outcome) = match self.remove(from) {
            Ok((id, name, serial)) => (
                LeaveAnswer::Removed { node: id },
                Outcome::Left { id, name, serial },
            ),
            Err(refusal) => (
                LeaveAnswer::Refused {
                    reason: refusal.to_string(),
                },
                Outcome::LeaveRefused {
                    from,
                    reason: refusal.to_string(),
                },
            ),
        };
        let mut line = serde_json::to_vec(&answer).unwrap_or_default();
        line.push(b'\n');
        let _ = stream.write_all(&line).and_then(|()| stream.flush());
        outcome
    }

    fn remove(&self, from: IpAddr) -> Result<(u16, String, u64), LeaveRefusal> {
        let _one_at_a_time = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        let now = Timestamp::now();
        let mut edit = PolicyEdit::open(&self.policy).map_err(MasterError::from)?;
        let current = edit.current(now).map_err(MasterError::from)?;
        let node = current
            .nodes
            .iter()
            .find(|n| n.addresses.contains(&from))
            .ok_or(LeaveRefusal::NotAMember(from))?;
        let masters = current
            .nodes
            .iter()
            .filter(|n| n.roles.contains(&Role::Master))
            .count();
        if node.roles.contains(&Role::Master) && masters == 1 {
            return Err(LeaveRefusal::LastMaster);
        }
        let (id, name) = (node.id, node.name.clone());
        edit.remove_node(id).map_err(MasterError::from)?;
        let serial = self.sign_and_write(edit, &current, now)?.0.cluster.serial;
        Ok((id.get(), name, serial))
    }

    /// Drops nodes whose `expires` passed [`EXPIRED_KEPT_FOR`] ago by this master's clock
    /// (members stop using a node at its instant by their own clocks; the entry itself goes
    /// only once even a clock that far ahead cannot be early), bumps the serial, signs, and
    /// writes the pair.
    fn sign_and_write(
        &self,
        mut edit: PolicyEdit,
        current: &policy::Policy,
        now: Timestamp,
    ) -> Result<(policy::Policy, String), MasterError> {
        for n in &current.nodes {
            if let Some(expires) = n.expires
                && expired_for_good(expires, now)
            {
                tracing::info!(node = n.id.get(), name = %n.name, expires = %expires,
                    "dropping a node expired more than a day ago by this master's clock");
                // Already gone when the edit was a removal of this very node (a leave).
                match edit.remove_node(n.id) {
                    Ok(()) | Err(policy::edit::EditError::NoSuchNode(_)) => {}
                    Err(e) => return Err(e.into()),
                }
            }
        }
        let (text, p) = edit.commit_text(now)?;
        let sig = policy::sign(text.as_bytes(), &self.operator);
        policy::write_signed_pair(&self.policy, text.as_bytes(), sig.as_bytes())?;
        Ok((p, crate::fork::digest(text.as_bytes())))
    }

    fn admit<S: Read + Write>(
        &self,
        ch: &mut wire::Channel<S>,
        id: &TokenId,
        seen: Option<IpAddr>,
    ) -> Result<(JoinAnswer, Outcome), ServeError> {
        let refused = |reason: String| {
            (
                JoinAnswer::Refused {
                    reason: reason.clone(),
                },
                Outcome::Refused {
                    token: id.clone(),
                    reason,
                },
            )
        };
        let req = match read_request(ch)? {
            Ok(r) => r,
            Err(reason) => return Ok(refused(reason)),
        };
        let _one_at_a_time = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        // tyd token create/revoke rewrite the store from other processes.
        let _tokens = TokenStore::lock(&self.tokens).map_err(MasterError::from)?;
        let now = Timestamp::now();
        let mut store = TokenStore::load(&self.tokens).map_err(MasterError::from)?;
        let (roles, ephemeral) = match store.check(id, now) {
            Ok(t) => (t.roles.clone(), t.ephemeral),
            Err(r) => return Ok(refused(r.to_string())),
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
        Ok(
            match self.add(&req, seen, &roles, replace.as_ref(), spend)? {
                Added::Refused(reason) => refused(reason),
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
            },
        )
    }

    /// The ephemeral entries a join may take over, and which of them the cluster has lost.
    fn replaceable(&self, store: &TokenStore, now: Timestamp) -> Replaceable {
        let current = PolicyEdit::open(&self.policy).and_then(|e| e.current(now));
        let ephemeral = match &current {
            Ok(p) => store.ephemeral_in(p).into_iter().collect(),
            Err(_) => Default::default(),
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

    /// Decides on `req` and, if it changes the map, calls `before_write` with the decision
    /// (spending a token) and writes the signed policy. The caller holds the lock.
    fn add(
        &self,
        req: &JoinRequest,
        seen: Option<IpAddr>,
        roles: &[Role],
        replace: Option<&Replaceable>,
        before_write: impl FnOnce(&Admission) -> Result<(), MasterError>,
    ) -> Result<Added, ServeError> {
        let now = Timestamp::now();
        let mut edit = PolicyEdit::open(&self.policy).map_err(MasterError::from)?;
        let current = edit.current(now).map_err(MasterError::from)?;
        let admission = match decide(&current, req, seen, roles, replace) {
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
        let read = |p: &std::path::Path| {
            policy::fsutil::read(p)
                .map(|b| String::from_utf8_lossy(&b).into_owned())
                .map_err(|e| ServeError::Master(e.into()))
        };
        let answer = JoinAnswer::Accepted {
            node,
            name: name.clone(),
            policy: read(&self.policy)?,
            signature: read(&policy::signature_path(&self.policy))?,
            operator_key: OperatorPublicKey::from(&self.operator).to_base64(),
        };
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
        let Some(endpoint) = new.endpoint else {
            return;
        };
        let result = crate::fork::Journal::load(&self.journal).and_then(|mut j| {
            j.prune(now);
            j.admitted.push(crate::fork::Admitted {
                serial,
                digest,
                public_key: new.public_key.to_base64(),
                name: new.name.clone(),
                endpoint,
                roles: new.roles.clone(),
                at: now,
            });
            j.save(&self.journal)
        });
        if let Err(e) = result {
            tracing::warn!(error = %e, node = new.id.get(),
                "cannot journal an admission: a fork with another master's signing would not carry it over");
        }
    }

    /// Settles a fork that clusterd put beside the policy (`crate::fork`): when this
    /// master's policy lost, signs the next serial from the other's with the nodes it had
    /// admitted in its own. None when there is no fork file.
    pub fn settle_fork(&self) -> Option<Result<Forked, MasterError>> {
        let fork_file = crate::fork::fork_path(&self.policy);
        if !fork_file.exists() {
            return None;
        }
        let _one_at_a_time = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        let result = self.settle_fork_locked(&fork_file);
        for f in [policy::signature_path(&fork_file), fork_file] {
            let _ = std::fs::remove_file(f);
        }
        Some(result)
    }

    /// The signed policy at `path`, verified against the trusted keys (`--trust`, or this
    /// master's own key): its bytes and the policy.
    fn read_verified(
        &self,
        path: &std::path::Path,
        now: Timestamp,
    ) -> Result<(Vec<u8>, policy::Policy), MasterError> {
        let trust = match &self.trust {
            Some(path) => {
                let bytes = policy::fsutil::read(path)?;
                policy::TrustedKeys::parse(&String::from_utf8_lossy(&bytes)).map_err(|reason| {
                    MasterError::Trust {
                        path: path.display().to_string(),
                        reason,
                    }
                })?
            }
            None => policy::TrustedKeys::new(vec![OperatorPublicKey::from(&self.operator)]),
        };
        let (bytes, sig) = policy::fsutil::read_signed_pair(
            path,
            &policy::signature_path(path),
            policy::load::MAX_POLICY_BYTES,
            64 << 10,
        );
        let (bytes, sig) = (bytes?, sig?);
        let v = policy::verify_policy(&path.display().to_string(), &bytes, &sig, &trust, now)?;
        Ok((bytes, (*v).clone()))
    }

    fn settle_fork_locked(&self, fork_file: &std::path::Path) -> Result<Forked, MasterError> {
        let now = Timestamp::now();
        let (mine, in_force) = self.read_verified(&self.policy, now)?;
        let (theirs, fork) = self.read_verified(fork_file, now)?;
        let (digest, fork_digest) = (crate::fork::digest(&mine), crate::fork::digest(&theirs));
        let mut journal = crate::fork::Journal::load(&self.journal)?;
        let serial = in_force.cluster.serial;
        let carried = match crate::fork::settle(serial, &digest, &fork, &fork_digest, &journal) {
            crate::fork::Settle::NotAFork => return Ok(Forked::NotAFork),
            crate::fork::Settle::Stands => return Ok(Forked::Stands { serial }),
            crate::fork::Settle::Carry(c) if c.is_empty() => {
                return Ok(Forked::NothingToCarry { serial });
            }
            crate::fork::Settle::Carry(c) => c.into_iter().cloned().collect::<Vec<_>>(),
        };
        let (new_serial, nodes) = self.carry(theirs, &fork, &carried, &mut journal, now)?;
        Ok(Forked::Carried {
            lost: serial,
            serial: new_serial,
            nodes,
        })
    }

    /// Signs the next serial from `base` (its file's bytes) with `carried` added again, and
    /// journals them in it.
    fn carry(
        &self,
        base_bytes: Vec<u8>,
        base: &policy::Policy,
        carried: &[crate::fork::Admitted],
        journal: &mut crate::fork::Journal,
        now: Timestamp,
    ) -> Result<(u64, Vec<(u16, String)>), MasterError> {
        let mut edit = PolicyEdit::from_bytes(&self.policy, base_bytes)?;
        let mut nodes = Vec::new();
        for a in carried {
            let current = edit.current(now)?;
            let mut decided = decide(&current, &a.request(), None, &a.roles, None);
            if let Err(crate::admit::Refusal::NameTaken(_)) = decided {
                let mut req = a.request();
                req.name = None;
                decided = decide(&current, &req, None, &a.roles, None);
            }
            match decided {
                Ok(Admission::Add(new)) => {
                    edit.add_node(&new)?;
                    nodes.push(new);
                }
                Ok(_) => {}
                Err(r) => {
                    tracing::error!(name = %a.name, reason = %r,
                        "cannot carry a node this master admitted into the policy in force: it is in no policy now; it must join again");
                }
            }
        }
        let (p, new_digest) = self.sign_and_write(edit, base, now)?;
        journal.admitted.retain(|a| !carried.contains(a));
        for new in &nodes {
            if let Some(endpoint) = new.endpoint {
                journal.admitted.push(crate::fork::Admitted {
                    serial: p.cluster.serial,
                    digest: new_digest.clone(),
                    public_key: new.public_key.to_base64(),
                    name: new.name.clone(),
                    endpoint,
                    roles: new.roles.clone(),
                    at: now,
                });
            }
        }
        journal.prune(now);
        journal.save(&self.journal)?;
        Ok((
            p.cluster.serial,
            nodes.iter().map(|n| (n.id.get(), n.name.clone())).collect(),
        ))
    }

    /// When the policy in force has changed to a newer serial than some of this master's
    /// admissions: carries those it lost to another master's signing into the next serial
    /// (`crate::fork::against_newer`), forgets those settled. None when the policy file is
    /// unchanged since the last call, or there is nothing to say.
    pub fn settle_newer(&self) -> Option<Result<Forked, MasterError>> {
        let stamp = std::fs::metadata(&self.policy)
            .ok()
            .and_then(|m| Some((m.modified().ok()?, m.len())));
        {
            let mut seen = self.settled_at.lock().unwrap_or_else(|p| p.into_inner());
            if *seen == stamp {
                return None;
            }
            *seen = stamp;
        }
        if !self.journal.exists() {
            return None;
        }
        let _one_at_a_time = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        let now = Timestamp::now();
        let result = (|| {
            let mut journal = crate::fork::Journal::load(&self.journal)?;
            let (bytes, in_force) = self.read_verified(&self.policy, now)?;
            let judged = crate::fork::against_newer(&in_force, &journal);
            let carried: Vec<_> = judged.carry.into_iter().cloned().collect();
            let unclear: Vec<_> = judged.unclear.into_iter().cloned().collect();
            let settled: Vec<_> = judged.settled.into_iter().cloned().collect();
            if carried.is_empty() && unclear.is_empty() && settled.is_empty() {
                return Ok(None);
            }
            journal
                .admitted
                .retain(|a| !settled.contains(a) && !unclear.contains(a));
            let serial = in_force.cluster.serial;
            if !carried.is_empty() {
                let lost = carried.iter().map(|a| a.serial).max().unwrap_or(serial);
                let (new_serial, nodes) =
                    self.carry(bytes, &in_force, &carried, &mut journal, now)?;
                return Ok(Some(Forked::Carried {
                    lost,
                    serial: new_serial,
                    nodes,
                }));
            }
            journal.save(&self.journal)?;
            Ok((!unclear.is_empty()).then(|| Forked::Unclear {
                serial,
                names: unclear.iter().map(|a| a.name.clone()).collect(),
            }))
        })();
        result.transpose()
    }

    /// Whether a join without a token may begin at `now` ([`APPROVALS_PER_MINUTE`]).
    fn approval_may_begin(&self, now: std::time::Instant) -> bool {
        let mut began = self.approvals.lock().unwrap_or_else(|p| p.into_inner());
        while began
            .front()
            .is_some_and(|t| now.saturating_duration_since(*t) >= Duration::from_secs(60))
        {
            began.pop_front();
        }
        if began.len() >= APPROVALS_PER_MINUTE {
            return false;
        }
        began.push_back(now);
        true
    }

    /// A join without a token: recorded as waiting with its code, answered when the
    /// operator approves or denies it (`tyd join approve|deny`), or refused after the wait.
    fn serve_approval<S: Read + Write + AsFd>(&self, stream: S, seen: Option<IpAddr>) -> Outcome {
        let (mut ch, code) = match wire::accept_for_approval(stream) {
            Ok(x) => x,
            Err(e) => return Outcome::Failed(e),
        };
        let (answer, outcome) = match self.await_approval(&mut ch, &code, seen) {
            Ok(x) => x,
            Err(ServeError::Wire(e)) => return Outcome::Failed(e),
            Err(ServeError::Master(reason)) => (
                JoinAnswer::Refused {
                    reason: "the master could not admit this node; its log says why".into(),
                },
                Outcome::ApprovalEnded {
                    code,
                    result: reason.to_string(),
                    decided: true,
                },
            ),
        };
        let bytes = serde_json::to_vec(&answer).unwrap_or_default();
        let _ = ch.send(&bytes);
        outcome
    }

    fn await_approval<S: Read + Write + AsFd>(
        &self,
        ch: &mut wire::Channel<S>,
        code: &str,
        seen: Option<IpAddr>,
    ) -> Result<(JoinAnswer, Outcome), ServeError> {
        let ended = |answer: JoinAnswer, result: String, decided: bool| {
            (
                answer,
                Outcome::ApprovalEnded {
                    code: code.to_string(),
                    result,
                    decided,
                },
            )
        };
        let answer = |reason: &str| JoinAnswer::Refused {
            reason: reason.to_string(),
        };
        // Decided by the operator (or by nobody, within the wait).
        let refused = |reason: String| ended(answer(&reason), reason, true);
        // Ended before anyone could decide: counts against the source.
        let cut_short = |reason: String| ended(answer(&reason), reason, false);
        let req = match read_request(ch)? {
            Ok(r) => r,
            Err(reason) => return Ok(cut_short(reason)),
        };
        let roles = [approval_role(root_in_ram())];
        // Refused at once when it could never be admitted (a taken name, a foreign address).
        {
            let now = Timestamp::now();
            let current = PolicyEdit::open(&self.policy)
                .and_then(|e| e.current(now))
                .map_err(MasterError::from)?;
            if let Err(r) = decide(&current, &req, seen, &roles, None) {
                return Ok(cut_short(r.to_string()));
            }
        }
        let id = {
            let _one_at_a_time = self.lock.lock().unwrap_or_else(|p| p.into_inner());
            let mut pending = PendingStore::load(&self.pending).map_err(MasterError::from)?;
            let now = Timestamp::now();
            pending.prune(now, self.approval_wait);
            let id = match pending.add(&req, code, seen, now) {
                Ok(id) => id,
                Err(full) => return Ok(cut_short(full.to_string())),
            };
            pending.save(&self.pending).map_err(MasterError::from)?;
            id
        };
        let until = std::time::Instant::now() + self.approval_wait;
        while std::time::Instant::now() < until {
            std::thread::sleep(Duration::from_millis(250));
            let _one_at_a_time = self.lock.lock().unwrap_or_else(|p| p.into_inner());
            if ch.peer_hung_up() {
                // Its place is free at once (eight gone joiners held eight for 10 minutes).
                let mut pending = PendingStore::load(&self.pending).map_err(MasterError::from)?;
                pending.remove(id);
                pending.save(&self.pending).map_err(MasterError::from)?;
                return Ok(cut_short("the joiner hung up while it waited".into()));
            }
            let mut pending = PendingStore::load(&self.pending).map_err(MasterError::from)?;
            let decision = pending.get(id).map(|r| r.decision);
            match decision {
                None => return Ok(refused("the request was withdrawn on the master".into())),
                Some(Decision::Waiting) => continue,
                Some(Decision::Denied) => {
                    pending.remove(id);
                    pending.save(&self.pending).map_err(MasterError::from)?;
                    return Ok(refused("denied by the operator".into()));
                }
                Some(Decision::Approved) => {
                    pending.remove(id);
                    pending.save(&self.pending).map_err(MasterError::from)?;
                    return Ok(match self.add(&req, seen, &roles, None, |_| Ok(()))? {
                        Added::Refused(reason) | Added::Later(reason) => refused(reason),
                        Added::Already { node, answer, .. } => {
                            ended(answer, format!("approved; already node {node}"), true)
                        }
                        Added::New {
                            node, name, answer, ..
                        } => ended(
                            answer,
                            format!("approved; joined as node {node} ({name})"),
                            true,
                        ),
                    });
                }
            }
        }
        let _one_at_a_time = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        if let Ok(mut pending) = PendingStore::load(&self.pending) {
            pending.remove(id);
            let _ = pending.save(&self.pending);
        }
        Ok(refused(format!(
            "no decision within {}",
            policy::model::duration::format(&self.approval_wait)
        )))
    }
}

/// How a fork was settled ([`Master::settle_fork`]).
#[derive(Debug, PartialEq, Eq)]
pub enum Forked {
    /// The file was not a fork of the policy in force (another serial, or the same file).
    NotAFork,
    /// This master's policy has the greater digest: it stands, the other master carries.
    Stands { serial: u64 },
    /// This master's policy lost but added no node of its own: nothing to carry (an
    /// operator's edit; `tyd status --cluster` shows the fork).
    NothingToCarry { serial: u64 },
    /// This master's admissions in its policy of serial `lost` were not in the one that
    /// stood (a fork of that serial, or a newer serial made from another master's); `serial`
    /// is that one with `nodes` (id, name) added again.
    Carried {
        lost: u64,
        serial: u64,
        nodes: Vec<(u16, String)>,
    },
    /// These nodes this master admitted are not in the newer serial in force, and its
    /// parents do not say whether the operator removed them: not carried.
    Unclear { serial: u64, names: Vec<String> },
}

/// What [`Master::add`] did.
enum Added {
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

/// The request, or why it is refused (malformed).
fn read_request<S: Read + Write>(
    ch: &mut wire::Channel<S>,
) -> Result<Result<JoinRequest, String>, ServeError> {
    let raw = ch.receive_limited(MAX_REQUEST)?;
    Ok(serde_json::from_slice(&raw).map_err(|e| {
        format!(
            "malformed request: {}",
            policy::parse::shown(&e.to_string())
        )
    }))
}

/// Relays a join from `client` to a master, bytes only, until either side ends or is silent
/// for `idle`: a join with a token to the master that says the token is its own (each is
/// asked in turn), one without to the first master reachable. Only joins (with a token, or waiting for approval) are
/// relayed: a leave, which a master believes only from a member's own tunnel address, is
/// refused here.
pub fn relay(
    mut client: TcpStream,
    masters: &[SocketAddr],
    idle: Duration,
) -> Result<SocketAddr, RelayError> {
    let hello = wire::read_hello(&mut client).map_err(RelayError::Hello)?;
    if hello == Hello::Leave {
        return Err(RelayError::Hello(WireError::NotJoin));
    }
    // A join waiting for the operator is silent until the decision: the relay waits as long
    // as the master does (it dropped the connection after 5 s, and the joiner never got its
    // answer although it was admitted).
    let idle = if hello == Hello::Approval {
        APPROVAL_WAIT + Duration::from_secs(30)
    } else {
        idle
    };
    let mut last = std::io::Error::new(std::io::ErrorKind::NotFound, "no master in the policy");
    // Where the joiner came from first: the master checks its claimed endpoint.
    let mut first = client
        .peer_addr()
        .map(|a| wire::seen_record(a.ip()).to_vec())
        .map_err(RelayError::Master)?;
    first.extend_from_slice(&hello.to_bytes());
    for &m in masters {
        let master = TcpStream::connect_timeout(&m, CONNECT_TIMEOUT).and_then(|mut master| {
            master.write_all(&first)?;
            if matches!(hello, Hello::Join(_)) {
                // The master that made the token says so; any other ends the connection.
                master.set_read_timeout(Some(CONNECT_TIMEOUT))?;
                let mut byte = [0u8; 1];
                master.read_exact(&mut byte)?;
                if byte[0] != wire::RELAY_MINE {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::NotFound,
                        "no master holds this token",
                    ));
                }
            }
            Ok(master)
        });
        match master {
            Ok(master) => {
                pipe(client, master, idle).map_err(RelayError::Master)?;
                return Ok(m);
            }
            Err(e) => last = e,
        }
    }
    Err(RelayError::Master(last))
}

#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// Not a join (counts against the source).
    #[error("{0}")]
    Hello(WireError),
    #[error("no master reachable: {0}")]
    Master(std::io::Error),
}

fn pipe(a: TcpStream, b: TcpStream, idle: Duration) -> std::io::Result<()> {
    for s in [&a, &b] {
        s.set_read_timeout(Some(idle))?;
        s.set_write_timeout(Some(idle))?;
    }
    let (mut a2, mut b2) = (a.try_clone()?, b.try_clone()?);
    std::thread::scope(|scope| {
        scope.spawn(|| {
            let mut from = &a;
            let _ = std::io::copy(&mut from, &mut b2);
            let _ = b2.shutdown(std::net::Shutdown::Write);
        });
        let mut from = &b;
        let _ = std::io::copy(&mut from, &mut a2);
        let _ = a2.shutdown(std::net::Shutdown::Write);
    });
    Ok(())
}
