//! The `mounts` pool key: bind mounts, named volumes and tmpfs, each checked where it is
//! written (an absolute target that is not `/`, `/tmp`, the shim's directory or a
//! duplicate; a bind source that exists when the engine is local; read-only binds by
//! default). Whether a target collides with the workdir is a rule between keys, checked in
//! `pool::resolve`.

use std::fmt;

use serde::Serialize;
use toml_edit::{Item, TableLike, Value};

use super::read::{Ctx, Entry, Setting, Slot};

/// Where the shim lives in every container; nothing may be mounted over it.
const SHIM_DIR: &str = "/.warmpool";

/// What kind of mount.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MountKind {
    /// A host path (`source`), read-only unless `read_only = false`.
    Bind,
    /// A named engine volume (`source`), created by the engine when missing.
    Volume,
    /// A tmpfs of `size` (the engine's default when unset).
    Tmpfs,
}

impl MountKind {
    /// As written in `pools.toml`.
    pub fn as_str(self) -> &'static str {
        match self {
            MountKind::Bind => "bind",
            MountKind::Volume => "volume",
            MountKind::Tmpfs => "tmpfs",
        }
    }
}

impl fmt::Display for MountKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One entry of a pool's `mounts`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Mount {
    /// `type` in the file.
    pub kind: MountKind,
    /// The host path (bind) or the volume name (volume); `None` for tmpfs.
    pub source: Option<String>,
    /// Absolute path in the container.
    pub target: String,
    /// Mounted read-only (the default of binds).
    pub read_only: bool,
    /// Bytes of a tmpfs; `None` for the engine's default.
    pub size: Option<u64>,
}

const MOUNT_KEYS: &[&str] = &["type", "source", "target", "read_only", "size"];

const EXPECTED: &str = "a list of mounts such as [{type = \"bind\", source = \"/srv/repo\", \
                        target = \"/repo\"}]";

/// Reads `mounts`: an array of inline tables, or `[[pools.NAME.mounts]]` tables.
pub(super) fn read_mounts(cx: &mut Ctx<'_>, e: &Entry<'_>) -> Slot<Vec<Mount>> {
    let tables: Vec<&dyn TableLike> = match e.item {
        Item::ArrayOfTables(a) => a.iter().map(|t| t as &dyn TableLike).collect(),
        Item::Value(Value::Array(a)) => {
            let mut out = Vec::new();
            let mut ok = true;
            for (i, v) in a.iter().enumerate() {
                match v.as_inline_table() {
                    Some(t) => out.push(t as &dyn TableLike),
                    None => {
                        let path = format!("{}[{i}]", e.path);
                        cx.wrong_type(
                            &path,
                            v,
                            "a table such as {type = \"tmpfs\", target = \"/scratch\"}",
                            e.at,
                        );
                        ok = false;
                    }
                }
            }
            if !ok {
                return Slot::Bad;
            }
            out
        }
        Item::Value(v) => {
            cx.wrong_type(&e.path, v, EXPECTED, e.at);
            return Slot::Bad;
        }
        _ => {
            cx.report(e.at, format!("{} must be {EXPECTED}", e.path));
            return Slot::Bad;
        }
    };
    let mut mounts = Vec::new();
    let mut ok = true;
    for (i, t) in tables.into_iter().enumerate() {
        let path = format!("{}[{i}]", e.path);
        match read_one(cx, t, &path, e) {
            Some(m) => {
                if let Some(j) = mounts.iter().position(|o: &Mount| o.target == m.target) {
                    cx.report(
                        e.at,
                        format!(
                            "{path}.target ({:?}) is also the target of {}[{j}]: each target takes one mount",
                            m.target, e.path
                        ),
                    );
                    ok = false;
                }
                mounts.push(m);
            }
            None => ok = false,
        }
    }
    if !ok {
        return Slot::Bad;
    }
    Slot::Set(Setting {
        value: mounts,
        at: e.at,
        path: e.path.clone(),
        shown: String::new(),
    })
}

