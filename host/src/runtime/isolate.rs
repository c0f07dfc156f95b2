//! The failure policy: a batch call that fails (trap, deadline, limit, an
//! error result, the wrong number of outcomes) never stops a job. The call
//! is retried once on a fresh instance; if it fails again, the batch is
//! bisected until the failing records are alone, and those, and only those,
//! come back as failures (the jobs send them to the dead-letter topic). The
//! rest are processed in order, each record exactly once: a failed call's
//! keyed-state changes are rolled back by the guest wrapper.

use super::Error;

/// Each item's outcome, in order, or why the guest fails on it alone.
/// `call` must leave no trace when it fails (state rolled back, instance
/// dropped) and use a fresh instance after a failure.
pub fn isolate<I, O>(
    items: &[I],
    what: &str,
    mut call: impl FnMut(&[I]) -> Result<Vec<O>, Error>,
) -> Vec<Result<O, Error>> {
    let first = match call(items) {
        Ok(outcomes) => return outcomes.into_iter().map(Ok).collect(),
        Err(e) => e,
    };
    tracing::warn!(what, records = items.len(), error = %first, "guest failed on a batch; retrying it once on a fresh instance");
    let second = match call(items) {
        Ok(outcomes) => {
            tracing::info!(what, records = items.len(), "the retry succeeded");
            return outcomes.into_iter().map(Ok).collect();
        }
        Err(e) => e,
    };
    match items.len() {
        0 => Vec::new(),
        1 => vec![Err(second)],
        n => {
            tracing::warn!(what, records = n, error = %second, "guest failed again; bisecting the batch to isolate the records it fails on");
            let mut outcomes = Vec::with_capacity(n);
            let (left, right) = items.split_at(n / 2);
            settle(left, &mut call, &mut outcomes);
            settle(right, &mut call, &mut outcomes);
            outcomes
        }
    }
}

/// Outcomes of `items`, splitting a failed call in halves down to single
/// items.
fn settle<I, O>(
    items: &[I],
    call: &mut impl FnMut(&[I]) -> Result<Vec<O>, Error>,
    outcomes: &mut Vec<Result<O, Error>>,
) {
    match call(items) {
        Ok(done) => outcomes.extend(done.into_iter().map(Ok)),
        Err(e) if items.len() == 1 => outcomes.push(Err(e)),
        Err(_) if items.is_empty() => {}
        Err(_) => {
            let (left, right) = items.split_at(items.len() / 2);
            settle(left, call, outcomes);
            settle(right, call, outcomes);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failure() -> Error {
        Error::Guest {
            path: "test.wasm".into(),
            reason: "poison".into(),
        }
    }

    #[test]
    fn only_the_records_the_guest_fails_on_fail_and_the_rest_are_processed_once_in_order() {
        let items: Vec<i32> = (0..100).collect();
        let mut seen = Vec::new();
        let outcomes = isolate(&items, "test", |part: &[i32]| {
            if part.iter().any(|i| *i == 13 || *i == 77) {
                return Err(failure());
            }
            seen.extend_from_slice(part);
            Ok(part.iter().map(|i| i * 2).collect())
        });
        assert_eq!(outcomes.len(), 100);
        for (i, outcome) in outcomes.iter().enumerate() {
            match outcome {
                Ok(v) => assert_eq!(*v, 2 * i as i32),
                Err(e) => assert!(i == 13 || i == 77, "{i}: {e}"),
            }
        }
        // Each good record reached a successful call exactly once, in order.
        let expected: Vec<i32> = items.iter().copied().filter(|i| *i != 13 && *i != 77).collect();
        assert_eq!(seen, expected);
    }

    #[test]
    fn a_failure_that_does_not_repeat_costs_one_retry() {
        let items = [1, 2, 3];
        let mut calls = 0;
        let outcomes = isolate(&items, "test", |part: &[i32]| {
            calls += 1;
            if calls == 1 { Err(failure()) } else { Ok(part.to_vec()) }
        });
        assert_eq!(calls, 2);
        assert!(outcomes.iter().all(Result::is_ok));
    }

    #[test]
    fn a_guest_that_always_fails_fails_every_record() {
        let items = [1, 2, 3, 4, 5];
        let outcomes = isolate(&items, "test", |_: &[i32]| Err::<Vec<i32>, _>(failure()));
        assert_eq!(outcomes.len(), 5);
        assert!(outcomes.iter().all(Result::is_err));
    }
}
