//! Process metrics in the Prometheus text exposition format.
//!
//! A deliberately small registry: counters and histograms keyed by a few fixed labels, rendered on
//! demand. Route labels are route templates (never raw paths), so a scan of random URLs cannot grow
//! memory without bound.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Upper bounds, in seconds, of the request latency histogram buckets.
const LATENCY_BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

#[derive(Debug, Default, Clone)]
struct Histogram {
    buckets: [u64; LATENCY_BUCKETS.len()],
    count: u64,
    sum: f64,
}

impl Histogram {
    fn observe(&mut self, seconds: f64) {
        for (i, bound) in LATENCY_BUCKETS.iter().enumerate() {
            if seconds <= *bound {
                self.buckets[i] += 1;
            }
        }
        self.count += 1;
        self.sum += seconds;
    }
}

#[derive(Debug, Default)]
struct HttpMetrics {
    gauges: BTreeMap<&'static str, f64>,
    requests: BTreeMap<(String, String, u16), u64>,
    latency: BTreeMap<String, Histogram>,
}

#[derive(Debug)]
pub struct Metrics {
    started: Instant,
    started_unix: f64,
    http: Mutex<HttpMetrics>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        Metrics {
            started: Instant::now(),
            started_unix: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs_f64())
                .unwrap_or(0.0),
            http: Mutex::new(HttpMetrics::default()),
        }
    }

    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    /// Sets a gauge that some background task owns (overdue incidents, for example).
    pub fn set_gauge(&self, name: &'static str, value: f64) {
        if let Ok(mut http) = self.http.lock() {
            http.gauges.insert(name, value);
        }
    }

    pub fn record_request(&self, route: &str, method: &str, status: u16, elapsed: Duration) {
        if let Ok(mut http) = self.http.lock() {
            *http
                .requests
                .entry((route.to_string(), method.to_string(), status))
                .or_default() += 1;
            // Called for every request: a route seen before needs no new key.
            match http.latency.get_mut(route) {
                Some(h) => h.observe(elapsed.as_secs_f64()),
                None => {
                    let mut h = Histogram::default();
                    h.observe(elapsed.as_secs_f64());
                    http.latency.insert(route.to_string(), h);
                }
            }
        }
    }

    /// Renders every metric. `extra` lets owners of other state (the store) append theirs.
    pub fn render(&self, extra: &[Sample]) -> String {
        let mut out = String::with_capacity(4096);
        let version = env!("CARGO_PKG_VERSION");
        let _ = writeln!(
            out,
            "# HELP township_build_info Build information; the value is always 1."
        );
        let _ = writeln!(out, "# TYPE township_build_info gauge");
        let _ = writeln!(out, "township_build_info{{version=\"{version}\"}} 1");

        let _ = writeln!(
            out,
            "# HELP process_start_time_seconds Start time of the process since the Unix epoch."
        );
        let _ = writeln!(out, "# TYPE process_start_time_seconds gauge");
        let _ = writeln!(out, "process_start_time_seconds {:.3}", self.started_unix);
        let _ = writeln!(
            out,
            "# HELP township_uptime_seconds Seconds since the node started."
        );
        let _ = writeln!(out, "# TYPE township_uptime_seconds gauge");
        let _ = writeln!(
            out,
            "township_uptime_seconds {:.3}",
            self.uptime().as_secs_f64()
        );

        if let Some(rss) = resident_memory_bytes() {
            let _ = writeln!(
                out,
                "# HELP process_resident_memory_bytes Resident memory size in bytes."
            );
            let _ = writeln!(out, "# TYPE process_resident_memory_bytes gauge");
            let _ = writeln!(out, "process_resident_memory_bytes {rss}");
        }

        if let Ok(http) = self.http.lock() {
            let _ = writeln!(
                out,
                "# HELP http_requests_total HTTP requests by route template, method and status."
            );
            let _ = writeln!(out, "# TYPE http_requests_total counter");
            for ((route, method, status), count) in &http.requests {
                let _ = writeln!(
                    out,
                    "http_requests_total{{route=\"{}\",method=\"{}\",status=\"{status}\"}} {count}",
                    escape(route),
                    escape(method)
                );
            }
            let _ = writeln!(
                out,
                "# HELP http_request_duration_seconds HTTP request latency by route template."
            );
            let _ = writeln!(out, "# TYPE http_request_duration_seconds histogram");
            for (route, h) in &http.latency {
                let route = escape(route);
                for (bound, count) in LATENCY_BUCKETS.iter().zip(h.buckets.iter()) {
                    let _ = writeln!(
                        out,
                        "http_request_duration_seconds_bucket{{route=\"{route}\",le=\"{bound}\"}} {count}"
                    );
                }
                let _ = writeln!(
                    out,
                    "http_request_duration_seconds_bucket{{route=\"{route}\",le=\"+Inf\"}} {}",
                    h.count
                );
                let _ = writeln!(
                    out,
                    "http_request_duration_seconds_sum{{route=\"{route}\"}} {}",
                    h.sum
                );
                let _ = writeln!(
                    out,
                    "http_request_duration_seconds_count{{route=\"{route}\"}} {}",
                    h.count
                );
            }
        }

        if let Ok(http) = self.http.lock() {
            for (name, value) in &http.gauges {
                let _ = writeln!(out, "# TYPE {name} gauge");
                let _ = writeln!(out, "{name} {value}");
            }
        }
        for sample in extra {
            let _ = writeln!(out, "# HELP {} {}", sample.name, sample.help);
            let _ = writeln!(out, "# TYPE {} {}", sample.name, sample.kind);
            let _ = writeln!(out, "{} {}", sample.name, sample.value);
        }
        out
    }
}

/// One unlabelled sample contributed by another subsystem.
#[derive(Debug, Clone)]
pub struct Sample {
    pub name: &'static str,
    pub help: &'static str,
    pub kind: &'static str,
    pub value: f64,
}

fn escape(label: &str) -> String {
    label
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Resident set size from `/proc/self/statm` (Linux), in bytes.
pub fn resident_memory_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * rustix::param::page_size() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text() {
        let m = Metrics::new();
        m.record_request("/healthz", "GET", 200, Duration::from_millis(3));
        m.record_request("/healthz", "GET", 200, Duration::from_millis(30));
        let text = m.render(&[Sample {
            name: "township_db_size_bytes",
            help: "Database size.",
            kind: "gauge",
            value: 4096.0,
        }]);
        assert!(
            text.contains(
                "http_requests_total{route=\"/healthz\",method=\"GET\",status=\"200\"} 2"
            )
        );
        assert!(
            text.contains(
                "http_request_duration_seconds_bucket{route=\"/healthz\",le=\"0.005\"} 1"
            )
        );
        assert!(
            text.contains("http_request_duration_seconds_bucket{route=\"/healthz\",le=\"+Inf\"} 2")
        );
        assert!(text.contains("township_db_size_bytes 4096"));
        assert!(text.contains("process_resident_memory_bytes"));
        assert!(text.contains("township_build_info{version="));
    }
}
