//! Medians, spreads and ratios of repeated timings: what `lifecycle-bench`
//! reports for each measured sequence.

use serde::{Deserialize, Serialize};

/// Repeated timings of one sequence, in milliseconds, with the summary the
/// report and the plot read.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Series {
    /// What was timed, e.g. `bottle up (warm)`.
    pub name: String,
    /// Every run, in the order they ran.
    pub runs_ms: Vec<f64>,
    pub median_ms: f64,
    pub min_ms: f64,
    pub max_ms: f64,
}

impl Series {
    /// The summary of `runs_ms` (at least one run).
    pub fn of(name: &str, runs_ms: Vec<f64>) -> Series {
        Series {
            name: name.into(),
            median_ms: median(&runs_ms),
            min_ms: runs_ms.iter().copied().fold(f64::INFINITY, f64::min),
            max_ms: runs_ms.iter().copied().fold(f64::NEG_INFINITY, f64::max),
            runs_ms,
        }
    }

    /// `median (min–max)` in milliseconds.
    pub fn cell(&self) -> String {
        format!(
            "{:.0} ms ({:.0}–{:.0})",
            self.median_ms, self.min_ms, self.max_ms
        )
    }
}

/// The median of `values` (the mean of the middle two for an even count);
/// 0 for none.
pub fn median(values: &[f64]) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    if v.len() % 2 == 1 {
        v[mid]
    } else {
        (v[mid - 1] + v[mid]) / 2.0
    }
}

/// `a`'s median over `b`'s, e.g. `1.12×`.
pub fn ratio(a: &Series, b: &Series) -> f64 {
    if b.median_ms > 0.0 {
        a.median_ms / b.median_ms
    } else {
        f64::NAN
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_spreads_and_ratios() {
        assert_eq!(median(&[]), 0.0);
        assert_eq!(median(&[3.0]), 3.0);
        assert_eq!(median(&[5.0, 1.0, 3.0]), 3.0);
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 2.5);
        let s = Series::of("up", vec![1200.0, 1000.0, 1100.0]);
        assert_eq!((s.median_ms, s.min_ms, s.max_ms), (1100.0, 1000.0, 1200.0));
        assert_eq!(s.runs_ms, [1200.0, 1000.0, 1100.0], "kept in run order");
        assert_eq!(s.cell(), "1100 ms (1000–1200)");
        let raw = Series::of("raw", vec![1000.0]);
        assert!((ratio(&s, &raw) - 1.1).abs() < 1e-9);
        assert!(ratio(&s, &Series::of("none", vec![0.0])).is_nan());
    }
}
