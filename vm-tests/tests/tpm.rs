//! The lab story with TPMs (issue 29): drones under qemu TCG with OVMF (UEFI, measured boot)
//! and a swtpm each, booted from the unified kernel image `drone build --uki` made, the
//! policy pinning its PCR 4 as `drone build` predicted it and each drone's attestation key.
//! Each peer checks each quote itself. Every time is printed.

use std::time::{Duration, Instant};

use vm_tests::cluster::{BOOT, CMD, CONSOLE_ARGS, Cluster, DRONES, Image, build_image_with};
use vm_tests::lab::Lab;
use vm_tests::tpm::{Swtpm, attestation_key};
use vm_tests::vm::{Boot, NicModel, OVMF_VARS, Spec, Uefi, Vm, eventually};
use vm_tests::{can_run, scratch};

fn check<T>(r: Result<T, String>) -> T {
    match r {
        Ok(v) => v,
        Err(e) => panic!("{e}"),
    }
}

/// Boots drone `i` from `image` (its UKI) with the TPM of `tpm` (a swtpm started for it).
fn boot(lab: &Lab, i: usize, image: &Image, tpm: &Swtpm, test: &str) -> Vm {
    let (name, lan, _) = DRONES[i];
    let dir = scratch().join(test);
    let vars = dir.join(format!("{name}-vars.fd"));
    check(std::fs::create_dir_all(&dir).map_err(|e| e.to_string()));
    check(std::fs::copy(OVMF_VARS, &vars).map_err(|e| format!("{OVMF_VARS}: {e}")));
    let (uki, _) = check(
        image
            .uki
            .clone()
            .ok_or_else(|| "the image has no UKI (drone build --uki)".to_string()),
    );
    let spec = Spec {
        name: name.to_string(),
        boot: Boot::Uki {
            image: uki,
            cmdline: format!(
                "{CONSOLE_ARGS} panic=-1 ip={lan}::::{name}:eth0:off certainty.expect={}",
                image.expected_root
            ),
        },
        nic: u8::try_from(11 + i).unwrap_or(99),
        model: NicModel::Virtio,
        uefi: Some(Uefi {
            vars,
            tpm: tpm.socket.clone(),
        }),
    };
    let mut vm = check(Vm::boot(lab, &spec, &dir));
    let t = check(vm.wait_console(&format!("drone: ready {name}"), BOOT));
    eprintln!("tpm: {name} (OVMF, UKI, swtpm) ready {t:?} after qemu started");
    vm
}

/// drone3 goes down and boots `image` with the TPM whose state is `state`. Its swtpm in
/// `tpm` is stopped first (two on one state would share it), and the peers' logs are marked
/// first, so what they say next is about this boot.
fn boot_drone3(
    lab: &Lab,
    vms: &mut Vec<Vm>,
    tpm: &mut Option<Swtpm>,
    state: &std::path::Path,
    image: &Image,
) {
    for vm in &mut vms[..2] {
        vm.mark();
    }
    drop(vms.pop());
    drop(tpm.take());
    let t = tpm.insert(Swtpm::for_qemu(state));
    vms.push(boot(lab, 2, image, t, "tpm"));
}

/// How many peers `vm`'s clusterd counts as attested, from its cluster view.
fn attested_peers(vm: &mut Vm) -> usize {
    let text = check(vm.sh_ok("cat /run/tyd/cluster-status.json", CMD));
    let start = text.find('{').unwrap_or(0);
    let v: serde_json::Value = serde_json::from_str(&text[start..]).unwrap_or_default();
    v["nodes"]
        .as_array()
        .map(|n| n.iter().filter(|n| n["attested"] == true).count())
        .unwrap_or(0)
}

/// Waits until both other drones log that they quarantined drone3 for `why`; returns the
/// time from now.
fn both_quarantine(vms: &mut [Vm], why: &str, within: Duration) -> Duration {
    let t = Instant::now();
    for vm in vms.iter_mut().take(2) {
        check(vm.wait_log(why, within));
    }
    t.elapsed()
}

