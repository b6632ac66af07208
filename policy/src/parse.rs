//! From bytes to a valid [`Policy`], with every problem placed at file:line:column.

use std::fmt;

use jiff::Timestamp;

use crate::blocks::{NodeBlocks, ParsedBlocks};
use crate::model::Policy;
use crate::source::{FieldPath, SourceMap, line_col};
use crate::validate::{valid_with_known, validate};

/// One problem, placed in the file: the one line an operator reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub file: String,
    pub line: usize,
    pub column: usize,
    /// The field it is about (`node[2].addresses[0]`), empty when unknown (syntax errors).
    pub field: String,
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}: ", self.file, self.line, self.column)?;
        if !self.field.is_empty() {
            write!(f, "{}: ", self.field)?;
        }
        f.write_str(&self.message)
    }
}

/// All problems found in one policy file, in file order.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct Invalid(pub Vec<Diagnostic>);

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let lines: Vec<String> = self.0.iter().map(ToString::to_string).collect();
        f.write_str(&lines.join("\n"))
    }
}

impl Invalid {
    pub(crate) fn one(
        file: &str,
        text: &str,
        offset: usize,
        field: String,
        message: String,
    ) -> Self {
        let (line, column) = line_col(text, offset);
        Self(vec![Diagnostic {
            file: file.to_string(),
            line,
            column,
            field,
            message,
        }])
    }
}

/// How much of a value an error message echoes back.
const SHOWN_CHARS: usize = 64;

/// A value quoted for an error message, cut after 64 characters (with its full length), so a
/// huge value never becomes a huge log line.
pub fn shown(value: &str) -> String {
    match value.char_indices().nth(SHOWN_CHARS) {
        None => format!("{value:?}"),
        Some((cut, _)) => format!("{:?}... ({} bytes)", &value[..cut], value.len()),
    }
}

/// Folds a parser's multi-line message (`invalid string\nexpected ...`) into one line.
pub fn one_line(message: &str) -> String {
    let parts: Vec<&str> = message
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    parts.join("; ")
}

/// Parses and validates a policy as of `now`. `file` names the source in messages.
pub fn parse_policy(file: &str, bytes: &[u8], now: Timestamp) -> Result<Policy, Invalid> {
    parse_with(file, bytes, now, None)
}

/// [`parse_policy`], parsing only the `[[node]]` blocks `blocks` does not hold from the last
/// valid policy; if this one is valid, `blocks` holds its blocks after.
pub fn parse_policy_reusing(
    file: &str,
    bytes: &[u8],
    now: Timestamp,
    blocks: &mut NodeBlocks,
) -> Result<Policy, Invalid> {
    parse_with(file, bytes, now, Some(blocks))
}

fn parse_with(
    file: &str,
    bytes: &[u8],
    now: Timestamp,
    blocks: Option<&mut NodeBlocks>,
) -> Result<Policy, Invalid> {
    let text = std::str::from_utf8(bytes).map_err(|e| {
        let valid = &bytes[..e.valid_up_to()];
        let text = String::from_utf8_lossy(valid);
        Invalid::one(
            file,
            &text,
            text.len(),
            String::new(),
            "policy is not valid UTF-8".to_string(),
        )
    })?;
    if text.trim().is_empty() {
        return Err(Invalid::one(
            file,
            text,
            0,
            String::new(),
            "policy is empty".into(),
        ));
    }
    let (policy, parsed) = match blocks.as_deref().and_then(|b| b.parse(text)) {
        Some((policy, parsed)) => (policy, Some(parsed)),
        None => (whole(file, text)?, None),
    };
    // Nodes unchanged from the last valid policy need not be checked again; a policy that
    // fails this quicker check is validated whole, which also gives every finding.
    let known = parsed.as_ref().and_then(ParsedBlocks::known_nodes);
    let findings = match known {
        Some(known) if valid_with_known(&policy, now, known) => Vec::new(),
        _ => validate(&policy, now),
    };
    if findings.is_empty() {
        if let (Some(mut parsed), Some(blocks)) = (parsed, blocks) {
            parsed.mark_valid();
            blocks.keep(parsed);
        }
        return Ok(policy);
    }
    let map = SourceMap::new(text);
    let mut diags: Vec<Diagnostic> = findings
        .into_iter()
        .map(|f| place(file, text, &map, &f.path, f.message))
        .collect();
    diags.sort_by_key(|d| (d.line, d.column));
    Err(Invalid(diags))
}

/// The whole text through the TOML parser: the reference, and the one that places errors.
fn whole(file: &str, text: &str) -> Result<Policy, Invalid> {
    // The span map is a second parse of the whole text: made only to place an error.
    toml::from_str(text).map_err(|e| {
        let offset = e.span().map_or(0, |s| s.start);
        let field = SourceMap::new(text).path_at(offset).to_string();
        Invalid::one(file, text, offset, field, one_line(e.message()))
    })
}

fn place(
    file: &str,
    text: &str,
    map: &SourceMap<'_>,
    at: &FieldPath,
    message: String,
) -> Diagnostic {
    let offset = map.span_of(at).map_or(0, |s| s.start);
    let (line, column) = line_col(text, offset);
    Diagnostic {
        file: file.to_string(),
        line,
        column,
        field: at.to_string(),
        message,
    }
}
