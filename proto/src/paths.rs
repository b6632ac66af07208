//! Where the daemons, `tyd` and the units look by default: one name for each place, so a
//! daemon's default and the file another process writes there cannot drift apart. The
//! units in `packaging/systemd` spell the same paths (checked by `tyd`'s tests).

/// The node's configuration: the policy, the keys, the units' settings.
pub const ETC: &str = "/etc/tyd";
/// The signed cluster policy (its signature beside it, `cluster.toml.sig`).
pub const POLICY: &str = "/etc/tyd/cluster.toml";
/// The operator public keys a policy must be signed by.
pub const TRUST: &str = "/etc/tyd/operator.pub";
/// This node's WireGuard private key.
pub const NODE_KEY: &str = "/etc/tyd/node.key";

/// netguard's rollback state (its copy of the policy in force beside it).
pub const NETGUARD_STATE: &str = "/var/lib/tyd/accepted.json";
/// clusterd's rollback state.
pub const CLUSTERD_STATE: &str = "/var/lib/tyd/clusterd.json";
/// joind's rollback state.
pub const JOIND_STATE: &str = "/var/lib/tyd/joind.json";
/// certaintyd's rollback state.
pub const CERTAINTYD_STATE: &str = "/var/lib/tyd/certaintyd.json";
/// A master's join tokens.
pub const TOKENS: &str = "/var/lib/tyd/tokens.json";
/// A master's joins waiting for the operator's approval.
pub const PENDING: &str = "/var/lib/tyd/pending.json";

/// The quarantine list clusterd writes and netguard enforces.
pub const QUARANTINE: &str = "/run/tyd/quarantine.json";
/// The cluster view clusterd writes (`tyd status --cluster`, joind).
pub const VIEW: &str = "/run/tyd/cluster-status.json";
/// certaintyd's control socket.
pub const CERTAINTY_SOCKET: &str = "/run/certaintyd.sock";
