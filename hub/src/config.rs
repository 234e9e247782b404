//! Configuration: defaults, then a TOML file, then `SENDENSE_HUB_*` variables and flags (the
//! binary's clap layer merges those two, flags first).

use std::path::{Path, PathBuf};
use std::time::Duration;

use nbd_server::tls::TlsMode;
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
    /// The key sealing vCenter passwords (base64 of 32 bytes, from `SENDENSE_HUB_CREDENTIAL_KEY`
    /// only); when unset, `<data_dir>/credential-key`, created at first start.
    pub credential_key: Option<crate::sys::secrets::Secret>,
    /// The SNA's API, reached through the SSH tunnel's reverse forward (discovery, backup start).
    pub sna_url: String,
    /// How long a call to the SNA may take before it counts as failed.
    pub sna_timeout: Duration,
    /// A backup with no NBD traffic and no client call for this long fails as `stale`.
    pub stale_after: Duration,
    /// How long finalising waits for open connections to finish before closing them.
    pub drain_grace: Duration,
    /// How often progress, lifecycle and expiry are checked.
    pub monitor_interval: Duration,
    pub default_restore_ttl: Duration,
    /// A file-level restore mount ends after this long unused.
    pub mount_idle_timeout: Duration,
    /// File-level restore mounts open at once.
    pub max_mounts: usize,
    /// Time given to in-flight requests at shutdown.
    pub shutdown_grace: Duration,
    pub max_connections_per_export: usize,
    /// Backups protection flows start at once, over all flows (each VM waits its turn; a group's
    /// `max_concurrent_vms` bounds its own on top).
    pub max_concurrent_flow_backups: usize,
    /// Request payload bytes (WRITE data, READ replies) all NBD connections hold in memory
    /// together; the bound on the hub's data memory whatever the number of clients.
    pub max_in_flight_bytes: usize,
    /// NBD STARTTLS: off, on (clients may stay in clear) or require; URIs say `nbds://` unless off.
    pub tls: TlsMode,
    /// x509 credentials in qemu's layout (`ca-cert.pem`, `server-cert.pem`, `server-key.pem`).
    pub tls_creds: Option<PathBuf>,
    /// NBD clients must present a certificate signed by `ca-cert.pem` (mutual TLS).
    pub tls_verify_peer: bool,
    /// HTTPS for the API.
    pub api_tls: bool,
    /// Credentials for HTTPS when they differ from `tls_creds`.
    pub api_tls_creds: Option<PathBuf>,
    /// How image files are written: `auto` (direct I/O except on tmpfs), `direct`, `buffered`.
    pub storage_io: qcow2::StorageIo,
    /// Time an NBD client gets to take a batch of replies; past it the client is disconnected
    /// and the READ data it pinned is released.
    pub nbd_io_timeout: Duration,
    /// Longest pause in a request's payload before the NBD client is disconnected (a client
    /// slow but still sending is not).
    pub nbd_payload_stall_timeout: Duration,
    /// API connections open at once; at the limit the one idle longest is closed for a new one.
    pub api_max_connections: usize,
    /// An API connection with no request running and no byte moving for this long is closed
    /// (counted from accept).
    pub api_idle_timeout: Duration,
    /// Time a request body gets to arrive after the request head.
    pub api_body_timeout: Duration,
    /// A failed or cancelled backup (never the base of anything) is deleted this long after it
    /// was made, so an operator has time to read why it failed.
    pub failed_backup_retention: Duration,
    /// A completed backup last verified longer ago than this is verified again (its VM's chain,
    /// in a job); none: only on request and in repositories that verify new backups.
    pub verify_outdated_after: Option<Duration>,
    /// Serve tokenless requests from loopback on every route (the Sendense GUI's server proxies
    /// from this host and sends no token). Off: loopback is trusted on the SNA's routes only.
    /// The SNA's tunnel and every local user arrive on loopback too.
    pub gui_trust_loopback: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data_dir: PathBuf::from("./sendense-data"),
            api_listen: "127.0.0.1:8082".into(),
            // Inside the 10100-10200 range the SNA's SSH tunnel forwards (see
            // deploy/config.example.toml); NBD's usual 10809 is not forwarded.
            nbd_listen: "127.0.0.1:10100".into(),
            nbd_host: None,
            api_token: None,
            credential_key: None,
            sna_url: "http://127.0.0.1:9081".into(),
            sna_timeout: Duration::from_secs(10),
            stale_after: Duration::from_secs(3600),
            drain_grace: Duration::from_secs(30),
            monitor_interval: Duration::from_secs(1),
            default_restore_ttl: Duration::from_secs(3600),
            mount_idle_timeout: Duration::from_secs(3600),
            max_mounts: 16,
            shutdown_grace: Duration::from_secs(10),
            max_connections_per_export: 16,
            max_concurrent_flow_backups: 16,
            max_in_flight_bytes: 128 << 20,
            tls: TlsMode::Off,
            tls_creds: None,
            tls_verify_peer: false,
            api_tls: false,
            api_tls_creds: None,
            storage_io: qcow2::StorageIo::Auto,
            nbd_io_timeout: Duration::from_secs(60),
            nbd_payload_stall_timeout: nbd_server::ServerConfig::default().payload_stall_timeout,
            api_max_connections: 128,
            api_idle_timeout: Duration::from_secs(30),
            api_body_timeout: Duration::from_secs(30),
            failed_backup_retention: Duration::from_secs(7 * 86_400),
            verify_outdated_after: None,
            gui_trust_loopback: false,
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
    pub sna_url: Option<String>,
    pub sna_timeout_secs: Option<u64>,
    pub stale_after_secs: Option<u64>,
    pub drain_grace_secs: Option<u64>,
    pub monitor_interval_ms: Option<u64>,
    pub default_restore_ttl_secs: Option<u64>,
    pub mount_idle_timeout_secs: Option<u64>,
    pub max_mounts: Option<usize>,
    pub shutdown_grace_secs: Option<u64>,
    pub max_connections_per_export: Option<usize>,
    pub max_concurrent_flow_backups: Option<usize>,
    pub max_in_flight_mib: Option<u64>,
    /// "off", "on" or "require".
    pub tls: Option<String>,
    pub tls_creds: Option<PathBuf>,
    pub tls_verify_peer: Option<bool>,
    /// "off" or "on".
    pub api_tls: Option<String>,
    pub api_tls_creds: Option<PathBuf>,
    /// "auto", "direct" or "buffered".
    pub storage_io: Option<String>,
    pub nbd_io_timeout_secs: Option<u64>,
    pub nbd_payload_stall_secs: Option<u64>,
    pub api_max_connections: Option<usize>,
    pub api_idle_timeout_secs: Option<u64>,
    pub api_body_timeout_secs: Option<u64>,
    pub failed_backup_retention_days: Option<u64>,
    pub verify_outdated_after_days: Option<u64>,
    pub gui_trust_loopback: Option<bool>,
}

