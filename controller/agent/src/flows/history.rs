//! The recorded flows: the newest `capacity` of them, oldest first. Memory
//! stays bounded whatever the event rate: a full ring forgets its oldest.

use std::{collections::VecDeque, sync::Arc};

use sluice_common::observe::{Flow, FlowFilter};

#[derive(Debug)]
pub struct History {
    capacity: usize,
    flows: VecDeque<Arc<Flow>>,
    /// Flows forgotten to make room, since the start.
    forgotten: u64,
}

impl History {
    /// A ring of `capacity` flows (at least one).
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        Self {
            capacity,
            // Grown as flows come: a quiet node holds little.
            flows: VecDeque::new(),
            forgotten: 0,
        }
    }

    pub fn push(&mut self, flow: Arc<Flow>) {
        if self.flows.len() == self.capacity {
            self.flows.pop_front();
            self.forgotten += 1;
        }
        self.flows.push_back(flow);
    }

    pub fn len(&self) -> usize {
        self.flows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.flows.is_empty()
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    pub fn forgotten(&self) -> u64 {
        self.forgotten
    }

    /// The recorded flows `filter` selects, oldest first.
    pub fn select(&self, filter: &FlowFilter) -> Vec<Arc<Flow>> {
        filter.select(&self.flows).into_iter().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_common::observe::{FlowEnd, FlowVerdict};

    fn flow(port: u16) -> Arc<Flow> {
        Arc::new(Flow {
            time: String::new(),
            time_unix_ns: u64::from(port),
            node: "n".into(),
            verdict: FlowVerdict::Allowed,
            direction: "ingress".into(),
            reason: None,
            protocol: "TCP".into(),
            source: FlowEnd::default(),
            destination: FlowEnd {
                port,
                ..FlowEnd::default()
            },
            service: None,
            egress: None,
            ingress: None,
        })
    }

    #[test]
    fn keeps_the_newest_capacity_flows_in_order() {
        let mut h = History::new(3);
        for port in 1..=5 {
            h.push(flow(port));
        }
        assert_eq!(h.len(), 3);
        assert_eq!(h.forgotten(), 2);
        let ports: Vec<u16> = h
            .select(&FlowFilter::default())
            .iter()
            .map(|f| f.destination.port)
            .collect();
        assert_eq!(ports, [3, 4, 5]);
    }

    #[test]
    fn selects_with_the_filter_and_last() {
        let mut h = History::new(10);
        for port in 1..=6 {
            h.push(flow(port));
        }
        let filter = FlowFilter {
            since_unix_ns: Some(2),
            last: Some(2),
            ..FlowFilter::default()
        };
        let ports: Vec<u16> = h
            .select(&filter)
            .iter()
            .map(|f| f.destination.port)
            .collect();
        assert_eq!(ports, [5, 6]);
        assert_eq!(History::new(0).capacity(), 1);
    }
}