/// The policy with attestation: drones must attest, these images are pinned, and each
/// drone's attestation key; signed with the next serial.
fn attestation_policy(c: &Cluster, images: &[String], keys: &[String]) -> (Vec<u8>, Vec<u8>) {
    let work = c.dir.join("attest-update");
    let _ = std::fs::remove_dir_all(&work);
    check(std::fs::create_dir_all(&work).map_err(|e| e.to_string()));
    let copy = work.join("cluster.toml");
    let mut text = check(std::fs::read_to_string(&c.policy).map_err(|e| e.to_string()));
    for ((name, _, _), key) in DRONES.iter().zip(keys) {
        let line = format!("name = \"{name}\"\n");
        assert!(text.contains(&line), "no {line:?} in the policy");
        text = text.replace(&line, &format!("{line}attestation_key = \"{key}\"\n"));
    }
    let quoted: Vec<String> = images.iter().map(|i| format!("\"{i}\"")).collect();
    text.push_str(&format!(
        "\n[attestation]\nrequire = [\"drone\"]\nimages = [{}]\ninterval = \"2s\"\nwithin = \"8s\"\n",
        quoted.join(", ")
    ));
    check(std::fs::write(&copy, text).map_err(|e| e.to_string()));
    let key = c.operator_key.display().to_string();
    let copy_s = copy.display().to_string();
    check(c.tyd(&["policy", "sign", &copy_s, "--key", &key, "--bump"]));
    let read = |p: &std::path::Path| std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()));
    (
        check(read(&copy)),
        check(read(&policy::signature_path(&copy))),
    )
}

