//! Handshake messages: greeting, client flags, options and option replies, the EXPORT_NAME reply.

use bytes::{BufMut, BytesMut};

use super::consts::*;
use super::{ProtoError, Reader, check_string};

/// Largest option payload accepted. The biggest legal option is a meta-context request with a
/// handful of 4 KiB strings; anything above this is refused before a buffer is sized by it.
pub const MAX_OPTION_LEN: u32 = 64 * 1024;

/// Most queries accepted in one LIST/SET_META_CONTEXT.
pub const MAX_META_QUERIES: u32 = 128;

/// The server's first message: `NBDMAGIC`, `IHAVEOPT`, handshake flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Greeting {
    pub flags: u16,
}

impl Greeting {
    pub const LEN: usize = 18;

    pub fn encode(&self, out: &mut BytesMut) {
        out.put_u64(NBDMAGIC);
        out.put_u64(IHAVEOPT);
        out.put_u16(self.flags);
    }

    pub fn decode(buf: &[u8]) -> Result<Option<(Self, usize)>, ProtoError> {
        if buf.len() < Self::LEN {
            return Ok(None);
        }
        let mut r = Reader::new(&buf[..Self::LEN]);
        let magic = r.u64("greeting")?;
        if magic != NBDMAGIC {
            return Err(ProtoError::BadMagic(magic));
        }
        let magic = r.u64("greeting")?;
        if magic != IHAVEOPT {
            return Err(ProtoError::BadMagic(magic));
        }
        let flags = r.u16("greeting")?;
        Ok(Some((Self { flags }, Self::LEN)))
    }
}

/// The client's answer to the greeting (a u32 of flags), checked against what the server offered.
pub fn decode_client_flags(raw: u32, offered: u16) -> Result<u32, ProtoError> {
    let known = CLIENT_FLAG_FIXED_NEWSTYLE | CLIENT_FLAG_NO_ZEROES;
    if raw & !known != 0 {
        return Err(ProtoError::Malformed("client flags"));
    }
    if raw & CLIENT_FLAG_NO_ZEROES != 0 && offered & FLAG_NO_ZEROES == 0 {
        return Err(ProtoError::Malformed("client flags"));
    }
    Ok(raw)
}

/// `IHAVEOPT`, option, length: followed by `length` bytes of option data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OptionHeader {
    pub option: u32,
    pub length: u32,
}

impl OptionHeader {
    pub const LEN: usize = 16;

    pub fn encode(&self, out: &mut BytesMut) {
        out.put_u64(IHAVEOPT);
        out.put_u32(self.option);
        out.put_u32(self.length);
    }

    /// Decodes the 16-byte header; the length is returned as sent, for the caller to check
    /// against [`MAX_OPTION_LEN`] (see [`OptionHeader::check_length`]).
    pub fn decode(buf: &[u8]) -> Result<Option<(Self, usize)>, ProtoError> {
        if buf.len() < Self::LEN {
            return Ok(None);
        }
        let mut r = Reader::new(&buf[..Self::LEN]);
        let magic = r.u64("option header")?;
        if magic != IHAVEOPT {
            return Err(ProtoError::BadMagic(magic));
        }
        let option = r.u32("option header")?;
        let length = r.u32("option header")?;
        Ok(Some((Self { option, length }, Self::LEN)))
    }

    pub fn check_length(&self) -> Result<(), ProtoError> {
        if self.length > MAX_OPTION_LEN {
            return Err(ProtoError::TooLong {
                what: "option",
                len: self.length.into(),
                max: MAX_OPTION_LEN.into(),
            });
        }
        Ok(())
    }
}

/// Data of NBD_OPT_INFO and NBD_OPT_GO.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InfoRequest {
    pub name: String,
    pub requests: Vec<u16>,
}

/// Data of NBD_OPT_LIST_META_CONTEXT and NBD_OPT_SET_META_CONTEXT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetaContextRequest {
    pub export: String,
    pub queries: Vec<String>,
}

/// One option sent by the client, decoded from its header and data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientOption {
    ExportName(String),
    Abort,
    List,
    StartTls,
    Info(InfoRequest),
    Go(InfoRequest),
    StructuredReply,
    ListMetaContext(MetaContextRequest),
    SetMetaContext(MetaContextRequest),
    ExtendedHeaders,
    /// An option this server does not know; answered with NBD_REP_ERR_UNSUP.
    Unknown(u32),
}

