//! Times verifying a signed policy of N nodes (default 1000), and its parts: the signature, the
//! TOML parse into the model, validation. `cargo run --release -p policy --example parse_time
//! [N]`; scripts/bench-netguard.sh measures the same inside netguard's pass.

use std::time::{Duration, Instant};

fn main() {
    let n: u16 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(1000);
    let now = jiff::Timestamp::now();
    let expires = now + jiff::SignedDuration::from_hours(24);
    let mut text = policy::template::init_template("bench", expires).replace(
        "tunnel_ipv4 = \"10.77.0.0/24\"",
        "tunnel_ipv4 = \"10.64.0.0/10\"",
    );
    for i in 1..=n {
        let key = policy::WgPublicKey::from_bytes(*blake3::hash(&i.to_le_bytes()).as_bytes());
        text.push_str(&format!(
            "\n[[node]]\nid = {i}\nname = \"node{i}\"\npublic_key = \"{key}\"\nendpoint = \"198.18.{}.{}:51820\"\naddresses = [\"10.64.{}.{}\"]\nroles = [\"drone\"]\n",
            i / 250,
            i % 250 + 1,
            i / 250,
            i % 250 + 1
        ));
    }
    let blocks_start = text.find("\n[[node]]").unwrap_or(text.len());
    let node_blocks = text[blocks_start..].to_string();
    let operator = ed25519_dalek::SigningKey::from_bytes(&[7; 32]);
    let sig = policy::sign(text.as_bytes(), &operator);
    let trust = policy::TrustedKeys::new(vec![policy::OperatorPublicKey::from(&operator)]);
    let best = |f: &dyn Fn()| {
        (0..20)
            .map(|_| {
                let t = Instant::now();
                f();
                t.elapsed()
            })
            .min()
            .unwrap_or(Duration::ZERO)
    };
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let whole = best(&|| {
        policy::verify_policy("cluster.toml", text.as_bytes(), sig.as_bytes(), &trust, now)
            .map(|_| ())
            .unwrap_or_else(|e| panic!("{e}"));
    });
    let parse = best(&|| {
        policy::parse_policy("cluster.toml", text.as_bytes(), now)
            .map(|_| ())
            .unwrap_or_else(|e| panic!("{e}"));
    });
    let toml_only = best(&|| {
        let _: policy::Policy = toml::from_str(&text).unwrap_or_else(|e| panic!("{e}"));
    });
    // A daemon's case: the last policy's blocks kept, the serial raised and one node's
    // address changed (the last node's).
    let last = format!("\"10.64.{}.{}\"]", n / 250, n % 250 + 1);
    let changed =
        text.replacen(&last, "\"10.64.255.254\"]", 1)
            .replacen("serial = 1\n", "serial = 2\n", 1);
    // And a node appended after a blank line, as `tyd node add` writes it.
    let extra = policy::WgPublicKey::from_bytes(*blake3::hash(b"extra").as_bytes());
    let added = format!(
        "{}\n[[node]]\nid = 65000\nname = \"extra\"\npublic_key = \"{extra}\"\nendpoint = \"198.19.0.1:51820\"\naddresses = [\"10.65.0.1\"]\nroles = [\"drone\"]\n",
        text.replacen("serial = 1\n", "serial = 2\n", 1)
    );
    assert_ne!(changed, text, "the last node's address is in the text");
    let split = |kept: &policy::NodeBlocks| {
        let (p, _) = kept.parse(&changed).unwrap_or_else(|| panic!("no split"));
        assert_eq!(p.nodes.len(), usize::from(n));
    };
    let mut kept = policy::NodeBlocks::default();
    policy::parse_policy_reusing("cluster.toml", text.as_bytes(), now, &mut kept)
        .unwrap_or_else(|e| panic!("{e}"));
    let cold = best(&|| split(&policy::NodeBlocks::default()));
    let warm = best(&|| split(&kept));
    // Best of 20: the last policy's blocks kept, then `new` verified as a daemon verifies it.
    let reusing = |new: &str| {
        let sig = policy::sign(new.as_bytes(), &operator);
        (0..20)
            .map(|_| {
                let mut k = policy::NodeBlocks::default();
                policy::parse_policy_reusing("cluster.toml", text.as_bytes(), now, &mut k)
                    .unwrap_or_else(|e| panic!("{e}"));
                let t = Instant::now();
                policy::verify_policy_reusing(
                    "cluster.toml",
                    new.as_bytes(),
                    sig.as_bytes(),
                    &trust,
                    now,
                    &mut k,
                )
                .unwrap_or_else(|e| panic!("{e}"));
                t.elapsed()
            })
            .min()
            .unwrap_or(Duration::ZERO)
    };
    let (reusing, reusing_added) = (reusing(&changed), reusing(&added));
    println!(
        "{n} nodes, {} KiB: verify_policy {:.2} ms (parse_policy {:.2} ms, of which toml into the model {:.2} ms)",
        text.len() / 1024,
        ms(whole),
        ms(parse),
        ms(toml_only)
    );
    println!(
        "{n} nodes, one node changed: verify_policy_reusing {:.2} ms = {:.2}x verify_policy (toml by blocks: {:.2} ms with the last policy's blocks kept, {:.2} ms with none)",
        ms(reusing),
        ms(reusing) / ms(whole),
        ms(warm),
        ms(cold)
    );
    println!(
        "{n} nodes, one node added after a blank line: verify_policy_reusing {:.2} ms",
        ms(reusing_added)
    );
    let (both, alone) = with_membership(n, &node_blocks, &operator, now);
    println!(
        "{n} nodes admitted by a master (issue 28): policy {:.2} ms + its membership {:.2} ms = {:.2}x verify_policy of the {n} nodes in the policy (target: within 1.5x)",
        ms(alone),
        ms(both - alone),
        ms(both) / ms(whole)
    );
}

