//! An open image: lookups under the metadata lock, data I/O outside it.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use parking_lot::{Condvar, Mutex, MutexGuard};

use crate::chain::{self, Backing, push_extent};
use crate::compress::{self, CompressionType};
use crate::error::{Error, ErrorKind, Result};
use crate::format::{self, Header, L2Entry};
use crate::meta::{Geometry, Meta};
use crate::storage::{self, FileStorage, LockMode, Storage, open_regular};
use crate::units::{GuestCluster, HostOffset};
use crate::{Extent, ExtentKind, ImageInfo, OpenOptions};

pub struct Image {
    path: PathBuf,
    st: Arc<dyn Storage>,
    header: Header,
    geo: Geometry,
    writable: bool,
    compression: CompressionType,
    backing: Option<Backing>,
    meta: Mutex<Meta>,
    /// Signalled when in-flight allocations complete.
    done: Condvar,
    file_len: Arc<AtomicU64>,
    closed: AtomicBool,
}

/// What one run of a write does, decided under the metadata lock and carried out outside it.
enum WritePlan {
    /// Clusters this layer owns, contiguous on the host: `len` bytes written in place at `host`.
    InPlace { host: u64, len: usize },
    /// Whole clusters of zeros over clusters this layer does not own, guest clusters
    /// `[first, end)`: stored as zero clusters, no data allocated.
    Zeros { first: u64, end: u64 },
    /// Clusters that need fresh host clusters (allocated, and marked in flight).
    Fresh(FreshRun),
}

/// `n` guest clusters from `first`, given the fresh host clusters from `host`; the entries they
/// had at either end, for copy-on-write of a partial first or last cluster.
struct FreshRun {
    first: GuestCluster,
    n: u64,
    host: HostOffset,
    head_old: L2Entry,
    tail_old: L2Entry,
}

/// Where the bytes of one guest range come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Map {
    Data(u64),
    Zero,
    Lower,
    Compressed { host: u64, sectors: u64 },
}

impl Image {
    /// Creates a v3 image (16-bit refcounts) under a temporary name, then links it into place;
    /// fails if `path` exists. A backing name is stored relative to the image's directory when
    /// both share a tree. `size` 0 with a backing file takes the backing file's size.
    pub fn create(path: &Path, opts: &crate::CreateOptions) -> Result<()> {
        crate::create::create(path, opts)
    }

    /// Creates an image in an empty storage (tests, fuzzing); no backing file.
    pub fn create_storage(st: &dyn Storage, size: u64, cluster_size: u32) -> Result<()> {
        if !cluster_size.is_power_of_two()
            || !(512..=2 << 20).contains(&cluster_size)
            || size % 512 != 0
        {
            return Err(Error::invalid_argument(format!(
                "size {size} / cluster size {cluster_size}"
            )));
        }
        let mut header = Header::new_v3(cluster_size.trailing_zeros(), size);
        crate::create::write_new_image(st, &mut header)
    }

    /// Opens an image file (and, when allowed, its backing chain).
    pub fn open(path: &Path, opts: &OpenOptions) -> Result<Image> {
        let mut seen = Vec::new();
        Self::open_chain(path, opts, 0, &mut seen)
    }

    fn open_chain(
        path: &Path,
        opts: &OpenOptions,
        depth: u32,
        seen: &mut Vec<PathBuf>,
    ) -> Result<Image> {
        if depth > opts.max_chain_depth {
            return Err(Error::unsupported(format!(
                "backing chain deeper than {} at {}",
                opts.max_chain_depth,
                path.display()
            )));
        }
        let canon = path
            .canonicalize()
            .map_err(|e| Error::io(e, format!("opening {}", path.display())))?;
        if seen.contains(&canon) {
            return Err(Error::corrupt(format!(
                "backing chain loops back to {}",
                path.display()
            )));
        }
        seen.push(canon);
        let file = open_regular(path, opts.writable, opts.no_symlinks)?;
        let fst = FileStorage::new(file);
        fst.lock(if opts.writable {
            LockMode::Write
        } else {
            LockMode::Read
        })
        .map_err(|e| Error::lock(e, path))?;
        let st = storage::open_file_storage(fst, opts.storage_io, opts.writable)
            .map_err(|e| Error::io(e, format!("direct I/O on {}", path.display())))?;
        let mut img = Self::open_storage(st, opts)?;
        img.path = path.to_path_buf();
        if let (Some(name), true) = (img.header.backing_file.clone(), opts.open_backing) {
            let bpath = chain::resolve_backing(path, &name);
            let fmt = img.header.backing_format.clone();
            img.backing = Some(Self::open_backing(
                &bpath,
                fmt.as_deref(),
                opts,
                depth,
                seen,
            )?);
        }
        Ok(img)
    }

