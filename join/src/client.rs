//! The joiner's side (`tyd join`): connect to a member, run the exchange, and check what comes
//! back before anything is kept: the operator key must have the pinned fingerprint, the policy
//! must carry its valid signature, and it must list this node's key under the id it names.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use jiff::Timestamp;
use policy::{OperatorPublicKey, TrustedKeys, WgPublicKey};

use crate::admit::{JoinAnswer, JoinRequest};
use crate::token::Token;
use crate::wire::{self, WireError};

/// The whole exchange must end within this time (a master signs and writes one policy).
pub const TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    #[error("cannot reach {0}: {1}")]
    Connect(SocketAddr, std::io::Error),
    #[error("{0}: {1}")]
    Wire(SocketAddr, WireError),
    #[error("refused by the cluster: {0}")]
    Refused(String),
    #[error("not yet: {0}")]
    Later(String),
    #[error("the answer is not a join answer: {0}")]
    Malformed(String),
    #[error("the cluster's operator key has fingerprint {got}, not the pinned {want}: not joining")]
    WrongOperator { got: String, want: String },
    #[error("the policy it sent does not verify: {0}")]
    BadPolicy(String),
    #[error("the policy it sent does not list this node's key as node {0}")]
    NotListed(u16),
}

/// What a successful join leaves: the signed policy and the operator key, checked.
#[derive(Debug, Clone)]
pub struct Joined {
    pub node: u16,
    pub name: String,
    pub cluster: String,
    pub serial: u64,
    pub policy: String,
    pub signature: String,
    pub operator_key: OperatorPublicKey,
}

pub fn join(
    member: SocketAddr,
    token: &Token,
    fingerprint: &str,
    public_key: &WgPublicKey,
    name: Option<String>,
) -> Result<Joined, JoinError> {
    let stream =
        TcpStream::connect_timeout(&member, TIMEOUT).map_err(|e| JoinError::Connect(member, e))?;
    let _ = stream.set_read_timeout(Some(TIMEOUT));
    let _ = stream.set_write_timeout(Some(TIMEOUT));
    let local = stream
        .local_addr()
        .map_err(|e| JoinError::Connect(member, e))?;
    let req = JoinRequest {
        public_key: public_key.to_base64(),
        name,
        endpoint: SocketAddr::new(local.ip(), 0),
    };
    let answer = exchange(stream, token, &req).map_err(|e| match e {
        ExchangeError::Wire(e) => JoinError::Wire(member, e),
        ExchangeError::Malformed(m) => JoinError::Malformed(m),
    })?;
    check(answer, fingerprint, public_key, Timestamp::now())
}

/// A join without a token: sends the request, calls `show_code` with the code the operator
/// must see in `tyd join list` on the master, then waits up to `wait` for the decision.
pub fn join_with_approval(
    member: SocketAddr,
    fingerprint: &str,
    public_key: &WgPublicKey,
    name: Option<String>,
    wait: Duration,
    show_code: impl FnOnce(&str),
) -> Result<Joined, JoinError> {
    let stream =
        TcpStream::connect_timeout(&member, TIMEOUT).map_err(|e| JoinError::Connect(member, e))?;
    let _ = stream.set_write_timeout(Some(TIMEOUT));
    let _ = stream.set_read_timeout(Some(wait + TIMEOUT));
    let local = stream
        .local_addr()
        .map_err(|e| JoinError::Connect(member, e))?;
    let wire_err = |e| JoinError::Wire(member, e);
    let (mut ch, code) = wire::connect_for_approval(stream).map_err(wire_err)?;
    let req = JoinRequest {
        public_key: public_key.to_base64(),
        name,
        endpoint: SocketAddr::new(local.ip(), 0),
    };
    ch.send(&serde_json::to_vec(&req).unwrap_or_default())
        .map_err(wire_err)?;
    show_code(&code);
    let raw = ch.receive().map_err(wire_err)?;
    let answer: JoinAnswer = serde_json::from_slice(&raw)
        .map_err(|e| JoinError::Malformed(policy::parse::shown(&e.to_string())))?;
    check(answer, fingerprint, public_key, Timestamp::now())
}

#[derive(Debug, thiserror::Error)]
pub enum ExchangeError {
    #[error(transparent)]
    Wire(#[from] WireError),
    #[error("the answer is not a join answer: {0}")]
    Malformed(String),
}

/// The exchange itself over any stream: hello, handshake, request, answer (unchecked).
pub fn exchange<S: Read + Write>(
    stream: S,
    token: &Token,
    req: &JoinRequest,
) -> Result<JoinAnswer, ExchangeError> {
    let mut ch = wire::connect(stream, &token.id, &token.psk())?;
    ch.send(&serde_json::to_vec(req).unwrap_or_default())?;
    let raw = ch.receive()?;
    serde_json::from_slice(&raw)
        .map_err(|e| ExchangeError::Malformed(policy::parse::shown(&e.to_string())))
}

/// Checks an answer against the pinned fingerprint and this node's key.
pub fn check(
    answer: JoinAnswer,
    fingerprint: &str,
    public_key: &WgPublicKey,
    now: Timestamp,
) -> Result<Joined, JoinError> {
    let (node, name, policy_text, signature, operator_key) = match answer {
        JoinAnswer::Refused { reason } => return Err(JoinError::Refused(reason)),
        JoinAnswer::Later { reason } => return Err(JoinError::Later(reason)),
        JoinAnswer::Accepted {
            node,
            name,
            policy,
            signature,
            operator_key,
        } => (node, name, policy, signature, operator_key),
    };
    let trust = TrustedKeys::parse(&operator_key).map_err(JoinError::Malformed)?;
    let key = *trust
        .keys()
        .first()
        .ok_or_else(|| JoinError::Malformed("no operator key".into()))?;
    if !key.fingerprint().eq_ignore_ascii_case(fingerprint.trim()) {
        return Err(JoinError::WrongOperator {
            got: key.fingerprint(),
            want: policy::parse::shown(fingerprint),
        });
    }
    let verified = policy::verify_policy(
        "joined policy",
        policy_text.as_bytes(),
        signature.as_bytes(),
        &trust,
        now,
    )
    .map_err(|e| JoinError::BadPolicy(e.to_string()))?;
    let listed = verified
        .node_by_key(public_key)
        .is_some_and(|n| n.id.get() == node);
    if !listed {
        return Err(JoinError::NotListed(node));
    }
    Ok(Joined {
        node,
        name,
        cluster: verified.cluster.name.clone(),
        serial: verified.cluster.serial,
        policy: policy_text,
        signature,
        operator_key: key,
    })
}
