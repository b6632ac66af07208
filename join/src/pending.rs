//! Joins without a token, waiting on a master for the operator: each with the code both the
//! joiner and `tyd join list` show (they must match: no one in the middle), and the
//! operator's decision. A JSON file beside the tokens, mode 0600, replaced atomically; joind
//! adds and removes entries, `tyd join approve|deny` decides.

use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::admit::JoinRequest;

/// Requests waiting at once, at most: a flood of them is refused, not queued.
pub const MAX_WAITING: usize = 8;
/// Joins waiting at once from one LAN address (a relayed one counts as the address the relay
/// saw the joiner at).
pub const MAX_WAITING_PER_SOURCE: usize = 2;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    Waiting,
    Approved,
    Denied,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pending {
    pub id: u32,
    pub code: String,
    pub public_key: String,
    pub name: Option<String>,
    pub endpoint: String,
    /// Where it came from: the joiner's address, or "relayed".
    pub source: String,
    pub since: Timestamp,
    pub decision: Decision,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PendingStore {
    pub requests: Vec<Pending>,
    #[serde(default)]
    next_id: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum PendingError {
    #[error(transparent)]
    File(#[from] crate::statefile::StateFileError),
    #[error("{MAX_WAITING} joins are already waiting for approval")]
    Full,
    #[error("{MAX_WAITING_PER_SOURCE} joins from this address are already waiting for approval")]
    SourceFull,
    #[error("no waiting join {0}")]
    NoSuch(u32),
    #[error("join {0} was already decided")]
    Decided(u32),
}

impl PendingStore {
    pub fn load(path: &Path) -> Result<Self, PendingError> {
        Ok(crate::statefile::load(path, "a list of waiting joins")?)
    }

    pub fn save(&self, path: &Path) -> Result<(), PendingError> {
        Ok(crate::statefile::save(path, self)?)
    }

    /// Records a waiting join; its id is what the operator approves.
    pub fn add(
        &mut self,
        req: &JoinRequest,
        code: &str,
        seen: Option<IpAddr>,
        now: Timestamp,
    ) -> Result<u32, PendingError> {
        if let Some(ip) = seen {
            let from = ip.to_string();
            let waiting = self
                .requests
                .iter()
                .filter(|r| r.source == from && r.decision == Decision::Waiting)
                .count();
            if waiting >= MAX_WAITING_PER_SOURCE {
                return Err(PendingError::SourceFull);
            }
        }
        if self.requests.len() >= MAX_WAITING {
            return Err(PendingError::Full);
        }
        self.next_id = self.next_id.wrapping_add(1).max(1);
        let id = self.next_id;
        self.requests.push(Pending {
            id,
            code: code.to_string(),
            public_key: req.public_key.clone(),
            name: req.name.clone(),
            endpoint: req.endpoint.ip().to_string(),
            source: seen.map_or_else(|| "relayed".to_string(), |ip| ip.to_string()),
            since: now,
            decision: Decision::Waiting,
        });
        Ok(id)
    }

    pub fn get(&self, id: u32) -> Option<&Pending> {
        self.requests.iter().find(|r| r.id == id)
    }

    /// The operator's decision on a waiting join.
    pub fn decide(&mut self, id: u32, decision: Decision) -> Result<(), PendingError> {
        let r = self
            .requests
            .iter_mut()
            .find(|r| r.id == id)
            .ok_or(PendingError::NoSuch(id))?;
        if r.decision != Decision::Waiting {
            return Err(PendingError::Decided(id));
        }
        r.decision = decision;
        Ok(())
    }

    pub fn remove(&mut self, id: u32) {
        self.requests.retain(|r| r.id != id);
    }

    /// Drops entries older than `wait` (their joiner has given up; joind was restarted).
    pub fn prune(&mut self, now: Timestamp, wait: Duration) {
        let wait = jiff::SignedDuration::try_from(wait).unwrap_or(jiff::SignedDuration::MAX);
        self.requests
            .retain(|r| r.since.checked_add(wait).is_ok_and(|end| now < end));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(n: u8) -> JoinRequest {
        JoinRequest {
            public_key: policy::WgPublicKey::from_secret(&[n; 32]).to_base64(),
            name: None,
            endpoint: format!("198.18.0.{n}:51820").parse().unwrap(),
            attestation: None,
        }
    }

    #[test]
    fn a_waiting_join_is_decided_once_and_the_list_is_bounded() {
        let now = Timestamp::now();
        let mut s = PendingStore::default();
        let id = s.add(&req(1), "123-456", None, now).unwrap();
        assert_eq!(s.get(id).unwrap().source, "relayed");
        s.decide(id, Decision::Approved).unwrap();
        assert!(matches!(
            s.decide(id, Decision::Denied),
            Err(PendingError::Decided(_))
        ));
        assert!(matches!(
            s.decide(99, Decision::Denied),
            Err(PendingError::NoSuch(99))
        ));
        for n in 2..=MAX_WAITING as u8 {
            s.add(&req(n), "000-000", None, now).unwrap();
        }
        assert!(matches!(
            s.add(&req(50), "000-000", None, now),
            Err(PendingError::Full)
        ));
        s.prune(
            now + jiff::SignedDuration::from_secs(601),
            Duration::from_secs(600),
        );
        assert!(s.requests.is_empty());
    }

    #[test]
    fn the_list_survives_a_round_trip_private() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pending.json");
        let mut s = PendingStore::load(&path).unwrap();
        s.add(
            &req(1),
            "123-456",
            Some("198.18.0.1".parse().unwrap()),
            Timestamp::now(),
        )
        .unwrap();
        s.save(&path).unwrap();
        assert_eq!(PendingStore::load(&path).unwrap(), s);
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(&path).unwrap().permissions(),
        );
        assert_eq!(mode & 0o777, 0o600);
    }

    /// Attack (one LAN address, issue 26 #4): one address filled all 8 waiting slots, and a
    /// legitimate join without a token was refused ("8 joins are already waiting") for 10
    /// minutes. Steps: one address adds waiting joins until refused: it gets
    /// MAX_WAITING_PER_SOURCE; another address still gets a slot.
    #[test]
    fn one_address_cannot_fill_the_waiting_list() {
        let now = Timestamp::now();
        let mut s = PendingStore::default();
        let attacker: IpAddr = "198.18.0.66".parse().unwrap();
        let got = (1..=MAX_WAITING as u8)
            .filter(|n| s.add(&req(*n), "000-000", Some(attacker), now).is_ok())
            .count();
        assert_eq!(got, MAX_WAITING_PER_SOURCE);
        assert!(matches!(
            s.add(&req(40), "000-000", Some(attacker), now),
            Err(PendingError::SourceFull)
        ));
        assert!(
            s.add(
                &req(41),
                "111-111",
                Some("198.18.0.7".parse().unwrap()),
                now
            )
            .is_ok()
        );
    }
}
