//! certaintyd's baseline and verifications: the grace period and writer scan, the baseline
//! (checked against the pinned root), full verifications every interval, change events, and
//! what a violation does.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use jiff::Timestamp;
use tokio::sync::mpsc;
use tracing::{error, info, warn};

use crate::action::Outcome;
use crate::manifest::{Manifest, Snapshot};
use crate::mounts::{compare_mounts, read_mounts};
use crate::preflight;
use crate::verdict::{Cause, Finding, Report, compare, compare_paths, summary};
use crate::walk::{self, RootError};
use crate::watch::{self, WatchEvent};

use super::{Daemon, Exit, Flow, Source, StartupError, now_text};

/// Processes that could write to the monitored tree without events, as findings: writers on
/// the filesystem `dev` whose inode is in `tree` (inode to the path it has in the tree).
fn writer_findings(dev: u64, tree: &HashMap<u64, String>) -> Vec<Finding> {
    let writers = preflight::scan(dev, std::path::Path::new("/proc"));
    preflight::in_tree(writers, tree)
        .into_iter()
        .map(|(w, in_tree)| Finding {
            detail: if w.path == in_tree {
                format!("pid {} ({}) holds a {}", w.pid, w.command, w.how)
            } else {
                format!(
                    "pid {} ({}) holds a {} through {}",
                    w.pid, w.command, w.how, w.path
                )
            },
            path: in_tree,
            changes: vec![],
        })
        .collect()
}

/// The files of `baseline` among `written` (closed after being open for writing), as
/// findings. Paths the baseline does not hold (excluded, or new: their creation is its own
/// event) are not judged here.
fn write_opened(baseline: &Manifest, mut written: Vec<Vec<u8>>) -> Vec<Finding> {
    written.sort();
    written.dedup();
    written
        .into_iter()
        .filter(|p| {
            baseline
                .entries
                .get(p)
                .is_some_and(|e| e.kind == crate::entry::Kind::File)
        })
        .map(|p| Finding {
            path: crate::entry::display_path(&p),
            changes: vec![],
            detail: "was open for writing".into(),
        })
        .collect()
}

/// The tree's regular files by inode, with their paths (what a writer can change).
fn inodes_of(manifest: &Manifest) -> HashMap<u64, String> {
    manifest
        .entries
        .iter()
        .filter(|(_, e)| e.kind == crate::entry::Kind::File)
        .map(|(p, e)| (e.ino, crate::entry::display_path(p)))
        .collect()
}

/// The writers on the filesystem `dev` that can change the walked tree now, and those seen
/// `before` the walk that are no longer there, as findings.
fn baseline_writers(dev: u64, before: Vec<preflight::Writer>, manifest: &Manifest) -> Vec<Finding> {
    let tree = inodes_of(manifest);
    let mut writers = writer_findings(dev, &tree);
    for (w, in_tree) in preflight::in_tree(before, &tree) {
        if !writers.iter().any(|f| f.path == in_tree) {
            writers.push(Finding {
                detail: format!(
                    "pid {} ({}) held a {} during the walk",
                    w.pid, w.command, w.how
                ),
                path: in_tree,
                changes: vec![],
            });
        }
    }
    writers
}

/// The `certainty.expect=` the node was booted with, if any.
fn kernel_expected_root() -> Result<Option<String>, StartupError> {
    let cmdline = std::fs::read_to_string("/proc/cmdline").map_err(StartupError::Cmdline)?;
    Ok(cmdline
        .split_whitespace()
        .find_map(|w| w.strip_prefix("certainty.expect="))
        .map(str::to_string))
}

