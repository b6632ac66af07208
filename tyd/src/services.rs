//! Starting this node's daemons after `tyd init` or `tyd join`: the systemd units the package
//! installs, enabled and started, with the two per-node settings they read from `/etc/tyd`
//! (`joind.env` on a master, `clusterd.env` where no certaintyd runs). Where the units cannot
//! be used (no systemd, units not installed, files outside `/etc/tyd`), tyd says why and prints
//! the command lines instead. The plan is pure; `start` runs `systemctl`.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The directory, node key and token store the units read (their `ExecStart` lines).
pub const UNIT_DIR: &str = proto::paths::ETC;
pub const UNIT_KEY: &str = proto::paths::NODE_KEY;
pub const UNIT_TOKENS: &str = proto::paths::TOKENS;

/// clusterd's view of the cluster, as the unit writes it.
pub const UNIT_VIEW: &str = proto::paths::VIEW;
/// Every unit of the package, in the order they stop.
pub const ALL_UNITS: [&str; 4] = [
    "joind.service",
    "clusterd.service",
    "certaintyd.service",
    "netguard.service",
];
/// How long `tyd init` and `tyd join` wait for netguard's table after starting the units
/// (wireguard-go's start included).
pub const IN_FORCE_WAIT: std::time::Duration = std::time::Duration::from_secs(20);

/// What this node is, as far as its daemons go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeKind {
    /// Holds the operator key: joind admits joins.
    Master,
    /// Any other member: joind relays joins to a master.
    Member,
}

/// The root filesystem: certaintyd guards RAM roots only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Root {
    Ram,
    Disk,
}

/// Why the units are not used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotStarted {
    /// `--no-start`.
    Asked,
    /// PID 1 is not systemd.
    NoSystemd,
    /// The package's units are not installed.
    NoUnits,
    /// The keys and policy are not where the units read them.
    ElsewhereThanUnits(PathBuf),
}

impl std::fmt::Display for NotStarted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NotStarted::Asked => f.write_str("--no-start"),
            NotStarted::NoSystemd => f.write_str("systemd is not running on this machine"),
            NotStarted::NoUnits => {
                f.write_str("the units are not installed (install the tyd package)")
            }
            NotStarted::ElsewhereThanUnits(p) => {
                write!(
                    f,
                    "{} is not where the units read ({UNIT_DIR})",
                    p.display()
                )
            }
        }
    }
}

/// What starting the daemons means on this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// `(file, variable, value)` to set in the units' environment files.
    pub settings: Vec<(PathBuf, &'static str, String)>,
    /// Units to enable and start, in order.
    pub units: Vec<&'static str>,
}

/// The units and settings for a node of `kind` on `root`, its files in `dir`.
pub fn plan(kind: NodeKind, root: Root, dir: &Path) -> Plan {
    let mut settings = Vec::new();
    let mut units = vec!["netguard.service", "clusterd.service", "joind.service"];
    if kind == NodeKind::Master {
        settings.push((dir.join("joind.env"), "JOIND_ARGS", master_key_arg(dir)));
    }
    match root {
        Root::Ram => units.push("certaintyd.service"),
        Root::Disk => settings.push((dir.join("clusterd.env"), "CERTAINTY_SOCKET", "none".into())),
    }
    Plan { settings, units }
}

/// What a master's joind signs with: its admission key when `tyd init` made one (DIR/
/// admission.key), else the operator key beside it (a cluster made before admission keys, or
/// with `--no-admission-key`).
fn master_key_arg(dir: &Path) -> String {
    let admission = dir.join("admission.key");
    if admission.exists() {
        format!("--admission-key {}", admission.display())
    } else {
        format!("--operator-key {}", dir.join("operator.key").display())
    }
}

/// The daemons' command lines for a node started by hand: files in `dir` (each daemon's
/// anti-rollback state and the cluster view too, so two nodes on one machine share none),
/// its key at `key`, a master's tokens at `tokens`.
pub fn command_lines(root: Root, dir: &Path, key: &Path, tokens: Option<&Path>) -> Vec<String> {
    let d = dir.display();
    let common = format!(
        "--policy {d}/cluster.toml --trust {d}/operator.pub --key {}",
        key.display()
    );
    let view = format!("--view {d}/cluster-status.json");
    let certainty = match root {
        Root::Ram => "",
        Root::Disk => " --certainty-socket none",
    };
    let joind = format!("joind {common} --state {d}/joind.json {view}");
    let joind = match tokens {
        Some(t) => format!("{joind} {} --tokens {}", master_key_arg(dir), t.display()),
        None => joind,
    };
    vec![
        format!("netguard {common} --state {d}/accepted.json"),
        format!("clusterd {common} --state {d}/clusterd.json {view}{certainty}"),
        joind,
    ]
}

