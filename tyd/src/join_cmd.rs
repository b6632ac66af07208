//! `tyd init` (CHAOS's `tyd -f init`) on the first node, and `tyd join` (`tyd -m <member>`)
//! on every further one. docs/join.md.

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};

use jiff::Timestamp;
use join::token::Token;
use policy::fsutil::atomic_write;
use policy::keys::KeyKind;
use policy::{Role, WgPublicKey, signature_path};

use crate::failure::{CliResult, Exit, Failure};
use crate::keygen;
use crate::services;

pub use crate::init_cmd::{InitArgs, init};

pub(crate) fn io(path: &Path, e: std::io::Error) -> Failure {
    Failure::new(Exit::Runtime, format!("{}: {e}", path.display()))
}

/// The node key at `path`, made if there is none yet.
pub(crate) fn node_key(path: &Path) -> CliResult<WgPublicKey> {
    if path.exists() {
        Ok(WgPublicKey::from_secret(&keygen::load_node_secret(path)?))
    } else {
        keygen::node(path)
    }
}

/// What `tyd join` needs.
#[derive(Debug)]
pub struct JoinArgs<'a> {
    pub member: &'a str,
    /// None: wait for the operator's approval.
    pub token: Option<&'a str>,
    pub operator: &'a str,
    pub dir: &'a Path,
    pub key: Option<&'a Path>,
    pub name: Option<&'a str>,
    pub no_start: bool,
    /// This machine's TPM: the join carries its attestation key and a quote (skipped when
    /// the path does not exist).
    pub tpm: &'a Path,
}

fn member_addr(member: &str) -> CliResult<SocketAddr> {
    let with_port = if member.parse::<IpAddr>().is_ok() || !member.contains(':') {
        format!("{member}:{}", policy::model::default_join_port())
    } else {
        member.to_string()
    };
    let shown = policy::parse::shown(member);
    with_port
        .to_socket_addrs()
        .map_err(|e| Failure::new(Exit::Usage, format!("member {shown}: {e}")))?
        .next()
        .ok_or_else(|| Failure::new(Exit::Usage, format!("member {shown}: no address")))
}

pub fn join(a: &JoinArgs<'_>) -> CliResult {
    let token: Option<Token> = a
        .token
        .map(str::parse)
        .transpose()
        .map_err(|e: join::token::TokenError| Failure::new(Exit::Usage, format!("--token: {e}")))?;
    let members = members_to_ask(a.member)?;
    let policy_path = a.dir.join("cluster.toml");
    if policy_path.exists() {
        return Err(Failure::new(
            Exit::Refused,
            format!(
                "{}: already exists: this node already has a cluster (remove it to join another)",
                policy_path.display()
            ),
        ));
    }
    std::fs::create_dir_all(a.dir).map_err(|e| io(a.dir, e))?;
    let key_path: PathBuf = a
        .key
        .map_or_else(|| a.dir.join("node.key"), Path::to_path_buf);
    let me = node_key(&key_path)?;
    let tpm = JoinTpm::new(a.tpm, &me);
    let prove = |exchange: &[u8; 32]| tpm.prove(exchange);
    let joined = ask_members(a, &members, token.as_ref(), &me, &prove)?;
    if let Some(warning) = tpm.mismatch(joined.attestation_key.as_ref()) {
        eprintln!("warning: {warning}");
    }
    let trust_text =
        KeyKind::OperatorPublic.file_text(joined.operator_key.verifying_key().as_bytes());
    atomic_write(&a.dir.join("operator.pub"), trust_text.as_bytes(), 0o644)?;
    // The memberships first: the daemons find them beside the policy as they start.
    for m in &joined.memberships {
        if let Some(master) = policy::NodeId::new(m.master) {
            let path = policy::membership::membership_path(&policy_path, master);
            policy::write_signed_pair(&path, m.membership.as_bytes(), m.signature.as_bytes())?;
        }
    }
    policy::write_signed_pair(
        &policy_path,
        joined.policy.as_bytes(),
        joined.signature.as_bytes(),
    )?;
    println!(
        "joined cluster {} as node {} ({}), serial {}",
        joined.cluster, joined.node, joined.name, joined.serial
    );
    let root = services::root();
    if let Some(warning) = certainty_warning(&joined.policy, &joined.roles, root, Timestamp::now())
    {
        eprintln!("warning: {warning}");
    }
    start_daemons(
        services::NodeKind::Member,
        root,
        a.no_start,
        a.dir,
        &key_path,
        None,
    )
}

