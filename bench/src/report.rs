//! What a scenario measured, printed twice: aligned lines for people and one JSON line per result
//! (lines starting with `{`) for scripts.

use std::borrow::Cow;

use serde_json::{json, Map, Value};

use crate::stats::Failures;

/// One measured number.
#[derive(Debug, Clone)]
pub struct Metric {
    /// Stable JSON key, e.g. `messages_per_sec` (built at run time where it names a parameter,
    /// such as `join_1000_median_ms`).
    pub key: Cow<'static, str>,
    pub label: Cow<'static, str>,
    pub value: f64,
    pub unit: &'static str,
    /// Whether `compare` divides it: rates and latencies yes, counts and wall times no.
    pub comparable: bool,
    /// Whether a smaller value is the better one (latencies, durations, memory), so that a
    /// ratio below 1 favours the numerator; for rates it is the other way round.
    pub lower_is_better: bool,
}

/// Units of figures where less is better; everything else (rates) is better higher.
const LOWER_IS_BETTER: &[&str] = &["ms", "s", "MiB", "KiB"];

impl Metric {
    pub fn new(
        key: impl Into<Cow<'static, str>>,
        label: impl Into<Cow<'static, str>>,
        value: f64,
        unit: &'static str,
    ) -> Metric {
        Metric {
            key: key.into(),
            label: label.into(),
            value,
            unit,
            comparable: true,
            lower_is_better: LOWER_IS_BETTER.contains(&unit),
        }
    }

    /// Shown and put in the JSON, but left out of the ratios.
    pub fn info(self) -> Metric {
        Metric {
            comparable: false,
            ..self
        }
    }
}

/// The result of one scenario against one server.
#[derive(Debug)]
pub struct Report {
    pub scenario: &'static str,
    /// The headline figure first: that is what `compare` puts in its summary line.
    pub metrics: Vec<Metric>,
    /// The parameters the figures depend on (counts, concurrency), echoed into the JSON.
    pub params: Value,
    pub failures: Failures,
    /// Observations that are neither figures nor failures (e.g. what woke an idle long-poll),
    /// printed under the figures and put in the JSON.
    pub notes: Vec<String>,
}

impl Report {
    pub fn metric(&self, key: &str) -> Option<f64> {
        self.metrics.iter().find(|m| m.key == key).map(|m| m.value)
    }

    /// Prints the report of `server` (a label such as `hearth`) at `url` for people.
    pub fn print_text(&self, server: &str, url: &str) {
        println!("[{}] {server} ({url})", self.scenario);
        for m in &self.metrics {
            println!("  {:<34} {:>12} {}", m.label, fmt_num(m.value), m.unit);
        }
        println!("  {:<34} {:>12}", "failures", self.failures.total());
        for (category, count, example) in self.failures.top() {
            println!("    {count:>6} x {category}: {example}");
        }
        for note in &self.notes {
            println!("  note: {note}");
        }
    }

    /// Prints the report's JSON line (`"type":"figure"`) for scripts: only for figures that
    /// count, i.e. not when the closing health check failed.
    pub fn print_json(&self, server: &str, url: &str) {
        let metrics: Map<String, Value> = self
            .metrics
            .iter()
            .map(|m| (m.key.to_string(), json!(m.value)))
            .collect();
        let failures: Map<String, Value> = self
            .failures
            .top()
            .into_iter()
            .map(|(c, n, _)| (c.to_owned(), json!(n)))
            .collect();
        let line = json!({
            "type": "figure",
            "scenario": self.scenario,
            "server": server,
            "url": url,
            "metrics": metrics,
            "failures": self.failures.total(),
            "failure_kinds": failures,
            "params": self.params,
            "notes": self.notes,
        });
        println!("{line}");
    }
}

/// Prints Hearth's figures over Synapse's (or whatever the two labels are) for every metric both
/// reports have, each with the direction that favours the numerator: above 1 for rates, below 1
/// for latencies, durations and memory.
pub fn print_ratio(scenario: &str, a_label: &str, a: &Report, b_label: &str, b: &Report) {
    println!(
        "[{scenario}] ratio {a_label}/{b_label} (rates: >1 means {a_label} is better; \
         latencies, times, memory: <1 means {a_label} is better)"
    );
    let mut ratios = Map::new();
    let mut better = Map::new();
    for m in a.metrics.iter().filter(|m| m.comparable) {
        let Some(other) = b.metric(&m.key) else {
            continue;
        };
        let ratio = m.value / other;
        let verdict = if !ratio.is_finite() || ratio == 1.0 {
            "".to_owned()
        } else if (ratio < 1.0) == m.lower_is_better {
            if matches!(m.unit, "ms" | "s") {
                // "0.04x" undersells a time; the inverse is how the README states it.
                format!("{a_label} better ({}x faster)", fmt_num(1.0 / ratio))
            } else {
                format!("{a_label} better")
            }
        } else {
            format!("{b_label} better")
        };
        println!(
            "  {:<34} {:>12} / {:>12} = {:>8}x  ({} better) {verdict}",
            m.label,
            fmt_num(m.value),
            fmt_num(other),
            fmt_num(ratio),
            if m.lower_is_better { "<1" } else { ">1" },
        );
        ratios.insert(m.key.to_string(), json!(ratio));
        better.insert(
            m.key.to_string(),
            json!(if m.lower_is_better { "lower" } else { "higher" }),
        );
    }
    let line = json!({
        "type": "ratio",
        "scenario": scenario,
        "numerator": a_label,
        "denominator": b_label,
        "ratios": ratios,
        "better": better,
        "failures": { a_label: a.failures.total(), b_label: b.failures.total() },
    });
    println!("{line}");
}

/// Three significant-ish digits without scientific notation; `n/a` for NaN or infinity (no
/// samples, division by zero).
fn fmt_num(v: f64) -> String {
    if !v.is_finite() {
        "n/a".to_owned()
    } else if v.abs() >= 100.0 || v.fract() == 0.0 {
        format!("{v:.0}")
    } else if v.abs() >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}
