//! Every validation error, with its exact one-line message and position.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use common::*;

#[test]
fn valid_fixture_parses() {
    let p = policy::parse_policy("cluster.toml", valid_policy().as_bytes(), now()).unwrap();
    assert_eq!(p.nodes.len(), 3);
    assert_eq!(p.cluster.interface, "tyd0");
    assert_eq!(p.cluster.listen_port, 51820);
    assert_eq!(p.certainty.interval, std::time::Duration::from_secs(2));
    assert_eq!(p.services["openmosix"].udp[0].to_string(), "5000-5700");
}

#[test]
fn unknown_key_is_rejected_with_its_position() {
    let text = with("name = \"lab\"", "name = \"lab\"\nlisten_prot = 1");
    assert_eq!(
        only_error(&text),
        "cluster.toml:3:1: cluster.listen_prot: unknown field `listen_prot`, expected one of \
         `name`, `serial`, `expires`, `interface`, `listen_port`, `tunnel_ipv4`, `tunnel_ipv6`, \
         `allow_roaming`, `persistent_keepalive`, `parents`"
    );
}

#[test]
fn unknown_key_in_node_is_rejected() {
    let text = with(
        "roles = [\"master\"]",
        "roles = [\"master\"]\npubkey = \"x\"",
    );
    let err = only_error(&text);
    assert!(
        err.starts_with("cluster.toml:22:1: node[0].pubkey: unknown field `pubkey`"),
        "{err}"
    );
}

#[test]
fn syntax_error_names_line_and_column() {
    let err = only_error(&with("serial = 7", "serial = = 7"));
    assert!(err.starts_with("cluster.toml:3:10: "), "{err}");
}

#[test]
fn serial_zero() {
    assert_eq!(
        only_error(&with("serial = 7", "serial = 0")),
        "cluster.toml:3:10: cluster.serial: serial must be greater than 0"
    );
}

#[test]
fn expired_policy() {
    assert_eq!(
        only_error(&with("2027-01-01T00:00:00Z", "2026-01-01T00:00:00Z")),
        "cluster.toml:4:11: cluster.expires: policy expired at 2026-01-01T00:00:00Z"
    );
}

#[test]
fn expiry_without_offset() {
    let err = only_error(&with("\"2027-01-01T00:00:00Z\"", "2027-01-01T00:00:00"));
    assert_eq!(
        err,
        "cluster.toml:4:11: cluster.expires: \"2027-01-01T00:00:00\" is not an RFC 3339 \
         instant with a UTC offset"
    );
}

#[test]
fn native_toml_datetime_is_accepted() {
    let text = with("\"2027-01-01T00:00:00Z\"", "2027-01-01T00:00:00Z");
    policy::parse_policy("c", text.as_bytes(), now()).unwrap();
}

/// Regression (issue 9 item 3): one expired node made the whole policy invalid.
/// 1. The operator gives one node `expires = now+40s`.
/// 2. After that instant every member refused the whole file (an ERROR every 5 s) and kept
///    the last accepted policy, expired node included, in force; a restarted member fell back
///    to the protective ruleset.
///
/// Now the policy stays valid; the expired node only leaves the effective node map.
#[test]
fn an_expired_node_leaves_the_node_map_and_the_policy_stays_valid() {
    let text = with(
        "roles = [\"master\"]",
        "roles = [\"master\"]\nexpires = \"2026-05-01T00:00:00Z\"",
    );
    let p = policy::parse_policy("cluster.toml", text.as_bytes(), now()).unwrap();
    let live: Vec<u16> = p.live_nodes(now()).map(|n| n.id.get()).collect();
    assert!(!live.contains(&1), "{live:?}");
    assert_eq!(live.len(), p.nodes.len() - 1);
    // Before its instant the node is live, and that instant is the next one to act on.
    let before: jiff::Timestamp = "2026-04-30T00:00:00Z".parse().unwrap();
    assert!(p.live_nodes(before).any(|n| n.id.get() == 1));
    assert_eq!(
        p.next_expiry(before),
        Some("2026-05-01T00:00:00Z".parse().unwrap())
    );
    assert_eq!(p.next_expiry(now()), Some(p.cluster.expires));
}

#[test]
fn duplicate_id() {
    assert_eq!(
        only_error(&with("id = 3", "id = 2")),
        "cluster.toml:31:6: node[2].id: duplicate node id 2 (also used by node[1])"
    );
}