/// The members to ask: the one named, or, for "any", those that answer on the local
/// segment.
fn members_to_ask(member: &str) -> CliResult<Vec<SocketAddr>> {
    if member != "any" {
        return Ok(vec![member_addr(member)?]);
    }
    let port = policy::model::default_join_port();
    let found =
        join::discover::find_members(port, std::time::Duration::from_secs(5)).map_err(|e| {
            Failure::new(
                Exit::Runtime,
                format!("asking the segment for a member: {e}"),
            )
        })?;
    if found.is_empty() {
        return Err(Failure::new(
            Exit::Runtime,
            format!("no member answered on the local segment (udp {port}) within 5 s"),
        ));
    }
    let shown: Vec<String> = found.iter().map(ToString::to_string).collect();
    eprintln!(
        "answered on the segment (tried in this order): {}",
        shown.join(", ")
    );
    Ok(found
        .into_iter()
        .map(|ip| SocketAddr::new(ip, port))
        .collect())
}

/// How `tyd join` uses this machine's TPM: it quotes over each exchange's handshake hash,
/// so a proof is made per member asked; its key, or why there is none, is told once, and a
/// TPM that is absent or failed is not asked again.
struct JoinTpm<'a> {
    path: &'a Path,
    me: &'a WgPublicKey,
    state: std::cell::RefCell<TpmUse>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum TpmUse {
    Untried,
    /// It proved this attestation key in the last exchange.
    Answers(String),
    Unusable,
}

impl<'a> JoinTpm<'a> {
    fn new(path: &'a Path, me: &'a WgPublicKey) -> Self {
        Self {
            path,
            me,
            state: std::cell::RefCell::new(TpmUse::Untried),
        }
    }

    /// What to tell when the entry the node joined with pins `pinned` and this machine's
    /// TPM proved another key, or none: the master keeps a member's entry as it is, so its
    /// peers would quarantine it where its role must attest.
    fn mismatch(&self, pinned: Option<&policy::AttestationKey>) -> Option<String> {
        let pinned = pinned?.to_string();
        Some(match &*self.state.borrow() {
            TpmUse::Answers(sent) if *sent == pinned => return None,
            TpmUse::Answers(sent) => format!(
                "this node's entry pins TPM key {pinned}, not this machine's ({sent}): where its role must attest, its peers quarantine it until the operator pins this one (attestation_key in its entry)"
            ),
            TpmUse::Untried | TpmUse::Unusable => format!(
                "this node's entry pins TPM key {pinned}, and this join carried no quote: where its role must attest, its peers quarantine it unless its clusterd quotes with that TPM"
            ),
        })
    }

    fn prove(&self, exchange: &[u8; 32]) -> Option<join::admit::JoinAttestation> {
        let first = match &*self.state.borrow() {
            TpmUse::Unusable => return None,
            state => *state == TpmUse::Untried,
        };
        match join::client::tpm_attestation(self.path, self.me, exchange) {
            Ok(Some(att)) => {
                self.state.replace(TpmUse::Answers(att.key.clone()));
                if first {
                    eprintln!(
                        "this machine's TPM attestation key goes with the join: {}",
                        att.key
                    );
                }
                Some(att)
            }
            Ok(None) => {
                self.state.replace(TpmUse::Unusable);
                eprintln!(
                    "no TPM at {}: the join carries no TPM quote (a cluster whose nodes must attest refuses it)",
                    self.path.display()
                );
                None
            }
            Err(e) => {
                self.state.replace(TpmUse::Unusable);
                eprintln!(
                    "warning: {}: no TPM quote for the join ({e}); a cluster whose nodes must attest refuses it",
                    self.path.display()
                );
                None
            }
        }
    }
}

