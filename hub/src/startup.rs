//! Starting and stopping the hub: the data dir, the catalog and the credential key opened, what
//! a previous process left behind finished or failed, and at the end every active backup
//! recorded and its images released.
//!
//! This is where the rooms meet (repo's reconcile and removal, inventory's key check, backup's
//! abandon), so `state` itself imports none of them.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use nbd_server::{Server, ServerConfig};
use parking_lot::Mutex;
use tokio_util::task::TaskTracker;

use crate::catalog::{CATALOG_FILE, Catalog, Status};
use crate::config::Config;
use crate::error::{Error, Result};
use crate::state::{Hub, Inner, now};
use crate::sys::reserve::SpaceReserve;

impl Hub {
    /// Open the data dir (catalog, token, default repository), recover from a previous run and
    /// create the NBD server. Serving starts elsewhere ([`crate::serve`]).
    pub async fn open(config: Config, nbd_addr: SocketAddr) -> Result<Hub> {
        config.validate()?;
        let started = now();
        let data = config.data_dir.clone();
        crate::sys::datadir::prepare(&data)?;
        let catalog_path = data.join(CATALOG_FILE);
        let reserve = SpaceReserve::new(&data);
        let catalog = open_catalog(&catalog_path, &reserve)?;
        let token = crate::sys::token::load_or_create(&data, config.api_token.as_deref())?;
        crate::repo::ensure_default_repository(&catalog, &data)?;
        // Before any file is touched: a copied data dir must not delete the original's images.
        crate::repo::ownership::check_repositories(&catalog, &data)?;
        let credential_key = credential_key(&data, &config, &catalog);
        finish_deletions(&catalog)?;
        let stale_manifests =
            crate::repo::reconcile::check_catalog(&catalog, &catalog_path, &data, started)?;
        // After the comparison, which may remove directories: listing then says which
        // completed backups lost their files.
        if let Err(err) = crate::repo::presence::mark_at_start(&catalog) {
            tracing::warn!(%err, "completed backups not checked for files gone");
        }

        let sna = crate::sys::sna::SnaClient::new(&config.sna_url, config.sna_timeout)?;
        let nbd = nbd_server(&config)?;
        let nbd_host = match &config.nbd_host {
            Some(host) => host.clone(),
            None if nbd_addr.ip().is_unspecified() => "127.0.0.1".to_owned(),
            None => nbd_addr.ip().to_string(),
        };
        let flow_backups = Arc::new(tokio::sync::Semaphore::new(
            config.max_concurrent_flow_backups,
        ));
        let catalog = Arc::new(catalog);
        let jobs = crate::jobs::Jobs::new(catalog.clone());
        let stopped: Vec<String> = jobs.recover()?.into_iter().map(|j| j.id).collect();
        catalog.fail_executions_of(&stopped, "hub stopped")?;
        catalog.fail_unfinished_copies()?;
        let hub = Hub::from_inner(Inner {
            config,
            catalog,
            jobs,
            flow_backups,
            nbd,
            nbd_host,
            nbd_port: nbd_addr.port(),
            token,
            credential_key,
            sna,
            active: Mutex::new(HashMap::new()),
            restores: Mutex::new(HashMap::new()),
            object_cache: Arc::new(crate::sys::objects::ChunkCache::new(
                crate::sys::objects::DEFAULT_CACHE_BYTES,
            )),
            mounts: Mutex::new(HashMap::new()),
            ops: tokio::sync::Mutex::new(()),
            tasks: TaskTracker::new(),
            reserve,
        });
        for id in stale_manifests {
            if let Err(err) = hub.write_manifest(&id) {
                tracing::warn!(backup_id = %id, %err, "manifest not rewritten from the catalog");
            }
        }
        hub.recover_releasing_reserve().await?;
        if !hub.reserve.refill() {
            tracing::error!(data_dir = %hub.config.data_dir.display(),
                "the data dir's filesystem is full: running degraded (reads, cancels and deletes work; \
                 new backups are refused with 507) until space is freed");
        }
        Ok(hub)
    }

    async fn recover_releasing_reserve(&self) -> Result<()> {
        match self.recover().await {
            Err(err) if err.no_space().is_some() && self.reserve.release() => {
                tracing::warn!(%err, "recovering again after releasing the space reserve");
                self.recover().await
            }
            recovered => recovered,
        }
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
        self.finish_all_merges().await?;
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

    /// Stop serving: listeners are already closed by the caller's token. In-flight requests get
    /// the grace period, then every image is flushed and released.
    pub async fn shutdown(&self) {
        let grace = self.config.shutdown_grace;
        // Jobs are cancelled (a flow run starts no more backups) while the NBD server drains.
        tokio::join!(self.jobs.shutdown(grace), self.nbd.shutdown(grace));
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

fn open_catalog(path: &Path, reserve: &SpaceReserve) -> Result<Catalog> {
    match Catalog::open(path) {
        // SQLite may need a few pages (its WAL index) just to open: on a full filesystem the
        // reserve makes them.
        Err(err) if reserve.release() => {
            tracing::warn!(%err, "opening the catalog again after releasing the space reserve");
            Catalog::open(path)
        }
        opened => opened,
    }
}

/// The key sealing vCenter passwords; when it cannot be loaded, the hub runs and only the use of
/// credentials fails (with this message).
fn credential_key(
    data: &Path,
    config: &Config,
    catalog: &Catalog,
) -> std::result::Result<crate::sys::secrets::CredentialKey, String> {
    let key = load_credential_key(data, config, catalog).map_err(|err| {
        tracing::error!(%err, "credential key unavailable; VMware credentials cannot be used");
        err.to_string()
    });
    if let Ok(key) = &key {
        crate::inventory::credentials::check_key(catalog, key);
    }
    key
}

fn load_credential_key(
    data: &Path,
    config: &Config,
    catalog: &Catalog,
) -> Result<crate::sys::secrets::CredentialKey> {
    // A rotation of the key file that a crash interrupted is finished before the file is read,
    // so the key loaded is the one the catalog was sealed with (`serve` holds the data dir's
    // lock, so no rotation runs beside it).
    if config.credential_key.is_none() {
        crate::inventory::credentials::finish_rotation(data, catalog)?;
    }
    let sealed = catalog.credentials()?.len() + catalog.repository_secrets()?.len();
    crate::sys::secrets::load_or_create_key(data, config.credential_key.as_ref(), sealed)
}

/// Deletes a crash interrupted: their rows are gone, their directories must follow before the
/// repository is compared with the catalog.
fn finish_deletions(catalog: &Catalog) -> Result<()> {
    for (id, dir) in catalog.pending_deletions()? {
        tracing::info!(backup_id = %id, dir = %dir.display(), "finishing an interrupted delete");
        crate::repo::removal::finish_deletion(catalog, &id, &dir);
    }
    Ok(())
}

fn nbd_server(config: &Config) -> Result<Server> {
    Ok(Server::new(ServerConfig {
        list_exports: false,
        max_connections_per_export: config.max_connections_per_export,
        max_in_flight_bytes_total: config.max_in_flight_bytes,
        tls: crate::sys::tls::nbd_tls(
            config.tls,
            config.tls_creds.as_deref(),
            config.tls_verify_peer,
        )?,
        payload_stall_timeout: config.nbd_payload_stall_timeout,
        reply_timeout: config.nbd_io_timeout,
        ..ServerConfig::default()
    }))
}
