//! Bringing a copy back: the chain of a copy in an S3 repository downloaded into a local
//! repository, bottom up, as backups of that repository again (after the hub's disks were lost,
//! say, and the bucket's copies were adopted). Each layer's directory gets a `creating` manifest
//! first, then its images and digests (each checked against the BLAKE3 the copy recorded), then
//! its catalog row, then its manifest: a stop in between leaves an interrupted creation, which
//! the next start removes. Layers the catalog already holds are not brought twice; the images'
//! backing names are relative (`../<parent>/disk<N>.qcow2`), so the same layout reads again.

use std::path::Path;

use futures::StreamExt;
use object_store::path::Path as Key;
use object_store::{ObjectStore, ObjectStoreExt};
use serde_json::json;
use tokio::io::AsyncWriteExt;

use super::chain_key;
use crate::catalog::{BackupCopy, CopyStatus, Job, Repository};
use crate::error::{Error, Result};
use crate::jobs::{JobContext, JobKind, Outcome};
use crate::repo::layout;
use crate::repo::manifest::{self, Manifest};
use crate::repo::s3::{Bucket, Patience, describe};
use crate::state::Hub;

impl Hub {
    /// Queues the download of the copy's chain into the local repository `target` (the default
    /// one when absent). Refused: a copy not completed, a target that is not local, a layer
    /// whose backup id the catalog holds in another repository, a chain already there.
    pub async fn start_bring_back(&self, copy_id: &str, target: Option<&str>) -> Result<Job> {
        let top = self
            .catalog
            .copy(copy_id)?
            .ok_or_else(|| Error::NotFound(format!("no copy {copy_id}")))?;
        if top.status != CopyStatus::Completed {
            return Err(Error::Conflict(format!(
                "copy {copy_id} is {}; only completed copies are brought back",
                top.status.as_str()
            )));
        }
        let source = self.repository_or_404(&top.repository_id)?;
        let repo = self.repository_or_404(target.unwrap_or(crate::repo::DEFAULT_REPOSITORY))?;
        if repo.s3.is_some() {
            return Err(Error::Invalid(format!(
                "repository {:?} is an S3 bucket: copies are brought back into a local one",
                repo.id
            )));
        }
        let bucket = self.bucket_of(&source, Patience::Job)?;
        let _ops = self.ops.lock().await;
        let mut layers = Vec::new();
        let mut at = Some(top.clone());
        while let Some(copy) = at {
            match self.catalog.backup(&copy.backup_id)? {
                Some(b) if b.repository_id == repo.id => break,
                Some(b) => {
                    return Err(Error::Conflict(format!(
                        "backup {} is in repository {}: it is not brought into {} too",
                        b.id, b.repository_id, repo.id
                    )));
                }
                None => {}
            }
            at = match &copy.parent_backup_id {
                Some(parent) => Some(self.completed_copy(parent, &source)?),
                None => None,
            };
            layers.push(copy);
        }
        if layers.is_empty() {
            return Err(Error::Conflict(format!(
                "backup {} is in repository {} already",
                top.backup_id, repo.id
            )));
        }
        layers.reverse();
        let key = chain_key(&top.vm_name, &repo.id);
        if let Some(job) = self.catalog.live_job(JobKind::Copy.as_str(), &key)? {
            return Err(Error::Conflict(format!(
                "a copy of the chain of VM {:?} is already queued or running (job {job})",
                top.vm_name
            )));
        }
        let hub = self.clone();
        let job = self
            .jobs
            .submit(JobKind::Copy, &key, move |ctx| async move {
                hub.run_bring_back(bucket, repo, layers, ctx).await
            })?;
        tracing::info!(job_id = %job.id, copy = %copy_id, "bring back queued");
        Ok(job)
    }

    async fn run_bring_back(
        &self,
        bucket: Bucket,
        repo: Repository,
        layers: Vec<BackupCopy>,
        ctx: JobContext,
    ) -> Outcome {
        let total: u64 = layers.iter().map(|c| c.size_bytes).sum();
        let mut done = 0;
        let mut brought = Vec::new();
        for copy in &layers {
            if ctx.is_cancelled() {
                return Outcome::Failed {
                    error: "cancelled".into(),
                    result: Some(json!({"brought": brought})),
                };
            }
            if let Err(err) = self
                .bring_layer(&bucket, &repo, copy, &ctx, &mut done, total)
                .await
            {
                let error = format!("backup {}: {err}", copy.backup_id);
                ctx.error(&error);
                return Outcome::Failed {
                    error,
                    result: Some(json!({"brought": brought})),
                };
            }
            ctx.info(format!(
                "backup {}: in repository {}",
                copy.backup_id, repo.id
            ));
            brought.push(copy.backup_id.clone());
        }
        Outcome::Succeeded(json!({"brought": brought, "repository_id": repo.id}))
    }

