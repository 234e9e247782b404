//! Downloads, streamed: a blocking task reads the guest file (or walks the directory and
//! writes a zip or tar.gz) into a bounded channel that the HTTP body drains, so memory stays
//! at a few chunks whatever the size, and a client that goes away stops the reading.
//!
//! A file that cannot be read whole while the response is already under way ends the
//! response with an error (the client sees a cut transfer, never a short file that looks
//! complete). In an archive, a file that cannot be read is named in `RESTORE-ERRORS.txt` at
//! the archive's root and in the log; nothing is skipped in silence.

use std::io::Write;

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;

use tokio::sync::{mpsc, oneshot};

use super::archive::{Target, send_archive, target};
use super::fs_error;
use super::mount::{InUse, Mount};
use super::stream::{CHUNK, Format, Head, QUEUE, Sink, base_name, body};
use super::volumes;
use crate::error::{Error, Result};

/// What a `Range` header asks of a file of `size` bytes (one range; several are answered with
/// the whole file, as RFC 9110 allows).
#[derive(Debug, PartialEq, Eq)]
pub enum Ranged {
    Whole,
    /// First and last byte, inclusive.
    Part(u64, u64),
    Unsatisfiable,
}

pub fn parse_range(spec: Option<&str>, size: u64) -> Ranged {
    let Some(spec) = spec else {
        return Ranged::Whole;
    };
    let Some(set) = spec.trim().strip_prefix("bytes=") else {
        return Ranged::Whole;
    };
    if set.contains(',') {
        return Ranged::Whole;
    }
    let Some((first, last)) = set.trim().split_once('-') else {
        return Ranged::Whole;
    };
    let num = |s: &str| s.trim().parse::<u64>().ok();
    match (first.trim().is_empty(), num(first), num(last)) {
        // The last N bytes.
        (true, _, Some(n)) if n > 0 && size > 0 => Ranged::Part(size.saturating_sub(n), size - 1),
        (true, _, _) => Ranged::Unsatisfiable,
        (false, Some(a), _) if a >= size => Ranged::Unsatisfiable,
        (false, Some(a), None) if last.trim().is_empty() => Ranged::Part(a, size - 1),
        (false, Some(a), Some(b)) if b >= a => Ranged::Part(a, b.min(size - 1)),
        _ => Ranged::Whole,
    }
}

/// `attachment` with an ASCII fallback name and the exact one in UTF-8 (RFC 6266, 8187).
fn disposition(name: &str) -> HeaderValue {
    let ascii: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() && c != '"' && c != '\\' || c == ' ' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let mut encoded = String::new();
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || b"!#$&+-.^_`|~".contains(&b) {
            encoded.push(b as char);
        } else {
            encoded.push_str(&format!("%{b:02X}"));
        }
    }
    HeaderValue::from_str(&format!(
        "attachment; filename=\"{ascii}\"; filename*=UTF-8''{encoded}"
    ))
    .unwrap_or_else(|_| HeaderValue::from_static("attachment"))
}

/// `GET .../download`: a file (following symlinks inside the guest), or a zip of a directory.
pub async fn download(use_: InUse, path: String, headers: &HeaderMap) -> Result<Response> {
    let range = headers
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    start(use_, path, Some(range), Format::Zip).await
}

/// `GET .../download-directory`: a directory (or the whole disk at `/`) as an archive.
pub async fn download_directory(use_: InUse, path: String, format: Format) -> Result<Response> {
    start(use_, path, None, format).await
}

/// `range: Some(..)` asks for a file (or, if it is a directory, an archive); `None` for an
/// archive only.
async fn start(
    use_: InUse,
    path: String,
    range: Option<Option<String>>,
    format: Format,
) -> Result<Response> {
    let (head_tx, head_rx) = oneshot::channel::<Result<Head>>();
    let (tx, rx) = mpsc::channel(QUEUE);
    tokio::task::spawn_blocking(move || {
        // Held to the end of the stream: the mount counts as in use while it is read.
        let use_ = use_;
        let mut sink = Sink::new(tx);
        let failed = match range {
            Some(range) => send_file(use_.mount(), &path, range, format, head_tx, &mut sink),
            None => match target(use_.mount(), &path) {
                Ok(t) => send_archive(use_.mount(), t, format, head_tx, &mut sink),
                Err(e) => {
                    let _ = head_tx.send(Err(e));
                    Ok(())
                }
            },
        };
        if let Err(message) = failed {
            tracing::warn!(mount_id = %use_.mount().id, path, error = %message, sent = sink.sent, "download cut short");
            sink.fail(message);
        }
    });
    let head = head_rx
        .await
        .map_err(|_| Error::Internal("the download task ended before answering".into()))??;
    let mut resp = Response::builder();
    match head {
        Head::Unsatisfiable { size } => {
            return Response::builder()
                .status(StatusCode::RANGE_NOT_SATISFIABLE)
                .header(header::CONTENT_RANGE, format!("bytes */{size}"))
                .body(Body::empty())
                .map_err(|e| Error::Internal(e.to_string()));
        }
        Head::File { name, size, part } => {
            resp = resp
                .header(header::CONTENT_TYPE, "application/octet-stream")
                .header(header::CONTENT_DISPOSITION, disposition(&name))
                .header(header::ACCEPT_RANGES, "bytes");
            match part {
                Some((a, b)) => {
                    resp = resp
                        .status(StatusCode::PARTIAL_CONTENT)
                        .header(header::CONTENT_RANGE, format!("bytes {a}-{b}/{size}"))
                        .header(header::CONTENT_LENGTH, b - a + 1);
                }
                None => resp = resp.header(header::CONTENT_LENGTH, size),
            }
        }
        Head::Archive { name, format } => {
            resp = resp
                .header(header::CONTENT_TYPE, format.content_type())
                .header(
                    header::CONTENT_DISPOSITION,
                    disposition(&format!("{name}.{}", format.extension())),
                );
        }
    }
    resp.body(body(rx))
        .map_err(|e| Error::Internal(e.to_string()))
}

