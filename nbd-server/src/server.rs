//! Listeners and the life of one connection: accept, handshake under a time limit, transmission,
//! and the flush when the last connection to a writable export ends.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpStream, UnixStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::ServerConfig;
use crate::admission::{self, Admission, Ticket};
use crate::budget::Budget;
use crate::bufpool::BufPool;
use crate::connection::{self, ConnCtx};
use crate::negotiate;
use crate::registry::{ExportEntry, Registry};

/// State shared by the listeners and connections of one server.
pub(crate) struct Shared {
    pub config: ServerConfig,
    pub registry: Registry,
    /// Every connection task, from accept to close.
    pub tracker: TaskTracker,
    /// Shutdown, first step: stop accepting and reading; finish what is in flight.
    pub stop_reading: CancellationToken,
    /// Shutdown, second step (after the grace period): parent of every export's hard stop.
    pub hard_stop: CancellationToken,
    /// Handshake and connection slots (`max_handshakes`, `max_connections`, per address).
    admission: Arc<Admission>,
    /// Payload bytes in flight across all connections (`max_in_flight_bytes_total`).
    pub budget: Arc<Budget>,
    /// Idle payload buffers, shared so their total stays bounded however many connections come.
    pub pool: Arc<BufPool>,
}

/// A socket that splits into independently owned halves.
pub(crate) trait Split: AsyncRead + AsyncWrite + Unpin + Send + 'static {
    type Read: AsyncRead + Unpin + Send + 'static;
    type Write: AsyncWrite + Unpin + Send + 'static;
    fn split(self) -> (Self::Read, Self::Write);
}

impl Split for TcpStream {
    type Read = tokio::net::tcp::OwnedReadHalf;
    type Write = tokio::net::tcp::OwnedWriteHalf;
    fn split(self) -> (Self::Read, Self::Write) {
        self.into_split()
    }
}

impl Split for UnixStream {
    type Read = tokio::net::unix::OwnedReadHalf;
    type Write = tokio::net::unix::OwnedWriteHalf;
    fn split(self) -> (Self::Read, Self::Write) {
        self.into_split()
    }
}

impl Shared {
    pub fn new(config: ServerConfig) -> Self {
        Self {
            registry: Registry::default(),
            tracker: TaskTracker::new(),
            stop_reading: CancellationToken::new(),
            hard_stop: CancellationToken::new(),
            admission: Arc::new(Admission::new(admission::Limits {
                max_connections: config.max_connections,
                max_handshakes: config.max_handshakes,
            })),
            budget: Arc::new(Budget::new(config.max_in_flight_bytes_total)),
            pool: Arc::new(BufPool::new(
                config
                    .max_in_flight_bytes_total
                    .clamp(1, connection::MAX_POOLED_BYTES),
            )),
            config,
        }
    }

    pub fn new_entry(&self, name: &str, export: Arc<dyn crate::Export>) -> Arc<ExportEntry> {
        Arc::new(ExportEntry::new(name, export, self.hard_stop.child_token()))
    }

    /// Runs one accepted socket to its end, unless the server is full.
    pub fn spawn_connection<S: Split>(self: &Arc<Self>, stream: S, peer: String) {
        let addr = peer.parse::<std::net::SocketAddr>().ok().map(|a| a.ip());
        let ticket = match self.admission.admit(addr) {
            Ok(ticket) => ticket,
            Err(refusal) => {
                self.admission.log_refusal(refusal, &peer);
                return;
            }
        };
        let span = tracing::info_span!("nbd", %peer, export = tracing::field::Empty);
        let shared = Arc::clone(self);
        self.tracker.spawn(
            async move {
                run_connection(shared, stream, ticket).await;
            }
            .instrument(span),
        );
    }
}

async fn run_connection<S: Split>(shared: Arc<Shared>, stream: S, mut ticket: Ticket) {
    let mut stream = crate::tls::MaybeTls::Plain(stream);
    let limit = shared.config.handshake_timeout;
    let session = tokio::select! {
        _ = shared.stop_reading.cancelled() => return,
        _ = ticket.evicted.cancelled() => {
            tracing::debug!("handshake dropped to make room for a newer one");
            return;
        }
        r = tokio::time::timeout(limit, negotiate::negotiate(&mut stream, &shared)) => match r {
            Err(_) => {
                tracing::info!("handshake timed out");
                return;
            }
            Ok(Err(e)) => {
                tracing::info!(error = %e, "handshake failed");
                return;
            }
            Ok(Ok(None)) => {
                tracing::debug!("client ended the handshake");
                return;
            }
            Ok(Ok(Some(session))) => session,
        },
    };
    if let Err(refusal) = ticket.establish() {
        shared.admission.log_refusal(refusal, "after handshake");
        return;
    }
    let mut attachment = session.attachment;
    let entry = Arc::clone(attachment.entry());
    tracing::Span::current().record("export", entry.name.as_str());
    tracing::debug!(style = ?session.style, contexts = ?session.contexts, "transmission");
    let ctx = Arc::new(ConnCtx {
        entry: Arc::clone(&entry),
        style: session.style,
        contexts: session.contexts,
        max_payload: shared.config.max_payload,
        max_in_flight_bytes: shared.config.max_in_flight_bytes_per_connection,
        budget: Arc::clone(&shared.budget),
        pool: Arc::clone(&shared.pool),
        stop_reading: shared.stop_reading.clone(),
        payload_stall_timeout: shared.config.payload_stall_timeout,
        reply_timeout: shared.config.reply_timeout,
    });
    let (r, w) = stream.split();
    connection::serve(r, w, ctx).await;
    // Clients such as nbdcopy and the SNA never send FLUSH: their data becomes durable here.
    if attachment.leave() && !entry.export.read_only() {
        if let Err(e) = entry.export.flush().await {
            tracing::error!(error = %e, "flush after the last connection failed");
        }
    }
    drop(attachment);
    drop(ticket);
}

/// Pause after a failed accept (out of file descriptors, usually) before the next try.
pub(crate) const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
