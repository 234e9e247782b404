//! Pure on-disk types: the header with its extensions, L1/L2/refcount-table entries, refcount
//! blocks. No I/O here: everything decodes from and encodes to byte slices.

use crate::error::{Error, Result};

pub const MAGIC: u32 = 0x5146_49fb;
pub const MIN_CLUSTER_BITS: u32 = 9;
pub const MAX_CLUSTER_BITS: u32 = 21;
/// Largest L1 table we accept (qemu's limit too).
pub const MAX_L1_BYTES: u64 = 32 << 20;
/// Largest refcount table we accept (qemu's limit too).
pub const MAX_REFTABLE_BYTES: u64 = 8 << 20;
/// Longest backing file name (qemu's limit).
pub const MAX_BACKING_NAME: u32 = 1023;
/// Virtual sizes beyond this cannot be addressed by 56-bit host offsets anyway.
pub const MAX_VIRTUAL_SIZE: u64 = 1 << 61;

pub const INCOMPAT_DIRTY: u64 = 1 << 0;
pub const INCOMPAT_CORRUPT: u64 = 1 << 1;
pub const INCOMPAT_DATA_FILE: u64 = 1 << 2;
pub const INCOMPAT_COMPRESSION: u64 = 1 << 3;
pub const INCOMPAT_EXTL2: u64 = 1 << 4;
pub const INCOMPAT_KNOWN: u64 = 0x1f;
/// Autoclear bit 0: the bitmaps extension is consistent with the image.
pub const AUTOCLEAR_BITMAPS: u64 = 1 << 0;

/// Byte offsets of the header fields (qcow2 spec, "Header"): version 2 ends at 72, version 3's
/// fixed part at 104.
pub mod hdr {
    pub const MAGIC: usize = 0;
    pub const VERSION: usize = 4;
    pub const BACKING_FILE_OFFSET: usize = 8;
    pub const BACKING_FILE_SIZE: usize = 16;
    pub const CLUSTER_BITS: usize = 20;
    pub const SIZE: usize = 24;
    pub const CRYPT_METHOD: usize = 32;
    pub const L1_SIZE: usize = 36;
    pub const L1_TABLE_OFFSET: usize = 40;
    pub const REFCOUNT_TABLE_OFFSET: usize = 48;
    pub const REFCOUNT_TABLE_CLUSTERS: usize = 56;
    pub const NB_SNAPSHOTS: usize = 60;
    pub const SNAPSHOTS_OFFSET: usize = 64;
    pub const INCOMPATIBLE_FEATURES: usize = 72;
    pub const COMPATIBLE_FEATURES: usize = 80;
    pub const AUTOCLEAR_FEATURES: usize = 88;
    pub const REFCOUNT_ORDER: usize = 96;
    pub const HEADER_LENGTH: usize = 100;
    pub const COMPRESSION_TYPE: usize = 104;
}

pub const EXT_END: u32 = 0;
pub const EXT_BACKING_FORMAT: u32 = 0xe279_2aca;
pub const EXT_FEATURE_TABLE: u32 = 0x6803_f857;
pub const EXT_BITMAPS: u32 = 0x2385_2875;
pub const EXT_CRYPTO: u32 = 0x0537_be77;
pub const EXT_DATA_FILE: u32 = 0x4441_5441;

/// Offset bits of L1 and standard L2 entries.
pub const OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;
pub const COPIED: u64 = 1 << 63;
pub const COMPRESSED: u64 = 1 << 62;
pub const ZERO: u64 = 1;
pub const L1_RESERVED: u64 = 0x7f00_0000_0000_01ff;
pub const L2_RESERVED: u64 = 0x3f00_0000_0000_01fe;
pub const REFT_OFFSET_MASK: u64 = 0xffff_ffff_ffff_fe00;
pub const REFT_RESERVED: u64 = 0x1ff;

