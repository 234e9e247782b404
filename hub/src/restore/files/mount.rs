//! Mounts: a backup's disk opened for browsing, kept in memory (a restart ends them), ended
//! when unused for `mount_idle_timeout`, when deleted, or when their backup goes.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use parking_lot::Mutex;
use qcow2::Image;
use serde::Deserialize;
use time::OffsetDateTime;

use super::volumes::{self, ImageDisk, Volume};
use crate::error::{Error, Result};
use crate::repo::images::{blocking, open_image};
use crate::state::{Hub, now};

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct MountRequest {
    pub backup_id: String,
    /// The backup's disk (`disk_id` in the backup's `disks`, 0 for the first).
    pub disk_index: u32,
    /// An S3 repository holding a copy of the backup: its objects are browsed. Absent: the
    /// backup's own repository.
    #[serde(default)]
    pub repository_id: Option<String>,
}

pub struct Mount {
    pub id: String,
    pub backup_id: String,
    pub disk_id: u32,
    pub image: Arc<Image>,
    pub volumes: Vec<Volume>,
    pub created_at: OffsetDateTime,
    last_used: Mutex<OffsetDateTime>,
    /// Requests reading it now; a prune does not pull images from under them.
    busy: AtomicUsize,
}

/// Held while a request reads a mount: counts it busy, and marks it used again at the end (a
/// download that took an hour is a use, not an idle hour).
pub struct InUse(Arc<Mount>);

impl InUse {
    pub fn mount(&self) -> &Arc<Mount> {
        &self.0
    }
}

