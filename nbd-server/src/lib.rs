//! NBD server: a pure protocol codec (`proto`, no I/O) and a tokio server over the [`Export`] trait.
//! Knows nothing about QCOW2.
//!
//! This file is the public contract the hub builds against. Behind it:
//! - `proto`: the wire format as data (handshake, requests, replies); no I/O, lengths checked
//!   before anything is sized by them.
//! - `server`: listeners' connections from accept to close; `negotiate`: option haggling on a
//!   socket; `connection`: the transmission phase (one reader, a task per request, one writer).
//! - `command`: what a request means (validation), running it against the export, and the bytes
//!   of its reply; `errno`: export errors to NBD errors, in one place.
//! - `registry`: named exports, their figures, and the connections attached to each.
//! - `tls`: STARTTLS credentials (qemu's x509 directory layout), policy, and the plain-or-TLS stream.
#![forbid(unsafe_code)]
#![deny(clippy::too_many_lines)]

mod admission;
mod budget;
mod bufpool;
mod command;
mod connection;
mod errno;
#[doc(hidden)]
pub mod fuzzing;
mod negotiate;
pub mod proto;
mod registry;
mod server;
pub mod tls;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;

/// Why an export operation failed; mapped to an NBD errno in exactly one place.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum ExportError {
    #[error("I/O error: {0}")]
    Io(String),
    #[error("no space")]
    NoSpace,
    #[error("invalid argument: {0}")]
    Invalid(String),
    #[error("not supported")]
    NotSupported,
    #[error("read-only export")]
    ReadOnly,
    #[error("shutting down")]
    Shutdown,
}

/// One run of the export with the same status (for `base:allocation` and `qemu:allocation-depth`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    pub length: u64,
    /// Not allocated (NBD_STATE_HOLE).
    pub hole: bool,
    /// Reads as zeroes (NBD_STATE_ZERO).
    pub zero: bool,
    /// Depth in the backing chain supplying the bytes; 0 = unallocated anywhere.
    pub depth: u32,
}

/// What an NBD export is. All methods take `&self`: many requests run at once.
#[async_trait::async_trait]
pub trait Export: Send + Sync + 'static {
    /// Size in bytes.
    fn size(&self) -> u64;
    fn read_only(&self) -> bool;
    /// Advertised in NBD_INFO_BLOCK_SIZE as the preferred size.
    fn preferred_block_size(&self) -> u32 {
        4096
    }
    /// Address alignment WRITE payload buffers should have, so the export can hand them to its
    /// storage without a copy (direct I/O wants aligned buffers). A power of two; 1 = any.
    fn buffer_alignment(&self) -> usize {
        1
    }
    async fn read(&self, offset: u64, len: u32) -> Result<Bytes, ExportError>;
    /// `fua`: durable before returning.
    async fn write(&self, offset: u64, data: Bytes, fua: bool) -> Result<(), ExportError>;
    /// `may_trim`: clusters may be deallocated (no NO_HOLE flag). `fast_only`: fail with
    /// `NotSupported` unless zeroing is cheap (FAST_ZERO).
    async fn write_zeroes(
        &self,
        offset: u64,
        len: u64,
        may_trim: bool,
        fast_only: bool,
        fua: bool,
    ) -> Result<(), ExportError>;
    async fn trim(&self, offset: u64, len: u64, fua: bool) -> Result<(), ExportError>;
    async fn flush(&self) -> Result<(), ExportError>;
    /// Extents covering at least the start of `[offset, offset+len)`, in order, none of length 0.
    async fn block_status(&self, offset: u64, len: u64) -> Result<Vec<Extent>, ExportError>;
    async fn cache(&self, _offset: u64, _len: u64) -> Result<(), ExportError> {
        Ok(())
    }
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Connections past the handshake, over all exports.
    pub max_connections: usize,
    pub max_connections_per_export: usize,
    /// Handshakes in progress (TLS handshakes included); when full, a new connection is still
    /// let in and the oldest handshake of the address holding the most is dropped, so clients
    /// that connect and stay silent cannot lock others out, nor one address push out another's.
    pub max_handshakes: usize,
    pub handshake_timeout: Duration,
    /// Longest wait for the next byte of a request's payload. A client that stops sending
    /// mid-payload is disconnected (and the little budget it held released); one that is slow
    /// but keeps sending is not.
    pub payload_stall_timeout: Duration,
    /// Time the client gets to take a batch of replies off the socket. A client that stops
    /// reading is disconnected and the READ data it pinned is released.
    pub reply_timeout: Duration,
    /// Largest WRITE payload / READ length accepted; advertised as the maximum block size.
    pub max_payload: u32,
    /// Bytes of request payloads a connection may hold in flight before it stops reading.
    pub max_in_flight_bytes_per_connection: usize,
    /// Bytes of request payloads (WRITE data, READ replies) all connections of the server may hold
    /// in flight together; bounds the server's memory whatever the number of connections. A
    /// READ takes its share before it runs, a WRITE as its payload arrives; one payload at a time
    /// may finish past the budget, so the bound is this plus one `max_payload`. A request larger
    /// than this takes the whole budget, so it still runs (alone).
    pub max_in_flight_bytes_total: usize,
    /// Whether NBD_OPT_LIST reveals export names.
    pub list_exports: bool,
    /// STARTTLS: offered or required when set; refused (NBD_REP_ERR_POLICY) when `None`.
    pub tls: Option<tls::Tls>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            max_connections: 256,
            max_connections_per_export: 16,
            max_handshakes: 64,
            handshake_timeout: Duration::from_secs(10),
            // Long enough for a few TCP retransmissions on a bad link, short enough that a
            // stalled client gives back its connection slot soon.
            payload_stall_timeout: Duration::from_secs(10),
            reply_timeout: Duration::from_secs(60),
            max_payload: 64 << 20,
            max_in_flight_bytes_per_connection: 128 << 20,
            max_in_flight_bytes_total: 128 << 20,
            list_exports: false,
            tls: None,
        }
    }
}

