//! `tyd policy sign`: never the same serial twice for other content, by this key (its signing
//! log beside it) or on this node (what its daemons accepted), with the change shown first.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use jiff::Timestamp;
use policy::fsutil::{self, atomic_write};
use policy::{Policy, parse_policy, sign, signature_path};
use serde::{Deserialize, Serialize};

use crate::edit::PolicyEdit;
use crate::failure::{CliResult, Exit, Failure};
use crate::keygen;
use crate::policy_cmd::{display, parse_for_diff};

/// What an operator key has signed, per cluster: kept beside the key as `KEY.signed.json`.
#[derive(Debug, Default, Serialize, Deserialize)]
struct SigningLog(BTreeMap<String, SignedEntry>);

#[derive(Debug, Serialize, Deserialize)]
struct SignedEntry {
    serial: u64,
    digest: String,
    /// The policy text signed, to show what the next signing changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    text: Option<String>,
}

/// Shows what this signing changes against the last policy this key signed for the cluster,
/// and on a terminal asks (unless `yes`). False: the operator said no.
fn review(path: &Path, bytes: &[u8], last: Option<&SignedEntry>, yes: bool) -> CliResult<bool> {
    use std::io::{BufRead, IsTerminal, Write};
    let new = parse_for_diff(&display(path), bytes)?;
    match last.and_then(|l| l.text.as_deref()) {
        Some(text) => match parse_for_diff("the last signed policy", text.as_bytes()) {
            Ok(old) => {
                eprintln!("changes since the last policy signed with this key:");
                eprint!("{}", policy::PolicyDiff::new(&old, &new));
            }
            Err(e) => eprintln!("(cannot compare with the last signed policy: {e})"),
        },
        None => eprintln!(
            "first signing of cluster {} with this key: serial {}, {} node(s)",
            new.cluster.name,
            new.cluster.serial,
            new.nodes.len()
        ),
    }
    if yes || !std::io::stdin().is_terminal() {
        return Ok(true);
    }
    eprint!("sign it? [y/N] ");
    let _ = std::io::stderr().flush();
    let mut answer = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut answer)
        .map_err(|e| Failure::new(Exit::Runtime, format!("stdin: {e}")))?;
    Ok(matches!(answer.trim(), "y" | "Y" | "yes"))
}

pub fn log_path(key: &Path) -> PathBuf {
    let mut name = key.as_os_str().to_owned();
    name.push(".signed.json");
    PathBuf::from(name)
}

fn read_log(path: &Path) -> CliResult<SigningLog> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
            Failure::new(
                Exit::Runtime,
                format!("{}: corrupt signing log: {e}", display(path)),
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(SigningLog::default()),
        Err(e) => Err(Failure::new(
            Exit::Runtime,
            format!("{}: {e}", display(path)),
        )),
    }
}

/// A serial already taken for a cluster: by this key's signing log, or by the daemons of
/// this node (netguard's rollback state), which also count what `tyd init` and joind signed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Taken {
    pub serial: u64,
    /// BLAKE3 (hex) of the bytes signed or accepted at that serial.
    pub digest: String,
    /// Where it was seen, for the refusal.
    pub source: String,
}

/// The highest serial taken for `cluster` among `seen`.
pub fn highest_taken(seen: impl IntoIterator<Item = Taken>) -> Option<Taken> {
    seen.into_iter().max_by_key(|t| t.serial)
}

/// What signing a file at `serial` with `digest` must do, given the highest serial taken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SerialCheck {
    /// The serial is new, or these are the very bytes taken at it: sign as is.
    Sign,
    /// The serial is taken by other content: daemons would refuse it (replay or rollback).
    /// Signing needs this serial instead (with --bump), if one is left.
    Taken { next: Option<u64>, by: Taken },
}

pub fn check_serial(serial: u64, digest: &str, highest: Option<Taken>) -> SerialCheck {
    match highest {
        Some(t)
            if serial < t.serial
                || (serial == t.serial && !digest.eq_ignore_ascii_case(&t.digest)) =>
        {
            SerialCheck::Taken {
                // None: u64::MAX is taken and no serial is left.
                next: t.serial.checked_add(1),
                by: t,
            }
        }
        _ => SerialCheck::Sign,
    }
}

/// What this node's daemons accepted (netguard's rollback record at `state`), for
/// `cluster`. An absent file is nothing accepted; a file that cannot be read or parsed is
/// refused (a signing that daemons would refuse must not pass for lack of a look), with
/// the way out. A record of another cluster is no serial of this one: said, not counted.
fn accepted_record(state: &Path, cluster: &str) -> CliResult<Option<policy::AcceptedRecord>> {
    let store = policy::RollbackStore::open(state, 0).map_err(|e| {
        Failure::new(
            Exit::Runtime,
            format!("{e} (this node's daemons' record: run as root, or name another with --state)"),
        )
    })?;
    Ok(store.last().cloned().filter(|r| {
        let ours = r.cluster == cluster;
        if !ours {
            eprintln!(
                "note: {} is a record of cluster {:?}, not {cluster:?}: not compared",
                display(state),
                r.cluster
            );
        }
        ours
    }))
}

