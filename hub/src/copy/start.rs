//! Starting a copy: the request checked, the chain's missing layers planned (`plan`), a row
//! claimed for each (`pending`), the job queued.

use super::chain_key;
use super::plan::{Layer, Plan, plan};
use super::run::Work;
use crate::catalog::{Backup, BackupCopy, CopyStatus, CopyUpdate, Job, Repository, Status};
use crate::error::{Error, Result};
use crate::jobs::JobKind;
use crate::repo::s3::{Bucket, Patience};
use crate::state::{Hub, now};

/// What to copy where.
#[derive(Debug, Clone)]
pub struct CopyRequest {
    pub backup_id: String,
    pub repository_id: String,
    /// The policy's rule that asked, if one did.
    pub copy_rule_id: Option<String>,
    /// Read every object back and compare it with what was sent.
    pub verify: bool,
    /// Days each object stays locked where the bucket has Object Lock (the bucket's default
    /// retention when longer or when this is absent).
    pub retain_days: Option<u32>,
}

impl Hub {
    /// Queues a copy of the backup's chain into an S3 repository and returns the job with the
    /// backup's own copy row (`pending`). Refused: a backup not completed, a destination that
    /// is not S3, a chain a prune or merge works on, a copy of the chain under way, a backup
    /// copied there already.
    pub async fn start_copy(&self, req: CopyRequest) -> Result<(Job, BackupCopy)> {
        let backup = self.backup(&req.backup_id)?;
        if backup.status != Status::Completed {
            return Err(Error::Conflict(format!(
                "backup {} is {}; only completed backups are copied",
                backup.id,
                backup.status.as_str()
            )));
        }
        let repo = self.repository_or_404(&req.repository_id)?;
        if repo.s3.is_none() {
            return Err(Error::Invalid(format!(
                "repository {:?} is a local directory: copies go to S3 repositories",
                repo.id
            )));
        }
        let bucket = self.bucket_of(&repo, Patience::Job)?;
        let _ops = self.ops.lock().await;
        let key = chain_key(&backup.vm_name, &backup.repository_id);
        if let Some(job) = self.catalog.live_job(JobKind::Copy.as_str(), &key)? {
            return Err(Error::Conflict(format!(
                "a copy of the chain of VM {:?} is already queued or running (job {job})",
                backup.vm_name
            )));
        }
        if let Some(why) = self.chain_busy(&backup.vm_name, &backup.repository_id)? {
            return Err(Error::Conflict(format!(
                "backup {}: {why}; copy after it ends",
                backup.id
            )));
        }
        let send = self.missing_layers(&backup, &repo)?;
        let mut layers = Vec::with_capacity(send.len());
        for layer in send {
            let row = self
                .catalog
                .claim_copy(&new_row(&layer, &repo, &bucket, &req))?;
            layers.push((layer, row));
        }
        let own = layers
            .last()
            .map(|(_, row)| row.clone())
            .expect("a plan that sends has the backup on top");
        let job = self.queue(
            &key,
            Work {
                bucket,
                layers,
                verify: req.verify,
                retain_days: req.retain_days,
                retain: None,
            },
        )?;
        tracing::info!(job_id = %job.id, backup = %backup.id, repository = %repo.id, "copy queued");
        Ok((job, own))
    }

    /// The layers of the backup's chain the repository lacks, bottom first.
    fn missing_layers(&self, backup: &Backup, repo: &Repository) -> Result<Vec<Backup>> {
        let chain = self.chain_of(backup)?;
        let states: Vec<Option<CopyStatus>> = chain
            .iter()
            .map(|b| Ok(self.catalog.copy_in(&b.id, &repo.id)?.map(|c| c.status)))
            .collect::<Result<_>>()?;
        let layers: Vec<Layer<'_>> = chain
            .iter()
            .zip(&states)
            .map(|(b, s)| Layer {
                backup_id: &b.id,
                copy: *s,
            })
            .collect();
        match plan(&layers) {
            Plan::Done => Err(Error::Conflict(format!(
                "backup {} already has a completed copy in repository {}",
                backup.id, repo.id
            ))),
            Plan::Busy(id) => Err(Error::Conflict(format!(
                "the copy of backup {id} in repository {} is under way",
                repo.id
            ))),
            Plan::Send(ids) => Ok(ids
                .into_iter()
                .map(|id| {
                    chain
                        .iter()
                        .find(|b| b.id == id)
                        .expect("planned from the chain")
                        .clone()
                })
                .collect()),
        }
    }

