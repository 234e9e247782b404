//! `sendense-hub serve` as a library function: tests call it with bound listeners and a token.

use std::net::SocketAddr;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::error::{Error, Result};
use crate::state::Hub;

/// Open the hub and start its NBD server and lifecycle clock on the NBD listener. The API is
/// served by the caller (see [`serve`]); tests drive [`crate::api::app`] directly.
pub async fn start(config: Config, nbd: TcpListener, shutdown: CancellationToken) -> Result<Hub> {
    let nbd_addr = nbd
        .local_addr()
        .map_err(Error::io("NBD listener address"))?;
    let hub = Hub::open(config, nbd_addr).await?;
    let server = hub.nbd.clone();
    let stop = shutdown.clone();
    tokio::spawn(async move {
        if let Err(err) = server.serve_tcp(nbd, stop.clone()).await {
            tracing::error!(%err, "NBD listener failed; shutting down");
            stop.cancel();
        }
    });
    let monitor = hub.clone();
    tokio::spawn(async move { monitor.monitor(shutdown).await });
    tracing::info!(nbd = %nbd_addr, "NBD server listening");
    Ok(hub)
}

/// Run the hub until `shutdown` is cancelled, then stop the listeners, let in-flight requests
/// finish (bounded by the configured grace), flush every image and return.
pub async fn serve(
    config: Config,
    api: TcpListener,
    nbd: TcpListener,
    shutdown: CancellationToken,
) -> Result<()> {
    let grace = config.shutdown_grace;
    let hub = start(config, nbd, shutdown.clone()).await?;
    let api_addr = api
        .local_addr()
        .map_err(Error::io("API listener address"))?;
    let app = crate::api::app(hub.clone()).into_make_service_with_connect_info::<SocketAddr>();
    let stop = shutdown.clone();
    let mut http = tokio::spawn(async move {
        axum::serve(api, app)
            .with_graceful_shutdown(async move { stop.cancelled().await })
            .await
    });
    tracing::info!(api = %api_addr, "API listening");
    crate::notify::ready();

    let finished = tokio::select! {
        res = &mut http => Some(res),
        _ = shutdown.cancelled() => None,
    };
    let finished = match finished {
        Some(res) => res,
        None => match tokio::time::timeout(grace, &mut http).await {
            Ok(res) => res,
            Err(_) => {
                tracing::warn!("HTTP requests still running after the grace period; dropping them");
                http.abort();
                Ok(Ok(()))
            }
        },
    };
    shutdown.cancel();
    hub.shutdown().await;
    tracing::info!("hub stopped");
    finished
        .map_err(|e| Error::Internal(format!("HTTP task: {e}")))?
        .map_err(Error::io("HTTP server"))
}
