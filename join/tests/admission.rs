//! A master admitting with an admission key (issue 28), over in-memory streams: it signs only
//! its membership, within the limits the operator's policy gives its key, and a key the
//! operator removed admits nobody.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ed25519_dalek::SigningKey;
use jiff::Timestamp;
use join::admit::{JoinAnswer, JoinRequest};
use join::client::{check, exchange, no_tpm};
use join::service::{Master, Outcome, Source};
use join::token::{Limits, Token, TokenStore};
use policy::{OperatorPublicKey, Role, WgPublicKey};

const OPERATOR: [u8; 32] = [7; 32];
const ADMISSION: [u8; 32] = [8; 32];

/// Relayed by node 1 (the joiner's claimed endpoint is taken as it is).
const RELAYED: Source = Source::Tunnel(std::net::IpAddr::V4(std::net::Ipv4Addr::new(10, 77, 0, 1)));

struct Lab {
    _dir: tempfile::TempDir,
    policy: PathBuf,
    in_force: join::service::SharedPolicy,
    tokens: PathBuf,
    master: Arc<Master>,
    fingerprint: String,
}

fn key(n: u8) -> WgPublicKey {
    WgPublicKey::from_secret(&[n; 32])
}

/// The policy at `serial`: node 1 a master; with `admission`, master 1's admission key admits
/// drones, ids 100-101, in 10.77.0.128/26.
fn policy_text(serial: u64, admission: bool) -> String {
    policy_with_key(serial, admission.then_some(ADMISSION))
}

fn policy_with_key(serial: u64, admission: Option<[u8; 32]>) -> String {
    let expires = Timestamp::now() + jiff::SignedDuration::from_hours(1);
    let mut text = policy::template::init_template("lab", expires)
        .replace("serial = 1\n", &format!("serial = {serial}\n"));
    if let Some(seed) = admission {
        text.push_str(&format!(
            "\n[[admission]]\nmaster = 1\nkey = \"{}\"\nroles = [\"drone\"]\nids = \"100-101\"\naddresses = [\"10.77.0.128/26\"]\nmax_nodes = 2\nexpires = \"{expires}\"\n",
            OperatorPublicKey::from(&SigningKey::from_bytes(&seed))
        ));
    }
    text.push_str(&format!(
        "\n[[node]]\nid = 1\nname = \"master\"\npublic_key = \"{}\"\nendpoint = \"198.18.0.1:51820\"\naddresses = [\"10.77.0.1\"]\nroles = [\"master\"]\n",
        key(1)
    ));
    text
}

fn put(lab_policy: &std::path::Path, text: &str) {
    let sig = policy::sign(text.as_bytes(), &SigningKey::from_bytes(&OPERATOR));
    policy::write_signed_pair(lab_policy, text.as_bytes(), sig.as_bytes()).unwrap();
}

fn lab() -> Lab {
    let dir = tempfile::tempdir().unwrap();
    let operator = SigningKey::from_bytes(&OPERATOR);
    let policy = dir.path().join("cluster.toml");
    put(&policy, &policy_text(1, true));
    let trust = dir.path().join("operator.pub");
    std::fs::write(&trust, format!("{}\n", OperatorPublicKey::from(&operator))).unwrap();
    let paths = policy::PolicyPaths {
        policy: policy.clone(),
        trust,
        state: dir.path().join("joind.json"),
    };
    let in_force = Arc::new(std::sync::Mutex::new(
        policy::PolicyInForce::open(paths, 0).unwrap(),
    ));
    let tokens = dir.path().join("tokens.json");
    let master = Arc::new(Master::admitting(
        in_force.clone(),
        SigningKey::from_bytes(&ADMISSION),
        tokens.clone(),
    ));
    Lab {
        _dir: dir,
        policy,
        in_force,
        tokens,
        master,
        fingerprint: OperatorPublicKey::from(&operator).fingerprint(),
    }
}

fn token(lab: &Lab, uses: u32, roles: Vec<Role>) -> Token {
    let mut store = TokenStore::load(&lab.tokens).unwrap();
    let t = store.create(
        &Limits {
            uses,
            valid_for: Duration::from_secs(3600),
            roles,
            ephemeral: false,
        },
        Timestamp::now(),
        &mut rand_core::OsRng,
    );
    store.save(&lab.tokens).unwrap();
    t
}

fn request(k: u8) -> JoinRequest {
    JoinRequest {
        public_key: key(k).to_base64(),
        name: None,
        endpoint: format!("198.18.0.{k}:51820").parse().unwrap(),
        attestation: None,
    }
}

fn attempt(lab: &Lab, t: &Token, req: &JoinRequest) -> (Result<JoinAnswer, String>, Outcome) {
    let (a, b) = UnixStream::pair().unwrap();
    for s in [&a, &b] {
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    }
    let master = lab.master.clone();
    let served = std::thread::spawn(move || master.serve(b, RELAYED));
    let got = exchange(a, t, req, &no_tpm).map_err(|e| e.to_string());
    (got, served.join().unwrap())
}

fn refusal(got: &Result<JoinAnswer, String>) -> String {
    match got {
        Ok(JoinAnswer::Refused { reason }) => reason.clone(),
        other => panic!("not refused: {other:?}"),
    }
}

