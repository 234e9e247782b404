//! Sending one layer: each disk's image and digests file, then the layer's manifest (so a
//! manifest names only objects that exist), then, with verify, every object read back.

use object_store::ObjectStore;
use object_store::path::Path as Key;
use serde::Serialize;

use super::object_name;
use super::run::{Progress, Retain, Work};
use super::upload::{self, Sent, Uploaded};
use crate::catalog::{Backup, BackupCopy, CopiedDisk, CopyStatus, CopyUpdate, Disk};
use crate::error::{Error, Result};
use crate::jobs::JobContext;
use crate::repo::manifest::Manifest;
use crate::state::{Hub, now};

/// The layer's `manifest.json` in the bucket: the backup's own manifest, and what the copy
/// holds of it.
#[derive(Serialize)]
struct CopyManifest<'a> {
    #[serde(flatten)]
    backup: Manifest,
    copy: CopyInfo<'a>,
}

#[derive(Serialize)]
struct CopyInfo<'a> {
    copy_id: &'a str,
    source_repository_id: &'a str,
    #[serde(with = "time::serde::rfc3339")]
    copied_at: time::OffsetDateTime,
    disks: &'a [CopiedDisk],
}

impl Hub {
    /// One layer; returns the bytes its objects hold.
    pub(super) async fn copy_layer(
        &self,
        work: &Work,
        layer: &Backup,
        row: &BackupCopy,
        ctx: &JobContext,
        progress: &mut Progress,
    ) -> Result<u64> {
        if ctx.is_cancelled() {
            return Err(Error::Conflict("the copy was cancelled".into()));
        }
        self.set_copy_status(&row.id, CopyStatus::Copying, true)?;
        // The row as it is now: the images are closed and no prune runs (the job's key).
        let layer = self.backup(&layer.id)?;
        let mut disks = Vec::with_capacity(layer.disks.len());
        let mut sent = Vec::new();
        for disk in &layer.disks {
            let (copied, objects) = copy_disk(work, &layer, disk, ctx, progress).await?;
            disks.push(copied);
            sent.extend(objects);
        }
        let manifest = CopyManifest {
            backup: Manifest::of(&layer),
            copy: CopyInfo {
                copy_id: &row.id,
                source_repository_id: &layer.repository_id,
                copied_at: now(),
                disks: &disks,
            },
        };
        let key = work
            .bucket
            .key(&object_name(&layer.vm_name, &layer.id, "manifest.json"));
        let body = serde_json::to_vec_pretty(&manifest).expect("a manifest serialises");
        upload::put_new(work.bucket.store().as_ref(), &key, body).await?;
        if let Some(r) = work.retain {
            lock_objects(work, sent.iter().map(|(k, _)| k).chain([&key]), r).await?;
        }
        let bytes: u64 = sent.iter().map(|(_, u)| u.bytes).sum();
        let update = CopyUpdate {
            size_bytes: Some(bytes),
            disks: Some(disks),
            retain_until: work.retain.map(|r| r.until),
            ..Default::default()
        };
        self.catalog.update_copy(&row.id, update)?;
        let mut update = CopyUpdate {
            status: Some(CopyStatus::Completed),
            copy_completed_at: Some(now()),
            ..Default::default()
        };
        if work.verify {
            self.set_copy_status(&row.id, CopyStatus::Verifying, false)?;
            let verdict = read_back(work.bucket.store().as_ref(), &sent).await;
            update.verification_status = Some(if verdict.is_ok() { "passed" } else { "failed" });
            update.verified_at = Some(now());
            if let Err(why) = verdict {
                update.status = None;
                update.copy_completed_at = None;
                self.catalog.update_copy(&row.id, update)?;
                return Err(why);
            }
        }
        self.catalog.update_copy(&row.id, update)?;
        Ok(bytes)
    }

