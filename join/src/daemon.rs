//! joind's shell: the listening sockets, the policy in force, one thread per connection, the
//! limits and the log. `run` serves until its shutdown descriptor becomes readable (`main`
//! passes a signalfd for SIGTERM and SIGINT; a test, any descriptor it can make readable).
//! The decisions are `guard`, `service`, `admit`, `fork` and `discover`.

use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use jiff::Timestamp;
use std::os::fd::{AsFd, BorrowedFd};

use crate::cli::Args;
use crate::guard::{Guard, Turned, Verdict};
use crate::service::{Master, Outcome, RelayError, SharedPolicy, Source, relay};
use policy::exit::Exit;
use policy::{Accepted, Policy, PolicyInForce, PolicyPaths, Role, WgPublicKey};
use tracing::{error, info, warn};

/// Read and write timeouts of one join connection.
const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// Everything a joiner sends (hello, handshake, request) must have arrived within this.
const EXCHANGE_DEADLINE: Duration = Duration::from_secs(10);
/// How long a stop waits for the joins under way: every exchange is over within its
/// deadline, and a join waiting for the operator ends within 0.25 s of the stop.
const STOP_WITHIN: Duration = Duration::from_secs(12);
/// Repeated failures and turned-away connections are logged once per this interval.
const SUMMARY_EVERY: Duration = Duration::from_secs(10);

struct Node {
    args: Args,
    /// The policy files, read when their stamps change and put through joind's rollback
    /// store (not once per connection: anyone on the LAN can open connections).
    in_force: SharedPolicy,
    me: WgPublicKey,
    master: Option<Master>,
    /// Joins relayed, and joins that could not be relayed: one line per 10 s each at most
    /// (anyone on the LAN can open connections).
    relayed: Throttled,
    relay_failed: Throttled,
}

/// A line logged at most once per [`SUMMARY_EVERY`], with how many times it was due.
struct Throttled(Mutex<(Option<Instant>, u64)>);

impl Throttled {
    fn new() -> Self {
        Self(Mutex::new((None, 0)))
    }

    /// Counts one; the count since the last line when a line is due now.
    fn due(&self) -> Option<u64> {
        let mut t = self.0.lock().unwrap_or_else(|p| p.into_inner());
        t.1 += 1;
        if t.0.is_some_and(|at| at.elapsed() < SUMMARY_EVERY) {
            return None;
        }
        let count = t.1;
        *t = (Some(Instant::now()), 0);
        Some(count)
    }
}

/// A relayed joiner's places at once ([`Guard::claim`]), given back when dropped.
struct Claimed<'a> {
    guard: &'a Mutex<Guard>,
    ip: IpAddr,
}

impl Drop for Claimed<'_> {
    fn drop(&mut self) {
        if let Ok(mut g) = self.guard.lock() {
            g.release(self.ip);
        }
    }
}

/// Counts of what is logged in summary, not line by line (untrusted input).
#[derive(Default)]
struct Tally {
    failed: u64,
    turned_away: u64,
    since: Option<Instant>,
}

impl Node {
    /// The policy in force, if it has not expired: read again only when its files change.
    /// A refusal is logged once per reason; the policy accepted before stays in force.
    fn policy(&self) -> Option<Arc<Accepted>> {
        crate::service::policy_in_force(&self.in_force, Timestamp::now())
    }

    /// The masters' tunnel addresses on the join port (this node excluded).
    fn masters(&self, p: &Policy, port: u16) -> Vec<SocketAddr> {
        p.nodes
            .iter()
            .filter(|n| n.roles.contains(&Role::Master) && n.public_key != self.me)
            .filter_map(|n| n.addresses.first())
            .map(|a| SocketAddr::new(*a, port))
            .collect()
    }

    /// Whether `ip` is a member's tunnel address (a relay, or a member leaving).
    fn is_member(&self, ip: IpAddr) -> bool {
        crate::service::effective_in_force(&self.in_force, Timestamp::now())
            .is_some_and(|p| p.nodes.iter().any(|n| n.addresses.contains(&ip)))
    }