impl ClientOption {
    /// The option number on the wire.
    pub fn code(&self) -> u32 {
        match self {
            Self::ExportName(_) => OPT_EXPORT_NAME,
            Self::Abort => OPT_ABORT,
            Self::List => OPT_LIST,
            Self::StartTls => OPT_STARTTLS,
            Self::Info(_) => OPT_INFO,
            Self::Go(_) => OPT_GO,
            Self::StructuredReply => OPT_STRUCTURED_REPLY,
            Self::ListMetaContext(_) => OPT_LIST_META_CONTEXT,
            Self::SetMetaContext(_) => OPT_SET_META_CONTEXT,
            Self::ExtendedHeaders => OPT_EXTENDED_HEADERS,
            Self::Unknown(code) => *code,
        }
    }

    /// Decodes the data of option `option`. An error here is answered with NBD_REP_ERR_INVALID
    /// (or, for EXPORT_NAME, by closing the connection).
    pub fn decode(option: u32, data: &[u8]) -> Result<Self, ProtoError> {
        let mut r = Reader::new(data);
        let opt = match option {
            OPT_EXPORT_NAME => {
                let name = r.string(data.len(), "export name")?;
                Self::ExportName(name)
            }
            OPT_ABORT => Self::Abort,
            OPT_LIST => Self::List,
            OPT_STARTTLS => Self::StartTls,
            OPT_STRUCTURED_REPLY => Self::StructuredReply,
            OPT_EXTENDED_HEADERS => Self::ExtendedHeaders,
            OPT_INFO | OPT_GO => {
                let name = r.string32("export name")?;
                let count = r.u16("info request count")?;
                if r.remaining() != usize::from(count) * 2 {
                    return Err(ProtoError::Malformed("info request list"));
                }
                let requests = (0..count)
                    .map(|_| r.u16("info request"))
                    .collect::<Result<Vec<_>, _>>()?;
                let req = InfoRequest { name, requests };
                if option == OPT_INFO {
                    Self::Info(req)
                } else {
                    Self::Go(req)
                }
            }
            OPT_LIST_META_CONTEXT | OPT_SET_META_CONTEXT => {
                let export = r.string32("export name")?;
                let count = r.u32("query count")?;
                if count > MAX_META_QUERIES {
                    return Err(ProtoError::TooLong {
                        what: "query list",
                        len: count.into(),
                        max: MAX_META_QUERIES.into(),
                    });
                }
                let queries = (0..count)
                    .map(|_| r.string32("meta context query"))
                    .collect::<Result<Vec<_>, _>>()?;
                let req = MetaContextRequest { export, queries };
                if option == OPT_LIST_META_CONTEXT {
                    Self::ListMetaContext(req)
                } else {
                    Self::SetMetaContext(req)
                }
            }
            other => {
                // Unknown options are answered, not parsed: their data is skipped.
                r.rest();
                return Ok(Self::Unknown(other));
            }
        };
        r.finish("option data")?;
        Ok(opt)
    }

    /// Encodes header and data, as a client sends it.
    pub fn encode(&self, out: &mut BytesMut) -> Result<(), ProtoError> {
        let mut data = BytesMut::new();
        match self {
            Self::ExportName(name) => {
                check_string(name, "export name")?;
                data.put_slice(name.as_bytes());
            }
            Self::Abort
            | Self::List
            | Self::StartTls
            | Self::StructuredReply
            | Self::ExtendedHeaders
            | Self::Unknown(_) => {}
            Self::Info(req) | Self::Go(req) => {
                put_string32(&mut data, &req.name, "export name")?;
                let count = u16::try_from(req.requests.len())
                    .map_err(|_| ProtoError::Unrepresentable("info request list"))?;
                data.put_u16(count);
                for r in &req.requests {
                    data.put_u16(*r);
                }
            }
            Self::ListMetaContext(req) | Self::SetMetaContext(req) => {
                put_string32(&mut data, &req.export, "export name")?;
                if req.queries.len() > MAX_META_QUERIES as usize {
                    return Err(ProtoError::Unrepresentable("query list"));
                }
                data.put_u32(req.queries.len() as u32);
                for q in &req.queries {
                    put_string32(&mut data, q, "meta context query")?;
                }
            }
        }
        let length =
            u32::try_from(data.len()).map_err(|_| ProtoError::Unrepresentable("option"))?;
        OptionHeader {
            option: self.code(),
            length,
        }
        .encode(out);
        out.put_slice(&data);
        Ok(())
    }
}

