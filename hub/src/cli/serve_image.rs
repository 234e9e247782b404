//! `sendense-hub serve-image`: one image, one export, until SIGTERM.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use hub::export::ImageExport;
use hub::sys::size::parse_size;
use nbd_server::{Server, ServerConfig, ServerError};
use qcow2::{CreateOptions, Image, OpenOptions};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// How long open connections get to finish their requests after SIGTERM.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// Longest an image (with its backing chain) may take to open.
pub(crate) const OPEN_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, clap::Args)]
pub struct ServeImageArgs {
    /// TCP address to listen on.
    #[arg(long, value_name = "ADDR", conflicts_with = "socket")]
    listen: Option<String>,
    /// Unix socket to listen on instead of TCP.
    #[arg(long, value_name = "PATH")]
    socket: Option<PathBuf>,
    /// Export name (default: the empty name).
    #[arg(long, default_value = "")]
    name: String,
    #[arg(long)]
    read_only: bool,
    /// Create a new image of this virtual size (K, M, G, T suffixes) before serving.
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    create: Option<u64>,
    /// Cluster size of the created image.
    #[arg(long, value_name = "BYTES", value_parser = parse_size, requires = "create")]
    cluster_size: Option<u64>,
    /// Backing file of the created image (a QCOW2).
    #[arg(long, value_name = "FILE", requires = "create")]
    backing: Option<PathBuf>,
    /// Open the image's backing chain wherever its files are. Without it (and without
    /// `--backing`) every file of the chain must be in the image's directory: a backing file
    /// named by an untrusted image is not opened elsewhere.
    #[arg(long)]
    allow_backing: bool,
    /// Connections the export accepts at once.
    #[arg(long, value_name = "N", default_value_t = 64,
          value_parser = clap::value_parser!(u32).range(1..=4096))]
    max_connections: u32,
    /// Request payload bytes (WRITE data, READ replies) held in memory at once over all
    /// connections (K, M, G suffixes); bounds the server's memory.
    #[arg(long, value_name = "SIZE", value_parser = parse_size, default_value = "128M")]
    max_in_flight: u64,
    #[command(flatten)]
    tls: super::tls::NbdTlsArgs,
    /// Image file I/O: auto (direct I/O except on tmpfs), direct or buffered.
    #[arg(long, value_name = "MODE", default_value = "auto")]
    storage_io: qcow2::StorageIo,
    image: PathBuf,
}

pub async fn run(args: ServeImageArgs) -> anyhow::Result<()> {
    let shutdown = super::shutdown_on_signal()?;
    if let Some(size) = args.create {
        create(&args, size)?;
    }
    let image = Arc::new(open(&args, &shutdown).await?);
    let (server, scheme) = export_server(&args, &image)?;
    let serving = listen(&args, &server, scheme, &shutdown).await?;

    let served = serving.await;
    shutdown.cancel();
    server.shutdown(SHUTDOWN_GRACE).await;
    if let Err(err) = server.remove_export(&args.name, Duration::ZERO).await {
        tracing::debug!(%err, "export already gone after shutdown");
    }
    drop(server);
    if let Some(socket) = &args.socket {
        let _ = std::fs::remove_file(socket);
    }
    close(image).await?;
    served?.context("NBD server")?;
    tracing::info!("image flushed, exiting");
    Ok(())
}

/// Open the image with its backing chain, confined to the image's directory unless trusted.
async fn open(args: &ServeImageArgs, shutdown: &CancellationToken) -> anyhow::Result<Image> {
    let trusted = args.allow_backing || args.backing.is_some();
    let opts = OpenOptions {
        writable: !args.read_only,
        open_backing: true,
        storage_io: args.storage_io,
        backing_dir: (!trusted).then(|| image_dir(&args.image)),
        ..OpenOptions::default()
    };
    let path = args.image.clone();
    let opening = tokio::task::spawn_blocking(move || Image::open(&path, &opts));
    // An open stuck in the kernel (a dead network filesystem) must not outlive SIGTERM or hang
    // for ever; the blocked thread is abandoned when the process exits.
    tokio::select! {
        _ = shutdown.cancelled() => bail!("stopped while opening {}", args.image.display()),
        r = tokio::time::timeout(OPEN_TIMEOUT, opening) => match r {
            Ok(joined) => joined?,
            Err(_) => bail!("opening {} took longer than {OPEN_TIMEOUT:?}", args.image.display()),
        },
    }
    .with_context(|| format!("opening {}", args.image.display()))
}