#[test]
fn duplicate_name() {
    assert_eq!(
        only_error(&with("name = \"drone3\"", "name = \"drone2\"")),
        "cluster.toml:32:8: node[2].name: duplicate node name drone2 (also used by node[1])"
    );
}

#[test]
fn duplicate_key() {
    let text = with(&wg_key(3), &wg_key(1));
    let err = only_error(&text);
    assert_eq!(
        err,
        format!(
            "cluster.toml:33:14: node[2].public_key: duplicate public key {} (also used by node[0])",
            wg_key(1)
        )
    );
}

#[test]
fn duplicate_endpoint() {
    assert_eq!(
        only_error(&with("192.168.50.3:51820", "192.168.50.2:51820")),
        "cluster.toml:34:12: node[2].endpoint: duplicate endpoint 192.168.50.2:51820 (also used by node[1])"
    );
}

#[test]
fn duplicate_tunnel_address() {
    assert_eq!(
        only_error(&with("[\"10.77.0.3\"]", "[\"10.77.0.2\"]")),
        "cluster.toml:35:14: node[2].addresses[0]: duplicate tunnel address 10.77.0.2 (also used by node[1])"
    );
}

#[test]
fn address_outside_cidr() {
    assert_eq!(
        only_error(&with("[\"10.77.0.3\"]", "[\"10.78.0.3\"]")),
        "cluster.toml:35:14: node[2].addresses[0]: address 10.78.0.3 is outside the tunnel network 10.77.0.0/24"
    );
}

#[test]
fn ipv6_address_outside_cidr() {
    assert_eq!(
        only_error(&with("\"fd77::1\"", "\"fd78::1\"")),
        "cluster.toml:20:27: node[0].addresses[1]: address fd78::1 is outside the tunnel network fd77::/64"
    );
}

#[test]
fn bad_key() {
    assert_eq!(
        only_error(&with(&wg_key(2), "not-base64!")),
        "cluster.toml:26:14: node[1].public_key: key is not valid base64"
    );
    let short = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, [9u8; 31]);
    assert_eq!(
        only_error(&with(&wg_key(2), &short)),
        "cluster.toml:26:14: node[1].public_key: key must be 32 bytes, got 31"
    );
}

#[test]
fn reversed_port_range() {
    assert_eq!(
        only_error(&with("\"5000-5700\"", "\"5700-5000\"")),
        "cluster.toml:10:8: services.openmosix.udp[0]: reversed port range 5700-5000"
    );
}

/// A port open to the LAN that is also a service port (a typo, or "opening" openMosix) is
/// refused: netguard lets replies from allow-listed ports leave to any port, so the service's
/// traffic could leave beside the tunnel. Neighbouring ranges are fine.
#[test]
fn an_allow_entry_overlapping_a_service_is_refused() {
    let text = with(
        "[firewall.allow.ssh]\ntcp = [22]",
        "[firewall.allow.ssh]\ntcp = [22]\nudp = [\"4990-5000\"]",
    );
    assert_eq!(
        only_error(&text),
        "cluster.toml:14:7: firewall.allow.ssh.udp: udp 4990-5000 overlaps service \"openmosix\"'s 5000-5700: a service port is open to members through the tunnels only, never to the LAN"
    );
    let text = with(
        "[firewall.allow.ssh]\ntcp = [22]",
        "[firewall.allow.ssh]\ntcp = [22, 724]\nudp = [\"4990-4999\", 5701]",
    );
    policy::parse_policy("cluster.toml", text.as_bytes(), now()).unwrap();
    let text = with("tcp = [22]", "tcp = [22, 4660]");
    assert!(only_error(&text).contains("tcp 4660 overlaps service"));
}

#[test]
fn zero_port() {
    assert_eq!(
        only_error(&with("tcp = [723, 4660]", "tcp = [0, 4660]")),
        "cluster.toml:9:8: services.openmosix.tcp[0]: port 0 is not a valid port"
    );
}

#[test]
fn node_id_out_of_range() {
    assert_eq!(
        only_error(&with("id = 3", "id = 70000")),
        "cluster.toml:31:6: node[2].id: node id 70000 is outside 1-65535 (openMosix)"
    );
    assert_eq!(
        only_error(&with("id = 3", "id = 0")),
        "cluster.toml:31:6: node[2].id: node id 0 is outside 1-65535 (openMosix)"
    );
}

#[test]
fn node_without_address() {
    assert_eq!(
        only_error(&with("[\"10.77.0.3\"]", "[]")),
        "cluster.toml:35:13: node[2].addresses: node 3 (drone3) has no tunnel address"
    );
}

