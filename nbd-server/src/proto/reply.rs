//! Transmission replies: simple replies, structured chunks (compact header) and extended chunks.
//!
//! Encoding is split so that READ data never gets copied: [`Chunk::encode_head`] writes the header
//! and the fixed part of the payload, and hands back the data to be written after it.

use bytes::{BufMut, Bytes, BytesMut};

use super::consts::*;
use super::request::HeaderStyle;
use super::{ProtoError, Reader, check_string};

/// Simple reply: magic, error, cookie; a successful READ's data follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SimpleReply {
    pub error: u32,
    pub cookie: u64,
}

impl SimpleReply {
    pub const LEN: usize = 16;

    pub fn encode(&self, out: &mut BytesMut) {
        out.put_u32(SIMPLE_REPLY_MAGIC);
        out.put_u32(self.error);
        out.put_u64(self.cookie);
    }

    pub fn decode(buf: &[u8]) -> Result<Option<(Self, usize)>, ProtoError> {
        if buf.len() < Self::LEN {
            return Ok(None);
        }
        let mut r = Reader::new(&buf[..Self::LEN]);
        let magic = r.u32("simple reply")?;
        if magic != SIMPLE_REPLY_MAGIC {
            return Err(ProtoError::BadMagic(magic.into()));
        }
        let error = r.u32("simple reply")?;
        let cookie = r.u64("simple reply")?;
        Ok(Some((Self { error, cookie }, Self::LEN)))
    }
}

/// What a structured or extended reply chunk carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChunkPayload {
    None,
    OffsetData {
        offset: u64,
        data: Bytes,
    },
    OffsetHole {
        offset: u64,
        length: u32,
    },
    /// Descriptors of (length, flags).
    BlockStatus {
        context_id: u32,
        extents: Vec<(u32, u32)>,
    },
    /// Descriptors of (length, flags), for extended headers.
    BlockStatusExt {
        context_id: u32,
        extents: Vec<(u64, u64)>,
    },
    Error {
        error: u32,
        message: String,
    },
    ErrorOffset {
        error: u32,
        message: String,
        offset: u64,
    },
}

impl ChunkPayload {
    pub fn chunk_type(&self) -> u16 {
        match self {
            Self::None => REPLY_TYPE_NONE,
            Self::OffsetData { .. } => REPLY_TYPE_OFFSET_DATA,
            Self::OffsetHole { .. } => REPLY_TYPE_OFFSET_HOLE,
            Self::BlockStatus { .. } => REPLY_TYPE_BLOCK_STATUS,
            Self::BlockStatusExt { .. } => REPLY_TYPE_BLOCK_STATUS_EXT,
            Self::Error { .. } => REPLY_TYPE_ERROR,
            Self::ErrorOffset { .. } => REPLY_TYPE_ERROR_OFFSET,
        }
    }

    fn len(&self) -> u64 {
        match self {
            Self::None => 0,
            Self::OffsetData { data, .. } => 8 + data.len() as u64,
            Self::OffsetHole { .. } => 12,
            Self::BlockStatus { extents, .. } => 4 + 8 * extents.len() as u64,
            Self::BlockStatusExt { extents, .. } => 8 + 16 * extents.len() as u64,
            Self::Error { message, .. } => 6 + message.len() as u64,
            Self::ErrorOffset { message, .. } => 14 + message.len() as u64,
        }
    }
}

/// One reply chunk. `offset` is the request's offset, echoed in extended headers only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    pub flags: u16,
    pub cookie: u64,
    pub offset: u64,
    pub payload: ChunkPayload,
}

impl Chunk {
    pub const STRUCTURED_HEADER_LEN: usize = 20;
    pub const EXTENDED_HEADER_LEN: usize = 32;