    fn open_backing(
        path: &Path,
        fmt: Option<&str>,
        opts: &OpenOptions,
        depth: u32,
        seen: &mut Vec<PathBuf>,
    ) -> Result<Backing> {
        if let Some(dir) = &opts.backing_dir {
            chain::check_within(path, dir)?;
        }
        let fmt = match fmt {
            Some(f) => f.to_owned(),
            None => {
                let mut magic = [0u8; 4];
                let f = open_regular(path, false, opts.no_symlinks)?;
                let is_qcow2 = std::os::unix::fs::FileExt::read_exact_at(&f, &mut magic, 0).is_ok()
                    && u32::from_be_bytes(magic) == format::MAGIC;
                if is_qcow2 {
                    "qcow2".into()
                } else {
                    "raw".into()
                }
            }
        };
        let bopts = OpenOptions {
            writable: false,
            ..opts.clone()
        };
        match fmt.as_str() {
            "qcow2" => Ok(Backing::Qcow2(Box::new(Self::open_chain(
                path,
                &bopts,
                depth + 1,
                seen,
            )?))),
            "raw" => {
                let fst = FileStorage::new(open_regular(path, false, opts.no_symlinks)?);
                fst.lock(LockMode::Read).map_err(|e| Error::lock(e, path))?;
                let st = storage::open_file_storage(fst, opts.storage_io, false)
                    .map_err(|e| Error::io(e, format!("direct I/O on {}", path.display())))?;
                let size = st.len().map_err(|e| Error::io(e, "backing file size"))?;
                Ok(Backing::Raw {
                    st,
                    size,
                    path: path.to_path_buf(),
                    format: fmt,
                })
            }
            other => Err(Error::unsupported(format!(
                "backing format {other:?} of {}",
                path.display()
            ))),
        }
    }

    /// Opens an image held by any storage. Backing files are never opened from here (reads of
    /// unallocated clusters of an image that names one fail with [`ErrorKind::Unsupported`]).
    pub fn open_storage(st: Arc<dyn Storage>, opts: &OpenOptions) -> Result<Image> {
        let (header, file_len) = read_header(&*st)?;
        Self::refuse(&header, opts.writable)?;
        header.validate(file_len)?;
        let compression = CompressionType::from_header(header.compression_type)?;
        let meta = Meta::load(
            st.clone(),
            &header,
            file_len,
            opts.l2_cache_bytes,
            opts.writable,
        )?;
        let file_len = meta.shared_file_len();
        let img = Image {
            path: PathBuf::new(),
            st,
            geo: Geometry::from_header(&header),
            header,
            writable: opts.writable,
            compression,
            backing: None,
            meta: Mutex::new(meta),
            done: Condvar::new(),
            file_len,
            closed: AtomicBool::new(false),
        };
        if img.writable && img.header.autoclear_features != 0 {
            // We keep none of the autoclear structures (bitmaps) up to date: declare them stale.
            img.st
                .write_at(&[0u8; 8], format::hdr::AUTOCLEAR_FEATURES as u64)
                .and_then(|()| img.st.flush())
                .map_err(|e| Error::io(e, "clearing autoclear features"))?;
        }
        Ok(img)
    }

    /// A read-only image held by any storage, reading through `backing` where it maps nothing:
    /// for a chain whose layers are not files (objects in a bucket, say), opened bottom up. The
    /// image must name a backing file (its name is not resolved: `backing` stands for it), and
    /// a chain deeper than `max_chain_depth` is refused as [`Image::open`] refuses it.
    pub fn open_storage_over(
        st: Arc<dyn Storage>,
        opts: &OpenOptions,
        backing: Image,
    ) -> Result<Image> {
        if opts.writable {
            return Err(Error::unsupported(
                "a layer over a given backing image is read-only",
            ));
        }
        let mut img = Self::open_storage(st, opts)?;
        if img.header.backing_file.is_none() {
            return Err(Error::corrupt(
                "the image names no backing file, but a backing image was given",
            ));
        }
        let depth = 1 + chain_depth(&backing);
        if depth > opts.max_chain_depth {
            return Err(Error::unsupported(format!(
                "backing chain deeper than {}",
                opts.max_chain_depth
            )));
        }
        img.backing = Some(Backing::Qcow2(Box::new(backing)));
        Ok(img)
    }

