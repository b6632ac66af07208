//! The joiner's side (`tyd join`): connect to a member, run the exchange, and check what comes
//! back before anything is kept: the operator key must have the pinned fingerprint, the policy
//! must carry its valid signature, and it must list this node's key under the id it names.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use jiff::Timestamp;
use policy::{OperatorPublicKey, TrustedKeys, WgPublicKey};

use crate::admit::{JoinAnswer, JoinAttestation, JoinRequest};
use crate::token::Token;
use crate::wire::{self, WireError};

/// The whole exchange must end within this time (a master signs and writes one policy).
pub const TIMEOUT: Duration = Duration::from_secs(10);
/// How long the TPM may take for a join's proof in all (the key, the quote, the flush):
/// inside the master's 5 s for each read and 10 s for everything a joiner sends, so a TPM
/// that does not answer leaves time to send the request without a proof and hear why it
/// is refused.
pub const TPM_TIMEOUT: Duration = Duration::from_secs(3);

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

impl JoinError {
    /// Whether another member may do better: this one could not be reached, did not
    /// complete the exchange, or answered what a real master of the pinned cluster would
    /// not (what a rogue answering `tyd join any` leads to). A refusal or a "not yet" over
    /// the token's handshake comes from a real master: asking another changes nothing.
    pub fn worth_another_member(&self) -> bool {
        !matches!(self, JoinError::Refused(_) | JoinError::Later(_))
    }
}