#[test]
fn exec_action_needs_hook() {
    let text = valid_policy() + "\n[certainty]\naction = \"exec\"\n";
    let err = only_error(&text);
    assert!(
        err.ends_with("certainty.action: action \"exec\" needs an exec hook path"),
        "{err}"
    );
}

#[test]
fn several_errors_are_all_reported_in_file_order() {
    let text = with("serial = 7", "serial = 0").replacen("id = 3", "id = 2", 1);
    let err = policy::parse_policy("c.toml", text.as_bytes(), now()).unwrap_err();
    let lines: Vec<String> = err.0.iter().map(ToString::to_string).collect();
    assert_eq!(lines.len(), 2);
    assert!(lines[0].starts_with("c.toml:3:"));
    assert!(lines[1].starts_with("c.toml:31:"));
}

#[test]
fn empty_and_non_utf8_and_truncated() {
    assert_eq!(only_error(""), "cluster.toml:1:1: policy is empty");
    let mut bytes = valid_policy().into_bytes();
    bytes.insert(10, 0xff);
    let err = policy::parse_policy("cluster.toml", &bytes, now()).unwrap_err();
    assert_eq!(
        err.to_string(),
        "cluster.toml:2:1: policy is not valid UTF-8"
    );
    let text = valid_policy();
    let truncated = &text[..text.find("[[node]]").unwrap() + 4];
    let err = only_error(truncated);
    assert!(err.starts_with("cluster.toml:"), "{err}");
}

#[test]
fn init_template_is_valid_and_has_openmosix_defaults() {
    let text = policy::template::init_template("lab", "2027-01-01T00:00:00Z".parse().unwrap());
    let p = policy::parse_policy("init", text.as_bytes(), now()).unwrap();
    let om = &p.services["openmosix"];
    let tcp: Vec<String> = om.tcp.iter().map(ToString::to_string).collect();
    assert_eq!(tcp, ["723", "4660"]);
    assert_eq!(om.udp[0].to_string(), "5000-5700");
    assert_eq!(p.firewall.default, policy::Posture::Drop);
    assert!(p.firewall.allow.contains_key("ssh"));
    assert!(p.nodes.is_empty());
}

#[test]
fn content_every_zero() {
    let text = valid_policy() + "\n[certainty]\ncontent_every = 0\n";
    let err = only_error(&text);
    assert!(
        err.ends_with("certainty.content_every: content_every must be at least 1"),
        "{err}"
    );
}

#[test]
fn hardening_defaults_to_the_recommended_sysctls_and_a_module_lock() {
    let p = policy::parse_policy("cluster.toml", valid_policy().as_bytes(), now()).unwrap();
    assert!(p.hardening.lock_modules);
    assert_eq!(p.hardening.lockdown, policy::Lockdown::Integrity);
    let s = p.hardening.sysctls();
    assert_eq!(s.len(), policy::RECOMMENDED_SYSCTLS.len());
    assert_eq!(s["net.ipv4.conf.all.rp_filter"], "1");
    assert_eq!(s["kernel.yama.ptrace_scope"], "3");
}

#[test]
fn hardening_sysctls_add_to_and_override_the_recommended_ones() {
    let text = format!(
        "{}\n[hardening]\nsysctl = {{ \"kernel.yama.ptrace_scope\" = \"2\", \"vm.swappiness\" = \"0\" }}\n",
        valid_policy()
    );
    let p = policy::parse_policy("cluster.toml", text.as_bytes(), now()).unwrap();
    let s = p.hardening.sysctls();
    assert_eq!(s["kernel.yama.ptrace_scope"], "2");
    assert_eq!(s["vm.swappiness"], "0");
    assert_eq!(s.len(), policy::RECOMMENDED_SYSCTLS.len() + 1);

    let text = format!(
        "{}\n[hardening]\nrecommended = false\nsysctl = {{ \"vm.swappiness\" = \"0\" }}\n",
        valid_policy()
    );
    let p = policy::parse_policy("cluster.toml", text.as_bytes(), now()).unwrap();
    assert_eq!(p.hardening.sysctls().len(), 1);
}

