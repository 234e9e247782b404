//! Schedules: when protection flows run.

use rusqlite::{OptionalExtension, Row, params};

use super::conn::Catalog;
use super::protection_model::*;
use super::rows::*;
use crate::error::{Error, Result};

const SCHEDULE_COLUMNS: &str = "id, name, description, cron_expression, timezone, skip_if_running, \
     max_concurrent_jobs, replication_type, retry_attempts, retry_delay_minutes, enabled, \
     created_by, created_at, updated_at";

fn schedule_from_row(row: &Row<'_>) -> rusqlite::Result<Schedule> {
    let replication_type: String = row.get(7)?;
    Ok(Schedule {
        id: row.get(0)?,
        name: row.get(1)?,
        description: row.get(2)?,
        cron_expression: row.get(3)?,
        timezone: row.get(4)?,
        skip_if_running: row.get(5)?,
        max_concurrent_jobs: row.get(6)?,
        replication_type: ReplicationType::parse(&replication_type)
            .ok_or_else(|| bad_value("replication type", &replication_type))?,
        retry_attempts: row.get(8)?,
        retry_delay_minutes: row.get(9)?,
        enabled: row.get(10)?,
        created_by: row.get(11)?,
        created_at: parse_time(&row.get::<_, String>(12)?)?,
        updated_at: parse_time(&row.get::<_, String>(13)?)?,
    })
}

fn schedule_name_taken(name: &str) -> impl FnOnce() -> String + '_ {
    move || format!("a schedule named {name:?} already exists")
}

/// The names of what would lose its schedule: groups and protection flows using it.
fn schedule_users(conn: &rusqlite::Connection, id: &str) -> rusqlite::Result<Vec<String>> {
    let mut stmt = conn.prepare(
        "SELECT 'machine group ' || name FROM machine_groups WHERE schedule_id = ?1 \
         UNION ALL SELECT 'protection flow ' || name FROM protection_flows WHERE schedule_id = ?1 \
         ORDER BY 1",
    )?;
    stmt.query_map([id], |r| r.get(0))?.collect()
}

impl Catalog {
    pub fn insert_schedule(&self, s: &Schedule) -> Result<()> {
        self.writer()
            .execute(
                &format!(
                    "INSERT INTO schedules ({SCHEDULE_COLUMNS}) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)"
                ),
                params![
                    s.id,
                    s.name,
                    s.description,
                    s.cron_expression,
                    s.timezone,
                    s.skip_if_running,
                    s.max_concurrent_jobs,
                    s.replication_type.as_str(),
                    s.retry_attempts,
                    s.retry_delay_minutes,
                    s.enabled,
                    s.created_by,
                    fmt_time(s.created_at),
                    fmt_time(s.updated_at),
                ],
            )
            .map_err(|e| unique_taken(e, schedule_name_taken(&s.name)))?;
        Ok(())
    }

    /// Every field but the id and creation time; false when there is no such schedule.
    pub fn update_schedule(&self, s: &Schedule) -> Result<bool> {
        let changed = self
            .writer()
            .execute(
                "UPDATE schedules SET name = ?2, description = ?3, cron_expression = ?4, timezone = ?5, \
                 skip_if_running = ?6, max_concurrent_jobs = ?7, replication_type = ?8, \
                 retry_attempts = ?9, retry_delay_minutes = ?10, enabled = ?11, created_by = ?12, \
                 updated_at = ?13 WHERE id = ?1",
                params![
                    s.id,
                    s.name,
                    s.description,
                    s.cron_expression,
                    s.timezone,
                    s.skip_if_running,
                    s.max_concurrent_jobs,
                    s.replication_type.as_str(),
                    s.retry_attempts,
                    s.retry_delay_minutes,
                    s.enabled,
                    s.created_by,
                    fmt_time(s.updated_at),
                ],
            )
            .map_err(|e| unique_taken(e, schedule_name_taken(&s.name)))?;
        Ok(changed > 0)
    }

    pub fn schedule(&self, id: &str) -> Result<Option<Schedule>> {
        let conn = self.conn.lock();
        Ok(conn
            .query_row(
                &format!("SELECT {SCHEDULE_COLUMNS} FROM schedules WHERE id = ?1"),
                [id],
                schedule_from_row,
            )
            .optional()?)
    }

    /// By name.
    pub fn schedules(&self) -> Result<Vec<Schedule>> {
        let conn = self.conn.lock();
        let mut stmt = conn.prepare(&format!(
            "SELECT {SCHEDULE_COLUMNS} FROM schedules ORDER BY name"
        ))?;
        Ok(stmt
            .query_map([], schedule_from_row)?
            .collect::<rusqlite::Result<_>>()?)
    }

    /// Refused (409, naming them) while a machine group or a protection flow uses it; false
    /// when there is no such schedule.
    pub fn delete_schedule(&self, id: &str) -> Result<bool> {
        let mut conn = self.writer();
        let tx = conn.transaction()?;
        let users = schedule_users(tx.read(), id)?;
        if !users.is_empty() {
            return Err(Error::Conflict(format!(
                "schedule {id} is in use by {}",
                users.join(", ")
            )));
        }
        let deleted = tx.execute("DELETE FROM schedules WHERE id = ?1", [id])?;
        tx.commit()?;
        Ok(deleted > 0)
    }
}
