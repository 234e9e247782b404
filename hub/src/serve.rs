//! `sendense-hub serve` as a library function: tests call it with bound listeners and a token.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::Request;
use axum::response::Response;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use hyper_util::service::TowerToHyperService;
use nbd_server::tls::rustls;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use crate::api::http_conn::{Connections, DeadlineBody, Tracked};
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
    let scheduler = (hub.clone(), shutdown.clone());
    let verify = (hub.clone(), shutdown.clone());
    let copies = (hub.clone(), shutdown.clone());
    tokio::spawn(async move { monitor.monitor(shutdown).await });
    tokio::spawn(async move { scheduler.0.scheduler(scheduler.1).await });
    tokio::spawn(async move { verify.0.verify_clock(verify.1).await });
    tokio::spawn(async move { copies.0.copy_clock(copies.1).await });
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
    if config.gui_trust_loopback {
        tracing::warn!(
            listen = %config.api_listen,
            "gui_trust_loopback is on: every request from a loopback address is served on every \
             route without a token, so every process and user on this host, and whatever the \
             SNA's SSH tunnel forwards here, can do what the operator can"
        );
    }
    let api_tls = match (config.api_tls, &config.api_tls_creds, &config.tls_creds) {
        (true, Some(creds), _) | (true, None, Some(creds)) => {
            Some(crate::sys::tls::api_tls(creds)?)
        }
        _ => None,
    };
    let connections = Connections::new(crate::api::http_conn::Limits {
        max_connections: config.api_max_connections,
        idle_timeout: config.api_idle_timeout,
        body_timeout: config.api_body_timeout,
    });
    let hub = start(config, nbd, shutdown.clone()).await?;
    let api_addr = api
        .local_addr()
        .map_err(Error::io("API listener address"))?;
    let app = crate::api::app(hub.clone());
    let https = api_tls.is_some();
    let mut http = tokio::spawn(serve_http(api, app, api_tls, connections, shutdown.clone()));
    tracing::info!(api = %api_addr, https, "API listening");
    crate::sys::notify::ready();

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

/// Longest a client may take to send the head of an HTTP/1 request. `axum::serve` sets no timer,
/// so a client that connects and stays silent (or trickles bytes) would hold its connection and
/// task forever.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Pause after a failed accept (out of file descriptors, usually) before the next try.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// `axum::serve` with a header read timeout and the limits of [`crate::api::http_conn`]: accept until
/// `stop`, serve each connection with hyper, then wait for the open ones to finish their requests.
async fn serve_http(
    listener: TcpListener,
    app: Router,
    tls: Option<Arc<rustls::ServerConfig>>,
    connections: Connections,
    stop: CancellationToken,
) -> std::io::Result<()> {
    let connections = std::sync::Arc::new(connections);
    let limits = connections.limits();
    let mut refused: u64 = 0;
    let tls = tls.map(tokio_rustls::TlsAcceptor::from);
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    let graceful = GracefulShutdown::new();
    while let Some((stream, peer)) = accept(&listener, &stop).await {
        let Some(slot) = connections.admit() else {
            // Every connection is running a request; logged once per power of two refused.
            refused += 1;
            if refused.is_power_of_two() {
                tracing::warn!(%peer, refused, "API connection refused: too many connections");
            }
            continue;
        };
        let activity = std::sync::Arc::clone(&slot.activity);
        // What `into_make_service_with_connect_info` does: the peer address for the handlers.
        let service = app
            .clone()
            .map_request(move |req: axum::http::Request<Incoming>| {
                let mut req =
                    req.map(|body| Body::new(DeadlineBody::new(body, limits.body_timeout)));
                req.extensions_mut().insert(ConnectInfo(peer));
                req
            })
            .map_future(move |response| {
                let busy = activity.busy();
                async move {
                    let response = response.await;
                    drop(busy);
                    response
                }
            });
        let io = Tracked::new(stream, std::sync::Arc::clone(&slot.activity));
        let service = TowerToHyperService::new(service);
        let (tls, builder, watcher) = (tls.clone(), builder.clone(), graceful.watcher());
        tokio::spawn(async move {
            tokio::select! {
                () = serve_connection(io, service, tls, builder, watcher, peer) => {}
                _ = slot.activity.expired(limits.idle_timeout) => {
                    tracing::debug!(%peer, "API connection idle or pushed out; closing");
                }
            }
            drop(slot);
        });
    }
    graceful.shutdown().await;
    Ok(())
}

/// The next connection, or `None` once `stop` is cancelled.
async fn accept(
    listener: &TcpListener,
    stop: &CancellationToken,
) -> Option<(TcpStream, SocketAddr)> {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return None,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => return Some(accepted),
                Err(err) => {
                    tracing::warn!(%err, "API accept failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
            },
        }
    }
}

/// One connection's requests, over TLS when `tls` is set, until the client or `watcher` ends it.
async fn serve_connection<S>(
    io: Tracked<TcpStream>,
    service: TowerToHyperService<S>,
    tls: Option<tokio_rustls::TlsAcceptor>,
    builder: Builder<TokioExecutor>,
    watcher: Watcher,
    peer: SocketAddr,
) where
    S: tower::Service<Request<Incoming>, Response = Response, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let ended = match tls {
        None => {
            let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
            watcher.watch(conn.into_owned()).await
        }
        // The TLS handshake runs in the connection's task, bounded like a request head (and by
        // the idle limit `serve_http` puts on that task: its bytes count as activity), so a
        // silent client holds neither the accept loop nor its task.
        Some(tls) => {
            let stream = match tokio::time::timeout(HEADER_READ_TIMEOUT, tls.accept(io)).await {
                Ok(Ok(stream)) => stream,
                Ok(Err(err)) => {
                    tracing::info!(%peer, %err, "API TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::info!(%peer, "API TLS handshake timed out");
                    return;
                }
            };
            let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
            watcher.watch(conn.into_owned()).await
        }
    };
    if let Err(err) = ended {
        tracing::debug!(%peer, %err, "API connection ended with an error");
    }
}
