//! The adapter from a [`qcow2::Image`] to an [`nbd_server::Export`].
//!
//! `qcow2` is synchronous (positional file I/O); every call runs in the export's lane of the shared
//! I/O engine ([`engine`]) so an NBD connection task never blocks a runtime thread. Image errors become NBD
//! export errors here and nowhere else.

pub mod engine;
mod readbuf;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use bytes::Bytes;
use nbd_server::{Export, ExportError, Extent};
use qcow2::{ErrorKind, ExtentKind, Image};

use engine::{IoEngine, IoLane};

/// Largest preferred block size we advertise; bigger clusters do not make bigger requests better.
const MAX_PREFERRED: u64 = 2 << 20;
const MIN_PREFERRED: u64 = 4096;
/// Calls of one export running at once on buffered I/O: enough to keep a few writes in flight
/// while another waits on the image's metadata lock or a flush.
const IO_DEPTH: usize = 4;
/// Calls of one export running at once on direct I/O. There no page cache absorbs a write: each
/// call waits for the device (its engine thread asleep in `io_uring_enter`, no CPU), so this is
/// the export's queue depth on the device. 16 is the depth at which fio reached the disk's
/// 1.5 GiB/s with 2 MiB direct writes (issue 11). Payload memory stays bounded by the NBD
/// server's budget, not by this.
const DIRECT_IO_DEPTH: usize = 16;

/// A QCOW2 image served as an NBD export.
pub struct ImageExport {
    image: Arc<Image>,
    size: u64,
    read_only: bool,
    preferred: u32,
    /// Bytes stored, and changes after the client said it was done.
    tally: Arc<WriteTally>,
    lane: IoLane,
}

/// What the hub learns from an export's changes (WRITE, WRITE_ZEROES, TRIM): the bytes of WRITE
/// payload stored, counted here so the total is exact even for writes that land while the server
/// drains the export; and, once [`WriteTally::seal`]ed by the client's `complete`, every change
/// that still arrives, which is refused and counted: the backup can no longer be `completed`.
#[derive(Debug, Default)]
pub struct WriteTally {
    bytes: AtomicU64,
    in_flight: AtomicU64,
    sealed: AtomicBool,
    late: AtomicU64,
}

impl WriteTally {
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    /// From now on every change is refused and counted as late.
    pub fn seal(&self) {
        self.sealed.store(true, Ordering::SeqCst);
    }

    /// Changes refused since [`WriteTally::seal`].
    pub fn late(&self) -> u64 {
        self.late.load(Ordering::SeqCst)
    }

    /// Changes running now (begun before the seal).
    pub fn in_flight(&self) -> u64 {
        self.in_flight.load(Ordering::SeqCst)
    }

    /// A change starts: counted in flight, or refused when sealed. SeqCst on both sides: a change
    /// either sees the seal or is seen in flight by whoever checks after sealing.
    fn begin(self: &Arc<Self>) -> Result<InFlight, ExportError> {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        let change = InFlight(Arc::clone(self));
        if self.sealed.load(Ordering::SeqCst) {
            // Once per export: a client that goes on writing must not flood the log.
            if self.late.fetch_add(1, Ordering::SeqCst) == 0 {
                tracing::warn!("write refused: the client already completed this disk");
            }
            return Err(ExportError::ReadOnly);
        }
        Ok(change)
    }
}

