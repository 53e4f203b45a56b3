//! FNV-1a, 64 bits: the hash for the crate's own short keys (user ids, interleaving signatures).
//!
//! Nothing hashed here comes from an adversary choosing keys to collide: an explored signature
//! only counts distinct interleavings, and a recorder's user set holds a scenario's own ids. So
//! it needs no defence against chosen inputs, and SipHash was a tenth of an explored case's
//! judging time.

use std::hash::{BuildHasherDefault, Hasher};

/// The hasher; [`Default`] starts it at the FNV offset basis.
pub(crate) struct Fnv1a(u64);

impl Default for Fnv1a {
    fn default() -> Self {
        Fnv1a(0xcbf2_9ce4_8422_2325)
    }
}

impl Hasher for Fnv1a {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
        }
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// For `HashMap`s and `HashSet`s keyed by the crate's own ids.
pub(crate) type BuildFnv1a = BuildHasherDefault<Fnv1a>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn it_is_fnv_1a_64() {
        // The published test vectors: the empty string is the offset basis, "a" and "foobar"
        // their listed hashes.
        for (input, want) in [
            ("", 0xcbf2_9ce4_8422_2325),
            ("a", 0xaf63_dc4c_8601_ec8c),
            ("foobar", 0x8594_4171_f739_67e8),
        ] {
            let mut h = Fnv1a::default();
            h.write(input.as_bytes());
            assert_eq!(h.finish(), want, "{input:?}");
        }
    }
}
