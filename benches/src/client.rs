//! The project's own pipelined NBD writer: copies a file into an export over N unix-socket
//! connections, each with a writer thread and a reader thread and up to `in_flight` WRITEs
//! outstanding, then FLUSH (if offered) and DISC on every connection.
//!
//! All framing is `nbd_server::proto` (the same codec the server uses, driven from the client
//! side). Connections take the next request-sized chunk from one shared counter, so with several
//! connections neighbouring chunks arrive on different sockets (as they do from nbdcopy).

use std::fs::File;
use std::io::{Read, Write};
use std::net::Shutdown;
use std::os::unix::fs::FileExt;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::sync_channel;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use nbd_server::proto::handshake::{
    ClientOption, Greeting, Info, InfoRequest, OptionReply, OptionReplyBody,
};
use nbd_server::proto::reply::SimpleReply;
use nbd_server::proto::request::{HeaderStyle, Request};
use nbd_server::proto::{self, ProtoError};

use crate::{Error, Result};

/// What to copy where, and how.
#[derive(Debug, Clone)]
pub struct WriteJob {
    pub socket: PathBuf,
    pub export: String,
    pub source: PathBuf,
    /// Bytes of `source` to copy, from offset 0.
    pub length: u64,
    pub connections: usize,
    pub request_size: u32,
    /// WRITEs outstanding per connection.
    pub in_flight: usize,
    pub flush: bool,
    /// Any single socket read or write taking longer than this fails the job (no hang).
    pub io_timeout: Duration,
}

