//! The reader of a pool's `schedule` (floors by cron, inline tables or
//! `[[pools.NAME.schedule]]`), an `impl` block of [`Ctx`] kept apart from the simpler value
//! readers of `read.rs`.

use toml_edit::{Item, TableLike, Value};

use super::read::{Ctx, Entry, Pos, Setting, Slot};
use crate::scaling::ScheduleFloor;

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
