//! Every Prometheus metric the server exports, in one registry per server (so tests in one
//! process do not share counters). Names start with `deltaspace_` and carry their unit; label
//! values come from small fixed sets (routes, methods, statuses, DETs, reasons), never task names.

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder, exponential_buckets,
};

use deltaspace_core::det::DetKind;
use deltaspace_core::model::DeltaCacheStats;

/// The server's metrics and the registry that renders them.
pub struct Metrics {
    registry: Registry,
    /// `deltaspace_http_requests_total{method, route, status}`.
    pub http_requests: IntCounterVec,
    /// `deltaspace_http_request_duration_seconds{method, route, status}`.
    pub http_duration: HistogramVec,
    /// `deltaspace_queue_duration_seconds`: from a request's arrival in the queue to its batch start.
    pub queue_duration: Histogram,
    /// `deltaspace_inference_duration_seconds`: one batch's encoder call.
    pub inference_duration: Histogram,
    /// `deltaspace_batch_rows`: texts per batch.
    pub batch_rows: Histogram,
    /// `deltaspace_batch_tokens`: padded tokens (rows × longest row) per batch.
    pub batch_tokens: Histogram,
    /// `deltaspace_batch_tasks`: distinct tasks per batch (mixing at work).
    pub batch_tasks: Histogram,
    /// `deltaspace_inference_rows_total{det}`: texts encoded, by the DET that decoded them.
    pub inference_rows: IntCounterVec,
    /// `deltaspace_queue_requests`: requests waiting for a batch.
    pub queue_requests: IntGauge,
    /// `deltaspace_requests_dropped_total{reason}`: `queue_full` or `client_gone`.
    pub requests_dropped: IntCounterVec,
    /// `deltaspace_tasks_registered`: tasks being served.
    pub tasks_registered: IntGauge,
    /// `deltaspace_task_uploads_total{result}`: created, replaced, invalid, conflict,
    /// unauthorized, error.
    pub task_uploads: IntCounterVec,
    /// `deltaspace_build_info{version, execution_provider, model, subspace}`, always 1.
    pub build_info: IntGaugeVec,
    /// `deltaspace_tune_jobs{state}`: this replica's tune jobs queued and running.
    pub tune_jobs: IntGaugeVec,
    /// `deltaspace_tune_jobs_total{result}`: tune jobs ended: succeeded, failed, cancelled.
    pub tune_jobs_total: IntCounterVec,
    /// `deltaspace_tune_duration_seconds`: a tune job's run, from start to its end.
    pub tune_duration: Histogram,
    /// `deltaspace_tune_steps_total`: optimizer steps of tune jobs.
    pub tune_steps: IntCounter,
    /// `deltaspace_tune_commit_retries_total`: times a tuned task's write was tried again because
    /// the store was unavailable (`jobs::COMMIT_PATIENCE`).
    pub tune_commit_retries: IntCounter,
    /// `deltaspace_store_connected`: 1 while a shared store's change feed is connected (always 1
    /// for SQLite).
    pub store_connected: IntGauge,
    /// `deltaspace_store_reconnects_total`: times the change feed was lost and sought again.
    pub store_reconnects: IntCounter,
    /// `deltaspace_store_change`: the last store-wide change applied to the served tasks.
    pub store_change: IntGauge,
    /// `deltaspace_delta_cache_entries`: decoded task deltas held (`model::DeltaCache`).
    pub delta_cache_entries: IntGauge,
    /// `deltaspace_delta_cache_lookups_total{result}`: deltas found (`hit`) or computed (`miss`).
    pub delta_cache_lookups: IntCounterVec,
    /// `deltaspace_label_sets`: distinct label sets in use (tasks with the same labels share one).
    pub label_sets: IntGauge,
    /// `deltaspace_label_sets_embedded_total`: label sets the frozen model embedded; a set found
    /// in memory or in the store's cache is not embedded again.
    pub label_sets_embedded: IntCounter,
    /// Held while the mirrored series (delta cache, label sets) catch up, so two scrapes at
    /// once add each count once.
    mirror: std::sync::Mutex<()>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Self {
        let registry = Registry::new();
        let seconds = exponential_buckets(0.0005, 2.0, 16).expect("valid buckets. This is a bug.");
        let rows = exponential_buckets(1.0, 2.0, 11).expect("valid buckets. This is a bug.");
        let tokens = exponential_buckets(16.0, 2.0, 13).expect("valid buckets. This is a bug.");
        let request_labels = &["method", "route", "status"];
        let metrics = Self {
            http_requests: IntCounterVec::new(
                Opts::new("deltaspace_http_requests_total", "HTTP requests answered."),
                request_labels,
            )
            .expect("valid metric. This is a bug."),
            http_duration: HistogramVec::new(
                HistogramOpts::new(
                    "deltaspace_http_request_duration_seconds",
                    "Time from request to response.",
                )
                .buckets(seconds.clone()),
                request_labels,
            )
            .expect("valid metric. This is a bug."),
            queue_duration: histogram(
                "deltaspace_queue_duration_seconds",
                "Time a request waited for its batch.",
                seconds.clone(),
            ),
            inference_duration: histogram(
                "deltaspace_inference_duration_seconds",
                "Time of one batch's encoder call.",
                seconds,
            ),
            batch_rows: histogram("deltaspace_batch_rows", "Texts per batch.", rows.clone()),
            batch_tokens: histogram(
                "deltaspace_batch_tokens",
                "Padded tokens (rows x longest row) per batch.",
                tokens,
            ),
            batch_tasks: histogram("deltaspace_batch_tasks", "Distinct tasks per batch.", rows),
            inference_rows: IntCounterVec::new(
                Opts::new(
                    "deltaspace_inference_rows_total",
                    "Texts encoded, by the DET that decoded them.",
                ),
                &["det"],
            )
            .expect("valid metric. This is a bug."),
            queue_requests: IntGauge::new(
                "deltaspace_queue_requests",
                "Requests waiting for a batch.",
            )
            .expect("valid metric. This is a bug."),
            requests_dropped: IntCounterVec::new(
                Opts::new(
                    "deltaspace_requests_dropped_total",
                    "Requests not run: the queue was full, or the client had gone.",
                ),
                &["reason"],
            )
            .expect("valid metric. This is a bug."),
            tasks_registered: IntGauge::new("deltaspace_tasks_registered", "Tasks being served.")
                .expect("valid metric. This is a bug."),
            task_uploads: IntCounterVec::new(
                Opts::new("deltaspace_task_uploads_total", "Task uploads, by result."),
                &["result"],
            )
            .expect("valid metric. This is a bug."),
            build_info: IntGaugeVec::new(
                Opts::new(
                    "deltaspace_build_info",
                    "Version, execution provider, model and subspace in use (always 1).",
                ),
                &["version", "execution_provider", "model", "subspace"],
            )
            .expect("valid metric. This is a bug."),
            tune_jobs: IntGaugeVec::new(
                Opts::new("deltaspace_tune_jobs", "Tune jobs queued and running."),
                &["state"],
            )
            .expect("valid metric. This is a bug."),
            tune_jobs_total: IntCounterVec::new(
                Opts::new("deltaspace_tune_jobs_total", "Tune jobs ended, by result."),
                &["result"],
            )
            .expect("valid metric. This is a bug."),
            tune_duration: histogram(
                "deltaspace_tune_duration_seconds",
                "Time a tune job ran.",
                exponential_buckets(0.5, 2.0, 14).expect("valid buckets. This is a bug."),
            ),
            tune_steps: IntCounter::new(
                "deltaspace_tune_steps_total",
                "Optimizer steps of tune jobs.",
            )
            .expect("valid metric. This is a bug."),
            tune_commit_retries: IntCounter::new(
                "deltaspace_tune_commit_retries_total",
                "Times a tuned task's write was tried again because the task store was unavailable.",
            )
            .expect("valid metric. This is a bug."),
            store_connected: IntGauge::new(
                "deltaspace_store_connected",
                "1 while the task store's change feed is connected (always 1 for SQLite).",
            )
            .expect("valid metric. This is a bug."),
            store_reconnects: IntCounter::new(
                "deltaspace_store_reconnects_total",
                "Times the task store's change feed was lost and sought again.",
            )
            .expect("valid metric. This is a bug."),
            store_change: IntGauge::new(
                "deltaspace_store_change",
                "The last task store change applied to the served tasks.",
            )
            .expect("valid metric. This is a bug."),
            delta_cache_entries: IntGauge::new(
                "deltaspace_delta_cache_entries",
                "Decoded task deltas (U z) held for recent tasks.",
            )
            .expect("valid metric. This is a bug."),
            delta_cache_lookups: IntCounterVec::new(
                Opts::new(
                    "deltaspace_delta_cache_lookups_total",
                    "Task deltas looked up by batches: found (hit) or computed (miss).",
                ),
                &["result"],
            )
            .expect("valid metric. This is a bug."),
            label_sets: IntGauge::new(
                "deltaspace_label_sets",
                "Distinct label sets in use; tasks with the same labels share one.",
            )
            .expect("valid metric. This is a bug."),
            label_sets_embedded: IntCounter::new(
                "deltaspace_label_sets_embedded_total",
                "Label sets the frozen model embedded (not found in memory or the store's cache).",
            )
            .expect("valid metric. This is a bug."),
            mirror: std::sync::Mutex::new(()),
            registry,
        };
        metrics.register_all();
        metrics
    }

