//! transactions-producer guest: realistic fake payments, a pure function of
//! (seed, index). Users have skewed activity (a few are very busy), most
//! transactions are card debits to merchants, some are credits from other
//! users, amounts are log-distributed in a handful of ISO 4217 currencies.

// wit-bindgen's generated glue (exports, canonical ABI) is unsafe FFI by nature.
#![allow(unsafe_code)]

wit_bindgen::generate!({ world: "generator", path: "../../wit" });

/// Distinct users; ids are 1..=USERS.
const USERS: f64 = 10_000.0;
/// Merchant ids live above user ids so the two never collide.
const MERCHANT_BASE: i32 = 1_000_000;
const MERCHANTS: f64 = 2_000.0;
/// Currencies with cumulative weights (EUR-heavy, as for a European PSP).
const CURRENCIES: [(&str, f64); 6] = [
    ("EUR", 0.55),
    ("USD", 0.75),
    ("GBP", 0.87),
    ("CHF", 0.93),
    ("SEK", 0.97),
    ("JPY", 1.0),
];
/// Share of transactions that are debits (negative amounts).
const DEBIT_SHARE: f64 = 0.8;

struct Producer;

impl Guest for Producer {
    fn generate(seed: u64, first_index: u64, count: u32, start_millis: i64) -> Vec<Transaction> {
        (first_index..first_index + u64::from(count))
            .map(|index| transaction(seed, index, start_millis))
            .collect()
    }
}

fn transaction(seed: u64, index: u64, start_millis: i64) -> Transaction {
    let mut rng = SplitMix64(seed ^ index.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    // Cubing a uniform draw gives a power-law-like skew towards low ids.
    let user_id = 1 + (rng.unit().powi(3) * USERS) as i32;
    let debit = rng.unit() < DEBIT_SHARE;
    let counterpart_id = if debit {
        MERCHANT_BASE + (rng.unit().powi(2) * MERCHANTS) as i32
    } else {
        1 + (rng.unit() * USERS) as i32
    };
    let draw = rng.unit();
    let (currency, _) = CURRENCIES
        .iter()
        .find(|(_, cumulative)| draw < *cumulative)
        .unwrap_or(&CURRENCIES[0]);
    // 10^[0,3.5): from 1 to ~3,000 units, most of them small.
    let magnitude = 10f64.powf(rng.unit() * 3.5);
    let magnitude = if *currency == "JPY" {
        (magnitude * 100.0).round()
    } else {
        (magnitude * 100.0).round() / 100.0
    };
    let amount = if debit { -magnitude } else { magnitude } as f32;
    // One millisecond per transaction after the run's start: event times are
    // increasing and (user_id, transaction_timestamp_millis) is unique, the
    // natural key analysts deduplicate on.
    let transaction_timestamp_millis = start_millis + index as i64;
    Transaction {
        user_id,
        transaction_timestamp_millis,
        amount,
        currency: (*currency).to_string(),
        counterpart_id,
    }
}

/// splitmix64: tiny, fast and good enough for fake data.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

export!(Producer);
