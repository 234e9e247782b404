//! Backup policies: the repository backups go to, how long they are kept (enforced by the
//! retention work that follows), and the copy rules to other repositories.

use serde::Deserialize;

use super::fields::{self, bounded, present, required_name};
use crate::catalog::{CopyMode, CopyRule, Policy, Retention};
use crate::error::{Error, Result};
use crate::state::{Hub, now};

pub const MAX_COPY_RULES: usize = 100;

/// The body of `POST` and `PUT /api/v1/policies[/{id}]`. On create `name` and
/// `primary_repository_id` are required; on update a missing field keeps its value, `null`
/// clears an optional one.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
pub struct PolicyRequest {
    /// 1 to 255 bytes, not only spaces; unique.
    #[serde(default)]
    #[schema(min_length = 1, max_length = 255)]
    pub name: Option<String>,
    /// `true` when absent.
    #[serde(default)]
    pub enabled: Option<bool>,
    /// An existing repository.
    #[serde(default)]
    pub primary_repository_id: Option<String>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<u32>)]
    pub retention_days: Option<Option<u32>>,
    /// Each to an existing repository other than the primary, no two to the same one; at most
    /// 100. Replaces the policy's rules; `null` or `[]` leaves none.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<Vec<CopyRuleRequest>>, max_items = 100)]
    pub copy_rules: Option<Option<Vec<CopyRuleRequest>>>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<u32>)]
    pub keep_last: Option<Option<u32>>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<u32>)]
    pub keep_hourly: Option<Option<u32>>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<u32>)]
    pub keep_daily: Option<Option<u32>>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<u32>)]
    pub keep_weekly: Option<Option<u32>>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<u32>)]
    pub keep_monthly: Option<Option<u32>>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<u32>)]
    pub keep_yearly: Option<Option<u32>>,
}

/// A copy rule as sent (the old hub's `BackupCopyRule`).
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
pub struct CopyRuleRequest {
    pub destination_repository_id: String,
    /// `immediate` when absent.
    #[serde(default)]
    pub copy_mode: Option<CopyMode>,
    /// From 1; 1 when absent.
    #[serde(default)]
    #[schema(minimum = 1)]
    pub priority: Option<u32>,
    /// `true` when absent.
    #[serde(default)]
    pub enabled: Option<bool>,
    /// `false` when absent.
    #[serde(default)]
    pub verify_after_copy: Option<bool>,
}

fn not_found(id: &str) -> Error {
    Error::NotFound(format!("no policy {id}"))
}

fn retention(req: &PolicyRequest, current: Option<&Retention>) -> Retention {
    let keep = |given: Option<Option<u32>>, current: Option<Option<u32>>| match given {
        Some(v) => v,
        None => current.flatten(),
    };
    Retention {
        keep_last: keep(req.keep_last, current.map(|r| r.keep_last)),
        keep_hourly: keep(req.keep_hourly, current.map(|r| r.keep_hourly)),
        keep_daily: keep(req.keep_daily, current.map(|r| r.keep_daily)),
        keep_weekly: keep(req.keep_weekly, current.map(|r| r.keep_weekly)),
        keep_monthly: keep(req.keep_monthly, current.map(|r| r.keep_monthly)),
        keep_yearly: keep(req.keep_yearly, current.map(|r| r.keep_yearly)),
    }
}

impl Hub {
    fn repository_exists(&self, what: &str, id: &str) -> Result<()> {
        match self.catalog.repository(id)? {
            Some(_) => Ok(()),
            None => Err(Error::NotFound(format!(
                "{what} repository {id:?} does not exist"
            ))),
        }
    }