    fn register_all(&self) {
        let collectors: Vec<Box<dyn prometheus::core::Collector>> = vec![
            Box::new(self.http_requests.clone()),
            Box::new(self.http_duration.clone()),
            Box::new(self.queue_duration.clone()),
            Box::new(self.inference_duration.clone()),
            Box::new(self.batch_rows.clone()),
            Box::new(self.batch_tokens.clone()),
            Box::new(self.batch_tasks.clone()),
            Box::new(self.inference_rows.clone()),
            Box::new(self.queue_requests.clone()),
            Box::new(self.requests_dropped.clone()),
            Box::new(self.tasks_registered.clone()),
            Box::new(self.task_uploads.clone()),
            Box::new(self.build_info.clone()),
            Box::new(self.tune_jobs.clone()),
            Box::new(self.tune_jobs_total.clone()),
            Box::new(self.tune_duration.clone()),
            Box::new(self.tune_steps.clone()),
            Box::new(self.tune_commit_retries.clone()),
            Box::new(self.store_connected.clone()),
            Box::new(self.store_reconnects.clone()),
            Box::new(self.store_change.clone()),
            Box::new(self.delta_cache_entries.clone()),
            Box::new(self.delta_cache_lookups.clone()),
            Box::new(self.label_sets.clone()),
            Box::new(self.label_sets_embedded.clone()),
        ];
        for collector in collectors {
            self.registry
                .register(collector)
                .expect("metric names are unique. This is a bug.");
        }
    }

