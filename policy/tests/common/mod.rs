//! Shared fixtures: a valid three-node policy and helpers to break it one way at a time.
#![allow(clippy::unwrap_used, clippy::expect_used)]
#![allow(dead_code)]

use base64::Engine as _;
use ed25519_dalek::SigningKey;
use jiff::Timestamp;

pub fn now() -> Timestamp {
    "2026-06-01T00:00:00Z".parse().unwrap()
}

pub fn wg_key(n: u8) -> String {
    base64::engine::general_purpose::STANDARD.encode([n; 32])
}

pub fn operator(n: u8) -> SigningKey {
    SigningKey::from_bytes(&[n; 32])
}

pub fn valid_policy() -> String {
    format!(
        r#"[cluster]
name = "lab"
serial = 7
expires = "2027-01-01T00:00:00Z"
tunnel_ipv4 = "10.77.0.0/24"
tunnel_ipv6 = "fd77::/64"

[services.openmosix]
tcp = [723, 4660]
udp = ["5000-5700"]

[firewall.allow.ssh]
tcp = [22]

[[node]]
id = 1
name = "master"
public_key = "{k1}"
endpoint = "192.168.50.1:51820"
addresses = ["10.77.0.1", "fd77::1"]
roles = ["master"]

[[node]]
id = 2
name = "drone2"
public_key = "{k2}"
endpoint = "192.168.50.2:51820"
addresses = ["10.77.0.2"]

[[node]]
id = 3
name = "drone3"
public_key = "{k3}"
endpoint = "192.168.50.3:51820"
addresses = ["10.77.0.3"]
"#,
        k1 = wg_key(1),
        k2 = wg_key(2),
        k3 = wg_key(3)
    )
}

/// The valid policy with the first occurrence of `from` replaced by `to`.
pub fn with(from: &str, to: &str) -> String {
    let text = valid_policy();
    assert!(text.contains(from), "fixture has no {from:?}");
    text.replacen(from, to, 1)
}

/// The single diagnostic line for `text`, or a panic if it is valid or has several.
pub fn only_error(text: &str) -> String {
    match policy::parse_policy("cluster.toml", text.as_bytes(), now()) {
        Ok(_) => panic!("policy unexpectedly valid:\n{text}"),
        Err(e) => {
            assert_eq!(e.0.len(), 1, "expected one error, got: {e}");
            e.to_string()
        }
    }
}
