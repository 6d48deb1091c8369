//! Who reaches whom: every pair of pods probed in parallel, printed as the
//! upstream NetworkPolicy e2e tests print truth tables (rows are sources,
//! columns destinations, `.` reachable, `X` not).

use std::{
    fmt,
    net::{IpAddr, SocketAddr},
    str::FromStr,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Mutex,
    },
    time::Duration,
};

use super::{netns::Netns, probe};

/// The probe timeout upstream uses (`agnhost connect --timeout=1s`).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1);
/// Probes in flight at once; each is a thread (and `ping` a process).
const PARALLEL: usize = 64;
const CORNER: &str = "from\\to";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    Tcp,
    Udp,
    Icmp,
}

/// What one matrix probes: a port over TCP or UDP, or ICMP echo.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Check {
    pub protocol: Protocol,
    /// Ignored for ICMP.
    pub port: u16,
}

impl Check {
    pub const fn tcp(port: u16) -> Self {
        Self {
            protocol: Protocol::Tcp,
            port,
        }
    }

    pub const fn udp(port: u16) -> Self {
        Self {
            protocol: Protocol::Udp,
            port,
        }
    }

    pub const fn icmp() -> Self {
        Self {
            protocol: Protocol::Icmp,
            port: 0,
        }
    }

    /// Probes once from inside `from` to `to`.
    pub fn probe(&self, from: &Netns, to: IpAddr, timeout: Duration) -> bool {
        let dst = SocketAddr::new(to, self.port);
        match self.protocol {
            Protocol::Tcp => probe::tcp(from, dst, timeout),
            Protocol::Udp => probe::udp(from, dst, timeout),
            Protocol::Icmp => probe::icmp(from, to, timeout),
        }
    }
}

impl fmt::Display for Check {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.protocol {
            Protocol::Tcp => write!(f, "tcp/{}", self.port),
            Protocol::Udp => write!(f, "udp/{}", self.port),
            Protocol::Icmp => f.write_str("icmp"),
        }
    }
}

impl FromStr for Check {
    type Err = String;

    /// `tcp/80`, `udp/81` or `icmp`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let lower = s.to_ascii_lowercase();
        if lower == "icmp" {
            return Ok(Self::icmp());
        }
        let bad = || format!("invalid check {s:?}: want tcp/PORT, udp/PORT or icmp");
        let (proto, port) = lower.split_once('/').ok_or_else(bad)?;
        let port = port.parse().map_err(|_| bad())?;
        match proto {
            "tcp" => Ok(Self::tcp(port)),
            "udp" => Ok(Self::udp(port)),
            _ => Err(bad()),
        }
    }
}

/// A row or column of the matrix: a labelled address inside a netns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    /// `ns/name` for pods.
    pub label: String,
    /// Name under /run/netns.
    pub netns: String,
    pub ip: IpAddr,
}

/// Results of one check between every pair.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TruthTable {
    pub froms: Vec<String>,
    pub tos: Vec<String>,
    /// `cells[from][to]`.
    pub cells: Vec<Vec<bool>>,
}

impl TruthTable {
    pub fn get(&self, from: &str, to: &str) -> Option<bool> {
        let f = self.froms.iter().position(|l| l == from)?;
        let t = self.tos.iter().position(|l| l == to)?;
        Some(self.cells[f][t])
    }

    /// (reachable, total) over every cell, the diagonal included.
    pub fn count(&self) -> (usize, usize) {
        let reachable = self.cells.iter().flatten().filter(|&&c| c).count();
        (reachable, self.froms.len() * self.tos.len())
    }

    /// Pairs of different peers that are not reachable.
    pub fn unreachable(&self) -> Vec<(String, String)> {
        self.pairs()
            .filter(|&(f, t, ok)| !ok && f != t)
            .map(|(f, t, _)| (f.to_owned(), t.to_owned()))
            .collect()
    }

    /// Cells where `self` and `expected` differ, skipping the diagonal as
    /// upstream does.
    pub fn differences(&self, expected: &TruthTable) -> Vec<(String, String)> {
        self.pairs()
            .filter(|&(f, t, ok)| f != t && expected.get(f, t).is_some_and(|e| e != ok))
            .map(|(f, t, _)| (f.to_owned(), t.to_owned()))
            .collect()
    }

    fn pairs(&self) -> impl Iterator<Item = (&str, &str, bool)> {
        self.froms.iter().enumerate().flat_map(move |(f, from)| {
            self.tos
                .iter()
                .enumerate()
                .map(move |(t, to)| (from.as_str(), to.as_str(), self.cells[f][t]))
        })
    }

