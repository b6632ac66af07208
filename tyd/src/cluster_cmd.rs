//! `tyd status --cluster`: every node of the map as clusterd on this node sees it, a summary
//! line first, problems first; the modern `mosmon`. Exits 7 when any node has a problem.

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use jiff::Timestamp;
use proto::view::{ClusterView, NodeView};

use crate::failure::{CliResult, Exit, Failure};
use crate::policy_cmd::print_json;

/// A view older than this is stale: clusterd is not running (or not writing).
const STALE: Duration = Duration::from_secs(10);

fn read(path: &Path) -> CliResult<ClusterView> {
    let bytes = policy::fsutil::read_limited(path, 64 << 20).map_err(|e| {
        Failure::new(
            Exit::Runtime,
            format!("{e} (is clusterd running on this node?)"),
        )
    })?;
    let view: ClusterView = serde_json::from_slice(&bytes).map_err(|e| {
        Failure::new(
            Exit::Runtime,
            format!("{}: not a cluster view: {e}", path.display()),
        )
    })?;
    if view.schema != proto::view::SCHEMA {
        return Err(Failure::new(
            Exit::Runtime,
            format!(
                "{}: schema {} (this tyd reads {})",
                path.display(),
                view.schema,
                proto::view::SCHEMA
            ),
        ));
    }
    Ok(view.sorted())
}

fn age(s: Option<u64>) -> String {
    match s {
        None => "never".into(),
        Some(s) if s < 120 => format!("{s}s ago"),
        Some(s) => format!("{}m ago", s / 60),
    }
}

fn summary(v: &ClusterView, stale: Option<u64>) -> String {
    let total = v.nodes.len();
    let quarantined = v.nodes.iter().filter(|n| n.quarantined.is_some()).count();
    let unreachable = v.nodes.iter().filter(|n| !n.reachable).count();
    let healthy = total - v.problems();
    let mut serials: Vec<u64> = v.nodes.iter().filter_map(|n| n.serial).collect();
    serials.sort_unstable();
    serials.dedup();
    let serials: Vec<String> = serials.iter().map(u64::to_string).collect();
    let mut line = format!(
        "cluster {} serial {}: {total} nodes, {healthy} healthy, {quarantined} quarantined, \
         {unreachable} unreachable; serials in use: {}",
        v.cluster,
        v.serial,
        serials.join(", ")
    );
    if !v.quarantine_enabled {
        line.push_str(" (quarantine off)");
    }
    if let Some(s) = stale {
        line.push_str(&format!("; VIEW IS {s} s OLD: is clusterd running?"));
    }
    line
}

fn row(v: &ClusterView, n: &NodeView, name_width: usize) -> String {
    let serial = v.serial;
    let mem = n
        .mem_available_kb
        .map_or("-".into(), |kb| format!("{} MiB", kb / 1024));
    let serial_text = match n.serial {
        Some(s) if s != serial => format!("{s}*"),
        Some(s) => s.to_string(),
        None => "-".into(),
    };
    format!(
        "{:>5}  {:<name_width$} {:<11} {:>7} {:<16} {:<5} {:>5} {:>10}  {}",
        n.id,
        shown_name(n),
        if n.this_node {
            "-".into()
        } else {
            age(n.last_heard_s)
        },
        serial_text,
        n.integrity.map_or("-".into(), |i| i.to_string()),
        match n.root_matches {
            Some(true) => "yes",
            Some(false) => "NO",
            None => "-",
        },
        n.load1.map_or("-".into(), |l| format!("{l:.2}")),
        mem,
        v.problem_of(n).unwrap_or_default()
    )
    .trim_end()
    .to_string()
}

fn shown_name(n: &NodeView) -> String {
    let mut name = n.name.clone();
    if let Some(master) = n.admitted_by {
        name.push_str(&format!(" (by master {master})"));
    }
    match n.attested {
        Some(true) => name.push_str(" (attested)"),
        Some(false) => name.push_str(" (not attested)"),
        None => {}
    }
    if n.this_node {
        name.push_str(" (this)");
    }
    name
}

fn render(v: &ClusterView, problems_only: bool, stale: Option<u64>) -> String {
    let mut out = summary(v, stale);
    out.push('\n');
    // Names are as long as the policy makes them: the column fits the longest.
    let name_width = v
        .nodes
        .iter()
        .map(|n| shown_name(n).chars().count())
        .max()
        .unwrap_or(0)
        .max(12);
    out.push_str(&format!(
        "{:>5}  {:<name_width$} {:<11} {:>7} {:<16} {:<5} {:>5} {:>10}  problem\n",
        "id", "name", "heard", "serial", "integrity", "root", "load", "free"
    ));
    for n in &v.nodes {
        if problems_only && v.problem_of(n).is_none() {
            continue;
        }
        out.push_str(&row(v, n, name_width));
        out.push('\n');
    }
    out
}

fn staleness(v: &ClusterView, now: Timestamp) -> Option<u64> {
    let written = v.written_at;
    let age = now.duration_since(written).as_secs();
    (age >= STALE.as_secs() as i64).then_some(age as u64)
}