/// Size of the v3 header we write (qemu writes 112 too: 105 bytes rounded to 8).
pub const V3_HEADER_LEN: u32 = 112;

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn be64(b: &[u8], at: usize) -> u64 {
    u64::from_be_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// The image header and what cluster 0 says besides (extensions, backing name).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub version: u32,
    pub backing_file_offset: u64,
    pub backing_file_size: u32,
    pub cluster_bits: u32,
    pub size: u64,
    pub crypt_method: u32,
    pub l1_size: u32,
    pub l1_table_offset: u64,
    pub refcount_table_offset: u64,
    pub refcount_table_clusters: u32,
    pub nb_snapshots: u32,
    pub snapshots_offset: u64,
    pub incompatible_features: u64,
    pub compatible_features: u64,
    pub autoclear_features: u64,
    pub refcount_order: u32,
    pub header_length: u32,
    pub compression_type: u8,
    pub backing_file: Option<String>,
    pub backing_format: Option<String>,
    /// Header extension types seen, in order (for refusals: data file, crypto, bitmaps).
    pub extensions: Vec<u32>,
}

impl Header {
    /// A fresh v3 header for [`Header::encode`].
    pub fn new_v3(cluster_bits: u32, size: u64) -> Self {
        Self {
            version: 3,
            backing_file_offset: 0,
            backing_file_size: 0,
            cluster_bits,
            size,
            crypt_method: 0,
            l1_size: 0,
            l1_table_offset: 0,
            refcount_table_offset: 0,
            refcount_table_clusters: 0,
            nb_snapshots: 0,
            snapshots_offset: 0,
            incompatible_features: 0,
            compatible_features: 0,
            autoclear_features: 0,
            refcount_order: 4,
            header_length: V3_HEADER_LEN,
            compression_type: 0,
            backing_file: None,
            backing_format: None,
            extensions: Vec::new(),
        }
    }

    pub fn cluster_size(&self) -> u64 {
        1 << self.cluster_bits
    }

    pub fn extended_l2(&self) -> bool {
        self.incompatible_features & INCOMPAT_EXTL2 != 0
    }

    /// Bytes we need to read to get at the whole header: cluster 0 (the caller knows the cluster
    /// size only after the first 24 bytes). Returns None for a bad magic or cluster size.
    pub fn peek_cluster_size(prefix: &[u8]) -> Result<u64> {
        if prefix.len() < 24 || be32(prefix, hdr::MAGIC) != MAGIC {
            return Err(Error::invalid_format(
                "not a qcow2 image (bad magic at offset 0)",
            ));
        }
        let bits = be32(prefix, hdr::CLUSTER_BITS);
        if !(MIN_CLUSTER_BITS..=MAX_CLUSTER_BITS).contains(&bits) {
            return Err(Error::unsupported(format!(
                "cluster_bits {bits} at offset 20 not in 9..=21"
            )));
        }
        Ok(1 << bits)
    }

    /// Decodes the header from cluster 0 (or the whole file if it is shorter). Checks that do not
    /// need the file length happen here; [`Header::validate`] does the rest.
    pub fn decode(c0: &[u8]) -> Result<Self> {
        let cs = Self::peek_cluster_size(c0)?;
        let mut h = Self::decode_fixed(c0)?;
        if h.version == 3 {
            h.decode_v3_fields(c0, cs)?;
        }
        if h.refcount_order > 6 {
            return Err(Error::corrupt(format!(
                "refcount_order {} at offset 96",
                h.refcount_order
            )));
        }
        // Extensions follow the header in v2 images too; they end before the backing name.
        h.decode_extensions(c0, cs)?;
        if h.backing_file_offset != 0 {
            h.backing_file = Some(h.decode_backing_name(c0, cs)?);
        }
        Ok(h)
    }

