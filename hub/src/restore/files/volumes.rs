//! A backup's disk as `guestfs` sees it: a reader over the QCOW2 chain, its volumes (one per
//! partition, or the whole disk), and the split of a browse path into volume and guest path.

use std::sync::Arc;

use guestfs::path::Component;
use guestfs::{Filesystem, ReadAt, Slice};
use parking_lot::Mutex;
use qcow2::Image;
use serde::Serialize;

/// Small reads (directory entries, FAT lookups, inodes) come in runs close together; they are
/// served from the last block read rather than each walking the image's maps.
const BLOCK: usize = 64 * 1024;

/// The guest's disk as of one backup: reads go through the image's backing chain.
pub(crate) struct ImageDisk {
    image: Arc<Image>,
    last: Mutex<Option<Block>>,
}

/// The last block read: its offset, its valid length (short at the disk's end), its bytes.
struct Block {
    at: u64,
    len: usize,
    data: Box<[u8]>,
}

impl ImageDisk {
    pub(crate) fn new(image: Arc<Image>) -> Self {
        ImageDisk {
            image,
            last: Mutex::new(None),
        }
    }
}

fn image_err(e: qcow2::Error) -> guestfs::Error {
    guestfs::Error::Io(std::io::Error::other(e))
}

impl ReadAt for ImageDisk {
    fn size(&self) -> u64 {
        self.image.virtual_size()
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> guestfs::Result<()> {
        let size = self.size();
        let out_of_bounds = || guestfs::Error::OutOfBounds {
            offset,
            len: buf.len() as u64,
            size,
        };
        let end = offset
            .checked_add(buf.len() as u64)
            .filter(|end| *end <= size)
            .ok_or_else(out_of_bounds)?;
        if buf.len() >= BLOCK {
            return self.image.read_at(offset, buf).map_err(image_err);
        }
        let mut last = self.last.lock();
        let mut pos = offset;
        while pos < end {
            let block = pos - pos % BLOCK as u64;
            let Block { len, data, .. } = match last.take() {
                Some(b) if b.at == block => b,
                stale => {
                    let len = (size - block).min(BLOCK as u64) as usize;
                    let mut data = stale
                        .map(|b| b.data)
                        .unwrap_or_else(|| vec![0u8; BLOCK].into_boxed_slice());
                    self.image
                        .read_at(block, &mut data[..len])
                        .map_err(image_err)?;
                    Block {
                        at: block,
                        len,
                        data,
                    }
                }
            };
            let from = (pos - block) as usize;
            let n = (len - from).min((end - pos) as usize);
            let at = (pos - offset) as usize;
            buf[at..at + n].copy_from_slice(&data[from..from + n]);
            *last = Some(Block {
                at: block,
                len,
                data,
            });
            pos += n as u64;
        }
        Ok(())
    }
}

/// One volume of a disk, as `GET .../volumes` and the root of a mount show it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Volume {
    /// `partition-N` (N as in the partition table), `whole-disk` when the disk has no table,
    /// `lvm-<vg>-<lv>` for a logical volume: the directory the mount's root shows for it.
    pub name: String,
    /// The partition's number in its table (for an LV: its PV's); 0 for a whole disk.
    pub index: u32,
    /// Where the partition starts (for an LV: its PV; an LV's extents lie anywhere in it).
    pub start_bytes: u64,
    pub size_bytes: u64,
    /// GPT type name or GUID, `mbr-0xNN`, `whole-disk`, or `lvm2-lv`.
    pub partition_type: String,
    /// `ext4`, `fat`, `ntfs`, `xfs`; or the name of what was found but is not readable here
    /// (`btrfs`, `swap`, ...; `lvm2` for a PV, whose LVs follow it); absent when nothing known
    /// is on it.
    pub filesystem: Option<String>,
    /// Its files can be listed and downloaded.
    pub readable: bool,
    pub label: Option<String>,
    pub uuid: Option<String>,
    pub total_bytes: Option<u64>,
    pub used_bytes: Option<u64>,
    pub free_bytes: Option<u64>,
    /// Why it cannot be read, when it cannot.
    pub error: Option<String>,
    /// For a logical volume (named `lvm-<vg>-<lv>`): its volume group. The partition (or disk)
    /// holding the PV is listed too, as `lvm2` and not readable itself.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub volume_group: Option<String>,
    /// For a logical volume: its name in the volume group.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub logical_volume: Option<String>,
}

impl Volume {
    /// The volume's bytes: its partition's window of the disk, or the logical volume mapped
    /// through its PV's segments.
    fn window(&self, disk: Arc<dyn ReadAt>) -> guestfs::Result<Arc<dyn ReadAt>> {
        let Some(lv) = &self.logical_volume else {
            return Ok(Arc::new(Slice::new(
                disk,
                self.start_bytes,
                self.size_bytes,
            )?));
        };
        // The PV from its start to the disk's end: lamlvm bounds every segment by the PV's
        // own header, so the partition's length (not kept for an LV) adds nothing.
        let size = disk.size().saturating_sub(self.start_bytes);
        let pv = Arc::new(Slice::new(disk, self.start_bytes, size)?);
        guestfs::open_logical_volume(pv, lv)
    }

    /// The volume's filesystem, opened afresh: the handles guestfs gives are not `Send`, so
    /// each request opens its own on its blocking thread.
    pub(crate) fn open(&self, disk: Arc<dyn ReadAt>) -> guestfs::Result<Box<dyn Filesystem>> {
        guestfs::probe(self.window(disk)?)
    }
}