pub fn sign_cmd(
    path: &Path,
    key: &Path,
    state: &Path,
    bump: bool,
    yes: bool,
    now: Timestamp,
) -> CliResult {
    let signing_key = keygen::load_operator(key)?;
    let log_file = log_path(key);
    let mut log = read_log(&log_file)?;
    // Read once: the bytes checked are the bytes signed, whatever the file becomes meanwhile.
    let mut bytes = fsutil::read(path)?;
    let mut policy = parse_policy(&display(path), &bytes, now)?;
    let highest = highest_taken_for(&log, &log_file, state, &policy.cluster.name)?;
    let digest = blake3::hash(&bytes).to_hex().to_string();
    if let SerialCheck::Taken { next, by } = check_serial(policy.cluster.serial, &digest, highest) {
        if !bump {
            return Err(Failure::new(
                Exit::Refused,
                format!(
                    "{}: serial {} of cluster {:?} is taken: serial {} was already {} with other content, and every node would refuse this; raise it or pass --bump",
                    display(path),
                    policy.cluster.serial,
                    policy.cluster.name,
                    by.serial,
                    by.source
                ),
            ));
        }
        (bytes, policy) = bump_serial(path, bytes, &policy, next, &by, now)?;
    }
    if !review(path, &bytes, log.0.get(&policy.cluster.name), yes)? {
        return Err(Failure::new(
            Exit::Refused,
            format!("{}: not signed", display(path)),
        ));
    }
    let sig_path = signature_path(path);
    atomic_write(&sig_path, sign(&bytes, &signing_key).as_bytes(), 0o644)?;
    record_signing(&mut log, &log_file, &policy, &bytes)?;
    println!(
        "signed {} (cluster {}, serial {}) -> {}",
        display(path),
        policy.cluster.name,
        policy.cluster.serial,
        display(&sig_path)
    );
    Ok(())
}

/// The highest serial taken for `cluster`: by this key's signing `log` (read from
/// `log_file`), or by this node's daemons (their record at `state`).
fn highest_taken_for(
    log: &SigningLog,
    log_file: &Path,
    state: &Path,
    cluster: &str,
) -> CliResult<Option<Taken>> {
    let logged = log.0.get(cluster).map(|l| Taken {
        serial: l.serial,
        digest: l.digest.clone(),
        source: format!("signed with this key ({})", display(log_file)),
    });
    let accepted = accepted_record(state, cluster)?.map(|r| Taken {
        serial: r.serial,
        digest: r.digest,
        source: format!("accepted by this node's daemons ({})", display(state)),
    });
    Ok(highest_taken(logged.into_iter().chain(accepted)))
}

/// The policy at `path` (its `bytes`, parsed as `policy`) with its serial raised to `next`,
/// the first after the one taken `by` other content; refused when no serial is left.
fn bump_serial(
    path: &Path,
    bytes: Vec<u8>,
    policy: &Policy,
    next: Option<u64>,
    by: &Taken,
    now: Timestamp,
) -> CliResult<(Vec<u8>, Policy)> {
    let next = next.ok_or_else(|| {
        Failure::new(
            Exit::Refused,
            format!(
                "{}: serial {} is taken and is the largest there is: no serial is left for cluster {:?}",
                display(path),
                by.serial,
                policy.cluster.name
            ),
        )
    })?;
    let mut edit = PolicyEdit::from_bytes(path, bytes)?;
    edit.set_serial(next)?;
    let (text, bumped) = edit.write_text(now)?;
    println!(
        "serial bumped to {} (serial {} was {})",
        bumped.cluster.serial, by.serial, by.source
    );
    Ok((text.into_bytes(), bumped))
}

/// Records in the signing log of the key at `key` that `bytes`, the text of `policy`, were
/// signed with it (by `tyd init`).
pub fn log_signed(key: &Path, policy: &Policy, bytes: &[u8]) -> CliResult {
    let log_file = log_path(key);
    let mut log = read_log(&log_file)?;
    record_signing(&mut log, &log_file, policy, bytes)
}

/// Records in this key's signing log (`log`, written back to `log_file`) that `bytes`, the
/// text of `policy`, were signed.
fn record_signing(
    log: &mut SigningLog,
    log_file: &Path,
    policy: &Policy,
    bytes: &[u8],
) -> CliResult {
    log.0.insert(
        policy.cluster.name.clone(),
        SignedEntry {
            serial: policy.cluster.serial,
            digest: blake3::hash(bytes).to_hex().to_string(),
            text: Some(String::from_utf8_lossy(bytes).into_owned()),
        },
    );
    let mut log_bytes =
        serde_json::to_vec_pretty(log).map_err(|e| Failure::new(Exit::Runtime, e.to_string()))?;
    log_bytes.push(b'\n');
    atomic_write(log_file, &log_bytes, 0o600)?;
    Ok(())
}