    async fn bring_layer(
        &self,
        bucket: &Bucket,
        repo: &Repository,
        copy: &BackupCopy,
        ctx: &JobContext,
        done: &mut u64,
        total: u64,
    ) -> Result<()> {
        let store = bucket.store().as_ref();
        let manifest_key = Key::from(format!("{}/manifest.json", copy.object_prefix));
        let bytes = store
            .get(&manifest_key)
            .await
            .map_err(|e| Error::Upstream(format!("reading {manifest_key}: {}", describe(&e))))?
            .bytes()
            .await
            .map_err(|e| Error::Upstream(format!("reading {manifest_key}: {}", describe(&e))))?;
        let mut found: Manifest = serde_json::from_slice(&bytes)
            .map_err(|e| Error::Invalid(format!("{manifest_key}: {e}")))?;
        if found.backup_id != copy.backup_id {
            return Err(Error::Invalid(format!(
                "{manifest_key} names backup {}",
                found.backup_id
            )));
        }
        found.repository_id = repo.id.clone();
        let dir = layout::backup_dir(&repo.path, &copy.vm_name, &copy.backup_id);
        std::fs::create_dir_all(&dir).map_err(Error::io(format!("creating {}", dir.display())))?;
        crate::sys::datadir::private_dir(&dir)?;
        let creating = Manifest::creating(
            &found.backup_id,
            &found.vm_name,
            &repo.id,
            found.backup_type,
            found.parent_backup_id.as_deref(),
            found.created_at,
        );
        manifest::write(&dir, &creating).map_err(Error::io(format!(
            "writing the manifest in {}",
            dir.display()
        )))?;
        for disk in &copy.disks {
            let image = layout::disk_path(&dir, disk.disk_id);
            let base = *done;
            download(
                store,
                &Key::from(disk.image_key.as_str()),
                &image,
                &disk.image_blake3,
                |n| ctx.progress(base + n, total),
            )
            .await?;
            *done = base + disk.image_bytes;
            if let (Some(key), Some(blake3)) = (&disk.digests_key, &disk.digests_blake3) {
                let file = crate::repo::digests::path_of(&image);
                download(store, &Key::from(key.as_str()), &file, blake3, |_| {}).await?;
            }
        }
        let backup = found
            .to_backup(&dir)
            .map_err(|why| Error::Invalid(format!("{manifest_key}: {why}")))?;
        self.catalog.insert_backup(&backup)?;
        manifest::write(&dir, &Manifest::of(&backup)).map_err(Error::io(format!(
            "writing the manifest in {}",
            dir.display()
        )))?;
        Ok(())
    }
}

/// The object into `file` (through `<file>.part`, renamed once whole and synced), refused when
/// its BLAKE3 is not `blake3`.
async fn download(
    store: &dyn ObjectStore,
    key: &Key,
    file: &Path,
    blake3: &str,
    mut progress: impl FnMut(u64),
) -> Result<()> {
    let part = file.with_extension("part");
    let io = |what: &str| Error::io(format!("{what} {}", part.display()));
    let mut out = tokio::fs::File::create(&part)
        .await
        .map_err(io("creating"))?;
    let mut stream = store
        .get(key)
        .await
        .map_err(|e| Error::Upstream(format!("reading {key}: {}", describe(&e))))?
        .into_stream();
    let mut hasher = blake3::Hasher::new();
    let mut n = 0u64;
    while let Some(chunk) = stream.next().await {
        let chunk =
            chunk.map_err(|e| Error::Upstream(format!("reading {key}: {}", describe(&e))))?;
        hasher.update(&chunk);
        out.write_all(&chunk).await.map_err(io("writing"))?;
        n += chunk.len() as u64;
        progress(n);
    }
    out.sync_all().await.map_err(io("syncing"))?;
    drop(out);
    if hasher.finalize().to_hex().as_str() != blake3 {
        let _ = tokio::fs::remove_file(&part).await;
        return Err(Error::Conflict(format!(
            "{key} does not read back as the copy recorded it (BLAKE3 differs): not brought back"
        )));
    }
    tokio::fs::rename(&part, file)
        .await
        .map_err(Error::io(format!(
            "renaming {} to {}",
            part.display(),
            file.display()
        )))?;
    Ok(())
}
