//! Decompression of compressed clusters: raw deflate (RFC 1951) or one zstd frame, until exactly
//! one cluster is produced. Inputs are untrusted; output never exceeds the cluster.

use std::io::Read;

use crate::error::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompressionType {
    Deflate,
    Zstd,
}

impl CompressionType {
    pub fn from_header(v: u8) -> Result<Self> {
        match v {
            0 => Ok(Self::Deflate),
            1 => Ok(Self::Zstd),
            other => Err(Error::unsupported(format!(
                "compression type {other} at offset 104"
            ))),
        }
    }
}

/// Decompresses `input` (the stream at host offset `host`, for messages) into all of `out`.
pub fn decompress(kind: CompressionType, input: &[u8], out: &mut [u8], host: u64) -> Result<()> {
    let bad = |what: &dyn std::fmt::Display| {
        Error::corrupt(format!("compressed cluster at host offset {host}: {what}"))
    };
    match kind {
        CompressionType::Deflate => {
            let mut d = flate2::Decompress::new(false);
            loop {
                let (inp, outp) = (d.total_in() as usize, d.total_out() as usize);
                if outp == out.len() {
                    return Ok(());
                }
                let status = d
                    .decompress(
                        &input[inp..],
                        &mut out[outp..],
                        flate2::FlushDecompress::Finish,
                    )
                    .map_err(|e| bad(&e))?;
                let progressed = d.total_in() as usize != inp || d.total_out() as usize != outp;
                if d.total_out() as usize == out.len() {
                    return Ok(());
                }
                if status == flate2::Status::StreamEnd || !progressed {
                    return Err(bad(&"stream ends before a whole cluster"));
                }
            }
        }
        CompressionType::Zstd => {
            let mut dec = ruzstd::decoding::StreamingDecoder::new(input).map_err(|e| bad(&e))?;
            let mut filled = 0;
            while filled < out.len() {
                match dec.read(&mut out[filled..]) {
                    Ok(0) => return Err(bad(&"stream ends before a whole cluster")),
                    Ok(n) => filled += n,
                    Err(e) => return Err(bad(&e)),
                }
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_streams_are_errors() {
        let mut out = vec![0u8; 4096];
        for kind in [CompressionType::Deflate, CompressionType::Zstd] {
            assert!(decompress(kind, &[], &mut out, 0).is_err());
            assert!(decompress(kind, &[0xff; 64], &mut out, 7).is_err());
        }
        // A stored deflate block with 5 bytes: too short for the cluster.
        let stored = [0x01, 0x05, 0x00, 0xfa, 0xff, 1, 2, 3, 4, 5];
        assert!(decompress(CompressionType::Deflate, &stored, &mut out, 0).is_err());
        let mut small = [0u8; 5];
        decompress(CompressionType::Deflate, &stored, &mut small, 0).unwrap();
        assert_eq!(small, [1, 2, 3, 4, 5]);
    }
}
