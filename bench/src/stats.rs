//! Latency percentiles and failure tallies shared by the scenarios.

use std::{collections::BTreeMap, fmt::Display, time::Duration};

/// Request latencies of one scenario phase.
#[derive(Debug, Default)]
pub struct Latencies(Vec<Duration>);

impl Latencies {
    pub fn push(&mut self, d: Duration) {
        self.0.push(d);
    }

    pub fn extend(&mut self, other: Latencies) {
        self.0.extend(other.0);
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Nearest-rank percentile in milliseconds (`p` in 0..=100); NaN without samples, so an
    /// empty phase never shows a plausible-looking 0 ms.
    pub fn percentile_ms(&self, p: f64) -> f64 {
        if self.0.is_empty() {
            return f64::NAN;
        }
        let mut sorted = self.0.clone();
        sorted.sort_unstable();
        let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
        let index = rank.clamp(1, sorted.len()) - 1;
        sorted[index].as_secs_f64() * 1000.0
    }

    /// The smallest sample in milliseconds; NaN without samples.
    pub fn min_ms(&self) -> f64 {
        self.0
            .iter()
            .min()
            .map_or(f64::NAN, |d| d.as_secs_f64() * 1000.0)
    }

    /// The largest sample in milliseconds; NaN without samples.
    pub fn max_ms(&self) -> f64 {
        self.0
            .iter()
            .max()
            .map_or(f64::NAN, |d| d.as_secs_f64() * 1000.0)
    }

    pub fn mean_ms(&self) -> f64 {
        if self.0.is_empty() {
            return f64::NAN;
        }
        let total: Duration = self.0.iter().sum();
        total.as_secs_f64() * 1000.0 / self.0.len() as f64
    }
}

/// Failures grouped by category, each with a count and the first example, so the report stays
/// short even when every request fails the same way.
#[derive(Debug, Default)]
pub struct Failures(BTreeMap<String, (u64, String)>);

/// How many distinct examples a report shows.
const SHOWN: usize = 10;

impl Failures {
    pub fn add(&mut self, category: impl Into<String>, example: impl Display) {
        let entry = self
            .0
            .entry(category.into())
            .or_insert_with(|| (0, example.to_string()));
        entry.0 += 1;
    }

    pub fn merge(&mut self, other: Failures) {
        for (category, (count, example)) in other.0 {
            let entry = self.0.entry(category).or_insert((0, example));
            entry.0 += count;
        }
    }

    pub fn total(&self) -> u64 {
        self.0.values().map(|(n, _)| n).sum()
    }

    /// `(category, count, first example)`, most frequent first.
    pub fn top(&self) -> Vec<(&str, u64, &str)> {
        let mut all: Vec<_> = self
            .0
            .iter()
            .map(|(c, (n, e))| (c.as_str(), *n, e.as_str()))
            .collect();
        all.sort_by_key(|a| std::cmp::Reverse(a.1));
        all.truncate(SHOWN);
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let mut l = Latencies::default();
        for ms in 1..=100 {
            l.push(Duration::from_millis(ms));
        }
        assert_eq!(l.percentile_ms(50.0), 50.0);
        assert_eq!(l.percentile_ms(99.0), 99.0);
        assert_eq!(l.percentile_ms(100.0), 100.0);
        assert_eq!(l.percentile_ms(0.0), 1.0);
        assert!(Latencies::default().percentile_ms(50.0).is_nan());
    }

    #[test]
    fn failures_group_and_count() {
        let mut f = Failures::default();
        f.add("HTTP 500", "first");
        f.add("HTTP 500", "second");
        let mut g = Failures::default();
        g.add("transport", "refused");
        g.add("HTTP 500", "third");
        f.merge(g);
        assert_eq!(f.total(), 4);
        assert_eq!(f.top()[0], ("HTTP 500", 3, "first"));
    }
}
