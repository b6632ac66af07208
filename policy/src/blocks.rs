//! Parsing a policy by its `[[node]]` blocks, reusing the blocks of the last policy verified.
//!
//! A change to a 10,000-node policy touches one block of 10,000; parsing the whole 1.7 MB
//! again costs 20-30 ms. A daemon keeps the blocks of the last policy that passed
//! verification (signature, parse, validation), by their exact text (but for the blank lines
//! after each: [`significant`]), and parses only the blocks it has not seen. The signature
//! still covers every byte, and is checked first.
//!
//! Why this gives the same [`Policy`] as parsing the whole text: the text is cut just before
//! each line that starts with `[[node]]`. The first piece (the preamble) and every other piece
//! must each be a whole, valid TOML document on its own, or the split is refused. A valid
//! document leaves no string, array or inline table open, so the parser of the whole text is
//! at the start of a top-level line at every cut, and reads `[[node]]` there as a new element
//! of the `node` array. A node piece must parse to `node` elements and nothing else (any other
//! top-level key or table in it is refused), and the preamble must not mention `node` at all.
//! So every node piece adds its own elements, in order, and nothing else; what is in one piece
//! cannot reach into another. Whenever the split is refused, the caller parses the whole text,
//! which also gives the operator the placed error. Spaces, tabs and newlines at the end of a
//! piece are whitespace and empty lines to TOML, in the piece alone as in the whole text, so
//! a piece that differs from a kept block only there parses as that block did.
//! `tests::split_parse_equals_whole_parse` and the fuzz target check the equality on hostile
//! inputs.

use std::collections::HashMap;
use std::sync::Arc;

use serde::Deserialize;

use crate::model::{Node, Policy};
use crate::validate::NodeCheckContext;

/// What starts each node block.
const HEADER: &str = "[[node]]";

/// The node blocks of the last policy verified, found by their text (but for the blank lines
/// after each).
#[derive(Debug, Default)]
pub struct NodeBlocks {
    kept: ParsedBlocks,
}

/// The blocks of a split parse, waiting for validation: they replace the kept ones only if
/// the policy is valid, so a refused policy does not evict the one in force.
#[derive(Debug, Default)]
pub struct ParsedBlocks {
    /// The policy's text, so a block's text can be compared byte for byte.
    text: String,
    blocks: Vec<Block>,
    /// What the checks of one node read of the rest of the policy.
    context: NodeCheckContext,
    /// For each node, in order: whether it comes from a kept block of a valid policy with the
    /// same [`NodeCheckContext`] (each kept block used once). `None` when that cannot be said.
    known: Option<Vec<bool>>,
    /// Set once the policy passed validation; only then do its blocks vouch for their nodes.
    valid: bool,
}

#[derive(Debug)]
struct Block {
    start: usize,
    end: usize,
    nodes: Arc<[Node]>,
}

impl ParsedBlocks {
    /// Which nodes are unchanged from the last valid policy, with the same context: those
    /// passed every check that looks at one node, and were unique among themselves.
    pub fn known_nodes(&self) -> Option<&[bool]> {
        self.known.as_deref()
    }

    /// Records that the policy these blocks make passed validation.
    pub(crate) fn mark_valid(&mut self) {
        self.valid = true;
    }

    fn block_text(&self, i: usize) -> Option<&str> {
        let b = self.blocks.get(i)?;
        self.text.get(b.start..b.end)
    }
}

/// One `[[node]]` piece on its own: `node` elements, nothing else.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NodePiece {
    node: Vec<Node>,
}

/// Whether the preamble has a `node` key (any form: `node = []`, `[node]`, `[node.x]`).
#[derive(Deserialize)]
struct NodeKey {
    node: Option<serde::de::IgnoredAny>,
}

