//! The WireGuard device: backend choice, the interface itself (kernel link, or a supervised
//! wireguard-go), its addresses and link state, and peer updates through wireguard-control.

use std::collections::BTreeMap;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime};

use policy::WgPublicKey;
use wireguard_control::{Backend, Device, DeviceUpdate, InterfaceName, Key, PeerConfigBuilder};

use crate::desired::{DesiredPeer, IfAddr};
use crate::link;
use crate::peers::{ActualPeer, PeerOp};

#[derive(Debug, thiserror::Error)]
pub enum WgError {
    #[error("{0}: invalid interface name")]
    Name(String),
    #[error("{iface}: {what}: {source}")]
    Io {
        iface: String,
        what: &'static str,
        source: std::io::Error,
    },
    #[error("{iface}: `{cmd}` failed: {stderr}")]
    Ip {
        iface: String,
        cmd: String,
        stderr: String,
    },
    #[error("{iface}: {bin} did not create its control socket within 5 s")]
    NoSocket { iface: String, bin: String },
}

/// Kernel module where it is loaded (or loadable), userspace wireguard-go otherwise.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    Kernel,
    /// The userspace implementation's binary (`WG_USERSPACE_IMPLEMENTATION` or wireguard-go).
    Userspace(PathBuf),
}

impl Kind {
    pub fn detect(force: Option<&str>) -> Self {
        let userspace = || {
            Kind::Userspace(PathBuf::from(
                std::env::var("WG_USERSPACE_IMPLEMENTATION")
                    .unwrap_or_else(|_| "wireguard-go".into()),
            ))
        };
        match force {
            Some("kernel") => Kind::Kernel,
            Some("userspace") => userspace(),
            _ => {
                let loaded = Path::new("/sys/module/wireguard").exists()
                    || Command::new("modprobe")
                        .arg("wireguard")
                        .stdout(std::process::Stdio::null())
                        .stderr(std::process::Stdio::null())
                        .status()
                        .is_ok_and(|s| s.success());
                if loaded { Kind::Kernel } else { userspace() }
            }
        }
    }

    pub fn backend(&self) -> Backend {
        match self {
            Kind::Kernel => Backend::Kernel,
            Kind::Userspace(_) => Backend::Userspace,
        }
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Kind::Kernel => f.write_str("kernel"),
            Kind::Userspace(bin) => write!(f, "userspace ({})", bin.display()),
        }
    }
}

/// What [`Interface::ensure`] found or did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ensured {
    /// The interface was there and working.
    Present,
    /// A running interface (left by an earlier netguard) was taken over as it is: its peers
    /// keep their sessions.
    Adopted,
    /// It had to be created: it needs its keys, peers and addresses again.
    Created,
}

/// One WireGuard interface under netguard's care.
#[derive(Debug)]
pub struct Interface {
    pub name: String,
    ifname: InterfaceName,
    pub kind: Kind,
    /// The supervised wireguard-go, for the userspace backend.
    child: Option<std::process::Child>,
    /// A wireguard-go this netguard did not start but took over (after a restart).
    adopted: bool,
}

fn ip(iface: &str, args: &[&str]) -> Result<String, WgError> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|source| WgError::Io {
            iface: iface.into(),
            what: "cannot run ip",
            source,
        })?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(WgError::Ip {
            iface: iface.into(),
            cmd: format!("ip {}", args.join(" ")),
            stderr: policy::parse::one_line(&String::from_utf8_lossy(&out.stderr)),
        })
    }
}

pub fn to_key(k: &WgPublicKey) -> Key {
    Key(*k.as_bytes())
}

fn from_key(k: &Key) -> WgPublicKey {
    WgPublicKey::from_bytes(k.0)
}

impl Interface {
    pub fn new(name: &str, kind: Kind) -> Result<Self, WgError> {
        let ifname: InterfaceName = name.parse().map_err(|_| WgError::Name(name.into()))?;
        Ok(Self {
            name: name.into(),
            ifname,
            kind,
            child: None,
            adopted: false,
        })
    }

    /// Whether the tunnel's link exists (up or down).
    pub fn link_exists(&self) -> bool {
        Path::new("/sys/class/net").join(&self.name).exists()
    }

    fn socket(&self) -> PathBuf {
        PathBuf::from(format!("/run/wireguard/{}.sock", self.name))
    }

