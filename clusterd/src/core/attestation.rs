//! Attestation between peers (issue 29), as plain decisions. Each heartbeat this node sends
//! carries a fresh challenge; once per quote interval this node asks its TPM for one quote
//! over the Merkle root of every peer's latest challenge, and sends each peer the quote with
//! that peer's inclusion proof. A peer takes a quote only if it verifies under the node's
//! pinned key, over the named root, with a pinned image and a clean ratchet, and its own
//! challenge is in the root: then the node is attested until `within` after this peer
//! issued that challenge. Each peer decides alone from what it received: no verifier.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use attest::{
    AttestationKey, Challenge, Challenges, Covered, Inclusion, PcrValue, Quote, QuoteError,
    qualifying_data, root_of, verify_quote,
};
use policy::NodeId;
use proto::attest::{QuoteMessage, WireChallenge, WireInclusion, WireQuote};
use proto::quarantine::AttestFault;

/// A peer's challenges kept, newest last (its quote may cover one a few heartbeats old).
const PEER_CHALLENGES: usize = 4;
/// This node's own challenges kept: a proof naming an older one earns nothing.
const MY_CHALLENGES: usize = 64;
/// A quote asked of the TPM and not back by then is given up (the TPM does not answer:
/// peers see no fresh quote, and quarantine this node, as they should).
pub const QUOTE_TIMEOUT: Duration = Duration::from_secs(10);

/// What the policy says about attestation, for this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttestConfig {
    pub cluster: String,
    pub interval: Duration,
    pub within: Duration,
    pub images: Vec<PcrValue>,
    /// The nodes that must attest, each with its pinned key (None: none pinned).
    pub required: BTreeMap<NodeId, Option<AttestationKey>>,
}

impl AttestConfig {
    pub fn from_policy(
        cluster: &str,
        a: &policy::Attestation,
        nodes: &[policy::Node],
    ) -> Option<Self> {
        let required: BTreeMap<NodeId, Option<AttestationKey>> = nodes
            .iter()
            .filter(|n| a.required_of(&n.roles))
            .map(|n| (n.id, n.attestation_key.clone()))
            .collect();
        (!required.is_empty()).then(|| AttestConfig {
            cluster: cluster.to_string(),
            interval: a.interval,
            within: a.within,
            images: a.images.clone(),
            required,
        })
    }
}

/// What this node knows of one peer's attestation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerAttest {
    /// Its current boot: all of it starts again at a new boot id.
    pub boot: BootAttest,
    /// Valid quotes taken from it, and quotes refused (for the view and the tests).
    pub taken: u64,
    pub refused: u64,
    /// When the policy in force here began to require it to attest (its grace counts from
    /// then, and a quote over a challenge from before does not count).
    pub required_since: Option<Duration>,
    /// Quote messages checked in the current window (start, count): at most
    /// [`QUOTES_PER_INTERVAL`] per quote interval; more are dropped unchecked.
    pub window: (Duration, u32),
    /// Quote messages dropped over that limit (for the tests and the log).
    pub dropped: u64,
    /// The last refusal told (its fault, when): another is told only for another fault or
    /// a minute later.
    pub told: Option<(AttestFault, Duration)>,
}

/// What this node knows of one boot of a peer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BootAttest {
    /// Its boot id (None before its first heartbeat).
    pub id: Option<String>,
    /// Its last few challenges (heartbeat seq, challenge), newest last.
    pub challenges: VecDeque<(u64, Challenge)>,
    /// When this node issued the newest of its own challenges a valid quote covered.
    pub fresh: Option<Duration>,
    /// The TPM's (reset count, restart count, clock) in its last valid quote.
    pub tpm_clock: Option<(u32, u32, u64)>,
    /// Its last quote failed thus (cleared by a valid one).
    pub fault: Option<AttestFault>,
}

/// A refusal of the same fault from the same peer is told again after this long.
pub const TELL_AGAIN: Duration = Duration::from_secs(60);

/// Quote messages from one peer checked per quote interval: it sends one; a member that
/// sends more costs its peers no more than this many signature checks (about 0.25 ms each).
pub const QUOTES_PER_INTERVAL: u32 = 3;

impl PeerAttest {
    /// Whether one more quote message may be checked at `now`.
    pub(super) fn within_budget(&mut self, interval: Duration, now: Duration) -> bool {
        if now.saturating_sub(self.window.0) >= interval {
            self.window = (now, 0);
        }
        if self.window.1 >= QUOTES_PER_INTERVAL {
            self.dropped += 1;
            return false;
        }
        self.window.1 += 1;
        true
    }