fn put_string32(out: &mut BytesMut, s: &str, what: &'static str) -> Result<(), ProtoError> {
    check_string(s, what)?;
    out.put_u32(s.len() as u32);
    out.put_slice(s.as_bytes());
    Ok(())
}

/// One piece of information about an export, sent in NBD_REP_INFO.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Info {
    Export { size: u64, flags: u16 },
    Name(String),
    Description(String),
    BlockSize { min: u32, preferred: u32, max: u32 },
}

impl Info {
    fn encode(&self, out: &mut BytesMut) -> Result<(), ProtoError> {
        match self {
            Self::Export { size, flags } => {
                out.put_u16(INFO_EXPORT);
                out.put_u64(*size);
                out.put_u16(*flags);
            }
            Self::Name(s) | Self::Description(s) => {
                check_string(s, "info string")?;
                out.put_u16(if matches!(self, Self::Name(_)) {
                    INFO_NAME
                } else {
                    INFO_DESCRIPTION
                });
                out.put_slice(s.as_bytes());
            }
            Self::BlockSize {
                min,
                preferred,
                max,
            } => {
                out.put_u16(INFO_BLOCK_SIZE);
                out.put_u32(*min);
                out.put_u32(*preferred);
                out.put_u32(*max);
            }
        }
        Ok(())
    }

    fn decode(data: &[u8]) -> Result<Self, ProtoError> {
        let mut r = Reader::new(data);
        let info = match r.u16("info type")? {
            INFO_EXPORT => Self::Export {
                size: r.u64("info export")?,
                flags: r.u16("info export")?,
            },
            INFO_NAME => Self::Name(r.string(r.remaining(), "info name")?),
            INFO_DESCRIPTION => Self::Description(r.string(r.remaining(), "info description")?),
            INFO_BLOCK_SIZE => Self::BlockSize {
                min: r.u32("info block size")?,
                preferred: r.u32("info block size")?,
                max: r.u32("info block size")?,
            },
            _ => return Err(ProtoError::Malformed("info type")),
        };
        r.finish("info")?;
        Ok(info)
    }
}

/// What an option reply says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OptionReplyBody {
    Ack,
    Server {
        name: String,
        details: String,
    },
    Info(Info),
    MetaContext {
        id: u32,
        name: String,
    },
    /// `code` is one of the `REP_ERR_*` values; `message` is for humans.
    Error {
        code: u32,
        message: String,
    },
}

/// Option reply: magic, the option it answers, reply type, length, data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OptionReply {
    pub option: u32,
    pub body: OptionReplyBody,
}

impl OptionReply {
    pub const HEADER_LEN: usize = 20;

    pub fn new(option: u32, body: OptionReplyBody) -> Self {
        Self { option, body }
    }

    pub fn error(option: u32, code: u32, message: impl Into<String>) -> Self {
        let mut message = message.into();
        if message.len() > super::MAX_STRING_LEN {
            let mut end = super::MAX_STRING_LEN;
            while !message.is_char_boundary(end) {
                end -= 1;
            }
            message.truncate(end);
        }
        Self::new(option, OptionReplyBody::Error { code, message })
    }

    pub fn encode(&self, out: &mut BytesMut) -> Result<(), ProtoError> {
        let mut data = BytesMut::new();
        let reply_type = match &self.body {
            OptionReplyBody::Ack => REP_ACK,
            OptionReplyBody::Server { name, details } => {
                put_string32(&mut data, name, "export name")?;
                check_string(details, "export details")?;
                data.put_slice(details.as_bytes());
                REP_SERVER
            }
            OptionReplyBody::Info(info) => {
                info.encode(&mut data)?;
                REP_INFO
            }
            OptionReplyBody::MetaContext { id, name } => {
                check_string(name, "meta context name")?;
                data.put_u32(*id);
                data.put_slice(name.as_bytes());
                REP_META_CONTEXT
            }
            OptionReplyBody::Error { code, message } => {
                if code & 0x8000_0000 == 0 {
                    return Err(ProtoError::Unrepresentable("error reply without bit 31"));
                }
                check_string(message, "error message")?;
                data.put_slice(message.as_bytes());
                *code
            }
        };
        out.put_u64(REPLY_MAGIC_OPT);
        out.put_u32(self.option);
        out.put_u32(reply_type);
        out.put_u32(data.len() as u32);
        out.put_slice(&data);
        Ok(())
    }