    /// The fields versions 2 and 3 share (the first 72 bytes); the version-3 fields get their
    /// version-2 meaning (no features, 16-bit refcounts, 72-byte header).
    fn decode_fixed(c0: &[u8]) -> Result<Self> {
        let version = be32(c0, hdr::VERSION);
        if version != 2 && version != 3 {
            return Err(Error::unsupported(format!(
                "qcow2 version {version} at offset 4"
            )));
        }
        let min_len = if version == 2 { 72 } else { 104 };
        if c0.len() < min_len {
            return Err(Error::corrupt(format!(
                "file ends at {} inside the header",
                c0.len()
            )));
        }
        Ok(Header {
            version,
            backing_file_offset: be64(c0, hdr::BACKING_FILE_OFFSET),
            backing_file_size: be32(c0, hdr::BACKING_FILE_SIZE),
            cluster_bits: be32(c0, hdr::CLUSTER_BITS),
            size: be64(c0, hdr::SIZE),
            crypt_method: be32(c0, hdr::CRYPT_METHOD),
            l1_size: be32(c0, hdr::L1_SIZE),
            l1_table_offset: be64(c0, hdr::L1_TABLE_OFFSET),
            refcount_table_offset: be64(c0, hdr::REFCOUNT_TABLE_OFFSET),
            refcount_table_clusters: be32(c0, hdr::REFCOUNT_TABLE_CLUSTERS),
            nb_snapshots: be32(c0, hdr::NB_SNAPSHOTS),
            snapshots_offset: be64(c0, hdr::SNAPSHOTS_OFFSET),
            incompatible_features: 0,
            compatible_features: 0,
            autoclear_features: 0,
            refcount_order: 4,
            header_length: 72,
            compression_type: 0,
            backing_file: None,
            backing_format: None,
            extensions: Vec::new(),
        })
    }

    /// The version-3 fields (bytes 72..104, and the compression type if the header is longer).
    /// `c0` holds at least 104 bytes ([`Header::decode_fixed`] checked).
    fn decode_v3_fields(&mut self, c0: &[u8], cs: u64) -> Result<()> {
        self.incompatible_features = be64(c0, hdr::INCOMPATIBLE_FEATURES);
        self.compatible_features = be64(c0, hdr::COMPATIBLE_FEATURES);
        self.autoclear_features = be64(c0, hdr::AUTOCLEAR_FEATURES);
        self.refcount_order = be32(c0, hdr::REFCOUNT_ORDER);
        self.header_length = be32(c0, hdr::HEADER_LENGTH);
        if self.header_length < 104 || self.header_length % 8 != 0 {
            return Err(Error::corrupt(format!(
                "header_length {} at offset 100 (must be >= 104, a multiple of 8)",
                self.header_length
            )));
        }
        if u64::from(self.header_length) > cs || self.header_length as usize > c0.len() {
            return Err(Error::corrupt(format!(
                "header_length {} at offset 100 exceeds cluster 0",
                self.header_length
            )));
        }
        if self.header_length > 104 {
            self.compression_type = c0[hdr::COMPRESSION_TYPE];
        }
        Ok(())
    }

    /// The backing file name `backing_file_offset`/`size` point at (the offset is not 0): inside
    /// cluster 0, at most [`MAX_BACKING_NAME`] bytes of UTF-8 without NUL.
    fn decode_backing_name(&self, c0: &[u8], cs: u64) -> Result<String> {
        if self.backing_file_size > MAX_BACKING_NAME || self.backing_file_size == 0 {
            return Err(Error::corrupt(format!(
                "backing file name length {} at offset 16",
                self.backing_file_size
            )));
        }
        let end = self
            .backing_file_offset
            .checked_add(u64::from(self.backing_file_size));
        match end {
            Some(end) if end <= cs && end <= c0.len() as u64 => {}
            _ => {
                return Err(Error::corrupt(format!(
                    "backing file name at offset {} (length {}) outside cluster 0",
                    self.backing_file_offset, self.backing_file_size
                )));
            }
        }
        let start = self.backing_file_offset as usize;
        let raw = &c0[start..start + self.backing_file_size as usize];
        let name = std::str::from_utf8(raw).map_err(|_| {
            Error::unsupported(format!("backing file name at offset {start} is not UTF-8"))
        })?;
        if name.contains('\0') {
            return Err(Error::corrupt(format!(
                "backing file name at offset {start} holds NUL"
            )));
        }
        Ok(name.to_owned())
    }

