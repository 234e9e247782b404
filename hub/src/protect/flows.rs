//! Protection flows: what to back up (a VM or a machine group), where (a repository), by which
//! policy and on which schedule; their checks, and what they look like with their last run.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::cron::CronSchedule;
use super::fields::{MAX_NAME, present};
use crate::catalog::{Flow, FlowExecution, Schedule, VmContext, fmt_time};
use crate::error::{Error, Result};
use crate::state::{Hub, now};

/// Flows took descriptions of up to 4 KiB from the start; the other protection objects' bound
/// (`fields::MAX_DESCRIPTION`) is 1 KiB. Kept, so no flow saved before is refused on update.
const MAX_DESCRIPTION: usize = 4096;

/// The body of create and update. On update an absent field stays; `null` clears `description`,
/// `policy_id` and `schedule_id`.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
pub struct FlowRequest {
    #[schema(min_length = 1, max_length = 255)]
    pub name: Option<String>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>)]
    pub description: Option<Option<String>>,
    /// `backup` (the default; `replication` is not a hub flow).
    pub flow_type: Option<String>,
    /// `vm` or `group`.
    pub target_type: Option<String>,
    /// A VM context (id or VM name) or a machine group id.
    pub target_id: Option<String>,
    pub repository_id: Option<String>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>)]
    pub policy_id: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>)]
    pub schedule_id: Option<Option<String>>,
    pub enabled: Option<bool>,
    pub created_by: Option<String>,
}

/// A flow's last run and what comes next, as the GUI reads them.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct FlowStatus {
    pub last_execution_id: Option<String>,
    /// `pending` (never ran), `running`, `success`, `failed` or `cancelled`.
    pub last_execution_status: String,
    pub last_execution_time: Option<String>,
    pub next_execution_time: Option<String>,
    pub total_executions: u64,
    pub successful_executions: u64,
    pub failed_executions: u64,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct FlowView {
    pub id: String,
    pub name: String,
    pub description: Option<String>,
    pub flow_type: String,
    pub target_type: String,
    pub target_id: String,
    pub target_name: Option<String>,
    pub repository_id: String,
    pub repository_name: Option<String>,
    pub policy_id: Option<String>,
    pub policy_name: Option<String>,
    pub schedule_id: Option<String>,
    pub schedule_name: Option<String>,
    pub schedule_cron: Option<String>,
    pub enabled: bool,
    pub status: FlowStatus,
    pub created_by: String,
    pub created_at: String,
    pub updated_at: String,
}

impl Hub {
    pub fn flow(&self, id: &str) -> Result<Flow> {
        self.catalog
            .flow(id)?
            .ok_or_else(|| Error::NotFound(format!("no protection flow {id}")))
    }

    pub fn flows(&self) -> Result<Vec<Flow>> {
        self.catalog.flows()
    }

    pub async fn create_flow(&self, req: FlowRequest) -> Result<Flow> {
        let _ops = self.ops.lock().await;
        let at = now();
        let mut flow = Flow {
            id: format!("flow-{}", uuid::Uuid::new_v4()),
            name: String::new(),
            description: None,
            flow_type: "backup".into(),
            target_type: String::new(),
            target_id: String::new(),
            repository_id: String::new(),
            policy_id: None,
            schedule_id: None,
            enabled: true,
            created_by: req.created_by.clone().unwrap_or_else(|| "api".into()),
            created_at: at,
            updated_at: at,
            last_tick_at: None,
        };
        for (field, given) in [
            ("name", &req.name),
            ("target_type", &req.target_type),
            ("target_id", &req.target_id),
            ("repository_id", &req.repository_id),
        ] {
            if given.is_none() {
                return Err(Error::Invalid(format!("{field} is required")));
            }
        }
        apply(&mut flow, req);
        let problems = self.flow_problems(&flow)?;
        if let Some(first) = problems.into_iter().next() {
            return Err(first);
        }
        self.catalog.insert_flow(&flow)?;
        tracing::info!(flow_id = %flow.id, name = %flow.name, "protection flow created");
        Ok(flow)
    }