impl NodeBlocks {
    /// Parses `text` piece by piece, or `None` when it cannot be split soundly or a piece
    /// does not parse (the caller then parses the whole text).
    pub fn parse(&self, text: &str) -> Option<(Policy, ParsedBlocks)> {
        let cuts = cuts(text);
        let (&first, _) = cuts.split_first()?;
        let preamble = &text[..first];
        if toml::from_str::<NodeKey>(preamble).ok()?.node.is_some() {
            return None;
        }
        let mut policy: Policy = toml::from_str(preamble).ok()?;
        let kept = &self.kept;
        // Kept nodes vouch for themselves only from a valid policy, and only if what their
        // checks read is the same (the serial and expiry change with every policy).
        let context = NodeCheckContext::of(&policy);
        let vouched = kept.valid && kept.context == context;
        let mut known = Vec::with_capacity(cuts.len());
        let mut used = vec![false; kept.blocks.len()];
        let mut finder = Finder::new(kept);
        let mut blocks = Vec::with_capacity(cuts.len());
        let ends = cuts.iter().skip(1).copied().chain([text.len()]);
        for (start, end) in cuts.iter().copied().zip(ends) {
            let piece = &text[start..end];
            let (nodes, from_kept) = match finder.find(piece) {
                Some(k) => {
                    // A kept block used twice vouches only once: the second is checked.
                    let first_use = !std::mem::replace(&mut used[k], true);
                    (Arc::clone(&kept.blocks[k].nodes), first_use)
                }
                None => (
                    Arc::from(toml::from_str::<NodePiece>(piece).ok()?.node),
                    false,
                ),
            };
            known.extend(std::iter::repeat_n(vouched && from_kept, nodes.len()));
            policy.nodes.extend(nodes.iter().cloned());
            blocks.push(Block { start, end, nodes });
        }
        let parsed = ParsedBlocks {
            text: text.to_string(),
            blocks,
            context,
            known: vouched.then_some(known),
            valid: false,
        };
        Some((policy, parsed))
    }

    /// Keeps the blocks of a policy, dropping those of the one before. Only blocks marked
    /// valid (by [`crate::parse_policy_reusing`]) vouch for their nodes in the next parse.
    pub fn keep(&mut self, parsed: ParsedBlocks) {
        self.kept = parsed;
    }

    /// How many blocks are kept.
    pub fn len(&self) -> usize {
        self.kept.blocks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.kept.blocks.is_empty()
    }
}

/// How many kept blocks after the last one found are tried before looking further.
const LOOKAHEAD: usize = 4;

/// Finds the kept block with a piece's text (but for the blank lines after it), for the pieces
/// of a new policy in order.
///
/// A new policy is mostly the last one with a few blocks changed, added or removed, so the
/// kept blocks just after the last one found are tried first: compared in order, in memory
/// order, with no hashing. Only after two pieces in a row are not found that way (blocks
/// reordered, or a long run removed) is an index of every kept block by its whole text built,
/// once per parse. The whole text is hashed, not a sample: blocks alike at both ends would
/// otherwise share a bucket. A piece not found is parsed, which is always correct.
struct Finder<'a> {
    kept: &'a ParsedBlocks,
    next: usize,
    misses: usize,
    index: Option<HashMap<&'a str, usize>>,
}

impl<'a> Finder<'a> {
    fn new(kept: &'a ParsedBlocks) -> Self {
        Self {
            kept,
            next: 0,
            misses: 0,
            index: None,
        }
    }

    /// The index of the kept block whose text is `piece`, but for blank lines and spaces
    /// at the end ([`significant`]).
    fn find(&mut self, piece: &str) -> Option<usize> {
        let kept = self.kept;
        let piece = significant(piece);
        let ahead = self.next..kept.blocks.len().min(self.next + LOOKAHEAD);
        let mut found = ahead
            .into_iter()
            .find(|&k| kept.block_text(k).map(significant) == Some(piece));
        if found.is_none() {
            self.misses += 1;
            if self.misses >= 2 || self.index.is_some() {
                let index = self.index.get_or_insert_with(|| {
                    (0..kept.blocks.len())
                        .filter_map(|k| Some((significant(kept.block_text(k)?), k)))
                        .collect()
                });
                found = index.get(piece).copied();
            }
        }
        if let Some(k) = found {
            self.next = k + 1;
            self.misses = 0;
        }
        found
    }
}

/// A piece's text without the spaces, tabs and newlines (LF or CRLF) after its last line.
/// They mean nothing to TOML, so a block is found again when only the blank lines after it
/// changed: `tyd node add` appends a block after a blank line, and the block that was last
/// gains a newline (it was parsed again, and two misses in a row built the whole index:
/// 1.7 ms of a 10,000-node change). A lone CR is not a newline in TOML and is kept.
fn significant(piece: &str) -> &str {
    let mut s = piece;
    while let Some(rest) = s
        .strip_suffix("\r\n")
        .or_else(|| s.strip_suffix(['\n', ' ', '\t']))
    {
        s = rest;
    }
    s
}