    /// Records one answered HTTP request. `route` is the matched pattern, so it is bounded.
    pub fn observe_request(&self, method: &str, route: &str, status: u16, seconds: f64) {
        let method = match method {
            "GET" | "PUT" | "POST" | "DELETE" | "HEAD" => method,
            _ => "other",
        };
        let status = status.to_string();
        let labels = [method, route, status.as_str()];
        self.http_requests.with_label_values(&labels).inc();
        self.http_duration
            .with_label_values(&labels)
            .observe(seconds);
    }

    /// Records one batch's size.
    pub fn observe_batch(&self, rows: usize, tokens: usize, tasks: usize) {
        self.batch_rows.observe(rows as f64);
        self.batch_tokens.observe(tokens as f64);
        self.batch_tasks.observe(tasks as f64);
    }

    /// Counts texts encoded through `det`.
    pub fn rows_by_det(&self, det: DetKind, rows: usize) {
        self.inference_rows
            .with_label_values(&[det.name()])
            .inc_by(rows as u64);
    }

    /// Counts a request that did not run.
    pub fn dropped(&self, reason: &'static str) {
        self.requests_dropped.with_label_values(&[reason]).inc();
    }

    /// How many requests were dropped for `reason` (for tests and logs).
    pub fn dropped_count(&self, reason: &str) -> u64 {
        self.requests_dropped.with_label_values(&[reason]).get()
    }

