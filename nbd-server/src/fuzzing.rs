//! Entry points for the fuzz targets in `fuzz/` (kept here so they are built and unit-tested with
//! the crate). Each decodes arbitrary bytes, and for everything that decodes checks that encoding
//! it again and decoding the result gives the same value. They panic only on a broken invariant.

use std::sync::Arc;

use bytes::BytesMut;

use crate::command::{self, Limits, MetaContext, Outcome, ReadPiece};
use crate::negotiate;
use crate::proto::handshake::{
    ClientOption, ExportNameReply, Greeting, OptionHeader, OptionReply, decode_client_flags,
};
use crate::proto::reply::{Chunk, SimpleReply};
use crate::proto::request::{HeaderStyle, Request, decode_stream};
use crate::server::Shared;
use crate::tls::{MaybeTls, Tls, TlsMode, X509Creds, rustls};
use crate::{ExportError, Extent, ServerConfig};

/// The client's side of a handshake, then the server's replies, from the same bytes.
pub fn handshake(data: &[u8]) {
    if let Ok(Some((g, n))) = Greeting::decode(data) {
        assert_eq!(n, Greeting::LEN);
        let mut b = BytesMut::new();
        g.encode(&mut b);
        assert_eq!(&b[..], &data[..n]);
    }
    if data.len() >= 4 {
        let raw = u32::from_be_bytes([data[0], data[1], data[2], data[3]]);
        let _ = decode_client_flags(raw, 3);
    }
    // A stream of options, as the server reads it.
    let mut rest = data;
    while let Ok(Some((h, n))) = OptionHeader::decode(rest) {
        rest = &rest[n..];
        if h.check_length().is_err() || rest.len() < h.length as usize {
            break;
        }
        let (body, tail) = rest.split_at(h.length as usize);
        rest = tail;
        if let Ok(opt) = ClientOption::decode(h.option, body) {
            let mut b = BytesMut::new();
            opt.encode(&mut b).expect("a decoded option encodes");
            let (h2, n2) = OptionHeader::decode(&b).unwrap().unwrap();
            let again = ClientOption::decode(h2.option, &b[n2..]).expect("re-decodes");
            assert_eq!(again, opt);
            if !matches!(opt, ClientOption::Unknown(_)) {
                assert_eq!(&b[n2..], body, "canonical encoding");
            }
        }
    }
    // A stream of option replies, as a client reads it.
    let mut rest = data;
    while let Ok(Some((r, n))) = OptionReply::decode(rest) {
        let mut b = BytesMut::new();
        r.encode(&mut b).expect("a decoded reply encodes");
        assert_eq!(&b[..], &rest[..n]);
        rest = &rest[n..];
    }
    for no_zeroes in [false, true] {
        if let Ok(Some((r, _))) = ExportNameReply::decode(data, no_zeroes) {
            let mut b = BytesMut::new();
            r.encode(no_zeroes, &mut b);
            assert_eq!(
                ExportNameReply::decode(&b, no_zeroes),
                Ok(Some((r, b.len())))
            );
        }
    }
}

