//! The policy in force (`PolicyInForce`): what every daemon holds its policy through, tried as
//! an attacker who can put an older signed policy (or garbage) where the daemons read it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use common::*;

use std::path::Path;

use policy::{Outcome, PolicyInForce, PolicyPaths, Refusal, StoreError, sign, write_signed_pair};

/// A lab directory: the operator's trust file, a policy path, a state path.
fn lab(dir: &Path) -> PolicyPaths {
    let trust = dir.join("operator.pub");
    let key = policy::OperatorPublicKey::from(&operator(1)).to_base64();
    std::fs::write(&trust, format!("{key}\n")).unwrap();
    PolicyPaths {
        policy: dir.join("cluster.toml"),
        trust,
        state: dir.join("accepted.json"),
    }
}

/// Puts `valid_policy()` at `serial` (with `extra` appended) in place, signed by operator 1.
fn put(paths: &PolicyPaths, serial: u64, extra: &str) {
    let text = with("serial = 7", &format!("serial = {serial}")) + extra;
    let sig = sign(text.as_bytes(), &operator(1));
    write_signed_pair(&paths.policy, text.as_bytes(), sig.as_bytes()).unwrap();
}

fn serial_in_force(p: &PolicyInForce) -> Option<u64> {
    p.current().map(|a| a.cluster.serial)
}

/// Attack: a rollback to an older signed policy (one that still listed a removed node, or
/// a weaker integrity action) put where a daemon reads it. Steps: serial 5 is read and
/// accepted; serial 4, properly signed, replaces the files; the next read refuses it as a
/// rollback (reported once: the next read of the same files is not read at all, and a
/// rewrite of them is refused without being reported as new) and serial 5 stays in force;
/// serial 6 is then accepted and the refusal reported as cleared.
#[test]
fn a_rolled_back_policy_file_is_refused_and_the_newer_one_stays_in_force() {
    let dir = tempfile::tempdir().unwrap();
    let paths = lab(dir.path());
    let mut p = PolicyInForce::open(paths.clone(), 0).unwrap();
    put(&paths, 5, "");
    assert!(matches!(
        p.poll(now()),
        Outcome::Accepted {
            new: true,
            recovered: false,
            ..
        }
    ));
    put(&paths, 4, "");
    match p.poll(now()) {
        Outcome::Refused {
            reason:
                Refusal::Store {
                    source:
                        StoreError::Rollback {
                            offered: 4,
                            accepted: 5,
                        },
                    ..
                },
            first: true,
        } => {}
        other => panic!("{other:?}"),
    }
    assert_eq!(serial_in_force(&p), Some(5));
    assert!(matches!(p.poll(now()), Outcome::Unread));
    put(&paths, 4, "");
    assert!(matches!(
        p.poll(now()),
        Outcome::Refused { first: false, .. }
    ));
    put(&paths, 6, "");
    assert!(matches!(
        p.poll(now()),
        Outcome::Accepted {
            new: true,
            recovered: true,
            ..
        }
    ));
    assert_eq!(serial_in_force(&p), Some(6));
}

/// Attack: the rollback timed with a restart (the daemon is started again on the older
/// files, as a reboot of a disk node or a crash would). Steps: serial 5 accepted by one
/// instance; serial 4 put in place; a new instance on the same state refuses to start on
/// it; one with the same content at serial 5 replaced (a replay) is refused too; a node
/// with no state but a floor of 5 (a RAM node's boot media) refuses serial 4 as well.
#[test]
fn a_restart_on_an_older_or_replayed_policy_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let paths = lab(dir.path());
    put(&paths, 5, "");
    PolicyInForce::open(paths.clone(), 0)
        .unwrap()
        .load_now(now())
        .unwrap();

    put(&paths, 4, "");
    let err = PolicyInForce::open(paths.clone(), 0)
        .unwrap()
        .load_now(now())
        .unwrap_err();
    assert!(
        err.to_string()
            .ends_with("serial 4 is older than accepted serial 5: rollback refused"),
        "{err}"
    );
    assert_eq!(policy::exit::Exit::from(&err), policy::exit::Exit::Refused);

    put(&paths, 5, "# other content\n");
    let err = PolicyInForce::open(paths.clone(), 0)
        .unwrap()
        .load_now(now())
        .unwrap_err();
    assert!(err.to_string().contains("replay refused"), "{err}");

    let fresh = PolicyPaths {
        state: dir.path().join("none.json"),
        ..paths.clone()
    };
    put(&paths, 4, "");
    let err = PolicyInForce::open(fresh, 5)
        .unwrap()
        .load_now(now())
        .unwrap_err();
    assert!(
        err.to_string().contains("below this node's floor 5"),
        "{err}"
    );
}