    fn decode_extensions(&mut self, c0: &[u8], cs: u64) -> Result<()> {
        let mut limit = (cs as usize).min(c0.len());
        if self.backing_file_offset != 0 && self.backing_file_offset < limit as u64 {
            limit = self.backing_file_offset as usize;
        }
        let mut at = self.header_length as usize;
        loop {
            if self.version == 2 && at + 8 > limit {
                // v2 images may end the header without an end-of-extensions marker.
                return Ok(());
            }
            if at + 8 > limit {
                return Err(Error::corrupt(format!(
                    "header extension at offset {at} runs past cluster 0"
                )));
            }
            let ty = be32(c0, at);
            let len = be32(c0, at + 4) as usize;
            if ty == EXT_END {
                return Ok(());
            }
            let data_start = at + 8;
            let padded = len.div_ceil(8) * 8;
            if padded > limit - data_start {
                return Err(Error::corrupt(format!(
                    "header extension {ty:#x} at offset {at} (length {len}) runs past cluster 0"
                )));
            }
            let data = &c0[data_start..data_start + len];
            if ty == EXT_BACKING_FORMAT {
                let fmt = std::str::from_utf8(data).map_err(|_| {
                    Error::corrupt(format!(
                        "backing format extension at offset {at} is not UTF-8"
                    ))
                })?;
                self.backing_format = Some(fmt.trim_end_matches('\0').to_owned());
            }
            if self.extensions.len() < 64 {
                self.extensions.push(ty);
            }
            at = data_start + padded;
        }
    }

    /// Refuses incompatible feature bits this crate does not know (qemu-img refuses them too).
    pub fn refuse_unknown_incompatible(&self) -> Result<()> {
        let unknown = self.incompatible_features & !INCOMPAT_KNOWN;
        if unknown != 0 {
            return Err(Error::unsupported(format!(
                "unknown incompatible features {unknown:#x} (offset 72)"
            )));
        }
        Ok(())
    }

    /// Checks the header against the file length: tables inside the file, aligned, not
    /// overlapping cluster 0 or each other, sizes within qemu's limits.
    pub fn validate(&self, file_len: u64) -> Result<()> {
        let cs = self.cluster_size();
        if self.size > MAX_VIRTUAL_SIZE {
            return Err(Error::unsupported(format!(
                "virtual size {} at offset 24 too large",
                self.size
            )));
        }
        let needed = self.l1_entries_needed();
        if u64::from(self.l1_size) < needed {
            return Err(Error::corrupt(format!(
                "l1_size {} at offset 36 too small for virtual size {} (need {needed})",
                self.l1_size, self.size
            )));
        }
        let l1_bytes = u64::from(self.l1_size) * 8;
        if l1_bytes > MAX_L1_BYTES {
            return Err(Error::unsupported(format!(
                "L1 table of {l1_bytes} bytes (offset 36) too large"
            )));
        }
        let rt_bytes = u64::from(self.refcount_table_clusters) * cs;
        if rt_bytes > MAX_REFTABLE_BYTES {
            return Err(Error::unsupported(format!(
                "refcount table of {rt_bytes} bytes (offset 56) too large"
            )));
        }
        if self.refcount_table_clusters == 0 {
            return Err(Error::corrupt("refcount table of 0 clusters (offset 56)"));
        }
        check_table(
            "L1 table",
            self.l1_table_offset,
            l1_bytes,
            cs,
            file_len,
            self.l1_size == 0,
        )?;
        check_table(
            "refcount table",
            self.refcount_table_offset,
            rt_bytes,
            cs,
            file_len,
            false,
        )?;
        if l1_bytes > 0 {
            let (a, b) = (self.l1_table_offset, self.refcount_table_offset);
            if a < b + rt_bytes && b < a + l1_bytes {
                return Err(Error::corrupt(format!(
                    "L1 table at {a} overlaps the refcount table at {b}"
                )));
            }
        }
        if self.nb_snapshots > 0 {
            if self.nb_snapshots > 65536 {
                return Err(Error::corrupt(format!(
                    "{} snapshots (offset 60)",
                    self.nb_snapshots
                )));
            }
            check_table(
                "snapshot table",
                self.snapshots_offset,
                1,
                cs,
                file_len,
                false,
            )?;
        }
        Ok(())
    }

