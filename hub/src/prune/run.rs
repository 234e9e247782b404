//! A prune job: the plan carried out, oldest removal first. A backup with no child that keeps
//! it is deleted; one with a single child is merged into that child (see `merge`); one that is
//! the base of several backups cannot go without copying a disk, and stays, said in the log.

use serde_json::json;

use super::plan::{Plan, PruneTarget};
use crate::catalog::{BackupFilter, Job, Status};
use crate::error::{Error, Result};
use crate::jobs::{JobContext, JobKind, Outcome};
use crate::state::Hub;

/// What happened to one backup of the plan.
enum Step {
    Deleted,
    Merged { into: String },
    Kept(String),
}

impl Hub {
    /// The job that carries out `target`'s plan, with the plan as it stood when it was queued.
    /// Refused while a backup of the VM is active (a merge never runs under a backup writing on
    /// top of the chain) or another prune of it is queued or running.
    pub async fn start_prune(&self, target: PruneTarget) -> Result<(Job, Plan)> {
        let plan = self.prune_plan(&target)?;
        let _ops = self.ops.lock().await;
        let key = target.key();
        if let Some(job) = self.catalog.live_job(JobKind::Prune.as_str(), &key)? {
            return Err(Error::Conflict(format!(
                "a prune of VM {:?} in repository {} is already queued or running (job {job})",
                target.vm_name, target.repository_id
            )));
        }
        self.refuse_if_writing(&target)?;
        if let Some(job) = self.verifying(&target.vm_name, &target.repository_id)? {
            return Err(Error::Conflict(format!(
                "a verify reads the chain of VM {:?} (job {job}); prune after it ends",
                target.vm_name
            )));
        }
        if let Some(job) = self.copying(&target.vm_name, &target.repository_id)? {
            return Err(Error::Conflict(format!(
                "a copy reads the chain of VM {:?} (job {job}); prune after it ends",
                target.vm_name
            )));
        }
        let hub = self.clone();
        let job = self
            .jobs
            .submit(JobKind::Prune, &key, move |ctx| async move {
                hub.run_prune(target, ctx).await
            })?;
        tracing::info!(job_id = %job.id, target = %key, removals = plan.remove_count, "prune queued");
        Ok((job, plan))
    }

    /// A backup of the VM in the repository that is ready, running or finalising.
    fn refuse_if_writing(&self, target: &PruneTarget) -> Result<()> {
        let writing = self
            .catalog
            .active_backups()?
            .into_iter()
            .find(|b| b.vm_name == target.vm_name && b.repository_id == target.repository_id);
        match writing {
            Some(b) => Err(Error::Conflict(format!(
                "backup {} of VM {:?} is {}; prune after it ends",
                b.id,
                target.vm_name,
                b.status.as_str()
            ))),
            None => Ok(()),
        }
    }

    /// Whether a prune job works on the VM's chain in that repository now: backups on top of it
    /// and restores from it wait until it ends.
    pub(crate) fn pruning(&self, vm_name: &str, repository_id: &str) -> Result<Option<String>> {
        let key = super::plan::chain_key(vm_name, repository_id);
        self.catalog.live_job(JobKind::Prune.as_str(), &key)
    }

