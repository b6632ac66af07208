//! Joining in network namespaces, as root (run by `scripts/bench-join.sh`): `tyd init` on
//! the first node, then three `tyd join` one after the other, each timed from the command to
//! the new node's tunnels up with every member and the service port open both ways; then ten
//! `tyd join` at once. The reference, measured in the same run: one `tyd` run that does no
//! work (`tyd --version`) in a namespace, the floor under any command.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../tests/lab/mod.rs"]
mod lab;

use std::time::{Duration, Instant};

use lab::{Lab, echo_server, join_line, wait_for};

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn main() {
    let sequential = 3;
    let at_once = 10;
    let n = 1 + sequential + at_once;
    let mut lab = Lab::new(n);
    for m in &lab.members {
        std::fs::remove_file(m.dir.join("operator.pub")).unwrap();
    }
    let dir = |lab: &Lab, i: usize| lab.members[i].dir.display().to_string();
    let t = Instant::now();
    lab.tyd_in(0, &["--version"]);
    let reference = t.elapsed();

    let d1 = dir(&lab, 0);
    let tokens = format!("{d1}/tokens.json");
    let t = Instant::now();
    let (code, out, err) = lab.tyd_in(
        0,
        &[
            "init",
            "--endpoint",
            "198.18.0.1",
            "--cluster",
            "bench",
            "--name",
            "d1",
            "--dir",
            &d1,
            "--tokens",
            &tokens,
            "--uses",
            "20",
        ],
    );
    let init = t.elapsed();
    assert_eq!(code, 0, "{out}{err}");
    let (token, fingerprint) = join_line(&out);
    lab.start(0);
    lab.start_joind(0, true);
    for i in 0..n {
        echo_server(&lab.members[i].ns);
    }
    std::thread::sleep(Duration::from_millis(500));
    println!(
        "reference: one `tyd --version` in a namespace {:.1} ms; tyd init {:.1} ms",
        ms(reference),
        ms(init)
    );

    let join = |lab: &Lab, i: usize| {
        lab.tyd_in(
            i,
            &[
                "join",
                "198.18.0.1",
                "--token",
                &token,
                "--operator",
                &fingerprint,
                "--dir",
                &dir(lab, i),
                "--name",
                &format!("d{}", i + 1),
            ],
        )
    };
    for i in 1..=sequential {
        let t = Instant::now();
        let (code, out, err) = join(&lab, i);
        let answered = t.elapsed();
        assert_eq!(code, 0, "{out}{err}");
        lab.start(i);
        wait_for(
            "tunnels and services with every member",
            Duration::from_secs(30),
            || {
                (0..i).all(|j| {
                    lab.tcp_ok(i, &format!("{}:4660", tun(j)))
                        && lab.tcp_ok(j, &format!("{}:4660", tun(i)))
                })
            },
        );
        let done = t.elapsed();
        println!(
            "join {i}: answered after {:.1} ms, tunnels up and services open with all {i} members after {:.1} ms ({:.0}x the reference; target 3000 ms)",
            ms(answered),
            ms(done),
            ms(done) / ms(reference)
        );
    }

    let first = 1 + sequential;
    let t = Instant::now();
    let results: Vec<(usize, i32, String)> = std::thread::scope(|s| {
        let handles: Vec<_> = (first..n)
            .map(|i| {
                let lab = &lab;
                s.spawn(move || {
                    let (code, out, err) = join(lab, i);
                    (i, code, format!("{out}{err}"))
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let answered = t.elapsed();
    let ok = results.iter().filter(|(_, code, _)| *code == 0).count();
    for (i, code, text) in &results {
        assert_eq!(*code, 0, "d{}: {text}", i + 1);
    }
    for i in first..n {
        lab.start(i);
    }
    wait_for("the ten reach the master", Duration::from_secs(60), || {
        (first..n).all(|i| lab.tcp_ok(i, "10.77.0.1:4660"))
    });
    // The master's policy lists itself; the nodes it admitted are in its membership.
    let read =
        |name: &str| std::fs::read_to_string(lab.members[0].dir.join(name)).unwrap_or_default();
    let ids = read("cluster.toml").matches("[[node]]").count()
        + read("membership-1.toml").matches("[[node]]").count();
    println!(
        "{at_once} joins at once: {ok} of {at_once} succeeded, all answered after {:.1} ms, all reaching the master through their tunnels after {:.1} ms; the map lists {ids} nodes with distinct ids",
        ms(answered),
        ms(t.elapsed())
    );
}

/// Member `i`'s tunnel address when the members join one after another: d1 is node 1
/// (`tyd init`); the master's admission key gives the others 10.77.0.129 on, in turn.
fn tun(i: usize) -> String {
    if i == 0 {
        "10.77.0.1".into()
    } else {
        format!("10.77.0.{}", 128 + i)
    }
}
