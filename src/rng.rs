//! [`Rng`]: a small seeded random number generator, for what must replay from a seed:
//! the faulty links of tests and the demo, and every generator of [`crate::testkit`].

/// SplitMix64: tiny, fast and good enough to drive tests; not for cryptography.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// A generator seeded with `seed`.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (`n` > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        assert!(n > 0, "below(0) has no answer");
        self.next_u64() % n
    }

    /// An index into a collection of `len` (> 0) items.
    #[cfg_attr(not(feature = "testing"), allow(dead_code))] // the test generators' use
    pub fn index(&mut self, len: usize) -> usize {
        let len = u64::try_from(len).expect("collections are smaller than u64::MAX");
        usize::try_from(self.below(len)).expect("the result is below a usize")
    }

    /// True with probability `percent`/100.
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}
