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

#[cfg(test)]
mod tests {
    use super::*;

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
