//! The channel a download is written into and what goes ahead of it: a blocking task writes
//! through a [`Sink`] into a bounded channel that the HTTP body drains, and tells the handler the
//! [`Head`] (what the body will be) before the first byte.

use std::io::{self, Write};

use axum::body::Body;
use bytes::{Bytes, BytesMut};
use tokio::sync::mpsc;

use crate::error::{Error, Result};

/// Bytes per message on the channel, and messages queued: at most ~1.25 MiB per download.
pub(super) const CHUNK: usize = 256 * 1024;
pub(super) const QUEUE: usize = 4;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Zip,
    TarGz,
}

impl Format {
    pub fn parse(s: Option<&str>) -> Result<Format> {
        match s.unwrap_or("zip") {
            "zip" => Ok(Format::Zip),
            "tar.gz" | "tgz" => Ok(Format::TarGz),
            other => Err(Error::Invalid(format!(
                "format must be zip or tar.gz, not {other:?}"
            ))),
        }
    }
    pub(super) fn extension(self) -> &'static str {
        match self {
            Format::Zip => "zip",
            Format::TarGz => "tar.gz",
        }
    }
    pub(super) fn content_type(self) -> &'static str {
        match self {
            Format::Zip => "application/zip",
            Format::TarGz => "application/gzip",
        }
    }
}

/// `Write` into the channel, in `CHUNK`s.
pub(super) struct Sink {
    tx: mpsc::Sender<io::Result<Bytes>>,
    buf: BytesMut,
    pub(super) sent: u64,
}

impl Sink {
    pub(super) fn new(tx: mpsc::Sender<io::Result<Bytes>>) -> Sink {
        Sink {
            tx,
            buf: BytesMut::with_capacity(CHUNK),
            sent: 0,
        }
    }
    pub(super) fn push(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = self.buf.split().freeze();
        self.sent += chunk.len() as u64;
        self.buf.reserve(CHUNK);
        self.tx
            .blocking_send(Ok(chunk))
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the client went away"))
    }
    /// Ends the response with an error: the client sees the transfer cut.
    pub(super) fn fail(&self, message: String) {
        let _ = self.tx.blocking_send(Err(io::Error::other(message)));
    }
}

impl Write for Sink {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let room = CHUNK - self.buf.len();
        let n = room.min(data.len());
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() >= CHUNK {
            self.push()?;
        }
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.push()
    }
}

pub(super) fn body(rx: mpsc::Receiver<io::Result<Bytes>>) -> Body {
    Body::from_stream(futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    }))
}

/// What the reading task tells the handler before the first byte.
pub(super) enum Head {
    File {
        name: String,
        size: u64,
        part: Option<(u64, u64)>,
    },
    Archive {
        name: String,
        format: Format,
    },
    Unsatisfiable {
        size: u64,
    },
}

/// The last component of a guest path, or `fallback` for a root.
pub(super) fn base_name(path: &str, fallback: &str) -> String {
    path.rsplit('/')
        .find(|s| !s.is_empty())
        .unwrap_or(fallback)
        .to_owned()
}
