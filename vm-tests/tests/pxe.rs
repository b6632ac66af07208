//! The lab story (issue 12): drones with no disk and no kernel given to qemu boot from the
//! network, join and form the mesh; one is tampered with, its peers cut it off, it boots from
//! the network again and gets its place back. Needs root, qemu, dnsmasq and Debian's ipxe.
//!
//! The lab's namespace holds the LAN's own DHCP server (busybox udhcpd), the boot server
//! (`drone pxe --run`: dnsmasq as proxy DHCP and TFTP) and a master (netguard, clusterd,
//! joind). One image for every drone: Debian's generic kernel, no node key, the same
//! `certainty.expect`; one of the three drones has an Intel e1000 NIC, as on real PCs.

use std::time::{Duration, Instant};

use vm_tests::cluster::{BOOT, CMD, CONSOLE_ARGS, Cluster, build_image_with};
use vm_tests::lab::Lab;
use vm_tests::master::MASTER_LAN;
use vm_tests::vm::{Boot, NicModel, Spec, Vm, answered, eventually};

fn check<T>(r: Result<T, String>) -> T {
    match r {
        Ok(v) => v,
        Err(e) => panic!("{e}"),
    }
}

/// The three drones: MAC suffix, NIC, and the address the LAN's DHCP server gives them
/// (the third has a per-MAC entry with a static `ip=` instead).
const DRONES: [(u8, NicModel, &str); 3] = [
    (0x51, NicModel::Virtio, "198.18.0.51"),
    (0x52, NicModel::Virtio, "198.18.0.52"),
    (0x53, NicModel::E1000, "198.18.0.53"),
];

fn mac(nic: u8) -> String {
    format!("52:54:00:12:34:{nic:02x}")
}

/// Waits for this boot's join line (the wait moves the mark past it: it is the console's
/// latest); returns the node id and name it got.
fn joined(vm: &mut Vm, within: Duration) -> (u16, String) {
    check(vm.wait_console("drone: joined cluster lab as node", within));
    // The rest of the line may still be on its way.
    let until = Instant::now() + Duration::from_secs(10);
    let line = loop {
        let text = vm.console_text();
        let at = text
            .rfind("drone: joined cluster lab as node")
            .unwrap_or_default();
        if let Some(end) = text[at..].find('\n') {
            break text[at..at + end].to_string();
        }
        assert!(Instant::now() < until, "{}: join line unfinished", vm.name);
        std::thread::sleep(Duration::from_millis(100));
    };
    // "drone: joined cluster lab as node N (NAME), serial S"
    let rest = line
        .split("as node ")
        .nth(1)
        .unwrap_or_else(|| panic!("{line}"));
    let id: u16 = rest
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{line}"));
    let name = rest
        .split(['(', ')'])
        .nth(1)
        .unwrap_or_else(|| panic!("{line}"))
        .to_string();
    (id, name)
}

