//! Judging observed truth tables against expected ones, and how results
//! are printed.

use std::{fmt, time::Duration};

use crate::matrix::TruthTable;

fn mark(reachable: bool) -> &'static str {
    if reachable {
        "."
    } else {
        "X"
    }
}

/// One cell where observation and expectation differ.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cell {
    pub from: String,
    pub to: String,
    /// `tcp/80`.
    pub probe: String,
    pub expected: bool,
    /// `None` when the pair was not probed at all.
    pub got: Option<bool>,
}

impl fmt::Display for Cell {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} -> {} {}: expected {}, got {}",
            self.from,
            self.to,
            self.probe,
            mark(self.expected),
            self.got.map_or("nothing (not probed)", mark)
        )
    }
}

/// Differences of one probe's observation from its expectation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Comparison {
    /// Off the diagonal: these decide pass or fail.
    pub judged: Vec<Cell>,
    /// Pods reaching themselves: reported only, as upstream ignores them
    /// (`ignoreLoopback`; CNIs disagree about hairpin traffic).
    pub diagonal: Vec<Cell>,
}

impl Comparison {
    pub fn matches(&self) -> bool {
        self.judged.is_empty()
    }
}

/// Compares every expected cell, by label (not by position).
pub fn compare(probe: &str, expected: &TruthTable, observed: &TruthTable) -> Comparison {
    let mut comparison = Comparison::default();
    for (f, from) in expected.froms.iter().enumerate() {
        for (t, to) in expected.tos.iter().enumerate() {
            let want = expected.cells[f][t];
            let got = observed.get(from, to);
            if got == Some(want) {
                continue;
            }
            let cell = Cell {
                from: from.clone(),
                to: to.clone(),
                probe: probe.to_owned(),
                expected: want,
                got,
            };
            if from == to {
                comparison.diagonal.push(cell);
            } else {
                comparison.judged.push(cell);
            }
        }
    }
    comparison
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Pass,
    /// Why, one line each (differing cells, errors).
    Fail(Vec<String>),
    Skip(String),
}

/// A finished case as printed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaseReport {
    pub file: String,
    /// Empty when the file did not parse.
    pub name: String,
    pub outcome: Outcome,
    /// Informational lines (diagonal cells, skipped probes).
    pub notes: Vec<String>,
    pub elapsed: Duration,
}

impl fmt::Display for CaseReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let word = match self.outcome {
            Outcome::Pass => "PASS",
            Outcome::Fail(_) => "FAIL",
            Outcome::Skip(_) => "SKIP",
        };
        write!(f, "{word} {}", self.file)?;
        if !self.name.is_empty() {
            write!(f, " — {}", self.name)?;
        }
        writeln!(f, " ({:.1} s)", self.elapsed.as_secs_f64())?;
        match &self.outcome {
            Outcome::Pass => {}
            Outcome::Fail(lines) => {
                for line in lines {
                    writeln!(f, "    {line}")?;
                }
            }
            Outcome::Skip(reason) => writeln!(f, "    {reason}")?,
        }
        for note in &self.notes {
            writeln!(f, "    note: {note}")?;
        }
        Ok(())
    }
}

/// Counts over a run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Summary {
    pub passed: usize,
    pub failed: usize,
    pub skipped: usize,
    pub elapsed: Duration,
}

impl Summary {
    pub fn add(&mut self, report: &CaseReport) {
        match report.outcome {
            Outcome::Pass => self.passed += 1,
            Outcome::Fail(_) => self.failed += 1,
            Outcome::Skip(_) => self.skipped += 1,
        }
    }

    pub fn success(&self) -> bool {
        self.failed == 0
    }
}

impl fmt::Display for Summary {
    /// The run's last line, in a fixed form scripts can match.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} passed, {} failed, {} skipped",
            self.passed, self.failed, self.skipped
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PODS: [&str; 3] = ["x/a", "x/b", "y/a"];

    fn table(rows: [[bool; 3]; 3]) -> TruthTable {
        TruthTable {
            froms: PODS.map(str::to_owned).to_vec(),
            tos: PODS.map(str::to_owned).to_vec(),
            cells: rows.iter().map(|r| r.to_vec()).collect(),
        }
    }

