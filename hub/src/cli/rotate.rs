//! `sendense-hub rotate-credential-key`.

use std::path::PathBuf;

use hub::config::{Config, FileConfig, Overrides};
use hub::inventory::credentials::{KeySource, rotate_key};
use hub::sys::secrets::{KEY_ENV, NEW_KEY_ENV, Secret};

#[derive(Debug, clap::Args)]
pub struct RotateArgs {
    /// TOML configuration file (for `data_dir`).
    #[arg(long, value_name = "FILE", env = "SENDENSE_HUB_CONFIG")]
    config: Option<PathBuf>,
    /// The hub's data directory [default: ./sendense-data].
    #[arg(long, value_name = "DIR", env = "SENDENSE_HUB_DATA_DIR")]
    data_dir: Option<PathBuf>,
}

/// With the key in `SENDENSE_HUB_CREDENTIAL_KEY`, the new one must be given in
/// `SENDENSE_HUB_NEW_CREDENTIAL_KEY` (keys are never flags: flags show in `ps`); with the key file,
/// a new key is generated into it.
pub fn run(args: &RotateArgs) -> anyhow::Result<()> {
    let file = match &args.config {
        Some(path) => FileConfig::load(path)?,
        None => FileConfig::default(),
    };
    let overrides = Overrides {
        data_dir: args.data_dir.clone(),
        ..Overrides::default()
    };
    let config = Config::resolve(file, overrides)?;
    let source = match std::env::var(KEY_ENV) {
        Ok(current) => {
            let new = std::env::var(NEW_KEY_ENV).map_err(|_| {
                anyhow::anyhow!(
                    "the key comes from {KEY_ENV}: give the new key (base64 of 32 bytes) in {NEW_KEY_ENV}"
                )
            })?;
            KeySource::Env {
                current: Secret::new(current),
                new: Secret::new(new),
            }
        }
        Err(_) => KeySource::File,
    };
    let from_env = matches!(source, KeySource::Env { .. });
    let count = rotate_key(&config.data_dir, source)?;
    if from_env {
        println!(
            "re-encrypted {count} credential(s); set {KEY_ENV} to the new key before starting the hub"
        );
    } else {
        println!("re-encrypted {count} credential(s) under a new key in the key file");
    }
    Ok(())
}
