//! The transmission phase on a socket: one reader that decodes requests and spawns a task per
//! request, tasks that run against the export, and one writer that sends their replies in
//! whatever order they finish.

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::budget::{Budget, Charge, Held};
use crate::bufpool::BufPool;
use crate::command::{self, Limits, MetaContext, Outcome};
use crate::proto::request::{HeaderStyle, Request};
use crate::proto::{EINVAL, ESHUTDOWN};
use crate::registry::ExportEntry;

/// Requests one connection may have in flight; the reader stops reading beyond this.
pub(crate) const MAX_REQUESTS_IN_FLIGHT: usize = 128;
/// A WRITE payload above the limit but at most this long is read and dropped, then refused with
/// EINVAL; anything longer closes the connection (reading it would only waste the link).
pub(crate) const MAX_DISCARD: u64 = 256 << 20;
/// The reader's buffer for headers; payloads are read into their own exact buffers.
const READ_BUF: usize = 64 * 1024;
/// After a hard stop the writer gets this long to deliver the ESHUTDOWN replies.
const HARD_STOP_WRITE_WINDOW: Duration = Duration::from_secs(1);
/// Idle payload buffers the server keeps for reuse at most.
pub(crate) const MAX_POOLED_BYTES: usize = 64 << 20;
/// Replies gathered into one vectored write at most.
const MAX_BATCH: usize = 64;

/// Everything one connection needs during transmission.
pub(crate) struct ConnCtx {
    pub entry: Arc<ExportEntry>,
    pub style: HeaderStyle,
    pub contexts: Vec<MetaContext>,
    pub max_payload: u32,
    pub max_in_flight_bytes: usize,
    /// The server-wide payload budget, shared by every connection.
    pub budget: Arc<Budget>,
    pub pool: Arc<BufPool>,
    /// Server shutdown: stop reading requests, finish those in flight.
    pub stop_reading: CancellationToken,
    /// Longest wait for the next byte of a request's payload.
    pub payload_stall_timeout: Duration,
    /// For one batch of replies to leave.
    pub reply_timeout: Duration,
}

/// A reply ready to send, with the permits it releases once written.
struct Outgoing {
    segments: Vec<Bytes>,
    _permits: Option<Permits>,
}

/// What one request holds until its reply is written: a place among the connection's requests,
/// and, for a READ, its data's share of the connection's payload budget and of the server's.
struct Permits {
    _count: OwnedSemaphorePermit,
    _bytes: Option<BytePermits>,
}

/// A request's share of the connection's payload budget and of the server's.
type BytePermits = (OwnedSemaphorePermit, Held);

/// Why the reader stopped.
#[derive(Debug)]
enum End {
    Disc,
    Eof,
    Stopped,
    WriterFailed,
    BadMagic(u32),
    Oversize(u64),
    PayloadStalled,
    Io(io::Error),
}

/// Serves requests until the client disconnects or the server stops this connection. Returns
/// when every request read has been answered (or failed) and the writer is done.
pub(crate) async fn serve<R, W>(mut reader: R, writer: W, ctx: Arc<ConnCtx>)
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let (tx, rx) = mpsc::unbounded_channel::<Outgoing>();
    let writer_failed = CancellationToken::new();
    let writer_task = tokio::spawn(
        write_loop(
            writer,
            rx,
            ctx.entry.hard_stop.clone(),
            writer_failed.clone(),
            ctx.reply_timeout,
        )
        .in_current_span(),
    );
    let requests = TaskTracker::new();
    let pool = Arc::clone(&ctx.pool);
    let end = tokio::select! {
        biased;
        _ = ctx.entry.hard_stop.cancelled() => End::Stopped,
        _ = ctx.stop_reading.cancelled() => End::Stopped,
        _ = writer_failed.cancelled() => End::WriterFailed,
        e = read_loop(&mut reader, &ctx, &tx, &requests, &pool) => e,
    };
    match &end {
        End::Disc => tracing::debug!("client disconnected"),
        End::Eof => tracing::debug!("client closed the connection"),
        End::Stopped => tracing::debug!("connection stopped by the server"),
        End::WriterFailed => tracing::info!("connection lost while sending replies"),
        End::BadMagic(m) => tracing::info!(magic = m, "bad request magic, closing"),
        End::Oversize(len) => tracing::info!(len, "payload far over the limit, closing"),
        End::PayloadStalled => tracing::info!(
            timeout = ?ctx.payload_stall_timeout,
            "request payload stopped arriving, closing"
        ),
        End::Io(e) => tracing::info!(error = %e, "connection lost"),
    }
    requests.close();
    requests.wait().await;
    drop(tx);
    let _ = writer_task.await;
}

