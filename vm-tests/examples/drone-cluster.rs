//! A drone cluster in VMs, narrated: builds the images as an operator would, boots three
//! drones on a bridge in a network namespace of its own, shows the mesh, `tyd status` and
//! `tyd status --cluster`, writes under `/bin` on one drone and watches its peer quarantine
//! it, and it reboot, rejoin and be readmitted. Removes the namespace and the VMs on exit.
//! Needs root and qemu (scripts/install-deps.sh).
//!
//! `cargo run --release -p vm-tests --example drone-cluster`

use std::process::ExitCode;
use std::time::{Duration, Instant};

use vm_tests::cluster::{BOOT, CMD, Cluster, DRONES};
use vm_tests::lab::Lab;
use vm_tests::vm::{Vm, answered};

fn step(text: &str) {
    println!("\n== {text}");
}

fn demo() -> Result<(), String> {
    step("release binaries, operator key, node keys, a signed policy, one image per drone");
    let started = Instant::now();
    let c = Cluster::get();
    for (name, image) in &c.images {
        println!(
            "  {name:<10} {}  image hash {}",
            image.dir.display(),
            image.expected_root
        );
    }
    println!("  ({:.0?})", started.elapsed());

    let lab = Lab::new()?;
    step(&format!(
        "booting drone1-3 under qemu (TCG), on bridge br0 in namespace {}",
        lab.netns
    ));
    let mut vms: Vec<Vm> = (0..DRONES.len())
        .map(|i| c.boot_drone(&lab, "demo", i))
        .collect::<Result<_, _>>()?;
    for vm in &mut vms {
        let name = vm.name.clone();
        vm.wait_console(&format!("drone: ready {name}"), BOOT)?;
        println!(
            "  {name} ready after {:.1?} (image hash pinned with certainty.expect=)",
            vm.started.elapsed()
        );
    }

    step("openMosix's info port (tcp 4660) between the drones, through the tunnels");
    for vm in &mut vms {
        vm.serve_hostname(4660)?;
    }
    for i in 0..vms.len() {
        let (peer, lan, tunnel) = DRONES[(i + 1) % DRONES.len()];
        let until = Instant::now() + Duration::from_secs(30);
        let got = loop {
            let got = vms[i].fetch(tunnel, 4660)?;
            if answered(&got, peer) || Instant::now() > until {
                break got;
            }
            std::thread::sleep(Duration::from_millis(500));
        };
        let lan_got = vms[i].fetch(lan, 4660)?;
        println!(
            "  {} -> {peer} at {tunnel}: {}; at its LAN address {lan}: {}",
            vms[i].name,
            if answered(&got, peer) {
                "answered"
            } else {
                "NO ANSWER"
            },
            if lan_got.is_none() {
                "dropped"
            } else {
                "ANSWERED"
            }
        );
    }

    step("tyd status on drone1");
    let status = vms[0].sh_ok(
        "tyd status --policy /run/tyd/cluster.toml --key /etc/tyd/node.key",
        CMD,
    )?;
    for line in status.lines() {
        println!("  {line}");
    }

    step("tyd status --cluster on drone1 (clusterd's heartbeats, once every drone is verified)");
    show_cluster(&mut vms[0], "3 healthy")?;

    step("root on drone2 writes /bin/evil (after certaintyd's grace period)");
    vms[1].wait_log("baseline taken", BOOT)?;
    vms[0].mark();
    vms[1].mark();
    let written = Instant::now();
    vms[1].type_line("echo evil > /bin/evil")?;
    // certaintyd's own verdict (clusterd's report of it follows and names no path).
    const VERDICT: &str = "integrity lost cause=";
    vms[1].wait_log(VERDICT, Duration::from_secs(10))?;
    let verdict = written.elapsed();
    let log = vms[1].log_text();
    if let Some(line) = log.lines().rev().find(|l| l.contains(VERDICT)) {
        println!("  {}", line.trim());
    }
    vms[0].wait_log("quarantined: services withheld", Duration::from_secs(30))?;
    println!(
        "  drone1 quarantined drone2 {:.1?} after the write (silent while it reboots):",
        written.elapsed()
    );
    show_cluster(&mut vms[0], "1 quarantined")?;
    vms[1].wait_console("drone: ready drone2", BOOT)?;
    println!(
        "  verdict {verdict:.1?} after the write; drone2 rebooted from its image and was ready {:.1?} after it",
        written.elapsed()
    );
    vms[0].wait_log("readmitted: services restored", Duration::from_secs(60))?;
    println!(
        "  drone1 readmitted drone2 {:.1?} after the write, once it had verified its root",
        written.elapsed()
    );
    vms[1].serve_hostname(4660)?;
    let until = Instant::now() + Duration::from_secs(60);
    loop {
        if answered(&vms[0].fetch(DRONES[1].2, 4660)?, "drone2") {
            println!("  drone1 -> drone2 through the tunnel again: answered");
            break;
        }
        if Instant::now() > until {
            return Err("drone2 did not rejoin within 60 s".into());
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    println!(
        "\nconsoles and logs: {}",
        vm_tests::scratch().join("demo").display()
    );
    Ok(())
}

/// Prints `tyd status --cluster` on `vm` once its summary says `want` (30 s at most).
fn show_cluster(vm: &mut Vm, want: &str) -> Result<(), String> {
    let until = Instant::now() + Duration::from_secs(30);
    let (status, out) = loop {
        let (status, out) = vm.sh("tyd status --cluster", CMD)?;
        if out.contains(want) || Instant::now() > until {
            break (status, out);
        }
        std::thread::sleep(Duration::from_secs(1));
    };
    for line in out.lines() {
        println!("  {line}");
    }
    println!("  (exit {status})");
    Ok(())
}

fn main() -> ExitCode {
    if !vm_tests::can_run("drone-cluster") {
        return ExitCode::from(2);
    }
    match demo() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("drone-cluster: {e}");
            ExitCode::FAILURE
        }
    }
}
