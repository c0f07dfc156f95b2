//! The features job's input as a guest of `features-columns` takes it: one
//! partition's transactions a column per field, every currency code in one
//! string. A call lends the columns (`TransactionColumnsPart`), and wasmtime
//! copies each into the guest's memory whole; a `list<transaction>` instead
//! costs a call of the guest's allocator for every record's currency.

use std::ops::Range;

use wasmtime::component::{ComponentType, Lower};

use super::raw_batch::{Span, TooLarge, span_at};
use super::{Feature, FeatureColumns, FeatureOutcome, OutcomeKind, WitTransaction};

/// One partition's transactions, in offset order, in columns the host owns.
#[derive(Debug, Clone, Default)]
pub struct TransactionColumns {
    user_ids: Vec<i32>,
    timestamps_millis: Vec<i64>,
    amounts: Vec<f32>,
    currencies: String,
    currency_spans: Vec<Span>,
    counterpart_ids: Vec<i32>,
}

impl TransactionColumns {
    pub fn new() -> Self {
        Self::default()
    }

    /// Columns with room for `records` transactions.
    pub fn with_capacity(records: usize) -> Self {
        Self {
            user_ids: Vec::with_capacity(records),
            timestamps_millis: Vec::with_capacity(records),
            amounts: Vec::with_capacity(records),
            // ISO 4217 codes are three letters.
            currencies: String::with_capacity(3 * records),
            currency_spans: Vec::with_capacity(records),
            counterpart_ids: Vec::with_capacity(records),
        }
    }

    /// Appends a transaction after the last one.
    pub fn push(
        &mut self,
        user_id: i32,
        timestamp_millis: i64,
        amount: f32,
        currency: &str,
        counterpart_id: i32,
    ) -> Result<(), TooLarge> {
        let span = span_at(self.currencies.len(), currency.len())?;
        self.currencies.push_str(currency);
        self.currency_spans.push(span);
        self.user_ids.push(user_id);
        self.timestamps_millis.push(timestamp_millis);
        self.amounts.push(amount);
        self.counterpart_ids.push(counterpart_id);
        Ok(())
    }

    /// Empties the columns, keeping their capacity for the next batch.
    pub fn clear(&mut self) {
        self.user_ids.clear();
        self.timestamps_millis.clear();
        self.amounts.clear();
        self.currencies.clear();
        self.currency_spans.clear();
        self.counterpart_ids.clear();
    }

    pub fn len(&self) -> usize {
        self.user_ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.user_ids.is_empty()
    }

    pub fn user_ids(&self) -> &[i32] {
        &self.user_ids
    }

    pub fn timestamps_millis(&self) -> &[i64] {
        &self.timestamps_millis
    }

    pub fn currency(&self, index: usize) -> &str {
        let span = self.currency_spans[index];
        let start = span.start as usize;
        &self.currencies[start..start + span.len as usize]
    }

    /// The transaction at `index`, as a `features` module takes it.
    pub fn transaction(&self, index: usize) -> WitTransaction {
        WitTransaction {
            user_id: self.user_ids[index],
            transaction_timestamp_millis: self.timestamps_millis[index],
            amount: self.amounts[index],
            currency: self.currency(index).to_string(),
            counterpart_id: self.counterpart_ids[index],
        }
    }

    /// The transactions at `range`, as a `features-columns` call takes them.
    pub fn part(&self, range: Range<usize>) -> TransactionColumnsPart<'_> {
        TransactionColumnsPart {
            user_ids: &self.user_ids[range.clone()],
            timestamps_millis: &self.timestamps_millis[range.clone()],
            amounts: &self.amounts[range.clone()],
            currencies: &self.currencies,
            currency_spans: &self.currency_spans[range.clone()],
            counterpart_ids: &self.counterpart_ids[range],
        }
    }
}

/// The WIT `transaction-columns` of a run of a batch's transactions, with
/// the batch's columns lent rather than owned (the failure policy calls a
/// guest over halves of a batch, which lend the same currency string).
#[derive(ComponentType, Lower)]
#[component(record)]
pub struct TransactionColumnsPart<'a> {
    #[component(name = "user-ids")]
    pub user_ids: &'a [i32],
    #[component(name = "transaction-timestamps-millis")]
    pub timestamps_millis: &'a [i64],
    pub amounts: &'a [f32],
    pub currencies: &'a str,
    #[component(name = "currency-spans")]
    pub currency_spans: &'a [Span],
    #[component(name = "counterpart-ids")]
    pub counterpart_ids: &'a [i32],
}