    pub async fn update_flow(&self, id: &str, req: FlowRequest) -> Result<Flow> {
        let _ops = self.ops.lock().await;
        let mut flow = self.flow(id)?;
        let schedule_before = flow.schedule_id.clone();
        apply(&mut flow, req);
        flow.updated_at = now();
        if let Some(first) = self.flow_problems(&flow)?.into_iter().next() {
            return Err(first);
        }
        self.catalog.update_flow(&flow)?;
        if flow.schedule_id != schedule_before {
            // A schedule given now counts from now: no "missed" run for the time before.
            self.catalog.set_flow_tick(&flow.id, now())?;
        }
        self.flow(id)
    }

    pub async fn set_flow_enabled(&self, id: &str, enabled: bool) -> Result<Flow> {
        let req = FlowRequest {
            enabled: Some(enabled),
            ..FlowRequest::default()
        };
        let flow = self.update_flow(id, req).await?;
        tracing::info!(flow_id = %id, enabled, "protection flow switched");
        Ok(flow)
    }

    /// Refused while a run of the flow is in progress (cancel its job first).
    pub async fn delete_flow(&self, id: &str) -> Result<()> {
        let _ops = self.ops.lock().await;
        self.flow(id)?;
        if let Some(run) = self.running_execution(id)? {
            return Err(Error::Conflict(format!(
                "protection flow {id} is running (execution {}, job {}): cancel it first",
                run.id, run.job_id
            )));
        }
        self.catalog.delete_flow(id)?;
        tracing::info!(flow_id = %id, "protection flow deleted");
        Ok(())
    }

    /// What is wrong with the flow as it stands (the `test` route lists them all; create and
    /// update refuse with the first).
    pub fn flow_problems(&self, flow: &Flow) -> Result<Vec<Error>> {
        let mut problems = Vec::new();
        let mut invalid = |m: String| problems.push(Error::Invalid(m));
        if flow.name.trim().is_empty() || flow.name.len() > MAX_NAME {
            invalid(format!("name must have 1 to {MAX_NAME} bytes"));
        }
        if flow
            .description
            .as_ref()
            .is_some_and(|d| d.len() > MAX_DESCRIPTION)
        {
            invalid(format!(
                "description must have at most {MAX_DESCRIPTION} bytes"
            ));
        }
        if flow.flow_type != "backup" {
            invalid(format!(
                "flow_type {:?} is not supported: the hub runs backup flows",
                flow.flow_type
            ));
        }
        match flow.target_type.as_str() {
            "vm" if self.catalog.vm_context(&flow.target_id)?.is_none() => problems.push(
                Error::NotFound(format!("no VM context {:?}: run discovery", flow.target_id)),
            ),
            "group" if self.catalog.group(&flow.target_id)?.is_none() => problems.push(
                Error::NotFound(format!("no machine group {:?}", flow.target_id)),
            ),
            "vm" | "group" => {}
            other => problems.push(Error::Invalid(format!(
                "target_type must be vm or group, not {other:?}"
            ))),
        }
        match self.catalog.repository(&flow.repository_id)? {
            None => problems.push(Error::NotFound(format!(
                "no repository {:?}",
                flow.repository_id
            ))),
            Some(repo) => {
                if let Err(e) = crate::backup::create::refuse_bucket(&repo) {
                    problems.push(e);
                }
            }
        }
        if let Some(policy) = &flow.policy_id {
            if self.catalog.policy(policy)?.is_none() {
                problems.push(Error::NotFound(format!("no policy {policy:?}")));
            }
        }
        if let Some(schedule) = &flow.schedule_id {
            if self.catalog.schedule(schedule)?.is_none() {
                problems.push(Error::NotFound(format!("no schedule {schedule:?}")));
            }
        }
        if let Some(other) = self.catalog.flow_named(&flow.name)? {
            if other.id != flow.id {
                problems.push(Error::Conflict(format!(
                    "a protection flow named {:?} exists ({})",
                    flow.name, other.id
                )));
            }
        }
        Ok(problems)
    }

