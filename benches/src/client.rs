//! The project's own pipelined NBD writer: copies a file into an export over N unix-socket
//! connections, each with a writer thread and a reader thread and up to `in_flight` WRITEs
//! outstanding, then FLUSH (if offered) and DISC on every connection.
//!
//! Connections take the next request-sized chunk from one shared counter, so with several
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

use crate::wire::{self, REQUEST_LEN, SIMPLE_REPLY_LEN};
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

/// A connection after NBD_OPT_GO succeeded.
pub struct Connection {
    stream: UnixStream,
    pub size: u64,
    pub transmission_flags: u16,
}

fn read_array<const N: usize>(s: &mut UnixStream) -> Result<[u8; N]> {
    let mut b = [0u8; N];
    s.read_exact(&mut b)?;
    Ok(b)
}

impl Connection {
    /// Fixed-newstyle handshake ending in NBD_OPT_GO.
    pub fn connect(job: &WriteJob) -> Result<Connection> {
        let mut stream = UnixStream::connect(&job.socket)?;
        stream.set_read_timeout(Some(job.io_timeout))?;
        stream.set_write_timeout(Some(job.io_timeout))?;
        let server_flags = wire::decode_greeting(&read_array(&mut stream)?)?;
        let mut out = wire::encode_client_flags(server_flags).to_vec();
        wire::encode_opt_go(&job.export, &mut out);
        stream.write_all(&out)?;
        let mut export = None;
        loop {
            let h = wire::decode_option_reply_header(&read_array(&mut stream)?)?;
            let mut data = vec![0u8; h.length as usize];
            stream.read_exact(&mut data)?;
            if h.option != wire::OPT_GO {
                return Err(Error::Protocol(format!(
                    "reply to option {} during GO",
                    h.option
                )));
            }
            match h.reply {
                wire::REP_ACK => break,
                wire::REP_INFO => {
                    if let Some(e) = wire::decode_info_export(&data)? {
                        export = Some(e);
                    }
                }
                r if r & wire::REP_ERR_BIT != 0 => {
                    let message = String::from_utf8_lossy(&data).into_owned();
                    return Err(Error::OptionRefused {
                        option: h.option,
                        reply: r,
                        message,
                    });
                }
                _ => {}
            }
        }
        let (size, transmission_flags) = export
            .ok_or_else(|| Error::Protocol("GO acknowledged without NBD_INFO_EXPORT".into()))?;
        Ok(Connection {
            stream,
            size,
            transmission_flags,
        })
    }

    fn send_request(&mut self, command: u16, cookie: u64) -> Result<()> {
        let mut h = [0u8; REQUEST_LEN];
        wire::encode_request(0, command, cookie, 0, 0, &mut h);
        self.stream.write_all(&h)?;
        Ok(())
    }

    fn expect_reply(&mut self) -> Result<()> {
        let (errno, cookie) = wire::decode_simple_reply(&read_array(&mut self.stream)?)?;
        if errno != 0 {
            return Err(Error::Request { cookie, errno });
        }
        Ok(())
    }

    /// Pipelined WRITEs of chunks claimed from `next`; returns the number of requests sent.
    fn write_chunks(&mut self, job: &WriteJob, source: &File, next: &AtomicU64) -> Result<u64> {
        let mut reader = self.stream.try_clone()?;
        // The channel holds one token per outstanding request beyond the one the reader waits
        // for, so at most `in_flight` requests are on the wire.
        let (tx, rx) = sync_channel::<()>(job.in_flight.max(1) - 1);
        let req = u64::from(job.request_size);
        std::thread::scope(|scope| {
            let replies = scope.spawn(move || -> Result<u64> {
                let mut n = 0;
                while rx.recv().is_ok() {
                    let (errno, cookie) =
                        wire::decode_simple_reply(&read_array::<SIMPLE_REPLY_LEN>(&mut reader)?)?;
                    if errno != 0 {
                        return Err(Error::Request { cookie, errno });
                    }
                    n += 1;
                }
                Ok(n)
            });
            let mut buf = vec![0u8; REQUEST_LEN + job.request_size as usize];
            let mut sent = 0u64;
            let result = (|| -> Result<()> {
                loop {
                    let offset = next.fetch_add(req, Ordering::Relaxed);
                    if offset >= job.length {
                        return Ok(());
                    }
                    let len = req.min(job.length - offset) as usize;
                    source.read_exact_at(&mut buf[REQUEST_LEN..REQUEST_LEN + len], offset)?;
                    let header: &mut [u8; REQUEST_LEN] =
                        (&mut buf[..REQUEST_LEN]).try_into().expect("sized");
                    wire::encode_request(0, wire::CMD_WRITE, sent, offset, len as u32, header);
                    if tx.send(()).is_err() {
                        // The reader stopped on an error; it is reported below.
                        return Ok(());
                    }
                    self.stream.write_all(&buf[..REQUEST_LEN + len])?;
                    sent += 1;
                }
            })();
            drop(tx);
            if result.is_err() {
                // Wake the reader instead of letting it wait for replies that will not come.
                let _ = self.stream.shutdown(Shutdown::Both);
            }
            let received = replies
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
        if flush && self.transmission_flags & wire::TFLAG_SEND_FLUSH != 0 {
            self.send_request(wire::CMD_FLUSH, u64::MAX)?;
            self.expect_reply()?;
        }
        self.send_request(wire::CMD_DISC, u64::MAX - 1)?;
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
        if c.transmission_flags & wire::TFLAG_READ_ONLY != 0 {
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
