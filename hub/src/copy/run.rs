//! A copy job: the planned layers sent bottom up, each recorded as it goes; the first that
//! fails fails the ones above it (they would read through it).

use serde_json::json;

use time::OffsetDateTime;

use crate::catalog::{Backup, BackupCopy};
use crate::jobs::{JobContext, Outcome};
use crate::repo::object_lock::LockMode;
use crate::repo::s3::Bucket;
use crate::state::{Hub, now};

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
    pub retain_days: Option<u32>,
    /// The lock every object gets, once the bucket's Object Lock was read (`None`: no lock).
    pub retain: Option<Retain>,
}

#[derive(Debug, Clone, Copy)]
pub(super) struct Retain {
    pub mode: LockMode,
    pub until: OffsetDateTime,
}

impl Hub {
    pub(super) async fn run_copy(&self, mut work: Work, ctx: JobContext) -> Outcome {
        work.retain = retention(&work, &ctx).await;
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
        if let Err(err) = self.extend_below(&work, &ctx).await {
            let error = format!("the layers below could not be locked as long: {err}");
            return Outcome::Failed {
                error,
                result: Some(json!({"copied": copied})),
            };
        }
        Outcome::Succeeded(json!({"copied": copied, "bytes": progress.done}))
    }
}

/// The lock the job's objects get: none where the bucket has no Object Lock; else until the
/// later of the asked days and the bucket's default, in the bucket's default mode (compliance
/// when it has none: nobody, the hub's own key included, deletes a copy before its date).
async fn retention(work: &Work, ctx: &JobContext) -> Option<Retain> {
    let lock = match work.bucket.object_lock().await {
        Ok(Some(lock)) => lock,
        Ok(None) => {
            if work.retain_days.is_some() {
                ctx.warn("the bucket has no Object Lock: the copy is not immutable");
            }
            return None;
        }
        Err(err) => {
            ctx.warn(format!(
                "Object Lock not read, the copy is not locked: {err}"
            ));
            return None;
        }
    };
    let days = work.retain_days.max(lock.default_days)?;
    let until = now() + time::Duration::days(i64::from(days));
    let mode = lock.default_mode.unwrap_or(LockMode::Compliance);
    ctx.info(format!(
        "Object Lock: every object {} until {until}",
        mode.as_str()
    ));
    Some(Retain { mode, until })
}