/// A request off the socket, as the reader hands it on.
enum Incoming {
    /// Read whole, with its payload and permits: to run.
    Run(Ready),
    /// Its payload was over the limit and has been read and dropped: to refuse.
    Oversize(Request),
}

/// A request ready to run: its payload, and the permits it took before the payload was read.
struct Ready {
    req: Request,
    payload: Bytes,
    count: OwnedSemaphorePermit,
    bytes: BytePermits,
}

/// Reads requests and spawns a task for each until reading has to stop; over-limit payloads are
/// refused from here, since no task holds anything for them.
async fn read_loop<R>(
    reader: &mut R,
    ctx: &Arc<ConnCtx>,
    tx: &mpsc::UnboundedSender<Outgoing>,
    requests: &TaskTracker,
    pool: &Arc<BufPool>,
) -> End
where
    R: AsyncRead + Unpin,
{
    let export = &ctx.entry.export;
    let limits = Limits {
        size: export.size(),
        read_only: export.read_only(),
        max_payload: ctx.max_payload,
        style: ctx.style,
        has_contexts: !ctx.contexts.is_empty(),
    };
    let mut incoming = RequestReader::new(ctx);
    loop {
        match incoming.next_request(reader, pool).await {
            Ok(Incoming::Run(ready)) => spawn_request(ctx, tx, requests, pool, limits, ready),
            Ok(Incoming::Oversize(req)) => {
                let segments = command::encode_reply(
                    ctx.style,
                    &req,
                    &ctx.contexts,
                    Outcome::Failed(EINVAL, "payload larger than the maximum block size".into()),
                );
                let _ = tx.send(Outgoing {
                    segments,
                    _permits: None,
                });
            }
            Err(end) => return end,
        }
    }
}

/// The reader's side of the connection: its header buffer and the budgets requests take from.
struct RequestReader<'a> {
    ctx: &'a ConnCtx,
    buf: BytesMut,
    /// After a large payload the next header is read alone, so the payload after it lands in its
    /// own buffer instead of being read ahead into `buf` and copied out.
    exact: bool,
    align: usize,
    byte_budget: u64,
    count_sem: Arc<Semaphore>,
    bytes_sem: Arc<Semaphore>,
}

impl<'a> RequestReader<'a> {
    fn new(ctx: &'a ConnCtx) -> Self {
        let byte_budget = ctx.max_in_flight_bytes.clamp(1, Semaphore::MAX_PERMITS) as u64;
        Self {
            ctx,
            buf: BytesMut::with_capacity(READ_BUF),
            exact: false,
            align: ctx.entry.export.buffer_alignment(),
            byte_budget,
            count_sem: Arc::new(Semaphore::new(MAX_REQUESTS_IN_FLIGHT)),
            bytes_sem: Arc::new(Semaphore::new(byte_budget as usize)),
        }
    }

