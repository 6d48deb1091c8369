//! Alternatives measured in turns (A B C A B C …), so that the machine's
//! drift over a run (another tenant, thermal state, page cache) hits every
//! alternative alike instead of whichever ran last.

/// Runs `measure` for each alternative, `runs` rounds, alternatives in turns
/// within a round; returns each alternative's results in its order.
/// The first error stops the whole measurement.
pub fn in_turns<K, T, E>(
    runs: u32,
    alternatives: &[K],
    mut measure: impl FnMut(&K) -> Result<T, E>,
) -> Result<Vec<Vec<T>>, E> {
    let mut results: Vec<Vec<T>> = alternatives.iter().map(|_| Vec::new()).collect();
    for _ in 0..runs.max(1) {
        for (alternative, out) in alternatives.iter().zip(results.iter_mut()) {
            out.push(measure(alternative)?);
        }
    }
    Ok(results)
}

/// [`in_turns`] that goes on past failures: a failed run is `None` (NaN
/// in a table) and its error, once, among the notes returned, so one bad
/// run does not cost the other alternatives their figures.
pub fn in_turns_noting<K, T, E: std::fmt::Display>(
    runs: u32,
    alternatives: &[K],
    mut measure: impl FnMut(&K) -> Result<T, E>,
) -> (Vec<Vec<Option<T>>>, Vec<String>) {
    let mut notes = Vec::new();
    let results = in_turns::<_, _, std::convert::Infallible>(runs, alternatives, |k| {
        Ok(match measure(k) {
            Ok(value) => Some(value),
            Err(e) => {
                let note = format!("A run failed: {e}");
                if !notes.contains(&note) {
                    notes.push(note);
                }
                None
            }
        })
    });
    let Ok(results) = results;
    (results, notes)
}

/// Each alternative's runs as one figure, NaN for a failed run.
pub fn values<T>(results: &[Vec<Option<T>>], of: impl Fn(&T) -> f64) -> Vec<Vec<f64>> {
    results
        .iter()
        .map(|runs| {
            runs.iter()
                .map(|r| r.as_ref().map_or(f64::NAN, &of))
                .collect()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_runs_are_noted_and_the_rounds_go_on() {
        let mut calls = 0;
        let (results, notes) = in_turns_noting(3, &[1, 2], |k| {
            calls += 1;
            if *k == 2 && calls < 5 {
                Err("refused")
            } else {
                Ok(f64::from(*k))
            }
        });
        assert_eq!(calls, 6);
        assert_eq!(notes, ["A run failed: refused"]);
        assert_eq!(results[1], [None, None, Some(2.0)]);
        let figures = values(&results, |v| *v);
        assert_eq!(figures[0], [1.0, 1.0, 1.0]);
        assert!(figures[1][0].is_nan() && figures[1][2] == 2.0);
    }

    #[test]
    fn alternatives_take_turns() {
        let mut order = Vec::new();
        let results = in_turns::<_, _, ()>(3, &["a", "b"], |k| {
            order.push(*k);
            Ok(order.len())
        })
        .unwrap();
        assert_eq!(order, ["a", "b", "a", "b", "a", "b"]);
        assert_eq!(results, vec![vec![1, 3, 5], vec![2, 4, 6]]);
    }

    #[test]
    fn an_error_stops_the_rounds() {
        let mut calls = 0;
        let r = in_turns(5, &[1, 2], |k| {
            calls += 1;
            if *k == 2 {
                Err("no")
            } else {
                Ok(())
            }
        });
        assert_eq!(r, Err("no"));
        assert_eq!(calls, 2);
    }
}
