//! The running hub: catalog, NBD server, and the images of backups whose exports are open.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::SystemTime;

use nbd_server::tls::TlsMode;
use nbd_server::{ExportStats, Server, ServerConfig};
use parking_lot::Mutex;
use qcow2::Image;
use time::OffsetDateTime;
use tokio_util::task::TaskTracker;

use crate::catalog::{Catalog, Status};
use crate::config::Config;
use crate::error::{Error, Result};
use crate::sys::reserve::SpaceReserve;

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
    /// The key sealing vCenter passwords; when it cannot be loaded, only credential use fails.
    pub(crate) credential_key: std::result::Result<crate::sys::secrets::CredentialKey, String>,
    /// The SNA's API (discovery, backup start).
    pub(crate) sna: crate::sys::sna::SnaClient,
    /// Backups in ready / running / finalizing, by id.
    pub(crate) active: Mutex<HashMap<String, Arc<ActiveBackup>>>,
    /// Images behind restore exports, by restore id.
    pub(crate) restores: Mutex<HashMap<String, Arc<Image>>>,
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
    /// Open the data dir (catalog, token, default repository), recover from a previous run and
    /// create the NBD server. Serving starts elsewhere ([`crate::serve`]).
    pub async fn open(config: Config, nbd_addr: SocketAddr) -> Result<Hub> {
        config.validate()?;
        let started = now();
        let data = config.data_dir.clone();
        crate::sys::datadir::prepare(&data)?;
        let catalog_path = data.join(crate::catalog::CATALOG_FILE);
        let reserve = SpaceReserve::new(&data);
        let catalog = match Catalog::open(&catalog_path) {
            // SQLite may need a few pages (its WAL index) just to open: on a full filesystem the
            // reserve makes them.
            Err(err) if reserve.release() => {
                tracing::warn!(%err, "opening the catalog again after releasing the space reserve");
                Catalog::open(&catalog_path)?
            }
            opened => opened?,
        };
        let token = crate::sys::token::load_or_create(&data, config.api_token.as_deref())?;
        crate::repo::ensure_default_repository(&catalog, &data)?;
        let credential_key = crate::sys::secrets::load_or_create_key(
            &data,
            config.credential_key.as_ref(),
        )
        .map_err(|err| {
            tracing::error!(%err, "credential key unavailable; VMware credentials cannot be used");
            err.to_string()
        });
        if let Ok(key) = &credential_key {
            crate::inventory::credentials::check_key(&catalog, key);
        }
        // Deletes a crash interrupted: their rows are gone, their directories must follow
        // before the repository is compared with the catalog.
        for (id, dir) in catalog.pending_deletions()? {
            tracing::info!(backup_id = %id, dir = %dir.display(), "finishing an interrupted delete");
            crate::repo::removal::finish_deletion(&catalog, &id, &dir);
        }
        let stale_manifests =
            crate::repo::reconcile::check_catalog(&catalog, &catalog_path, &data, started)?;

        let sna = crate::sys::sna::SnaClient::new(&config.sna_url, config.sna_timeout)?;
        let nbd = Server::new(ServerConfig {
            list_exports: false,
            max_connections_per_export: config.max_connections_per_export,
            max_in_flight_bytes_total: config.max_in_flight_bytes,
            tls: crate::sys::tls::nbd_tls(
                config.tls,
                config.tls_creds.as_deref(),
                config.tls_verify_peer,
            )?,
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
                credential_key,
                sna,
                active: Mutex::new(HashMap::new()),
                restores: Mutex::new(HashMap::new()),
                ops: tokio::sync::Mutex::new(()),
                tasks: TaskTracker::new(),
                reserve,
            }),
        };
        for id in stale_manifests {
            if let Err(err) = hub.write_manifest(&id) {
                tracing::warn!(backup_id = %id, %err, "manifest not rewritten from the catalog");
            }
        }
        match hub.recover().await {
            Err(err) if err.no_space().is_some() && hub.reserve.release() => {
                tracing::warn!(%err, "recovering again after releasing the space reserve");
                hub.recover().await?;
            }
            recovered => recovered?,
        }
        if !hub.reserve.refill() {
            tracing::error!(data_dir = %hub.config.data_dir.display(),
                "the data dir's filesystem is full: running degraded (reads, cancels and deletes work; \
                 new backups are refused with 507) until space is freed");
        }
        Ok(hub)
    }

    /// Backups a previous process left unfinished cannot be resumed (their exports and the
    /// client's connections are gone): mark them failed and check their images. Restores were
    /// exports of that process and are gone too. (Interrupted creations went in
    /// [`crate::repo::reconcile::check_catalog`].)
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
            self.sync_manifest(&backup.id).await;
        }
        self.catalog.clear_restores()?;
        // A cancel interrupted between the catalog update and the removal of its images.
        let cancelled = crate::catalog::BackupFilter {
            status: Some(Status::Cancelled),
            ..Default::default()
        };
        for backup in self.catalog.backups(&cancelled)? {
            if backup.disks.iter().any(|d| d.qcow2_path.exists()) {
                tracing::info!(backup_id = %backup.id, "removing images of a cancelled backup");
                crate::repo::removal::remove_backup_dir(&backup);
            }
        }
        Ok(())
    }

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
            tracing::warn!("finalisation still running at shutdown; the backup is marked failed");
        }
        // Nobody can finish these once we are gone: say so in the catalog now, not at the next
        // start.
        let _ops = self.ops.lock().await;
        let actives: Vec<String> = self.active.lock().keys().cloned().collect();
        for id in actives {
            let reason = match self.catalog.backup_status(&id) {
                Ok(Some(Ok(Status::Ready | Status::Running))) => Some("hub stopped"),
                Ok(Some(Ok(Status::Finalizing))) => Some("hub stopped while finalising"),
                _ => None,
            };
            if let Some(reason) = reason {
                tracing::warn!(backup_id = %id, reason, "backup failed");
                if let Err(err) = self.catalog.set_status(&id, Status::Failed, Some(reason)) {
                    tracing::error!(backup_id = %id, %err, "recording the failure at shutdown");
                }
            }
            self.abandon(&id).await;
            self.sync_manifest(&id).await;
        }
        self.restores.lock().clear();
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
