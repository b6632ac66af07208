//! `tyd policy ...` and `tyd showmap`: create, check, sign, verify and show policies.

use std::path::{Path, PathBuf};

use jiff::{SignedDuration, Timestamp};
use policy::fsutil::{self, atomic_write};
use policy::{MosixMap, Policy, Verified, parse_policy};
use serde::Serialize;

use crate::edit::{NewNode, PolicyEdit, default_addresses};
use crate::failure::{CliResult, Exit, Failure};
use crate::keygen;

pub use crate::sign_cmd::sign_cmd;

pub(crate) fn display(path: &Path) -> String {
    path.display().to_string()
}

/// Reads and validates a policy without looking at any signature.
pub fn load_unsigned(path: &Path, now: Timestamp) -> CliResult<Policy> {
    let bytes = fsutil::read(path)?;
    Ok(parse_policy(&display(path), &bytes, now)?)
}

/// Reads a policy and its `.sig` and verifies both against `trust`.
pub fn load_verified(path: &Path, trust: &Path, now: Timestamp) -> CliResult<Verified<Policy>> {
    Ok(policy::load_verified(path, trust, now)?)
}

pub struct InitArgs<'a> {
    pub out: &'a Path,
    pub name: &'a str,
    pub valid_for: SignedDuration,
    pub from_map: Option<&'a Path>,
    pub keys_dir: Option<&'a Path>,
    pub force: bool,
}

pub fn init(args: &InitArgs<'_>, now: Timestamp) -> CliResult {
    if args.out.exists() && !args.force {
        return Err(Failure::new(
            Exit::Refused,
            format!(
                "{}: already exists, refusing to overwrite",
                display(args.out)
            ),
        ));
    }
    let expires = now
        .checked_add(args.valid_for)
        .map_err(|e| Failure::new(Exit::Usage, format!("--valid-for: {e}")))?;
    let text = policy::template::init_template(args.name, expires);
    // Validate before writing anything, so a bad --name leaves no file behind.
    parse_policy(&display(args.out), text.as_bytes(), now)?;
    let Some(map_path) = args.from_map else {
        atomic_write(args.out, text.as_bytes(), 0o644)?;
        println!("wrote {}", display(args.out));
        return Ok(());
    };
    let keys_dir = args.keys_dir.ok_or_else(|| {
        Failure::new(
            Exit::Usage,
            "--from-map needs --keys-dir for the node keys it generates",
        )
    })?;
    // All or nothing: the import works on a scratch copy and its key files are removed again
    // if any step fails, so a retry starts from where the operator started.
    let scratch = args.out.with_file_name(format!(
        ".{}.init.{}",
        args.out
            .file_name()
            .map_or_else(|| "policy".into(), |n| n.to_string_lossy()),
        std::process::id()
    ));
    atomic_write(&scratch, text.as_bytes(), 0o644)?;
    let mut created = Vec::new();
    let result = import_map(&scratch, map_path, keys_dir, now, &mut created).and_then(|report| {
        std::fs::rename(&scratch, args.out)
            .map_err(|e| Failure::new(Exit::Runtime, format!("{}: {e}", display(args.out))))?;
        Ok(report)
    });
    match result {
        Ok(report) => {
            println!("wrote {}{report}", display(args.out));
            Ok(())
        }
        Err(f) => {
            let _ = std::fs::remove_file(&scratch);
            for p in created.iter().rev() {
                let _ = if p.is_dir() {
                    std::fs::remove_dir(p)
                } else {
                    std::fs::remove_file(p)
                };
            }
            Err(f)
        }
    }
}

/// Adds one node per map entry: the map's address becomes the LAN endpoint, tunnel addresses
/// come from the node id, and a fresh WireGuard key pair is written for each node (each file
/// it creates is pushed to `created`, for the caller to remove on failure). Returns the rest
/// of the report line.
fn import_map(
    out: &Path,
    map_path: &Path,
    keys_dir: &Path,
    now: Timestamp,
    created: &mut Vec<PathBuf>,
) -> CliResult<String> {
    let text = String::from_utf8_lossy(&fsutil::read(map_path)?).into_owned();
    let map = MosixMap::parse(&display(map_path), &text)
        .map_err(|e| Failure::new(Exit::InvalidPolicy, e.to_string()))?;
    if !keys_dir.exists() {
        std::fs::create_dir_all(keys_dir)
            .map_err(|e| Failure::new(Exit::Runtime, format!("{}: {e}", display(keys_dir))))?;
        created.push(keys_dir.to_path_buf());
    }
    let mut edit = PolicyEdit::open(out)?;
    let base = edit.current(now)?;
    for (&id, &lan) in &map.nodes {
        let key_path = keys_dir.join(format!("node{id}.key"));
        let public_key = keygen::node(&key_path)?;
        created.push(key_path.clone());
        created.push(keygen::pub_path(&key_path));
        edit.add_node(&NewNode {
            id,
            name: format!("node{id}"),
            public_key,
            endpoint: Some((lan, base.cluster.listen_port).into()),
            addresses: default_addresses(&base, id),
            roles: vec![policy::Role::Drone],
            expires: None,
            attestation_key: None,
        })?;
    }
    let policy = edit.write(now)?;
    let mut report = format!(
        " with {} nodes from {}; node keys in {}",
        policy.nodes.len(),
        display(map_path),
        display(keys_dir)
    );
    if !map.aliases.is_empty() {
        report
            .push_str("\nnote: ALIAS lines were not imported (a node has one WireGuard endpoint)");
    }
    Ok(report)
}

