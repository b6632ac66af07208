//! clusterd in network namespaces, as root (run by `scripts/bench-cluster.sh`): N members,
//! each with netguard (userspace WireGuard, one wireguard-go each) and clusterd, and a
//! stand-in certaintyd. Prints: how long until every member hears every other; how long a
//! new serial pushed to one member takes to reach every member's policy file (p50, p100);
//! how long from one member reporting lost integrity to its quarantine on every peer; and
//! the idle cost per member over 10 s (tunnel bytes per second, clusterd CPU and memory).
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../tests/lab/mod.rs"]
mod lab;

use std::process::Command;
use std::time::{Duration, Instant};

use lab::{Lab, wait_for, workspace_bin};

fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which is in parentheses): utime is 14th, stime 15th.
    let rest = stat.rsplit(')').next().unwrap_or_default();
    let f: Vec<&str> = rest.split_whitespace().collect();
    f.get(11).and_then(|u| u.parse::<u64>().ok()).unwrap_or(0)
        + f.get(12).and_then(|s| s.parse::<u64>().ok()).unwrap_or(0)
}

fn rss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// Bytes sent through the tunnel by member `i` (all its peers), from `wg show`.
fn tunnel_tx(lab: &Lab, i: usize) -> u64 {
    let m = &lab.members[i];
    let out = Command::new("ip")
        .args(["netns", "exec", &m.ns, "wg", "show", &m.iface, "transfer"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().nth(2)?.parse::<u64>().ok())
        .sum()
}

fn ms(d: Duration) -> u128 {
    d.as_millis()
}

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .map_or(50, |a| a.parse().expect("members"));
    // Build what the lab starts before any timing.
    for bin in ["netguard", "clusterd", "tyd"] {
        workspace_bin(bin);
    }
    let mut lab = Lab::new(n);
    lab.drift = "60s".into();
    lab.publish_on(2, &(0..n).collect::<Vec<_>>());
    let started = Instant::now();
    for i in 0..n {
        lab.start(i);
    }
    let everyone = wait_for(
        "every member to hear every other, nobody quarantined",
        Duration::from_secs(180),
        || {
            (0..n).all(|i| {
                lab.view(i)["nodes"].as_array().is_some_and(|v| {
                    v.len() == n
                        && v.iter()
                            .all(|x| x["reachable"] == true && x["quarantined"].is_null())
                })
            })
        },
    );
    println!(
        "{n} members: every member hears every other {} ms after start ({} ms since the first was started)",
        ms(everyone),
        ms(started.elapsed())
    );

    // Distribution: the operator pushes serial 3 to member 1 only.
    let t0 = Instant::now();
    lab.push(3, 0);
    let mut reached: Vec<Option<Duration>> = vec![None; n];
    while reached.iter().any(Option::is_none) && t0.elapsed() < Duration::from_secs(30) {
        for (i, r) in reached.iter_mut().enumerate() {
            if r.is_none() && lab.serial_on(i) == Some(3) {
                *r = Some(t0.elapsed());
            }
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let mut times: Vec<Duration> = reached.iter().flatten().copied().collect();
    times.sort();
    println!(
        "new serial pushed to member 1: on {} of {n} members; p50 {} ms, p100 {} ms (target: 2000 ms at 50 members)",
        times.len(),
        ms(times[times.len() / 2]),
        ms(*times.last().unwrap())
    );

    // Tamper: member 7 (or the last) reports lost integrity.
    let bad = 6.min(n - 1);
    let t1 = Instant::now();
    *lab.members[bad].certainty.lock().unwrap() = "integrity lost".into();
    let others: Vec<usize> = (0..n).filter(|&i| i != bad).collect();
    let took = wait_for("quarantine on every peer", Duration::from_secs(10), || {
        others
            .iter()
            .all(|&i| lab.quarantined_on(i).contains(&(bad as u16 + 1)))
    });
    let _ = t1;
    println!(
        "member {} reports lost integrity: quarantined on all {} peers after {} ms (target: 1000 ms)",
        bad + 1,
        others.len(),
        ms(took)
    );
    *lab.members[bad].certainty.lock().unwrap() = "verifying".into();
    std::fs::write(lab.members[bad].dir.join("boot_id"), "rebooted\n").unwrap();
    wait_for("readmission everywhere", Duration::from_secs(10), || {
        others.iter().all(|&i| lab.quarantined_on(i).is_empty())
    });

    // Idle cost over 10 s.
    let pids: Vec<u32> = lab
        .members
        .iter()
        .map(|m| m.children.last().unwrap().id())
        .collect();
    let cpu0: Vec<u64> = pids.iter().map(|&p| cpu_ticks(p)).collect();
    let tx0: Vec<u64> = (0..n).map(|i| tunnel_tx(&lab, i)).collect();
    let window = Duration::from_secs(10);
    std::thread::sleep(window);
    let cpu: Vec<u64> = pids
        .iter()
        .zip(&cpu0)
        .map(|(&p, c)| cpu_ticks(p) - c)
        .collect();
    let tx: Vec<u64> = (0..n)
        .map(|i| tunnel_tx(&lab, i))
        .zip(&tx0)
        .map(|(a, b)| a - b)
        .collect();
    let rss: Vec<u64> = pids.iter().map(|&p| rss_kb(p)).collect();
    let mean = |v: &[u64]| v.iter().sum::<u64>() as f64 / v.len() as f64;
    let ticks_per_s = 100.0;
    println!(
        "idle, per member over {} s: tunnel tx {:.0} bytes/s (heartbeats to {} peers, encrypted), clusterd CPU {:.2}% of a core (max {:.2}%), clusterd RSS {:.0} KiB",
        window.as_secs(),
        mean(&tx) / window.as_secs_f64(),
        n - 1,
        100.0 * mean(&cpu) / ticks_per_s / window.as_secs_f64(),
        100.0 * *cpu.iter().max().unwrap_or(&0) as f64 / ticks_per_s / window.as_secs_f64(),
        mean(&rss)
    );
}
