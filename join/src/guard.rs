//! Who may open a join connection now: a limit on connections at once, in all and per source
//! address (one address cannot hold every slot), and a back-off per source address after
//! each failed attempt (a wrong token, garbage, a timeout), doubling up to a minute, so
//! tokens cannot be guessed at speed. A join a member relays is charged to the address the
//! relay saw the joiner at, never to the member's tunnel address: one joiner's garbage must
//! not shut every join through that member out, nor go unpunished. Pure: the caller passes
//! the time.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// Join connections served at once.
pub const MAX_ACTIVE: usize = 16;
/// Join connections served at once from one address.
pub const MAX_PER_SOURCE: usize = 2;
const FIRST_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// Sources remembered at most (an attacker with many addresses must not grow the map
/// without bound): the oldest back-offs are forgotten first.
const MAX_SOURCES: usize = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Turned {
    /// Too many connections at once.
    Busy,
    /// Too many connections at once from this address.
    SourceBusy,
    /// This source failed recently; it may try again after this long.
    BackedOff(Duration),
}

/// What one join connection tells about the joiner behind it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// No join exchange: a wrong or unknown token, garbage, a timeout.
    Failed,
    /// The joiner proved it holds a token (joined, already a member, or refused after the
    /// handshake), or a member spoke from its tunnel address.
    Proved,
    /// Neither: a join without a token that ended, or a join carried to a master (which
    /// judges it).
    Neutral,
}

#[derive(Debug, Default)]
pub struct Guard {
    active: usize,
    /// Connections under way per source.
    per_source: HashMap<IpAddr, usize>,
    /// Failures in a row and when the source may try again.
    sources: HashMap<IpAddr, (u32, Instant)>,
}

impl Guard {
    /// Admits a connection from `ip` at `now`; the caller calls [`Guard::done`] when it ends.
    pub fn open(&mut self, ip: IpAddr, now: Instant) -> Result<(), Turned> {
        if let Some(&(_, until)) = self.sources.get(&ip)
            && now < until
        {
            return Err(Turned::BackedOff(until - now));
        }
        if self.per_source.get(&ip).copied().unwrap_or(0) >= MAX_PER_SOURCE {
            return Err(Turned::SourceBusy);
        }
        if self.active >= MAX_ACTIVE {
            return Err(Turned::Busy);
        }
        self.active += 1;
        *self.per_source.entry(ip).or_default() += 1;
        Ok(())
    }

    /// Admits a connection from a member's tunnel address (a relay, or a member leaving):
    /// counted in all, not against the member: the joiners it carries are counted by the
    /// address it saw them at ([`Guard::claim`]), so two of them cannot hold every slot of
    /// that member (two waiting joins without a token shut every join through a relay out).
    pub fn open_member(&mut self) -> Result<(), Turned> {
        if self.active >= MAX_ACTIVE {
            return Err(Turned::Busy);
        }
        self.active += 1;
        Ok(())
    }

    /// A relayed joiner seen at `ip` takes one of that address's places, unless it holds
    /// them all already; [`Guard::release`] gives it back.
    pub fn claim(&mut self, ip: IpAddr) -> Result<(), Turned> {
        if self.per_source.get(&ip).copied().unwrap_or(0) >= MAX_PER_SOURCE {
            return Err(Turned::SourceBusy);
        }
        *self.per_source.entry(ip).or_default() += 1;
        Ok(())
    }