impl Drop for InUse {
    fn drop(&mut self) {
        self.0.touch();
        self.0.busy.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Mount {
    fn touch(&self) {
        *self.last_used.lock() = now();
    }

    pub fn last_used(&self) -> OffsetDateTime {
        *self.last_used.lock()
    }

    pub fn is_busy(&self) -> bool {
        self.busy.load(Ordering::Acquire) > 0
    }

    /// A reader of the disk for one request (each has its own small-read cache).
    pub fn disk(&self) -> Arc<dyn guestfs::ReadAt> {
        Arc::new(ImageDisk::new(self.image.clone()))
    }

    pub fn volume(&self, name: &str) -> Result<&Volume> {
        self.volumes
            .iter()
            .find(|v| v.name == name)
            .ok_or_else(|| Error::NotFound(format!("no volume {name:?} on this disk")))
    }

    /// The readable filesystems' kinds, `,`-joined (`ext4`, `fat,ext4`), or `unknown`.
    pub fn filesystem_type(&self) -> String {
        let mut kinds: Vec<&str> = Vec::new();
        for v in self.volumes.iter().filter(|v| v.readable) {
            if let Some(k) = v.filesystem.as_deref().filter(|k| !kinds.contains(k)) {
                kinds.push(k);
            }
        }
        if kinds.is_empty() {
            "unknown".to_owned()
        } else {
            kinds.join(",")
        }
    }
}

/// How `Inner::mounts` holds a mount: `state` imports no room, so it keeps them opaque and only
/// this module, which puts them there, looks inside.
type Opaque = Arc<dyn std::any::Any + Send + Sync>;

fn mount_of(held: &Opaque) -> Option<Arc<Mount>> {
    held.clone().downcast::<Mount>().ok()
}

fn too_many(max: usize) -> Error {
    Error::Conflict(format!(
        "{max} mounts are open, the most allowed (max_mounts); delete one first"
    ))
}

impl Hub {
    /// The backup's disk opened read-only through its chain, and its volumes scanned. From the
    /// copy in `bucket` (an S3 repository's id) when given: there is no local backup then.
    async fn open_for_browsing(
        &self,
        backup_id: &str,
        disk_id: u32,
        bucket: Option<&str>,
    ) -> Result<(Option<crate::catalog::Backup>, Arc<Image>, Vec<Volume>)> {
        let bucket = match bucket {
            Some(id) => Some(self.repository_or_404(id)?).filter(|r| r.s3.is_some()),
            None => None,
        };
        let (backup, image) = match bucket {
            Some(repo) => (
                None,
                self.open_copy_chain(backup_id, disk_id, &repo).await?.0,
            ),
            None => {
                let (backup, disk, repository) = self.restorable(backup_id, disk_id)?;
                // Browsing reads small pieces all over the disk: through the page cache, never
                // O_DIRECT.
                let image = open_image(
                    disk.qcow2_path.clone(),
                    repository.path,
                    false,
                    qcow2::StorageIo::Buffered,
                )
                .await?;
                (Some(backup), image)
            }
        };
        let reader: Arc<dyn guestfs::ReadAt> = Arc::new(ImageDisk::new(image.clone()));
        let found = blocking(move || {
            volumes::scan(reader).map_err(|e| {
                Error::Unprocessable(format!("the disk's partition table cannot be read: {e}"))
            })
        })
        .await?;
        Ok((backup, image, found))
    }

    /// The partitions and filesystems of a backup's disk, without keeping a mount.
    pub async fn disk_volumes(&self, backup_id: &str, disk_id: u32) -> Result<Vec<Volume>> {
        Ok(self.open_for_browsing(backup_id, disk_id, None).await?.2)
    }

    pub async fn mount_backup(&self, req: MountRequest) -> Result<Arc<Mount>> {
        if self.mounts.lock().len() >= self.config.max_mounts {
            return Err(too_many(self.config.max_mounts));
        }
        let (backup, image, found) = self
            .open_for_browsing(&req.backup_id, req.disk_index, req.repository_id.as_deref())
            .await?;
        let disk_id = req.disk_index;
        // Checked again under the lock: two requests may have passed the first check at once,
        // and a prune may have started on the chain while the disk was scanned.
        let _ops = self.ops.lock().await;
        if let Some(backup) = &backup {
            self.refuse_while_merging(backup)?;
        }
        let created_at = now();
        let mount = Arc::new(Mount {
            id: uuid::Uuid::new_v4().to_string(),
            backup_id: req.backup_id.clone(),
            disk_id,
            image,
            volumes: found,
            created_at,
            last_used: Mutex::new(created_at),
            busy: AtomicUsize::new(0),
        });
        {
            let mut mounts = self.mounts.lock();
            if mounts.len() >= self.config.max_mounts {
                return Err(too_many(self.config.max_mounts));
            }
            mounts.insert(mount.id.clone(), mount.clone() as Opaque);
        }
        tracing::info!(mount_id = %mount.id, backup_id = %mount.backup_id, disk_id,
            volumes = mount.volumes.len(), "file-level restore mount open");
        Ok(mount)
    }

    /// Open mounts, oldest first.
    pub fn mounts(&self) -> Vec<Arc<Mount>> {
        let mut all: Vec<_> = self.mounts.lock().values().filter_map(mount_of).collect();
        all.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        all
    }

    /// The mount, counted in use until the guard drops.
    pub fn use_mount(&self, id: &str) -> Result<InUse> {
        let mount = self
            .mounts
            .lock()
            .get(id)
            .and_then(mount_of)
            .ok_or_else(|| Error::NotFound(format!("no mount {id}")))?;
        mount.busy.fetch_add(1, Ordering::AcqRel);
        mount.touch();
        Ok(InUse(mount))
    }

    pub fn mount_expires_at(&self, m: &Mount) -> OffsetDateTime {
        m.last_used() + self.config.mount_idle_timeout
    }

    pub fn unmount(&self, id: &str) -> Result<()> {
        self.mounts
            .lock()
            .remove(id)
            .ok_or_else(|| Error::NotFound(format!("no mount {id}")))?;
        tracing::info!(mount_id = %id, "file-level restore mount closed");
        Ok(())
    }

    /// Ends the mounts of these backups (deleted, or about to be merged). A request already
    /// reading one keeps its own handle on the image until it ends.
    pub(crate) fn end_mounts_of(&self, backup_ids: &[&str]) {
        self.mounts.lock().retain(|id, m| {
            let Some(m) = mount_of(m) else { return false };
            let keep = !backup_ids.contains(&m.backup_id.as_str());
            if !keep {
                tracing::info!(mount_id = %id, backup_id = %m.backup_id, "mount ended: its backup is going");
            }
            keep
        });
    }

    /// The first busy mount of these backups, if any: a merge would change their images.
    pub(crate) fn busy_mount_of(&self, backup_ids: &[&str]) -> Option<String> {
        self.mounts
            .lock()
            .values()
            .filter_map(mount_of)
            .find(|m| m.is_busy() && backup_ids.contains(&m.backup_id.as_str()))
            .map(|m| m.id.clone())
    }

    /// Mounts unused past the idle timeout end (a busy one is in use, whatever its age).
    pub(crate) fn expire_mounts(&self) -> usize {
        let now = now();
        let idle = self.config.mount_idle_timeout;
        let mut ended = 0;
        self.mounts.lock().retain(|id, m| {
            let Some(m) = mount_of(m) else { return false };
            let keep = m.is_busy() || m.last_used() + idle > now;
            if !keep {
                ended += 1;
                tracing::info!(mount_id = %id, "file-level restore mount expired");
            }
            keep
        });
        ended
    }

    /// Mounts unused past the idle timeout not yet swept.
    pub fn expired_mount_count(&self) -> usize {
        let now = now();
        self.mounts
            .lock()
            .values()
            .filter_map(mount_of)
            .filter(|m| !m.is_busy() && m.last_used() + self.config.mount_idle_timeout <= now)
            .count()
    }
}