    /// Serves one connection; returns what it tells about the joiner, and the joiner's
    /// address: the connection's source, or for a relayed join where the relay saw it.
    /// `member`: `from` is a member's tunnel address ([`Node::is_member`], asked at accept).
    fn handle(
        &self,
        stream: TcpStream,
        from: SocketAddr,
        member: bool,
        guard: &Mutex<Guard>,
    ) -> (Verdict, IpAddr) {
        let _ = stream.set_read_timeout(Some(IO_TIMEOUT));
        let _ = stream.set_write_timeout(Some(IO_TIMEOUT));
        let joiner = from.ip();
        let Some(p) = self.policy() else {
            return (Verdict::Failed, joiner);
        };
        let Some(master) = &self.master else {
            let port = p.join.as_ref().map_or(0, |j| j.port);
            // The master judges what it carries, and backs the joiner off by the address
            // recorded here; this side backs off only what is not a join at all.
            return match relay(stream, &self.masters(&p, port), IO_TIMEOUT) {
                Ok(to) => {
                    if let Some(relayed) = self.relayed.due() {
                        info!(source = %from.ip(), master = %to, relayed,
                            "join request relayed to a master (relayed: how many since the last such line)");
                    }
                    (Verdict::Neutral, joiner)
                }
                Err(RelayError::Hello(_)) => (Verdict::Failed, joiner),
                Err(e) => {
                    if let Some(failed) = self.relay_failed.due() {
                        warn!(source = %from.ip(), reason = %e, failed,
                            "cannot relay a join request (failed: how many since the last such line)");
                    }
                    (Verdict::Neutral, joiner)
                }
            };
        };
        let source = if member {
            // A relay sends where it saw the joiner first; a member leaving sends its hello.
            let mut prefix = [0u8; 4];
            match stream.peek(&mut prefix) {
                Ok(4) if crate::wire::starts_with_seen(&prefix) => {
                    match crate::wire::read_seen(&mut &stream) {
                        Ok(seen) => {
                            // The joiner it carries is held to what it would be held to
                            // coming straight: its back-off, and its places at once.
                            let admitted = guard.lock().is_ok_and(|mut g| {
                                g.backed_off(seen, Instant::now()).is_none()
                                    && g.claim(seen).is_ok()
                            });
                            if !admitted {
                                return (Verdict::Neutral, seen);
                            }
                            let _places = Claimed { guard, ip: seen };
                            return self.serve(
                                master,
                                stream,
                                from,
                                Source::Relayed {
                                    relay: from.ip(),
                                    seen,
                                },
                            );
                        }
                        Err(_) => return (Verdict::Failed, joiner),
                    }
                }
                _ => Source::Tunnel(from.ip()),
            }
        } else {
            Source::Lan(from.ip())
        };
        self.serve(master, stream, from, source)
    }

    /// Serves a join or a leave as a master, from `source`.
    fn serve(
        &self,
        master: &Master,
        stream: TcpStream,
        from: SocketAddr,
        source: Source,
    ) -> (Verdict, IpAddr) {
        let joiner = source.seen().unwrap_or(from.ip());
        // A relayed joiner's address is the relay's word for it, and is logged as such.
        let shown = match source {
            Source::Relayed { relay, seen } => format!("{seen} (as relay {relay} says it saw it)"),
            _ => from.ip().to_string(),
        };
        let stream = crate::deadline::Deadline::new(stream, EXCHANGE_DEADLINE, IO_TIMEOUT);
        let outcome = master.serve(stream, source);
        let verdict = outcome.verdict();
        match outcome {
            Outcome::Joined {
                token,
                id,
                name,
                serial,
                replaced,
            } => {
                if replaced {
                    info!(token = %token, node = id, name = %name, serial, source = %shown,
                        "ephemeral node back with a new key; its lost entry now has that key, signed and in place");
                } else {
                    info!(token = %token, node = id, name = %name, serial, source = %shown,
                        "node joined; the new policy is signed and in place");
                }
            }
            Outcome::Already { token, id, name } => {
                info!(token = %token, node = id, name = %name, source = %shown,
                    "join repeated by a member; answered with the policy in force");
            }
            Outcome::Refused { token, reason } => {
                warn!(token = %token, reason = %reason, source = %shown, "join refused");
            }
            // Only what an operator decided is a line of its own; the rest (anyone on the LAN
            // can end such joins by the thousand) is in the summary of failures.
            Outcome::ApprovalEnded {
                code,
                result,
                decided: true,
            } => {
                info!(code = %code, result = %result, source = %shown, "join without a token ended");
            }
            Outcome::Left { id, name, serial } => {
                info!(node = id, name = %name, serial, "node left at its own request; the new policy is signed and in place");
            }
            Outcome::LeaveRefused { from, reason } => {
                warn!(source = %from, reason = %reason, "leave refused");
            }
            Outcome::LeaveNotWritten { id, name, reason } => {
                error!(node = id, name = %name, reason = %reason,
                    "node was told it was removed at its own request, but the new policy could not be written: remove it by hand (tyd node remove)");
            }
            Outcome::Failed(_)
            | Outcome::NotMine { .. }
            | Outcome::ApprovalsBusy
            | Outcome::ApprovalEnded { decided: false, .. } => {}
        }
        (verdict, joiner)
    }
}

