//! clusterd's loop: one UDP socket and one TCP listener on this node's tunnel address, the
//! heartbeat timer, a quick poll of certaintyd (so lost integrity is told at once, not at the
//! next heartbeat) and of the policy file, and the fetches under way. It carries out what
//! [`Core`] decides; it writes the quarantine list (for netguard) and the cluster view (for
//! `tyd status --cluster`). SIGTERM and SIGINT stop it; the quarantine list stays in force.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use jiff::Timestamp;
use policy::quarantine::{QuarantineList, Quarantined};
use policy::{NodeId, Policy, RollbackStore, SignedFiles, TrustedKeys, Verified, WgPublicKey};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::{Semaphore, mpsc};
use tracing::{debug, error, info, warn};

use crate::core::{Action, Config as CoreConfig, Core, Fetched as FetchResult};
use crate::probe::{self, CertaintyFacts, Facts, Sources};
use crate::proto::{Heartbeat, MAX_DATAGRAM, Message};
use crate::{transfer, view};

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

struct Node {
    cfg: Config,
    me: WgPublicKey,
    trust: TrustedKeys,
    store: RollbackStore,
    /// The policy in force and its exact files (served to peers).
    files: Option<Arc<SignedFiles>>,
    my_id: Option<NodeId>,
    my_name: String,
    core: Core,
    start: Instant,
    seq: u64,
    /// Where each peer is reached, and who each tunnel address is.
    addr_of: BTreeMap<NodeId, IpAddr>,
    node_of: BTreeMap<IpAddr, NodeId>,
    /// The host's facts, read at each heartbeat.
    facts: Option<Facts>,
    /// certaintyd's answer, read at each poll (only there, so a change is always noticed
    /// where it is told out of turn).
    certainty: Option<CertaintyFacts>,
    quarantine: QuarantineList,
    /// (modified, length) of the policy file when last read.
    stamp: Option<(std::time::SystemTime, u64)>,
    /// The `[[node]]` blocks of the last policy verified, so the next is parsed by its
    /// changed blocks only.
    blocks: policy::NodeBlocks,
    /// Datagrams dropped since the last log line about them (untrusted input: rate-limited).
    dropped: u64,
    /// How many more times a changed heartbeat is to be told out of turn.
    repeats: u32,
    rng: rand_core::OsRng,
}

/// Where a policy came from, for the log.
#[derive(Debug, Clone, Copy)]
enum Source {
    /// The policy file (the operator's delivery).
    File,
    /// Fetched from this peer.
    Peer(NodeId),
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::File => f.write_str("file"),
            Source::Peer(id) => write!(f, "peer:{}", id.get()),
        }
    }
}

fn load_key(path: &std::path::Path) -> Result<WgPublicKey, StartupError> {
    let secret = policy::keys::read_secret_key(path, policy::keys::KeyKind::NodeSecret)
        .map_err(|e| StartupError::Key(e.to_string()))?;
    Ok(WgPublicKey::from_secret(&secret))
}

impl Node {
    fn now(&self) -> Duration {
        self.start.elapsed()
    }

    fn policy(&self) -> Option<&Verified<Policy>> {
        self.files.as_ref().map(|f| &f.verified)
    }

    /// Reads the policy file if it changed; adopts it if it is acceptable and new here.
    fn poll_policy_file(&mut self) -> Vec<Action> {
        let meta = std::fs::metadata(&self.cfg.policy).ok();
        let stamp = meta.and_then(|m| Some((m.modified().ok()?, m.len())));
        if stamp.is_none() || stamp == self.stamp {
            return Vec::new();
        }
        self.stamp = stamp;
        let now = Timestamp::now();
        match policy::load_signed_reusing(&self.cfg.policy, &self.cfg.trust, now, &mut self.blocks)
        {
            Ok(files) => self.accept(files, Source::File),
            Err(e) => {
                debug!(reason = %e, "policy file not (yet) acceptable");
                Vec::new()
            }
        }
    }

    /// A verified policy from the file or a peer: through the rollback store, then in force.
    fn accept(&mut self, files: SignedFiles, source: Source) -> Vec<Action> {
        let now = Timestamp::now();
        if let Some(cur) = self.policy()
            && cur.digest_hex() == files.verified.digest_hex()
        {
            return Vec::new();
        }
        if let Err(e) = self.store.accept(&files.verified, now) {
            warn!(%source, reason = %e, "policy refused; the one in force stays");
            return Vec::new();
        }
        let v = &files.verified;
        info!(%source, cluster = %v.cluster.name, serial = v.cluster.serial, signer = %v.signer().key_id(),
            "policy accepted");
        self.adopt(files)
    }

