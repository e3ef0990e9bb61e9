//! Reading one value at a time over toml_edit's span-keeping tree. Every key is checked
//! where it is written, so a bad `[defaults]` value is reported once rather than once per
//! pool that inherits it, and every problem carries the line and column of the text at
//! fault. The readers here know value shapes (durations, sizes, counts, commands) but no
//! key names: those live in the key tables of `pool.rs` and `server.rs`.

use std::collections::BTreeMap;
use std::ops::Range;
use std::time::Duration;

use toml_edit::{Item, TableLike, Value};

use super::error::Problem;
use super::suggest::{did_you_mean, looks_like_pool, KeysOf, Section};
use super::values::{human_size, parse_size};
use crate::scaling::ScheduleFloor;

/// A place in the file, 1-based; the column counts characters, as editors do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct Pos {
    pub(super) line: usize,
    pub(super) col: usize,
}

/// A value as one layer (`[defaults]` or `[pools.NAME]`) wrote it. `Bad` is kept apart
/// from `Unset` so that a broken value does not fall back to a default and then trip a
/// cross-field check the operator never wrote.
#[derive(Debug, Clone, Default)]
pub(super) enum Slot<T> {
    #[default]
    Unset,
    Bad,
    Set(Setting<T>),
}

#[derive(Debug, Clone)]
pub(super) struct Setting<T> {
    pub(super) value: T,
    pub(super) at: Pos,
    /// Where it was written (`defaults.min` or `pools.coder.min`), for messages.
    pub(super) path: String,
    /// As written in the file, so messages quote the operator's own text.
    pub(super) shown: String,
}

impl<T: Clone> Slot<T> {
    pub(super) fn or(&self, builtin: T) -> T {
        match self {
            Slot::Set(s) => s.value.clone(),
            _ => builtin,
        }
    }

    /// Where the value was written, if it was.
    pub(super) fn at(&self) -> Option<Pos> {
        match self {
            Slot::Set(s) => Some(s.at),
            _ => None,
        }
    }

    pub(super) fn is_bad(&self) -> bool {
        matches!(self, Slot::Bad)
    }

    /// How close to the pool the value was written; problems point at the closest one.
    pub(super) fn rank(&self) -> u8 {
        match self {
            Slot::Set(s) if s.path.starts_with("pools") => 2,
            Slot::Set(_) => 1,
            _ => 0,
        }
    }
}

impl<T> Slot<T> {
    /// Turns what a reader produced into the field's type (`Some` for an optional field,
    /// a `NetworkMode` for a network name), keeping where and how it was written.
    pub(super) fn map<U>(self, f: impl FnOnce(T) -> U) -> Slot<U> {
        match self {
            Slot::Unset => Slot::Unset,
            Slot::Bad => Slot::Bad,
            Slot::Set(s) => Slot::Set(Setting {
                value: f(s.value),
                at: s.at,
                path: s.path,
                shown: s.shown,
            }),
        }
    }
}

/// The pool's own setting wins over `[defaults]`; a `Bad` pool value stays bad rather than
/// falling back, so that it is not checked against its neighbours a second time.
pub(super) fn layered<'s, T>(pool: &'s Slot<T>, defaults: &'s Slot<T>) -> &'s Slot<T> {
    match pool {
        Slot::Unset => defaults,
        other => other,
    }
}

/// The merge of most keys: the closest layer that wrote the key wins, else the built-in.
pub(super) fn overlay<T: Clone>(pool: &Slot<T>, defaults: &Slot<T>, builtin: T) -> T {
    layered(pool, defaults).or(builtin)
}

/// One key of a table with everything needed to report on it.
pub(super) struct Entry<'d> {
    pub(super) name: &'d str,
    pub(super) path: String,
    pub(super) key_at: Pos,
    /// The value, or the header of a table.
    pub(super) at: Pos,
    pub(super) item: &'d Item,
}

