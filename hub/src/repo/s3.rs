//! S3 repositories: a bucket (and a prefix in it) on any S3-compatible store, reached through
//! `object_store`. They hold copies of backups (`crate::copy`), never a backup's primary images:
//! the NBD write path writes files.
//!
//! Keys: `<prefix>/<safe vm name>/<backup id>/{disk<N>.qcow2, disk<N>.digests, manifest.json}`,
//! the same names as the local layout (`layout`), so a copy reads like a backup directory.

use std::sync::Arc;
use std::time::Duration;

use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path as Key;
use object_store::{ClientOptions, ObjectStore, ObjectStoreExt, PutMode, PutPayload, RetryConfig};

use crate::catalog::S3Settings;
use crate::error::{Error, Result};
use crate::sys::secrets::Secret;

/// How long an operation may keep retrying a store that fails or does not answer.
#[derive(Debug, Clone, Copy)]
pub enum Patience {
    /// A test or a creation: the operator waits for the answer, so an unreachable endpoint is
    /// said within seconds.
    Interactive,
    /// A copy or a restore: a store that blips is retried for minutes before the job fails.
    Job,
}

/// An opened S3 repository.
#[derive(Debug, Clone)]
pub struct Bucket {
    settings: S3Settings,
    /// `Debug` shows `***`; kept for the requests object_store has no verb for (`object_lock`).
    secret: Secret,
    options: ClientOptions,
    store: Arc<AmazonS3>,
}

/// Settings as given by the API, checked and normalised: the endpoint an http(s) URL without a
/// trailing slash, the bucket a DNS-style name, the prefix without leading or trailing slashes.
pub fn checked(mut s: S3Settings) -> Result<S3Settings> {
    s.endpoint = s.endpoint.trim().trim_end_matches('/').to_owned();
    let scheme_ok = s.endpoint.starts_with("http://") || s.endpoint.starts_with("https://");
    let host = s.endpoint.split_once("://").map_or("", |(_, rest)| rest);
    if !scheme_ok || host.is_empty() || host.contains(['/', '?', '#', ' ']) {
        return Err(Error::Invalid(
            "config.endpoint must be http(s)://host[:port] (no path)".into(),
        ));
    }
    s.bucket = s.bucket.trim().to_owned();
    let bucket_ok = (3..=63).contains(&s.bucket.len())
        && s.bucket
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && !s.bucket.starts_with(['-', '.'])
        && !s.bucket.ends_with(['-', '.']);
    if !bucket_ok {
        return Err(Error::Invalid(
            "config.bucket must be 3 to 63 of [a-z0-9.-], starting and ending with a letter or digit"
                .into(),
        ));
    }
    s.region = match s.region.trim() {
        "" => "us-east-1".to_owned(),
        r if r.len() <= 64 && r.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') => {
            r.to_owned()
        }
        _ => {
            return Err(Error::Invalid(
                "config.region must be like us-east-1".into(),
            ));
        }
    };
    s.prefix = s.prefix.trim().trim_matches('/').to_owned();
    let segments_ok = s.prefix.is_empty()
        || s.prefix.split('/').all(|seg| {
            !seg.is_empty()
                && seg != "."
                && seg != ".."
                && seg
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        });
    if s.prefix.len() > 256 || !segments_ok {
        return Err(Error::Invalid(
            "config.prefix must be segments of [A-Za-z0-9._-] separated by /".into(),
        ));
    }
    s.access_key_id = s.access_key_id.trim().to_owned();
    if s.access_key_id.is_empty() || s.access_key_id.len() > 256 {
        return Err(Error::Invalid("config.access_key_id is required".into()));
    }
    Ok(s)
}

/// What people see for an S3 repository's location.
pub fn display(s: &S3Settings) -> String {
    if s.prefix.is_empty() {
        format!("s3://{}", s.bucket)
    } else {
        format!("s3://{}/{}", s.bucket, s.prefix)
    }
}

