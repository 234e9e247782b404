//! Removing a backup that is the base of exactly one other, without copying a disk: the child's
//! clusters are committed into the removed backup's images, which are then renamed over the
//! child's (`qcow2::merge`), so the child keeps its paths and whatever builds on it reads the same
//! bytes; the catalog then gives the child the removed backup's parent (and `full` when that
//! was the bottom of the chain).
//!
//! Crash-safe at every moment, in this order:
//! 1. the intent (`merges` row) is recorded; from then on the removed backup is not restorable
//!    (its images stop being its point in time) and is finished by whoever finds the row;
//! 2. each disk is merged: while the removed backup's image still exists the merge is run
//!    (again); once it is gone (renamed over the child's) that disk is done;
//! 3. the child's manifest is rewritten, then one transaction moves the child onto the removed
//!    backup's parent, removes the removed backup's row (with its failed children's) recording
//!    their directories as pending deletions, and drops the intent;
//! 4. the directories go (a start finishes pending deletions).
//!
//! A prune finishes the VM's interrupted merges before its own; the start finishes all of them.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::catalog::{Backup, BackupType, MergeIntent, Status};
use crate::error::{Error, Result};
use crate::jobs::JobContext;
use crate::repo::{layout, manifest, removal};
use crate::state::Hub;

use super::plan::PruneTarget;

impl Hub {
    /// Step 1 under the hub's lock (no restore is open from the chain, none can open while the
    /// prune job runs), then the rest.
    pub(crate) async fn merge_away(
        &self,
        removed: &Backup,
        into: &str,
        ctx: &JobContext,
    ) -> Result<()> {
        let intent = MergeIntent {
            removed: removed.id.clone(),
            into: into.to_owned(),
            vm_name: removed.vm_name.clone(),
            repository_id: removed.repository_id.clone(),
        };
        {
            let _ops = self.ops.lock().await;
            let chain = self.completed_of(&removed.vm_name, &removed.repository_id)?;
            for b in &chain {
                if self.catalog.restores_of(&b.id)? > 0 {
                    return Err(Error::Conflict(format!(
                        "backup {} of the chain has an open restore; close it and prune again",
                        b.id
                    )));
                }
            }
            // The merge rewrites the images under the chain's mounts: idle ones end, and one
            // being read (a download under way) holds the prune back like a restore does.
            let ids: Vec<&str> = chain.iter().map(|b| b.id.as_str()).collect();
            if let Some(mount) = self.busy_mount_of(&ids) {
                return Err(Error::Conflict(format!(
                    "a file-level restore is reading the chain (mount {mount}); prune again after it ends"
                )));
            }
            self.end_mounts_of(&ids);
            self.freeing(|| self.catalog.insert_merge(&intent))?;
        }
        ctx.info(format!(
            "merging backup {into} into backup {}'s images",
            removed.id
        ));
        let bytes = self.carry_out(intent, Some(ctx.clone()), true).await?;
        ctx.info(format!(
            "backup {} removed: {into} now holds its images ({bytes} bytes merged)",
            removed.id
        ));
        Ok(())
    }

    /// Merges recorded for the target's chain and not finished (a stop, or an error).
    pub(crate) async fn finish_merges_of(
        &self,
        target: &PruneTarget,
        ctx: &JobContext,
    ) -> Result<()> {
        for intent in self.catalog.merges()? {
            if intent.vm_name == target.vm_name && intent.repository_id == target.repository_id {
                ctx.info(format!(
                    "finishing the merge of backup {} into {}",
                    intent.removed, intent.into
                ));
                self.carry_out(intent, Some(ctx.clone()), false).await?;
            }
        }
        Ok(())
    }

    /// At start, before anything serves: every merge a stop interrupted. One that fails stays
    /// recorded (the removed backup stays unrestorable; the VM's next prune tries again).
    pub(crate) async fn finish_all_merges(&self) -> Result<()> {
        for intent in self.catalog.merges()? {
            let (removed, into) = (intent.removed.clone(), intent.into.clone());
            match self.carry_out(intent, None, false).await {
                Ok(bytes) => tracing::info!(%removed, %into, bytes, "interrupted merge finished"),
                Err(err) => {
                    tracing::error!(%removed, %into, %err, "interrupted merge not finished; the VM's next prune retries it")
                }
            }
        }
        Ok(())
    }