/// The lab story. Steps (each time printed):
/// 1. Three drones boot their UKIs under OVMF, each with its own swtpm; the operator pushes
///    a policy pinning the three images (PCR 4 as `drone build --uki` predicted it) and the
///    three attestation keys to drone1 only: every drone soon counts both peers attested.
/// 2. drone3 boots an image one byte off (built with another mtime: its files, and so what
///    its certaintyd verifies, are the same; its heartbeats say "verifying"): both peers
///    quarantine it, "not attested: its quote shows an image that is not pinned".
/// 3. drone3 boots its own image with another TPM state (another key): both peers
///    quarantine it, "not signed by its pinned TPM key".
/// 4. drone3 with its own image and TPM: readmitted by both, "attested by its TPM quote".
/// 5. Tamper: a write under /bin; certaintyd extends the ratchet ("ratchet set in the
///    TPM"), then reboots; both peers quarantine it; back from the reboot it is readmitted
///    by both, attested.
/// 6. Its TPM stops answering (swtpm stopped): both peers quarantine it after the bound,
///    "no valid quote over this node's challenge in time".
///
/// A replayed old quote cannot be sent by an honest drone: it is refused in
/// `clusterd/src/core/attest_tests.rs` and in the namespace test with real quotes.
#[test]
fn drones_with_tpms_attest_each_other_and_each_failure_is_quarantined_by_both_peers() {
    if !can_run("tpm") {
        return;
    }
    for p in ["/usr/bin/swtpm", vm_tests::vm::OVMF_CODE, OVMF_VARS] {
        assert!(
            std::path::Path::new(p).exists(),
            "{p}: missing (scripts/install-deps.sh installs swtpm and ovmf)"
        );
    }
    let c = Cluster::get();
    let lab = check(Lab::new());
    let dir = scratch().join("tpm");
    let _ = std::fs::remove_dir_all(&dir);
    let mut images = Vec::new();
    for (name, _, _) in DRONES {
        let key = c.dir.join(format!("{name}.key"));
        images.push(check(build_image_with(
            &c.bin,
            &c.policy,
            Some(&key),
            &dir.join(format!("uki-{name}")),
            "cloud",
            &["--uki"],
        )));
    }
    let off = check(build_image_with(
        &c.bin,
        &c.policy,
        Some(&c.dir.join("drone3.key")),
        &dir.join("uki-drone3-off"),
        "cloud",
        &["--uki", "--mtime", "1"],
    ));
    let pcr = |i: &Image| i.uki.as_ref().map(|u| u.1.clone()).unwrap_or_default();
    assert_ne!(pcr(&off), pcr(&images[2]), "the variant has another PCR 4");
    let states: Vec<std::path::PathBuf> = DRONES
        .iter()
        .map(|(name, _, _)| dir.join(format!("tpm-{name}")))
        .collect();
    let keys: Vec<String> = states.iter().map(|s| check(attestation_key(s))).collect();
    let other_state = dir.join("tpm-other");
    let other_key = check(attestation_key(&other_state));
    assert_ne!(other_key, keys[2]);
    let pinned: Vec<String> = images.iter().map(pcr).collect();
    let (policy, sig) = attestation_policy(c, &pinned, &keys);

    // 1. Three drones, attested by each other.
    let mut tpms: Vec<Swtpm> = states.iter().map(|s| Swtpm::for_qemu(s)).collect();
    let mut vms: Vec<Vm> = (0..3)
        .map(|i| boot(&lab, i, &images[i], &tpms[i], "tpm"))
        .collect();
    let mut tpm3 = tpms.pop();
    for vm in &mut vms {
        vm.mark();
    }
    check(vms[0].put_file("/run/tyd/cluster.toml.sig", &sig));
    check(vms[0].put_file("/run/tyd/cluster.toml", &policy));
    let delivered = Instant::now();
    for vm in &mut vms {
        check(vm.wait_log("policy accepted", Duration::from_secs(60)));
    }
    let all = eventually(Duration::from_secs(60), Duration::from_secs(2), || {
        let counts: Vec<usize> = vms.iter_mut().map(attested_peers).collect();
        if counts.iter().all(|&n| n == 2) {
            Ok(())
        } else {
            Err(counts)
        }
    });
    if let Err(counts) = all {
        panic!("not every drone attests both peers: {counts:?}");
    }
    eprintln!(
        "tpm: all three attested by both peers {:?} after the policy was put on drone1",
        delivered.elapsed()
    );
    for vm in &vms {
        assert!(
            !vm.log_since_mark().contains("quarantined:"),
            "{}: quarantined someone",
            vm.name
        );
    }

    // 2. An image one byte off.
    boot_drone3(&lab, &mut vms, &mut tpm3, &states[2], &off);
    let t = both_quarantine(
        &mut vms,
        "not attested: its quote shows an image that is not pinned",
        Duration::from_secs(60),
    );
    eprintln!(
        "tpm: drone3 on an image one byte off quarantined by both peers {t:?} after it was ready ({:?} after qemu started)",
        vms[2].started.elapsed()
    );
    // Its certaintyd says "verifying" once its grace is over: only the quote tells, and it
    // stays out.
    let verifying = eventually(Duration::from_secs(60), Duration::from_secs(2), || {
        let (_, own) = check(vms[2].sh(
            "grep -o '\"integrity\": *\"[a-z ]*\"' /run/tyd/cluster-status.json | tail -n 1",
            CMD,
        ));
        if own.contains("verifying") {
            Ok(())
        } else {
            Err(own)
        }
    });
    if let Err(own) = verifying {
        panic!("drone3's certaintyd never said verifying: {own}");
    }
    for vm in &mut vms[..2] {
        let list = check(vm.sh_ok("cat /run/tyd/quarantine.json", CMD));
        assert!(list.contains("\"id\": 3"), "{}: {list}", vm.name);
    }
    eprintln!("tpm: drone3's heartbeat says verifying, and both peers keep it out");

    // 3. Another TPM state: another key.
    boot_drone3(&lab, &mut vms, &mut tpm3, &other_state, &images[2]);
    let t = both_quarantine(
        &mut vms,
        "not attested: its quote is not signed by its pinned TPM key",
        Duration::from_secs(60),
    );
    eprintln!(
        "tpm: drone3 with a swapped TPM state quarantined by both peers {t:?} after it was ready"
    );

    // 4. Its own TPM again: readmitted, attested.
    boot_drone3(&lab, &mut vms, &mut tpm3, &states[2], &images[2]);
    let t = both_quarantine(
        &mut vms,
        "attested by its TPM quote",
        Duration::from_secs(90),
    );
    eprintln!(
        "tpm: drone3 back on its own TPM readmitted by both peers, attested, {t:?} after it was ready"
    );

    // 5. Tamper: the ratchet, then the reboot.
    check(vms[2].wait_log("baseline taken", BOOT));
    for vm in &mut vms {
        vm.mark();
    }
    let written = Instant::now();
    check(vms[2].type_line("echo evil > /bin/evil"));
    check(vms[2].wait_log(
        "integrity-lost ratchet set in the TPM",
        Duration::from_secs(20),
    ));
    let t = both_quarantine(&mut vms, "quarantined:", Duration::from_secs(30));
    eprintln!(
        "tpm: tamper: ratchet set, quarantined by both peers {t:?} later ({:?} after the write)",
        written.elapsed()
    );
    check(vms[2].wait_console("drone: ready", BOOT));
    let t = both_quarantine(
        &mut vms,
        "attested by its TPM quote",
        Duration::from_secs(90),
    );
    eprintln!(
        "tpm: tamper: after the reboot readmitted by both, attested, {t:?} after it was ready ({:?} after the write)",
        written.elapsed()
    );

    // 6. The TPM stops answering.
    for vm in &mut vms[..2] {
        vm.mark();
    }
    drop(tpm3.take());
    let t = both_quarantine(
        &mut vms,
        "not attested: no valid quote over this node's challenge in time",
        Duration::from_secs(90),
    );
    eprintln!(
        "tpm: drone3's TPM gone: quarantined by both peers {t:?} after swtpm stopped (bound 8 s)"
    );
}