    /// Reads the printed form back (as the conformance cases write it).
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
        let header = lines.next().ok_or("empty truth table")?;
        let mut head = header.split_whitespace();
        head.next();
        let tos: Vec<String> = head.map(str::to_owned).collect();
        let mut froms = Vec::new();
        let mut cells = Vec::new();
        for line in lines {
            let mut words = line.split_whitespace();
            let from = words.next().unwrap_or_default().to_owned();
            let row = words
                .map(|w| match w {
                    "." => Ok(true),
                    "X" => Ok(false),
                    other => Err(format!("row {from}: cell {other:?} is neither . nor X")),
                })
                .collect::<Result<Vec<bool>, String>>()?;
            if row.len() != tos.len() {
                return Err(format!(
                    "row {from} has {} cells for {} columns",
                    row.len(),
                    tos.len()
                ));
            }
            froms.push(from);
            cells.push(row);
        }
        Ok(Self { froms, tos, cells })
    }
}

impl fmt::Display for TruthTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let first = self
            .froms
            .iter()
            .map(String::len)
            .chain([CORNER.len()])
            .max()
            .unwrap_or_default();
        let mut line = format!("{CORNER:<first$}");
        for to in &self.tos {
            line.push(' ');
            line.push_str(to);
        }
        writeln!(f, "{}", line.trim_end())?;
        for (from, row) in self.froms.iter().zip(&self.cells) {
            let mut line = format!("{from:<first$}");
            for (to, &ok) in self.tos.iter().zip(row) {
                let mark = if ok { "." } else { "X" };
                line.push(' ');
                line.push_str(&format!("{mark:<width$}", width = to.len()));
            }
            writeln!(f, "{}", line.trim_end())?;
        }
        Ok(())
    }
}

/// One table per check, every pair of `peers` probed (all probes of all
/// checks in parallel).
pub fn probe_matrix(peers: &[Peer], checks: &[Check], timeout: Duration) -> Vec<TruthTable> {
    let n = peers.len();
    let jobs: Vec<(usize, usize, usize)> = (0..checks.len())
        .flat_map(|c| (0..n).flat_map(move |f| (0..n).map(move |t| (c, f, t))))
        .collect();
    let results = Mutex::new(vec![false; jobs.len()]);
    let next = AtomicUsize::new(0);
    let namespaces: Vec<Netns> = peers.iter().map(|p| Netns::existing(&p.netns)).collect();
    std::thread::scope(|scope| {
        for _ in 0..PARALLEL.min(jobs.len()) {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(&(c, f, t)) = jobs.get(i) else { break };
                let ok = checks[c].probe(&namespaces[f], peers[t].ip, timeout);
                if let Ok(mut results) = results.lock() {
                    results[i] = ok;
                }
            });
        }
    });
    let results = results.into_inner().unwrap_or_default();
    let labels: Vec<String> = peers.iter().map(|p| p.label.clone()).collect();
    (0..checks.len())
        .map(|c| TruthTable {
            froms: labels.clone(),
            tos: labels.clone(),
            cells: (0..n)
                .map(|f| (0..n).map(|t| results[(c * n + f) * n + t]).collect())
                .collect(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> TruthTable {
        TruthTable {
            froms: vec!["x/a".into(), "x/b".into(), "y/long".into()],
            tos: vec!["x/a".into(), "x/b".into(), "y/long".into()],
            cells: vec![
                vec![true, false, true],
                vec![true, true, true],
                vec![false, true, false],
            ],
        }
    }

    #[test]
    fn prints_like_upstream_and_parses_back() {
        let printed = table().to_string();
        assert_eq!(
            printed,
            "from\\to x/a x/b y/long\n\
             x/a     .   X   .\n\
             x/b     .   .   .\n\
             y/long  X   .   X\n"
        );
        assert_eq!(TruthTable::parse(&printed), Ok(table()));
        assert!(TruthTable::parse("from\\to a b\na . ?\n").is_err());
        assert!(TruthTable::parse("from\\to a b\na .\n").is_err());
    }

    #[test]
    fn counts_and_unreachable_pairs_skip_nothing_but_the_diagonal() {
        let t = table();
        assert_eq!(t.count(), (6, 9));
        assert_eq!(
            t.unreachable(),
            [
                ("x/a".to_owned(), "x/b".to_owned()),
                ("y/long".into(), "x/a".into())
            ]
        );
        assert_eq!(t.get("x/b", "x/a"), Some(true));
        assert_eq!(t.get("x/b", "z/a"), None);
        let mut expected = t.clone();
        expected.cells[2][2] = true; // diagonal: ignored
        expected.cells[0][1] = true;
        assert_eq!(
            t.differences(&expected),
            [("x/a".to_owned(), "x/b".to_owned())]
        );
    }

    #[test]
    fn checks_parse_and_print() {
        for s in ["tcp/80", "udp/81", "icmp"] {
            assert_eq!(s.parse::<Check>().map(|c| c.to_string()).as_deref(), Ok(s));
        }
        assert_eq!("TCP/80".parse::<Check>(), Ok(Check::tcp(80)));
        for bad in ["sctp/80", "tcp", "tcp/x", "udp/70000"] {
            assert!(bad.parse::<Check>().is_err(), "{bad}");
        }
    }
}
