//! Baseline versus now: the findings, and the report an action receives. Pure.

use std::collections::BTreeSet;

use serde::Serialize;

use crate::entry::{Difference, display_path};
use crate::manifest::{Manifest, Snapshot};

/// One path that is not what the baseline says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    pub path: String,
    pub changes: Vec<Difference>,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub detail: String,
}

/// Why certainty was lost.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Cause {
    /// A periodic full verification found differences.
    FullVerification,
    /// A targeted check after a filesystem event found differences.
    Event,
    /// The mount table under the root changed.
    Mounts,
    /// The event queue overflowed: changes may have been missed.
    EventOverflow,
    /// A verification did not finish before its deadline.
    DeadlineMissed,
    /// The watcher or another internal part stopped.
    WatcherFailed,
    /// A stop signal from someone other than an authorised stop.
    Signal,
    /// The root hash did not match the one pinned by policy or kernel command line.
    ExpectedRootMismatch,
    /// Processes could write without producing events (shared writable mappings, open for write).
    UnsafeWriters,
}

impl std::fmt::Display for Cause {
    /// The same words as the report's JSON (`unsafe_writers`).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Cause::FullVerification => "full_verification",
            Cause::Event => "event",
            Cause::Mounts => "mounts",
            Cause::EventOverflow => "event_overflow",
            Cause::DeadlineMissed => "deadline_missed",
            Cause::WatcherFailed => "watcher_failed",
            Cause::Signal => "signal",
            Cause::ExpectedRootMismatch => "expected_root_mismatch",
            Cause::UnsafeWriters => "unsafe_writers",
        })
    }
}

/// What is logged and handed to the action (the `exec` hook reads it as JSON on stdin).
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub cause: Cause,
    pub node: String,
    pub root: String,
    pub baseline_root_hash: String,
    pub detected_at: String,
    pub findings: Vec<Finding>,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub detail: String,
}

/// Compares a full snapshot with the baseline: every added, removed and changed path, plus
/// every entry that could not be read.
pub fn compare(baseline: &Manifest, now: &Snapshot) -> Vec<Finding> {
    compare_at(baseline, now, None)
}

/// Compares only `paths` (a targeted check): a path absent from `now` but in the baseline was
/// removed; one present in `now` but not in the baseline was added.
pub fn compare_paths(baseline: &Manifest, now: &Snapshot, paths: &[Vec<u8>]) -> Vec<Finding> {
    compare_at(baseline, now, Some(paths))
}

fn compare_at(baseline: &Manifest, now: &Snapshot, only: Option<&[Vec<u8>]>) -> Vec<Finding> {
    let mut out = Vec::new();
    let problem_paths: BTreeSet<&[u8]> = now.problems.iter().map(|p| p.path.as_slice()).collect();
    let keys: BTreeSet<&[u8]> = match only {
        Some(paths) => paths.iter().map(Vec::as_slice).collect(),
        None => baseline
            .entries
            .keys()
            .chain(now.manifest.entries.keys())
            .map(Vec::as_slice)
            .collect(),
    };
    for path in keys {
        if problem_paths.contains(path) {
            continue; // reported below, with its reason
        }
        let changes = match (baseline.entries.get(path), now.manifest.entries.get(path)) {
            (Some(_), None) => vec![Difference::Removed],
            (None, Some(_)) => vec![Difference::Added],
            (Some(a), Some(b)) => a.differences(b),
            (None, None) => Vec::new(),
        };
        if !changes.is_empty() {
            out.push(Finding {
                path: display_path(path),
                changes,
                detail: String::new(),
            });
        }
    }
    for p in &now.problems {
        out.push(Finding {
            path: display_path(&p.path),
            changes: vec![p.kind],
            detail: p.detail.clone(),
        });
    }
    out
}

/// One line for logs: `/bin/ls (content, mtime, ctime); /etc/x (added)`, shortened past 20.
/// A finding's detail (why it is unreadable, which process writes) follows its changes.
pub fn summary(findings: &[Finding]) -> String {
    let mut parts: Vec<String> = findings
        .iter()
        .take(20)
        .map(|f| {
            let mut what: Vec<String> = f.changes.iter().map(ToString::to_string).collect();
            if !f.detail.is_empty() {
                what.push(f.detail.clone());
            }
            format!("{} ({})", f.path, what.join(", "))
        })
        .collect();
    if findings.len() > 20 {
        parts.push(format!("and {} more", findings.len() - 20));
    }
    parts.join("; ")
}