    pub fn release(&mut self, ip: IpAddr) {
        if let Some(n) = self.per_source.get_mut(&ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.per_source.remove(&ip);
            }
        }
    }

    /// A member's connection ([`Guard::open_member`]) ended.
    pub fn close_member(&mut self) {
        self.active = self.active.saturating_sub(1);
    }

    /// Whether `ip` is backed off at `now`, and for how long yet: for a joiner a relay
    /// carries, whose address the relay recorded (the connection is the relay's).
    pub fn backed_off(&self, ip: IpAddr, now: Instant) -> Option<Duration> {
        let &(_, until) = self.sources.get(&ip)?;
        (now < until).then(|| until - now)
    }

    /// The connection from `ip` ([`Guard::open`]) ended: its slot is free.
    pub fn close(&mut self, ip: IpAddr) {
        self.active = self.active.saturating_sub(1);
        self.release(ip);
    }

    /// What a joiner at `ip` did, at `now`: a failure backs it off (longer each time), a
    /// join exchange completed with a token forgets its failures, anything else changes
    /// nothing (a join without a token proves no secret: it must not wipe a back-off).
    pub fn record(&mut self, ip: IpAddr, verdict: Verdict, now: Instant) {
        match verdict {
            Verdict::Neutral => {}
            Verdict::Proved => {
                self.sources.remove(&ip);
            }
            Verdict::Failed => self.fail(ip, now),
        }
    }

    fn fail(&mut self, ip: IpAddr, now: Instant) {
        let n = self
            .sources
            .get(&ip)
            .map_or(0, |&(n, _)| n)
            .saturating_add(1);
        let backoff = FIRST_BACKOFF
            .saturating_mul(1u32 << (n - 1).min(16))
            .min(MAX_BACKOFF);
        if self.sources.len() >= MAX_SOURCES
            && !self.sources.contains_key(&ip)
            && let Some(oldest) = self
                .sources
                .iter()
                .min_by_key(|(_, (_, until))| *until)
                .map(|(ip, _)| *ip)
        {
            self.sources.remove(&oldest);
        }
        self.sources.insert(ip, (n, now + backoff));
    }

    /// [`Guard::close`] then [`Guard::record`] for a joiner that came straight to us.
    pub fn done(&mut self, ip: IpAddr, verdict: Verdict, now: Instant) {
        self.close(ip);
        self.record(ip, verdict, now);
    }

    pub fn active(&self) -> usize {
        self.active
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(n: u8) -> IpAddr {
        IpAddr::from([198, 18, 0, n])
    }

    #[test]
    fn failures_back_off_doubling_to_a_minute_and_success_forgets() {
        let mut g = Guard::default();
        let t0 = Instant::now();
        let mut waits = Vec::new();
        let mut now = t0;
        for _ in 0..12 {
            g.open(ip(1), now).unwrap();
            g.done(ip(1), Verdict::Failed, now);
            let Err(Turned::BackedOff(w)) = g.open(ip(1), now) else {
                panic!("not backed off");
            };
            waits.push(w);
            now += w;
        }
        assert_eq!(waits[0], Duration::from_millis(200));
        assert_eq!(waits[1], Duration::from_millis(400));
        assert_eq!(*waits.last().unwrap(), Duration::from_secs(60));
        // Another source is not held back; a success clears the record.
        g.open(ip(2), t0).unwrap();
        g.done(ip(2), Verdict::Proved, t0);
        g.open(ip(1), now).unwrap();
        g.done(ip(1), Verdict::Proved, now);
        assert!(g.open(ip(1), now).is_ok());
    }

    #[test]
    fn connections_at_once_are_limited() {
        let mut g = Guard::default();
        let now = Instant::now();
        for i in 0..MAX_ACTIVE {
            g.open(ip(i as u8), now).unwrap();
        }
        assert_eq!(g.open(ip(200), now), Err(Turned::Busy));
        g.done(ip(0), Verdict::Proved, now);
        assert!(g.open(ip(200), now).is_ok());
        assert_eq!(g.active(), MAX_ACTIVE);
    }

    #[test]
    fn many_sources_do_not_grow_the_record_without_bound() {
        let mut g = Guard::default();
        let now = Instant::now();
        for i in 0..(MAX_SOURCES as u32 + 100) {
            let a = IpAddr::from(i.to_be_bytes());
            g.open(a, now).unwrap();
            g.done(
                a,
                Verdict::Failed,
                now + Duration::from_micros(u64::from(i)),
            );
        }
        assert!(g.sources.len() <= MAX_SOURCES);
    }

    /// Attack (one LAN address, issue 26 #1): 16 connections from one address, each sending
    /// a byte every 4 s, held every slot, and 11 of 11 legitimate joins were refused for a
    /// minute. Steps: one address opens as many as it can: it gets MAX_PER_SOURCE; other
    /// addresses still get the rest; a slot freed is the same address's again.
    #[test]
    fn one_address_cannot_hold_every_slot() {
        let mut g = Guard::default();
        let now = Instant::now();
        let got = (0..MAX_ACTIVE)
            .filter(|_| g.open(ip(66), now).is_ok())
            .count();
        assert_eq!(got, MAX_PER_SOURCE);
        assert_eq!(g.open(ip(66), now), Err(Turned::SourceBusy));
        for i in 1..=(MAX_ACTIVE - MAX_PER_SOURCE) {
            g.open(ip(i as u8), now).unwrap();
        }
        assert_eq!(g.open(ip(200), now), Err(Turned::Busy));
        g.done(ip(66), Verdict::Proved, now);
        assert!(g.open(ip(66), now).is_ok());
    }

    /// Attack (garbage through a relay, issue 26 #1 and #5): a joiner sending garbage every
    /// 0.1 s through a member made the master back off that member's tunnel address (5 of
    /// 5 legitimate joins through it failed); once the relay was spared, the attacker behind
    /// it was never backed off. Steps: ten failures carried by one relay for one joiner
    /// address: the relay still opens at once, the joiner's address is backed off, another
    /// joiner through the same relay is not.
    #[test]
    fn garbage_through_a_relay_backs_off_the_joiner_not_the_relay() {
        let mut g = Guard::default();
        let now = Instant::now();
        let relay = IpAddr::from([10, 77, 0, 2]);
        for _ in 0..10 {
            g.open(relay, now).unwrap();
            g.close(relay);
            g.record(ip(9), Verdict::Failed, now);
        }
        assert!(g.open(relay, now).is_ok());
        assert!(g.backed_off(ip(9), now).is_some());
        assert!(g.backed_off(ip(10), now).is_none());
    }

    /// Attack (issue 26 #5): a token-less join that ended "ok" reset its source's back-off:
    /// 100 tries in 30 s from one source. Steps: a failure, then a join without a token
    /// that ends; the back-off must still hold; only a join that proved a token clears it.
    #[test]
    fn a_join_without_a_token_does_not_wipe_a_back_off() {
        let mut g = Guard::default();
        let now = Instant::now();
        g.open(ip(3), now).unwrap();
        g.done(ip(3), Verdict::Failed, now);
        g.record(ip(3), Verdict::Neutral, now);
        assert!(matches!(g.open(ip(3), now), Err(Turned::BackedOff(_))));
        g.record(ip(3), Verdict::Proved, now);
        assert!(g.open(ip(3), now).is_ok());
    }

    /// Attack (a relay's slots, issue 26 #1, second round): two waiting joins without a
    /// token from one LAN address, relayed by a member, held both of the member's places at
    /// the master for 10 minutes: every join through that member failed at once. Steps: the
    /// relay opens three connections as a member; the joiner it saw at one address claims
    /// two places and is refused a third; another joiner through the same relay still gets
    /// its places.
    #[test]
    fn one_joiner_through_a_relay_cannot_hold_the_relays_places() {
        let mut g = Guard::default();
        for _ in 0..3 {
            g.open_member().unwrap();
        }
        assert!(g.claim(ip(66)).is_ok() && g.claim(ip(66)).is_ok());
        assert_eq!(g.claim(ip(66)), Err(Turned::SourceBusy));
        assert!(g.claim(ip(5)).is_ok());
        g.release(ip(66));
        g.close_member();
        assert!(g.claim(ip(66)).is_ok());
        assert_eq!(g.active(), 2);
    }
}