    /// A heartbeat of boot `boot` arrived, with this challenge.
    pub(super) fn heard(&mut self, boot: &str, seq: u64, challenge: Option<WireChallenge>) {
        if self.boot.id.as_deref() != Some(boot) {
            self.boot = BootAttest {
                id: Some(boot.to_string()),
                ..BootAttest::default()
            };
        }
        if let Some(WireChallenge(c)) = challenge {
            // Its seq went back within one boot: its clusterd restarted and knows none of
            // its old challenges (found by an attack from the docs: a restarted node
            // quarantined every peer until its seq passed the old one). What a node says
            // about its own challenges matters to nobody else.
            if self.boot.challenges.back().is_some_and(|(s, _)| *s >= seq) {
                self.boot.challenges.clear();
            }
            if self.boot.challenges.len() >= PEER_CHALLENGES {
                self.boot.challenges.pop_front();
            }
            self.boot.challenges.push_back((seq, c));
        }
    }

    /// What is wrong with its attestation at `now`, if it must attest with `key`. With
    /// `strict`, a node with no quote yet is not attested (readmission needs a quote);
    /// without, a node new here (or newly required to attest) is given `within`.
    pub(super) fn problem(
        &self,
        key: Option<&AttestationKey>,
        within: Duration,
        known_since: Duration,
        now: Duration,
        strict: bool,
    ) -> Option<AttestFault> {
        if key.is_none() {
            return Some(AttestFault::NoKey);
        }
        if let Some(f) = self.boot.fault {
            return Some(f);
        }
        if self.attested(within, now) {
            return None;
        }
        // Not from its boot: a node that says it rebooted every few seconds would never
        // have to quote (found by an attack from the docs). A real reboot is quarantined
        // for silence anyway, and readmitted at its first quote.
        let since = known_since.max(self.required_since.unwrap_or_default());
        if !strict && self.fresh().is_none() && now.saturating_sub(since) < within {
            return None;
        }
        Some(AttestFault::NoFreshQuote)
    }

    /// When this node issued the newest challenge a valid quote of it covered, if that was
    /// since it became required to attest (a quote over a challenge from before attestation
    /// was turned off and on again is no answer: found by an attack from the docs).
    fn fresh(&self) -> Option<Duration> {
        self.boot
            .fresh
            .filter(|t| *t >= self.required_since.unwrap_or_default())
    }

    /// Whether a valid quote of this boot, over a challenge issued since it became required
    /// to attest, is younger than `within`.
    pub fn attested(&self, within: Duration, now: Duration) -> bool {
        self.boot.fault.is_none()
            && self
                .fresh()
                .is_some_and(|t| now.saturating_sub(t) <= within)
    }
}

/// This node's side: its challenges, and the quote under way.
#[derive(Debug, Default)]
pub(super) struct Mine {
    /// (seq, challenge, when issued), newest last.
    challenges: VecDeque<(u64, Challenge, Duration)>,
    /// The challenges the quote under way covers, its boot, and since when it is asked.
    pending: Option<(Challenges, String, Duration)>,
    last_quote: Option<Duration>,
}

impl Mine {
    pub(super) fn issue(&mut self, seq: u64, challenge: Challenge, now: Duration) {
        if self.challenges.len() >= MY_CHALLENGES {
            self.challenges.pop_front();
        }
        self.challenges.push_back((seq, challenge, now));
    }

    fn issued(&self, seq: u64) -> Option<(Challenge, Duration)> {
        self.challenges
            .iter()
            .find(|(s, _, _)| *s == seq)
            .map(|(_, c, t)| (*c, *t))
    }

    /// The qualifying data of a new quote, if one is due: over the latest challenge of each
    /// peer in `peers`.
    pub(super) fn due(
        &mut self,
        cfg: &AttestConfig,
        me: NodeId,
        boot_id: &str,
        peers: &BTreeMap<NodeId, super::Peer>,
        now: Duration,
    ) -> Option<[u8; 32]> {
        if let Some((_, _, since)) = &self.pending {
            if now.saturating_sub(*since) < QUOTE_TIMEOUT {
                return None;
            }
            self.pending = None;
        }
        if self
            .last_quote
            .is_some_and(|t| now.saturating_sub(t) < cfg.interval)
        {
            return None;
        }
        let leaves: Vec<(Covered, Challenge)> = peers
            .iter()
            .filter_map(|(id, p)| {
                p.attest.boot.challenges.back().map(|(seq, c)| {
                    (
                        Covered {
                            peer: id.get(),
                            seq: *seq,
                        },
                        *c,
                    )
                })
            })
            .collect();
        let tree = Challenges::new(leaves);
        let nonce = qualifying_data(&cfg.cluster, me.get(), boot_id, &tree.root());
        self.pending = Some((tree, boot_id.to_string(), now));
        self.last_quote = Some(now);
        Some(nonce)
    }

