//! What the benches share: percentiles of individually timed calls (criterion reports
//! estimates of the mean and median; p50 and p99 are the figures BENCHMARKS.md reports).

use std::time::Duration;

pub fn percentiles(name: &str, mut samples: Vec<Duration>) {
    samples.sort();
    let at = |q: f64| {
        samples
            .get(((samples.len() as f64 - 1.0) * q) as usize)
            .copied()
            .unwrap_or_default()
    };
    eprintln!(
        "{name}: p50 {:.1} µs, p99 {:.1} µs ({} calls)",
        at(0.50).as_secs_f64() * 1e6,
        at(0.99).as_secs_f64() * 1e6,
        samples.len()
    );
}
