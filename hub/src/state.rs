//! The running hub: catalog, NBD server, and the images of backups whose exports are open.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use nbd_server::{ExportStats, Server, ServerConfig};
use parking_lot::Mutex;
use qcow2::{CreateOptions, Image, OpenOptions};
use rand::Rng;
use time::OffsetDateTime;
use tokio_util::task::TaskTracker;

use crate::catalog::{Catalog, Repository, Status};
use crate::config::Config;
use crate::error::{Error, Result};

pub const DEFAULT_REPOSITORY: &str = "default";
pub const CATALOG_FILE: &str = "catalog.sqlite";

/// Cheap to clone; every clone is the same hub.
#[derive(Clone)]
pub struct Hub {
    inner: Arc<Inner>,
}

impl std::ops::Deref for Hub {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.inner
    }
}

pub struct Inner {
    pub config: Config,
    pub catalog: Catalog,
    pub nbd: Server,
    /// Host and port written into NBD URIs.
    pub nbd_host: String,
    pub nbd_port: u16,
    pub(crate) token: String,
    /// Backups in ready / running / finalizing, by id.
    pub(crate) active: Mutex<HashMap<String, Arc<ActiveBackup>>>,
    /// Images behind restore exports, by restore id.
    pub(crate) restores: Mutex<HashMap<String, Arc<Image>>>,
    /// Serialises state changes (create, complete, cancel, delete, fail) so checks and updates
    /// of the catalog cannot interleave. Never held while draining connections.
    pub(crate) ops: tokio::sync::Mutex<()>,
    /// Finalisation tasks, awaited at shutdown.
    pub(crate) tasks: TaskTracker,
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
    /// Bytes written through the export (see [`crate::export::ImageExport::written_counter`]).
    pub written: Arc<std::sync::atomic::AtomicU64>,
}

impl ActiveDisk {
    pub fn bytes_written(&self) -> u64 {
        let counted = self.written.load(std::sync::atomic::Ordering::Relaxed);
        counted.max(self.last_stats.lock().bytes_written)
    }
}

impl ActiveBackup {
    pub fn touch(&self) {
        *self.last_touch.lock() = SystemTime::now();
    }
}

impl Hub {
    /// Open the data dir (catalog, token, default repository), recover from a previous run and
    /// create the NBD server. Serving starts elsewhere ([`crate::serve`]).
    pub async fn open(config: Config, nbd_addr: SocketAddr) -> Result<Hub> {
        config.validate()?;
        let data = config.data_dir.clone();
        std::fs::create_dir_all(&data)
            .map_err(Error::io(format!("creating {}", data.display())))?;
        let catalog = Catalog::open(&data.join(CATALOG_FILE))?;
        let token = crate::token::load_or_create(&data, config.api_token.as_deref())?;
        ensure_default_repository(&catalog, &data)?;

        let nbd = Server::new(ServerConfig {
            list_exports: false,
            max_connections_per_export: config.max_connections_per_export,
            max_in_flight_bytes_total: config.max_in_flight_bytes,
            payload_timeout: config.nbd_io_timeout,
            reply_timeout: config.nbd_io_timeout,
            ..ServerConfig::default()
        });
        let nbd_host = match &config.nbd_host {
            Some(host) => host.clone(),
            None if nbd_addr.ip().is_unspecified() => "127.0.0.1".to_owned(),
            None => nbd_addr.ip().to_string(),
        };
        let hub = Hub {
            inner: Arc::new(Inner {
                config,
                catalog,
                nbd,
                nbd_host,
                nbd_port: nbd_addr.port(),
                token,
                active: Mutex::new(HashMap::new()),
                restores: Mutex::new(HashMap::new()),
                ops: tokio::sync::Mutex::new(()),
                tasks: TaskTracker::new(),
            }),
        };
        hub.recover().await?;
        Ok(hub)
    }

    /// Backups a previous process left unfinished cannot be resumed (their exports and the
    /// client's connections are gone): mark them failed and check their images. Restores were
    /// exports of that process and are gone too. Images of backups whose creation was interrupted
    /// before their catalog row existed are removed.
    async fn recover(&self) -> Result<()> {
        for backup in self.catalog.active_backups()? {
            let mut reason = "interrupted by restart".to_owned();
            for disk in &backup.disks {
                let path = disk.qcow2_path.clone();
                if !path.exists() {
                    continue;
                }
                let report = tokio::task::spawn_blocking(move || qcow2::check::check(&path, false))
                    .await
                    .map_err(|e| Error::Internal(e.to_string()))?;
                match report {
                    Ok(r) if r.exit_code() == 2 => {
                        reason.push_str(&format!("; disk {} image corrupt", disk.disk_id));
                    }
                    Ok(_) => {}
                    Err(err) => {
                        reason.push_str(&format!("; disk {} image unreadable: {err}", disk.disk_id))
                    }
                }
            }
            tracing::warn!(backup_id = %backup.id, vm = %backup.vm_name, %reason, "unfinished backup marked failed");
            self.catalog
                .set_status(&backup.id, Status::Failed, Some(&reason))?;
        }
        self.catalog.clear_restores()?;
        // A cancel interrupted between the catalog update and the removal of its images.
        let cancelled = crate::catalog::BackupFilter {
            status: Some(Status::Cancelled.as_str().to_owned()),
            ..Default::default()
        };
        for backup in self.catalog.backups(&cancelled)? {
            if backup.disks.iter().any(|d| d.qcow2_path.exists()) {
                tracing::info!(backup_id = %backup.id, "removing images of a cancelled backup");
                crate::backups::remove_backup_dir(&backup);
            }
        }
        crate::orphans::sweep(&self.catalog)?;
        Ok(())
    }