impl WriteJob {
    pub fn new(socket: PathBuf, source: PathBuf, length: u64) -> Self {
        Self {
            socket,
            export: String::new(),
            source,
            length,
            connections: 1,
            request_size: 2 << 20,
            in_flight: 64,
            flush: true,
            io_timeout: Duration::from_secs(60),
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub struct WriteReport {
    pub bytes: u64,
    pub requests: u64,
    /// From the first connect to the last DISC.
    pub elapsed: Duration,
    /// Transmission flags the server advertised.
    pub transmission_flags: u16,
}

/// Reads from a stream until `decode` yields a message; bytes after it stay in `buf`.
struct Framed {
    stream: UnixStream,
    buf: Vec<u8>,
}

impl Framed {
    fn new(stream: UnixStream) -> Self {
        Self {
            stream,
            buf: Vec::with_capacity(8192),
        }
    }

    fn next<T>(
        &mut self,
        decode: impl Fn(&[u8]) -> std::result::Result<Option<(T, usize)>, ProtoError>,
    ) -> Result<T> {
        loop {
            if let Some((msg, used)) = decode(&self.buf)? {
                self.buf.drain(..used);
                return Ok(msg);
            }
            let have = self.buf.len();
            self.buf.resize(have + 8192, 0);
            let n = loop {
                match self.stream.read(&mut self.buf[have..]) {
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    r => break r,
                }
            };
            let n = match n {
                Ok(n) => n,
                Err(e) => {
                    self.buf.truncate(have);
                    // SO_RCVTIMEO expiring shows up as EAGAIN.
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) {
                        let t = self
                            .stream
                            .read_timeout()
                            .ok()
                            .flatten()
                            .unwrap_or_default();
                        return Err(Error::Protocol(format!(
                            "no answer from the server within {t:?}"
                        )));
                    }
                    return Err(e.into());
                }
            };
            self.buf.truncate(have + n);
            if n == 0 {
                return Err(Error::Protocol("server closed the connection".into()));
            }
        }
    }

    fn reply(&mut self) -> Result<()> {
        let r = self.next(SimpleReply::decode)?;
        if r.error != 0 {
            return Err(Error::Request {
                cookie: r.cookie,
                errno: r.error,
            });
        }
        Ok(())
    }
}

/// A connection after NBD_OPT_GO succeeded.
pub struct Connection {
    stream: UnixStream,
    pub size: u64,
    pub transmission_flags: u16,
}

impl Connection {
    /// Fixed-newstyle handshake ending in NBD_OPT_GO.
    pub fn connect(job: &WriteJob) -> Result<Connection> {
        let stream = UnixStream::connect(&job.socket)?;
        stream.set_read_timeout(Some(job.io_timeout))?;
        stream.set_write_timeout(Some(job.io_timeout))?;
        let mut framed = Framed::new(stream);
        let greeting = framed.next(Greeting::decode)?;
        if greeting.flags & proto::FLAG_FIXED_NEWSTYLE == 0 {
            return Err(Error::Protocol("server lacks FIXED_NEWSTYLE".into()));
        }
        let mut out = BytesMut::new();
        let client_flags =
            u32::from(greeting.flags & (proto::FLAG_FIXED_NEWSTYLE | proto::FLAG_NO_ZEROES));
        out.extend_from_slice(&client_flags.to_be_bytes());
        ClientOption::Go(InfoRequest {
            name: job.export.clone(),
            requests: Vec::new(),
        })
        .encode(&mut out)?;
        framed.stream.write_all(&out)?;
        let mut export = None;
        loop {
            let reply = framed.next(OptionReply::decode)?;
            if reply.option != proto::OPT_GO {
                return Err(Error::Protocol(format!(
                    "reply to option {} during GO",
                    reply.option
                )));
            }
            match reply.body {
                OptionReplyBody::Ack => break,
                OptionReplyBody::Info(Info::Export { size, flags }) => export = Some((size, flags)),
                OptionReplyBody::Error { code, message } => {
                    return Err(Error::OptionRefused {
                        option: reply.option,
                        reply: code,
                        message,
                    });
                }
                _ => {}
            }
        }
        if !framed.buf.is_empty() {
            return Err(Error::Protocol("bytes after the GO acknowledgement".into()));
        }
        let (size, transmission_flags) = export
            .ok_or_else(|| Error::Protocol("GO acknowledged without NBD_INFO_EXPORT".into()))?;
        Ok(Connection {
            stream: framed.stream,
            size,
            transmission_flags,
        })
    }

    fn send(&mut self, command: u16, cookie: u64) -> Result<()> {
        let mut out = BytesMut::with_capacity(Request::COMPACT_LEN);
        Request {
            flags: 0,
            command,
            cookie,
            offset: 0,
            length: 0,
        }
        .encode(HeaderStyle::Simple, &mut out)?;
        self.stream.write_all(&out)?;
        Ok(())
    }

    /// Pipelined WRITEs of chunks claimed from `next`; returns the number of requests sent.
    fn write_chunks(&mut self, job: &WriteJob, source: &File, next: &AtomicU64) -> Result<u64> {
        let mut replies = Framed::new(self.stream.try_clone()?);
        // The channel holds one token per outstanding request beyond the one the reader waits
        // for, so at most `in_flight` requests are on the wire.
        let (tx, rx) = sync_channel::<()>(job.in_flight.max(1) - 1);
        let req = u64::from(job.request_size);
        let head = Request::COMPACT_LEN;
        std::thread::scope(|scope| {
            let reader = scope.spawn(move || -> Result<u64> {
                let mut n = 0;
                while rx.recv().is_ok() {
                    replies.reply()?;
                    n += 1;
                }
                if !replies.buf.is_empty() {
                    return Err(Error::Protocol("more replies than requests".into()));
                }
                Ok(n)
            });
            // Header and payload in one buffer: one write per request.
            let mut buf = vec![0u8; head + job.request_size as usize];
            let mut header = BytesMut::with_capacity(head);
            let mut sent = 0u64;
            let result = (|| -> Result<()> {
                loop {
                    let offset = next.fetch_add(req, Ordering::Relaxed);
                    if offset >= job.length {
                        return Ok(());
                    }
                    let len = req.min(job.length - offset) as usize;
                    source.read_exact_at(&mut buf[head..head + len], offset)?;
                    header.clear();
                    let r = Request {
                        flags: 0,
                        command: proto::CMD_WRITE,
                        cookie: sent,
                        offset,
                        length: len as u64,
                    };
                    r.encode(HeaderStyle::Simple, &mut header)?;
                    buf[..head].copy_from_slice(&header);
                    if tx.send(()).is_err() {
                        // The reader stopped on an error; it is reported below.
                        return Ok(());
                    }
                    self.stream.write_all(&buf[..head + len])?;
                    sent += 1;
                }
            })();
            drop(tx);
            if result.is_err() {
                // Wake the reader instead of letting it wait for replies that will not come.
                let _ = self.stream.shutdown(Shutdown::Both);
            }
            let received = reader
                .join()
                .map_err(|_| Error::Protocol("reply reader panicked".into()))?;
            result?;
            let received = received?;
            if received != sent {
                return Err(Error::Protocol(format!(
                    "{sent} writes sent, {received} answered"
                )));
            }
            Ok(sent)
        })
    }

    /// FLUSH (when `flush` and the server offers it), then DISC.
    fn finish(mut self, flush: bool) -> Result<()> {
        if flush && self.transmission_flags & proto::TFLAG_SEND_FLUSH != 0 {
            self.send(proto::CMD_FLUSH, u64::MAX)?;
            Framed::new(self.stream.try_clone()?).reply()?;
        }
        self.send(proto::CMD_DISC, u64::MAX - 1)?;
        let _ = self.stream.shutdown(Shutdown::Write);
        Ok(())
    }
}

/// Runs `job`; fails on the first error of any connection.
pub fn write_file(job: &WriteJob) -> Result<WriteReport> {
    if job.connections == 0 || job.request_size == 0 {
        return Err(Error::Export(
            "need at least one connection and a non-zero request size".into(),
        ));
    }
    let source = File::open(&job.source)?;
    let start = Instant::now();
    let mut conns = Vec::with_capacity(job.connections);
    for _ in 0..job.connections {
        let c = Connection::connect(job)?;
        if c.transmission_flags & proto::TFLAG_READ_ONLY != 0 {
            return Err(Error::Export("export is read-only".into()));
        }
        if c.size < job.length {
            return Err(Error::Export(format!(
                "export has {} bytes, job needs {}",
                c.size, job.length
            )));
        }
        conns.push(c);
    }
    let transmission_flags = conns[0].transmission_flags;
    let next = AtomicU64::new(0);
    let requests = std::thread::scope(|scope| {
        let handles: Vec<_> = conns
            .into_iter()
            .map(|mut c| {
                let (source, next) = (&source, &next);
                scope.spawn(move || -> Result<u64> {
                    let n = c.write_chunks(job, source, next)?;
                    c.finish(job.flush)?;
                    Ok(n)
                })
            })
            .collect();
        let mut total = 0;
        for h in handles {
            total += h
                .join()
                .map_err(|_| Error::Protocol("connection thread panicked".into()))??;
        }
        Ok::<_, Error>(total)
    })?;
    Ok(WriteReport {
        bytes: job.length,
        requests,
        elapsed: start.elapsed(),
        transmission_flags,
    })
}
