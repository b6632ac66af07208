//! The peer plan: the smallest set of changes that turns the device's peers into the desired
//! ones. Peers are added, removed and updated one by one, never all replaced (that would drop
//! every live session). Pure.

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use policy::WgPublicKey;

use crate::desired::{DesiredPeer, IfAddr};

/// A peer as the device reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActualPeer {
    pub endpoint: Option<SocketAddr>,
    pub allowed_ips: Vec<IfAddr>,
    pub keepalive: Option<u16>,
    /// A preshared key is set. The policy sets none: one set behind netguard's back breaks
    /// the tunnel at the next handshake.
    pub preshared_key: bool,
    /// Time since the last handshake, if there was one.
    pub handshake_age: Option<Duration>,
}

/// A handshake this recent means the peer is talking to us from where it is now.
pub const RECENT_HANDSHAKE: Duration = Duration::from_secs(180);

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerOp {
    Add {
        key: WgPublicKey,
        peer: DesiredPeer,
    },
    Remove {
        key: WgPublicKey,
    },
    /// The node's key changed: old out, new in, same allowed IPs, in one device update.
    Rotate {
        old: WgPublicKey,
        key: WgPublicKey,
        peer: DesiredPeer,
    },
    Update {
        key: WgPublicKey,
        peer: DesiredPeer,
        endpoint: bool,
        allowed_ips: bool,
        keepalive: bool,
        preshared_key: bool,
    },
}

impl fmt::Display for PeerOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PeerOp::Add { peer, .. } => write!(f, "add peer {} ({})", peer.node, peer.name),
            PeerOp::Remove { key } => write!(f, "remove peer {key}"),
            PeerOp::Rotate { peer, .. } => {
                write!(f, "rotate key of peer {} ({})", peer.node, peer.name)
            }
            PeerOp::Update {
                peer,
                endpoint,
                allowed_ips,
                keepalive,
                preshared_key,
                ..
            } => {
                let mut what = Vec::new();
                if *endpoint {
                    what.push("endpoint");
                }
                if *allowed_ips {
                    what.push("allowed ips");
                }
                if *keepalive {
                    what.push("keepalive");
                }
                if *preshared_key {
                    what.push("preshared key removed");
                }
                write!(
                    f,
                    "update peer {} ({}): {}",
                    peer.node,
                    peer.name,
                    what.join(", ")
                )
            }
        }
    }
}

fn sorted(v: &[IfAddr]) -> Vec<IfAddr> {
    let mut v = v.to_vec();
    v.sort();
    v
}

/// The same addresses, in any order (the same order, the common case, is checked first).
fn same_addresses(a: &[IfAddr], b: &[IfAddr]) -> bool {
    a == b || sorted(a) == sorted(b)
}

/// What the plan needs to know of a peer on the device: read from it, or assumed from the
/// state the last pass converged to.
pub trait OnDevice {
    fn endpoint(&self) -> Option<SocketAddr>;
    fn allowed_ips(&self) -> &[IfAddr];
    fn keepalive(&self) -> Option<u16>;
    /// Whether a preshared key is set (netguard never sets one).
    fn preshared_key(&self) -> bool;
    /// Time since the last handshake, if there was one and it is known.
    fn handshake_age(&self) -> Option<Duration>;
}

impl OnDevice for ActualPeer {
    fn endpoint(&self) -> Option<SocketAddr> {
        self.endpoint
    }
    fn allowed_ips(&self) -> &[IfAddr] {
        &self.allowed_ips
    }
    fn keepalive(&self) -> Option<u16> {
        self.keepalive
    }
    fn preshared_key(&self) -> bool {
        self.preshared_key
    }
    fn handshake_age(&self) -> Option<Duration> {
        self.handshake_age
    }
}

/// A peer as the last pass configured it (handshakes unknown).
impl OnDevice for DesiredPeer {
    fn endpoint(&self) -> Option<SocketAddr> {
        self.endpoint
    }
    fn allowed_ips(&self) -> &[IfAddr] {
        &self.allowed_ips
    }
    fn keepalive(&self) -> Option<u16> {
        self.keepalive
    }
    fn preshared_key(&self) -> bool {
        false
    }
    fn handshake_age(&self) -> Option<Duration> {
        None
    }
}

