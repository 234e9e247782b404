//! An in-memory backend for tests and fuzzing.

use std::io;

use parking_lot::RwLock;

use super::Storage;

#[derive(Debug, Default)]
pub struct MemStorage {
    data: RwLock<Vec<u8>>,
    /// Writes that would grow the storage beyond this fail with ENOSPC.
    max_len: u64,
}

impl MemStorage {
    pub fn new(data: Vec<u8>) -> Self {
        Self {
            data: RwLock::new(data),
            max_len: 1 << 32,
        }
    }

    /// Caps the size the storage may grow to (writes beyond fail with ENOSPC).
    pub fn with_max_len(data: Vec<u8>, max_len: u64) -> Self {
        Self {
            data: RwLock::new(data),
            max_len,
        }
    }

    pub fn to_vec(&self) -> Vec<u8> {
        self.data.read().clone()
    }

    fn grow(&self, data: &mut Vec<u8>, end: u64) -> io::Result<()> {
        if end > self.max_len {
            return Err(io::Error::from_raw_os_error(libc::ENOSPC));
        }
        if (data.len() as u64) < end {
            data.resize(end as usize, 0);
        }
        Ok(())
    }
}

impl Storage for MemStorage {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let data = self.data.read();
        let end = offset.checked_add(buf.len() as u64);
        match end {
            Some(end) if end <= data.len() as u64 => {
                buf.copy_from_slice(&data[offset as usize..end as usize]);
                Ok(())
            }
            _ => Err(io::Error::from(io::ErrorKind::UnexpectedEof)),
        }
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        let mut data = self.data.write();
        let end = offset
            .checked_add(buf.len() as u64)
            .ok_or_else(|| io::Error::from_raw_os_error(libc::EFBIG))?;
        self.grow(&mut data, end)?;
        data[offset as usize..end as usize].copy_from_slice(buf);
        Ok(())
    }

    fn flush(&self) -> io::Result<()> {
        Ok(())
    }

    fn len(&self) -> io::Result<u64> {
        Ok(self.data.read().len() as u64)
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        let mut data = self.data.write();
        if len > self.max_len {
            return Err(io::Error::from_raw_os_error(libc::ENOSPC));
        }
        data.resize(len as usize, 0);
        Ok(())
    }

    /// What is left below `max_len`.
    fn free_bytes(&self) -> Option<u64> {
        Some(self.max_len.saturating_sub(self.data.read().len() as u64))
    }

    fn allocate(&self, offset: u64, len: u64) -> io::Result<()> {
        let mut data = self.data.write();
        let end = offset
            .checked_add(len)
            .ok_or_else(|| io::Error::from_raw_os_error(libc::EFBIG))?;
        self.grow(&mut data, end)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_never_pass_the_end() {
        let m = MemStorage::new(vec![1, 2, 3]);
        let mut b = [0u8; 2];
        m.read_at(&mut b, 1).unwrap();
        assert_eq!(b, [2, 3]);
        assert!(m.read_at(&mut b, 2).is_err());
        assert!(m.read_at(&mut b, u64::MAX).is_err());
        m.write_at(&[9], 5).unwrap();
        assert_eq!(m.to_vec(), vec![1, 2, 3, 0, 0, 9]);
        let small = MemStorage::with_max_len(vec![], 4);
        assert!(small.write_at(&[0; 8], 0).is_err());
    }
}
