//! Problems found in a config file, each with the file and (where known) a 1-based line and column.

use super::position::Pos;
use crate::redact;
use std::borrow::Cow;
use std::fmt;
use std::path::{Path, PathBuf};

/// One thing wrong with a config file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    pub file: PathBuf,
    /// 1-based.
    pub line: Option<usize>,
    /// 1-based.
    pub column: Option<usize>,
    pub message: String,
}

impl Problem {
    /// A problem at `pos`, or about the whole file when `pos` is `None`. Credentials in any
    /// URL the message quotes are masked: every problem is printed (by `check`, at start-up,
    /// in the reload log), and serde's messages quote values we never see first.
    pub fn new(file: &Path, pos: Option<Pos>, message: impl Into<String>) -> Problem {
        let message = message.into();
        let message = match redact::in_text(&message) {
            Cow::Borrowed(_) => message,
            Cow::Owned(masked) => masked,
        };
        Problem {
            file: file.to_path_buf(),
            line: pos.map(|p| p.line),
            column: pos.map(|p| p.column),
            message,
        }
    }

    /// A syntax, type or unknown-field error from serde_yaml, at the position it reports.
    pub fn from_yaml(file: &Path, err: &serde_yaml::Error) -> Problem {
        let mut message = err.to_string();
        let pos = err.location().map(|loc| Pos {
            // serde_yaml's line and column are both 1-based already.
            line: loc.line(),
            column: loc.column(),
        });
        if let Some(p) = pos {
            // The position is shown in front; drop serde_yaml's own copy of it.
            let suffix = format!(" at line {} column {}", p.line, p.column);
            if let Some(at) = message.find(&suffix) {
                message.replace_range(at..at + suffix.len(), "");
            }
        }
        Problem::new(file, pos, message)
    }
}

/// `FILE:LINE:COLUMN: message`, or `FILE: message` when no position applies.
impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let file = self.file.display();
        match (self.line, self.column) {
            (Some(line), Some(column)) => write!(f, "{file}:{line}:{column}: {}", self.message),
            (Some(line), None) => write!(f, "{file}:{line}: {}", self.message),
            _ => write!(f, "{file}: {}", self.message),
        }
    }
}

/// Every problem found in one config file (never empty).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}", render(.problems))]
pub struct ConfigErrors {
    pub problems: Vec<Problem>,
}

impl ConfigErrors {
    /// A single problem.
    pub fn one(problem: Problem) -> ConfigErrors {
        ConfigErrors {
            problems: vec![problem],
        }
    }
}

/// One problem per line.
fn render(problems: &[Problem]) -> String {
    let lines: Vec<String> = problems.iter().map(Problem::to_string).collect();
    lines.join("\n")
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn display_with_and_without_position() {
        let file = Path::new("gateway.yaml");
        let p = Problem::new(file, Some(Pos { line: 3, column: 7 }), "listen: bad");
        assert_eq!(p.to_string(), "gateway.yaml:3:7: listen: bad");
        let q = Problem::new(file, None, "cannot read: gone");
        assert_eq!(q.to_string(), "gateway.yaml: cannot read: gone");
        let all = ConfigErrors {
            problems: vec![p, q],
        };
        assert_eq!(
            all.to_string(),
            "gateway.yaml:3:7: listen: bad\ngateway.yaml: cannot read: gone"
        );
    }

    #[test]
    fn credentials_in_messages_are_masked() {
        let p = Problem::new(
            Path::new("gateway.yaml"),
            None,
            "\"redis://:hunter2@h\" must be a redis:// URL",
        );
        assert_eq!(
            p.to_string(),
            "gateway.yaml: \"redis://:***@h\" must be a redis:// URL"
        );
    }
}