/// Waits until one line of `vm`'s log after its mark has every one of `parts`.
fn wait_log_line(vm: &Vm, parts: &[&str], within: Duration) {
    let until = Instant::now() + within;
    while !vm
        .log_since_mark()
        .lines()
        .any(|l| parts.iter().all(|p| l.contains(p)))
    {
        assert!(
            Instant::now() < until,
            "{}: no log line with {parts:?} within {within:?}",
            vm.name
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn fetch_eventually(vm: &mut Vm, addr: &str, want: &str, within: Duration) {
    let result = eventually(within, Duration::from_millis(500), || {
        let got = check(vm.fetch(addr, 4660));
        if answered(&got, want) {
            Ok(())
        } else {
            Err(got)
        }
    });
    if let Err(got) = result {
        panic!(
            "{}: {addr}:4660 answered {got:?}, not {want:?}, for {within:?}",
            vm.name
        );
    }
}

#[test]
fn three_drones_boot_from_the_network_join_and_one_tampered_with_gets_its_place_back() {
    if !vm_tests::can_run("pxe") {
        return;
    }
    let c = Cluster::get();
    let mut lab = check(Lab::new());
    let dir = vm_tests::scratch().join("pxe");
    let _ = std::fs::remove_dir_all(&dir);

    // One generic image for every drone.
    let image = check(build_image_with(
        &c.bin,
        &c.policy,
        None,
        &dir.join("image-generic"),
        "generic",
        &[],
    ));
    let initrd = std::fs::metadata(image.dir.join("initrd.img"))
        .map(|m| m.len())
        .unwrap_or(0);
    eprintln!(
        "pxe: generic initrd {initrd} bytes ({:.1} MiB; target <= 16 MiB)",
        initrd as f64 / 1048576.0
    );
    assert!(initrd <= 16 << 20, "initrd {initrd} bytes > 16 MiB");

    let master = check(c.start_master_with(&lab, "pxe", true));
    let statics: Vec<(String, &str)> = DRONES[..2]
        .iter()
        .map(|(nic, _, ip)| (mac(*nic), *ip))
        .collect();
    let statics: Vec<(&str, &str)> = statics.iter().map(|(m, ip)| (m.as_str(), *ip)).collect();
    check(lab.dhcp_server(&dir.join("dhcp"), &statics));
    check(lab.ipv6_router(&dir.join("router")));

    // The boot server, as an operator runs it.
    let boot = dir.join("boot");
    let append = format!(
        "{CONSOLE_ARGS} tyd.join={MASTER_LAN} tyd.token={}",
        master.ephemeral_token
    );
    let e1000_entry = format!(
        "{} generic ip={}::{MASTER_LAN}:24::eth0:off",
        mac(DRONES[2].0),
        DRONES[2].2
    );
    let boot_log = dir.join("dnsmasq.log");
    check(lab.run(
        &c.bin.join("drone"),
        &[
            "pxe",
            "--image",
            &format!("generic={}", image.dir.display()),
            "--network",
            "198.18.0.0",
            "--interface",
            "br0",
            "--append",
            &append,
            "--host",
            &e1000_entry,
            "--out",
            &boot.display().to_string(),
            "--run",
        ],
        &boot_log,
    ));
    let until = Instant::now() + Duration::from_secs(20);
    while !std::fs::read_to_string(&boot_log)
        .unwrap_or_default()
        .contains("TFTP root is")
    {
        assert!(
            Instant::now() < until,
            "the boot server did not start: {}",
            std::fs::read_to_string(&boot_log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // Three drones, no kernel given to qemu, booting together.
    let mut vms: Vec<Vm> = DRONES
        .iter()
        .enumerate()
        .map(|(i, (nic, model, _))| {
            let spec = Spec {
                name: format!("pxe{}", i + 1),
                boot: Boot::Network,
                nic: *nic,
                model: *model,
                uefi: None,
            };
            check(Vm::boot(&lab, &spec, &dir))
        })
        .collect();
    let mut nodes = Vec::new();
    for vm in &mut vms {
        let (id, name) = joined(vm, BOOT);
        eprintln!(
            "pxe: {} boot-to-joined {:.1} s (network boot, three at once; target <= 20 s) as node {id} ({name})",
            vm.name,
            vm.started.elapsed().as_secs_f64()
        );
        check(vm.wait_console(&format!("drone: ready {name}"), BOOT));
        nodes.push((id, name));
    }
    let log = std::fs::read_to_string(&boot_log).unwrap_or_default();
    for (nic, _, _) in &DRONES {
        assert!(
            log.contains(&format!("{} boot.ipxe", mac(*nic))),
            "no network boot for {}: {log}",
            mac(*nic)
        );
    }
    // The e1000 drone runs Debian's e1000 driver, on the address its entry gave it.
    let driver = check(vms[2].sh_ok("readlink /sys/class/net/eth0/device/driver", CMD));
    assert!(driver.trim().ends_with("/e1000"), "driver: {driver}");
    let addr = check(vms[2].sh_ok("ip -4 -o addr show dev eth0", CMD));
    assert!(addr.contains(DRONES[2].2), "{addr}");
    for vm in &mut vms {
        check(vm.wait_log("baseline taken", BOOT));
        check(vm.serve_hostname(4660));
    }
    // The mesh: each reaches the next through the tunnels.
    // The master's admission key hands ids 100-199 and addresses from 10.77.0.128/26, each
    // the first free one: node 100 is 10.77.0.129, and so on.
    let tunnel = |id: u16| format!("10.77.0.{}", id - 100 + 129);
    for i in 0..3 {
        let (id, name) = nodes[(i + 1) % 3].clone();
        fetch_eventually(&mut vms[i], &tunnel(id), &name, Duration::from_secs(60));
    }

    // Tampered with: the drone reboots, its peers cut it off, it boots from the network
    // again with a new key and gets its entry (id, name, tunnel address) back.
    let (victim, (vid, vname)) = (1, nodes[1].clone());
    for vm in &mut vms {
        vm.mark();
    }
    let written = Instant::now();
    check(vms[victim].type_line("echo evil > /bin/evil"));
    let about = format!("name={vname} ");
    wait_log_line(&vms[0], &["quarantined: services withheld", &about], BOOT);
    let quarantined = written.elapsed();
    let (again, name_again) = joined(&mut vms[victim], BOOT);
    let rejoined = written.elapsed();
    assert_eq!((again, name_again.as_str()), (vid, vname.as_str()));
    assert!(
        master
            .log("joind.log")
            .contains("ephemeral node back with a new key"),
        "{}",
        master.log("joind.log")
    );
    check(vms[victim].wait_console(&format!("drone: ready {vname}"), BOOT));
    check(vms[victim].serve_hostname(4660));
    wait_log_line(&vms[0], &["readmitted: services restored", &about], BOOT);
    fetch_eventually(&mut vms[0], &tunnel(vid), &vname, Duration::from_secs(60));
    eprintln!(
        "pxe: tampered {vname}: quarantined on its peer {:.1} s after the write, joined again from the network {:.1} s after, serving its peers {:.1} s after",
        quarantined.as_secs_f64(),
        rejoined.as_secs_f64(),
        written.elapsed().as_secs_f64()
    );
    drop(vms);
    drop(master);
}
