//! What TPM quotes cost a cluster (issue 29), each against a reference measured in the same
//! run: the bytes per second one member sends at N members (default 50) with quotes and
//! challenges against without, over the same protocol code (`Core`, with quotes made in
//! software as a TPM makes them); and the time one peer spends checking one quote message
//! (signature, PCRs, its proof) against an ed25519 signature check of the same size in the
//! same run. Run by scripts/bench-attest.sh.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::{Duration, Instant};

use attest::AttestationKey;
use attest::forge::{self, Fields};
use clusterd::core::{Action, AttestConfig, Config, Core};
use p256::ecdsa::SigningKey;
use policy::NodeId;
use proto::cluster::{Heartbeat, Integrity, Message};
use rand_core::OsRng;

const IMAGE: [u8; 32] = [4; 32];

fn id(n: u16) -> NodeId {
    NodeId::new(n).unwrap()
}

fn key_of(n: u16) -> SigningKey {
    let mut seed = [7u8; 32];
    seed[..2].copy_from_slice(&n.to_le_bytes());
    SigningKey::from_slice(&seed).unwrap()
}

fn config(me: u16, n: u16, attest: bool) -> Config {
    Config {
        me: id(me),
        heartbeat: Duration::from_secs(1),
        quarantine: true,
        quarantine_after: Duration::from_secs(5),
        certainty_exempt: BTreeSet::new(),
        master: false,
        attest: attest.then(|| AttestConfig {
            cluster: "lab".into(),
            interval: Duration::from_secs(2),
            within: Duration::from_secs(8),
            images: vec![IMAGE],
            required: (1..=n)
                .map(|i| {
                    (
                        id(i),
                        Some(AttestationKey::from(*key_of(i).verifying_key())),
                    )
                })
                .collect(),
        }),
    }
}

fn heartbeat(n: u16, seq: u64) -> Heartbeat {
    // What a real drone sends: a 36-character boot id, the policy digest, certaintyd's root.
    Heartbeat {
        node: n,
        boot_id: "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0".into(),
        seq,
        serial: 12,
        digest: "d".repeat(64),
        integrity: Integrity::Verifying,
        stable_root: Some("e".repeat(64)),
        root_matches: Some(true),
        last_verification: Some("2026-12-05T12:00:00Z".into()),
        uptime_s: 12345,
        load1: 0.25,
        mem_available_kb: 1_234_567,
        memberships: BTreeMap::new(),
        challenge: None,
    }
}

/// Runs `rounds` heartbeats of an `n`-member cluster; returns the bytes node 1 sent per
/// second, the quarantines decided (must be none) and one quote message node 1 received.
fn run(n: u16, rounds: u64, attest: bool) -> (f64, usize, Option<(NodeId, Message)>) {
    let members: Vec<(NodeId, String)> = (1..=n).map(|i| (id(i), format!("d{i}"))).collect();
    let mut cores: BTreeMap<u16, Core> = (1..=n)
        .map(|i| {
            let mut c = Core::new(config(i, n, attest));
            c.policy_in_force(
                config(i, n, attest),
                12,
                "d",
                &members,
                Duration::ZERO,
                &mut OsRng,
            );
            (i, c)
        })
        .collect();
    let mut sent_by_1 = 0usize;
    let mut quarantines = 0;
    let mut sample = None;
    let mut clock = 1000u64;
    for r in 1..=rounds {
        let now = Duration::from_secs(r);
        for node in 1..=n {
            let out = cores
                .get_mut(&node)
                .unwrap()
                .tick(&heartbeat(node, r), now, &mut OsRng);
            let mut queue: VecDeque<(u16, Action)> = out.into_iter().map(|a| (node, a)).collect();
            while let Some((by, a)) = queue.pop_front() {
                match a {
                    Action::Send { to, msg } => {
                        if by == 1 {
                            sent_by_1 += msg.encode().len();
                        }
                        if to.get() == 1
                            && matches!(msg, Message::Quote(_))
                            && sample.is_none()
                            && r > 4
                        {
                            sample = Some((id(by), msg.clone()));
                        }
                        let out = cores.get_mut(&to.get()).unwrap().receive(id(by), msg, now);
                        queue.extend(out.into_iter().map(|a| (to.get(), a)));
                    }
                    Action::Quote { nonce } => {
                        clock += 1;
                        let mut f = Fields::quote(&nonce, &IMAGE, &[0; 32]);
                        f.clock = clock;
                        let q = forge::sign(&key_of(by), forge::attest_bytes(&f).unwrap());
                        let out = cores.get_mut(&by).unwrap().quote_done(Some(q));
                        queue.extend(out.into_iter().map(|a| (by, a)));
                    }
                    Action::Quarantine { .. } => quarantines += 1,
                    _ => {}
                }
            }
        }
    }
    (sent_by_1 as f64 / rounds as f64, quarantines, sample)
}

fn main() {
    let n: u16 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(50);
    let rounds = 20;
    let (plain, q0, _) = run(n, rounds, false);
    let (with, q1, sample) = run(n, rounds, true);
    assert_eq!((q0, q1), (0, 0), "quarantines in an honest cluster");
    println!("members                                   {n}");
    println!("bytes/s one member sends, no attestation  {plain:.0}");
    println!("bytes/s with challenges and quotes        {with:.0}");
    println!(
        "ratio (target under 2x)                   {:.2}x",
        with / plain
    );
    let Some((from, Message::Quote(m))) = sample else {
        panic!("no quote reached node 1")
    };
    println!(
        "one quote message                         {} bytes",
        Message::Quote(m.clone()).encode().len()
    );

    // The check one peer makes: the whole Core path for a quote message (verify, proof),
    // against an ed25519 check of a message of the same size in the same run.
    let quote = attest::Quote {
        attest: m.quote.attest.clone(),
        signature: m.quote.sig,
    };
    let key = AttestationKey::from(*key_of(from.get()).verifying_key());
    let p = &m.quote.proof;
    let inc = attest::Inclusion {
        seq: p.seq,
        index: usize::from(p.index),
        leaves: usize::from(p.leaves),
        proof: p.path.clone(),
    };
    let iterations = 2000;
    let t = Instant::now();
    for _ in 0..iterations {
        // The root from the proof (with some challenge: the cost is the same), the nonce,
        // then the quote's check (refused as Nonce here: the signature is checked first, so
        // the cost is that of a valid quote's check).
        let root = std::hint::black_box(attest::root_of(&inc, 1, &[0; 16]).unwrap());
        let nonce = attest::qualifying_data("lab", m.node, &m.boot_id, &root);
        let _ = std::hint::black_box(attest::verify_quote(&key, &quote, &nonce, &[IMAGE]));
    }
    let per_quote = t.elapsed() / iterations;
    let ed = ed25519_dalek::SigningKey::from_bytes(&[9; 32]);
    let msg = vec![0x5au8; quote.attest.len()];
    let sig = ed25519_dalek::Signer::sign(&ed, &msg);
    let vk = ed.verifying_key();
    let t = Instant::now();
    for _ in 0..iterations {
        let _ = std::hint::black_box(vk.verify_strict(&msg, &sig).is_ok());
    }
    let per_ed = t.elapsed() / iterations;
    println!(
        "quote check per peer (verify + proof)     {:.1} us (target under 1000 us)",
        per_quote.as_secs_f64() * 1e6
    );
    println!(
        "reference: ed25519 check, same size       {:.1} us",
        per_ed.as_secs_f64() * 1e6
    );
    println!(
        "ratio                                     {:.2}x",
        per_quote.as_secs_f64() / per_ed.as_secs_f64()
    );
}
