//! What a master decides about a join request, given the policy in force: the node to add
//! (the lowest free id, its tunnel addresses, a name), the node it already is (a retry), or
//! why not. Pure: the service applies the decision.

use std::collections::BTreeSet;
use std::net::SocketAddr;

use policy::edit::{NewNode, default_addresses};
use policy::{NodeId, Policy, Role, WgPublicKey};
use serde::{Deserialize, Serialize};

/// What a joiner asks for, sent inside the Noise channel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JoinRequest {
    /// Its WireGuard public key (base64).
    pub public_key: String,
    /// The name it would like; the master picks `node<id>` when absent or taken.
    pub name: Option<String>,
    /// Its LAN address as it reached the member (the port is the cluster's WireGuard port,
    /// whatever is sent here).
    pub endpoint: SocketAddr,
    /// Its TPM's attestation key and a quote over its WireGuard key and this exchange (issue
    /// 29): absent from a machine without a TPM. Required when the policy says its role
    /// must attest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attestation: Option<JoinAttestation>,
}

/// A joiner's proof that it holds a TPM: its attestation key, and a quote by it whose
/// qualifying data is [`attest::nonce::join_qualifying_data`] of its WireGuard key and of
/// the exchange it is sent in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JoinAttestation {
    /// Base64 of the SEC1 point, as the policy pins it.
    pub key: String,
    /// Base64 of the `TPMS_ATTEST`.
    pub quote: String,
    /// Base64 of `r || s`.
    pub signature: String,
}

impl JoinAttestation {
    /// The proof of `quote`, made by the TPM whose attestation key is `key`.
    pub fn of(key: &policy::AttestationKey, quote: &attest::Quote) -> Self {
        use base64::Engine;
        let b64 = base64::engine::general_purpose::STANDARD;
        Self {
            key: key.to_string(),
            quote: b64.encode(&quote.attest),
            signature: b64.encode(quote.signature),
        }
    }
}

/// The master's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum JoinAnswer {
    /// Admitted (or already a member): the signed policy listing it, and the operator key
    /// that signed it (the joiner checks it against the fingerprint it pinned).
    Accepted {
        node: u16,
        name: String,
        policy: String,
        signature: String,
        operator_key: String,
        /// The masters' memberships in force (a cluster with admission keys: the joiner may
        /// be listed in one of them, not in the policy). Absent before admission keys.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        memberships: Vec<MembershipText>,
    },
    Refused {
        reason: String,
    },
    /// Not now, maybe soon: the joiner retries (a drone whose old entry the cluster has not
    /// yet given up on).
    Later {
        reason: String,
    },
}

/// One master's signed membership, as a join answer carries it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MembershipText {
    pub master: u16,
    pub membership: String,
    pub signature: String,
}

/// Why a request is refused (told to the joiner, inside the channel).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("not a WireGuard public key")]
    BadKey,
    #[error("name {0} is taken by another node")]
    NameTaken(String),
    #[error("name {0} is not usable: 1-32 letters, digits, '-', '_' or '.'")]
    BadName(String),
    #[error("endpoint {claimed} is not the address the request came from ({seen})")]
    EndpointMismatch { claimed: String, seen: String },
    #[error("endpoint {endpoint} is not a node's address: {why}")]
    BadEndpoint { endpoint: String, why: &'static str },
    #[error("no free node id with tunnel addresses left in the cluster's networks")]
    Full,
    /// A machine that rebooted with a new key (a drone's key lives in RAM) finds its old
    /// entry: the operator removes it, or lets it expire. Never replaced by a join: whoever
    /// holds a token could otherwise push a node out by claiming its address.
    #[error(
        "endpoint {endpoint} is already node {node}'s: remove that node first (tyd node remove, or tyd admission revoke for a node a master admitted), or give such nodes an expiry"
    )]
    EndpointTaken { endpoint: String, node: u16 },
    /// An ephemeral drone's address whose node the cluster still hears: retry later.
    #[error(
        "endpoint {endpoint} is node {node}'s, which the cluster still hears; it can be replaced once lost (quarantined or silent)"
    )]
    EndpointBusy { endpoint: String, node: u16 },
    /// Issue 29: the policy says nodes of this role attest with a TPM, and this join brought
    /// no valid proof of one.
    #[error("this cluster's {role} nodes must attest with a TPM: {why}")]
    NotAttested { role: String, why: String },
    /// A join whose role need not attest brought a TPM proof that does not hold (it is
    /// refused rather than admitted with a key it did not prove).
    #[error("its TPM proof does not hold: {0}")]
    BadTpmProof(String),
    /// The TPM is already another node's (one machine, one entry).
    #[error("this TPM's attestation key is already node {node}'s")]
    AttestationKeyTaken { node: u16 },
}