    async fn run_prune(&self, target: PruneTarget, ctx: JobContext) -> Outcome {
        // Merges a stop or an error left behind come first: they hold the chain's bottom.
        if let Err(err) = self.finish_merges_of(&target, &ctx).await {
            return failed(
                format!("an earlier merge could not be finished: {err}"),
                None,
            );
        }
        let plan = match self.prune_plan(&target) {
            Ok(plan) => plan,
            Err(err) => return failed(err.to_string(), None),
        };
        let removals = plan.removals_oldest_first();
        ctx.info(format!(
            "VM {:?} in repository {}: {} backups, {} to remove",
            plan.vm_name,
            plan.repository_id,
            plan.backups.len(),
            removals.len()
        ));
        let (mut deleted, mut merged, mut kept) = (Vec::new(), Vec::new(), Vec::new());
        for (n, id) in removals.iter().enumerate() {
            if ctx.is_cancelled() {
                ctx.warn("cancelled: the remaining backups stay");
                break;
            }
            match self.remove_one(id, &ctx).await {
                Ok(Step::Deleted) => deleted.push(id.clone()),
                Ok(Step::Merged { into }) => merged.push(json!({ "backup_id": id, "into": into })),
                Ok(Step::Kept(why)) => {
                    ctx.warn(format!("backup {id} stays: {why}"));
                    kept.push(json!({ "backup_id": id, "reason": why }));
                }
                Err(err) => {
                    ctx.error(format!("backup {id}: {err}"));
                    kept.push(json!({ "backup_id": id, "reason": err.to_string() }));
                }
            }
            ctx.progress(n as u64 + 1, removals.len() as u64);
        }
        let result = json!({
            "vm_name": plan.vm_name,
            "repository_id": plan.repository_id,
            "deleted": deleted,
            "merged": merged,
            "not_removed": kept,
        });
        let done = deleted.len() + merged.len();
        if kept.is_empty() && !ctx.is_cancelled() {
            ctx.info(format!("{done} backups removed"));
            Outcome::Succeeded(result)
        } else if done > 0 {
            Outcome::Warning {
                message: format!("{done} of {} backups removed", removals.len()),
                result,
            }
        } else {
            failed("no backup could be removed".into(), Some(result))
        }
    }

    /// One removal, checked again now: the plan is a few seconds old and an operator may have
    /// protected or deleted the backup since.
    async fn remove_one(&self, id: &str, ctx: &JobContext) -> Result<Step> {
        let backup = match self.catalog.backup(id)? {
            Some(b) => b,
            None => return Ok(Step::Kept("already gone".into())),
        };
        if backup.protected {
            return Ok(Step::Kept("protected since the plan was made".into()));
        }
        if backup.status != Status::Completed {
            return Ok(Step::Kept(format!("it is {}", backup.status.as_str())));
        }
        let live: Vec<(String, String)> = self
            .catalog
            .children(id)?
            .into_iter()
            .filter(|(_, status)| {
                status != Status::Failed.as_str() && status != Status::Cancelled.as_str()
            })
            .collect();
        match live.as_slice() {
            [] => {
                self.delete_backup(id).await?;
                ctx.info(format!("backup {id} deleted"));
                Ok(Step::Deleted)
            }
            [(child, status)] if status == Status::Completed.as_str() => {
                self.merge_away(&backup, child, ctx).await?;
                Ok(Step::Merged {
                    into: child.clone(),
                })
            }
            [(child, status)] => Ok(Step::Kept(format!("its child {child} is {status}"))),
            many => Ok(Step::Kept(format!(
                "it is the base of {} backups ({}); removing it would copy a disk",
                many.len(),
                many.iter()
                    .map(|(c, _)| c.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))),
        }
    }

    /// After a flow's backup of a VM: the VM pruned by the flow's policy, when that has rules,
    /// in a prune job of its own. One that cannot start now is said in the flow's log and left
    /// for the next run.
    pub(crate) async fn prune_after_backup(
        &self,
        policy_id: &str,
        repository_id: &str,
        vm_name: &str,
        ctx: &JobContext,
    ) {
        let rules = match self.policy_rules(policy_id) {
            Ok((rules, _)) => rules,
            Err(err) => return ctx.warn(format!("{vm_name}: no prune: {err}")),
        };
        if !rules.any_keep() && rules.retention_days.is_none() {
            return;
        }
        let target = PruneTarget {
            vm_name: vm_name.to_owned(),
            repository_id: repository_id.to_owned(),
            rules,
        };
        match self.start_prune(target).await {
            Ok((job, plan)) => ctx.info(format!(
                "{vm_name}: prune job {} ({} to remove)",
                job.id, plan.remove_count
            )),
            Err(err) => ctx.warn(format!("{vm_name}: prune not started: {err}")),
        }
    }

    /// Completed backups of a VM in a repository, newest first.
    pub(crate) fn completed_of(
        &self,
        vm_name: &str,
        repository_id: &str,
    ) -> Result<Vec<crate::catalog::Backup>> {
        self.catalog.backups(&BackupFilter {
            vm_name: Some(vm_name.to_owned()),
            repository_id: Some(repository_id.to_owned()),
            status: Some(Status::Completed),
            backup_type: None,
        })
    }
}

fn failed(error: String, result: Option<serde_json::Value>) -> Outcome {
    Outcome::Failed { error, result }
}