    /// Makes `files` the policy in force: the map, the addresses, the core's peers.
    fn adopt(&mut self, files: SignedFiles) -> Vec<Action> {
        let now = Timestamp::now();
        let v = &files.verified;
        let me = v.node_by_key(&self.me).filter(|n| n.is_live(now));
        self.my_id = me.map(|n| n.id);
        self.my_name = me.map(|n| n.name.clone()).unwrap_or_default();
        if self.my_id.is_none() {
            error!("this node is not (or no longer) in the policy: no heartbeats, no fetches");
        }
        self.addr_of.clear();
        self.node_of.clear();
        for n in v.live_nodes(now) {
            // Peers are reached on the same address family as this node's first address.
            let family_v4 = me
                .and_then(|m| m.addresses.first())
                .is_none_or(IpAddr::is_ipv4);
            if let Some(a) = n.addresses.iter().find(|a| a.is_ipv4() == family_v4) {
                self.addr_of.insert(n.id, *a);
            }
            for a in &n.addresses {
                self.node_of.insert(*a, n.id);
            }
        }
        let members: Vec<(NodeId, String)> = if self.my_id.is_some() {
            v.live_nodes(now).map(|n| (n.id, n.name.clone())).collect()
        } else {
            Vec::new()
        };
        let core_cfg =
            CoreConfig::from_policy(self.my_id.unwrap_or(NodeId::MIN), &v.distribution, &v.nodes);
        let (serial, digest) = (v.cluster.serial, v.digest_hex());
        let elapsed = self.now();
        let actions =
            self.core
                .policy_in_force(core_cfg, serial, &digest, &members, elapsed, &mut self.rng);
        // A restart must not readmit anyone: quarantines on file are taken over.
        for q in &self.quarantine.nodes {
            if self
                .core
                .peers()
                .get(&q.id)
                .is_some_and(|p| p.quarantine.is_none())
            {
                self.core
                    .restore_quarantine(q.id, q.until_reboot, q.boot_id.clone(), elapsed);
            }
        }
        self.files = Some(Arc::new(files));
        actions
    }

    fn heartbeat(&mut self) -> Option<Heartbeat> {
        let id = self.my_id?;
        let facts = self.facts.as_ref()?;
        let certainty = self.certainty.as_ref()?;
        let pinned = self
            .policy()
            .and_then(|p| p.certainty.expected_root.clone());
        self.seq += 1;
        Some(Heartbeat {
            node: id.get(),
            boot_id: facts.boot_id.clone(),
            seq: self.seq,
            serial: self.core.serial(),
            digest: self.policy().map(|p| p.digest_hex()).unwrap_or_default(),
            integrity: certainty.integrity,
            root_matches: match (&pinned, &certainty.stable_root) {
                (Some(p), Some(r)) => Some(p.eq_ignore_ascii_case(r)),
                _ => None,
            },
            stable_root: certainty.stable_root.clone(),
            last_verification: certainty.last_verification.clone(),
            uptime_s: facts.uptime_s,
            load1: facts.load1,
            mem_available_kb: facts.mem_available_kb,
        })
    }

    /// Records a quarantine or readmission in the list netguard enforces.
    fn set_quarantine(&mut self, node: NodeId, entry: Option<Quarantined>) {
        self.quarantine.nodes.retain(|q| q.id != node);
        self.quarantine.nodes.extend(entry);
        self.quarantine.nodes.sort_by_key(|q| q.id);
        if let Err(e) = self.quarantine.write(&self.cfg.quarantine) {
            error!(reason = %e, "cannot write the quarantine list");
        }
    }

    fn write_view(&self, mine: &Heartbeat) {
        let cluster = self
            .policy()
            .map(|p| p.cluster.name.clone())
            .unwrap_or_default();
        let v = view::of(&self.core, &cluster, mine, &self.my_name, self.now());
        let mut bytes = serde_json::to_vec_pretty(&v).unwrap_or_default();
        bytes.push(b'\n');
        if let Err(e) = policy::fsutil::replace_volatile(&self.cfg.view, &bytes, 0o644) {
            debug!(reason = %e, "cannot write the cluster view");
        }
    }