    pub fn decode(buf: &[u8]) -> Result<Option<(Self, usize)>, ProtoError> {
        if buf.len() < Self::HEADER_LEN {
            return Ok(None);
        }
        let mut r = Reader::new(&buf[..Self::HEADER_LEN]);
        let magic = r.u64("option reply")?;
        if magic != REPLY_MAGIC_OPT {
            return Err(ProtoError::BadMagic(magic));
        }
        let option = r.u32("option reply")?;
        let reply_type = r.u32("option reply")?;
        let length = r.u32("option reply")?;
        if length > MAX_OPTION_LEN {
            return Err(ProtoError::TooLong {
                what: "option reply",
                len: length.into(),
                max: MAX_OPTION_LEN.into(),
            });
        }
        let total = Self::HEADER_LEN + length as usize;
        if buf.len() < total {
            return Ok(None);
        }
        let data = &buf[Self::HEADER_LEN..total];
        let mut r = Reader::new(data);
        let body = match reply_type {
            REP_ACK => OptionReplyBody::Ack,
            REP_SERVER => {
                let name = r.string32("export name")?;
                let details = r.string(r.remaining(), "export details")?;
                OptionReplyBody::Server { name, details }
            }
            REP_INFO => OptionReplyBody::Info(Info::decode(r.rest())?),
            REP_META_CONTEXT => OptionReplyBody::MetaContext {
                id: r.u32("meta context id")?,
                name: r.string(r.remaining(), "meta context name")?,
            },
            code if code & 0x8000_0000 != 0 => OptionReplyBody::Error {
                code,
                message: r.string(r.remaining(), "error message")?,
            },
            _ => return Err(ProtoError::Malformed("option reply type")),
        };
        r.finish("option reply")?;
        Ok(Some((Self { option, body }, total)))
    }
}

/// The server's answer to NBD_OPT_EXPORT_NAME: size, transmission flags, and 124 zero bytes unless
/// the client asked for NO_ZEROES.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExportNameReply {
    pub size: u64,
    pub flags: u16,
}

impl ExportNameReply {
    pub fn encode(&self, no_zeroes: bool, out: &mut BytesMut) {
        out.put_u64(self.size);
        out.put_u16(self.flags);
        if !no_zeroes {
            out.put_bytes(0, 124);
        }
    }

    pub fn decode(buf: &[u8], no_zeroes: bool) -> Result<Option<(Self, usize)>, ProtoError> {
        let len = if no_zeroes { 10 } else { 134 };
        if buf.len() < len {
            return Ok(None);
        }
        let mut r = Reader::new(&buf[..10]);
        let size = r.u64("export name reply")?;
        let flags = r.u16("export name reply")?;
        Ok(Some((Self { size, flags }, len)))
    }
}

/// Where the connection stands with TLS, for [`tls_gate`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsState {
    /// The server has no TLS: STARTTLS is refused, everything else is allowed.
    Unavailable,
    /// TLS is offered but not in use yet; the client may stay in clear.
    Offered,
    /// TLS is required and not in use yet (qemu-nbd with `--tls-creds`, the spec's FORCEDTLS).
    Required,
    /// STARTTLS succeeded; everything runs inside TLS.
    Active,
}

/// What the TLS policy makes of an option, before its data is even decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsGate {
    /// Handle the option as usual.
    Pass,
    /// Answer NBD_REP_ERR_TLS_REQD and read the next option.
    TlsRequired,
    /// Close the connection: EXPORT_NAME has no error reply.
    Close,
}

