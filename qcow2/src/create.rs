//! Making new images: the initial layout (header, refcount table, refblocks, L1) computed to a
//! fixed point, written under a temporary name and linked into place when complete.

use std::path::{Path, PathBuf};

use crate::OpenOptions;
use crate::chain;
use crate::error::{Error, Result};
use crate::format::{self, Header};
use crate::image::Image;
use crate::storage::{self, FileStorage, Storage};

/// Lays out a new image in an empty storage: header, refcount table, refblocks, L1 table —
/// computed to a fixed point so the refblocks count themselves.
pub(crate) fn write_new_image(st: &dyn Storage, header: &mut Header) -> Result<()> {
    let cs = header.cluster_size();
    let l2_entries = cs / 8;
    let l1_size = header.size.div_ceil(cs * l2_entries);
    if l1_size * 8 > format::MAX_L1_BYTES {
        return Err(Error::invalid_argument(format!(
            "virtual size {} needs an L1 table larger than {} bytes; use bigger clusters",
            header.size,
            format::MAX_L1_BYTES
        )));
    }
    let l1_clusters = (l1_size * 8).div_ceil(cs).max(1);
    let rb_entries = cs * 8 / 16;
    let (mut rb, mut rt) = (1u64, 1u64);
    let total = loop {
        let total = 1 + rt + rb + l1_clusters;
        let rb2 = total.div_ceil(rb_entries);
        let rt2 = (rb2 * 8).div_ceil(cs);
        if rb2 == rb && rt2 == rt {
            break total;
        }
        (rb, rt) = (rb2, rt2);
    };
    header.l1_size = l1_size as u32;
    header.refcount_table_offset = cs;
    header.refcount_table_clusters = rt as u32;
    let rb_start = 1 + rt;
    header.l1_table_offset = (rb_start + rb) * cs;
    let c0 = header.encode()?;
    let io = |e| Error::io(e, "writing new image");
    st.set_len(total * cs).map_err(io)?;
    let mut table = vec![0u8; (rt * cs) as usize];
    for i in 0..rb {
        let off = (rb_start + i) * cs;
        table[i as usize * 8..i as usize * 8 + 8].copy_from_slice(&off.to_be_bytes());
    }
    st.write_at(&table, cs).map_err(io)?;
    let mut block = vec![0u8; (rb * cs) as usize];
    for c in 0..total as usize {
        format::refcount_set(&mut block, 4, c, 1);
    }
    st.write_at(&block, rb_start * cs).map_err(io)?;
    st.write_at(&c0, 0).map_err(io)?;
    st.flush().map_err(io)
}

/// Creates an image; see [`crate::Image::create`].
pub(crate) fn create(path: &Path, opts: &crate::CreateOptions) -> Result<()> {
    let cs = opts.cluster_size;
    if !cs.is_power_of_two() || !(512..=2 << 20).contains(&cs) {
        return Err(Error::invalid_argument(format!(
            "cluster size {cs} (must be a power of two, 512 B..2 MiB)"
        )));
    }
    let mut size = opts.size;
    let mut header = Header::new_v3(cs.trailing_zeros(), 0);
    if let Some(b) = &opts.backing_file {
        let fmt = opts
            .backing_format
            .clone()
            .unwrap_or_else(|| "qcow2".into());
        if fmt != "qcow2" && fmt != "raw" {
            return Err(Error::invalid_argument(format!("backing format {fmt:?}")));
        }
        let name = chain::backing_name(path, b)?;
        if size == 0 {
            size = if fmt == "qcow2" {
                Image::open(b, &OpenOptions::default())?.virtual_size()
            } else {
                std::fs::metadata(b)
                    .map_err(|e| Error::io(e, format!("backing file {}", b.display())))?
                    .len()
            };
        }
        header.backing_file = Some(name);
        header.backing_format = Some(fmt);
    }
    if size % 512 != 0 || size > format::MAX_VIRTUAL_SIZE {
        return Err(Error::invalid_argument(format!(
            "virtual size {size} (must be a multiple of 512)"
        )));
    }
    header.size = size;
    if path.exists() {
        return Err(Error::invalid_argument(format!(
            "{} already exists",
            path.display()
        )));
    }
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let fname = path
        .file_name()
        .ok_or_else(|| Error::invalid_argument(format!("{} has no file name", path.display())))?;
    let nonce = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let tmp = dir.join(format!(
        ".{}.tmp-{}-{nonce}",
        fname.to_string_lossy(),
        std::process::id()
    ));
    let result = (|| {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&tmp)
            .map_err(|e| Error::io(e, format!("creating {}", tmp.display())))?;
        let st = storage::open_file_storage(FileStorage::new(file), opts.storage_io, true)
            .map_err(|e| Error::io(e, format!("direct I/O on {}", tmp.display())))?;
        write_new_image(&*st, &mut header)?;
        // A hard link fails instead of replacing an image that appeared meanwhile.
        std::fs::hard_link(&tmp, path)
            .map_err(|e| Error::io(e, format!("creating {}", path.display())))?;
        if let Ok(d) = std::fs::File::open(&dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    let _ = std::fs::remove_file(&tmp);
    result
}
