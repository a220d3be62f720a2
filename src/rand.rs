//! Randomness: unguessable tokens from the OS, and a cheap generator for jitter.

use std::cell::Cell;

/// 128 random bits from the operating system as 32 lowercase hex characters. Used for
/// job tokens, generated idempotency keys and session ids.
pub fn token() -> String {
    let mut b = [0u8; 16];
    // getrandom fails only on exotic platforms at boot; fall back to the jitter generator
    // mixed with time so a token is still unique, if not unguessable.
    if getrandom::fill(&mut b).is_err() {
        for chunk in b.chunks_mut(8) {
            chunk.copy_from_slice(&next_u64().to_le_bytes()[..chunk.len()]);
        }
    }
    b.iter().map(|x| format!("{x:02x}")).collect()
}

thread_local! {
    static STATE: Cell<u64> = Cell::new(seed());
}

fn seed() -> u64 {
    let mut b = [0u8; 8];
    if getrandom::fill(&mut b).is_ok() {
        u64::from_le_bytes(b)
    } else {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0x9E37_79B9_7F4A_7C15);
        t ^ u64::from(std::process::id()).rotate_left(32)
    }
}

/// The next value of a per-thread splitmix64 generator (not for secrets).
pub fn next_u64() -> u64 {
    STATE.with(|s| {
        let mut z = s.get().wrapping_add(0x9E37_79B9_7F4A_7C15);
        s.set(z);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    })
}

/// A uniform float in [0, 1).
pub fn unit() -> f64 {
    (next_u64() >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    #[test]
    fn tokens_are_128_bit_hex_and_distinct() {
        let a = super::token();
        let b = super::token();
        assert_eq!(a.len(), 32);
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }

    #[test]
    fn unit_is_in_range() {
        for _ in 0..1000 {
            let u = super::unit();
            assert!((0.0..1.0).contains(&u));
        }
    }
}