/// Asks `members` in turn to admit this node (key `me`), with `token` or by the operator's
/// approval, under the name asked for, the host name, or none.
fn ask_members(
    a: &JoinArgs<'_>,
    members: &[SocketAddr],
    token: Option<&Token>,
    me: &WgPublicKey,
    prove: join::client::Prover<'_>,
) -> CliResult<join::client::Joined> {
    // Each member that answered, in turn, until one works (a rogue may answer first).
    let ask = |name: Option<String>| {
        join::client::first_that_works(
            members,
            |member| match token {
                Some(token) => {
                    join::client::join(member, token, a.operator, me, name.clone(), prove)
                }
                None => join::client::join_with_approval(
                    member,
                    a.operator,
                    me,
                    name.clone(),
                    prove,
                    join::service::APPROVAL_WAIT,
                    |code| {
                        eprintln!(
                            "waiting for the operator's approval: on a master, `tyd join list` must show code {code} for this node; then `tyd join approve ID`"
                        );
                    },
                ),
            },
            |member, e| eprintln!("{member}: {e}; trying the next member that answered"),
        )
    };
    // Without --name the node asks for its host name, as `tyd init` names the first node;
    // when the master refuses it (taken, or not a usable name) it asks again with none and
    // the master picks node<ID>. A refused request spends no token use.
    match (a.name, default_name()) {
        // "-": the master picks (drone images, whose host names say nothing of the node).
        (Some("-"), _) => ask(None),
        (Some(name), _) => ask(Some(name.to_string())),
        (None, Some(host)) => match ask(Some(host.clone())) {
            // The answer carries the refusal as text (the join protocol has no refusal
            // codes yet): both name refusals (join::admit::Refusal) begin "name ".
            Err(join::client::JoinError::Refused(reason)) if reason.starts_with("name ") => {
                eprintln!("the master refused the name {host:?} ({reason}); asking for none");
                ask(None)
            }
            other => other,
        },
        (None, None) => ask(None),
    }
    .map_err(join_failure)
}

/// The exit code and message of a join that failed.
fn join_failure(e: join::client::JoinError) -> Failure {
    let exit = match &e {
        join::client::JoinError::Connect(..) | join::client::JoinError::Wire(..) => Exit::Runtime,
        join::client::JoinError::Refused(_) => Exit::Refused,
        // Not yet (a drone's old entry the cluster still hears): try again, as for an
        // unreachable member.
        join::client::JoinError::Later(_) => Exit::Runtime,
        join::client::JoinError::WrongOperator { .. } | join::client::JoinError::BadPolicy(_) => {
            Exit::BadSignature
        }
        _ => Exit::Refused,
    };
    Failure::new(exit, e.to_string())
}

/// What to tell the operator when this node's roles owe certaintyd (the policy's
/// `require_certainty`) but its root is a disk, where certaintyd does not run: the cluster
/// would quarantine it.
pub fn certainty_warning(
    policy_text: &str,
    roles: &[Role],
    root: services::Root,
    now: Timestamp,
) -> Option<String> {
    if root == services::Root::Ram {
        return None;
    }
    let p = policy::parse_policy("the joined policy", policy_text.as_bytes(), now).ok()?;
    if !p.distribution.require_certainty.of(roles) {
        return None;
    }
    let roles: Vec<&str> = roles.iter().map(|r| r.name()).collect();
    Some(format!(
        "this node joined as {} and the policy requires certaintyd of it, but / is a disk, where certaintyd does not run: the cluster will quarantine it. Join disk roots with a token for servers (tyd token create --roles server).",
        roles.join(",")
    ))
}

/// This machine's host name, as a node name (None when it has none).
pub fn default_name() -> Option<String> {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .filter(|h| !h.is_empty())
}

