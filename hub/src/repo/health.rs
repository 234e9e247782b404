//! `/health`: the catalog answers, every repository takes a new file, and the credential key
//! opens.

use std::io::Write;
use std::path::Path;

use serde::Serialize;

use crate::repo::images::blocking;
use crate::repo::layout::random_hex;
use crate::state::Hub;

pub const SERVICE: &str = "sendense-hub";

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Health {
    /// `healthy`, or `unhealthy` with a 503.
    pub status: &'static str,
    pub service: &'static str,
    pub version: &'static str,
    /// `ok`, or why the catalog did not answer.
    pub database: String,
    /// Every repository the catalog lists (empty when the catalog did not answer).
    pub repositories: Vec<RepositoryHealth>,
    /// `ok`, or why the key sealing vCenter passwords cannot be used (credentials, discovery and
    /// backups started on the SNA fail until it can).
    pub credential_key: String,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct RepositoryHealth {
    pub id: String,
    pub path: String,
    pub writable: bool,
    /// Why a file could not be made there.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Health {
    pub fn is_healthy(&self) -> bool {
        self.status == "healthy"
    }

    /// The checks that failed, in words.
    pub fn failures(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.database != "ok" {
            out.push(format!("catalog: {}", self.database));
        }
        if self.credential_key != "ok" {
            out.push(format!("credential key: {}", self.credential_key));
        }
        for repo in self.repositories.iter().filter(|r| !r.writable) {
            out.push(format!(
                "repository {} ({}) is not writable: {}",
                repo.id,
                repo.path,
                repo.error.as_deref().unwrap_or("unknown")
            ));
        }
        out
    }
}

/// Create, write and remove a file with a name no backup uses; any step failing is the answer.
fn probe_writable(dir: &Path) -> std::io::Result<()> {
    let path = dir.join(format!(".health-{}", random_hex()));
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)
        .and_then(|mut f| f.write_all(b"ok"));
    let removed = std::fs::remove_file(&path);
    written?;
    removed
}

impl Hub {
    pub async fn health(&self) -> Health {
        let (database, repos) = match self.catalog.local_repositories() {
            Ok(repos) => ("ok".to_owned(), repos),
            Err(err) => {
                tracing::error!(%err, "health: catalog did not answer");
                (err.to_string(), Vec::new())
            }
        };
        let mut repositories = Vec::with_capacity(repos.len());
        for repo in repos {
            let dir = repo.path.clone();
            let probed = blocking(move || Ok(probe_writable(&dir))).await;
            let error = match probed {
                Ok(Ok(())) => None,
                Ok(Err(err)) => Some(err.to_string()),
                Err(err) => Some(err.to_string()),
            };
            if let Some(err) = &error {
                tracing::warn!(repository = %repo.id, %err, "health: repository not writable");
            }
            repositories.push(RepositoryHealth {
                id: repo.id,
                path: repo.path.display().to_string(),
                writable: error.is_none(),
                error,
            });
        }
        let credential_key = match &self.credential_key {
            Ok(_) => "ok".to_owned(),
            Err(reason) => reason.clone(),
        };
        let healthy =
            database == "ok" && credential_key == "ok" && repositories.iter().all(|r| r.writable);
        Health {
            status: if healthy { "healthy" } else { "unhealthy" },
            service: SERVICE,
            version: env!("CARGO_PKG_VERSION"),
            database,
            repositories,
            credential_key,
        }
    }
}