/// Plans the changes from `actual` to `desired`. A roaming peer's endpoint is left alone while
/// its handshake is recent. One walk over both maps in key order, so a one-node change to a
/// 10,000-node map costs no lookups.
pub fn plan<A: OnDevice>(
    actual: &BTreeMap<WgPublicKey, A>,
    desired: &BTreeMap<WgPublicKey, DesiredPeer>,
) -> Vec<PeerOp> {
    let mut stale: Vec<(&WgPublicKey, &A)> = Vec::new();
    let mut pairs = Vec::with_capacity(desired.len());
    let mut on_device = actual.iter().peekable();
    for (key, want) in desired {
        while let Some(old) = on_device.next_if(|(k, _)| *k < key) {
            stale.push(old);
        }
        let have = on_device.next_if(|(k, _)| *k == key).map(|(_, a)| a);
        pairs.push((key, want, have));
    }
    stale.extend(on_device);
    // A stale peer holding exactly a new key's addresses is that node under its old key.
    let mut stale_by_addresses: BTreeMap<Vec<IfAddr>, VecDeque<usize>> = BTreeMap::new();
    if pairs.iter().any(|(_, _, have)| have.is_none()) {
        for (i, (_, peer)) in stale.iter().enumerate() {
            stale_by_addresses
                .entry(sorted(peer.allowed_ips()))
                .or_default()
                .push_back(i);
        }
    }
    let mut rotated = vec![false; stale.len()];
    let mut ops = Vec::new();
    for (key, want, have) in pairs {
        let Some(have) = have else {
            let old = stale_by_addresses
                .get_mut(&sorted(&want.allowed_ips))
                .and_then(VecDeque::pop_front);
            ops.push(match old {
                Some(i) => {
                    rotated[i] = true;
                    PeerOp::Rotate {
                        old: *stale[i].0,
                        key: *key,
                        peer: want.clone(),
                    }
                }
                None => PeerOp::Add {
                    key: *key,
                    peer: want.clone(),
                },
            });
            continue;
        };
        let roaming = want.roams && have.handshake_age().is_some_and(|a| a < RECENT_HANDSHAKE);
        let endpoint = want.endpoint.is_some() && have.endpoint() != want.endpoint && !roaming;
        let allowed_ips = !same_addresses(have.allowed_ips(), &want.allowed_ips);
        let keepalive = have.keepalive() != want.keepalive;
        let preshared_key = have.preshared_key();
        if endpoint || allowed_ips || keepalive || preshared_key {
            ops.push(PeerOp::Update {
                key: *key,
                peer: want.clone(),
                endpoint,
                allowed_ips,
                keepalive,
                preshared_key,
            });
        }
    }
    ops.extend(
        stale
            .iter()
            .zip(&rotated)
            .filter(|(_, rotated)| !**rotated)
            .map(|((key, _), _)| PeerOp::Remove { key: **key }),
    );
    ops
}

#[cfg(test)]
mod tests {
    use super::*;
    use policy::NodeId;
    use proptest::prelude::*;

