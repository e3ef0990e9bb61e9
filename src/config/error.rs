//! Why a config was refused, in a shape an editor or a CI log can jump to.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

/// Why a config was refused. `Io` keeps its source in an `Arc` so the error can be cloned
/// (a reload keeps the last error around to report it).
#[derive(Debug, Clone, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read at all.
    #[error("cannot read {}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: Arc<std::io::Error>,
    },
    /// Every problem of the file, in file order, one per line when displayed.
    #[error("{}", display_problems(.0))]
    Invalid(Vec<Problem>),
}

impl ConfigError {
    /// The problems of an invalid file, empty for an unreadable one.
    pub fn problems(&self) -> &[Problem] {
        match self {
            ConfigError::Invalid(problems) => problems,
            ConfigError::Io { .. } => &[],
        }
    }
}

fn display_problems(problems: &[Problem]) -> String {
    let lines: Vec<String> = problems.iter().map(Problem::to_string).collect();
    lines.join("\n")
}

/// One thing wrong with the file, placed where an editor can jump to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The file name given to [`Config::parse`](super::Config::parse) or loaded.
    pub file: String,
    /// 1-based.
    pub line: usize,
    /// 1-based, in characters.
    pub col: usize,
    /// `{key path} ({value as written}) {what is wrong}: {the fix}`, on one line.
    pub message: String,
}

/// `file:line:col: message`, the form editors and CI logs turn into links.
impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.file, self.line, self.col, self.message
        )
    }
}
