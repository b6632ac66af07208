//! `tyd token create | list | revoke`: join tokens on a master (the node holding the
//! operator key). The token is shown once, at creation; the store keeps only what checks it.

use std::path::{Path, PathBuf};

use clap::Subcommand;
use jiff::{SignedDuration, Timestamp};
use join::token::{Limits, TokenStore};
use policy::Role;

use crate::failure::{CliResult, EXIT_CODES_HELP, Exit, Failure};

#[derive(Debug, Subcommand)]
pub enum TokenCmd {
    /// Create a join token and print it with the command that joins a node with it.
    #[command(after_help = EXIT_CODES_HELP)]
    Create {
        /// How many nodes may join with it.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=10_000))]
        uses: u32,
        /// How long it is valid, e.g. "1h", "30m", "2d".
        #[arg(long, default_value = "1h", value_parser = crate::parse_span)]
        expires: SignedDuration,
        /// What a node joining with it becomes: drone (a RAM root, owes certaintyd where the
        /// policy says), server (a disk root, runs none), or master (trusted with joins).
        #[arg(long, value_delimiter = ',', default_value = "drone", value_parser = crate::node_cmd::parse_role)]
        roles: Vec<Role>,
        /// For RAM drones (network-booted, a new key each boot): a node that joined with it
        /// and comes back at the same address with a new key gets its old entry (id, name,
        /// tunnel addresses) once the cluster has lost it (quarantined or silent), spending
        /// no use.
        #[arg(long)]
        ephemeral: bool,
        #[arg(long, default_value = proto::paths::TOKENS)]
        tokens: PathBuf,
        /// The operator's public key, whose fingerprint the joiner pins.
        #[arg(long, default_value = proto::paths::TRUST)]
        trust: PathBuf,
        /// This member's LAN address, shown in the join command.
        #[arg(long)]
        member: Option<String>,
    },
    /// The tokens on this master: id, uses, expiry, roles, state (never the secret).
    #[command(after_help = EXIT_CODES_HELP)]
    List {
        #[arg(long, default_value = proto::paths::TOKENS)]
        tokens: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Revoke a token by its id: no further join with it.
    #[command(after_help = EXIT_CODES_HELP)]
    Revoke {
        id: String,
        #[arg(long, default_value = proto::paths::TOKENS)]
        tokens: PathBuf,
    },
}

fn load(path: &Path) -> CliResult<TokenStore> {
    TokenStore::load(path).map_err(|e| Failure::new(Exit::Runtime, e.to_string()))
}

/// The store's lock, held from the read to the write (joind writes it too).
pub fn lock(path: &Path) -> CliResult<join::token::StoreLock> {
    TokenStore::lock(path).map_err(|e| Failure::new(Exit::Runtime, e.to_string()))
}

fn save(store: &TokenStore, path: &Path) -> CliResult {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .map_err(|e| Failure::new(Exit::Runtime, format!("{}: {e}", dir.display())))?;
    }
    store
        .save(path)
        .map_err(|e| Failure::new(Exit::Runtime, e.to_string()))
}

fn role_names(roles: &[Role]) -> String {
    roles.iter().map(|r| r.name()).collect::<Vec<_>>().join(",")
}

pub fn run(cmd: TokenCmd, now: Timestamp) -> CliResult {
    match cmd {
        TokenCmd::Create {
            uses,
            expires,
            roles,
            ephemeral,
            tokens,
            trust,
            member,
        } => {
            let limits = Limits {
                uses,
                valid_for: expires.unsigned_abs(),
                roles,
                ephemeral,
            };
            create(&limits, &tokens, &trust, member.as_deref(), now)
        }
        TokenCmd::List { tokens, json } => list(&tokens, json, now),
        TokenCmd::Revoke { id, tokens } => revoke(&id, &tokens),
    }
}

/// `tyd token create`: makes a token with `limits`, prints it and the join command.
fn create(
    limits: &Limits,
    tokens: &Path,
    trust: &Path,
    member: Option<&str>,
    now: Timestamp,
) -> CliResult {
    let fingerprint = crate::keygen::operator_fingerprint(trust)?;
    let _held = lock(tokens)?;
    let mut store = load(tokens)?;
    store.prune(now);
    let token = store.create(limits, now, &mut rand_core::OsRng);
    save(&store, tokens)?;
    let until = store.get(&token.id).map_or(now, |t| t.expires);
    println!("{}", token.reveal().as_str());
    eprintln!(
        "token {}: {} join(s) as {}{} until {until:.0}; join a node with:",
        token.id,
        limits.uses,
        role_names(&limits.roles),
        if limits.ephemeral { " (ephemeral)" } else { "" }
    );
    eprintln!(
        "  tyd join {} --token {} --operator {fingerprint}",
        member.unwrap_or("<member address>"),
        token.reveal().as_str()
    );
    Ok(())
}

/// `tyd token list`: the tokens as a table, or as JSON.
fn list(tokens: &Path, json: bool, now: Timestamp) -> CliResult {
    let store = load(tokens)?;
    if json {
        let list: Vec<serde_json::Value> = store
            .tokens
            .iter()
            .map(|t| {
                serde_json::json!({
                    "id": t.id.as_str(), "created": t.created.to_string(),
                    "expires": t.expires.to_string(), "uses": t.uses, "used": t.used,
                    "roles": role_names(&t.roles), "state": state(t, now),
                    "ephemeral": t.ephemeral,
                })
            })
            .collect();
        crate::policy_cmd::print_json(&serde_json::json!({ "tokens": list }));
        return Ok(());
    }
    println!(
        "{:<8} {:<10} {:<8} {:<26} state",
        "id", "used", "roles", "expires"
    );
    for t in &store.tokens {
        println!(
            "{:<8} {:<10} {:<8} {:<26} {}",
            t.id.as_str(),
            format!("{}/{}", t.used, t.uses),
            if t.ephemeral {
                format!("{}*", role_names(&t.roles))
            } else {
                role_names(&t.roles)
            },
            format!("{:.0}", t.expires),
            state(t, now)
        );
    }
    if store.tokens.iter().any(|t| t.ephemeral) {
        println!("* ephemeral: a drone back at its address with a new key gets its lost entry");
    }
    Ok(())
}

/// `tyd token revoke`: no further join with token `id`.
fn revoke(id: &str, tokens: &Path) -> CliResult {
    let _held = lock(tokens)?;
    let mut store = load(tokens)?;
    store
        .revoke(id)
        .map_err(|e| Failure::new(Exit::Runtime, e.to_string()))?;
    save(&store, tokens)?;
    eprintln!("token {id} revoked");
    Ok(())
}

fn state(t: &join::token::TokenRecord, now: Timestamp) -> &'static str {
    match t.admits(now) {
        Ok(()) => "valid",
        Err(join::token::Refusal::Revoked) => "revoked",
        Err(join::token::Refusal::Expired) => "expired",
        Err(join::token::Refusal::UsedUp) => "used up",
        Err(join::token::Refusal::Unknown) => "unknown",
    }
}
