//! What one request means and what its reply looks like: validation and reply encoding are pure;
//! `execute` is the only part that calls the export.

use bytes::{Bytes, BytesMut};

use crate::errno;
use crate::proto::reply::{Chunk, ChunkPayload, SimpleReply};
use crate::proto::request::{Command, HeaderStyle, Request};
use crate::proto::*;
use crate::{Export, ExportError, Extent};

/// Metadata contexts this server offers, with their fixed ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum MetaContext {
    BaseAllocation,
    AllocationDepth,
}

impl MetaContext {
    pub const ALL: [MetaContext; 2] = [MetaContext::BaseAllocation, MetaContext::AllocationDepth];

    pub fn id(self) -> u32 {
        match self {
            Self::BaseAllocation => 1,
            Self::AllocationDepth => 2,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::BaseAllocation => CONTEXT_BASE_ALLOCATION,
            Self::AllocationDepth => CONTEXT_ALLOCATION_DEPTH,
        }
    }

    fn flags(self, e: &Extent) -> u32 {
        match self {
            Self::BaseAllocation => {
                (if e.hole { STATE_HOLE } else { 0 }) | (if e.zero { STATE_ZERO } else { 0 })
            }
            Self::AllocationDepth => e.depth,
        }
    }

    /// Contexts selected by `query`; with `wildcards` (LIST only) an empty leaf name selects
    /// every context of the namespace.
    pub fn matching(query: &str, wildcards: bool) -> Vec<MetaContext> {
        Self::ALL
            .into_iter()
            .filter(|c| {
                c.name() == query
                    || (wildcards
                        && query.ends_with(':')
                        && c.name().starts_with(query)
                        && query.matches(':').count() == 1)
            })
            .collect()
    }
}

/// What the connection knows about its export when validating a request.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub size: u64,
    pub read_only: bool,
    pub max_payload: u32,
    pub style: HeaderStyle,
    pub has_contexts: bool,
}

/// A validated request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Op {
    Read {
        offset: u64,
        len: u32,
        df: bool,
    },
    Write {
        offset: u64,
        fua: bool,
    },
    Flush,
    Trim {
        offset: u64,
        len: u64,
        fua: bool,
    },
    Cache {
        offset: u64,
        len: u64,
    },
    WriteZeroes {
        offset: u64,
        len: u64,
        may_trim: bool,
        fast_only: bool,
        fua: bool,
    },
    BlockStatus {
        offset: u64,
        len: u64,
        req_one: bool,
    },
}

