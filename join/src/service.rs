//! The join endpoint's two jobs. A master (a node holding the operator key) admits: it checks
//! the token, runs the handshake, decides (`admit`), adds the node, signs the new policy and
//! writes it where netguard and clusterd read it (clusterd then carries it to every member),
//! and answers with it. Any other member relays the connection, bytes only, to a master
//! through the tunnels: the exchange stays end to end between joiner and master.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use ed25519_dalek::SigningKey;
use jiff::Timestamp;
use policy::edit::PolicyEdit;
use policy::fsutil::atomic_write;
use policy::{OperatorPublicKey, Role};

use crate::admit::{Admission, JoinAnswer, JoinRequest, decide};
use crate::token::{TokenId, TokenStore};
use crate::wire::{self, Hello, WireError};

/// A request is a key, a name and an address: a few hundred bytes.
const MAX_REQUEST: usize = 4096;
/// How long a relay waits to reach a master.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Where a connection to the join port came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// From the LAN: a joiner itself.
    Lan(IpAddr),
    /// From a member's tunnel address: a relayed join, or that member leaving.
    Tunnel(IpAddr),
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
}

#[derive(Debug, thiserror::Error)]
enum ServeError {
    #[error(transparent)]
    Wire(#[from] WireError),
    #[error("{0}")]
    Master(String),
}

/// A master's side of joins.
#[derive(Debug)]
pub struct Master {
    /// The policy file this node's netguard and clusterd read: edited, signed, replaced.
    pub policy: PathBuf,
    pub operator: SigningKey,
    pub tokens: PathBuf,
    /// One admission at a time: each reads the policy the previous one wrote.
    lock: Mutex<()>,
}

impl Master {
    pub fn new(policy: PathBuf, operator: SigningKey, tokens: PathBuf) -> Self {
        Self {
            policy,
            operator,
            tokens,
            lock: Mutex::new(()),
        }
    }

    /// Serves one connection to the join port: a join, or a member's leave.
    pub fn serve<S: Read + Write>(&self, mut stream: S, from: Source) -> Outcome {
        match wire::read_hello(&mut stream) {
            Err(e) => Outcome::Failed(e),
            Ok(Hello::Join(id)) => {
                // Straight from the joiner: its endpoint must be where it came from. Through a
                // member's tunnel: relayed, the member saw the joiner.
                let seen = match from {
                    Source::Lan(ip) => Some(ip),
                    Source::Tunnel(_) => None,
                };
                self.serve_join(stream, id, seen)
            }
            Ok(Hello::Leave) => match from {
                Source::Tunnel(ip) => self.serve_leave(stream, ip),
                Source::Lan(_) => Outcome::Failed(WireError::NotJoin),
            },
        }
    }

    fn serve_join<S: Read + Write>(&self, stream: S, id: TokenId, seen: Option<IpAddr>) -> Outcome {
        let store = match TokenStore::load(&self.tokens) {
            Ok(s) => s,
            Err(e) => {
                return Outcome::Refused {
                    token: id,
                    reason: format!("master cannot read its tokens: {e}"),
                };
            }
        };
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
                Outcome::Refused { token: id, reason },
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
            Err(reason) => (
                LeaveAnswer::Refused {
                    reason: reason.clone(),
                },
                Outcome::LeaveRefused { from, reason },
            ),
        };
        let mut line = serde_json::to_vec(&answer).unwrap_or_default();
        line.push(b'\n');
        let _ = stream.write_all(&line).and_then(|()| stream.flush());
        outcome
    }

    fn remove(&self, from: IpAddr) -> Result<(u16, String, u64), String> {
        let _one_at_a_time = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        let now = Timestamp::now();
        let mut edit = PolicyEdit::open(&self.policy).map_err(|e| e.to_string())?;
        let current = edit.current(now).map_err(|e| e.to_string())?;
        let node = current
            .nodes
            .iter()
            .find(|n| n.addresses.contains(&from))
            .ok_or_else(|| format!("{from} is no member's tunnel address"))?;
        let masters = current
            .nodes
            .iter()
            .filter(|n| n.roles.contains(&Role::Master))
            .count();
        if node.roles.contains(&Role::Master) && masters == 1 {
            return Err("the last master cannot leave (tyd node remove, by hand)".into());
        }
        let (id, name) = (node.id, node.name.clone());
        edit.remove_node(id).map_err(|e| e.to_string())?;
        let serial = self.sign_and_write(edit, &current, now)?.cluster.serial;
        Ok((id.get(), name, serial))
    }

