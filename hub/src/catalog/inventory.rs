//! The catalog's Sendense inventory: vCenter credentials (sealed), VM contexts and their disks.

use rusqlite::{OptionalExtension, Row, params};
use serde::Serialize;
use time::OffsetDateTime;

use super::conn::Catalog;
use super::rows::{fmt_time, parse_time};
use crate::error::{Error, Result};

/// A vCenter credential as stored; the password only sealed.
#[derive(Debug, Clone)]
pub struct Credential {
    pub id: i64,
    pub credential_name: String,
    pub vcenter_host: String,
    pub username: String,
    pub password_sealed: Vec<u8>,
    pub datacenter: String,
    pub is_active: bool,
    pub is_default: bool,
    pub created_at: OffsetDateTime,
    pub updated_at: OffsetDateTime,
}

/// The fields a create or update writes (the password is sealed separately).
#[derive(Debug, Clone)]
pub struct CredentialFields {
    pub credential_name: String,
    pub vcenter_host: String,
    pub username: String,
    pub datacenter: String,
    pub is_active: bool,
    pub is_default: bool,
}

const CREDENTIAL_COLUMNS: &str = "id, credential_name, vcenter_host, username, password_sealed, \
     datacenter, is_active, is_default, created_at, updated_at";

fn credential_from_row(row: &Row<'_>) -> rusqlite::Result<Credential> {
    Ok(Credential {
        id: row.get(0)?,
        credential_name: row.get(1)?,
        vcenter_host: row.get(2)?,
        username: row.get(3)?,
        password_sealed: row.get(4)?,
        datacenter: row.get(5)?,
        is_active: row.get(6)?,
        is_default: row.get(7)?,
        created_at: parse_time(&row.get::<_, String>(8)?)?,
        updated_at: parse_time(&row.get::<_, String>(9)?)?,
    })
}

fn name_taken(err: rusqlite::Error, name: &str) -> Error {
    match err {
        rusqlite::Error::SqliteFailure(e, _)
            if e.code == rusqlite::ErrorCode::ConstraintViolation =>
        {
            Error::Conflict(format!("a credential named {name:?} already exists"))
        }
        other => Error::Catalog(other),
    }
}

/// Write a credential's fields (and its sealed password when given); a new default clears the
/// old one first.
fn write_credential(
    tx: &rusqlite::Transaction<'_>,
    id: i64,
    fields: &CredentialFields,
    sealed: Option<Vec<u8>>,
) -> Result<()> {
    if fields.is_default {
        tx.execute(
            "UPDATE vmware_credentials SET is_default = 0 WHERE id != ?1",
            [id],
        )?;
    }
    tx.execute(
        "UPDATE vmware_credentials SET credential_name = ?2, vcenter_host = ?3, username = ?4, \
         datacenter = ?5, is_active = ?6, is_default = ?7, updated_at = ?8, \
         password_sealed = COALESCE(?9, password_sealed) WHERE id = ?1",
        params![
            id,
            fields.credential_name,
            fields.vcenter_host,
            fields.username,
            fields.datacenter,
            fields.is_active,
            fields.is_default,
            fmt_time(OffsetDateTime::now_utc()),
            sealed
        ],
    )
    .map_err(|e| name_taken(e, &fields.credential_name))?;
    Ok(())
}

impl Catalog {
    pub fn credentials(&self) -> Result<Vec<Credential>> {
        let conn = self.conn.lock();
        let mut stmt = conn.prepare(&format!(
            "SELECT {CREDENTIAL_COLUMNS} FROM vmware_credentials ORDER BY id"
        ))?;
        Ok(stmt
            .query_map([], credential_from_row)?
            .collect::<rusqlite::Result<_>>()?)
    }

    pub fn credential(&self, id: i64) -> Result<Option<Credential>> {
        let conn = self.conn.lock();
        Ok(conn
            .query_row(
                &format!("SELECT {CREDENTIAL_COLUMNS} FROM vmware_credentials WHERE id = ?1"),
                [id],
                credential_from_row,
            )
            .optional()?)
    }

    pub fn default_credential(&self) -> Result<Option<Credential>> {
        let conn = self.conn.lock();
        Ok(conn
            .query_row(
                &format!(
                    "SELECT {CREDENTIAL_COLUMNS} FROM vmware_credentials WHERE is_default = 1"
                ),
                [],
                credential_from_row,
            )
            .optional()?)
    }