/// Sends one file, or hands over to an archive when the path is a directory. `Err` is a
/// failure after the head went out.
fn send_file(
    m: &Mount,
    path: &str,
    range: Option<String>,
    format: Format,
    head_tx: oneshot::Sender<Result<Head>>,
    sink: &mut Sink,
) -> std::result::Result<(), String> {
    let opened = (|| -> Result<_> {
        let (volume, inner) = volumes::split(path)
            .map_err(fs_error)?
            .ok_or_else(|| Error::Invalid("/ is the disk, not a file".into()))?;
        let v = m.volume(&volume)?;
        Ok((v, inner))
    })();
    let (v, inner) = match opened {
        Ok(x) => x,
        Err(Error::Invalid(_)) if path_is_root(path) => {
            return match target(m, path) {
                Ok(t) => send_archive(m, t, format, head_tx, sink),
                Err(e) => {
                    let _ = head_tx.send(Err(e));
                    Ok(())
                }
            };
        }
        Err(e) => {
            let _ = head_tx.send(Err(e));
            return Ok(());
        }
    };
    let fs = match v.open(m.disk()) {
        Ok(fs) => fs,
        Err(e) => {
            let _ = head_tx.send(Err(fs_error(e)));
            return Ok(());
        }
    };
    let mut file = match fs.open(&inner) {
        Ok(f) => f,
        Err(guestfs::Error::IsADirectory(_)) => {
            return send_archive(m, Target::Dir(v, inner), format, head_tx, sink);
        }
        Err(e) => {
            let _ = head_tx.send(Err(fs_error(e)));
            return Ok(());
        }
    };
    let size = file.size();
    let (from, to) = match parse_range(range.as_deref(), size) {
        Ranged::Whole => (0, size),
        Ranged::Part(a, b) => (a, b + 1),
        Ranged::Unsatisfiable => {
            let _ = head_tx.send(Ok(Head::Unsatisfiable { size }));
            return Ok(());
        }
    };
    if from > 0 {
        if let Err(e) = file.seek(from) {
            let _ = head_tx.send(Err(fs_error(e)));
            return Ok(());
        }
    }
    let part = (from, to) != (0, size);
    let name = base_name(&inner, "file");
    if head_tx
        .send(Ok(Head::File {
            name,
            size,
            part: part.then_some((from, to - 1)),
        }))
        .is_err()
    {
        return Ok(());
    }
    stream(&mut *file, to - from, path, sink)
}

/// `len` bytes of `file` from where it stands into the sink.
fn stream(
    file: &mut dyn guestfs::FileReader,
    mut left: u64,
    path: &str,
    sink: &mut Sink,
) -> std::result::Result<(), String> {
    let mut buf = vec![0u8; CHUNK];
    while left > 0 {
        let want = (left.min(CHUNK as u64)) as usize;
        let n = file
            .read(&mut buf[..want])
            .map_err(|e| format!("reading {path}: {e}"))?;
        if n == 0 {
            return Err(format!("{path} ended {left} bytes before its size"));
        }
        sink.write_all(&buf[..n])
            .map_err(|e| format!("sending {path}: {e}"))?;
        left -= n as u64;
    }
    sink.flush().map_err(|e| format!("sending {path}: {e}"))
}

fn path_is_root(path: &str) -> bool {
    matches!(volumes::split(path), Ok(None))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        let r = |s: &str, size| parse_range(Some(s), size);
        assert_eq!(parse_range(None, 10), Ranged::Whole);
        assert_eq!(r("bytes=0-4", 10), Ranged::Part(0, 4));
        assert_eq!(r("bytes=5-", 10), Ranged::Part(5, 9));
        assert_eq!(r("bytes=5-100", 10), Ranged::Part(5, 9));
        assert_eq!(r("bytes=-3", 10), Ranged::Part(7, 9));
        assert_eq!(r("bytes=-30", 10), Ranged::Part(0, 9));
        assert_eq!(r("bytes=10-", 10), Ranged::Unsatisfiable);
        assert_eq!(r("bytes=-0", 10), Ranged::Unsatisfiable);
        assert_eq!(r("bytes=0-", 0), Ranged::Unsatisfiable);
        assert_eq!(r("bytes=4-2", 10), Ranged::Whole);
        assert_eq!(r("bytes=0-1,4-5", 10), Ranged::Whole);
        assert_eq!(r("items=0-1", 10), Ranged::Whole);
        assert_eq!(r("bytes=x-1", 10), Ranged::Whole);
    }

    #[test]
    fn content_disposition_keeps_the_name_and_stays_a_header() {
        let v = disposition("naïve \"file\".txt");
        let s = v.to_str().unwrap();
        assert!(
            s.starts_with("attachment; filename=\"na_ve _file_.txt\""),
            "{s}"
        );
        assert!(
            s.ends_with("filename*=UTF-8''na%C3%AFve%20%22file%22.txt"),
            "{s}"
        );
    }
}