fn start(args: Args) -> Result<(Node, TcpListener, UdpSocket), (Exit, String)> {
    let trust =
        policy::load::read_trust(&args.trust).map_err(|e| (Exit::KeyFile, e.to_string()))?;
    let secret = policy::keys::read_secret_key(&args.key, policy::keys::KeyKind::NodeSecret)
        .map_err(|e| (Exit::KeyFile, e.to_string()))?;
    let me = WgPublicKey::from_secret(&secret);
    let paths = PolicyPaths::new(&args.policy, &args.trust, &args.state);
    let in_force =
        PolicyInForce::open(paths, args.min_serial).map_err(|e| ((&e).into(), e.to_string()))?;
    let in_force: SharedPolicy = Arc::new(Mutex::new(in_force));
    let master = match (&args.operator_key, &args.admission_key) {
        (None, None) => None,
        (_, Some(path)) => {
            let seed = policy::keys::read_secret_key(path, policy::keys::KeyKind::AdmissionSecret)
                .map_err(|e| (Exit::KeyFile, e.to_string()))?;
            let key = ed25519_dalek::SigningKey::from_bytes(&seed);
            let mut master = Master::admitting(in_force.clone(), key, args.tokens.clone());
            master.view = Some(args.view.clone());
            master.trust = Some(args.trust.clone());
            Some(master)
        }
        (Some(path), None) => {
            let seed = policy::keys::read_secret_key(path, policy::keys::KeyKind::OperatorSecret)
                .map_err(|e| (Exit::KeyFile, e.to_string()))?;
            let key = ed25519_dalek::SigningKey::from_bytes(&seed);
            let public = policy::OperatorPublicKey::from(&key);
            if !trust.keys().contains(&public) {
                return Err((
                    Exit::KeyFile,
                    format!(
                        "{}: this operator key ({}) is not one {} trusts",
                        path.display(),
                        public.key_id(),
                        args.trust.display()
                    ),
                ));
            }
            let mut master = Master::new(in_force.clone(), key, args.tokens.clone());
            master.view = Some(args.view.clone());
            master.trust = Some(args.trust.clone());
            Some(master)
        }
    };
    let node = Node {
        args,
        in_force,
        me,
        master,
        relayed: Throttled::new(),
        relay_failed: Throttled::new(),
    };
    let p = node
        .in_force
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .load_now(Timestamp::now())
        .map_err(|e| ((&e).into(), e.to_string()))?;
    let Some(join) = &p.join else {
        return Err((
            Exit::Refused,
            format!(
                "{}: the policy has no [join] section: joining is off",
                node.args.policy.display()
            ),
        ));
    };
    let at = SocketAddr::from(([0, 0, 0, 0], join.port));
    let listener = TcpListener::bind(at).map_err(|e| (Exit::Runtime, format!("{at}: {e}")))?;
    listener
        .set_nonblocking(true)
        .map_err(|e| (Exit::Runtime, e.to_string()))?;
    // `tyd join any` asks on the same port, over UDP.
    let discovery = UdpSocket::bind(at).map_err(|e| (Exit::Runtime, format!("{at} (udp): {e}")))?;
    discovery
        .set_nonblocking(true)
        .map_err(|e| (Exit::Runtime, e.to_string()))?;
    info!(address = %at, role = if node.master.is_some() { "master" } else { "relay" },
        "listening for joins");
    Ok((node, listener, discovery))
}