/// The same `n` nodes in master 65001's membership, signed with its admission key, beside a
/// policy that lists only that master: the best of 20 of verifying both (the policy, then the
/// membership under it), and of the policy alone.
fn with_membership(
    n: u16,
    node_blocks: &str,
    operator: &ed25519_dalek::SigningKey,
    now: jiff::Timestamp,
) -> (Duration, Duration) {
    let admission = ed25519_dalek::SigningKey::from_bytes(&[9; 32]);
    let master = policy::WgPublicKey::from_bytes(*blake3::hash(b"master").as_bytes());
    let expires = now + jiff::SignedDuration::from_hours(24);
    let mut text = policy::template::init_template("bench", expires).replace(
        "tunnel_ipv4 = \"10.77.0.0/24\"",
        "tunnel_ipv4 = \"10.64.0.0/10\"",
    );
    text.push_str(&format!(
        "\n[[admission]]\nmaster = 65001\nkey = \"{}\"\nroles = [\"drone\"]\nids = \"1-{n}\"\naddresses = [\"10.64.0.0/11\"]\nmax_nodes = {n}\nexpires = \"{expires}\"\n",
        policy::OperatorPublicKey::from(&admission)
    ));
    text.push_str(&format!(
        "\n[[node]]\nid = 65001\nname = \"master\"\npublic_key = \"{master}\"\naddresses = [\"10.127.0.1\"]\nroles = [\"master\"]\n"
    ));
    let sig = policy::sign(text.as_bytes(), operator);
    let trust = policy::TrustedKeys::new(vec![policy::OperatorPublicKey::from(operator)]);
    let doc =
        format!("[membership]\ncluster = \"bench\"\nmaster = 65001\nserial = 1\n{node_blocks}");
    let doc_sig = policy::sign(doc.as_bytes(), &admission);
    let master_id = policy::NodeId::new(65001).unwrap_or(policy::NodeId::MIN);
    let run = |with: bool| {
        (0..20)
            .map(|_| {
                let t = Instant::now();
                let p = policy::verify_policy(
                    "cluster.toml",
                    text.as_bytes(),
                    sig.as_bytes(),
                    &trust,
                    now,
                )
                .unwrap_or_else(|e| panic!("{e}"));
                if with {
                    let m = policy::membership::verify_membership(
                        "membership-65001.toml",
                        master_id,
                        doc.as_bytes(),
                        doc_sig.as_bytes(),
                        &p,
                        now,
                    )
                    .unwrap_or_else(|e| panic!("{e}"));
                    assert_eq!(m.nodes.len(), usize::from(n));
                }
                t.elapsed()
            })
            .min()
            .unwrap_or(Duration::ZERO)
    };
    (run(true), run(false))
}
