//! A small deterministic generator for the property tests: a failure names a seed that
//! reproduces it, and no crate is pulled in for it.

/// xorshift64*.
pub struct Rng(u64);

impl Rng {
    /// A generator for test case `seed`, spread so that neighbouring seeds differ early.
    pub fn seeded(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }

    /// The next 64 random bits.
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A number in `0..n`.
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}