/// The reading of one file: the text (for positions and for quoting values as written)
/// and the problems found so far. Readers never stop at a problem; they report it and
/// return `Slot::Bad`, so one pass finds everything.
pub(super) struct Ctx<'t> {
    text: &'t str,
    file: &'t str,
    line_starts: Vec<usize>,
    /// Unsorted and deduplicated; [`Ctx::into_problems`] sorts them into file order.
    problems: Vec<Problem>,
    keys_of: KeysOf,
    /// The engine runs on this host (`docker.host` and `DOCKER_HOST` unset or `unix://`),
    /// so bind-mount sources can be checked for existence.
    pub(super) local_engine: bool,
}

/// A rule for a string value: `Err` holds the end of the message, such as "must not be
/// empty: ...", which the reader prefixes with the key and the value as written.
pub(super) type Check = fn(&str) -> Result<(), String>;

impl<'t> Ctx<'t> {
    /// `keys_of` lists the known keys of each table, for the suggestions of
    /// [`Ctx::unknown`].
    pub(super) fn new(text: &'t str, file: &'t str, keys_of: KeysOf) -> Self {
        let line_starts = std::iter::once(0)
            .chain(text.match_indices('\n').map(|(i, _)| i + 1))
            .collect();
        Ctx {
            text,
            file,
            line_starts,
            problems: Vec::new(),
            keys_of,
            local_engine: true,
        }
    }

    /// The problems in file order; empty when the file was fine.
    pub(super) fn into_problems(self) -> Vec<Problem> {
        let mut problems = self.problems;
        problems.sort_by_key(|p| (p.line, p.col));
        problems
    }

    pub(super) fn pos(&self, offset: usize) -> Pos {
        let line = self.line_starts.partition_point(|&s| s <= offset).max(1);
        let start = self.line_starts[line - 1];
        let col = self
            .text
            .get(start..offset)
            .map_or(offset.saturating_sub(start), |s| s.chars().count());
        Pos { line, col: col + 1 }
    }

    pub(super) fn span_pos(&self, span: Option<Range<usize>>) -> Option<Pos> {
        span.map(|r| self.pos(r.start))
    }

    pub(super) fn value_pos(&self, v: &Value, fallback: Pos) -> Pos {
        self.span_pos(v.span()).unwrap_or(fallback)
    }

    /// Identical problems are dropped: a `[defaults]` value that conflicts with another
    /// `[defaults]` value would otherwise be reported once per pool.
    pub(super) fn report(&mut self, at: Pos, message: impl Into<String>) {
        let problem = Problem {
            file: self.file.to_string(),
            line: at.line,
            col: at.col,
            message: message.into(),
        };
        if !self.problems.contains(&problem) {
            self.problems.push(problem);
        }
    }

    /// The value as the operator wrote it, kept short enough for one line.
    pub(super) fn shown(&self, v: &Value) -> String {
        let raw = v
            .span()
            .and_then(|r| self.text.get(r))
            .map(str::to_string)
            .unwrap_or_else(|| v.to_string().trim().to_string());
        let flat = if raw.contains('\n') {
            raw.split_whitespace().collect::<Vec<_>>().join(" ")
        } else {
            raw
        };
        if flat.chars().count() > 60 {
            format!("{}...", flat.chars().take(57).collect::<String>())
        } else {
            flat
        }
    }