/// Attack: garbage, then half a pair (the signature missing), while a policy is in force.
/// Steps: serial 5 accepted; the policy replaced by bytes that do not parse; refused, serial
/// 5 stays; a tentative read (right after a change event) of an unsigned file is refused
/// without counting as reported, so the next read reports it.
#[test]
fn garbage_and_a_missing_signature_leave_the_policy_in_force() {
    let dir = tempfile::tempdir().unwrap();
    let paths = lab(dir.path());
    let mut p = PolicyInForce::open(paths.clone(), 0).unwrap();
    put(&paths, 5, "");
    p.poll(now());
    std::fs::write(&paths.policy, b"\x00\xffnot toml").unwrap();
    assert!(matches!(
        p.poll(now()),
        Outcome::Refused {
            reason: Refusal::Load(_),
            first: true
        }
    ));
    assert_eq!(serial_in_force(&p), Some(5));

    std::fs::remove_file(policy::signature_path(&paths.policy)).unwrap();
    std::fs::write(&paths.policy, valid_policy()).unwrap();
    assert!(matches!(
        p.reload_tentatively(now()),
        Outcome::Refused { first: true, .. }
    ));
    assert!(matches!(
        p.reload(now()),
        Outcome::Refused { first: true, .. }
    ));
    assert!(matches!(
        p.reload(now()),
        Outcome::Refused { first: false, .. }
    ));
    assert_eq!(serial_in_force(&p), Some(5));
}

/// The copy in force: after a restart on refused files, the copy kept of the policy in force
/// is what the store last accepted, and is taken; a copy of an older serial is not.
#[test]
fn the_copy_in_force_is_taken_only_if_it_is_what_the_store_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let paths = lab(dir.path());
    let mut p = PolicyInForce::open(paths.clone(), 0).unwrap();
    put(&paths, 5, "");
    p.poll(now());
    p.keep_copy().unwrap();
    std::fs::write(&paths.policy, b"garbage").unwrap();

    let mut restarted = PolicyInForce::open(paths.clone(), 0).unwrap();
    assert!(matches!(restarted.poll(now()), Outcome::Refused { .. }));
    assert!(matches!(
        restarted.fall_back_to_copy(now()),
        Some(Outcome::Accepted { .. })
    ));
    assert_eq!(serial_in_force(&restarted), Some(5));

    // A newer policy accepted since: the copy (serial 5) is a rollback now.
    put(&paths, 6, "");
    restarted.poll(now());
    std::fs::write(&paths.policy, b"garbage").unwrap();
    let mut again = PolicyInForce::open(paths, 0).unwrap();
    again.poll(now());
    assert!(matches!(
        again.fall_back_to_copy(now()),
        Some(Outcome::Refused { .. })
    ));
    assert_eq!(serial_in_force(&again), None);
}

