//! Copies nobody waits for: a policy's enabled `scheduled` copy rules. A pass every `POLL` takes
//! each VM chain whose newest completed backup the policy made and starts a copy of it to each
//! such rule's destination that does not hold it; a chain busy (a copy, prune or merge under
//! way) is taken by a later pass, and a copy that failed is tried again after `RETRY_AFTER`. So
//! the copies catch up outside the backup window, and a stop loses nothing.

use std::collections::BTreeMap;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::start::CopyRequest;
use crate::catalog::{Backup, BackupFilter, CopyMode, CopyStatus, Status};
use crate::error::{Error, Result};
use crate::state::{Hub, now};

const POLL: Duration = Duration::from_secs(30);
const RETRY_AFTER: time::Duration = time::Duration::hours(1);

impl Hub {
    pub async fn copy_clock(&self, shutdown: CancellationToken) {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(POLL) => {}
            }
            if let Err(err) = self.copy_pass().await {
                tracing::error!(%err, "scheduled copy pass");
            }
        }
    }

    async fn copy_pass(&self) -> Result<()> {
        for policy in self.catalog.policies()? {
            let rules: Vec<_> = policy
                .copy_rules
                .iter()
                .filter(|r| r.enabled && r.copy_mode == CopyMode::Scheduled)
                .collect();
            if rules.is_empty() {
                continue;
            }
            for newest in self.newest_of_policy(&policy.id)? {
                for rule in &rules {
                    let due = match self
                        .catalog
                        .copy_in(&newest.id, &rule.destination_repository_id)?
                    {
                        None => true,
                        Some(c) => {
                            c.status == CopyStatus::Failed
                                && c.copy_started_at.is_none_or(|t| now() - t > RETRY_AFTER)
                        }
                    };
                    if !due {
                        continue;
                    }
                    let req = CopyRequest {
                        backup_id: newest.id.clone(),
                        repository_id: rule.destination_repository_id.clone(),
                        copy_rule_id: Some(rule.id.clone()),
                        verify: rule.verify_after_copy,
                        retain_days: policy.retention_days,
                    };
                    match self.start_copy(req).await {
                        Ok((job, _)) => tracing::info!(job_id = %job.id, backup = %newest.id,
                            repository = %rule.destination_repository_id, "scheduled copy queued"),
                        // Busy now: a later pass takes it.
                        Err(Error::Conflict(_)) => {}
                        Err(err) => tracing::warn!(backup = %newest.id,
                            repository = %rule.destination_repository_id, %err, "scheduled copy not started"),
                    }
                }
            }
        }
        Ok(())
    }

    /// The newest completed backup of each VM chain (VM, repository) the policy made.
    fn newest_of_policy(&self, policy_id: &str) -> Result<Vec<Backup>> {
        let completed = self.catalog.backups(&BackupFilter {
            status: Some(Status::Completed),
            ..BackupFilter::default()
        })?;
        let mut newest: BTreeMap<(String, String), Backup> = BTreeMap::new();
        for b in completed
            .into_iter()
            .filter(|b| b.policy_id.as_deref() == Some(policy_id))
        {
            let key = (b.vm_name.clone(), b.repository_id.clone());
            match newest.get(&key) {
                Some(have) if have.created_at >= b.created_at => {}
                _ => {
                    newest.insert(key, b);
                }
            }
        }
        Ok(newest.into_values().collect())
    }
}
