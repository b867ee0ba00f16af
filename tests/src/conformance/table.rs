//! Truth tables: which of the 81 ordered pod pairs can connect, how a scenario writes the
//! expected one (upstream's reachability calls, or a literal grid) and how two tables differ.

use std::fmt;

use anyhow::{Context, Result, anyhow, bail, ensure};

use super::model::{NAMESPACES, POD_COUNT, POD_NAMES, PodId};

/// Connectivity of every ordered pair: `cells[from][to]` is true when `from` can reach `to`.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TruthTable {
    cells: [[bool; POD_COUNT]; POD_COUNT],
}

/// One cell on which an observed table differs from the expected one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WrongCell {
    pub from: PodId,
    pub to: PodId,
    /// What the scenario expects (true: connected).
    pub expected: bool,
}

impl fmt::Display for WrongCell {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let word = |allowed: bool| if allowed { "allow" } else { "deny" };
        write!(
            f,
            "{} -> {}: expected {}, observed {}",
            self.from,
            self.to,
            word(self.expected),
            word(!self.expected)
        )
    }
}

impl TruthTable {
    /// Every pair set to `allowed`.
    pub fn filled(allowed: bool) -> TruthTable {
        TruthTable {
            cells: [[allowed; POD_COUNT]; POD_COUNT],
        }
    }

    /// A table computed cell by cell.
    pub fn from_fn(mut f: impl FnMut(PodId, PodId) -> bool) -> TruthTable {
        let mut table = TruthTable::filled(false);
        for from in PodId::all() {
            for to in PodId::all() {
                table.set(from, to, f(from, to));
            }
        }
        table
    }

    pub fn get(&self, from: PodId, to: PodId) -> bool {
        self.cells[from.index()][to.index()]
    }

    pub fn set(&mut self, from: PodId, to: PodId, allowed: bool) {
        self.cells[from.index()][to.index()] = allowed;
    }

    /// The cells where `observed` differs from `self` (the expectation), row by row.
    pub fn wrong_cells(&self, observed: &TruthTable) -> Vec<WrongCell> {
        let mut wrong = Vec::new();
        for from in PodId::all() {
            for to in PodId::all() {
                let expected = self.get(from, to);
                if observed.get(from, to) != expected {
                    wrong.push(WrongCell { from, to, expected });
                }
            }
        }
        wrong
    }

    /// Parses a literal grid: nine rows (`x/a` .. `z/c`) of nine cells, `.` for connected and
    /// `X` for blocked (upstream's notation). A header line starting with `-` and a leading row
    /// label (which must name the row's pod) are optional.
    pub fn parse_grid(text: &str) -> Result<TruthTable> {
        let mut table = TruthTable::filled(false);
        let mut rows = 0usize;
        for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
            let mut tokens: Vec<&str> = line.split_whitespace().collect();
            if tokens[0] == "-" {
                let header: Vec<String> = PodId::all().map(|p| p.to_string()).collect();
                ensure!(
                    tokens[1..] == header[..],
                    "grid header must be `- {}`",
                    header.join(" ")
                );
                continue;
            }
            let from = PodId::from_index(rows)
                .ok_or_else(|| anyhow!("grid has more than {POD_COUNT} rows"))?;
            if tokens.len() == POD_COUNT + 1 {
                let label = tokens.remove(0);
                ensure!(
                    label == from.to_string(),
                    "grid row {} is labelled `{label}`, expected `{from}`",
                    rows + 1
                );
            }
            ensure!(
                tokens.len() == POD_COUNT,
                "grid row {from} has {} cells, expected {POD_COUNT}",
                tokens.len()
            );
            for (to, cell) in PodId::all().zip(tokens) {
                let allowed = match cell {
                    "." => true,
                    "X" => false,
                    other => bail!(
                        "grid cell {from} -> {to} is `{other}`: use `.` (connected) or `X` (blocked)"
                    ),
                };
                table.set(from, to, allowed);
            }
            rows += 1;
        }
        ensure!(
            rows == POD_COUNT,
            "grid has {rows} rows, expected {POD_COUNT}"
        );
        Ok(table)
    }

    /// The grid in upstream's notation, with header and row labels.
    pub fn render(&self) -> String {
        render_grid(|from, to| if self.get(from, to) { '.' } else { 'X' })
    }

    /// Upstream's "comparison" grid: `.` where `observed` agrees with `self`, `X` where not.
    pub fn render_comparison(&self, observed: &TruthTable) -> String {
        render_grid(|from, to| {
            if self.get(from, to) == observed.get(from, to) {
                '.'
            } else {
                'X'
            }
        })
    }

    /// Number of connected pairs.
    pub fn allowed_count(&self) -> usize {
        self.cells.iter().flatten().filter(|c| **c).count()
    }
}

