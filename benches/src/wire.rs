//! Client-side NBD framing for the benchmark client: the few messages it sends and receives.
//!
//! Pure (no I/O). It exists only because `nbd_server::proto` is a server-side codec; the day that
//! codec gains client-side encode/decode (encode option/request, decode option reply/simple
//! reply), this module shrinks to re-exports of it. Kept to the minimum on purpose: one hand-written
//! NBD codec in the tree is enough.

use crate::{Error, Result};

pub const NBDMAGIC: u64 = 0x4e42_444d_4147_4943;
pub const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
pub const OPTION_REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
pub const REQUEST_MAGIC: u32 = 0x2560_9513;
pub const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;

pub const FLAG_FIXED_NEWSTYLE: u16 = 1 << 0;
pub const FLAG_NO_ZEROES: u16 = 1 << 1;

pub const OPT_GO: u32 = 7;
pub const REP_ACK: u32 = 1;
pub const REP_INFO: u32 = 3;
pub const REP_ERR_BIT: u32 = 1 << 31;
pub const INFO_EXPORT: u16 = 0;

pub const TFLAG_READ_ONLY: u16 = 0x2;
pub const TFLAG_SEND_FLUSH: u16 = 0x4;
pub const TFLAG_CAN_MULTI_CONN: u16 = 0x100;

pub const CMD_WRITE: u16 = 1;
pub const CMD_DISC: u16 = 2;
pub const CMD_FLUSH: u16 = 3;

pub const GREETING_LEN: usize = 18;
pub const OPTION_REPLY_HEADER_LEN: usize = 20;
pub const REQUEST_LEN: usize = 28;
pub const SIMPLE_REPLY_LEN: usize = 16;
/// Option replies longer than this are refused before reading them.
pub const MAX_OPTION_REPLY: u32 = 64 << 10;

fn be_u16(b: &[u8]) -> u16 {
    u16::from_be_bytes([b[0], b[1]])
}
fn be_u32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}
fn be_u64(b: &[u8]) -> u64 {
    u64::from_be_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]])
}

/// Checks the server greeting and returns its handshake flags.
pub fn decode_greeting(b: &[u8; GREETING_LEN]) -> Result<u16> {
    if be_u64(&b[0..]) != NBDMAGIC || be_u64(&b[8..]) != IHAVEOPT {
        return Err(Error::Protocol("not a fixed-newstyle NBD greeting".into()));
    }
    let flags = be_u16(&b[16..]);
    if flags & FLAG_FIXED_NEWSTYLE == 0 {
        return Err(Error::Protocol("server lacks FIXED_NEWSTYLE".into()));
    }
    Ok(flags)
}

/// The client flags answering `server_flags`.
pub fn encode_client_flags(server_flags: u16) -> [u8; 4] {
    u32::from(server_flags & (FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES)).to_be_bytes()
}

