//! The backup lifecycle: create (images and exports), the client's telemetry, complete and
//! finalise, cancel, fail and delete, the change ids and chains an incremental builds on, the
//! monitor (ready -> running, stale backups, expired restores) and the launch of a backup on the
//! SNA from a VM context.
//!
//! It decides when images are made, written, sealed and removed; where they live and how a
//! directory goes is `repo`'s business, how bytes arrive is `export`'s. It knows nothing of HTTP.

mod cancel;
pub mod chain;
pub mod complete;
pub mod create;
mod delete;
pub mod launch;
mod monitor;
mod protected;
pub mod telemetry;

use crate::catalog::Backup;
use crate::error::{Error, Result};
use crate::state::{ActiveDisk, Hub};

impl Hub {
    pub fn backup(&self, id: &str) -> Result<Backup> {
        self.catalog
            .backup(id)?
            .ok_or_else(|| Error::NotFound(format!("no backup {id}")))
    }
}

impl ActiveDisk {
    /// Take the image out and close it (flush only, when another holder keeps it open).
    pub async fn close_image(&self) -> Result<()> {
        let image = self.image.lock().take();
        match image {
            Some(image) => crate::repo::images::close_image(image).await,
            None => Ok(()),
        }
    }
}