impl fmt::Debug for TruthTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TruthTable\n{}", self.render())
    }
}

fn render_grid(mut cell: impl FnMut(PodId, PodId) -> char) -> String {
    let mut out = String::from("-  ");
    for to in PodId::all() {
        out.push_str(&format!(" {to}"));
    }
    out.push('\n');
    for from in PodId::all() {
        let mut line = from.to_string();
        for to in PodId::all() {
            line.push_str(&format!("  {} ", cell(from, to)));
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// `allow` or `deny`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Allow,
    Deny,
}

impl Verdict {
    pub fn allowed(self) -> bool {
        self == Verdict::Allow
    }
}

/// One side of an expectation rule, upstream's `Peer`: `*`, `x/*`, `*/a` or `x/a`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerPattern {
    namespace: Option<&'static str>,
    pod: Option<&'static str>,
}

impl PeerPattern {
    pub fn parse(text: &str) -> Result<PeerPattern> {
        let text = text.trim();
        if text == "*" {
            return Ok(PeerPattern {
                namespace: None,
                pod: None,
            });
        }
        let (ns, pod) = text
            .split_once('/')
            .ok_or_else(|| anyhow!("`{text}` is not a pod pattern (`*`, `x/*`, `*/a` or `x/a`)"))?;
        let namespace =
            match ns {
                "*" => None,
                ns => Some(*NAMESPACES.iter().find(|n| **n == ns).ok_or_else(|| {
                    anyhow!("`{text}`: no namespace `{ns}` in the model (x, y, z)")
                })?),
            };
        let pod = match pod {
            "*" => None,
            pod => Some(
                *POD_NAMES
                    .iter()
                    .find(|p| **p == pod)
                    .ok_or_else(|| anyhow!("`{text}`: no pod `{pod}` in the model (a, b, c)"))?,
            ),
        };
        Ok(PeerPattern { namespace, pod })
    }

    pub fn matches(&self, pod: PodId) -> bool {
        self.namespace.is_none_or(|ns| ns == pod.namespace())
            && self.pod.is_none_or(|p| p == pod.name())
    }
}

/// `"<from> -> <to>: allow|deny"`: sets every matching cell, like upstream's `ExpectPeer`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExpectRule {
    pub from: PeerPattern,
    pub to: PeerPattern,
    pub verdict: Verdict,
}

impl ExpectRule {
    pub fn parse(text: &str) -> Result<ExpectRule> {
        let parse = || -> Result<ExpectRule> {
            let (pair, verdict) = text
                .rsplit_once(':')
                .ok_or_else(|| anyhow!("missing `: allow` or `: deny`"))?;
            let verdict = match verdict.trim() {
                "allow" => Verdict::Allow,
                "deny" => Verdict::Deny,
                other => bail!("verdict `{other}` is neither `allow` nor `deny`"),
            };
            let (from, to) = pair
                .split_once("->")
                .ok_or_else(|| anyhow!("missing `->`"))?;
            Ok(ExpectRule {
                from: PeerPattern::parse(from)?,
                to: PeerPattern::parse(to)?,
                verdict,
            })
        };
        parse().with_context(|| format!("expectation `{text}`"))
    }

    pub fn apply(&self, table: &mut TruthTable) {
        for from in PodId::all().filter(|p| self.from.matches(*p)) {
            for to in PodId::all().filter(|p| self.to.matches(*p)) {
                table.set(from, to, self.verdict.allowed());
            }
        }
    }
}

/// The expected table of a probe as the scenario wrote it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Expectation {
    /// Upstream style: a default, then rules applied in order.
    Rules {
        default: Verdict,
        rules: Vec<ExpectRule>,
    },
    /// A literal grid.
    Grid(TruthTable),
}

impl Expectation {
    pub fn table(&self) -> TruthTable {
        match self {
            Expectation::Rules { default, rules } => {
                let mut table = TruthTable::filled(default.allowed());
                for rule in rules {
                    rule.apply(&mut table);
                }
                table
            }
            Expectation::Grid(table) => *table,
        }
    }
}