    fn refuse(h: &Header, writable: bool) -> Result<()> {
        h.refuse_unknown_incompatible()?;
        if h.crypt_method != 0 || h.extensions.contains(&format::EXT_CRYPTO) {
            return Err(Error::unsupported(
                "encrypted images (crypt_method at offset 32)",
            ));
        }
        if h.incompatible_features & format::INCOMPAT_DATA_FILE != 0
            || h.extensions.contains(&format::EXT_DATA_FILE)
        {
            return Err(Error::unsupported(
                "external data files (incompatible feature bit 2)",
            ));
        }
        if h.extended_l2() && h.cluster_bits < 14 {
            return Err(Error::corrupt(format!(
                "extended L2 with cluster_bits {} (offset 20)",
                h.cluster_bits
            )));
        }
        if h.incompatible_features & format::INCOMPAT_COMPRESSION == 0 && h.compression_type != 0 {
            return Err(Error::corrupt(
                "compression type set without its incompatible bit (offset 104)",
            ));
        }
        if !writable {
            return Ok(());
        }
        if h.version < 3 {
            return Err(Error::unsupported("writing to version 2 images"));
        }
        if h.nb_snapshots != 0 {
            return Err(Error::unsupported(format!(
                "writing to an image with {} snapshots",
                h.nb_snapshots
            )));
        }
        if h.incompatible_features & format::INCOMPAT_DIRTY != 0 {
            return Err(Error::unsupported(
                "writing to an image with the dirty bit set (run check --repair)",
            ));
        }
        if h.incompatible_features & format::INCOMPAT_CORRUPT != 0 {
            return Err(Error::corrupt(
                "image is marked corrupt (incompatible feature bit 1)",
            ));
        }
        if h.extended_l2() {
            return Err(Error::unsupported(
                "writing to images with extended L2 entries",
            ));
        }
        Ok(())
    }

    pub fn virtual_size(&self) -> u64 {
        self.geo.virtual_size
    }

    pub fn cluster_size(&self) -> u64 {
        self.geo.cluster_size
    }

    /// Buffer address alignment at which data reaches the storage without a copy (1 for the
    /// buffered backend; the direct-I/O alignment for the direct one).
    pub fn io_alignment(&self) -> usize {
        self.st.io_alignment()
    }

    pub fn is_writable(&self) -> bool {
        self.writable
    }

    pub fn header(&self) -> &Header {
        &self.header
    }

    /// The path the image was opened from (empty for [`Image::open_storage`]).
    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn info_chain(&self) -> Vec<ImageInfo> {
        let file_size = self.st.len().unwrap_or(0);
        let allocated_bytes = self.meta.lock().allocated_bytes().unwrap_or(file_size);
        let mut out = vec![ImageInfo {
            path: self.path.clone(),
            format: "qcow2".to_owned(),
            virtual_size: self.geo.virtual_size,
            cluster_size: self.geo.cluster_size,
            backing_file: self.header.backing_file.clone(),
            backing_format: self
                .header
                .backing_format
                .clone()
                .or_else(|| self.backing.as_ref().map(|b| b.format().to_owned())),
            allocated_bytes,
            file_size,
        }];
        if let Some(b) = &self.backing {
            b.info(&mut out);
        }
        out
    }

    fn check_range(&self, offset: u64, len: u64) -> Result<()> {
        match offset.checked_add(len) {
            Some(end) if end <= self.geo.virtual_size => Ok(()),
            _ => Err(Error::new(
                ErrorKind::OutOfBounds,
                format!(
                    "range {offset}+{len} beyond virtual size {}",
                    self.geo.virtual_size
                ),
            )),
        }
    }

    fn check_writable(&self) -> Result<()> {
        if self.writable {
            Ok(())
        } else {
            Err(Error::new(ErrorKind::ReadOnly, "image opened read-only"))
        }
    }

    /// The decoded entry of `gc` (Unallocated when it has no L2 table).
    fn entry(&self, m: &mut Meta, gc: GuestCluster) -> Result<L2Entry> {
        match m.l2_entry(gc)? {
            None => Ok(L2Entry::Unallocated),
            Some((w0, _)) => L2Entry::decode(w0, self.geo.cluster_bits, self.header.extended_l2())
                .map_err(|s| {
                    Error::corrupt(format!(
                        "guest offset {}: {s}",
                        gc.offset(self.geo.cluster_bits)
                    ))
                }),
        }
    }

