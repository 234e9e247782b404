//! Configuration: defaults, then a TOML file, then `SENDENSE_HUB_*` variables and flags (the
//! binary's clap layer merges those two, flags first).

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::error::{Error, Result};

#[derive(Debug, Clone)]
pub struct Config {
    pub data_dir: PathBuf,
    pub api_listen: String,
    pub nbd_listen: String,
    /// Host put into NBD URIs handed to clients; default: the NBD listen address, or 127.0.0.1
    /// when that is a wildcard.
    pub nbd_host: Option<String>,
    /// API token; when unset, the token in `<data_dir>/api-token` (created at first start).
    pub api_token: Option<String>,
    /// A backup with no NBD traffic and no client call for this long fails as `stale`.
    pub stale_after: Duration,
    /// How long finalising waits for open connections to finish before closing them.
    pub drain_grace: Duration,
    /// How often progress, lifecycle and expiry are checked.
    pub monitor_interval: Duration,
    pub default_restore_ttl: Duration,
    /// Time given to in-flight requests at shutdown.
    pub shutdown_grace: Duration,
    pub max_connections_per_export: usize,
    /// Request payload bytes (WRITE data, READ replies) all NBD connections hold in memory
    /// together; the bound on the hub's data memory whatever the number of clients.
    pub max_in_flight_bytes: usize,
    /// Time an NBD client gets to send a request's payload, and to take a batch of replies;
    /// past it the client is disconnected and the memory budget it held is released.
    pub nbd_io_timeout: Duration,
    /// API connections open at once; at the limit the one idle longest is closed for a new one.
    pub api_max_connections: usize,
    /// An API connection with no request running and no byte moving for this long is closed
    /// (counted from accept).
    pub api_idle_timeout: Duration,
    /// Time a request body gets to arrive after the request head.
    pub api_body_timeout: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data_dir: PathBuf::from("./sendense-data"),
            api_listen: "127.0.0.1:8082".into(),
            nbd_listen: "127.0.0.1:10809".into(),
            nbd_host: None,
            api_token: None,
            stale_after: Duration::from_secs(3600),
            drain_grace: Duration::from_secs(30),
            monitor_interval: Duration::from_secs(1),
            default_restore_ttl: Duration::from_secs(3600),
            shutdown_grace: Duration::from_secs(10),
            max_connections_per_export: 16,
            max_in_flight_bytes: 128 << 20,
            nbd_io_timeout: Duration::from_secs(60),
            api_max_connections: 128,
            api_idle_timeout: Duration::from_secs(30),
            api_body_timeout: Duration::from_secs(30),
        }
    }
}

/// The TOML file; every key optional. Durations in seconds.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub data_dir: Option<PathBuf>,
    pub api_listen: Option<String>,
    pub nbd_listen: Option<String>,
    pub nbd_host: Option<String>,
    pub api_token: Option<String>,
    pub stale_after_secs: Option<u64>,
    pub drain_grace_secs: Option<u64>,
    pub monitor_interval_ms: Option<u64>,
    pub default_restore_ttl_secs: Option<u64>,
    pub shutdown_grace_secs: Option<u64>,
    pub max_connections_per_export: Option<usize>,
    pub max_in_flight_mib: Option<u64>,
    pub nbd_io_timeout_secs: Option<u64>,
    pub api_max_connections: Option<usize>,
    pub api_idle_timeout_secs: Option<u64>,
    pub api_body_timeout_secs: Option<u64>,
}

/// Values from flags or the environment; they win over the file.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub data_dir: Option<PathBuf>,
    pub api_listen: Option<String>,
    pub nbd_listen: Option<String>,
    pub nbd_host: Option<String>,
    pub api_token: Option<String>,
    pub stale_after_secs: Option<u64>,
}

impl FileConfig {
    pub fn load(path: &Path) -> Result<FileConfig> {
        let text = std::fs::read_to_string(path)
            .map_err(Error::io(format!("reading {}", path.display())))?;
        toml::from_str(&text).map_err(|e| Error::Config(format!("{}: {e}", path.display())))
    }
}

