//! `[certainty]`: how certaintyd guards a node's root, and what it does when integrity is lost.

use super::*;

/// What certaintyd does when integrity is lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    #[default]
    Reboot,
    Poweroff,
    Exec,
    Alert,
}

/// A name that is not an action.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown action {0:?}")]
pub struct ActionError(String);

impl std::str::FromStr for Action {
    type Err = ActionError;
    fn from_str(s: &str) -> Result<Self, ActionError> {
        match s {
            "reboot" => Ok(Action::Reboot),
            "poweroff" => Ok(Action::Poweroff),
            "exec" => Ok(Action::Exec),
            "alert" => Ok(Action::Alert),
            _ => Err(ActionError(s.to_string())),
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Action::Reboot => "reboot",
            Action::Poweroff => "poweroff",
            Action::Exec => "exec",
            Action::Alert => "alert",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Certainty {
    #[serde(default = "default_root")]
    pub root: PathBuf,
    /// `tree` walks `root`; `device:/dev/ram0` hashes a RAM block device as CHAOS did.
    #[serde(default = "default_source")]
    pub source: String,
    #[serde(default = "default_interval", with = "duration")]
    pub interval: Duration,
    #[serde(default = "default_grace", with = "duration")]
    pub grace: Duration,
    #[serde(default)]
    pub action: Action,
    /// The hook run by the `exec` action, with the report on its stdin.
    pub exec: Option<PathBuf>,
    /// After this long the `exec` hook is abandoned and the node reboots anyway.
    #[serde(default = "default_exec_deadline", with = "duration")]
    pub exec_deadline: Duration,
    /// Keys allowed to sign maintenance windows.
    #[serde(default)]
    pub maintenance_keys: Vec<OperatorPublicKey>,
    #[serde(default = "default_max_maintenance", with = "duration")]
    pub max_maintenance: Duration,
    /// Expected Merkle root (hex BLAKE3), so a node tampered with during the grace period
    /// cannot certify itself.
    pub expected_root: Option<String>,
    /// Watchdog device fed by certaintyd, so killing or stopping it reboots the node.
    pub watchdog: Option<PathBuf>,
    /// Re-hash each file's content every N verifications (1: every one). Metadata is checked
    /// in full every time and any metadata change re-hashes at once; N > 1 trades how fast a
    /// write through a short-lived shared mapping is seen for CPU.
    #[serde(default = "default_content_every")]
    pub content_every: u32,
}

fn default_content_every() -> u32 {
    1
}

impl Default for Certainty {
    fn default() -> Self {
        Self {
            root: default_root(),
            source: default_source(),
            interval: default_interval(),
            grace: default_grace(),
            action: Action::default(),
            exec: None,
            exec_deadline: default_exec_deadline(),
            maintenance_keys: Vec::new(),
            max_maintenance: default_max_maintenance(),
            expected_root: None,
            watchdog: None,
            content_every: default_content_every(),
        }
    }
}

fn default_root() -> PathBuf {
    PathBuf::from("/")
}
fn default_source() -> String {
    "tree".to_string()
}
fn default_interval() -> Duration {
    Duration::from_secs(2)
}
fn default_grace() -> Duration {
    Duration::from_secs(30)
}
fn default_exec_deadline() -> Duration {
    Duration::from_secs(10)
}
fn default_max_maintenance() -> Duration {
    Duration::from_secs(3600)
}