/// The TLS policy for option `option` in state `state`: with TLS required and not yet in use, only
/// STARTTLS and ABORT pass, so no export is named, listed or described in clear.
pub fn tls_gate(state: TlsState, option: u32) -> TlsGate {
    match (state, option) {
        (TlsState::Required, OPT_STARTTLS | OPT_ABORT) => TlsGate::Pass,
        (TlsState::Required, OPT_EXPORT_NAME) => TlsGate::Close,
        (TlsState::Required, _) => TlsGate::TlsRequired,
        _ => TlsGate::Pass,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enc_opt(o: &ClientOption) -> BytesMut {
        let mut b = BytesMut::new();
        o.encode(&mut b).unwrap();
        b
    }

    fn round_trip_option(o: ClientOption) {
        let b = enc_opt(&o);
        let (h, n) = OptionHeader::decode(&b).unwrap().unwrap();
        assert_eq!(n, 16);
        assert_eq!(h.length as usize, b.len() - 16);
        assert_eq!(ClientOption::decode(h.option, &b[16..]).unwrap(), o);
    }

    fn round_trip_reply(r: OptionReply) {
        let mut b = BytesMut::new();
        r.encode(&mut b).unwrap();
        let (d, n) = OptionReply::decode(&b).unwrap().unwrap();
        assert_eq!(n, b.len());
        assert_eq!(d, r);
        // Every strict prefix is incomplete, never an error.
        for cut in 0..b.len() {
            assert_eq!(OptionReply::decode(&b[..cut]), Ok(None), "cut at {cut}");
        }
    }

    #[test]
    fn greeting_bytes() {
        let mut b = BytesMut::new();
        Greeting {
            flags: FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES,
        }
        .encode(&mut b);
        assert_eq!(&b[..], b"NBDMAGICIHAVEOPT\x00\x03");
        let (g, n) = Greeting::decode(&b).unwrap().unwrap();
        assert_eq!((g.flags, n), (3, 18));
        assert_eq!(Greeting::decode(&b[..17]), Ok(None));
        assert!(matches!(
            Greeting::decode(b"NBDMAGICXHAVEOPT\x00\x03"),
            Err(ProtoError::BadMagic(_))
        ));
    }

    #[test]
    fn client_flags() {
        assert_eq!(decode_client_flags(3, 3), Ok(3));
        assert_eq!(decode_client_flags(1, 1), Ok(1));
        assert!(decode_client_flags(2, 1).is_err());
        assert!(decode_client_flags(4, 3).is_err());
        assert!(decode_client_flags(0x8000_0000, 3).is_err());
    }

    #[test]
    fn go_option_bytes() {
        let bytes: &[u8] =
            b"IHAVEOPT\x00\x00\x00\x07\x00\x00\x00\x0c\x00\x00\x00\x04disk\x00\x01\x00\x03";
        let (h, n) = OptionHeader::decode(bytes).unwrap().unwrap();
        assert_eq!(
            h,
            OptionHeader {
                option: 7,
                length: 12
            }
        );
        let o = ClientOption::decode(h.option, &bytes[n..]).unwrap();
        assert_eq!(
            o,
            ClientOption::Go(InfoRequest {
                name: "disk".into(),
                requests: vec![INFO_BLOCK_SIZE]
            })
        );
        assert_eq!(&enc_opt(&o)[..], bytes);
    }

    #[test]
    fn malformed_options() {
        // Name length beyond the data.
        assert!(ClientOption::decode(OPT_GO, b"\x00\x00\x00\x09disk\x00\x00").is_err());
        // Info count disagrees with the data.
        assert!(ClientOption::decode(OPT_GO, b"\x00\x00\x00\x00\x00\x02\x00\x01").is_err());
        // Data where none is allowed.
        assert!(ClientOption::decode(OPT_STRUCTURED_REPLY, b"x").is_err());
        assert!(ClientOption::decode(OPT_LIST, b"x").is_err());
        // Name too long.
        let mut long = vec![0u8, 0, 0x10, 0x01];
        long.extend(std::iter::repeat_n(b'a', 4097));
        long.extend([0, 0]);
        assert!(matches!(
            ClientOption::decode(OPT_INFO, &long),
            Err(ProtoError::TooLong { .. })
        ));
        // Not UTF-8.
        assert!(ClientOption::decode(OPT_EXPORT_NAME, b"\xff\xfe").is_err());
        // Absurd query count.
        assert!(ClientOption::decode(OPT_SET_META_CONTEXT, b"\0\0\0\0\xff\xff\xff\xff").is_err());
        // Unknown options keep their number and skip their data.
        assert_eq!(
            ClientOption::decode(99, b"whatever"),
            Ok(ClientOption::Unknown(99))
        );
    }

    #[test]
    fn option_header_limits() {
        let h = OptionHeader {
            option: OPT_GO,
            length: MAX_OPTION_LEN + 1,
        };
        assert!(h.check_length().is_err());
        let mut b = BytesMut::new();
        h.encode(&mut b);
        assert_eq!(OptionHeader::decode(&b).unwrap().unwrap().0, h);
        b[0] = b'X';
        assert!(OptionHeader::decode(&b).is_err());
    }

    #[test]
    fn options_round_trip() {
        for o in [
            ClientOption::ExportName("".into()),
            ClientOption::ExportName("vm-disk0".into()),
            ClientOption::Abort,
            ClientOption::List,
            ClientOption::StartTls,
            ClientOption::StructuredReply,
            ClientOption::ExtendedHeaders,
            ClientOption::Unknown(42),
            ClientOption::Info(InfoRequest {
                name: "a".into(),
                requests: vec![0, 1, 2, 3],
            }),
            ClientOption::Go(InfoRequest {
                name: "".into(),
                requests: vec![],
            }),
            ClientOption::ListMetaContext(MetaContextRequest {
                export: "x".into(),
                queries: vec![],
            }),
            ClientOption::SetMetaContext(MetaContextRequest {
                export: "x".into(),
                queries: vec![
                    CONTEXT_BASE_ALLOCATION.into(),
                    CONTEXT_ALLOCATION_DEPTH.into(),
                ],
            }),
        ] {
            round_trip_option(o);
        }
    }

    #[test]
    fn option_reply_bytes() {
        let mut b = BytesMut::new();
        OptionReply::new(OPT_STRUCTURED_REPLY, OptionReplyBody::Ack)
            .encode(&mut b)
            .unwrap();
        assert_eq!(
            &b[..],
            b"\x00\x03\xe8\x89\x04\x55\x65\xa9\x00\x00\x00\x08\x00\x00\x00\x01\x00\x00\x00\x00"
        );
        let mut b = BytesMut::new();
        OptionReply::new(
            OPT_GO,
            OptionReplyBody::Info(Info::Export {
                size: 1 << 20,
                flags: 0x0d,
            }),
        )
        .encode(&mut b)
        .unwrap();
        assert_eq!(&b[16..20], b"\x00\x00\x00\x0c");
        assert_eq!(
            &b[20..],
            b"\x00\x00\x00\x00\x00\x00\x00\x10\x00\x00\x00\x0d"
        );
    }

    #[test]
    fn option_replies_round_trip() {
        for body in [
            OptionReplyBody::Ack,
            OptionReplyBody::Server {
                name: "disk0".into(),
                details: "".into(),
            },
            OptionReplyBody::Server {
                name: "".into(),
                details: "a description".into(),
            },
            OptionReplyBody::Info(Info::Export { size: 7, flags: 3 }),
            OptionReplyBody::Info(Info::Name("n".into())),
            OptionReplyBody::Info(Info::Description("d".into())),
            OptionReplyBody::Info(Info::BlockSize {
                min: 1,
                preferred: 4096,
                max: 64 << 20,
            }),
            OptionReplyBody::MetaContext {
                id: 1,
                name: CONTEXT_BASE_ALLOCATION.into(),
            },
            OptionReplyBody::Error {
                code: REP_ERR_UNKNOWN,
                message: "no such export".into(),
            },
        ] {
            round_trip_reply(OptionReply::new(OPT_GO, body));
        }
    }

    #[test]
    fn error_messages_are_truncated_to_the_string_limit() {
        let r = OptionReply::error(OPT_GO, REP_ERR_INVALID, "é".repeat(3000));
        let mut b = BytesMut::new();
        r.encode(&mut b).unwrap();
        assert!(b.len() <= OptionReply::HEADER_LEN + 4096);
    }

    #[test]
    fn export_name_reply() {
        let r = ExportNameReply {
            size: 0x1234,
            flags: 0x3,
        };
        for nz in [false, true] {
            let mut b = BytesMut::new();
            r.encode(nz, &mut b);
            assert_eq!(b.len(), if nz { 10 } else { 134 });
            assert_eq!(&b[..10], b"\0\0\0\0\0\0\x12\x34\0\x03");
            assert_eq!(
                ExportNameReply::decode(&b, nz).unwrap().unwrap(),
                (r, b.len())
            );
        }
    }

    #[test]
    fn tls_required_lets_only_starttls_and_abort_through() {
        for opt in [OPT_GO, OPT_INFO, OPT_LIST, OPT_STRUCTURED_REPLY, 0xdead] {
            assert_eq!(tls_gate(TlsState::Required, opt), TlsGate::TlsRequired);
            for open in [TlsState::Unavailable, TlsState::Offered, TlsState::Active] {
                assert_eq!(tls_gate(open, opt), TlsGate::Pass);
            }
        }
        assert_eq!(
            tls_gate(TlsState::Required, OPT_EXPORT_NAME),
            TlsGate::Close
        );
        assert_eq!(tls_gate(TlsState::Required, OPT_STARTTLS), TlsGate::Pass);
        assert_eq!(tls_gate(TlsState::Required, OPT_ABORT), TlsGate::Pass);
    }

    #[test]
    fn starttls_carries_no_data() {
        assert_eq!(
            ClientOption::decode(OPT_STARTTLS, &[]),
            Ok(ClientOption::StartTls)
        );
        assert!(ClientOption::decode(OPT_STARTTLS, &[0]).is_err());
    }
}