    /// Writes the header and the payload except READ data, which is returned to be sent next.
    pub fn encode_head(
        &self,
        style: HeaderStyle,
        out: &mut BytesMut,
    ) -> Result<Option<Bytes>, ProtoError> {
        let len = self.payload.len();
        match style {
            HeaderStyle::Simple => return Err(ProtoError::Unrepresentable("structured chunk")),
            HeaderStyle::Structured => {
                let len32 =
                    u32::try_from(len).map_err(|_| ProtoError::Unrepresentable("chunk length"))?;
                out.put_u32(STRUCTURED_REPLY_MAGIC);
                out.put_u16(self.flags);
                out.put_u16(self.payload.chunk_type());
                out.put_u64(self.cookie);
                out.put_u32(len32);
            }
            HeaderStyle::Extended => {
                out.put_u32(EXTENDED_REPLY_MAGIC);
                out.put_u16(self.flags);
                out.put_u16(self.payload.chunk_type());
                out.put_u64(self.cookie);
                out.put_u64(self.offset);
                out.put_u64(len);
            }
        }
        match &self.payload {
            ChunkPayload::None => {}
            ChunkPayload::OffsetData { offset, data } => {
                out.put_u64(*offset);
                return Ok(Some(data.clone()));
            }
            ChunkPayload::OffsetHole { offset, length } => {
                out.put_u64(*offset);
                out.put_u32(*length);
            }
            ChunkPayload::BlockStatus {
                context_id,
                extents,
            } => {
                out.put_u32(*context_id);
                for (l, f) in extents {
                    out.put_u32(*l);
                    out.put_u32(*f);
                }
            }
            ChunkPayload::BlockStatusExt {
                context_id,
                extents,
            } => {
                out.put_u32(*context_id);
                let count = u32::try_from(extents.len())
                    .map_err(|_| ProtoError::Unrepresentable("extent count"))?;
                out.put_u32(count);
                for (l, f) in extents {
                    out.put_u64(*l);
                    out.put_u64(*f);
                }
            }
            ChunkPayload::Error { error, message }
            | ChunkPayload::ErrorOffset { error, message, .. } => {
                check_string(message, "error message")?;
                out.put_u32(*error);
                out.put_u16(message.len() as u16);
                out.put_slice(message.as_bytes());
                if let ChunkPayload::ErrorOffset { offset, .. } = &self.payload {
                    out.put_u64(*offset);
                }
            }
        }
        Ok(None)
    }

    /// Header, payload and data in one buffer (tests, clients).
    pub fn encode(&self, style: HeaderStyle, out: &mut BytesMut) -> Result<(), ProtoError> {
        if let Some(data) = self.encode_head(style, out)? {
            out.put_slice(&data);
        }
        Ok(())
    }

    /// Decodes one chunk, refusing payloads longer than `max_len`.
    pub fn decode(
        buf: &[u8],
        style: HeaderStyle,
        max_len: u64,
    ) -> Result<Option<(Self, usize)>, ProtoError> {
        let Some(h) = ChunkHeader::decode(buf, style)? else {
            return Ok(None);
        };
        if h.len > max_len {
            return Err(ProtoError::TooLong {
                what: "chunk",
                len: h.len,
                max: max_len,
            });
        }
        let total = h.head as u64 + h.len;
        if (buf.len() as u64) < total {
            return Ok(None);
        }
        let mut r = Reader::new(&buf[h.head..total as usize]);
        let payload = ChunkPayload::decode(h.kind, &mut r)?;
        r.finish("chunk")?;
        Ok(Some((
            Self {
                flags: h.flags,
                cookie: h.cookie,
                offset: h.offset,
                payload,
            },
            total as usize,
        )))
    }
}

/// A chunk header's fields; `head` is its length on the wire, `len` the payload's.
struct ChunkHeader {
    flags: u16,
    kind: u16,
    cookie: u64,
    offset: u64,
    len: u64,
    head: usize,
}

impl ChunkHeader {
    /// `None` until the whole header is in `buf`.
    fn decode(buf: &[u8], style: HeaderStyle) -> Result<Option<Self>, ProtoError> {
        match style {
            HeaderStyle::Simple => Err(ProtoError::Unrepresentable("structured chunk")),
            HeaderStyle::Structured => Self::structured(buf),
            HeaderStyle::Extended => Self::extended(buf),
        }
    }

