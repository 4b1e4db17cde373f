//! Where each node of a YAML document sits, so that semantic problems can name a line and column.
//!
//! serde_yaml only positions its own errors; this index is built separately with yaml-rust2's event
//! parser and maps a path such as `routes[3].scope` to the 1-based line and column of that value (and,
//! separately, of its key).

use std::collections::hash_map::{Entry, HashMap};
use std::fmt;
use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::Marker;

/// One step into a YAML document: a mapping key or a sequence index.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(super) enum Seg {
    Key(String),
    Index(usize),
}

/// A path from the document root, shown the way serde_yaml shows it: `routes[3].scope`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub(super) struct YamlPath(pub Vec<Seg>);

impl YamlPath {
    /// The path one key deeper.
    pub(super) fn key(&self, key: &str) -> YamlPath {
        let mut segs = self.0.clone();
        segs.push(Seg::Key(key.to_owned()));
        YamlPath(segs)
    }

    /// The path one sequence item deeper.
    pub(super) fn index(&self, index: usize) -> YamlPath {
        let mut segs = self.0.clone();
        segs.push(Seg::Index(index));
        YamlPath(segs)
    }
}

/// Shorthand for a path made of keys only: `at(&["upstreams", "tools", "url"])`.
pub(super) fn at(keys: &[&str]) -> YamlPath {
    YamlPath(keys.iter().map(|k| Seg::Key((*k).to_owned())).collect())
}

impl fmt::Display for YamlPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, seg) in self.0.iter().enumerate() {
            match seg {
                Seg::Key(k) if i == 0 => f.write_str(k)?,
                Seg::Key(k) => write!(f, ".{k}")?,
                Seg::Index(n) => write!(f, "[{n}]")?,
            }
        }
        Ok(())
    }
}

/// A 1-based line and column.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pos {
    pub line: usize,
    pub column: usize,
}

impl Pos {
    /// yaml-rust2's `Marker` has a 1-based line and a 0-based column.
    fn from_marker(mark: Marker) -> Pos {
        Pos {
            line: mark.line(),
            column: mark.col() + 1,
        }
    }
}

/// Positions of every value and every mapping key of the first document.
#[derive(Debug, Default)]
pub(super) struct PositionIndex {
    values: HashMap<Vec<Seg>, Pos>,
    keys: HashMap<Vec<Seg>, Pos>,
    /// Keys seen again in the same mapping: where the second one is.
    repeated: HashMap<Vec<Seg>, Pos>,
}

impl PositionIndex {
    /// Indexes `text`. A document yaml-rust2 cannot parse yields what was indexed up to the error.
    pub(super) fn build(text: &str) -> PositionIndex {
        let mut builder = Builder::default();
        // serde_yaml has already accepted the text; a disagreement only costs positions.
        let _ = Parser::new_from_str(text).load(&mut builder, false);
        builder.index
    }

    /// Where the value at `path` starts, else where its nearest indexed parent starts.
    pub(super) fn value(&self, path: &YamlPath) -> Option<Pos> {
        self.find(path, false)
    }

    /// Where the second occurrence of the key at `path` is, else as [`PositionIndex::key`].
    pub(super) fn repeated_key(&self, path: &YamlPath) -> Option<Pos> {
        self.repeated
            .get(&path.0)
            .copied()
            .or_else(|| self.key(path))
    }

    /// Where the key of the entry at `path` is, else as [`PositionIndex::value`].
    pub(super) fn key(&self, path: &YamlPath) -> Option<Pos> {
        self.find(path, true)
    }

    fn find(&self, path: &YamlPath, key_first: bool) -> Option<Pos> {
        let mut segs: &[Seg] = &path.0;
        loop {
            let hit = if key_first {
                self.keys.get(segs).or_else(|| self.values.get(segs))
            } else {
                self.values.get(segs).or_else(|| self.keys.get(segs))
            };
            if let Some(pos) = hit {
                return Some(*pos);
            }
            let (_, parent) = segs.split_last()?;
            segs = parent;
        }
    }
}

/// A container being read.
enum Frame {
    Map {
        path: Vec<Seg>,
        /// The key whose value comes next, or `None` while a key is expected.
        key: Option<String>,
    },
    Seq {
        path: Vec<Seg>,
        next: usize,
    },
}

#[derive(Default)]
struct Builder {
    stack: Vec<Frame>,
    index: PositionIndex,
    /// Stack depths of containers that are (complex) mapping keys.
    key_containers: Vec<usize>,
    done: bool,
}

