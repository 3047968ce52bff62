//! Seeded random streams. Every image and every generator gets its own ChaCha8 stream derived
//! from (world seed, stream tag, index), so output does not depend on thread scheduling.

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// The RNG used everywhere (ChaCha8: portable, stable across platforms and rand versions).
pub(crate) type Rng = ChaCha8Rng;

fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Named streams, so adding a generator never shifts another's numbers.
#[derive(Clone, Copy, Debug)]
#[repr(u64)]
pub(crate) enum Stream {
    Scene = 1,
    Detector = 2,
    DetectorMap = 3,
    Captions = 4,
    Phrases = 5,
    Vqa = 6,
    Gqa = 7,
    Nlvr2 = 8,
    RetrievalCaptions = 9,
    Pairs = 10,
    Features = 11,
}

/// The RNG of one (stream, index) of a world.
pub(crate) fn rng_for(seed: u64, stream: Stream, index: u64) -> Rng {
    let mut key = [0u8; 32];
    let a = splitmix(seed ^ splitmix(stream as u64));
    let b = splitmix(a ^ splitmix(index.wrapping_add(0x5851_F42D_4C95_7F2D)));
    let c = splitmix(b);
    let d = splitmix(c ^ a);
    for (i, v) in [a, b, c, d].iter().enumerate() {
        key[i * 8..i * 8 + 8].copy_from_slice(&v.to_le_bytes());
    }
    ChaCha8Rng::from_seed(key)
}