    /// Counts an upload by its result.
    pub fn upload(&self, result: &'static str) {
        self.task_uploads.with_label_values(&[result]).inc();
    }

    /// Sets the build-info series once the model and subspace are loaded.
    pub fn set_build_info(&self, provider: &str, model: &str, subspace: &str) {
        self.build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION"), provider, model, subspace])
            .set(1);
    }

    /// Brings the delta cache's series up to its own counts (read when `/metrics` is scraped).
    pub fn observe_delta_cache(&self, stats: DeltaCacheStats) {
        let _one_at_a_time = self.mirror_turn();
        self.delta_cache_entries
            .set(i64::try_from(stats.entries).unwrap_or(i64::MAX));
        for (result, total) in [("hit", stats.hits), ("miss", stats.misses)] {
            let counter = self.delta_cache_lookups.with_label_values(&[result]);
            counter.inc_by(total.saturating_sub(counter.get()));
        }
    }

    /// Brings the label-set series up to the store's counts (read when `/metrics` is scraped):
    /// `in_use` sets now, `embedded` since the server started.
    pub fn observe_label_sets(&self, in_use: usize, embedded: u64) {
        let _one_at_a_time = self.mirror_turn();
        self.label_sets
            .set(i64::try_from(in_use).unwrap_or(i64::MAX));
        let counter = &self.label_sets_embedded;
        counter.inc_by(embedded.saturating_sub(counter.get()));
    }

    fn mirror_turn(&self) -> std::sync::MutexGuard<'_, ()> {
        (self.mirror.lock()).unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Everything in the Prometheus text format.
    pub fn render(&self) -> String {
        TextEncoder::new()
            .encode_to_string(&self.registry.gather())
            .unwrap_or_else(|error| format!("# metrics could not be encoded: {error}\n"))
    }
}

fn histogram(name: &str, help: &str, buckets: Vec<f64>) -> Histogram {
    Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets))
        .expect("valid metric. This is a bug.")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_metric_is_prefixed_and_rendered() {
        let metrics = Metrics::new();
        metrics.observe_request("GET", "/health/live", 200, 0.001);
        metrics.observe_request("BREW", "unmatched", 405, 0.001);
        metrics.observe_batch(3, 48, 2);
        metrics.rows_by_det(DetKind::Prefix, 3);
        metrics.dropped("queue_full");
        metrics.upload("created");
        metrics.set_build_info("CPUExecutionProvider", "tiny", "s@0");
        let stats = |hits, misses| DeltaCacheStats {
            entries: 2,
            capacity: 8,
            hits,
            misses,
        };
        metrics.observe_delta_cache(stats(5, 2));
        metrics.observe_delta_cache(stats(7, 2));
        metrics.observe_label_sets(3, 4);
        metrics.observe_label_sets(2, 5);
        let text = metrics.render();
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            assert!(line.starts_with("deltaspace_"), "{line}");
        }
        assert!(text.contains(r#"method="other""#));
        assert!(text.contains("deltaspace_batch_rows_sum 3"));
        assert!(text.contains(r#"deltaspace_inference_rows_total{det="prefix"} 3"#));
        assert!(text.contains(r#"deltaspace_delta_cache_lookups_total{result="hit"} 7"#));
        assert!(text.contains(r#"deltaspace_delta_cache_lookups_total{result="miss"} 2"#));
        assert!(text.contains("deltaspace_delta_cache_entries 2"));
        assert!(text.contains("deltaspace_label_sets 2\n"));
        assert!(text.contains("deltaspace_label_sets_embedded_total 5"));
    }
}
