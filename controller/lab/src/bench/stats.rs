//! Summaries of repeated measurements: what every report shows of a path.

/// The median of runs (0 for none).
pub fn median(values: &[f64]) -> f64 {
    let v = sorted(values);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

fn sorted(values: &[f64]) -> Vec<f64> {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    v.sort_by(f64::total_cmp);
    v
}

/// The `p`th percentile (0..=100) by nearest rank on the sorted values, 0
/// for none. Nearest rank reports a value that was measured, never one
/// interpolated between two runs.
pub fn percentile(values: &[f64], p: f64) -> f64 {
    let v = sorted(values);
    if v.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
    v[rank.clamp(1, v.len()) - 1]
}

/// Median and range of one path's runs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Summary {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub runs: usize,
}

impl Summary {
    pub fn of(values: &[f64]) -> Self {
        let finite = || values.iter().copied().filter(|v| v.is_finite());
        Summary {
            median: median(values),
            min: finite().fold(f64::INFINITY, f64::min),
            max: finite().fold(f64::NEG_INFINITY, f64::max),
            runs: finite().count(),
        }
    }

    /// The range as a share of the median: how far one run may be trusted.
    pub fn spread(&self) -> f64 {
        if self.median == 0.0 || self.runs == 0 {
            0.0
        } else {
            (self.max - self.min) / self.median
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 2.5);
        assert_eq!(median(&[]), 0.0);
    }

    #[test]
    fn percentiles_are_measured_values() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 99.0), 99.0);
        assert_eq!(percentile(&v, 100.0), 100.0);
        assert_eq!(percentile(&v, 1.0), 1.0);
        assert_eq!(percentile(&[7.0], 99.0), 7.0);
    }

    #[test]
    fn summary_ignores_failed_runs() {
        let s = Summary::of(&[10.0, f64::NAN, 12.0, 8.0]);
        assert_eq!((s.median, s.min, s.max, s.runs), (10.0, 8.0, 12.0, 3));
        assert!((s.spread() - 0.4).abs() < 1e-9);
    }
}