    /// The next request: header, then permits, then payload. `Err` says why reading stops.
    async fn next_request<R: AsyncRead + Unpin>(
        &mut self,
        reader: &mut R,
        pool: &BufPool,
    ) -> Result<Incoming, End> {
        let req = self.read_header(reader).await?;
        self.ctx.entry.touch();
        let payload_len = req.payload_len(self.ctx.style);
        if command::is_disconnect(&req, payload_len) {
            return Err(End::Disc);
        }
        if payload_len > u64::from(self.ctx.max_payload) {
            self.drop_payload(reader, payload_len).await?;
            return Ok(Incoming::Oversize(req));
        }
        self.exact = payload_len >= 4096;
        let (count, conn_bytes, cost) = self.take_permits(&req, payload_len).await;
        let (payload, total) = if payload_len == 0 {
            (
                Bytes::new(),
                Held::whole(self.ctx.budget.take_all(cost).await),
            )
        } else {
            // The server's budget is taken as the payload arrives: a client that stops sending
            // holds what it sent, and loses its connection after a pause without bytes.
            self.receive_payload(reader, payload_len, pool).await?
        };
        Ok(Incoming::Run(Ready {
            req,
            payload,
            count,
            bytes: (conn_bytes, total),
        }))
    }

    /// Buffers a whole header and decodes it.
    async fn read_header<R: AsyncRead + Unpin>(&mut self, reader: &mut R) -> Result<Request, End> {
        let style = self.ctx.style;
        let hdr_len = style.request_len();
        let buf = &mut self.buf;
        while buf.len() < hdr_len {
            let want = if self.exact {
                hdr_len - buf.len()
            } else {
                READ_BUF - buf.len().min(READ_BUF)
            }
            .max(hdr_len - buf.len());
            buf.reserve(want);
            match reader.read_buf(&mut (&mut *buf).limit(want)).await {
                Ok(0) if buf.is_empty() => return Err(End::Eof),
                Ok(0) => return Err(End::Io(io::ErrorKind::UnexpectedEof.into())),
                Ok(_) => {}
                Err(e) => return Err(End::Io(e)),
            }
        }
        match Request::decode(buf, style) {
            Ok(Some((req, n))) => {
                buf.advance(n);
                Ok(req)
            }
            Ok(None) => unreachable!("a whole header is buffered"),
            Err(_) => Err(End::BadMagic(u32::from_be_bytes([
                buf[0], buf[1], buf[2], buf[3],
            ]))),
        }
    }

    /// Reads and drops a payload over the limit, unless it is too long to be worth reading.
    async fn drop_payload<R: AsyncRead + Unpin>(
        &mut self,
        reader: &mut R,
        len: u64,
    ) -> Result<(), End> {
        if len > MAX_DISCARD {
            return Err(End::Oversize(len));
        }
        discard(reader, &mut self.buf, len, self.ctx.payload_stall_timeout).await?;
        tracing::info!(length = len, "payload over the limit refused");
        Ok(())
    }

    /// Backpressure: no more reading until earlier requests on this connection have been
    /// answered. Returns the request's place, its share of the connection's budget, and its
    /// cost in the server's budget (taken by the caller).
    async fn take_permits(
        &self,
        req: &Request,
        payload_len: u64,
    ) -> (OwnedSemaphorePermit, OwnedSemaphorePermit, u64) {
        let cost = command::in_flight_bytes(req, payload_len, self.ctx.max_payload);
        let conn_cost = cost.min(self.byte_budget).min(u64::from(u32::MAX)) as u32;
        // The connection's budget is only held by its requests already running, which finish
        // without waiting for it; a request larger than the budget takes all of it, runs alone.
        let (Ok(count), Ok(bytes)) = (
            self.count_sem.clone().acquire_owned().await,
            self.bytes_sem.clone().acquire_many_owned(conn_cost).await,
        ) else {
            unreachable!("the semaphores are never closed");
        };
        (count, bytes, cost)
    }

    /// [`read_payload`], taking the server's budget as the bytes arrive.
    async fn receive_payload<R: AsyncRead + Unpin>(
        &mut self,
        reader: &mut R,
        len: u64,
        pool: &BufPool,
    ) -> Result<(Bytes, Held), End> {
        let mut charge = self.ctx.budget.charge(len);
        let into = Payload {
            len: len as usize,
            align: self.align,
            stall: self.ctx.payload_stall_timeout,
        };
        let payload = read_payload(reader, &mut self.buf, into, pool, &mut charge).await?;
        Ok((payload, charge.into_held()))
    }
}