impl Refusal {
    /// Whether the same request may succeed later without anyone changing anything.
    pub fn is_temporary(&self) -> bool {
        matches!(self, Self::EndpointBusy { .. })
    }
}

/// Nodes a join with an ephemeral token may take over at their address: RAM drones admitted
/// by an ephemeral token (their key died with them at reboot), known by id and the key they
/// were admitted with, and which of them the master's cluster view has lost.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Replaceable {
    pub ephemeral: BTreeSet<(NodeId, WgPublicKey)>,
    pub lost: BTreeSet<NodeId>,
}

/// The decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admission {
    Add(NewNode),
    /// Its key is already in the map (a retry after a lost answer): nothing to change.
    Already {
        id: NodeId,
        name: String,
    },
    /// An ephemeral drone back with a new key at its address, its old entry lost: the entry
    /// (id, name, tunnel addresses) gets the new key.
    Replace {
        id: NodeId,
        name: String,
        public_key: WgPublicKey,
    },
}

/// Why `ip` cannot be a node's WireGuard endpoint on the LAN, if it cannot: no one's
/// address (unspecified), this machine's (loopback), many machines' (multicast,
/// broadcast), no routable one (link-local: the same on every link), or inside the
/// cluster's own tunnel networks.
pub fn unusable_endpoint(policy: &Policy, ip: std::net::IpAddr) -> Option<&'static str> {
    policy::validate::unusable_endpoint(policy, ip)
}

fn usable_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 32
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