fn leave(lab: &Lab, from: [u8; 4]) -> (String, Outcome) {
    use std::io::{BufRead, Write};
    let (mut a, b) = UnixStream::pair().unwrap();
    a.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let master = lab.master.clone();
    let served = std::thread::spawn(move || master.serve(b, Source::Tunnel(from.into())));
    a.write_all(&join::wire::Hello::Leave.to_bytes()).unwrap();
    let mut answer = String::new();
    let _ = std::io::BufReader::new(&a).read_line(&mut answer);
    drop(a);
    (answer, served.join().unwrap())
}

/// A master holding only its admission key: each join lands in its membership (id and
/// address from its key's ranges), the policy file is never touched, the joiner verifies
/// the membership it is listed in; a retry changes nothing; past the key's count, refused;
/// a node it admitted leaves through it, a node it did not (itself) cannot.
#[test]
fn a_master_with_an_admission_key_admits_into_its_membership_and_never_signs_the_policy() {
    let lab = lab();
    let before = std::fs::read(&lab.policy).unwrap();
    let t = token(&lab, 5, vec![Role::Drone]);
    let (got, outcome) = attempt(&lab, &t, &request(5));
    assert!(
        matches!(
            outcome,
            Outcome::Joined {
                id: 100,
                serial: 1,
                ..
            }
        ),
        "{outcome:?}"
    );
    let joined = check(got.unwrap(), &lab.fingerprint, &key(5), Timestamp::now()).unwrap();
    assert_eq!((joined.node, joined.memberships.len()), (100, 1));
    assert_eq!(joined.roles, [Role::Drone]);
    assert!(joined.memberships[0].membership.contains("10.77.0.129"));
    assert_eq!(
        std::fs::read(&lab.policy).unwrap(),
        before,
        "the policy was signed again"
    );
    let membership = policy::membership::membership_path(&lab.policy, policy::NodeId::MIN);
    assert!(
        std::fs::read_to_string(&membership)
            .unwrap()
            .contains("serial = 1")
    );

    let (_, again) = attempt(&lab, &t, &request(5));
    assert!(
        matches!(again, Outcome::Already { id: 100, .. }),
        "{again:?}"
    );
    let (_, second) = attempt(&lab, &t, &request(6));
    assert!(
        matches!(
            second,
            Outcome::Joined {
                id: 101,
                serial: 2,
                ..
            }
        ),
        "{second:?}"
    );
    let (got, _) = attempt(&lab, &t, &request(7));
    assert!(refusal(&got).contains("no free node id"), "{got:?}");

    let (answer, outcome) = leave(&lab, [10, 77, 0, 129]);
    assert!(answer.contains("\"removed\":{\"node\":100}"), "{answer}");
    assert!(
        matches!(
            outcome,
            Outcome::Left {
                id: 100,
                serial: 3,
                ..
            }
        ),
        "{outcome:?}"
    );
    let (answer, outcome) = leave(&lab, [10, 77, 0, 1]);
    assert!(
        answer.contains("not a node this master admitted"),
        "{answer}"
    );
    assert!(
        matches!(outcome, Outcome::LeaveRefused { .. }),
        "{outcome:?}"
    );
    assert_eq!(std::fs::read(&lab.policy).unwrap(), before);
}

/// Attack (a stolen admission key used through joind, issue 28): a token for a role the key
/// does not admit is refused; once the operator's policy no longer lists the key (revoked),
/// the master admits nobody, at once, and says why.
#[test]
fn a_revoked_admission_key_admits_nobody_and_never_a_role_outside_it() {
    let lab = lab();
    let server = token(&lab, 5, vec![Role::Server]);
    let (got, _) = attempt(&lab, &server, &request(5));
    assert!(
        refusal(&got).contains("admits drone only, not server"),
        "{got:?}"
    );
    put(&lab.policy, &policy_text(2, false));
    let drone = token(&lab, 5, vec![Role::Drone]);
    let (got, outcome) = attempt(&lab, &drone, &request(6));
    assert!(
        refusal(&got).contains("is not in the policy in force: it admits nobody"),
        "{got:?}"
    );
    assert!(matches!(outcome, Outcome::Refused { .. }), "{outcome:?}");
}

/// `tyd admission rotate`: the operator lists a new key for master 1; the master, given the
/// new key, signs its membership again at the next serial (its nodes stay), once; the old
/// key's signature is refused from then on.
#[test]
fn after_a_key_rotation_the_master_signs_its_membership_again_with_the_new_key() {
    let lab = lab();
    let t = token(&lab, 5, vec![Role::Drone]);
    let (_, outcome) = attempt(&lab, &t, &request(5));
    assert!(
        matches!(
            outcome,
            Outcome::Joined {
                id: 100,
                serial: 1,
                ..
            }
        ),
        "{outcome:?}"
    );
    let new_key = [9; 32];
    put(&lab.policy, &policy_with_key(2, Some(new_key)));
    // The master still holding the old key: nothing to do with it.
    assert!(lab.master.resign_own_membership().is_none());
    let rotated = Master::admitting(
        lab.in_force.clone(),
        SigningKey::from_bytes(&new_key),
        lab.tokens.clone(),
    );
    assert_eq!(
        rotated
            .resign_own_membership()
            .map(|r| r.map_err(|e| e.to_string())),
        Some(Ok(2))
    );
    assert!(rotated.resign_own_membership().is_none(), "once per policy");
    let path = policy::membership::membership_path(&lab.policy, policy::NodeId::MIN);
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(
        text.contains("serial = 2") && text.contains("id = 100"),
        "{text}"
    );
    let effective = join::service::effective_in_force(&lab.in_force, Timestamp::now()).unwrap();
    assert!(effective.nodes.iter().any(|n| n.id.get() == 100));
}
