//! What `catalog rebuild` takes from the old catalog because no manifest holds it: vCenter
//! credentials, VM contexts with their disks, the protection objects, and S3 repositories with
//! their copies. Rows are copied as they
//! are, ids included: a credential's password is sealed with its row id as associated data, and
//! groups, flows and backups name the others by id.

use std::path::Path;

use rusqlite::types::Value;
use rusqlite::{Connection, OpenFlags, Transaction};

use super::conn::Catalog;
use crate::error::{Error, Result};

/// How many rows of each kind came over, and what was left behind.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct CarriedOver {
    pub credentials: usize,
    pub vm_contexts: usize,
    pub vm_disks: usize,
    pub schedules: usize,
    pub machine_groups: usize,
    pub group_members: usize,
    pub policies: usize,
    pub copy_rules: usize,
    pub flows: usize,
    /// Policies and flows dropped because a repository or policy they name is gone, as
    /// "policy NAME" / "protection flow NAME".
    pub dropped: Vec<String>,
}

/// Parents before children. Jobs and flow executions stay behind: they are history, and a job
/// row names work this catalog never ran.
const TABLES: &[&str] = &[
    "vmware_credentials",
    "vm_contexts",
    "vm_disks",
    "schedules",
    "machine_groups",
    "group_members",
    "policies",
    "copy_rules",
    "protection_flows",
    "backup_copies",
];

impl Catalog {
    /// Copy [`TABLES`] from the catalog file `old` (opened read-only; it is never changed) in one
    /// transaction, after the repositories are in. An error leaves none of it.
    pub fn carry_over(&self, old: &Path) -> Result<CarriedOver> {
        let old = Connection::open_with_flags(old, OpenFlags::SQLITE_OPEN_READ_ONLY)?;
        if columns(&old, "repositories")?.is_empty() {
            return Err(Error::Invalid("it holds no catalog tables".into()));
        }
        let mut conn = self.conn.lock();
        let result = (|| {
            let tx = conn.transaction()?;
            // Rows whose repository is gone go in first and are removed before the commit,
            // which is when the references are checked.
            tx.pragma_update(None, "defer_foreign_keys", true)?;
            copy_s3_repositories(&old, &tx)?;
            for table in TABLES {
                copy_table(&old, &tx, table)?;
            }
            let dropped = drop_orphans(&tx)?;
            let carried = counted(&tx, dropped)?;
            tx.commit()?;
            Ok(carried)
        })();
        drop(conn);
        self.written(result.map_err(Error::Catalog))
    }
}

/// The columns of `table` (none if the catalog has no such table: it predates it).
fn columns(conn: &Connection, table: &str) -> rusqlite::Result<Vec<String>> {
    let mut stmt = conn.prepare(&format!("PRAGMA table_info({table})"))?;
    stmt.query_map([], |row| row.get::<_, String>(1))?.collect()
}

/// The S3 repositories as they are (no manifest on a local disk names them): their settings and
/// sealed secrets (sealed with the repository id as associated data, so they open again), so
/// the copy rules and copies that name them stay.
fn copy_s3_repositories(old: &Connection, tx: &Transaction<'_>) -> rusqlite::Result<()> {
    if !columns(old, "repositories")?.iter().any(|c| c == "kind") {
        return Ok(());
    }
    let mut read = old.prepare(
        "SELECT id, name, path, created_at, description, kind, s3_config, secret_sealed \
         FROM repositories WHERE kind = 's3'",
    )?;
    let mut write = tx.prepare(
        "INSERT INTO repositories (id, name, path, created_at, description, kind, s3_config, \
         secret_sealed) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) ON CONFLICT (id) DO NOTHING",
    )?;
    let mut rows = read.query([])?;
    while let Some(row) = rows.next()? {
        let values = (0..8)
            .map(|i| row.get::<_, Value>(i))
            .collect::<rusqlite::Result<Vec<_>>>()?;
        write.execute(rusqlite::params_from_iter(values))?;
    }
    Ok(())
}