/// The NBD server with the image's export, and the URI scheme it is reached by.
fn export_server(
    args: &ServeImageArgs,
    image: &Arc<Image>,
) -> anyhow::Result<(Server, &'static str)> {
    if args.max_in_flight == 0 {
        bail!("--max-in-flight must be positive");
    }
    let max_in_flight = usize::try_from(args.max_in_flight).unwrap_or(usize::MAX);
    let tls = args.tls.load()?;
    let scheme = if tls.is_some() { "nbds" } else { "nbd" };
    let defaults = ServerConfig::default();
    let server = Server::new(ServerConfig {
        list_exports: true,
        max_connections: args.max_connections as usize,
        max_connections_per_export: args.max_connections as usize,
        max_in_flight_bytes_total: max_in_flight,
        max_in_flight_bytes_per_connection: defaults
            .max_in_flight_bytes_per_connection
            .min(max_in_flight),
        tls,
        ..defaults
    });
    let mut export = ImageExport::new(Arc::clone(image));
    if args.read_only {
        export = export.read_only();
    }
    server.add_export(&args.name, Arc::new(export))?;
    Ok((server, scheme))
}

/// Bind the Unix socket or TCP address, say where the export is, and serve until `shutdown`.
async fn listen(
    args: &ServeImageArgs,
    server: &Server,
    scheme: &str,
    shutdown: &CancellationToken,
) -> anyhow::Result<JoinHandle<Result<(), ServerError>>> {
    let server = server.clone();
    let shutdown = shutdown.clone();
    if let Some(socket) = &args.socket {
        remove_stale_socket(socket)?;
        let listener = tokio::net::UnixListener::bind(socket)
            .with_context(|| format!("binding {}", socket.display()))?;
        announce(&format!(
            "{scheme}+unix:///{}?socket={}",
            args.name,
            socket.display()
        ));
        Ok(tokio::spawn(async move {
            server.serve_unix(listener, shutdown).await
        }))
    } else {
        let addr = args.listen.as_deref().unwrap_or("127.0.0.1:10809");
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding {addr}"))?;
        announce(&format!(
            "{scheme}://{}/{}",
            listener.local_addr()?,
            args.name
        ));
        Ok(tokio::spawn(async move {
            server.serve_tcp(listener, shutdown).await
        }))
    }
}

/// The directory holding `image`, where its backing chain must stay unless trusted.
fn image_dir(image: &Path) -> PathBuf {
    match image.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

fn create(args: &ServeImageArgs, size: u64) -> anyhow::Result<()> {
    if args.image.exists() {
        bail!("--create: {} already exists", args.image.display());
    }
    let mut opts = CreateOptions {
        size,
        storage_io: args.storage_io,
        ..CreateOptions::default()
    };
    if let Some(cluster_size) = args.cluster_size {
        opts.cluster_size = u32::try_from(cluster_size).context("--cluster-size too large")?;
    }
    if let Some(backing) = &args.backing {
        opts.backing_file = Some(backing.clone());
        opts.backing_format = Some("qcow2".to_owned());
    }
    Image::create(&args.image, &opts)
        .with_context(|| format!("creating {}", args.image.display()))?;
    tracing::info!(image = %args.image.display(), size, "image created");
    Ok(())
}

/// Print where the export is on stdout, so scripts and tests learn an ephemeral port.
fn announce(uri: &str) {
    use std::io::Write;
    tracing::info!(%uri, "serving");
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{uri}");
    let _ = out.flush();
}

fn remove_stale_socket(path: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::FileTypeExt;
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => Ok(std::fs::remove_file(path)?),
        Ok(_) => bail!("{} exists and is not a socket", path.display()),
        Err(_) => Ok(()),
    }
}

async fn close(image: Arc<Image>) -> anyhow::Result<()> {
    tokio::task::spawn_blocking(move || match Arc::try_unwrap(image) {
        Ok(image) => image.close(),
        // Something still holds the image (a connection task that has not dropped yet): flushing
        // is what makes the data durable; the file is released when the last holder goes.
        Err(shared) => shared.flush(),
    })
    .await?
    .context("closing image")
}