/// The server's whole handshake (greeting, option haggling, STARTTLS and the TLS handshake itself)
/// with `data[1..]` as everything the client sends. The first byte's low bit picks `require` over
/// `on`. Checks that with TLS required no export is reached in clear, and that the handshake ends
/// (the client's EOF ends it) without a panic.
pub fn handshake_session(data: &[u8], tls: &Arc<rustls::ServerConfig>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let Some((&sel, data)) = data.split_first() else {
        return;
    };
    let mode = if sel & 1 == 1 {
        TlsMode::Require
    } else {
        TlsMode::On
    };
    let shared = Shared::new(ServerConfig {
        tls: Tls::new(mode, Arc::clone(tls)),
        ..ServerConfig::default()
    });
    for name in ["", "disk0"] {
        shared
            .registry
            .insert(shared.new_entry(name, Arc::new(NullExport)));
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a runtime");
    rt.block_on(async {
        let (client, server) = tokio::io::duplex(64 << 10);
        let (mut from_server, mut to_server) = tokio::io::split(client);
        let serve = async {
            let mut stream = MaybeTls::Plain(server);
            let session = negotiate::negotiate(&mut stream, &shared).await;
            // Dropping the stream ends the client's reads.
            (matches!(session, Ok(Some(_))), stream.is_tls())
        };
        let send = async {
            let _ = to_server.write_all(data).await;
            let _ = to_server.shutdown().await;
        };
        let drain = async {
            let mut sink = [0u8; 4096];
            while matches!(from_server.read(&mut sink).await, Ok(n) if n > 0) {}
        };
        let ((attached, in_tls), (), ()) = tokio::join!(serve, send, drain);
        if attached && mode == TlsMode::Require {
            assert!(in_tls, "an export was reached in clear with TLS required");
        }
    });
}

/// The server configuration [`handshake_session`] takes, from a PEM certificate and key.
pub fn tls_config(cert_pem: &str, key_pem: &str) -> Arc<rustls::ServerConfig> {
    let dir = std::path::Path::new("fuzz");
    X509Creds::from_pem(dir, cert_pem.as_bytes(), key_pem.as_bytes(), None)
        .and_then(|creds| creds.server_config(false, &[]))
        .expect("a valid certificate and key")
}

/// An export that only has a size: the handshake never reads or writes it.
struct NullExport;

#[async_trait::async_trait]
impl crate::Export for NullExport {
    fn size(&self) -> u64 {
        1 << 20
    }
    fn read_only(&self) -> bool {
        true
    }
    async fn read(&self, _: u64, _: u32) -> Result<bytes::Bytes, ExportError> {
        Err(ExportError::NotSupported)
    }
    async fn write(&self, _: u64, _: bytes::Bytes, _: bool) -> Result<(), ExportError> {
        Err(ExportError::ReadOnly)
    }
    async fn write_zeroes(
        &self,
        _: u64,
        _: u64,
        _: bool,
        _: bool,
        _: bool,
    ) -> Result<(), ExportError> {
        Err(ExportError::ReadOnly)
    }
    async fn trim(&self, _: u64, _: u64, _: bool) -> Result<(), ExportError> {
        Err(ExportError::ReadOnly)
    }
    async fn flush(&self) -> Result<(), ExportError> {
        Ok(())
    }
    async fn block_status(&self, _: u64, _: u64) -> Result<Vec<Extent>, ExportError> {
        Err(ExportError::NotSupported)
    }
}

/// A request stream in the style chosen by the first byte, each request validated and answered
/// with every kind of outcome; then the same bytes as a reply stream.
pub fn requests(data: &[u8]) {
    let Some((&sel, data)) = data.split_first() else {
        return;
    };
    let style = match sel % 3 {
        0 => HeaderStyle::Simple,
        1 => HeaderStyle::Structured,
        _ => HeaderStyle::Extended,
    };
    let limits = Limits {
        size: 1 << 30,
        read_only: sel & 0x10 != 0,
        max_payload: 1 << 16,
        style,
        has_contexts: sel & 0x20 != 0,
    };
    let contexts: &[MetaContext] = if limits.has_contexts {
        &MetaContext::ALL
    } else {
        &[]
    };
    let (reqs, _) = decode_stream(data, style, 1 << 16);
    for (req, payload) in reqs {
        check_request(&req, payload, &limits, contexts);
    }
    check_reply_bytes(style, data);
}

/// One decoded request: it re-encodes to itself, what validation lets through lies inside the
/// export, and every outcome's reply is well formed.
fn check_request(req: &Request, payload: &[u8], limits: &Limits, contexts: &[MetaContext]) {
    let style = limits.style;
    assert_eq!(payload.len() as u64, req.payload_len(style));
    let mut b = BytesMut::new();
    req.encode(style, &mut b)
        .expect("a decoded request encodes");
    assert_eq!(Request::decode(&b, style), Ok(Some((*req, b.len()))));
    if let Ok(op) = command::validate(req, limits) {
        let (off, len) = match op {
            command::Op::Read { offset, len, .. } => (offset, u64::from(len)),
            command::Op::Write { offset, .. } => (offset, req.length),
            command::Op::Trim { offset, len, .. }
            | command::Op::Cache { offset, len }
            | command::Op::WriteZeroes { offset, len, .. }
            | command::Op::BlockStatus { offset, len, .. } => (offset, len),
            command::Op::Flush => (0, 0),
        };
        assert!(off.checked_add(len).is_some_and(|e| e <= limits.size));
    }
    let outcomes = [
        Outcome::Done,
        Outcome::Failed(22, "x".repeat(payload.len() % 300)),
        Outcome::Read(vec![
            ReadPiece::Data {
                offset: req.offset,
                data: bytes::Bytes::copy_from_slice(payload),
            },
            ReadPiece::Hole {
                offset: req.offset,
                len: req.length as u32,
            },
        ]),
        Outcome::Status(vec![Extent {
            length: req.length.max(1),
            hole: req.flags & 1 != 0,
            zero: req.flags & 2 != 0,
            depth: u32::from(req.flags),
        }]),
    ];
    for o in outcomes {
        let segs = command::encode_reply(style, req, contexts, o);
        assert!(!segs.is_empty());
        check_reply_stream(style, &segs, req.cookie);
    }
}

/// Bytes read as a client reads replies: whatever decodes encodes back to the same bytes.
fn check_reply_bytes(style: HeaderStyle, data: &[u8]) {
    let mut rest = data;
    if style == HeaderStyle::Simple {
        while let Ok(Some((r, n))) = SimpleReply::decode(rest) {
            let mut b = BytesMut::new();
            r.encode(&mut b);
            assert_eq!(&b[..], &rest[..n]);
            rest = &rest[n..];
        }
    } else {
        while let Ok(Some((c, n))) = Chunk::decode(rest, style, 1 << 20) {
            let mut b = BytesMut::new();
            c.encode(style, &mut b).expect("a decoded chunk encodes");
            assert_eq!(Chunk::decode(&b, style, 1 << 20), Ok(Some((c, b.len()))));
            rest = &rest[n..];
        }
    }
}

/// Replies we encode decode cleanly, carry the request's cookie, and (when chunked) end with DONE.
fn check_reply_stream(style: HeaderStyle, segs: &[bytes::Bytes], cookie: u64) {
    let flat: Vec<u8> = segs.iter().flat_map(|s| s.iter().copied()).collect();
    if let Ok(Some((r, _))) = SimpleReply::decode(&flat) {
        assert_eq!(r.cookie, cookie);
        return;
    }
    assert_ne!(style, HeaderStyle::Simple, "simple style sent a chunk");
    let mut pos = 0;
    let mut done = false;
    while pos < flat.len() {
        assert!(!done, "chunk after DONE");
        let (c, n) = Chunk::decode(&flat[pos..], style, u64::MAX)
            .expect("our chunk decodes")
            .expect("our chunk is complete");
        assert_eq!(c.cookie, cookie);
        done = c.flags & crate::proto::REPLY_FLAG_DONE != 0;
        pos += n;
    }
    assert!(done, "reply without DONE");
}

#[cfg(test)]
mod tests {
    use rand::{Rng, SeedableRng};

    /// The fuzz entry points on random and on well-formed input, so they cannot rot unnoticed.
    #[test]
    fn fuzz_entry_points_hold_on_random_input() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        for _ in 0..2000 {
            let len = rng.random_range(0..200);
            let data: Vec<u8> = (0..len).map(|_| rng.random()).collect();
            super::handshake(&data);
            super::requests(&data);
        }
    }

    fn test_tls() -> std::sync::Arc<crate::tls::rustls::ServerConfig> {
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        super::tls_config(&cert.cert.pem(), &cert.signing_key.serialize_pem())
    }

    /// Client bytes that reach STARTTLS in both modes: flags, GO in clear, STARTTLS, then a
    /// truncated or random ClientHello; and random bytes after a valid greeting reply.
    #[test]
    fn handshake_session_reaches_starttls_and_ends() {
        use crate::proto::consts::*;
        let tls = test_tls();
        let option = |code: u32, data: &[u8]| {
            let mut b = Vec::new();
            b.extend_from_slice(&IHAVEOPT.to_be_bytes());
            b.extend_from_slice(&code.to_be_bytes());
            b.extend_from_slice(&(data.len() as u32).to_be_bytes());
            b.extend_from_slice(data);
            b
        };
        let go = option(OPT_GO, &[0, 0, 0, 0, 0, 0]);
        let mut rng = rand::rngs::StdRng::seed_from_u64(2);
        for sel in 0u8..2 {
            for tail in 0..50usize {
                let mut data = vec![sel, 0, 0, 0, 3];
                data.extend_from_slice(&go);
                data.extend_from_slice(&option(OPT_STARTTLS, &[]));
                // A TLS handshake record header, then noise.
                data.extend_from_slice(&[0x16, 0x03, 0x01, 0x00, 0x40]);
                data.extend((0..tail * 7).map(|_| rng.random::<u8>()));
                super::handshake_session(&data, &tls);
            }
            // In clear, GO reaches the export only when TLS is merely offered.
            let mut data = vec![sel, 0, 0, 0, 3];
            data.extend_from_slice(&go);
            super::handshake_session(&data, &tls);
        }
    }

    /// Found by `cargo fuzz run nbd_requests`: block status answered on a connection without
    /// metadata contexts produced an empty reply.
    #[test]
    fn fuzz_crash_status_reply_without_contexts() {
        let data = [
            0x00, 0x25, 0x60, 0x95, 0x13, 0x67, 0x44, 0x66, 0x00, 0x00, 0x00, 0x66, 0x98, 0x3d,
            0x00, 0x00, 0x40, 0x00, 0x67, 0x67, 0x44, 0x66, 0x98, 0x59, 0x00, 0x98, 0x9e, 0xff,
            0xe2, 0x59, 0x59, 0x00, 0x27, 0x60, 0x00,
        ];
        super::requests(&data);
    }

    /// Well-formed request streams of every command in every style, to get past the magic.
    #[test]
    fn fuzz_entry_points_hold_on_well_formed_requests() {
        use crate::proto::request::{HeaderStyle, Request};
        for sel in 0u8..64 {
            let style = match sel % 3 {
                0 => HeaderStyle::Simple,
                1 => HeaderStyle::Structured,
                _ => HeaderStyle::Extended,
            };
            let mut b = bytes::BytesMut::new();
            b.extend_from_slice(&[sel]);
            for command in 0..10u16 {
                let length = if command == 1 { 16 } else { 4096 };
                Request {
                    flags: command ^ u16::from(sel),
                    command,
                    cookie: u64::from(command),
                    offset: 512 * u64::from(command),
                    length,
                }
                .encode(style, &mut b)
                .unwrap();
                if command == 1 {
                    b.extend_from_slice(&[7; 16]);
                }
            }
            super::requests(&b);
        }
    }
}
