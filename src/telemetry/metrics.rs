//! Metrics: one registry in the process, exposed two ways — Prometheus text at
//! `GET /metrics`, and OTLP through OpenTelemetry instruments that read the same values
//! (counters and gauges observed from the registry, histograms recorded to both).
//!
//! Gauges about orchestrator state (outstanding HITL requests, the oldest one's age, runs
//! in flight by status, queue depth) are read from PostgreSQL by the service layer's
//! `refresh_gauges`, so
//! every replica reports the same numbers. Counters and histograms count what this
//! process did; sum them across replicas.

use std::collections::BTreeMap;
use std::sync::{Mutex, OnceLock};

use opentelemetry::KeyValue;
use opentelemetry::metrics::Histogram;

/// What a metric is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// Every metric this service exports: name, kind, help.
pub const METRICS: &[(&str, Kind, &str)] = &[
    (
        "hitl_outstanding_requests",
        Kind::Gauge,
        "HITL requests pending an operator (from the database)",
    ),
    (
        "hitl_oldest_pending_age_seconds",
        Kind::Gauge,
        "Age of the oldest pending HITL request (from the database)",
    ),
    (
        "hitl_runs_active",
        Kind::Gauge,
        "Unfinished runs by status (from the database)",
    ),
    (
        "hitl_queue_jobs",
        Kind::Gauge,
        "Jobs in the queue by queue and status (from the database)",
    ),
    (
        "hitl_commands_total",
        Kind::Counter,
        "Commands finished by this process, by kind and outcome",
    ),
    (
        "hitl_command_latency_seconds",
        Kind::Histogram,
        "From a command's submission to its transition committed",
    ),
    (
        "hitl_jobs_total",
        Kind::Counter,
        "Jobs run by this process, by queue and outcome",
    ),
    (
        "hitl_run_transitions_total",
        Kind::Counter,
        "Runs moved into a status by this process",
    ),
    (
        "hitl_runs_rehydrated_total",
        Kind::Counter,
        "Runs checked after a start (scanned) or repaired, by what did it",
    ),
    (
        "hitl_agent_call_seconds",
        Kind::Histogram,
        "Duration of agent webhook calls, by outcome",
    ),
    (
        "hitl_agent_errors_total",
        Kind::Counter,
        "Agent webhook call errors, by kind",
    ),
    (
        "hitl_notifications_total",
        Kind::Counter,
        "Notification delivery attempts, by channel and outcome (delivered, retried, failed)",
    ),
];

const BUCKETS: [f64; 15] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// A series' labels, sorted by name.
pub type Labels = Vec<(String, String)>;

#[derive(Clone, Debug, Default)]
struct Hist {
    counts: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

#[derive(Default)]
struct Registry {
    values: BTreeMap<(&'static str, Labels), f64>,
    hists: BTreeMap<(&'static str, Labels), Hist>,
}

/// The process's metrics.
pub struct Metrics {
    registry: Mutex<Registry>,
    otel_histograms: Mutex<BTreeMap<&'static str, Histogram<f64>>>,
}

/// The process-wide metrics registry.
pub fn metrics() -> &'static Metrics {
    static METRICS_REGISTRY: OnceLock<Metrics> = OnceLock::new();
    METRICS_REGISTRY.get_or_init(|| Metrics {
        registry: Mutex::new(Registry::default()),
        otel_histograms: Mutex::new(BTreeMap::new()),
    })
}

fn labels(pairs: &[(&str, &str)]) -> Labels {
    let mut l: Labels = pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    l.sort();
    l
}

fn kvs(l: &Labels) -> Vec<KeyValue> {
    l.iter()
        .map(|(k, v)| KeyValue::new(k.clone(), v.clone()))
        .collect()
}

impl Metrics {
    fn lock(&self) -> std::sync::MutexGuard<'_, Registry> {
        self.registry.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds `by` to counter `name`.
    pub fn add(&self, name: &'static str, pairs: &[(&str, &str)], by: u64) {
        *self
            .lock()
            .values
            .entry((name, labels(pairs)))
            .or_insert(0.0) += by as f64;
    }

    /// Adds one to counter `name`.
    pub fn inc(&self, name: &'static str, pairs: &[(&str, &str)]) {
        self.add(name, pairs, 1);
    }

    /// Sets gauge `name`.
    pub fn set(&self, name: &'static str, pairs: &[(&str, &str)], value: f64) {
        self.lock().values.insert((name, labels(pairs)), value);
    }