impl Builder {
    /// Registers the start of a node; returns its path (`None` when the node is a mapping key).
    fn enter(&mut self, pos: Pos, scalar: Option<&str>) -> Option<Vec<Seg>> {
        let path = match self.stack.last_mut() {
            None => Vec::new(),
            Some(Frame::Seq { path, next }) => {
                let mut p = path.clone();
                p.push(Seg::Index(*next));
                p
            }
            Some(Frame::Map { path, key: Some(k) }) => {
                let mut p = path.clone();
                p.push(Seg::Key(k.clone()));
                p
            }
            Some(Frame::Map {
                path,
                key: key @ None,
            }) => {
                // A complex (non-scalar) key is recorded as `?`; nothing refers to it.
                let text = scalar.unwrap_or("?").to_owned();
                let mut p = path.clone();
                p.push(Seg::Key(text.clone()));
                match self.index.keys.entry(p) {
                    Entry::Occupied(seen) => {
                        self.index.repeated.entry(seen.key().clone()).or_insert(pos);
                    }
                    Entry::Vacant(slot) => {
                        slot.insert(pos);
                    }
                }
                *key = Some(text);
                return None;
            }
        };
        self.index.values.entry(path.clone()).or_insert(pos);
        Some(path)
    }

    /// Registers the end of a node (a value or a key) in its parent.
    fn leave(&mut self, was_key: bool) {
        match self.stack.last_mut() {
            Some(Frame::Seq { next, .. }) => *next += 1,
            Some(Frame::Map { key, .. }) if !was_key => *key = None,
            _ => {}
        }
    }
}

impl MarkedEventReceiver for Builder {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        if self.done {
            return;
        }
        let pos = Pos::from_marker(mark);
        match ev {
            Event::Scalar(text, ..) => {
                let was_key = self.enter(pos, Some(&text)).is_none();
                self.leave(was_key);
            }
            Event::Alias(_) => {
                let was_key = self.enter(pos, None).is_none();
                self.leave(was_key);
            }
            Event::MappingStart(..) | Event::SequenceStart(..) => {
                let (path, was_key) = match self.enter(pos, None) {
                    Some(path) => (path, false),
                    None => (vec![Seg::Key("?".to_owned())], true),
                };
                let frame = if matches!(ev, Event::MappingStart(..)) {
                    Frame::Map { path, key: None }
                } else {
                    Frame::Seq { path, next: 0 }
                };
                self.stack.push(frame);
                if was_key {
                    self.key_containers.push(self.stack.len());
                }
            }
            Event::MappingEnd | Event::SequenceEnd => {
                let depth = self.stack.len();
                self.stack.pop();
                let was_key = self.key_containers.last() == Some(&depth);
                if was_key {
                    self.key_containers.pop();
                }
                self.leave(was_key);
            }
            Event::DocumentEnd => self.done = true,
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pos(line: usize, column: usize) -> Option<Pos> {
        Some(Pos { line, column })
    }

    #[test]
    fn marker_lines_and_columns_are_one_based() {
        let index = PositionIndex::build("a: 1\nbb:\n  - x\n  - {k: v, m: [p, q]}\n");
        assert_eq!(index.value(&at(&["a"])), pos(1, 4));
        assert_eq!(index.key(&at(&["a"])), pos(1, 1));
        assert_eq!(index.key(&at(&["bb"])), pos(2, 1));
        assert_eq!(index.value(&at(&["bb"]).index(0)), pos(3, 5));
        assert_eq!(index.value(&at(&["bb"]).index(1).key("k")), pos(4, 9));
        assert_eq!(
            index.value(&at(&["bb"]).index(1).key("m").index(1)),
            pos(4, 19)
        );
        // Unknown paths fall back to the nearest parent.
        assert_eq!(
            index.value(&at(&["bb"]).index(1).key("zz")),
            index.value(&at(&["bb"]).index(1))
        );
        assert_eq!(
            index.value(&at(&["nope"])),
            index.value(&YamlPath::default())
        );
    }

    #[test]
    fn repeated_keys_are_found() {
        let index = PositionIndex::build("s:\n  a: 1\n  b: 2\n  a: 3\n");
        assert_eq!(index.repeated_key(&at(&["s", "a"])), pos(4, 3));
        assert_eq!(index.key(&at(&["s", "a"])), pos(2, 3));
        assert_eq!(index.repeated_key(&at(&["s", "b"])), pos(3, 3));
    }

    #[test]
    fn complex_keys_do_not_confuse_the_index() {
        let index = PositionIndex::build("? [a, b]\n: 1\nc: 2\n");
        assert_eq!(index.value(&at(&["c"])), pos(3, 4));
    }

    #[test]
    fn paths_display_like_serde_yaml() {
        assert_eq!(
            at(&["routes"]).index(3).key("scope").to_string(),
            "routes[3].scope"
        );
        assert_eq!(
            at(&["upstreams", "tools", "url"]).to_string(),
            "upstreams.tools.url"
        );
    }
}
