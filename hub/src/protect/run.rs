//! One run of a protection flow, as a job: a backup of each VM of its target through the SNA,
//! as `POST /api/v1/backups` starts one (full when the VM has no completed backup in the
//! repository, else incremental), at most the group's `max_concurrent_vms` at once, each retried
//! as the schedule says; the execution's counters follow every backup that ends.
//!
//! The execution's status speaks the GUI's words: `success` when every backup completed (or there
//! was nothing to back up), `failed` when any failed — a partial result says how many in
//! `jobs_failed` and `error_message`, and its job ends `warning` — and `cancelled`.

use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use serde_json::json;
use time::OffsetDateTime;
use tokio::sync::Semaphore;

use crate::backup::create::CreateBackup;
use crate::catalog::{BackupType, Flow, FlowExecution, Job, ReplicationType, Status};
use crate::error::{Error, Result};
use crate::jobs::{JobContext, JobKind, Outcome};
use crate::state::{Hub, now};

/// How often a run looks at the backups it waits for.
const POLL: Duration = Duration::from_millis(500);

/// Who asked for a run.
pub struct Trigger {
    /// `manual`, `scheduled` or `api`.
    pub execution_type: &'static str,
    pub triggered_by: String,
    /// The schedule tick a scheduled run is for.
    pub scheduled_at: Option<OffsetDateTime>,
    /// The schedule the run is for (its tick or its trigger).
    pub schedule_id: Option<String>,
}

/// A VM a run backs up.
#[derive(Debug, Clone)]
struct GroupVm {
    vm_name: String,
}

/// What a run does, fixed when it starts.
struct Plan {
    flow: Flow,
    vms: Vec<GroupVm>,
    parallel: usize,
    retries: u32,
    retry_delay: Duration,
    /// The schedule's `replication_type`: `full` forces full backups.
    force_full: bool,
}

enum VmEnd {
    Completed { bytes: u64, backup_id: String },
    Failed,
    Cancelled,
}

impl Hub {
    /// Start a run of the flow as a job; the execution is recorded before the work begins.
    pub async fn execute_flow(
        &self,
        flow_id: &str,
        trigger: Trigger,
    ) -> Result<(FlowExecution, Job)> {
        let flow = self.flow(flow_id)?;
        if flow.flow_type != "backup" {
            return Err(Error::Invalid(format!(
                "flow_type {:?} cannot run",
                flow.flow_type
            )));
        }
        if let Some(run) = self.running_execution(&flow.id)? {
            return Err(Error::Conflict(format!(
                "protection flow {} is already running (execution {})",
                flow.id, run.id
            )));
        }
        let plan = self.plan(flow)?;
        let execution_id = format!("exec-{}", uuid::Uuid::new_v4());
        let (ready, wait_ready) = tokio::sync::oneshot::channel::<bool>();
        let hub = self.clone();
        let (run_id, run_plan) = (execution_id.clone(), plan);
        let flow_id = run_plan.flow.id.clone();
        let jobs_created = run_plan.vms.len() as u64;
        let job = self
            .jobs
            .submit(JobKind::ProtectionFlow, &flow_id, move |ctx| async move {
                if !wait_ready.await.unwrap_or(false) {
                    return Outcome::Failed {
                        error: "the execution was not recorded".into(),
                        result: None,
                    };
                }
                hub.run_flow(ctx, run_id, run_plan).await
            })?;
        let at = now();
        let execution = FlowExecution {
            id: execution_id,
            flow_id,
            job_id: job.id.clone(),
            status: "running".into(),
            execution_type: trigger.execution_type.into(),
            triggered_by: trigger.triggered_by,
            scheduled_at: trigger.scheduled_at,
            started_at: Some(at),
            completed_at: None,
            jobs_created,
            jobs_completed: 0,
            jobs_failed: 0,
            jobs_skipped: 0,
            vms_processed: 0,
            bytes_transferred: 0,
            error_message: None,
            backup_ids: Vec::new(),
            created_at: at,
            schedule_id: trigger.schedule_id,
        };
        let recorded = self.catalog.insert_execution(&execution);
        let _ = ready.send(recorded.is_ok());
        recorded?;
        tracing::info!(flow_id = %execution.flow_id, execution_id = %execution.id, job_id = %job.id,
            vms = jobs_created, execution_type = execution.execution_type, "protection flow run started");
        Ok((execution, job))
    }

