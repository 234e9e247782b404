//! Backup policies: the primary repository, retention rules, and copy rules to other
//! repositories. A policy and its copy rules change together, in one transaction.

use rusqlite::{OptionalExtension, Row, params};

use super::conn::{Catalog, WriterTx};
use super::protection_model::*;
use super::rows::*;
use crate::error::{Error, Result};

const POLICY_COLUMNS: &str = "id, name, enabled, primary_repository_id, retention_days, keep_last, \
     keep_hourly, keep_daily, keep_weekly, keep_monthly, keep_yearly, created_at, updated_at";

fn policy_from_row(row: &Row<'_>) -> rusqlite::Result<Policy> {
    Ok(Policy {
        id: row.get(0)?,
        name: row.get(1)?,
        enabled: row.get(2)?,
        primary_repository_id: row.get(3)?,
        retention_days: row.get(4)?,
        retention: Retention {
            keep_last: row.get(5)?,
            keep_hourly: row.get(6)?,
            keep_daily: row.get(7)?,
            keep_weekly: row.get(8)?,
            keep_monthly: row.get(9)?,
            keep_yearly: row.get(10)?,
        },
        copy_rules: Vec::new(),
        created_at: parse_time(&row.get::<_, String>(11)?)?,
        updated_at: parse_time(&row.get::<_, String>(12)?)?,
    })
}

const RULE_COLUMNS: &str = "id, policy_id, destination_repository_id, copy_mode, priority, enabled, \
     verify_after_copy, created_at";

fn rule_from_row(row: &Row<'_>) -> rusqlite::Result<CopyRule> {
    let mode: String = row.get(3)?;
    Ok(CopyRule {
        id: row.get(0)?,
        policy_id: row.get(1)?,
        destination_repository_id: row.get(2)?,
        copy_mode: CopyMode::parse(&mode).ok_or_else(|| bad_value("copy mode", &mode))?,
        priority: row.get(4)?,
        enabled: row.get(5)?,
        verify_after_copy: row.get(6)?,
        created_at: parse_time(&row.get::<_, String>(7)?)?,
    })
}

fn load_rules(conn: &rusqlite::Connection, policy: &mut Policy) -> rusqlite::Result<()> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {RULE_COLUMNS} FROM copy_rules WHERE policy_id = ?1 ORDER BY priority, rowid"
    ))?;
    policy.copy_rules = stmt
        .query_map([&policy.id], rule_from_row)?
        .collect::<rusqlite::Result<_>>()?;
    Ok(())
}

fn policy_name_taken(name: &str) -> impl FnOnce() -> String + '_ {
    move || format!("a policy named {name:?} already exists")
}

/// The policy's row (`insert`, or an update, which leaves `created_at`, ?12, alone) and its
/// copy rules, replacing the old ones.
fn write_policy(tx: &WriterTx<'_>, p: &Policy, insert: bool) -> Result<usize> {
    let sql = if insert {
        format!(
            "INSERT INTO policies ({POLICY_COLUMNS}) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)"
        )
    } else {
        "UPDATE policies SET name = ?2, enabled = ?3, primary_repository_id = ?4, retention_days = ?5, \
         keep_last = ?6, keep_hourly = ?7, keep_daily = ?8, keep_weekly = ?9, keep_monthly = ?10, \
         keep_yearly = ?11, updated_at = ?13 WHERE id = ?1"
            .to_owned()
    };
    let r = &p.retention;
    let written = tx
        .execute(
            &sql,
            params![
                p.id,
                p.name,
                p.enabled,
                p.primary_repository_id,
                p.retention_days,
                r.keep_last,
                r.keep_hourly,
                r.keep_daily,
                r.keep_weekly,
                r.keep_monthly,
                r.keep_yearly,
                fmt_time(p.created_at),
                fmt_time(p.updated_at),
            ],
        )
        .map_err(|e| unique_taken(e, policy_name_taken(&p.name)))?;
    if written == 0 {
        return Ok(0);
    }
    tx.execute("DELETE FROM copy_rules WHERE policy_id = ?1", [&p.id])?;
    for rule in &p.copy_rules {
        tx.execute(
            &format!(
                "INSERT INTO copy_rules ({RULE_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)"
            ),
            params![
                rule.id,
                p.id,
                rule.destination_repository_id,
                rule.copy_mode.as_str(),
                rule.priority,
                rule.enabled,
                rule.verify_after_copy,
                fmt_time(rule.created_at),
            ],
        )?;
    }
    Ok(written)
}

impl Catalog {
    pub fn insert_policy(&self, p: &Policy) -> Result<()> {
        let mut conn = self.writer();
        let tx = conn.transaction()?;
        write_policy(&tx, p, true)?;
        tx.commit()
    }

    /// The fields and the copy rules (replaced); false when there is no such policy.
    pub fn update_policy(&self, p: &Policy) -> Result<bool> {
        let mut conn = self.writer();
        let tx = conn.transaction()?;
        let updated = write_policy(&tx, p, false)? > 0;
        tx.commit()?;
        Ok(updated)
    }

    pub fn policy(&self, id: &str) -> Result<Option<Policy>> {
        let conn = self.conn.lock();
        let policy = conn
            .query_row(
                &format!("SELECT {POLICY_COLUMNS} FROM policies WHERE id = ?1"),
                [id],
                policy_from_row,
            )
            .optional()?;
        let Some(mut policy) = policy else {
            return Ok(None);
        };
        load_rules(&conn, &mut policy)?;
        Ok(Some(policy))
    }

    /// By name.
    pub fn policies(&self) -> Result<Vec<Policy>> {
        let conn = self.conn.lock();
        let mut stmt = conn.prepare(&format!(
            "SELECT {POLICY_COLUMNS} FROM policies ORDER BY name"
        ))?;
        let mut policies: Vec<Policy> = stmt
            .query_map([], policy_from_row)?
            .collect::<rusqlite::Result<_>>()?;
        for policy in &mut policies {
            load_rules(&conn, policy)?;
        }
        Ok(policies)
    }

    /// Refused (409, naming them) while a protection flow uses it; false when there is no such
    /// policy. Its copy rules go with it.
    pub fn delete_policy(&self, id: &str) -> Result<bool> {
        let mut conn = self.writer();
        let tx = conn.transaction()?;
        let flows: Vec<String> = {
            let mut stmt = tx
                .read()
                .prepare("SELECT name FROM protection_flows WHERE policy_id = ?1 ORDER BY name")?;
            stmt.query_map([id], |r| r.get(0))?
                .collect::<rusqlite::Result<_>>()?
        };
        if !flows.is_empty() {
            return Err(Error::Conflict(format!(
                "policy {id} is used by protection flows {}",
                flows.join(", ")
            )));
        }
        tx.execute("DELETE FROM copy_rules WHERE policy_id = ?1", [id])?;
        let deleted = tx.execute("DELETE FROM policies WHERE id = ?1", [id])?;
        tx.commit()?;
        Ok(deleted > 0)
    }
}
