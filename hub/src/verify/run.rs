//! A verify job: the chains of its backups read layer by layer, bottom up, each layer once; each
//! backup whose whole chain was read gets `ok` or `failed` with the first failure of its chain
//! (the lowest layer's: the cause), in the catalog, its manifest and the metrics.

use std::collections::{HashMap, HashSet};

use serde_json::json;

use super::layer::{Failure, check_layer};
use crate::catalog::{Backup, Job, VerifyState};
use crate::error::{Error, Result};
use crate::jobs::{JobContext, JobKind, Outcome};
use crate::state::{Hub, now};

/// Failures said in the job's log and result; the counts stay exact.
const FAILURES_SHOWN: usize = 200;

/// What a verify job covers.
#[derive(Debug, Clone)]
pub enum Scope {
    Backup(String),
    Vm {
        vm_name: String,
        repository_id: Option<String>,
    },
    Repository(String),
}

impl Scope {
    /// The job's target: one live verify per target.
    fn key(&self) -> String {
        match self {
            Scope::Backup(id) => format!("backup:{id}"),
            Scope::Vm {
                vm_name,
                repository_id: Some(r),
            } => format!("vm:{vm_name}@{r}"),
            Scope::Vm { vm_name, .. } => format!("vm:{vm_name}"),
            Scope::Repository(r) => format!("repository:{r}"),
        }
    }
}

impl Hub {
    /// Queues a verify of `scope`. A backup whose chain a prune is merging is refused (409): its
    /// images change under the read.
    pub async fn start_verify(&self, scope: Scope) -> Result<Job> {
        let targets = self.verify_targets(&scope)?;
        let _ops = self.ops.lock().await;
        let key = scope.key();
        if let Some(job) = self.catalog.live_job(JobKind::Verify.as_str(), &key)? {
            return Err(Error::Conflict(format!(
                "a verify of {key} is already queued or running (job {job})"
            )));
        }
        if let Scope::Backup(_) = scope {
            let b = &targets[0];
            if let Some(why) = self.chain_busy(&b.vm_name, &b.repository_id)? {
                return Err(Error::Conflict(format!(
                    "backup {}: {why}; verify after it ends",
                    b.id
                )));
            }
        }
        let hub = self.clone();
        let ids: Vec<String> = targets.into_iter().map(|b| b.id).collect();
        let job = self
            .jobs
            .submit(JobKind::Verify, &key, move |ctx| async move {
                hub.run_verify(ids, ctx).await
            })?;
        tracing::info!(job_id = %job.id, target = %key, "verify queued");
        Ok(job)
    }

    /// The completed backups the scope names; a backup named that is not completed is refused.
    fn verify_targets(&self, scope: &Scope) -> Result<Vec<Backup>> {
        let filter = |vm_name: Option<&String>, repository_id: Option<&String>| {
            crate::catalog::BackupFilter {
                vm_name: vm_name.cloned(),
                repository_id: repository_id.cloned(),
                status: Some(crate::catalog::Status::Completed),
                backup_type: None,
            }
        };
        let found = match scope {
            Scope::Backup(id) => {
                let b = self.backup(id)?;
                if b.status != crate::catalog::Status::Completed {
                    return Err(Error::Conflict(format!(
                        "backup {id} is {}; only completed backups are verified",
                        b.status.as_str()
                    )));
                }
                vec![b]
            }
            Scope::Vm {
                vm_name,
                repository_id,
            } => self
                .catalog
                .backups(&filter(Some(vm_name), repository_id.as_ref()))?,
            Scope::Repository(r) => {
                if self.catalog.repository(r)?.is_none() {
                    return Err(Error::NotFound(format!("no repository {r:?}")));
                }
                self.catalog.backups(&filter(None, Some(r)))?
            }
        };
        if found.is_empty() {
            return Err(Error::NotFound(format!(
                "no completed backup to verify in {}",
                scope.key()
            )));
        }
        Ok(found)
    }

