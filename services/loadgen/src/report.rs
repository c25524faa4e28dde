//! The result of a run: [`Summary`], printed as a table ([`std::fmt::Display`]) or JSON.

use std::collections::BTreeMap;
use std::fmt;

use hdrhistogram::Histogram;
use serde::Serialize;

/// Everything a run measured. Times are seconds from the first submit request;
/// latencies are milliseconds.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Summary {
    pub kind: String,
    /// Jobs asked for.
    pub jobs: u64,
    pub concurrency: usize,
    pub wall_secs: f64,
    /// Jobs the gateway accepted (2xx).
    pub accepted: u64,
    /// Submit requests that failed (see `http_errors`).
    pub submit_errors: u64,
    /// Until the last submit answer.
    pub submit_secs: f64,
    /// Accepted jobs per second of `submit_secs`.
    pub submit_throughput: f64,
    /// Jobs seen in a terminal state.
    pub done: u64,
    /// Until the last job finished.
    pub e2e_secs: f64,
    /// Done jobs per second of `e2e_secs`.
    pub e2e_throughput: f64,
    pub succeeded: u64,
    pub failed: u64,
    /// Other terminal states (cancelled).
    pub other: u64,
    /// Accepted but not finished when the run ended.
    pub pending: u64,
    /// Never sent, because the run was stopped first.
    pub not_submitted: u64,
    /// Every job asked for reached a terminal state.
    pub complete: bool,
    /// Why the run stopped early ("timeout", "interrupted", ...).
    pub stopped_by: Option<String>,
    /// From sending the submit request to its answer.
    pub submit_latency_ms: Percentiles,
    /// From sending the submit request to seeing the job terminal in `job_status`.
    pub e2e_latency_ms: Percentiles,
    /// Failed submits by HTTP status, or `transport` / `invalid_body`.
    pub http_errors: BTreeMap<String, u64>,
    /// The first error message of each `http_errors` group.
    pub error_examples: BTreeMap<String, String>,
}

/// A latency distribution, in milliseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Percentiles {
    pub count: u64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
}

impl Percentiles {
    /// From a histogram of microseconds; all zero when it is empty.
    pub fn from_micros(histogram: &Histogram<u64>) -> Self {
        if histogram.is_empty() {
            return Self::default();
        }
        let ms = |us: u64| us as f64 / 1000.0;
        Self {
            count: histogram.len(),
            p50: ms(histogram.value_at_quantile(0.50)),
            p90: ms(histogram.value_at_quantile(0.90)),
            p99: ms(histogram.value_at_quantile(0.99)),
            max: ms(histogram.max()),
        }
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "jetjobs loadgen: {} x {}, concurrency {}",
            self.jobs, self.kind, self.concurrency
        )?;
        writeln!(f, "  {:<14}{:.3} s", "wall time", self.wall_secs)?;
        writeln!(
            f,
            "  {:<14}{} accepted, {} errors in {:.3} s  ({:.1} jobs/s)",
            "submitted",
            self.accepted,
            self.submit_errors,
            self.submit_secs,
            self.submit_throughput
        )?;
        writeln!(
            f,
            "  {:<14}{} in {:.3} s  ({:.1} jobs/s end to end)",
            "done", self.done, self.e2e_secs, self.e2e_throughput
        )?;
        writeln!(
            f,
            "  {:<14}succeeded {}, failed {}, other {}, pending {}, not submitted {}",
            "outcome", self.succeeded, self.failed, self.other, self.pending, self.not_submitted
        )?;
        writeln!(f)?;
        writeln!(
            f,
            "  {:<14}{:>10}{:>10}{:>10}{:>10}{:>10}",
            "latency (ms)", "count", "p50", "p90", "p99", "max"
        )?;
        latency_row(f, "submit", &self.submit_latency_ms)?;
        latency_row(f, "submit->done", &self.e2e_latency_ms)?;
        if !self.http_errors.is_empty() {
            writeln!(f)?;
            writeln!(f, "  errors")?;
            for (key, count) in &self.http_errors {
                let example = self
                    .error_examples
                    .get(key)
                    .map(String::as_str)
                    .unwrap_or("");
                writeln!(f, "  {key:<14}{count:>10}  {}", one_line(example))?;
            }
        }
        if !self.complete {
            writeln!(f)?;
            let reason = self
                .stopped_by
                .as_deref()
                .unwrap_or("some jobs were not accepted");
            writeln!(
                f,
                "  INCOMPLETE ({reason}): {} of {} jobs reached a terminal state",
                self.done, self.jobs
            )?;
        }
        Ok(())
    }
}

