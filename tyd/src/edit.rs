//! The policy edits (`policy::edit`) at the CLI's edge: how a command names a node, and the
//! edit errors as exit codes.

use policy::{NodeId, Policy};

pub use policy::edit::{NewNode, PolicyEdit, default_addresses};

use crate::failure::{CliResult, Exit, Failure};

/// How a command names a node: by id or by name.
/// The node `which` names, by id or by name. When it is both one node's id and another's
/// name, nothing is guessed: the operator says which with `id:N` or `name:N`.
pub fn find_node(policy: &Policy, which: &str) -> CliResult<NodeId> {
    let id_of = |text: &str| {
        text.parse::<u16>()
            .ok()
            .and_then(NodeId::new)
            .filter(|id| policy.node_by_id(*id).is_some())
    };
    let name_of = |text: &str| policy.nodes.iter().find(|n| n.name == text).map(|n| n.id);
    let found = if let Some(id) = which.strip_prefix("id:") {
        id_of(id)
    } else if let Some(name) = which.strip_prefix("name:") {
        name_of(name)
    } else {
        match (id_of(which), name_of(which)) {
            (Some(a), Some(b)) if a != b => {
                return Err(Failure::new(
                    Exit::Usage,
                    format!(
                        "{} is node {a}'s id and node {b}'s name: say id:{which} or name:{which}",
                        policy::parse::shown(which)
                    ),
                ));
            }
            (a, b) => a.or(b),
        }
    };
    found.ok_or_else(|| {
        Failure::new(
            Exit::Runtime,
            if policy.admissions.is_empty() {
                format!("no node {} in the policy", policy::parse::shown(which))
            } else {
                format!(
                    "no node {} in the policy (a node a master admitted is removed with tyd admission revoke --master ID --public-key KEY)",
                    policy::parse::shown(which)
                )
            },
        )
    })
}
