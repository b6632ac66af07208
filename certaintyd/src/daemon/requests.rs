//! certaintyd's answers to what comes from outside the tree: signals, control requests on
//! its socket (status, signed stop, signed maintenance windows) and a window's end.

use jiff::Timestamp;
use tracing::{info, warn};

use crate::control::{Command, ControlRequest, ControlResponse};
use crate::maintenance::{Expect, RequestKind, verify_request};
use crate::verdict::Cause;

use super::{Daemon, Exit, Flow, StartupError, Window};

impl Daemon {
    pub(super) async fn signal(&mut self, name: &str) -> Flow {
        if !self.cfg.signals_are_violations {
            info!(signal = name, "stopping on signal");
            return Flow::Exit(Exit::Stopped);
        }
        let detail = format!("{name} received: only a signed stop request may stop certaintyd");
        // A stop attempt is acted on even during maintenance.
        let window = self.window.take();
        let flow = self.violation(Cause::Signal, vec![], detail).await;
        self.window = window;
        flow
    }

    pub(super) async fn command(&mut self, cmd: Command) -> Flow {
        let (kind_wanted, request, signature) = match &cmd.request {
            ControlRequest::Status => {
                let _ = cmd.reply.send(ControlResponse::ok("status"));
                return Flow::Continue;
            }
            ControlRequest::Maintain { request, signature } => {
                (RequestKind::Maintain, request, signature)
            }
            ControlRequest::Stop { request, signature } => (RequestKind::Stop, request, signature),
        };
        let expect = Expect {
            cluster: &self.cfg.cluster,
            node: &self.cfg.node,
            max_maintenance: self.cfg.max_maintenance,
            now: Timestamp::now(),
        };
        let verified = verify_request(
            request.as_bytes(),
            signature.as_bytes(),
            &self.cfg.maintenance_keys,
            &expect,
            &mut self.nonces,
        );
        let verified = match verified {
            Ok(v) if v.kind == kind_wanted => v,
            Ok(_) => {
                let _ = cmd.reply.send(ControlResponse::err(
                    "request kind does not match the operation",
                ));
                return Flow::Continue;
            }
            Err(e) => {
                warn!(cause = %e, "signed control request refused");
                let _ = cmd.reply.send(ControlResponse::err(e.to_string()));
                return Flow::Continue;
            }
        };
        let signer = verified.signer().key_id();
        match verified.kind {
            RequestKind::Stop => {
                info!(signer = %signer, "authorised stop");
                let _ = cmd.reply.send(ControlResponse::ok("stopping"));
                Flow::Exit(Exit::Stopped)
            }
            RequestKind::Maintain => {
                let until_wall = Timestamp::now() + verified.duration;
                let until_wall = until_wall.round(jiff::Unit::Second).unwrap_or(until_wall);
                self.window = Some(Window {
                    until: tokio::time::Instant::now() + verified.duration,
                    until_wall,
                    rebaseline: verified.rebaseline,
                    signer: signer.clone(),
                });
                if let Ok(mut s) = self.status.lock() {
                    s.maintenance_until = Some(until_wall.to_string());
                    s.state = crate::control::State::Maintenance;
                }
                self.write_metrics();
                warn!(signer = %signer, until = %until_wall, rebaseline = verified.rebaseline, "maintenance window opened");
                let _ = cmd.reply.send(ControlResponse::ok(format!(
                    "maintenance until {until_wall}"
                )));
                Flow::Continue
            }
        }
    }

    pub(super) async fn end_window(&mut self) -> Result<Flow, StartupError> {
        let Some(w) = self.window.take() else {
            return Ok(Flow::Continue);
        };
        if let Ok(mut s) = self.status.lock() {
            s.maintenance_until = None;
            s.state = crate::control::State::Verifying;
        }
        self.write_metrics();
        if w.rebaseline {
            info!(signer = %w.signer, "maintenance window closed: taking a new baseline");
            return self.establish().await;
        }
        info!(signer = %w.signer, "maintenance window closed: verifying against the old baseline");
        Ok(self.full_verification().await)
    }
}
