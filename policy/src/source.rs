//! Where things are in the policy text: field paths to line/column, and back.
//!
//! The model stays free of span wrappers; errors carry a [`FieldPath`] and are placed in the
//! file afterwards by re-reading it with `toml_edit`, which keeps spans.

use std::fmt;
use std::ops::Range;

use toml_edit::{ImDocument, Item, Table, Value};

/// One step of a path into the document: a key, or an index into an array.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seg {
    Key(String),
    Index(usize),
}

/// A path such as `node[2].addresses[0]`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldPath(pub Vec<Seg>);

impl FieldPath {
    pub fn key(mut self, k: &str) -> Self {
        self.0.push(Seg::Key(k.to_string()));
        self
    }

    pub fn index(mut self, i: usize) -> Self {
        self.0.push(Seg::Index(i));
        self
    }
}

/// Shorthand: `path(&["node"]).index(2).key("id")`.
pub fn path(keys: &[&str]) -> FieldPath {
    keys.iter().fold(FieldPath::default(), |p, k| p.key(k))
}

impl fmt::Display for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, seg) in self.0.iter().enumerate() {
            match seg {
                Seg::Key(k) if i == 0 => write!(f, "{k}")?,
                Seg::Key(k) => write!(f, ".{k}")?,
                Seg::Index(n) => write!(f, "[{n}]")?,
            }
        }
        Ok(())
    }
}

/// 1-based line and column (in characters) of a byte offset.
pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before[line_start..].chars().count() + 1;
    (line, column)
}

/// The parsed document with spans, when the text is syntactically valid TOML.
pub struct SourceMap<'a> {
    doc: Option<ImDocument<&'a str>>,
}

impl fmt::Debug for SourceMap<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SourceMap")
            .field("parsed", &self.doc.is_some())
            .finish()
    }
}

enum Node<'d> {
    Item(&'d Item),
    Value(&'d Value),
    Table(&'d Table),
}

impl<'a> SourceMap<'a> {
    pub fn new(text: &'a str) -> Self {
        Self {
            doc: ImDocument::parse(text).ok(),
        }
    }

    /// Byte span of the value at `path`, or of the deepest part of it that exists.
    pub fn span_of(&self, path: &FieldPath) -> Option<Range<usize>> {
        let doc = self.doc.as_ref()?;
        let mut node = Node::Table(doc.as_table());
        let mut best = None;
        for seg in &path.0 {
            let (next, key_span) = match (seg, &node) {
                (Seg::Key(k), Node::Table(t)) => match t.get_key_value(k) {
                    Some((key, item)) => (Node::Item(item), key.span()),
                    None => break,
                },
                (Seg::Key(k), Node::Item(Item::Table(t))) => match t.get_key_value(k) {
                    Some((key, item)) => (Node::Item(item), key.span()),
                    None => break,
                },
                (Seg::Key(k), Node::Item(Item::Value(Value::InlineTable(t))))
                | (Seg::Key(k), Node::Value(Value::InlineTable(t))) => match t.get_key_value(k) {
                    Some((key, item)) => (Node::Item(item), key.span()),
                    None => break,
                },
                (Seg::Index(i), Node::Item(Item::ArrayOfTables(a))) => match a.get(*i) {
                    Some(t) => (Node::Table(t), t.span()),
                    None => break,
                },
                (Seg::Index(i), Node::Item(Item::Value(Value::Array(a))))
                | (Seg::Index(i), Node::Value(Value::Array(a))) => match a.get(*i) {
                    Some(v) => (Node::Value(v), v.span()),
                    None => break,
                },
                _ => break,
            };
            best = key_span.or(best);
            node = next;
        }
        let own = match node {
            Node::Item(i) => i.span(),
            Node::Value(v) => v.span(),
            Node::Table(t) => t.span(),
        };
        own.or(best)
    }

    /// The deepest field whose key or value covers `offset` (to name the field of a serde error).
    pub fn path_at(&self, offset: usize) -> FieldPath {
        let mut out = FieldPath::default();
        if let Some(doc) = &self.doc {
            walk_table(doc.as_table(), offset, &mut out);
        }
        out
    }
}

fn covers(span: Option<Range<usize>>, offset: usize) -> bool {
    span.is_some_and(|s| s.start <= offset && offset < s.end.max(s.start + 1))
}

fn walk_table(t: &Table, offset: usize, out: &mut FieldPath) -> bool {
    for (key, item) in t.iter() {
        let Some((k, _)) = t.get_key_value(key) else {
            continue;
        };
        let mut sub = out.clone().key(key);
        if walk_item(item, offset, &mut sub) || covers(k.span(), offset) {
            *out = sub;
            return true;
        }
    }
    false
}

fn walk_item(item: &Item, offset: usize, out: &mut FieldPath) -> bool {
    match item {
        Item::Table(t) => walk_table(t, offset, out) || covers(t.span(), offset),
        Item::ArrayOfTables(a) => a.iter().enumerate().any(|(i, t)| {
            let mut sub = out.clone().index(i);
            let hit = walk_table(t, offset, &mut sub) || covers(t.span(), offset);
            if hit {
                *out = sub;
            }
            hit
        }),
        Item::Value(v) => walk_value(v, offset, out),
        Item::None => false,
    }
}

fn walk_value(v: &Value, offset: usize, out: &mut FieldPath) -> bool {
    match v {
        Value::Array(a) => {
            for (i, elem) in a.iter().enumerate() {
                let mut sub = out.clone().index(i);
                if walk_value(elem, offset, &mut sub) {
                    *out = sub;
                    return true;
                }
            }
            covers(v.span(), offset)
        }
        Value::InlineTable(t) => {
            for (key, elem) in t.iter() {
                let mut sub = out.clone().key(key);
                let key_span = t.get_key_value(key).and_then(|(k, _)| k.span());
                if walk_value(elem, offset, &mut sub) || covers(key_span, offset) {
                    *out = sub;
                    return true;
                }
            }
            covers(v.span(), offset)
        }
        _ => covers(v.span(), offset),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "[cluster]\nname = \"lab\"\n\n[[node]]\nid = 1\naddresses = [\"a\", \"b\"]\n\n[[node]]\nid = 2\n";

    #[test]
    fn finds_spans_of_nested_fields() {
        let map = SourceMap::new(TEXT);
        let span = map.span_of(&path(&["node"]).index(1).key("id")).unwrap();
        assert_eq!(line_col(TEXT, span.start), (9, 6));
        let span = map
            .span_of(&path(&["node"]).index(0).key("addresses").index(1))
            .unwrap();
        assert_eq!(&TEXT[span], "\"b\"");
    }

    #[test]
    fn names_the_field_at_an_offset() {
        let map = SourceMap::new(TEXT);
        let offset = TEXT.find("\"b\"").unwrap();
        assert_eq!(map.path_at(offset).to_string(), "node[0].addresses[1]");
        let offset = TEXT.find("name").unwrap();
        assert_eq!(map.path_at(offset).to_string(), "cluster.name");
    }

    #[test]
    fn line_col_counts_characters() {
        assert_eq!(line_col("ab\nçd", 5), (2, 2));
        assert_eq!(line_col("", 0), (1, 1));
    }
}
