//! The systemd units spell the default paths of `proto::paths`: a daemon started by its unit
//! reads and writes where the other processes look.

use std::collections::BTreeMap;

use proto::paths;

/// `--flag value` pairs of a unit's `ExecStart=` (values from the environment skipped).
fn exec_flags(unit: &str) -> BTreeMap<String, String> {
    let path = format!("{}/../packaging/systemd/{unit}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .unwrap_or_else(|| panic!("{unit}: no ExecStart"));
    let words: Vec<&str> = line.split_whitespace().collect();
    words
        .windows(2)
        .filter(|w| w[0].starts_with("--") && !w[1].starts_with("--") && !w[1].starts_with('$'))
        .map(|w| (w[0].to_string(), w[1].to_string()))
        .collect()
}

#[test]
fn every_unit_passes_the_default_paths() {
    let common = [("--policy", paths::POLICY), ("--trust", paths::TRUST)];
    let units: [(&str, &[(&str, &str)]); 4] = [
        (
            "netguard.service",
            &[
                ("--key", paths::NODE_KEY),
                ("--state", paths::NETGUARD_STATE),
                ("--quarantine", paths::QUARANTINE),
            ],
        ),
        (
            "clusterd.service",
            &[
                ("--key", paths::NODE_KEY),
                ("--state", paths::CLUSTERD_STATE),
                ("--quarantine", paths::QUARANTINE),
                ("--view", paths::VIEW),
            ],
        ),
        (
            "joind.service",
            &[
                ("--key", paths::NODE_KEY),
                ("--state", paths::JOIND_STATE),
                ("--tokens", paths::TOKENS),
                ("--view", paths::VIEW),
            ],
        ),
        (
            "certaintyd.service",
            &[("--state", paths::CERTAINTYD_STATE)],
        ),
    ];
    for (unit, own) in units {
        let flags = exec_flags(unit);
        for (flag, want) in common.iter().chain(own.iter()) {
            assert_eq!(
                flags.get(*flag).map(String::as_str),
                Some(*want),
                "{unit}: {flag}"
            );
        }
    }
    let clusterd = std::fs::read_to_string(format!(
        "{}/../packaging/systemd/clusterd.service",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap();
    assert!(
        clusterd.contains(&format!("CERTAINTY_SOCKET={}", paths::CERTAINTY_SOCKET)),
        "clusterd.service: the certaintyd socket"
    );
}
