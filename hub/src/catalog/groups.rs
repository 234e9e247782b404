//! Machine groups and their members: which VMs a group flow backs up. A VM context is in at
//! most one group (`group_members` is keyed by the context).

use std::collections::HashMap;

use rusqlite::{OptionalExtension, Row, params};

use super::conn::Catalog;
use super::inventory::{CONTEXT_COLUMNS, VmContext, context_from_row};
use super::protection_model::*;
use super::rows::*;
use crate::error::{Error, Result};

/// The group's columns (as `g`), its schedule's name, its member counts.
const SUMMARY_SELECT: &str = "SELECT g.id, g.name, g.description, g.schedule_id, g.max_concurrent_vms, \
     g.priority, g.created_by, g.created_at, g.updated_at, s.name, \
     (SELECT COUNT(*) FROM group_members m WHERE m.group_id = g.id), \
     (SELECT COUNT(*) FROM group_members m WHERE m.group_id = g.id AND m.enabled) \
     FROM machine_groups g LEFT JOIN schedules s ON s.id = g.schedule_id";

fn summary_from_row(row: &Row<'_>) -> rusqlite::Result<GroupSummary> {
    Ok(GroupSummary {
        group: MachineGroup {
            id: row.get(0)?,
            name: row.get(1)?,
            description: row.get(2)?,
            schedule_id: row.get(3)?,
            max_concurrent_vms: row.get(4)?,
            priority: row.get(5)?,
            created_by: row.get(6)?,
            created_at: parse_time(&row.get::<_, String>(7)?)?,
            updated_at: parse_time(&row.get::<_, String>(8)?)?,
        },
        schedule_name: row.get(9)?,
        total_vms: row.get(10)?,
        enabled_vms: row.get(11)?,
    })
}

const MEMBERSHIP_COLUMNS: &str = "context_id, group_id, priority, enabled, added_by, added_at";

fn membership_from_row(row: &Row<'_>) -> rusqlite::Result<Membership> {
    Ok(Membership {
        context_id: row.get(0)?,
        group_id: row.get(1)?,
        priority: row.get(2)?,
        enabled: row.get(3)?,
        added_by: row.get(4)?,
        added_at: parse_time(&row.get::<_, String>(5)?)?,
    })
}

fn group_name_taken(name: &str) -> impl FnOnce() -> String + '_ {
    move || format!("a machine group named {name:?} already exists")
}

fn membership(
    conn: &rusqlite::Connection,
    context_id: &str,
) -> rusqlite::Result<Option<Membership>> {
    conn.query_row(
        &format!("SELECT {MEMBERSHIP_COLUMNS} FROM group_members WHERE context_id = ?1"),
        [context_id],
        membership_from_row,
    )
    .optional()
}