/// The volumes of `disk`, each probed: a volume that cannot be read is listed with its error.
/// A partition holding an LVM2 PV is followed by its logical volumes.
pub(crate) fn scan(disk: Arc<dyn ReadAt>) -> guestfs::Result<Vec<Volume>> {
    let mut out = Vec::new();
    for p in guestfs::detect(&*disk)? {
        let mut v = Volume {
            name: if p.index == 0 {
                "whole-disk".to_owned()
            } else {
                format!("partition-{}", p.index)
            },
            index: p.index,
            start_bytes: p.start,
            size_bytes: p.len,
            partition_type: p.kind,
            filesystem: None,
            readable: false,
            label: None,
            uuid: None,
            total_bytes: None,
            used_bytes: None,
            free_bytes: None,
            error: None,
            volume_group: None,
            logical_volume: None,
        };
        let window = v.window(disk.clone())?;
        v.filesystem = identified(&*window);
        if v.filesystem.as_deref() == Some("lvm2") {
            let lvs = guestfs::logical_volumes(window);
            v.error = Some(match &lvs {
                Ok(_) => "an LVM2 physical volume: its logical volumes are listed after it".into(),
                Err(e) => e.to_string(),
            });
            let pv = v.clone();
            out.push(v);
            for lv in lvs.unwrap_or_default() {
                let mut v = Volume {
                    name: format!("lvm-{}-{}", lv.vg, lv.name),
                    size_bytes: lv.size.unwrap_or(0),
                    partition_type: "lvm2-lv".to_owned(),
                    filesystem: None,
                    error: lv.error,
                    volume_group: Some(lv.vg),
                    logical_volume: Some(lv.name),
                    ..pv.clone()
                };
                if v.error.is_none() {
                    match v.window(disk.clone()) {
                        Ok(window) => {
                            v.filesystem = identified(&*window);
                            probe(&mut v, window);
                        }
                        Err(e) => v.error = Some(e.to_string()),
                    }
                }
                out.push(v);
            }
            continue;
        }
        probe(&mut v, window);
        out.push(v);
    }
    Ok(out)
}

/// What lies on a volume by its magic (`ext4`, `ntfs`, `lvm2`, ...), read or not.
fn identified(window: &dyn ReadAt) -> Option<String> {
    guestfs::identify(window)
        .unwrap_or(None)
        .map(|k| if k == "ext" { "ext4" } else { k }.to_owned())
}

/// Fills in what the filesystem on `v` (its bytes: `window`) says about itself, or why it
/// cannot be read.
fn probe(v: &mut Volume, window: Arc<dyn ReadAt>) {
    match guestfs::probe(window) {
        Ok(fs) => {
            let info = fs.info();
            v.readable = true;
            v.error = None;
            v.filesystem = Some(fs.kind().to_owned());
            v.label = info.label;
            v.uuid = info.uuid;
            v.total_bytes = info.total_bytes;
            v.free_bytes = info.free_bytes;
            v.used_bytes = info
                .total_bytes
                .zip(info.free_bytes)
                .map(|(t, f)| t.saturating_sub(f));
        }
        Err(e) => v.error = Some(e.to_string()),
    }
}

/// A browse path split at its first component: the volume's name and the path inside it. A
/// `..` before the first name stays at the root; after it, the guest path keeps its `..` and
/// guestfs clamps it at the volume's own root, so no path leaves the volume it names.
pub(crate) fn split(path: &str) -> guestfs::Result<Option<(String, String)>> {
    let parts = guestfs::path::components(path)?;
    let mut it = parts
        .into_iter()
        .skip_while(|c| matches!(c, Component::Parent));
    let Some(Component::Name(volume)) = it.next() else {
        return Ok(None);
    };
    let mut inner = String::from("/");
    for c in it {
        if !inner.ends_with('/') {
            inner.push('/');
        }
        inner.push_str(match c {
            Component::Parent => "..",
            Component::Name(n) => n,
        });
    }
    Ok(Some((volume.to_owned(), inner)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_split_at_their_volume() {
        let s = |p: &str| split(p).unwrap();
        assert_eq!(s("/"), None);
        assert_eq!(s(""), None);
        assert_eq!(s("/../.."), None);
        assert_eq!(s("/partition-1"), Some(("partition-1".into(), "/".into())));
        assert_eq!(
            s("//partition-2/./etc//passwd"),
            Some(("partition-2".into(), "/etc/passwd".into()))
        );
        // The `..` after the volume goes to guestfs, which clamps it at the volume's root.
        assert_eq!(
            s("/../partition-1/../../etc"),
            Some(("partition-1".into(), "/../../etc".into()))
        );
        assert!(split("/partition-1/a\0b").is_err());
    }

    #[test]
    fn small_reads_come_from_the_last_block() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.qcow2");
        let opts = qcow2::CreateOptions {
            size: 300_032,
            ..qcow2::CreateOptions::default()
        };
        Image::create(&path, &opts).unwrap();
        let data: Vec<u8> = (0..300_032u32).map(|i| (i % 251) as u8).collect();
        {
            let w = Image::open(
                &path,
                &qcow2::OpenOptions {
                    writable: true,
                    ..Default::default()
                },
            )
            .unwrap();
            w.write_at(0, &data).unwrap();
            w.close().unwrap();
        }
        let img = Arc::new(Image::open(&path, &qcow2::OpenOptions::default()).unwrap());
        let disk = ImageDisk::new(img);
        for (off, len) in [
            (0u64, 10usize),
            (65_530, 20),
            (300_022, 10),
            (1000, 70_000),
            (131_070, 4),
        ] {
            let mut buf = vec![0u8; len];
            disk.read_at(&mut buf, off).unwrap();
            assert_eq!(buf, data[off as usize..off as usize + len], "{off}+{len}");
        }
        let mut buf = [0u8; 11];
        assert!(disk.read_at(&mut buf, 300_022).is_err());
        assert!(disk.read_at(&mut buf, u64::MAX - 3).is_err());
    }
}