    pub fn token_matches(&self, given: &str) -> bool {
        crate::token::matches(&self.token, given)
    }

    pub fn nbd_uri(&self, export: &str) -> String {
        let host = if self.nbd_host.contains(':') && !self.nbd_host.starts_with('[') {
            format!("[{}]", self.nbd_host)
        } else {
            self.nbd_host.clone()
        };
        format!("nbd://{host}:{}/{export}", self.nbd_port)
    }

    /// Live figures of an export of an active backup, or the last ones seen.
    pub(crate) fn disk_stats(&self, backup_id: &str, disk_id: u32) -> Option<ExportStats> {
        let active = self.active.lock().get(backup_id).cloned()?;
        let disk = active.disks.iter().find(|d| d.disk_id == disk_id)?;
        if let Some(stats) = self.nbd.export_stats(&disk.export_name) {
            *disk.last_stats.lock() = stats;
        }
        let mut stats = disk.last_stats.lock().clone();
        stats.bytes_written = disk.bytes_written();
        Some(stats)
    }

    /// Stop serving: listeners are already closed by the caller's token. In-flight requests get
    /// the grace period, then every image is flushed and released.
    pub async fn shutdown(&self) {
        let grace = self.config.shutdown_grace;
        self.nbd.shutdown(grace).await;
        self.tasks.close();
        if tokio::time::timeout(grace, self.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                "finalisation still running at shutdown; it will be marked failed at the next start"
            );
        }
        let actives: Vec<_> = self.active.lock().drain().map(|(_, a)| a).collect();
        for active in actives {
            for disk in &active.disks {
                let image = disk.image.lock().take();
                if let Some(image) = image {
                    if let Err(err) = close_image(image).await {
                        tracing::error!(%err, export = %disk.export_name, "closing image at shutdown");
                    }
                }
            }
        }
        self.restores.lock().clear();
    }
}

fn ensure_default_repository(catalog: &Catalog, data: &Path) -> Result<()> {
    if catalog.repository(DEFAULT_REPOSITORY)?.is_some() {
        return Ok(());
    }
    let path = std::path::absolute(data.join("repository"))
        .map_err(Error::io("resolving the default repository path"))?;
    std::fs::create_dir_all(&path).map_err(Error::io(format!("creating {}", path.display())))?;
    catalog.insert_repository(&Repository {
        id: DEFAULT_REPOSITORY.into(),
        name: DEFAULT_REPOSITORY.into(),
        path,
        created_at: OffsetDateTime::now_utc(),
    })
}

/// A name usable as a directory and inside an NBD URI: VM names are free text.
pub fn safe_name(name: &str) -> String {
    let mut out: String = name
        .chars()
        .take(64)
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if out.starts_with('.') {
        out.replace_range(0..1, "_");
    }
    if out.is_empty() { "vm".to_owned() } else { out }
}

/// 64 random bits as hex: the part of an export name that cannot be guessed.
pub fn random_hex() -> String {
    format!("{:016x}", rand::rng().random::<u64>())
}

pub(crate) async fn create_image(path: PathBuf, size: u64, backing: Option<PathBuf>) -> Result<()> {
    let opts = CreateOptions {
        size,
        backing_format: backing.as_ref().map(|_| "qcow2".to_owned()),
        backing_file: backing,
        ..CreateOptions::default()
    };
    blocking(move || Image::create(&path, &opts).map_err(Error::image(&path))).await
}

/// Open an image the hub created itself, with its backing chain.
pub(crate) async fn open_image(path: PathBuf, writable: bool) -> Result<Arc<Image>> {
    let opts = OpenOptions {
        writable,
        open_backing: true,
        ..OpenOptions::default()
    };
    blocking(move || {
        Image::open(&path, &opts)
            .map(Arc::new)
            .map_err(Error::image(&path))
    })
    .await
}

/// Close the image if nothing else holds it; otherwise flush it, and the last holder releases it.
pub(crate) async fn close_image(image: Arc<Image>) -> Result<()> {
    blocking(move || match Arc::try_unwrap(image) {
        Ok(image) => image.close().map_err(Error::image("(closing)")),
        Err(shared) => shared.flush().map_err(Error::image("(flushing)")),
    })
    .await
}

pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::Internal(format!("blocking task: {e}")))?
}

pub(crate) fn now() -> OffsetDateTime {
    OffsetDateTime::now_utc()
}

#[cfg(test)]
mod tests {
    use super::safe_name;

    #[test]
    fn safe_names() {
        assert_eq!(safe_name("web-01"), "web-01");
        assert_eq!(safe_name("my vm/../x"), "my_vm_.._x");
        assert_eq!(safe_name(".."), "_.");
        assert_eq!(safe_name(""), "vm");
    }
}