    /// The run of the flow still in progress in this process, if any.
    pub fn running_execution(&self, flow_id: &str) -> Result<Option<FlowExecution>> {
        let (recent, _) = self.catalog.executions(flow_id, 20)?;
        Ok(recent
            .into_iter()
            .find(|e| e.status == "running" && self.jobs.is_live(&e.job_id)))
    }

    pub fn flow_view(&self, flow: &Flow) -> Result<FlowView> {
        let (last, _) = self.catalog.executions(&flow.id, 1)?;
        let runs = Runs {
            last: last.into_iter().next(),
            counts: self.catalog.execution_counts(&flow.id)?,
        };
        self.view_with(flow, runs, &mut Lookups::default())
    }

    /// The view of every flow, in the catalog's order (`GET /protection-flows`): the same as
    /// [`Hub::flow_view`] of each, in a few queries for all rather than several per flow.
    pub fn flow_views(&self) -> Result<Vec<FlowView>> {
        let flows = self.catalog.flows()?;
        let mut last = self.catalog.last_executions()?;
        let counts = self.catalog.all_execution_counts()?;
        let mut lookups = Lookups {
            vm_names: Some(vm_names(self.catalog.vm_contexts()?)),
            ..Lookups::default()
        };
        flows
            .iter()
            .map(|flow| {
                let runs = Runs {
                    last: last.remove(&flow.id),
                    counts: counts.get(&flow.id).copied().unwrap_or_default(),
                };
                self.view_with(flow, runs, &mut lookups)
            })
            .collect()
    }

    fn view_with(&self, flow: &Flow, runs: Runs, lookups: &mut Lookups) -> Result<FlowView> {
        let (last, (total, successful, failed)) = (runs.last, runs.counts);
        let schedule = match &flow.schedule_id {
            Some(id) => lookups.schedule(self, id)?,
            None => None,
        };
        let next = schedule
            .filter(|(s, _)| s.enabled && flow.enabled)
            .and_then(|(_, cron)| cron.as_ref())
            .and_then(|cron| cron.next_after(now()));
        let schedule_name = schedule.map(|(s, _)| s.name.clone());
        let schedule_cron = schedule.map(|(s, _)| s.cron_expression.clone());
        Ok(FlowView {
            id: flow.id.clone(),
            name: flow.name.clone(),
            description: flow.description.clone(),
            flow_type: flow.flow_type.clone(),
            target_type: flow.target_type.clone(),
            target_id: flow.target_id.clone(),
            target_name: lookups.target_name(self, flow)?,
            repository_id: flow.repository_id.clone(),
            repository_name: lookups.repository_name(self, &flow.repository_id)?,
            policy_id: flow.policy_id.clone(),
            policy_name: match &flow.policy_id {
                Some(id) => lookups.policy_name(self, id)?,
                None => None,
            },
            schedule_id: flow.schedule_id.clone(),
            schedule_name,
            schedule_cron,
            enabled: flow.enabled,
            status: FlowStatus {
                last_execution_id: last.as_ref().map(|e| e.id.clone()),
                last_execution_status: last
                    .as_ref()
                    .map_or_else(|| "pending".to_owned(), |e| e.status.clone()),
                last_execution_time: last
                    .as_ref()
                    .and_then(|e| e.started_at.or(Some(e.created_at)))
                    .map(fmt_time),
                next_execution_time: next.map(fmt_time),
                total_executions: total,
                successful_executions: successful,
                failed_executions: failed,
            },
            created_by: flow.created_by.clone(),
            created_at: fmt_time(flow.created_at),
            updated_at: fmt_time(flow.updated_at),
        })
    }
}

/// A flow's newest run and its `(total, success, failed)` counts.
struct Runs {
    last: Option<FlowExecution>,
    counts: (u64, u64, u64),
}

/// A schedule with its parsed expression (`None`: it cannot fire).
type ParsedSchedule = (Schedule, Option<CronSchedule>);