/// Enables and starts the units, or says why not and prints the command lines.
pub(crate) fn start_daemons(
    kind: services::NodeKind,
    root: services::Root,
    no_start: bool,
    dir: &Path,
    key: &Path,
    tokens: Option<&Path>,
) -> CliResult {
    let plan = services::plan(kind, root, dir);
    match services::usable(no_start, dir, key, tokens) {
        Ok(()) => {
            let next = |why: services::ServiceError| {
                Failure::new(
                    Exit::Runtime,
                    format!(
                        "{why}; see `journalctl -u netguard -u clusterd -u joind`, mend the cause, then `systemctl restart {}` (the keys and the policy are in place; nothing needs to run again)",
                        plan.units.join(" ")
                    ),
                )
            };
            services::write_settings(&plan)
                .map_err(|e| Failure::new(Exit::Runtime, e.to_string()))?;
            services::start(&plan).map_err(next)?;
            // systemd says "started" as soon as netguard runs; the node is protected only
            // once its table is in force, which a missing dependency (nft unable to resolve
            // a protocol name without /etc/protocols) or a sandbox error can prevent.
            services::wait_in_force(services::IN_FORCE_WAIT).map_err(next)?;
            println!(
                "started: {} (netguard's firewall in force)",
                plan.units.join(" ")
            );
        }
        Err(services::NotStarted::Asked) => {
            // The settings the units read are written, so starting them later is one line.
            services::write_settings(&plan)
                .map_err(|e| Failure::new(Exit::Runtime, e.to_string()))?;
            println!(
                "daemons not started (--no-start); start them with: systemctl enable --now {}",
                plan.units.join(" ")
            );
        }
        Err(why) => {
            println!("daemons not started ({why}); start them on this node:");
            for c in services::command_lines(root, dir, key, tokens) {
                println!("  {c}");
            }
        }
    }
    Ok(())
}

/// `tyd leave`: asks a master, through the tunnel, to remove this node.
pub fn leave(dir: &Path, key: Option<&Path>, now: Timestamp) -> CliResult {
    use std::io::{BufRead, Write};
    let policy_path = dir.join("cluster.toml");
    let files = policy::load_signed(&policy_path, &dir.join("operator.pub"), now)?;
    let p = &files.verified;
    let key_path: PathBuf = key.map_or_else(|| dir.join("node.key"), Path::to_path_buf);
    let me = WgPublicKey::from_secret(&keygen::load_node_secret(&key_path)?);
    // In the policy, or in a master's membership beside it.
    let (memberships, _) = policy::membership::read_beside(&policy_path, p, now);
    let mine = memberships
        .nodes(p)
        .find(|n| n.public_key == me)
        .ok_or_else(|| {
            Failure::new(
                Exit::Refused,
                format!("{}: this node is not in the policy", policy_path.display()),
            )
        })?;
    let port = p.join.as_ref().map(|j| j.port).ok_or_else(|| {
        Failure::new(
            Exit::Refused,
            "the policy has no [join] section: ask the operator (tyd node remove)",
        )
    })?;
    let masters: Vec<SocketAddr> = p
        .nodes
        .iter()
        .filter(|n| n.roles.contains(&Role::Master) && n.public_key != me)
        .filter_map(|n| n.addresses.first())
        .map(|a| SocketAddr::new(*a, port))
        .collect();
    let mut last = String::from("no other master in the policy");
    for m in masters {
        let timeout = std::time::Duration::from_secs(5);
        let mut s = match std::net::TcpStream::connect_timeout(&m, timeout) {
            Ok(s) => s,
            Err(e) => {
                last = format!("{m}: {e}");
                continue;
            }
        };
        let _ = s.set_read_timeout(Some(timeout));
        s.write_all(&join::wire::Hello::Leave.to_bytes())
            .map_err(|e| Failure::new(Exit::Runtime, format!("{m}: {e}")))?;
        let mut line = String::new();
        let read = std::io::BufReader::new(&s).read_line(&mut line);
        // Closed at once: the master writes the policy that cuts this node's tunnel only
        // once it has seen this close (or after a few seconds).
        drop(s);
        read.map_err(|e| Failure::new(Exit::Runtime, format!("{m}: {}", no_answer(&e, timeout))))?;
        return match serde_json::from_str::<join::service::LeaveAnswer>(&line) {
            Ok(join::service::LeaveAnswer::Removed { node }) => {
                println!(
                    "node {node} ({}) removed from cluster {:?} by the master at {m}",
                    mine.name, p.cluster.name
                );
                stop_after_leave(dir, &key_path)
            }
            Ok(join::service::LeaveAnswer::Refused { reason }) => Err(Failure::new(
                Exit::Refused,
                format!("{m} refused: {reason}"),
            )),
            Err(_) => Err(Failure::new(
                Exit::Runtime,
                format!("{m}: no answer to the leave request"),
            )),
        };
    }
    Err(Failure::new(
        Exit::Runtime,
        format!("cannot reach a master: {last}"),
    ))
}