    fn structured(buf: &[u8]) -> Result<Option<Self>, ProtoError> {
        let head = Chunk::STRUCTURED_HEADER_LEN;
        if buf.len() < head {
            return Ok(None);
        }
        let mut r = Reader::new(&buf[..head]);
        let magic = r.u32("chunk")?;
        if magic != STRUCTURED_REPLY_MAGIC {
            return Err(ProtoError::BadMagic(magic.into()));
        }
        Ok(Some(Self {
            flags: r.u16("chunk")?,
            kind: r.u16("chunk")?,
            cookie: r.u64("chunk")?,
            // Compact chunks do not echo the request's offset.
            offset: 0,
            len: u64::from(r.u32("chunk")?),
            head,
        }))
    }

    fn extended(buf: &[u8]) -> Result<Option<Self>, ProtoError> {
        let head = Chunk::EXTENDED_HEADER_LEN;
        if buf.len() < head {
            return Ok(None);
        }
        let mut r = Reader::new(&buf[..head]);
        let magic = r.u32("chunk")?;
        if magic != EXTENDED_REPLY_MAGIC {
            return Err(ProtoError::BadMagic(magic.into()));
        }
        Ok(Some(Self {
            flags: r.u16("chunk")?,
            kind: r.u16("chunk")?,
            cookie: r.u64("chunk")?,
            offset: r.u64("chunk")?,
            len: r.u64("chunk")?,
            head,
        }))
    }
}

impl ChunkPayload {
    /// The payload of a chunk of type `kind`; the caller checks that nothing is left over.
    fn decode(kind: u16, r: &mut Reader<'_>) -> Result<Self, ProtoError> {
        Ok(match kind {
            REPLY_TYPE_NONE => Self::None,
            REPLY_TYPE_OFFSET_DATA => Self::OffsetData {
                offset: r.u64("offset data")?,
                data: Bytes::copy_from_slice(r.rest()),
            },
            REPLY_TYPE_OFFSET_HOLE => Self::OffsetHole {
                offset: r.u64("offset hole")?,
                length: r.u32("offset hole")?,
            },
            REPLY_TYPE_BLOCK_STATUS => Self::decode_block_status(r)?,
            REPLY_TYPE_BLOCK_STATUS_EXT => Self::decode_block_status_ext(r)?,
            REPLY_TYPE_ERROR | REPLY_TYPE_ERROR_OFFSET => Self::decode_error(kind, r)?,
            _ => return Err(ProtoError::Malformed("chunk type")),
        })
    }

    fn decode_block_status(r: &mut Reader<'_>) -> Result<Self, ProtoError> {
        let context_id = r.u32("block status")?;
        if r.remaining() % 8 != 0 {
            return Err(ProtoError::Malformed("block status"));
        }
        let extents = (0..r.remaining() / 8)
            .map(|_| Ok((r.u32("block status")?, r.u32("block status")?)))
            .collect::<Result<Vec<_>, ProtoError>>()?;
        Ok(Self::BlockStatus {
            context_id,
            extents,
        })
    }

    fn decode_block_status_ext(r: &mut Reader<'_>) -> Result<Self, ProtoError> {
        let context_id = r.u32("block status")?;
        let count = r.u32("block status")? as usize;
        if r.remaining() % 16 != 0 || r.remaining() / 16 != count {
            return Err(ProtoError::Malformed("block status"));
        }
        let extents = (0..count)
            .map(|_| Ok((r.u64("block status")?, r.u64("block status")?)))
            .collect::<Result<Vec<_>, ProtoError>>()?;
        Ok(Self::BlockStatusExt {
            context_id,
            extents,
        })
    }

