//! LVM2 logical volumes inside a physical volume (a partition of type LVM, or a whole disk),
//! through `lamlvm`: read-only, no unsafe, no_std; it reads the PV label and the volume
//! group's metadata text (the first of the two copies whose checksum holds) and maps an LV's
//! bytes through its segments. Linear LVs (one segment or several, anywhere on the PV) and
//! RAID1 LVs with a leg on this PV are read; striped, thin, snapshot and cache LVs, and LVs
//! whose extents are on another PV (a VG spanning disks), are listed with why they cannot be.
//!
//! Each LV becomes a [`ReadAt`] of its own, so [`crate::fs::probe`] reads the filesystem on it
//! exactly as on a partition.

use std::sync::{Arc, Mutex};

use embedded_io::{ErrorKind, ErrorType, Read, Seek, SeekFrom};
use lamlvm::{Lvm2, OwnedLvReader};

use crate::error::{Error, Result};
use crate::fs::guarded;
use crate::source::ReadAt;

/// One logical volume of a PV's volume group, as its metadata describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogicalVolume {
    pub vg: String,
    pub name: String,
    /// Bytes, when it can be read.
    pub size: Option<u64>,
    /// Why it cannot be read, when it cannot.
    pub error: Option<String>,
}

/// The LVs of the volume group on `pv` that LVM shows (not the hidden parts of RAID or thin
/// LVs), in the metadata's order.
pub fn logical_volumes(pv: Arc<dyn ReadAt>) -> Result<Vec<LogicalVolume>> {
    guarded("lvm2", "listing its volumes", || list(pv))
}

fn list(pv: Arc<dyn ReadAt>) -> Result<Vec<LogicalVolume>> {
    let lvm = open(&pv)?;
    let mut out = Vec::new();
    for lv in lvm.lvs() {
        let meta = lv.raw_metadata();
        if !meta.status.iter().any(|s| s == "VISIBLE") {
            continue;
        }
        let (size, error) = match lvm.open_lv_owned_by_name(lv.name(), PvCursor::new(pv.clone())) {
            Ok(Some(reader)) => (Some(reader.len()), None),
            Ok(None) => (None, Some("not in the metadata".to_owned())),
            Err(e) => (None, Some(describe(&e))),
        };
        out.push(LogicalVolume {
            vg: lvm.vg_name().to_owned(),
            name: lv.name().to_owned(),
            size,
            error,
        });
    }
    Ok(out)
}

/// The bytes of the LV `name` on `pv`.
pub fn open_logical_volume(pv: Arc<dyn ReadAt>, name: &str) -> Result<Arc<dyn ReadAt>> {
    guarded("lvm2", name, || open_lv(pv, name))
}

fn open_lv(pv: Arc<dyn ReadAt>, name: &str) -> Result<Arc<dyn ReadAt>> {
    let lvm = open(&pv)?;
    let cursor = PvCursor::new(pv);
    let fault = cursor.fault.clone();
    match lvm.open_lv_owned_by_name(name, cursor) {
        Ok(Some(reader)) => Ok(Arc::new(Lv {
            size: reader.len(),
            reader: Mutex::new(reader),
            fault,
        })),
        Ok(None) => Err(Error::NotFound(format!("logical volume {name}"))),
        Err(e) => Err(Error::Unsupported(format!(
            "lvm2: {name}: {}",
            describe(&e)
        ))),
    }
}

fn open(pv: &Arc<dyn ReadAt>) -> Result<Lvm2> {
    let mut cursor = PvCursor::new(pv.clone());
    Lvm2::open(&mut cursor)
        .map_err(|e| PvCursor::take_fault(&cursor.fault, || Error::Corrupt(format!("lvm2: {e}"))))
}

fn describe(e: &lamlvm::OpenLvError<PvError>) -> String {
    match e {
        lamlvm::OpenLvError::Unsupported(why) => (*why).to_owned(),
        lamlvm::OpenLvError::Pv(PvError) => "a read of the physical volume failed".to_owned(),
        lamlvm::OpenLvError::NoSegment => "a hole in its segments".to_owned(),
        lamlvm::OpenLvError::SeekOverflow => "segments past any disk's size".to_owned(),
    }
}

/// A read of the PV failed; the reason is kept in the cursor (`fault`), since embedded-io's
/// errors carry only a kind.
#[derive(Debug, Clone, Copy)]
struct PvError;

impl embedded_io::Error for PvError {
    fn kind(&self) -> ErrorKind {
        ErrorKind::Other
    }
}

/// Where a cursor leaves the error of a failed read, for whoever gets lamlvm's `Pv` error.
type Fault = Arc<Mutex<Option<Error>>>;

/// `embedded_io::Read + Seek` over a positional reader, for lamlvm.
struct PvCursor {
    pv: Arc<dyn ReadAt>,
    pos: u64,
    fault: Fault,
}

impl PvCursor {
    fn new(pv: Arc<dyn ReadAt>) -> Self {
        PvCursor {
            pv,
            pos: 0,
            fault: Fault::default(),
        }
    }

    /// The error a failed read left, else `other`.
    fn take_fault(fault: &Fault, other: impl FnOnce() -> Error) -> Error {
        let taken = fault.lock().unwrap_or_else(|p| p.into_inner()).take();
        taken.unwrap_or_else(other)
    }
}

impl ErrorType for PvCursor {
    type Error = PvError;
}

impl Read for PvCursor {
    fn read(&mut self, buf: &mut [u8]) -> Result<usize, PvError> {
        let left = self.pv.size().saturating_sub(self.pos);
        let n = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        if let Err(e) = self.pv.read_at(&mut buf[..n], self.pos) {
            *self.fault.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
            return Err(PvError);
        }
        self.pos += n as u64;
        Ok(n)
    }
}

impl Seek for PvCursor {
    fn seek(&mut self, pos: SeekFrom) -> Result<u64, PvError> {
        let target = match pos {
            SeekFrom::Start(p) => Some(p),
            SeekFrom::End(d) => self.pv.size().checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        self.pos = target.ok_or(PvError)?;
        Ok(self.pos)
    }
}

/// An LV as a positional reader. lamlvm's reader has a cursor, so reads take turns.
struct Lv {
    size: u64,
    reader: Mutex<OwnedLvReader<PvCursor>>,
    fault: Fault,
}

impl ReadAt for Lv {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        crate::source::check_bounds(offset, buf.len(), self.size)?;
        guarded("lvm2", "reading a volume", || self.read_mapped(buf, offset))
    }
}

impl Lv {
    fn read_mapped(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        let mut reader = self.reader.lock().unwrap_or_else(|p| p.into_inner());
        let failed = |e: lamlvm::OpenLvError<PvError>| {
            PvCursor::take_fault(&self.fault, || {
                Error::Corrupt(format!("lvm2: {}", describe(&e)))
            })
        };
        reader.seek(SeekFrom::Start(offset)).map_err(failed)?;
        let mut done = 0;
        // A read stops at the end of a segment; the next one continues on the PV elsewhere.
        while done < buf.len() {
            match reader.read(&mut buf[done..]) {
                Ok(0) => {
                    return Err(Error::Corrupt(format!(
                        "lvm2: the volume ends at {} of {}",
                        offset + done as u64,
                        self.size
                    )));
                }
                Ok(n) => done += n,
                Err(e) => return Err(failed(e)),
            }
        }
        Ok(())
    }
}