    #[test]
    fn only_off_diagonal_cells_are_judged() {
        let expected = table([[false, false, true], [true, true, true], [true, true, true]]);
        assert!(compare("tcp/80", &expected, &expected).matches());
        let mut observed = expected.clone();
        observed.cells[0][0] = true; // diagonal
        observed.cells[0][1] = true;
        observed.cells[2][0] = false;
        let c = compare("tcp/80", &expected, &observed);
        assert!(!c.matches());
        let judged: Vec<String> = c.judged.iter().map(Cell::to_string).collect();
        assert_eq!(
            judged,
            [
                "x/a -> x/b tcp/80: expected X, got .",
                "y/a -> x/a tcp/80: expected ., got X"
            ]
        );
        assert_eq!(c.diagonal.len(), 1);
        assert_eq!(
            c.diagonal[0].to_string(),
            "x/a -> x/a tcp/80: expected X, got ."
        );

        let only_diagonal = {
            let mut t = expected.clone();
            t.cells[1][1] = false;
            t
        };
        let c = compare("udp/81", &expected, &only_diagonal);
        assert!(c.matches());
        assert_eq!(
            c.diagonal[0].to_string(),
            "x/b -> x/b udp/81: expected ., got X"
        );
    }

    #[test]
    fn cells_are_matched_by_label_not_position() {
        let expected = table([[true, false, true], [true, true, true], [true, true, true]]);
        // Observed with rows and columns in another order.
        let observed = TruthTable {
            froms: vec!["y/a".into(), "x/b".into(), "x/a".into()],
            tos: vec!["y/a".into(), "x/b".into(), "x/a".into()],
            cells: vec![
                vec![true, true, true],
                vec![true, true, true],
                vec![true, false, true],
            ],
        };
        assert!(compare("tcp/80", &expected, &observed).matches());
        let missing = TruthTable {
            froms: vec!["x/a".into()],
            tos: vec!["x/a".into(), "x/b".into()],
            cells: vec![vec![true, false]],
        };
        let c = compare("tcp/80", &expected, &missing);
        assert_eq!(
            c.judged[0].to_string(),
            "x/a -> y/a tcp/80: expected ., got nothing (not probed)"
        );
        assert_eq!(c.judged.len(), 5);
    }

    #[test]
    fn reports_print_one_headline_and_indented_details() {
        let mut report = CaseReport {
            file: "01-deny.yaml".into(),
            name: "should deny".into(),
            outcome: Outcome::Pass,
            notes: vec![],
            elapsed: Duration::from_millis(2345),
        };
        assert_eq!(
            report.to_string(),
            "PASS 01-deny.yaml — should deny (2.3 s)\n"
        );
        report.outcome = Outcome::Fail(vec![
            "step 1 of 2:".into(),
            "x/a -> x/b tcp/80: expected X, got .".into(),
        ]);
        report.notes = vec!["diagonal".into()];
        assert_eq!(
            report.to_string(),
            "FAIL 01-deny.yaml — should deny (2.3 s)\n    step 1 of 2:\n    x/a -> x/b tcp/80: expected X, got .\n    note: diagonal\n"
        );
        report.outcome = Outcome::Skip("no SCTP".into());
        report.notes.clear();
        report.name.clear();
        assert_eq!(
            report.to_string(),
            "SKIP 01-deny.yaml (2.3 s)\n    no SCTP\n"
        );
    }

    #[test]
    fn summary_counts_outcomes() {
        let mut summary = Summary::default();
        let report = |outcome| CaseReport {
            file: String::new(),
            name: String::new(),
            outcome,
            notes: vec![],
            elapsed: Duration::ZERO,
        };
        summary.add(&report(Outcome::Pass));
        summary.add(&report(Outcome::Pass));
        summary.add(&report(Outcome::Skip(String::new())));
        assert!(summary.success());
        summary.add(&report(Outcome::Fail(vec![])));
        assert!(!summary.success());
        assert_eq!(summary.to_string(), "2 passed, 1 failed, 1 skipped");
    }
}
