//! Sizes written by people: `10G`, `512M`, `4096`.

/// Parse a byte count with an optional binary suffix K, M, G, T (powers of 1024, as qemu-img).
pub fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let (digits, shift) = match text.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let shift = match c.to_ascii_uppercase() {
                'K' => 10,
                'M' => 20,
                'G' => 30,
                'T' => 40,
                _ => {
                    return Err(format!(
                        "unknown size suffix {c:?} in {text:?} (use K, M, G or T)"
                    ));
                }
            };
            (&text[..i], shift)
        }
        _ => (text, 0),
    };
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("not a size: {text:?}"))?;
    n.checked_mul(1u64 << shift)
        .ok_or_else(|| format!("size too large: {text:?}"))
}

/// Bytes in GiB, unrounded: the Sendense GUI adds `size_gb` up and prints the sum as it is, so
/// a disk under 1 GiB stays visible (512 MiB is `0.5`, 2 MiB `0.001953125`) and sums of
/// MiB-multiple sizes stay exact (binary fractions).
pub fn gib(bytes: u64) -> f64 {
    bytes as f64 / (1u64 << 30) as f64
}

#[cfg(test)]
mod tests {
    use super::parse_size;

    #[test]
    fn suffixes() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("64K"), Ok(64 << 10));
        assert_eq!(parse_size("64k"), Ok(64 << 10));
        assert_eq!(parse_size("10M"), Ok(10 << 20));
        assert_eq!(parse_size("2G"), Ok(2 << 30));
        assert_eq!(parse_size("1T"), Ok(1 << 40));
    }

    #[test]
    fn rejects_garbage() {
        assert!(parse_size("").is_err());
        assert!(parse_size("G").is_err());
        assert!(parse_size("1X").is_err());
        assert!(parse_size("-1").is_err());
        assert!(parse_size("99999999999T").is_err());
    }
}
