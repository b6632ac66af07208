//! The drone's LAN address, from the kernel command line as the kernel's own `ip=` option
//! spells it (`ip=<client>:<server>:<gateway>:<netmask>:<hostname>:<device>:<autoconf>`),
//! or DHCP (`ip=dhcp`, or no `ip=`).

use std::net::Ipv4Addr;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetConfig {
    Static {
        device: String,
        address: Ipv4Addr,
        prefix: u8,
        gateway: Option<Ipv4Addr>,
        hostname: Option<String>,
    },
    Dhcp {
        device: String,
        hostname: Option<String>,
    },
    /// `ip=off` / `ip=none`: the operator configures the network.
    Off,
}

impl std::fmt::Display for NetConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NetConfig::Static {
                device,
                address,
                prefix,
                gateway,
                ..
            } => {
                write!(f, "{device} {address}/{prefix}")?;
                match gateway {
                    Some(g) => write!(f, " via {g}"),
                    None => Ok(()),
                }
            }
            NetConfig::Dhcp { device, .. } => write!(f, "{device} by DHCP"),
            NetConfig::Off => f.write_str("off"),
        }
    }
}

pub const DEFAULT_DEVICE: &str = "eth0";

/// Why an `ip=` specification is not one drone-boot can set up.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IpSpecError {
    #[error("ip=: device {0:?} is not an interface name")]
    Device(String),
    #[error("ip=: hostname {0:?} is not a host name")]
    Hostname(String),
    #[error("ip=: client address {0:?} is not IPv4")]
    Address(String),
    #[error("ip=: gateway {0:?} is not IPv4")]
    Gateway(String),
    #[error("ip=: prefix length {0} is over 32")]
    PrefixTooLong(u8),
    #[error("ip=: netmask {0:?} is neither dotted nor a prefix length")]
    NotAMask(String),
    #[error("ip=: netmask {0} is not contiguous")]
    NotContiguous(String),
}

fn prefix_of(mask: &str) -> Result<u8, IpSpecError> {
    if let Ok(bits) = mask.parse::<u8>() {
        return (bits <= 32)
            .then_some(bits)
            .ok_or(IpSpecError::PrefixTooLong(bits));
    }
    let m: Ipv4Addr = mask
        .parse()
        .map_err(|_| IpSpecError::NotAMask(mask.to_string()))?;
    let bits = u32::from(m);
    if bits.leading_ones() + bits.trailing_zeros() != 32 {
        return Err(IpSpecError::NotContiguous(mask.to_string()));
    }
    // At most 32 ones: always a u8.
    Ok(bits.leading_ones() as u8)
}

/// Reads `ip=` from a kernel command line. The last `ip=` wins, as with the kernel.
pub fn parse_cmdline(cmdline: &str) -> Result<NetConfig, IpSpecError> {
    let Some(spec) = cmdline
        .split_whitespace()
        .rev()
        .find_map(|w| w.strip_prefix("ip="))
    else {
        return Ok(NetConfig::Dhcp {
            device: DEFAULT_DEVICE.into(),
            hostname: None,
        });
    };
    match spec {
        "off" | "none" => return Ok(NetConfig::Off),
        "dhcp" | "on" | "any" | "both" => {
            return Ok(NetConfig::Dhcp {
                device: DEFAULT_DEVICE.into(),
                hostname: None,
            });
        }
        _ => {}
    }
    let f: Vec<&str> = spec.split(':').collect();
    let field = |i: usize| f.get(i).copied().filter(|s| !s.is_empty());
    let device = field(5).unwrap_or(DEFAULT_DEVICE).to_string();
    if !policy::validate::valid_interface_name(&device) {
        return Err(IpSpecError::Device(device));
    }
    let hostname = field(4).map(str::to_string);
    if let Some(h) = &hostname
        && !(h.len() <= 63 && h.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'))
    {
        return Err(IpSpecError::Hostname(h.clone()));
    }
    let Some(client) = field(0) else {
        return Ok(NetConfig::Dhcp { device, hostname });
    };
    if matches!(field(6), Some("dhcp" | "on" | "any")) {
        return Ok(NetConfig::Dhcp { device, hostname });
    }
    let address: Ipv4Addr = client
        .parse()
        .map_err(|_| IpSpecError::Address(client.to_string()))?;
    let prefix = match field(3) {
        Some(m) => prefix_of(m)?,
        None => 24,
    };
    let gateway = field(2)
        .map(|g| g.parse().map_err(|_| IpSpecError::Gateway(g.to_string())))
        .transpose()?;
    Ok(NetConfig::Static {
        device,
        address,
        prefix,
        gateway,
        hostname,
    })
}

/// The `ip` invocations that set a static configuration up.
pub fn static_commands(cfg: &NetConfig) -> Vec<Vec<String>> {
    let NetConfig::Static {
        device,
        address,
        prefix,
        gateway,
        ..
    } = cfg
    else {
        return Vec::new();
    };
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    let mut out = vec![
        s(&["link", "set", "lo", "up"]),
        s(&["addr", "add", &format!("{address}/{prefix}"), "dev", device]),
        s(&["link", "set", device, "up"]),
    ];
    if let Some(g) = gateway {
        out.push(s(&["route", "add", "default", "via", &g.to_string()]));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_style_static_configuration() {
        let c = parse_cmdline(
            "console=ttyS0 ip=198.18.0.11::198.18.0.1:255.255.255.0:drone1:eth0:off quiet",
        )
        .unwrap();
        assert_eq!(
            c,
            NetConfig::Static {
                device: "eth0".into(),
                address: "198.18.0.11".parse().unwrap(),
                prefix: 24,
                gateway: Some("198.18.0.1".parse().unwrap()),
                hostname: Some("drone1".into()),
            }
        );
        assert_eq!(
            static_commands(&c)[1],
            vec!["addr", "add", "198.18.0.11/24", "dev", "eth0"]
        );
        assert_eq!(static_commands(&c).len(), 4);
        let short = parse_cmdline("ip=10.0.0.5:::16").unwrap();
        assert!(matches!(
            short,
            NetConfig::Static {
                prefix: 16,
                gateway: None,
                ..
            }
        ));
    }

    #[test]
    fn dhcp_off_and_errors() {
        assert!(matches!(
            parse_cmdline("quiet").unwrap(),
            NetConfig::Dhcp { .. }
        ));
        assert!(matches!(
            parse_cmdline("ip=dhcp").unwrap(),
            NetConfig::Dhcp { .. }
        ));
        assert!(
            matches!(parse_cmdline("ip=:::::eth1:dhcp").unwrap(), NetConfig::Dhcp { device, .. } if device == "eth1")
        );
        assert_eq!(parse_cmdline("ip=off").unwrap(), NetConfig::Off);
        assert!(
            parse_cmdline("ip=300.1.1.1")
                .unwrap_err()
                .to_string()
                .contains("not IPv4")
        );
        assert!(
            parse_cmdline("ip=10.0.0.1:::255.0.255.0")
                .unwrap_err()
                .to_string()
                .contains("not contiguous")
        );
        assert!(
            parse_cmdline("ip=10.0.0.1::::bad_host!")
                .unwrap_err()
                .to_string()
                .contains("host name")
        );
        assert!(
            parse_cmdline("ip=10.0.0.1:::33")
                .unwrap_err()
                .to_string()
                .contains("over 32")
        );
    }
}