#[derive(Serialize)]
struct JsonDiagnostic<'a> {
    file: &'a str,
    line: usize,
    column: usize,
    field: &'a str,
    message: &'a str,
}

pub fn check(path: &Path, json: bool, now: Timestamp) -> CliResult {
    let bytes = fsutil::read(path)?;
    match parse_policy(&display(path), &bytes, now) {
        Ok(p) => {
            if json {
                print_json(
                    &serde_json::json!({"valid": true, "errors": [], "serial": p.cluster.serial}),
                );
            } else {
                println!(
                    "{}: valid (cluster {}, serial {}, {} nodes, not signature-checked)",
                    display(path),
                    p.cluster.name,
                    p.cluster.serial,
                    p.nodes.len()
                );
            }
            Ok(())
        }
        Err(invalid) if json => {
            let errors: Vec<JsonDiagnostic<'_>> = invalid
                .0
                .iter()
                .map(|d| JsonDiagnostic {
                    file: &d.file,
                    line: d.line,
                    column: d.column,
                    field: &d.field,
                    message: &d.message,
                })
                .collect();
            print_json(&serde_json::json!({"valid": false, "errors": errors}));
            Err(Failure::new(
                Exit::InvalidPolicy,
                format!("{} is invalid", display(path)),
            ))
        }
        Err(invalid) => Err(invalid.into()),
    }
}

/// Parses a policy for comparison only: its content, whatever its expiry (an old signed
/// policy may have expired since).
pub(crate) fn parse_for_diff(name: &str, bytes: &[u8]) -> CliResult<Policy> {
    Ok(parse_policy(name, bytes, Timestamp::UNIX_EPOCH)?)
}

pub fn diff_cmd(old: &Path, new: &Path) -> CliResult {
    let a = parse_for_diff(&display(old), &fsutil::read(old)?)?;
    let b = parse_for_diff(&display(new), &fsutil::read(new)?)?;
    print!("{}", policy::PolicyDiff::new(&a, &b));
    Ok(())
}

/// Verifies `path` and puts it (signature first, each atomically) in place at `to`, unless
/// the policy there is as new or newer: a push never rolls a member back.
pub fn push(path: &Path, trust: &Path, to: &Path, now: Timestamp) -> CliResult {
    // A directory (or a path ending in '/') is a typo for the file in it: refused before
    // anything is written, so no stray signature is left behind.
    if to.is_dir() || to.as_os_str().to_string_lossy().ends_with('/') {
        return Err(Failure::new(
            Exit::Usage,
            format!(
                "--to {}: is a directory; name the policy file, e.g. {}",
                display(to),
                display(&to.join("cluster.toml"))
            ),
        ));
    }
    let files = policy::load_signed(path, trust, now)?;
    let v = &files.verified;
    if let Ok(current) = policy::load_verified(to, trust, now) {
        if current.cluster.name != v.cluster.name {
            return Err(Failure::new(
                Exit::Refused,
                format!(
                    "{}: is for cluster {}, {} holds cluster {}",
                    display(path),
                    v.cluster.name,
                    display(to),
                    current.cluster.name
                ),
            ));
        }
        if current.cluster.serial >= v.cluster.serial {
            return Err(Failure::new(
                Exit::Refused,
                format!(
                    "{}: serial {} is not newer than serial {} in force at {}",
                    display(path),
                    v.cluster.serial,
                    current.cluster.serial,
                    display(to)
                ),
            ));
        }
    }
    policy::write_signed_pair(to, &files.policy, &files.signature)?;
    println!(
        "{} in place at {} (cluster {}, serial {}); clusterd offers it to the other members",
        display(path),
        display(to),
        v.cluster.name,
        v.cluster.serial
    );
    Ok(())
}

pub fn verify(path: &Path, trust: &Path, json: bool, now: Timestamp) -> CliResult {
    let v = load_verified(path, trust, now)?;
    if json {
        print_json(&serde_json::json!({
            "verified": true,
            "cluster": v.cluster.name,
            "serial": v.cluster.serial,
            "expires": v.cluster.expires.to_string(),
            "nodes": v.nodes.len(),
            "signer": v.signer().key_id(),
            "digest": v.digest_hex(),
        }));
    } else {
        println!(
            "{}: verified (cluster {}, serial {}, {} nodes, expires {}, signed by key {})",
            display(path),
            v.cluster.name,
            v.cluster.serial,
            v.nodes.len(),
            v.cluster.expires,
            v.signer().key_id()
        );
    }
    Ok(())
}

