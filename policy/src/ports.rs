//! Port ranges as operators write them: `723`, or `"5000-5700"`.

use std::fmt;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

/// Why a port or a range is not one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PortError {
    #[error("port 0 is not a valid port")]
    Zero,
    #[error("reversed port range {0}-{1}")]
    Reversed(u16, u16),
    #[error("{0:?} is not a port number")]
    NotANumber(String),
    #[error("port {0} is above 65535")]
    TooLarge(u32),
}

/// An inclusive range of ports, never containing port 0 and never reversed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PortRange {
    start: u16,
    end: u16,
}

impl PortRange {
    /// Checked constructor: the only way to build a range, so none is ever invalid.
    pub fn new(start: u16, end: u16) -> Result<Self, PortError> {
        if start == 0 || end == 0 {
            return Err(PortError::Zero);
        }
        if start > end {
            return Err(PortError::Reversed(start, end));
        }
        Ok(Self { start, end })
    }

    pub fn single(port: u16) -> Result<Self, PortError> {
        Self::new(port, port)
    }

    pub fn start(&self) -> u16 {
        self.start
    }

    pub fn end(&self) -> u16 {
        self.end
    }

    pub fn contains(&self, port: u16) -> bool {
        (self.start..=self.end).contains(&port)
    }

    /// Whether the two ranges share a port.
    pub fn overlaps(&self, other: &PortRange) -> bool {
        self.start <= other.end && other.start <= self.end
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.start == self.end {
            write!(f, "{}", self.start)
        } else {
            write!(f, "{}-{}", self.start, self.end)
        }
    }
}

impl std::str::FromStr for PortRange {
    type Err = PortError;

    fn from_str(s: &str) -> Result<Self, PortError> {
        let parse = |p: &str| -> Result<u16, PortError> {
            let p = p.trim();
            p.parse::<u32>()
                .map_err(|_| PortError::NotANumber(p.to_string()))
                .and_then(|n| u16::try_from(n).map_err(|_| PortError::TooLarge(n)))
        };
        match s.split_once('-') {
            Some((a, b)) => Self::new(parse(a)?, parse(b)?),
            None => Self::single(parse(s)?),
        }
    }
}

impl Serialize for PortRange {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.start == self.end {
            s.serialize_u16(self.start)
        } else {
            s.serialize_str(&self.to_string())
        }
    }
}

impl<'de> Deserialize<'de> for PortRange {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = PortRange;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a port number or a range such as \"5000-5700\"")
            }
            fn visit_i64<E: de::Error>(self, n: i64) -> Result<PortRange, E> {
                let port = u16::try_from(n)
                    .map_err(|_| E::custom(format!("port {n} is outside 1-65535")))?;
                PortRange::single(port).map_err(E::custom)
            }
            fn visit_u64<E: de::Error>(self, n: u64) -> Result<PortRange, E> {
                let port = u16::try_from(n)
                    .map_err(|_| E::custom(format!("port {n} is outside 1-65535")))?;
                PortRange::single(port).map_err(E::custom)
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<PortRange, E> {
                s.parse().map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

/// The TCP and UDP ports of one service or one allow-list entry.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortSet {
    #[serde(default)]
    pub tcp: Vec<PortRange>,
    #[serde(default)]
    pub udp: Vec<PortRange>,
    /// Allow-list entries only: open on nodes with one of these roles (empty: every node),
    /// e.g. a master's boot server (`drone pxe`: udp 67, 69, 4011, 6900-6999).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub roles: Vec<crate::model::Role>,
}

impl PortSet {
    pub fn is_empty(&self) -> bool {
        self.tcp.is_empty() && self.udp.is_empty()
    }

    /// Whether an allow-list entry is open on a node with `roles`.
    pub fn open_on(&self, roles: &[crate::model::Role]) -> bool {
        self.roles.is_empty() || self.roles.iter().any(|r| roles.contains(r))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_single_ports_and_ranges() {
        assert_eq!("723".parse::<PortRange>(), PortRange::single(723));
        let r: PortRange = "5000-5700".parse().unwrap();
        assert_eq!((r.start(), r.end()), (5000, 5700));
        assert_eq!(r.to_string(), "5000-5700");
    }

    #[test]
    fn rejects_zero_reversed_and_large() {
        assert_eq!(
            "0".parse::<PortRange>().unwrap_err().to_string(),
            "port 0 is not a valid port"
        );
        assert_eq!(
            "5700-5000".parse::<PortRange>().unwrap_err().to_string(),
            "reversed port range 5700-5000"
        );
        assert_eq!(
            "70000".parse::<PortRange>().unwrap_err().to_string(),
            "port 70000 is above 65535"
        );
        assert_eq!(
            "ssh".parse::<PortRange>().unwrap_err().to_string(),
            "\"ssh\" is not a port number"
        );
    }
}
