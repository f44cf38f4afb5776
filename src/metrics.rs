//! Prometheus metrics. Counters and histograms are recorded where things happen
//! (ingest, dispatcher, sender); gauges that describe state (backlog, session, process)
//! are read when `/metrics` is scraped.
//!
//! | metric | labels | what |
//! |---|---|---|
//! | `waas_events_stored_total` | `type` | events committed to the store |
//! | `waas_deliveries_total` | `webhook`, `outcome` | attempts by outcome: delivered, retry, dead, disabled |
//! | `waas_delivery_attempt_seconds` | `webhook` | HTTP attempt latency (histogram) |
//! | `waas_webhook_pending`, `waas_webhook_dead` | `webhook` | deliveries waiting, dead |
//! | `waas_webhook_disabled` | `webhook` | 1 while disabled |
//! | `waas_sends_total` | `outcome` | outbound messages: sent, retry, failed |
//! | `waas_puppet_disconnects_total` | | puppet-service connections lost or refused |
//! | `waas_puppet_errors_folded_total` | | repeated puppet errors not stored again |
//! | `waas_session_state` | `account`, `state` | 1 for each account's current login state |
//! | `waas_process_resident_memory_bytes`, `waas_process_uptime_seconds` | | the process |
//! | `waas_store_commit_seconds` | `sync` | SQLite: one group commit of the writer, statements to `fsync` (histogram); `sync="normal"` for commits that do not wait for the disk |
//! | `waas_store_writes_total` | | SQLite: operations committed by the writer (per commit: this over the histogram's count) |
//! | `waas_store_append_seconds` | | both stores: from handing events to the store until their commit is known (the group commit under way, the group's own, the hand-back; histogram) |

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio_util::sync::CancellationToken;

use crate::app::App;
use crate::puppet::SessionState;

/// The SQLite writer's group commits (histogram, label `sync`).
pub const STORE_COMMIT_SECONDS: &str = "waas_store_commit_seconds";
/// Operations the SQLite writer committed.
pub const STORE_WRITES_TOTAL: &str = "waas_store_writes_total";
/// How long an append (an event, or a burst from the puppet's stream) waited for its
/// commit, on either store.
pub const STORE_APPEND_SECONDS: &str = "waas_store_append_seconds";

/// Buckets of the store's histograms: a commit takes a fraction of a millisecond on a
/// good disk, and the default buckets (from 5 ms) would put them all in the first.
const STORE_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1, 0.5, 1.0,
];

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();
static STARTED: OnceLock<Instant> = OnceLock::new();

/// Installs the process-wide recorder (once) and returns its handle.
pub fn install() -> Option<&'static PrometheusHandle> {
    STARTED.get_or_init(Instant::now);
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets(&[
                    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                ])
                .ok()?
                .set_buckets_for_metric(Matcher::Full(STORE_COMMIT_SECONDS.into()), STORE_BUCKETS)
                .ok()?
                .set_buckets_for_metric(Matcher::Full(STORE_APPEND_SECONDS.into()), STORE_BUCKETS)
                .ok()?
                .build_recorder();
            let handle = recorder.handle();
            metrics::set_global_recorder(recorder).ok()?;
            Some(handle)
        })
        .as_ref()
}

/// How often recorded histogram samples are folded into their buckets.
const UPKEEP_EVERY: Duration = Duration::from_secs(5);

/// Folds recorded histogram samples into their buckets every [`UPKEEP_EVERY`] until
/// `shutdown`. The recorder keeps each sample until then (or until a scrape), so
/// without this a waas that nobody scrapes would grow by every attempt it makes.
pub async fn upkeep(shutdown: CancellationToken) {
    let Some(handle) = install() else { return };
    let mut tick = tokio::time::interval(UPKEEP_EVERY);
    loop {
        tokio::select! {
            _ = tick.tick() => handle.run_upkeep(),
            _ = shutdown.cancelled() => return,
        }
    }
}

/// The Prometheus text exposition, state gauges refreshed first.
pub async fn render(app: &App) -> String {
    if let Ok(stats) = app.store.webhook_stats().await {
        for target in app.dispatcher.targets() {
            let name = target.settings.name.clone();
            let s = stats.get(&name).cloned().unwrap_or_default();
            metrics::gauge!("waas_webhook_pending", "webhook" => name.clone())
                .set(s.pending as f64);
            metrics::gauge!("waas_webhook_dead", "webhook" => name.clone()).set(s.dead as f64);
            metrics::gauge!("waas_webhook_disabled", "webhook" => name)
                .set(if target.is_disabled() { 1.0 } else { 0.0 });
        }
    }
    for account in app.accounts.iter() {
        let current = account.session.state();
        for state in [
            SessionState::Starting,
            SessionState::WaitingForScan,
            SessionState::LoggedIn,
            SessionState::LoggedOut,
            SessionState::Disconnected,
        ] {
            let label = serde_json::to_value(state)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default();
            metrics::gauge!("waas_session_state", "account" => account.name.clone(), "state" => label)
                .set(if state == current { 1.0 } else { 0.0 });
        }
    }
    if let Some(rss) = resident_bytes() {
        metrics::gauge!("waas_process_resident_memory_bytes").set(rss as f64);
    }
    if let Some(started) = STARTED.get() {
        metrics::gauge!("waas_process_uptime_seconds").set(started.elapsed().as_secs_f64());
    }
    install().map(|h| h.render()).unwrap_or_default()
}

fn resident_bytes() -> Option<u64> {
    proc_status_kib("VmRSS").map(|kib| kib * 1024)
}

/// A `kB` figure of this process from `/proc/self/status` (`VmRSS`, `VmHWM`…); `None`
/// off Linux.
pub fn proc_status_kib(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_this_process_figures() {
        let rss = super::proc_status_kib("VmRSS").expect("Linux /proc");
        assert!(rss > 1024, "{rss} KiB");
        assert!(super::proc_status_kib("VmHWM").unwrap() >= rss);
        assert_eq!(super::proc_status_kib("NoSuchField"), None);
    }
}