/// A read error, said plainly: a timeout is "no answer within N s", not EAGAIN.
fn no_answer(e: &std::io::Error, timeout: std::time::Duration) -> String {
    match e.kind() {
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => {
            format!("no answer within {} s", timeout.as_secs())
        }
        _ => e.to_string(),
    }
}

/// After the cluster removed this node: its daemons stopped and disabled (they would go on
/// with the old policy, and start again at boot), the policy moved aside so that `tyd join`
/// can join again, and clusterd's view removed (it would show a cluster this node left).
/// netguard's table stays in force until reboot: leaving opens nothing.
fn stop_after_leave(dir: &Path, key: &Path) -> CliResult {
    let policy_path = dir.join("cluster.toml");
    let units = services::ALL_UNITS;
    match services::usable(false, dir, key, None) {
        Ok(()) => {
            services::stop(&units).map_err(|e| {
                Failure::new(
                    Exit::Runtime,
                    format!("{e}; the cluster has removed this node: stop them by hand"),
                )
            })?;
            println!("stopped and disabled: {}", units.join(" "));
        }
        Err(why) => println!("daemons not stopped here ({why}): stop this node's daemons"),
    }
    for f in [signature_path(&policy_path), policy_path.clone()] {
        let mut aside = f.clone().into_os_string();
        aside.push(".left");
        std::fs::rename(&f, &aside).map_err(|e| io(&f, e))?;
    }
    match std::fs::remove_file(services::UNIT_VIEW) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(Path::new(services::UNIT_VIEW), e)),
    }
    println!(
        "{} moved aside to cluster.toml.left; netguard's table stays in force until reboot (or nft delete table inet netguard)",
        policy_path.display()
    );
    Ok(())
}

/// `tyd join list|approve|deny`, on a master.
#[derive(Debug, clap::Subcommand)]
pub enum Decide {
    /// Joins without a token waiting for approval: id, code (it must match the one the
    /// joiner shows), key, name, address.
    List {
        #[arg(long, default_value = proto::paths::PENDING)]
        pending: PathBuf,
    },
    /// Admit a waiting join (check its code first).
    Approve {
        id: u32,
        #[arg(long, default_value = proto::paths::PENDING)]
        pending: PathBuf,
    },
    /// Refuse a waiting join.
    Deny {
        id: u32,
        #[arg(long, default_value = proto::paths::PENDING)]
        pending: PathBuf,
    },
}

