//! The catalog's Sendense inventory: vCenter credentials (sealed), VM contexts and their disks.

use rusqlite::{OptionalExtension, Row, params};
use time::OffsetDateTime;

use super::{Catalog, fmt_time, parse_time};
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
    }

    /// Update the fields, and the sealed password when one is given.
    pub fn update_credential(
        &self,
        id: i64,
        fields: &CredentialFields,
        sealed: Option<Vec<u8>>,
    ) -> Result<()> {
        let mut conn = self.conn.lock();
        let tx = conn.transaction()?;
        write_credential(&tx, id, fields, sealed)?;
        tx.commit()?;
        Ok(())
    }

    pub fn delete_credential(&self, id: i64) -> Result<()> {
        let conn = self.conn.lock();
        conn.execute("DELETE FROM vmware_credentials WHERE id = ?1", [id])?;
        Ok(())
    }

    /// Re-seal every credential's password in one transaction; the first error rolls all back.
    pub fn reseal_credentials(
        &self,
        mut reseal: impl FnMut(&Credential) -> Result<Vec<u8>>,
    ) -> Result<usize> {
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
        tx.commit()?;
        Ok(all.len())
    }
}
