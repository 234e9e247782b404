//! Deleting a copy: its objects, then its row. Refused while it is being made, while a copy in
//! the same repository reads through it (the layer above would no longer restore), and while
//! its objects are locked (the date is said; the hub never asks the bucket to delete early).

use futures::TryStreamExt;
use object_store::path::Path as Key;
use object_store::{ObjectStore, ObjectStoreExt};

use crate::catalog::BackupCopy;
use crate::error::{Error, Result};
use crate::repo::s3::{Patience, describe};
use crate::state::{Hub, now};

impl Hub {
    pub async fn delete_copy(&self, id: &str) -> Result<BackupCopy> {
        let _ops = self.ops.lock().await;
        let copy = self
            .catalog
            .copy(id)?
            .ok_or_else(|| Error::NotFound(format!("no copy {id}")))?;
        if copy.status.is_live() {
            return Err(Error::Conflict(format!(
                "copy {id} is {} (job {}); cancel the job first",
                copy.status.as_str(),
                copy.job_id.as_deref().unwrap_or("-")
            )));
        }
        if let Some(until) = copy.retain_until.filter(|u| *u > now()) {
            return Err(Error::Conflict(format!(
                "copy {id} of backup {} is locked by the bucket's Object Lock until {}; it \
                 cannot be deleted before then",
                copy.backup_id,
                crate::catalog::fmt_time(until)
            )));
        }
        let above = self
            .catalog
            .copies_in_repository(&copy.repository_id)?
            .into_iter()
            .find(|c| c.parent_backup_id.as_deref() == Some(copy.backup_id.as_str()));
        if let Some(above) = above {
            return Err(Error::Conflict(format!(
                "the copy of backup {} reads through this one (copy {}); delete it first",
                above.backup_id, above.id
            )));
        }
        let repo = self.repository_or_404(&copy.repository_id)?;
        let bucket = self.bucket_of(&repo, Patience::Job)?;
        let store = bucket.store().clone();
        remove_objects(store.as_ref(), &Key::from(copy.object_prefix.as_str())).await?;
        self.catalog.delete_copy(id)?;
        tracing::info!(copy = %id, backup = %copy.backup_id, repository = %repo.id, "copy deleted");
        Ok(copy)
    }
}

/// Every object under the layer's prefix: a failed copy may have left some.
async fn remove_objects(store: &dyn ObjectStore, prefix: &Key) -> Result<()> {
    let keys: Vec<Key> = store
        .list(Some(prefix))
        .map_ok(|meta| meta.location)
        .try_collect()
        .await
        .map_err(|e| Error::Upstream(format!("listing {prefix}: {}", describe(&e))))?;
    for key in keys {
        match store.delete(&key).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => {
                return Err(Error::Upstream(format!("deleting {key}: {}", describe(&e))));
            }
        }
    }
    Ok(())
}
