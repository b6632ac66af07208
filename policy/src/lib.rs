//! The signed cluster policy: one TOML file per cluster that says which nodes belong, with
//! which WireGuard keys and tunnel addresses, which services only they may exchange, and how
//! certaintyd guards each node's root filesystem.
//!
//! Pure: no root, no network. A policy is verified only by [`verify_policy`] (the one maker
//! of a [`Verified<Policy>`]), and a daemon holds one only as an [`Accepted`], which only its
//! [`RollbackStore`] makes, through [`PolicyInForce`]. The `watch` feature adds inotify
//! change events for the daemons.

pub mod blocks;
pub mod diff;
pub mod edit;
pub mod exit;
pub mod fsutil;
#[doc(hidden)]
pub mod fuzzing;
pub mod in_force;
pub mod keys;
pub mod load;
pub mod membership;
pub mod model;
pub mod mosix_map;
pub mod nodemap;
pub mod parse;
pub mod ports;
pub mod signature;
pub mod source;
pub mod store;
pub mod template;
pub mod validate;
#[cfg(feature = "watch")]
pub mod watch;

pub use blocks::NodeBlocks;
pub use diff::PolicyDiff;
pub use in_force::{
    Checked, Combined, Effective, MembershipEvent, Outcome, PolicyInForce, PolicyPaths, Refusal,
};
pub use keys::{OperatorPublicKey, WgPublicKey};
pub use load::{
    LoadError, SignedFiles, load_signed, load_signed_reusing, load_verified, write_signed_pair,
};
pub use model::{
    Action, Attestation, AttestationKey, Certainty, CertaintyRequired, Cluster, Distribution,
    Firewall, Hardening, Lockdown, Node, NodeId, PcrValue, Policy, Posture, RECOMMENDED_SYSCTLS,
    Role, parse_pcr,
};
pub use mosix_map::{MapError, MosixMap};
pub use nodemap::{Change, NodeChange, NodeMap, NodeMapDiff};
pub use parse::{Diagnostic, Invalid, parse_policy, parse_policy_reusing};
pub use ports::{PortRange, PortSet};
pub use signature::{
    TrustedKeys, Verified, VerifyError, sign, verify_policy, verify_policy_reusing, verify_signed,
};
pub use store::{Acceptance, Accepted, AcceptedRecord, RollbackStore, StoreError};

/// The name of the detached signature file that goes with a policy file.
pub fn signature_path(policy: &std::path::Path) -> std::path::PathBuf {
    let mut name = policy.as_os_str().to_owned();
    name.push(".sig");
    std::path::PathBuf::from(name)
}

/// Where clusterd on a master puts a signed policy of the serial in force with other
/// content, fetched from a peer (two masters signed one serial at once), for joind to settle
/// (`join::fork`): `<policy>.fork` and its `.sig`. Never read as the policy in force.
pub fn fork_path(policy: &std::path::Path) -> std::path::PathBuf {
    let mut name = policy.as_os_str().to_owned();
    name.push(".fork");
    std::path::PathBuf::from(name)
}
