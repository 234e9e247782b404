//! Candidate ways to tell whether a WRITE payload is all zeroes (to store it as a zero cluster),
//! measured side by side in `benches/zero_detect.rs`. Safe code only: each leans on the compiler's
//! auto-vectorisation or on `memcmp`.

/// Byte by byte with early exit.
pub fn bytewise(buf: &[u8]) -> bool {
    buf.iter().all(|&b| b == 0)
}

/// OR of all 16-byte words, no early exit (vectorises well, always reads everything).
pub fn or_fold(buf: &[u8]) -> bool {
    let mut chunks = buf.chunks_exact(16);
    let acc = chunks.by_ref().fold(0u128, |a, c| {
        a | u128::from_ne_bytes(c.try_into().expect("16 bytes"))
    });
    acc == 0 && chunks.remainder().iter().all(|&b| b == 0)
}

/// OR-fold per 4 KiB block, stopping at the first block with a non-zero byte: the speed of
/// [`or_fold`] on zero data, an early exit on data.
pub fn blocks_or_fold(buf: &[u8]) -> bool {
    buf.chunks(4096).all(or_fold)
}

/// First byte zero and the buffer equal to itself shifted by one (one `memcmp`, early exit).
pub fn memcmp_shifted(buf: &[u8]) -> bool {
    match buf.split_first() {
        None => true,
        Some((&first, _)) => first == 0 && buf[1..] == buf[..buf.len() - 1],
    }
}

/// Compare 4 KiB blocks with a static zero block (`memcmp` each, early exit).
pub fn memcmp_zero_block(buf: &[u8]) -> bool {
    static ZERO: [u8; 4096] = [0; 4096];
    buf.chunks(4096).all(|c| c == &ZERO[..c.len()])
}

/// A zero test.
pub type Strategy = fn(&[u8]) -> bool;

/// All strategies, by name, for the bench and the tests.
pub const STRATEGIES: &[(&str, Strategy)] = &[
    ("bytewise", bytewise),
    ("or_fold", or_fold),
    ("blocks_or_fold", blocks_or_fold),
    ("memcmp_shifted", memcmp_shifted),
    ("memcmp_zero_block", memcmp_zero_block),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_strategy_agrees() {
        for (name, f) in STRATEGIES {
            assert!(f(&[]), "{name} empty");
            for len in [1usize, 15, 16, 17, 4095, 4096, 4097, 70_000] {
                let mut v = vec![0u8; len];
                assert!(f(&v), "{name} zeros {len}");
                for pos in [0, len / 2, len - 1] {
                    v[pos] = 0x80;
                    assert!(!f(&v), "{name} {len} nonzero at {pos}");
                    v[pos] = 0;
                }
            }
        }
    }
}
