//! What one request means: validation (pure), running it against the export (`execute`), and the
//! bytes of its reply (`encode`, pure).

mod encode;
mod execute;

pub(crate) use encode::encode_reply;
pub(crate) use execute::{Outcome, ReadPiece, execute};

use crate::Extent;
use crate::proto::request::{Command, HeaderStyle, Request};
use crate::proto::*;

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

/// A DISC without payload ends the connection at the reader; one with a payload is refused like
/// any other command the server does not run.
pub(crate) fn is_disconnect(req: &Request, payload_len: u64) -> bool {
    req.command == CMD_DISC && payload_len == 0
}

/// Bytes a request weighs on the payload budgets: a READ's reply data (at most what a READ may
/// ask for), anything else's payload.
pub(crate) fn in_flight_bytes(req: &Request, payload_len: u64, max_payload: u32) -> u64 {
    if req.command == CMD_READ {
        req.length.min(u64::from(max_payload))
    } else {
        payload_len
    }
}

/// Whether the reply carries the request's bytes (READ data), so that its budget is held until
/// the reply is written rather than released once the request has run.
pub(crate) fn reply_carries_data(req: &Request) -> bool {
    req.command == CMD_READ
}

/// Whether a successful request wrote its payload to the export (for the export's figures).
pub(crate) fn writes_payload(req: &Request) -> bool {
    req.command == CMD_WRITE
}

/// An error to send: NBD errno and a short message for the client's log.
pub(crate) type Refusal = (u32, &'static str);

fn in_range(offset: u64, len: u64, size: u64) -> bool {
    offset.checked_add(len).is_some_and(|end| end <= size)
}

/// The flags `cmd` may carry on a connection of `style`.
fn allowed_flags(cmd: Command, style: HeaderStyle) -> u16 {
    // FUA is valid on every command once advertised; servers ignore it where meaningless.
    CMD_FLAG_FUA
        | match cmd {
            Command::Read if style.structured() => CMD_FLAG_DF,
            Command::Write if style == HeaderStyle::Extended => CMD_FLAG_PAYLOAD_LEN,
            Command::WriteZeroes => CMD_FLAG_NO_HOLE | CMD_FLAG_FAST_ZERO,
            Command::BlockStatus => CMD_FLAG_REQ_ONE,
            _ => 0,
        }
}

/// Checks flags, permissions and ranges. DISC never gets here (the reader handles it).
pub(crate) fn validate(req: &Request, lim: &Limits) -> Result<Op, Refusal> {
    let Some(cmd) = Command::from_code(req.command) else {
        return Err((EINVAL, "unknown command"));
    };
    if req.flags & !allowed_flags(cmd, lim.style) != 0 {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn lim(style: HeaderStyle) -> Limits {
        Limits {
            size: 1 << 20,
            read_only: false,
            max_payload: 1 << 16,
            style,
            has_contexts: true,
        }
    }

    /// A request with a fixed cookie; the reply tests use it too.
    pub(super) fn req(command: u16, flags: u16, offset: u64, length: u64) -> Request {
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
}