impl Catalog {
    pub fn insert_group(&self, g: &MachineGroup) -> Result<()> {
        self.writer()
            .execute(
                "INSERT INTO machine_groups (id, name, description, schedule_id, max_concurrent_vms, \
                 priority, created_by, created_at, updated_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                params![
                    g.id,
                    g.name,
                    g.description,
                    g.schedule_id,
                    g.max_concurrent_vms,
                    g.priority,
                    g.created_by,
                    fmt_time(g.created_at),
                    fmt_time(g.updated_at),
                ],
            )
            .map_err(|e| unique_taken(e, group_name_taken(&g.name)))?;
        Ok(())
    }

    /// Every field but the id, creator and creation time; false when there is no such group.
    pub fn update_group(&self, g: &MachineGroup) -> Result<bool> {
        let changed = self
            .writer()
            .execute(
                "UPDATE machine_groups SET name = ?2, description = ?3, schedule_id = ?4, \
                 max_concurrent_vms = ?5, priority = ?6, updated_at = ?7 WHERE id = ?1",
                params![
                    g.id,
                    g.name,
                    g.description,
                    g.schedule_id,
                    g.max_concurrent_vms,
                    g.priority,
                    fmt_time(g.updated_at),
                ],
            )
            .map_err(|e| unique_taken(e, group_name_taken(&g.name)))?;
        Ok(changed > 0)
    }

    pub fn group(&self, id: &str) -> Result<Option<GroupSummary>> {
        let conn = self.conn.lock();
        Ok(conn
            .query_row(
                &format!("{SUMMARY_SELECT} WHERE g.id = ?1"),
                [id],
                summary_from_row,
            )
            .optional()?)
    }

    /// By name; only those on `schedule_id` when given.
    pub fn groups(&self, schedule_id: Option<&str>) -> Result<Vec<GroupSummary>> {
        let conn = self.conn.lock();
        let mut stmt = conn.prepare(&format!(
            "{SUMMARY_SELECT} WHERE ?1 IS NULL OR g.schedule_id = ?1 ORDER BY g.name"
        ))?;
        Ok(stmt
            .query_map([schedule_id], summary_from_row)?
            .collect::<rusqlite::Result<_>>()?)
    }

    /// Refused while it has members (400, as the old hub did) or a protection flow targets it
    /// (409); false when there is no such group.
    pub fn delete_group(&self, id: &str) -> Result<bool> {
        let mut conn = self.writer();
        let tx = conn.transaction()?;
        let members: u32 = tx.read().query_row(
            "SELECT COUNT(*) FROM group_members WHERE group_id = ?1",
            [id],
            |r| r.get(0),
        )?;
        if members > 0 {
            return Err(Error::Invalid(format!(
                "cannot delete machine group {id} with {members} VMs: remove them first"
            )));
        }
        let flows: Vec<String> = {
            let mut stmt = tx.read().prepare(
                "SELECT name FROM protection_flows WHERE target_type = 'group' AND target_id = ?1 \
                 ORDER BY name",
            )?;
            stmt.query_map([id], |r| r.get(0))?
                .collect::<rusqlite::Result<_>>()?
        };
        if !flows.is_empty() {
            return Err(Error::Conflict(format!(
                "machine group {id} is the target of protection flows {}",
                flows.join(", ")
            )));
        }
        let deleted = tx.execute("DELETE FROM machine_groups WHERE id = ?1", [id])?;
        tx.commit()?;
        Ok(deleted > 0)
    }

    /// The group's members with their VM contexts, by priority then when they were added.
    pub fn group_members(&self, group_id: &str) -> Result<Vec<Member>> {
        let conn = self.conn.lock();
        let mut stmt = conn.prepare(&format!(
            "SELECT {CONTEXT_COLUMNS} FROM vm_contexts WHERE context_id IN \
             (SELECT context_id FROM group_members WHERE group_id = ?1)"
        ))?;
        let mut contexts: HashMap<String, VmContext> = stmt
            .query_map([group_id], context_from_row)?
            .map(|c| c.map(|c| (c.context_id.clone(), c)))
            .collect::<rusqlite::Result<_>>()?;
        let mut stmt = conn.prepare(&format!(
            "SELECT {MEMBERSHIP_COLUMNS} FROM group_members WHERE group_id = ?1 \
             ORDER BY priority, added_at, context_id"
        ))?;
        let memberships: Vec<Membership> = stmt
            .query_map([group_id], membership_from_row)?
            .collect::<rusqlite::Result<_>>()?;
        Ok(memberships
            .into_iter()
            .filter_map(|membership| {
                let context = contexts.remove(&membership.context_id)?;
                Some(Member {
                    membership,
                    context,
                })
            })
            .collect())
    }

    /// Every grouped context's membership with its group's name, by context id.
    pub fn memberships(&self) -> Result<HashMap<String, (Membership, String)>> {
        let conn = self.conn.lock();
        let columns = MEMBERSHIP_COLUMNS
            .split(", ")
            .map(|c| format!("m.{c}"))
            .collect::<Vec<_>>()
            .join(", ");
        let mut stmt = conn.prepare(&format!(
            "SELECT {columns}, g.name FROM group_members m JOIN machine_groups g ON g.id = m.group_id"
        ))?;
        let rows = stmt.query_map([], |row| Ok((membership_from_row(row)?, row.get(6)?)))?;
        Ok(rows
            .map(|r| r.map(|(m, name): (Membership, String)| (m.context_id.clone(), (m, name))))
            .collect::<rusqlite::Result<_>>()?)
    }

    pub fn membership(&self, context_id: &str) -> Result<Option<Membership>> {
        Ok(membership(&self.conn.lock(), context_id)?)
    }

    /// Add members to their group, all or none: a VM already in another group refuses the whole
    /// request (409); one already in this group is left as it is. Returns the contexts added.
    pub fn add_members(&self, members: &[Membership]) -> Result<Vec<String>> {
        let mut conn = self.writer();
        let tx = conn.transaction()?;
        let mut added = Vec::new();
        for m in members {
            match membership(tx.read(), &m.context_id)? {
                Some(current) if current.group_id == m.group_id => continue,
                Some(current) => {
                    return Err(Error::Conflict(format!(
                        "VM context {} is already in machine group {}",
                        m.context_id, current.group_id
                    )));
                }
                None => {}
            }
            insert_membership(&tx, m)?;
            added.push(m.context_id.clone());
        }
        tx.commit()?;
        Ok(added)
    }

    /// Put a VM context in `membership`'s group, out of any other (a move), or out of every
    /// group with `None`. Returns the membership it had.
    pub fn set_membership(
        &self,
        context_id: &str,
        new: Option<&Membership>,
    ) -> Result<Option<Membership>> {
        let mut conn = self.writer();
        let tx = conn.transaction()?;
        let old = membership(tx.read(), context_id)?;
        tx.execute(
            "DELETE FROM group_members WHERE context_id = ?1",
            [context_id],
        )?;
        if let Some(m) = new {
            insert_membership(&tx, m)?;
        }
        tx.commit()?;
        Ok(old)
    }

    /// False when the VM context is not a member of this group.
    pub fn remove_member(&self, group_id: &str, context_id: &str) -> Result<bool> {
        let deleted = self.writer().execute(
            "DELETE FROM group_members WHERE group_id = ?1 AND context_id = ?2",
            [group_id, context_id],
        )?;
        Ok(deleted > 0)
    }
}

fn insert_membership(tx: &super::conn::WriterTx<'_>, m: &Membership) -> Result<()> {
    tx.execute(
        &format!(
            "INSERT INTO group_members ({MEMBERSHIP_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6)"
        ),
        params![
            m.context_id,
            m.group_id,
            m.priority,
            m.enabled,
            m.added_by,
            fmt_time(m.added_at)
        ],
    )?;
    Ok(())
}
