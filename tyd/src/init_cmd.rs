//! `tyd init`: the first node of a cluster (its keys, the first policy, the first token).

use std::net::{IpAddr, SocketAddr};
use std::path::Path;

use ed25519_dalek::SigningKey;
use jiff::{SignedDuration, Timestamp};
use join::token::{Limits, Token, TokenStore};
use policy::edit::{NewNode, PolicyEdit, default_addresses};
use policy::fsutil::atomic_write;
use policy::keys::KeyKind;
use policy::{NodeId, Policy, Role, WgPublicKey, sign};

use crate::failure::{CliResult, Exit, Failure};
use crate::join_cmd::{io, node_key, start_daemons};
use crate::keygen;
use crate::services;

/// What `tyd init` needs.
#[derive(Debug)]
pub struct InitArgs<'a> {
    pub dir: &'a Path,
    pub cluster: &'a str,
    pub node_name: &'a str,
    pub endpoint: IpAddr,
    pub tokens: &'a Path,
    pub uses: u32,
    pub expires: SignedDuration,
    pub no_start: bool,
    /// Where the new operator key goes (default DIR/operator.key, to be moved off).
    pub operator_key_out: Option<&'a Path>,
    /// An operator key made before, on another machine: the policy is signed with it, and it
    /// is not written here.
    pub operator_key: Option<&'a Path>,
    /// The master keeps the operator key and signs the policy itself (before issue 28).
    pub no_admission_key: bool,
}

pub fn init(a: &InitArgs<'_>, now: Timestamp) -> CliResult {
    let policy_path = a.dir.join("cluster.toml");
    if policy_path.exists() {
        return Err(Failure::new(
            Exit::Refused,
            format!(
                "{}: already exists: this node is initialised (tyd join adds further nodes)",
                policy_path.display()
            ),
        ));
    }
    std::fs::create_dir_all(a.dir).map_err(|e| io(a.dir, e))?;
    let (operator, public, operator_path) = operator_keys(a)?;
    let me = node_key(&a.dir.join("node.key"))?;
    let admission = if a.no_admission_key {
        None
    } else {
        Some(keygen::admission(&a.dir.join("admission.key"))?)
    };

    let expires = now
        .checked_add(SignedDuration::from_hours(365 * 24))
        .map_err(|e| Failure::new(Exit::Usage, e.to_string()))?;
    let text = policy::template::init_template(a.cluster, expires);
    policy::parse_policy("template", text.as_bytes(), now)?;
    let root = services::root();
    let (policy, bytes) = write_first_policy(
        a,
        &policy_path,
        &text,
        &operator,
        me,
        admission.as_ref(),
        root,
        now,
    )?;
    // In the key's signing log, as `tyd policy sign` records its own: a signing of another
    // serial 1 before any daemon ran is refused (or bumped), like one after.
    if let Some(key_path) = a.operator_key.or(operator_path.as_deref()) {
        crate::sign_cmd::log_signed(key_path, &policy, &bytes)?;
    }

    // The first token's nodes are of this machine's kind: a package on a disk root joins
    // further disk roots (servers, no certaintyd); drones get their tokens with
    // `tyd token create --roles drone`.
    let token_role = first_token_role(root);
    let _held = crate::token_cmd::lock(a.tokens)?;
    let token = first_token(a, token_role, now)?;
    println!(
        "cluster {:?} initialised: this node is node 1 ({}, master), serial {}",
        policy.cluster.name, a.node_name, policy.cluster.serial
    );
    match (&admission, &operator_path) {
        (Some(_), Some(path)) => println!(
            "the operator key is at {}: move it off this machine now, with its signing log {} (tyd policy sign needs both, this node neither; root here must not hold the key). This master admits with its admission key {} (drones and servers, ids 100-199), which signs only the nodes it admits",
            path.display(),
            crate::sign_cmd::log_path(path).display(),
            a.dir.join("admission.key").display()
        ),
        (Some(_), None) => println!(
            "this master admits with its admission key {} (drones and servers, ids 100-199); the operator key stays where it was",
            a.dir.join("admission.key").display()
        ),
        (None, _) => println!(
            "this master keeps the operator key and signs the policy itself (--no-admission-key): root on it is the operator"
        ),
    }
    if root == services::Root::Disk {
        println!(
            "certaintyd: / is not a RAM filesystem here, so this node runs none and the policy requires it of drones only (require_certainty = [\"drone\"])"
        );
    }
    // The join command first: the token is spent on nothing if the daemons fail to start,
    // and the operator keeps what they need to go on once the cause is mended.
    println!(
        "join further nodes as {} ({} use(s) of this token, valid {}; drones: tyd token create --roles drone):",
        token_role.name(),
        a.uses,
        policy::model::duration::format(&a.expires.unsigned_abs())
    );
    println!(
        "  tyd join {} --token {} --operator {}",
        a.endpoint,
        token.reveal().as_str(),
        public.fingerprint()
    );
    start_daemons(
        services::NodeKind::Master,
        root,
        a.no_start,
        a.dir,
        &a.dir.join("node.key"),
        Some(a.tokens),
    )
}

