//! clusterd's loop: one UDP socket and one TCP listener on this node's tunnel address, the
//! heartbeat timer, a quick poll of certaintyd (so lost integrity is told at once, not at the
//! next heartbeat) and of the policy file, and the fetches under way. It carries out what
//! [`Core`] decides; it writes the quarantine list (for netguard) and the cluster view (for
//! `tyd status --cluster`). SIGTERM and SIGINT stop it; the quarantine list stays in force.
//!
//! Here: the configuration, the sockets and the loop; the node's state and what it does with
//! each policy, heartbeat and fetch in `node`.

mod node;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use policy::{NodeId, PolicyInForce, PolicyPaths, TrustedKeys};
use proto::quarantine::QuarantineList;
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{Semaphore, mpsc};
use tracing::{debug, info, warn};

use crate::core::{Action, Fetched as FetchResult};
use crate::probe::{self, Sources};
use crate::transfer;
use proto::cluster::{MAX_DATAGRAM, Message};

use node::{Node, load_key};

#[derive(Debug, Clone)]
pub struct Config {
    /// The policy netguard and certaintyd read; a fetched policy is written here.
    pub policy: PathBuf,
    pub trust: PathBuf,
    /// This node's WireGuard private key: who this node is in the map.
    pub key: PathBuf,
    /// clusterd's own anti-rollback state.
    pub state: PathBuf,
    pub min_serial: u64,
    pub sources: Sources,
    /// Written for netguard.
    pub quarantine: PathBuf,
    /// Written for `tyd status --cluster`.
    pub view: PathBuf,
    /// This node's TPM (a device, or swtpm's socket), for the quotes its peers check when
    /// its role must attest; None: this node never quotes (and is quarantined by its peers
    /// if it must).
    pub tpm: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error("{0}")]
    Key(String),
    #[error("{0}")]
    Store(#[from] policy::StoreError),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// How often certaintyd and the policy file are looked at between heartbeats.
const POLL: Duration = Duration::from_millis(200);
/// Policy transfers served at once.
const MAX_SERVING: usize = 16;
/// A change of integrity is told this many times, one poll apart (a lost datagram would
/// otherwise wait for the next heartbeat).
const CHANGE_REPEATS: u32 = 3;

/// Why a fetch brought nothing: the network, or what the peer sent.
#[derive(Debug)]
enum FetchFailure {
    Network(String),
    /// Malformed, oversized, unverifiable, not newer, or not finished in time (a peer that
    /// drips is treated as one that lies): the peer is not asked again.
    Refused(String),
}

/// A finished fetch: from whom, and the files or why not.
type Fetched = (NodeId, Result<transfer::Transfer, FetchFailure>);

/// A finished TPM quote, or why not.
type Quoted = Result<attest::Quote, String>;

/// Each TPM read or write waits this long at most (a socket; a device answers or hangs,
/// and then the quote times out in the loop).
const TPM_IO: Duration = Duration::from_secs(5);

async fn fetch(addr: SocketAddr) -> Result<transfer::Transfer, FetchFailure> {
    let mut s = tokio::time::timeout(transfer::TIMEOUT, TcpStream::connect(addr))
        .await
        .map_err(|_| FetchFailure::Network("connect timed out".into()))?
        .map_err(|e| FetchFailure::Network(e.to_string()))?;
    transfer::receive(&mut s).await.map_err(|e| match e {
        transfer::TransferError::Io(_) => FetchFailure::Network(e.to_string()),
        _ => FetchFailure::Refused(e.to_string()),
    })
}

struct Sockets {
    udp: UdpSocket,
    tcp: TcpListener,
    port: u16,
}

/// Binds on this node's first tunnel address (configured by netguard: retried until there).
async fn bind(node: &Node) -> Option<Sockets> {
    let p = node.effective()?;
    let me = p.node_by_key(&node.me)?;
    let addr = *me.addresses.first()?;
    let port = p.distribution.port;
    let at = SocketAddr::new(addr, port);
    let udp = UdpSocket::bind(at).await.ok()?;
    let tcp = TcpListener::bind(at).await.ok()?;
    info!(address = %at, "listening for heartbeats and policy fetches");
    Some(Sockets { udp, tcp, port })
}

/// SIGTERM, SIGINT, or no one left to send any, stop clusterd; SIGHUP changes nothing (it
/// reads the policy file every 200 ms).
fn stops(signal: Option<signals::Signal>) -> bool {
    !matches!(signal, Some(signals::Signal::Hangup))
}

/// Runs until SIGTERM or SIGINT arrives on `signals` (`main` installs them:
/// `signals::install`).
pub async fn run(cfg: Config, mut signals: signals::Signals) -> Result<(), StartupError> {
    let mut node = start(cfg)?;
    // The policy in force, and this node's tunnel address to listen on.
    let Some(sockets) = listen(&mut node, &mut signals).await else {
        return Ok(());
    };
    let (fetched_tx, mut fetched) = mpsc::unbounded_channel::<Fetched>();
    let (quoted_tx, mut quoted) = mpsc::unbounded_channel::<Quoted>();
    let serving = Arc::new(Semaphore::new(MAX_SERVING));
    let mut heartbeat = tokio::time::interval(
        node.policy()
            .map_or(Duration::from_secs(1), |p| p.distribution.heartbeat),
    );
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut poll = tokio::time::interval(POLL);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut buf = vec![0u8; 2 * MAX_DATAGRAM];
    loop {
        let mut actions = Vec::new();
        tokio::select! {
            r = sockets.udp.recv_from(&mut buf) => {
                let Ok((n, from)) = r else { continue };
                actions = receive(&mut node, &buf[..n], from);
            }
            r = sockets.tcp.accept() => {
                let Ok((stream, from)) = r else { continue };
                serve_policy(&mut node, &serving, stream, from);
            }
            Some((from, result)) = fetched.recv() => {
                actions = node.take_fetched(from, result);
            }
            Some(result) = quoted.recv() => actions = quote_back(&mut node, result),
            _ = poll.tick() => actions = on_poll(&mut node).await,
            _ = heartbeat.tick() => actions = on_heartbeat(&mut node).await,
            signal = signals.recv() => if stops(signal) { break },
        }
        for a in actions {
            carry_out(&mut node, &sockets, a, &fetched_tx, &quoted_tx).await;
        }
    }
    info!("stopping; the quarantine list stays in force");
    Ok(())
}

/// Reads this node's key, the policy in force, the trusted keys and the quarantine list
/// left in force: the node, before it listens.
fn start(cfg: Config) -> Result<Node, StartupError> {
    let me = load_key(&cfg.key)?;
    let in_force = PolicyInForce::open(
        PolicyPaths::new(&cfg.policy, &cfg.trust, &cfg.state),
        cfg.min_serial,
    )?;
    let trust_text =
        policy::fsutil::read(&cfg.trust).map_err(|e| StartupError::Key(e.to_string()))?;
    let trust = TrustedKeys::parse(&String::from_utf8_lossy(&trust_text))
        .map_err(|e| StartupError::Key(format!("{}: {e}", cfg.trust.display())))?;
    let quarantine = QuarantineList::read(&cfg.quarantine).unwrap_or_default();
    let node = Node::new(cfg, me, trust, in_force, quarantine);
    info!(public_key = %me, "clusterd starting");
    Ok(node)
}

/// Reads the policy file until this node's tunnel address can be bound; None: a signal
/// stopped clusterd first.
async fn listen(node: &mut Node, signals: &mut signals::Signals) -> Option<Sockets> {
    loop {
        node.poll_policy_file();
        if let Some(s) = bind(node).await {
            return Some(s);
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            signal = signals.recv() => if stops(signal) { return None },
        }
    }
}

/// A datagram from `from`: a member's message, or counted as dropped.
fn receive(node: &mut Node, datagram: &[u8], from: SocketAddr) -> Vec<Action> {
    let sender = node.node_of.get(&from.ip()).copied();
    match (sender, Message::decode(datagram)) {
        (Some(id), Ok(msg)) => node.core.receive(id, msg, node.now()),
        _ => {
            node.dropped += 1;
            Vec::new()
        }
    }
}

/// Sends the policy in force to a member that connected, on a task of its own; a
/// non-member is counted as dropped, and a member finding every slot busy retries at its
/// next heartbeat.
fn serve_policy(
    node: &mut Node,
    serving: &Arc<Semaphore>,
    mut stream: TcpStream,
    from: SocketAddr,
) {
    let member = node.node_of.contains_key(&from.ip());
    let (Some(files), true) = (node.in_force.current().cloned(), member) else {
        node.dropped += 1;
        return;
    };
    let memberships = node.membership_parts();
    let Ok(permit) = serving.clone().try_acquire_owned() else {
        return; // busy: the peer retries at its next heartbeat
    };
    tokio::spawn(async move {
        let _permit = permit;
        let f = files.files();
        let _ = transfer::send(&mut stream, &f.policy, &f.signature, &memberships).await;
    });
}

/// The quick poll: the policy file, and certaintyd; a change of integrity is told to every
/// peer at once and again at the next polls.
async fn on_poll(node: &mut Node) -> Vec<Action> {
    let mut actions = node.poll_policy_file();
    let socket = node.cfg.sources.certainty_socket.clone();
    let now_state = tokio::task::spawn_blocking(move || probe::certainty(socket.as_deref()))
        .await
        .ok();
    let changed = match (&node.certainty, &now_state) {
        (Some(was), Some(now)) => was.integrity != now.integrity,
        _ => false,
    };
    if now_state.is_some() {
        node.certainty = now_state;
    }
    if changed {
        node.repeats = CHANGE_REPEATS;
        if let Some(c) = &node.certainty {
            info!(integrity = %c.integrity, "integrity state changed; telling every peer now");
        }
    }
    if node.repeats > 0
        && let Some(hb) = node.heartbeat()
    {
        // Told at once, not at the next heartbeat, and again at the next polls.
        node.repeats -= 1;
        actions.extend(node.core.announce(&hb));
    }
    actions
}

/// The heartbeat: this node's facts gathered and sent, the cluster view written, and what
/// was dropped or ignored since the last one logged.
async fn on_heartbeat(node: &mut Node) -> Vec<Action> {
    let mut actions = Vec::new();
    let src = node.cfg.sources.clone();
    node.facts = tokio::task::spawn_blocking(move || probe::facts(&src))
        .await
        .ok();
    if let Some(hb) = node.heartbeat() {
        let now = node.now();
        actions = node.core.tick(&hb, now, &mut node.rng);
        node.write_view(&hb);
    }
    if node.dropped > 0 {
        warn!(
            count = node.dropped,
            "datagrams or connections from non-members, or malformed, dropped"
        );
        node.dropped = 0;
    }
    if node.core.impostors > 0 {
        warn!(
            count = node.core.impostors,
            "heartbeats or quotes claiming to be another node ignored"
        );
        node.core.impostors = 0;
    }
    actions
}

/// This node's quote came back from the TPM (or did not).
fn quote_back(node: &mut Node, result: Quoted) -> Vec<Action> {
    match result {
        Ok(q) => {
            if node.tpm_failures > 0 {
                info!(
                    failures = node.tpm_failures,
                    "TPM quotes again; peers can attest this node"
                );
            }
            node.tpm_failures = 0;
            node.core.quote_done(Some(q))
        }
        Err(reason) => {
            node.tpm_failures += 1;
            if node.tpm_failures == 1 {
                warn!(reason = %reason, "TPM quote failed: peers will quarantine this node as not attested until one succeeds");
            } else {
                debug!(reason = %reason, failures = node.tpm_failures, "TPM quote failed again");
            }
            node.core.quote_done(None)
        }
    }
}

/// Asks the TPM for a quote on a blocking thread; the answer comes back on `quoted`, or a
/// timeout does.
fn start_quote(node: &Node, nonce: [u8; 32], quoted: &mpsc::UnboundedSender<Quoted>) {
    use std::sync::atomic::Ordering;
    let tx = quoted.clone();
    let Some(path) = node.cfg.tpm.clone() else {
        let _ = tx.send(Err("no TPM configured (clusterd --tpm)".into()));
        return;
    };
    if node.quoting.swap(true, Ordering::SeqCst) {
        let _ = tx.send(Err("the last quote has not come back from the TPM".into()));
        return;
    }
    let busy = node.quoting.clone();
    tokio::spawn(async move {
        let job = tokio::task::spawn_blocking(move || {
            let r = attest::tpm::Tpm::open(&path, TPM_IO)
                .and_then(|mut t| t.quote(&nonce))
                .map(|(q, _)| q)
                .map_err(|e| e.to_string());
            busy.store(false, Ordering::SeqCst);
            r
        });
        let r = match tokio::time::timeout(crate::core::QUOTE_TIMEOUT, job).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => Err(format!("the quote's thread failed: {e}")),
            Err(_) => Err(format!(
                "the TPM did not answer within {} s",
                crate::core::QUOTE_TIMEOUT.as_secs()
            )),
        };
        let _ = tx.send(r);
    });
}

async fn carry_out(
    node: &mut Node,
    s: &Sockets,
    action: Action,
    fetched: &mpsc::UnboundedSender<Fetched>,
    quoted: &mpsc::UnboundedSender<Quoted>,
) {
    match action {
        Action::Quote { nonce } => start_quote(node, nonce, quoted),
        Action::Send { to, msg } => {
            if let Some(ip) = node.addr_of.get(&to) {
                let _ = s
                    .udp
                    .send_to(&msg.encode(), SocketAddr::new(*ip, s.port))
                    .await;
            }
        }
        Action::Fetch { from, serial } => {
            let Some(ip) = node.addr_of.get(&from).copied() else {
                // No address for it (left the map meanwhile): the slot is freed; a next
                // fetch, if any, waits for the next tick.
                let _ = node.core.fetch_done(from, FetchResult::Network, node.now());
                return;
            };
            debug!(from = from.get(), serial, "fetching a newer policy");
            let tx = fetched.clone();
            let port = s.port;
            tokio::spawn(async move {
                let r = fetch(SocketAddr::new(ip, port)).await;
                let _ = tx.send((from, r));
            });
        }
        local => node.record(local),
    }
}
