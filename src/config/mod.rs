//! `pools.toml`, the operators' contract (docs/design.md, "Configuration").
//!
//! The file is walked by hand over toml_edit's span-keeping tree instead of being handed to
//! serde: serde stops at the first problem and forgets where most values were written, while
//! an operator fixing a config wants every problem at once, each at its line and column and
//! each with the fix. Everything here is pure (only [`Config::load`] reads a file), so
//! `warmpool check` and a reload can refuse a bad file before any container is touched.
//!
//! Submodules, each using only those listed after it:
//! - `document`: the top level, pool names, and the one map of every key table;
//! - `pool`, `server`: the key tables (`settings!` invocations) and the rules between keys;
//! - `keys`: the `settings!` macro that turns a key table into structs, reading and merging;
//! - `read`: positions, the `Ctx` that collects problems, and one reader per value shape;
//! - `suggest`: where an unknown key belongs, or what it was probably meant to be;
//! - `checks`, `values`, `error`: string rules, value types and sizes, the error types.

mod checks;
mod document;
mod error;
mod keys;
mod mounts;
mod pool;
mod read;
mod read_schedule;
mod server;
mod suggest;
mod values;

#[cfg(test)]
mod tests;

/// Every key of pools.toml as `section.key` (sections `server`, `docker`, `pool` for
/// `[defaults]`/`[pools.NAME]`, `security`), sub-tables left out: the contract table
/// (src/contract_tests.rs) maps each to the test that fails when it is ignored.
#[cfg(test)]
pub(crate) fn all_keys() -> Vec<String> {
    let sections: [(&str, &[&str]); 4] = [
        ("server", server::SERVER_KEYS),
        ("docker", server::DOCKER_KEYS),
        ("pool", pool::LAYER_KEYS),
        ("security", pool::SECURITY_KEYS),
    ];
    sections
        .iter()
        .flat_map(|(section, keys)| keys.iter().map(move |k| format!("{section}.{k}")))
        .filter(|k| k != "pool.security")
        .collect()
}

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use toml_edit::ImDocument;

pub use error::{ConfigError, Problem};
pub use mounts::{Mount, MountKind};
pub use pool::{PoolConfig, SecurityConfig, WORKSPACE_PATH};
pub use server::{
    engine_address, is_local_engine, DockerConfig, ServerConfig, DEFAULT_ENGINE, DEFAULT_LISTEN,
};
pub use values::{
    duration_problem, parse_size, ExecMode, ExecTransport, NetworkMode, OnExhausted, WorkspaceMode,
    DURATION_MAX, DURATION_STEP,
};

use read::{Ctx, Pos};

/// The whole daemon configuration, with every pool already resolved so that the rest of
/// the daemon never has to know about `[defaults]` or built-in values.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// `[server]`, or its built-in defaults when the table is absent.
    pub server: ServerConfig,
    /// `[docker]`, or its built-in defaults when the table is absent.
    pub docker: DockerConfig,
    /// Every `[pools.NAME]` by name (at least one), merged over `[defaults]`.
    pub pools: BTreeMap<String, PoolConfig>,
}

impl Config {
    /// Reads and parses `path`; the problems are labelled with `path` as given.
    ///
    /// # Errors
    /// [`ConfigError::Io`] when the file cannot be read, [`ConfigError::Invalid`] with
    /// every problem found, in file order, when it is not a valid config.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: path.to_path_buf(),
            source: Arc::new(source),
        })?;
        Config::parse(&text, &path.display().to_string())
    }

    /// `file_name` only labels the problems, so tests and reloads can parse from memory.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] with every problem found, in file order. A TOML syntax
    /// error stops the reading, so it is then the only problem.
    pub fn parse(text: &str, file_name: &str) -> Result<Config, ConfigError> {
        let mut cx = Ctx::new(text, file_name, document::keys_of);
        let doc = match ImDocument::parse(text) {
            Ok(doc) => doc,
            Err(e) => {
                let at = cx.span_pos(e.span()).unwrap_or(Pos { line: 1, col: 1 });
                let message = e.message().trim().replace('\n', ": ");
                cx.report(at, format!("invalid TOML: {message}"));
                return Err(ConfigError::Invalid(cx.into_problems()));
            }
        };
        let parts = document::document(&mut cx, doc.as_table());
        let problems = cx.into_problems();
        if problems.is_empty() {
            Ok(Config {
                server: parts.server,
                docker: parts.docker,
                pools: parts.pools,
            })
        } else {
            Err(ConfigError::Invalid(problems))
        }
    }
}