/// Live figures of one export, polled by the hub for progress.
#[derive(Debug, Clone, Default)]
pub struct ExportStats {
    pub connections: usize,
    pub total_connections: u64,
    pub bytes_written: u64,
    pub bytes_read: u64,
    pub last_activity: Option<SystemTime>,
}

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("export {0:?} already exists")]
    ExportExists(String),
    #[error("no export {0:?}")]
    NoSuchExport(String),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// One NBD server: a registry of named exports served on any number of listeners.
#[derive(Clone)]
pub struct Server {
    shared: Arc<server::Shared>,
}

impl Server {
    pub fn new(config: ServerConfig) -> Self {
        Self {
            shared: Arc::new(server::Shared::new(config)),
        }
    }

    pub fn add_export(&self, name: &str, export: Arc<dyn Export>) -> Result<(), ServerError> {
        let entry = self.shared.new_entry(name, export);
        if self.shared.registry.insert(entry) {
            tracing::info!(export = name, "export added");
            Ok(())
        } else {
            Err(ServerError::ExportExists(name.to_owned()))
        }
    }

    /// Stop new connections to `name`; let open ones finish for up to `grace`, then close them;
    /// flush the export if writable. Returns when the export is gone.
    pub async fn remove_export(&self, name: &str, grace: Duration) -> Result<(), ServerError> {
        let entry = self
            .shared
            .registry
            .remove(name)
            .ok_or_else(|| ServerError::NoSuchExport(name.to_owned()))?;
        entry.mark_removed();
        entry.connections.close();
        if tokio::time::timeout(grace, entry.connections.wait())
            .await
            .is_err()
        {
            tracing::info!(export = name, "grace period over, closing connections");
            entry.hard_stop.cancel();
            entry.connections.wait().await;
        }
        if !entry.export.read_only()
            && let Err(e) = entry.export.flush().await
        {
            tracing::error!(export = name, error = %e, "flush on removal failed");
        }
        tracing::info!(export = name, "export removed");
        Ok(())
    }

    /// Refuse new connections to an export, keeping it and its figures (and the connections it
    /// has) until [`Server::remove_export`].
    pub fn close_export(&self, name: &str) -> Result<(), ServerError> {
        let entry = self
            .shared
            .registry
            .get(name)
            .ok_or_else(|| ServerError::NoSuchExport(name.to_owned()))?;
        entry.mark_removed();
        Ok(())
    }

    pub fn export_stats(&self, name: &str) -> Option<ExportStats> {
        self.shared.registry.get(name).map(|e| e.stats())
    }

    pub fn export_names(&self) -> Vec<String> {
        self.shared.registry.names()
    }

    /// Accept until `shutdown` is cancelled.
    pub async fn serve_tcp(
        &self,
        listener: tokio::net::TcpListener,
        shutdown: tokio_util::sync::CancellationToken,
    ) -> Result<(), ServerError> {
        loop {
            let accepted = tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = self.shared.stop_reading.cancelled() => break,
                r = listener.accept() => r,
            };
            match accepted {
                Ok((stream, peer)) => {
                    // Replies are written whole; delaying small ones only adds latency.
                    if let Err(e) = stream.set_nodelay(true) {
                        tracing::warn!(%peer, error = %e, "cannot set TCP_NODELAY");
                    }
                    // Finds clients that vanished without a FIN (a dropped tunnel).
                    let keepalive = socket2::TcpKeepalive::new()
                        .with_time(Duration::from_secs(60))
                        .with_interval(Duration::from_secs(10));
                    let _ = socket2::SockRef::from(&stream).set_tcp_keepalive(&keepalive);
                    self.shared.spawn_connection(stream, peer.to_string());
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(server::ACCEPT_BACKOFF).await;
                }
            }
        }
        Ok(())
    }

    pub async fn serve_unix(
        &self,
        listener: tokio::net::UnixListener,
        shutdown: tokio_util::sync::CancellationToken,
    ) -> Result<(), ServerError> {
        loop {
            let accepted = tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = self.shared.stop_reading.cancelled() => break,
                r = listener.accept() => r,
            };
            match accepted {
                Ok((stream, _)) => self.shared.spawn_connection(stream, "unix".to_owned()),
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(server::ACCEPT_BACKOFF).await;
                }
            }
        }
        Ok(())
    }

    /// After the listeners stopped: finish or fail (ESHUTDOWN) what is in flight, close every
    /// connection and flush every writable export.
    pub async fn shutdown(&self, grace: Duration) {
        let shared = &self.shared;
        shared.stop_reading.cancel();
        shared.tracker.close();
        if tokio::time::timeout(grace, shared.tracker.wait())
            .await
            .is_err()
        {
            tracing::info!("grace period over, failing what is still in flight");
            shared.hard_stop.cancel();
            shared.tracker.wait().await;
        }
        for entry in shared.registry.all() {
            if !entry.export.read_only()
                && let Err(e) = entry.export.flush().await
            {
                tracing::error!(export = entry.name, error = %e, "flush at shutdown failed");
            }
        }
    }
}
