//! Jobs and their log lines (`hub::jobs` runs them; this is what survives a restart).

use rusqlite::{OptionalExtension, Row, params};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::conn::Catalog;
use super::rows::{bad_value, fmt_time, parse_json, parse_opt_time, parse_time};
use crate::error::Result;

/// Log lines kept per job: the newest, so a long job's log stays bounded.
pub const MAX_LOG_LINES: u64 = 500;

/// queued -> running -> succeeded | warning | failed | cancelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum JobStatus {
    Queued,
    Running,
    Succeeded,
    /// Done, with something the operator should read (a partial result).
    Warning,
    Failed,
    Cancelled,
}

impl JobStatus {
    pub const ALL: [JobStatus; 6] = [
        JobStatus::Queued,
        JobStatus::Running,
        JobStatus::Succeeded,
        JobStatus::Warning,
        JobStatus::Failed,
        JobStatus::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Queued => "queued",
            JobStatus::Running => "running",
            JobStatus::Succeeded => "succeeded",
            JobStatus::Warning => "warning",
            JobStatus::Failed => "failed",
            JobStatus::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<JobStatus> {
        JobStatus::ALL.into_iter().find(|j| j.as_str() == s)
    }

    pub fn is_ended(self) -> bool {
        !matches!(self, JobStatus::Queued | JobStatus::Running)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Job {
    pub id: String,
    pub kind: String,
    pub target: String,
    pub status: JobStatus,
    pub bytes_done: u64,
    pub bytes_total: u64,
    pub created_at: OffsetDateTime,
    pub started_at: Option<OffsetDateTime>,
    pub ended_at: Option<OffsetDateTime>,
    pub error: Option<String>,
    pub result: Option<serde_json::Value>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct JobLogLine {
    pub seq: u64,
    pub at: OffsetDateTime,
    /// `info`, `warn` or `error`.
    pub level: String,
    pub message: String,
}

#[derive(Debug, Default, Clone)]
pub struct JobFilter {
    pub kind: Option<String>,
    pub status: Option<JobStatus>,
    pub limit: Option<u32>,
}

/// How a job ended, as recorded.
pub struct JobEnd<'a> {
    pub status: JobStatus,
    pub error: Option<&'a str>,
    pub result: Option<&'a serde_json::Value>,
    pub bytes_done: u64,
    pub bytes_total: u64,
}

const JOB_COLUMNS: &str = "id, kind, target, status, bytes_done, bytes_total, created_at, \
    started_at, ended_at, error, result";

fn job_from_row(row: &Row<'_>) -> rusqlite::Result<Job> {
    let status: String = row.get(3)?;
    Ok(Job {
        id: row.get(0)?,
        kind: row.get(1)?,
        target: row.get(2)?,
        status: JobStatus::parse(&status).ok_or_else(|| bad_value("job status", &status))?,
        bytes_done: row.get::<_, i64>(4)? as u64,
        bytes_total: row.get::<_, i64>(5)? as u64,
        created_at: parse_time(&row.get::<_, String>(6)?)?,
        started_at: parse_opt_time(row.get(7)?)?,
        ended_at: parse_opt_time(row.get(8)?)?,
        error: row.get(9)?,
        result: parse_json(row.get(10)?),
    })
}

impl Catalog {
    /// The id of a job of `kind` on `target` that is queued or running, if one is.
    pub fn live_job(&self, kind: &str, target: &str) -> Result<Option<String>> {
        let conn = self.conn.lock();
        Ok(conn
            .query_row(
                "SELECT id FROM jobs WHERE kind = ?1 AND target = ?2 \
                 AND status IN ('queued', 'running') LIMIT 1",
                [kind, target],
                |r| r.get(0),
            )
            .optional()?)
    }

    pub fn insert_job(&self, job: &Job) -> Result<()> {
        self.writer().execute(
            &format!("INSERT INTO jobs ({JOB_COLUMNS}) VALUES (?1, ?2, ?3, ?4, 0, 0, ?5, NULL, NULL, NULL, NULL)"),
            params![job.id, job.kind, job.target, job.status.as_str(), fmt_time(job.created_at)],
        )?;
        Ok(())
    }

    pub fn job(&self, id: &str) -> Result<Option<Job>> {
        let conn = self.conn.lock();
        Ok(conn
            .query_row(
                &format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?1"),
                [id],
                job_from_row,
            )
            .optional()?)
    }

    /// Newest first, at most `limit`, and how many match without the limit.
    pub fn jobs(&self, filter: &JobFilter) -> Result<(Vec<Job>, u64)> {
        let conn = self.conn.lock();
        let kind = filter.kind.as_deref();
        let status = filter.status.map(JobStatus::as_str);
        let matching = "(?1 IS NULL OR kind = ?1) AND (?2 IS NULL OR status = ?2)";
        let total: i64 = conn.query_row(
            &format!("SELECT COUNT(*) FROM jobs WHERE {matching}"),
            params![kind, status],
            |row| row.get(0),
        )?;
        let limit = i64::from(filter.limit.unwrap_or(u32::MAX));
        let mut stmt = conn.prepare(&format!(
            "SELECT {JOB_COLUMNS} FROM jobs WHERE {matching} \
             ORDER BY created_at DESC, id DESC LIMIT ?3"
        ))?;
        let jobs = stmt
            .query_map(params![kind, status, limit], job_from_row)?
            .collect::<rusqlite::Result<_>>()?;
        Ok((jobs, total as u64))
    }

    pub fn job_started(&self, id: &str, at: OffsetDateTime) -> Result<()> {
        self.writer().execute(
            "UPDATE jobs SET status = 'running', started_at = ?2 WHERE id = ?1 AND status = 'queued'",
            params![id, fmt_time(at)],
        )?;
        Ok(())
    }

    pub fn job_progress(&self, id: &str, done: u64, total: u64) -> Result<()> {
        self.writer().execute(
            "UPDATE jobs SET bytes_done = ?2, bytes_total = ?3 WHERE id = ?1",
            params![id, done as i64, total as i64],
        )?;
        Ok(())
    }

    pub fn job_ended(&self, id: &str, at: OffsetDateTime, end: &JobEnd<'_>) -> Result<()> {
        let result = end.result.map(|r| r.to_string());
        self.writer().execute(
            "UPDATE jobs SET status = ?2, ended_at = ?3, error = ?4, result = ?5, \
             bytes_done = ?6, bytes_total = ?7 WHERE id = ?1",
            params![
                id,
                end.status.as_str(),
                fmt_time(at),
                end.error,
                result,
                end.bytes_done as i64,
                end.bytes_total as i64
            ],
        )?;
        Ok(())
    }

    /// Line `seq` of the job's log; lines older than the newest [`MAX_LOG_LINES`] go.
    pub fn append_job_log(&self, id: &str, seq: u64, level: &str, message: &str) -> Result<()> {
        let mut conn = self.writer();
        let tx = conn.transaction()?;
        tx.execute(
            "INSERT INTO job_log (job_id, seq, at, level, message) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![
                id,
                seq as i64,
                fmt_time(OffsetDateTime::now_utc()),
                level,
                message
            ],
        )?;
        if seq >= MAX_LOG_LINES {
            tx.execute(
                "DELETE FROM job_log WHERE job_id = ?1 AND seq <= ?2",
                params![id, (seq - MAX_LOG_LINES) as i64],
            )?;
        }
        tx.commit()
    }

    pub fn job_log(&self, id: &str) -> Result<Vec<JobLogLine>> {
        let conn = self.conn.lock();
        let mut stmt = conn.prepare(
            "SELECT seq, at, level, message FROM job_log WHERE job_id = ?1 ORDER BY seq",
        )?;
        let lines = stmt
            .query_map([id], |row| {
                Ok(JobLogLine {
                    seq: row.get::<_, i64>(0)? as u64,
                    at: parse_time(&row.get::<_, String>(1)?)?,
                    level: row.get(2)?,
                    message: row.get(3)?,
                })
            })?
            .collect::<rusqlite::Result<_>>()?;
        Ok(lines)
    }

    /// Every job still queued or running: at start, those of the process before.
    pub fn unfinished_jobs(&self) -> Result<Vec<Job>> {
        let conn = self.conn.lock();
        let mut stmt = conn.prepare(&format!(
            "SELECT {JOB_COLUMNS} FROM jobs WHERE status IN ('queued', 'running') ORDER BY created_at"
        ))?;
        let jobs = stmt
            .query_map([], job_from_row)?
            .collect::<rusqlite::Result<_>>()?;
        Ok(jobs)
    }

    pub fn count_jobs(&self) -> Result<Vec<(String, String, u64)>> {
        let conn = self.conn.lock();
        let mut stmt =
            conn.prepare("SELECT kind, status, COUNT(*) FROM jobs GROUP BY kind, status")?;
        let counts = stmt
            .query_map([], |row| {
                Ok((row.get(0)?, row.get(1)?, row.get::<_, i64>(2)? as u64))
            })?
            .collect::<rusqlite::Result<_>>()?;
        Ok(counts)
    }
}