/// Tries `attempt` on each member in turn until one works or fails in a way another member
/// would not change ([`JoinError::worth_another_member`]); `skipped` hears of each member
/// passed over. The last failure is returned.
pub fn first_that_works<T>(
    members: &[SocketAddr],
    mut attempt: impl FnMut(SocketAddr) -> Result<T, JoinError>,
    mut skipped: impl FnMut(SocketAddr, &JoinError),
) -> Result<T, JoinError> {
    let mut last = None;
    for (i, &m) in members.iter().enumerate() {
        match attempt(m) {
            Ok(t) => return Ok(t),
            Err(e) if e.worth_another_member() && i + 1 < members.len() => {
                skipped(m, &e);
                last = Some(e);
            }
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or_else(|| {
        JoinError::Connect(
            SocketAddr::from(([0, 0, 0, 0], 0)),
            std::io::Error::new(std::io::ErrorKind::NotFound, "no member to ask"),
        )
    }))
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
    /// The masters' memberships in force, each verified under the policy.
    pub memberships: Vec<crate::admit::MembershipText>,
    /// This node's roles, as the policy or a membership lists it.
    pub roles: Vec<policy::Role>,
    /// The TPM key its entry pins, if any (a node already in the map keeps its entry as it
    /// is, whatever TPM it joins with again).
    pub attestation_key: Option<policy::AttestationKey>,
}

/// What makes this machine's TPM proof for one exchange, given that exchange's handshake
/// hash (the quote must be over it, issue 29): None from a machine without a TPM.
pub type Prover<'a> = &'a dyn Fn(&[u8; 32]) -> Option<JoinAttestation>;

/// The [`Prover`] of a machine without a TPM.
pub fn no_tpm(_: &[u8; 32]) -> Option<JoinAttestation> {
    None
}

/// This machine's proof of its TPM for a join with WireGuard key `wg` over the exchange
/// `exchange`: its attestation key and a quote over both. None when `tpm` does not exist (a
/// machine without a TPM).
pub fn tpm_attestation(
    tpm: &std::path::Path,
    wg: &WgPublicKey,
    exchange: &[u8; 32],
) -> Result<Option<JoinAttestation>, attest::tpm::TpmError> {
    if !tpm.exists() {
        return Ok(None);
    }
    let nonce = attest::nonce::join_qualifying_data(wg.as_bytes(), exchange);
    let (quote, key) = attest::tpm::Tpm::open(tpm, TPM_TIMEOUT)?.quote(&nonce)?;
    Ok(Some(JoinAttestation::of(&key, &quote)))
}

pub fn join(
    member: SocketAddr,
    token: &Token,
    fingerprint: &str,
    public_key: &WgPublicKey,
    name: Option<String>,
    prove: Prover<'_>,
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
        attestation: None,
    };
    let answer = exchange(stream, token, &req, prove).map_err(|e| match e {
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
    prove: Prover<'_>,
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
        attestation: prove(ch.handshake_hash()),
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

/// The exchange itself over any stream: hello, handshake, request, answer (unchecked). The
/// request goes with the proof `prove` makes for this exchange.
pub fn exchange<S: Read + Write>(
    stream: S,
    token: &Token,
    req: &JoinRequest,
    prove: Prover<'_>,
) -> Result<JoinAnswer, ExchangeError> {
    let mut ch = wire::connect(stream, &token.id, &token.psk())?;
    let req = JoinRequest {
        attestation: prove(ch.handshake_hash()),
        ..req.clone()
    };
    ch.send(&serde_json::to_vec(&req).unwrap_or_default())?;
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
    let (node, name, policy_text, signature, operator_key, memberships) = match answer {
        JoinAnswer::Refused { reason } => return Err(JoinError::Refused(reason)),
        JoinAnswer::Later { reason } => return Err(JoinError::Later(reason)),
        JoinAnswer::Accepted {
            node,
            name,
            policy,
            signature,
            operator_key,
            memberships,
        } => (node, name, policy, signature, operator_key, memberships),
    };
    let trust =
        TrustedKeys::parse(&operator_key).map_err(|e| JoinError::Malformed(e.to_string()))?;
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
    // Each membership checked as a member checks it: signed by its master's admission key,
    // within the key's limits, apart from every other node.
    let mut in_force = policy::membership::MembershipsInForce::default();
    let mut store = policy::membership::MembershipStore::in_memory();
    for m in &memberships {
        let master = policy::NodeId::new(m.master)
            .ok_or_else(|| JoinError::BadPolicy(format!("membership of master {}", m.master)))?;
        in_force
            .offer(
                &verified,
                &mut store,
                master,
                &format!("the membership of master {master}"),
                m.membership.clone().into_bytes(),
                m.signature.clone().into_bytes(),
                now,
            )
            .map_err(|e| JoinError::BadPolicy(format!("membership of master {master}: {e}")))?;
    }
    let (roles, attestation_key) = in_force
        .nodes(&verified)
        .find(|n| &n.public_key == public_key && n.id.get() == node)
        .map(|n| (n.roles.clone(), n.attestation_key.clone()))
        .ok_or(JoinError::NotListed(node))?;
    Ok(Joined {
        node,
        name,
        cluster: verified.cluster.name.clone(),
        serial: verified.cluster.serial,
        policy: policy_text,
        signature,
        operator_key: key,
        memberships,
        roles,
        attestation_key,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Attack (`tyd join any`, issue 26 #6): a rogue answering the question first made the
    /// join fail 6 of 6 times, and the joiner tried no other member. Steps: two answers,
    /// the rogue's first; the rogue cannot complete the token's handshake; the joiner must
    /// go on to the real member and join; a real master's refusal, though, ends the tries.
    #[test]
    fn a_rogue_answering_first_does_not_stop_the_join() {
        let rogue = SocketAddr::from(([198, 18, 0, 66], 4660));
        let real = SocketAddr::from(([198, 18, 0, 1], 4660));
        let mut tried = Vec::new();
        let mut passed = Vec::new();
        let got = first_that_works(
            &[rogue, real],
            |m| {
                tried.push(m);
                if m == rogue {
                    Err(JoinError::Wire(m, WireError::Handshake))
                } else {
                    Ok(7u16)
                }
            },
            |m, _| passed.push(m),
        );
        assert_eq!(got.unwrap(), 7);
        assert_eq!(tried, [rogue, real]);
        assert_eq!(passed, [rogue]);
        let mut tried = 0;
        let got: Result<u16, _> = first_that_works(
            &[real, rogue],
            |_| {
                tried += 1;
                Err(JoinError::Refused("name taken".into()))
            },
            |_, _| {},
        );
        assert!(matches!(got, Err(JoinError::Refused(_))));
        assert_eq!(tried, 1);
    }
}