/// An error to send: NBD errno and a short message for the client's log.
pub(crate) type Refusal = (u32, &'static str);

fn in_range(offset: u64, len: u64, size: u64) -> bool {
    offset.checked_add(len).is_some_and(|end| end <= size)
}

/// Checks flags, permissions and ranges. DISC never gets here (the reader handles it).
pub(crate) fn validate(req: &Request, lim: &Limits) -> Result<Op, Refusal> {
    let Some(cmd) = Command::from_code(req.command) else {
        return Err((EINVAL, "unknown command"));
    };
    // FUA is valid on every command once advertised; servers ignore it where meaningless.
    let allowed = CMD_FLAG_FUA
        | match cmd {
            Command::Read if lim.style.structured() => CMD_FLAG_DF,
            Command::Write if lim.style == HeaderStyle::Extended => CMD_FLAG_PAYLOAD_LEN,
            Command::WriteZeroes => CMD_FLAG_NO_HOLE | CMD_FLAG_FAST_ZERO,
            Command::BlockStatus => CMD_FLAG_REQ_ONE,
            _ => 0,
        };
    if req.flags & !allowed != 0 {
        return Err((EINVAL, "unsupported flags for this command"));
    }
    let fua = req.flags & CMD_FLAG_FUA != 0;
    let (offset, len) = (req.offset, req.length);
    let fits = in_range(offset, len, lim.size);
    let writing = matches!(cmd, Command::Write | Command::WriteZeroes | Command::Trim);
    if writing && lim.read_only {
        return Err((EPERM, "export is read-only"));
    }
    match cmd {
        Command::Read => {
            if len > u64::from(lim.max_payload) {
                return Err((EINVAL, "read larger than the maximum block size"));
            }
            if !fits {
                return Err((EINVAL, "read beyond the end of the export"));
            }
            Ok(Op::Read {
                offset,
                len: len as u32,
                df: req.flags & CMD_FLAG_DF != 0,
            })
        }
        Command::Write => {
            if !fits {
                return Err((ENOSPC, "write beyond the end of the export"));
            }
            Ok(Op::Write { offset, fua })
        }
        Command::WriteZeroes => {
            if !fits {
                return Err((ENOSPC, "write beyond the end of the export"));
            }
            Ok(Op::WriteZeroes {
                offset,
                len,
                may_trim: req.flags & CMD_FLAG_NO_HOLE == 0,
                fast_only: req.flags & CMD_FLAG_FAST_ZERO != 0,
                fua,
            })
        }
        Command::Trim => {
            if !fits {
                return Err((EINVAL, "trim beyond the end of the export"));
            }
            Ok(Op::Trim { offset, len, fua })
        }
        Command::Cache => {
            if !fits {
                return Err((EINVAL, "cache beyond the end of the export"));
            }
            Ok(Op::Cache { offset, len })
        }
        Command::Flush => Ok(Op::Flush),
        Command::BlockStatus => {
            if !lim.has_contexts {
                return Err((EINVAL, "no metadata context was negotiated"));
            }
            if len == 0 || !fits {
                return Err((EINVAL, "block status range is empty or beyond the end"));
            }
            Ok(Op::BlockStatus {
                offset,
                len,
                req_one: req.flags & CMD_FLAG_REQ_ONE != 0,
            })
        }
        Command::Disc | Command::Resize => Err((EINVAL, "unsupported command")),
    }
}

/// One piece of a READ reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ReadPiece {
    Data { offset: u64, data: Bytes },
    Hole { offset: u64, len: u32 },
}

/// What executing a request produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Outcome {
    Done,
    Read(Vec<ReadPiece>),
    Status(Vec<Extent>),
    Failed(u32, String),
}

/// Block-status calls a READ makes at most to find its holes; past that the rest is read as data.
const MAX_STATUS_CALLS_PER_READ: usize = 8;
/// Pieces a READ reply is split into at most; a more fragmented range is sent as one data chunk.
const MAX_READ_PIECES: usize = 64;
/// Descriptors in one BLOCK_STATUS chunk at most (the spec allows fewer than asked).
const MAX_DESCRIPTORS: usize = 1 << 16;

fn failed(err: &ExportError, cmd: Command) -> Outcome {
    Outcome::Failed(errno::from_export_error(err, cmd), err.to_string())
}

/// Runs a validated request against the export. `payload` is the WRITE data.
pub(crate) async fn execute(
    export: &dyn Export,
    op: Op,
    payload: Bytes,
    style: HeaderStyle,
) -> Outcome {
    // Zero-length requests are legal but mean nothing; exports need not handle them.
    match op {
        Op::Read { len: 0, .. } => return Outcome::Read(Vec::new()),
        Op::Write { .. } if payload.is_empty() => return Outcome::Done,
        Op::Trim { len: 0, .. } | Op::Cache { len: 0, .. } | Op::WriteZeroes { len: 0, .. } => {
            return Outcome::Done;
        }
        _ => {}
    }
    match op {
        Op::Read { offset, len, df } => {
            let r = if style.structured() && !df && len > 0 {
                sparse_read(export, offset, len).await
            } else {
                plain_read(export, offset, len).await.map(|p| vec![p])
            };
            match r {
                Ok(pieces) => Outcome::Read(pieces),
                Err(e) => failed(&e, Command::Read),
            }
        }
        Op::Write { offset, fua } => match export.write(offset, payload, fua).await {
            Ok(()) => Outcome::Done,
            Err(e) => failed(&e, Command::Write),
        },
        Op::Flush => match export.flush().await {
            Ok(()) => Outcome::Done,
            Err(e) => failed(&e, Command::Flush),
        },
        Op::Trim { offset, len, fua } => match export.trim(offset, len, fua).await {
            Ok(()) => Outcome::Done,
            Err(e) => failed(&e, Command::Trim),
        },
        Op::Cache { offset, len } => match export.cache(offset, len).await {
            Ok(()) => Outcome::Done,
            Err(e) => failed(&e, Command::Cache),
        },
        Op::WriteZeroes {
            offset,
            len,
            may_trim,
            fast_only,
            fua,
        } => match export
            .write_zeroes(offset, len, may_trim, fast_only, fua)
            .await
        {
            Ok(()) => Outcome::Done,
            Err(e) => failed(&e, Command::WriteZeroes),
        },
        Op::BlockStatus { offset, len, .. } => match export.block_status(offset, len).await {
            Ok(extents) if extents.iter().any(|e| e.length > 0) => Outcome::Status(extents),
            Ok(_) => Outcome::Failed(EIO, "export returned no extents".into()),
            Err(e) => failed(&e, Command::BlockStatus),
        },
    }
}