/// The outcome of each record of `user_ids` that a `features-columns`
/// guest's `columns` (as many kinds as records) hold: an emitted feature is
/// of its record's user. `Err` says how the columns disagree.
pub fn outcomes_of(columns: FeatureColumns, user_ids: &[i32]) -> Result<Vec<FeatureOutcome>, String> {
    let count = |kind: OutcomeKind| columns.kinds.iter().filter(|k| **k == kind).count();
    let (emitted, rejected) = (count(OutcomeKind::Emit), count(OutcomeKind::Reject));
    if columns.kinds.len() != user_ids.len()
        || columns.totals.len() != emitted
        || columns.as_of_timestamps_millis.len() != emitted
        || columns.reasons.len() != rejected
    {
        return Err(format!(
            "{} kinds for {} records, {emitted} emitted features with {} totals and {} times, {rejected} \
             rejections with {} reasons",
            columns.kinds.len(),
            user_ids.len(),
            columns.totals.len(),
            columns.as_of_timestamps_millis.len(),
            columns.reasons.len()
        ));
    }
    let mut features = columns.totals.iter().zip(&columns.as_of_timestamps_millis);
    let mut reasons = columns.reasons.into_iter();
    let mut outcomes = Vec::with_capacity(user_ids.len());
    for (kind, user_id) in columns.kinds.iter().zip(user_ids) {
        outcomes.push(match kind {
            OutcomeKind::Emit => {
                let (total, time) = features.next().expect("a total and a time per emit, checked above");
                FeatureOutcome::Emit(Feature {
                    user_id: *user_id,
                    total_transactions_count: *total,
                    as_of_timestamp_millis: *time,
                })
            }
            OutcomeKind::Skip => FeatureOutcome::Skip,
            OutcomeKind::Reject => FeatureOutcome::Reject(reasons.next().expect("a reason per reject, checked above")),
        });
    }
    Ok(outcomes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transactions_come_back_as_pushed() {
        let mut columns = TransactionColumns::new();
        columns.push(1, 10, 1.5, "EUR", 7).expect("fits");
        columns.push(2, 20, -2.0, "", 8).expect("fits");
        columns.push(3, 30, 0.0, "CHF", 9).expect("fits");
        assert_eq!(columns.len(), 3);
        assert_eq!(columns.currency(0), "EUR");
        assert_eq!(columns.currency(1), "");
        assert_eq!(columns.transaction(2).currency, "CHF");
        assert_eq!(columns.transaction(1).amount, -2.0);
        let part = columns.part(1..3);
        assert_eq!(part.user_ids, &[2, 3]);
        assert_eq!(part.counterpart_ids, &[8, 9]);
        // A part lends the whole string; its spans say where its own are.
        assert_eq!(part.currencies, "EURCHF");
        assert_eq!(part.currency_spans[1].start, 3);
    }

    fn columns(kinds: &[OutcomeKind], totals: &[i32], reasons: &[&str]) -> FeatureColumns {
        FeatureColumns {
            kinds: kinds.to_vec(),
            totals: totals.to_vec(),
            as_of_timestamps_millis: totals.iter().map(|t| i64::from(*t) * 10).collect(),
            reasons: reasons.iter().map(|r| r.to_string()).collect(),
        }
    }

    #[test]
    fn each_kind_takes_the_next_entry_of_its_column() {
        use OutcomeKind::{Emit, Reject, Skip};
        let got =
            outcomes_of(columns(&[Emit, Reject, Skip, Emit], &[1, 2], &["why"]), &[5, 6, 7, 8]).expect("consistent");
        let shown: Vec<String> = got
            .iter()
            .map(|o| match o {
                FeatureOutcome::Emit(f) => format!(
                    "{}:{}@{}",
                    f.user_id, f.total_transactions_count, f.as_of_timestamp_millis
                ),
                FeatureOutcome::Skip => "skip".into(),
                FeatureOutcome::Reject(reason) => reason.clone(),
            })
            .collect();
        assert_eq!(shown, ["5:1@10", "why", "skip", "8:2@20"]);
    }

    #[test]
    fn columns_that_disagree_are_refused() {
        use OutcomeKind::{Emit, Reject};
        // A total missing, a reason missing, a kind too many.
        for (kinds, totals, reasons) in [
            (&[Emit, Emit][..], &[1][..], &[][..]),
            (&[Emit, Reject][..], &[1][..], &[][..]),
            (&[Emit, Emit, Emit][..], &[1, 2, 3][..], &[][..]),
        ] {
            let error = outcomes_of(columns(kinds, totals, reasons), &[5, 6]).expect_err("inconsistent");
            assert!(error.contains("for 2 records"), "{error}");
        }
    }
}