    /// The completed copies the job's bottom layer reads through get the job's lock where theirs
    /// ends sooner: a chain stays as immutable as its newest layer.
    pub(super) async fn extend_below(&self, work: &Work, ctx: &JobContext) -> Result<()> {
        let (Some(r), Some((bottom, _))) = (work.retain, work.layers.first()) else {
            return Ok(());
        };
        let repository = work.layers[0].1.repository_id.clone();
        let mut parent = bottom.parent_backup_id.clone();
        while let Some(id) = parent {
            let Some(copy) = self.catalog.copy_in(&id, &repository)? else {
                break;
            };
            if copy.retain_until.is_none_or(|u| u < r.until) {
                let manifest = Key::from(format!("{}/manifest.json", copy.object_prefix));
                let keys: Vec<Key> = copy
                    .disks
                    .iter()
                    .flat_map(|d| [Some(&d.image_key), d.digests_key.as_ref()])
                    .flatten()
                    .map(|k| Key::from(k.as_str()))
                    .chain([manifest])
                    .collect();
                lock_objects(work, keys.iter(), r).await?;
                let update = CopyUpdate {
                    retain_until: Some(r.until),
                    ..Default::default()
                };
                self.catalog.update_copy(&copy.id, update)?;
                ctx.info(format!(
                    "backup {id}: its copy is locked until {} too",
                    r.until
                ));
            }
            parent = copy.parent_backup_id;
        }
        Ok(())
    }

    fn set_copy_status(&self, id: &str, status: CopyStatus, started: bool) -> Result<()> {
        let update = CopyUpdate {
            status: Some(status),
            copy_started_at: started.then(now),
            ..Default::default()
        };
        self.catalog.update_copy(id, update)
    }
}

/// One disk's image, then its digests file (checked against the BLAKE3 finalise recorded).
async fn copy_disk(
    work: &Work,
    layer: &Backup,
    disk: &Disk,
    ctx: &JobContext,
    progress: &mut Progress,
) -> Result<(CopiedDisk, Vec<(Key, Uploaded)>)> {
    let store = work.bucket.store().as_ref();
    let name = |n: &str| work.bucket.key(&object_name(&layer.vm_name, &layer.id, n));
    let image_key = name(&format!("disk{}.qcow2", disk.disk_id));
    let (base, total) = (progress.done, progress.total);
    let image = upload::upload_file(store, &disk.qcow2_path, &image_key, ctx, |n| {
        ctx.progress(base + n, total)
    })
    .await?;
    progress.done = base + image.bytes;
    if image.sent == Sent::AlreadyThere {
        ctx.info(format!(
            "backup {} disk {}: already in the bucket from an earlier run, checked equal",
            layer.id, disk.disk_id
        ));
    }
    let mut sent = vec![(image_key.clone(), image.clone())];
    let mut copied = CopiedDisk {
        disk_id: disk.disk_id,
        image_key: image_key.to_string(),
        image_bytes: image.bytes,
        image_blake3: image.blake3,
        digests_key: None,
        digests_blake3: None,
    };
    if let Some(recorded) = &disk.digests_blake3 {
        let file = crate::repo::digests::path_of(&disk.qcow2_path);
        let key = name(&format!("disk{}.digests", disk.disk_id));
        let up = upload::upload_file(store, &file, &key, ctx, |_| {}).await?;
        if &up.blake3 != recorded {
            return Err(Error::Conflict(format!(
                "disk {}: {} is not the digests file finalise recorded; verify the backup \
                 before copying it",
                disk.disk_id,
                file.display()
            )));
        }
        copied.digests_key = Some(key.to_string());
        copied.digests_blake3 = Some(up.blake3.clone());
        sent.push((key, up));
    }
    Ok((copied, sent))
}

async fn lock_objects<'a>(
    work: &Work,
    keys: impl Iterator<Item = &'a Key>,
    r: Retain,
) -> Result<()> {
    for key in keys {
        work.bucket.retain(key, r.mode, r.until).await?;
    }
    Ok(())
}

/// Every object read back whole: its size and BLAKE3 must be what was sent.
async fn read_back(store: &dyn ObjectStore, sent: &[(Key, Uploaded)]) -> Result<()> {
    for (key, up) in sent {
        let (bytes, blake3) = upload::hash_object(store, key).await?;
        if bytes != up.bytes || blake3 != up.blake3 {
            return Err(Error::Conflict(format!(
                "verify after copy: {key} reads back {bytes} bytes that differ from the {} sent",
                up.bytes
            )));
        }
    }
    Ok(())
}
