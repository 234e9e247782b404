//! Command-line interface: argument definitions and one function per subcommand.

mod catalog;
mod inspect;
mod merge;
mod rotate;
mod serve;
mod serve_image;
mod tls;

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

#[derive(Debug, Parser)]
#[command(
    name = "sendense-hub",
    version,
    about = "Receives VM disks over NBD and stores them as QCOW2 backups"
)]
pub struct Cli {
    /// Log as JSON lines instead of human-readable text.
    #[arg(long, global = true, env = "SENDENSE_HUB_LOG_JSON")]
    pub log_json: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the hub: REST API, catalog and NBD server.
    Serve(serve::ServeArgs),
    /// Serve one QCOW2 image over NBD (a qemu-nbd replacement).
    ServeImage(serve_image::ServeImageArgs),
    /// Check an image's consistency (exit 0 clean, 3 leaks only, 2 corrupt, 1 check failed).
    Check(inspect::CheckArgs),
    /// Print an image's format, sizes and backing chain.
    Info(inspect::InfoArgs),
    /// Merge an image's backing file into it, for images outside the hub's catalog.
    #[command(long_about = merge::LONG_ABOUT)]
    Merge(merge::MergeArgs),
    /// TLS credentials.
    #[command(subcommand)]
    Tls(tls::TlsCommand),
    /// Re-encrypt every stored vCenter password under a new credential key (hub stopped).
    RotateCredentialKey(rotate::RotateArgs),
    /// Catalog maintenance (the hub must be stopped).
    Catalog(catalog::CatalogArgs),
}

pub fn init_logging(json: bool) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    if json {
        builder.json().init();
    } else {
        builder.fmt_fields(hub::sys::logfmt::EscapedFields).init();
    }
}

pub fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Serve(args) => runtime()?
            .block_on(serve::run(args))
            .map(|()| ExitCode::SUCCESS),
        Command::ServeImage(args) => {
            let rt = runtime()?;
            let served = rt.block_on(serve_image::run(args));
            // Do not wait for an image open still blocked in the kernel (see OPEN_TIMEOUT).
            rt.shutdown_background();
            served.map(|()| ExitCode::SUCCESS)
        }
        Command::Check(args) => inspect::check(&args),
        Command::Info(args) => inspect::info(&args).map(|()| ExitCode::SUCCESS),
        Command::Merge(args) => merge::run(&args).map(|()| ExitCode::SUCCESS),
        Command::Tls(command) => tls::run(command).map(|()| ExitCode::SUCCESS),
        Command::RotateCredentialKey(args) => rotate::run(&args).map(|()| ExitCode::SUCCESS),
        Command::Catalog(args) => catalog::run(args),
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    use hub::sys::threads;
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads::workers(threads::cores()))
        .max_blocking_threads(threads::BLOCKING_THREADS)
        .enable_all()
        .build()?)
}

/// A token cancelled by the first SIGTERM or SIGINT.
pub fn shutdown_on_signal() -> anyhow::Result<CancellationToken> {
    use tokio::signal::unix::{SignalKind, signal};
    let token = CancellationToken::new();
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let cancel = token.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
            _ = int.recv() => tracing::info!("SIGINT: shutting down"),
        }
        cancel.cancel();
    });
    Ok(token)
}