    /// L1 entries a virtual size of `self.size` needs.
    pub fn l1_entries_needed(&self) -> u64 {
        let l2_entries = self.cluster_size() / if self.extended_l2() { 16 } else { 8 };
        self.size.div_ceil(self.cluster_size() * l2_entries)
    }

    /// Encodes cluster 0 (header, backing format extension, end marker, backing name). The
    /// `backing_file_offset`/`size` fields are computed here.
    pub fn encode(&self) -> Result<Vec<u8>> {
        let cs = self.cluster_size() as usize;
        let mut c0 = vec![0u8; cs];
        let mut at = V3_HEADER_LEN as usize;
        let put_ext = |c0: &mut Vec<u8>, at: &mut usize, ty: u32, data: &[u8]| -> Result<()> {
            let padded = data.len().div_ceil(8) * 8;
            if *at + 8 + padded + 8 > cs {
                return Err(Error::invalid_argument(
                    "header extensions do not fit into cluster 0",
                ));
            }
            c0[*at..*at + 4].copy_from_slice(&ty.to_be_bytes());
            c0[*at + 4..*at + 8].copy_from_slice(&(data.len() as u32).to_be_bytes());
            c0[*at + 8..*at + 8 + data.len()].copy_from_slice(data);
            *at += 8 + padded;
            Ok(())
        };
        if let Some(fmt) = &self.backing_format {
            put_ext(&mut c0, &mut at, EXT_BACKING_FORMAT, fmt.as_bytes())?;
        }
        // End-of-extensions marker: 8 zero bytes, already there.
        at += 8;
        let (bf_off, bf_len) = match &self.backing_file {
            Some(name) => {
                let len = name.len();
                if len == 0 || len > MAX_BACKING_NAME as usize || name.contains('\0') {
                    return Err(Error::invalid_argument(format!(
                        "backing file name {name:?}"
                    )));
                }
                if at + len > cs {
                    return Err(Error::invalid_argument(
                        "backing file name does not fit into cluster 0",
                    ));
                }
                c0[at..at + len].copy_from_slice(name.as_bytes());
                (at as u64, len as u32)
            }
            None => (0, 0),
        };
        let mut put32 = |o: usize, v: u32| c0[o..o + 4].copy_from_slice(&v.to_be_bytes());
        put32(hdr::MAGIC, MAGIC);
        put32(hdr::VERSION, 3);
        put32(hdr::BACKING_FILE_SIZE, bf_len);
        put32(hdr::CLUSTER_BITS, self.cluster_bits);
        put32(hdr::CRYPT_METHOD, self.crypt_method);
        put32(hdr::L1_SIZE, self.l1_size);
        put32(hdr::REFCOUNT_TABLE_CLUSTERS, self.refcount_table_clusters);
        put32(hdr::NB_SNAPSHOTS, self.nb_snapshots);
        put32(hdr::REFCOUNT_ORDER, self.refcount_order);
        put32(hdr::HEADER_LENGTH, V3_HEADER_LEN);
        let mut put64 = |o: usize, v: u64| c0[o..o + 8].copy_from_slice(&v.to_be_bytes());
        put64(hdr::BACKING_FILE_OFFSET, bf_off);
        put64(hdr::SIZE, self.size);
        put64(hdr::L1_TABLE_OFFSET, self.l1_table_offset);
        put64(hdr::REFCOUNT_TABLE_OFFSET, self.refcount_table_offset);
        put64(hdr::SNAPSHOTS_OFFSET, self.snapshots_offset);
        put64(hdr::INCOMPATIBLE_FEATURES, self.incompatible_features);
        put64(hdr::COMPATIBLE_FEATURES, self.compatible_features);
        put64(hdr::AUTOCLEAR_FEATURES, self.autoclear_features);
        c0[hdr::COMPRESSION_TYPE] = self.compression_type;
        Ok(c0)
    }
}

