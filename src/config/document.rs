//! The top level of the file: which tables exist, the pool names, and the one place that
//! knows every key table (for "belongs in [server]" suggestions).

use std::collections::BTreeMap;

use toml_edit::TableLike;

use super::checks::check_pool_name;
use super::pool::{resolve, Layer, PoolConfig, LAYER_KEYS, SECURITY_KEYS};
use super::read::{Ctx, Pos};
use super::server::{docker, server, DockerConfig, ServerConfig, DOCKER_KEYS, SERVER_KEYS};
use super::suggest::Section;

pub(super) const TOP_KEYS: &[&str] = &["server", "docker", "defaults", "pools"];

const NO_POOLS: &str = "no pools defined: add at least one [pools.NAME] table with an image";

/// The known keys of each kind of table, handed to [`Ctx::new`].
pub(super) fn keys_of(section: Section) -> &'static [&'static str] {
    match section {
        Section::Top => TOP_KEYS,
        Section::Server => SERVER_KEYS,
        Section::Docker => DOCKER_KEYS,
        Section::Layer => LAYER_KEYS,
        Section::Security => SECURITY_KEYS,
    }
}

/// Everything a `Config` is made of; `mod.rs` assembles it so that this module does not
/// depend on its parent.
pub(super) struct Parts {
    pub(super) server: ServerConfig,
    pub(super) docker: DockerConfig,
    pub(super) pools: BTreeMap<String, PoolConfig>,
}

/// Reads the whole file. Problems land in `cx`; the parts are only meaningful when there
/// are none.
pub(super) fn document(cx: &mut Ctx<'_>, root: &dyn TableLike) -> Parts {
    let mut server_config = ServerConfig::default();
    let mut docker_config = DockerConfig::default();
    let mut defaults = Layer::default();
    let mut pools = Vec::new();
    let mut saw_pools = false;
    cx.local_engine = local_engine(root);
    for e in cx.entries(root, "") {
        match e.name {
            "server" => {
                if let Some(t) = cx.table(&e) {
                    server_config = server(cx, t);
                }
            }
            "docker" => {
                if let Some(t) = cx.table(&e) {
                    docker_config = docker(cx, t);
                }
            }
            "defaults" => {
                if let Some(t) = cx.table(&e) {
                    defaults = Layer::read(cx, t, "defaults");
                }
            }
            "pools" => {
                saw_pools = true;
                if let Some(t) = cx.table(&e) {
                    if t.is_empty() {
                        cx.report(e.at, NO_POOLS);
                    }
                    pools = pool_layers(cx, t);
                }
            }
            _ => cx.unknown(&e, Section::Top, ""),
        }
    }
    if !saw_pools {
        cx.report(Pos { line: 1, col: 1 }, NO_POOLS);
    }
    let pools = pools
        .into_iter()
        .map(|(name, at, layer)| {
            let pool = resolve(cx, &name, at, &layer, &defaults);
            (name, pool)
        })
        .collect();
    Parts {
        server: server_config,
        docker: docker_config,
        pools,
    }
}

/// Whether the engine runs on this host (`[docker] host`, else `DOCKER_HOST`, as
/// [`super::server::engine_address`] resolves them, is a `unix://` socket). Only then do bind-mount sources name paths this process can check.
fn local_engine(root: &dyn TableLike) -> bool {
    let written = root
        .get("docker")
        .and_then(|d| d.as_table_like())
        .and_then(|t| t.get("host"))
        .and_then(|h| h.as_str())
        .map(str::to_string);
    super::server::is_local_engine(&super::server::engine_address(written.as_deref()))
}

/// Each `[pools.NAME]` as written, with where its header is.
fn pool_layers(cx: &mut Ctx<'_>, table: &dyn TableLike) -> Vec<(String, Pos, Layer)> {
    let mut pools = Vec::new();
    for e in cx.entries(table, "pools") {
        if let Err(why) = check_pool_name(e.name) {
            let mut message = format!("pool name \"{}\" {why}", e.name);
            let lower = e.name.to_ascii_lowercase();
            if lower != e.name && check_pool_name(&lower).is_ok() {
                message += &format!(" (try \"{lower}\")");
            }
            cx.report(e.key_at, message);
        }
        if let Some(t) = cx.table(&e) {
            let layer = Layer::read(cx, t, &e.path);
            pools.push((e.name.to_string(), e.at, layer));
        }
    }
    pools
}