#[test]
fn hardening_refuses_names_that_leave_proc_sys_and_the_module_lock_as_a_sysctl() {
    let bad = |entry: &str| {
        let text = format!("{}\n[hardening]\nsysctl = {{ {entry} }}\n", valid_policy());
        only_error(&text)
    };
    let e = bad("\"kernel/../../etc\" = \"1\"");
    assert!(e.contains("hardening.sysctl.kernel/../../etc: "), "{e}");
    assert!(e.contains("is not a sysctl name"), "{e}");
    assert!(bad("\"kernel..x\" = \"1\"").contains("is not a sysctl name"));
    assert!(bad("\"kernel\" = \"1\"").contains("is not a sysctl name"));
    let e = bad("\"kernel.modules_disabled\" = \"1\"");
    assert!(e.contains("use hardening.lock_modules"), "{e}");
    let e = bad("\"kernel.sysrq\" = \"1\\n\"");
    assert!(e.contains("must be 1-256 printable characters"), "{e}");
    let e = bad("\"kernel.sysrq\" = \"\"");
    assert!(e.starts_with("cluster.toml:"), "{e}");
}

/// A committed edit names the policy it was made from (its serial and digest), newest first,
/// eight at most; a malformed or impossible parent is refused with its place.
#[test]
fn an_edit_names_its_parents_and_bad_ones_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cluster.toml");
    std::fs::write(&path, valid_policy()).unwrap();
    let mut digests = Vec::new();
    for _ in 0..10 {
        let bytes = std::fs::read(&path).unwrap();
        digests.push(blake3::hash(&bytes).to_hex().to_string());
        policy::edit::PolicyEdit::open(&path)
            .unwrap()
            .commit(now())
            .unwrap();
    }
    let p = policy::parse_policy("c", &std::fs::read(&path).unwrap(), now()).unwrap();
    assert_eq!(p.cluster.serial, 17);
    assert_eq!(p.cluster.parents.len(), policy::model::MAX_PARENTS);
    assert_eq!(p.cluster.parents[0].serial, 16);
    assert_eq!(&p.cluster.parents[0].digest, digests.last().unwrap());
    assert_eq!(p.cluster.parents[7].serial, 9);
    let bad = with("serial = 7", "serial = 7\nparents = [\"7:abc\"]");
    assert!(
        only_error(&bad).contains("cluster.parents"),
        "{}",
        only_error(&bad)
    );
}

/// `[attestation]` (issue 29): roles that must attest need a pinned image; the freshness
/// bound must leave room for a quote and a lost heartbeat; a PCR value and a node's key are
/// checked where they are written; one TPM cannot be two nodes.
#[test]
fn attestation_settings_are_checked_where_written() {
    let sk = p256::ecdsa::SigningKey::from_slice(&[3u8; 32]).unwrap();
    let key = policy::AttestationKey::from(*sk.verifying_key()).to_string();
    let section = |body: &str| with("[[node]]", &format!("[attestation]\n{body}\n\n[[node]]"));
    let err = only_error(&section("require = [\"server\"]"));
    assert!(err.ends_with("attestation.images: attestation.require names roles but no image is pinned: every such node would be quarantined (pin the PCR 4 value drone build --uki prints)"), "{err}");
    let pcr = "ab".repeat(32);
    let err = only_error(&section(&format!(
        "require = [\"server\"]\nimages = [\"{pcr}\"]\nwithin = \"2s\""
    )));
    assert!(err.ends_with("attestation.within: within must be at least one quote interval and two heartbeats (one lost datagram is not a failed quote)"), "{err}");
    let err = only_error(&section("images = [\"abcd\"]"));
    assert!(
        err.contains("\"abcd\" is not a SHA-256 PCR value (64 hex digits)"),
        "{err}"
    );
    let ok = section(&format!("require = [\"server\"]\nimages = [\"{pcr}\"]"));
    let p = policy::parse_policy("cluster.toml", ok.as_bytes(), now()).unwrap();
    assert_eq!(p.attestation.images, vec![[0xab; 32]]);
    let keyed = with(
        "roles = [\"master\"]",
        &format!("roles = [\"master\"]\nattestation_key = \"{key}\""),
    );
    let p = policy::parse_policy("cluster.toml", keyed.as_bytes(), now()).unwrap();
    assert_eq!(
        p.nodes[0].attestation_key.as_ref().map(|k| k.to_string()),
        Some(key.clone())
    );
    let err = only_error(&with(
        "roles = [\"master\"]",
        "roles = [\"master\"]\nattestation_key = \"AAAA\"",
    ));
    assert!(
        err.contains("attestation_key: attestation key is 3 bytes"),
        "{err}"
    );
}
