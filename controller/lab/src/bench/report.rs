//! The bench's report: tables of repeated measurements, each path's median
//! and range next to the run's floor (the fastest thing the same machine
//! does, measured in the same run), as Markdown with a plot per table.

use std::{
    fmt::Write as _,
    path::{Path, PathBuf},
};

use serde::Serialize;

use super::{plot, stats::Summary};

/// Which way a figure improves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Better {
    Higher,
    Lower,
}

/// One path's runs.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Row {
    pub name: String,
    /// One value per run; NaN for a run that produced none.
    pub samples: Vec<f64>,
}

/// Paths measured the same way in the same run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Table {
    /// The plot's file name (without `.png`).
    pub id: String,
    pub title: String,
    pub unit: String,
    pub better: Better,
    /// The row every other is divided by.
    pub floor: Option<String>,
    /// What the project aims at for these figures, shown under the table.
    pub target: Option<String>,
    pub rows: Vec<Row>,
    pub notes: Vec<String>,
}

impl Table {
    pub fn new(id: &str, title: &str, unit: &str, better: Better) -> Self {
        Table {
            id: id.into(),
            title: title.into(),
            unit: unit.into(),
            better,
            floor: None,
            target: None,
            rows: Vec::new(),
            notes: Vec::new(),
        }
    }

    pub fn floor(mut self, row: &str) -> Self {
        self.floor = Some(row.into());
        self
    }

    pub fn target(mut self, target: &str) -> Self {
        self.target = Some(target.into());
        self
    }

    pub fn note(mut self, note: impl Into<String>) -> Self {
        self.notes.push(note.into());
        self
    }

    pub fn row(mut self, name: impl Into<String>, samples: Vec<f64>) -> Self {
        self.push(name, samples);
        self
    }

    pub fn push(&mut self, name: impl Into<String>, samples: Vec<f64>) {
        self.rows.push(Row {
            name: name.into(),
            samples,
        });
    }

    fn floor_median(&self) -> Option<f64> {
        let floor = self.floor.as_deref()?;
        let row = self.rows.iter().find(|r| r.name == floor)?;
        Some(Summary::of(&row.samples).median).filter(|m| *m != 0.0)
    }

    /// A row's median over the floor's, if the table has a floor.
    pub fn ratio(&self, row: &Row) -> Option<f64> {
        self.floor_median()
            .map(|floor| Summary::of(&row.samples).median / floor)
    }

    /// The table as Markdown (no plot).
    pub fn markdown(&self) -> String {
        let mut out = format!("### {}\n\n", self.title);
        let better = match self.better {
            Better::Higher => "higher is better",
            Better::Lower => "lower is better",
        };
        let floor_head = match &self.floor {
            Some(_) => " × floor |",
            None => "",
        };
        let _ = writeln!(
            out,
            "| path | median ({}, {better}) | min … max | runs |{floor_head}",
            self.unit
        );
        let _ = writeln!(
            out,
            "|---|---:|---:|---:|{}",
            if self.floor.is_some() { "---:|" } else { "" }
        );
        for row in &self.rows {
            let s = Summary::of(&row.samples);
            let name = if self.floor.as_deref() == Some(&row.name) {
                format!("{} (floor)", row.name)
            } else {
                row.name.clone()
            };
            let ratio = match (&self.floor, self.ratio(row)) {
                (None, _) => String::new(),
                (Some(_), Some(r)) => format!(" {r:.2} |"),
                (Some(_), None) => " – |".into(),
            };
            let (median, range) = if s.runs == 0 {
                ("–".into(), "failed".into())
            } else {
                (
                    number(s.median),
                    format!("{} … {}", number(s.min), number(s.max)),
                )
            };
            let _ = writeln!(out, "| {name} | {median} | {range} | {} |{ratio}", s.runs);
        }
        if let Some(target) = &self.target {
            let _ = write!(out, "\nTarget: {target}\n");
        }
        for note in &self.notes {
            let _ = write!(out, "\n{note}\n");
        }
        out
    }
}

