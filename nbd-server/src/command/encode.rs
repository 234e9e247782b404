//! The bytes of a reply: simple, structured or extended, with READ data left as its own segments.

use bytes::{Bytes, BytesMut};

use super::{MetaContext, Outcome, ReadPiece};
use crate::Extent;
use crate::proto::reply::{Chunk, ChunkPayload, SimpleReply};
use crate::proto::request::{HeaderStyle, Request};
use crate::proto::*;

/// Descriptors in one BLOCK_STATUS chunk at most (the spec allows fewer than asked).
const MAX_DESCRIPTORS: usize = 1 << 16;

/// Descriptors for one context: clipped to the request, merged where equal, none empty.
fn descriptors(ctx: MetaContext, extents: &[Extent], len: u64, req_one: bool) -> Vec<(u64, u32)> {
    let mut out: Vec<(u64, u32)> = Vec::new();
    let mut remaining = len;
    for e in extents {
        if remaining == 0 {
            break;
        }
        let l = e.length.min(remaining);
        if l == 0 {
            continue;
        }
        remaining -= l;
        let flags = ctx.flags(e);
        match out.last_mut() {
            Some(last) if last.1 == flags => last.0 += l,
            _ => {
                if out.len() == MAX_DESCRIPTORS {
                    break;
                }
                out.push((l, flags));
            }
        }
    }
    if req_one {
        out.truncate(1);
    }
    out
}

/// Encodes the reply to `req` as segments to write in order (READ data stays uncopied).
pub(crate) fn encode_reply(
    style: HeaderStyle,
    req: &Request,
    contexts: &[MetaContext],
    outcome: Outcome,
) -> Vec<Bytes> {
    let chunked = style == HeaderStyle::Extended
        || (style == HeaderStyle::Structured
            && (req.command == CMD_READ || req.command == CMD_BLOCK_STATUS));
    let mut enc = Encoder {
        style,
        req,
        head: BytesMut::with_capacity(64),
        segments: Vec::new(),
    };
    let ok = match outcome {
        Outcome::Failed(errno, message) => enc.failed(chunked, errno, message),
        Outcome::Done => enc.done(chunked),
        Outcome::Read(pieces) => enc.read(chunked, pieces),
        Outcome::Status(_) if contexts.is_empty() => {
            // Validation refuses BLOCK_STATUS without contexts; an empty reply would hang the
            // client, so this stays an error even if that ever changes.
            return encode_reply(
                style,
                req,
                contexts,
                Outcome::Failed(EINVAL, "no metadata context was negotiated".into()),
            );
        }
        Outcome::Status(extents) => enc.status(contexts, &extents),
    };
    if !ok {
        let fallback = Outcome::Failed(EIO, "reply cannot be encoded".into());
        return encode_reply(style, req, contexts, fallback);
    }
    enc.finish()
}

/// One reply being encoded: headers gather in `head`, which is cut into `segments` wherever READ
/// data has to go between two headers.
struct Encoder<'a> {
    style: HeaderStyle,
    req: &'a Request,
    head: BytesMut,
    segments: Vec<Bytes>,
}