    /// The mapping of the (sub)cluster holding `pos` and how many bytes from `pos` it covers.
    fn map(&self, m: &mut Meta, pos: u64) -> Result<(Map, u64)> {
        let cs = self.geo.cluster_size;
        let gc = pos >> self.geo.cluster_bits;
        let in_c = pos & (cs - 1);
        let Some((w0, w1)) = m.l2_entry(GuestCluster(gc))? else {
            // No L2 table: the whole range it would cover falls through.
            let table_end = (gc / self.geo.l2_entries + 1) * self.geo.l2_entries;
            return Ok((Map::Lower, (table_end << self.geo.cluster_bits) - pos));
        };
        let ext = self.header.extended_l2();
        let e = L2Entry::decode(w0, self.geo.cluster_bits, ext)
            .map_err(|s| Error::corrupt(format!("guest offset {pos}: {s}")))?;
        let file_len = self.file_len.load(Ordering::Relaxed);
        let data = |host: u64| {
            if host >= file_len {
                Err(Error::corrupt(format!(
                    "guest offset {pos}: data cluster {host} past end of file"
                )))
            } else {
                Ok(Map::Data(host + in_c))
            }
        };
        if let L2Entry::Compressed { host, sectors } = e {
            if ext && w1 != 0 {
                return Err(Error::corrupt(format!(
                    "guest offset {pos}: compressed entry with subcluster bits"
                )));
            }
            return Ok((Map::Compressed { host, sectors }, cs - in_c));
        }
        if !ext {
            let map = match e {
                L2Entry::Unallocated => Map::Lower,
                L2Entry::Zero { .. } => Map::Zero,
                L2Entry::Normal { host, .. } => data(host)?,
                L2Entry::Compressed { .. } => unreachable!("handled above"),
            };
            return Ok((map, cs - in_c));
        }
        let sc = cs / 32;
        let si = in_c / sc;
        let (alloc, zero) = (w1 as u32, (w1 >> 32) as u32);
        if alloc & zero != 0 {
            return Err(Error::corrupt(format!(
                "guest offset {pos}: subcluster both allocated and zero"
            )));
        }
        let avail = sc - in_c % sc;
        let map = if alloc >> si & 1 != 0 {
            match e {
                L2Entry::Normal { host, .. } => data(host)?,
                _ => {
                    return Err(Error::corrupt(format!(
                        "guest offset {pos}: allocated subcluster without cluster"
                    )));
                }
            }
        } else if zero >> si & 1 != 0 {
            Map::Zero
        } else {
            Map::Lower
        };
        Ok((map, avail))
    }

    /// The longest run from `pos` (up to `end`) with one kind of mapping.
    fn map_run(&self, m: &mut Meta, pos: u64, end: u64) -> Result<(Map, u64)> {
        let (first, n) = self.map(m, pos)?;
        let mut len = n.min(end - pos);
        if matches!(first, Map::Compressed { .. }) {
            return Ok((first, len));
        }
        while pos + len < end {
            let (next, n) = self.map(m, pos + len)?;
            let merges = match (first, next) {
                (Map::Data(h), Map::Data(h2)) => h2 == h + len,
                (Map::Zero, Map::Zero) | (Map::Lower, Map::Lower) => true,
                _ => false,
            };
            if !merges {
                break;
            }
            len += n.min(end - pos - len);
        }
        Ok((first, len))
    }

