//! A signed request to certaintyd for a maintenance window or an authorised stop, as `tyd
//! certainty` writes it and certaintyd verifies it (`certaintyd::maintenance`): JSON, signed
//! (detached ed25519, like the policy) by a key the policy lists in
//! `certainty.maintenance_keys`.

use std::time::Duration;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RequestKind {
    /// Log changes instead of acting on them, for `duration`.
    Maintain,
    /// Stop the daemon cleanly (and disarm the watchdog).
    Stop,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Request {
    pub kind: RequestKind,
    pub cluster: String,
    /// The node it is for; absent means any node of the cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    pub issued_at: Timestamp,
    #[serde(with = "policy::model::duration")]
    pub duration: Duration,
    /// At the end of the window, take a new baseline instead of verifying against the old one.
    #[serde(default)]
    pub rebaseline: bool,
    /// Random, so each request can be used once.
    pub nonce: String,
}