/// One change in flight; counted down when dropped.
struct InFlight(Arc<WriteTally>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

impl ImageExport {
    pub fn new(image: Arc<Image>) -> Self {
        let size = image.virtual_size();
        let read_only = !image.is_writable();
        let preferred = image.cluster_size().clamp(MIN_PREFERRED, MAX_PREFERRED) as u32;
        let depth = if image.io_alignment() > 1 {
            DIRECT_IO_DEPTH
        } else {
            IO_DEPTH
        };
        Self {
            image,
            size,
            read_only,
            preferred,
            tally: Arc::default(),
            lane: IoEngine::global().lane(depth),
        }
    }

    /// The export's write figures, shared with the hub.
    pub fn tally(&self) -> Arc<WriteTally> {
        Arc::clone(&self.tally)
    }

    /// Serve a writable image read-only (restores share the image files of completed backups).
    pub fn read_only(mut self) -> Self {
        self.read_only = true;
        self
    }

    pub fn image(&self) -> &Arc<Image> {
        &self.image
    }

    async fn blocking<T, F>(&self, op: F) -> Result<T, ExportError>
    where
        T: Send + 'static,
        F: FnOnce(&Image) -> qcow2::Result<T> + Send + 'static,
    {
        let image = Arc::clone(&self.image);
        // The image handle goes before the answer does: once every caller has its answer, the
        // engine holds no image, and closing it finds it unshared.
        let call = move || {
            let r = op(&image);
            drop(image);
            r
        };
        match self.lane.run(call).await {
            Ok(result) => result.map_err(map_error),
            Err(_) => Err(ExportError::Io("image I/O thread failed".into())),
        }
    }

    /// A change to the image: refused on a read-only export, and durable before it returns when
    /// the client asked for FUA.
    async fn modify<F>(&self, fua: bool, op: F) -> Result<(), ExportError>
    where
        F: FnOnce(&Image) -> qcow2::Result<()> + Send + 'static,
    {
        self.check_writable()?;
        let _change = self.tally.begin()?;
        self.blocking(move |image| {
            op(image)?;
            if fua {
                image.flush()?;
            }
            Ok(())
        })
        .await
    }

    fn check_writable(&self) -> Result<(), ExportError> {
        if self.read_only {
            Err(ExportError::ReadOnly)
        } else {
            Ok(())
        }
    }
}

/// The one place where an image error becomes an NBD export error (and so an errno).
pub fn map_error(err: qcow2::Error) -> ExportError {
    match err.kind() {
        ErrorKind::NoSpace => ExportError::NoSpace,
        ErrorKind::OutOfBounds | ErrorKind::InvalidArgument => ExportError::Invalid(err.message),
        ErrorKind::ReadOnly => ExportError::ReadOnly,
        ErrorKind::Unsupported => ExportError::NotSupported,
        // Io, Corrupt, InvalidFormat and kinds added later: the client can only see EIO. The
        // details are logged here because the client never sees them.
        _ => {
            tracing::error!(error = %err, "image error");
            ExportError::Io(err.to_string())
        }
    }
}

/// Turn the image's extents into NBD extents covering `[offset, ..)` without gaps.
pub fn map_extents(offset: u64, extents: &[qcow2::Extent]) -> Result<Vec<Extent>, ExportError> {
    let mut out: Vec<Extent> = Vec::with_capacity(extents.len());
    let mut pos = offset;
    for e in extents {
        if e.offset != pos {
            return Err(ExportError::Io(format!(
                "block status gap at {pos:#x} (next extent at {:#x})",
                e.offset
            )));
        }
        if e.length == 0 {
            continue;
        }
        pos += e.length;
        let (hole, zero, depth) = match e.kind {
            ExtentKind::Unallocated => (true, true, 0),
            ExtentKind::Zero => (true, true, e.depth),
            ExtentKind::Data => (false, false, e.depth),
        };
        match out.last_mut() {
            Some(last) if last.hole == hole && last.zero == zero && last.depth == depth => {
                last.length += e.length;
            }
            _ => out.push(Extent {
                length: e.length,
                hole,
                zero,
                depth,
            }),
        }
    }
    if out.is_empty() {
        return Err(ExportError::Io(format!("no block status at {offset:#x}")));
    }
    Ok(out)
}

#[async_trait::async_trait]
impl Export for ImageExport {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_only(&self) -> bool {
        self.read_only
    }

    fn preferred_block_size(&self) -> u32 {
        self.preferred
    }

    fn buffer_alignment(&self) -> usize {
        self.image.io_alignment()
    }

    async fn read(&self, offset: u64, len: u32) -> Result<Bytes, ExportError> {
        self.blocking(move |image| {
            let mut buf = readbuf::take(len as usize, image.io_alignment());
            image.read_at(offset, &mut buf)?;
            Ok(readbuf::reply(buf))
        })
        .await
    }

    async fn write(&self, offset: u64, data: Bytes, fua: bool) -> Result<(), ExportError> {
        let len = data.len() as u64;
        self.modify(fua, move |image| image.write_at(offset, &data))
            .await?;
        self.tally.bytes.fetch_add(len, Ordering::Relaxed);
        Ok(())
    }

    async fn write_zeroes(
        &self,
        offset: u64,
        len: u64,
        may_trim: bool,
        _fast_only: bool,
        fua: bool,
    ) -> Result<(), ExportError> {
        // Whole clusters become zero clusters (L2 entries only); at most the two partial
        // clusters at the ends get written zeros. That is always faster than the client writing
        // the zeros itself, so FAST_ZERO never needs refusing.
        self.modify(fua, move |image| image.write_zeroes(offset, len, may_trim))
            .await
    }

    async fn trim(&self, offset: u64, len: u64, fua: bool) -> Result<(), ExportError> {
        self.modify(fua, move |image| image.discard(offset, len))
            .await
    }

    async fn flush(&self) -> Result<(), ExportError> {
        if self.read_only {
            return Ok(());
        }
        self.blocking(|image| image.flush()).await
    }

    async fn block_status(&self, offset: u64, len: u64) -> Result<Vec<Extent>, ExportError> {
        let extents = self
            .blocking(move |image| image.block_status(offset, len))
            .await?;
        map_extents(offset, &extents)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mem_export(size: u64) -> ImageExport {
        let st = Arc::new(qcow2::MemStorage::new(Vec::new()));
        Image::create_storage(&*st, size, 65536).unwrap();
        let opts = qcow2::OpenOptions {
            writable: true,
            ..Default::default()
        };
        ImageExport::new(Arc::new(Image::open_storage(st, &opts).unwrap()))
    }

    /// Read buffers are reused across exports: a reply must never carry bytes of an earlier one,
    /// whatever the clusters it covers are (data, zero, unallocated).
    #[tokio::test]
    async fn reused_read_buffers_never_leak_earlier_replies() {
        let len = (320 << 10) + 512;
        let secret = mem_export(4 << 20);
        secret
            .write(0, Bytes::from(vec![0xab; 2 << 20]), false)
            .await
            .unwrap();
        // Zero clusters at [0, 1 MiB) (data, then zeroed without trim), a data cluster of which
        // only 4 KiB were written at 1 MiB, nothing at 3 MiB.
        let fresh = mem_export(4 << 20);
        fresh
            .write(0, Bytes::from(vec![0x22; 1 << 20]), false)
            .await
            .unwrap();
        fresh
            .write_zeroes(0, 1 << 20, false, false, false)
            .await
            .unwrap();
        fresh
            .write(1 << 20, Bytes::from(vec![0x11; 4096]), false)
            .await
            .unwrap();
        for _ in 0..4 {
            let leaked = secret.read(0, len).await.unwrap();
            assert!(leaked.iter().all(|&b| b == 0xab));
            drop(leaked);
            for offset in [0, 1 << 20, 3 << 20] {
                let got = fresh.read(offset, len).await.unwrap();
                let data = if offset == 1 << 20 { 4096 } else { 0 };
                assert!(got[..data].iter().all(|&b| b == 0x11), "at {offset}");
                assert!(got[data..].iter().all(|&b| b == 0), "at {offset}");
            }
        }
    }

    fn ext(offset: u64, length: u64, kind: ExtentKind, depth: u32) -> qcow2::Extent {
        qcow2::Extent {
            offset,
            length,
            kind,
            depth,
        }
    }

    #[test]
    fn extents_map_kinds_and_merge_equal_neighbours() {
        let got = map_extents(
            4096,
            &[
                ext(4096, 4096, ExtentKind::Data, 1),
                ext(8192, 4096, ExtentKind::Data, 1),
                ext(12288, 4096, ExtentKind::Data, 2),
                ext(16384, 4096, ExtentKind::Zero, 1),
                ext(20480, 4096, ExtentKind::Unallocated, 0),
            ],
        )
        .unwrap();
        assert_eq!(
            got,
            vec![
                Extent {
                    length: 8192,
                    hole: false,
                    zero: false,
                    depth: 1
                },
                Extent {
                    length: 4096,
                    hole: false,
                    zero: false,
                    depth: 2
                },
                Extent {
                    length: 4096,
                    hole: true,
                    zero: true,
                    depth: 1
                },
                Extent {
                    length: 4096,
                    hole: true,
                    zero: true,
                    depth: 0
                },
            ]
        );
    }

    #[test]
    fn extents_with_gap_or_none_are_errors() {
        assert!(map_extents(0, &[ext(512, 512, ExtentKind::Data, 1)]).is_err());
        assert!(map_extents(0, &[]).is_err());
        assert!(map_extents(0, &[ext(0, 0, ExtentKind::Data, 1)]).is_err());
    }

    #[test]
    fn error_kinds_map_to_export_errors() {
        let e = |kind| qcow2::Error {
            kind,
            message: "m".into(),
        };
        assert_eq!(map_error(e(ErrorKind::NoSpace)), ExportError::NoSpace);
        assert_eq!(
            map_error(e(ErrorKind::OutOfBounds)),
            ExportError::Invalid("m".into())
        );
        assert_eq!(
            map_error(e(ErrorKind::InvalidArgument)),
            ExportError::Invalid("m".into())
        );
        assert_eq!(map_error(e(ErrorKind::ReadOnly)), ExportError::ReadOnly);
        assert!(matches!(map_error(e(ErrorKind::Io)), ExportError::Io(_)));
        assert!(matches!(
            map_error(e(ErrorKind::Corrupt)),
            ExportError::Io(_)
        ));
    }

    /// After the seal every change is refused and counted; reads and flushes still work.
    #[tokio::test]
    async fn a_sealed_export_refuses_and_counts_changes() {
        let export = mem_export(1 << 20);
        let tally = export.tally();
        export
            .write(0, Bytes::from(vec![1u8; 4096]), false)
            .await
            .unwrap();
        tally.seal();
        assert!(matches!(
            export
                .write(4096, Bytes::from(vec![2u8; 4096]), false)
                .await,
            Err(ExportError::ReadOnly)
        ));
        assert!(
            export
                .write_zeroes(0, 4096, false, false, false)
                .await
                .is_err()
        );
        assert!(export.trim(0, 4096, false).await.is_err());
        export.flush().await.unwrap();
        assert_eq!(&export.read(0, 4096).await.unwrap()[..], &[1u8; 4096][..]);
        assert_eq!(
            (tally.bytes(), tally.late(), tally.in_flight()),
            (4096, 3, 0)
        );
    }
}
