//! Protection flows, their executions, and what a run reads of its target and schedule.

use std::collections::HashMap;

use rusqlite::{OptionalExtension, Row, params};
use time::OffsetDateTime;

use super::conn::Catalog;
use super::rows::{fmt_time, parse_opt_time, parse_time};
use crate::error::Result;

#[derive(Debug, Clone, PartialEq)]
pub struct Flow {
    pub id: String,
    pub name: String,
    pub description: Option<String>,
    pub flow_type: String,
    /// `vm` or `group`.
    pub target_type: String,
    pub target_id: String,
    pub repository_id: String,
    pub policy_id: Option<String>,
    pub schedule_id: Option<String>,
    pub enabled: bool,
    pub created_by: String,
    pub created_at: OffsetDateTime,
    pub updated_at: OffsetDateTime,
    /// The newest schedule tick a run was started (or skipped) for.
    pub last_tick_at: Option<OffsetDateTime>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct FlowExecution {
    pub id: String,
    pub flow_id: String,
    pub job_id: String,
    /// `running`, `success`, `failed` (also a partial result: see `jobs_failed`) or `cancelled`.
    pub status: String,
    /// `manual`, `scheduled` or `api`.
    pub execution_type: String,
    pub triggered_by: String,
    pub scheduled_at: Option<OffsetDateTime>,
    pub started_at: Option<OffsetDateTime>,
    pub completed_at: Option<OffsetDateTime>,
    pub jobs_created: u64,
    pub jobs_completed: u64,
    pub jobs_failed: u64,
    pub jobs_skipped: u64,
    pub vms_processed: u64,
    pub bytes_transferred: u64,
    pub error_message: Option<String>,
    pub backup_ids: Vec<String>,
    pub created_at: OffsetDateTime,
    /// The schedule the run was for (a tick or the schedule's trigger).
    pub schedule_id: Option<String>,
}

const FLOW_COLUMNS: &str = "id, name, description, flow_type, target_type, target_id, \
    repository_id, policy_id, schedule_id, enabled, created_by, created_at, updated_at, last_tick_at";

fn flow_from_row(row: &Row<'_>) -> rusqlite::Result<Flow> {
    Ok(Flow {
        id: row.get(0)?,
        name: row.get(1)?,
        description: row.get(2)?,
        flow_type: row.get(3)?,
        target_type: row.get(4)?,
        target_id: row.get(5)?,
        repository_id: row.get(6)?,
        policy_id: row.get(7)?,
        schedule_id: row.get(8)?,
        enabled: row.get(9)?,
        created_by: row.get(10)?,
        created_at: parse_time(&row.get::<_, String>(11)?)?,
        updated_at: parse_time(&row.get::<_, String>(12)?)?,
        last_tick_at: parse_opt_time(row.get(13)?)?,
    })
}

/// `(total, success, failed)` of the executions a query selects (read by [`run_counts`]).
const RUN_COUNTS: &str =
    "COUNT(*), COALESCE(SUM(status = 'success'), 0), COALESCE(SUM(status = 'failed'), 0)";

fn run_counts(row: &Row<'_>, from: usize) -> rusqlite::Result<(u64, u64, u64)> {
    let count = |i: usize| row.get::<_, i64>(from + i).map(|n| n as u64);
    Ok((count(0)?, count(1)?, count(2)?))
}

const EXECUTION_COLUMNS: &str = "id, flow_id, job_id, status, execution_type, triggered_by, \
    scheduled_at, started_at, completed_at, jobs_created, jobs_completed, jobs_failed, \
    jobs_skipped, vms_processed, bytes_transferred, error_message, backup_ids, created_at, \
    schedule_id";

fn execution_from_row(row: &Row<'_>) -> rusqlite::Result<FlowExecution> {
    let count = |i: usize| row.get::<_, i64>(i).map(|n| n as u64);
    let backup_ids: Option<String> = row.get(16)?;
    Ok(FlowExecution {
        id: row.get(0)?,
        flow_id: row.get(1)?,
        job_id: row.get(2)?,
        status: row.get(3)?,
        execution_type: row.get(4)?,
        triggered_by: row.get(5)?,
        scheduled_at: parse_opt_time(row.get(6)?)?,
        started_at: parse_opt_time(row.get(7)?)?,
        completed_at: parse_opt_time(row.get(8)?)?,
        jobs_created: count(9)?,
        jobs_completed: count(10)?,
        jobs_failed: count(11)?,
        jobs_skipped: count(12)?,
        vms_processed: count(13)?,
        bytes_transferred: count(14)?,
        error_message: row.get(15)?,
        backup_ids: backup_ids
            .and_then(|s| serde_json::from_str(&s).ok())
            .unwrap_or_default(),
        created_at: parse_time(&row.get::<_, String>(17)?)?,
        schedule_id: row.get(18)?,
    })
}

impl Catalog {
    pub fn insert_flow(&self, f: &Flow) -> Result<()> {
        self.writer().execute(
            &format!(
                "INSERT INTO protection_flows ({FLOW_COLUMNS}) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)"
            ),
            params![
                f.id,
                f.name,
                f.description,
                f.flow_type,
                f.target_type,
                f.target_id,
                f.repository_id,
                f.policy_id,
                f.schedule_id,
                f.enabled,
                f.created_by,
                fmt_time(f.created_at),
                fmt_time(f.updated_at),
                f.last_tick_at.map(fmt_time)
            ],
        )?;
        Ok(())
    }