fn read_one(cx: &mut Ctx<'_>, t: &dyn TableLike, path: &str, outer: &Entry<'_>) -> Option<Mount> {
    let mut kind = Slot::Unset;
    let mut source: Slot<String> = Slot::Unset;
    let mut target: Slot<String> = Slot::Unset;
    let mut read_only = Slot::Unset;
    let mut size = Slot::Unset;
    let mut ok = true;
    let entries = cx.entries(t, path);
    let at = entries.first().map_or(outer.at, |k| k.key_at);
    for k in entries {
        match k.name {
            "type" => {
                kind = cx.choice(
                    &k,
                    &[
                        ("bind", MountKind::Bind),
                        ("volume", MountKind::Volume),
                        ("tmpfs", MountKind::Tmpfs),
                    ],
                )
            }
            "source" => {
                source = cx.text(&k, "a host path or a volume name", |s| {
                    if s.is_empty() {
                        Err("must not be empty".to_string())
                    } else {
                        Ok(())
                    }
                })
            }
            "target" => target = cx.text(&k, "an absolute path such as \"/repo\"", check_target),
            "read_only" => read_only = cx.boolean(&k),
            "size" => size = cx.size(&k, 1, ""),
            other => {
                let message = format!(
                    "unknown key {path}.{other}: a mount takes {}",
                    MOUNT_KEYS.join(", ")
                );
                cx.report(k.key_at, message);
                ok = false;
            }
        }
    }
    let kind = match kind {
        Slot::Set(s) => s.value,
        Slot::Unset => {
            cx.report(
                at,
                format!("{path}.type is not set: write type = \"bind\", \"volume\" or \"tmpfs\""),
            );
            return None;
        }
        Slot::Bad => return None,
    };
    let target = match target {
        Slot::Set(s) => s.value,
        Slot::Unset => {
            cx.report(
                at,
                format!("{path}.target is not set: write the absolute path in the container, such as target = \"/data\""),
            );
            return None;
        }
        Slot::Bad => return None,
    };
    let source = match (kind, source) {
        (_, Slot::Bad) => return None,
        (MountKind::Tmpfs, Slot::Set(s)) => {
            cx.report(
                s.at,
                format!(
                    "{path}.source ({}) does not apply to a tmpfs mount: remove it",
                    s.shown
                ),
            );
            return None;
        }
        (MountKind::Tmpfs, Slot::Unset) => None,
        (_, Slot::Unset) => {
            let example = if kind == MountKind::Bind {
                "source = \"/srv/repo\" (a host path)"
            } else {
                "source = \"pip-cache\" (a volume name)"
            };
            cx.report(
                at,
                format!("{path}.source is not set: a {kind} mount needs one, such as {example}"),
            );
            return None;
        }
        (MountKind::Bind, Slot::Set(s)) => {
            if !s.value.starts_with('/') || s.value.split('/').any(|c| c == "..") {
                cx.report(
                    s.at,
                    format!("{path}.source ({}) must be an absolute host path without \"..\", such as \"/srv/repo\"", s.shown),
                );
                return None;
            }
            if cx.local_engine && !std::path::Path::new(&s.value).exists() {
                cx.report(
                    s.at,
                    format!(
                        "{path}.source ({}) does not exist on this host: create it (mkdir -p {}) or fix the path; the engine would otherwise create an empty root-owned directory",
                        s.shown, s.value
                    ),
                );
                return None;
            }
            Some(s.value)
        }
        (MountKind::Volume, Slot::Set(s)) => {
            let mut chars = s.value.chars();
            let good = chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
                && chars.all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
            if !good {
                cx.report(
                    s.at,
                    format!("{path}.source ({}) must be a volume name ([a-zA-Z0-9][a-zA-Z0-9_.-]*), such as \"pip-cache\"; use type = \"bind\" for a host path", s.shown),
                );
                return None;
            }
            Some(s.value)
        }
    };
    let size = match (kind, size) {
        (_, Slot::Bad) => return None,
        (MountKind::Tmpfs, s) => s.or(0),
        (_, Slot::Set(s)) => {
            cx.report(
                s.at,
                format!(
                    "{path}.size ({}) applies to tmpfs mounts only: remove it",
                    s.shown
                ),
            );
            return None;
        }
        (_, Slot::Unset) => 0,
    };
    let read_only = match read_only {
        Slot::Bad => return None,
        r => r.or(kind == MountKind::Bind),
    };
    ok.then_some(Mount {
        kind,
        source,
        target,
        read_only,
        size: (size > 0).then_some(size),
    })
}

/// A mount target: absolute, not `/`, and clear of what the daemon mounts itself.
fn check_target(s: &str) -> Result<(), String> {
    super::checks::check_absolute(s)?;
    if s.split('/').any(|c| c == "..") {
        return Err("must not contain \"..\"".to_string());
    }
    let t = s.trim_end_matches('/');
    if t.is_empty() {
        return Err(
            "must not be \"/\": the root is the image's; mount at a directory such as \"/data\""
                .to_string(),
        );
    }
    if within(t, SHIM_DIR) {
        return Err(format!(
            "must not be at or under {SHIM_DIR}, where the daemon mounts the shim: choose another path such as \"/data\""
        ));
    }
    if within(t, "/tmp") {
        return Err("must not be at or under /tmp, which is a tmpfs of the daemon's (wiped between tasks): choose another path such as \"/scratch\"".to_string());
    }
    Ok(())
}

