//! Prometheus metrics. The recorder is an owned value, not the process-global one, so every router
//! (and every test) has its own registry; the binary may additionally install it globally with
//! [`Metrics::install_global`] so that the watcher's and pipeline's `metrics::counter!` calls land in
//! the same `/metrics` output.

use std::sync::Arc;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use metrics::{Key, Label, Level, Metadata, Recorder};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle, PrometheusRecorder};

pub const HTTP_REQUESTS_TOTAL: &str = "kinko_http_requests_total";

#[derive(Clone)]
pub struct Metrics {
    recorder: Arc<PrometheusRecorder>,
    handle: PrometheusHandle,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        Metrics { recorder: Arc::new(recorder), handle }
    }

    /// Makes this registry the process-wide recorder (for the `metrics::` macros elsewhere in kinko).
    /// Fails if one is installed already.
    pub fn install_global(&self) -> Result<(), String> {
        metrics::set_global_recorder(self.recorder.clone()).map_err(|e| e.to_string())
    }

    pub fn render(&self) -> String {
        self.handle.render()
    }

    /// Counts one request. `route` is the route template (`/v1/withdrawals/{id}`), never the raw path,
    /// so label cardinality stays bounded whatever clients send.
    pub fn count_request(&self, method: &str, route: &str, status: u16) {
        let key = Key::from_parts(
            HTTP_REQUESTS_TOTAL,
            vec![
                Label::new("method", method.to_string()),
                Label::new("route", route.to_string()),
                Label::new("status", status.to_string()),
            ],
        );
        let metadata = Metadata::new(module_path!(), Level::INFO, Some(module_path!()));
        self.recorder.register_counter(&key, &metadata).increment(1);
    }
}

impl Metrics {
    /// Sets a gauge (the node monitor's series: node health, watcher lag, withdrawals per state, hot-wallet
    /// balance, seal). Labels must come from a bounded set (chain, node label, status), never from input.
    pub fn set_gauge(&self, name: &'static str, labels: &[(&'static str, String)], value: f64) {
        let labels: Vec<Label> = labels.iter().map(|(k, v)| Label::new(*k, v.clone())).collect();
        let key = Key::from_parts(name, labels);
        let metadata = Metadata::new(module_path!(), Level::INFO, Some(module_path!()));
        self.recorder.register_gauge(&key, &metadata).set(value);
    }
}

/// Middleware: counts every request by method, route and status.
pub async fn track(State(metrics): State<Metrics>, req: Request, next: Next) -> Response {
    let method = req.method().as_str().to_string();
    let route = req.extensions().get::<MatchedPath>().map_or("unmatched", |m| m.as_str()).to_string();
    let resp = next.run(req).await;
    metrics.count_request(&method, &route, resp.status().as_u16());
    resp
}
