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
    /// NBD server address [default: 127.0.0.1:10809].
    #[arg(long, value_name = "ADDR", env = "SENDENSE_HUB_NBD_LISTEN")]
    nbd_listen: Option<String>,
    /// Host written into the NBD URIs handed to clients [default: the NBD listen address].
    #[arg(long, value_name = "HOST", env = "SENDENSE_HUB_NBD_HOST")]
    nbd_host: Option<String>,
    /// Seconds without NBD traffic after which a backup fails as stale [default: 3600].
    #[arg(long, value_name = "SECS", env = "SENDENSE_HUB_STALE_AFTER")]
    stale_after: Option<u64>,
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
        stale_after_secs: args.stale_after,
    };
    let config = Config::resolve(file, overrides)?;
    hub::datadir::prepare(&config.data_dir)?;
    // Held until exit: `catalog rebuild` must not run under a live hub, nor two hubs share a dir.
    let _lock = hub::datadir::lock(&config.data_dir)?;
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
