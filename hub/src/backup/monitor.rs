//! The lifecycle clock: ready -> running on the first connection, `stale` failure after idle
//! time, expiry of restores.

use std::time::SystemTime;

use tokio_util::sync::CancellationToken;

use crate::state::{Hub, now};

impl Hub {
    pub async fn monitor(&self, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(self.config.monitor_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            if let Err(err) = self.monitor_tick().await {
                tracing::error!(%err, "lifecycle check");
            }
        }
    }

    pub async fn monitor_tick(&self) -> crate::error::Result<()> {
        let actives: Vec<_> = self.active.lock().values().cloned().collect();
        let now_sys = SystemTime::now();
        for active in actives {
            let mut connected = false;
            let mut last = *active.last_touch.lock();
            for disk in &active.disks {
                let Some(stats) = disk.refresh_stats(&self.nbd) else {
                    continue;
                };
                connected |= stats.total_connections > 0;
                if let Some(t) = stats.last_activity {
                    last = last.max(t);
                }
            }
            let seen = active.connected.load(std::sync::atomic::Ordering::Relaxed);
            if connected && !seen {
                if self.catalog.mark_running(&active.id)? {
                    tracing::info!(backup_id = %active.id, "backup running (first connection)");
                    self.sync_manifest(&active.id).await;
                }
                active
                    .connected
                    .store(true, std::sync::atomic::Ordering::Relaxed);
            }
            let idle = now_sys.duration_since(last).unwrap_or_default();
            if idle > self.config.stale_after {
                let reason = format!("stale: no NBD traffic for {} s", idle.as_secs());
                self.fail(&active.id, &reason).await?;
            }
        }
        let now = now();
        for restore in self.catalog.restores()? {
            if restore.expires_at <= now {
                tracing::info!(restore_id = %restore.id, "restore expired");
                self.delete_restore(&restore.id).await?;
            }
        }
        Ok(())
    }
}
