//! Running a validated request against the export.

use bytes::Bytes;

use super::Op;
use crate::errno;
use crate::proto::request::{Command, HeaderStyle};
use crate::proto::*;
use crate::{Export, ExportError, Extent, ReadPiece};

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
                match export.sparse_read(offset, len).await {
                    Ok(pieces) => check_pieces(offset, len, pieces),
                    Err(e) => Err(e),
                }
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

async fn plain_read<E: Export + ?Sized>(
    export: &E,
    offset: u64,
    len: u32,
) -> Result<ReadPiece, ExportError> {
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
pub(crate) async fn default_sparse_read<E: Export + ?Sized>(
    export: &E,
    offset: u64,
    len: u32,
) -> Result<Vec<ReadPiece>, ExportError> {
    let end = offset + u64::from(len);
    let mut runs: Vec<Run> = Vec::new();
    let mut pos = offset;
    for _ in 0..MAX_STATUS_CALLS_PER_READ {
        if pos >= end {
            break;
        }
        let Ok(extents) = export.block_status(pos, end - pos).await else {
            break;
        };
        let before = pos;
        add_extents(&mut runs, &mut pos, end, &extents);
        if pos == before {
            break;
        }
    }
    let Some(runs) = finish_runs(runs, pos, end) else {
        return Ok(vec![plain_read(export, offset, len).await?]);
    };
    let mut pieces = Vec::with_capacity(runs.len());
    for (start, l, zero) in runs {
        pieces.push(if zero {
            ReadPiece::Hole {
                offset: start,
                len: l,
            }
        } else {
            plain_read(export, start, l).await?
        });
    }
    Ok(pieces)
}

/// `(start, length, reads-as-zero)`.
type Run = (u64, u64, bool);

/// How a structured READ of `[offset, offset + len)` goes out, given block status covering the
/// range or a prefix of it: merged `(start, length, reads-as-zero)` runs covering the whole range
/// (what the status does not cover is data), or `None` when it should go as one data chunk (no
/// zero run in it, or more than [`MAX_READ_PIECES`] runs).
pub fn sparse_runs(offset: u64, len: u32, extents: &[Extent]) -> Option<Vec<(u64, u32, bool)>> {
    let end = offset + u64::from(len);
    let mut runs = Vec::new();
    let mut pos = offset;
    add_extents(&mut runs, &mut pos, end, extents);
    finish_runs(runs, pos, end)
}

fn add_extents(runs: &mut Vec<Run>, pos: &mut u64, end: u64, extents: &[Extent]) {
    for e in extents {
        if *pos >= end {
            break;
        }
        let l = e.length.min(end - *pos);
        if l == 0 {
            continue;
        }
        push_run(runs, *pos, l, e.zero);
        *pos += l;
    }
}

fn finish_runs(mut runs: Vec<Run>, pos: u64, end: u64) -> Option<Vec<(u64, u32, bool)>> {
    if pos < end {
        push_run(&mut runs, pos, end - pos, false);
    }
    if runs.len() > MAX_READ_PIECES || (runs.len() == 1 && !runs[0].2) {
        return None;
    }
    // Every run lies inside the u32-sized request.
    Some(runs.into_iter().map(|(s, l, z)| (s, l as u32, z)).collect())
}

/// An export's own sparse read must cover the request exactly, in order, with data of the
/// lengths it claims: anything else would put the wrong bytes on the wire.
fn check_pieces(
    offset: u64,
    len: u32,
    pieces: Vec<ReadPiece>,
) -> Result<Vec<ReadPiece>, ExportError> {
    let mut pos = offset;
    for p in &pieces {
        let (start, l) = match p {
            ReadPiece::Data { offset, data } => (*offset, data.len() as u64),
            ReadPiece::Hole { offset, len } => (*offset, u64::from(*len)),
        };
        if start != pos || l == 0 {
            return Err(ExportError::Io(format!(
                "sparse read piece at {start:#x} (length {l}) where {pos:#x} was due"
            )));
        }
        pos += l;
    }
    if pos != offset + u64::from(len) {
        return Err(ExportError::Io(format!(
            "sparse read pieces end at {pos:#x}, the request at {:#x}",
            offset + u64::from(len)
        )));
    }
    Ok(pieces)
}

fn push_run(runs: &mut Vec<Run>, start: u64, len: u64, zero: bool) {
    if let Some(last) = runs.last_mut()
        && last.2 == zero
    {
        last.1 += len;
        return;
    }
    runs.push((start, len, zero));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ext(length: u64, zero: bool) -> Extent {
        Extent {
            length,
            hole: zero,
            zero,
            depth: u32::from(!zero),
        }
    }

    #[test]
    fn sparse_runs_merge_and_cover_the_range() {
        // Data, two zero extents that merge, data past what the status covered.
        let runs = sparse_runs(
            4096,
            20480,
            &[ext(4096, false), ext(4096, true), ext(4096, true)],
        );
        assert_eq!(
            runs,
            Some(vec![
                (4096, 4096, false),
                (8192, 8192, true),
                (16384, 8192, false)
            ])
        );
        // Extents longer than the request are cut at its end.
        assert_eq!(
            sparse_runs(0, 8192, &[ext(4096, true), ext(1 << 30, false)]),
            Some(vec![(0, 4096, true), (4096, 4096, false)])
        );
        // No zero run, no status at all, or too fragmented: one data chunk.
        assert_eq!(sparse_runs(0, 8192, &[ext(8192, false)]), None);
        assert_eq!(sparse_runs(0, 8192, &[]), None);
        let many: Vec<Extent> = (0..130).map(|i| ext(512, i % 2 == 0)).collect();
        assert_eq!(sparse_runs(0, 130 * 512, &many), None);
        // All zeros: one hole.
        assert_eq!(
            sparse_runs(0, 8192, &[ext(8192, true)]),
            Some(vec![(0, 8192, true)])
        );
    }

    #[test]
    fn an_exports_pieces_must_cover_the_request_exactly() {
        let data = |offset, len: usize| ReadPiece::Data {
            offset,
            data: Bytes::from(vec![1; len]),
        };
        let hole = |offset, len| ReadPiece::Hole { offset, len };
        assert!(check_pieces(100, 30, vec![data(100, 10), hole(110, 20)]).is_ok());
        // A gap, an overlap, a short end, an empty piece.
        assert!(check_pieces(100, 30, vec![data(100, 10), hole(111, 19)]).is_err());
        assert!(check_pieces(100, 30, vec![data(100, 10), hole(109, 21)]).is_err());
        assert!(check_pieces(100, 30, vec![data(100, 10), hole(110, 10)]).is_err());
        assert!(check_pieces(100, 30, vec![hole(100, 0), data(100, 30)]).is_err());
    }
}
