//! The running hub: catalog, NBD server, and the images of backups whose exports are open.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::SystemTime;

use nbd_server::tls::TlsMode;
use nbd_server::{ExportStats, Server};
use parking_lot::Mutex;
use qcow2::Image;
use time::OffsetDateTime;
use tokio_util::task::TaskTracker;

use crate::catalog::Catalog;
use crate::config::Config;
use crate::error::Result;
use crate::sys::reserve::SpaceReserve;

/// Cheap to clone; every clone is the same hub.
#[derive(Clone)]
pub struct Hub {
    inner: Arc<Inner>,
}

impl Hub {
    pub(crate) fn from_inner(inner: Inner) -> Hub {
        Hub {
            inner: Arc::new(inner),
        }
    }
}

impl std::ops::Deref for Hub {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.inner
    }
}

pub struct Inner {
    pub config: Config,
    pub catalog: Arc<Catalog>,
    /// Background work: queued, running, recorded.
    pub jobs: crate::jobs::Jobs,
    /// Slots for backups started by protection flows (`max_concurrent_flow_backups`).
    pub(crate) flow_backups: Arc<tokio::sync::Semaphore>,
    pub nbd: Server,
    /// Host and port written into NBD URIs.
    pub nbd_host: String,
    pub nbd_port: u16,
    pub(crate) token: String,
    /// The key sealing vCenter passwords; when it cannot be loaded, only credential use fails.
    pub(crate) credential_key: std::result::Result<crate::sys::secrets::CredentialKey, String>,
    /// The SNA's API (discovery, backup start).
    pub(crate) sna: crate::sys::sna::SnaClient,
    /// Backups in ready / running / finalizing, by id.
    pub(crate) active: Mutex<HashMap<String, Arc<ActiveBackup>>>,
    /// Images behind restore exports, by restore id.
    pub(crate) restores: Mutex<HashMap<String, Arc<Image>>>,
    /// What restores from buckets read lately (`repo::objects`), shared by all of them.
    pub(crate) object_cache: Arc<crate::sys::objects::ChunkCache>,
    /// File-level restore mounts, by mount id (in memory: a restart ends them). Opaque here so
    /// `state` imports no room: `restore::files::mount` puts them in and reads them out.
    pub(crate) mounts: Mutex<HashMap<String, Arc<dyn std::any::Any + Send + Sync>>>,
    /// Serialises state changes (create, complete, cancel, delete, fail) so checks and updates
    /// of the catalog cannot interleave. Never held while draining connections.
    pub(crate) ops: tokio::sync::Mutex<()>,
    /// Finalisation tasks, awaited at shutdown.
    pub(crate) tasks: TaskTracker,
    /// Space kept back for the catalog on a full filesystem.
    pub(crate) reserve: SpaceReserve,
}

pub(crate) struct ActiveBackup {
    pub id: String,
    pub disks: Vec<ActiveDisk>,
    /// Last call from the client (complete, telemetry) or creation; counts as activity.
    pub last_touch: Mutex<SystemTime>,
    /// A client has connected (ready -> running was recorded).
    pub connected: std::sync::atomic::AtomicBool,
}

pub(crate) struct ActiveDisk {
    pub disk_id: u32,
    pub export_name: String,
    /// Taken when the backup is finalised or abandoned.
    pub image: Mutex<Option<Arc<Image>>>,
    /// Last figures read from the server; kept once the export is gone.
    pub last_stats: Mutex<ExportStats>,
    /// Bytes written through the export, and writes after `complete`.
    pub tally: Arc<crate::export::WriteTally>,
}

impl ActiveDisk {
    pub fn bytes_written(&self) -> u64 {
        self.tally.bytes().max(self.last_stats.lock().bytes_written)
    }

    /// Read the export's live figures from the server (if it still exists) and keep them.
    pub fn refresh_stats(&self, nbd: &Server) -> Option<ExportStats> {
        let stats = nbd.export_stats(&self.export_name)?;
        *self.last_stats.lock() = stats.clone();
        Some(stats)
    }

    /// Keep the export's last figures, then remove it, cutting its connections.
    pub async fn remove_export(&self, nbd: &Server) {
        self.refresh_stats(nbd);
        if let Err(err) = nbd
            .remove_export(&self.export_name, std::time::Duration::ZERO)
            .await
        {
            tracing::warn!(export = %self.export_name, %err, "removing export");
        }
    }
}

impl ActiveBackup {
    pub fn disk(&self, disk_id: u32) -> Option<&ActiveDisk> {
        self.disks.iter().find(|d| d.disk_id == disk_id)
    }

    pub fn touch(&self) {
        *self.last_touch.lock() = SystemTime::now();
    }
}

impl Hub {
    pub fn token_matches(&self, given: &str) -> bool {
        crate::sys::token::matches(&self.token, given)
    }

    pub fn nbd_uri(&self, export: &str) -> String {
        let host = if self.nbd_host.contains(':') && !self.nbd_host.starts_with('[') {
            format!("[{}]", self.nbd_host)
        } else {
            self.nbd_host.clone()
        };
        // With TLS on, clients must use it: libnbd and qemu read `nbds://` as "TLS required".
        let scheme = if self.config.tls == TlsMode::Off {
            "nbd"
        } else {
            "nbds"
        };
        format!("{scheme}://{host}:{}/{export}", self.nbd_port)
    }

    /// `vmware_disk_key:nbd://host:port/export,...` in the order of the backup's disks: the
    /// client's `--nbd-targets`, matched by VMware key.
    pub fn nbd_targets(&self, backup: &crate::catalog::Backup) -> String {
        backup
            .disks
            .iter()
            .map(|d| format!("{}:{}", d.vmware_disk_key, self.nbd_uri(&d.export_name)))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Live figures of an export of an active backup, or the last ones seen.
    pub(crate) fn disk_stats(&self, backup_id: &str, disk_id: u32) -> Option<ExportStats> {
        let active = self.active.lock().get(backup_id).cloned()?;
        let disk = active.disk(disk_id)?;
        disk.refresh_stats(&self.nbd);
        let mut stats = disk.last_stats.lock().clone();
        stats.bytes_written = disk.bytes_written();
        Some(stats)
    }
}

impl Hub {
    /// A catalog write that makes room (cancel, delete): on a full filesystem the reserve is
    /// released and the write tried once more.
    pub(crate) fn freeing<T>(&self, mut write: impl FnMut() -> Result<T>) -> Result<T> {
        match write() {
            Err(err) if err.is_catalog_full() && self.reserve.release() => write(),
            other => other,
        }
    }
}

pub(crate) fn now() -> OffsetDateTime {
    OffsetDateTime::now_utc()
}