/// Attack (issue 27 review, "clusterd logged once per write"): two refused files written in
/// turn, over and over, so that each read's reason differs from the last one's. Steps:
/// serial 7 in force; serials 5 and 6 (signed, both rollbacks) put in place alternately, 20
/// times; only the first of each is news (two reports, not 20); a newer policy accepted
/// makes a refusal news again.
#[test]
fn two_refused_files_written_in_turn_are_reported_once_each() {
    let dir = tempfile::tempdir().unwrap();
    let paths = lab(dir.path());
    let mut p = PolicyInForce::open(paths.clone(), 0).unwrap();
    put(&paths, 7, "");
    p.poll(now());
    let mut news = 0;
    for i in 0..20 {
        put(&paths, 5 + (i % 2), "");
        match p.poll(now()) {
            Outcome::Refused { first, .. } => news += usize::from(first),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(news, 2);
    assert_eq!(serial_in_force(&p), Some(7));
    put(&paths, 8, "");
    assert!(matches!(p.poll(now()), Outcome::Accepted { new: true, .. }));
    put(&paths, 5, "");
    assert!(matches!(
        p.poll(now()),
        Outcome::Refused { first: true, .. }
    ));
}

fn admission(seed: u8) -> String {
    let key = policy::OperatorPublicKey::from(&ed25519_dalek::SigningKey::from_bytes(&[seed; 32]));
    format!(
        "\n[[admission]]\nmaster = 1\nkey = \"{key}\"\nroles = [\"drone\"]\nids = \"100-199\"\naddresses = [\"10.77.0.128/26\"]\nmax_nodes = 4\nexpires = \"2099-01-01T00:00:00Z\"\n"
    )
}

/// Master 1's membership at `serial` listing drones `ids` (at 10.77.0.(ids+30)), signed by
/// the admission key of `seed`, put beside the policy.
fn put_membership(paths: &PolicyPaths, serial: u64, ids: &[u16], seed: u8) {
    let nodes: String = ids
        .iter()
        .map(|id| {
            let wg = policy::WgPublicKey::from_bytes([*id as u8; 32]);
            format!(
                "\n[[node]]\nid = {id}\nname = \"d{id}\"\npublic_key = \"{wg}\"\naddresses = [\"10.77.0.{}\"]\nroles = [\"drone\"]\n",
                id + 30
            )
        })
        .collect();
    let text = format!("[membership]\ncluster = \"lab\"\nmaster = 1\nserial = {serial}\n{nodes}");
    let sig = sign(
        text.as_bytes(),
        &ed25519_dalek::SigningKey::from_bytes(&[seed; 32]),
    );
    let path = policy::membership::membership_path(&paths.policy, policy::NodeId::MIN);
    write_signed_pair(&path, text.as_bytes(), sig.as_bytes()).unwrap();
}

fn ids_in_force(p: &PolicyInForce) -> Vec<u16> {
    p.effective()
        .map(|e| e.nodes.iter().map(|n| n.id.get()).collect())
        .unwrap_or_default()
}

/// Attack: a party with root on a master, or its admission key, puts memberships where the
/// daemons read them. Steps: the policy gives master 1 an admission key; its membership with
/// drone 100 joins the node map; a membership signed by another key is refused (reported
/// once, not at the next rewrite) and drone 100 stays; a rollback to serial 1 is refused;
/// the operator's next policy removes the key: the membership is dropped, its nodes with it
/// (fail closed), and a restarted daemon does not take it back.
#[test]
fn memberships_beside_the_policy_join_the_node_map_and_forged_ones_change_nothing() {
    use policy::MembershipEvent as E;
    use policy::membership::Refusal as R;
    let dir = tempfile::tempdir().unwrap();
    let paths = lab(dir.path());
    let mut p = PolicyInForce::open(paths.clone(), 0).unwrap();
    put(&paths, 5, &admission(40));
    assert!(matches!(p.poll(now()), Outcome::Accepted { .. }));
    assert!(p.read_memberships(now()).is_empty());
    assert_eq!(ids_in_force(&p), [1, 2, 3]);
    put_membership(&paths, 2, &[100], 40);
    let events = p.read_memberships(now());
    assert!(
        matches!(
            events[..],
            [E::Accepted {
                serial: 2,
                nodes: 1,
                ..
            }]
        ),
        "{events:?}"
    );
    assert_eq!(ids_in_force(&p), [1, 2, 3, 100]);
    assert!(p.read_memberships(now()).is_empty());

    put_membership(&paths, 3, &[100, 101], 41);
    let events = p.read_memberships(now());
    assert!(
        matches!(
            events[..],
            [E::Refused {
                reason: R::NotSigned { .. },
                first: true,
                ..
            }]
        ),
        "{events:?}"
    );
    put_membership(&paths, 3, &[100, 101], 41);
    let events = p.read_memberships(now());
    assert!(
        matches!(events[..], [E::Refused { first: false, .. }]),
        "{events:?}"
    );
    put_membership(&paths, 1, &[], 40);
    let events = p.read_memberships(now());
    assert!(
        matches!(
            events[..],
            [E::Refused {
                reason: R::Rollback { .. },
                ..
            }]
        ),
        "{events:?}"
    );
    assert_eq!(ids_in_force(&p), [1, 2, 3, 100]);

    put_membership(&paths, 4, &[100, 101], 40);
    assert_eq!(p.read_memberships(now()).len(), 1);
    put(&paths, 6, "");
    assert!(matches!(p.poll(now()), Outcome::Accepted { .. }));
    assert_eq!(ids_in_force(&p), [1, 2, 3]);
    let events = p.read_memberships(now());
    assert!(
        matches!(
            events[..],
            [E::Dropped(policy::membership::Dropped {
                reason: R::NoKey { .. },
                ..
            })]
        ),
        "{events:?}"
    );
    let mut restarted = PolicyInForce::open(paths.clone(), 0).unwrap();
    assert!(matches!(restarted.poll(now()), Outcome::Accepted { .. }));
    restarted.read_memberships(now());
    assert_eq!(ids_in_force(&restarted), [1, 2, 3]);
}

/// Found by CI (the systemd test, issue 28): after a reboot, clusterd on the master read its
/// membership again, its store said "unchanged" (it had accepted that serial before the
/// reboot), no change was reported, and clusterd went on without the nodes it lists (its
/// peers were the policy's alone: it sent them no heartbeat and they quarantined it). Steps:
/// a daemon accepts master 1's membership; a new daemon on the same state reads it again:
/// it must report it as put in force, and its node map must have drone 100.
#[test]
fn a_restarted_daemon_reports_the_membership_it_accepted_before_as_in_force() {
    use policy::MembershipEvent as E;
    let dir = tempfile::tempdir().unwrap();
    let paths = lab(dir.path());
    put(&paths, 5, &admission(40));
    put_membership(&paths, 2, &[100], 40);
    let mut first = PolicyInForce::open(paths.clone(), 0).unwrap();
    assert!(matches!(first.poll(now()), Outcome::Accepted { .. }));
    assert_eq!(first.read_memberships(now()).len(), 1);
    drop(first);
    let mut again = PolicyInForce::open(paths, 0).unwrap();
    assert!(matches!(again.poll(now()), Outcome::Accepted { .. }));
    let events = again.read_memberships(now());
    assert!(
        matches!(events[..], [E::Accepted { serial: 2, .. }]),
        "{events:?}"
    );
    assert_eq!(ids_in_force(&again), [1, 2, 3, 100]);
}
