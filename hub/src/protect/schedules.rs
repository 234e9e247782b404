//! Schedules: a cron expression in a time zone, and how the runs it fires behave (skip when
//! one is running, how many jobs at once, retries). Firing them is the scheduler's; this is
//! what they are and the checks that keep them valid.

use serde::Deserialize;

use super::fields::{self, bounded, description, present, required_name};
use crate::catalog::{ReplicationType, Schedule};
use crate::error::{Error, Result};
use crate::state::{Hub, now};

/// The body of `POST` and `PUT /api/v1/schedules[/{id}]`, the old hub's fields. On create
/// `name` and `cron_expression` are required; on update a missing field keeps its value.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
pub struct ScheduleRequest {
    /// 1 to 255 bytes, not only spaces; unique.
    #[serde(default)]
    #[schema(min_length = 1, max_length = 255)]
    pub name: Option<String>,
    /// At most 1024 bytes; `null` or empty clears it.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>, max_length = 1024)]
    pub description: Option<Option<String>>,
    /// 5 fields (minute first), 6 (seconds first) or an `@daily`-style name.
    #[serde(default)]
    #[schema(min_length = 1, max_length = 256)]
    pub cron_expression: Option<String>,
    /// An IANA time zone name; `UTC` when absent.
    #[serde(default)]
    #[schema(min_length = 1, max_length = 64)]
    pub timezone: Option<String>,
    /// `true` when absent: a tick while the previous run is still going is skipped.
    #[serde(default)]
    pub skip_if_running: Option<bool>,
    /// 1 to 1000; 10 when absent.
    #[serde(default)]
    #[schema(minimum = 1, maximum = 1000)]
    pub max_concurrent_jobs: Option<u32>,
    /// `auto` when absent.
    #[serde(default)]
    pub replication_type: Option<ReplicationType>,
    /// 0 to 10; 0 when absent.
    #[serde(default)]
    #[schema(minimum = 0, maximum = 10)]
    pub retry_attempts: Option<u32>,
    /// 0 to 1440; 5 when absent.
    #[serde(default)]
    #[schema(minimum = 0, maximum = 1440)]
    pub retry_delay_minutes: Option<u32>,
    /// `true` when absent.
    #[serde(default)]
    pub enabled: Option<bool>,
    /// 1 to 255 bytes; `api` when absent.
    #[serde(default)]
    #[schema(min_length = 1, max_length = 255)]
    pub created_by: Option<String>,
}

/// Whether a cron expression and time zone can be saved: they parse (5 or 6 fields, or an
/// `@name`; an IANA zone) and fire at some time (`protect::cron`, which says why not).
fn check_cron(expression: &str, timezone: &str) -> Result<()> {
    super::cron::CronSchedule::parse(expression, timezone)?;
    Ok(())
}