async fn plain_read(export: &dyn Export, offset: u64, len: u32) -> Result<ReadPiece, ExportError> {
    let data = export.read(offset, len).await?;
    if data.len() != len as usize {
        return Err(ExportError::Io(format!(
            "export returned {} bytes for a read of {len}",
            data.len()
        )));
    }
    Ok(ReadPiece::Data { offset, data })
}

/// Splits a read into data and hole pieces by the export's block status, so zero runs cross the
/// wire as a few bytes. Failing to learn the status is not an error: the range is read as data.
async fn sparse_read(
    export: &dyn Export,
    offset: u64,
    len: u32,
) -> Result<Vec<ReadPiece>, ExportError> {
    let end = offset + u64::from(len);
    // Runs of (start, length, reads-as-zero).
    let mut runs: Vec<(u64, u64, bool)> = Vec::new();
    let mut pos = offset;
    for _ in 0..MAX_STATUS_CALLS_PER_READ {
        if pos >= end {
            break;
        }
        let Ok(extents) = export.block_status(pos, end - pos).await else {
            break;
        };
        let before = pos;
        for e in extents {
            if pos >= end {
                break;
            }
            let l = e.length.min(end - pos);
            if l == 0 {
                continue;
            }
            push_run(&mut runs, pos, l, e.zero);
            pos += l;
        }
        if pos == before {
            break;
        }
    }
    if pos < end {
        push_run(&mut runs, pos, end - pos, false);
    }
    if runs.len() > MAX_READ_PIECES || (runs.len() == 1 && !runs[0].2) {
        return Ok(vec![plain_read(export, offset, len).await?]);
    }
    let mut pieces = Vec::with_capacity(runs.len());
    for (start, l, zero) in runs {
        // Every run lies inside the u32-sized request.
        let l32 = l as u32;
        pieces.push(if zero {
            ReadPiece::Hole {
                offset: start,
                len: l32,
            }
        } else {
            plain_read(export, start, l32).await?
        });
    }
    Ok(pieces)
}