    /// Steps 2 to 4; the bytes merged. On the `first` attempt, a refusal before any image was
    /// written (one in use, by a qemu say) drops the intent: the removed backup is still its own
    /// point in time, and stays restorable.
    async fn carry_out(
        &self,
        intent: MergeIntent,
        ctx: Option<JobContext>,
        first: bool,
    ) -> Result<u64> {
        let removed = self.backup(&intent.removed)?;
        let mut into = self.backup(&intent.into)?;
        let repository = self
            .catalog
            .repository(&removed.repository_id)?
            .ok_or_else(|| Error::Internal(format!("no repository {}", removed.repository_id)))?
            .path;
        let io = self.config.storage_io;
        let (r, i) = (removed.clone(), into.clone());
        let retry = !first;
        let merged =
            tokio::task::spawn_blocking(move || merge_disks(&r, &i, &repository, io, ctx, retry))
                .await
                .map_err(|e| Error::Internal(format!("merge task: {e}")))?;
        let bytes = match merged {
            Ok(bytes) => bytes,
            Err(Failure::Untouched(err)) if first => {
                self.catalog.drop_merge(&removed.id)?;
                return Err(err);
            }
            Err(Failure::Untouched(err) | Failure::Touched(err)) => return Err(err),
        };
        into.parent_backup_id = removed.parent_backup_id.clone();
        if removed.parent_backup_id.is_none() {
            into.backup_type = BackupType::Full;
        }
        for d in &mut into.disks {
            d.image_size = std::fs::metadata(&d.qcow2_path).ok().map(|m| m.len());
        }
        self.rewrite_digests(&removed, &mut into).await?;
        if let Some(dir) = layout::dir_of_backup(&into) {
            // Ahead of the catalog for a moment; a start rewrites it from the catalog anyway.
            if let Err(err) = manifest::write(dir, &manifest::Manifest::of(&into)) {
                tracing::warn!(backup_id = %into.id, %err, "manifest not rewritten after the merge");
            }
        }
        let mut doomed: Vec<(String, PathBuf)> = Vec::new();
        for (child, status) in self.catalog.children(&removed.id)? {
            if child != into.id
                && (status == Status::Failed.as_str() || status == Status::Cancelled.as_str())
            {
                doomed.push((child.clone(), layout::backup_dir_of(&self.backup(&child)?)));
            }
        }
        doomed.push((removed.id.clone(), layout::backup_dir_of(&removed)));
        {
            let _ops = self.ops.lock().await;
            self.freeing(|| self.catalog.finish_merge(&into, &removed.id, &doomed))?;
        }
        for (gone, dir) in &doomed {
            removal::finish_deletion(&self.catalog, gone, dir);
        }
        self.reserve.refill();
        Ok(bytes)
    }
}

/// Clusters allocated and not referenced (leaks: harmless, but space) given back. After a merge
/// ran out of space, so that its retry does not need the space a second time (only refcounts
/// are rewritten, in place, which works on the full disk it ran out of); and after a retry.
fn reclaim_leaks(parent: &Path) {
    match qcow2::check::check(parent, true) {
        Ok(report) => tracing::info!(
            image = %parent.display(),
            leaks_fixed = report.leaks_fixed,
            "clusters an interrupted merge had taken given back"
        ),
        Err(err) => {
            tracing::warn!(image = %parent.display(), %err, "leaks of an interrupted merge not reclaimed")
        }
    }
}

/// How a merge of the disks failed: before any image was written, or after.
enum Failure {
    Untouched(Error),
    Touched(Error),
}

/// Refusals a commit makes while opening, before it writes.
fn refused_at_open(err: &qcow2::Error) -> bool {
    use qcow2::ErrorKind::*;
    matches!(err.kind(), Busy | Refused | InvalidArgument | Unsupported)
}

impl Hub {
    /// The merged images' digests, before the catalog moves `into` (see
    /// `repo::digests::rewrite_merged`: only the ranges `into` wrote are read again).
    async fn rewrite_digests(&self, removed: &Backup, into: &mut Backup) -> Result<()> {
        let io = self.config.storage_io;
        for d in &mut into.disks {
            let Some(below) = removed.disk(d.disk_id).map(|p| p.qcow2_path.clone()) else {
                continue;
            };
            let image = d.qcow2_path.clone();
            let hex = tokio::task::spawn_blocking(move || {
                crate::repo::digests::rewrite_merged(&below, &image, io)
            })
            .await
            .map_err(|e| Error::Internal(format!("digest task: {e}")))??;
            d.digests_blake3 = Some(hex);
        }
        Ok(())
    }
}

/// Each disk of `into` whose image is built on `removed`'s: merged, unless that was done before
/// a stop (the removed backup's image is gone). Blocking.
fn merge_disks(
    removed: &Backup,
    into: &Backup,
    repository: &Path,
    io: qcow2::StorageIo,
    ctx: Option<JobContext>,
    retry: bool,
) -> std::result::Result<u64, Failure> {
    let mut bytes = 0;
    let mut touched = false;
    for disk in &into.disks {
        let Some(parent) = removed.disk(disk.disk_id) else {
            continue; // a disk the removed backup did not have: nothing below it
        };
        if !parent.qcow2_path.exists() {
            continue; // renamed over the child's: this disk's merge is done
        }
        let opts = qcow2::merge::MergeOptions {
            backing_dir: Some(repository.to_owned()),
            no_symlinks: true,
            storage_io: io,
            expect_parent: Some(parent.qcow2_path.clone()),
            progress: ctx.clone().map(|ctx| {
                Arc::new(move |done, total| ctx.progress(done, total)) as qcow2::merge::Progress
            }),
            // Not cancelled half-way: a stop kills it at worst, and the start finishes it.
            cancel: None,
        };
        let report = qcow2::merge::commit_to_backing(&disk.qcow2_path, &opts).map_err(|e| {
            if e.kind() == qcow2::ErrorKind::NoSpace {
                reclaim_leaks(&parent.qcow2_path);
            }
            let untouched = !touched && refused_at_open(&e);
            let err = Error::image(&disk.qcow2_path)(e);
            if untouched {
                Failure::Untouched(err)
            } else {
                Failure::Touched(err)
            }
        })?;
        touched = true;
        qcow2::merge::replace_child_with_backing(&report.parent, &disk.qcow2_path)
            .map_err(|e| Failure::Touched(Error::image(&disk.qcow2_path)(e)))?;
        if retry {
            // A merge run again rewrites, into new clusters, what the interrupted run had
            // already written (the old copy stays valid until the new one is mapped), and
            // leaves the old ones allocated: give them back. Nothing else holds the image
            // while its chain is pruned.
            reclaim_leaks(&disk.qcow2_path);
        }
        bytes += report.bytes_written + report.zeroed_bytes;
    }
    Ok(bytes)
}