/// What a joiner's TPM proof must be bound to (issue 29).
#[derive(Debug, Clone, Copy)]
pub enum Binding<'a> {
    /// A join now: its quote must be over this exchange, the Noise handshake hash
    /// ([`crate::wire::Channel::handshake_hash`]).
    Exchange(&'a [u8; 32]),
    /// A node this master admitted before, carried into the policy that stood after a fork
    /// (`crate::fork`): the attestation key its quote proved then, if any. Nothing is quoted
    /// again.
    Carried(Option<&'a policy::AttestationKey>),
}

/// Decides on `req` against `policy`. `seen`: the address the request came from when it came
/// straight from the joiner (its claimed endpoint must be that address); `None` when a member
/// relayed it through its tunnel (the member vouches for the address it saw). `replace`:
/// for a join with an ephemeral token, the entries it may take over. `binding`: what its TPM
/// quote must be over.
pub fn decide(
    policy: &Policy,
    req: &JoinRequest,
    seen: Option<std::net::IpAddr>,
    roles: &[Role],
    replace: Option<&Replaceable>,
    pool: Option<&policy::model::Admission>,
    binding: Binding<'_>,
) -> Result<Admission, Refusal> {
    let key: WgPublicKey = req.public_key.parse().map_err(|_| Refusal::BadKey)?;
    if let Some(node) = policy.node_by_key(&key) {
        return Ok(Admission::Already {
            id: node.id,
            name: node.name.clone(),
        });
    }
    let endpoint = checked_endpoint(policy, req, seen)?;
    if let Some(n) = policy.nodes.iter().find(|n| n.endpoint == Some(endpoint)) {
        return at_taken_endpoint(n, endpoint, key, replace);
    }
    if let Some(name) = &req.name {
        if !usable_name(name) {
            return Err(Refusal::BadName(policy::parse::shown(name)));
        }
        if policy.nodes.iter().any(|n| &n.name == name) {
            return Err(Refusal::NameTaken(policy::parse::shown(name)));
        }
    }
    let attestation_key = attested(policy, req, &key, roles, binding)?;
    if let Some(k) = &attestation_key
        && let Some(n) = policy
            .nodes
            .iter()
            .find(|n| n.attestation_key.as_ref() == Some(k))
    {
        return Err(Refusal::AttestationKeyTaken { node: n.id.get() });
    }
    let (id, addresses) = match pool {
        None => free_id(policy)?,
        Some(pool) => free_in_pool(policy, pool)?,
    };
    let mut name = req.name.clone().unwrap_or_else(|| format!("node{id}"));
    if policy.nodes.iter().any(|n| n.name == name) {
        name = format!(
            "node{id}-{}",
            &key.to_base64()[..6].replace(['+', '/'], "x")
        );
    }
    Ok(Admission::Add(NewNode {
        id,
        name,
        public_key: key,
        // Every node's WireGuard listens on the cluster's port.
        endpoint: Some(endpoint),
        addresses,
        roles: roles.to_vec(),
        expires: None,
        attestation_key,
    }))
}

/// The joiner's attestation key, if it proved one: its quote verifies under the key, over
/// its WireGuard key and this exchange, and, when its role must attest, shows a pinned image
/// and a clean ratchet. A role that must attest without a proof is refused. A carried node
/// keeps the key it proved when it was admitted.
fn attested(
    policy: &Policy,
    req: &JoinRequest,
    wg: &WgPublicKey,
    roles: &[Role],
    binding: Binding<'_>,
) -> Result<Option<policy::AttestationKey>, Refusal> {
    use base64::Engine;
    let a = &policy.attestation;
    let role = roles
        .iter()
        .find(|r| a.require.contains(r))
        .map(|r| r.name().to_string());
    let refuse = |why: String| match &role {
        Some(role) => Refusal::NotAttested {
            role: role.clone(),
            why,
        },
        None => Refusal::BadTpmProof(why),
    };
    let exchange = match binding {
        Binding::Exchange(e) => e,
        Binding::Carried(Some(k)) => return Ok(Some(k.clone())),
        Binding::Carried(None) if role.is_none() => return Ok(None),
        Binding::Carried(None) => {
            return Err(refuse(
                "it was admitted without a TPM key, before its role had to attest".into(),
            ));
        }
    };
    let Some(p) = &req.attestation else {
        return match role {
            Some(_) => Err(refuse(
                "the join brought no TPM quote (tyd join --tpm PATH, on a machine with a TPM)"
                    .into(),
            )),
            None => Ok(None),
        };
    };
    let b64 = base64::engine::general_purpose::STANDARD;
    let key: policy::AttestationKey = p.key.parse().map_err(|e| refuse(format!("{e}")))?;
    let attest_bytes = b64
        .decode(p.quote.as_bytes())
        .map_err(|_| refuse("its quote is not base64".into()))?;
    let signature: [u8; 64] = b64
        .decode(p.signature.as_bytes())
        .ok()
        .and_then(|s| <[u8; 64]>::try_from(s.as_slice()).ok())
        .ok_or_else(|| refuse("its quote's signature is not 64 bytes of base64".into()))?;
    let quote = attest::Quote {
        attest: attest_bytes,
        signature,
    };
    let nonce = attest::nonce::join_qualifying_data(wg.as_bytes(), exchange);
    match attest::verify_quote(&key, &quote, &nonce, &a.images) {
        Ok(_) => Ok(Some(key)),
        // A node of a role that need not attest may join from any image: its key is kept
        // once its quote proves it (signature and nonce).
        Err(attest::QuoteError::NotPinned | attest::QuoteError::RatchetSet) if role.is_none() => {
            Ok(Some(key))
        }
        // A join has no challenges: its quote is over the key and this exchange.
        Err(attest::QuoteError::Nonce) => Err(refuse(
            "its quote is not over this join (made in another exchange or for another WireGuard key: recorded, carried or forged)"
                .into(),
        )),
        Err(e) => Err(refuse(e.to_string())),
    }
}

/// The endpoint `req` claims, on the cluster's WireGuard port, if it is where the request
/// came from (when `seen` says) and can be a node's address.
fn checked_endpoint(
    policy: &Policy,
    req: &JoinRequest,
    seen: Option<std::net::IpAddr>,
) -> Result<SocketAddr, Refusal> {
    // One address, one spelling: an IPv4 address written as IPv6 (::ffff:a.b.c.d) is that
    // IPv4 address, for every comparison below and in the policy.
    let claimed = req.endpoint.ip().to_canonical();
    if let Some(seen) = seen
        && seen.to_canonical() != claimed
    {
        return Err(Refusal::EndpointMismatch {
            claimed: req.endpoint.to_string(),
            seen: seen.to_string(),
        });
    }
    if let Some(why) = unusable_endpoint(policy, claimed) {
        return Err(Refusal::BadEndpoint {
            endpoint: claimed.to_string(),
            why,
        });
    }
    Ok(SocketAddr::new(claimed, policy.cluster.listen_port))
}

/// A joiner with key `key` at `endpoint`, already node `n`'s: it takes over the entry when
/// `replace` lists it as ephemeral and lost, and is refused otherwise.
fn at_taken_endpoint(
    n: &policy::Node,
    endpoint: SocketAddr,
    key: WgPublicKey,
    replace: Option<&Replaceable>,
) -> Result<Admission, Refusal> {
    let ephemeral = replace.filter(|r| r.ephemeral.contains(&(n.id, n.public_key)));
    match ephemeral {
        Some(r) if r.lost.contains(&n.id) => Ok(Admission::Replace {
            id: n.id,
            name: n.name.clone(),
            public_key: key,
        }),
        Some(_) => Err(Refusal::EndpointBusy {
            endpoint: endpoint.to_string(),
            node: n.id.get(),
        }),
        None => Err(Refusal::EndpointTaken {
            endpoint: endpoint.to_string(),
            node: n.id.get(),
        }),
    }
}

/// The lowest free node id whose tunnel addresses no node holds, with those addresses.
fn free_id(policy: &Policy) -> Result<(NodeId, Vec<std::net::IpAddr>), Refusal> {
    (1..=u16::MAX)
        .filter_map(NodeId::new)
        .filter(|id| policy.node_by_id(*id).is_none())
        .map(|id| (id, default_addresses(policy, id)))
        .find(|(_, addrs)| {
            !addrs.is_empty()
                && !policy
                    .nodes
                    .iter()
                    .any(|n| n.addresses.iter().any(|a| addrs.contains(a)))
        })
        .ok_or(Refusal::Full)
}

/// For a master admitting with an admission key: the first id of its range no node has, and
/// for each address family it has networks of, the first address in them no node has. An
/// IPv6 network's first address is its subnet-router anycast address (RFC 4291 2.6.1),
/// never a node's.
fn free_in_pool(
    policy: &Policy,
    pool: &policy::model::Admission,
) -> Result<(NodeId, Vec<std::net::IpAddr>), Refusal> {
    let id = pool
        .ids
        .iter()
        .find(|id| policy.node_by_id(*id).is_none())
        .ok_or(Refusal::Full)?;
    let taken = |a: &std::net::IpAddr| policy.nodes.iter().any(|n| n.addresses.contains(a));
    // One address of each family the key has networks of: the first free one among them.
    let mut addresses = Vec::new();
    for v4 in [true, false] {
        let mut nets = pool
            .addresses
            .iter()
            .filter(|n| n.addr().is_ipv4() == v4)
            .peekable();
        if nets.peek().is_none() {
            continue;
        }
        let free = nets.find_map(|net| {
            let anycast =
                |a: &std::net::IpAddr| a.is_ipv6() && net.prefix_len() < 127 && *a == net.network();
            net.hosts().find(|a| !anycast(a) && !taken(a))
        });
        addresses.push(free.ok_or(Refusal::Full)?);
    }
    Ok((id, addresses))
}

#[cfg(test)]
mod tests {
    use super::*;
    use jiff::Timestamp;

    /// A join now, over some exchange (no quote in these requests).
    const LIVE: Binding<'static> = Binding::Exchange(&[0; 32]);

    fn key(n: u8) -> WgPublicKey {
        WgPublicKey::from_secret(&[n; 32])
    }

    fn policy_with(nodes: &[(u16, &str, u8)]) -> Policy {
        let expires = Timestamp::now() + jiff::SignedDuration::from_hours(1);
        let mut t = policy::template::init_template("lab", expires);
        for (id, name, k) in nodes {
            t.push_str(&format!(
                "\n[[node]]\nid = {id}\nname = \"{name}\"\npublic_key = \"{}\"\nendpoint = \"198.18.0.{id}:51820\"\naddresses = [\"10.77.0.{id}\"]\n",
                key(*k)
            ));
        }
        policy::parse_policy("test", t.as_bytes(), Timestamp::now()).unwrap()
    }

    /// Found by a helper from the docs: the first IPv6 address an admission key handed out
    /// was its network's first, `fd77:7d00::1:0` of a /112, the subnet-router anycast
    /// address. Steps: a key with 10.77.0.128/26 and fd77:7d00::1:0/112: the first node gets
    /// 10.77.0.129 and fd77:7d00::1:1.
    #[test]
    fn a_node_admitted_from_a_key_never_gets_a_networks_anycast_address() {
        let p = policy_with(&[(1, "master", 1)]);
        let pool = policy::model::Admission {
            master: NodeId::new(1).unwrap(),
            key: policy::OperatorPublicKey::from(&ed25519_dalek::SigningKey::from_bytes(&[5; 32])),
            roles: vec![Role::Drone],
            ids: "100-101".to_string().try_into().unwrap(),
            addresses: vec![
                "10.77.0.128/26".parse().unwrap(),
                "fd77:7d00::1:0/112".parse().unwrap(),
            ],
            max_nodes: 2,
            expires: Timestamp::now() + jiff::SignedDuration::from_hours(1),
            revoked: Vec::new(),
        };
        let (id, addresses) = free_in_pool(&p, &pool).unwrap();
        assert_eq!(id.get(), 100);
        assert_eq!(
            addresses,
            vec![
                "10.77.0.129".parse::<std::net::IpAddr>().unwrap(),
                "fd77:7d00::1:1".parse().unwrap()
            ]
        );
    }

    fn req(k: u8, name: Option<&str>) -> JoinRequest {
        JoinRequest {
            public_key: key(k).to_base64(),
            name: name.map(String::from),
            endpoint: "198.18.0.9:51820".parse().unwrap(),
            attestation: None,
        }
    }

    #[test]
    fn a_new_node_gets_the_lowest_free_id_its_addresses_and_its_name() {
        let p = policy_with(&[(1, "master", 1), (3, "c", 3)]);
        let seen = Some("198.18.0.9".parse().unwrap());
        match decide(
            &p,
            &req(9, Some("web-1")),
            seen,
            &[Role::Drone],
            None,
            None,
            LIVE,
        )
        .unwrap()
        {
            Admission::Add(n) => {
                assert_eq!(n.id.get(), 2);
                assert_eq!(n.name, "web-1");
                let want: Vec<std::net::IpAddr> = vec![
                    "10.77.0.2".parse().unwrap(),
                    "fd77:7d00::2".parse().unwrap(),
                ];
                assert_eq!(n.addresses, want);
                assert_eq!(n.endpoint, Some("198.18.0.9:51820".parse().unwrap()));
                assert_eq!(n.roles, vec![Role::Drone]);
            }
            other => panic!("{other:?}"),
        }
        match decide(&p, &req(9, None), None, &[Role::Drone], None, None, LIVE).unwrap() {
            Admission::Add(n) => assert_eq!(n.name, "node2"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_retry_with_a_known_key_changes_nothing() {
        let p = policy_with(&[(1, "master", 1), (2, "b", 2)]);
        assert_eq!(
            decide(
                &p,
                &req(2, Some("other")),
                None,
                &[Role::Drone],
                None,
                None,
                LIVE
            )
            .unwrap(),
            Admission::Already {
                id: NodeId::new(2).unwrap(),
                name: "b".into()
            }
        );
    }

    #[test]
    fn claims_on_another_nodes_name_or_a_foreign_endpoint_are_refused() {
        let p = policy_with(&[(1, "master", 1)]);
        assert_eq!(
            decide(
                &p,
                &req(9, Some("master")),
                None,
                &[Role::Drone],
                None,
                None,
                LIVE
            ),
            Err(Refusal::NameTaken("\"master\"".into()))
        );
        assert!(matches!(
            decide(
                &p,
                &req(9, Some("a b")),
                None,
                &[Role::Drone],
                None,
                None,
                LIVE
            ),
            Err(Refusal::BadName(_))
        ));
        let elsewhere = Some("198.18.0.50".parse().unwrap());
        assert!(matches!(
            decide(
                &p,
                &req(9, None),
                elsewhere,
                &[Role::Drone],
                None,
                None,
                LIVE
            ),
            Err(Refusal::EndpointMismatch { .. })
        ));
        // A new key at an address the map already has (a drone rebooted): refused, named.
        let mut again = req(9, None);
        again.endpoint = "198.18.0.1:40000".parse().unwrap();
        assert_eq!(
            decide(&p, &again, None, &[Role::Drone], None, None, LIVE),
            Err(Refusal::EndpointTaken {
                endpoint: "198.18.0.1:51820".into(),
                node: 1
            })
        );
        let mut bad = req(9, None);
        bad.public_key = "not a key".into();
        assert_eq!(
            decide(&p, &bad, None, &[Role::Drone], None, None, LIVE),
            Err(Refusal::BadKey)
        );
    }

    #[test]
    fn an_ephemeral_drone_back_at_its_address_takes_over_its_entry_only_once_it_is_lost() {
        let p = policy_with(&[(1, "master", 1), (2, "node2", 2), (3, "node3", 3)]);
        let mut back = req(9, None);
        back.endpoint = "198.18.0.2:51820".parse().unwrap();
        let id = |n| NodeId::new(n).unwrap();
        let mut r = Replaceable::default();
        r.ephemeral.insert((id(2), key(2)));
        // Still heard: retry later.
        let busy = decide(&p, &back, None, &[Role::Drone], Some(&r), None, LIVE).unwrap_err();
        assert!(busy.is_temporary(), "{busy}");
        // Lost: the entry gets the new key, keeping its id and name.
        r.lost.insert(id(2));
        assert_eq!(
            decide(&p, &back, None, &[Role::Drone], Some(&r), None, LIVE),
            Ok(Admission::Replace {
                id: id(2),
                name: "node2".into(),
                public_key: key(9),
            })
        );
        // A token that is not ephemeral never replaces.
        assert!(matches!(
            decide(&p, &back, None, &[Role::Drone], None, None, LIVE),
            Err(Refusal::EndpointTaken { node: 2, .. })
        ));
        // Node 3 was not admitted as ephemeral: lost or not, never replaced.
        r.lost.insert(id(3));
        let mut other = back.clone();
        other.endpoint = "198.18.0.3:51820".parse().unwrap();
        let refused = decide(&p, &other, None, &[Role::Drone], Some(&r), None, LIVE).unwrap_err();
        assert!(!refused.is_temporary());
        // Ephemeral under another key (the id was reused by a later, ordinary join): never.
        let mut r2 = Replaceable::default();
        r2.ephemeral.insert((id(2), key(7)));
        r2.lost.insert(id(2));
        assert!(matches!(
            decide(&p, &back, None, &[Role::Drone], Some(&r2), None, LIVE),
            Err(Refusal::EndpointTaken { .. })
        ));
    }

    #[test]
    fn a_full_network_refuses() {
        // A /30 has two usable host addresses: ids 1 and 2.
        let expires = Timestamp::now() + jiff::SignedDuration::from_hours(1);
        let t = policy::template::init_template("lab", expires)
            .replace("10.77.0.0/24", "10.77.0.0/30")
            .replace("tunnel_ipv6 = \"fd77:7d00::/64\"\n", "");
        let mut t = t;
        for id in [1u16, 2] {
            t.push_str(&format!(
                "\n[[node]]\nid = {id}\nname = \"n{id}\"\npublic_key = \"{}\"\naddresses = [\"10.77.0.{id}\"]\n",
                key(id as u8)
            ));
        }
        let p = policy::parse_policy("test", t.as_bytes(), Timestamp::now()).unwrap();
        assert_eq!(
            decide(&p, &req(9, None), None, &[Role::Drone], None, None, LIVE),
            Err(Refusal::Full)
        );
    }

    /// Attack (a token holder, through a relay, issue 26 #2): nodes were signed with
    /// endpoints their joiner does not own: 0.0.0.0, 255.255.255.255, 224.0.0.1, 127.0.0.1, a
    /// tunnel address, [::], [fe80::1], [ff02::1], and a taken endpoint spelled as
    /// [::ffff:198.18.0.2]. Steps: each claimed with no source seen (a relay that sent no
    /// record): each refused, the mapped one as the taken endpoint it is; a relay's record
    /// of the joiner's address is held against the claim like a direct source.
    #[test]
    fn a_joiner_cannot_claim_an_endpoint_it_does_not_own() {
        let p = policy_with(&[(1, "master", 1), (2, "d2", 2)]);
        for bad in [
            "0.0.0.0:51820",
            "255.255.255.255:51820",
            "224.0.0.1:51820",
            "127.0.0.1:51820",
            "10.77.0.1:51820",
            "169.254.1.1:51820",
            "[::]:51820",
            "[fe80::1]:51820",
            "[ff02::1]:51820",
            "[::1]:51820",
        ] {
            let mut r = req(9, None);
            r.endpoint = bad.parse().unwrap();
            assert!(
                matches!(
                    decide(&p, &r, None, &[Role::Drone], None, None, LIVE),
                    Err(Refusal::BadEndpoint { .. })
                ),
                "{bad} was accepted"
            );
        }
        let mut r = req(9, None);
        r.endpoint = "[::ffff:198.18.0.2]:51820".parse().unwrap();
        assert!(matches!(
            decide(&p, &r, None, &[Role::Drone], None, None, LIVE),
            Err(Refusal::EndpointTaken { node: 2, .. })
        ));
        // A mapped spelling of the address it came from is that address.
        let mut r = req(9, None);
        r.endpoint = "[::ffff:198.18.0.9]:51820".parse().unwrap();
        match decide(
            &p,
            &r,
            Some("198.18.0.9".parse().unwrap()),
            &[Role::Drone],
            None,
            None,
            LIVE,
        ) {
            Ok(Admission::Add(n)) => {
                assert_eq!(n.endpoint, Some("198.18.0.9:51820".parse().unwrap()));
            }
            other => panic!("{other:?}"),
        }
        // What a relay saw is held against the claim.
        assert!(matches!(
            decide(
                &p,
                &req(9, None),
                Some("198.18.0.77".parse().unwrap()),
                &[Role::Drone],
                None,
                None,
                LIVE
            ),
            Err(Refusal::EndpointMismatch { .. })
        ));
    }
}