    fn plan(&self, flow: Flow) -> Result<Plan> {
        let (vms, group_limit) = match flow.target_type.as_str() {
            "vm" => {
                let (context, _) = self.vm_context(&flow.target_id)?;
                (
                    vec![GroupVm {
                        vm_name: context.vm_name,
                    }],
                    None,
                )
            }
            "group" => {
                let group = self.catalog.group(&flow.target_id)?.ok_or_else(|| {
                    Error::NotFound(format!("no machine group {:?}", flow.target_id))
                })?;
                // Enabled members, by priority (the catalog's order).
                let vms = self
                    .catalog
                    .group_members(&flow.target_id)?
                    .into_iter()
                    .filter(|m| m.membership.enabled)
                    .map(|m| GroupVm {
                        vm_name: m.context.vm_name,
                    })
                    .collect();
                (vms, Some(group.group.max_concurrent_vms))
            }
            other => return Err(Error::Invalid(format!("target_type {other:?} cannot run"))),
        };
        let schedule = match &flow.schedule_id {
            Some(id) => self.catalog.schedule(id)?,
            None => None,
        };
        let limits = [
            group_limit,
            schedule.as_ref().map(|s| s.max_concurrent_jobs),
        ];
        let parallel = limits
            .into_iter()
            .flatten()
            .map(|n| n.max(1) as usize)
            .min()
            .unwrap_or(vms.len())
            .max(1);
        Ok(Plan {
            retries: schedule.as_ref().map_or(0, |s| s.retry_attempts),
            retry_delay: Duration::from_secs(
                schedule
                    .as_ref()
                    .map_or(0, |s| u64::from(s.retry_delay_minutes) * 60),
            ),
            force_full: schedule
                .as_ref()
                .is_some_and(|s| s.replication_type == ReplicationType::Full),
            flow,
            vms,
            parallel,
        })
    }

    async fn run_flow(&self, ctx: JobContext, execution_id: String, plan: Plan) -> Outcome {
        let Ok(Some(execution)) = self.catalog.execution(&execution_id) else {
            return Outcome::Failed {
                error: "execution not found".into(),
                result: None,
            };
        };
        ctx.info(format!(
            "backing up {} VM(s) of {} {:?}, {} at once",
            plan.vms.len(),
            plan.flow.target_type,
            plan.flow.target_id,
            plan.parallel
        ));
        let execution = Arc::new(Mutex::new(execution));
        let slots = Arc::new(Semaphore::new(plan.parallel));
        let plan = Arc::new(plan);
        let mut runs = tokio::task::JoinSet::new();
        for vm in plan.vms.clone() {
            let (hub, ctx, plan, slots, execution) = (
                self.clone(),
                ctx.clone(),
                plan.clone(),
                slots.clone(),
                execution.clone(),
            );
            runs.spawn(async move {
                let Ok(_slot) = slots.acquire_owned().await else {
                    return;
                };
                // Then one of the hub's slots for flow backups, shared by every flow.
                let Ok(_backup) = hub.flow_backups.clone().acquire_owned().await else {
                    return;
                };
                let end = hub.back_up_vm(&ctx, &plan, &vm, &execution).await;
                let completed = match &end {
                    VmEnd::Completed { backup_id, .. } => Some(backup_id.clone()),
                    _ => None,
                };
                hub.count_vm(&ctx, &execution, &vm, end);
                if let (Some(backup_id), Some(policy)) = (completed, &plan.flow.policy_id) {
                    // Copies first: they read the chain, which the prune may merge.
                    hub.copy_after_backup(policy, &backup_id, &ctx).await;
                    hub.prune_after_backup(policy, &plan.flow.repository_id, &vm.vm_name, &ctx)
                        .await;
                }
            });
        }
        while runs.join_next().await.is_some() {}
        self.end_run(&ctx, &execution)
    }

    /// One VM, retried as the schedule says; the backups it made are in the execution.
    async fn back_up_vm(
        &self,
        ctx: &JobContext,
        plan: &Plan,
        vm: &GroupVm,
        execution: &Mutex<FlowExecution>,
    ) -> VmEnd {
        for attempt in 0..=plan.retries {
            if ctx.is_cancelled() {
                return VmEnd::Cancelled;
            }
            if attempt > 0 {
                ctx.info(format!(
                    "{}: retry {attempt} of {}",
                    vm.vm_name, plan.retries
                ));
            }
            match self.start_vm_backup(plan, vm, execution).await {
                Ok(id) => match self.wait_backup(ctx, &id).await {
                    Some((Status::Completed, bytes)) => {
                        ctx.info(format!("{}: backup {id} completed", vm.vm_name));
                        return VmEnd::Completed {
                            bytes,
                            backup_id: id,
                        };
                    }
                    Some((status, _)) => {
                        ctx.warn(format!("{}: backup {id} {}", vm.vm_name, status.as_str()))
                    }
                    None => return VmEnd::Cancelled,
                },
                Err(err) => ctx.warn(format!("{}: backup not started: {err}", vm.vm_name)),
            }
            if attempt < plan.retries {
                tokio::select! {
                    _ = tokio::time::sleep(plan.retry_delay) => {}
                    _ = ctx.cancelled() => return VmEnd::Cancelled,
                }
            }
        }
        VmEnd::Failed
    }