fn check_table(
    what: &str,
    off: u64,
    len: u64,
    cs: u64,
    file_len: u64,
    may_be_empty: bool,
) -> Result<()> {
    if may_be_empty && off == 0 {
        return Ok(());
    }
    if off % cs != 0 {
        return Err(Error::corrupt(format!(
            "{what} offset {off} is not cluster aligned"
        )));
    }
    if off == 0 {
        return Err(Error::corrupt(format!(
            "{what} at offset 0 overlaps the header"
        )));
    }
    match off.checked_add(len) {
        Some(end) if end <= file_len => Ok(()),
        _ => Err(Error::corrupt(format!(
            "{what} at offset {off} (length {len}) past the end of the file ({file_len})"
        ))),
    }
}

/// A decoded L1 entry: the L2 table's host offset, if any.
pub fn decode_l1(raw: u64, idx: u64) -> Result<Option<u64>> {
    if raw & L1_RESERVED != 0 {
        return Err(Error::corrupt(format!(
            "L1 entry {idx} ({raw:#x}) has reserved bits set"
        )));
    }
    let off = raw & OFFSET_MASK;
    Ok(if off == 0 { None } else { Some(off) })
}

/// What one (sub)cluster's L2 entry says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum L2Entry {
    /// Falls through to the backing file (or zeros).
    Unallocated,
    /// Reads as zeros; `prealloc` keeps a host cluster reserved for it.
    Zero { prealloc: Option<u64> },
    /// Data in a host cluster; `copied` = refcount exactly 1 (writable in place).
    Normal { host: u64, copied: bool },
    /// A compressed stream starting at byte `host`, touching `sectors` 512-byte sectors.
    Compressed { host: u64, sectors: u64 },
}

impl L2Entry {
    /// Decodes a standard entry (the first word of an extended one; then `extended` is true and
    /// bit 0 is reserved).
    pub fn decode(
        raw: u64,
        cluster_bits: u32,
        extended: bool,
    ) -> std::result::Result<Self, String> {
        if raw & COMPRESSED != 0 {
            // x = 62 - (cluster_bits - 8): bits below x are the byte offset.
            let x = 62 - (cluster_bits - 8);
            let host = raw & ((1u64 << x) - 1);
            let extra = (raw >> x) & ((1u64 << (62 - x)) - 1);
            if raw & COPIED != 0 {
                return Err(format!("compressed L2 entry {raw:#x} has the COPIED bit"));
            }
            return Ok(L2Entry::Compressed {
                host,
                sectors: extra + 1,
            });
        }
        let reserved = if extended {
            L2_RESERVED | ZERO
        } else {
            L2_RESERVED
        };
        if raw & reserved != 0 {
            return Err(format!("L2 entry {raw:#x} has reserved bits set"));
        }
        let host = raw & OFFSET_MASK;
        let cs_mask = (1u64 << cluster_bits) - 1;
        if host & cs_mask != 0 {
            return Err(format!("L2 entry {raw:#x} points to an unaligned cluster"));
        }
        let copied = raw & COPIED != 0;
        Ok(match (raw & ZERO != 0, host) {
            (true, 0) => L2Entry::Zero { prealloc: None },
            (true, h) => L2Entry::Zero { prealloc: Some(h) },
            (false, 0) => L2Entry::Unallocated,
            (false, h) => L2Entry::Normal { host: h, copied },
        })
    }

    /// The raw standard entry we write for a data cluster we own.
    pub fn normal(host: u64) -> u64 {
        host | COPIED
    }
}

