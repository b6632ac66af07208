//! `tyd join any` (CHAOS's `tyd -m any`): finding a member on the local segment. The joiner
//! broadcasts a 5-byte question on the join port (UDP); every member's joind answers with 5
//! bytes from its own address; the joiner tries those that answered, in the order they did,
//! until one works. Nothing here is trusted: a fake answer leads to a host that cannot
//! complete the token's handshake or cannot show the pinned operator key, and the joiner
//! goes on to the next (a rogue answering first made every join fail when only the first
//! answer was tried).

use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

pub const QUESTION: &[u8; 5] = b"TYDD\x01";
pub const ANSWER: &[u8; 5] = b"TYDA\x01";

/// Answerers kept at most: enough to get past a few rogues, not a list to spend minutes on.
pub const MAX_CANDIDATES: usize = 8;
/// How long answers are still gathered after the first one.
const GATHER: Duration = Duration::from_millis(700);

/// Broadcasts the question on `port` and returns the addresses that answered, first answer
/// first: everything heard within [`GATHER`] of the first answer, which must come within
/// `wait` (the question is asked again every half second).
pub fn find_members(port: u16, wait: Duration) -> std::io::Result<Vec<IpAddr>> {
    let s = UdpSocket::bind(SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)))?;
    s.set_broadcast(true)?;
    s.set_read_timeout(Some(Duration::from_millis(100)))?;
    let mut until = Instant::now() + wait;
    let mut asked: Option<Instant> = None;
    let mut buf = [0u8; 16];
    let mut found: Vec<IpAddr> = Vec::new();
    while Instant::now() < until && found.len() < MAX_CANDIDATES {
        if asked.is_none_or(|t| t.elapsed() >= Duration::from_millis(500)) {
            ask(&s, port)?;
            asked = Some(Instant::now());
        }
        match s.recv_from(&mut buf) {
            Ok((n, from)) if &buf[..n] == ANSWER => {
                if found.is_empty() {
                    until = until.min(Instant::now() + GATHER);
                }
                if !found.contains(&from.ip()) {
                    found.push(from.ip());
                }
            }
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(found)
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

/// Answers at most this many questions per second in all. An answer is no larger than its
/// question, so answering is no amplifier, and 5,000 five-byte answers a second cost about
/// 1% of a core; the cap bounds the work. (At 500, one address asking from 125 ports used it
/// all up.)
pub const MAX_ANSWERS_PER_SECOND: u32 = 5000;
/// Answers at most this many questions per second to one address and port: a joiner asks
/// twice a second from one socket; a flood from one address must not take the answers meant
/// for others. The port counts: questions spoofed from a joiner's address (to another port)
/// starved that joiner when the limit was per address.
pub const MAX_ANSWERS_PER_SOURCE: u32 = 4;

/// Which questions a member answers: per second, at most [`MAX_ANSWERS_PER_SOURCE`] to one
/// address and port and [`MAX_ANSWERS_PER_SECOND`] in all. Pure: the caller passes the time.
#[derive(Debug)]
pub struct Answerer {
    window: Option<Instant>,
    answered: u32,
    per_source: std::collections::HashMap<SocketAddr, u32>,
}

impl Default for Answerer {
    fn default() -> Self {
        Self::new()
    }
}

impl Answerer {
    pub fn new() -> Self {
        Self {
            window: None,
            answered: 0,
            per_source: std::collections::HashMap::new(),
        }
    }

    /// Whether to answer a question from `from` at `now` (and count it if so).
    pub fn allow(&mut self, from: SocketAddr, now: Instant) -> bool {
        if self
            .window
            .is_none_or(|w| now.saturating_duration_since(w) >= Duration::from_secs(1))
        {
            self.window = Some(now);
            self.answered = 0;
            self.per_source.clear();
        }
        if self.answered >= MAX_ANSWERS_PER_SECOND {
            return false;
        }
        let n = self.per_source.entry(from).or_default();
        if *n >= MAX_ANSWERS_PER_SOURCE {
            return false;
        }
        *n += 1;
        self.answered += 1;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Attack (a flood of questions, issue 26 #6): one address asking hundreds of times a
    /// second starved real answers (1 real answer to 10 questions). Steps: one address asks
    /// 1000 times within a second, a real joiner asks twice in the same second; the flood
    /// gets its few answers, the joiner both of its own.
    #[test]
    fn a_flood_of_questions_from_one_address_does_not_starve_a_joiner() {
        let mut a = Answerer::new();
        let t0 = Instant::now();
        let flood = SocketAddr::from(([198, 18, 0, 66], 40000));
        let joiner = SocketAddr::from(([198, 18, 0, 5], 40001));
        let mut flood_answered = 0;
        let mut joiner_answered = 0;
        for i in 0..1000u32 {
            let now = t0 + Duration::from_micros(u64::from(i) * 900);
            flood_answered += u32::from(a.allow(flood, now));
            if i == 10 || i == 600 {
                joiner_answered += u32::from(a.allow(joiner, now));
            }
        }
        assert_eq!(joiner_answered, 2);
        assert!(flood_answered <= MAX_ANSWERS_PER_SOURCE, "{flood_answered}");
        // A new second, a new allowance.
        assert!(a.allow(flood, t0 + Duration::from_secs(2)));
    }

    #[test]
    fn only_the_question_gets_an_answer() {
        assert_eq!(answer(QUESTION), Some(ANSWER));
        assert_eq!(answer(b"TYDD\x02"), None);
        assert_eq!(answer(b"TYDD\x01extra"), None);
        assert_eq!(answer(b""), None);
    }

    /// Attack (questions spoofed from the joiner's own address, issue 26 #6, second round):
    /// 2,600 questions a second from the victim's address to another port used up that
    /// address's answers; `tyd join any` heard nothing in 4 of 4 runs. Steps: the flood comes
    /// from the joiner's address, other ports; the joiner's own socket still gets its answers.
    #[test]
    fn questions_spoofed_from_the_joiners_address_do_not_starve_its_socket() {
        let mut a = Answerer::new();
        let t0 = Instant::now();
        let joiner = SocketAddr::from(([198, 18, 0, 11], 51000));
        let mut answered = 0;
        for i in 0..2600u32 {
            let spoofed = SocketAddr::from(([198, 18, 0, 11], 1024 + (i % 7) as u16));
            let now = t0 + Duration::from_micros(u64::from(i) * 380);
            let _ = a.allow(spoofed, now);
            if i % 1300 == 10 {
                answered += u32::from(a.allow(joiner, now));
            }
        }
        assert_eq!(answered, 2);
    }
}
