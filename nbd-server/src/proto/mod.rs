//! The NBD wire format as pure data: decode from and encode to bytes. No I/O happens here, and every
//! length read from the wire is checked against a limit before any buffer is sized by it.
//!
//! Decoders that work on a stream (`decode(&[u8]) -> Result<Option<(T, usize)>, _>`) say "incomplete"
//! with `Ok(None)` and "invalid" with `Err`, so the caller reads more bytes only in the first case.

pub mod consts;
pub mod handshake;
pub mod reply;
pub mod request;

pub use consts::*;

/// Longest string (export name, query, message) the protocol allows.
pub const MAX_STRING_LEN: usize = 4096;

/// A message on the wire that can never be valid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtoError {
    #[error("bad magic {0:#x}")]
    BadMagic(u64),
    #[error("{what} of {len} bytes exceeds the limit of {max}")]
    TooLong {
        what: &'static str,
        len: u64,
        max: u64,
    },
    #[error("malformed {0}")]
    Malformed(&'static str),
    #[error("{0} cannot be encoded in this header style")]
    Unrepresentable(&'static str),
}

/// Reads big-endian integers and strings from a byte slice, failing instead of panicking when the
/// slice is short.
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Self { buf }
    }

    pub(crate) fn remaining(&self) -> usize {
        self.buf.len()
    }

    pub(crate) fn bytes(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], ProtoError> {
        if self.buf.len() < n {
            return Err(ProtoError::Malformed(what));
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    pub(crate) fn u16(&mut self, what: &'static str) -> Result<u16, ProtoError> {
        let b = self.bytes(2, what)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    pub(crate) fn u32(&mut self, what: &'static str) -> Result<u32, ProtoError> {
        let b = self.bytes(4, what)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    pub(crate) fn u64(&mut self, what: &'static str) -> Result<u64, ProtoError> {
        let b = self.bytes(8, what)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_be_bytes(a))
    }

    /// A UTF-8 string of `len` bytes, at most [`MAX_STRING_LEN`].
    pub(crate) fn string(&mut self, len: usize, what: &'static str) -> Result<String, ProtoError> {
        if len > MAX_STRING_LEN {
            return Err(ProtoError::TooLong {
                what,
                len: len as u64,
                max: MAX_STRING_LEN as u64,
            });
        }
        let b = self.bytes(len, what)?;
        String::from_utf8(b.to_vec()).map_err(|_| ProtoError::Malformed(what))
    }

    /// A string prefixed by its u32 length.
    pub(crate) fn string32(&mut self, what: &'static str) -> Result<String, ProtoError> {
        let len = self.u32(what)?;
        self.string(len as usize, what)
    }

    pub(crate) fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.buf)
    }

    pub(crate) fn finish(&self, what: &'static str) -> Result<(), ProtoError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(ProtoError::Malformed(what))
        }
    }
}

pub(crate) fn check_string(s: &str, what: &'static str) -> Result<(), ProtoError> {
    if s.len() > MAX_STRING_LEN {
        return Err(ProtoError::TooLong {
            what,
            len: s.len() as u64,
            max: MAX_STRING_LEN as u64,
        });
    }
    Ok(())
}