    /// Insert a credential; `seal` gets the new row's id (the associated data of its sealing)
    /// and returns the sealed password. One transaction: no row ever holds an unsealed value.
    pub fn insert_credential(
        &self,
        fields: &CredentialFields,
        seal: impl FnOnce(i64) -> Vec<u8>,
    ) -> Result<i64> {
        self.written((|| {
            let mut conn = self.conn.lock();
            let tx = conn.transaction()?;
            tx.execute(
                "INSERT INTO vmware_credentials (credential_name, vcenter_host, username, password_sealed, \
                 created_at, updated_at) VALUES (?1, '', '', x'', ?2, ?2)",
                params![fields.credential_name, fmt_time(OffsetDateTime::now_utc())],
            )
            .map_err(|e| name_taken(e, &fields.credential_name))?;
            let id = tx.last_insert_rowid();
            write_credential(&tx, id, fields, Some(seal(id)))?;
            tx.commit()?;
            Ok(id)
        })())
    }

    /// Update the fields, and the sealed password when one is given.
    pub fn update_credential(
        &self,
        id: i64,
        fields: &CredentialFields,
        sealed: Option<Vec<u8>>,
    ) -> Result<()> {
        self.written((|| {
            let mut conn = self.conn.lock();
            let tx = conn.transaction()?;
            write_credential(&tx, id, fields, sealed)?;
            tx.commit()?;
            Ok(())
        })())
    }

    pub fn delete_credential(&self, id: i64) -> Result<()> {
        self.written((|| {
            let conn = self.conn.lock();
            conn.execute("DELETE FROM vmware_credentials WHERE id = ?1", [id])?;
            Ok(())
        })())
    }

    /// Re-seal every credential's password in one transaction; the first error rolls all back.
    /// Every sealed secret re-sealed in one transaction: each credential's password, then each
    /// S3 repository's secret access key. Returns how many.
    pub fn reseal_credentials(
        &self,
        mut reseal: impl FnMut(&Credential) -> Result<Vec<u8>>,
        mut reseal_repository: impl FnMut(&str, &[u8]) -> Result<Vec<u8>>,
    ) -> Result<usize> {
        self.written((|| {
            let mut conn = self.conn.lock();
            let tx = conn.transaction()?;
            let all: Vec<Credential> = {
                let mut stmt = tx.prepare(&format!(
                    "SELECT {CREDENTIAL_COLUMNS} FROM vmware_credentials ORDER BY id"
                ))?;
                stmt.query_map([], credential_from_row)?
                    .collect::<rusqlite::Result<_>>()?
            };
            for credential in &all {
                let sealed = reseal(credential)?;
                tx.execute(
                    "UPDATE vmware_credentials SET password_sealed = ?2 WHERE id = ?1",
                    params![credential.id, sealed],
                )?;
            }
            let repositories: Vec<(String, Vec<u8>)> = {
                let mut stmt = tx.prepare(
                    "SELECT id, secret_sealed FROM repositories WHERE secret_sealed IS NOT NULL",
                )?;
                stmt.query_map([], |row| Ok((row.get(0)?, row.get(1)?)))?
                    .collect::<rusqlite::Result<_>>()?
            };
            for (id, sealed) in &repositories {
                let resealed = reseal_repository(id, sealed)?;
                tx.execute(
                    "UPDATE repositories SET secret_sealed = ?2 WHERE id = ?1",
                    params![id, resealed],
                )?;
            }
            tx.commit()?;
            Ok(all.len() + repositories.len())
        })())
    }
}

/// A VM found by discovery, with what starting its backup needs.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct VmContext {
    pub context_id: String,
    pub vm_name: String,
    pub vmware_vm_id: String,
    pub vm_path: String,
    pub vcenter_host: String,
    pub datacenter: String,
    pub credential_id: Option<i64>,
    pub power_state: String,
    pub guest_os: String,
    pub memory_mb: i64,
    pub num_cpu: i64,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: OffsetDateTime,
}

/// A disk of a VM context, in the SNA's order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct VmDisk {
    /// The hub's disk number (its images are `disk<N>.qcow2`); stays with the VMware key.
    pub disk_id: u32,
    pub vmware_disk_key: i64,
    pub label: String,
    pub vmdk_path: String,
    pub datastore: String,
    pub capacity_bytes: u64,
    pub provisioning_type: String,
    pub unit_number: i64,
}