/// The operator key: the one given (`--operator-key`, left where it is), or the one at
/// `--operator-key-out` or DIR/operator.key, made if there is none yet; with its public
/// half, written to DIR as the trust file (`operator.pub`), and where the key was written
/// (None: given).
fn operator_keys(
    a: &InitArgs<'_>,
) -> CliResult<(
    SigningKey,
    policy::OperatorPublicKey,
    Option<std::path::PathBuf>,
)> {
    let (operator, written) = match a.operator_key {
        Some(given) => (keygen::load_operator(given)?, None),
        None => {
            let path = a
                .operator_key_out
                .map_or_else(|| a.dir.join("operator.key"), Path::to_path_buf);
            if !path.exists() {
                keygen::operator(&path)?;
            }
            (keygen::load_operator(&path)?, Some(path))
        }
    };
    let public = policy::OperatorPublicKey::from(&operator);
    let trust_text = KeyKind::OperatorPublic.file_text(public.verifying_key().as_bytes());
    atomic_write(&a.dir.join("operator.pub"), trust_text.as_bytes(), 0o644)?;
    Ok((operator, public, written))
}

/// Makes the first policy from the template `text`, with this node (key `me`) as node 1, a
/// master (with `admission`'s public half as its admission key, if given), signs it with
/// `operator` and puts the pair at `policy_path`: the policy and the bytes signed.
#[allow(clippy::too_many_arguments)]
fn write_first_policy(
    a: &InitArgs<'_>,
    policy_path: &Path,
    text: &str,
    operator: &SigningKey,
    me: WgPublicKey,
    admission: Option<&SigningKey>,
    root: services::Root,
    now: Timestamp,
) -> CliResult<(Policy, Vec<u8>)> {
    // Written under a scratch name, edited, signed, then moved into place: a failure leaves
    // no half-made policy where the daemons look.
    let scratch = a.dir.join(".cluster.toml.init");
    atomic_write(&scratch, text.as_bytes(), 0o644)?;
    let mut edit = PolicyEdit::open(&scratch)?;
    if root == services::Root::Disk {
        // certaintyd guards RAM roots only: this master (and any on a disk) runs none, and
        // only drones must report their integrity.
        edit.require_certainty_of(&[Role::Drone]);
    }
    let current = edit.current(now)?;
    let id = NodeId::MIN;
    edit.add_node(&NewNode {
        id,
        name: a.node_name.to_string(),
        public_key: me,
        endpoint: Some(SocketAddr::new(a.endpoint, current.cluster.listen_port)),
        addresses: default_addresses(&current, id),
        roles: vec![Role::Master],
        expires: None,
        attestation_key: None,
    })?;
    if let Some(key) = admission {
        let limits = policy::template::first_admission(
            &current,
            id,
            policy::OperatorPublicKey::from(key),
            vec![Role::Drone, Role::Server],
            current.cluster.expires,
        )
        .ok_or_else(|| {
            Failure::new(
                Exit::Refused,
                "the tunnel networks are too small for an admission key's block",
            )
        })?;
        edit.add_admission(&limits)?;
    }
    let policy = edit.write(now)?;
    let bytes = policy::fsutil::read(&scratch)?;
    policy::write_signed_pair(policy_path, &bytes, sign(&bytes, operator).as_bytes())?;
    std::fs::remove_file(&scratch).map_err(|e| io(&scratch, e))?;
    Ok((policy, bytes))
}

/// Makes `tyd init`'s first token, for nodes of `role`, and saves the token store; the
/// caller holds the store's lock.
fn first_token(a: &InitArgs<'_>, role: Role, now: Timestamp) -> CliResult<Token> {
    let mut store =
        TokenStore::load(a.tokens).map_err(|e| Failure::new(Exit::Runtime, e.to_string()))?;
    let token = store.create(
        &Limits {
            uses: a.uses,
            valid_for: a.expires.unsigned_abs(),
            roles: vec![role],
            ephemeral: false,
        },
        now,
        &mut rand_core::OsRng,
    );
    if let Some(dir) = a.tokens.parent() {
        std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
    }
    store
        .save(a.tokens)
        .map_err(|e| Failure::new(Exit::Runtime, e.to_string()))?;
    Ok(token)
}

/// The role of the nodes `tyd init`'s first token admits: nodes like this one, as joind
/// gives a join the operator approves.
pub fn first_token_role(root: services::Root) -> Role {
    join::service::approval_role(root == services::Root::Ram)
}
