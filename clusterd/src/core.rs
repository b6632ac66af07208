//! The protocol as plain decisions, without sockets or clocks: the shell feeds it what
//! arrived and the time (a monotonic `Duration`), and carries out the [`Action`]s it returns.
//! The simulation (`examples/simulate.rs`) runs this same code over a lossy simulated network.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::time::Duration;

use policy::NodeId;
use rand_core::RngCore;

use crate::proto::{Heartbeat, Integrity, Message};

/// How many random peers a node offers a newer policy to at once.
pub const FANOUT: usize = 4;
/// A fetch that has not finished by then is abandoned (the next heartbeat retries).
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// Fetches under way at once, each from another peer: a peer that drips its answer holds one
/// of them, not every newer policy behind it.
pub const MAX_FETCHES: usize = 3;

/// How a fetch ended, as the shell saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fetched {
    /// A verified policy of this serial arrived (taken here, or already in force).
    Delivered { serial: u64 },
    /// Could not connect, or the connection broke: the peer may be honest and down.
    Network,
    /// What it sent was refused (bad signature, malformed, oversized, another cluster), or it
    /// did not finish within the transfer's time: a peer that is slow on purpose is treated
    /// as one that lies.
    Refused,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub me: NodeId,
    pub heartbeat: Duration,
    pub quarantine: bool,
    pub quarantine_after: Duration,
    /// Nodes the policy lets run without certaintyd (`require_certainty`).
    pub certainty_exempt: BTreeSet<NodeId>,
}

impl Config {
    pub fn from_policy(me: NodeId, d: &policy::Distribution, nodes: &[policy::Node]) -> Self {
        Self {
            me,
            heartbeat: d.heartbeat,
            quarantine: d.quarantine,
            quarantine_after: d.quarantine_after,
            certainty_exempt: nodes
                .iter()
                .filter(|n| !d.require_certainty.of(&n.roles))
                .map(|n| n.id)
                .collect(),
        }
    }
}

/// Why a node has no services.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reason {
    /// Its certaintyd found a change.
    IntegrityLost,
    /// Its certaintyd does not answer.
    CertaintyUnreachable,
    /// Its root is not the pinned one.
    RootMismatch,
    /// Not heard from for this long.
    Silent(Duration),
    /// It booted and has no verified baseline yet (grace period).
    NotVerified,
}

impl Reason {
    /// Whether readmission needs a fresh boot: a node that lost integrity stays out until it
    /// has rebooted into a verified image.
    pub fn needs_reboot(&self) -> bool {
        matches!(self, Reason::IntegrityLost | Reason::RootMismatch)
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::IntegrityLost => f.write_str("it reports lost integrity"),
            Reason::CertaintyUnreachable => f.write_str("its certaintyd does not answer"),
            Reason::RootMismatch => f.write_str("its root is not the pinned one"),
            Reason::Silent(d) => write!(f, "silent for {} s", d.as_secs()),
            Reason::NotVerified => f.write_str("no verified baseline yet"),
        }
    }
}

/// What the shell is to do.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    Send {
        to: NodeId,
        msg: Message,
    },
    /// Fetch the policy from this peer over TCP; report with [`Core::fetch_done`].
    Fetch {
        from: NodeId,
        serial: u64,
    },
    Quarantine {
        node: NodeId,
        reason: Reason,
    },
    Readmit {
        node: NodeId,
        why: String,
    },
}

/// Good heartbeats in a row a quarantined node must send before it is readmitted: one late
/// datagram on a loaded LAN must not make it flap in and out (each flap is an edit on every
/// peer's firewall).
pub const READMIT_AFTER: u32 = 2;

/// A peer's quarantine: why, since when, and in which boot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quarantine {
    pub reason: Reason,
    pub since: Duration,
    pub boot_id: Option<String>,
    /// Good heartbeats in a row since (counts toward [`READMIT_AFTER`]).
    pub good: u32,
}

/// What this node knows of one peer.
#[derive(Debug, Clone, PartialEq)]
pub struct Peer {
    pub name: String,
    /// When it entered the map here: silence is counted from then until first heard.
    pub known_since: Duration,
    pub heard: Option<Duration>,
    pub last: Option<Heartbeat>,
    pub quarantine: Option<Quarantine>,
}