    /// Drops nodes whose `expires` has passed (members already did, at that instant), bumps
    /// the serial, signs, and writes the signature then the policy.
    fn sign_and_write(
        &self,
        mut edit: PolicyEdit,
        current: &policy::Policy,
        now: Timestamp,
    ) -> Result<policy::Policy, String> {
        for n in &current.nodes {
            if n.expires.is_some_and(|e| e <= now) {
                edit.remove_node(n.id).map_err(|e| e.to_string())?;
            }
        }
        let (text, p) = edit.commit_text(now).map_err(|e| e.to_string())?;
        let sig = policy::sign(text.as_bytes(), &self.operator);
        atomic_write(&policy::signature_path(&self.policy), sig.as_bytes(), 0o644)
            .and_then(|()| atomic_write(&self.policy, text.as_bytes(), 0o644))
            .map_err(|e| e.to_string())?;
        Ok(p)
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
        let raw = ch.receive_limited(MAX_REQUEST)?;
        let req: JoinRequest = match serde_json::from_slice(&raw) {
            Ok(r) => r,
            Err(e) => {
                return Ok(refused(format!(
                    "malformed request: {}",
                    policy::parse::shown(&e.to_string())
                )));
            }
        };
        let _one_at_a_time = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        let now = Timestamp::now();
        let mut store =
            TokenStore::load(&self.tokens).map_err(|e| ServeError::Master(e.to_string()))?;
        let roles = match store.check(id, now) {
            Ok(t) => t.roles.clone(),
            Err(r) => return Ok(refused(r.to_string())),
        };
        let edit = PolicyEdit::open(&self.policy).map_err(|e| ServeError::Master(e.to_string()))?;
        let current = edit
            .current(now)
            .map_err(|e| ServeError::Master(e.to_string()))?;
        let operator_key = OperatorPublicKey::from(&self.operator).to_base64();
        match decide(&current, &req, seen, &roles) {
            Err(r) => Ok(refused(r.to_string())),
            Ok(Admission::Already { id: node, name }) => {
                let read = |p: &std::path::Path| {
                    policy::fsutil::read(p).map_err(|e| ServeError::Master(e.to_string()))
                };
                let text = read(&self.policy)?;
                let sig = read(&policy::signature_path(&self.policy))?;
                Ok((
                    JoinAnswer::Accepted {
                        node: node.get(),
                        name: name.clone(),
                        policy: String::from_utf8_lossy(&text).into_owned(),
                        signature: String::from_utf8_lossy(&sig).into_owned(),
                        operator_key,
                    },
                    Outcome::Already {
                        token: id.clone(),
                        id: node.get(),
                        name,
                    },
                ))
            }
            Ok(Admission::Add(new)) => {
                let mut edit = edit;
                edit.add_node(&new)
                    .map_err(|e| ServeError::Master(e.to_string()))?;
                // The token is spent before the policy is written: a crash between the two
                // costs a use, never grants a second join.
                store.consume(id);
                store
                    .save(&self.tokens)
                    .map_err(|e| ServeError::Master(e.to_string()))?;
                let p = self
                    .sign_and_write(edit, &current, now)
                    .map_err(ServeError::Master)?;
                let text = policy::fsutil::read(&self.policy)
                    .map_err(|e| ServeError::Master(e.to_string()))?;
                let sig = policy::fsutil::read(&policy::signature_path(&self.policy))
                    .map_err(|e| ServeError::Master(e.to_string()))?;
                Ok((
                    JoinAnswer::Accepted {
                        node: new.id.get(),
                        name: new.name.clone(),
                        policy: String::from_utf8_lossy(&text).into_owned(),
                        signature: String::from_utf8_lossy(&sig).into_owned(),
                        operator_key,
                    },
                    Outcome::Joined {
                        token: id.clone(),
                        id: new.id.get(),
                        name: new.name,
                        serial: p.cluster.serial,
                    },
                ))
            }
        }
    }
}

/// Relays a join from `client` to the first master that answers, bytes only, until either
/// side ends or is silent for `idle`. Only a join hello is relayed: anything else (a leave,
/// which a master believes only from a member's own tunnel address) is refused here.
pub fn relay(
    mut client: TcpStream,
    masters: &[SocketAddr],
    idle: Duration,
) -> Result<SocketAddr, RelayError> {
    let hello = wire::read_hello(&mut client).map_err(RelayError::Hello)?;
    if !matches!(hello, Hello::Join(_)) {
        return Err(RelayError::Hello(WireError::NotJoin));
    }
    let mut last = std::io::Error::new(std::io::ErrorKind::NotFound, "no master in the policy");
    for &m in masters {
        match TcpStream::connect_timeout(&m, CONNECT_TIMEOUT) {
            Ok(mut master) => {
                master
                    .write_all(&hello.to_bytes())
                    .map_err(RelayError::Master)?;
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
