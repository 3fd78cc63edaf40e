//! `/metrics`: Prometheus text.
//!
//! Gauges of the state (deployments by status, nodes, epoch) are read from the database at
//! each scrape. Counters and histograms recorded through the `metrics` facade elsewhere in
//! the crate (messages handled, reconcile latency) come from a Prometheus recorder installed
//! process-wide the first time an API is served, unless the program installed its own
//! recorder first (then only the gauges are shown here). The facade is process-wide: several
//! orchestrators in one process add up.

use super::core::Core;
use crate::model::StatusKind;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::fmt::Write as _;
use std::sync::OnceLock;
use std::time::Duration;

/// Histogram of the orchestrator's reconcile passes, in seconds.
pub(crate) const RECONCILE_SECONDS: &str = "kraken_reconcile_duration_seconds";
/// Counter of transport messages the orchestrator handled, by message type.
pub(crate) const MESSAGES_HANDLED: &str = "kraken_messages_handled_total";

const RECONCILE_BUCKETS: [f64; 12] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
];

/// How often recorded histogram samples are folded into their buckets.
const UPKEEP: Duration = Duration::from_secs(5);

static RECORDER: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs the Prometheus recorder once per process (if no other recorder is installed)
/// and keeps its histograms drained while `stop` is not cancelled.
pub(crate) fn install(stop: tokio_util::sync::CancellationToken) {
    let handle = RECORDER.get_or_init(|| {
        let builder = match PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Full(RECONCILE_SECONDS.into()), &RECONCILE_BUCKETS)
        {
            Ok(builder) => builder,
            Err(err) => {
                tracing::warn!(cause = %err, "metrics: bad histogram buckets");
                return None;
            }
        };
        match builder.install_recorder() {
            Ok(handle) => {
                metrics::describe_histogram!(
                    RECONCILE_SECONDS,
                    metrics::Unit::Seconds,
                    "Time the orchestrator took for one reconcile pass."
                );
                metrics::describe_counter!(MESSAGES_HANDLED, "Transport messages the orchestrator handled.");
                Some(handle)
            }
            Err(err) => {
                tracing::info!(cause = %err, "another metrics recorder is installed; /metrics shows the state gauges only");
                None
            }
        }
    });
    if let Some(handle) = handle.clone() {
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(UPKEEP);
            loop {
                tokio::select! {
                    _ = ticker.tick() => handle.run_upkeep(),
                    () = stop.cancelled() => return,
                }
            }
        });
    }
}

/// The whole `/metrics` text.
pub(crate) fn render(core: &Core) -> String {
    let mut out = String::new();
    let counts = core.db.count_by_status();
    out.push_str(
        "# HELP kraken_deployments Deployments by status.\n# TYPE kraken_deployments gauge\n",
    );
    for kind in StatusKind::ALL {
        let n = counts.get(&kind).copied().unwrap_or(0);
        let _ = writeln!(
            out,
            "kraken_deployments{{status=\"{}\"}} {n}",
            kind.as_str()
        );
    }
    let nodes = core.db.nodes().len();
    let _ = writeln!(
        out,
        "# HELP kraken_nodes Nodes the orchestrator knows.\n# TYPE kraken_nodes gauge\nkraken_nodes {nodes}"
    );
    let _ = writeln!(
        out,
        "# HELP kraken_orchestrator_epoch The orchestrator epoch.\n# TYPE kraken_orchestrator_epoch gauge\nkraken_orchestrator_epoch {}",
        core.db.epoch()
    );
    let streams = core
        .config
        .max_streams
        .max(1)
        .saturating_sub(core.streams.available_permits());
    let _ = writeln!(
        out,
        "# HELP kraken_api_open_streams Log follows and subscriptions open.\n# TYPE kraken_api_open_streams gauge\nkraken_api_open_streams {streams}"
    );
    if let Some(Some(handle)) = RECORDER.get() {
        handle.run_upkeep();
        out.push_str(&handle.render());
    }
    out
}