impl Encoder<'_> {
    fn simple(&mut self, error: u32) {
        SimpleReply {
            error,
            cookie: self.req.cookie,
        }
        .encode(&mut self.head);
    }

    /// `false` if the chunk cannot be encoded: only for lengths our own limits rule out, and the
    /// caller then answers EIO instead.
    fn chunk(&mut self, flags: u16, payload: ChunkPayload) -> bool {
        let c = Chunk {
            flags,
            cookie: self.req.cookie,
            offset: self.req.offset,
            payload,
        };
        match c.encode_head(self.style, &mut self.head) {
            Ok(data) => {
                if let Some(d) = data {
                    self.segments.push(self.head.split().freeze());
                    self.segments.push(d);
                }
                true
            }
            Err(_) => false,
        }
    }

    fn failed(&mut self, chunked: bool, errno: u32, mut message: String) -> bool {
        if !chunked {
            self.simple(errno);
            return true;
        }
        message.truncate(MAX_STRING_LEN.min(200));
        while !message.is_char_boundary(message.len()) {
            message.pop();
        }
        self.chunk(
            REPLY_FLAG_DONE,
            ChunkPayload::Error {
                error: errno,
                message,
            },
        )
    }

    fn done(&mut self, chunked: bool) -> bool {
        if !chunked {
            self.simple(0);
            return true;
        }
        self.chunk(REPLY_FLAG_DONE, ChunkPayload::None)
    }

    fn read(&mut self, chunked: bool, pieces: Vec<ReadPiece>) -> bool {
        if !chunked {
            // No holes to drop: `execute` only looks for them when replies are structured.
            self.simple(0);
            for p in pieces {
                if let ReadPiece::Data { data, .. } = p {
                    self.segments.push(self.head.split().freeze());
                    self.segments.push(data);
                }
            }
            return true;
        }
        if pieces.is_empty() {
            return self.chunk(REPLY_FLAG_DONE, ChunkPayload::None);
        }
        let n = pieces.len();
        pieces.into_iter().enumerate().all(|(i, p)| {
            let flags = if i + 1 == n { REPLY_FLAG_DONE } else { 0 };
            let payload = match p {
                ReadPiece::Data { offset, data } => ChunkPayload::OffsetData { offset, data },
                ReadPiece::Hole { offset, len } => ChunkPayload::OffsetHole {
                    offset,
                    length: len,
                },
            };
            self.chunk(flags, payload)
        })
    }

    /// One chunk per context, the last one DONE.
    fn status(&mut self, contexts: &[MetaContext], extents: &[Extent]) -> bool {
        let n = contexts.len();
        let req_one = self.req.flags & CMD_FLAG_REQ_ONE != 0;
        contexts.iter().enumerate().all(|(i, ctx)| {
            let flags = if i + 1 == n { REPLY_FLAG_DONE } else { 0 };
            let d = descriptors(*ctx, extents, self.req.length, req_one);
            let payload = if self.style == HeaderStyle::Extended {
                ChunkPayload::BlockStatusExt {
                    context_id: ctx.id(),
                    extents: d.into_iter().map(|(l, f)| (l, u64::from(f))).collect(),
                }
            } else {
                ChunkPayload::BlockStatus {
                    context_id: ctx.id(),
                    // Compact requests are at most u32::MAX long, and so are the clipped extents.
                    extents: d.into_iter().map(|(l, f)| (l as u32, f)).collect(),
                }
            };
            self.chunk(flags, payload)
        })
    }

    fn finish(mut self) -> Vec<Bytes> {
        if !self.head.is_empty() {
            self.segments.push(self.head.freeze());
        }
        self.segments
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::req;
    use super::*;

    fn decode_all(style: HeaderStyle, segs: &[Bytes]) -> Vec<Chunk> {
        let buf: Vec<u8> = segs.iter().flat_map(|b| b.iter().copied()).collect();
        let mut out = Vec::new();
        let mut pos = 0;
        while pos < buf.len() {
            let (c, n) = Chunk::decode(&buf[pos..], style, 1 << 30).unwrap().unwrap();
            out.push(c);
            pos += n;
        }
        out
    }

    #[test]
    fn block_status_reply_merges_and_clips() {
        let e = |length, hole, zero, depth| Extent {
            length,
            hole,
            zero,
            depth,
        };
        let extents = vec![
            e(4096, false, false, 1),
            e(4096, false, false, 2),
            e(8192, true, true, 0),
            e(1 << 30, true, true, 0),
        ];
        let r = req(CMD_BLOCK_STATUS, 0, 0, 65536);
        let ctxs = [MetaContext::BaseAllocation, MetaContext::AllocationDepth];
        let segs = encode_reply(
            HeaderStyle::Structured,
            &r,
            &ctxs,
            Outcome::Status(extents.clone()),
        );
        let chunks = decode_all(HeaderStyle::Structured, &segs);
        assert_eq!(chunks.len(), 2);
        assert_eq!(chunks[0].flags, 0);
        assert_eq!(
            chunks[0].payload,
            ChunkPayload::BlockStatus {
                context_id: 1,
                extents: vec![(8192, 0), (65536 - 8192, 3)]
            }
        );
        assert_eq!(chunks[1].flags, REPLY_FLAG_DONE);
        assert_eq!(
            chunks[1].payload,
            ChunkPayload::BlockStatus {
                context_id: 2,
                extents: vec![(4096, 1), (4096, 2), (65536 - 8192, 0)]
            }
        );
        // REQ_ONE and extended headers.
        let r = req(CMD_BLOCK_STATUS, CMD_FLAG_REQ_ONE, 0, 1 << 33);
        let segs = encode_reply(
            HeaderStyle::Extended,
            &r,
            &ctxs[..1],
            Outcome::Status(extents),
        );
        let chunks = decode_all(HeaderStyle::Extended, &segs);
        assert_eq!(
            chunks[0].payload,
            ChunkPayload::BlockStatusExt {
                context_id: 1,
                extents: vec![(8192, 0)]
            }
        );
    }

    #[test]
    fn read_replies() {
        let r = req(CMD_READ, 0, 0, 8);
        let pieces = vec![
            ReadPiece::Data {
                offset: 0,
                data: Bytes::from_static(b"abcd"),
            },
            ReadPiece::Hole { offset: 4, len: 4 },
        ];
        let segs = encode_reply(
            HeaderStyle::Structured,
            &r,
            &[],
            Outcome::Read(pieces.clone()),
        );
        // The data travels as its own segment, not copied into a header buffer.
        assert!(segs.iter().any(|s| &s[..] == b"abcd"));
        let chunks = decode_all(HeaderStyle::Structured, &segs);
        assert_eq!(chunks.len(), 2);
        assert_eq!(chunks[1].flags, REPLY_FLAG_DONE);
        assert_eq!(
            chunks[1].payload,
            ChunkPayload::OffsetHole {
                offset: 4,
                length: 4
            }
        );
        // Simple replies: header then data.
        let segs = encode_reply(
            HeaderStyle::Simple,
            &r,
            &[],
            Outcome::Read(vec![pieces[0].clone()]),
        );
        let flat: Vec<u8> = segs.iter().flat_map(|b| b.iter().copied()).collect();
        assert_eq!(flat.len(), 20);
        assert_eq!(&flat[16..], b"abcd");
        // Errors: simple for WRITE on structured connections, chunk for READ.
        let w = req(CMD_WRITE, 0, 0, 8);
        let segs = encode_reply(
            HeaderStyle::Structured,
            &w,
            &[],
            Outcome::Failed(ENOSPC, "x".into()),
        );
        assert_eq!(
            SimpleReply::decode(&segs[0]).unwrap().unwrap().0,
            SimpleReply {
                error: ENOSPC,
                cookie: 9
            }
        );
        let segs = encode_reply(
            HeaderStyle::Structured,
            &r,
            &[],
            Outcome::Failed(EIO, "disk".into()),
        );
        let chunks = decode_all(HeaderStyle::Structured, &segs);
        assert_eq!(
            chunks[0].payload,
            ChunkPayload::Error {
                error: EIO,
                message: "disk".into()
            }
        );
        // Extended: success of a WRITE is a NONE chunk echoing the offset.
        let w = req(CMD_WRITE, 0, 4096, 8);
        let segs = encode_reply(HeaderStyle::Extended, &w, &[], Outcome::Done);
        let chunks = decode_all(HeaderStyle::Extended, &segs);
        assert_eq!(chunks[0].offset, 4096);
        assert_eq!(chunks[0].payload, ChunkPayload::None);
    }
}