/// One node's side of the protocol.
#[derive(Debug)]
pub struct Core {
    cfg: Config,
    peers: BTreeMap<NodeId, Peer>,
    serial: u64,
    digest: String,
    /// Fetches under way: from whom, for which offered serial, since when.
    fetching: BTreeMap<NodeId, (u64, Duration)>,
    /// Peers whose heartbeat showed a newer serial than this node's: pulled from one of them,
    /// chosen at random, at the next tick (if no offer has brought it by then), so that one
    /// node's heartbeat does not send every peer to fetch from that one node at once.
    newer: BTreeMap<NodeId, u64>,
    /// Peers whose fetched policy was refused (bad signature, rolled back, malformed): not
    /// fetched from again until this node's policy changes, so a hostile member offering a
    /// "newer" serial over and over costs one fetch, not one per offer.
    spoiled: std::collections::BTreeSet<NodeId>,
    /// Heartbeats received whose claimed node was not the sender (counted, not logged each).
    pub impostors: u64,
}

impl Core {
    pub fn new(cfg: Config) -> Self {
        Self {
            cfg,
            peers: BTreeMap::new(),
            serial: 0,
            digest: String::new(),
            fetching: BTreeMap::new(),
            newer: BTreeMap::new(),
            spoiled: std::collections::BTreeSet::new(),
            impostors: 0,
        }
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    pub fn serial(&self) -> u64 {
        self.serial
    }

    pub fn peers(&self) -> &BTreeMap<NodeId, Peer> {
        &self.peers
    }

    /// A policy is in force here (at start, fetched, or put in place locally): the peers
    /// follow its live node map, and a newer serial is offered to a few random peers at once.
    pub fn policy_in_force(
        &mut self,
        cfg: Config,
        serial: u64,
        digest: &str,
        members: &[(NodeId, String)],
        now: Duration,
        rng: &mut dyn RngCore,
    ) -> Vec<Action> {
        self.cfg = cfg;
        let newer = serial > self.serial;
        self.serial = serial;
        self.digest = digest.to_string();
        let me = self.cfg.me;
        self.peers
            .retain(|id, _| members.iter().any(|(m, _)| m == id));
        for (id, name) in members.iter().filter(|(id, _)| *id != me) {
            self.peers.entry(*id).or_insert_with(|| Peer {
                name: name.clone(),
                known_since: now,
                heard: None,
                last: None,
                quarantine: None,
            });
        }
        self.newer.retain(|_, s| *s > serial);
        if newer {
            self.spoiled.clear();
        }
        if !newer {
            return Vec::new();
        }
        let offer = Message::Offer {
            serial,
            digest: digest.to_string(),
        };
        self.random_peers(FANOUT, rng)
            .into_iter()
            .map(|to| Action::Send {
                to,
                msg: offer.clone(),
            })
            .collect()
    }

    /// Up to `k` distinct peers, chosen at random.
    fn random_peers(&self, k: usize, rng: &mut dyn RngCore) -> Vec<NodeId> {
        let mut ids: Vec<NodeId> = self.peers.keys().copied().collect();
        let k = k.min(ids.len());
        for i in 0..k {
            let span = (ids.len() - i) as u64;
            let j = i + (rng.next_u64() % span) as usize;
            ids.swap(i, j);
        }
        ids.truncate(k);
        ids
    }

    /// Takes over a quarantine decided before a restart (from the quarantine list), so a
    /// restart never readmits anyone: `until_reboot` keeps it until a new boot id.
    pub fn restore_quarantine(
        &mut self,
        id: NodeId,
        until_reboot: bool,
        boot_id: Option<String>,
        now: Duration,
    ) {
        if let Some(p) = self.peers.get_mut(&id) {
            p.quarantine = Some(Quarantine {
                reason: if until_reboot {
                    Reason::IntegrityLost
                } else {
                    Reason::Silent(Duration::ZERO)
                },
                since: now,
                boot_id,
                good: 0,
            });
        }
    }

    /// A datagram from `from` (the node whose tunnel address sent it).
    pub fn receive(&mut self, from: NodeId, msg: Message, now: Duration) -> Vec<Action> {
        let mut out = Vec::new();
        let Some(peer) = self.peers.get_mut(&from) else {
            return out;
        };
        match msg {
            Message::Heartbeat(hb) => {
                if hb.node != from.get() {
                    // One member speaking for another: never believed.
                    self.impostors += 1;
                    return out;
                }
                if hb.serial > self.serial {
                    self.newer.insert(from, hb.serial);
                }
                peer.heard = Some(now);
                peer.last = Some(hb);
                out.extend(self.judge(from, now));
            }
            // Push: fetched at once.
            Message::Offer { serial, .. } => out.extend(self.maybe_fetch(from, serial, now)),
        }
        out
    }

    fn maybe_fetch(&mut self, from: NodeId, serial: u64, now: Duration) -> Option<Action> {
        if serial <= self.serial || self.spoiled.contains(&from) {
            return None;
        }
        if self.fetching.contains_key(&from) || self.fetching.len() >= MAX_FETCHES {
            // Not dropped: tried when a fetch ends, or at the next tick.
            let known = self.newer.entry(from).or_insert(serial);
            *known = (*known).max(serial);
            return None;
        }
        self.fetching.insert(from, (serial, now));
        Some(Action::Fetch { from, serial })
    }

    /// The fetch from `from` ended; on success the shell has called [`Core::policy_in_force`]
    /// first. A peer that served something refused, timed out, or delivered an older serial
    /// than it offered lied: it is not asked again until this node's policy changes. Returns
    /// the next fetch, from another peer known to hold a newer policy, if a slot is free.
    pub fn fetch_done(&mut self, from: NodeId, result: Fetched, now: Duration) -> Option<Action> {
        let offered = self.fetching.remove(&from).map(|(s, _)| s);
        let lied = match result {
            Fetched::Refused => true,
            Fetched::Delivered { serial } => offered.is_some_and(|o| serial < o),
            Fetched::Network => false,
        };
        if lied {
            self.spoiled.insert(from);
            self.newer.remove(&from);
        }
        self.next_pull(now, None)
    }

    /// Whether `from` is known to have lied since this node's policy last changed.
    pub fn spoiled(&self, from: NodeId) -> bool {
        self.spoiled.contains(&from)
    }

    /// A fetch from a peer known to hold a newer serial (chosen by `rng`, or the highest
    /// serial first without one), if a slot is free.
    fn next_pull(&mut self, now: Duration, rng: Option<&mut dyn RngCore>) -> Option<Action> {
        if self.fetching.len() >= MAX_FETCHES {
            return None;
        }
        let holders: Vec<(NodeId, u64)> = self
            .newer
            .iter()
            .filter(|(k, _)| !self.fetching.contains_key(k) && !self.spoiled.contains(k))
            .map(|(k, v)| (*k, *v))
            .collect();
        let (from, serial) = match rng {
            Some(rng) if !holders.is_empty() => {
                holders[(rng.next_u64() % holders.len() as u64) as usize]
            }
            _ => holders.iter().copied().max_by_key(|(_, s)| *s)?,
        };
        self.newer.remove(&from);
        self.maybe_fetch(from, serial, now)
    }

    /// Quarantine or readmit `id` on what it last said.
    fn judge(&mut self, id: NodeId, now: Duration) -> Option<Action> {
        let cfg = self.cfg.clone();
        let peer = self.peers.get_mut(&id)?;
        let hb = peer.last.as_ref()?;
        let problem = match hb.integrity {
            Integrity::Lost => Some(Reason::IntegrityLost),
            Integrity::Unreachable | Integrity::NotRequired
                if !cfg.certainty_exempt.contains(&id) =>
            {
                Some(Reason::CertaintyUnreachable)
            }
            Integrity::Grace => Some(Reason::NotVerified),
            _ if hb.root_matches == Some(false) => Some(Reason::RootMismatch),
            _ => None,
        };
        let boot = hb.boot_id.clone();
        match (&peer.quarantine, problem) {
            (None, Some(reason)) => {
                // A node in its first grace period is not yet judged: it is given the same
                // time to show a verified baseline as a silent node gets to speak.
                if reason == Reason::NotVerified
                    && now.saturating_sub(peer.known_since) < cfg.quarantine_after
                {
                    return None;
                }
                peer.quarantine = Some(Quarantine {
                    reason: reason.clone(),
                    since: now,
                    boot_id: Some(boot),
                    good: 0,
                });
                cfg.quarantine
                    .then_some(Action::Quarantine { node: id, reason })
            }
            (Some(q), Some(reason)) if q.reason != reason && reason.needs_reboot() => {
                // Worse news than the quarantine already says: keep it, with the real reason.
                peer.quarantine = Some(Quarantine {
                    reason: reason.clone(),
                    since: q.since,
                    boot_id: Some(boot),
                    good: 0,
                });
                cfg.quarantine
                    .then_some(Action::Quarantine { node: id, reason })
            }
            (Some(q), None) => {
                let rebooted = q.boot_id.as_deref() != Some(boot.as_str());
                if q.reason.needs_reboot() && !rebooted {
                    return None;
                }
                let good = q.good + 1;
                if good < READMIT_AFTER {
                    if let Some(q) = peer.quarantine.as_mut() {
                        q.good = good;
                    }
                    return None;
                }
                let why = if q.reason.needs_reboot() {
                    // What the node claims (issue 26 #12): its heartbeat says so; nothing
                    // here attests it (a TPM quote would).
                    format!(
                        "reports a new boot and a verified root ({}); not attested",
                        hb.integrity
                    )
                } else {
                    format!("heard again, {}", hb.integrity)
                };
                peer.quarantine = None;
                cfg.quarantine.then_some(Action::Readmit { node: id, why })
            }
            _ => None,
        }
    }

    /// This node's heartbeat to every peer now, out of turn: a change (integrity lost) is told
    /// at once, and repeated by the caller so a lost datagram does not delay it.
    pub fn announce(&self, mine: &Heartbeat) -> Vec<Action> {
        self.peers
            .keys()
            .map(|&to| Action::Send {
                to,
                msg: Message::Heartbeat(mine.clone()),
            })
            .collect()
    }

    /// Every heartbeat interval: this node's heartbeat to every peer, silence checks, and a
    /// pull from a random peer known to have a newer serial (anti-entropy: a node that missed
    /// every offer catches up within one interval).
    pub fn tick(&mut self, mine: &Heartbeat, now: Duration, rng: &mut dyn RngCore) -> Vec<Action> {
        let mut out = self.announce(mine);
        self.fetching
            .retain(|_, (_, at)| now.saturating_sub(*at) <= FETCH_TIMEOUT);
        out.extend(self.next_pull(now, Some(rng)));
        let after = self.cfg.quarantine_after;
        let ids: Vec<NodeId> = self.peers.keys().copied().collect();
        for id in ids {
            let Some(peer) = self.peers.get_mut(&id) else {
                continue;
            };
            let since = peer.heard.unwrap_or(peer.known_since);
            let silent = now.saturating_sub(since);
            if silent >= after
                && peer
                    .quarantine
                    .as_ref()
                    .is_none_or(|q| matches!(q.reason, Reason::NotVerified))
            {
                let reason = Reason::Silent(silent);
                peer.quarantine = Some(Quarantine {
                    reason: reason.clone(),
                    since: now,
                    boot_id: peer.last.as_ref().map(|h| h.boot_id.clone()),
                    good: 0,
                });
                if self.cfg.quarantine {
                    out.push(Action::Quarantine { node: id, reason });
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Counter(u64);
    impl RngCore for Counter {
        fn next_u32(&mut self) -> u32 {
            self.next_u64() as u32
        }
        fn next_u64(&mut self) -> u64 {
            self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1);
            self.0 >> 11
        }
        fn fill_bytes(&mut self, dest: &mut [u8]) {
            for b in dest {
                *b = self.next_u64() as u8;
            }
        }
        fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand_core::Error> {
            self.fill_bytes(dest);
            Ok(())
        }
    }

    fn id(n: u16) -> NodeId {
        NodeId::new(n).unwrap()
    }

    fn cfg() -> Config {
        Config {
            me: id(1),
            heartbeat: Duration::from_secs(1),
            quarantine: true,
            quarantine_after: Duration::from_secs(3),
            certainty_exempt: BTreeSet::new(),
        }
    }

    fn members(n: u16) -> Vec<(NodeId, String)> {
        (1..=n).map(|i| (id(i), format!("n{i}"))).collect()
    }

    fn hb(node: u16, integrity: Integrity, boot: &str) -> Heartbeat {
        Heartbeat {
            node,
            boot_id: boot.into(),
            seq: 1,
            serial: 5,
            digest: "d".into(),
            integrity,
            stable_root: None,
            root_matches: None,
            last_verification: None,
            uptime_s: 1,
            load1: 0.0,
            mem_available_kb: 1,
        }
    }

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    fn core(n: u16) -> Core {
        let mut c = Core::new(cfg());
        c.policy_in_force(cfg(), 5, "d", &members(n), secs(0), &mut Counter(1));
        c
    }

    #[test]
    fn a_newer_policy_is_offered_to_a_few_random_peers_and_a_newer_one_heard_of_is_fetched() {
        let mut c = core(10);
        let out = c.policy_in_force(cfg(), 6, "e", &members(10), secs(1), &mut Counter(7));
        let to: Vec<_> = out
            .iter()
            .filter_map(|a| match a {
                Action::Send {
                    to,
                    msg: Message::Offer { serial: 6, .. },
                } => Some(*to),
                _ => None,
            })
            .collect();
        assert_eq!(to.len(), FANOUT);
        assert!(!to.contains(&id(1)), "never to itself");
        // The same serial again: nothing to offer.
        assert!(
            c.policy_in_force(cfg(), 6, "e", &members(10), secs(1), &mut Counter(7))
                .is_empty()
        );
        // Pull: heartbeats with a newer serial start no fetch at once (offers may still bring
        // it); the next tick fetches from one of those peers, and only one fetch runs at once.
        let mut h = hb(2, Integrity::Verifying, "b2");
        h.serial = 9;
        let out = c.receive(id(2), Message::Heartbeat(h.clone()), secs(2));
        assert!(
            !out.iter().any(|a| matches!(a, Action::Fetch { .. })),
            "{out:?}"
        );
        h.node = 3;
        c.receive(id(3), Message::Heartbeat(h), secs(2));
        let mine = hb(1, Integrity::Verifying, "me");
        let out = c.tick(&mine, secs(2), &mut Counter(3));
        let fetches: Vec<_> = out
            .iter()
            .filter(|a| matches!(a, Action::Fetch { serial: 9, .. }))
            .collect();
        assert_eq!(fetches.len(), 1, "{out:?}");
        let Action::Fetch { from, .. } = fetches[0] else {
            unreachable!()
        };
        assert!([id(2), id(3)].contains(from));
        c.fetch_done(*from, Fetched::Network, secs(2));
        let offer = Message::Offer {
            serial: 9,
            digest: "f".into(),
        };
        assert_eq!(
            c.receive(id(4), offer, secs(3)),
            vec![Action::Fetch {
                from: id(4),
                serial: 9
            }]
        );
    }

    /// Attack (a hostile member, issue 26 #8): M offered serial 99 at 200/s and served each
    /// fetch as a drip; one fetch ran at a time, offers meanwhile were dropped, a timed-out
    /// fetch was a network failure, and the operator's removal of M reached no other member
    /// for a minute. Serving the current policy for every offer was no lie either. Steps: M
    /// offers 99 and its fetch hangs; the master's offer of serial 10 (the removal) is
    /// fetched at once beside it; M's fetch times out (Refused): M is not asked again, its
    /// flood starts nothing; another peer that answers an offer of 99 with serial 9 lied too.
    #[test]
    fn a_dripping_or_lying_peer_holds_back_no_other_fetch() {
        let mut c = core(5);
        let offer = |serial| Message::Offer {
            serial,
            digest: "x".into(),
        };
        assert_eq!(
            c.receive(id(2), offer(99), secs(1)),
            vec![Action::Fetch {
                from: id(2),
                serial: 99
            }]
        );
        // M's fetch drips; the master's offer is fetched at once, not dropped.
        assert_eq!(
            c.receive(id(3), offer(10), secs(1)),
            vec![Action::Fetch {
                from: id(3),
                serial: 10
            }]
        );
        // Offers from M meanwhile start nothing new.
        for _ in 0..200 {
            assert!(c.receive(id(2), offer(99), secs(1)).is_empty());
        }
        c.policy_in_force(cfg(), 10, "removal", &members(5), secs(1), &mut Counter(1));
        assert_eq!(
            c.fetch_done(id(3), Fetched::Delivered { serial: 10 }, secs(1)),
            None
        );
        // M's drip ends at the transfer's time limit: a lie.
        let _ = c.fetch_done(id(2), Fetched::Refused, secs(6));
        assert!(c.spoiled(id(2)));
        for _ in 0..200 {
            assert!(c.receive(id(2), offer(99), secs(7)).is_empty());
        }
        // Serving the policy in force for an offer of a newer one is a lie too.
        assert!(!c.receive(id(4), offer(99), secs(8)).is_empty());
        let _ = c.fetch_done(id(4), Fetched::Delivered { serial: 10 }, secs(8));
        assert!(c.spoiled(id(4)));
        assert!(c.receive(id(4), offer(99), secs(9)).is_empty());
    }

    /// Fetches at once are bounded, and an offer that finds every slot taken is kept and
    /// fetched when one frees, not dropped.
    #[test]
    fn an_offer_waiting_for_a_slot_is_fetched_when_one_frees() {
        let mut c = core(6);
        let offer = |serial| Message::Offer {
            serial,
            digest: "x".into(),
        };
        for p in 2..2 + MAX_FETCHES as u16 {
            assert_eq!(c.receive(id(p), offer(20), secs(1)).len(), 1);
        }
        let waiting = id(2 + MAX_FETCHES as u16);
        assert!(c.receive(waiting, offer(21), secs(1)).is_empty());
        assert_eq!(
            c.fetch_done(id(2), Fetched::Network, secs(2)),
            Some(Action::Fetch {
                from: waiting,
                serial: 21
            })
        );
    }

    /// A hostile member offering a "newer" serial and serving garbage costs one fetch, not one
    /// per offer; an honest peer's offer is still fetched, and a real new policy forgives.
    #[test]
    fn a_peer_that_served_a_refused_policy_is_not_asked_again() {
        let mut c = core(3);
        let offer = |serial| Message::Offer {
            serial,
            digest: "x".into(),
        };
        assert_eq!(
            c.receive(id(2), offer(9), secs(1)),
            vec![Action::Fetch {
                from: id(2),
                serial: 9
            }]
        );
        c.fetch_done(id(2), Fetched::Refused, secs(1));
        for t in 2..10 {
            assert!(c.receive(id(2), offer(9 + t), secs(t)).is_empty());
        }
        assert_eq!(
            c.receive(id(3), offer(9), secs(10)),
            vec![Action::Fetch {
                from: id(3),
                serial: 9
            }]
        );
        c.fetch_done(id(3), Fetched::Network, secs(10));
        c.policy_in_force(cfg(), 9, "n", &members(3), secs(11), &mut Counter(1));
        assert_eq!(
            c.receive(id(2), offer(10), secs(12)),
            vec![Action::Fetch {
                from: id(2),
                serial: 10
            }]
        );
    }

    /// One member must not be able to get another quarantined: a heartbeat is believed only
    /// about the node whose tunnel address sent it.
    #[test]
    fn a_member_cannot_speak_for_another() {
        let mut c = core(3);
        c.receive(
            id(2),
            Message::Heartbeat(hb(2, Integrity::Verifying, "b2")),
            secs(1),
        );
        c.receive(
            id(3),
            Message::Heartbeat(hb(3, Integrity::Verifying, "b3")),
            secs(1),
        );
        // Node 2 sends a heartbeat claiming to be node 3, with lost integrity.
        let out = c.receive(
            id(2),
            Message::Heartbeat(hb(3, Integrity::Lost, "b3")),
            secs(2),
        );
        assert!(out.is_empty(), "{out:?}");
        assert_eq!(c.impostors, 1);
        assert!(c.peers()[&id(3)].quarantine.is_none());
    }

    #[test]
    fn lost_integrity_is_quarantined_at_once_and_readmitted_only_after_a_verified_reboot() {
        let mut c = core(3);
        c.receive(
            id(2),
            Message::Heartbeat(hb(2, Integrity::Verifying, "boot-a")),
            secs(1),
        );
        let out = c.receive(
            id(2),
            Message::Heartbeat(hb(2, Integrity::Lost, "boot-a")),
            secs(2),
        );
        assert_eq!(
            out,
            vec![Action::Quarantine {
                node: id(2),
                reason: Reason::IntegrityLost
            }]
        );
        // Saying "verifying" again in the same boot is not enough.
        let out = c.receive(
            id(2),
            Message::Heartbeat(hb(2, Integrity::Verifying, "boot-a")),
            secs(3),
        );
        assert!(out.is_empty(), "{out:?}");
        // Rebooted: grace first (still out), then verified.
        let out = c.receive(
            id(2),
            Message::Heartbeat(hb(2, Integrity::Grace, "boot-b")),
            secs(20),
        );
        assert!(out.is_empty(), "{out:?}");
        let out = c.receive(
            id(2),
            Message::Heartbeat(hb(2, Integrity::Verifying, "boot-b")),
            secs(50),
        );
        // One good heartbeat is not enough (hysteresis); the next one readmits.
        assert!(out.is_empty(), "{out:?}");
        let out = c.receive(
            id(2),
            Message::Heartbeat(hb(2, Integrity::Verifying, "boot-b")),
            secs(50),
        );
        assert!(
            matches!(&out[..], [Action::Readmit { node, .. }] if *node == id(2)),
            "{out:?}"
        );
        // Issue 26 #12: a node readmitted itself by reporting a new boot id, and the log
        // said "rebooted and verified its root": what it only claims is logged as a claim.
        let [Action::Readmit { why, .. }] = &out[..] else {
            unreachable!()
        };
        assert!(
            why.starts_with("reports a new boot") && why.contains("not attested"),
            "{why}"
        );
    }

    #[test]
    fn a_wrong_root_or_an_unreachable_certaintyd_is_quarantined() {
        let mut c = core(3);
        let mut h = hb(2, Integrity::Verifying, "b");
        h.root_matches = Some(false);
        let out = c.receive(id(2), Message::Heartbeat(h), secs(1));
        assert_eq!(
            out,
            vec![Action::Quarantine {
                node: id(2),
                reason: Reason::RootMismatch
            }]
        );
        let out = c.receive(
            id(3),
            Message::Heartbeat(hb(3, Integrity::Unreachable, "c")),
            secs(1),
        );
        assert_eq!(
            out,
            vec![Action::Quarantine {
                node: id(3),
                reason: Reason::CertaintyUnreachable
            }]
        );
        // An unreachable certaintyd that answers again readmits (no reboot needed).
        let out = c.receive(
            id(3),
            Message::Heartbeat(hb(3, Integrity::Verifying, "c")),
            secs(2),
        );
        // One good heartbeat is not enough (hysteresis); the next one readmits.
        assert!(out.is_empty(), "{out:?}");
        let out = c.receive(
            id(3),
            Message::Heartbeat(hb(3, Integrity::Verifying, "c")),
            secs(2),
        );
        assert!(matches!(&out[..], [Action::Readmit { .. }]), "{out:?}");
    }

    #[test]
    fn a_node_the_policy_exempts_from_certaintyd_keeps_its_services_without_one() {
        // Node 2 (a master on a disk) is exempt; node 3 (a drone) is not.
        let mut exempt = cfg();
        exempt.certainty_exempt.insert(id(2));
        let mut c = Core::new(exempt.clone());
        c.policy_in_force(exempt, 5, "d", &members(3), secs(0), &mut Counter(1));
        for integrity in [Integrity::NotRequired, Integrity::Unreachable] {
            let out = c.receive(id(2), Message::Heartbeat(hb(2, integrity, "b")), secs(1));
            assert!(out.is_empty(), "{integrity}: {out:?}");
        }
        let out = c.receive(
            id(3),
            Message::Heartbeat(hb(3, Integrity::NotRequired, "c")),
            secs(1),
        );
        assert_eq!(
            out,
            vec![Action::Quarantine {
                node: id(3),
                reason: Reason::CertaintyUnreachable
            }]
        );
        // Exempt or not, a node that reports lost integrity loses its services.
        let out = c.receive(
            id(2),
            Message::Heartbeat(hb(2, Integrity::Lost, "b")),
            secs(2),
        );
        assert_eq!(
            out,
            vec![Action::Quarantine {
                node: id(2),
                reason: Reason::IntegrityLost
            }]
        );
    }

    #[test]
    fn the_policy_names_who_must_run_certaintyd_by_role() {
        use policy::{CertaintyRequired, Distribution, Role};
        let node = |n: u16, role: Role| {
            let text = format!(
                "id = {n}\nname = \"n{n}\"\npublic_key = \"{}\"\naddresses = [\"10.0.0.{n}\"]\nroles = [\"{}\"]\n",
                "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
                if role == Role::Master {
                    "master"
                } else {
                    "drone"
                }
            );
            toml::from_str::<policy::Node>(&text).unwrap()
        };
        let nodes = [node(1, Role::Master), node(2, Role::Drone)];
        let mut d = Distribution {
            require_certainty: CertaintyRequired::Roles(vec![Role::Drone]),
            ..Distribution::default()
        };
        assert_eq!(
            Config::from_policy(id(1), &d, &nodes).certainty_exempt,
            BTreeSet::from([id(1)])
        );
        d.require_certainty = CertaintyRequired::Every(true);
        assert!(
            Config::from_policy(id(1), &d, &nodes)
                .certainty_exempt
                .is_empty()
        );
        d.require_certainty = CertaintyRequired::Every(false);
        assert_eq!(
            Config::from_policy(id(1), &d, &nodes)
                .certainty_exempt
                .len(),
            2
        );
    }

    #[test]
    fn silence_quarantines_and_speaking_again_readmits() {
        let mut c = core(3);
        let mine = hb(1, Integrity::Verifying, "me");
        c.receive(
            id(2),
            Message::Heartbeat(hb(2, Integrity::Verifying, "b")),
            secs(1),
        );
        c.receive(
            id(3),
            Message::Heartbeat(hb(3, Integrity::Verifying, "c")),
            secs(1),
        );
        let out = c.tick(&mine, secs(2), &mut Counter(1));
        assert_eq!(out.len(), 2, "one heartbeat per peer: {out:?}");
        c.receive(
            id(3),
            Message::Heartbeat(hb(3, Integrity::Verifying, "c")),
            secs(4),
        );
        let out = c.tick(&mine, secs(4), &mut Counter(1));
        assert!(
            out.contains(&Action::Quarantine {
                node: id(2),
                reason: Reason::Silent(secs(3))
            }),
            "{out:?}"
        );
        assert!(
            !out.iter()
                .any(|a| matches!(a, Action::Quarantine { node, .. } if *node == id(3)))
        );
        let out = c.receive(
            id(2),
            Message::Heartbeat(hb(2, Integrity::Verifying, "b")),
            secs(5),
        );
        // One good heartbeat is not enough (hysteresis); the next one readmits.
        assert!(out.is_empty(), "{out:?}");
        let out = c.receive(
            id(2),
            Message::Heartbeat(hb(2, Integrity::Verifying, "b")),
            secs(5),
        );
        assert!(matches!(&out[..], [Action::Readmit { .. }]), "{out:?}");
    }

    /// Regression (found by the 35- and 50-member benchmarks): ticks re-judged a peer's last
    /// heartbeat, so each tick counted as another good heartbeat and a silent node was
    /// readmitted after two ticks without sending anything, then quarantined again: flapping
    /// ("silent for 5 s", "8 s", "11 s"...). Only a new heartbeat counts.
    #[test]
    fn ticks_alone_never_readmit_a_silent_node() {
        let mut c = core(2);
        let mine = hb(1, Integrity::Verifying, "me");
        c.receive(
            id(2),
            Message::Heartbeat(hb(2, Integrity::Verifying, "b")),
            secs(1),
        );
        let out = c.tick(&mine, secs(6), &mut Counter(1));
        assert!(
            out.iter().any(|a| matches!(a, Action::Quarantine { .. })),
            "{out:?}"
        );
        for t in 7..20 {
            let out = c.tick(&mine, secs(t), &mut Counter(1));
            assert!(
                !out.iter()
                    .any(|a| matches!(a, Action::Readmit { .. } | Action::Quarantine { .. })),
                "at {t} s: {out:?}"
            );
        }
    }

    #[test]
    fn a_node_in_grace_gets_the_same_time_as_a_silent_one_then_waits_for_its_baseline() {
        let mut c = core(2);
        let out = c.receive(
            id(2),
            Message::Heartbeat(hb(2, Integrity::Grace, "b")),
            secs(1),
        );
        assert!(out.is_empty());
        let out = c.receive(
            id(2),
            Message::Heartbeat(hb(2, Integrity::Grace, "b")),
            secs(3),
        );
        assert_eq!(
            out,
            vec![Action::Quarantine {
                node: id(2),
                reason: Reason::NotVerified
            }]
        );
        let out = c.receive(
            id(2),
            Message::Heartbeat(hb(2, Integrity::Verifying, "b")),
            secs(30),
        );
        // One good heartbeat is not enough (hysteresis); the next one readmits.
        assert!(out.is_empty(), "{out:?}");
        let out = c.receive(
            id(2),
            Message::Heartbeat(hb(2, Integrity::Verifying, "b")),
            secs(30),
        );
        assert!(matches!(&out[..], [Action::Readmit { .. }]), "{out:?}");
    }

    #[test]
    fn with_quarantine_off_nothing_is_withheld_but_health_is_still_known() {
        let mut c = core(2);
        let off = Config {
            quarantine: false,
            ..cfg()
        };
        c.policy_in_force(off, 5, "d", &members(2), secs(0), &mut Counter(1));
        let out = c.receive(
            id(2),
            Message::Heartbeat(hb(2, Integrity::Lost, "b")),
            secs(1),
        );
        assert!(out.is_empty());
        assert!(c.peers()[&id(2)].quarantine.is_some());
    }

    #[test]
    fn a_node_removed_from_the_map_is_forgotten() {
        let mut c = core(3);
        c.receive(
            id(3),
            Message::Heartbeat(hb(3, Integrity::Lost, "c")),
            secs(1),
        );
        c.policy_in_force(cfg(), 6, "e", &members(2), secs(2), &mut Counter(1));
        assert!(!c.peers().contains_key(&id(3)));
        assert!(
            c.receive(
                id(3),
                Message::Heartbeat(hb(3, Integrity::Lost, "c")),
                secs(3)
            )
            .is_empty()
        );
    }
}