/// `path` is `dir` or inside it (both without a trailing slash).
pub(super) fn within(path: &str, dir: &str) -> bool {
    path == dir || path.starts_with(&format!("{dir}/"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, ConfigError};

    fn problems(mounts: &str) -> Vec<String> {
        let text = format!("[pools.coder]\nimage = \"img\"\nmounts = {mounts}\n");
        match Config::parse(&text, "pools.toml") {
            Ok(_) => vec![],
            Err(ConfigError::Invalid(p)) => p.into_iter().map(|p| p.to_string()).collect(),
            Err(e) => panic!("{e}"),
        }
    }

    fn one(mounts: &str, fragments: &[&str]) {
        let p = problems(mounts);
        assert_eq!(p.len(), 1, "{p:#?}");
        for f in fragments {
            assert!(p[0].contains(f), "{:?} lacks {f:?}", p[0]);
        }
    }

    #[test]
    fn the_three_kinds_read_with_their_defaults() {
        let text = r#"[pools.coder]
image = "img"
mounts = [
  {type = "bind", source = "/", target = "/repo"},
  {type = "bind", source = "/", target = "/rw", read_only = false},
  {type = "volume", source = "pip-cache", target = "/cache"},
  {type = "tmpfs", target = "/scratch", size = "256MiB"},
]
"#;
        let c = Config::parse(text, "pools.toml").unwrap();
        let m = &c.pools["coder"].mounts;
        assert_eq!(m.len(), 4);
        assert!(m[0].read_only, "binds are read-only by default");
        assert!(!m[1].read_only);
        assert_eq!((m[2].kind, m[2].read_only), (MountKind::Volume, false));
        assert_eq!(m[3].size, Some(256 * 1024 * 1024));
        // [[pools.NAME.mounts]] tables read the same.
        let text = "[pools.coder]\nimage = \"img\"\n[[pools.coder.mounts]]\ntype = \"tmpfs\"\ntarget = \"/s\"\n";
        let c = Config::parse(text, "pools.toml").unwrap();
        assert_eq!(c.pools["coder"].mounts[0].target, "/s");
    }

    #[test]
    fn bad_mounts_name_the_field_the_value_and_the_fix() {
        one(
            r#"[{type = "tmpfs", target = "/"}]"#,
            &[
                "pools.coder.mounts[0].target (\"/\")",
                "must not be \"/\"",
                "/data",
            ],
        );
        one(
            r#"[{type = "bind", source = "/no/such/dir-wp", target = "/repo"}]"#,
            &[
                "pools.coder.mounts[0].source (\"/no/such/dir-wp\") does not exist",
                "mkdir -p",
            ],
        );
        one(
            r#"[{type = "tmpfs", target = "/work/x"}]"#,
            &["pools.coder.mounts[0].target (\"/work/x\") overlaps the workdir"],
        );
        one(
            r#"[{type = "tmpfs", target = "/.warmpool"}]"#,
            &["/.warmpool", "shim"],
        );
        one(r#"[{type = "tmpfs", target = "data"}]"#, &["absolute"]);
        one(
            r#"[{type = "nfs", target = "/d"}]"#,
            &["mounts[0].type", "\"bind\""],
        );
        one(
            r#"[{type = "bind", target = "/d"}]"#,
            &["mounts[0].source is not set"],
        );
        one(
            r#"[{type = "tmpfs", source = "x", target = "/d"}]"#,
            &["does not apply to a tmpfs"],
        );
        one(
            r#"[{type = "volume", source = "/srv", target = "/d"}]"#,
            &["volume name", "type = \"bind\""],
        );
        one(
            r#"[{type = "volume", source = "v", target = "/d", size = "1MiB"}]"#,
            &["tmpfs mounts only"],
        );
        one(
            r#"[{type = "tmpfs", target = "/d"}, {type = "tmpfs", target = "/d"}]"#,
            &["mounts[1].target", "also the target of"],
        );
        one(
            r#"[{type = "tmpfs", target = "/d", targt = "/d"}]"#,
            &["unknown key", "targt"],
        );
        one(r#""/d""#, &["must be a list of mounts"]);
    }

    #[test]
    fn mounts_are_part_of_the_spec_hash() {
        let mut spec = crate::runtime::ContainerSpec::default();
        let before = spec.hash();
        spec.mounts.push(Mount {
            kind: MountKind::Tmpfs,
            source: None,
            target: "/s".into(),
            read_only: false,
            size: None,
        });
        assert_ne!(spec.hash(), before);
    }
}

#[cfg(test)]
mod workspace_tests {
    use crate::config::{Config, ConfigError};

    #[test]
    fn a_persistent_workspace_keeps_the_workdir_and_mounts_off_workspace() {
        let text = "[pools.w]\nimage = \"img\"\nsession_workspace = \"persistent\"\nworkdir = \"/workspace\"\nmounts = [{type = \"tmpfs\", target = \"/workspace/x\"}]\n";
        let Err(ConfigError::Invalid(p)) = Config::parse(text, "pools.toml") else {
            panic!("accepted");
        };
        let p: Vec<String> = p.iter().map(|p| p.to_string()).collect();
        assert_eq!(p.len(), 3, "{p:#?}");
        assert!(p[0].contains("overlaps the workdir"), "{p:#?}");
        assert!(
            p[1].contains("mounts[0].target (\"/workspace/x\")"),
            "{p:#?}"
        );
        let ok = "[pools.w]\nimage = \"img\"\nsession_workspace = \"persistent\"\n";
        assert!(Config::parse(ok, "pools.toml").is_ok());
    }
}