    /// Every field but the id, the creation and the tick.
    pub fn update_flow(&self, f: &Flow) -> Result<()> {
        self.writer().execute(
            "UPDATE protection_flows SET name = ?2, description = ?3, flow_type = ?4, \
             target_type = ?5, target_id = ?6, repository_id = ?7, policy_id = ?8, \
             schedule_id = ?9, enabled = ?10, updated_at = ?11 WHERE id = ?1",
            params![
                f.id,
                f.name,
                f.description,
                f.flow_type,
                f.target_type,
                f.target_id,
                f.repository_id,
                f.policy_id,
                f.schedule_id,
                f.enabled,
                fmt_time(f.updated_at)
            ],
        )?;
        Ok(())
    }

    pub fn set_flow_tick(&self, id: &str, tick: OffsetDateTime) -> Result<()> {
        self.writer().execute(
            "UPDATE protection_flows SET last_tick_at = ?2 WHERE id = ?1",
            params![id, fmt_time(tick)],
        )?;
        Ok(())
    }

    pub fn flow(&self, id: &str) -> Result<Option<Flow>> {
        let conn = self.conn.lock();
        Ok(conn
            .query_row(
                &format!("SELECT {FLOW_COLUMNS} FROM protection_flows WHERE id = ?1"),
                [id],
                flow_from_row,
            )
            .optional()?)
    }

    pub fn flow_named(&self, name: &str) -> Result<Option<Flow>> {
        let conn = self.conn.lock();
        Ok(conn
            .query_row(
                &format!("SELECT {FLOW_COLUMNS} FROM protection_flows WHERE name = ?1"),
                [name],
                flow_from_row,
            )
            .optional()?)
    }

    pub fn flows(&self) -> Result<Vec<Flow>> {
        let conn = self.conn.lock();
        let mut stmt = conn.prepare(&format!(
            "SELECT {FLOW_COLUMNS} FROM protection_flows ORDER BY created_at, id"
        ))?;
        let flows = stmt
            .query_map([], flow_from_row)?
            .collect::<rusqlite::Result<_>>()?;
        Ok(flows)
    }

    /// The flow and its executions go; the executions' jobs stay (the jobs' history).
    pub fn delete_flow(&self, id: &str) -> Result<bool> {
        let n = self
            .writer()
            .execute("DELETE FROM protection_flows WHERE id = ?1", [id])?;
        Ok(n > 0)
    }

    pub fn insert_execution(&self, e: &FlowExecution) -> Result<()> {
        self.writer().execute(
            &format!(
                "INSERT INTO flow_executions ({EXECUTION_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, \
                 ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19)"
            ),
            params![
                e.id,
                e.flow_id,
                e.job_id,
                e.status,
                e.execution_type,
                e.triggered_by,
                e.scheduled_at.map(fmt_time),
                e.started_at.map(fmt_time),
                e.completed_at.map(fmt_time),
                e.jobs_created as i64,
                e.jobs_completed as i64,
                e.jobs_failed as i64,
                e.jobs_skipped as i64,
                e.vms_processed as i64,
                e.bytes_transferred as i64,
                e.error_message,
                serde_json::to_string(&e.backup_ids).ok(),
                fmt_time(e.created_at),
                e.schedule_id
            ],
        )?;
        Ok(())
    }

    /// The counters, the status, the end and the backups of a run.
    pub fn update_execution(&self, e: &FlowExecution) -> Result<()> {
        self.writer().execute(
            "UPDATE flow_executions SET status = ?2, completed_at = ?3, jobs_completed = ?4, \
             jobs_failed = ?5, jobs_skipped = ?6, vms_processed = ?7, bytes_transferred = ?8, \
             error_message = ?9, backup_ids = ?10 WHERE id = ?1",
            params![
                e.id,
                e.status,
                e.completed_at.map(fmt_time),
                e.jobs_completed as i64,
                e.jobs_failed as i64,
                e.jobs_skipped as i64,
                e.vms_processed as i64,
                e.bytes_transferred as i64,
                e.error_message,
                serde_json::to_string(&e.backup_ids).ok()
            ],
        )?;
        Ok(())
    }

    pub fn execution(&self, id: &str) -> Result<Option<FlowExecution>> {
        let conn = self.conn.lock();
        Ok(conn
            .query_row(
                &format!("SELECT {EXECUTION_COLUMNS} FROM flow_executions WHERE id = ?1"),
                [id],
                execution_from_row,
            )
            .optional()?)
    }