/// What views look up besides a flow's runs, each looked up once for a list of flows: the flows
/// of a list share a few repositories, schedules and groups, and parsing a schedule is dear.
#[derive(Default)]
struct Lookups {
    /// VM name by VM name and by context id (a list reads every context at once).
    vm_names: Option<HashMap<String, String>>,
    groups: HashMap<String, Option<String>>,
    repositories: HashMap<String, Option<String>>,
    policies: HashMap<String, Option<String>>,
    schedules: HashMap<String, Option<ParsedSchedule>>,
}

impl Lookups {
    fn target_name(&mut self, hub: &Hub, flow: &Flow) -> Result<Option<String>> {
        let id = &flow.target_id;
        Ok(match (flow.target_type.as_str(), &self.vm_names) {
            ("vm", Some(names)) => names.get(id).cloned(),
            ("vm", None) => hub.catalog.vm_context(id)?.map(|(c, _)| c.vm_name),
            ("group", _) => cached(&mut self.groups, id, || {
                Ok(hub.catalog.group(id)?.map(|g| g.group.name))
            })?
            .clone(),
            _ => None,
        })
    }

    fn repository_name(&mut self, hub: &Hub, id: &str) -> Result<Option<String>> {
        Ok(cached(&mut self.repositories, id, || {
            Ok(hub.catalog.repository(id)?.map(|r| r.name))
        })?
        .clone())
    }

    fn policy_name(&mut self, hub: &Hub, id: &str) -> Result<Option<String>> {
        Ok(cached(&mut self.policies, id, || {
            Ok(hub.catalog.policy(id)?.map(|p| p.name))
        })?
        .clone())
    }

    fn schedule(&mut self, hub: &Hub, id: &str) -> Result<Option<&ParsedSchedule>> {
        Ok(cached(&mut self.schedules, id, || {
            Ok(hub.catalog.schedule(id)?.map(|s| {
                let cron = CronSchedule::parse(&s.cron_expression, &s.timezone).ok();
                (s, cron)
            }))
        })?
        .as_ref())
    }
}

/// `map[key]`, from `look_up` the first time.
fn cached<'m, T>(
    map: &'m mut HashMap<String, T>,
    key: &str,
    look_up: impl FnOnce() -> Result<T>,
) -> Result<&'m T> {
    if !map.contains_key(key) {
        map.insert(key.to_owned(), look_up()?);
    }
    Ok(&map[key])
}

/// What [`crate::catalog::Catalog::vm_context`] finds by name or id, for every context: a VM
/// name wins over a context id that happens to be the same text.
fn vm_names(contexts: Vec<VmContext>) -> HashMap<String, String> {
    let mut names: HashMap<String, String> = contexts
        .iter()
        .map(|c| (c.context_id.clone(), c.vm_name.clone()))
        .collect();
    for c in contexts {
        names.insert(c.vm_name.clone(), c.vm_name);
    }
    names
}

fn apply(flow: &mut Flow, req: FlowRequest) {
    if let Some(name) = req.name {
        flow.name = name;
    }
    if let Some(description) = req.description {
        flow.description = description;
    }
    if let Some(flow_type) = req.flow_type {
        flow.flow_type = flow_type;
    }
    if let Some(target_type) = req.target_type {
        flow.target_type = target_type;
    }
    if let Some(target_id) = req.target_id {
        flow.target_id = target_id;
    }
    if let Some(repository_id) = req.repository_id {
        flow.repository_id = repository_id;
    }
    if let Some(policy_id) = req.policy_id {
        flow.policy_id = policy_id;
    }
    if let Some(schedule_id) = req.schedule_id {
        flow.schedule_id = schedule_id;
    }
    if let Some(enabled) = req.enabled {
        flow.enabled = enabled;
    }
}

/// Seconds from `a` to `b`, 0 when either is missing.
pub(crate) fn seconds_between(a: Option<OffsetDateTime>, b: Option<OffsetDateTime>) -> u64 {
    match (a, b) {
        (Some(a), Some(b)) if b > a => (b - a).whole_seconds() as u64,
        _ => 0,
    }
}
