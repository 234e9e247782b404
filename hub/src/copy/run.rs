//! A copy job: the planned layers sent bottom up, each recorded as it goes; the first that
//! fails fails the ones above it (they would read through it).

use serde_json::json;

use crate::catalog::{Backup, BackupCopy};
use crate::jobs::{JobContext, Outcome};
use crate::repo::s3::Bucket;
use crate::state::Hub;

/// Bytes sent so far of bytes to send, over the whole job.
pub(super) struct Progress {
    pub done: u64,
    pub total: u64,
}

pub(super) struct Work {
    pub bucket: Bucket,
    /// Bottom first, each with its row.
    pub layers: Vec<(Backup, BackupCopy)>,
    pub verify: bool,
}

impl Hub {
    pub(super) async fn run_copy(&self, work: Work, ctx: JobContext) -> Outcome {
        let total: u64 = work
            .layers
            .iter()
            .flat_map(|(b, _)| &b.disks)
            .map(|d| std::fs::metadata(&d.qcow2_path).map_or(0, |m| m.len()))
            .sum();
        ctx.info(format!(
            "copying {} layer(s), {total} bytes, into {}",
            work.layers.len(),
            crate::repo::s3::display(work.bucket.settings())
        ));
        let mut progress = Progress { done: 0, total };
        let mut copied = Vec::new();
        for (i, (layer, row)) in work.layers.iter().enumerate() {
            match self
                .copy_layer(&work, layer, row, &ctx, &mut progress)
                .await
            {
                Ok(bytes) => {
                    ctx.info(format!("backup {}: copied ({bytes} bytes)", layer.id));
                    copied.push(row.id.clone());
                }
                Err(err) => {
                    let why = err.to_string();
                    ctx.error(format!("backup {}: {why}", layer.id));
                    self.fail_copy(&row.id, &why);
                    for (_, above) in &work.layers[i + 1..] {
                        let below = format!("the layer below ({}) was not copied: {why}", layer.id);
                        self.fail_copy(&above.id, &below);
                    }
                    return Outcome::Failed {
                        error: format!("backup {}: {why}", layer.id),
                        result: Some(json!({"copied": copied})),
                    };
                }
            }
        }
        Outcome::Succeeded(json!({"copied": copied, "bytes": progress.done}))
    }
}
