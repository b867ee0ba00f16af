//! Port intervals to prefix-aligned blocks of the policy trie.

use enforcer_common::POLICY_KEY_FIXED_BITS;

/// Splits the inclusive range `[start, end]` into maximal prefix-aligned blocks, returned as
/// `(first port, prefix length of the trie key)` with prefix lengths in `80..=96`.
pub(crate) fn blocks(start: u16, end: u16) -> Vec<(u16, u32)> {
    let mut out = Vec::new();
    let mut s = u32::from(start);
    let e = u32::from(end);
    while s <= e {
        // Largest block aligned at s that fits in [s, e].
        let mut size_bits = if s == 0 {
            16
        } else {
            s.trailing_zeros().min(16)
        };
        while s + (1u32 << size_bits) - 1 > e {
            size_bits -= 1;
        }
        out.push((s as u16, POLICY_KEY_FIXED_BITS + 16 - size_bits));
        s += 1u32 << size_bits;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_splitting() {
        assert_eq!(blocks(0, u16::MAX), vec![(0, 80)]);
        assert_eq!(blocks(80, 80), vec![(80, 96)]);
        assert_eq!(blocks(8080, 8090), vec![(8080, 93), (8088, 95), (8090, 96)]);
        // Worst case is 30 blocks.
        assert_eq!(blocks(1, u16::MAX - 1).len(), 30);
        // Blocks cover exactly the range.
        for (s, e) in [(1u16, 1000u16), (3, 4), (65000, 65535), (0, 0)] {
            let covered: u32 = blocks(s, e).iter().map(|(_, l)| 1u32 << (96 - l)).sum();
            assert_eq!(covered, u32::from(e) - u32::from(s) + 1);
        }
    }
}
