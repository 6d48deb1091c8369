//! `sluice_flow_verdicts_total{source_namespace, destination_namespace,
//! verdict}` with bounded cardinality: at most [`MAX_PAIRS`] namespace
//! pairs get series of their own; flows of any further pair count under
//! `other`/`other`, so a cluster of many namespaces (or a scan of many
//! addresses) cannot grow the agent's memory or a scraper's load without
//! bound. An end that is no pod has the namespace `""`.

use std::collections::HashSet;

use prometheus::IntCounterVec;
use sluice_common::observe::Flow;

/// Namespace pairs with series of their own.
pub const MAX_PAIRS: usize = 1000;
/// The label value of pairs beyond [`MAX_PAIRS`].
pub const OTHER: &str = "other";

/// The pairs given series so far.
#[derive(Debug, Default)]
pub struct VerdictPairs {
    seen: HashSet<(String, String)>,
}

impl VerdictPairs {
    /// The labels a pair counts under: its own, while there is room.
    pub fn labels<'a>(&mut self, source: &'a str, destination: &'a str) -> (&'a str, &'a str) {
        let pair = (source.to_owned(), destination.to_owned());
        if self.seen.contains(&pair) {
            return (source, destination);
        }
        if self.seen.len() < MAX_PAIRS {
            self.seen.insert(pair);
            return (source, destination);
        }
        (OTHER, OTHER)
    }

    pub fn count(&mut self, counter: &IntCounterVec, flow: &Flow) {
        let source = flow.source.namespace.as_deref().unwrap_or("");
        let destination = flow.destination.namespace.as_deref().unwrap_or("");
        let (source, destination) = self.labels(source, destination);
        counter
            .with_label_values(&[source, destination, flow.verdict.name()])
            .inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_beyond_the_cap_count_as_other() {
        let mut pairs = VerdictPairs::default();
        for i in 0..MAX_PAIRS {
            let ns = i.to_string();
            assert_eq!(pairs.labels(&ns, "b"), (ns.as_str(), "b"));
        }
        assert_eq!(pairs.labels("new", "b"), (OTHER, OTHER));
        // Pairs seen before keep their own series.
        assert_eq!(pairs.labels("7", "b"), ("7", "b"));
        assert_eq!(pairs.seen.len(), MAX_PAIRS);
    }
}
