//! `sendense-hub tls init`, and the NBD TLS flags `serve-image` shares.

use std::path::PathBuf;

use nbd_server::tls::{Tls, TlsMode};

/// STARTTLS for `serve-image`, as qemu-nbd's `--tls-creds` and nbdkit's `--tls`.
#[derive(Debug, clap::Args)]
pub struct NbdTlsArgs {
    /// x509 credentials directory: ca-cert.pem, server-cert.pem, server-key.pem (the layout of
    /// qemu's tls-creds-x509 and libnbd's tls-certificates; `sendense-hub tls init` writes one).
    #[arg(long, value_name = "DIR")]
    tls_creds: Option<PathBuf>,
    /// off, on (clients may stay in clear) or require [default: require with --tls-creds, else
    /// off].
    #[arg(long, value_name = "MODE", requires = "tls_creds")]
    tls: Option<TlsMode>,
    /// Clients must present a certificate signed by the directory's ca-cert.pem (mutual TLS).
    #[arg(long, requires = "tls_creds")]
    tls_verify_peer: bool,
}

impl NbdTlsArgs {
    /// The server's TLS, `None` when off.
    pub fn load(&self) -> anyhow::Result<Option<Tls>> {
        let mode = match (self.tls, &self.tls_creds) {
            (Some(mode), _) => mode,
            // As qemu-nbd: credentials given means nothing travels in clear.
            (None, Some(_)) => TlsMode::Require,
            (None, None) => TlsMode::Off,
        };
        Ok(hub::sys::tls::nbd_tls(
            mode,
            self.tls_creds.as_deref(),
            self.tls_verify_peer,
        )?)
    }
}

#[derive(Debug, clap::Subcommand)]
pub enum TlsCommand {
    /// Write a CA and a server certificate (qemu's layout) for a first start.
    Init(InitArgs),
}

#[derive(Debug, clap::Args)]
pub struct InitArgs {
    /// Directory to write ca-cert.pem, ca-key.pem, server-cert.pem, server-key.pem into.
    dir: PathBuf,
    /// Host name or address clients use to reach the hub; repeat for several [default:
    /// localhost, 127.0.0.1, ::1].
    #[arg(long = "host", value_name = "NAME")]
    hosts: Vec<String>,
}

pub fn run(command: TlsCommand) -> anyhow::Result<()> {
    match command {
        TlsCommand::Init(args) => {
            let hosts = if args.hosts.is_empty() {
                hub::sys::tls::DEFAULT_HOSTS.map(String::from).to_vec()
            } else {
                args.hosts
            };
            hub::sys::tls::init(&args.dir, &hosts)?;
            println!(
                "wrote a CA and a server certificate for {} to {}",
                hosts.join(", "),
                args.dir.display()
            );
            Ok(())
        }
    }
}