/// The request over the current schedule (none on create), checked.
fn merge(req: ScheduleRequest, current: Option<&Schedule>) -> Result<Schedule> {
    let cron_expression = match (req.cron_expression, current) {
        (Some(c), _) => c.trim().to_owned(),
        (None, Some(s)) => s.cron_expression.clone(),
        (None, None) => return Err(Error::Invalid("cron_expression is required".into())),
    };
    let timezone = req
        .timezone
        .map(|t| t.trim().to_owned())
        .or_else(|| current.map(|s| s.timezone.clone()))
        .unwrap_or_else(|| "UTC".to_owned());
    check_cron(&cron_expression, &timezone)?;
    let time = now();
    Ok(Schedule {
        id: current.map_or_else(fields::new_id, |s| s.id.clone()),
        name: required_name(
            "name",
            req.name.as_deref(),
            current.map(|s| s.name.as_str()),
        )?,
        description: description(fields::merged(
            req.description,
            current.map(|s| &s.description),
        ))?,
        cron_expression,
        timezone,
        skip_if_running: req
            .skip_if_running
            .or(current.map(|s| s.skip_if_running))
            .unwrap_or(true),
        max_concurrent_jobs: bounded(
            "max_concurrent_jobs",
            req.max_concurrent_jobs
                .or(current.map(|s| s.max_concurrent_jobs))
                .unwrap_or(10),
            1..=1000,
        )?,
        replication_type: req
            .replication_type
            .or(current.map(|s| s.replication_type))
            .unwrap_or(ReplicationType::Auto),
        retry_attempts: bounded(
            "retry_attempts",
            req.retry_attempts
                .or(current.map(|s| s.retry_attempts))
                .unwrap_or(0),
            0..=10,
        )?,
        retry_delay_minutes: bounded(
            "retry_delay_minutes",
            req.retry_delay_minutes
                .or(current.map(|s| s.retry_delay_minutes))
                .unwrap_or(5),
            0..=1440,
        )?,
        enabled: req.enabled.or(current.map(|s| s.enabled)).unwrap_or(true),
        created_by: required_name(
            "created_by",
            req.created_by.as_deref(),
            Some(current.map_or("api", |s| s.created_by.as_str())),
        )?,
        created_at: current.map_or(time, |s| s.created_at),
        updated_at: time,
    })
}

impl Hub {
    pub fn create_schedule(&self, req: ScheduleRequest) -> Result<Schedule> {
        let schedule = merge(req, None)?;
        self.catalog.insert_schedule(&schedule)?;
        tracing::info!(schedule = %schedule.id, name = %schedule.name, cron = %schedule.cron_expression, "schedule created");
        Ok(schedule)
    }

    /// By name; only the enabled ones when asked.
    pub fn schedules(&self, enabled_only: bool) -> Result<Vec<Schedule>> {
        let mut all = self.catalog.schedules()?;
        all.retain(|s| s.enabled || !enabled_only);
        Ok(all)
    }

    pub fn schedule(&self, id: &str) -> Result<Schedule> {
        self.catalog
            .schedule(id)?
            .ok_or_else(|| Error::NotFound(format!("no schedule {id}")))
    }

    pub fn update_schedule(&self, id: &str, req: ScheduleRequest) -> Result<Schedule> {
        let current = self.schedule(id)?;
        let schedule = merge(req, Some(&current))?;
        if !self.catalog.update_schedule(&schedule)? {
            return Err(Error::NotFound(format!("no schedule {id}")));
        }
        tracing::info!(schedule = %id, "schedule updated");
        Ok(schedule)
    }

    pub fn enable_schedule(&self, id: &str, enabled: bool) -> Result<Schedule> {
        self.update_schedule(
            id,
            ScheduleRequest {
                enabled: Some(enabled),
                ..ScheduleRequest::default()
            },
        )
    }

    /// Refused while a machine group or a protection flow uses it.
    pub fn delete_schedule(&self, id: &str) -> Result<()> {
        if !self.catalog.delete_schedule(id)? {
            return Err(Error::NotFound(format!("no schedule {id}")));
        }
        tracing::info!(schedule = %id, "schedule deleted");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::check_cron;

    #[test]
    fn cron_shapes() {
        assert!(check_cron("*/5 * * * * *", "UTC").is_ok());
        assert!(check_cron("0 2 * * *", "Europe/Berlin").is_ok());
        assert!(check_cron("@daily", "UTC").is_ok());
        assert!(check_cron("", "UTC").is_err());
        assert!(check_cron("* * * *", "UTC").is_err());
        assert!(check_cron("* * * * * * *", "UTC").is_err());
        assert!(check_cron("@daily extra", "UTC").is_err());
        assert!(check_cron("0 2 * * *", " ").is_err());
        assert!(check_cron("0 2 * * *", "Mars/Olympus").is_err());
        assert!(check_cron("0 0 30 2 *", "UTC").is_err());
        assert!(check_cron(&"* ".repeat(200), "UTC").is_err());
    }
}