    pub(super) fn entries<'d>(&self, table: &'d dyn TableLike, prefix: &str) -> Vec<Entry<'d>> {
        // Parsed keys always carry a span; the fallback only keeps this total.
        let fallback = Pos { line: 1, col: 1 };
        table
            .iter()
            .map(|(name, item)| {
                let key_at = table
                    .get_key_value(name)
                    .and_then(|(k, _)| self.span_pos(k.span()))
                    .unwrap_or(fallback);
                let at = self.span_pos(item.span()).unwrap_or(key_at);
                Entry {
                    name,
                    path: join(prefix, name),
                    key_at,
                    at,
                    item,
                }
            })
            .collect()
    }

    pub(super) fn unknown(&mut self, e: &Entry<'_>, section: Section, prefix: &str) {
        let mut message = format!("unknown key {}", e.path);
        if let Some(home) = Section::ALL
            .into_iter()
            .find(|s| *s != section && (self.keys_of)(*s).contains(&e.name))
        {
            message += &format!(": {} belongs in {}", e.name, home.place(section, prefix));
        } else if section == Section::Top && looks_like_pool(e.item) {
            message += &format!(": pools are declared as [pools.{}]", e.name);
        } else if let Some(near) = did_you_mean(e.name, (self.keys_of)(section)) {
            message += &format!(": did you mean {near}?");
        } else if section == Section::Layer {
            message += ": remove it or fix its spelling";
        } else {
            message += &format!(
                ": remove it; {} takes {}",
                if prefix.is_empty() {
                    "the top level"
                } else {
                    prefix
                },
                (self.keys_of)(section).join(", ")
            );
        }
        self.report(e.key_at, message);
    }

    pub(super) fn table<'d>(&mut self, e: &Entry<'d>) -> Option<&'d dyn TableLike> {
        match e.item.as_table_like() {
            Some(t) => Some(t),
            None => {
                let what = match e.item {
                    Item::ArrayOfTables(_) => "an array of tables".to_string(),
                    Item::Value(v) => format!("{} ({})", kind(v), self.shown(v)),
                    _ => "empty".to_string(),
                };
                self.report(
                    e.at,
                    format!(
                        "{} must be a table such as [{}], not {what}",
                        e.path, e.path
                    ),
                );
                None
            }
        }
    }

    pub(super) fn value<'d>(&mut self, e: &Entry<'d>, expected: &str) -> Option<&'d Value> {
        match e.item {
            Item::Value(v) => Some(v),
            Item::Table(_) => {
                self.report(e.at, format!("{} must be {expected}, not a table", e.path));
                None
            }
            Item::ArrayOfTables(_) => {
                let message = format!("{} must be {expected}, not an array of tables", e.path);
                self.report(e.at, message);
                None
            }
            Item::None => None,
        }
    }

    pub(super) fn wrong_type(&mut self, path: &str, v: &Value, expected: &str, fallback: Pos) {
        let message = format!(
            "{path} ({}) must be {expected}, not {}",
            self.shown(v),
            kind(v)
        );
        self.report(self.value_pos(v, fallback), message);
    }

    /// Reports `{path} ({value}) {tail}` at the value.
    pub(super) fn bad_value(&mut self, path: &str, v: &Value, tail: &str, fallback: Pos) {
        let message = format!("{path} ({}) {tail}", self.shown(v));
        self.report(self.value_pos(v, fallback), message);
    }

    pub(super) fn set<T>(&self, e: &Entry<'_>, v: &Value, value: T) -> Slot<T> {
        Slot::Set(Setting {
            value,
            at: self.value_pos(v, e.at),
            path: e.path.clone(),
            shown: self.shown(v),
        })
    }

    pub(super) fn text(&mut self, e: &Entry<'_>, expected: &str, check: Check) -> Slot<String> {
        let Some(v) = self.value(e, expected) else {
            return Slot::Bad;
        };
        let Some(s) = v.as_str() else {
            self.wrong_type(&e.path, v, expected, e.at);
            return Slot::Bad;
        };
        match check(s) {
            Ok(()) => self.set(e, v, s.to_string()),
            Err(tail) => {
                self.bad_value(&e.path, v, &tail, e.at);
                Slot::Bad
            }
        }
    }

    pub(super) fn count<T: TryFrom<i64>>(
        &mut self,
        e: &Entry<'_>,
        least: i64,
        why: &str,
    ) -> Slot<T> {
        let expected = "a whole number";
        let Some(v) = self.value(e, expected) else {
            return Slot::Bad;
        };
        let Some(n) = v.as_integer() else {
            self.wrong_type(&e.path, v, expected, e.at);
            return Slot::Bad;
        };
        if n < least {
            let tail = if least == 0 {
                "must not be negative".to_string()
            } else {
                format!("must be at least {least}{why}")
            };
            self.bad_value(&e.path, v, &tail, e.at);
            return Slot::Bad;
        }
        match T::try_from(n) {
            Ok(t) => self.set(e, v, t),
            Err(_) => {
                self.bad_value(&e.path, v, "is too large", e.at);
                Slot::Bad
            }
        }
    }

    /// `zero` says why zero makes no sense for this field, or `None` when it does.
    pub(super) fn duration(&mut self, e: &Entry<'_>, zero: Option<&str>) -> Slot<Duration> {
        let expected = "a duration string such as \"30s\", \"5m\" or \"1h\"";
        let Some(v) = self.value(e, expected) else {
            return Slot::Bad;
        };
        let Some(s) = v.as_str() else {
            self.wrong_type(&e.path, v, expected, e.at);
            return Slot::Bad;
        };
        match humantime::parse_duration(s.trim()) {
            Ok(d) if d.is_zero() && zero.is_some() => {
                let tail = format!("must be longer than zero: {}", zero.unwrap_or_default());
                self.bad_value(&e.path, v, &tail, e.at);
                Slot::Bad
            }
            Ok(d) if super::values::duration_problem(d).is_some() => {
                let tail = super::values::duration_problem(d).unwrap_or_default();
                self.bad_value(&e.path, v, &tail, e.at);
                Slot::Bad
            }
            Ok(d) => self.set(e, v, d),
            Err(err) => {
                let reason = match err {
                    humantime::DurationError::UnknownUnit { unit, .. } => {
                        format!("unknown unit \"{unit}\"")
                    }
                    other => other.to_string(),
                };
                let tail = format!(
                    "is not a duration ({reason}): write a number and a unit, such as \
                     \"500ms\", \"30s\", \"5m\", \"1h\" or \"1h 30m\""
                );
                self.bad_value(&e.path, v, &tail, e.at);
                Slot::Bad
            }
        }
    }

    pub(super) fn size(&mut self, e: &Entry<'_>, least: u64, why: &str) -> Slot<u64> {
        let expected = "a size string such as \"512MiB\"";
        let Some(v) = self.value(e, expected) else {
            return Slot::Bad;
        };
        let bytes = match v {
            Value::String(s) => {
                parse_size(s.value()).map_err(|err| format!("is not a valid size: {err}"))
            }
            Value::Integer(i) => u64::try_from(*i.value())
                .map_err(|_| "must not be negative; write a size such as \"512MiB\"".to_string()),
            _ => {
                self.wrong_type(&e.path, v, expected, e.at);
                return Slot::Bad;
            }
        };
        match bytes {
            Ok(b) if b < least => {
                let tail = format!(
                    "is too small: it must be at least {}{why}",
                    human_size(least)
                );
                self.bad_value(&e.path, v, &tail, e.at);
                Slot::Bad
            }
            Ok(b) => self.set(e, v, b),
            Err(tail) => {
                self.bad_value(&e.path, v, &tail, e.at);
                Slot::Bad
            }
        }
    }

    /// Integers are accepted too: `cpus = 2` is a perfectly clear number of CPUs.
    pub(super) fn number(&mut self, e: &Entry<'_>, expected: &str) -> Option<(f64, Value)> {
        let v = self.value(e, expected)?;
        match v {
            Value::Float(f) => Some((*f.value(), v.clone())),
            Value::Integer(i) => Some((*i.value() as f64, v.clone())),
            _ => {
                self.wrong_type(&e.path, v, expected, e.at);
                None
            }
        }
    }

    pub(super) fn fraction(&mut self, e: &Entry<'_>) -> Slot<f64> {
        let Some((f, v)) = self.number(e, "a fraction such as 0.8") else {
            return Slot::Bad;
        };
        if f > 0.0 && f <= 1.0 {
            self.set(e, &v, f)
        } else {
            let tail = "must be above 0 and at most 1: it is a fraction of utilization \
                        (busy / live containers)";
            self.bad_value(&e.path, &v, tail, e.at);
            Slot::Bad
        }
    }

    pub(super) fn cpus(&mut self, e: &Entry<'_>) -> Slot<f64> {
        let Some((f, v)) = self.number(e, "a number of CPUs such as 0.5 or 2") else {
            return Slot::Bad;
        };
        if f.is_finite() && f > 0.0 {
            self.set(e, &v, f)
        } else {
            let tail = "must be a number of CPUs above 0, such as 0.5 or 2; leave cpus out \
                        for no limit";
            self.bad_value(&e.path, &v, tail, e.at);
            Slot::Bad
        }
    }

    pub(super) fn boolean(&mut self, e: &Entry<'_>) -> Slot<bool> {
        let expected = "true or false";
        let Some(v) = self.value(e, expected) else {
            return Slot::Bad;
        };
        match v.as_bool() {
            Some(b) => self.set(e, v, b),
            None => {
                self.wrong_type(&e.path, v, expected, e.at);
                Slot::Bad
            }
        }
    }

    pub(super) fn choice<T: Copy>(&mut self, e: &Entry<'_>, options: &[(&str, T)]) -> Slot<T> {
        let names: Vec<String> = options.iter().map(|(n, _)| format!("\"{n}\"")).collect();
        let expected = format!("one of {}", names.join(", "));
        let Some(v) = self.value(e, &expected) else {
            return Slot::Bad;
        };
        let Some(s) = v.as_str() else {
            self.wrong_type(&e.path, v, &expected, e.at);
            return Slot::Bad;
        };
        match options.iter().find(|(n, _)| *n == s) {
            Some((_, t)) => self.set(e, v, *t),
            None => {
                self.bad_value(&e.path, v, &format!("must be {expected}"), e.at);
                Slot::Bad
            }
        }
    }

    /// A list of strings, each checked in place so the problem points at the element.
    pub(super) fn strings(
        &mut self,
        e: &Entry<'_>,
        expected: &str,
        check: Check,
    ) -> Option<Vec<String>> {
        let v = self.value(e, expected)?;
        let Some(array) = v.as_array() else {
            self.wrong_type(&e.path, v, expected, e.at);
            return None;
        };
        let mut out = Vec::new();
        let mut ok = true;
        for (i, item) in array.iter().enumerate() {
            let path = format!("{}[{i}]", e.path);
            match item.as_str() {
                Some(s) => match check(s) {
                    Ok(()) => out.push(s.to_string()),
                    Err(tail) => {
                        self.bad_value(&path, item, &tail, e.at);
                        ok = false;
                    }
                },
                None => {
                    self.wrong_type(&path, item, "a string", e.at);
                    ok = false;
                }
            }
        }
        ok.then_some(out)
    }

    /// A list kept as a whole (a pool's list replaces the defaults' list, it does not add).
    pub(super) fn list(
        &mut self,
        e: &Entry<'_>,
        expected: &str,
        check: Check,
    ) -> Slot<Vec<String>> {
        match (self.strings(e, expected, check), e.item) {
            (Some(items), Item::Value(v)) => self.set(e, v, items),
            _ => Slot::Bad,
        }
    }

    pub(super) fn argv(&mut self, e: &Entry<'_>) -> Slot<Vec<String>> {
        let expected = "a command as a list of strings, such as [\"sh\", \"-c\", \"true\"]";
        let Some(args) = self.strings(e, expected, |_| Ok(())) else {
            return Slot::Bad;
        };
        let Item::Value(v) = e.item else {
            return Slot::Bad;
        };
        match args.first() {
            None => {
                let tail = "must name at least the program to run, such as [\"true\"]; leave \
                            the key out for none";
                self.bad_value(&e.path, v, tail, e.at);
                Slot::Bad
            }
            Some(program) if program.trim().is_empty() => {
                let first = v.as_array().and_then(|a| a.get(0)).unwrap_or(v);
                let path = format!("{}[0]", e.path);
                self.bad_value(&path, first, "must name the program to run", e.at);
                Slot::Bad
            }
            Some(_) => self.set(e, v, args),
        }
    }

    pub(super) fn env(&mut self, e: &Entry<'_>) -> Slot<BTreeMap<String, String>> {
        let Some(table) = e.item.as_table_like() else {
            if let Item::Value(v) = e.item {
                let expected = "a table of strings, such as { KEY = \"value\" }";
                self.wrong_type(&e.path, v, expected, e.at);
            } else {
                self.table(e);
            }
            return Slot::Bad;
        };
        let mut vars = BTreeMap::new();
        for var in self.entries(table, &e.path) {
            if var.name.is_empty() {
                self.report(var.key_at, format!("{} has an empty variable name", e.path));
                continue;
            }
            if var.name.contains('=') || var.name.contains('\0') {
                let message = format!(
                    "{}: variable name \"{}\" must not contain '=' or NUL (the environment \
                     separates name and value with '=')",
                    e.path, var.name
                );
                self.report(var.key_at, message);
                continue;
            }
            match var.item.as_value() {
                Some(Value::String(s)) => {
                    vars.insert(var.name.to_string(), s.value().clone());
                }
                Some(v) => {
                    let tail = format!(
                        "must be a string: quote it, {} = \"{}\"",
                        var.name,
                        self.shown(v).trim_matches('"')
                    );
                    self.bad_value(&var.path, v, &tail, var.at);
                }
                None => {
                    let message = format!("{} must be a string, not a table", var.path);
                    self.report(var.at, message);
                }
            }
        }
        Slot::Set(Setting {
            value: vars,
            at: e.at,
            path: e.path.clone(),
            shown: String::new(),
        })
    }
}