impl Config {
    pub fn resolve(file: FileConfig, flags: Overrides) -> Result<Config> {
        let d = Config::default();
        let secs = Duration::from_secs;
        let secs_or = |v: Option<u64>, default: Duration| v.map(secs).unwrap_or(default);
        let config = Config {
            data_dir: flags.data_dir.or(file.data_dir).unwrap_or(d.data_dir),
            api_listen: flags.api_listen.or(file.api_listen).unwrap_or(d.api_listen),
            nbd_listen: flags.nbd_listen.or(file.nbd_listen).unwrap_or(d.nbd_listen),
            nbd_host: flags.nbd_host.or(file.nbd_host),
            api_token: flags.api_token.or(file.api_token),
            stale_after: flags
                .stale_after_secs
                .or(file.stale_after_secs)
                .map(secs)
                .unwrap_or(d.stale_after),
            drain_grace: file.drain_grace_secs.map(secs).unwrap_or(d.drain_grace),
            monitor_interval: file
                .monitor_interval_ms
                .map(Duration::from_millis)
                .unwrap_or(d.monitor_interval),
            default_restore_ttl: file
                .default_restore_ttl_secs
                .map(secs)
                .unwrap_or(d.default_restore_ttl),
            shutdown_grace: file
                .shutdown_grace_secs
                .map(secs)
                .unwrap_or(d.shutdown_grace),
            max_connections_per_export: file
                .max_connections_per_export
                .unwrap_or(d.max_connections_per_export),
            max_in_flight_bytes: match file.max_in_flight_mib {
                // Past the address space it would mean "unbounded", which this key never means.
                Some(mib) => usize::try_from(mib)
                    .ok()
                    .and_then(|m| m.checked_mul(1 << 20))
                    .ok_or_else(|| Error::Config("max_in_flight_mib is too large".into()))?,
                None => d.max_in_flight_bytes,
            },
            nbd_io_timeout: secs_or(file.nbd_io_timeout_secs, d.nbd_io_timeout),
            api_max_connections: file.api_max_connections.unwrap_or(d.api_max_connections),
            api_idle_timeout: secs_or(file.api_idle_timeout_secs, d.api_idle_timeout),
            api_body_timeout: secs_or(file.api_body_timeout_secs, d.api_body_timeout),
        };
        config.validate()?;
        Ok(config)
    }

    pub fn validate(&self) -> Result<()> {
        if self.stale_after.is_zero() {
            return Err(Error::Config("stale_after must be positive".into()));
        }
        if self.monitor_interval.is_zero() {
            return Err(Error::Config("monitor_interval must be positive".into()));
        }
        if self.max_connections_per_export == 0 {
            return Err(Error::Config(
                "max_connections_per_export must be positive".into(),
            ));
        }
        if self.api_max_connections == 0
            || self.api_idle_timeout.is_zero()
            || self.api_body_timeout.is_zero()
        {
            return Err(Error::Config(
                "api_max_connections, api_idle_timeout_secs and api_body_timeout_secs must be positive"
                    .into(),
            ));
        }
        if self.nbd_io_timeout.is_zero() {
            return Err(Error::Config("nbd_io_timeout_secs must be positive".into()));
        }
        if self.max_in_flight_bytes == 0 {
            return Err(Error::Config("max_in_flight_mib must be positive".into()));
        }
        if let Some(token) = &self.api_token {
            if token.trim().len() < 16 {
                return Err(Error::Config(
                    "api_token must have at least 16 characters".into(),
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_win_over_file_over_defaults() {
        let file: FileConfig = toml::from_str(
            "data_dir = \"/srv/hub\"\napi_listen = \"0.0.0.0:9000\"\nstale_after_secs = 60\ndrain_grace_secs = 2\n",
        )
        .unwrap();
        let flags = Overrides {
            api_listen: Some("127.0.0.1:1".into()),
            ..Overrides::default()
        };
        let c = Config::resolve(file, flags).unwrap();
        assert_eq!(c.data_dir, PathBuf::from("/srv/hub"));
        assert_eq!(c.api_listen, "127.0.0.1:1");
        assert_eq!(c.nbd_listen, "127.0.0.1:10809");
        assert_eq!(c.stale_after, Duration::from_secs(60));
        assert_eq!(c.drain_grace, Duration::from_secs(2));
    }

    #[test]
    fn the_shipped_example_parses() {
        let file: FileConfig =
            toml::from_str(include_str!("../../deploy/config.example.toml")).unwrap();
        let c = Config::resolve(file, Overrides::default()).unwrap();
        assert_eq!(c.data_dir, PathBuf::from("/var/lib/sendense-hub"));
        assert_eq!(c.stale_after, Config::default().stale_after);
    }

    #[test]
    fn bad_files_are_errors() {
        assert!(toml::from_str::<FileConfig>("no_such_key = 1").is_err());
        assert!(toml::from_str::<FileConfig>("stale_after_secs = \"x\"").is_err());
        let zero = FileConfig {
            stale_after_secs: Some(0),
            ..FileConfig::default()
        };
        assert!(Config::resolve(zero, Overrides::default()).is_err());
        for mib in [0, u64::MAX] {
            let file = FileConfig {
                max_in_flight_mib: Some(mib),
                ..FileConfig::default()
            };
            let err = Config::resolve(file, Overrides::default()).unwrap_err();
            assert!(err.to_string().contains("max_in_flight_mib"), "{err}");
        }
    }

    #[test]
    fn in_flight_budget_is_read_in_mib() {
        let file: FileConfig = toml::from_str("max_in_flight_mib = 512").unwrap();
        let c = Config::resolve(file, Overrides::default()).unwrap();
        assert_eq!(c.max_in_flight_bytes, 512 << 20);
    }
}
