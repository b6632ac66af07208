//! Joins without a token: the master's side of the approval exchange, the waiting list and
//! the operator's decision, and the limit on how many begin a minute.

use std::io::{Read, Write};
use std::net::IpAddr;
use std::os::fd::AsFd;
use std::time::Duration;

use jiff::Timestamp;

use super::{
    APPROVALS_PER_MINUTE, Added, Asked, Master, MasterError, Outcome, ServeError, read_request,
};
use crate::admit::{JoinAnswer, JoinRequest};
use crate::pending::{Decision, PendingError, PendingStore};
use crate::wire;
use policy::Role;

impl Master {
    /// Whether a join without a token may begin at `now` ([`APPROVALS_PER_MINUTE`]).
    pub(super) fn approval_may_begin(&self, now: std::time::Instant) -> bool {
        let mut began = self.approvals.lock().unwrap_or_else(|p| p.into_inner());
        while began
            .front()
            .is_some_and(|t| now.saturating_duration_since(*t) >= Duration::from_secs(60))
        {
            began.pop_front();
        }
        if began.len() >= APPROVALS_PER_MINUTE {
            return false;
        }
        began.push_back(now);
        true
    }

    /// A join without a token: recorded as waiting with its code, answered when the
    /// operator approves or denies it (`tyd join approve|deny`), or refused after the wait.
    pub(super) fn serve_approval<S: Read + Write + AsFd>(
        &self,
        stream: S,
        seen: Option<IpAddr>,
    ) -> Outcome {
        let (mut ch, code) = match wire::accept_for_approval(stream) {
            Ok(x) => x,
            Err(e) => return Outcome::Failed(e),
        };
        let (answer, outcome) = match self.await_approval(&mut ch, &code, seen) {
            Ok(x) => x,
            Err(ServeError::Wire(e)) => return Outcome::Failed(e),
            Err(ServeError::Master(reason)) => (
                JoinAnswer::Refused {
                    reason: "the master could not admit this node; its log says why".into(),
                },
                Outcome::ApprovalEnded {
                    code,
                    result: reason.to_string(),
                    decided: true,
                },
            ),
        };
        let bytes = serde_json::to_vec(&answer).unwrap_or_default();
        let _ = ch.send(&bytes);
        outcome
    }

    fn await_approval<S: Read + Write + AsFd>(
        &self,
        ch: &mut wire::Channel<S>,
        code: &str,
        seen: Option<IpAddr>,
    ) -> Result<Ended, ServeError> {
        let req = match read_request(ch)? {
            Ok(r) => r,
            Err(malformed) => return Ok(cut_short(code, malformed.to_string())),
        };
        let roles = [self.approval_role()];
        let exchange = *ch.handshake_hash();
        let asked = Asked::over(&req, seen, &exchange);
        // Refused at once when it could never be admitted (a taken name, a foreign address,
        // a TPM quote that is not over this exchange).
        if let Err(why) = self.could_admit(asked, &roles) {
            return Ok(cut_short(code, why));
        }
        let id = match self.add_pending(&req, code, seen)? {
            Ok(id) => id,
            Err(full) => return Ok(cut_short(code, full.to_string())),
        };
        let until = std::time::Instant::now() + self.approval_wait;
        while std::time::Instant::now() < until {
            std::thread::sleep(Duration::from_millis(250));
            if let Some(ended) = self.look_at_decision(ch, code, id, asked, &roles)? {
                return Ok(ended);
            }
        }
        Ok(self.wait_ran_out(code, id))
    }

    /// Records `req` as waiting with its code and returns its id; the inner error: the list
    /// has no room for it.
    fn add_pending(
        &self,
        req: &JoinRequest,
        code: &str,
        seen: Option<IpAddr>,
    ) -> Result<Result<u32, PendingError>, MasterError> {
        let _one_at_a_time = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        let mut pending = PendingStore::load(&self.pending)?;
        let now = Timestamp::now();
        pending.prune(now, self.approval_wait);
        let id = match pending.add(req, code, seen, now) {
            Ok(id) => id,
            Err(full) => return Ok(Err(full)),
        };
        pending.save(&self.pending)?;
        Ok(Ok(id))
    }