/// Answers `tyd join any` questions, within `crate::discover::Answerer`'s limits.
struct Discovery {
    socket: UdpSocket,
    answerer: crate::discover::Answerer,
}

impl Discovery {
    fn poll(&mut self) {
        let mut buf = [0u8; 64];
        while let Ok((n, from)) = self.socket.recv_from(&mut buf) {
            let Some(answer) = crate::discover::answer(&buf[..n]) else {
                continue;
            };
            if self.answerer.allow(from, Instant::now()) {
                let _ = self.socket.send_to(answer, from);
            }
        }
    }
}

/// Logs how a fork was settled (two masters signed one serial at once, or one signed a
/// newer serial from its own while the other admitted a node).
fn settle_fork(settled: Option<Result<crate::service::Forked, crate::service::MasterError>>) {
    use crate::service::Forked;
    match settled {
        None | Some(Ok(Forked::NotAFork)) => {}
        Some(Ok(Forked::Stands { serial })) => {
            info!(
                serial,
                "another master signed this serial at the same time; this master's policy stands (the greater digest), the other carries its nodes over"
            );
        }
        Some(Ok(Forked::NothingToCarry { serial })) => {
            warn!(
                serial,
                "another master signed this serial at the same time and its policy stands; this master added no node in its own (an operator's edit?): it shows as a fork in tyd status --cluster until the operator signs again"
            );
        }
        Some(Ok(Forked::Carried {
            lost,
            serial,
            nodes,
        })) => {
            let carried: Vec<String> = nodes
                .iter()
                .map(|(id, name)| format!("{name} (node {id})"))
                .collect();
            warn!(lost, serial, nodes = %carried.join(", "),
                "another master signed at the same time and its policy stands; this master's admissions in its own serial `lost` are carried into `serial`, signed and in place");
        }
        Some(Ok(Forked::Unclear { serial, names })) => {
            error!(serial, nodes = %names.join(", "),
                "nodes this master admitted are not in the newer policy in force, and its parents do not say whether the operator removed them: not carried; if they were not removed, they must join again");
        }
        Some(Err(e)) => {
            warn!(error = %e, "cannot settle a fork with another master's policy");
        }
    }
}

/// Waits until `listener` or `socket` has something to read, or `shutdown` is readable, or
/// `limit` passed. Returns whether it is time to stop.
fn wait_readable(
    listener: &TcpListener,
    socket: &UdpSocket,
    shutdown: BorrowedFd<'_>,
    limit: Duration,
) -> bool {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    let mut fds = [
        PollFd::new(listener.as_fd(), PollFlags::POLLIN),
        PollFd::new(socket.as_fd(), PollFlags::POLLIN),
        PollFd::new(shutdown, PollFlags::POLLIN),
    ];
    let ms = u16::try_from(limit.as_millis()).unwrap_or(u16::MAX);
    let _ = poll(&mut fds, PollTimeout::from(ms));
    fds[2]
        .revents()
        .is_some_and(|r| r.intersects(PollFlags::POLLIN | PollFlags::POLLHUP))
}

