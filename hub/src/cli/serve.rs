//! `sendense-hub serve`.

use std::path::PathBuf;

use anyhow::Context;
use hub::config::{Config, FileConfig, Overrides};

#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// TOML configuration file.
    #[arg(long, value_name = "FILE", env = "SENDENSE_HUB_CONFIG")]
    config: Option<PathBuf>,
    /// Catalog, API token and the default repository live here [default: ./sendense-data].
    #[arg(long, value_name = "DIR", env = "SENDENSE_HUB_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// REST API address [default: 127.0.0.1:8082].
    #[arg(long, value_name = "ADDR", env = "SENDENSE_HUB_API_LISTEN")]
    api_listen: Option<String>,
    /// NBD server address [default: 127.0.0.1:10100].
    #[arg(long, value_name = "ADDR", env = "SENDENSE_HUB_NBD_LISTEN")]
    nbd_listen: Option<String>,
    /// Host written into the NBD URIs handed to clients [default: the NBD listen address].
    #[arg(long, value_name = "HOST", env = "SENDENSE_HUB_NBD_HOST")]
    nbd_host: Option<String>,
    /// The SNA's API, through the SSH tunnel [default: http://127.0.0.1:9081].
    #[arg(long, value_name = "URL", env = "SENDENSE_HUB_SNA_URL")]
    sna_url: Option<String>,
    /// Seconds without NBD traffic after which a backup fails as stale [default: 3600].
    #[arg(long, value_name = "SECS", env = "SENDENSE_HUB_STALE_AFTER")]
    stale_after: Option<u64>,
    /// NBD TLS: off, on or require [default: off].
    #[arg(long, value_name = "MODE", env = "SENDENSE_HUB_TLS")]
    tls: Option<String>,
    /// x509 credentials directory (qemu's layout; `sendense-hub tls init` writes one).
    #[arg(long, value_name = "DIR", env = "SENDENSE_HUB_TLS_CREDS")]
    tls_creds: Option<PathBuf>,
    /// HTTPS for the API: off or on [default: off].
    #[arg(long, value_name = "MODE", env = "SENDENSE_HUB_API_TLS")]
    api_tls: Option<String>,
    /// Image file I/O: auto (direct except on tmpfs), direct or buffered [default: auto].
    #[arg(long, value_name = "MODE", env = "SENDENSE_HUB_STORAGE_IO")]
    storage_io: Option<qcow2::StorageIo>,
    /// Serve tokenless requests from loopback on every route, for the Sendense GUI's server on
    /// this host (see the README: the SNA's tunnel and local users arrive on loopback too).
    #[arg(long)]
    trust_loopback_gui: bool,
}

pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    let file = match &args.config {
        Some(path) => FileConfig::load(path)?,
        None => FileConfig::default(),
    };
    let overrides = Overrides {
        data_dir: args.data_dir,
        api_listen: args.api_listen,
        nbd_listen: args.nbd_listen,
        nbd_host: args.nbd_host,
        // The token is never a flag: flags show up in `ps`.
        api_token: std::env::var("SENDENSE_HUB_API_TOKEN").ok(),
        // Likewise the credential key: environment or key file only.
        credential_key: std::env::var(hub::sys::secrets::KEY_ENV)
            .ok()
            .map(hub::sys::secrets::Secret::new),
        sna_url: args.sna_url,
        stale_after_secs: args.stale_after,
        tls: args.tls,
        tls_creds: args.tls_creds,
        api_tls: args.api_tls,
        storage_io: args.storage_io,
        trust_loopback_gui: args.trust_loopback_gui,
    };
    let config = Config::resolve(file, overrides)?;
    hub::sys::datadir::prepare(&config.data_dir)?;
    // Held until exit: `catalog rebuild` must not run under a live hub, nor two hubs share a dir.
    let _lock = hub::sys::datadir::lock(&config.data_dir)?;
    let shutdown = super::shutdown_on_signal()?;
    let api = tokio::net::TcpListener::bind(&config.api_listen)
        .await
        .with_context(|| format!("binding the API to {}", config.api_listen))?;
    let nbd = tokio::net::TcpListener::bind(&config.nbd_listen)
        .await
        .with_context(|| format!("binding NBD to {}", config.nbd_listen))?;
    tracing::info!(data_dir = %config.data_dir.display(), "starting sendense-hub");
    hub::serve(config, api, nbd, shutdown).await?;
    Ok(())
}
