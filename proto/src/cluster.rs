//! What clusterd on one member says to clusterd on another over UDP, inside the tunnels: a
//! node's own heartbeat, and an offer of a newer policy. JSON, one datagram each,
//! size-limited both ways.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

/// The largest datagram sent or accepted: a heartbeat is a few hundred bytes.
pub const MAX_DATAGRAM: usize = 1400;

/// A node's integrity as its certaintyd reports it (or cannot).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Integrity {
    /// Booted, no baseline yet.
    Grace,
    /// Baseline taken, verifying.
    Verifying,
    /// In a signed maintenance window.
    Maintenance,
    /// certaintyd found a change.
    Lost,
    /// certaintyd does not answer on its control socket.
    Unreachable,
    /// This node runs no certaintyd and the policy does not require one.
    NotRequired,
}

impl Integrity {
    /// From certaintyd's state (an enum on both ends: every state is named here, and one
    /// certaintyd adds makes this fail to build, not quarantine every node).
    pub fn from_state(state: crate::certainty::State) -> Self {
        use crate::certainty::State;
        match state {
            State::Grace => Integrity::Grace,
            State::Verifying => Integrity::Verifying,
            State::Maintenance => Integrity::Maintenance,
            State::IntegrityLost => Integrity::Lost,
        }
    }

    /// Verified, or under a window the operator signed: may use the services.
    pub fn is_good(self) -> bool {
        matches!(
            self,
            Integrity::Verifying | Integrity::Maintenance | Integrity::NotRequired
        )
    }
}

impl fmt::Display for Integrity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Integrity::Grace => "grace",
            Integrity::Verifying => "verifying",
            Integrity::Maintenance => "maintenance",
            Integrity::Lost => "integrity lost",
            Integrity::Unreachable => "certaintyd unreachable",
            Integrity::NotRequired => "not monitored",
        })
    }
}

/// What a node says about itself, and only itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Heartbeat {
    /// The sender's node id; it must be the node whose tunnel address sent it.
    pub node: u16,
    /// `/proc/sys/kernel/random/boot_id`: a new one means the node rebooted.
    pub boot_id: String,
    /// Counts up within one boot.
    pub seq: u64,
    /// The policy in force there.
    pub serial: u64,
    pub digest: String,
    pub integrity: Integrity,
    /// certaintyd's boot-stable root, and whether it equals the pinned one (none pinned: null).
    pub stable_root: Option<String>,
    pub root_matches: Option<bool>,
    /// When certaintyd last finished a full verification (RFC 3339).
    pub last_verification: Option<String>,
    pub uptime_s: u64,
    pub load1: f64,
    pub mem_available_kb: u64,
    /// The masters' memberships in force there: per master's node id, its serial. Absent
    /// when there are none (so a node of a cluster without admission keys sends what older
    /// versions read).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub memberships: BTreeMap<u16, u64>,
    /// Its challenge for the receiver's next TPM quote (issue 29). Absent in a cluster where
    /// nobody attests, so a node sends what older versions read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub challenge: Option<crate::attest::WireChallenge>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Message {
    Heartbeat(Heartbeat),
    /// "I have this policy" (and these memberships): the receiver fetches them if any is
    /// newer.
    Offer {
        serial: u64,
        digest: String,
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        memberships: BTreeMap<u16, u64>,
    },
    /// The sender's latest TPM quote (issue 29), once per quote to each peer.
    Quote(crate::attest::QuoteMessage),
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProtoError {
    #[error("datagram of {0} bytes is over the {MAX_DATAGRAM}-byte limit")]
    TooLarge(usize),
    #[error("not a message: {0}")]
    Malformed(String),
}

