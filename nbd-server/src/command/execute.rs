//! Running a validated request against the export.

use bytes::Bytes;

use super::Op;
use crate::errno;
use crate::proto::request::{Command, HeaderStyle};
use crate::proto::*;
use crate::{Export, ExportError, Extent};

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
/// Shorter structured READs are read as data without asking for block status first: the hole
/// chunks could save at most this many bytes on the wire, less than the extra export call costs.
const MIN_SPARSE_READ: u32 = 64 * 1024;
/// Pieces a READ reply is split into at most; a more fragmented range is sent as one data chunk.
const MAX_READ_PIECES: usize = 64;

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
            let r = if style.structured() && !df && len >= MIN_SPARSE_READ {
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
