//! The lifecycle clock: ready -> running on the first connection, `stale` failure after idle
//! time, expiry of restores.

use std::time::{Duration, SystemTime};

use tokio_util::sync::CancellationToken;

use crate::catalog::{BackupFilter, Status};
use crate::state::{Hub, now};

/// How often failed backups past `failed_backup_retention` are looked for (and once at start).
const SWEEP_EVERY: Duration = Duration::from_secs(3600);

impl Hub {
    /// Failed and cancelled backups made longer than `failed_backup_retention` ago go (rows,
    /// images, directories): never a base for anything, and kept only so an operator can read why.
    /// The count removed.
    pub async fn sweep_failed(&self) -> crate::error::Result<usize> {
        let cutoff = now() - self.config.failed_backup_retention;
        let mut removed = 0;
        for status in [Status::Failed, Status::Cancelled] {
            let filter = BackupFilter {
                status: Some(status),
                ..BackupFilter::default()
            };
            for backup in self.catalog.backups(&filter)? {
                if backup.created_at >= cutoff || backup.protected {
                    continue;
                }
                match self.delete_backup(&backup.id).await {
                    Ok(()) => removed += 1,
                    // Gone with its failed parent, or held by something the log names.
                    Err(crate::error::Error::NotFound(_)) => {}
                    Err(err) => {
                        tracing::warn!(backup_id = %backup.id, %err, "old failed backup kept")
                    }
                }
            }
        }
        if removed > 0 {
            tracing::info!(removed, "old failed backups removed");
        }
        Ok(removed)
    }

    pub async fn monitor(&self, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(self.config.monitor_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut sweep = tokio::time::interval(SWEEP_EVERY);
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
                _ = sweep.tick() => {
                    if let Err(err) = self.sweep_failed().await {
                        tracing::error!(%err, "removing old failed backups");
                    }
                    continue;
                }
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
        self.expire_mounts();
        Ok(())
    }
}
