//! Finds the value of the top-level key `"usage"` in a JSON body that arrives in frames, without
//! keeping the body: a byte scanner tracks only string/escape state, nesting depth and whether
//! a depth-1 string is a key, and copies nothing but the value it looks for (bounded by
//! [`MAX_USAGE`]).
//!
//! A `"usage"` inside a string, or as a key of a nested object, is not the one: only a member
//! of the root object counts. A key written with escapes (`"us\u0061ge"`) is not recognised;
//! no provider writes one. The body is assumed to be JSON: on anything else the scanner may
//! find nothing, and whatever it captures is then refused by the parser.

/// The largest `usage` value kept (bytes). A usage object is a few hundred bytes; a body whose
/// `usage` is larger is not one we understand, so it is given up rather than held.
pub(super) const MAX_USAGE: usize = 16 * 1024;

const KEY: &[u8] = b"usage";

/// Where the scanner is in the body.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Before the root value (whitespace so far).
    #[default]
    BeforeRoot,
    /// Inside the root object.
    InRoot,
    /// The root object has ended, or the body is not an object, or the usage outgrew its
    /// bound: nothing more is looked at.
    Done,
}

#[derive(Debug, Default)]
pub(super) struct TopLevelUsage {
    phase: Phase,
    /// Open objects and arrays, the root included.
    depth: u32,
    in_string: bool,
    /// The previous byte (inside a string) was a backslash.
    escaped: bool,
    /// At depth 1, the next string is a key (after `{` or `,`, until `:`).
    expect_key: bool,
    /// The string being read is a depth-1 key; `key_matched` of its bytes equal [`KEY`] so far.
    in_key: bool,
    key_matched: Option<usize>,
    /// The last depth-1 key read was `"usage"` and its `:` is still to come or just came.
    usage_key: bool,
    /// `:` after `"usage"` came: the next non-whitespace byte starts the value.
    awaiting_value: bool,
    /// The value being captured, while `capturing`.
    capturing: bool,
    captured: Vec<u8>,
}

impl TopLevelUsage {
    /// Feeds one frame; `on_value` gets the raw bytes of each top-level `usage` value completed
    /// by it (a body with the key twice yields both, in order).
    pub(super) fn feed(&mut self, data: &[u8], mut on_value: impl FnMut(&[u8])) {
        let mut i = 0;
        // Start of the not-yet-copied part of the value being captured, in this frame.
        let mut capture_from = 0;
        while i < data.len() && self.phase != Phase::Done {
            if self.in_string {
                i = self.scan_string(data, i);
                continue;
            }
            let byte = data[i];
            if self.phase == Phase::BeforeRoot {
                match byte {
                    b'{' => {
                        self.phase = Phase::InRoot;
                        self.depth = 1;
                        self.expect_key = true;
                    }
                    b' ' | b'\t' | b'\n' | b'\r' => {}
                    _ => self.phase = Phase::Done,
                }
                i += 1;
                continue;
            }
            if self.awaiting_value && !is_whitespace(byte) {
                self.awaiting_value = false;
                self.capturing = true;
                self.captured.clear();
                capture_from = i;
            }
            match byte {
                b'"' => {
                    self.in_string = true;
                    if self.depth == 1 && self.expect_key && !self.capturing {
                        self.in_key = true;
                        self.key_matched = Some(0);
                    }
                }
                b'{' | b'[' => self.depth += 1,
                b'}' | b']' => {
                    self.depth -= 1;
                    if self.depth == 0 {
                        self.finish_capture(&data[capture_from..i], &mut on_value);
                        self.phase = Phase::Done;
                    }
                }
                b':' if self.depth == 1 => {
                    self.expect_key = false;
                    if self.usage_key {
                        self.usage_key = false;
                        self.awaiting_value = true;
                    }
                }
                b',' if self.depth == 1 => {
                    self.finish_capture(&data[capture_from..i], &mut on_value);
                    self.expect_key = true;
                }
                _ => {}
            }
            i += 1;
        }
        if self.capturing {
            let tail = &data[capture_from.min(data.len())..i.min(data.len())];
            self.keep(tail);
        }
    }

