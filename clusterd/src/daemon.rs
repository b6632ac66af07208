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
use policy::{NodeId, Policy, RollbackStore, SignedFiles, TrustedKeys, Verified, WgPublicKey};
use proto::quarantine::{QuarantineList, Quarantined};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{Semaphore, mpsc};
use tracing::{debug, error, info, warn};

use crate::core::{Action, Config as CoreConfig, Core, Fetched as FetchResult};
use crate::policy_file::{self, OnDisk, Written};
use crate::probe::{self, CertaintyFacts, Facts, Sources};
use crate::{transfer, view};
use proto::cluster::{Heartbeat, MAX_DATAGRAM, Message};

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
    /// Times the quarantine list was written (what each write costs netguard: an edit).
    quarantine_writes: u64,
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
    fn new(
        cfg: Config,
        me: WgPublicKey,
        trust: TrustedKeys,
        store: RollbackStore,
        quarantine: QuarantineList,
    ) -> Self {
        let placeholder =
            CoreConfig::from_policy(NodeId::MIN, &policy::Distribution::default(), &[]);
        Node {
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
            quarantine_writes: 0,
            rng: rand_core::OsRng,
        }
    }

    fn now(&self) -> Duration {
        self.start.elapsed()
    }

    /// A fetch from `from` ended: what it sent is verified, put in force if it is new here,
    /// and written to the policy file, never over a file as new as it (issue 26 #10): the
    /// file is read first (another writer, joind admitting or `tyd policy push`, may have put
    /// a policy there that the next poll would only now read), and checked again just
    /// before the rename ([`policy_file::write_if_newer`]).
    fn take_fetched(
        &mut self,
        from: NodeId,
        result: Result<(Vec<u8>, Vec<u8>), FetchFailure>,
    ) -> Vec<Action> {
        let verified = result.and_then(|(bytes, sig)| {
            // Named for where it came from: a refusal is the peer's, not the file's.
            let file = format!("the policy fetched from node {}", from.get());
            policy::verify_policy_reusing(
                &file,
                &bytes,
                &sig,
                &self.trust,
                Timestamp::now(),
                &mut self.blocks,
            )
            .map(|verified| SignedFiles {
                verified,
                policy: bytes,
                signature: sig,
                trust: Vec::new(),
            })
            .map_err(|e| FetchFailure::Refused(e.to_string()))
        });
        let files = match verified {
            Ok(files) => files,
            Err(FetchFailure::Network(reason)) => {
                debug!(from = from.get(), reason = %reason, "fetch failed; another peer or the next heartbeat will do");
                return self
                    .core
                    .fetch_done(from, FetchResult::Network, self.now())
                    .into_iter()
                    .collect();
            }
            Err(FetchFailure::Refused(reason)) => {
                warn!(from = from.get(), reason = %reason, "fetched policy refused (or not finished in time); not fetching from this peer again until the policy changes");
                return self
                    .core
                    .fetch_done(from, FetchResult::Refused, self.now())
                    .into_iter()
                    .collect();
            }
        };
        // The file first: what another writer put there is in force before the fetched one
        // is weighed against it.
        let mut actions = self.poll_policy_file();
        let before = self.core.serial();
        let served = files.verified.cluster.serial;
        let fetched_digest = files.verified.digest_hex();
        let already = self
            .policy()
            .is_some_and(|p| p.digest_hex() == fetched_digest);
        let mut kept = false;
        if !already && served == before {
            // The file held the same serial with other content (the usual case of the race:
            // the poll above just read it): the peer did not lie, two policies were signed at
            // one serial. Nothing is written; `tyd status --cluster` shows the split.
            kept = true;
            let in_force = self.policy().map(|p| p.digest_hex()).unwrap_or_default();
            warn!(from = from.get(), serial = served, in_force_digest = %in_force, fetched_digest = %fetched_digest,
                "two policies signed at one serial: the fetched one has the serial of the policy in force here, with other content; the policy file is kept (sign a higher serial to settle it)");
            self.put_fork(from, &files);
        } else if !already
            && served > before
            && self.store.check(&files.verified, Timestamp::now()).is_ok()
        {
            let known = self.policy().map(|p| (p.digest_hex(), p.cluster.serial));
            match policy_file::write_if_newer(
                &self.cfg.policy,
                &files.policy,
                &files.signature,
                served,
                &self.trust,
                known.as_ref().map(|(d, s)| (d.as_str(), *s)),
            ) {
                Ok(Written::Replaced { was, locked }) => {
                    self.stamp = None;
                    match was {
                        OnDisk::Invalid(reason) => {
                            warn!(from = from.get(), served, reason = %reason, "the policy file was not a valid signed policy; replaced by the fetched one");
                        }
                        OnDisk::Missing | OnDisk::Signed { .. } => {}
                    }
                    if !locked {
                        debug!(
                            "policy directory lock not had in time; the file was checked and written without it"
                        );
                    }
                }
                Ok(Written::Kept { serial, digest }) => {
                    kept = true;
                    if serial == served && digest != fetched_digest {
                        warn!(from = from.get(), serial, file_digest = %digest, fetched_digest = %fetched_digest,
                            "two policies signed at one serial: the fetched one has the serial of the policy in force here, with other content; the policy file is kept (sign a higher serial to settle it)");
                        self.put_fork(from, &files);
                    } else if serial > served {
                        info!(
                            from = from.get(),
                            served,
                            file_serial = serial,
                            "the policy file holds a newer serial than the one fetched; the file is kept"
                        );
                    }
                    // What the file holds is put in force, if it is acceptable here.
                    self.stamp = None;
                    actions.extend(self.poll_policy_file());
                }
                Err(e) => error!(reason = %e, "cannot write the fetched policy"),
            }
        }
        if !kept || self.core.serial() < served {
            actions.extend(self.accept(files, Source::Peer(from)));
        }
        // Verified but not taken here (rolled back, replayed, another cluster): a lie. The
        // policy this node took meanwhile from elsewhere (or the file it kept) is not, unless
        // it is older than the serial the peer offered.
        let result = if kept || already || self.core.serial() > before {
            FetchResult::Delivered { serial: served }
        } else {
            FetchResult::Refused
        };
        let delivered = matches!(result, FetchResult::Delivered { .. });
        let next = self.core.fetch_done(from, result, self.now());
        // (A policy refused here was logged by accept, once.)
        if delivered && self.core.spoiled(from) {
            warn!(
                from = from.get(),
                served,
                "the peer offered a newer serial than it served: not fetching from it again until the policy changes"
            );
        }
        actions.extend(next);
        actions
    }

    /// On a master, puts a verified policy of the serial in force with other content beside
    /// the policy (`policy::fork_path`), for joind to settle: the master whose policy has the
    /// smaller digest carries its admissions into the next serial (`join::fork`).
    fn put_fork(&self, from: NodeId, files: &SignedFiles) {
        if !self.core.config().master {
            return;
        }
        let path = policy::fork_path(&self.cfg.policy);
        match policy::write_signed_pair(&path, &files.policy, &files.signature) {
            Ok(()) => {
                info!(from = from.get(), serial = files.verified.cluster.serial, file = %path.display(),
                "the other policy of this serial put beside the policy for joind to settle")
            }
            Err(e) => {
                warn!(reason = %e, "cannot put the other policy of this serial beside the policy")
            }
        }
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
        let before = self.quarantine.nodes.clone();
        self.quarantine.nodes.retain(|q| q.id != node);
        self.quarantine.nodes.extend(entry);
        self.quarantine.nodes.sort_by_key(|q| q.id);
        if self.quarantine.nodes == before {
            return;
        }
        self.quarantine_writes += 1;
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

impl Node {
    /// Carries out a decision about a peer: the log line, and the quarantine list netguard
    /// enforces.
    fn record(&mut self, action: Action) {
        match action {
            Action::Quarantine { node: id, reason } => {
                let name = self.name_of(id);
                // A node in a flapping spell is said to be one, with the hold its next
                // readmission waits for (0: not flapping).
                let hold_s = self
                    .core
                    .peers()
                    .get(&id)
                    .map_or(0, |p| p.damping.hold.as_secs());
                warn!(node = id.get(), name = %name, reason = %reason, flapping_hold_s = hold_s,
                "quarantined: services withheld, tunnel kept");
                let boot_id = self
                    .core
                    .peers()
                    .get(&id)
                    .and_then(|p| p.last.as_ref().map(|h| h.boot_id.clone()));
                self.set_quarantine(
                    id,
                    Some(Quarantined {
                        id,
                        name,
                        until_reboot: reason.needs_reboot(),
                        reason,
                        since: Timestamp::now(),
                        boot_id,
                    }),
                );
            }
            Action::Readmit { node: id, why } => {
                info!(node = id.get(), name = %self.name_of(id), why = %why, "readmitted: services restored");
                self.set_quarantine(id, None);
            }
            Action::Flapping {
                node: id,
                quarantines,
                hold,
            } => {
                // Once per flapping spell; the node stays on the quarantine list (nothing to
                // write). Its next quarantines and readmission, each at least a hold apart, are
                // the summary.
                warn!(node = id.get(), name = %self.name_of(id), quarantines,
                window_s = crate::core::FLAP_WINDOW.as_secs(), hold_s = hold.as_secs(),
                max_hold_s = crate::core::MAX_HOLD.as_secs(),
                "flapping: held quarantined; readmission waits for the hold, which doubles while it goes on");
            }
            Action::Send { .. } | Action::Fetch { .. } => {}
        }
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

/// SIGTERM, SIGINT, or no one left to send any, stop clusterd; SIGHUP changes nothing (it
/// reads the policy file every 200 ms).
fn stops(signal: Option<signals::Signal>) -> bool {
    !matches!(signal, Some(signals::Signal::Hangup))
}

/// Runs until SIGTERM or SIGINT arrives on `signals` (`main` installs them:
/// `signals::install`).
pub async fn run(cfg: Config, mut signals: signals::Signals) -> Result<(), StartupError> {
    let me = load_key(&cfg.key)?;
    let store = RollbackStore::open(&cfg.state, cfg.min_serial)?;
    let trust_text =
        policy::fsutil::read(&cfg.trust).map_err(|e| StartupError::Key(e.to_string()))?;
    let trust = TrustedKeys::parse(&String::from_utf8_lossy(&trust_text))
        .map_err(|e| StartupError::Key(format!("{}: {e}", cfg.trust.display())))?;
    let quarantine = QuarantineList::read(&cfg.quarantine).unwrap_or_default();
    let mut node = Node::new(cfg, me, trust, store, quarantine);
    info!(public_key = %me, "clusterd starting");
    // The policy in force, and this node's tunnel address to listen on.
    let sockets = loop {
        node.poll_policy_file();
        if let Some(s) = bind(&node).await {
            break s;
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            signal = signals.recv() => if stops(signal) { return Ok(()) },
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
                actions = node.take_fetched(from, result);
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
            signal = signals.recv() => if stops(signal) { break },
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
        local => node.record(local),
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::sync::Mutex;

    use ed25519_dalek::SigningKey;

    use super::*;
    use proto::cluster::Integrity;

    /// What a test logged, as the daemon's text lines.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
        type Writer = Captured;
        fn make_writer(&'a self) -> Self::Writer {
            self.clone()
        }
    }

    fn logged<T>(f: impl FnOnce() -> T) -> (T, String) {
        let c = Captured::default();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(c.clone())
            .with_ansi(false)
            .with_max_level(tracing::Level::INFO)
            .finish();
        let r = tracing::subscriber::with_default(subscriber, f);
        let text = String::from_utf8_lossy(&c.0.lock().unwrap()).into_owned();
        (r, text)
    }

    fn count(log: &str, what: &str) -> usize {
        log.lines().filter(|l| l.contains(what)).count()
    }

    fn id(n: u16) -> NodeId {
        NodeId::new(n).unwrap()
    }

    const KEYS: [[u8; 32]; 2] = [[1; 32], [2; 32]];

    /// The lab's policy at `serial` with nodes 1 (this one) and 2; `note` makes content
    /// differ at one serial.
    fn policy_text(serial: u64, note: &str) -> String {
        let expires = Timestamp::now() + jiff::SignedDuration::from_hours(1);
        let mut t = policy::template::init_template("lab", expires)
            .replace("serial = 1", &format!("serial = {serial}"));
        for (i, k) in KEYS.iter().enumerate() {
            t.push_str(&format!(
                "\n[[node]]\nid = {n}\nname = \"d{n}\"\npublic_key = \"{}\"\nendpoint = \"198.18.0.{n}:51820\"\naddresses = [\"10.77.0.{n}\"]\nroles = [\"{role}\"]\n",
                WgPublicKey::from_secret(k),
                n = i + 1,
                role = if i == 0 { "master" } else { "drone" }
            ));
        }
        t.push_str(&format!("\n# {note}\n"));
        t
    }

    fn operator() -> SigningKey {
        SigningKey::from_bytes(&[7; 32])
    }

    /// Puts a signed policy in place as another writer would (joind, `tyd policy push`).
    fn put(path: &Path, text: &str) -> String {
        let sig = policy::sign(text.as_bytes(), &operator());
        std::fs::write(policy::signature_path(path), &sig).unwrap();
        std::fs::write(path, text).unwrap();
        sig
    }

    /// Node 1's daemon state (no sockets), with serial 11 in force from its policy file.
    fn node_on_11(dir: &Path) -> Node {
        let policy = dir.join("cluster.toml");
        put(&policy, &policy_text(11, "eleven"));
        let trust_text = format!(
            "{}\n",
            policy::OperatorPublicKey::from(&operator()).to_base64()
        );
        std::fs::write(dir.join("operator.pub"), &trust_text).unwrap();
        let trust = TrustedKeys::parse(&trust_text).unwrap();
        let cfg = Config {
            policy,
            trust: dir.join("operator.pub"),
            key: dir.join("node.key"),
            state: dir.join("clusterd.json"),
            min_serial: 0,
            sources: Sources {
                certainty_socket: None,
                boot_id: dir.join("boot_id"),
                proc_root: dir.join("proc"),
            },
            quarantine: dir.join("quarantine.json"),
            view: dir.join("view.json"),
        };
        let store = RollbackStore::open(&cfg.state, 0).unwrap();
        let mut node = Node::new(
            cfg,
            WgPublicKey::from_secret(&KEYS[0]),
            trust,
            store,
            QuarantineList::default(),
        );
        node.poll_policy_file();
        assert_eq!(node.core.serial(), 11);
        assert_eq!(node.my_id, Some(id(1)));
        node
    }

    fn heartbeat(node: u16, integrity: Integrity, boot: &str, digest: &str) -> Heartbeat {
        Heartbeat {
            node,
            boot_id: boot.into(),
            seq: 1,
            serial: 12,
            digest: digest.into(),
            integrity,
            stable_root: None,
            root_matches: None,
            last_verification: None,
            uptime_s: 1,
            load1: 0.0,
            mem_available_kb: 1,
        }
    }

    fn digest(text: &str) -> String {
        blake3::hash(text.as_bytes()).to_hex().to_string()
    }

    /// Attack (issue 26 #10, "a fetched policy overwrote a newer one on disk"): two masters
    /// admitted a node each at once and both signed serial 12; one master's clusterd fetched
    /// the other's serial 12 before its own 200 ms poll had read the file its joind had just
    /// written (serial 12, other content), took it and wrote it over that file. Steps: node 1
    /// has serial 11 in force from its file; its joind puts serial 12 (content A) in the file;
    /// the fetched serial 12 (content B) from node 2 arrives, once after the poll could have
    /// seen the file and once while it could not (same modification time and length: the
    /// poll sees no change); the file must still hold A, A be in force, a line say "two
    /// policies signed at one serial", and the view show node 2's serial 12 as a problem.
    /// A fetched serial 13 is still written.
    #[test]
    fn a_fetched_policy_never_overwrites_the_same_serial_joind_just_wrote() {
        for poll_sees_it in [true, false] {
            let dir = tempfile::tempdir().unwrap();
            let mut node = node_on_11(dir.path());
            let path = node.cfg.policy.clone();
            let a = policy_text(12, "admitted here by joind");
            let sig_a = put(&path, &a);
            if !poll_sees_it {
                let m = std::fs::metadata(&path).unwrap();
                node.stamp = Some((m.modified().unwrap(), m.len()));
            }
            let b = policy_text(12, "admitted by the other master");
            let sig_b = policy::sign(b.as_bytes(), &operator());
            let (_, log) = logged(|| {
                node.take_fetched(id(2), Ok((b.clone().into_bytes(), sig_b.into_bytes())))
            });
            let case = if poll_sees_it { "poll" } else { "no poll" };
            assert_eq!(std::fs::read_to_string(&path).unwrap(), a, "{case}: {log}");
            assert_eq!(
                std::fs::read_to_string(policy::signature_path(&path)).unwrap(),
                sig_a,
                "{case}"
            );
            assert_eq!(node.core.serial(), 12, "{case}");
            assert_eq!(
                node.policy().map(|p| p.digest_hex()),
                Some(digest(&a)),
                "{case}: A in force"
            );
            assert_eq!(
                count(&log, "two policies signed at one serial"),
                1,
                "{case}: {log}"
            );
            assert!(!node.core.spoiled(id(2)), "{case}: the peer did not lie");
            // Node 1 is a master: B is beside the policy for its joind to settle the fork.
            let fork = policy::fork_path(&path);
            assert_eq!(std::fs::read_to_string(&fork).unwrap(), b, "{case}");
            std::fs::remove_file(&fork).unwrap();
            // Node 2 says it runs B at serial 12: a problem in `tyd status --cluster`.
            let now = node.now();
            node.core.receive(
                id(2),
                Message::Heartbeat(heartbeat(2, Integrity::Verifying, "b", &digest(&b))),
                now,
            );
            let mine = heartbeat(1, Integrity::Verifying, "a", &digest(&a));
            let v = view::of(&node.core, "lab", &mine, "d1", now);
            let d2 = v.nodes.iter().find(|n| n.id == 2).unwrap();
            let problem = v.problem_of(d2).unwrap_or_default();
            assert!(
                problem.contains("two policies at one serial"),
                "{case}: {problem:?}"
            );
            // A higher serial is written over it.
            let c = policy_text(13, "both admissions");
            let sig_c = policy::sign(c.as_bytes(), &operator());
            node.take_fetched(id(2), Ok((c.clone().into_bytes(), sig_c.into_bytes())));
            assert_eq!(std::fs::read_to_string(&path).unwrap(), c, "{case}");
            assert_eq!(node.core.serial(), 13, "{case}");
        }
    }

    /// Attack (issue 26 #11, "flapping costs every peer"), as the daemon carries it out: node
    /// 2 alternates "lost" in boot k and "verifying" twice in boot k + 1, 100 times a second
    /// for 10 s. Before, each flap was a quarantine line, a readmission line and two writes of
    /// the quarantine list (each an edit in netguard): 2000 lines and 2000 writes. Now: at
    /// most a handful of each, one "flapping" line, and node 2 on the list at the end.
    #[test]
    fn a_flapping_member_costs_the_daemon_one_flapping_line_and_few_list_writes() {
        let dir = tempfile::tempdir().unwrap();
        let mut node = node_on_11(dir.path());
        let (_, log) = logged(|| {
            for k in 0..1000u64 {
                let t = Duration::from_millis(10 * k);
                let lost = heartbeat(2, Integrity::Lost, &format!("boot-{k}"), "d");
                let good = heartbeat(2, Integrity::Verifying, &format!("boot-{}", k + 1), "d");
                for (h, dt) in [(lost, 0), (good.clone(), 3), (good, 6)] {
                    let at = t + Duration::from_millis(dt);
                    for a in node.core.receive(id(2), Message::Heartbeat(h), at) {
                        node.record(a);
                    }
                }
            }
        });
        let quarantined = count(&log, "quarantined: services withheld");
        let readmitted = count(&log, "readmitted: services restored");
        let flapping = count(&log, "flapping: held quarantined");
        eprintln!(
            "daemon, 100 flaps/s for 10 s: {quarantined} quarantine lines, {readmitted} \
             readmission lines, {flapping} flapping lines, {} quarantine list writes",
            node.quarantine_writes
        );
        assert!(quarantined + readmitted <= 5, "{log}");
        assert_eq!(flapping, 1, "{log}");
        assert!(node.quarantine_writes <= 5, "{}", node.quarantine_writes);
        let list = QuarantineList::read(&node.cfg.quarantine).unwrap();
        assert_eq!(list.ids(), [id(2)].into(), "held out at the end");
        // The flapping line has its fields.
        let line = log
            .lines()
            .find(|l| l.contains("flapping: held"))
            .unwrap_or_default();
        assert!(
            line.contains("node=2") && line.contains("hold_s=30") && line.contains("quarantines=3"),
            "{line}"
        );
    }
}