/// Host clusters a compressed stream touches (each holds one reference per stream).
pub fn compressed_clusters(host: u64, sectors: u64, cluster_bits: u32) -> (u64, u64) {
    let start = host & !511;
    let end = start + sectors * 512;
    let first = start >> cluster_bits;
    let last = (end - 1) >> cluster_bits;
    (first, last)
}

/// A refcount table entry: the refblock's offset, if any.
pub fn decode_reftable(raw: u64, idx: u64) -> Result<Option<u64>> {
    if raw & REFT_RESERVED != 0 {
        return Err(Error::corrupt(format!(
            "refcount table entry {idx} ({raw:#x}) has reserved bits set"
        )));
    }
    Ok(if raw == 0 {
        None
    } else {
        Some(raw & REFT_OFFSET_MASK)
    })
}

/// A table of big-endian 64-bit entries (L1, L2, refcount table) as read from the file.
pub fn decode_table(raw: &[u8]) -> Vec<u64> {
    raw.chunks_exact(8)
        .map(|c| u64::from_be_bytes(c.try_into().expect("chunks of 8")))
        .collect()
}

/// The bytes of `table` as the file holds them: 8 big-endian bytes per entry.
pub fn encode_table(table: &[u64]) -> Vec<u8> {
    table.iter().flat_map(|e| e.to_be_bytes()).collect()
}

/// Reads refcount `idx` from a refblock whose entries are `1 << order` bits wide.
pub fn refcount_get(block: &[u8], order: u32, idx: usize) -> u64 {
    match order {
        0..=2 => {
            let bits = 1usize << order;
            let per_byte = 8 / bits;
            let byte = block[idx / per_byte];
            u64::from((byte >> ((idx % per_byte) * bits)) & ((1u8 << bits) - 1))
        }
        3 => u64::from(block[idx]),
        4 => u64::from(u16::from_be_bytes([block[idx * 2], block[idx * 2 + 1]])),
        5 => u64::from(u32::from_be_bytes(
            block[idx * 4..idx * 4 + 4].try_into().expect("4"),
        )),
        _ => u64::from_be_bytes(block[idx * 8..idx * 8 + 8].try_into().expect("8")),
    }
}

/// Writes refcount `idx`; the caller keeps `val` within `refcount_max(order)`.
pub fn refcount_set(block: &mut [u8], order: u32, idx: usize, val: u64) {
    match order {
        0..=2 => {
            let bits = 1usize << order;
            let per_byte = 8 / bits;
            let shift = (idx % per_byte) * bits;
            let mask = ((1u8 << bits) - 1) << shift;
            let b = &mut block[idx / per_byte];
            *b = (*b & !mask) | (((val as u8) << shift) & mask);
        }
        3 => block[idx] = val as u8,
        4 => block[idx * 2..idx * 2 + 2].copy_from_slice(&(val as u16).to_be_bytes()),
        5 => block[idx * 4..idx * 4 + 4].copy_from_slice(&(val as u32).to_be_bytes()),
        _ => block[idx * 8..idx * 8 + 8].copy_from_slice(&val.to_be_bytes()),
    }
}