    /// Records `seconds` in histogram `name`.
    pub fn observe(&self, name: &'static str, pairs: &[(&str, &str)], seconds: f64) {
        let l = labels(pairs);
        {
            let mut r = self.lock();
            let h = r.hists.entry((name, l.clone())).or_default();
            for (i, bound) in BUCKETS.iter().enumerate() {
                if seconds <= *bound {
                    h.counts[i] += 1;
                }
            }
            h.count += 1;
            h.sum += seconds;
        }
        if let Some(hist) = self
            .otel_histograms
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
        {
            hist.record(seconds, &kvs(&l));
        }
    }

    pub fn series(&self, name: &str) -> Vec<(Labels, f64)> {
        self.lock()
            .values
            .iter()
            .filter(|((n, _), _)| *n == name)
            .map(|((_, l), v)| (l.clone(), *v))
            .collect()
    }

    /// The value of `name` with exactly these labels (0 when never set).
    pub fn value(&self, name: &'static str, pairs: &[(&str, &str)]) -> f64 {
        self.lock()
            .values
            .get(&(name, labels(pairs)))
            .copied()
            .unwrap_or(0.0)
    }

    /// Everything in the Prometheus text exposition format.
    pub fn render_prometheus(&self) -> String {
        let r = self.lock();
        let mut out = String::new();
        let fmt_labels = |l: &Labels, extra: Option<(&str, String)>| {
            let mut parts: Vec<String> = l
                .iter()
                .map(|(k, v)| format!("{k}=\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\"")))
                .collect();
            if let Some((k, v)) = extra {
                parts.push(format!("{k}=\"{v}\""));
            }
            if parts.is_empty() {
                String::new()
            } else {
                format!("{{{}}}", parts.join(","))
            }
        };
        for (name, kind, help) in METRICS {
            let kind_name = match kind {
                Kind::Counter => "counter",
                Kind::Gauge => "gauge",
                Kind::Histogram => "histogram",
            };
            out.push_str(&format!(
                "# HELP {name} {help}\n# TYPE {name} {kind_name}\n"
            ));
            match kind {
                Kind::Histogram => {
                    for ((n, l), h) in r.hists.iter().filter(|((n, _), _)| n == name) {
                        for (i, bound) in BUCKETS.iter().enumerate() {
                            let le = fmt_labels(l, Some(("le", bound.to_string())));
                            out.push_str(&format!("{n}_bucket{le} {}\n", h.counts[i]));
                        }
                        out.push_str(&format!(
                            "{n}_bucket{} {}\n",
                            fmt_labels(l, Some(("le", "+Inf".into()))),
                            h.count
                        ));
                        out.push_str(&format!("{n}_sum{} {}\n", fmt_labels(l, None), h.sum));
                        out.push_str(&format!("{n}_count{} {}\n", fmt_labels(l, None), h.count));
                    }
                }
                _ => {
                    for ((n, l), v) in r.values.iter().filter(|((n, _), _)| n == name) {
                        out.push_str(&format!("{n}{} {v}\n", fmt_labels(l, None)));
                    }
                }
            }
        }
        out
    }
}

/// Registers the OpenTelemetry instruments over the registry (with the global meter
/// provider: a no-op when OTLP is not configured).
pub fn register_otel_instruments() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        let meter = opentelemetry::global::meter("hitl-orchestrator");
        for (name, kind, help) in METRICS {
            match kind {
                Kind::Counter => {
                    let _ = meter
                        .f64_observable_counter(*name)
                        .with_description(*help)
                        .with_callback(move |o| {
                            for (l, v) in metrics().series(name) {
                                o.observe(v, &kvs(&l));
                            }
                        })
                        .build();
                }
                Kind::Gauge => {
                    let _ = meter
                        .f64_observable_gauge(*name)
                        .with_description(*help)
                        .with_callback(move |o| {
                            for (l, v) in metrics().series(name) {
                                o.observe(v, &kvs(&l));
                            }
                        })
                        .build();
                }
                Kind::Histogram => {
                    let h = meter
                        .f64_histogram(*name)
                        .with_description(*help)
                        .with_unit("s")
                        .with_boundaries(BUCKETS.to_vec())
                        .build();
                    metrics()
                        .otel_histograms
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(name, h);
                }
            }
        }
    });
}