    /// Reads guest bytes. On success every byte of `buf` has been written (zeros where the image
    /// holds none): callers reuse buffers without clearing them.
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        self.check_range(offset, buf.len() as u64)?;
        let end = offset + buf.len() as u64;
        let mut pos = offset;
        while pos < end {
            let (map, len) = {
                let mut m = self.meta.lock();
                self.map_run(&mut m, pos, end)?
            };
            let at = (pos - offset) as usize;
            let dst = &mut buf[at..at + len as usize];
            match map {
                Map::Data(host) => self.read_data(host, dst)?,
                Map::Zero => dst.fill(0),
                Map::Lower => self.read_lower(pos, dst)?,
                Map::Compressed { host, sectors } => {
                    let mut cluster = vec![0u8; self.geo.cluster_size as usize];
                    self.decompress(host, sectors, &mut cluster)?;
                    let in_c = (pos & (self.geo.cluster_size - 1)) as usize;
                    dst.copy_from_slice(&cluster[in_c..in_c + dst.len()]);
                }
            }
            pos += len;
        }
        Ok(())
    }

    /// Reads host bytes of a data cluster; bytes past the end of the file read as zeros.
    fn read_data(&self, host: u64, dst: &mut [u8]) -> Result<()> {
        let file_len = self.file_len.load(Ordering::Relaxed);
        let inside = file_len.saturating_sub(host).min(dst.len() as u64) as usize;
        let (head, tail) = dst.split_at_mut(inside);
        tail.fill(0);
        if !head.is_empty() {
            self.st
                .read_at(head, host)
                .map_err(|e| Error::io(e, format!("reading data at {host}")))?;
        }
        Ok(())
    }

    /// Reads what the layers below this one hold.
    fn read_lower(&self, pos: u64, dst: &mut [u8]) -> Result<()> {
        match (&self.backing, &self.header.backing_file) {
            (Some(b), _) => b.read(pos, dst),
            (None, Some(name)) => Err(Error::unsupported(format!(
                "guest offset {pos} falls through to backing file {name:?}, which was not opened"
            ))),
            (None, None) => {
                dst.fill(0);
                Ok(())
            }
        }
    }

    fn decompress(&self, host: u64, sectors: u64, out: &mut [u8]) -> Result<()> {
        let file_len = self.file_len.load(Ordering::Relaxed);
        if host >= file_len {
            return Err(Error::corrupt(format!(
                "compressed cluster at {host} past end of file"
            )));
        }
        let len = (sectors * 512 - (host & 511)).min(file_len - host);
        let mut input = vec![0u8; len as usize];
        self.st
            .read_at(&mut input, host)
            .map_err(|e| Error::io(e, format!("reading compressed cluster at {host}")))?;
        compress::decompress(self.compression, &input, out, host)
    }

    /// Fills a whole cluster buffer with what cluster `gc` reads as now (for copy-on-write).
    fn cow_source(&self, gc: u64, old: L2Entry, dst: &mut [u8]) -> Result<()> {
        match old {
            L2Entry::Unallocated => self.read_lower(gc << self.geo.cluster_bits, dst),
            L2Entry::Zero { .. } => {
                dst.fill(0);
                Ok(())
            }
            L2Entry::Compressed { host, sectors } => self.decompress(host, sectors, dst),
            L2Entry::Normal { host, .. } => self.read_data(host, dst),
        }
    }

    fn wait_inflight<'a>(&self, m: &mut MutexGuard<'a, Meta>, gc: u64) -> bool {
        if m.inflight.contains(&gc) {
            self.done.wait(m);
            return true;
        }
        false
    }

    pub fn write_at(&self, offset: u64, buf: &[u8]) -> Result<()> {
        self.check_writable()?;
        self.check_range(offset, buf.len() as u64)?;
        let mut done = 0;
        while done < buf.len() {
            done += self.write_run(offset + done as u64, &buf[done..])?;
        }
        Ok(())
    }

    /// Writes the longest prefix of `buf` that is either one in-place run of owned clusters, one
    /// run of whole zero clusters, or one run of clusters needing fresh allocation: planned under
    /// the metadata lock, carried out with the lock dropped. Returns the bytes written.
    fn write_run(&self, pos: u64, buf: &[u8]) -> Result<usize> {
        let end = pos + buf.len() as u64;
        let bits = self.geo.cluster_bits;
        match self.plan_write(pos, buf)? {
            WritePlan::InPlace { host, len } => {
                self.st
                    .write_at(&buf[..len], host)
                    .map_err(|err| Error::io(err, format!("writing data at {host}")))?;
                Ok(len)
            }
            WritePlan::Zeros { first, end: zend } => {
                self.zero_span(first, zend, false)?;
                Ok(((zend << bits).min(end) - pos) as usize)
            }
            WritePlan::Fresh(run) => {
                let res = self.write_fresh(pos, buf, &run);
                self.install_fresh(&run, res)
            }
        }
    }

    /// Decides, under the metadata lock, what the run starting at `pos` is (see [`WritePlan`]).
    /// For a fresh run this allocates its host clusters and marks its guest clusters in flight.
    fn plan_write(&self, pos: u64, buf: &[u8]) -> Result<WritePlan> {
        let bits = self.geo.cluster_bits;
        let first = pos >> bits;
        let last = (pos + buf.len() as u64 - 1) >> bits;
        // Leading whole clusters of zeros, counted before taking the lock (the check reads every
        // byte of an all-zero payload; data exits within the first bytes).
        let mut zero_run = 0;
        while first + zero_run <= last && self.zero_cluster_in(pos, buf, first + zero_run) {
            zero_run += 1;
        }
        let mut m = self.meta.lock();
        let head_old = loop {
            if self.wait_inflight(&mut m, first) {
                continue;
            }
            break self.entry(&mut m, GuestCluster(first))?;
        };
        if let L2Entry::Normal { host, copied: true } = head_old {
            return self.plan_in_place(&mut m, pos, buf.len(), host);
        }
        if zero_run > 0 {
            return self.plan_zeros(&mut m, first, zero_run);
        }
        self.plan_fresh(&mut m, pos, buf, head_old)
    }

    /// The run of owned clusters from `pos`, whose first cluster is at `host`: as far as the
    /// following clusters are owned too, contiguous on the host and not in flight.
    fn plan_in_place(&self, m: &mut Meta, pos: u64, len: usize, host: u64) -> Result<WritePlan> {
        let bits = self.geo.cluster_bits;
        let cs = self.geo.cluster_size;
        let end = pos + len as u64;
        let last = (end - 1) >> bits;
        let mut next = (pos >> bits) + 1;
        let mut next_host = host + cs;
        while next <= last && !m.inflight.contains(&next) {
            match self.entry(m, GuestCluster(next))? {
                L2Entry::Normal {
                    host: h,
                    copied: true,
                } if h == next_host => {
                    next += 1;
                    next_host += cs;
                }
                _ => break,
            }
        }
        if next_host > m.frontier() << bits {
            return Err(Error::corrupt(format!(
                "guest offset {pos}: data cluster {host} not refcounted"
            )));
        }
        Ok(WritePlan::InPlace {
            host: host + (pos & (cs - 1)),
            len: ((next << bits).min(end) - pos) as usize,
        })
    }

    /// Up to `zero_run` whole zero clusters from `first`, over clusters we do not own: stored as
    /// zero clusters (exactly what WRITE_ZEROES without unmap stores) instead of allocating data,
    /// so images stay thin. The run stops before an owned cluster or one in flight.
    fn plan_zeros(&self, m: &mut Meta, first: u64, zero_run: u64) -> Result<WritePlan> {
        let mut k = 1;
        while k < zero_run && !m.inflight.contains(&(first + k)) {
            match self.entry(m, GuestCluster(first + k))? {
                L2Entry::Normal { copied: true, .. } => break,
                _ => k += 1,
            }
        }
        Ok(WritePlan::Zeros {
            first,
            end: first + k,
        })
    }

    /// A run of clusters that need fresh host clusters, from the one `pos` is in (which held
    /// `head_old`); it stops before a whole zero cluster, which the next call stores as zero.
    fn plan_fresh(
        &self,
        m: &mut Meta,
        pos: u64,
        buf: &[u8],
        head_old: L2Entry,
    ) -> Result<WritePlan> {
        let bits = self.geo.cluster_bits;
        let first = pos >> bits;
        let last = (pos + buf.len() as u64 - 1) >> bits;
        let mut n = 1;
        while first + n <= last
            && !m.inflight.contains(&(first + n))
            && !self.zero_cluster_in(pos, buf, first + n)
        {
            match self.entry(m, GuestCluster(first + n))? {
                L2Entry::Normal { copied: true, .. } => break,
                _ => n += 1,
            }
        }
        let mut gc = first;
        while gc < first + n {
            m.ensure_l2(GuestCluster(gc))?;
            gc = (gc / self.geo.l2_entries + 1) * self.geo.l2_entries;
        }
        let tail_old = self.entry(m, GuestCluster(first + n - 1))?;
        let host = m.alloc(n)?;
        for c in first..first + n {
            m.inflight.insert(c);
        }
        m.reserve_ahead();
        Ok(WritePlan::Fresh(FreshRun {
            first: GuestCluster(first),
            n,
            host,
            head_old,
            tail_old,
        }))
    }

    /// After a fresh run's data went out (`written`): its L2 entries installed, the clusters they
    /// replaced queued for release, its in-flight marks cleared whatever happened.
    fn install_fresh(&self, run: &FreshRun, written: Result<usize>) -> Result<usize> {
        let cs = self.geo.cluster_size;
        let (first, n) = (run.first.0, run.n);
        let mut m = self.meta.lock();
        let mut out = written;
        if out.is_ok() {
            for i in 0..n {
                let c = GuestCluster(first + i);
                let installed = self.entry(&mut m, c).map(|old| {
                    m.set_l2(c, L2Entry::normal(run.host.add(i * cs).0));
                    m.release(old);
                });
                if let Err(err) = installed {
                    out = Err(err);
                    break;
                }
            }
        }
        for c in first..first + n {
            m.inflight.remove(&c);
        }
        self.done.notify_all();
        let len = out?;
        m.maybe_writeback()?;
        Ok(len)
    }

    /// Whether `buf` (written at guest offset `pos`) covers all of guest cluster `gc` (up to the
    /// virtual size) with zeros.
    fn zero_cluster_in(&self, pos: u64, buf: &[u8], gc: u64) -> bool {
        let start = gc << self.geo.cluster_bits;
        let end = (start + self.geo.cluster_size).min(self.geo.virtual_size);
        if start < pos || end > pos + buf.len() as u64 {
            return false;
        }
        is_zero(&buf[(start - pos) as usize..(end - pos) as usize])
    }

    /// Writes a fresh run's data: the caller's bytes, completed from the chain into one bounce
    /// buffer where the run starts or ends inside a cluster (copy-on-write in the same write).
    fn write_fresh(&self, pos: u64, buf: &[u8], run: &FreshRun) -> Result<usize> {
        let &FreshRun {
            first: GuestCluster(first),
            n,
            host: HostOffset(host),
            head_old,
            tail_old,
        } = run;
        let bits = self.geo.cluster_bits;
        let cs = self.geo.cluster_size as usize;
        let run_start = first << bits;
        let run_end = (first + n) << bits;
        let data_end = (pos + buf.len() as u64).min(run_end);
        let len = (data_end - pos) as usize;
        let head_partial = pos > run_start;
        let tail_partial = data_end < run_end.min(self.geo.virtual_size);
        let wrote = if !head_partial && !tail_partial {
            self.st.write_at(&buf[..len], host)
        } else {
            // Aligned for the storage, so a direct-I/O backend writes it without another copy.
            let mut bounce = storage::AlignedBuf::zeroed(n as usize * cs, self.st.io_alignment());
            if head_partial {
                self.cow_source(first, head_old, &mut bounce[..cs])?;
            }
            if tail_partial && (n > 1 || !head_partial) {
                let at = (n as usize - 1) * cs;
                self.cow_source(first + n - 1, tail_old, &mut bounce[at..])?;
            }
            let at = (pos - run_start) as usize;
            bounce[at..at + len].copy_from_slice(&buf[..len]);
            self.st.write_at(&bounce, host)
        };
        wrote.map_err(|e| Error::io(e, format!("writing data at {host}")))?;
        // The write may have grown the file (preallocation is best effort); reads check the
        // data they map against the known length.
        let written = if !head_partial && !tail_partial {
            len as u64
        } else {
            n * cs as u64
        };
        self.file_len.fetch_max(host + written, Ordering::Relaxed);
        Ok(len)
    }

    pub fn write_zeroes(&self, offset: u64, len: u64, unmap: bool) -> Result<()> {
        self.check_writable()?;
        self.check_range(offset, len)?;
        self.zero_range(offset, len, unmap, false)
    }

    pub fn discard(&self, offset: u64, len: u64) -> Result<()> {
        self.check_writable()?;
        self.check_range(offset, len)?;
        self.zero_range(offset, len, true, true)
    }

    /// Zeroes (or discards: `partial_too` false) a range: whole clusters by metadata only,
    /// partial clusters by writing zeros unless they already read as zeros.
    fn zero_range(&self, offset: u64, len: u64, unmap: bool, discard: bool) -> Result<()> {
        let cs = self.geo.cluster_size;
        let end = offset + len;
        let vend = self.geo.virtual_size;
        let mut pos = offset;
        while pos < end {
            let c_start = pos & !(cs - 1);
            let c_end = (c_start + cs).min(vend);
            if pos == c_start && end >= c_end {
                // All the whole clusters from here.
                let first = c_start / cs;
                let last = if end >= vend {
                    vend.div_ceil(cs)
                } else {
                    end / cs
                };
                self.zero_span(first, last, unmap)?;
                pos = (last * cs).min(end);
            } else {
                let piece = c_end.min(end) - pos;
                if !discard {
                    self.zero_partial(pos, piece)?;
                }
                pos += piece;
            }
        }
        Ok(())
    }

    fn zero_partial(&self, pos: u64, len: u64) -> Result<()> {
        let gc = pos >> self.geo.cluster_bits;
        let reads_zero = {
            let mut m = self.meta.lock();
            while self.wait_inflight(&mut m, gc) {}
            match self.entry(&mut m, GuestCluster(gc))? {
                L2Entry::Zero { .. } => true,
                L2Entry::Unallocated => self.header.backing_file.is_none(),
                _ => false,
            }
        };
        if !reads_zero {
            self.write_at(pos, &vec![0u8; len as usize])?;
        }
        Ok(())
    }

    /// Marks clusters `[first, last)` as zero or unallocated, one L2 table at a time.
    fn zero_span(&self, first: u64, last: u64, unmap: bool) -> Result<()> {
        let mut c = first;
        while c < last {
            let table_end = (c / self.geo.l2_entries + 1) * self.geo.l2_entries;
            let stop = table_end.min(last);
            self.zero_clusters(c, stop, unmap)?;
            c = stop;
        }
        Ok(())
    }

    /// Marks clusters `[first, last)` (all in one L2 table) as zero or unallocated.
    fn zero_clusters(&self, first: u64, last: u64, unmap: bool) -> Result<()> {
        let has_backing = self.header.backing_file.is_some();
        let mut m = self.meta.lock();
        if !has_backing
            && unmap
            && m.l2_offset(self.geo.l1_index(GuestCluster(first)))?
                .is_none()
        {
            return Ok(());
        }
        for c in first..last {
            while self.wait_inflight(&mut m, c) {}
            let old = self.entry(&mut m, GuestCluster(c))?;
            let new = match old {
                L2Entry::Normal { host, copied: true } if !unmap => {
                    host | format::ZERO | format::COPIED
                }
                L2Entry::Zero { prealloc: Some(_) } if !unmap => continue,
                L2Entry::Zero { prealloc: None } if has_backing => continue,
                L2Entry::Unallocated if !has_backing => continue,
                _ if has_backing => format::ZERO,
                L2Entry::Normal { .. } | L2Entry::Compressed { .. } | L2Entry::Zero { .. }
                    if !unmap =>
                {
                    format::ZERO
                }
                _ => 0,
            };
            m.ensure_l2(GuestCluster(c))?;
            // ensure_l2 may have loaded the table; refresh the entry in case it was evicted.
            self.entry(&mut m, GuestCluster(c))?;
            m.set_l2(GuestCluster(c), new);
            if new & format::OFFSET_MASK == 0 {
                m.release(old);
            }
        }
        m.maybe_writeback()
    }

    pub fn block_status(&self, offset: u64, len: u64) -> Result<Vec<Extent>> {
        self.check_range(offset, len)?;
        let mut out = Vec::new();
        self.status_into(offset, len, 1, &mut out)?;
        Ok(out)
    }

    pub(crate) fn status_into(
        &self,
        offset: u64,
        len: u64,
        depth: u32,
        out: &mut Vec<Extent>,
    ) -> Result<()> {
        let end = offset + len;
        let mut pos = offset;
        while pos < end {
            let (map, n) = {
                let mut m = self.meta.lock();
                self.map_run(&mut m, pos, end)?
            };
            match map {
                Map::Data(_) | Map::Compressed { .. } => {
                    push_extent(out, pos, n, ExtentKind::Data, depth)
                }
                Map::Zero => push_extent(out, pos, n, ExtentKind::Zero, depth),
                Map::Lower => match &self.backing {
                    Some(b) => b.status(pos, n, depth + 1, out)?,
                    None => push_extent(out, pos, n, ExtentKind::Unallocated, 0),
                },
            }
            pos += n;
        }
        Ok(())
    }

    pub fn flush(&self) -> Result<()> {
        if !self.writable {
            return Ok(());
        }
        // The bulk of the dirty data goes to disk without the metadata lock, so requests keep
        // flowing; the write-back below syncs again for what arrived meanwhile.
        if let Err(e) = self.st.flush() {
            // Data may be gone from the page cache: never let metadata point at it.
            let err = Error::io(e, "fdatasync");
            self.meta.lock().mark_failed(&err);
            return Err(err);
        }
        self.meta.lock().writeback()
    }

    pub fn close(self) -> Result<()> {
        self.closed.store(true, Ordering::Relaxed);
        if !self.writable {
            return Ok(());
        }
        let mut m = self.meta.lock();
        m.finish_reservation(true);
        m.writeback()?;
        if m.has_pending() {
            // The first pass released clusters; their refcounts go out now.
            m.writeback()?;
        }
        let keep = (m.frontier() * self.geo.cluster_size).max(m.len_at_open());
        let len = self
            .st
            .len()
            .map_err(|e| Error::io(e, "image size"))?
            .max(self.file_len.load(Ordering::Relaxed));
        if len > keep {
            self.st
                .set_len(keep)
                .and_then(|()| self.st.flush())
                .map_err(|e| Error::io(e, "trimming the preallocated tail"))?;
        }
        Ok(())
    }
}