/// Values from flags or the environment; they win over the file.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub data_dir: Option<PathBuf>,
    pub api_listen: Option<String>,
    pub nbd_listen: Option<String>,
    pub nbd_host: Option<String>,
    pub api_token: Option<String>,
    pub credential_key: Option<crate::sys::secrets::Secret>,
    pub sna_url: Option<String>,
    pub stale_after_secs: Option<u64>,
    pub tls: Option<String>,
    pub tls_creds: Option<PathBuf>,
    pub api_tls: Option<String>,
    pub storage_io: Option<qcow2::StorageIo>,
    /// `--trust-loopback-gui`: only ever turns the mode on.
    pub trust_loopback_gui: bool,
}

impl FileConfig {
    pub fn load(path: &Path) -> Result<FileConfig> {
        let text = std::fs::read_to_string(path)
            .map_err(Error::io(format!("reading {}", path.display())))?;
        toml::from_str(&text).map_err(|e| Error::Config(format!("{}: {e}", path.display())))
    }
}

/// `max_in_flight_mib` in bytes. Past the address space it would mean "unbounded", which this
/// key never means.
fn mib(value: Option<u64>) -> Result<Option<usize>> {
    value
        .map(|mib| {
            usize::try_from(mib)
                .ok()
                .and_then(|m| m.checked_mul(1 << 20))
                .ok_or_else(|| Error::Config("max_in_flight_mib is too large".into()))
        })
        .transpose()
}

