//! The tunnel interface's addresses, MTU and up state, read and set over rtnetlink in-process.
//! The `ip` processes this replaces cost about 2 ms each, three or more per full pass.
//!
//! What to change is decided by [`plan`], a plain function; this module's other functions
//! only talk to the kernel.

use std::io;
use std::net::IpAddr;

use netlink_packet_core::{NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST, NetlinkPayload};
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{LinkAttribute, LinkFlags, LinkMessage};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_request::netlink_request_rtnl;

use crate::desired::IfAddr;

/// The MTU of every tunnel interface (WireGuard's default: 1500 less its overhead).
pub const MTU: u32 = 1420;

/// What the kernel has for the interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkState {
    pub addrs: Vec<IfAddr>,
    pub mtu: u32,
    pub up: bool,
}

/// What to change so the interface has exactly `want`, [`MTU`] and is up.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LinkPlan {
    pub add: Vec<IfAddr>,
    pub remove: Vec<IfAddr>,
    pub set_mtu_and_up: bool,
}

pub fn plan(have: &LinkState, want: &[IfAddr]) -> LinkPlan {
    LinkPlan {
        add: want
            .iter()
            .filter(|a| !have.addrs.contains(a))
            .copied()
            .collect(),
        remove: have
            .addrs
            .iter()
            .filter(|a| !want.contains(a))
            .copied()
            .collect(),
        set_mtu_and_up: !have.up || have.mtu != MTU,
    }
}

/// The interface's index, by name.
pub fn index(name: &str) -> io::Result<u32> {
    nix::net::if_::if_nametoindex(name).map_err(io::Error::from)
}

/// Reads the interface's addresses (link-local IPv6 left out: the kernel's, not ours), MTU
/// and up flag.
pub fn read(index: u32) -> io::Result<LinkState> {
    let mut get = LinkMessage::default();
    get.header.index = index;
    let link = netlink_request_rtnl(
        RouteNetlinkMessage::GetLink(get),
        Some(NLM_F_REQUEST | NLM_F_ACK),
    )?;
    let (mtu, up) = link
        .iter()
        .find_map(|m| match &m.payload {
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(l))
                if l.header.index == index =>
            {
                let mtu = l.attributes.iter().find_map(|a| match a {
                    LinkAttribute::Mtu(m) => Some(*m),
                    _ => None,
                });
                Some((mtu.unwrap_or(0), l.header.flags.contains(LinkFlags::Up)))
            }
            _ => None,
        })
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no such link"))?;
    let dump = netlink_request_rtnl(
        RouteNetlinkMessage::GetAddress(AddressMessage::default()),
        Some(NLM_F_REQUEST | NLM_F_DUMP),
    )?;
    let addrs = dump
        .iter()
        .filter_map(|m| match &m.payload {
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewAddress(a))
                if a.header.index == index =>
            {
                address_of(a)
            }
            _ => None,
        })
        .filter(|a| !is_link_local(a.addr))
        .collect();
    Ok(LinkState { addrs, mtu, up })
}

/// An address message's address (IFA_LOCAL, else IFA_ADDRESS, as `ip` shows it).
fn address_of(a: &AddressMessage) -> Option<IfAddr> {
    let find = |local: bool| {
        a.attributes.iter().find_map(|attr| match (attr, local) {
            (AddressAttribute::Local(ip), true) | (AddressAttribute::Address(ip), false) => {
                Some(*ip)
            }
            _ => None,
        })
    };
    let addr = find(true).or_else(|| find(false))?;
    Some(IfAddr {
        addr,
        prefix: a.header.prefix_len,
    })
}

fn is_link_local(addr: IpAddr) -> bool {
    matches!(addr, IpAddr::V6(v6) if (v6.segments()[0] & 0xffc0) == 0xfe80)
}

fn address_message(index: u32, a: &IfAddr) -> AddressMessage {
    let mut m = AddressMessage::default();
    m.header.index = index;
    m.header.prefix_len = a.prefix;
    m.header.family = match a.addr {
        IpAddr::V4(_) => AddressFamily::Inet,
        IpAddr::V6(_) => AddressFamily::Inet6,
    };
    if a.addr.is_ipv4() {
        m.attributes.push(AddressAttribute::Local(a.addr));
    }
    m.attributes.push(AddressAttribute::Address(a.addr));
    m
}

pub fn add_address(index: u32, a: &IfAddr) -> io::Result<()> {
    netlink_request_rtnl(
        RouteNetlinkMessage::NewAddress(address_message(index, a)),
        None,
    )
    .map(drop)
}

pub fn remove_address(index: u32, a: &IfAddr) -> io::Result<()> {
    netlink_request_rtnl(
        RouteNetlinkMessage::DelAddress(address_message(index, a)),
        Some(NLM_F_REQUEST | NLM_F_ACK),
    )
    .map(drop)
}

/// Sets [`MTU`] and the up flag (leaving every other flag as it is).
pub fn set_mtu_and_up(index: u32) -> io::Result<()> {
    let mut m = LinkMessage::default();
    m.header.index = index;
    m.header.flags = LinkFlags::Up;
    m.header.change_mask = LinkFlags::Up;
    m.attributes.push(LinkAttribute::Mtu(MTU));
    netlink_request_rtnl(
        RouteNetlinkMessage::SetLink(m),
        Some(NLM_F_REQUEST | NLM_F_ACK),
    )
    .map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> IfAddr {
        let (addr, prefix) = s.split_once('/').unwrap();
        IfAddr {
            addr: addr.parse().unwrap(),
            prefix: prefix.parse().unwrap(),
        }
    }

    #[test]
    fn the_plan_adds_what_is_missing_removes_what_is_foreign_and_brings_the_link_up() {
        let have = LinkState {
            addrs: vec![a("10.0.0.2/16"), a("10.9.9.9/32")],
            mtu: 1500,
            up: false,
        };
        let want = [a("10.0.0.2/16"), a("fd00::2/64")];
        assert_eq!(
            plan(&have, &want),
            LinkPlan {
                add: vec![a("fd00::2/64")],
                remove: vec![a("10.9.9.9/32")],
                set_mtu_and_up: true,
            }
        );
        // Another prefix length is another address.
        let p = plan(&have, &[a("10.0.0.2/24")]);
        assert_eq!(p.add, vec![a("10.0.0.2/24")]);
        assert!(p.remove.contains(&a("10.0.0.2/16")));
        let settled = LinkState {
            addrs: want.to_vec(),
            mtu: MTU,
            up: true,
        };
        assert_eq!(plan(&settled, &want), LinkPlan::default());
    }
}
