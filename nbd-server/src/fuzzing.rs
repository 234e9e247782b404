//! Entry points for the fuzz targets in `fuzz/` (kept here so they are built and unit-tested with
//! the crate). Each decodes arbitrary bytes, and for everything that decodes checks that encoding
//! it again and decoding the result gives the same value. They panic only on a broken invariant.

use bytes::BytesMut;

use crate::Extent;
use crate::command::{self, Limits, MetaContext, Outcome, ReadPiece};
use crate::proto::handshake::{
    ClientOption, ExportNameReply, Greeting, OptionHeader, OptionReply, decode_client_flags,
};
use crate::proto::reply::{Chunk, SimpleReply};
use crate::proto::request::{HeaderStyle, Request, decode_stream};

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
        assert_eq!(payload.len() as u64, req.payload_len(style));
        let mut b = BytesMut::new();
        req.encode(style, &mut b)
            .expect("a decoded request encodes");
        assert_eq!(Request::decode(&b, style), Ok(Some((req, b.len()))));
        let op = command::validate(&req, &limits);
        if let Ok(op) = op {
            // Whatever validation lets through is inside the export.
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
            let segs = command::encode_reply(style, &req, contexts, o);
            assert!(!segs.is_empty());
            check_reply_stream(style, &segs, req.cookie);
        }
    }
    // The same bytes read as replies.
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