impl Message {
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, ProtoError> {
        if bytes.len() > MAX_DATAGRAM {
            return Err(ProtoError::TooLarge(bytes.len()));
        }
        serde_json::from_slice(bytes).map_err(|e| {
            // At most 120 characters of serde's words, cut on a character boundary: they
            // quote the input, which a member chooses (truncate inside a character panics).
            let s = e.to_string();
            let end = s.char_indices().nth(120).map_or(s.len(), |(i, _)| i);
            ProtoError::Malformed(s[..end].to_string())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by the cluster_message fuzz target: a heartbeat whose load is a 44-digit number
    /// decoded, encoded and decoded again to another f64 (serde_json's default float parsing
    /// is not correctly rounded), so a message did not survive its own encoding. Steps: the
    /// fuzzer's input, kept in the corpus: it round-trips exactly.
    #[test]
    fn a_heartbeat_survives_its_own_encoding_whatever_its_numbers() {
        let input =
            include_bytes!("../../fuzz/corpus/cluster_message/regression-float-not-round-tripped");
        let m = Message::decode(input).unwrap();
        assert_eq!(Message::decode(&m.encode()).unwrap(), m);
    }

    /// Found by the cluster_message fuzz target: a datagram whose JSON error quotes a
    /// multi-byte character around byte 120 of serde's message made decode panic (the error
    /// text was cut with String::truncate inside that character); any member could stop
    /// clusterd on every peer with one datagram. Steps: the fuzzer's input, kept in the
    /// corpus; decode says Malformed, no panic.
    #[test]
    fn a_datagram_whose_error_quotes_a_wide_character_is_refused_not_a_panic() {
        let input = include_bytes!(
            "../../fuzz/corpus/cluster_message/regression-error-truncated-inside-a-char"
        );
        assert!(matches!(
            Message::decode(input),
            Err(ProtoError::Malformed(_))
        ));
        let mut wide = br#"{"offer":{"s"#.to_vec();
        wide.extend("\u{20ac}".repeat(200).as_bytes());
        assert!(Message::decode(&wide).is_err());
    }

    pub fn heartbeat() -> Heartbeat {
        Heartbeat {
            node: 3,
            boot_id: "b".repeat(36),
            seq: 7,
            serial: 12,
            digest: "d".repeat(64),
            integrity: Integrity::Verifying,
            stable_root: Some("e".repeat(64)),
            root_matches: Some(true),
            last_verification: Some("2026-11-22T12:00:00Z".into()),
            uptime_s: 1234,
            load1: 0.25,
            mem_available_kb: 123_456,
            memberships: BTreeMap::new(),
            challenge: None,
        }
    }

    /// The largest heartbeat and quote a node sends: every field at its longest, the
    /// memberships of 8 masters and a challenge; a quote of the largest size accepted with a
    /// proof for 4096 peers and a 64-character boot id. Steps: encode each: under the
    /// datagram limit, and each round-trips.
    #[test]
    fn the_largest_heartbeat_and_quote_fit_one_datagram_each() {
        use crate::attest::{
            MAX_ATTEST, MAX_PROOF, QuoteMessage, WireChallenge, WireInclusion, WireQuote,
        };
        let mut h = heartbeat();
        h.seq = u64::MAX;
        h.serial = u64::MAX;
        h.uptime_s = u64::MAX;
        h.mem_available_kb = u64::MAX;
        h.load1 = 123456.789;
        h.memberships = (1..=8).map(|m| (m, u64::MAX)).collect();
        h.challenge = Some(WireChallenge([0xff; 16]));
        let q = QuoteMessage {
            node: u16::MAX,
            boot_id: "b".repeat(64),
            quote: WireQuote {
                attest: vec![0xff; MAX_ATTEST],
                sig: [0xff; 64],
                proof: WireInclusion {
                    seq: u64::MAX,
                    index: u16::MAX,
                    leaves: u16::MAX,
                    path: vec![[0xff; 32]; MAX_PROOF],
                },
            },
        };
        for m in [Message::Heartbeat(h), Message::Quote(q)] {
            let bytes = m.encode();
            assert!(bytes.len() <= MAX_DATAGRAM, "{} bytes", bytes.len());
            assert_eq!(Message::decode(&bytes), Ok(m));
        }
    }

    #[test]
    fn a_full_heartbeat_fits_one_datagram_and_round_trips() {
        let m = Message::Heartbeat(heartbeat());
        let bytes = m.encode();
        assert!(bytes.len() < MAX_DATAGRAM / 2, "{} bytes", bytes.len());
        assert_eq!(Message::decode(&bytes), Ok(m));
    }

    #[test]
    fn hostile_datagrams_are_refused_plainly() {
        assert_eq!(
            Message::decode(&[b' '; 2000]),
            Err(ProtoError::TooLarge(2000))
        );
        assert!(matches!(
            Message::decode(b"{\"offer\":{\"serial\":1}}"),
            Err(ProtoError::Malformed(_))
        ));
        let extra = br#"{"offer":{"serial":1,"digest":"x","more":1}}"#;
        assert!(Message::decode(extra).is_err());
    }
}
