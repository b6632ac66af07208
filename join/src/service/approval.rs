//! Joins without a token: the master's side of the approval exchange, the waiting list and
//! the operator's decision, and the limit on how many begin a minute.

use std::io::{Read, Write};
use std::net::IpAddr;
use std::os::fd::AsFd;
use std::time::Duration;

use jiff::Timestamp;
use policy::edit::PolicyEdit;

use super::{APPROVALS_PER_MINUTE, Added, Master, MasterError, Outcome, ServeError, read_request};
use super::{approval_role, root_in_ram};
use crate::admit::{JoinAnswer, decide};
use crate::pending::{Decision, PendingStore};
use crate::wire;

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
    ) -> Result<(JoinAnswer, Outcome), ServeError> {
        let ended = |answer: JoinAnswer, result: String, decided: bool| {
            (
                answer,
                Outcome::ApprovalEnded {
                    code: code.to_string(),
                    result,
                    decided,
                },
            )
        };
        let answer = |reason: &str| JoinAnswer::Refused {
            reason: reason.to_string(),
        };
        // Decided by the operator (or by nobody, within the wait).
        let refused = |reason: String| ended(answer(&reason), reason, true);
        // Ended before anyone could decide: counts against the source.
        let cut_short = |reason: String| ended(answer(&reason), reason, false);
        let req = match read_request(ch)? {
            Ok(r) => r,
            Err(malformed) => return Ok(cut_short(malformed.to_string())),
        };
        let roles = [approval_role(root_in_ram())];
        // Refused at once when it could never be admitted (a taken name, a foreign address).
        {
            let now = Timestamp::now();
            let current = PolicyEdit::open(&self.policy)
                .and_then(|e| e.current(now))
                .map_err(MasterError::from)?;
            if let Err(r) = decide(&current, &req, seen, &roles, None) {
                return Ok(cut_short(r.to_string()));
            }
        }
        let id = {
            let _one_at_a_time = self.lock.lock().unwrap_or_else(|p| p.into_inner());
            let mut pending = PendingStore::load(&self.pending).map_err(MasterError::from)?;
            let now = Timestamp::now();
            pending.prune(now, self.approval_wait);
            let id = match pending.add(&req, code, seen, now) {
                Ok(id) => id,
                Err(full) => return Ok(cut_short(full.to_string())),
            };
            pending.save(&self.pending).map_err(MasterError::from)?;
            id
        };
        let until = std::time::Instant::now() + self.approval_wait;
        while std::time::Instant::now() < until {
            std::thread::sleep(Duration::from_millis(250));
            let _one_at_a_time = self.lock.lock().unwrap_or_else(|p| p.into_inner());
            if self.stopping.load(std::sync::atomic::Ordering::Relaxed) {
                let mut pending = PendingStore::load(&self.pending).map_err(MasterError::from)?;
                pending.remove(id);
                pending.save(&self.pending).map_err(MasterError::from)?;
                return Ok(refused(
                    "the master is stopping: ask again once it is back".into(),
                ));
            }
            if ch.peer_hung_up() {
                // Its place is free at once (eight gone joiners held eight for 10 minutes).
                let mut pending = PendingStore::load(&self.pending).map_err(MasterError::from)?;
                pending.remove(id);
                pending.save(&self.pending).map_err(MasterError::from)?;
                return Ok(cut_short("the joiner hung up while it waited".into()));
            }
            let mut pending = PendingStore::load(&self.pending).map_err(MasterError::from)?;
            let decision = pending.get(id).map(|r| r.decision);
            match decision {
                None => return Ok(refused("the request was withdrawn on the master".into())),
                Some(Decision::Waiting) => continue,
                Some(Decision::Denied) => {
                    pending.remove(id);
                    pending.save(&self.pending).map_err(MasterError::from)?;
                    return Ok(refused("denied by the operator".into()));
                }
                Some(Decision::Approved) => {
                    pending.remove(id);
                    pending.save(&self.pending).map_err(MasterError::from)?;
                    return Ok(match self.add(&req, seen, &roles, None, |_| Ok(()))? {
                        Added::Refused(reason) | Added::Later(reason) => refused(reason),
                        Added::Already { node, answer, .. } => {
                            ended(answer, format!("approved; already node {node}"), true)
                        }
                        Added::New {
                            node, name, answer, ..
                        } => ended(
                            answer,
                            format!("approved; joined as node {node} ({name})"),
                            true,
                        ),
                    });
                }
            }
        }
        let _one_at_a_time = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        if let Ok(mut pending) = PendingStore::load(&self.pending) {
            pending.remove(id);
            let _ = pending.save(&self.pending);
        }
        Ok(refused(format!(
            "no decision within {}",
            policy::model::duration::format(&self.approval_wait)
        )))
    }
}