/// Runs one request in a task of its own; its reply goes to the writer.
fn spawn_request(
    ctx: &Arc<ConnCtx>,
    tx: &mpsc::UnboundedSender<Outgoing>,
    requests: &TaskTracker,
    pool: &Arc<BufPool>,
    limits: Limits,
    ready: Ready,
) {
    let Ready {
        req,
        payload,
        count,
        bytes,
    } = ready;
    let ctx = Arc::clone(ctx);
    let tx = tx.clone();
    let pool = Arc::clone(pool);
    let span = tracing::debug_span!(
        "request",
        cookie = req.cookie,
        command = req.command,
        offset = req.offset,
        length = req.length
    );
    requests.spawn(
        async move {
            let reclaim = payload.clone();
            let outcome = tokio::select! {
                biased;
                o = run(&ctx, &req, limits, payload) => o,
                _ = ctx.entry.hard_stop.cancelled() => {
                    Outcome::Failed(ESHUTDOWN, "export is going away".into())
                }
            };
            pool.give(reclaim);
            // Only a READ's reply carries payload bytes. A WRITE's payload is back in the pool
            // or freed by now, so its budget is released before the reply waits for a client
            // that may be slow to read: such a client then pins only its READ data.
            let bytes = command::reply_carries_data(&req).then_some(bytes);
            let segments = command::encode_reply(ctx.style, &req, &ctx.contexts, outcome);
            // A closed channel means the writer is gone; the reply has nowhere to go.
            let _ = tx.send(Outgoing {
                segments,
                _permits: Some(Permits {
                    _count: count,
                    _bytes: bytes,
                }),
            });
        }
        .instrument(span),
    );
}

async fn run(ctx: &ConnCtx, req: &Request, limits: Limits, payload: Bytes) -> Outcome {
    let op = match command::validate(req, &limits) {
        Ok(op) => op,
        Err((errno, msg)) => {
            tracing::debug!(cookie = req.cookie, errno, msg, "request refused");
            return Outcome::Failed(errno, msg.into());
        }
    };
    let len = payload.len() as u64;
    let outcome = command::execute(&*ctx.entry.export, op, payload, ctx.style).await;
    match &outcome {
        Outcome::Done if command::writes_payload(req) => ctx.entry.add_written(len),
        Outcome::Read(_) => ctx.entry.add_read(req.length),
        Outcome::Failed(errno, msg) => {
            tracing::debug!(cookie = req.cookie, errno, msg, "request failed")
        }
        _ => {}
    }
    ctx.entry.touch();
    outcome
}

/// Where a payload goes: its length, the address alignment of its buffer, and the longest wait
/// for its next byte.
struct Payload {
    len: usize,
    align: usize,
    stall: Duration,
}

/// Reads exactly `len` payload bytes: what is already buffered, then straight from the socket into
/// a buffer of exactly that size, which becomes the `Bytes` handed to the export. Every byte is
/// covered by `charge` before it is read.
async fn read_payload<R: AsyncRead + Unpin>(
    reader: &mut R,
    buf: &mut BytesMut,
    into: Payload,
    pool: &BufPool,
    charge: &mut Charge<'_>,
) -> Result<Bytes, End> {
    let len = into.len;
    if buf.len() >= len {
        charge.cover(len as u64).await;
        return Ok(buf.split_to(len).freeze());
    }
    charge.cover(buf.len() as u64).await;
    // The lease ends when the payload is in, and with it the pooled memory it did not cover.
    let (mut payload, _lease) = pool.lend(len, into.align);
    payload.put(buf.split());
    while payload.len() < len {
        let want = charge.allow((len - payload.len()) as u64).await as usize;
        let n = read_within(reader, &mut (&mut payload).limit(want), into.stall).await?;
        charge.spend(n as u64);
    }
    Ok(payload.freeze())
}