pub(super) const CONTEXT_COLUMNS: &str = "context_id, vm_name, vmware_vm_id, vm_path, vcenter_host, datacenter, \
     credential_id, power_state, guest_os, memory_mb, num_cpu, created_at, updated_at";

pub(super) fn context_from_row(row: &Row<'_>) -> rusqlite::Result<VmContext> {
    Ok(VmContext {
        context_id: row.get(0)?,
        vm_name: row.get(1)?,
        vmware_vm_id: row.get(2)?,
        vm_path: row.get(3)?,
        vcenter_host: row.get(4)?,
        datacenter: row.get(5)?,
        credential_id: row.get(6)?,
        power_state: row.get(7)?,
        guest_os: row.get(8)?,
        memory_mb: row.get(9)?,
        num_cpu: row.get(10)?,
        created_at: parse_time(&row.get::<_, String>(11)?)?,
        updated_at: parse_time(&row.get::<_, String>(12)?)?,
    })
}

fn disk_from_row(row: &Row<'_>) -> rusqlite::Result<VmDisk> {
    Ok(VmDisk {
        disk_id: row.get(0)?,
        vmware_disk_key: row.get(1)?,
        label: row.get(2)?,
        vmdk_path: row.get(3)?,
        datastore: row.get(4)?,
        capacity_bytes: row.get::<_, i64>(5)? as u64,
        provisioning_type: row.get(6)?,
        unit_number: row.get(7)?,
    })
}

/// Which VM a context's name stands for.
#[derive(Debug, Clone)]
pub struct ContextOwner {
    pub vm_name: String,
    pub context_id: String,
    pub vmware_vm_id: String,
    pub vcenter_host: String,
}

/// One context of [`Catalog::upsert_vm_contexts`], inside its transaction.
fn upsert_in(
    tx: &rusqlite::Transaction<'_>,
    context: &VmContext,
    disks: &[VmDisk],
    now: &str,
) -> rusqlite::Result<(String, bool)> {
    let existing: Option<String> = tx
        .prepare_cached("SELECT context_id FROM vm_contexts WHERE vm_name = ?1")?
        .query_row([&context.vm_name], |r| r.get(0))
        .optional()?;
    let id = existing
        .clone()
        .unwrap_or_else(|| context.context_id.clone());
    tx.prepare_cached(
        "INSERT INTO vm_contexts (context_id, vm_name, vmware_vm_id, vm_path, vcenter_host, datacenter, \
         credential_id, power_state, guest_os, memory_mb, num_cpu, created_at, updated_at) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?12) \
         ON CONFLICT (context_id) DO UPDATE SET vmware_vm_id = ?3, vm_path = ?4, vcenter_host = ?5, \
         datacenter = ?6, credential_id = ?7, power_state = ?8, guest_os = ?9, memory_mb = ?10, \
         num_cpu = ?11, updated_at = ?12",
    )?
    .execute(params![
            id,
            context.vm_name,
            context.vmware_vm_id,
            context.vm_path,
            context.vcenter_host,
            context.datacenter,
            context.credential_id,
            context.power_state,
            context.guest_os,
            context.memory_mb,
            context.num_cpu,
            now
        ])?;
    write_disks(tx, &id, existing.is_some(), disks)?;
    Ok((id, existing.is_some()))
}

/// A context's disks replaced by `disks`, each known VMware key keeping its `disk_id`.
fn write_disks(
    tx: &rusqlite::Transaction<'_>,
    id: &str,
    existed: bool,
    disks: &[VmDisk],
) -> rusqlite::Result<()> {
    let known = query_disks(tx, id)?;
    let mut next = known.iter().map(|d| d.disk_id + 1).max().unwrap_or(0);
    tx.prepare_cached("DELETE FROM vm_disks WHERE context_id = ?1")?
        .execute([id])?;
    for (position, disk) in disks.iter().enumerate() {
        let disk_id = match known
            .iter()
            .find(|k| k.vmware_disk_key == disk.vmware_disk_key)
        {
            Some(k) => k.disk_id,
            None if !existed => position as u32,
            None => {
                next += 1;
                next - 1
            }
        };
        tx.prepare_cached(
            "INSERT INTO vm_disks (context_id, disk_id, position, vmware_disk_key, label, vmdk_path, \
             datastore, capacity_bytes, provisioning_type, unit_number) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
        )?
        .execute(params![
            id,
            disk_id,
            position as i64,
            disk.vmware_disk_key,
            disk.label,
            disk.vmdk_path,
            disk.datastore,
            disk.capacity_bytes as i64,
            disk.provisioning_type,
            disk.unit_number
        ])?;
    }
    Ok(())
}