/// Loads for display: verified when a trust file is given, otherwise checked only.
fn load_for_show(path: &Path, trust: Option<&Path>, now: Timestamp) -> CliResult<(Policy, bool)> {
    match trust {
        Some(t) => Ok(((*load_verified(path, t, now)?).clone(), true)),
        None => Ok((load_unsigned(path, now)?, false)),
    }
}

pub fn show(path: &Path, trust: Option<&Path>, json: bool, now: Timestamp) -> CliResult {
    let (p, verified) = load_for_show(path, trust, now)?;
    if json {
        print_json(&serde_json::json!({"verified": verified, "policy": p}));
        return Ok(());
    }
    let c = &p.cluster;
    println!(
        "cluster   {} (serial {}, expires {})",
        c.name, c.serial, c.expires
    );
    println!(
        "signature {}",
        if verified {
            "verified"
        } else {
            "not checked (pass --trust)"
        }
    );
    let nets: Vec<String> = c
        .tunnel_ipv4
        .map(|n| n.to_string())
        .into_iter()
        .chain(c.tunnel_ipv6.map(|n| n.to_string()))
        .collect();
    println!(
        "tunnel    {} port {} nets {}",
        c.interface,
        c.listen_port,
        nets.join(" ")
    );
    for (name, ports) in &p.services {
        println!("service   {name}: {}", ports_text(ports));
    }
    for (name, ports) in &p.firewall.allow {
        println!("allow     {name}: {}", ports_text(ports));
    }
    println!(
        "certainty root {} every {} after {}, action {}",
        p.certainty.root.display(),
        policy::model::duration::format(&p.certainty.interval),
        policy::model::duration::format(&p.certainty.grace),
        p.certainty.action
    );
    println!(
        "{:>5}  {:<16} {:<22} {:<28} key",
        "id", "name", "endpoint", "addresses"
    );
    for n in &p.nodes {
        let addrs: Vec<String> = n.addresses.iter().map(ToString::to_string).collect();
        let endpoint = n
            .endpoint
            .map_or_else(|| "-".to_string(), |e| e.to_string());
        println!(
            "{:>5}  {:<16} {:<22} {:<28} {}",
            n.id,
            n.name,
            endpoint,
            addrs.join(","),
            n.public_key
        );
    }
    Ok(())
}

fn ports_text(ports: &policy::PortSet) -> String {
    let list = |v: &[policy::PortRange]| {
        v.iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(",")
    };
    let mut parts = Vec::new();
    if !ports.tcp.is_empty() {
        parts.push(format!("tcp {}", list(&ports.tcp)));
    }
    if !ports.udp.is_empty() {
        parts.push(format!("udp {}", list(&ports.udp)));
    }
    parts.join("; ")
}

/// Prints the openMosix map. openMosix maps are IPv4: a node with no IPv4 tunnel address
/// cannot be in it, and a map without it is refused unless `partial` (then a warning names
/// the nodes left out), so `tyd showmap > /etc/openmosix.map` never silently drops nodes.
pub fn showmap(path: &Path, trust: Option<&Path>, partial: bool, now: Timestamp) -> CliResult {
    // Verified, the map has the nodes of the masters' memberships beside the policy too (each
    // checked against its key); unverified, the policy's own.
    let p = match trust {
        Some(t) => {
            let verified = load_verified(path, t, now)?;
            let (map, refused) = policy::Combined::beside(path, &verified, now);
            for (master, why) in refused {
                eprintln!("tyd: warning: the membership of master {master} is refused: {why}");
            }
            (*map).clone()
        }
        None => load_unsigned(path, now)?,
    };
    let map = MosixMap::from_policy(&p);
    let left_out: Vec<String> = p
        .nodes
        .iter()
        .filter(|n| !map.nodes.contains_key(&n.id))
        .map(|n| format!("{} ({})", n.id, n.name))
        .collect();
    if !left_out.is_empty() {
        let shown: Vec<&str> = left_out.iter().take(10).map(String::as_str).collect();
        let more = left_out.len().saturating_sub(shown.len());
        let what = format!(
            "{} node(s) have no IPv4 tunnel address and cannot be in an openMosix map: {}{}",
            left_out.len(),
            shown.join(", "),
            if more > 0 {
                format!(" and {more} more")
            } else {
                String::new()
            }
        );
        if !partial {
            return Err(Failure::new(
                Exit::Refused,
                format!(
                    "{what}; give them IPv4 tunnel addresses (a larger tunnel_ipv4), or --partial"
                ),
            ));
        }
        eprintln!("tyd: warning: {what}; left out");
    }
    print!("{}", map.render());
    Ok(())
}

pub fn print_json(v: &serde_json::Value) {
    match serde_json::to_string_pretty(v) {
        Ok(s) => println!("{s}"),
        Err(e) => eprintln!("tyd: cannot render JSON: {e}"),
    }
}