fn latency_row(f: &mut fmt::Formatter<'_>, label: &str, p: &Percentiles) -> fmt::Result {
    if p.count == 0 {
        return writeln!(
            f,
            "  {label:<14}{:>10}{:>10}{:>10}{:>10}{:>10}",
            0, "-", "-", "-", "-"
        );
    }
    writeln!(
        f,
        "  {label:<14}{:>10}{:>10.3}{:>10.3}{:>10.3}{:>10.3}",
        p.count, p.p50, p.p90, p.p99, p.max
    )
}

/// Error bodies can be multi-line JSON; the table keeps one line per error.
fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn histogram(micros: impl IntoIterator<Item = u64>) -> Histogram<u64> {
        let mut histogram = Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid bounds");
        for us in micros {
            histogram.record(us).expect("in range");
        }
        histogram
    }

    fn summary() -> Summary {
        Summary {
            kind: "sleep".to_string(),
            jobs: 1000,
            concurrency: 64,
            wall_secs: 2.5,
            accepted: 998,
            submit_errors: 2,
            submit_secs: 0.5,
            submit_throughput: 1996.0,
            done: 998,
            e2e_secs: 2.0,
            e2e_throughput: 499.0,
            succeeded: 997,
            failed: 1,
            other: 0,
            pending: 0,
            not_submitted: 0,
            complete: false,
            stopped_by: None,
            submit_latency_ms: Percentiles {
                count: 1000,
                p50: 1.234,
                p90: 2.5,
                p99: 10.0,
                max: 31.5,
            },
            e2e_latency_ms: Percentiles {
                count: 998,
                p50: 52.1,
                p90: 60.0,
                p99: 75.125,
                max: 120.0,
            },
            http_errors: BTreeMap::from([("503".to_string(), 2)]),
            error_examples: BTreeMap::from([(
                "503".to_string(),
                "{\n  \"title\": \"queue full\"\n}".to_string(),
            )]),
        }
    }

    #[test]
    fn percentiles_in_milliseconds() {
        // 1..=1000 ms, in microseconds.
        let p = Percentiles::from_micros(&histogram((1..=1000).map(|ms| ms * 1000)));
        assert_eq!(p.count, 1000);
        // Three significant digits: each value within 0.1% of the exact percentile.
        for (got, exact) in [
            (p.p50, 500.0),
            (p.p90, 900.0),
            (p.p99, 990.0),
            (p.max, 1000.0),
        ] {
            assert!((got - exact).abs() <= exact / 1000.0, "{got} vs {exact}");
        }
        let fine = Percentiles::from_micros(&histogram([1_234, 1_234, 5]));
        assert_eq!((fine.p50, fine.max), (1.234, 1.234));
    }

    #[test]
    fn empty_percentiles_are_zero() {
        assert_eq!(
            Percentiles::from_micros(&histogram([])),
            Percentiles::default()
        );
    }

    #[test]
    fn table() {
        let expected = "\
jetjobs loadgen: 1000 x sleep, concurrency 64
  wall time     2.500 s
  submitted     998 accepted, 2 errors in 0.500 s  (1996.0 jobs/s)
  done          998 in 2.000 s  (499.0 jobs/s end to end)
  outcome       succeeded 997, failed 1, other 0, pending 0, not submitted 0

  latency (ms)       count       p50       p90       p99       max
  submit              1000     1.234     2.500    10.000    31.500
  submit->done         998    52.100    60.000    75.125   120.000

  errors
  503                    2  { \"title\": \"queue full\" }

  INCOMPLETE (some jobs were not accepted): 998 of 1000 jobs reached a terminal state
";
        assert_eq!(summary().to_string(), expected);
    }

    #[test]
    fn table_of_a_clean_run_has_no_error_section() {
        let clean = Summary {
            http_errors: BTreeMap::new(),
            error_examples: BTreeMap::new(),
            complete: true,
            e2e_latency_ms: Percentiles::default(),
            ..summary()
        };
        let table = clean.to_string();
        assert!(
            !table.contains("errors\n") && !table.contains("INCOMPLETE"),
            "{table}"
        );
        assert!(
            table.contains("  submit->done           0         -         -         -         -\n"),
            "{table}"
        );
    }

    #[test]
    fn json_has_the_same_numbers() {
        let value = serde_json::to_value(summary()).expect("encodes");
        assert_eq!(value["jobs"], 1000);
        assert_eq!(value["submit_throughput"], 1996.0);
        assert_eq!(
            value["e2e_latency_ms"],
            json!({"count": 998, "p50": 52.1, "p90": 60.0, "p99": 75.125, "max": 120.0})
        );
        assert_eq!(value["http_errors"], json!({"503": 2}));
        assert_eq!(value["complete"], false);
        assert_eq!(value["stopped_by"], serde_json::Value::Null);
    }
}