/// Where each line that starts with `[[node]]` starts.
fn cuts(text: &str) -> Vec<usize> {
    let mut out: Vec<usize> = memchr::memmem::find_iter(text.as_bytes(), "\n[[node]]")
        .map(|at| at + 1)
        .collect();
    if text.starts_with(HEADER) {
        out.insert(0, 0);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const PREAMBLE: &str = "[cluster]\nname = \"t\"\nserial = 1\nexpires = 2030-01-01T00:00:00Z\ntunnel_ipv4 = \"10.77.0.0/24\"\n";

    fn node(i: u16) -> String {
        let key = crate::WgPublicKey::from_bytes([i as u8; 32]);
        format!(
            "[[node]]\nid = {i}\nname = \"n{i}\"\npublic_key = \"{key}\"\naddresses = [\"10.77.0.{i}\"]\n"
        )
    }

    fn whole(text: &str) -> Option<Policy> {
        toml::from_str(text).ok()
    }

    /// An instant the test policies are valid at, and the blocks of `valid`, kept as a
    /// daemon keeps them.
    fn kept_from(valid: &str) -> (jiff::Timestamp, NodeBlocks) {
        let now = "2026-01-01T00:00:00Z".parse().expect("an instant");
        let mut blocks = NodeBlocks::default();
        crate::parse_policy_reusing("p", valid.as_bytes(), now, &mut blocks).expect("valid");
        (now, blocks)
    }

    #[test]
    fn a_policy_split_at_its_node_headers_parses_as_the_whole() {
        let text = format!("{PREAMBLE}\n{}\n{}\n{}", node(1), node(2), node(3));
        let blocks = NodeBlocks::default();
        let (policy, _) = blocks.parse(&text).expect("splits");
        assert_eq!(Some(&policy), whole(&text).as_ref());
        assert_eq!(policy.nodes.len(), 3);
    }

    #[test]
    fn kept_blocks_are_reused_and_only_the_last_policys_are_kept() {
        let mut blocks = NodeBlocks::default();
        let a = format!("{PREAMBLE}{}{}", node(1), node(2));
        let (_, parsed) = blocks.parse(&a).expect("splits");
        blocks.keep(parsed);
        assert_eq!(blocks.len(), 2);
        let b = format!("{PREAMBLE}{}{}", node(2), node(3));
        let (policy, parsed) = blocks.parse(&b).expect("splits");
        assert_eq!(Some(&policy), whole(&b).as_ref());
        blocks.keep(parsed);
        assert_eq!(blocks.len(), 2, "node 1's block is gone");
    }

    /// A typo in one node block, with the other blocks kept: the daemon's refusal names the
    /// same line, column and field as `tyd policy check` (the whole parse), and the kept
    /// blocks stay those of the policy in force.
    #[test]
    fn a_typo_in_a_block_is_placed_as_the_whole_parse_places_it() {
        let good = format!("{PREAMBLE}{}{}", node(1), node(2));
        let (now, mut blocks) = kept_from(&good);
        let typo = good.replacen(
            "addresses = [\"10.77.0.2\"]",
            "adresses = [\"10.77.0.2\"]",
            1,
        );
        let daemon = crate::parse_policy_reusing("p", typo.as_bytes(), now, &mut blocks);
        let tyd = crate::parse_policy("p", typo.as_bytes(), now);
        assert!(daemon.is_err(), "typo accepted");
        assert_eq!(daemon, tyd);
        assert_eq!(blocks.len(), 2);
        let again = blocks.parse(&good).expect("splits");
        assert_eq!(again.0.nodes.len(), 2);
    }

    /// Kept blocks vouch for their nodes only once each, and only under the tunnel networks
    /// they were checked with: a block repeated, or a tunnel network narrowed, is refused. A
    /// new serial alone does not stop them vouching.
    #[test]
    fn kept_nodes_are_checked_again_when_repeated_or_under_a_new_preamble() {
        let good = format!("{PREAMBLE}{}{}", node(1), node(2));
        let (now, mut blocks) = kept_from(&good);
        // Two pieces not found in a row, so the repeated block is found again (by the index).
        let repeated = format!("{PREAMBLE}{}{}{}{}", node(1), node(2), node(3), node(2));
        let narrowed = good.replace("10.77.0.0/24", "10.77.0.0/31");
        for bad in [repeated, narrowed] {
            let daemon = crate::parse_policy_reusing("p", bad.as_bytes(), now, &mut blocks);
            assert!(daemon.is_err(), "accepted: {bad}");
            assert_eq!(daemon, crate::parse_policy("p", bad.as_bytes(), now));
        }
        let next = good.replace("serial = 1", "serial = 2");
        let (_, parsed) = blocks.parse(&next).expect("splits");
        assert_eq!(parsed.known_nodes(), Some(&[true, true][..]));
    }

    /// A node added, one removed, one changed, blocks swapped: each found where it went.
    #[test]
    fn kept_blocks_are_found_after_any_edit() {
        let text = |ids: &[u16]| {
            let nodes: String = ids.iter().map(|&i| node(i)).collect();
            format!("{PREAMBLE}{nodes}")
        };
        let (_, blocks) = kept_from(&text(&[1, 2, 3, 4, 5, 6, 7, 8, 9, 10]));
        // Which nodes are parsed again: the new ones, and after a reordering the first piece
        // (one miss in a row is taken for a changed block, so no index is built for it).
        for (ids, parsed_again) in [
            (vec![1, 2, 3, 11, 4, 5, 6, 7, 8, 9, 10], vec![3]),
            (vec![1, 2, 4, 5, 6, 7, 8, 9, 10], vec![]),
            (vec![10, 9, 8, 7, 6, 5, 4, 3, 2, 1], vec![0]),
            (
                vec![1, 12, 13, 14, 15, 16, 17, 18, 9, 10],
                vec![1, 2, 3, 4, 5, 6, 7],
            ),
        ] {
            let (policy, parsed) = blocks.parse(&text(&ids)).expect("splits");
            assert_eq!(Some(&policy), whole(&text(&ids)).as_ref());
            let fresh: Vec<usize> = (parsed.known_nodes().expect("same preamble").iter())
                .enumerate()
                .filter_map(|(i, k)| (!k).then_some(i))
                .collect();
            assert_eq!(fresh, parsed_again, "nodes {ids:?}");
        }
    }

    /// Issue 14: `tyd node add` appends a block after a blank line, so the block that was
    /// last gains a newline. It was parsed again, and with the new block that made two misses
    /// in a row, which built the index of every kept block (1.7 ms at 10,000 nodes). Blank
    /// lines and trailing spaces after a block no longer make it another block; what they
    /// cannot hide (a lone CR, not a TOML newline; a comment) still reads as the whole does.
    #[test]
    fn blank_lines_after_a_block_do_not_make_it_another() {
        let nodes: String = (1..=4).map(node).collect();
        let valid = format!("{PREAMBLE}{nodes}");
        let (_, blocks) = kept_from(&valid);
        let fresh = |text: &str| -> Vec<usize> {
            let (policy, parsed) = blocks.parse(text).expect("splits");
            assert_eq!(Some(&policy), whole(text).as_ref(), "{text:?}");
            (parsed.known_nodes().expect("same preamble").iter())
                .enumerate()
                .filter_map(|(i, k)| (!k).then_some(i))
                .collect()
        };
        // A node appended after a blank line: only the new one is parsed.
        assert_eq!(fresh(&format!("{valid}\n{}", node(5))), [4]);
        // Blank lines, spaces, tabs and CRLF after blocks, in the middle and at the end.
        let spaced = format!(
            "{PREAMBLE}{} \n\n{}\t\r\n{}{}  \n\n",
            node(1),
            node(2),
            node(3),
            node(4)
        );
        assert_eq!(fresh(&spaced), Vec::<usize>::new());
        // A lone CR at the end is not a newline: refused, as the whole parse refuses it.
        let lone_cr = format!("{valid}\r");
        assert!(whole(&lone_cr).is_none());
        assert!(blocks.parse(&lone_cr).is_none());
        // A comment after a block is something: that block is parsed again.
        assert_eq!(fresh(&format!("{valid}# note\n")), [3]);
    }

    #[test]
    fn blocks_alike_at_both_ends_are_told_apart() {
        // Same length, same first and last lines; only the middle differs.
        let block = |i: u16, key: u8| {
            let key = crate::WgPublicKey::from_bytes([key; 32]);
            format!(
                "[[node]]\nroles = [\"drone\"]\nid = {i}\nname = \"n{i}\"\npublic_key = \"{key}\"\naddresses = [\"10.77.0.{i}\"]\n# end\n"
            )
        };
        let mut blocks = NodeBlocks::default();
        let a = format!("{PREAMBLE}{}{}", block(1, 1), block(2, 2));
        let (_, parsed) = blocks.parse(&a).expect("splits");
        blocks.keep(parsed);
        let b = format!("{PREAMBLE}{}{}", block(2, 2), block(3, 1));
        let (policy, _) = blocks.parse(&b).expect("splits");
        assert_eq!(Some(&policy), whole(&b).as_ref());
        let ids: Vec<u16> = policy.nodes.iter().map(|n| n.id.get()).collect();
        assert_eq!(ids, [2, 3]);
    }

    #[test]
    fn a_refused_split_leaves_the_whole_parse_to_the_caller() {
        let blocks = NodeBlocks::default();
        for text in [
            // No node header at all.
            PREAMBLE.to_string(),
            // The cut falls inside a multi-line string: the preamble alone does not parse.
            format!("{PREAMBLE}[firewall]\nx = \"\"\"\n{}\"\"\"\n", node(1)),
            // A node piece reaches another table.
            format!("{PREAMBLE}{}[firewall]\ndefault = \"accept\"\n", node(1)),
            // The preamble defines node another way.
            format!("node = []\n{PREAMBLE}{}", node(1)),
            // A piece that does not parse.
            format!("{PREAMBLE}{}nonsense\n", node(1)),
        ] {
            assert!(blocks.parse(&text).is_none(), "split accepted: {text}");
        }
    }

    /// Fragments an attacker or a careless editor might put anywhere in a policy: headers
    /// inside strings and arrays, other tables after nodes, another spelling of `node`.
    fn fragment() -> impl Strategy<Value = String> {
        prop_oneof![
            20 => (1u16..6).prop_map(node),
            1 => Just("[[node]]\n".to_string()),
            1 => Just("\n".to_string()),
            1 => Just("\r\n".to_string()),
            1 => Just("# [[node]]\n".to_string()),
            1 => Just("x = \"\"\"\n[[node]]\n".to_string()),
            1 => Just("\"\"\"\n".to_string()),
            1 => Just("x = '''\n".to_string()),
            1 => Just("'''\n".to_string()),
            1 => Just("roles = [\n".to_string()),
            1 => Just("\"drone\"]\n".to_string()),
            1 => Just("[firewall]\ndefault = \"accept\"\n".to_string()),
            1 => Just("[node.x]\n".to_string()),
            1 => Just("[[node.x]]\n".to_string()),
            1 => Just("node = []\n".to_string()),
            1 => Just("[node]\n".to_string()),
            1 => Just("endpoint = \"192.0.2.1:51820\"\n".to_string()),
            1 => Just("[cluster]\nname = \"u\"\n".to_string()),
            1 => Just("[[ node ]]\n".to_string()),
            1 => Just("[[node]] # c\n".to_string()),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// Whenever the split is taken, with or without kept blocks, it gives what the whole
        /// parse gives (that it is taken for ordinary policies, the unit tests above check).
        #[test]
        fn split_parse_equals_whole_parse(
            before in proptest::collection::vec(fragment(), 0..2),
            after in proptest::collection::vec(fragment(), 0..8),
            earlier in proptest::collection::vec(fragment(), 0..8),
        ) {
            let text = format!("{}{PREAMBLE}{}", before.concat(), after.concat());
            let mut blocks = NodeBlocks::default();
            let primer = format!("{PREAMBLE}{}", earlier.concat());
            if let Some((_, parsed)) = blocks.parse(&primer) {
                blocks.keep(parsed);
            }
            crate::fuzzing::split_parse_is_whole_parse(&mut blocks, &text);
        }
    }
}