pub fn decide(d: Decide, now: Timestamp) -> CliResult {
    use join::pending::{Decision, PendingStore};
    let fail = |e: join::pending::PendingError| Failure::new(Exit::Runtime, e.to_string());
    let (id, pending, decision) = match d {
        Decide::List { pending } => {
            let store = PendingStore::load(&pending).map_err(fail)?;
            println!(
                "{:>4}  {:<8} {:<14} {:<12} {:<16} {:<16} waiting",
                "id", "code", "key", "name", "address", "from"
            );
            for r in &store.requests {
                let waited = now.duration_since(r.since).as_secs().max(0);
                println!(
                    "{:>4}  {:<8} {:<14} {:<12} {:<16} {:<16} {waited}s{}",
                    r.id,
                    r.code,
                    format!("{}...", r.public_key.get(..10).unwrap_or(&r.public_key)),
                    r.name.as_deref().unwrap_or("-"),
                    r.endpoint,
                    r.source,
                    match r.decision {
                        Decision::Waiting => "",
                        Decision::Approved => " (approved)",
                        Decision::Denied => " (denied)",
                    }
                );
            }
            return Ok(());
        }
        Decide::Approve { id, pending } => (id, pending, Decision::Approved),
        Decide::Deny { id, pending } => (id, pending, Decision::Denied),
    };
    let mut store = PendingStore::load(&pending).map_err(fail)?;
    store.decide(id, decision).map_err(fail)?;
    store.save(&pending).map_err(fail)?;
    eprintln!(
        "join {id} {}; joind answers the joiner within a second",
        if decision == Decision::Approved {
            "approved"
        } else {
            "denied"
        }
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::init_cmd::first_token_role;
    use jiff::SignedDuration;
    use policy::NodeId;
    use policy::edit::{NewNode, PolicyEdit, default_addresses};

    /// Found by a helper from the docs: a member joining again with another TPM, a
    /// ratcheted one or none was told "joined" and nothing else (the master keeps a
    /// member's entry as it is), and its peers quarantined it later. Steps: the entry pins
    /// key A; a join that proved A: nothing to tell; one that proved B: told, naming both
    /// keys; one with no quote: told; an entry pinning nothing: nothing to tell.
    #[test]
    fn a_member_joining_again_with_another_tpm_is_told_its_entry_pins_another_key() {
        let me = WgPublicKey::from_secret(&[9; 32]);
        let key = |n: u8| {
            policy::AttestationKey::from(
                *p256::ecdsa::SigningKey::from_slice(&[n; 32])
                    .unwrap()
                    .verifying_key(),
            )
        };
        let tpm = JoinTpm::new(Path::new("/nonexistent"), &me);
        let told = tpm.mismatch(Some(&key(1))).unwrap();
        assert!(told.contains("this join carried no quote"), "{told}");
        tpm.state.replace(TpmUse::Answers(key(1).to_string()));
        assert_eq!(tpm.mismatch(Some(&key(1))), None);
        assert_eq!(tpm.mismatch(None), None);
        tpm.state.replace(TpmUse::Answers(key(2).to_string()));
        let told = tpm.mismatch(Some(&key(1))).unwrap();
        assert!(
            told.contains(&key(1).to_string()) && told.contains(&key(2).to_string()),
            "{told}"
        );
    }

    /// Attack (the README's own steps): a Debian machine joined with `tyd init`'s token became
    /// a drone, which owes certaintyd, on a disk root where certaintyd does not run, and the
    /// master quarantined it. Steps: the first token of a disk-root init admits servers, of a
    /// RAM-root init drones; the policy requires certaintyd of drones only, so a server is
    /// not told it will be quarantined while a drone on a disk is.
    #[test]
    fn a_disk_root_joined_with_the_first_token_owes_no_certaintyd() {
        assert_eq!(first_token_role(services::Root::Disk), Role::Server);
        assert_eq!(first_token_role(services::Root::Ram), Role::Drone);
        let now = Timestamp::now();
        let expires = now
            .checked_add(SignedDuration::from_hours(24))
            .expect("in range");
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("cluster.toml");
        let text = policy::template::init_template("lab", expires);
        std::fs::write(&path, &text).expect("write");
        let mut edit = PolicyEdit::open(&path).expect("open");
        edit.require_certainty_of(&[Role::Drone]);
        let current = edit.current(now).expect("current");
        let keys = [
            WgPublicKey::from_secret(&[1; 32]),
            WgPublicKey::from_secret(&[2; 32]),
        ];
        for (i, (key, role)) in keys.iter().zip([Role::Server, Role::Drone]).enumerate() {
            let id = NodeId::new(i as u16 + 1).expect("id");
            edit.add_node(&NewNode {
                id,
                name: format!("n{}", i + 1),
                public_key: *key,
                endpoint: None,
                addresses: default_addresses(&current, id),
                roles: vec![role],
                expires: None,
                attestation_key: None,
            })
            .expect("add");
        }
        edit.write(now).expect("write");
        let text = std::fs::read_to_string(&path).expect("read");
        assert_eq!(
            certainty_warning(&text, &[Role::Server], services::Root::Disk, now),
            None
        );
        let drone = certainty_warning(&text, &[Role::Drone], services::Root::Disk, now);
        assert!(drone.is_some_and(|w| w.contains("--roles server")));
        assert_eq!(
            certainty_warning(&text, &[Role::Drone], services::Root::Ram, now),
            None
        );
    }
}