/// `text` (an environment file) with `key=value`: the first uncommented assignment of `key`
/// replaced, or the line appended. Comments and other lines stay.
pub fn set_variable(text: &str, key: &str, value: &str) -> String {
    let line = format!("{key}={value}");
    let mut out = Vec::new();
    let mut done = false;
    for l in text.lines() {
        let assigns = l
            .trim_start()
            .strip_prefix(key)
            .is_some_and(|rest| rest.trim_start().starts_with('='));
        if assigns && !done {
            out.push(line.clone());
            done = true;
        } else if !assigns {
            out.push(l.to_string());
        }
    }
    if !done {
        out.push(line);
    }
    let mut s = out.join("\n");
    s.push('\n');
    s
}

/// Whether the units can be used for files in `dir`, the node key at `key` and a master's
/// tokens in `tokens`. The paths are checked first: `Asked` means the units would fit.
pub fn usable(
    no_start: bool,
    dir: &Path,
    key: &Path,
    tokens: Option<&Path>,
) -> Result<(), NotStarted> {
    let expected = [
        (Some(dir), UNIT_DIR),
        (Some(key), UNIT_KEY),
        (tokens, UNIT_TOKENS),
    ];
    for (path, unit_path) in expected {
        if let Some(p) = path
            && p != Path::new(unit_path)
        {
            return Err(NotStarted::ElsewhereThanUnits(p.to_path_buf()));
        }
    }
    if no_start {
        return Err(NotStarted::Asked);
    }
    // sd_booted(3): systemd is PID 1 when this directory exists.
    if !Path::new("/run/systemd/system").is_dir() {
        return Err(NotStarted::NoSystemd);
    }
    let installed = Command::new("systemctl")
        .args(["cat", "--", "netguard.service"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !installed {
        return Err(NotStarted::NoUnits);
    }
    Ok(())
}

/// The root filesystem's kind, from statfs(2) on `/`.
pub fn root() -> Root {
    if join::service::root_in_ram() {
        Root::Ram
    } else {
        Root::Disk
    }
}

/// What went wrong setting the units up or starting them.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("{}: {source}", path.display())]
    Settings {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Write(#[from] policy::fsutil::FileError),
    #[error("systemctl: {0}")]
    Spawn(std::io::Error),
    /// `systemctl` said no (its words, without the `--`).
    #[error("systemctl {command}: {stderr}")]
    Systemctl { command: String, stderr: String },
    #[error(
        "netguard's firewall (table inet netguard) is not in force {after_s} s after the start (netguard.service: {active})"
    )]
    NotInForce { after_s: u64, active: String },
}

/// Writes the settings into the units' environment files.
pub fn write_settings(plan: &Plan) -> Result<(), ServiceError> {
    for (file, key, value) in &plan.settings {
        let old = match std::fs::read_to_string(file) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(source) => {
                return Err(ServiceError::Settings {
                    path: file.clone(),
                    source,
                });
            }
        };
        let new = set_variable(&old, key, value);
        if new != old {
            policy::fsutil::atomic_write(file, new.as_bytes(), 0o644)?;
        }
    }
    Ok(())
}

/// Runs `systemctl enable --now` on the units.
pub fn start(plan: &Plan) -> Result<(), ServiceError> {
    systemctl(&["enable", "--now", "--"], &plan.units)
}

/// Runs `systemctl disable --now` on `units`.
pub fn stop(units: &[&str]) -> Result<(), ServiceError> {
    systemctl(&["disable", "--now", "--"], units)
}