    /// The copy rules as they will be stored: every destination exists, none is the primary,
    /// none repeats.
    fn copy_rules(
        &self,
        policy_id: &str,
        primary: &str,
        rules: Vec<CopyRuleRequest>,
    ) -> Result<Vec<CopyRule>> {
        if rules.len() > MAX_COPY_RULES {
            return Err(Error::Invalid(format!(
                "at most {MAX_COPY_RULES} copy rules"
            )));
        }
        let mut out: Vec<CopyRule> = Vec::with_capacity(rules.len());
        for rule in rules {
            let destination = rule.destination_repository_id;
            if destination == primary {
                return Err(Error::Invalid(format!(
                    "copy rule destination {destination:?} is the primary repository"
                )));
            }
            if out
                .iter()
                .any(|r| r.destination_repository_id == destination)
            {
                return Err(Error::Invalid(format!(
                    "two copy rules go to repository {destination:?}"
                )));
            }
            self.repository_exists("copy rule destination", &destination)?;
            out.push(CopyRule {
                id: fields::new_id(),
                policy_id: policy_id.to_owned(),
                destination_repository_id: destination,
                copy_mode: rule.copy_mode.unwrap_or(CopyMode::Immediate),
                priority: bounded(
                    "copy rule priority",
                    rule.priority.unwrap_or(1),
                    1..=u32::MAX,
                )?,
                enabled: rule.enabled.unwrap_or(true),
                verify_after_copy: rule.verify_after_copy.unwrap_or(false),
                created_at: now(),
            });
        }
        Ok(out)
    }

    /// The request over the current policy (none on create), checked.
    fn merge_policy(&self, req: PolicyRequest, current: Option<&Policy>) -> Result<Policy> {
        let id = current.map_or_else(fields::new_id, |p| p.id.clone());
        let name = required_name(
            "name",
            req.name.as_deref(),
            current.map(|p| p.name.as_str()),
        )?;
        let primary = match (&req.primary_repository_id, current) {
            (Some(r), _) => r.clone(),
            (None, Some(p)) => p.primary_repository_id.clone(),
            (None, None) => return Err(Error::Invalid("primary_repository_id is required".into())),
        };
        self.repository_exists("primary", &primary)?;
        if let Some(repo) = self.catalog.repository(&primary)? {
            crate::backup::create::refuse_bucket(&repo)?;
        }
        let retention = retention(&req, current.map(|p| &p.retention));
        let copy_rules = match (req.copy_rules, current) {
            (Some(rules), _) => self.copy_rules(&id, &primary, rules.unwrap_or_default())?,
            (None, Some(p)) => {
                let kept = p.copy_rules.iter().map(|r| CopyRuleRequest {
                    destination_repository_id: r.destination_repository_id.clone(),
                    copy_mode: Some(r.copy_mode),
                    priority: Some(r.priority),
                    enabled: Some(r.enabled),
                    verify_after_copy: Some(r.verify_after_copy),
                });
                // A new primary may now clash with a kept rule: checked again.
                self.copy_rules(&id, &primary, kept.collect())?
            }
            (None, None) => Vec::new(),
        };
        let time = now();
        Ok(Policy {
            id,
            name,
            enabled: req.enabled.or(current.map(|p| p.enabled)).unwrap_or(true),
            primary_repository_id: primary,
            retention_days: fields::merged(req.retention_days, current.map(|p| &p.retention_days)),
            retention,
            copy_rules,
            created_at: current.map_or(time, |p| p.created_at),
            updated_at: time,
        })
    }

    pub fn create_policy(&self, req: PolicyRequest) -> Result<Policy> {
        let policy = self.merge_policy(req, None)?;
        self.catalog.insert_policy(&policy)?;
        tracing::info!(policy = %policy.id, name = %policy.name, "policy created");
        Ok(policy)
    }

    /// By name.
    pub fn policies(&self) -> Result<Vec<Policy>> {
        self.catalog.policies()
    }

    pub fn policy(&self, id: &str) -> Result<Policy> {
        self.catalog.policy(id)?.ok_or_else(|| not_found(id))
    }

    pub fn update_policy(&self, id: &str, req: PolicyRequest) -> Result<Policy> {
        let current = self.policy(id)?;
        let policy = self.merge_policy(req, Some(&current))?;
        if !self.catalog.update_policy(&policy)? {
            return Err(not_found(id));
        }
        tracing::info!(policy = %id, "policy updated");
        self.policy(id)
    }

    /// Refused while a protection flow uses it.
    pub fn delete_policy(&self, id: &str) -> Result<()> {
        if !self.catalog.delete_policy(id)? {
            return Err(not_found(id));
        }
        tracing::info!(policy = %id, "policy deleted");
        Ok(())
    }
}