pub fn refcount_max(order: u32) -> u64 {
    if order >= 6 {
        u64::MAX
    } else {
        (1u64 << (1u32 << order)) - 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Header {
        let mut h = Header::new_v3(16, 1 << 30);
        h.l1_size = 2;
        h.l1_table_offset = 3 << 16;
        h.refcount_table_offset = 1 << 16;
        h.refcount_table_clusters = 1;
        h.backing_file = Some("../base.qcow2".into());
        h.backing_format = Some("qcow2".into());
        h
    }

    #[test]
    fn header_roundtrip() {
        let h = sample();
        let c0 = h.encode().unwrap();
        let mut d = Header::decode(&c0).unwrap();
        assert_eq!(d.extensions, vec![EXT_BACKING_FORMAT]);
        d.extensions.clear();
        let mut want = h.clone();
        want.backing_file_offset = d.backing_file_offset;
        want.backing_file_size = 13;
        assert_eq!(d, want);
        d.validate(5 << 16).unwrap();
    }

    #[test]
    fn header_lies_are_errors() {
        let c0 = sample().encode().unwrap();
        let mut bad = c0.clone();
        bad[0] = 0;
        assert_eq!(
            Header::decode(&bad).unwrap_err().kind(),
            crate::ErrorKind::InvalidFormat
        );
        let mut bad = c0.clone();
        bad[23] = 30; // cluster bits
        assert_eq!(
            Header::decode(&bad).unwrap_err().kind(),
            crate::ErrorKind::Unsupported
        );
        let mut bad = c0.clone();
        bad[100..104].copy_from_slice(&70000u32.to_be_bytes());
        assert_eq!(
            Header::decode(&bad).unwrap_err().kind(),
            crate::ErrorKind::Corrupt
        );
        let mut bad = c0.clone();
        bad[116..120].copy_from_slice(&u32::MAX.to_be_bytes()); // extension length
        assert_eq!(
            Header::decode(&bad).unwrap_err().kind(),
            crate::ErrorKind::Corrupt
        );
        assert!(Header::decode(&c0[..50]).is_err());
        // Tables past the end of the file.
        let h = Header::decode(&c0).unwrap();
        assert_eq!(
            h.validate(2 << 16).unwrap_err().kind(),
            crate::ErrorKind::Corrupt
        );
        let mut h2 = h.clone();
        h2.l1_table_offset = h.refcount_table_offset;
        assert!(
            h2.validate(10 << 16)
                .unwrap_err()
                .message
                .contains("overlaps")
        );
        let mut h3 = h.clone();
        h3.l1_size = 0;
        assert!(h3.validate(10 << 16).is_err());
    }

    #[test]
    fn l2_entries() {
        assert_eq!(L2Entry::decode(0, 16, false), Ok(L2Entry::Unallocated));
        assert_eq!(
            L2Entry::decode(1, 16, false),
            Ok(L2Entry::Zero { prealloc: None })
        );
        assert_eq!(
            L2Entry::decode(COPIED | 0x50000, 16, false),
            Ok(L2Entry::Normal {
                host: 0x50000,
                copied: true
            })
        );
        assert_eq!(
            L2Entry::decode(0x50001, 16, false),
            Ok(L2Entry::Zero {
                prealloc: Some(0x50000)
            })
        );
        assert!(L2Entry::decode(0x50001, 16, true).is_err());
        assert!(L2Entry::decode(0x50200, 16, false).is_err());
        assert!(L2Entry::decode(1 << 60, 16, false).is_err());
        // Compressed, 64 KiB clusters: x = 54; 3 additional sectors.
        let raw = COMPRESSED | (3u64 << 54) | 0x12345;
        assert_eq!(
            L2Entry::decode(raw, 16, false),
            Ok(L2Entry::Compressed {
                host: 0x12345,
                sectors: 4
            })
        );
        assert_eq!(compressed_clusters(0x1fe00, 2, 16), (1, 2));
        assert_eq!(decode_l1(COPIED | 0x30000, 0).unwrap(), Some(0x30000));
        assert!(decode_l1(0x30001, 0).is_err());
        assert!(decode_reftable(0x30001, 0).is_err());
    }

    #[test]
    fn refcounts_all_widths() {
        for order in 0..=6u32 {
            let mut block = vec![0u8; 64];
            let n = (64 * 8) >> order;
            let max = refcount_max(order);
            for i in 0..n {
                refcount_set(&mut block, order, i, (i as u64 * 7) & max);
            }
            for i in 0..n {
                assert_eq!(
                    refcount_get(&block, order, i),
                    (i as u64 * 7) & max,
                    "order {order} idx {i}"
                );
            }
        }
        let mut b = [0u8; 2];
        refcount_set(&mut b, 4, 0, 0x1234);
        assert_eq!(b, [0x12, 0x34]);
        let mut b = [0u8; 1];
        refcount_set(&mut b, 0, 1, 1);
        assert_eq!(b, [2]);
    }
}