    /// The plan as first written (a lookup per peer, a scan of the stale peers per new key):
    /// the one-walk plan must agree with it on every input.
    fn reference_plan(
        actual: &BTreeMap<WgPublicKey, ActualPeer>,
        desired: &BTreeMap<WgPublicKey, DesiredPeer>,
    ) -> Vec<PeerOp> {
        let mut ops = Vec::new();
        let mut stale: Vec<&WgPublicKey> =
            actual.keys().filter(|k| !desired.contains_key(k)).collect();
        for (key, want) in desired {
            let Some(have) = actual.get(key) else {
                let want_ips = sorted(&want.allowed_ips);
                if let Some(pos) = stale
                    .iter()
                    .position(|k| sorted(&actual[*k].allowed_ips) == want_ips)
                {
                    let old = *stale.remove(pos);
                    ops.push(PeerOp::Rotate {
                        old,
                        key: *key,
                        peer: want.clone(),
                    });
                } else {
                    ops.push(PeerOp::Add {
                        key: *key,
                        peer: want.clone(),
                    });
                }
                continue;
            };
            let roaming = want.roams && have.handshake_age.is_some_and(|a| a < RECENT_HANDSHAKE);
            let endpoint = want.endpoint.is_some() && have.endpoint != want.endpoint && !roaming;
            let allowed_ips = sorted(&have.allowed_ips) != sorted(&want.allowed_ips);
            let keepalive = have.keepalive != want.keepalive;
            let preshared_key = have.preshared_key;
            if endpoint || allowed_ips || keepalive || preshared_key {
                ops.push(PeerOp::Update {
                    key: *key,
                    peer: want.clone(),
                    endpoint,
                    allowed_ips,
                    keepalive,
                    preshared_key,
                });
            }
        }
        ops.extend(stale.into_iter().map(|k| PeerOp::Remove { key: *k }));
        ops
    }

    /// Small ranges, so keys, addresses and endpoints collide often.
    fn arb_peer() -> impl Strategy<Value = (u8, DesiredPeer, Option<u64>)> {
        (
            0u8..10,
            1u16..6,
            proptest::collection::vec(1u8..5, 0..3),
            proptest::option::of(1u16..3),
            proptest::option::of(0u64..400),
            proptest::option::of(20u16..22),
            proptest::bool::ANY,
        )
            .prop_map(|(k, node, ips, port, age, keepalive, roams)| {
                let peer = DesiredPeer {
                    node: NodeId::new(node).unwrap(),
                    name: format!("n{node}"),
                    endpoint: port.map(|p| SocketAddr::from(([198, 18, 0, 1], p))),
                    allowed_ips: ips
                        .into_iter()
                        .map(|i| IfAddr {
                            addr: [10, 77, 0, i].into(),
                            prefix: 32,
                        })
                        .collect(),
                    keepalive,
                    roams,
                };
                (k, peer, age)
            })
    }

    proptest! {
        #[test]
        fn the_one_walk_plan_is_the_reference_plan(
            on_device in proptest::collection::vec(arb_peer(), 0..8),
            wanted in proptest::collection::vec(arb_peer(), 0..8),
        ) {
            let actual: BTreeMap<_, _> = on_device
                .iter()
                .map(|(k, p, age)| (key(*k), have(p, *age)))
                .collect();
            let desired: BTreeMap<_, _> =
                wanted.into_iter().map(|(k, p, _)| (key(k), p)).collect();
            prop_assert_eq!(plan(&actual, &desired), reference_plan(&actual, &desired));
        }
    }

    fn key(n: u8) -> WgPublicKey {
        WgPublicKey::from_bytes([n; 32])
    }

    fn want(node: u16, port: u16) -> DesiredPeer {
        DesiredPeer {
            node: NodeId::new(node).unwrap(),
            name: format!("n{node}"),
            endpoint: Some(format!("198.18.0.{node}:{port}").parse().unwrap()),
            allowed_ips: vec![IfAddr {
                addr: format!("10.77.0.{node}").parse().unwrap(),
                prefix: 32,
            }],
            keepalive: None,
            roams: true,
        }
    }

    fn have(p: &DesiredPeer, age: Option<u64>) -> ActualPeer {
        ActualPeer {
            endpoint: p.endpoint,
            allowed_ips: p.allowed_ips.clone(),
            keepalive: p.keepalive,
            preshared_key: false,
            handshake_age: age.map(Duration::from_secs),
        }
    }

    #[test]
    fn nothing_to_do_when_in_step() {
        let d: BTreeMap<_, _> = [(key(2), want(2, 51820))].into();
        let a: BTreeMap<_, _> = [(key(2), have(&want(2, 51820), Some(5)))].into();
        assert!(plan(&a, &d).is_empty());
    }

