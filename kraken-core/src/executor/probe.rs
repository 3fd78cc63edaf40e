//! Where a worker's node stats come from.

use crate::model::NodeStats;
use crate::util::lock;
use async_trait::async_trait;
use std::sync::{Arc, Mutex};

/// Samples the resources of the machine a worker runs on.
#[async_trait]
pub trait SystemProbe: Send + Sync + 'static {
    /// A fresh sample.
    async fn sample(&self) -> NodeStats;
}

/// The `sysinfo` handle (made on first use) and the last sample with its time.
type ProbeState = (
    Option<sysinfo::System>,
    Option<(std::time::Instant, NodeStats)>,
);

/// The real machine, read with `sysinfo`. One probe can serve every worker of a process;
/// it re-reads the machine at most once per `min_interval`.
pub struct SysinfoProbe {
    system: Arc<Mutex<ProbeState>>,
    min_interval: std::time::Duration,
}

impl std::fmt::Debug for SysinfoProbe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SysinfoProbe").finish()
    }
}

impl Default for SysinfoProbe {
    fn default() -> Self {
        SysinfoProbe {
            system: Arc::new(Mutex::new((None, None))),
            min_interval: std::time::Duration::from_millis(500),
        }
    }
}

#[async_trait]
impl SystemProbe for SysinfoProbe {
    async fn sample(&self) -> NodeStats {
        let system = Arc::clone(&self.system);
        let min_interval = self.min_interval;
        let sampled = tokio::task::spawn_blocking(move || {
            let mut guard = lock(&system);
            let (slot, cache) = &mut *guard;
            if let Some((at, stats)) = cache
                && at.elapsed() < min_interval
            {
                return stats.clone();
            }
            if slot.is_none() {
                match sysinfo::System::new() {
                    Ok(sys) => *slot = Some(sys),
                    Err(err) => {
                        tracing::warn!(cause = %err, "cannot read this machine's resources");
                        return NodeStats::default();
                    }
                }
            }
            let Some(sys) = slot.as_mut() else {
                return NodeStats::default();
            };
            // CPU use is the difference between two refreshes: the previous call's refresh
            // is the first one (the very first sample reads 0 %).
            sys.refresh_cpu_usage();
            sys.refresh_memory();
            let load = sysinfo::System::load_average()
                .map(|l| [l.one, l.five, l.fifteen])
                .unwrap_or_default();
            let mb = |b: u64| b / (1024 * 1024);
            let cpu_brand = sys
                .cpus()
                .first()
                .map(|c| c.brand().trim().to_owned())
                .unwrap_or_default();
            let stats = NodeStats {
                hostname: sysinfo::System::host_name().unwrap_or_else(|_| "unknown".into()),
                model: format!(
                    "{} {} {}",
                    sysinfo::System::name().ok().unwrap_or_default(),
                    sysinfo::System::os_version().ok().unwrap_or_default(),
                    cpu_brand
                )
                .trim()
                .to_owned(),
                cpus: sys.cpus().len() as u32,
                cpu_percent: f64::from(sys.global_cpu_usage()),
                ram_total_mb: mb(sys.total_memory()),
                ram_used_mb: mb(sys.used_memory()),
                ram_free_mb: mb(sys.available_memory()),
                load_avg: load,
                uptime_s: sysinfo::System::uptime().unwrap_or(0),
            };
            *cache = Some((std::time::Instant::now(), stats.clone()));
            stats
        })
        .await;
        sampled.unwrap_or_default()
    }
}

/// Fixed figures: for tests and simulated workers.
#[derive(Debug, Clone, Default)]
pub struct StaticProbe(pub NodeStats);

#[async_trait]
impl SystemProbe for StaticProbe {
    async fn sample(&self) -> NodeStats {
        self.0.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn reads_this_machine() {
        let probe = SysinfoProbe::default();
        let s = probe.sample().await;
        assert!(s.ram_total_mb > 0);
        assert!(s.cpus > 0);
        assert!(s.ram_free_mb <= s.ram_total_mb);
        assert!(!s.hostname.is_empty());
    }
}