/// Serves joins until `shutdown` becomes readable; joins under way finish first (within
/// their deadline). An error: joind could not start, with the exit code and the reason.
pub fn run(args: Args, shutdown: BorrowedFd<'_>) -> Result<(), (Exit, String)> {
    let (node, listener, discovery) = start(args)?;
    let node = Arc::new(node);
    let guard = Arc::new(Mutex::new(Guard::default()));
    let tally = Arc::new(Mutex::new(Tally::default()));
    let mut workers = Vec::new();
    let mut discovery = Discovery {
        socket: discovery,
        answerer: crate::discover::Answerer::new(),
    };
    loop {
        // Wait for a connection, a question or the shutdown, not a fixed nap: a join is
        // served the moment it arrives (a 50 ms sleep added about 45 ms to each). The 200 ms
        // bound is for the periodic work below (forks, summaries).
        if wait_readable(
            &listener,
            &discovery.socket,
            shutdown,
            Duration::from_millis(200),
        ) {
            break;
        }
        discovery.poll();
        if let Some(master) = &node.master {
            settle_fork(master.settle_fork());
            settle_fork(master.settle_newer());
            match master.resign_own_membership() {
                Some(Ok(serial)) => info!(
                    serial,
                    "this master's membership signed again with its admission key (the policy in force lists a new one)"
                ),
                Some(Err(e)) => error!(reason = %e,
                    "this master's membership, signed with another key, cannot be signed again: its nodes stay out of the map"),
                None => {}
            }
        }
        match listener.accept() {
            Ok((stream, from)) => {
                let Some(worker) = serve_connection(&node, &guard, &tally, stream, from) else {
                    continue;
                };
                workers.push(worker);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => {
                warn!(cause = %e, "accept failed");
                std::thread::sleep(Duration::from_millis(200));
            }
        }
        workers.retain(|w| !w.is_finished());
        log_summary(&tally);
    }
    stop_serving(&node, workers);
    Ok(())
}

/// Serves the connection from `from` on a thread of its own, unless the guard turns it away
/// (then counted, and None).
fn serve_connection(
    node: &Arc<Node>,
    guard: &Arc<Mutex<Guard>>,
    tally: &Arc<Mutex<Tally>>,
    stream: TcpStream,
    from: SocketAddr,
) -> Option<std::thread::JoinHandle<()>> {
    let _ = stream.set_nonblocking(false);
    let now = Instant::now();
    // A member is counted in all only: the joiners it relays are counted by
    // where it saw them, once its record is read.
    let member = node.is_member(from.ip());
    let turned = guard
        .lock()
        .map(|mut g| {
            if member {
                g.open_member()
            } else {
                g.open(from.ip(), now)
            }
        })
        .unwrap_or(Err(Turned::Busy));
    if turned.is_err() {
        if let Ok(mut t) = tally.lock() {
            t.turned_away += 1;
        }
        return None;
    }
    let (node, guard, tally) = (node.clone(), guard.clone(), tally.clone());
    Some(std::thread::spawn(move || {
        let (verdict, joiner) = node.handle(stream, from, member, &guard);
        if let Ok(mut g) = guard.lock() {
            if member {
                g.close_member();
            } else {
                g.close(from.ip());
            }
            g.record(joiner, verdict, Instant::now());
        }
        if verdict == Verdict::Failed
            && let Ok(mut t) = tally.lock()
        {
            t.failed += 1;
        }
    }))
}

/// Logs the failed and turned-away joins once per [`SUMMARY_EVERY`], and starts counting
/// again.
fn log_summary(tally: &Mutex<Tally>) {
    if let Ok(mut t) = tally.lock() {
        let since = *t.since.get_or_insert_with(Instant::now);
        if since.elapsed() >= SUMMARY_EVERY {
            if t.failed > 0 || t.turned_away > 0 {
                warn!(
                    failed = t.failed,
                    turned_away = t.turned_away,
                    "join attempts that failed (wrong or unknown token, malformed, timed out) or were turned away (back-off, busy)"
                );
            }
            *t = Tally {
                since: Some(Instant::now()),
                ..Tally::default()
            };
        }
    }
}

/// Stops: joins waiting for the operator end, the others get until [`STOP_WITHIN`].
fn stop_serving(node: &Node, workers: Vec<std::thread::JoinHandle<()>>) {
    info!(
        under_way = workers.len(),
        "stopping; joins under way finish first"
    );
    // Joins waiting for the operator end now; the others end within their deadline. A relay
    // carrying such a join waits for it no longer than that either: what is still running
    // then is abandoned (its connection closes with the process).
    if let Some(master) = &node.master {
        master.stop();
    }
    let until = Instant::now() + STOP_WITHIN;
    while workers.iter().any(|w| !w.is_finished()) && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(20));
    }
    let abandoned = workers.iter().filter(|w| !w.is_finished()).count();
    if abandoned > 0 {
        warn!(
            abandoned,
            "stopped with joins still relayed (a join waiting for approval through this member)"
        );
    }
}
