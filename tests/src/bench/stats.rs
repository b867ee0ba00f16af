//! Repeated measurements and their summaries.

use std::time::{Duration, Instant};

/// The values of one measurement's repetitions (seconds, rates, ...).
#[derive(Clone, Debug, Default)]
pub struct Samples(pub Vec<f64>);

impl Samples {
    pub fn push(&mut self, v: f64) {
        self.0.push(v);
    }

    fn sorted(&self) -> Vec<f64> {
        let mut v = self.0.clone();
        v.sort_by(f64::total_cmp);
        v
    }

    /// The median (mean of the middle two for an even count); NaN when empty.
    pub fn median(&self) -> f64 {
        let v = self.sorted();
        match v.len() {
            0 => f64::NAN,
            n if n % 2 == 1 => v[n / 2],
            n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
        }
    }

    pub fn min(&self) -> f64 {
        self.sorted().first().copied().unwrap_or(f64::NAN)
    }

    pub fn max(&self) -> f64 {
        self.sorted().last().copied().unwrap_or(f64::NAN)
    }
}

/// Runs `f` once and returns its result and how long it took.
pub fn timed<T>(f: impl FnOnce() -> T) -> (T, Duration) {
    let start = Instant::now();
    let out = f();
    (out, start.elapsed())
}

/// `a / b` of two medians, or per-repetition pairs: see [`paired_ratio`].
pub fn ratio(a: f64, b: f64) -> f64 {
    if b == 0.0 { f64::NAN } else { a / b }
}

/// The median of `a[i] / b[i]`: repetitions of two configurations run back to back, so pairing
/// them cancels most of the drift of a loaded machine.
pub fn paired_ratio(a: &Samples, b: &Samples) -> f64 {
    Samples(a.0.iter().zip(&b.0).map(|(x, y)| ratio(*x, *y)).collect()).median()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_min_max_and_pairs() {
        let s = Samples(vec![3.0, 1.0, 2.0, 10.0]);
        assert_eq!((s.median(), s.min(), s.max()), (2.5, 1.0, 10.0));
        assert_eq!(Samples(vec![5.0, 1.0, 2.0]).median(), 2.0);
        assert!(Samples::default().median().is_nan());
        let a = Samples(vec![9.0, 10.0, 30.0]);
        let b = Samples(vec![10.0, 10.0, 10.0]);
        assert_eq!(paired_ratio(&a, &b), 1.0);
    }
}
