//! The names resources take on the other side of KDS.
//!
//! A policy written on global as `timeout-web` in mesh `default` is stored in each zone under a
//! name with a hash suffix, `timeout-web-<16 characters>`, so that resources of the same name
//! from different origins (global, or several zones) never collide. The suffix hashes the mesh,
//! the name the user gave (`kuma.io/display-name`) and the origin labels present
//! (`kuma.io/zone`, then `k8s.kuma.io/namespace`); Kuma computes it the same way on both sides,
//! and so must we, byte for byte, or a resource synced by a Kuma control plane and one synced by
//! ours would be two resources.

/// The longest resource name (Kubernetes' limit, which Kuma applies everywhere).
const MAX_NAME: usize = 253;
/// A dash and 16 characters.
const SUFFIX: usize = 17;

/// The characters the suffix is written with: no vowels, so it never spells a word (the
/// alphabet of Kubernetes' `SafeEncodeString`).
const ALPHABET: &[u8; 27] = b"bcdfghjklmnpqrstvwxz2456789";

/// 64-bit FNV-1a.
pub(crate) const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// 64-bit FNV-1a of `bytes`, continuing from `hash` (start from [`FNV_OFFSET`]).
pub(crate) fn fnv1a64(hash: u64, bytes: &[u8]) -> u64 {
    bytes
        .iter()
        .fold(hash, |h, b| (h ^ u64::from(*b)).wrapping_mul(FNV_PRIME))
}

/// `name` with the hash suffix of `mesh`, `name` and `origin` (the values of the origin labels
/// the resource has, in Kuma's order: zone, then namespace).
///
/// ```
/// use kuma_kds::names::hashed_name;
/// assert_eq!(hashed_name("", "foo", &[]), "foo-zxw6c95d42zfz9cc");
/// assert_eq!(hashed_name("", "foo", &["zone-1", "custom-ns"]), "foo-696vzv497z4cv4f4");
/// ```
pub fn hashed_name(mesh: &str, name: &str, origin: &[&str]) -> String {
    let hash = [mesh, name]
        .into_iter()
        .chain(origin.iter().copied())
        .fold(FNV_OFFSET, |hash, part| fnv1a64(hash, part.as_bytes()));
    let kept = shortened(name, MAX_NAME - SUFFIX);
    let mut out = String::with_capacity(kept.len() + SUFFIX);
    out.push_str(kept);
    out.push('-');
    // The hash's 8 bytes, big-endian, as 16 lowercase hex digits; each digit is then written
    // as the alphabet's character at its ASCII code modulo 27.
    for digit in format!("{hash:016x}").bytes() {
        out.push(char::from(ALPHABET[usize::from(digit) % ALPHABET.len()]));
    }
    out
}

/// `name`'s first `max` bytes (Kuma cuts bytes; a cut inside a character, which valid names
/// never need, backs off to the character's start).
fn shortened(name: &str, max: usize) -> &str {
    if name.len() <= max {
        return name;
    }
    let mut end = max;
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    &name[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kumas_vectors() {
        assert_eq!(hashed_name("", "foo", &[]), "foo-zxw6c95d42zfz9cc");
        assert_eq!(
            hashed_name("", "foo", &["zone-1", "custom-ns"]),
            "foo-696vzv497z4cv4f4"
        );
    }

    #[test]
    fn every_part_counts_and_order_matters() {
        let base = hashed_name("default", "web", &["zone-1"]);
        assert_ne!(base, hashed_name("other", "web", &["zone-1"]));
        assert_ne!(base, hashed_name("default", "web", &["zone-2"]));
        assert_ne!(base, hashed_name("default", "web", &[]));
        // Parts are concatenated without separator, as Kuma does.
        assert_eq!(
            hashed_name("de", "fault", &[])
                .split_once('-')
                .map(|(_, h)| h.to_string()),
            hashed_name("def", "ault", &[])
                .split_once('-')
                .map(|(_, h)| h.to_string()),
        );
    }

    #[test]
    fn long_names_are_cut_to_fit_the_limit() {
        let long = "a".repeat(300);
        let name = hashed_name("default", &long, &[]);
        assert_eq!(name.len(), MAX_NAME);
        assert!(name.starts_with(&"a".repeat(MAX_NAME - SUFFIX)));
        // A multi-byte character across the cut is not split.
        let long = format!("{}é", "a".repeat(MAX_NAME - SUFFIX - 1));
        let name = hashed_name("default", &long, &[]);
        assert_eq!(name.len(), MAX_NAME - 1);
    }
}