fn query_disks(conn: &rusqlite::Connection, context_id: &str) -> rusqlite::Result<Vec<VmDisk>> {
    let mut stmt = conn.prepare_cached(
        "SELECT disk_id, vmware_disk_key, label, vmdk_path, datastore, capacity_bytes, \
         provisioning_type, unit_number FROM vm_disks WHERE context_id = ?1 ORDER BY position",
    )?;
    stmt.query_map([context_id], disk_from_row)?.collect()
}

impl Catalog {
    pub fn vm_contexts(&self) -> Result<Vec<VmContext>> {
        let conn = self.conn.lock();
        let mut stmt = conn.prepare(&format!(
            "SELECT {CONTEXT_COLUMNS} FROM vm_contexts ORDER BY vm_name"
        ))?;
        Ok(stmt
            .query_map([], context_from_row)?
            .collect::<rusqlite::Result<_>>()?)
    }

    /// By VM name or by context id.
    pub fn vm_context(&self, name_or_id: &str) -> Result<Option<(VmContext, Vec<VmDisk>)>> {
        let conn = self.conn.lock();
        let context = conn
            .query_row(
                &format!(
                    "SELECT {CONTEXT_COLUMNS} FROM vm_contexts WHERE vm_name = ?1 \
                     UNION ALL SELECT {CONTEXT_COLUMNS} FROM vm_contexts WHERE context_id = ?1 LIMIT 1"
                ),
                [name_or_id],
                context_from_row,
            )
            .optional()?;
        let Some(context) = context else {
            return Ok(None);
        };
        let disks = query_disks(&conn, &context.context_id)?;
        Ok(Some((context, disks)))
    }

    /// Insert a context, or update the one with this VM name (keeping its id and creation time).
    /// Disks are matched by VMware key: a known key keeps its `disk_id`, a new one gets the next
    /// free number, a key no longer listed goes. Returns the context id and whether it existed.
    pub fn upsert_vm_context(
        &self,
        context: &VmContext,
        disks: &[VmDisk],
    ) -> Result<(String, bool)> {
        let mut done = self.upsert_vm_contexts(&[(context.clone(), disks.to_vec())])?;
        done.pop()
            .ok_or_else(|| Error::Internal("no context written".into()))
    }

    /// [`Catalog::upsert_vm_context`] for each, in one transaction (one sync for all of them).
    pub fn upsert_vm_contexts(
        &self,
        contexts: &[(VmContext, Vec<VmDisk>)],
    ) -> Result<Vec<(String, bool)>> {
        self.written((|| {
            let mut conn = self.conn.lock();
            let tx = conn.transaction()?;
            let now = fmt_time(OffsetDateTime::now_utc());
            let done = contexts
                .iter()
                .map(|(context, disks)| upsert_in(&tx, context, disks, &now))
                .collect::<rusqlite::Result<_>>()?;
            tx.commit()?;
            Ok(done)
        })())
    }

    /// Each context's VM name with its id, VMware VM id and vCenter: whose VM a name is.
    pub fn vm_context_owners(&self) -> Result<Vec<ContextOwner>> {
        let conn = self.conn.lock();
        let mut stmt = conn
            .prepare("SELECT vm_name, context_id, vmware_vm_id, vcenter_host FROM vm_contexts")?;
        Ok(stmt
            .query_map([], |r| {
                Ok(ContextOwner {
                    vm_name: r.get(0)?,
                    context_id: r.get(1)?,
                    vmware_vm_id: r.get(2)?,
                    vcenter_host: r.get(3)?,
                })
            })?
            .collect::<rusqlite::Result<_>>()?)
    }

    /// Returns whether a context was removed (its disks go with it; backups keep theirs).
    pub fn delete_vm_context(&self, vm_name: &str) -> Result<bool> {
        self.written((|| {
            let conn = self.conn.lock();
            Ok(conn.execute("DELETE FROM vm_contexts WHERE vm_name = ?1", [vm_name])? > 0)
        })())
    }

    /// VM names whose context uses this credential.
    pub fn contexts_using_credential(&self, id: i64) -> Result<Vec<String>> {
        let conn = self.conn.lock();
        let mut stmt = conn
            .prepare("SELECT vm_name FROM vm_contexts WHERE credential_id = ?1 ORDER BY vm_name")?;
        Ok(stmt
            .query_map([id], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?)
    }
}
