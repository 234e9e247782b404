//! A prune's plan: the rules of a policy (or given outright) applied to one VM's completed
//! backups in one repository. A dry run answers with it; a prune job carries it out.

use jiff::Timestamp;
use jiff::tz::TimeZone;
use serde::Serialize;

use super::select::{self, Candidate, Rules, Verdict};
use crate::catalog::fmt_time;
use crate::error::{Error, Result};
use crate::state::Hub;

/// What a prune is asked to do: whose backups, where, by which rules.
#[derive(Debug, Clone)]
pub struct PruneTarget {
    pub vm_name: String,
    pub repository_id: String,
    pub rules: Rules,
}

impl PruneTarget {
    /// The jobs framework's target string, and the key no two prunes share at once.
    pub fn key(&self) -> String {
        chain_key(&self.vm_name, &self.repository_id)
    }
}

/// A VM's chain in a repository, as the prune job's target names it.
pub fn chain_key(vm_name: &str, repository_id: &str) -> String {
    format!("{vm_name}@{repository_id}")
}

/// One backup and what the rules decided for it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct PlanItem {
    pub backup_id: String,
    #[schema(format = DateTime)]
    pub created_at: String,
    pub keep: bool,
    /// `kept` (with `rule`), `protected`, `no_rule` (no rule set, or younger than
    /// `retention_days`), `not_kept`, `expired` (older than `retention_days`).
    #[schema(value_type = Object)]
    #[serde(flatten)]
    pub verdict: Verdict,
}

/// Newest first.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Plan {
    pub vm_name: String,
    pub repository_id: String,
    pub backups: Vec<PlanItem>,
    pub keep_count: usize,
    pub remove_count: usize,
}

impl Plan {
    /// The backups to remove, oldest first: a chain is shortened from its bottom, so each merge
    /// costs what one increment holds.
    pub fn removals_oldest_first(&self) -> Vec<String> {
        self.backups
            .iter()
            .rev()
            .filter(|i| !i.keep)
            .map(|i| i.backup_id.clone())
            .collect()
    }
}

impl Hub {
    /// The rules of `policy_id`, and its primary repository.
    pub fn policy_rules(&self, policy_id: &str) -> Result<(Rules, String)> {
        let policy = self
            .catalog
            .policy(policy_id)?
            .ok_or_else(|| Error::NotFound(format!("no policy {policy_id}")))?;
        let rules = Rules {
            retention: policy.retention,
            retention_days: policy.retention_days,
        };
        Ok((rules, policy.primary_repository_id))
    }

    pub fn prune_plan(&self, target: &PruneTarget) -> Result<Plan> {
        if self.catalog.repository(&target.repository_id)?.is_none() {
            return Err(Error::NotFound(format!(
                "no repository {}",
                target.repository_id
            )));
        }
        let backups = self.completed_of(&target.vm_name, &target.repository_id)?;
        let candidates: Vec<Candidate> = backups
            .iter()
            .map(|b| Candidate {
                id: b.id.clone(),
                time: Timestamp::from_nanosecond(b.created_at.unix_timestamp_nanos())
                    .unwrap_or(Timestamp::UNIX_EPOCH),
                protected: b.protected,
            })
            .collect();
        let verdicts = select::select(
            &candidates,
            &target.rules,
            Timestamp::now(),
            &TimeZone::system(),
        );
        // The catalog's order: newest first.
        let items: Vec<PlanItem> = backups
            .iter()
            .zip(verdicts)
            .map(|(b, verdict)| PlanItem {
                backup_id: b.id.clone(),
                created_at: fmt_time(b.created_at),
                keep: verdict.keeps(),
                verdict,
            })
            .collect();
        let keep_count = items.iter().filter(|i| i.keep).count();
        Ok(Plan {
            vm_name: target.vm_name.clone(),
            repository_id: target.repository_id.clone(),
            remove_count: items.len() - keep_count,
            keep_count,
            backups: items,
        })
    }
}
