//! Quarantine decisions for one peer: what is wrong with it by its heartbeat, entering and
//! staying out, earning readmission, and the flap damping that holds a readmission back.

use std::collections::VecDeque;
use std::time::Duration;

use policy::NodeId;
use proto::cluster::{Heartbeat, Integrity};
use proto::quarantine::Reason;

use super::{Action, Config, Peer};

/// Good heartbeats in a row a quarantined node must send before it is readmitted: one late
/// datagram on a loaded LAN must not make it flap in and out (each flap is an edit on every
/// peer's firewall).
pub const READMIT_AFTER: u32 = 2;

/// Entering quarantine this many times within [`FLAP_WINDOW`] makes a node flapping: its
/// next readmission is held back (issue 26 #11: a member alternating "lost" and a new boot id
/// cost every peer two log lines and two firewall edits per flap).
pub const FLAP_QUARANTINES: usize = 3;
/// The window [`FLAP_QUARANTINES`] are counted in.
pub const FLAP_WINDOW: Duration = Duration::from_secs(60);
/// How long a flapping node is first held out after it would be readmitted; doubled each time
/// it enters quarantine again within its hold of a readmission, up to [`MAX_HOLD`].
pub const FIRST_HOLD: Duration = Duration::from_secs(30);
pub const MAX_HOLD: Duration = Duration::from_secs(300);

/// Flap damping for one peer. It only ever holds a readmission back: every rule that
/// readmits a node still has to be met, and then the hold too.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Damping {
    /// When it last entered quarantine, oldest first (at most [`FLAP_QUARANTINES`]).
    entered: VecDeque<Duration>,
    /// The hold of its flapping spell: zero when it is not flapping.
    pub hold: Duration,
    /// Not readmitted before this instant.
    pub held_until: Option<Duration>,
    /// Since when it has stayed in (readmitted, or its hold last halved): each full hold of
    /// it halves the hold; below [`FIRST_HOLD`] the spell is over.
    stable_since: Duration,
}

/// What damping says about a readmission the other rules allow.
pub(super) enum Readmission {
    /// Readmit; `held` is the hold it waited out, if any.
    Now { held: Option<Duration> },
    /// Still held (already told).
    Held,
    /// A new flapping spell: held from now, told once.
    StartsFlapping { quarantines: u32, hold: Duration },
}

impl Damping {
    /// It entered quarantine at `now`.
    pub(super) fn entered(&mut self, now: Duration) {
        if self.entered.len() >= FLAP_QUARANTINES {
            self.entered.pop_front();
        }
        self.entered.push_back(now);
        if !self.hold.is_zero() {
            // Flapping again soon after its hold: held longer.
            if now.saturating_sub(self.stable_since) < self.hold {
                self.hold = (self.hold * 2).min(MAX_HOLD);
            }
            self.held_until = Some(now + self.hold);
        }
    }

    pub(super) fn recent(&self, now: Duration) -> usize {
        self.entered
            .iter()
            .filter(|t| now.saturating_sub(**t) < FLAP_WINDOW)
            .count()
    }

    /// Every other rule would readmit it now.
    pub(super) fn readmission(&mut self, now: Duration) -> Readmission {
        if self.held_until.is_some_and(|t| now < t) {
            return Readmission::Held;
        }
        let recent = self.recent(now);
        if self.hold.is_zero() && recent >= FLAP_QUARANTINES {
            self.hold = FIRST_HOLD;
            self.held_until = Some(now + self.hold);
            return Readmission::StartsFlapping {
                quarantines: u32::try_from(recent).unwrap_or(u32::MAX),
                hold: self.hold,
            };
        }
        let held = self.held_until.take().map(|_| self.hold);
        self.stable_since = now;
        Readmission::Now { held }
    }

    /// Stable while in: each full hold halves it, and the spell ends below the first hold.
    pub(super) fn decay(&mut self, now: Duration) {
        while !self.hold.is_zero() && now.saturating_sub(self.stable_since) >= self.hold {
            self.stable_since += self.hold;
            self.hold /= 2;
            if self.hold < FIRST_HOLD {
                self.hold = Duration::ZERO;
                self.entered.clear();
            }
        }
    }

    /// Whether it is in a flapping spell.
    pub fn flapping(&self) -> bool {
        !self.hold.is_zero()
    }
}