impl Ctx<'_> {
    /// `schedule = [{ cron = "0 9 * * 1-5", min = 6, for = "9h" }, ...]` (or
    /// `[[pools.NAME.schedule]]` tables): each entry checked where it is written.
    pub(super) fn schedule(&mut self, e: &Entry<'_>) -> Slot<Vec<ScheduleFloor>> {
        let example =
            "a list of tables such as [{ cron = \"0 9 * * 1-5\", min = 6, for = \"9h\" }]";
        let tables: Vec<(String, Pos, &dyn TableLike)> = match e.item {
            Item::Value(Value::Array(array)) => {
                let mut out = Vec::new();
                for (i, v) in array.iter().enumerate() {
                    let path = format!("{}[{i}]", e.path);
                    match v.as_inline_table() {
                        Some(t) => out.push((path, self.value_pos(v, e.at), t as &dyn TableLike)),
                        None => {
                            self.wrong_type(
                                &path,
                                v,
                                "a table such as { cron = \"0 9 * * 1-5\", min = 6, for = \"9h\" }",
                                e.at,
                            );
                            return Slot::Bad;
                        }
                    }
                }
                out
            }
            Item::ArrayOfTables(array) => array
                .iter()
                .enumerate()
                .map(|(i, t)| {
                    let at = self.span_pos(t.span()).unwrap_or(e.at);
                    (format!("{}[{i}]", e.path), at, t as &dyn TableLike)
                })
                .collect(),
            Item::Value(v) => {
                self.wrong_type(&e.path, v, example, e.at);
                return Slot::Bad;
            }
            _ => {
                self.report(e.at, format!("{} must be {example}", e.path));
                return Slot::Bad;
            }
        };
        let mut floors = Vec::new();
        let mut ok = true;
        for (path, at, table) in tables {
            let (mut cron, mut min, mut duration) = (None, None, None);
            for k in self.entries(table, &path) {
                match (k.name, k.item.as_value()) {
                    ("cron", Some(v)) => match v.as_str() {
                        Some(s) => cron = Some((s.to_string(), v.clone())),
                        None => {
                            self.wrong_type(
                                &k.path,
                                v,
                                "a cron expression such as \"0 9 * * 1-5\"",
                                k.at,
                            );
                            ok = false;
                        }
                    },
                    ("min", Some(_)) => match self.count::<usize>(&k, 0, "") {
                        Slot::Set(s) => min = Some(s.value),
                        _ => ok = false,
                    },
                    ("for", Some(_)) => match self.duration(&k, Some("the floor would never hold"))
                    {
                        Slot::Set(s) => duration = Some(s.value),
                        _ => ok = false,
                    },
                    _ => {
                        let message = format!(
                            "unknown key {} in a schedule entry: an entry takes cron, min and for",
                            k.path
                        );
                        self.report(k.key_at, message);
                        ok = false;
                    }
                }
            }
            let missing: Vec<&str> = [
                ("cron", cron.is_none()),
                ("min", min.is_none()),
                ("for", duration.is_none()),
            ]
            .iter()
            .filter(|(_, m)| *m)
            .map(|(k, _)| *k)
            .collect();
            if !missing.is_empty() {
                if ok {
                    let message = format!(
                        "{path} lacks {}: an entry is {{ cron = \"0 9 * * 1-5\", min = 6, for = \"9h\" }}",
                        missing.join(" and ")
                    );
                    self.report(at, message);
                }
                ok = false;
                continue;
            }
            let (Some((expr, v)), Some(min), Some(duration)) = (cron, min, duration) else {
                continue;
            };
            match ScheduleFloor::parse(&expr, min, duration) {
                Ok(f) => floors.push(f),
                Err(why) => {
                    let tail = format!(
                        "is not a cron expression ({why}): write five fields, minute hour \
                         day-of-month month day-of-week, such as \"0 9 * * 1-5\" (09:00 UTC, \
                         Monday to Friday)"
                    );
                    self.bad_value(&format!("{path}.cron"), &v, &tail, at);
                    ok = false;
                }
            }
        }
        match (ok, e.item) {
            (true, Item::Value(v)) => self.set(e, v, floors),
            (true, _) => Slot::Set(Setting {
                value: floors,
                at: e.at,
                path: e.path.clone(),
                shown: String::new(),
            }),
            _ => Slot::Bad,
        }
    }
}

/// The position of the most pool-specific setting among those in conflict, since that is
/// the one the operator most likely meant to change.
pub(super) fn closest(candidates: &[(u8, Option<Pos>)], header: Pos) -> Pos {
    let mut best: Option<(u8, Pos)> = None;
    for (rank, at) in candidates {
        if let Some(at) = at {
            if best.is_none_or(|(r, _)| *rank > r) {
                best = Some((*rank, *at));
            }
        }
    }
    best.map_or(header, |(_, at)| at)
}

pub(super) fn kind(v: &Value) -> &'static str {
    match v {
        Value::String(_) => "a string",
        Value::Integer(_) => "an integer",
        Value::Float(_) => "a float",
        Value::Boolean(_) => "a boolean",
        Value::Datetime(_) => "a date-time",
        Value::Array(_) => "an array",
        Value::InlineTable(_) => "a table",
    }
}

pub(super) fn join(prefix: &str, name: &str) -> String {
    let bare = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    let name = if bare {
        name.to_string()
    } else {
        format!("{name:?}")
    };
    if prefix.is_empty() {
        name
    } else {
        format!("{prefix}.{name}")
    }
}