    /// The body ended: a value still being captured is handed over as it is (the parser
    /// refuses it unless it was whole); nothing is looked at afterwards.
    pub(super) fn finish(&mut self, mut on_value: impl FnMut(&[u8])) {
        if self.capturing {
            self.capturing = false;
            on_value(&self.captured);
        }
        self.captured = Vec::new();
        self.phase = Phase::Done;
    }

    /// Reads string bytes from `i` up to and including the next unescaped `"` (or to the
    /// frame's end); returns where scanning resumes.
    fn scan_string(&mut self, data: &[u8], mut i: usize) -> usize {
        if self.escaped {
            self.escaped = false;
            self.match_key(None);
            return i + 1;
        }
        match memchr::memchr2(b'"', b'\\', &data[i..]) {
            None => {
                self.match_key(Some(&data[i..]));
                data.len()
            }
            Some(offset) => {
                self.match_key(Some(&data[i..i + offset]));
                i += offset;
                if data[i] == b'\\' {
                    self.escaped = true;
                } else {
                    self.in_string = false;
                    if self.in_key {
                        self.in_key = false;
                        self.usage_key = self.key_matched == Some(KEY.len());
                    }
                }
                i + 1
            }
        }
    }

    /// Compares a key's plain bytes with [`KEY`]; `None` (an escape) never matches.
    fn match_key(&mut self, chunk: Option<&[u8]>) {
        if !self.in_key {
            return;
        }
        self.key_matched = match (self.key_matched, chunk) {
            (Some(done), Some(chunk)) if KEY[done..].starts_with(chunk) => Some(done + chunk.len()),
            _ => None,
        };
    }

    /// The capture ends before `last` (the byte that ended the value).
    fn finish_capture(&mut self, last: &[u8], on_value: &mut impl FnMut(&[u8])) {
        if !self.capturing {
            return;
        }
        self.keep(last);
        if self.capturing {
            self.capturing = false;
            on_value(&self.captured);
            self.captured.clear();
        }
    }

    /// Adds bytes to the capture, or gives up past [`MAX_USAGE`].
    fn keep(&mut self, bytes: &[u8]) {
        if self.captured.len() + bytes.len() > MAX_USAGE {
            self.capturing = false;
            self.captured = Vec::new();
            self.phase = Phase::Done;
        } else {
            self.captured.extend_from_slice(bytes);
        }
    }
}

fn is_whitespace(byte: u8) -> bool {
    matches!(byte, b' ' | b'\t' | b'\n' | b'\r')
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::Value;

    /// Keys and strings full of what could fool a scanner: quotes, backslashes, brackets, "usage".
    fn text() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("usage".to_owned()),
            Just("usage\"".to_owned()),
            "[\"\\\\a-z{}\\[\\],: ]{0,10}",
        ]
    }

    fn value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            text().prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 40, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::vec((text(), inner), 0..4)
                    .prop_map(|members| Value::Object(members.into_iter().collect())),
            ]
        })
    }

    /// The values the scanner reports for `body` fed as frames cut at `cuts`.
    fn scanned(body: &[u8], cuts: [usize; 2]) -> Vec<Value> {
        let (first, second) = (cuts[0].min(cuts[1]), cuts[0].max(cuts[1]));
        let mut scanner = TopLevelUsage::default();
        let mut found = Vec::new();
        for frame in [&body[..first], &body[first..second], &body[second..]] {
            scanner.feed(frame, |raw| {
                found.push(serde_json::from_slice(raw).expect("a captured value is JSON"));
            });
        }
        found
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2048, ..ProptestConfig::default() })]

        /// Whatever the body, framing and layout, the scanner finds the root's `usage` exactly
        /// as a parser of the whole body does, and nothing else.
        #[test]
        fn finds_what_a_parser_finds(
            members in prop::collection::vec((text(), value()), 0..5),
            pretty in any::<bool>(),
            cuts in any::<[prop::sample::Index; 2]>(),
        ) {
            let root = Value::Object(members.into_iter().collect());
            let body = if pretty {
                serde_json::to_vec_pretty(&root)
            } else {
                serde_json::to_vec(&root)
            }
            .expect("serialise");
            let cuts = cuts.map(|cut| cut.index(body.len() + 1));
            let expected: Vec<Value> = root.get("usage").cloned().into_iter().collect();
            prop_assert_eq!(scanned(&body, cuts), expected);
        }
    }
}
