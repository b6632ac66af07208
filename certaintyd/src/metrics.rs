//! certaintyd's Prometheus metrics, written as a node_exporter textfile (`--metrics-file`)
//! after the baseline, every verification, every violation and every maintenance change. The
//! file must live on another filesystem than the monitored root (`/run`): a write inside the
//! root would itself be a change. prometheus-client does the exposition.

use std::path::PathBuf;

use policy::fsutil::ReplacedFile;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::control::Status;

/// The states `Status::state` takes, each exported (1 for the current one) so an alert can
/// say `certaintyd_state{state="integrity lost"} == 1`.
pub const STATES: [crate::control::State; 4] = crate::control::State::ALL;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    state: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CauseLabels {
    cause: String,
}

#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    state: Family<StateLabels, Gauge>,
    verifications: Counter,
    verification_seconds: Histogram,
    violations: Family<CauseLabels, Counter>,
    files: Gauge,
    bytes: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("certaintyd");
        let m = Metrics {
            registry: Registry::default(),
            state: Family::default(),
            verifications: Counter::default(),
            // 1 ms to about 16 s.
            verification_seconds: Histogram::new(exponential_buckets(0.001, 2.0, 15)),
            violations: Family::default(),
            files: Gauge::default(),
            bytes: Gauge::default(),
        };
        registry.register(
            "state",
            "1 for the current state: grace, verifying, maintenance or integrity lost",
            m.state.clone(),
        );
        registry.register(
            "verifications",
            "Full verifications of the root against the baseline",
            m.verifications.clone(),
        );
        registry.register(
            "verification_duration_seconds",
            "How long one full verification took",
            m.verification_seconds.clone(),
        );
        registry.register(
            "violations",
            "Changes found, by cause (in a maintenance window they are logged, not acted on)",
            m.violations.clone(),
        );
        registry.register(
            "baseline_files",
            "Regular files in the baseline",
            m.files.clone(),
        );
        registry.register("baseline_bytes", "Bytes in the baseline", m.bytes.clone());
        for s in STATES {
            m.state
                .get_or_create(&StateLabels {
                    state: s.as_str().into(),
                })
                .set(0);
        }
        Metrics { registry, ..m }
    }

    /// A full verification finished in `seconds`.
    pub fn verified(&self, seconds: f64) {
        self.verifications.inc();
        self.verification_seconds.observe(seconds);
    }

    /// A violation of this cause (as logged).
    pub fn violation(&self, cause: &str) {
        self.violations
            .get_or_create(&CauseLabels {
                cause: cause.to_string(),
            })
            .inc();
    }

    /// The exposition, with the state and baseline size from `status`.
    pub fn render(&self, status: &Status) -> String {
        for s in STATES {
            self.state
                .get_or_create(&StateLabels {
                    state: s.as_str().into(),
                })
                .set(i64::from(status.state == s));
        }
        self.files
            .set(i64::try_from(status.files).unwrap_or(i64::MAX));
        self.bytes
            .set(i64::try_from(status.bytes).unwrap_or(i64::MAX));
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// The metrics and the file they are written to (replaced atomically). A failed write is
/// logged once until the reason changes: a full disk must not flood the log.
#[derive(Debug)]
pub struct Exporter {
    pub metrics: Metrics,
    file: ReplacedFile,
}

impl Exporter {
    pub fn new(path: PathBuf) -> Self {
        Self {
            metrics: Metrics::new(),
            file: ReplacedFile::new(path, 0o644),
        }
    }

    /// Replaces the file with `text`.
    pub fn write(&mut self, text: &str) {
        if let Some(reason) = self.file.replace(text.as_bytes()) {
            tracing::warn!(reason = %reason, "cannot write the metrics file");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_verifications_and_violations_are_exported() {
        let m = Metrics::new();
        m.verified(0.25);
        m.verified(0.5);
        m.violation("full_verification");
        let status = Status {
            state: crate::control::State::IntegrityLost,
            files: 93,
            bytes: 35_891_689,
            ..Status::default()
        };
        let text = m.render(&status);
        for line in [
            r#"certaintyd_state{state="integrity lost"} 1"#,
            r#"certaintyd_state{state="verifying"} 0"#,
            r#"certaintyd_state{state="grace"} 0"#,
            "certaintyd_verifications_total 2",
            "certaintyd_verification_duration_seconds_sum 0.75",
            "certaintyd_verification_duration_seconds_count 2",
            r#"certaintyd_violations_total{cause="full_verification"} 1"#,
            "certaintyd_baseline_files 93",
            "certaintyd_baseline_bytes 35891689",
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
        }
    }
}
