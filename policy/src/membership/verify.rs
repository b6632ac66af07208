//! From a master's signed bytes to a [`Verified`] membership: size, signature by the key the
//! policy lists for that master, then the parse and the limits.

use jiff::Timestamp;

use super::Membership;
use super::check::{Refusal, check_limits};
use crate::model::{NodeId, Policy};
use crate::parse::{Invalid, one_line};
use crate::signature::{TrustedKeys, Verified, VerifyError, verify_signed};
use crate::source::SourceMap;

/// The most a membership may weigh: as much as a policy (65,535 nodes fit).
pub const MAX_MEMBERSHIP_BYTES: usize = crate::load::MAX_POLICY_BYTES as usize;

/// Verifies master `master`'s membership `bytes` and `signature` under `policy` at `now`:
/// refused if too large, if the policy lists no live admission key for `master`, if not
/// signed by that key, if it does not parse, if it names another cluster or master, or if a
/// node in it is outside the key's limits ([`check_limits`]). Collisions with other
/// memberships and rollback are checked where they are known ([`super::in_force`],
/// [`super::store`]).
pub fn verify_membership(
    file: &str,
    master: NodeId,
    bytes: &[u8],
    signature: &[u8],
    policy: &Policy,
    now: Timestamp,
) -> Result<Verified<Membership>, Refusal> {
    if bytes.len() > MAX_MEMBERSHIP_BYTES {
        return Err(Refusal::TooLarge {
            size: bytes.len(),
            limit: MAX_MEMBERSHIP_BYTES,
        });
    }
    let admission = super::check::live_key(policy, master, now)?;
    let trust = TrustedKeys::new(vec![admission.key]);
    let verified = verify_signed(file, bytes, signature, &trust, |b| {
        parse_membership(file, b).map_err(VerifyError::from)
    })
    .map_err(|e| match e {
        VerifyError::Invalid(invalid) => Refusal::Invalid(invalid),
        _ => Refusal::NotSigned {
            master,
            key_id: admission.key.key_id(),
        },
    })?;
    check_limits(policy, &verified)?;
    Ok(verified)
}

/// Parses a membership's text; a problem is placed at file:line:column.
pub fn parse_membership(file: &str, bytes: &[u8]) -> Result<Membership, Invalid> {
    let text = std::str::from_utf8(bytes).map_err(|e| {
        let valid = String::from_utf8_lossy(&bytes[..e.valid_up_to()]);
        Invalid::one(
            file,
            &valid,
            valid.len(),
            String::new(),
            "not valid UTF-8".into(),
        )
    })?;
    toml::from_str(text).map_err(|e| {
        let offset = e.span().map_or(0, |s| s.start);
        let field = SourceMap::new(text).path_at(offset).to_string();
        Invalid::one(file, text, offset, field, one_line(e.message()))
    })
}
