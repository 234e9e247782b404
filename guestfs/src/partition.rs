//! Partition tables: GPT, MBR (with the extended/logical chain), or none.
//!
//! Both are parsed by hand. GPT is a header with two CRC32s and a flat array of entries and
//! MBR is four 16-byte slots plus a linked list of EBRs: a few hundred lines with every bound
//! checked here, against the `gpt` crate's device trait, which wants `Write` and a 'static
//! boxed device, and `mbrman`, which would be a second crate for the older half of the same
//! job. `crc32fast` (already in the workspace) does the checksums.

use crate::error::{Error, Result};
use crate::source::ReadAt;

/// One volume of a disk. `index` is the Linux numbering (`/dev/sdaN`, `/partition-N`): the
/// GPT slot + 1, the MBR slot 1-4, logical partitions from 5. A disk with no table is one
/// volume with `index` 0 and `kind` "whole-disk".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partition {
    pub index: u32,
    /// Byte offset on the disk.
    pub start: u64,
    /// Length in bytes.
    pub len: u64,
    /// For GPT the type's common name ("linux", "efi-system", ...) or its GUID; for MBR
    /// "mbr-0xNN".
    pub kind: String,
}

const MBR_SIGNATURE: [u8; 2] = [0x55, 0xAA];
/// An EBR chain longer than this is a loop or garbage, not a disk anyone made.
const MAX_LOGICAL: u32 = 128;
/// Far more than any tool writes (128 is the norm); bounds what a damaged header can make us read.
const MAX_GPT_ENTRIES: u32 = 16_384;

/// Reads the partition table of `disk`.
pub fn detect(disk: &dyn ReadAt) -> Result<Vec<Partition>> {
    let size = disk.size();
    if size < 512 {
        return Err(Error::Corrupt(format!(
            "disk of {size} bytes is smaller than one sector"
        )));
    }
    let mut mbr = [0u8; 512];
    disk.read_at(&mut mbr, 0)?;
    let has_signature = mbr[510..512] == MBR_SIGNATURE;
    let protective = has_signature && mbr_slots(&mbr).iter().any(|s| s.kind == 0xEE);

    for sector in [512u64, 4096] {
        if let Some(parts) = gpt(disk, sector)? {
            return Ok(parts);
        }
    }
    if protective {
        return Err(Error::Corrupt(
            "protective MBR but no valid GPT header".into(),
        ));
    }
    if has_signature && !looks_like_boot_sector(&mbr) {
        if let Some(parts) = mbr_partitions(disk, &mbr)? {
            return Ok(parts);
        }
    }
    Ok(vec![Partition {
        index: 0,
        start: 0,
        len: size,
        kind: "whole-disk".into(),
    }])
}

/// A FAT or NTFS volume written straight onto the disk also ends its first sector in 55 AA;
/// its "partition slots" are boot code, so the filesystem's own marks win.
fn looks_like_boot_sector(s: &[u8; 512]) -> bool {
    &s[3..11] == b"NTFS    "
        || &s[54..59] == b"FAT12"
        || &s[54..59] == b"FAT16"
        || &s[82..87] == b"FAT32"
        || &s[54..57] == b"FAT"
}