/// NBD_OPT_GO for `export`, requesting no particular info (the server always sends INFO_EXPORT).
pub fn encode_opt_go(export: &str, out: &mut Vec<u8>) {
    let name = export.as_bytes();
    out.extend_from_slice(&IHAVEOPT.to_be_bytes());
    out.extend_from_slice(&OPT_GO.to_be_bytes());
    out.extend_from_slice(&(4 + name.len() as u32 + 2).to_be_bytes());
    out.extend_from_slice(&(name.len() as u32).to_be_bytes());
    out.extend_from_slice(name);
    out.extend_from_slice(&0u16.to_be_bytes());
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OptionReplyHeader {
    pub option: u32,
    pub reply: u32,
    pub length: u32,
}

pub fn decode_option_reply_header(b: &[u8; OPTION_REPLY_HEADER_LEN]) -> Result<OptionReplyHeader> {
    if be_u64(&b[0..]) != OPTION_REPLY_MAGIC {
        return Err(Error::Protocol("bad option reply magic".into()));
    }
    let h = OptionReplyHeader {
        option: be_u32(&b[8..]),
        reply: be_u32(&b[12..]),
        length: be_u32(&b[16..]),
    };
    if h.length > MAX_OPTION_REPLY {
        return Err(Error::Protocol(format!(
            "option reply of {} bytes",
            h.length
        )));
    }
    Ok(h)
}

/// `(size, transmission flags)` if `data` (of an NBD_REP_INFO) is an NBD_INFO_EXPORT.
pub fn decode_info_export(data: &[u8]) -> Result<Option<(u64, u16)>> {
    if data.len() < 2 || be_u16(data) != INFO_EXPORT {
        return Ok(None);
    }
    if data.len() != 12 {
        return Err(Error::Protocol(format!(
            "NBD_INFO_EXPORT of {} bytes",
            data.len()
        )));
    }
    Ok(Some((be_u64(&data[2..]), be_u16(&data[10..]))))
}

/// A compact request header.
pub fn encode_request(
    flags: u16,
    command: u16,
    cookie: u64,
    offset: u64,
    length: u32,
    out: &mut [u8; REQUEST_LEN],
) {
    out[0..4].copy_from_slice(&REQUEST_MAGIC.to_be_bytes());
    out[4..6].copy_from_slice(&flags.to_be_bytes());
    out[6..8].copy_from_slice(&command.to_be_bytes());
    out[8..16].copy_from_slice(&cookie.to_be_bytes());
    out[16..24].copy_from_slice(&offset.to_be_bytes());
    out[24..28].copy_from_slice(&length.to_be_bytes());
}

/// `(errno, cookie)` of a simple reply.
pub fn decode_simple_reply(b: &[u8; SIMPLE_REPLY_LEN]) -> Result<(u32, u64)> {
    if be_u32(b) != SIMPLE_REPLY_MAGIC {
        return Err(Error::Protocol(format!("bad reply magic {:#x}", be_u32(b))));
    }
    Ok((be_u32(&b[4..]), be_u64(&b[8..])))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greeting() {
        let mut g = [0u8; GREETING_LEN];
        g[..8].copy_from_slice(&NBDMAGIC.to_be_bytes());
        g[8..16].copy_from_slice(&IHAVEOPT.to_be_bytes());
        g[16..].copy_from_slice(&3u16.to_be_bytes());
        assert_eq!(decode_greeting(&g).unwrap(), 3);
        assert_eq!(encode_client_flags(3), [0, 0, 0, 3]);
        g[17] = 0;
        assert!(decode_greeting(&g).is_err());
    }

    #[test]
    fn opt_go_layout() {
        let mut v = Vec::new();
        encode_opt_go("ab", &mut v);
        assert_eq!(v.len(), 16 + 4 + 2 + 2);
        assert_eq!(&v[12..16], &8u32.to_be_bytes());
        assert_eq!(&v[20..22], b"ab");
    }

    #[test]
    fn option_reply_and_info() {
        let mut h = [0u8; OPTION_REPLY_HEADER_LEN];
        h[..8].copy_from_slice(&OPTION_REPLY_MAGIC.to_be_bytes());
        h[8..12].copy_from_slice(&OPT_GO.to_be_bytes());
        h[12..16].copy_from_slice(&REP_INFO.to_be_bytes());
        h[16..].copy_from_slice(&12u32.to_be_bytes());
        assert_eq!(
            decode_option_reply_header(&h).unwrap(),
            OptionReplyHeader {
                option: OPT_GO,
                reply: REP_INFO,
                length: 12
            }
        );
        h[16..].copy_from_slice(&(MAX_OPTION_REPLY + 1).to_be_bytes());
        assert!(decode_option_reply_header(&h).is_err());

        let mut info = vec![0u8, 0];
        info.extend_from_slice(&(1u64 << 30).to_be_bytes());
        info.extend_from_slice(&0x105u16.to_be_bytes());
        assert_eq!(decode_info_export(&info).unwrap(), Some((1 << 30, 0x105)));
        assert_eq!(decode_info_export(&[0, 3, 0, 0]).unwrap(), None);
        assert!(decode_info_export(&info[..11]).is_err());
    }

    #[test]
    fn request_and_reply() {
        let mut r = [0u8; REQUEST_LEN];
        encode_request(0, CMD_WRITE, 7, 4096, 512, &mut r);
        assert_eq!(&r[..4], &REQUEST_MAGIC.to_be_bytes());
        assert_eq!(&r[6..8], &1u16.to_be_bytes());
        assert_eq!(&r[24..], &512u32.to_be_bytes());
        let mut s = [0u8; SIMPLE_REPLY_LEN];
        s[..4].copy_from_slice(&SIMPLE_REPLY_MAGIC.to_be_bytes());
        s[4..8].copy_from_slice(&5u32.to_be_bytes());
        s[8..].copy_from_slice(&9u64.to_be_bytes());
        assert_eq!(decode_simple_reply(&s).unwrap(), (5, 9));
        s[0] = 0;
        assert!(decode_simple_reply(&s).is_err());
    }
}
