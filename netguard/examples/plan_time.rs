//! Times the pure part of a policy change on one node, without root: the desired state from
//! the verified policy, the set-element edits, and the peer plan from the last pass, for one
//! node added to maps of 1000 and 10,000 nodes. `cargo run --release -p netguard --example
//! plan_time`; scripts/bench-netguard.sh measures the whole change, kernel included.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use netguard::desired::desired;
use netguard::reconcile::plan_from_last_pass;
use netguard::wg::Ensured;
use policy::{TrustedKeys, WgPublicKey};

fn key(id: usize) -> WgPublicKey {
    let mut b = [0u8; 32];
    b[..4].copy_from_slice(&(id as u32).to_le_bytes());
    b[31] = 0x42;
    WgPublicKey::from_bytes(b)
}

fn policy_text(n: usize) -> String {
    let mut t = policy::template::init_template(
        "bench",
        jiff::Timestamp::now() + jiff::SignedDuration::from_hours(1),
    )
    .replace("10.77.0.0/24", "10.0.0.0/16");
    for id in 1..=n {
        let _ = write!(
            t,
            "\n[[node]]\nid = {id}\nname = \"n{id}\"\npublic_key = \"{}\"\nendpoint = \"198.19.{}.{}:51820\"\naddresses = [\"10.0.{}.{}\"]\n",
            key(id),
            id / 250,
            id % 250 + 1,
            id / 250,
            id % 250 + 1
        );
    }
    t
}

fn best(f: &mut dyn FnMut() -> Duration) -> Duration {
    (0..20).map(|_| f()).min().unwrap_or(Duration::ZERO)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn main() {
    let op = ed25519_dalek::SigningKey::from_bytes(&[9; 32]);
    let trust = TrustedKeys::new(vec![(&op).into()]);
    let now = jiff::Timestamp::now();
    let verify = |text: &str| {
        let sig = policy::sign(text.as_bytes(), &op);
        policy::verify_policy("p", text.as_bytes(), sig.as_bytes(), &trust, now).unwrap()
    };
    for n in [1000usize, 10_000] {
        let before = verify(&policy_text(n));
        let after = verify(&policy_text(n + 1));
        let me = key(1);
        let old = desired(&before, &me, None, now).unwrap();
        let mut new = None;
        let desire = best(&mut || {
            let t = Instant::now();
            new = Some(desired(&after, &me, None, now).unwrap());
            t.elapsed()
        });
        let new = new.expect("desired");
        let mut edits = Vec::new();
        let sets = best(&mut || {
            let t = Instant::now();
            edits = new.ruleset.element_edits(&old.ruleset.elements);
            t.elapsed()
        });
        assert_eq!(edits.len(), 3, "endpoints, members, peers: {edits:?}");
        let mut ops = 0;
        let plan = best(&mut || {
            let t = Instant::now();
            let planned = plan_from_last_pass(Some(&old), Ensured::Present, &new).unwrap();
            ops = planned.len();
            t.elapsed()
        });
        assert_eq!(ops, 1, "one peer added");
        println!(
            "{n:>6} nodes, one added: desired state {:.2} ms, set edits {:.2} ms, peer plan {:.2} ms (best of 20)",
            ms(desire),
            ms(sets),
            ms(plan)
        );
    }
}
