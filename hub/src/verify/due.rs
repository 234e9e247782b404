//! Verifies nobody asked for: after each backup that completes in a repository that verifies new
//! backups, and again once a verify is older than `verify_outdated_after_days`. A pass every
//! `POLL` queues one verify job per VM chain with a backup due (each layer read once), unless one
//! is already queued or running or a prune works on the chain; what is still due is taken by a
//! later pass, so a stop loses nothing.

use std::collections::BTreeSet;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::run::Scope;
use crate::error::Result;
use crate::jobs::JobKind;
use crate::state::{Hub, now};

const POLL: Duration = Duration::from_secs(2);

impl Hub {
    pub async fn verify_clock(&self, shutdown: CancellationToken) {
        loop {
            if let Err(err) = self.verify_pass().await {
                tracing::error!(%err, "verify pass");
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(POLL) => {}
            }
        }
    }

    async fn verify_pass(&self) -> Result<()> {
        let cutoff = self
            .config
            .verify_outdated_after
            .and_then(|d| time::Duration::try_from(d).ok())
            .map(|d| now() - d);
        let mut chains = BTreeSet::new();
        for id in self.catalog.verify_due(cutoff)? {
            if let Some(b) = self.catalog.backup(&id)? {
                chains.insert((b.vm_name, b.repository_id));
            }
        }
        for (vm_name, repository_id) in chains {
            let scope = Scope::Vm {
                vm_name: vm_name.clone(),
                repository_id: Some(repository_id.clone()),
            };
            let busy = self.chain_busy(&vm_name, &repository_id)?.is_some()
                || self.verifying(&vm_name, &repository_id)?.is_some()
                || self
                    .catalog
                    .live_job(JobKind::Verify.as_str(), &format!("vm:{vm_name}"))?
                    .is_some();
            if busy {
                continue;
            }
            match self.start_verify(scope).await {
                Ok(job) => {
                    tracing::info!(job_id = %job.id, vm = %vm_name, repository = %repository_id, "verify due")
                }
                Err(err) => tracing::warn!(vm = %vm_name, %err, "due verify not started"),
            }
        }
        Ok(())
    }
}
