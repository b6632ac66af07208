//! Signed maintenance windows and authorised stops: how an operator works on a node without
//! killing its integrity daemon. A request is JSON, signed (detached ed25519, like the policy)
//! by a key the policy lists in `certainty.maintenance_keys`; it names the cluster (and
//! optionally the node), is fresh, bounded in duration, and used once. The request's format is
//! `proto::maintenance` (`tyd certainty` writes it); what certaintyd accepts is decided here.

use std::collections::HashSet;
use std::time::Duration;

use jiff::Timestamp;
use policy::{TrustedKeys, Verified, VerifyError, verify_signed};

pub use proto::maintenance::{Request, RequestKind};

/// How far a request's clock may be ahead of ours, and how old it may be.
const MAX_SKEW: Duration = Duration::from_secs(60);
const MAX_AGE: Duration = Duration::from_secs(300);

#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error("{0}")]
    Signature(#[from] VerifyError),
    #[error("request is not valid JSON: {0}")]
    Malformed(String),
    #[error("request is for cluster {got:?}, this node is in {want:?}")]
    WrongCluster { got: String, want: String },
    #[error("request is for node {got:?}, this is {want:?}")]
    WrongNode { got: String, want: String },
    #[error("request was issued at {0}, which is stale or in the future")]
    Stale(Timestamp),
    #[error(
        "maintenance of {} exceeds the policy's maximum of {}",
        policy::model::duration::format(asked),
        policy::model::duration::format(max)
    )]
    TooLong { asked: Duration, max: Duration },
    #[error("maintenance duration must be greater than 0")]
    Empty,
    #[error("request nonce was already used")]
    Replayed,
    #[error("no maintenance keys in the policy: maintenance and authorised stops are disabled")]
    NoKeys,
}

/// What this node expects of a request.
#[derive(Debug)]
pub struct Expect<'a> {
    pub cluster: &'a str,
    pub node: &'a str,
    pub max_maintenance: Duration,
    pub now: Timestamp,
}

/// Verifies signature, then content; records the nonce so the request cannot be replayed.
pub fn verify_request(
    bytes: &[u8],
    signature: &[u8],
    keys: &TrustedKeys,
    expect: &Expect<'_>,
    used_nonces: &mut HashSet<String>,
) -> Result<Verified<Request>, RequestError> {
    if keys.keys().is_empty() {
        return Err(RequestError::NoKeys);
    }
    let verified = verify_signed("maintenance request", bytes, signature, keys, |b| {
        serde_json::from_slice::<Request>(b).map_err(|e| VerifyError::Content {
            file: "maintenance request".into(),
            reason: e.to_string(),
        })
    })?;
    let r = &*verified;
    if r.cluster != expect.cluster {
        return Err(RequestError::WrongCluster {
            got: r.cluster.clone(),
            want: expect.cluster.to_string(),
        });
    }
    if let Some(node) = &r.node
        && node != expect.node
    {
        return Err(RequestError::WrongNode {
            got: node.clone(),
            want: expect.node.to_string(),
        });
    }
    let age = expect.now.duration_since(r.issued_at);
    let too_old = age > jiff::SignedDuration::try_from(MAX_AGE).unwrap_or_default();
    let too_new = -age > jiff::SignedDuration::try_from(MAX_SKEW).unwrap_or_default();
    if too_old || too_new {
        return Err(RequestError::Stale(r.issued_at));
    }
    if r.kind == RequestKind::Maintain {
        if r.duration.is_zero() {
            return Err(RequestError::Empty);
        }
        if r.duration > expect.max_maintenance {
            return Err(RequestError::TooLong {
                asked: r.duration,
                max: expect.max_maintenance,
            });
        }
    }
    if !used_nonces.insert(r.nonce.clone()) {
        return Err(RequestError::Replayed);
    }
    Ok(verified)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::SigningKey;

    fn key() -> SigningKey {
        SigningKey::from_bytes(&[5; 32])
    }

    fn now() -> Timestamp {
        "2026-06-01T12:00:00Z".parse().unwrap()
    }

    fn request(edit: impl FnOnce(&mut Request)) -> (Vec<u8>, Vec<u8>) {
        let mut r = Request {
            kind: RequestKind::Maintain,
            cluster: "lab".into(),
            node: Some("drone1".into()),
            issued_at: now(),
            duration: Duration::from_secs(600),
            rebaseline: false,
            nonce: "n1".into(),
        };
        edit(&mut r);
        let bytes = serde_json::to_vec(&r).unwrap();
        let sig = policy::sign(&bytes, &key()).into_bytes();
        (bytes, sig)
    }

    fn check(bytes: &[u8], sig: &[u8], used: &mut HashSet<String>) -> Result<Request, String> {
        let keys = TrustedKeys::new(vec![(&key()).into()]);
        let expect = Expect {
            cluster: "lab",
            node: "drone1",
            max_maintenance: Duration::from_secs(3600),
            now: now(),
        };
        verify_request(bytes, sig, &keys, &expect, used)
            .map(|v| (*v).clone())
            .map_err(|e| e.to_string())
    }

    #[test]
    fn accepts_a_good_request_once() {
        let (b, s) = request(|_| {});
        let mut used = HashSet::new();
        assert_eq!(
            check(&b, &s, &mut used).unwrap().duration,
            Duration::from_secs(600)
        );
        assert_eq!(
            check(&b, &s, &mut used).unwrap_err(),
            "request nonce was already used"
        );
    }

    #[test]
    fn refuses_bad_requests() {
        let mut used = HashSet::new();
        type Edit = Box<dyn FnOnce(&mut Request)>;
        let cases: Vec<(Edit, &str)> = vec![
            (
                Box::new(|r| r.cluster = "other".into()),
                "request is for cluster \"other\", this node is in \"lab\"",
            ),
            (
                Box::new(|r| r.node = Some("drone2".into())),
                "request is for node \"drone2\", this is \"drone1\"",
            ),
            (
                Box::new(|r| r.duration = Duration::from_secs(7200)),
                "maintenance of 2h exceeds the policy's maximum of 1h",
            ),
            (
                Box::new(|r| r.duration = Duration::ZERO),
                "maintenance duration must be greater than 0",
            ),
            (
                Box::new(|r| r.issued_at = "2026-06-01T11:50:00Z".parse().unwrap()),
                "request was issued at 2026-06-01T11:50:00Z, which is stale or in the future",
            ),
            (
                Box::new(|r| r.issued_at = "2026-06-01T12:05:00Z".parse().unwrap()),
                "request was issued at 2026-06-01T12:05:00Z, which is stale or in the future",
            ),
        ];
        for (edit, want) in cases {
            let (b, s) = request(edit);
            assert_eq!(check(&b, &s, &mut used).unwrap_err(), want);
        }
        let (b, _) = request(|_| {});
        let other = policy::sign(&b, &SigningKey::from_bytes(&[6; 32]));
        let err = check(&b, other.as_bytes(), &mut used).unwrap_err();
        assert!(
            err.contains("which is not one of the 1 trusted here"),
            "{err}"
        );
    }
}
