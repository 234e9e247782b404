//! A disk as of a backup, read from its copy in an S3 repository: the copy's chain (each layer's
//! copy names the layer below it at copy time) opened bottom up, each layer's image an object
//! read through ranged GETs and the hub's bounded cache (`sys::objects`). Nothing is downloaded
//! first, no local disk is used, and the backup need not be in the catalog any more.

use std::sync::Arc;

use object_store::ObjectStore;
use object_store::path::Path as Key;
use qcow2::{Image, OpenOptions};

use crate::catalog::{BackupCopy, CopiedDisk, CopyStatus, Repository};
use crate::error::{Error, Result};
use crate::repo::s3::Patience;
use crate::state::Hub;
use crate::sys::objects::ObjectStorage;

/// Deepest chain of copies read (as `qcow2::OpenOptions::max_chain_depth` bounds files).
const MAX_LAYERS: usize = 1024;

impl Hub {
    /// The disk's image as of `backup_id`, from its copy in `repo`, with that copy's row.
    pub(crate) async fn open_copy_chain(
        &self,
        backup_id: &str,
        disk_id: u32,
        repo: &Repository,
    ) -> Result<(Arc<Image>, BackupCopy)> {
        let top = self.completed_copy(backup_id, repo)?;
        let mut layers: Vec<CopiedDisk> = Vec::new();
        let mut at = top.clone();
        loop {
            let disk = at
                .disks
                .iter()
                .find(|d| d.disk_id == disk_id)
                .ok_or_else(|| {
                    Error::NotFound(format!(
                        "the copy of backup {} has no disk {disk_id}",
                        at.backup_id
                    ))
                })?;
            layers.push(disk.clone());
            let Some(parent) = at.parent_backup_id.clone() else {
                break;
            };
            if layers.len() >= MAX_LAYERS {
                return Err(Error::Unprocessable(format!(
                    "the chain of copies under {backup_id} is deeper than {MAX_LAYERS}"
                )));
            }
            at = self.completed_copy(&parent, repo).map_err(|e| {
                Error::Gone(format!(
                    "the copy of backup {backup_id} reads through backup {parent}, whose copy in \
                     repository {} is not there: {e}",
                    repo.id
                ))
            })?;
        }
        layers.reverse();
        let bucket = self.bucket_of(repo, Patience::Job)?;
        let store: Arc<dyn ObjectStore> = bucket.store().clone();
        let cache = self.object_cache.clone();
        let runtime = tokio::runtime::Handle::current();
        let image = crate::repo::images::blocking(move || {
            let opts = OpenOptions::default();
            let mut below: Option<Image> = None;
            for layer in &layers {
                let key = Key::from(layer.image_key.as_str());
                let st = Arc::new(ObjectStorage::new(
                    store.clone(),
                    key,
                    layer.image_bytes,
                    cache.clone(),
                    runtime.clone(),
                ));
                let opened = match below.take() {
                    None => Image::open_storage(st, &opts),
                    Some(b) => Image::open_storage_over(st, &opts, b),
                };
                below = Some(opened.map_err(|e| {
                    Error::Unprocessable(format!("the copied image {}: {e}", layer.image_key))
                })?);
            }
            Ok(Arc::new(below.expect("a chain has a layer")))
        })
        .await?;
        Ok((image, top))
    }

    pub(crate) fn completed_copy(&self, backup_id: &str, repo: &Repository) -> Result<BackupCopy> {
        match self.catalog.copy_in(backup_id, &repo.id)? {
            Some(c) if c.status == CopyStatus::Completed => Ok(c),
            Some(c) => Err(Error::Conflict(format!(
                "the copy of backup {backup_id} in repository {} is {}",
                repo.id,
                c.status.as_str()
            ))),
            None => Err(Error::NotFound(format!(
                "repository {} holds no copy of backup {backup_id}",
                repo.id
            ))),
        }
    }
}