    /// The job for the claimed rows, whose `job_id` then names it; a job that cannot be queued
    /// fails them.
    fn queue(&self, key: &str, work: Work) -> Result<Job> {
        let ids: Vec<String> = work.layers.iter().map(|(_, r)| r.id.clone()).collect();
        let hub = self.clone();
        let queued = self.jobs.submit(JobKind::Copy, key, move |ctx| async move {
            hub.run_copy(work, ctx).await
        });
        let job = match queued {
            Ok(job) => job,
            Err(e) => {
                for id in &ids {
                    self.fail_copy(id, &format!("not queued: {e}"));
                }
                return Err(e);
            }
        };
        for id in &ids {
            let update = CopyUpdate {
                job_id: Some(job.id.clone()),
                ..Default::default()
            };
            self.catalog.update_copy(id, update)?;
        }
        Ok(job)
    }

    /// The backup and the layers under it, top first.
    fn chain_of(&self, top: &Backup) -> Result<Vec<Backup>> {
        let mut chain = vec![top.clone()];
        while let Some(parent) = chain.last().and_then(|b| b.parent_backup_id.clone()) {
            if chain.len() > 10_000 || chain.iter().any(|b| b.id == parent) {
                return Err(Error::Internal(format!("the chain of {} loops", top.id)));
            }
            let b = self.catalog.backup(&parent)?.ok_or_else(|| {
                Error::Gone(format!(
                    "backup {} reads through {parent}, which is not in the catalog",
                    top.id
                ))
            })?;
            chain.push(b);
        }
        Ok(chain)
    }

    /// Whether a copy job reads the VM's chain in the repository now (a prune waits for it).
    pub(crate) fn copying(&self, vm_name: &str, repository_id: &str) -> Result<Option<String>> {
        self.catalog
            .live_job(JobKind::Copy.as_str(), &chain_key(vm_name, repository_id))
    }

    pub(super) fn fail_copy(&self, id: &str, why: &str) {
        let update = CopyUpdate {
            status: Some(CopyStatus::Failed),
            error_message: Some(Some(why.to_owned())),
            ..Default::default()
        };
        if let Err(err) = self.catalog.update_copy(id, update) {
            tracing::warn!(copy = id, %err, "copy's failure not recorded");
        }
    }
}

fn new_row(layer: &Backup, repo: &Repository, bucket: &Bucket, req: &CopyRequest) -> BackupCopy {
    let prefix = bucket.key(&format!(
        "{}/{}",
        crate::repo::layout::safe_name(&layer.vm_name),
        layer.id
    ));
    BackupCopy {
        id: uuid::Uuid::new_v4().to_string(),
        backup_id: layer.id.clone(),
        repository_id: repo.id.clone(),
        vm_name: layer.vm_name.clone(),
        backup_type: layer.backup_type.as_str().to_owned(),
        parent_backup_id: layer.parent_backup_id.clone(),
        copy_rule_id: req.copy_rule_id.clone(),
        job_id: None,
        status: CopyStatus::Pending,
        verification_status: "pending".into(),
        object_prefix: prefix.to_string(),
        size_bytes: 0,
        disks: Vec::new(),
        retain_until: None,
        error_message: None,
        copy_started_at: None,
        copy_completed_at: None,
        verified_at: None,
        created_at: now(),
    }
}
