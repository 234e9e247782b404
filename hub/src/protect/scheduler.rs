//! The clock that runs flows on their schedules.
//!
//! Each pass reads the enabled flows with an enabled schedule from the catalog, so a change to a
//! flow or a schedule applies at the next pass (within [`MAX_SLEEP`]). A flow's newest tick run
//! is in the catalog (`last_tick_at`) and recorded *before* its run starts: a restart never runs a
//! tick twice, and the ticks missed while the hub was down are run once, for the latest of them
//! ([`CronSchedule::missed`]).

use std::collections::HashMap;
use std::time::Duration;

use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

use super::cron::CronSchedule;
use super::run::Trigger;
use crate::catalog::{Flow, Schedule};
use crate::error::Result;
use crate::state::{Hub, now};

/// The longest the scheduler sleeps between passes: how soon a changed schedule is seen.
const MAX_SLEEP: Duration = Duration::from_secs(1);

/// Parsed schedules, by expression and zone: parsing checks that the expression can fire, which
/// costs more than a pass should.
#[derive(Default)]
struct Parsed(HashMap<(String, String), Option<CronSchedule>>);

impl Parsed {
    fn get(&mut self, s: &Schedule) -> Option<&CronSchedule> {
        self.0
            .entry((s.cron_expression.clone(), s.timezone.clone()))
            .or_insert_with(
                || match CronSchedule::parse(&s.cron_expression, &s.timezone) {
                    Ok(cron) => Some(cron),
                    Err(err) => {
                        tracing::error!(schedule_id = %s.id, %err, "schedule cannot fire");
                        None
                    }
                },
            )
            .as_ref()
    }
}

impl Hub {
    pub async fn scheduler(&self, shutdown: CancellationToken) {
        let mut parsed = Parsed::default();
        loop {
            let next = match self.schedule_pass(&mut parsed, now()).await {
                Ok(next) => next,
                Err(err) => {
                    tracing::error!(%err, "schedule pass");
                    None
                }
            };
            let sleep = next
                .map(|t| (t - now()).try_into().unwrap_or(Duration::ZERO))
                .map_or(MAX_SLEEP, |d: Duration| d.min(MAX_SLEEP));
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(sleep) => {}
            }
        }
    }

    /// Start the runs that are due at `at`; returns the earliest tick to come.
    async fn schedule_pass(
        &self,
        parsed: &mut Parsed,
        at: OffsetDateTime,
    ) -> Result<Option<OffsetDateTime>> {
        let mut earliest: Option<OffsetDateTime> = None;
        for flow in self.catalog.flows()? {
            let Some(schedule_id) = flow.schedule_id.as_deref().filter(|_| flow.enabled) else {
                continue;
            };
            let Some(schedule) = self.catalog.schedule(schedule_id)? else {
                continue;
            };
            if !schedule.enabled {
                continue;
            }
            let Some(cron) = parsed.get(&schedule) else {
                continue;
            };
            let last = flow.last_tick_at.unwrap_or(flow.created_at);
            if let Some(tick) = cron.missed(last, at) {
                self.run_tick(&flow, &schedule, tick).await?;
            }
            if let Some(next) = cron.next_after(at) {
                earliest = Some(earliest.map_or(next, |e| e.min(next)));
            }
        }
        Ok(earliest)
    }

    async fn run_tick(&self, flow: &Flow, schedule: &Schedule, tick: OffsetDateTime) -> Result<()> {
        // Recorded first: whatever happens to the run, this tick is not run again.
        self.catalog.set_flow_tick(&flow.id, tick)?;
        if schedule.skip_if_running {
            if let Some(run) = self.running_execution(&flow.id)? {
                tracing::info!(flow_id = %flow.id, execution_id = %run.id, %tick,
                    "scheduled run skipped: the previous one is still running");
                return Ok(());
            }
        }
        let trigger = Trigger {
            execution_type: "scheduled",
            triggered_by: format!("schedule {}", schedule.name),
            scheduled_at: Some(tick),
            schedule_id: Some(schedule.id.clone()),
        };
        if let Err(err) = self.execute_flow(&flow.id, trigger).await {
            tracing::warn!(flow_id = %flow.id, %err, %tick, "scheduled run not started");
        }
        Ok(())
    }
}
