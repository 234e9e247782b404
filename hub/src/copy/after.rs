//! The flow's hook: a policy's immediate copy rules, after each completed backup.

use super::start::CopyRequest;
use crate::jobs::JobContext;
use crate::state::Hub;

impl Hub {
    /// A flow's backup completed: the policy's enabled `immediate` copy rules each copy it, one
    /// after the other, and the flow waits for them (the prune that follows would wait anyway).
    /// Failures are the flow's log lines; the backup stays completed.
    pub(crate) async fn copy_after_backup(
        &self,
        policy_id: &str,
        backup_id: &str,
        ctx: &JobContext,
    ) {
        let (rules, retain_days) = match self.catalog.policy(policy_id) {
            Ok(Some(p)) => (p.copy_rules, p.retention_days),
            Ok(None) => return,
            Err(err) => return ctx.warn(format!("backup {backup_id}: no copies: {err}")),
        };
        for rule in rules
            .iter()
            .filter(|r| r.enabled && r.copy_mode == crate::catalog::CopyMode::Immediate)
        {
            let req = CopyRequest {
                backup_id: backup_id.to_owned(),
                repository_id: rule.destination_repository_id.clone(),
                copy_rule_id: Some(rule.id.clone()),
                verify: rule.verify_after_copy,
                // The policy's days: a copy is immutable as long as the policy keeps backups.
                retain_days,
            };
            let job = match self.start_copy(req).await {
                Ok((job, _)) => job,
                Err(err) => {
                    ctx.warn(format!(
                        "backup {backup_id}: copy to {} not started: {err}",
                        rule.destination_repository_id
                    ));
                    continue;
                }
            };
            ctx.info(format!(
                "backup {backup_id}: copy job {} to {}",
                job.id, rule.destination_repository_id
            ));
            match self.jobs.wait(&job.id, ctx).await {
                Some(end) => ctx.info(format!("copy job {}: {}", job.id, end.as_str())),
                None => return,
            }
        }
    }
}
