//! Splits a server-sent event stream into lines as its frames arrive: a line may end with
//! `\n`, `\r\n` or `\r` (the SSE grammar), and a frame may end anywhere, even between the `\r`
//! and `\n` of one line ending.
//!
//! Holds at most one partial line, bounded by [`MAX_LINE`]; a longer line is dropped to its end
//! rather than buffered, however its frames fall, so what is emitted never depends on framing.
//! A line that arrives whole inside one frame is handed over without a copy.

/// The longest line kept (bytes, line ending excluded). Usage events are a few hundred bytes;
/// a model's content chunk rarely tops a few KiB, so a line past this is not one we read.
pub(super) const MAX_LINE: usize = 256 * 1024;

/// A UTF-8 byte order mark, which the SSE grammar allows before the first line.
const BOM: &[u8] = b"\xEF\xBB\xBF";

#[derive(Debug, Default)]
pub(super) struct LineSplitter {
    /// The current line's bytes from earlier frames (empty when a frame ended on a line end).
    partial: Vec<u8>,
    /// The current line outgrew [`MAX_LINE`]: its bytes are dropped until it ends.
    skipping: bool,
    /// The last byte seen was a `\r`: a `\n` opening the next frame belongs to that line end.
    after_cr: bool,
    /// A line was emitted already (a BOM is only stripped from the first).
    started: bool,
}

impl LineSplitter {
    /// Feeds one frame; `on_line` gets each line completed by it, without its line ending.
    pub(super) fn feed(&mut self, data: &[u8], mut on_line: impl FnMut(&[u8])) {
        let mut rest = data;
        if self.after_cr && !rest.is_empty() {
            self.after_cr = false;
            if let [b'\n', tail @ ..] = rest {
                rest = tail;
            }
        }
        while let Some(at) = memchr::memchr2(b'\n', b'\r', rest) {
            let piece = &rest[..at];
            if self.skipping {
                self.skipping = false;
            } else if self.partial.len() + piece.len() > MAX_LINE {
                self.partial.clear();
            } else if self.partial.is_empty() {
                emit(&mut self.started, piece, &mut on_line);
            } else {
                self.partial.extend_from_slice(piece);
                emit(&mut self.started, &self.partial, &mut on_line);
                self.partial.clear();
            }
            rest = match (rest[at], rest.get(at + 1)) {
                (b'\r', Some(b'\n')) => &rest[at + 2..],
                (b'\r', None) => {
                    self.after_cr = true;
                    &rest[at + 1..]
                }
                _ => &rest[at + 1..],
            };
        }
        if self.skipping || rest.is_empty() {
            return;
        }
        if self.partial.len() + rest.len() > MAX_LINE {
            self.partial.clear();
            self.skipping = true;
        } else {
            self.partial.extend_from_slice(rest);
        }
    }

    /// The stream ended: the held partial line, if any, is emitted as a last line.
    pub(super) fn finish(&mut self, mut on_line: impl FnMut(&[u8])) {
        if !self.skipping && !self.partial.is_empty() {
            emit(&mut self.started, &self.partial, &mut on_line);
        }
        self.partial = Vec::new();
        self.skipping = false;
    }
}