fn systemctl(args: &[&str], units: &[&str]) -> Result<(), ServiceError> {
    let out = Command::new("systemctl")
        .args(args)
        .args(units)
        .output()
        .map_err(ServiceError::Spawn)?;
    if !out.status.success() {
        let words: Vec<&str> = args
            .iter()
            .chain(units)
            .copied()
            .filter(|w| *w != "--")
            .collect();
        return Err(ServiceError::Systemctl {
            command: words.join(" "),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(())
}

/// Waits until netguard's table is in force (polled every 200 ms), or says what is missing
/// after `limit`.
pub fn wait_in_force(limit: std::time::Duration) -> Result<(), ServiceError> {
    let start = std::time::Instant::now();
    loop {
        if matches!(netguard::nft::read_table(), Ok(Some(_))) {
            return Ok(());
        }
        if start.elapsed() >= limit {
            let active = Command::new("systemctl")
                .args(["is-active", "netguard.service"])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
                .unwrap_or_else(|e| format!("unknown ({e})"));
            return Err(ServiceError::NotInForce {
                after_s: limit.as_secs(),
                active,
            });
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_master_on_disk_admits_joins_and_runs_no_certaintyd() {
        let p = plan(NodeKind::Master, Root::Disk, Path::new("/etc/tyd"));
        assert_eq!(
            p.units,
            ["netguard.service", "clusterd.service", "joind.service"]
        );
        assert_eq!(
            p.settings,
            vec![
                (
                    PathBuf::from("/etc/tyd/joind.env"),
                    "JOIND_ARGS",
                    "--operator-key /etc/tyd/operator.key".to_string()
                ),
                (
                    PathBuf::from("/etc/tyd/clusterd.env"),
                    "CERTAINTY_SOCKET",
                    "none".to_string()
                ),
            ]
        );
    }

    #[test]
    fn a_member_in_ram_relays_joins_and_runs_certaintyd() {
        let p = plan(NodeKind::Member, Root::Ram, Path::new("/etc/tyd"));
        assert_eq!(p.units.last(), Some(&"certaintyd.service"));
        assert!(p.settings.is_empty());
    }

    #[test]
    fn a_variable_is_replaced_once_or_appended_and_comments_stay() {
        let text = "# JOIND_ARGS=--example\nJOIND_ARGS=\nOTHER=1\nJOIND_ARGS = old\n";
        assert_eq!(
            set_variable(text, "JOIND_ARGS", "--operator-key k"),
            "# JOIND_ARGS=--example\nJOIND_ARGS=--operator-key k\nOTHER=1\n"
        );
        assert_eq!(set_variable("", "A", "b"), "A=b\n");
        assert_eq!(set_variable("AB=1\n", "A", "2"), "AB=1\nA=2\n");
    }

    #[test]
    fn units_are_used_only_for_their_own_paths() {
        let (dir, key) = (Path::new("/etc/tyd"), Path::new("/etc/tyd/node.key"));
        assert_eq!(usable(true, dir, key, None), Err(NotStarted::Asked));
        assert_eq!(
            usable(true, Path::new("/tmp/x"), key, None),
            Err(NotStarted::ElsewhereThanUnits(PathBuf::from("/tmp/x")))
        );
        assert_eq!(
            usable(false, dir, Path::new("/run/k"), None),
            Err(NotStarted::ElsewhereThanUnits(PathBuf::from("/run/k")))
        );
        assert_eq!(
            usable(false, dir, key, Some(Path::new("/tmp/t.json"))),
            Err(NotStarted::ElsewhereThanUnits(PathBuf::from("/tmp/t.json")))
        );
    }

    #[test]
    fn hand_started_command_lines_follow_the_node() {
        let dir = Path::new("/x");
        let key = Path::new("/x/node.key");
        let master = command_lines(Root::Disk, dir, key, Some(Path::new("/t.json")));
        assert_eq!(
            master[1],
            "clusterd --policy /x/cluster.toml --trust /x/operator.pub --key /x/node.key --state /x/clusterd.json --view /x/cluster-status.json --certainty-socket none"
        );
        assert_eq!(
            master[0],
            "netguard --policy /x/cluster.toml --trust /x/operator.pub --key /x/node.key --state /x/accepted.json"
        );
        assert!(master[2].contains("--state /x/joind.json --view /x/cluster-status.json"));
        assert!(master[2].ends_with("--operator-key /x/operator.key --tokens /t.json"));
        let member = command_lines(Root::Ram, dir, key, None);
        assert!(!member[1].contains("certainty-socket"));
        assert!(!member[2].contains("operator-key"));
    }
}