impl Daemon {
    pub(super) fn take_snapshot(
        &self,
    ) -> impl FnOnce() -> Result<Snapshot, RootError> + Send + 'static {
        let root = self.cfg.root.clone();
        let source = self.cfg.source.clone();
        move || match source {
            Source::Tree => walk::snapshot(&root),
            Source::Device(dev) => walk::snapshot_device(&dev),
        }
    }

    /// Writer scan, baseline, expected root, watchers. Startup errors are fatal; findings
    /// (writers, wrong root hash) are violations.
    pub(super) async fn establish(&mut self) -> Result<Flow, StartupError> {
        // A baseline pass has no deadline of its own yet (a maintenance window may have
        // grown the root): the watchdog's wide limit holds until it is taken.
        self.cfg.heartbeat.beat();
        self.cfg
            .heartbeat
            .set_limit(self.cfg.interval * 10 + Duration::from_secs(30));
        if self.cfg.source == Source::Tree {
            let dev = nix::sys::stat::stat(&self.cfg.root)
                .map_err(|source| RootError {
                    root: self.cfg.root.clone(),
                    source,
                })?
                .st_dev;
            self.dev = dev;
        }
        // Writers are looked for before the walk (one that closes during it is still seen)
        // and after it, and matched against the walked tree's inodes.
        let before = if self.cfg.source == Source::Tree {
            preflight::scan(self.dev, std::path::Path::new("/proc"))
        } else {
            Vec::new()
        };
        let started = Instant::now();
        let snap = self.walk_baseline().await?;
        let took = started.elapsed();
        if self.cfg.source == Source::Tree {
            let writers = baseline_writers(self.dev, before, &snap.manifest);
            if !writers.is_empty() {
                let detail = "processes can write to the monitored tree without events; refusing to take a baseline";
                return Ok(self
                    .violation(Cause::UnsafeWriters, writers, detail.into())
                    .await);
            }
        }
        self.deadline = self
            .cfg
            .deadline
            .unwrap_or_else(|| (self.cfg.interval * 5).max(took * 4));
        // From here the watchdog is fed only while full verifications complete: one
        // interval and one pass deadline, plus a second for the timer, may pass between two.
        self.cfg.heartbeat.beat();
        self.cfg
            .heartbeat
            .set_limit(self.cfg.interval + self.deadline + Duration::from_secs(1));
        self.adopt(snap.manifest)?;
        info!(
            root_hash = %self.baseline_root,
            stable_root = %self.stable_root,
            files = self.baseline.files(),
            bytes = self.baseline.bytes(),
            entries = self.baseline.entries.len(),
            took_ms = took.as_millis() as u64,
            deadline_ms = self.deadline.as_millis() as u64,
            "baseline taken"
        );
        if let Some(detail) = self.root_mismatch()? {
            return Ok(self
                .violation(Cause::ExpectedRootMismatch, vec![], detail)
                .await);
        }
        Ok(Flow::Continue)
    }

    /// Walks the root for the baseline; an entry that cannot be read is a startup error.
    async fn walk_baseline(&self) -> Result<Snapshot, StartupError> {
        let snap = tokio::task::spawn_blocking(self.take_snapshot())
            .await
            .map_err(|e| StartupError::Unreadable {
                count: 1,
                first: format!("walker panicked: {e}"),
            })??;
        if let Some(p) = snap.problems.first() {
            return Err(StartupError::Unreadable {
                count: snap.problems.len(),
                first: format!(
                    "{}: {} ({})",
                    crate::entry::display_path(&p.path),
                    p.kind,
                    p.detail
                ),
            });
        }
        Ok(snap)
    }

    /// Why the baseline's stable root is not the one pinned (the configuration's, or the
    /// kernel command line's `certainty.expect=`), if one is pinned and it is not.
    fn root_mismatch(&self) -> Result<Option<String>, StartupError> {
        let expected = match self.cfg.expected_root.clone() {
            Some(e) => Some(e),
            None => kernel_expected_root()?,
        };
        if let Some(expected) = expected
            && !expected.eq_ignore_ascii_case(&self.stable_root)
        {
            return Ok(Some(format!(
                "stable root {} is not the expected {expected}",
                self.stable_root
            )));
        }
        Ok(None)
    }

    /// Makes `manifest` the reference and (re)starts the watchers on its directories.
    pub(super) fn adopt(&mut self, manifest: Manifest) -> Result<(), StartupError> {
        self.watchers = None;
        self.tree_inodes = inodes_of(&manifest);
        self.baseline_root = manifest.root_hash().to_hex().to_string();
        self.stable_root = manifest.stable_root().to_hex().to_string();
        self.mounts = read_mounts(&self.cfg.root).map_err(StartupError::Mounts)?;
        if self.cfg.source == Source::Tree {
            self.watchers = Some(watch::start(
                &self.cfg.root,
                &manifest,
                self.events_tx.clone(),
            )?);
        }
        if let Ok(mut s) = self.status.lock() {
            s.state = crate::control::State::Verifying;
            s.baseline_at = Some(now_text());
            s.root_hash = Some(self.baseline_root.clone());
            s.stable_root = Some(self.stable_root.clone());
            s.files = manifest.files() as u64;
            s.bytes = manifest.bytes();
            s.entries = manifest.entries.len() as u64;
        }
        self.write_metrics();
        self.baseline = Arc::new(manifest);
        Ok(())
    }

    pub(super) async fn full_verification(&mut self) -> Flow {
        let started = Instant::now();
        if self.cfg.source == Source::Tree {
            // The one way to change content without an event: a shared writable mapping.
            let writers = writer_findings(self.dev, &self.tree_inodes);
            if !writers.is_empty() {
                let detail = "a process can write to the monitored tree without events".into();
                return self.violation(Cause::UnsafeWriters, writers, detail).await;
            }
        }
        self.pass += 1;
        let job = self.verification_job();
        let result = tokio::time::timeout(self.deadline, job).await;
        let took = started.elapsed();
        let snap = match result {
            Err(_) => {
                let detail = format!(
                    "full verification did not finish within {:?}",
                    self.deadline
                );
                return self.violation(Cause::DeadlineMissed, vec![], detail).await;
            }
            Ok(Err(e)) => {
                return self
                    .violation(
                        Cause::WatcherFailed,
                        vec![],
                        format!("verifier failed: {e}"),
                    )
                    .await;
            }
            Ok(Ok(Err(e))) => {
                return self
                    .violation(Cause::FullVerification, vec![], e.to_string())
                    .await;
            }
            Ok(Ok(Ok(snap))) => snap,
        };
        self.record_pass(took);
        let mut findings = compare(&self.baseline, &snap);
        if let Ok(now) = read_mounts(&self.cfg.root) {
            findings.extend(compare_mounts(&self.mounts, &now));
        }
        if findings.is_empty() {
            tracing::debug!(
                took_ms = took.as_millis() as u64,
                "full verification: intact"
            );
            return Flow::Continue;
        }
        self.violation(Cause::FullVerification, findings, String::new())
            .await
    }

    /// Starts this pass's walk: of a tree hashing only the content due this pass when
    /// content checks are spread over passes, otherwise of everything.
    fn verification_job(&self) -> tokio::task::JoinHandle<Result<Snapshot, RootError>> {
        match self.cfg.source {
            Source::Tree if self.cfg.content_every > 1 => {
                let root = self.cfg.root.clone();
                let baseline = Arc::clone(&self.baseline);
                let (pass, every) = (self.pass, self.cfg.content_every);
                tokio::task::spawn_blocking(move || {
                    walk::snapshot_with(
                        &root,
                        Some(walk::Reuse {
                            baseline: &baseline,
                            pass,
                            every,
                        }),
                    )
                })
            }
            _ => tokio::task::spawn_blocking(self.take_snapshot()),
        }
    }

    /// A pass completed within its deadline: the daemon verifies, the watchdog is fed, and
    /// the status and metrics say when.
    fn record_pass(&mut self, took: Duration) {
        self.cfg.heartbeat.beat();
        if let Ok(mut s) = self.status.lock() {
            s.last_verification_at = Some(now_text());
            s.last_verification_ms = Some(took.as_millis() as u64);
            let next = Timestamp::now() + self.cfg.interval + self.deadline;
            s.next_verification_by =
                Some(next.round(jiff::Unit::Second).unwrap_or(next).to_string());
        }
        if let Some(e) = &self.metrics {
            e.metrics.verified(took.as_secs_f64());
        }
        self.write_metrics();
    }

    pub(super) async fn event(
        &mut self,
        ev: Option<WatchEvent>,
        rx: &mut mpsc::UnboundedReceiver<WatchEvent>,
    ) -> Flow {
        let mut paths = Vec::new();
        let mut written = Vec::new();
        let mut mounts = false;
        let mut pending = vec![ev];
        // Drain what is already queued, so one burst is one check.
        while let Ok(more) = rx.try_recv() {
            pending.push(Some(more));
        }
        for ev in pending {
            match ev {
                Some(WatchEvent::Paths(p)) => paths.extend(p),
                Some(WatchEvent::WriteClosed(p)) => written.extend(p),
                Some(WatchEvent::Mounts) => mounts = true,
                Some(WatchEvent::Overflow) => {
                    let detail = "inotify queue overflowed: changes may have been missed".into();
                    return self.violation(Cause::EventOverflow, vec![], detail).await;
                }
                Some(WatchEvent::Failed(why)) => {
                    return self.violation(Cause::WatcherFailed, vec![], why).await;
                }
                None => {
                    let detail = "all watchers stopped".into();
                    return self.violation(Cause::WatcherFailed, vec![], detail).await;
                }
            }
        }
        if mounts {
            match read_mounts(&self.cfg.root) {
                Ok(now) => {
                    let findings = compare_mounts(&self.mounts, &now);
                    if !findings.is_empty() {
                        return self.violation(Cause::Mounts, findings, String::new()).await;
                    }
                }
                Err(e) => {
                    let detail = format!("cannot read mount table: {e}");
                    return self.violation(Cause::WatcherFailed, vec![], detail).await;
                }
            }
        }
        if !paths.is_empty() {
            paths.sort();
            paths.dedup();
            let root = self.cfg.root.clone();
            let check = paths.clone();
            let snap =
                tokio::task::spawn_blocking(move || walk::capture_paths(&root, &check)).await;
            let findings = match snap {
                Ok(Ok(snap)) => compare_paths(&self.baseline, &snap, &paths),
                Ok(Err(e)) => return self.violation(Cause::Event, vec![], e.to_string()).await,
                Err(e) => {
                    return self
                        .violation(Cause::WatcherFailed, vec![], e.to_string())
                        .await;
                }
            };
            if !findings.is_empty() {
                return self.violation(Cause::Event, findings, String::new()).await;
            }
        }
        // (Judged whether or not the same burst named paths: the two arrive as two messages,
        // and a busy loop can take them in two turns.)
        // The content is as it was, but a file of the tree was open for writing: whatever
        // was written through it may have been used and undone already.
        let opened = write_opened(&self.baseline, written);
        if opened.is_empty() {
            return Flow::Continue;
        }
        let detail = "opened for writing after the baseline (a write through a mapping or io_uring can be made and undone before the close)".into();
        self.violation(Cause::UnsafeWriters, opened, detail).await
    }

    /// One decision, one event: log everything, then act (or, in a maintenance window, log only).
    pub(super) async fn violation(
        &mut self,
        cause: Cause,
        findings: Vec<Finding>,
        detail: String,
    ) -> Flow {
        if let Ok(mut s) = self.status.lock() {
            s.violations += 1;
        }
        if let Some(e) = &self.metrics {
            e.metrics.violation(&cause.to_string());
        }
        if let Some(w) = &self.window {
            warn!(
                cause = %cause,
                findings = findings.len(),
                changes = %summary(&findings),
                detail = %detail,
                until = %w.until_wall,
                signer = %w.signer,
                "change during maintenance window: logged, not acted on"
            );
            return Flow::Continue;
        }
        let report = Report {
            cause: cause.clone(),
            node: self.cfg.node.clone(),
            root: self.cfg.root.display().to_string(),
            baseline_root_hash: self.baseline_root.clone(),
            detected_at: now_text(),
            findings,
            detail,
        };
        error!(
            cause = %report.cause,
            findings = report.findings.len(),
            changes = %summary(&report.findings),
            detail = %report.detail,
            action = %self.cfg.actuator.action,
            dry_run = self.cfg.actuator.dry_run,
            "integrity lost"
        );
        if let Ok(mut s) = self.status.lock() {
            s.state = crate::control::State::IntegrityLost;
        }
        self.write_metrics();
        match self.cfg.actuator.perform(&report).await {
            Outcome::DryRun | Outcome::PowerFailed => Flow::Exit(Exit::IntegrityLost),
            Outcome::Alerted => self.readopt().await,
        }
    }

    /// After an alert: the changed tree becomes the reference, so each change is reported once.
    pub(super) async fn readopt(&mut self) -> Flow {
        match tokio::task::spawn_blocking(self.take_snapshot()).await {
            Ok(Ok(snap)) => match self.adopt(snap.manifest) {
                Ok(()) => {
                    warn!(root_hash = %self.baseline_root, "alert mode: watching the changed tree from here on");
                    Flow::Continue
                }
                Err(e) => {
                    error!(cause = %e, "alert mode: cannot re-establish watches; stopping");
                    Flow::Exit(Exit::IntegrityLost)
                }
            },
            _ => Flow::Exit(Exit::IntegrityLost),
        }
    }
}
