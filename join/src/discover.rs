//! `tyd join any` (CHAOS's `tyd -m any`): finding a member on the local segment. The joiner
//! broadcasts a 5-byte question on the join port (UDP); every member's joind answers with 5
//! bytes from its own address; the joiner joins the first that answered. Nothing here is
//! trusted: a fake answer leads to a member that cannot complete the token's handshake or
//! cannot show the pinned operator key.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

pub const QUESTION: &[u8; 5] = b"TYDD\x01";
pub const ANSWER: &[u8; 5] = b"TYDA\x01";

/// Broadcasts the question on `port` and returns the address of the first member that
/// answers within `wait` (asking again every half second).
pub fn find_member(port: u16, wait: Duration) -> std::io::Result<Option<IpAddr>> {
    let s = UdpSocket::bind(SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)))?;
    s.set_broadcast(true)?;
    s.set_read_timeout(Some(Duration::from_millis(100)))?;
    let until = Instant::now() + wait;
    let mut asked: Option<Instant> = None;
    let mut buf = [0u8; 16];
    while Instant::now() < until {
        if asked.is_none_or(|t| t.elapsed() >= Duration::from_millis(500)) {
            ask(&s, port)?;
            asked = Some(Instant::now());
        }
        match s.recv_from(&mut buf) {
            Ok((n, from)) if &buf[..n] == ANSWER => return Ok(Some(from.ip())),
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(None)
}

/// The broadcast addresses of this host's IPv4 interfaces that are up (a node on a segment
/// with no default route has no route to 255.255.255.255).
fn broadcast_addresses() -> Vec<Ipv4Addr> {
    use nix::net::if_::InterfaceFlags;
    let Ok(addrs) = nix::ifaddrs::getifaddrs() else {
        return Vec::new();
    };
    let mut out: Vec<Ipv4Addr> = addrs
        .filter(|a| {
            a.flags.contains(InterfaceFlags::IFF_UP)
                && a.flags.contains(InterfaceFlags::IFF_BROADCAST)
                && !a.flags.contains(InterfaceFlags::IFF_LOOPBACK)
        })
        // From address and netmask: `ip addr add` sets no broadcast address unless asked.
        .filter_map(|a| {
            let ip = u32::from(a.address?.as_sockaddr_in()?.ip());
            let mask = u32::from(a.netmask?.as_sockaddr_in()?.ip());
            (mask != u32::MAX).then(|| Ipv4Addr::from(ip | !mask))
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

/// Asks every segment this host is on, and the limited broadcast address; fails only if no
/// question could be sent at all.
fn ask(s: &UdpSocket, port: u16) -> std::io::Result<()> {
    let mut last = None;
    let mut sent = false;
    for b in broadcast_addresses()
        .into_iter()
        .chain([Ipv4Addr::BROADCAST])
    {
        match s.send_to(QUESTION, SocketAddr::from((b, port))) {
            Ok(_) => sent = true,
            Err(e) => last = Some(e),
        }
    }
    match (sent, last) {
        (false, Some(e)) => Err(e),
        _ => Ok(()),
    }
}

/// A member's side: the answer to `datagram`, if it is the question.
pub fn answer(datagram: &[u8]) -> Option<&'static [u8; 5]> {
    (datagram == QUESTION).then_some(ANSWER)
}

/// Answers at most this many questions per second in all (a flood gets a trickle).
pub const MAX_ANSWERS_PER_SECOND: u32 = 20;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_question_gets_an_answer() {
        assert_eq!(answer(QUESTION), Some(ANSWER));
        assert_eq!(answer(b"TYDD\x02"), None);
        assert_eq!(answer(b"TYDD\x01extra"), None);
        assert_eq!(answer(b""), None);
    }
}
