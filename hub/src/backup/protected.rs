//! The protected mark: an operator's word that a backup stays, whatever the retention rules say.

use crate::catalog::{Backup, Status};
use crate::error::{Error, Result};
use crate::state::Hub;

impl Hub {
    /// Marks or unmarks a completed backup. A protected backup is never pruned and cannot be
    /// deleted until it is unprotected.
    pub async fn set_protected(&self, id: &str, protected: bool) -> Result<Backup> {
        let _ops = self.ops.lock().await;
        let backup = self.backup(id)?;
        if backup.status != Status::Completed {
            return Err(Error::Conflict(format!(
                "backup {id} is {}; only a completed backup can be protected",
                backup.status.as_str()
            )));
        }
        if backup.protected != protected {
            self.freeing(|| self.catalog.set_protected(id, protected))?;
            self.sync_manifest(id).await;
            tracing::info!(backup_id = %id, protected, "backup protection changed");
        }
        self.backup(id)
    }
}