    async fn start_vm_backup(
        &self,
        plan: &Plan,
        vm: &GroupVm,
        execution: &Mutex<FlowExecution>,
    ) -> Result<String> {
        let repository = &plan.flow.repository_id;
        let has_base = self
            .catalog
            .latest_completed(&vm.vm_name, Some(repository))?
            .is_some();
        let backup_type = if has_base && !plan.force_full {
            BackupType::Incremental
        } else {
            BackupType::Full
        };
        let req = CreateBackup {
            vm_name: vm.vm_name.clone(),
            repository_id: Some(repository.clone()),
            backup_type,
            disks: None,
            parent_backup_id: None,
            tags: Some(json!({"flow_id": plan.flow.id, "execution_id": execution.lock().id})),
            policy_id: plan.flow.policy_id.clone(),
            start_on_sna: None,
            vm_context_id: None,
        };
        let backup = self.start_backup(req).await?;
        self.record_backup(execution, &backup.id);
        Ok(backup.id)
    }

    fn record_backup(&self, execution: &Mutex<FlowExecution>, backup_id: &str) {
        let mut e = execution.lock();
        e.backup_ids.push(backup_id.to_owned());
        if let Err(err) = self.catalog.update_execution(&e) {
            tracing::warn!(execution_id = %e.id, %err, "execution not updated");
        }
    }

    /// The backup's end (status and bytes written); `None` when the run was cancelled first (the
    /// backup is cancelled with it).
    async fn wait_backup(&self, ctx: &JobContext, id: &str) -> Option<(Status, u64)> {
        loop {
            match self.backup(id) {
                Ok(b) if !b.status.is_active() => {
                    return Some((b.status, b.disks.iter().map(|d| d.bytes_written).sum()));
                }
                Ok(_) => {}
                Err(err) => {
                    ctx.warn(format!("backup {id}: {err}"));
                    return Some((Status::Failed, 0));
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(POLL) => {}
                _ = ctx.cancelled() => {
                    // A stopping hub fails its backups itself ("hub stopped") and keeps their
                    // images; an operator's cancel of the run cancels the backup too.
                    if !ctx.hub_stopping() {
                        if let Err(err) = self.cancel(id).await {
                            ctx.warn(format!("backup {id} not cancelled: {err}"));
                        }
                    }
                    return None;
                }
            }
        }
    }

    fn count_vm(
        &self,
        ctx: &JobContext,
        execution: &Mutex<FlowExecution>,
        vm: &GroupVm,
        end: VmEnd,
    ) {
        let mut e = execution.lock();
        match end {
            VmEnd::Completed { bytes, .. } => {
                e.jobs_completed += 1;
                e.bytes_transferred += bytes;
            }
            VmEnd::Failed => {
                e.jobs_failed += 1;
                ctx.error(format!("{}: failed", vm.vm_name));
            }
            VmEnd::Cancelled => e.jobs_skipped += 1,
        }
        e.vms_processed += 1;
        ctx.progress(e.vms_processed, e.jobs_created);
        if let Err(err) = self.catalog.update_execution(&e) {
            tracing::warn!(execution_id = %e.id, %err, "execution not updated");
        }
    }

    fn end_run(&self, ctx: &JobContext, execution: &Mutex<FlowExecution>) -> Outcome {
        let mut e = execution.lock();
        e.completed_at = Some(now());
        let result = |e: &FlowExecution| {
            json!({"execution_id": e.id, "backup_ids": e.backup_ids, "jobs_created": e.jobs_created,
                "jobs_completed": e.jobs_completed, "jobs_failed": e.jobs_failed,
                "bytes_transferred": e.bytes_transferred})
        };
        let outcome = if ctx.hub_stopping() {
            e.status = "failed".into();
            e.error_message = Some("hub stopped".into());
            Outcome::Failed {
                error: "hub stopped".into(),
                result: Some(result(&e)),
            }
        } else if ctx.is_cancelled() {
            e.status = "cancelled".into();
            e.error_message = Some("cancelled".into());
            Outcome::Failed {
                error: "cancelled".into(),
                result: Some(result(&e)),
            }
        } else if e.jobs_failed == 0 {
            e.status = "success".into();
            Outcome::Succeeded(result(&e))
        } else {
            e.status = "failed".into();
            let message = format!("{} of {} backups failed", e.jobs_failed, e.jobs_created);
            e.error_message = Some(message.clone());
            if e.jobs_completed > 0 {
                Outcome::Warning {
                    result: result(&e),
                    message,
                }
            } else {
                Outcome::Failed {
                    error: message,
                    result: Some(result(&e)),
                }
            }
        };
        if let Err(err) = self.catalog.update_execution(&e) {
            tracing::error!(execution_id = %e.id, %err, "execution end not recorded");
        }
        outcome
    }
}