/// One read into `dst`, failing if no byte comes within `stall` or the client has closed.
async fn read_within<R: AsyncRead + Unpin, B: BufMut>(
    reader: &mut R,
    dst: &mut B,
    stall: Duration,
) -> Result<usize, End> {
    match tokio::time::timeout(stall, reader.read_buf(dst)).await {
        Err(_) => Err(End::PayloadStalled),
        Ok(Err(e)) => Err(End::Io(e)),
        Ok(Ok(0)) => Err(End::Io(io::ErrorKind::UnexpectedEof.into())),
        Ok(Ok(n)) => Ok(n),
    }
}

/// Consumes `len` payload bytes without keeping them, failing after a pause of `stall`.
async fn discard<R: AsyncRead + Unpin>(
    reader: &mut R,
    buf: &mut BytesMut,
    len: u64,
    stall: Duration,
) -> Result<(), End> {
    let from_buf = (buf.len() as u64).min(len);
    buf.advance(from_buf as usize);
    let mut rest = len - from_buf;
    let mut scratch = BytesMut::with_capacity(READ_BUF);
    while rest > 0 {
        scratch.clear();
        let want = rest.min(READ_BUF as u64) as usize;
        rest -= read_within(reader, &mut (&mut scratch).limit(want), stall).await? as u64;
    }
    Ok(())
}

async fn write_loop<W: AsyncWrite + Unpin>(
    mut writer: W,
    mut rx: mpsc::UnboundedReceiver<Outgoing>,
    hard_stop: CancellationToken,
    failed: CancellationToken,
    reply_timeout: Duration,
) {
    let mut batch: Vec<Outgoing> = Vec::with_capacity(MAX_BATCH);
    let mut queue: VecDeque<Bytes> = VecDeque::new();
    // A client that stops reading must not hold the connection open past a hard stop.
    let deadline = async {
        hard_stop.cancelled().await;
        tokio::time::sleep(HARD_STOP_WRITE_WINDOW).await;
    };
    tokio::pin!(deadline);
    while let Some(first) = rx.recv().await {
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(m) => batch.push(m),
                Err(_) => break,
            }
        }
        queue.extend(
            batch
                .iter_mut()
                .flat_map(|m| m.segments.drain(..))
                .filter(|b| !b.is_empty()),
        );
        // A client that stops reading replies would pin the READ budget they hold.
        let r = tokio::select! {
            r = tokio::time::timeout(reply_timeout, write_all(&mut writer, &mut queue)) => {
                r.unwrap_or_else(|_| Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "client did not read its replies in time",
                )))
            }
            _ = &mut deadline => Err(io::ErrorKind::TimedOut.into()),
        };
        batch.clear();
        if let Err(e) = r {
            if e.kind() == io::ErrorKind::TimedOut {
                tracing::info!(error = %e, "closing the connection");
            } else {
                tracing::debug!(error = %e, "writing replies failed");
            }
            failed.cancel();
            return;
        }
    }
    let _ = tokio::select! {
        r = writer.shutdown() => r,
        _ = &mut deadline => Ok(()),
    };
}

/// Writes every queued segment with vectored writes.
async fn write_all<W: AsyncWrite + Unpin>(
    writer: &mut W,
    queue: &mut VecDeque<Bytes>,
) -> io::Result<()> {
    while !queue.is_empty() {
        let mut n = {
            let slices: Vec<IoSlice<'_>> = queue.iter().take(64).map(|b| IoSlice::new(b)).collect();
            writer.write_vectored(&slices).await?
        };
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        while n > 0 {
            let Some(front) = queue.front_mut() else {
                break;
            };
            if front.len() <= n {
                n -= front.len();
                queue.pop_front();
            } else {
                front.advance(n);
                n = 0;
            }
        }
    }
    writer.flush().await
}
