//! Deleting a finished backup, all or nothing (with its failed and cancelled children).

use crate::catalog::Status;
use crate::error::{Error, Result};
use crate::repo::layout;
use crate::repo::removal;
use crate::state::Hub;

impl Hub {
    /// All or nothing: the rows go (with a pending deletion recorded for each) in one
    /// transaction, or the delete is refused; the files go after. Failed and cancelled children
    /// (never a base for anything) go with their parent; any other child keeps it.
    pub async fn delete_backup(&self, id: &str) -> Result<()> {
        let _ops = self.ops.lock().await;
        let backup = self.backup(id)?;
        if backup.status.is_active() {
            return Err(Error::Conflict(format!(
                "backup {id} is {}; cancel it first",
                backup.status.as_str()
            )));
        }
        if backup.protected {
            return Err(Error::Conflict(format!(
                "backup {id} is protected; unprotect it first (PUT /api/v1/backups/{id}/protected)"
            )));
        }
        let (riders, keepers): (Vec<_>, Vec<_>) =
            self.catalog
                .children(id)?
                .into_iter()
                .partition(|(_, status)| {
                    status == Status::Failed.as_str() || status == Status::Cancelled.as_str()
                });
        if !keepers.is_empty() {
            let list: Vec<String> = keepers
                .iter()
                .map(|(c, st)| format!("{c} ({st})"))
                .collect();
            return Err(Error::Conflict(format!(
                "backup {id} is the parent of {}; delete those first",
                list.join(", ")
            )));
        }
        if self.catalog.restores_of(id)? > 0 {
            return Err(Error::Conflict(format!("backup {id} has an open restore")));
        }
        let mut doomed = Vec::with_capacity(riders.len() + 1);
        let mut ending: Vec<&str> = riders.iter().map(|(c, _)| c.as_str()).collect();
        ending.push(id);
        self.end_mounts_of(&ending);
        for (child, _) in &riders {
            let dir = layout::backup_dir_of(&self.backup(child)?);
            doomed.push((child.clone(), dir));
        }
        doomed.push((id.to_owned(), layout::backup_dir_of(&backup)));
        self.freeing(|| self.catalog.delete_backups(&doomed))?;
        for (gone, dir) in &doomed {
            removal::finish_deletion(&self.catalog, gone, dir);
        }
        self.reserve.refill();
        tracing::info!(backup_id = %id, with_children = riders.len(), "backup deleted");
        Ok(())
    }
}