    #[test]
    fn adds_removes_and_rotates_one_by_one() {
        let d: BTreeMap<_, _> = [
            (key(2), want(2, 51820)),
            (key(30), want(3, 51820)),
            (key(4), want(4, 51820)),
        ]
        .into();
        let a: BTreeMap<_, _> = [
            (key(2), have(&want(2, 51820), None)),
            (key(3), have(&want(3, 51820), None)), // node 3's old key
            (key(9), have(&want(9, 51820), None)), // removed node
        ]
        .into();
        let ops: Vec<String> = plan(&a, &d).iter().map(ToString::to_string).collect();
        assert_eq!(
            ops,
            [
                "add peer 4 (n4)",
                "rotate key of peer 3 (n3)",
                &format!("remove peer {}", key(9))
            ]
        );
    }

    #[test]
    fn a_recent_handshake_keeps_a_roaming_endpoint() {
        let d: BTreeMap<_, _> = [(key(2), want(2, 51820))].into();
        let mut roamed = have(&want(2, 51820), Some(10));
        roamed.endpoint = Some("198.18.5.5:40000".parse().unwrap());
        let a: BTreeMap<_, _> = [(key(2), roamed.clone())].into();
        assert!(plan(&a, &d).is_empty());
        roamed.handshake_age = Some(Duration::from_secs(600));
        let a: BTreeMap<_, _> = [(key(2), roamed)].into();
        assert_eq!(plan(&a, &d)[0].to_string(), "update peer 2 (n2): endpoint");
    }

    /// Attack (root on a node, found by a helper attacking from the docs): `wg set IF peer K
    /// endpoint ELSEWHERE` broke the tunnel until the peer's next handshake, and was never
    /// repaired: a recent handshake kept it as a roamed endpoint although the policy allows
    /// no roaming. Steps: a peer with a recent handshake and another endpoint: with roaming
    /// off the endpoint is put back; with roaming on it is kept.
    #[test]
    fn without_roaming_an_endpoint_set_by_hand_is_put_back() {
        let mut fixed = want(2, 51820);
        fixed.roams = false;
        let d: BTreeMap<_, _> = [(key(2), fixed)].into();
        let mut moved = have(&want(2, 51820), Some(10));
        moved.endpoint = Some("198.18.0.7:51820".parse().unwrap());
        let a: BTreeMap<_, _> = [(key(2), moved)].into();
        assert_eq!(plan(&a, &d)[0].to_string(), "update peer 2 (n2): endpoint");
    }

    #[test]
    fn changed_allowed_ips_are_repaired() {
        let d: BTreeMap<_, _> = [(key(2), want(2, 51820))].into();
        let mut drifted = have(&want(2, 51820), None);
        drifted.allowed_ips.push(IfAddr {
            addr: "0.0.0.0".parse().unwrap(),
            prefix: 0,
        });
        let a: BTreeMap<_, _> = [(key(2), drifted)].into();
        assert_eq!(
            plan(&a, &d)[0].to_string(),
            "update peer 2 (n2): allowed ips"
        );
    }

    /// Attack (root on a node, issue 25 #8): `wg set IF peer K preshared-key F` breaks the
    /// tunnel at the next handshake and was neither repaired nor logged (the plan did not
    /// read preshared keys). Steps: a device peer in step but for a preshared key: the plan
    /// updates it and says so; the update unsets the key.
    #[test]
    fn a_preshared_key_set_behind_netguards_back_is_removed() {
        let d: BTreeMap<_, _> = [(key(2), want(2, 51820))].into();
        let mut keyed = have(&want(2, 51820), Some(5));
        keyed.preshared_key = true;
        let a: BTreeMap<_, _> = [(key(2), keyed)].into();
        let ops = plan(&a, &d);
        assert_eq!(
            ops[0].to_string(),
            "update peer 2 (n2): preshared key removed"
        );
        let update = crate::wg::update_for(&ops);
        let shown = format!("{update:?}");
        assert!(shown.contains("preshared_key: Some("), "{shown}");
    }
}