impl Drop for Image {
    fn drop(&mut self) {
        if self.writable && !self.closed.load(Ordering::Relaxed) {
            let mut m = self.meta.lock();
            if let Err(e) = m.writeback().and_then(|()| m.writeback()) {
                tracing::error!(path = %self.path.display(), error = %e, "write-back on drop failed");
            }
        }
    }
}

/// Reads and decodes the header (the whole first cluster, where the header extensions live);
/// returns it unvalidated, with the file's length to validate it against.
pub(crate) fn read_header(st: &dyn Storage) -> Result<(Header, u64)> {
    let file_len = st.len().map_err(|e| Error::io(e, "image size"))?;
    let mut prefix = [0u8; 24];
    if file_len < 24 {
        return Err(Error::invalid_format("file too short for a qcow2 header"));
    }
    st.read_at(&mut prefix, 0)
        .map_err(|e| Error::io(e, "reading header"))?;
    // The cluster size is checked against qemu's limits before it sizes the buffer.
    let cs = Header::peek_cluster_size(&prefix)?;
    let mut c0 = vec![0u8; cs.min(file_len) as usize];
    st.read_at(&mut c0, 0)
        .map_err(|e| Error::io(e, "reading header cluster"))?;
    Ok((Header::decode(&c0)?, file_len))
}

/// All bytes zero. Comparing the buffer with itself shifted by one byte is one `memcmp` (the
/// fastest of the strategies in `benches/src/zero.rs`: ~78 GiB/s, and it stops at the first
/// difference).
fn is_zero(buf: &[u8]) -> bool {
    match buf.split_first() {
        None => true,
        Some((&b0, rest)) => b0 == 0 && rest == &buf[..buf.len() - 1],
    }
}

#[allow(dead_code)]
fn _assert_send_sync() {
    fn is<T: Send + Sync>() {}
    is::<Image>();
}

/// Layers under `img` (0 for an image without a backing file).
fn chain_depth(img: &Image) -> u32 {
    match &img.backing {
        Some(Backing::Qcow2(b)) => 1 + chain_depth(b),
        Some(Backing::Raw { .. }) => 1,
        None => 0,
    }
}