    /// One look at the waiting join `id`, under the lock: how it ended, once the master
    /// stops, the joiner hangs up or the operator decides; None while it still waits.
    fn look_at_decision<S: Read + Write + AsFd>(
        &self,
        ch: &wire::Channel<S>,
        code: &str,
        id: u32,
        asked: Asked<'_>,
        roles: &[Role],
    ) -> Result<Option<Ended>, ServeError> {
        let _one_at_a_time = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        if self.stopping.load(std::sync::atomic::Ordering::Relaxed) {
            self.remove_pending(id)?;
            return Ok(Some(refused(
                code,
                "the master is stopping: ask again once it is back".into(),
            )));
        }
        if ch.peer_hung_up() {
            // Its place is free at once (eight gone joiners held eight for 10 minutes).
            self.remove_pending(id)?;
            return Ok(Some(cut_short(
                code,
                "the joiner hung up while it waited".into(),
            )));
        }
        let mut pending = PendingStore::load(&self.pending).map_err(MasterError::from)?;
        let decision = pending.get(id).map(|r| r.decision);
        match decision {
            None => Ok(Some(refused(
                code,
                "the request was withdrawn on the master".into(),
            ))),
            Some(Decision::Waiting) => Ok(None),
            Some(Decision::Denied) => {
                pending.remove(id);
                pending.save(&self.pending).map_err(MasterError::from)?;
                Ok(Some(refused(code, "denied by the operator".into())))
            }
            Some(Decision::Approved) => {
                pending.remove(id);
                pending.save(&self.pending).map_err(MasterError::from)?;
                self.admit_approved(code, asked, roles).map(Some)
            }
        }
    }

    /// Adds the node the operator approved; the caller holds the lock.
    fn admit_approved(
        &self,
        code: &str,
        asked: Asked<'_>,
        roles: &[Role],
    ) -> Result<Ended, ServeError> {
        Ok(match self.add(asked, roles, None, |_| Ok(()))? {
            Added::Refused(reason) | Added::Later(reason) => refused(code, reason),
            Added::Already { node, answer, .. } => {
                ended(code, answer, format!("approved; already node {node}"), true)
            }
            Added::New {
                node, name, answer, ..
            } => ended(
                code,
                answer,
                format!("approved; joined as node {node} ({name})"),
                true,
            ),
        })
    }

    /// Drops the waiting join `id` from the list; the caller holds the lock.
    fn remove_pending(&self, id: u32) -> Result<(), MasterError> {
        let mut pending = PendingStore::load(&self.pending)?;
        pending.remove(id);
        pending.save(&self.pending)?;
        Ok(())
    }

    /// No decision came within the wait: the join leaves the list, refused.
    fn wait_ran_out(&self, code: &str, id: u32) -> Ended {
        let _one_at_a_time = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        if let Ok(mut pending) = PendingStore::load(&self.pending) {
            pending.remove(id);
            let _ = pending.save(&self.pending);
        }
        refused(
            code,
            format!(
                "no decision within {}",
                policy::model::duration::format(&self.approval_wait)
            ),
        )
    }
}

/// A join without a token that ended: the joiner's answer and the outcome for the log.
type Ended = (JoinAnswer, Outcome);

/// The join with code `code` ended with `answer`; `decided`: see [`Outcome::ApprovalEnded`].
fn ended(code: &str, answer: JoinAnswer, result: String, decided: bool) -> Ended {
    (
        answer,
        Outcome::ApprovalEnded {
            code: code.to_string(),
            result,
            decided,
        },
    )
}

/// Refused, decided by the operator (or by nobody, within the wait).
fn refused(code: &str, reason: String) -> Ended {
    let answer = JoinAnswer::Refused {
        reason: reason.clone(),
    };
    ended(code, answer, reason, true)
}

/// Refused before anyone could decide: counts against the source.
fn cut_short(code: &str, reason: String) -> Ended {
    let answer = JoinAnswer::Refused {
        reason: reason.clone(),
    };
    ended(code, answer, reason, false)
}
