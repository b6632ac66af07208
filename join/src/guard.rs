//! Who may open a join connection now: a limit on connections at once, in all and per source
//! address (one address cannot hold every slot), and a back-off per source address after
//! each failed attempt (a wrong token, garbage, a timeout), doubling up to a minute, so
//! tokens cannot be guessed at speed. A member's tunnel address (a relay, carrying joiners
//! it saw on its LAN and backing them off itself) is not backed off: one joiner's garbage
//! must not shut every join through that member out. Pure: the caller passes the time.

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

    /// The connection from `ip` ended; `failed`: it did not complete a join exchange;
    /// `relay`: `ip` is a member's tunnel address (never backed off).
    pub fn done(&mut self, ip: IpAddr, failed: bool, relay: bool, now: Instant) {
        self.active = self.active.saturating_sub(1);
        if let Some(n) = self.per_source.get_mut(&ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.per_source.remove(&ip);
            }
        }
        if !failed || relay {
            self.sources.remove(&ip);
            return;
        }
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
            g.done(ip(1), true, false, now);
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
        g.done(ip(2), false, false, t0);
        g.open(ip(1), now).unwrap();
        g.done(ip(1), false, false, now);
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
        g.done(ip(0), false, false, now);
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
            g.done(a, true, false, now + Duration::from_micros(u64::from(i)));
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
        g.done(ip(66), false, false, now);
        assert!(g.open(ip(66), now).is_ok());
    }

    /// Attack (garbage through a relay, issue 26 #1): a joiner sending garbage every 0.1 s
    /// through a member made the master back off that member's tunnel address, and 5 of 5
    /// legitimate joins through it failed. Steps: failures from a relay leave it free to
    /// open again at once; the same failures from a LAN address back it off.
    #[test]
    fn a_relay_is_not_backed_off_for_what_it_carries() {
        let mut g = Guard::default();
        let now = Instant::now();
        let relay = IpAddr::from([10, 77, 0, 2]);
        for _ in 0..10 {
            g.open(relay, now).unwrap();
            g.done(relay, true, true, now);
        }
        assert!(g.open(relay, now).is_ok());
        g.open(ip(9), now).unwrap();
        g.done(ip(9), true, false, now);
        assert!(matches!(g.open(ip(9), now), Err(Turned::BackedOff(_))));
    }
}