    /// ERROR and ERROR_OFFSET: the same fields, the offset after the message.
    fn decode_error(kind: u16, r: &mut Reader<'_>) -> Result<Self, ProtoError> {
        let error = r.u32("error chunk")?;
        let mlen = r.u16("error chunk")?;
        let message = r.string(mlen.into(), "error message")?;
        Ok(if kind == REPLY_TYPE_ERROR {
            Self::Error { error, message }
        } else {
            Self::ErrorOffset {
                error,
                message,
                offset: r.u64("error chunk")?,
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn simple_reply_bytes() {
        let mut b = BytesMut::new();
        SimpleReply {
            error: EINVAL,
            cookie: 0x0102,
        }
        .encode(&mut b);
        assert_eq!(&b[..], b"\x67\x44\x66\x98\0\0\0\x16\0\0\0\0\0\0\x01\x02");
        assert_eq!(
            SimpleReply::decode(&b),
            Ok(Some((
                SimpleReply {
                    error: 22,
                    cookie: 0x102
                },
                16
            )))
        );
        assert_eq!(SimpleReply::decode(&b[..15]), Ok(None));
    }

    #[test]
    fn structured_data_chunk_bytes() {
        let c = Chunk {
            flags: REPLY_FLAG_DONE,
            cookie: 5,
            offset: 0,
            payload: ChunkPayload::OffsetData {
                offset: 512,
                data: Bytes::from_static(b"hi"),
            },
        };
        let mut b = BytesMut::new();
        let data = c.encode_head(HeaderStyle::Structured, &mut b).unwrap();
        assert_eq!(data.as_deref(), Some(&b"hi"[..]));
        assert_eq!(
            &b[..],
            b"\x66\x8e\x33\xef\0\x01\0\x01\0\0\0\0\0\0\0\x05\0\0\0\x0a\0\0\0\0\0\0\x02\x00"
        );
    }

    #[test]
    fn extended_none_chunk_bytes() {
        let c = Chunk {
            flags: REPLY_FLAG_DONE,
            cookie: 1,
            offset: 4096,
            payload: ChunkPayload::None,
        };
        let mut b = BytesMut::new();
        c.encode(HeaderStyle::Extended, &mut b).unwrap();
        assert_eq!(
            &b[..],
            b"\x6e\x8a\x27\x8c\0\x01\0\0\0\0\0\0\0\0\0\x01\0\0\0\0\0\0\x10\0\0\0\0\0\0\0\0\0"
        );
        assert!(c.encode(HeaderStyle::Simple, &mut b).is_err());
    }

    #[test]
    fn chunks_round_trip() {
        let payloads = [
            ChunkPayload::None,
            ChunkPayload::OffsetData {
                offset: 1 << 40,
                data: Bytes::from_static(b"data"),
            },
            ChunkPayload::OffsetHole {
                offset: 7,
                length: 65536,
            },
            ChunkPayload::BlockStatus {
                context_id: 1,
                extents: vec![(4096, STATE_HOLE | STATE_ZERO), (512, 0)],
            },
            ChunkPayload::BlockStatusExt {
                context_id: 2,
                extents: vec![(1 << 33, 2), (1, 0)],
            },
            ChunkPayload::Error {
                error: EIO,
                message: "boom".into(),
            },
            ChunkPayload::ErrorOffset {
                error: EIO,
                message: "".into(),
                offset: 99,
            },
        ];
        for style in [HeaderStyle::Structured, HeaderStyle::Extended] {
            for (i, payload) in payloads.iter().enumerate() {
                let c = Chunk {
                    flags: (i % 2) as u16,
                    cookie: i as u64 * 1000,
                    offset: if style == HeaderStyle::Extended {
                        123
                    } else {
                        0
                    },
                    payload: payload.clone(),
                };
                let mut b = BytesMut::new();
                c.encode(style, &mut b).unwrap();
                assert_eq!(Chunk::decode(&b, style, 1 << 20), Ok(Some((c, b.len()))));
                for cut in 0..b.len() {
                    assert_eq!(Chunk::decode(&b[..cut], style, 1 << 20), Ok(None));
                }
            }
        }
    }

    #[test]
    fn chunk_decode_limits() {
        let mut b = BytesMut::new();
        b.put_u32(EXTENDED_REPLY_MAGIC);
        b.put_u16(0);
        b.put_u16(REPLY_TYPE_NONE);
        b.put_u64(0);
        b.put_u64(0);
        b.put_u64(u64::MAX);
        assert!(matches!(
            Chunk::decode(&b, HeaderStyle::Extended, 1 << 20),
            Err(ProtoError::TooLong { .. })
        ));
        // A NONE chunk with a payload is malformed.
        let mut b = BytesMut::new();
        b.put_u32(STRUCTURED_REPLY_MAGIC);
        b.put_u16(1);
        b.put_u16(REPLY_TYPE_NONE);
        b.put_u64(0);
        b.put_u32(1);
        b.put_u8(0);
        assert!(Chunk::decode(&b, HeaderStyle::Structured, 1 << 20).is_err());
    }
}
