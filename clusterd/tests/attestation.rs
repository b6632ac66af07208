//! Issue 29 for real, as root: three members in network namespaces, each with its own
//! software TPM (swtpm) that its clusterd quotes with, the policy pinning each member's
//! attestation key and the image (swtpm's PCR 4: no firmware measured anything, so zeros).
//! Each peer decides alone from the quotes it receives; nothing else is asked.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod lab;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use attest::tpm::Tpm;
use lab::{Lab, root_or_skip, wait_for};
use testsupport::Swtpm;

/// Points member `i`'s TPM link (what its clusterd's `--tpm` names) at `socket`.
fn link(dir: &Path, socket: &Path) {
    let l = dir.join("tpm");
    let tmp = dir.join("tpm.tmp");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(socket, &tmp).unwrap();
    std::fs::rename(&tmp, &l).unwrap();
}

fn reason_on(lab: &Lab, by: usize, of: u16) -> Option<String> {
    let v: serde_json::Value =
        serde_json::from_str(&lab.file(by, "quarantine.json")).unwrap_or_default();
    v["nodes"]
        .as_array()?
        .iter()
        .find_map(|n| (n["id"].as_u64() == Some(u64::from(of))).then(|| n["reason"].to_string()))
}

/// Waits until both other members quarantine node 3 with a reason containing `why`; returns
/// how long it took.
fn until_quarantined(lab: &Lab, why: &str) -> Duration {
    wait_for(
        &format!("d1 and d2 to quarantine d3 ({why})"),
        Duration::from_secs(30),
        || {
            [0, 1]
                .iter()
                .all(|&by| reason_on(lab, by, 3).is_some_and(|r| r.contains(why)))
        },
    )
}

fn until_readmitted(lab: &Lab) -> Duration {
    wait_for("d1 and d2 to readmit d3", Duration::from_secs(30), || {
        [0, 1].iter().all(|&by| reason_on(lab, by, 3).is_none())
    })
}

/// The lab story with TPMs, each step timed and printed. Steps: three members, each
/// clusterd quoting with its own swtpm, keys pinned: all attested (nobody quarantined, and
/// each clusterd logs no refusal). Then d3's TPM is swapped for another state (another key):
/// both peers quarantine it ("signature"). Its own TPM back: readmitted. Its ratchet PCR is
/// extended (what certaintyd does at a violation): both peers quarantine it until a reboot
/// ("ratchet_set"). d3 reboots (its TPM restarts, PCRs reset, and its boot id changes):
/// readmitted, "attested by its TPM quote". Its TPM stops answering: quarantined after the
/// bound ("no_fresh_quote").
#[test]
fn three_members_attest_each_other_with_swtpm_and_each_failure_is_quarantined_by_both_peers() {
    if !root_or_skip("three_members_attest_each_other_with_swtpm")
        || !testsupport::tools_or_skip("three_members_attest_each_other_with_swtpm", &["swtpm"])
    {
        return;
    }
    let mut lab = Lab::new(3);
    let mut tpms: Vec<Swtpm> = Vec::new();
    for i in 0..3 {
        let dir = lab.members[i].dir.clone();
        let t = Swtpm::start(&dir.join("tpm-state"));
        let mut tpm = Tpm::open(&t.socket, Duration::from_secs(5)).unwrap();
        lab.members[i].attestation_key = Some(tpm.attestation_key().unwrap().to_string());
        link(&dir, &t.socket);
        lab.members[i].tpm = Some(dir.join("tpm"));
        tpms.push(t);
    }
    lab.extra_policy = format!(
        "\n[attestation]\nrequire = [\"drone\"]\nimages = [\"{}\"]\ninterval = \"1s\"\nwithin = \"4s\"\n",
        "00".repeat(32)
    );
    lab.publish_on(2, &[0, 1, 2]);
    for i in 0..3 {
        lab.start(i);
    }
    // All attested: every node hears its peers and nobody is quarantined for 6 s (more than
    // the bound: an unattested node would be out by then).
    lab.wait_all_healthy(Duration::from_secs(30));
    std::thread::sleep(Duration::from_secs(6));
    for i in 0..3 {
        assert!(
            lab.quarantined_on(i).is_empty(),
            "d{} quarantines {:?}",
            i + 1,
            lab.quarantined_on(i)
        );
        assert!(!lab.file(i, "clusterd.log").contains("quote refused"));
    }
    eprintln!("all three attested by both peers; no refusal");

    // A swapped TPM state: another key.
    let d3 = lab.members[2].dir.clone();
    let other = Swtpm::start(&d3.join("other-state"));
    link(&d3, &other.socket);
    let t = until_quarantined(&lab, "signature");
    eprintln!(
        "swapped TPM (another key) quarantined by both peers after {} ms",
        t.as_millis()
    );
    link(&d3, &tpms[2].socket);
    let t = until_readmitted(&lab);
    eprintln!(
        "its own TPM back: readmitted by both after {} ms",
        t.as_millis()
    );
    drop(other);

    // The ratchet (certaintyd extends it at a violation).
    let started = Instant::now();
    Tpm::open(&tpms[2].socket, Duration::from_secs(5))
        .unwrap()
        .extend_ratchet()
        .unwrap();
    until_quarantined(&lab, "ratchet_set");
    eprintln!(
        "ratchet set: quarantined by both peers after {} ms",
        started.elapsed().as_millis()
    );
    // Still out while it keeps quoting in this boot.
    std::thread::sleep(Duration::from_secs(3));
    assert!(reason_on(&lab, 0, 3).is_some_and(|r| r.contains("ratchet_set")));

    // A reboot: the TPM restarts (PCRs reset), and the boot id changes.
    let state = d3.join("tpm-state");
    let old = tpms.pop().unwrap();
    old.stop();
    let restarted = Swtpm::start(&state);
    link(&d3, &restarted.socket);
    std::fs::write(d3.join("boot_id"), "boot-3-b\n").unwrap();
    let t = until_readmitted(&lab);
    eprintln!(
        "reboot into the pinned image: readmitted by both after {} ms",
        t.as_millis()
    );
    for by in [0, 1] {
        assert!(
            lab.file(by, "clusterd.log")
                .contains("attested by its TPM quote"),
            "{}",
            lab.file(by, "clusterd.log")
        );
    }

    // The TPM stops answering.
    let stopped = Instant::now();
    restarted.stop();
    until_quarantined(&lab, "no_fresh_quote");
    eprintln!(
        "TPM gone: quarantined by both peers after {} ms (bound 4 s)",
        stopped.elapsed().as_millis()
    );
    let _: Vec<PathBuf> = Vec::new();
}