fn push_run(runs: &mut Vec<(u64, u64, bool)>, start: u64, len: u64, zero: bool) {
    if let Some(last) = runs.last_mut()
        && last.2 == zero
    {
        last.1 += len;
        return;
    }
    runs.push((start, len, zero));
}

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
    let mut head = BytesMut::with_capacity(64);
    let mut segments = Vec::new();
    let is_read = req.command == CMD_READ;
    let chunked = style == HeaderStyle::Extended
        || (style == HeaderStyle::Structured && (is_read || req.command == CMD_BLOCK_STATUS));
    let chunk = |flags: u16, payload: ChunkPayload| Chunk {
        flags,
        cookie: req.cookie,
        offset: req.offset,
        payload,
    };
    // Chunk encoding only fails for lengths our own limits rule out; such a reply becomes EIO.
    let put = |c: Chunk, head: &mut BytesMut, segments: &mut Vec<Bytes>| -> bool {
        match c.encode_head(style, head) {
            Ok(data) => {
                if let Some(d) = data {
                    segments.push(head.split().freeze());
                    segments.push(d);
                }
                true
            }
            Err(_) => false,
        }
    };
    let ok = match outcome {
        Outcome::Failed(errno, message) => {
            if chunked {
                let mut message = message;
                message.truncate(MAX_STRING_LEN.min(200));
                while !message.is_char_boundary(message.len()) {
                    message.pop();
                }
                put(
                    chunk(
                        REPLY_FLAG_DONE,
                        ChunkPayload::Error {
                            error: errno,
                            message,
                        },
                    ),
                    &mut head,
                    &mut segments,
                )
            } else {
                SimpleReply {
                    error: errno,
                    cookie: req.cookie,
                }
                .encode(&mut head);
                true
            }
        }
        Outcome::Done => {
            if chunked {
                put(
                    chunk(REPLY_FLAG_DONE, ChunkPayload::None),
                    &mut head,
                    &mut segments,
                )
            } else {
                SimpleReply {
                    error: 0,
                    cookie: req.cookie,
                }
                .encode(&mut head);
                true
            }
        }
        Outcome::Read(pieces) => {
            if !chunked {
                SimpleReply {
                    error: 0,
                    cookie: req.cookie,
                }
                .encode(&mut head);
                for p in pieces {
                    if let ReadPiece::Data { data, .. } = p {
                        segments.push(head.split().freeze());
                        segments.push(data);
                    }
                }
                true
            } else if pieces.is_empty() {
                put(
                    chunk(REPLY_FLAG_DONE, ChunkPayload::None),
                    &mut head,
                    &mut segments,
                )
            } else {
                let n = pieces.len();
                pieces.into_iter().enumerate().all(|(i, p)| {
                    let flags = if i + 1 == n { REPLY_FLAG_DONE } else { 0 };
                    let payload = match p {
                        ReadPiece::Data { offset, data } => {
                            ChunkPayload::OffsetData { offset, data }
                        }
                        ReadPiece::Hole { offset, len } => ChunkPayload::OffsetHole {
                            offset,
                            length: len,
                        },
                    };
                    put(chunk(flags, payload), &mut head, &mut segments)
                })
            }
        }
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
        Outcome::Status(extents) => {
            let n = contexts.len();
            contexts.iter().enumerate().all(|(i, ctx)| {
                let flags = if i + 1 == n { REPLY_FLAG_DONE } else { 0 };
                let req_one = req.flags & CMD_FLAG_REQ_ONE != 0;
                let d = descriptors(*ctx, &extents, req.length, req_one);
                let payload = if style == HeaderStyle::Extended {
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
                put(chunk(flags, payload), &mut head, &mut segments)
            })
        }
    };
    if !ok {
        head.clear();
        segments.clear();
        let fallback = Outcome::Failed(EIO, "reply cannot be encoded".into());
        return encode_reply(style, req, contexts, fallback);
    }
    if !head.is_empty() {
        segments.push(head.freeze());
    }
    segments
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::reply::Chunk;

    fn lim(style: HeaderStyle) -> Limits {
        Limits {
            size: 1 << 20,
            read_only: false,
            max_payload: 1 << 16,
            style,
            has_contexts: true,
        }
    }

    fn req(command: u16, flags: u16, offset: u64, length: u64) -> Request {
        Request {
            flags,
            command,
            cookie: 9,
            offset,
            length,
        }
    }

    #[test]
    fn validation_errors() {
        let l = lim(HeaderStyle::Structured);
        let mb = 1 << 20;
        assert_eq!(validate(&req(99, 0, 0, 0), &l).unwrap_err().0, EINVAL);
        assert_eq!(
            validate(&req(CMD_RESIZE, 0, 0, 0), &l).unwrap_err().0,
            EINVAL
        );
        assert_eq!(
            validate(&req(CMD_READ, 0x40, 0, 1), &l).unwrap_err().0,
            EINVAL
        );
        assert_eq!(
            validate(&req(CMD_READ, 0, mb, 1), &l).unwrap_err().0,
            EINVAL
        );
        assert_eq!(
            validate(&req(CMD_READ, 0, 0, 1 << 17), &l).unwrap_err().0,
            EINVAL
        );
        assert_eq!(
            validate(&req(CMD_READ, 0, u64::MAX, 2), &l).unwrap_err().0,
            EINVAL
        );
        assert_eq!(
            validate(&req(CMD_WRITE, 0, mb - 1, 2), &l).unwrap_err().0,
            ENOSPC
        );
        assert_eq!(
            validate(&req(CMD_WRITE_ZEROES, 0, mb, 1), &l)
                .unwrap_err()
                .0,
            ENOSPC
        );
        assert_eq!(
            validate(&req(CMD_TRIM, 0, mb, 1), &l).unwrap_err().0,
            EINVAL
        );
        assert_eq!(
            validate(&req(CMD_CACHE, 0, mb, 1), &l).unwrap_err().0,
            EINVAL
        );
        assert_eq!(
            validate(&req(CMD_BLOCK_STATUS, 0, 0, 0), &l).unwrap_err().0,
            EINVAL
        );
        // DF needs structured replies; PAYLOAD_LEN needs extended headers.
        let simple = lim(HeaderStyle::Simple);
        assert_eq!(
            validate(&req(CMD_READ, CMD_FLAG_DF, 0, 1), &simple)
                .unwrap_err()
                .0,
            EINVAL
        );
        assert_eq!(
            validate(&req(CMD_WRITE, CMD_FLAG_PAYLOAD_LEN, 0, 1), &l)
                .unwrap_err()
                .0,
            EINVAL
        );
        let ro = Limits {
            read_only: true,
            ..l
        };
        for c in [CMD_WRITE, CMD_WRITE_ZEROES, CMD_TRIM] {
            assert_eq!(validate(&req(c, 0, mb, 1), &ro).unwrap_err().0, EPERM);
        }
        let no_ctx = Limits {
            has_contexts: false,
            ..l
        };
        assert_eq!(
            validate(&req(CMD_BLOCK_STATUS, 0, 0, 1), &no_ctx)
                .unwrap_err()
                .0,
            EINVAL
        );
    }

    #[test]
    fn validation_accepts() {
        let l = lim(HeaderStyle::Extended);
        // TRIM and WRITE_ZEROES may be far larger than the payload limit.
        assert_eq!(
            validate(
                &req(
                    CMD_WRITE_ZEROES,
                    CMD_FLAG_NO_HOLE | CMD_FLAG_FAST_ZERO,
                    0,
                    1 << 20
                ),
                &l
            ),
            Ok(Op::WriteZeroes {
                offset: 0,
                len: 1 << 20,
                may_trim: false,
                fast_only: true,
                fua: false
            })
        );
        assert_eq!(
            validate(&req(CMD_READ, CMD_FLAG_DF | CMD_FLAG_FUA, 4096, 512), &l),
            Ok(Op::Read {
                offset: 4096,
                len: 512,
                df: true
            })
        );
        assert_eq!(
            validate(
                &req(CMD_WRITE, CMD_FLAG_FUA | CMD_FLAG_PAYLOAD_LEN, 0, 5),
                &l
            ),
            Ok(Op::Write {
                offset: 0,
                fua: true
            })
        );
        assert_eq!(validate(&req(CMD_FLUSH, 0, 0, 0), &l), Ok(Op::Flush));
    }

    #[test]
    fn meta_context_queries() {
        use MetaContext::*;
        assert_eq!(
            MetaContext::matching("base:allocation", false),
            vec![BaseAllocation]
        );
        assert_eq!(MetaContext::matching("base:", true), vec![BaseAllocation]);
        assert_eq!(MetaContext::matching("base:", false), vec![]);
        assert_eq!(MetaContext::matching("qemu:", true), vec![AllocationDepth]);
        assert_eq!(
            MetaContext::matching("qemu:allocation-depth", false),
            vec![AllocationDepth]
        );
        assert_eq!(MetaContext::matching("qemu:dirty-bitmap:x", true), vec![]);
        assert_eq!(MetaContext::matching("", true), vec![]);
    }

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