    fn name_of(&self, id: NodeId) -> String {
        self.core
            .peers()
            .get(&id)
            .map(|p| p.name.clone())
            .unwrap_or_default()
    }
}

/// Why a fetch brought nothing: the network, or what the peer sent.
#[derive(Debug)]
enum FetchFailure {
    Network(String),
    /// Malformed, oversized, unverifiable, not newer, or not finished in time (a peer that
    /// drips is treated as one that lies): the peer is not asked again.
    Refused(String),
}

/// A finished fetch: from whom, and the files or why not.
type Fetched = (NodeId, Result<(Vec<u8>, Vec<u8>), FetchFailure>);

async fn fetch(addr: SocketAddr) -> Result<(Vec<u8>, Vec<u8>), FetchFailure> {
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
    let p = node.policy()?;
    let me = p.node_by_key(&node.me)?;
    let addr = *me.addresses.first()?;
    let port = p.distribution.port;
    let at = SocketAddr::new(addr, port);
    let udp = UdpSocket::bind(at).await.ok()?;
    let tcp = TcpListener::bind(at).await.ok()?;
    info!(address = %at, "listening for heartbeats and policy fetches");
    Some(Sockets { udp, tcp, port })
}

pub async fn run(cfg: Config) -> Result<(), StartupError> {
    let me = load_key(&cfg.key)?;
    let store = RollbackStore::open(&cfg.state, cfg.min_serial)?;
    let trust_text =
        policy::fsutil::read(&cfg.trust).map_err(|e| StartupError::Key(e.to_string()))?;
    let trust = TrustedKeys::parse(&String::from_utf8_lossy(&trust_text))
        .map_err(|e| StartupError::Key(format!("{}: {e}", cfg.trust.display())))?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    let quarantine = QuarantineList::read(&cfg.quarantine).unwrap_or_default();
    let placeholder = CoreConfig::from_policy(NodeId::MIN, &policy::Distribution::default(), &[]);
    let mut node = Node {
        cfg,
        me,
        trust,
        store,
        files: None,
        my_id: None,
        my_name: String::new(),
        core: Core::new(placeholder),
        start: Instant::now(),
        seq: 0,
        addr_of: BTreeMap::new(),
        node_of: BTreeMap::new(),
        facts: None,
        certainty: None,
        quarantine,
        stamp: None,
        blocks: policy::NodeBlocks::default(),
        dropped: 0,
        repeats: 0,
        rng: rand_core::OsRng,
    };
    info!(public_key = %me, "clusterd starting");
    // The policy in force, and this node's tunnel address to listen on.
    let sockets = loop {
        node.poll_policy_file();
        if let Some(s) = bind(&node).await {
            break s;
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            _ = sigterm.recv() => return Ok(()),
            _ = sigint.recv() => return Ok(()),
        }
    };
    let (fetched_tx, mut fetched) = mpsc::unbounded_channel::<Fetched>();
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
                let sender = node.node_of.get(&from.ip()).copied();
                match (sender, Message::decode(&buf[..n])) {
                    (Some(id), Ok(msg)) => actions = node.core.receive(id, msg, node.now()),
                    _ => node.dropped += 1,
                }
            }
            r = sockets.tcp.accept() => {
                let Ok((mut stream, from)) = r else { continue };
                let member = node.node_of.contains_key(&from.ip());
                let (Some(files), true) = (node.files.clone(), member) else {
                    node.dropped += 1;
                    continue;
                };
                let Ok(permit) = serving.clone().try_acquire_owned() else {
                    continue; // busy: the peer retries at its next heartbeat
                };
                tokio::spawn(async move {
                    let _permit = permit;
                    let _ = transfer::send(&mut stream, &files.policy, &files.signature).await;
                });
            }
            Some((from, result)) = fetched.recv() => {
                match result.and_then(|(bytes, sig)| {
                    // Named for where it came from: a refusal is the peer's, not the file's.
                    let file = format!("the policy fetched from node {}", from.get());
                    policy::verify_policy_reusing(&file, &bytes, &sig, &node.trust, Timestamp::now(), &mut node.blocks)
                        .map(|verified| SignedFiles { verified, policy: bytes, signature: sig, trust: Vec::new() })
                        .map_err(|e| FetchFailure::Refused(e.to_string()))
                }) {
                    Ok(files) => {
                        let (policy_bytes, sig) = (files.policy.clone(), files.signature.clone());
                        let before = node.core.serial();
                        let served = files.verified.cluster.serial;
                        let already = node.policy().is_some_and(|p| p.digest_hex() == files.verified.digest_hex());
                        actions = node.accept(files, Source::Peer(from));
                        // Verified but not taken here (rolled back, replayed, another
                        // cluster): a lie. The policy this node took meanwhile from elsewhere
                        // is not, unless it is older than the serial the peer offered.
                        let result = if already || node.core.serial() > before {
                            FetchResult::Delivered { serial: served }
                        } else {
                            FetchResult::Refused
                        };
                        let delivered = matches!(result, FetchResult::Delivered { .. });
                        let next = node.core.fetch_done(from, result, node.now());
                        // (A policy refused here was logged by accept, once.)
                        if delivered && node.core.spoiled(from) {
                            warn!(from = from.get(), served, "the peer offered a newer serial than it served: not fetching from it again until the policy changes");
                        }
                        actions.extend(next);
                        if node.core.serial() > before {
                            // Where netguard and certaintyd read it: signature first, so the
                            // pair is complete when the policy appears.
                            let path = node.cfg.policy.clone();
                            let written = policy::fsutil::atomic_write(&policy::signature_path(&path), &sig, 0o644)
                                .and_then(|()| policy::fsutil::atomic_write(&path, &policy_bytes, 0o644));
                            match written {
                                Ok(()) => node.stamp = None,
                                Err(e) => error!(reason = %e, "cannot write the fetched policy"),
                            }
                        }
                    }
                    Err(FetchFailure::Network(reason)) => {
                        actions.extend(node.core.fetch_done(from, FetchResult::Network, node.now()));
                        debug!(from = from.get(), reason = %reason, "fetch failed; another peer or the next heartbeat will do");
                    }
                    Err(FetchFailure::Refused(reason)) => {
                        actions.extend(node.core.fetch_done(from, FetchResult::Refused, node.now()));
                        warn!(from = from.get(), reason = %reason, "fetched policy refused (or not finished in time); not fetching from this peer again until the policy changes");
                    }
                }
            }
            _ = poll.tick() => {
                actions = node.poll_policy_file();
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
                if node.repeats > 0 && let Some(hb) = node.heartbeat() {
                    // Told at once, not at the next heartbeat, and again at the next polls.
                    node.repeats -= 1;
                    actions.extend(node.core.announce(&hb));
                }
            }
            _ = heartbeat.tick() => {
                let src = node.cfg.sources.clone();
                node.facts = tokio::task::spawn_blocking(move || probe::facts(&src)).await.ok();
                if let Some(hb) = node.heartbeat() {
                    let now = node.now();
                    actions = node.core.tick(&hb, now, &mut node.rng);
                    node.write_view(&hb);
                }
                if node.dropped > 0 {
                    warn!(count = node.dropped, "datagrams or connections from non-members, or malformed, dropped");
                    node.dropped = 0;
                }
                if node.core.impostors > 0 {
                    warn!(count = node.core.impostors, "heartbeats claiming to be another node ignored");
                    node.core.impostors = 0;
                }
            }
            _ = sigterm.recv() => break,
            _ = sigint.recv() => break,
        }
        for a in actions {
            carry_out(&mut node, &sockets, a, &fetched_tx).await;
        }
    }
    info!("stopping; the quarantine list stays in force");
    Ok(())
}

async fn carry_out(
    node: &mut Node,
    s: &Sockets,
    action: Action,
    fetched: &mpsc::UnboundedSender<Fetched>,
) {
    match action {
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
        Action::Quarantine { node: id, reason } => {
            let name = node.name_of(id);
            warn!(node = id.get(), name = %name, reason = %reason, "quarantined: services withheld, tunnel kept");
            let boot_id = node
                .core
                .peers()
                .get(&id)
                .and_then(|p| p.last.as_ref().map(|h| h.boot_id.clone()));
            node.set_quarantine(
                id,
                Some(Quarantined {
                    id,
                    name,
                    reason: reason.to_string(),
                    since: Timestamp::now().to_string(),
                    boot_id,
                    until_reboot: reason.needs_reboot(),
                }),
            );
        }
        Action::Readmit { node: id, why } => {
            info!(node = id.get(), name = %node.name_of(id), why = %why, "readmitted: services restored");
            node.set_quarantine(id, None);
        }
    }
}