/// Every row of `table`, in the columns both catalogs have (an older one may lack some that
/// have defaults).
fn copy_table(old: &Connection, tx: &Transaction<'_>, table: &str) -> rusqlite::Result<()> {
    let have = columns(old, table)?;
    if have.is_empty() {
        return Ok(());
    }
    let cols: Vec<String> = columns(tx, table)?
        .into_iter()
        .filter(|c| have.contains(c))
        .collect();
    let list = cols.join(", ");
    let marks = vec!["?"; cols.len()].join(", ");
    let mut read = old.prepare(&format!("SELECT {list} FROM {table}"))?;
    let mut write = tx.prepare(&format!("INSERT INTO {table} ({list}) VALUES ({marks})"))?;
    let mut rows = read.query([])?;
    while let Some(row) = rows.next()? {
        let values = (0..cols.len())
            .map(|i| row.get::<_, Value>(i))
            .collect::<rusqlite::Result<Vec<_>>>()?;
        write.execute(rusqlite::params_from_iter(values))?;
    }
    Ok(())
}

/// Remove the policies, copy rules and flows that name a repository or policy not in the new
/// catalog; the names of the policies and flows removed.
fn drop_orphans(tx: &Transaction<'_>) -> rusqlite::Result<Vec<String>> {
    const GONE_POLICIES: &str = "primary_repository_id NOT IN (SELECT id FROM repositories)";
    const GONE_FLOWS: &str = "repository_id NOT IN (SELECT id FROM repositories)
        OR (policy_id IS NOT NULL AND policy_id NOT IN (SELECT id FROM policies))";
    let mut dropped = names(tx, "policy", "policies", GONE_POLICIES)?;
    tx.execute(&format!("DELETE FROM policies WHERE {GONE_POLICIES}"), [])?;
    tx.execute(
        "DELETE FROM copy_rules WHERE policy_id NOT IN (SELECT id FROM policies)
            OR destination_repository_id NOT IN (SELECT id FROM repositories)",
        [],
    )?;
    dropped.extend(names(
        tx,
        "protection flow",
        "protection_flows",
        GONE_FLOWS,
    )?);
    tx.execute(
        &format!("DELETE FROM protection_flows WHERE {GONE_FLOWS}"),
        [],
    )?;
    Ok(dropped)
}

fn names(
    tx: &Transaction<'_>,
    kind: &str,
    table: &str,
    filter: &str,
) -> rusqlite::Result<Vec<String>> {
    let mut stmt = tx.prepare(&format!(
        "SELECT name FROM {table} WHERE {filter} ORDER BY name"
    ))?;
    stmt.query_map([], |row| {
        Ok(format!("{kind} {:?}", row.get::<_, String>(0)?))
    })?
    .collect()
}

