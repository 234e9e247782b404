//! Copies found in a bucket: every layer's `manifest.json` under the repository's prefix (written
//! last, so a manifest means the layer's objects are all there) becomes a completed copy row the
//! catalog lacks. Run when an S3 repository is added and on a rescan, so a hub that lost its
//! disks and its catalog gets its copies back by adding the bucket again, and restores from them.

use futures::TryStreamExt;
use object_store::path::Path as Key;
use object_store::{ObjectStore, ObjectStoreExt};
use serde::Deserialize;
use time::OffsetDateTime;

use crate::catalog::{BackupCopy, CopiedDisk, CopyStatus, Repository};
use crate::error::{Error, Result};
use crate::repo::s3::{Bucket, Patience, describe};
use crate::state::{Hub, now};

/// A manifest larger than this is not one the hub wrote.
const MAX_MANIFEST: usize = 4 << 20;

/// What adopting a copy needs of its manifest (the rest is the backup's own record).
#[derive(Deserialize)]
struct Found {
    backup_id: String,
    vm_name: String,
    backup_type: String,
    parent_backup_id: Option<String>,
    copy: FoundCopy,
}

#[derive(Deserialize)]
struct FoundCopy {
    copy_id: String,
    #[serde(with = "time::serde::rfc3339")]
    copied_at: OffsetDateTime,
    disks: Vec<CopiedDisk>,
}

impl Hub {
    /// The copies the bucket holds that the catalog does not know, added as completed; returns
    /// how many. A manifest that does not read, or whose keys leave its own layer's prefix, is
    /// said in the log and left out.
    pub async fn adopt_copies(&self, repo: &Repository) -> Result<usize> {
        let bucket = self.bucket_of(repo, Patience::Job)?;
        let store = bucket.store().clone();
        let root = bucket.key("");
        let manifests: Vec<Key> = store
            .list(Some(&root))
            .try_filter_map(|meta| async move {
                let key = meta.location;
                Ok(key.as_ref().ends_with("/manifest.json").then_some(key))
            })
            .try_collect()
            .await
            .map_err(|e| Error::Upstream(format!("listing {root}: {}", describe(&e))))?;
        let mut adopted = 0;
        for key in manifests {
            match self.adopt_one(&bucket, repo, &key).await {
                Ok(true) => adopted += 1,
                Ok(false) => {}
                Err(err) => {
                    tracing::warn!(repository = %repo.id, %key, %err, "copy in the bucket not adopted")
                }
            }
        }
        if adopted > 0 {
            tracing::info!(repository = %repo.id, adopted, "copies found in the bucket");
        }
        Ok(adopted)
    }

    async fn adopt_one(&self, bucket: &Bucket, repo: &Repository, key: &Key) -> Result<bool> {
        let got = bucket
            .store()
            .get(key)
            .await
            .map_err(|e| Error::Upstream(format!("reading {key}: {}", describe(&e))))?;
        if got.meta.size > MAX_MANIFEST as u64 {
            return Err(Error::Invalid(format!("{key} is {} bytes", got.meta.size)));
        }
        let bytes = got
            .bytes()
            .await
            .map_err(|e| Error::Upstream(format!("reading {key}: {}", describe(&e))))?;
        let found: Found = serde_json::from_slice(&bytes)
            .map_err(|e| Error::Invalid(format!("{key} is not a copy's manifest: {e}")))?;
        let prefix = key
            .as_ref()
            .strip_suffix("/manifest.json")
            .expect("listed by its suffix")
            .to_owned();
        let own = |k: &str| {
            k.strip_prefix(&prefix)
                .is_some_and(|rest| rest.starts_with('/'))
        };
        let keys_ok = found
            .copy
            .disks
            .iter()
            .all(|d| own(&d.image_key) && d.digests_key.as_deref().is_none_or(own));
        if !prefix.ends_with(&format!("/{}", found.backup_id)) || !keys_ok {
            return Err(Error::Invalid(format!(
                "{key} names objects outside its own layer"
            )));
        }
        if self.catalog.copy_in(&found.backup_id, &repo.id)?.is_some() {
            return Ok(false);
        }
        let row = BackupCopy {
            id: found.copy.copy_id,
            backup_id: found.backup_id,
            repository_id: repo.id.clone(),
            vm_name: found.vm_name,
            backup_type: found.backup_type,
            parent_backup_id: found.parent_backup_id,
            copy_rule_id: None,
            job_id: None,
            status: CopyStatus::Completed,
            verification_status: "pending".into(),
            object_prefix: prefix,
            size_bytes: found.copy.disks.iter().map(|d| d.image_bytes).sum(),
            disks: found.copy.disks,
            retain_until: None,
            error_message: None,
            copy_started_at: None,
            copy_completed_at: Some(found.copy.copied_at),
            verified_at: None,
            created_at: now(),
        };
        self.catalog.claim_copy(&row)?;
        Ok(true)
    }
}
