//! Transmission requests, compact (28 bytes) and extended (32 bytes).

use bytes::{BufMut, BytesMut};

use super::consts::*;
use super::{ProtoError, Reader};

/// Which request and reply headers the connection negotiated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderStyle {
    /// Compact requests; simple replies, and no structured ones.
    Simple,
    /// Compact requests; structured replies for READ and BLOCK_STATUS.
    Structured,
    /// Extended requests and extended replies for everything.
    Extended,
}

impl HeaderStyle {
    pub fn request_len(self) -> usize {
        match self {
            Self::Extended => Request::EXTENDED_LEN,
            _ => Request::COMPACT_LEN,
        }
    }

    pub fn structured(self) -> bool {
        self != Self::Simple
    }
}

/// A known command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Read,
    Write,
    Disc,
    Flush,
    Trim,
    Cache,
    WriteZeroes,
    BlockStatus,
    Resize,
}

impl Command {
    pub fn from_code(code: u16) -> Option<Self> {
        Some(match code {
            CMD_READ => Self::Read,
            CMD_WRITE => Self::Write,
            CMD_DISC => Self::Disc,
            CMD_FLUSH => Self::Flush,
            CMD_TRIM => Self::Trim,
            CMD_CACHE => Self::Cache,
            CMD_WRITE_ZEROES => Self::WriteZeroes,
            CMD_BLOCK_STATUS => Self::BlockStatus,
            CMD_RESIZE => Self::Resize,
            _ => return None,
        })
    }
}

/// A request header as sent; `length` is u32 on compact headers, u64 on extended ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    pub flags: u16,
    pub command: u16,
    pub cookie: u64,
    pub offset: u64,
    pub length: u64,
}

impl Request {
    pub const COMPACT_LEN: usize = 28;
    pub const EXTENDED_LEN: usize = 32;

    /// Decodes one header. A wrong magic is fatal for the connection (the stream has lost sync).
    pub fn decode(buf: &[u8], style: HeaderStyle) -> Result<Option<(Self, usize)>, ProtoError> {
        let len = style.request_len();
        if buf.len() < len {
            return Ok(None);
        }
        let mut r = Reader::new(&buf[..len]);
        let magic = r.u32("request")?;
        let expected = if style == HeaderStyle::Extended {
            EXTENDED_REQUEST_MAGIC
        } else {
            REQUEST_MAGIC
        };
        if magic != expected {
            return Err(ProtoError::BadMagic(magic.into()));
        }
        let flags = r.u16("request")?;
        let command = r.u16("request")?;
        let cookie = r.u64("request")?;
        let offset = r.u64("request")?;
        let length = if style == HeaderStyle::Extended {
            r.u64("request")?
        } else {
            r.u32("request")?.into()
        };
        Ok(Some((
            Self {
                flags,
                command,
                cookie,
                offset,
                length,
            },
            len,
        )))
    }

    pub fn encode(&self, style: HeaderStyle, out: &mut BytesMut) -> Result<(), ProtoError> {
        if style == HeaderStyle::Extended {
            out.put_u32(EXTENDED_REQUEST_MAGIC);
        } else {
            if self.length > u64::from(u32::MAX) {
                return Err(ProtoError::Unrepresentable("request length"));
            }
            out.put_u32(REQUEST_MAGIC);
        }
        out.put_u16(self.flags);
        out.put_u16(self.command);
        out.put_u64(self.cookie);
        out.put_u64(self.offset);
        if style == HeaderStyle::Extended {
            out.put_u64(self.length);
        } else {
            out.put_u32(self.length as u32);
        }
        Ok(())
    }

    /// Bytes of payload that follow this header on the wire. A WRITE always carries `length`
    /// bytes; on extended headers any command with PAYLOAD_LEN does too.
    pub fn payload_len(&self, style: HeaderStyle) -> u64 {
        if self.command == CMD_WRITE
            || (style == HeaderStyle::Extended && self.flags & CMD_FLAG_PAYLOAD_LEN != 0)
        {
            self.length
        } else {
            0
        }
    }
}

