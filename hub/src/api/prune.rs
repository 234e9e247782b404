//! `/api/v1/prune`: retention applied to one VM's backups in one repository, as a plan (dry
//! run) or a job.

use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::error::{ApiError, ErrorBody};
use super::extract::ApiJson;
use super::jobs::accepted;
use crate::catalog::Retention;
use crate::error::Error;
use crate::prune::{Plan, PruneTarget, Rules};
use crate::repo::DEFAULT_REPOSITORY;
use crate::state::Hub;

/// The rules come from `policy_id` or are given here, not both.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PruneRequest {
    pub vm_name: String,
    /// The policy's primary repository when a policy is named, else `default`.
    #[serde(default)]
    pub repository_id: Option<String>,
    #[serde(default)]
    pub policy_id: Option<String>,
    #[serde(default)]
    pub retention_days: Option<u32>,
    #[serde(default)]
    pub keep_last: Option<u32>,
    #[serde(default)]
    pub keep_hourly: Option<u32>,
    #[serde(default)]
    pub keep_daily: Option<u32>,
    #[serde(default)]
    pub keep_weekly: Option<u32>,
    #[serde(default)]
    pub keep_monthly: Option<u32>,
    #[serde(default)]
    pub keep_yearly: Option<u32>,
    /// Answer with the plan and change nothing.
    #[serde(default)]
    pub dry_run: bool,
}

impl PruneRequest {
    fn target(&self, hub: &Hub) -> Result<PruneTarget, Error> {
        let given = Rules {
            retention: Retention {
                keep_last: self.keep_last,
                keep_hourly: self.keep_hourly,
                keep_daily: self.keep_daily,
                keep_weekly: self.keep_weekly,
                keep_monthly: self.keep_monthly,
                keep_yearly: self.keep_yearly,
            },
            retention_days: self.retention_days,
        };
        let (rules, policy_repository) = match &self.policy_id {
            Some(_) if given != Rules::default() => {
                return Err(Error::Invalid(
                    "give either policy_id or retention rules, not both".into(),
                ));
            }
            Some(policy) => {
                let (rules, repository) = hub.policy_rules(policy)?;
                (rules, Some(repository))
            }
            None => (given, None),
        };
        if self.vm_name.is_empty() {
            return Err(Error::Invalid("vm_name must not be empty".into()));
        }
        let repository_id = self
            .repository_id
            .clone()
            .or(policy_repository)
            .unwrap_or_else(|| DEFAULT_REPOSITORY.to_owned());
        Ok(PruneTarget {
            vm_name: self.vm_name.clone(),
            repository_id,
            rules,
        })
    }
}

#[utoipa::path(post, path = "/api/v1/prune", operation_id = "prune", tag = "backups",
    request_body = PruneRequest,
    responses((status = 200, description = "Dry run: each completed backup of the VM with keep or remove and why, newest first", body = Plan),
        (status = 202, description = "The prune job (removals oldest first; a backup with one child is merged into it); `Location` names it", body = super::jobs::JobView),
        (status = 400, description = "Bad rules, or both a policy and rules", body = ErrorBody),
        (status = 404, description = "No such policy or repository", body = ErrorBody),
        (status = 409, description = "A backup of the VM is active, or a prune of it is already queued or running", body = ErrorBody)))]
pub async fn prune(
    State(hub): State<Hub>,
    ApiJson(req): ApiJson<PruneRequest>,
) -> Result<Response, ApiError> {
    let target = req.target(&hub)?;
    if req.dry_run {
        return Ok(Json(hub.prune_plan(&target)?).into_response());
    }
    let (job, _plan) = hub.start_prune(target).await?;
    Ok(accepted(&job))
}