    /// The quote asked for came back: one message to each peer, with its proof. None if no
    /// quote was under way (it timed out).
    pub(super) fn made(&mut self, me: NodeId, quote: Quote) -> Option<Vec<(NodeId, QuoteMessage)>> {
        let (tree, boot_id, _) = self.pending.take()?;
        let peers = tree.covered();
        let mut out = Vec::with_capacity(peers.len());
        for c in peers {
            let Some(to) = NodeId::new(c.peer) else {
                continue;
            };
            let Some(proof) = tree.inclusion(c.peer).and_then(|i| {
                Some(WireInclusion {
                    seq: i.seq,
                    index: u16::try_from(i.index).ok()?,
                    leaves: u16::try_from(i.leaves).ok()?,
                    path: i.proof,
                })
            }) else {
                continue;
            };
            out.push((
                to,
                QuoteMessage {
                    node: me.get(),
                    boot_id: boot_id.clone(),
                    quote: WireQuote {
                        attest: quote.attest.clone(),
                        sig: quote.signature,
                        proof,
                    },
                },
            ));
        }
        Some(out)
    }

    /// The quote asked for failed.
    pub(super) fn failed(&mut self) {
        self.pending = None;
    }
}

/// What a quote message from a peer does to what this node knows of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Taken {
    /// Valid, over one of this node's recent challenges.
    Valid,
    /// Of another boot than its heartbeats say, or over a challenge of this node's too old
    /// to be known here: ignored (it earns nothing).
    Ignored,
    /// Refused; `new` when it is to be told: another fault than the last one told, or a
    /// minute later (a member sending bad quotes costs a line a minute, not one per
    /// datagram).
    Refused { fault: AttestFault, new: bool },
}

/// Checks `m` from a peer whose state is `a`, pinned `key`, against `cfg`.
pub(super) fn take_quote(
    a: &mut PeerAttest,
    key: &AttestationKey,
    cfg: &AttestConfig,
    me: NodeId,
    mine: &Mine,
    m: &QuoteMessage,
    now: Duration,
) -> Taken {
    if a.boot.id.as_deref() != Some(m.boot_id.as_str()) {
        return Taken::Ignored;
    }
    let quote = Quote {
        attest: m.quote.attest.clone(),
        signature: m.quote.sig,
    };
    // Over one of this node's challenges it still knows: an older one earns nothing.
    let p = &m.quote.proof;
    let Some((challenge, issued)) = mine.issued(p.seq) else {
        return Taken::Ignored;
    };
    let inc = Inclusion {
        seq: p.seq,
        index: usize::from(p.index),
        leaves: usize::from(p.leaves),
        proof: p.path.clone(),
    };
    let Some(root) = root_of(&inc, me.get(), &challenge) else {
        return refuse(a, AttestFault::Malformed, now);
    };
    // A proof that does not hold makes a root the quote is not over: refused as Nonce.
    let nonce = qualifying_data(&cfg.cluster, m.node, &m.boot_id, &root);
    let ok = match verify_quote(key, &quote, &nonce, &cfg.images) {
        Ok(ok) => ok,
        Err(e) => return refuse(a, fault_of(&e), now),
    };
    let now_clock = (ok.reset_count, ok.restart_count, ok.clock);
    let b = &mut a.boot;
    if b.tpm_clock.is_some_and(|was| now_clock < was) {
        return refuse(a, AttestFault::Replayed, now);
    }
    if b.fresh.is_none_or(|t| issued > t) {
        b.fresh = Some(issued);
    }
    b.tpm_clock = Some(now_clock);
    b.fault = None;
    a.taken += 1;
    Taken::Valid
}

fn refuse(a: &mut PeerAttest, fault: AttestFault, now: Duration) -> Taken {
    a.refused += 1;
    let new = a
        .told
        .is_none_or(|(f, t)| f != fault || now.saturating_sub(t) >= TELL_AGAIN);
    if new {
        a.told = Some((fault, now));
    }
    // A set ratchet is not forgotten in this boot, whatever follows.
    if a.boot.fault != Some(AttestFault::RatchetSet) {
        a.boot.fault = Some(fault);
    }
    Taken::Refused { fault, new }
}

pub(super) fn fault_of(e: &QuoteError) -> AttestFault {
    match e {
        QuoteError::Signature => AttestFault::Signature,
        QuoteError::Nonce => AttestFault::Nonce,
        QuoteError::RatchetSet => AttestFault::RatchetSet,
        QuoteError::NotPinned => AttestFault::NotPinned,
        QuoteError::TooLarge(_)
        | QuoteError::SignatureLength(_)
        | QuoteError::Malformed(_)
        | QuoteError::NotAQuote
        | QuoteError::Selection => AttestFault::Malformed,
    }
}
