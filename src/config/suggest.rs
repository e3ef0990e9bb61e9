//! Telling an operator where an unknown key belongs or what they probably meant. Pure
//! string work with no knowledge of the key tables themselves: the caller passes the
//! known keys in, which keeps this module at the bottom of the dependency order.

use toml_edit::Item;

/// The kinds of table, so an unknown key can be told where it belongs instead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Section {
    Top,
    Server,
    Docker,
    /// `[defaults]` or `[pools.NAME]`.
    Layer,
    /// `[defaults.security]` or `[pools.NAME.security]`.
    Security,
}

/// The known keys of each kind of table. Supplied by the top of the module, which is the
/// only place that sees every key table.
pub(super) type KeysOf = fn(Section) -> &'static [&'static str];

impl Section {
    pub(super) const ALL: [Section; 5] = [
        Section::Top,
        Section::Server,
        Section::Docker,
        Section::Layer,
        Section::Security,
    ];

    /// Where keys of `self` go, seen from a table of kind `from` at `prefix`.
    pub(super) fn place(self, from: Section, prefix: &str) -> String {
        match (self, from) {
            (Section::Top, _) => "the top level".to_string(),
            (Section::Server, _) => "[server]".to_string(),
            (Section::Docker, _) => "[docker]".to_string(),
            (Section::Security, Section::Layer) => format!("[{prefix}.security]"),
            (Section::Security, _) => "[defaults.security] or [pools.NAME.security]".to_string(),
            (Section::Layer, Section::Security) => {
                format!("[{}]", prefix.strip_suffix(".security").unwrap_or(prefix))
            }
            (Section::Layer, _) => "[defaults] or [pools.NAME]".to_string(),
        }
    }
}

/// A top-level table that has an `image` was surely meant as a pool.
pub(super) fn looks_like_pool(item: &Item) -> bool {
    item.as_table_like()
        .is_some_and(|t| t.contains_key("image"))
}

pub(super) fn did_you_mean(unknown: &str, known: &[&'static str]) -> Option<&'static str> {
    let lower = unknown.to_ascii_lowercase();
    known
        .iter()
        .filter_map(|k| {
            let d = edit_distance(&lower, k);
            let longest = lower.len().max(k.len());
            let close = d <= (longest / 3).max(1);
            let shorter = lower.len().min(k.len());
            let prefix = shorter >= 3 && (k.starts_with(&lower) || lower.starts_with(k));
            (close || prefix).then_some((d, *k))
        })
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

/// Edit distance counting a swap of neighbours as one edit, the commonest typo.
pub(super) fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (d[i - 1][j] + 1)
                .min(d[i][j - 1] + 1)
                .min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(d[i - 2][j - 2] + 1);
            }
            d[i][j] = best;
        }
    }
    d[a.len()][b.len()]
}