fn emit(started: &mut bool, line: &[u8], on_line: &mut impl FnMut(&[u8])) {
    let line = match line.strip_prefix(BOM) {
        Some(stripped) if !*started => stripped,
        _ => line,
    };
    *started = true;
    on_line(line);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every line `frames` yields, in order.
    fn lines_of(frames: &[&[u8]]) -> Vec<Vec<u8>> {
        let mut splitter = LineSplitter::default();
        let mut out = Vec::new();
        for frame in frames {
            splitter.feed(frame, |line| out.push(line.to_vec()));
        }
        out
    }

    fn expected(lines: &[&str]) -> Vec<Vec<u8>> {
        lines.iter().map(|l| l.as_bytes().to_vec()).collect()
    }

    #[test]
    fn each_line_ending_of_the_grammar_ends_a_line() {
        let text = b"a: 1\nb: 2\r\nc: 3\rd: 4\n\ne\r\n\r\n";
        let want = expected(&["a: 1", "b: 2", "c: 3", "d: 4", "", "e", ""]);
        assert_eq!(lines_of(&[text]), want);
    }

    #[test]
    fn any_split_yields_the_same_lines() {
        let text: &[u8] =
            b"\xEF\xBB\xBFdata: {\"x\":1}\r\n\r\nevent: e\rdata: y\n\ndata: [DONE]\r\n";
        let want = expected(&[
            "data: {\"x\":1}",
            "",
            "event: e",
            "data: y",
            "",
            "data: [DONE]",
        ]);
        assert_eq!(lines_of(&[text]), want);
        for cut in 0..=text.len() {
            assert_eq!(
                lines_of(&[&text[..cut], &text[cut..]]),
                want,
                "cut at {cut}"
            );
        }
        for (first, second) in (0..=text.len()).flat_map(|a| (a..=text.len()).map(move |b| (a, b)))
        {
            let frames = [&text[..first], &text[first..second], &text[second..]];
            assert_eq!(lines_of(&frames), want, "cuts at {first}, {second}");
        }
        let bytes: Vec<&[u8]> = text.chunks(1).collect();
        assert_eq!(lines_of(&bytes), want);
    }

    #[test]
    fn a_crlf_split_between_frames_is_one_line_end() {
        assert_eq!(lines_of(&[b"a\r", b"\nb\n"]), expected(&["a", "b"]));
        assert_eq!(lines_of(&[b"a\r", b"", b"\nb\n"]), expected(&["a", "b"]));
        // Two CRs are two line ends, so an empty line between them.
        assert_eq!(
            lines_of(&[b"a\r", b"\r", b"b\n"]),
            expected(&["a", "", "b"])
        );
    }

    #[test]
    fn an_unfinished_line_is_not_emitted() {
        assert_eq!(lines_of(&[b"a\nbc"]), expected(&["a"]));
    }

    #[test]
    fn finish_emits_the_unterminated_last_line_once() {
        let mut splitter = LineSplitter::default();
        let mut out = Vec::new();
        splitter.feed(b"a\nb", |line| out.push(line.to_vec()));
        splitter.finish(|line| out.push(line.to_vec()));
        splitter.finish(|line| out.push(line.to_vec()));
        assert_eq!(out, expected(&["a", "b"]));
        // Not after a line end, nor for a line being skipped.
        let mut out = Vec::new();
        let mut splitter = LineSplitter::default();
        splitter.feed(b"a\r", |line| out.push(line.to_vec()));
        splitter.feed(&vec![b'x'; MAX_LINE + 1], |line| out.push(line.to_vec()));
        splitter.finish(|line| out.push(line.to_vec()));
        assert_eq!(out, expected(&["a"]));
    }

    #[test]
    fn a_bom_is_stripped_from_the_first_line_only() {
        let text = b"\xEF\xBB\xBFa\n\xEF\xBB\xBFb\n";
        assert_eq!(
            lines_of(&[text]),
            vec![b"a".to_vec(), b"\xEF\xBB\xBFb".to_vec()]
        );
    }

    #[test]
    fn an_oversize_line_is_dropped_to_its_end_however_it_is_framed() {
        let long = vec![b'x'; MAX_LINE + 1];
        let mut text = b"a\n".to_vec();
        text.extend_from_slice(&long);
        text.extend_from_slice(b"\nb\n");
        let want = expected(&["a", "b"]);
        assert_eq!(lines_of(&[&text]), want);
        for size in [1000, 4096, 65536, MAX_LINE, MAX_LINE + 1] {
            let frames: Vec<&[u8]> = text.chunks(size).collect();
            assert_eq!(lines_of(&frames), want, "frames of {size}");
        }
        // Nothing of it stays held.
        let mut splitter = LineSplitter::default();
        for frame in text[..MAX_LINE].chunks(4096) {
            splitter.feed(frame, |_| {});
        }
        splitter.feed(&text[MAX_LINE..MAX_LINE + 3], |_| {});
        assert!(splitter.skipping);
        assert!(splitter.partial.is_empty());
    }

    #[test]
    fn a_line_of_exactly_the_bound_is_kept() {
        let mut text = vec![b'y'; MAX_LINE];
        text.push(b'\n');
        let frames: Vec<&[u8]> = text.chunks(1000).collect();
        let lines = lines_of(&frames);
        assert_eq!(lines.len(), 1);
        assert_eq!(lines[0].len(), MAX_LINE);
    }
}