/// A peer's quarantine: why, since when, and in which boot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quarantine {
    pub reason: Reason,
    pub since: Duration,
    pub boot_id: Option<String>,
    /// Good heartbeats in a row since (counts toward [`READMIT_AFTER`]).
    pub good: u32,
}

/// What is wrong with node `id` by its heartbeat `hb`, if anything.
pub(super) fn problem_of(hb: &Heartbeat, cfg: &Config, id: NodeId) -> Option<Reason> {
    match hb.integrity {
        Integrity::Lost => Some(Reason::IntegrityLost),
        Integrity::Unreachable | Integrity::NotRequired if !cfg.certainty_exempt.contains(&id) => {
            Some(Reason::CertaintyUnreachable)
        }
        Integrity::Grace => Some(Reason::NotVerified),
        _ if hb.root_matches == Some(false) => Some(Reason::RootMismatch),
        _ => None,
    }
}

/// Node `id`, not in quarantine, reports `reason` in boot `boot`: it enters quarantine,
/// unless it is still in its first grace period.
pub(super) fn enter_quarantine(
    peer: &mut Peer,
    cfg: &Config,
    id: NodeId,
    reason: Reason,
    boot: String,
    now: Duration,
) -> Option<Action> {
    // A node in its first grace period is not yet judged: it is given the same time
    // to show a verified baseline as a silent node gets to speak.
    if reason == Reason::NotVerified && now.saturating_sub(peer.known_since) < cfg.quarantine_after
    {
        return None;
    }
    peer.quarantine = Some(Quarantine {
        reason: reason.clone(),
        since: now,
        boot_id: Some(boot),
        good: 0,
    });
    peer.damping.entered(now);
    cfg.quarantine
        .then_some(Action::Quarantine { node: id, reason })
}

/// Node `id`, in quarantine `q`, reports `reason` in boot `boot`: it stays out, and is told
/// again (when `quarantine` acts) only when the news is worse than what `q` says.
pub(super) fn still_out(
    q: &mut Quarantine,
    quarantine: bool,
    id: NodeId,
    reason: Reason,
    boot: String,
) -> Option<Action> {
    // Good heartbeats count toward readmission only in a row.
    q.good = 0;
    if !reason.needs_reboot() {
        // A node out for one reason (silent while it rebooted) that now fails attestation
        // is told with that reason, once per change: the list and the log say what keeps
        // it out (found by the VM lab: a drone back on an unpinned image stayed "silent").
        // (Not "no fresh quote": in quarantine that is what a node back from a reboot says
        // until its first quote arrives.)
        if matches!(reason, Reason::NotAttested(f) if f != proto::quarantine::AttestFault::NoFreshQuote)
            && !q.reason.needs_reboot()
            && q.reason != reason
        {
            q.reason = reason.clone();
            return quarantine.then_some(Action::Quarantine { node: id, reason });
        }
        return None;
    }
    // Lost in this boot: only a later one can readmit it (before, a node quarantined
    // in boot A that reported "lost" again in boot B was readmitted in boot B).
    q.boot_id = Some(boot);
    if q.reason.needs_reboot() {
        // Already out until a reboot: the newest reason is kept, and not told again
        // (a node alternating "lost" and "wrong root" costs its peers nothing).
        q.reason = reason;
        return None;
    }
    // Worse news than the quarantine already says: told, with the real reason.
    q.reason = reason.clone();
    quarantine.then_some(Action::Quarantine { node: id, reason })
}

/// Node `id` has earned readmission (`why`): readmitted now, or held while it flaps when
/// `damping` is on.
pub(super) fn readmit(
    peer: &mut Peer,
    quarantine: bool,
    id: NodeId,
    mut why: String,
    damping: bool,
    now: Duration,
) -> Option<Action> {
    let readmission = if damping {
        peer.damping.readmission(now)
    } else {
        Readmission::Now { held: None }
    };
    match readmission {
        Readmission::Held => None,
        Readmission::StartsFlapping { quarantines, hold } => {
            quarantine.then_some(Action::Flapping {
                node: id,
                quarantines,
                hold,
            })
        }
        Readmission::Now { held } => {
            if let Some(hold) = held {
                why.push_str(&format!("; held {} s first for flapping", hold.as_secs()));
            }
            peer.quarantine = None;
            quarantine.then_some(Action::Readmit { node: id, why })
        }
    }
}