/// A value with as many digits as its size deserves.
pub fn number(v: f64) -> String {
    let a = v.abs();
    if !v.is_finite() {
        "–".into()
    } else if a >= 10_000.0 {
        thousands(v.round() as i64)
    } else if a >= 100.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// An integer with a comma between each three digits (`10,000`).
pub fn thousands(v: i64) -> String {
    let digits = v.unsigned_abs().to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    if v < 0 {
        out.insert(0, '-');
    }
    out
}

/// A section of the report: a heading, what was measured, its tables.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Section {
    pub heading: String,
    pub text: String,
    pub tables: Vec<Table>,
}

/// The whole report of one `sluice lab bench` run.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Report {
    /// The machine, the build, the command: what makes numbers comparable.
    pub header: Vec<String>,
    pub sections: Vec<Section>,
    /// Wall time of each suite, in seconds, in the order they ran: what to
    /// cut when the run grows too long.
    pub suite_seconds: Vec<(String, f64)>,
}

impl Report {
    pub fn markdown(&self, plots: Option<&str>) -> String {
        let mut out = String::from("# sluice benchmarks\n\n");
        for line in &self.header {
            let _ = writeln!(out, "- {line}");
        }
        for section in &self.sections {
            let _ = write!(out, "\n## {}\n\n", section.heading);
            if !section.text.is_empty() {
                let _ = write!(out, "{}\n\n", section.text);
            }
            for table in &section.tables {
                out.push_str(&table.markdown());
                if let Some(dir) = plots {
                    let _ = write!(out, "\n![{}]({dir}/{}.png)\n", table.title, table.id);
                }
                out.push('\n');
            }
        }
        if !self.suite_seconds.is_empty() {
            out.push_str("\n## Time per suite\n\n| suite | wall time (s) |\n|---|---:|\n");
            for (suite, seconds) in &self.suite_seconds {
                let _ = writeln!(out, "| {suite} | {seconds:.0} |");
            }
            let total: f64 = self.suite_seconds.iter().map(|(_, s)| s).sum();
            let _ = writeln!(out, "| all | {total:.0} |");
        }
        out
    }

    /// Writes `report.md`, `report.json` and `plots/<table>.png` into `dir`.
    pub fn write(&self, dir: &Path) -> Result<PathBuf, ReportError> {
        let plots = dir.join("plots");
        // A plot of an earlier run's table (another --only) is not this
        // report's, and --publish copies the whole directory.
        let _ = std::fs::remove_dir_all(&plots);
        std::fs::create_dir_all(&plots).map_err(|e| ReportError::Io(plots.clone(), e))?;
        for table in self.sections.iter().flat_map(|s| &s.tables) {
            let path = plots.join(format!("{}.png", table.id));
            plot::bars(table, &path).map_err(|e| ReportError::Plot(path.clone(), e))?;
        }
        let json = dir.join("report.json");
        let body = serde_json::to_vec_pretty(self).expect("a report serializes");
        std::fs::write(&json, body).map_err(|e| ReportError::Io(json, e))?;
        let md = dir.join("report.md");
        std::fs::write(&md, self.markdown(Some("plots")))
            .map_err(|e| ReportError::Io(md.clone(), e))?;
        Ok(md)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("writing {0}: {1}")]
    Io(PathBuf, #[source] std::io::Error),
    #[error("plotting {0}: {1}")]
    Plot(PathBuf, String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_are_compared_with_the_floor() {
        let t = Table::new("t", "TCP", "Gbit/s", Better::Higher)
            .floor("veth")
            .row("veth", vec![10.0, 12.0, 11.0])
            .row("sluice", vec![9.9, f64::NAN, 10.5]);
        let md = t.markdown();
        assert!(
            md.contains("| veth (floor) | 11.0 | 10.0 … 12.0 | 3 | 1.00 |"),
            "{md}"
        );
        assert!(
            md.contains("| sluice | 10.2 | 9.90 … 10.5 | 2 | 0.93 |"),
            "{md}"
        );
    }

    #[test]
    fn a_failed_path_says_so() {
        let t = Table::new("t", "RR", "req/s", Better::Higher).row("x", vec![f64::NAN]);
        assert!(
            t.markdown().contains("| x | – | failed | 0 |"),
            "{}",
            t.markdown()
        );
    }

    #[test]
    fn numbers_keep_their_weight() {
        assert_eq!(number(117_900.4), "117,900");
        assert_eq!(number(1234.6), "1235");
        assert_eq!(number(14.44), "14.4");
        assert_eq!(number(0.904), "0.90");
    }
}