    /// Newest first, at most `limit`, and the flow's total.
    pub fn executions(&self, flow_id: &str, limit: u32) -> Result<(Vec<FlowExecution>, u64)> {
        let conn = self.conn.lock();
        let total: i64 = conn.query_row(
            "SELECT COUNT(*) FROM flow_executions WHERE flow_id = ?1",
            [flow_id],
            |row| row.get(0),
        )?;
        let mut stmt = conn.prepare(&format!(
            "SELECT {EXECUTION_COLUMNS} FROM flow_executions WHERE flow_id = ?1 \
             ORDER BY created_at DESC, id DESC LIMIT ?2"
        ))?;
        let list = stmt
            .query_map(params![flow_id, i64::from(limit)], execution_from_row)?
            .collect::<rusqlite::Result<_>>()?;
        Ok((list, total as u64))
    }

    /// A page of the runs made for a schedule, newest first, and their total.
    pub fn schedule_executions(
        &self,
        schedule_id: &str,
        limit: u32,
        offset: u64,
    ) -> Result<(Vec<FlowExecution>, u64)> {
        let conn = self.conn.lock();
        let total: i64 = conn.query_row(
            "SELECT COUNT(*) FROM flow_executions WHERE schedule_id = ?1",
            [schedule_id],
            |row| row.get(0),
        )?;
        let mut stmt = conn.prepare(&format!(
            "SELECT {EXECUTION_COLUMNS} FROM flow_executions WHERE schedule_id = ?1 \
             ORDER BY created_at DESC, id DESC LIMIT ?2 OFFSET ?3"
        ))?;
        let list = stmt
            .query_map(
                params![schedule_id, i64::from(limit), offset as i64],
                execution_from_row,
            )?
            .collect::<rusqlite::Result<_>>()?;
        Ok((list, total as u64))
    }

    /// `(total, success, failed)` executions of a flow.
    pub fn execution_counts(&self, flow_id: &str) -> Result<(u64, u64, u64)> {
        let conn = self.conn.lock();
        Ok(conn.query_row(
            &format!("SELECT {RUN_COUNTS} FROM flow_executions WHERE flow_id = ?1"),
            [flow_id],
            |row| run_counts(row, 0),
        )?)
    }

    /// `(total, success, failed)` executions of all flows made at `since` or later.
    pub fn execution_counts_since(&self, since: OffsetDateTime) -> Result<(u64, u64, u64)> {
        let conn = self.conn.lock();
        Ok(conn.query_row(
            &format!("SELECT {RUN_COUNTS} FROM flow_executions WHERE created_at >= ?1"),
            [fmt_time(since)],
            |row| run_counts(row, 0),
        )?)
    }

    /// `(total, success, failed)` executions of every flow that has any, by flow id: what
    /// [`Catalog::execution_counts`] says of each, in one query (a list of flows).
    pub fn all_execution_counts(&self) -> Result<HashMap<String, (u64, u64, u64)>> {
        let conn = self.conn.lock();
        let mut stmt = conn.prepare(&format!(
            "SELECT flow_id, {RUN_COUNTS} FROM flow_executions GROUP BY flow_id"
        ))?;
        let rows = stmt
            .query_map([], |row| Ok((row.get(0)?, run_counts(row, 1)?)))?
            .collect::<rusqlite::Result<_>>()?;
        Ok(rows)
    }

    /// The newest execution of every flow that has any, by flow id: the first of
    /// [`Catalog::executions`] for each, in one query (an index seek per flow).
    pub fn last_executions(&self) -> Result<HashMap<String, FlowExecution>> {
        let conn = self.conn.lock();
        let mut stmt = conn.prepare(&format!(
            "SELECT {EXECUTION_COLUMNS} FROM flow_executions WHERE id IN \
             (SELECT (SELECT x.id FROM flow_executions x WHERE x.flow_id = f.id \
             ORDER BY x.created_at DESC, x.id DESC LIMIT 1) FROM protection_flows f)"
        ))?;
        let rows = stmt
            .query_map([], execution_from_row)?
            .map(|e| e.map(|e| (e.flow_id.clone(), e)))
            .collect::<rusqlite::Result<_>>()?;
        Ok(rows)
    }

    /// The end of the newest successful run of each flow (what an alert rule reads).
    pub fn last_successes(&self) -> Result<Vec<(String, OffsetDateTime)>> {
        let conn = self.conn.lock();
        let mut stmt = conn.prepare(
            "SELECT flow_id, MAX(completed_at) FROM flow_executions \
             WHERE status = 'success' AND completed_at IS NOT NULL GROUP BY flow_id",
        )?;
        let rows = stmt
            .query_map([], |row| {
                Ok((row.get(0)?, parse_time(&row.get::<_, String>(1)?)?))
            })?
            .collect::<rusqlite::Result<_>>()?;
        Ok(rows)
    }

    /// At start: runs whose job the previous process left unfinished end failed with it.
    pub fn fail_executions_of(&self, job_ids: &[String], reason: &str) -> Result<()> {
        let at = fmt_time(OffsetDateTime::now_utc());
        for job in job_ids {
            self.writer().execute(
                "UPDATE flow_executions SET status = 'failed', completed_at = ?2, \
                 error_message = ?3 WHERE job_id = ?1 AND status = 'running'",
                params![job, at, reason],
            )?;
        }
        Ok(())
    }
}
