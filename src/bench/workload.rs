//! Keys, values and the random numbers that pick them, all derived from the seed.
//!
//! - Key `i` (0 ≤ i < key space) is `key:` followed by `i` in ten zero-padded decimal digits
//!   (14 bytes), the same for every protocol.
//! - The value written to key `i` at version `v` is a function of (seed, i, v): its first
//!   bytes are the hex digits of a 64-bit hash of the triple, the rest a slice of a pool of
//!   random letters and digits chosen by the same hash. Values are printable ASCII without
//!   spaces, so they need no escaping in the line protocol, and a verifier that knows `v` can
//!   recompute the exact bytes; a stale value (another version) differs in its hash prefix.
//! - A small SplitMix64 generator (no dependency) drives every choice, one stream per
//!   connection, so a run is repeatable for a given seed.

/// SplitMix64's finaliser: a good 64-bit mixing function.
pub fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// SplitMix64: tiny, fast, deterministic.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(mix(seed))
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        mix(self.0)
    }

    /// Uniform in `0..n` (n > 0), by multiply-shift (bias below 2^-32 for our ranges).
    pub fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Appends key `index` to `out`.
pub fn push_key(index: u64, out: &mut Vec<u8>) {
    out.extend_from_slice(b"key:");
    let mut digits = [b'0'; 10];
    let mut n = index;
    for d in digits.iter_mut().rev() {
        *d = b'0' + (n % 10) as u8;
        n /= 10;
    }
    out.extend_from_slice(&digits);
}

const ALPHABET: &[u8; 62] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
const HEX: &[u8; 16] = b"0123456789abcdef";
/// Bytes of the hash prefix of a value (fewer if the value is shorter).
const PREFIX: usize = 16;

/// The values of one run: a given size, derived from the seed.
#[derive(Debug, Clone)]
pub struct Values {
    seed: u64,
    size: usize,
    pool: Vec<u8>,
}

impl Values {
    pub fn new(seed: u64, size: usize) -> Values {
        let len = size + 64 * 1024;
        let mut rng = Rng::new(seed ^ 0x5eed_5eed_5eed_5eed);
        let pool = (0..len).map(|_| ALPHABET[rng.below(ALPHABET.len() as u64) as usize]).collect();
        Values { seed, size, pool }
    }

    pub fn size(&self) -> usize {
        self.size
    }

    fn hash(&self, key: u64, version: u32) -> u64 {
        mix(self.seed ^ mix(key ^ mix(u64::from(version) ^ 0x7665_7273_696f_6e00)))
    }

    /// Appends the value of key `key` at `version` to `out`.
    pub fn push(&self, key: u64, version: u32, out: &mut Vec<u8>) {
        let h = self.hash(key, version);
        let prefix = self.size.min(PREFIX);
        for i in 0..prefix {
            out.push(HEX[((h >> (60 - 4 * i)) & 15) as usize]);
        }
        let rest = self.size - prefix;
        if rest > 0 {
            let span = (self.pool.len() - rest + 1) as u64;
            let start = (mix(h) % span) as usize;
            out.extend_from_slice(&self.pool[start..start + rest]);
        }
    }

    /// Whether `got` is exactly the value of `key` at `version`.
    pub fn matches(&self, key: u64, version: u32, got: &[u8], scratch: &mut Vec<u8>) -> bool {
        if got.len() != self.size {
            return false;
        }
        scratch.clear();
        self.push(key, version, scratch);
        scratch.as_slice() == got
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_fixed_width() {
        let mut key = Vec::new();
        push_key(42, &mut key);
        assert_eq!(key, b"key:0000000042");
        push_key(9_999_999_999, &mut key);
        assert_eq!(key, b"key:0000000042key:9999999999");
    }

    #[test]
    fn values_are_deterministic_printable_and_version_specific() {
        let values = Values::new(7, 100);
        let (mut a, mut b, mut c) = (Vec::new(), Vec::new(), Vec::new());
        values.push(3, 1, &mut a);
        Values::new(7, 100).push(3, 1, &mut b);
        values.push(3, 2, &mut c);
        assert_eq!(a.len(), 100);
        assert_eq!(a, b, "same seed, key and version give the same value");
        assert_ne!(a, c, "another version gives another value");
        assert!(a.iter().all(|b| b.is_ascii_alphanumeric()));
        let mut scratch = Vec::new();
        assert!(values.matches(3, 1, &a, &mut scratch));
        assert!(!values.matches(3, 2, &a, &mut scratch));
        assert!(!values.matches(4, 1, &a, &mut scratch));
        assert!(!Values::new(8, 100).matches(3, 1, &a, &mut scratch), "the seed matters");
    }

    #[test]
    fn tiny_values_work() {
        let values = Values::new(1, 1);
        let mut v = Vec::new();
        values.push(0, 1, &mut v);
        assert_eq!(v.len(), 1);
        let values = Values::new(1, 0);
        v.clear();
        values.push(0, 1, &mut v);
        assert!(v.is_empty());
    }

    #[test]
    fn below_stays_in_range() {
        let mut rng = Rng::new(1);
        assert!((0..10_000).all(|_| rng.below(7) < 7));
        assert!((0..10_000).all(|_| (0.0..1.0).contains(&rng.unit())));
    }
}