/// `off` (the default) or `on`.
fn on_off(key: &str, value: Option<&str>) -> Result<bool> {
    match value {
        None | Some("off") => Ok(false),
        Some("on") => Ok(true),
        Some(other) => Err(Error::Config(format!(
            "{key} must be off or on, not {other:?}"
        ))),
    }
}

/// A number of days from the file: 1 to 100 years.
fn days(key: &str, value: Option<u64>) -> Result<Option<Duration>> {
    match value {
        Some(n) if (1..=36_500).contains(&n) => Ok(Some(Duration::from_secs(n * 86_400))),
        Some(_) => Err(Error::Config(format!("{key} must be 1 to 36500"))),
        None => Ok(None),
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
            credential_key: flags.credential_key,
            sna_url: flags.sna_url.or(file.sna_url).unwrap_or(d.sna_url),
            sna_timeout: file.sna_timeout_secs.map(secs).unwrap_or(d.sna_timeout),
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
            mount_idle_timeout: file
                .mount_idle_timeout_secs
                .map(secs)
                .unwrap_or(d.mount_idle_timeout),
            max_mounts: file.max_mounts.unwrap_or(d.max_mounts),
            shutdown_grace: file
                .shutdown_grace_secs
                .map(secs)
                .unwrap_or(d.shutdown_grace),
            max_connections_per_export: file
                .max_connections_per_export
                .unwrap_or(d.max_connections_per_export),
            max_concurrent_flow_backups: file
                .max_concurrent_flow_backups
                .unwrap_or(d.max_concurrent_flow_backups),
            max_in_flight_bytes: mib(file.max_in_flight_mib)?.unwrap_or(d.max_in_flight_bytes),
            tls: match flags.tls.or(file.tls) {
                Some(mode) => mode.parse().map_err(Error::Config)?,
                None => d.tls,
            },
            tls_creds: flags.tls_creds.or(file.tls_creds),
            tls_verify_peer: file.tls_verify_peer.unwrap_or(d.tls_verify_peer),
            api_tls: on_off("api_tls", flags.api_tls.or(file.api_tls).as_deref())?,
            api_tls_creds: file.api_tls_creds,
            storage_io: match (flags.storage_io, file.storage_io) {
                (Some(io), _) => io,
                (None, Some(s)) => s.parse().map_err(Error::Config)?,
                (None, None) => d.storage_io,
            },
            nbd_io_timeout: secs_or(file.nbd_io_timeout_secs, d.nbd_io_timeout),
            nbd_payload_stall_timeout: secs_or(
                file.nbd_payload_stall_secs,
                d.nbd_payload_stall_timeout,
            ),
            api_max_connections: file.api_max_connections.unwrap_or(d.api_max_connections),
            api_idle_timeout: secs_or(file.api_idle_timeout_secs, d.api_idle_timeout),
            api_body_timeout: secs_or(file.api_body_timeout_secs, d.api_body_timeout),
            failed_backup_retention: days(
                "failed_backup_retention_days",
                file.failed_backup_retention_days,
            )?
            .unwrap_or(d.failed_backup_retention),
            verify_outdated_after: days(
                "verify_outdated_after_days",
                file.verify_outdated_after_days,
            )?,
            gui_trust_loopback: flags.trust_loopback_gui
                || file.gui_trust_loopback.unwrap_or(d.gui_trust_loopback),
        };
        config.validate()?;
        Ok(config)
    }

    pub fn validate(&self) -> Result<()> {
        if self.stale_after.is_zero() {
            return Err(Error::Config("stale_after must be positive".into()));
        }
        if self.sna_timeout.is_zero() {
            return Err(Error::Config("sna_timeout_secs must be positive".into()));
        }
        crate::sys::sna::check_url(&self.sna_url)?;
        if self.monitor_interval.is_zero() {
            return Err(Error::Config("monitor_interval must be positive".into()));
        }
        if !(1..=10_000).contains(&self.max_concurrent_flow_backups) {
            return Err(Error::Config(
                "max_concurrent_flow_backups must be 1 to 10000".into(),
            ));
        }
        if !(1..=1024).contains(&self.max_mounts) || self.mount_idle_timeout.is_zero() {
            return Err(Error::Config(
                "max_mounts must be 1 to 1024 and mount_idle_timeout_secs positive".into(),
            ));
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
        if self.nbd_io_timeout.is_zero() || self.nbd_payload_stall_timeout.is_zero() {
            return Err(Error::Config(
                "nbd_io_timeout_secs and nbd_payload_stall_secs must be positive".into(),
            ));
        }
        if self.max_in_flight_bytes == 0 {
            return Err(Error::Config("max_in_flight_mib must be positive".into()));
        }
        if self.tls != TlsMode::Off && self.tls_creds.is_none() {
            return Err(Error::Config(format!("tls = {} needs tls_creds", self.tls)));
        }
        if self.api_tls && self.api_tls_creds.is_none() && self.tls_creds.is_none() {
            return Err(Error::Config(
                "api_tls = on needs api_tls_creds or tls_creds".into(),
            ));
        }
        if let Some(token) = &self.api_token {
            crate::sys::token::check_length(token.trim(), crate::sys::token::CONFIGURED)?;
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
        assert_eq!(c.nbd_listen, "127.0.0.1:10100");
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
        // The example states the defaults of the NBD stall timeout.
        assert_eq!(c.nbd_payload_stall_timeout, Duration::from_secs(10));
        assert_eq!(
            c.nbd_payload_stall_timeout,
            Config::default().nbd_payload_stall_timeout
        );
        let file: FileConfig = toml::from_str("nbd_payload_stall_secs = 0").unwrap();
        assert!(Config::resolve(file, Overrides::default()).is_err());
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
    fn tls_keys_parse_and_need_credentials() {
        let file: FileConfig =
            toml::from_str("tls = \"require\"\ntls_creds = \"/etc/hub/tls\"\napi_tls = \"on\"\n")
                .unwrap();
        let c = Config::resolve(file, Overrides::default()).unwrap();
        assert_eq!(c.tls, TlsMode::Require);
        assert!(c.api_tls);
        for (text, want) in [
            ("tls = \"on\"", "needs tls_creds"),
            ("api_tls = \"on\"", "needs api_tls_creds"),
            ("tls = \"yes\"", "off, on or require"),
            ("api_tls = \"require\"", "off or on"),
        ] {
            let file: FileConfig = toml::from_str(text).unwrap();
            let err = Config::resolve(file, Overrides::default()).unwrap_err();
            assert!(err.to_string().contains(want), "{text}: {err}");
        }
    }

    #[test]
    fn storage_io_comes_from_flag_or_file() {
        let file: FileConfig = toml::from_str("storage_io = \"buffered\"").unwrap();
        let c = Config::resolve(file, Overrides::default()).unwrap();
        assert_eq!(c.storage_io, qcow2::StorageIo::Buffered);
        let file: FileConfig = toml::from_str("storage_io = \"buffered\"").unwrap();
        let flags = Overrides {
            storage_io: Some(qcow2::StorageIo::Direct),
            ..Overrides::default()
        };
        assert_eq!(
            Config::resolve(file, flags).unwrap().storage_io,
            qcow2::StorageIo::Direct
        );
        assert_eq!(
            Config::resolve(FileConfig::default(), Overrides::default())
                .unwrap()
                .storage_io,
            qcow2::StorageIo::Auto
        );
        let bad: FileConfig = toml::from_str("storage_io = \"fast\"").unwrap();
        let err = Config::resolve(bad, Overrides::default()).unwrap_err();
        assert!(err.to_string().contains("storage I/O"), "{err}");
    }

    #[test]
    fn in_flight_budget_is_read_in_mib() {
        let file: FileConfig = toml::from_str("max_in_flight_mib = 512").unwrap();
        let c = Config::resolve(file, Overrides::default()).unwrap();
        assert_eq!(c.max_in_flight_bytes, 512 << 20);
    }
}