/// Decodes a stream of requests with their payloads, as the fuzzer and tests drive it: stops at the
/// first incomplete or invalid header, refusing payloads above `max_payload`.
pub fn decode_stream(
    mut buf: &[u8],
    style: HeaderStyle,
    max_payload: u64,
) -> (Vec<(Request, &[u8])>, Option<ProtoError>) {
    let mut out = Vec::new();
    loop {
        match Request::decode(buf, style) {
            Ok(None) => return (out, None),
            Err(e) => return (out, Some(e)),
            Ok(Some((req, n))) => {
                let payload = req.payload_len(style);
                if payload > max_payload {
                    return (
                        out,
                        Some(ProtoError::TooLong {
                            what: "payload",
                            len: payload,
                            max: max_payload,
                        }),
                    );
                }
                let rest = &buf[n..];
                if (rest.len() as u64) < payload {
                    return (out, None);
                }
                let (p, rest) = rest.split_at(payload as usize);
                out.push((req, p));
                buf = rest;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compact_read_bytes() {
        let bytes: &[u8] = b"\x25\x60\x95\x13\x00\x04\x00\x00\x00\x00\x00\x00\x00\x00\x00\x2a\
\x00\x00\x00\x00\x00\x01\x00\x00\x00\x00\x10\x00";
        let (r, n) = Request::decode(bytes, HeaderStyle::Simple)
            .unwrap()
            .unwrap();
        assert_eq!(n, 28);
        assert_eq!(
            r,
            Request {
                flags: CMD_FLAG_DF,
                command: CMD_READ,
                cookie: 42,
                offset: 65536,
                length: 4096
            }
        );
        let mut b = BytesMut::new();
        r.encode(HeaderStyle::Structured, &mut b).unwrap();
        assert_eq!(&b[..], bytes);
        assert_eq!(r.payload_len(HeaderStyle::Simple), 0);
    }

    #[test]
    fn extended_write_bytes() {
        let bytes: &[u8] = b"\x21\xe4\x1c\x71\x00\x01\x00\x01\x00\x00\x00\x00\x00\x00\x00\x07\
\x00\x00\x00\x00\x00\x00\x02\x00\x00\x00\x00\x01\x00\x00\x00\x00";
        let (r, n) = Request::decode(bytes, HeaderStyle::Extended)
            .unwrap()
            .unwrap();
        assert_eq!(n, 32);
        assert_eq!(r.command, CMD_WRITE);
        assert_eq!(r.flags, CMD_FLAG_FUA);
        assert_eq!(r.length, 1 << 32);
        assert_eq!(r.payload_len(HeaderStyle::Extended), 1 << 32);
        // A compact header cannot carry that length.
        assert!(r.encode(HeaderStyle::Simple, &mut BytesMut::new()).is_err());
    }

    #[test]
    fn bad_magic_and_short_input() {
        let mut b = BytesMut::new();
        let r = Request {
            flags: 0,
            command: CMD_FLUSH,
            cookie: 1,
            offset: 0,
            length: 0,
        };
        r.encode(HeaderStyle::Simple, &mut b).unwrap();
        for cut in 0..b.len() {
            assert_eq!(Request::decode(&b[..cut], HeaderStyle::Simple), Ok(None));
        }
        // A compact request on an extended connection has the wrong magic.
        let mut ext = b.clone();
        ext.put_u32(0);
        assert!(matches!(
            Request::decode(&ext, HeaderStyle::Extended),
            Err(ProtoError::BadMagic(0x2560_9513))
        ));
        b[0] ^= 0xff;
        assert!(Request::decode(&b, HeaderStyle::Simple).is_err());
    }

    #[test]
    fn requests_round_trip() {
        for style in [
            HeaderStyle::Simple,
            HeaderStyle::Structured,
            HeaderStyle::Extended,
        ] {
            for command in 0..=9u16 {
                let r = Request {
                    flags: command.wrapping_mul(7),
                    command,
                    cookie: 0x0102_0304_0506_0708 ^ u64::from(command),
                    offset: u64::MAX - u64::from(command),
                    length: u64::from(u32::MAX) - u64::from(command),
                };
                let mut b = BytesMut::new();
                r.encode(style, &mut b).unwrap();
                assert_eq!(b.len(), style.request_len());
                assert_eq!(Request::decode(&b, style), Ok(Some((r, b.len()))));
            }
        }
    }

    #[test]
    fn payload_len_rules() {
        let w = Request {
            flags: 0,
            command: CMD_WRITE,
            cookie: 0,
            offset: 0,
            length: 9,
        };
        assert_eq!(w.payload_len(HeaderStyle::Simple), 9);
        let bs = Request {
            command: CMD_BLOCK_STATUS,
            flags: CMD_FLAG_PAYLOAD_LEN,
            ..w
        };
        assert_eq!(bs.payload_len(HeaderStyle::Structured), 0);
        assert_eq!(bs.payload_len(HeaderStyle::Extended), 9);
    }

    #[test]
    fn stream_stops_at_oversize_payload() {
        let mut b = BytesMut::new();
        let w = Request {
            flags: 0,
            command: CMD_WRITE,
            cookie: 1,
            offset: 0,
            length: 3,
        };
        w.encode(HeaderStyle::Simple, &mut b).unwrap();
        b.put_slice(b"abc");
        Request {
            length: 1 << 30,
            ..w
        }
        .encode(HeaderStyle::Simple, &mut b)
        .unwrap();
        let (reqs, err) = decode_stream(&b, HeaderStyle::Simple, 1 << 20);
        assert_eq!(reqs.len(), 1);
        assert_eq!(reqs[0].1, b"abc");
        assert!(matches!(err, Some(ProtoError::TooLong { .. })));
    }
}