fn u16le(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}
fn u32le(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}
fn u64le(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

struct Slot {
    status: u8,
    kind: u8,
    lba: u32,
    sectors: u32,
}

fn mbr_slots(sector: &[u8; 512]) -> [Slot; 4] {
    std::array::from_fn(|i| {
        let e = &sector[446 + 16 * i..446 + 16 * (i + 1)];
        Slot {
            status: e[0],
            kind: e[4],
            lba: u32le(e, 8),
            sectors: u32le(e, 12),
        }
    })
}

fn is_extended(kind: u8) -> bool {
    matches!(kind, 0x05 | 0x0F | 0x85)
}

/// `None` when the slots do not look like a table (bad status byte, nothing in use, or a
/// slot past the end of the disk), so the caller treats the disk as a bare volume.
fn mbr_partitions(disk: &dyn ReadAt, sector0: &[u8; 512]) -> Result<Option<Vec<Partition>>> {
    const SECTOR: u64 = 512;
    let size = disk.size();
    let slots = mbr_slots(sector0);
    let used: Vec<(u32, &Slot)> = (1u32..)
        .zip(slots.iter())
        .filter(|(_, s)| s.kind != 0 && s.sectors != 0)
        .collect();
    if used.is_empty() || slots.iter().any(|s| s.status != 0 && s.status != 0x80) {
        return Ok(None);
    }
    let mut out = Vec::new();
    for (index, slot) in used {
        let start = u64::from(slot.lba) * SECTOR;
        let len = u64::from(slot.sectors) * SECTOR;
        if start == 0 || start + len > size {
            return Ok(None);
        }
        if is_extended(slot.kind) {
            logical_partitions(disk, slot.lba, slot.sectors, &mut out)?;
        } else {
            out.push(Partition {
                index,
                start,
                len,
                kind: format!("mbr-0x{:02x}", slot.kind),
            });
        }
    }
    out.sort_by_key(|p| p.index);
    Ok(Some(out))
}

/// Walks the EBR chain of an extended partition. Each EBR's first slot is a logical partition
/// relative to that EBR; its second points at the next EBR relative to the extended
/// partition's start. Every hop must stay inside the extended partition.
fn logical_partitions(
    disk: &dyn ReadAt,
    ext_lba: u32,
    ext_sectors: u32,
    out: &mut Vec<Partition>,
) -> Result<()> {
    const SECTOR: u64 = 512;
    let ext_start = u64::from(ext_lba);
    let ext_end = ext_start + u64::from(ext_sectors);
    let mut ebr_lba = ext_start;
    let mut index = 5u32;
    loop {
        if index - 5 >= MAX_LOGICAL {
            return Err(Error::Corrupt("EBR chain too long (a loop?)".into()));
        }
        let mut ebr = [0u8; 512];
        disk.read_at(&mut ebr, ebr_lba * SECTOR)?;
        if ebr[510..512] != MBR_SIGNATURE {
            return Err(Error::Corrupt(format!(
                "EBR at sector {ebr_lba} has no signature"
            )));
        }
        let slots = mbr_slots(&ebr);
        let (part, next) = (&slots[0], &slots[1]);
        if part.kind != 0 && part.sectors != 0 {
            let start = ebr_lba + u64::from(part.lba);
            let end = start + u64::from(part.sectors);
            if part.lba == 0 || end > ext_end {
                return Err(Error::Corrupt(format!(
                    "logical partition {index} leaves its extended partition"
                )));
            }
            out.push(Partition {
                index,
                start: start * SECTOR,
                len: u64::from(part.sectors) * SECTOR,
                kind: format!("mbr-0x{:02x}", part.kind),
            });
            index += 1;
        }
        if next.kind == 0 || next.lba == 0 {
            return Ok(());
        }
        let next_lba = ext_start + u64::from(next.lba);
        // Links only go forward in every tool's layout; this also rules out cycles.
        if next_lba <= ebr_lba || next_lba >= ext_end {
            return Err(Error::Corrupt(format!(
                "EBR link to sector {next_lba} is not forward inside the extended partition"
            )));
        }
        ebr_lba = next_lba;
    }
}

/// The GPT at `sector` bytes per sector: the primary header at LBA 1, else the backup at the
/// last LBA. `None` when neither carries the signature; an error when one does but is damaged
/// beyond both copies.
fn gpt(disk: &dyn ReadAt, sector: u64) -> Result<Option<Vec<Partition>>> {
    let size = disk.size();
    let last_lba = (size / sector).saturating_sub(1);
    let mut seen = None;
    for lba in [1, last_lba] {
        if lba == 0 || (lba + 1) * sector > size {
            continue;
        }
        match gpt_at(disk, sector, lba) {
            Ok(Some(parts)) => return Ok(Some(parts)),
            Ok(None) => {}
            Err(e) => seen = Some(e),
        }
    }
    seen.map_or(Ok(None), Err)
}

fn gpt_at(disk: &dyn ReadAt, sector: u64, lba: u64) -> Result<Option<Vec<Partition>>> {
    let ss = usize::try_from(sector).map_err(|_| Error::Unsupported("sector size".into()))?;
    let mut hdr = vec![0u8; ss];
    disk.read_at(&mut hdr, lba * sector)?;
    if &hdr[0..8] != b"EFI PART" {
        return Ok(None);
    }
    let header_size = u32le(&hdr, 12) as usize;
    if !(92..=ss).contains(&header_size) {
        return Err(Error::Corrupt(format!("GPT header size {header_size}")));
    }
    let stored = u32le(&hdr, 16);
    let mut copy = hdr[..header_size].to_vec();
    copy[16..20].fill(0);
    if crc32fast::hash(&copy) != stored {
        return Err(Error::Corrupt(format!(
            "GPT header at LBA {lba}: CRC mismatch"
        )));
    }
    let entries_lba = u64le(&hdr, 72);
    let count = u32le(&hdr, 80);
    let entry_size = u32le(&hdr, 84);
    let entries_crc = u32le(&hdr, 88);
    if count > MAX_GPT_ENTRIES || !(128..=4096).contains(&entry_size) || entry_size % 8 != 0 {
        return Err(Error::Corrupt(format!(
            "GPT: {count} entries of {entry_size} bytes"
        )));
    }
    let table_len = count as usize * entry_size as usize;
    let table_off = entries_lba
        .checked_mul(sector)
        .ok_or_else(|| Error::Corrupt("GPT entry array offset overflows".into()))?;
    let mut table = vec![0u8; table_len];
    disk.read_at(&mut table, table_off)?;
    if crc32fast::hash(&table) != entries_crc {
        return Err(Error::Corrupt(format!(
            "GPT entry array (header at LBA {lba}): CRC mismatch"
        )));
    }
    let size = disk.size();
    let mut out = Vec::new();
    for (i, e) in table.chunks_exact(entry_size as usize).enumerate() {
        let type_guid = &e[0..16];
        if type_guid.iter().all(|&b| b == 0) {
            continue;
        }
        let (first, last) = (u64le(e, 32), u64le(e, 40));
        let bounds = last
            .checked_sub(first)
            .and_then(|n| n.checked_add(1))
            .and_then(|n| n.checked_mul(sector))
            .zip(first.checked_mul(sector))
            .filter(|&(len, start)| start.checked_add(len).is_some_and(|end| end <= size));
        let Some((len, start)) = bounds else {
            return Err(Error::Corrupt(format!(
                "GPT entry {}: LBA {first}..={last} outside the disk",
                i + 1
            )));
        };
        out.push(Partition {
            index: i as u32 + 1,
            start,
            len,
            kind: gpt_kind(type_guid),
        });
    }
    Ok(Some(out))
}

/// GPT GUIDs are stored with their first three fields little-endian.
fn guid_string(g: &[u8]) -> String {
    format!(
        "{:08X}-{:04X}-{:04X}-{:02X}{:02X}-{:02X}{:02X}{:02X}{:02X}{:02X}{:02X}",
        u32le(g, 0),
        u16le(g, 4),
        u16le(g, 6),
        g[8],
        g[9],
        g[10],
        g[11],
        g[12],
        g[13],
        g[14],
        g[15]
    )
}

fn gpt_kind(type_guid: &[u8]) -> String {
    let guid = guid_string(type_guid);
    let name = match guid.as_str() {
        "0FC63DAF-8483-4772-8E79-3D69D8477DE4" => "linux",
        "C12A7328-F81F-11D2-BA4B-00A0C93EC93B" => "efi-system",
        "EBD0A0A2-B9E5-4433-87C0-68B6B72699C7" => "microsoft-basic-data",
        "E3C9E316-0B5C-4DB8-817D-F92DF00215AE" => "microsoft-reserved",
        "DE94BBA4-06D1-4D40-A16A-BFD50179D6AC" => "windows-recovery",
        "0657FD6D-A4AB-43C4-84E5-0933C84B4F4F" => "linux-swap",
        "E6D6D379-F507-44C2-A23C-238F2A3DF928" => "linux-lvm",
        "A19D880F-05FC-4D3B-A006-743F0F84911E" => "linux-raid",
        "21686148-6449-6E6F-744E-656564454649" => "bios-boot",
        "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709" => "linux-root-x86-64",
        _ => return guid,
    };
    name.to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blank_disk_is_one_volume() {
        let disk = vec![0u8; 4096];
        let p = detect(&disk).unwrap();
        assert_eq!(
            p,
            vec![Partition {
                index: 0,
                start: 0,
                len: 4096,
                kind: "whole-disk".into()
            }]
        );
    }

    #[test]
    fn tiny_disk_is_an_error() {
        assert!(detect(&vec![0u8; 100]).is_err());
    }

    #[test]
    fn mbr_slot_past_the_end_is_not_a_table() {
        let mut disk = vec![0u8; 8192];
        disk[510] = 0x55;
        disk[511] = 0xAA;
        disk[446 + 4] = 0x83;
        disk[446 + 8..446 + 12].copy_from_slice(&1u32.to_le_bytes());
        disk[446 + 12..446 + 16].copy_from_slice(&1000u32.to_le_bytes());
        assert_eq!(detect(&disk).unwrap()[0].kind, "whole-disk");
    }

    #[test]
    fn ebr_loop_is_corrupt_not_a_hang() {
        let mut disk = vec![0u8; 64 * 512];
        disk[510] = 0x55;
        disk[511] = 0xAA;
        disk[446 + 4] = 0x05;
        disk[446 + 8..446 + 12].copy_from_slice(&2u32.to_le_bytes());
        disk[446 + 12..446 + 16].copy_from_slice(&60u32.to_le_bytes());
        // EBR at sector 2 linking to itself (relative 0 means "none", so link to 0+... itself).
        let ebr = 2 * 512;
        disk[ebr + 510] = 0x55;
        disk[ebr + 511] = 0xAA;
        disk[ebr + 446 + 16 + 4] = 0x05;
        disk[ebr + 446 + 16 + 8..ebr + 446 + 16 + 12].copy_from_slice(&0u32.to_le_bytes());
        assert!(detect(&disk).is_ok());
        // A backwards link: EBR at sector 2+5 pointing to relative 5 (itself).
        disk[ebr + 446 + 16 + 8..ebr + 446 + 16 + 12].copy_from_slice(&5u32.to_le_bytes());
        let e2 = 7 * 512;
        disk[e2 + 510] = 0x55;
        disk[e2 + 511] = 0xAA;
        disk[e2 + 446 + 16 + 4] = 0x05;
        disk[e2 + 446 + 16 + 8..e2 + 446 + 16 + 12].copy_from_slice(&5u32.to_le_bytes());
        assert!(matches!(detect(&disk), Err(Error::Corrupt(_))));
    }
}