pub fn run(path: &Path, json: bool, problems_only: bool, watch: bool, now: Timestamp) -> CliResult {
    loop {
        let v = read(path)?;
        let stale = staleness(&v, if watch { Timestamp::now() } else { now });
        let unhealthy = v.problems() > 0 || stale.is_some();
        if json {
            print_json(
                &serde_json::to_value(&v)
                    .map_err(|e| Failure::new(Exit::Runtime, e.to_string()))?,
            );
        } else {
            let mut out = std::io::stdout().lock();
            if watch {
                // Clear the screen and go home, like watch(1).
                let _ = write!(out, "\x1b[2J\x1b[H");
            }
            let _ = write!(out, "{}", render(&v, problems_only, stale));
            let _ = out.flush();
        }
        if !watch {
            return if unhealthy {
                Err(Failure::new(
                    Exit::Unhealthy,
                    format!("{} node(s) with a problem", v.problems().max(1)),
                ))
            } else {
                Ok(())
            };
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::cluster::Integrity;

    fn node(id: u16, serial: u64, quarantined: Option<&str>, reachable: bool) -> NodeView {
        NodeView {
            id,
            name: format!("n{id}"),
            this_node: id == 1,
            last_heard_s: Some(1),
            reachable,
            serial: Some(serial),
            digest: Some("d".repeat(64)),
            integrity: Some(Integrity::Verifying),
            root_matches: Some(true),
            last_verification: None,
            boot_id: None,
            uptime_s: Some(10),
            load1: Some(0.5),
            mem_available_kb: Some(2048 * 1024),
            quarantined: quarantined.map(String::from),
            admitted_by: None,
            attested: None,
        }
    }

    #[test]
    fn problems_come_first_and_the_summary_counts_them() {
        let mut nodes: Vec<NodeView> = (1..=100).map(|i| node(i, 9, None, true)).collect();
        nodes[41] = node(42, 9, Some("it reports lost integrity"), true);
        nodes[6] = node(7, 8, None, true);
        nodes[76] = node(77, 9, None, false);
        let v = ClusterView {
            schema: 1,
            cluster: "lab".into(),
            serial: 9,
            digest: Some("d".repeat(64)),
            written_at: Timestamp::now(),
            quarantine_enabled: true,
            nodes,
        }
        .sorted();
        let text = render(&v, false, None);
        let lines: Vec<&str> = text.lines().collect();
        assert!(
            lines[0].contains(
                "100 nodes, 97 healthy, 1 quarantined, 1 unreachable; serials in use: 8, 9"
            ),
            "{}",
            lines[0]
        );
        assert!(lines[2].contains("on serial 8, not 9"), "{}", lines[2]);
        assert!(
            lines[3].contains("quarantined: it reports lost integrity"),
            "{}",
            lines[3]
        );
        assert!(lines[4].contains("unreachable"), "{}", lines[4]);
        assert!(
            lines[2].contains("8*"),
            "a stale serial is marked: {}",
            lines[2]
        );
        let only = render(&v, true, None);
        assert_eq!(only.lines().count(), 2 + 3);
    }

    #[test]
    fn columns_line_up_whatever_the_names() {
        let mut nodes: Vec<NodeView> = (1..=3).map(|i| node(i, 9, None, true)).collect();
        nodes[0].name = "compute-node-001".into();
        nodes[2].name = "gpu".into();
        let v = ClusterView {
            schema: 1,
            cluster: "lab".into(),
            serial: 9,
            digest: Some("d".repeat(64)),
            written_at: Timestamp::now(),
            quarantine_enabled: true,
            nodes,
        };
        let text = render(&v, false, None);
        let lines: Vec<&str> = text.lines().skip(1).collect();
        // Every row's "heard" column starts where the header's does.
        let at = lines[0].find("heard").unwrap();
        for l in &lines[1..] {
            let b = l.as_bytes();
            assert!(b[at - 1] == b' ' && b[at] != b' ', "{text}");
            assert_eq!(l.trim_end(), *l, "trailing blanks: {l:?}");
        }
    }

    /// Attack (a partition, issue 26 #9): two sides signed different policies at the same
    /// serial; each stayed on its own, and `tyd status --cluster` said "5 healthy", exit 0.
    /// Steps: a view where one node reports this node's serial with another digest: it is a
    /// problem, named as two policies at one serial, and counted.
    #[test]
    fn the_same_serial_with_other_content_is_a_problem() {
        let mut nodes: Vec<NodeView> = (1..=5).map(|i| node(i, 9, None, true)).collect();
        nodes[3].digest = Some("e".repeat(64));
        let v = ClusterView {
            schema: 1,
            cluster: "lab".into(),
            serial: 9,
            digest: Some("d".repeat(64)),
            written_at: Timestamp::now(),
            quarantine_enabled: true,
            nodes,
        }
        .sorted();
        assert_eq!(v.problems(), 1);
        let text = render(&v, false, None);
        assert!(text.contains("4 healthy"), "{text}");
        assert!(text.contains("two policies at one serial"), "{text}");
    }
}