    /// Why the VM's chain in the repository cannot be read now: a prune works on it, or a merge
    /// of it is unfinished.
    pub(crate) fn chain_busy(&self, vm_name: &str, repository_id: &str) -> Result<Option<String>> {
        if let Some(job) = self.pruning(vm_name, repository_id)? {
            return Ok(Some(format!("a prune of its chain is running (job {job})")));
        }
        let merging = self
            .catalog
            .merges()?
            .into_iter()
            .any(|m| m.vm_name == vm_name && m.repository_id == repository_id);
        Ok(merging.then(|| "a merge of its chain is unfinished".to_owned()))
    }

    /// Whether a verify job reads the VM's chain in the repository now (a prune waits for it).
    pub(crate) fn verifying(&self, vm_name: &str, repository_id: &str) -> Result<Option<String>> {
        let kind = JobKind::Verify.as_str();
        let mut keys = vec![
            format!("vm:{vm_name}"),
            format!("vm:{vm_name}@{repository_id}"),
            format!("repository:{repository_id}"),
        ];
        for b in self.completed_of(vm_name, repository_id)? {
            keys.push(format!("backup:{}", b.id));
        }
        for key in keys {
            if let Some(job) = self.catalog.live_job(kind, &key)? {
                return Ok(Some(job));
            }
        }
        Ok(None)
    }

    async fn run_verify(&self, ids: Vec<String>, ctx: JobContext) -> Outcome {
        let chains = match self.chains_of(&ids) {
            Ok(c) => c,
            Err(err) => {
                return Outcome::Failed {
                    error: err.to_string(),
                    result: None,
                };
            }
        };
        let layers = bottom_up(&chains);
        ctx.info(format!(
            "{} backups to verify, {} layers to read",
            ids.len(),
            layers.len()
        ));
        let mut found: HashMap<String, Vec<Failure>> = HashMap::new();
        for (n, layer) in layers.iter().enumerate() {
            if ctx.is_cancelled() {
                ctx.warn("cancelled: the backups not read yet keep their verify state");
                break;
            }
            match self.verify_layer(layer, &ctx).await {
                Ok(Some(failures)) => {
                    found.insert(layer.clone(), failures);
                }
                Ok(None) => {}
                Err(err) => ctx.warn(format!("backup {layer}: not verified: {err}")),
            }
            ctx.progress(n as u64 + 1, layers.len() as u64);
        }
        self.record_verdicts(&chains, &found, &ctx).await
    }

    /// Each target's chain, the target first, down to its full.
    fn chains_of(&self, ids: &[String]) -> Result<HashMap<String, Vec<String>>> {
        let mut chains = HashMap::new();
        for id in ids {
            let mut chain = vec![id.clone()];
            let mut at = self.catalog.backup(id)?;
            while let Some(parent) = at.and_then(|b| b.parent_backup_id) {
                if chain.contains(&parent) || chain.len() > 10_000 {
                    return Err(Error::Internal(format!("the chain of backup {id} loops")));
                }
                chain.push(parent.clone());
                at = self.catalog.backup(&parent)?;
            }
            chains.insert(id.clone(), chain);
        }
        Ok(chains)
    }