/// The rows now in (the new catalog had none of these before).
fn counted(tx: &Transaction<'_>, dropped: Vec<String>) -> rusqlite::Result<CarriedOver> {
    let n = |table: &str| -> rusqlite::Result<usize> {
        tx.query_row(&format!("SELECT COUNT(*) FROM {table}"), [], |row| {
            row.get::<_, i64>(0)
        })
        .map(|n| usize::try_from(n).unwrap_or(0))
    };
    Ok(CarriedOver {
        credentials: n("vmware_credentials")?,
        vm_contexts: n("vm_contexts")?,
        vm_disks: n("vm_disks")?,
        schedules: n("schedules")?,
        machine_groups: n("machine_groups")?,
        group_members: n("group_members")?,
        policies: n("policies")?,
        copy_rules: n("copy_rules")?,
        flows: n("protection_flows")?,
        dropped,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::Repository;

    fn repo(id: &str) -> Repository {
        Repository {
            id: id.into(),
            name: id.into(),
            path: format!("/srv/{id}").into(),
            created_at: time::OffsetDateTime::now_utc(),
            description: None,
            s3: None,
        }
    }

    #[test]
    fn keeps_ids_and_drops_what_names_a_repository_gone() {
        let dir = tempfile::tempdir().unwrap();
        let (old_path, new_path) = (dir.path().join("old"), dir.path().join("new"));
        let old = Catalog::open(&old_path).unwrap();
        old.insert_repository(&repo("default")).unwrap();
        old.insert_repository(&repo("nas")).unwrap();
        let t = "'2026-01-01T00:00:00Z'";
        old.conn
            .lock()
            .execute_batch(&format!(
                "INSERT INTO vmware_credentials (id, credential_name, vcenter_host, username,
                     password_sealed, created_at, updated_at)
                 VALUES (7, 'vc', 'h', 'u', x'00', {t}, {t});
                 INSERT INTO policies (id, name, enabled, primary_repository_id, created_at,
                     updated_at) VALUES ('p-nas', 'on nas', 1, 'nas', {t}, {t});
                 INSERT INTO protection_flows (id, name, flow_type, target_type, target_id,
                     repository_id, policy_id, enabled, created_by, created_at, updated_at,
                     last_tick_at)
                 VALUES ('f1', 'kept', 'backup', 'vm', 'a', 'default', NULL, 1, 'api', {t}, {t}, {t}),
                     ('f2', 'policy gone', 'backup', 'vm', 'a', 'default', 'p-nas', 1, 'api', {t}, {t}, NULL),
                     ('f3', 'repo gone', 'backup', 'vm', 'a', 'nas', NULL, 1, 'api', {t}, {t}, NULL);"
            ))
            .unwrap();
        drop(old);
        let new = Catalog::open(&new_path).unwrap();
        new.insert_repository(&repo("default")).unwrap();
        let over = new.carry_over(&old_path).unwrap();
        assert_eq!((over.credentials, over.policies, over.flows), (1, 0, 1));
        assert_eq!(
            over.dropped,
            [
                r#"policy "on nas""#,
                r#"protection flow "policy gone""#,
                r#"protection flow "repo gone""#
            ]
        );
        let conn = new.conn.lock();
        let id: i64 = conn
            .query_row("SELECT id FROM vmware_credentials", [], |r| r.get(0))
            .unwrap();
        let tick: String = conn
            .query_row("SELECT last_tick_at FROM protection_flows", [], |r| {
                r.get(0)
            })
            .unwrap();
        assert_eq!((id, tick.as_str()), (7, "2026-01-01T00:00:00Z"));
    }

    #[test]
    fn s3_repositories_and_their_copies_come_over_sealed() {
        let dir = tempfile::tempdir().unwrap();
        let (old_path, new_path) = (dir.path().join("old"), dir.path().join("new"));
        let old = Catalog::open(&old_path).unwrap();
        old.insert_repository(&repo("default")).unwrap();
        let settings = crate::catalog::S3Settings {
            endpoint: "http://127.0.0.1:9000".into(),
            region: "us-east-1".into(),
            bucket: "offsite".into(),
            prefix: "hub1".into(),
            access_key_id: "AKIA".into(),
            path_style: true,
        };
        let bucket = Repository {
            s3: Some(settings.clone()),
            ..repo("offsite")
        };
        old.insert_repository_sealed(&bucket, Some(b"sealed"))
            .unwrap();
        let t = "'2026-01-01T00:00:00Z'";
        old.conn
            .lock()
            .execute_batch(&format!(
                "INSERT INTO policies (id, name, enabled, primary_repository_id, created_at,
                     updated_at) VALUES ('p', 'nightly', 1, 'default', {t}, {t});
                 INSERT INTO copy_rules (id, policy_id, destination_repository_id, copy_mode,
                     priority, enabled, verify_after_copy, created_at)
                 VALUES ('r', 'p', 'offsite', 'immediate', 1, 1, 1, {t});
                 INSERT INTO backup_copies (id, backup_id, repository_id, vm_name, backup_type,
                     status, verification_status, object_prefix, created_at)
                 VALUES ('c', 'b', 'offsite', 'vm', 'full', 'completed', 'passed', 'hub1/vm/b', {t});"
            ))
            .unwrap();
        drop(old);
        let new = Catalog::open(&new_path).unwrap();
        new.insert_repository(&repo("default")).unwrap();
        let over = new.carry_over(&old_path).unwrap();
        assert_eq!((over.policies, over.copy_rules), (1, 1), "{over:?}");
        assert!(over.dropped.is_empty(), "{over:?}");
        let back = new.repository("offsite").unwrap().unwrap();
        assert_eq!(back.s3, Some(settings));
        assert_eq!(
            new.repository_secret("offsite").unwrap().as_deref(),
            Some(&b"sealed"[..])
        );
        assert_eq!(new.copy_in("b", "offsite").unwrap().unwrap().id, "c");
    }

    #[test]
    fn an_empty_file_is_no_catalog() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("old"), b"").unwrap();
        let new = Catalog::open(&dir.path().join("new")).unwrap();
        let err = new.carry_over(&dir.path().join("old")).unwrap_err();
        assert!(err.to_string().contains("no catalog tables"), "{err}");
    }
}