impl Bucket {
    pub fn open(settings: &S3Settings, secret: &Secret, patience: Patience) -> Result<Bucket> {
        // reqwest is built without a crypto provider of its own (see the workspace Cargo.toml):
        // rustls takes the process's default, ring, installed here once for every client. An
        // error only says one is installed already.
        let _ = tokio_rustls::rustls::crypto::ring::default_provider().install_default();
        let (timeout, retry) = match patience {
            Patience::Interactive => (
                Duration::from_secs(15),
                RetryConfig {
                    max_retries: 1,
                    retry_timeout: Duration::from_secs(10),
                    ..RetryConfig::default()
                },
            ),
            Patience::Job => (
                Duration::from_secs(120),
                RetryConfig {
                    max_retries: 8,
                    retry_timeout: Duration::from_secs(180),
                    ..RetryConfig::default()
                },
            ),
        };
        let options = ClientOptions::new()
            .with_allow_http(settings.endpoint.starts_with("http://"))
            .with_connect_timeout(Duration::from_secs(5))
            .with_timeout(timeout);
        let store = AmazonS3Builder::new()
            .with_endpoint(&settings.endpoint)
            .with_region(&settings.region)
            .with_bucket_name(&settings.bucket)
            .with_access_key_id(&settings.access_key_id)
            .with_secret_access_key(secret.expose())
            .with_virtual_hosted_style_request(!settings.path_style)
            .with_client_options(options.clone())
            .with_retry(retry)
            // Every PUT and part carries its SHA-256: the store checks what it received, and
            // buckets with Object Lock require a checksum on writes.
            .with_checksum_algorithm(object_store::aws::Checksum::SHA256)
            .build()
            .map_err(|e| Error::Invalid(format!("S3 settings: {}", describe(&e))))?;
        Ok(Bucket {
            settings: settings.clone(),
            secret: secret.clone(),
            options,
            store: Arc::new(store),
        })
    }

    pub fn store(&self) -> &Arc<AmazonS3> {
        &self.store
    }

    pub fn settings(&self) -> &S3Settings {
        &self.settings
    }

    pub(super) fn secret(&self) -> &Secret {
        &self.secret
    }

    pub(super) fn client_options(&self) -> &ClientOptions {
        &self.options
    }

    /// The key of `rel` (a `/`-separated relative name) under the repository's prefix.
    pub fn key(&self, rel: &str) -> Key {
        if self.settings.prefix.is_empty() {
            Key::from(rel)
        } else {
            Key::from(format!("{}/{rel}", self.settings.prefix))
        }
    }

    /// Whether the bucket can be listed and written with these credentials: a list under the
    /// prefix, then a small probe object put (never over an existing one) and deleted. The error
    /// says what failed in the store's words (no secret in it).
    pub async fn probe(&self) -> std::result::Result<(), String> {
        use futures::TryStreamExt;
        let prefix = self.key("");
        let mut listing = self.store.list(Some(&prefix));
        listing
            .try_next()
            .await
            .map_err(|e| format!("cannot list {}: {}", display(&self.settings), describe(&e)))?;
        drop(listing);
        let probe = self.key(&format!(
            ".sendense-probe-{}",
            crate::repo::layout::random_hex()
        ));
        let opts = object_store::PutOptions {
            mode: PutMode::Create,
            ..Default::default()
        };
        self.store
            .put_opts(&probe, PutPayload::from_static(b"sendense-hub probe"), opts)
            .await
            .map_err(|e| {
                format!(
                    "cannot write to {}: {}",
                    display(&self.settings),
                    describe(&e)
                )
            })?;
        if let Err(e) = self.store.delete(&probe).await {
            // A bucket with Object Lock keeps the probe's version; the delete only hides it.
            tracing::warn!(key = %probe, error = %describe(&e), "probe object not deleted");
        }
        Ok(())
    }
}

/// An object_store error in a line: its kind and the store's own message, without the request
/// (whose URL may carry signatures).
pub fn describe(err: &object_store::Error) -> String {
    use object_store::Error as E;
    let kind = match err {
        E::NotFound { .. } => "not found",
        E::AlreadyExists { .. } => "already exists",
        E::Precondition { .. } => "precondition failed",
        E::PermissionDenied { .. } => "permission denied",
        E::Unauthenticated { .. } => "not authenticated (wrong access key or secret)",
        E::NotSupported { .. } => "not supported",
        _ => "error",
    };
    let mut text = err.to_string();
    let mut source = std::error::Error::source(err);
    while let Some(s) = source {
        let more = s.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = s.source();
    }
    text.truncate(600);
    format!("{kind}: {text}")
}
