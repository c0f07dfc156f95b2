//! The failure policy: a batch call that fails (trap, deadline, limit, an
//! error result, the wrong number of outcomes) never stops a job. The call
//! is retried once on a fresh instance; if it fails again, the batch is
//! bisected until the failing records are alone, and those, and only those,
//! come back as failures (the jobs send them to the dead-letter topic). The
//! rest are processed in order, each record exactly once: a failed call's
//! keyed-state changes are rolled back by the guest wrapper.
//!
//! Bisection is bounded in time: a guest that fails slowly (a loop stopped
//! by the deadline) could otherwise hold a batch past the consumer's poll
//! interval. Once `budget` has passed since the first failure, a part that
//! still fails comes back whole as failures, without further splitting.

use std::ops::Range;
use std::time::{Duration, Instant};

use super::Error;

/// One item's outcome, or why the guest fails on it alone. The failure is
/// boxed: a batch's outcomes are then no larger than its outputs, and the
/// outputs of a call that succeeded become outcomes in place, without a
/// second vector as large as the batch.
pub type Outcome<O> = Result<O, Box<Error>>;

/// Each item's outcome, in order, or why the guest fails on it alone.
/// `call` must leave no trace when it fails (state rolled back, instance
/// dropped) and use a fresh instance after a failure.
pub fn isolate<I, O>(
    items: &[I],
    what: &str,
    budget: Duration,
    mut call: impl FnMut(&[I]) -> Result<Vec<O>, Error>,
) -> Vec<Outcome<O>> {
    isolate_range(items.len(), what, budget, |range| call(&items[range]))
}

/// `isolate` over items `0..len` held elsewhere (a batch's columns): `call`
/// is given the range of items it is to process.
pub fn isolate_range<O>(
    len: usize,
    what: &str,
    budget: Duration,
    mut call: impl FnMut(Range<usize>) -> Result<Vec<O>, Error>,
) -> Vec<Outcome<O>> {
    let first = match call(0..len) {
        Ok(outcomes) => return outcomes.into_iter().map(Ok).collect(),
        Err(e) => e,
    };
    let deadline = Instant::now() + budget;
    tracing::warn!(what, records = len, error = %first, "guest failed on a batch; retrying it once on a fresh instance");
    let second = match call(0..len) {
        Ok(outcomes) => {
            tracing::info!(what, records = len, "the retry succeeded");
            return outcomes.into_iter().map(Ok).collect();
        }
        Err(e) => e,
    };
    match len {
        0 => Vec::new(),
        1 => vec![Err(Box::new(second))],
        n => {
            tracing::warn!(what, records = n, error = %second, "guest failed again; bisecting the batch to isolate the records it fails on");
            let mut outcomes = Vec::with_capacity(n);
            let mut isolating = Isolating {
                call,
                deadline,
                budget,
                outcomes: &mut outcomes,
            };
            isolating.settle(0..n / 2);
            isolating.settle(n / 2..n);
            outcomes
        }
    }
}

/// The bisection of one batch.
struct Isolating<'a, F, O> {
    call: F,
    deadline: Instant,
    budget: Duration,
    outcomes: &'a mut Vec<Outcome<O>>,
}

impl<F, O> Isolating<'_, F, O>
where
    F: FnMut(Range<usize>) -> Result<Vec<O>, Error>,
{
    /// Outcomes of the items at `range`, splitting a failed call in halves
    /// down to single items while the budget lasts.
    fn settle(&mut self, range: Range<usize>) {
        let records = range.len();
        if records == 0 {
            return;
        }
        if Instant::now() >= self.deadline {
            let reason = Error::IsolationBudget {
                records,
                seconds: self.budget.as_secs_f64(),
            };
            tracing::warn!(records, %reason, "giving up isolating");
            self.outcomes.extend(range.map(|_| Err(Box::new(reason.clone()))));
            return;
        }
        match (self.call)(range.clone()) {
            Ok(done) => self.outcomes.extend(done.into_iter().map(Ok)),
            Err(e) if records == 1 => self.outcomes.push(Err(Box::new(e))),
            Err(_) => {
                let middle = range.start + records / 2;
                self.settle(range.start..middle);
                self.settle(middle..range.end);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_are_no_larger_than_the_outputs_they_hold() {
        use std::mem::size_of;
        assert_eq!(
            size_of::<Outcome<crate::runtime::Verdict>>(),
            size_of::<crate::runtime::Verdict>()
        );
        assert_eq!(
            size_of::<Outcome<crate::runtime::FeatureOutcome>>(),
            size_of::<crate::runtime::FeatureOutcome>()
        );
    }

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
        let outcomes = isolate(&items, "test", Duration::from_secs(60), |part: &[i32]| {
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
        let outcomes = isolate(&items, "test", Duration::from_secs(60), |part: &[i32]| {
            calls += 1;
            if calls == 1 { Err(failure()) } else { Ok(part.to_vec()) }
        });
        assert_eq!(calls, 2);
        assert!(outcomes.iter().all(Result::is_ok));
    }

    #[test]
    fn a_guest_that_always_fails_fails_every_record() {
        let items = [1, 2, 3, 4, 5];
        let outcomes = isolate(&items, "test", Duration::from_secs(60), |_: &[i32]| {
            Err::<Vec<i32>, _>(failure())
        });
        assert_eq!(outcomes.len(), 5);
        assert!(outcomes.iter().all(Result::is_err));
    }

    #[test]
    fn once_the_budget_is_spent_a_failing_part_fails_whole() {
        let items: Vec<i32> = (0..8).collect();
        let mut calls = 0;
        let outcomes = isolate(&items, "test", Duration::ZERO, |_: &[i32]| {
            calls += 1;
            Err::<Vec<i32>, _>(failure())
        });
        // The call and its retry, then no splitting at all.
        assert_eq!(calls, 2);
        assert_eq!(outcomes.len(), 8);
        for outcome in outcomes {
            let reason = outcome.expect_err("failed").to_string();
            assert!(reason.contains("--guest-isolation-budget-ms"), "{reason}");
        }
    }
}