    /// Creates the interface if it is missing (or its wireguard-go died); takes over a working
    /// one that an earlier netguard left running, so a restart does not break every tunnel
    /// until the peers rekey. Whatever its configuration, the caller then edits it to the
    /// desired state difference by difference.
    pub fn ensure(&mut self) -> Result<Ensured, WgError> {
        let up = match (&self.kind, &mut self.child) {
            (Kind::Kernel, _) => self.link_exists(),
            (Kind::Userspace(_), Some(c)) => matches!(c.try_wait(), Ok(None)) && self.link_exists(),
            (Kind::Userspace(_), None) => {
                self.adopted && self.socket().exists() && self.link_exists()
            }
        };
        if up {
            return Ok(Ensured::Present);
        }
        if matches!(self.kind, Kind::Userspace(_))
            && self.child.is_none()
            && !self.adopted
            && self.link_exists()
            && self.socket().exists()
            && self.read().is_ok()
        {
            self.adopted = true;
            return Ok(Ensured::Adopted);
        }
        self.adopted = false;
        match self.kind.clone() {
            Kind::Kernel => {
                ip(
                    &self.name,
                    &["link", "add", &self.name, "type", "wireguard"],
                )?;
            }
            Kind::Userspace(bin) => {
                if let Some(mut old) = self.child.take() {
                    let _ = old.kill();
                    let _ = old.wait();
                }
                if self.link_exists() {
                    let _ = ip(&self.name, &["link", "del", &self.name]);
                }
                let socket = self.socket();
                let _ = std::fs::remove_file(&socket);
                let child = Command::new(&bin)
                    .args(["-f", &self.name])
                    .env_remove("LOG_LEVEL")
                    .stdin(std::process::Stdio::null())
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::null())
                    .spawn()
                    .map_err(|source| WgError::Io {
                        iface: self.name.clone(),
                        what: "cannot start wireguard-go",
                        source,
                    })?;
                self.child = Some(child);
                // Ready when its control socket accepts a connection: the socket file
                // exists a moment before wireguard-go listens on it (a read in that moment
                // is refused), and the link a moment before either.
                let until = Instant::now() + Duration::from_secs(5);
                while !(self.link_exists() && UnixStream::connect(&socket).is_ok()) {
                    if Instant::now() > until {
                        return Err(WgError::NoSocket {
                            iface: self.name.clone(),
                            bin: bin.display().to_string(),
                        });
                    }
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        }
        Ok(Ensured::Created)
    }

    /// Sets exactly these tunnel addresses (others removed), the MTU, and link up, over
    /// rtnetlink.
    pub fn configure_link(&self, want: &[IfAddr]) -> Result<Vec<String>, WgError> {
        let fail = |what: &'static str| {
            let iface = self.name.clone();
            move |source| WgError::Io {
                iface,
                what,
                source,
            }
        };
        let index = link::index(&self.name).map_err(fail("no such link"))?;
        let have = link::read(index).map_err(fail("cannot read the link"))?;
        let plan = link::plan(&have, want);
        let mut changes = Vec::new();
        for a in &plan.add {
            link::add_address(index, a).map_err(fail("cannot add an address"))?;
            changes.push(format!("address {a} added"));
        }
        for a in &plan.remove {
            link::remove_address(index, a).map_err(fail("cannot remove an address"))?;
            changes.push(format!("address {a} removed"));
        }
        if plan.set_mtu_and_up {
            link::set_mtu_and_up(index).map_err(fail("cannot set the link up"))?;
            changes.push("link up".into());
        }
        Ok(changes)
    }

    pub fn read(&self) -> Result<Device, WgError> {
        Device::get(&self.ifname, self.kind.backend()).map_err(|source| WgError::Io {
            iface: self.name.clone(),
            what: "cannot read device",
            source,
        })
    }

    pub fn apply(&self, update: DeviceUpdate) -> Result<(), WgError> {
        update
            .apply(&self.ifname, self.kind.backend())
            .map_err(|source| WgError::Io {
                iface: self.name.clone(),
                what: "cannot configure device",
                source,
            })
    }

    /// Removes the interface (operator action, and test cleanup).
    pub fn remove(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if self.link_exists() {
            let _ = ip(&self.name, &["link", "del", &self.name]);
        }
    }
}

/// The device's peers in the planner's terms.
pub fn actual_peers(dev: &Device) -> BTreeMap<WgPublicKey, ActualPeer> {
    dev.peers
        .iter()
        .map(|p| {
            let age = p
                .stats
                .last_handshake_time
                .and_then(|t| SystemTime::now().duration_since(t).ok());
            (
                from_key(&p.config.public_key),
                ActualPeer {
                    endpoint: p.config.endpoint,
                    allowed_ips: p
                        .config
                        .allowed_ips
                        .iter()
                        .map(|a| IfAddr {
                            addr: a.address,
                            prefix: a.cidr,
                        })
                        .collect(),
                    keepalive: p.config.persistent_keepalive_interval.filter(|&k| k != 0),
                    preshared_key: p
                        .config
                        .preshared_key
                        .as_ref()
                        .is_some_and(|k| k.as_bytes() != [0u8; 32].as_slice()),
                    handshake_age: age,
                },
            )
        })
        .collect()
}

/// A peer's full configuration; `with_endpoint` false leaves the endpoint it has (a roaming
/// peer's) untouched.
fn peer_builder(key: &WgPublicKey, p: &DesiredPeer, with_endpoint: bool) -> PeerConfigBuilder {
    // Never a preshared key: the policy has none, and one set behind netguard's back is
    // drift (zero unsets it).
    let mut b = PeerConfigBuilder::new(&to_key(key))
        .replace_allowed_ips()
        .unset_preshared_key();
    for a in &p.allowed_ips {
        b = b.add_allowed_ip(a.addr, a.prefix);
    }
    if with_endpoint && let Some(ep) = p.endpoint {
        b = b.set_endpoint(ep);
    }
    match p.keepalive {
        Some(k) => b.set_persistent_keepalive_interval(k),
        None => b.unset_persistent_keepalive(),
    }
}

/// One device update for all planned peer operations (none replaces the whole peer list).
pub fn update_for(ops: &[PeerOp]) -> DeviceUpdate {
    let mut u = DeviceUpdate::new();
    for op in ops {
        u = match op {
            PeerOp::Add { key, peer } => u.add_peer(peer_builder(key, peer, true)),
            PeerOp::Remove { key } => u.remove_peer_by_key(&to_key(key)),
            PeerOp::Rotate { old, key, peer } => u
                .remove_peer_by_key(&to_key(old))
                .add_peer(peer_builder(key, peer, true)),
            PeerOp::Update {
                key,
                peer,
                endpoint,
                ..
            } => u.add_peer(peer_builder(key, peer, *endpoint)),
        };
    }
    u
}