    /// One layer's failures; `None` when it could not be read conclusively (gone, or its chain
    /// changed by a prune meanwhile: nothing is recorded then).
    async fn verify_layer(&self, id: &str, ctx: &JobContext) -> Result<Option<Vec<Failure>>> {
        let Some(layer) = self.catalog.backup(id)? else {
            ctx.warn(format!("backup {id} is gone"));
            return Ok(None);
        };
        if let Some(why) = self.chain_busy(&layer.vm_name, &layer.repository_id)? {
            ctx.warn(format!("backup {id} skipped: {why}"));
            return Ok(None);
        }
        let parent = match &layer.parent_backup_id {
            Some(p) => self.catalog.backup(p)?,
            None => None,
        };
        let io = self.config.storage_io;
        let l = layer.clone();
        let report = tokio::task::spawn_blocking(move || check_layer(&l, parent.as_ref(), io))
            .await
            .map_err(|e| Error::Internal(format!("verify task: {e}")))?;
        for note in &report.notes {
            ctx.warn(format!("backup {id} {note}"));
        }
        // Read again: a failure found while a prune merged or a delete removed the chain says
        // nothing about the backup.
        let after = self.catalog.backup(id)?;
        let changed = after.is_none_or(|b| b.parent_backup_id != layer.parent_backup_id)
            || self
                .chain_busy(&layer.vm_name, &layer.repository_id)?
                .is_some();
        if changed && !report.failures.is_empty() {
            ctx.warn(format!(
                "backup {id}: its chain changed while read; not recorded"
            ));
            return Ok(None);
        }
        Ok(Some(report.failures))
    }

    /// Every backup whose whole chain was read gets its verdict.
    async fn record_verdicts(
        &self,
        chains: &HashMap<String, Vec<String>>,
        found: &HashMap<String, Vec<Failure>>,
        ctx: &JobContext,
    ) -> Outcome {
        let mut verdicts: Vec<(String, Option<Failure>)> = Vec::new();
        let mut seen = HashSet::new();
        for chain in chains.values() {
            // Each layer's own chain is the tail of this one.
            for (i, id) in chain.iter().enumerate() {
                let below = &chain[i..];
                if !seen.insert(id.clone()) || !below.iter().all(|l| found.contains_key(l)) {
                    continue;
                }
                let first = below.iter().rev().find_map(|l| found[l].first().cloned());
                verdicts.push((id.clone(), first));
            }
        }
        let at = now();
        let (mut ok, mut failed) = (Vec::new(), Vec::new());
        for (id, first) in &verdicts {
            let (state, error) = match first {
                None => (VerifyState::Ok, None),
                Some(f) => (VerifyState::Failed, Some(f.to_string())),
            };
            match self.catalog.set_verify(id, state, error.as_deref(), at) {
                Ok(true) => self.sync_manifest(id).await,
                Ok(false) => continue,
                Err(err) => {
                    ctx.error(format!("backup {id}: verdict not recorded: {err}"));
                    continue;
                }
            }
            match error {
                None => ok.push(id.clone()),
                Some(e) => failed.push(json!({ "backup_id": id, "verify_error": e })),
            }
        }
        let all: Vec<&Failure> = found.values().flatten().collect();
        for f in all.iter().take(FAILURES_SHOWN) {
            ctx.error(f.to_string());
        }
        let result = json!({
            "ok": ok,
            "failed": failed,
            "failures": all.iter().take(FAILURES_SHOWN).collect::<Vec<_>>(),
            "failure_count": all.len(),
            "not_verified": chains.keys().filter(|t| !verdicts.iter().any(|v| &v.0 == *t)).count(),
        });
        if !failed.is_empty() {
            let error = format!(
                "{} backups failed verify; first: {}",
                failed.len(),
                failed[0]["verify_error"].as_str().unwrap_or("")
            );
            return Outcome::Failed {
                error,
                result: Some(result),
            };
        }
        if verdicts.is_empty() {
            let error = "no backup could be verified".to_owned();
            return Outcome::Failed {
                error,
                result: Some(result),
            };
        }
        ctx.info(format!("{} backups verified ok", ok.len()));
        Outcome::Succeeded(result)
    }
}

/// The layers of all chains, each once, every layer after the ones below it.
fn bottom_up(chains: &HashMap<String, Vec<String>>) -> Vec<String> {
    let mut order = Vec::new();
    let mut seen = HashSet::new();
    let mut keys: Vec<&String> = chains.keys().collect();
    keys.sort();
    for k in keys {
        for id in chains[k].iter().rev() {
            if seen.insert(id.clone()) {
                order.push(id.clone());
            }
        }
    }
    order
}
