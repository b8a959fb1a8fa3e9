//! [`NameSet`]: the resource names a stream subscribes to, kept compactly.
//!
//! A proxy reaching every service of a large mesh subscribes to one endpoint set per service,
//! thousands of names, on every stream. As `String`s in a `BTreeSet` they cost about 60 bytes
//! each; here they are one sorted text with an end offset each (the name's length plus 4
//! bytes), and recent changes wait in two small overlays until they are worth merging, so a
//! subscription growing one name at a time costs amortised O(log n) per name plus a bounded
//! share of a merge. Merged names are interned: the proxies of a mesh mostly subscribe to the
//! same names, and every set with equal merged names holds one copy of them.

use std::cmp::Ordering;
use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, LazyLock, Mutex, Weak};

/// Merged names: sorted and distinct, one after another in `text`, each ending at its entry
/// of `ends`.
#[derive(Debug, Default, PartialEq, Eq, Hash)]
struct Merged {
    text: Box<str>,
    ends: Box<[u32]>,
}

/// Every merged name list alive, by hash, held weakly.
#[derive(Default)]
struct Interner {
    by_hash: HashMap<u64, Vec<Weak<Merged>>>,
    entries: usize,
    /// Entries at the last prune: the next one comes when the table has doubled.
    pruned_at: usize,
}

static INTERNED: LazyLock<Mutex<Interner>> = LazyLock::new(Mutex::default);

impl Interner {
    /// The alive list equal to `merged`, or `merged` itself, kept for later callers.
    fn intern(&mut self, merged: Merged) -> Arc<Merged> {
        use std::hash::{BuildHasher, BuildHasherDefault};
        let hash = BuildHasherDefault::<std::collections::hash_map::DefaultHasher>::default()
            .hash_one(&merged);
        let candidates = self.by_hash.entry(hash).or_default();
        if let Some(alive) = candidates
            .iter()
            .filter_map(Weak::upgrade)
            .find(|m| **m == merged)
        {
            return alive;
        }
        let merged = Arc::new(merged);
        candidates.push(Arc::downgrade(&merged));
        self.entries += 1;
        if self.entries > 2 * self.pruned_at.max(64) {
            self.by_hash.retain(|_, list| {
                list.retain(|w| w.strong_count() > 0);
                !list.is_empty()
            });
            self.entries = self.by_hash.values().map(Vec::len).sum();
            self.pruned_at = self.entries;
        }
        merged
    }
}

/// A set of names: sorted, distinct, iterated in order.
#[derive(Debug, Clone, Default)]
pub(crate) struct NameSet {
    /// The merged names, shared with every set whose merged names are the same.
    merged: Arc<Merged>,
    /// Names added since the last merge (none of them merged).
    added: BTreeSet<Box<str>>,
    /// Merged names removed since the last merge.
    removed: BTreeSet<Box<str>>,
}

impl NameSet {
    fn merged_len(&self) -> usize {
        self.merged.ends.len()
    }

    fn merged(&self, i: usize) -> &str {
        let ends = &self.merged.ends;
        let start = if i == 0 { 0 } else { ends[i - 1] as usize };
        &self.merged.text[start..ends[i] as usize]
    }

    fn merged_contains(&self, name: &str) -> bool {
        let (mut lo, mut hi) = (0, self.merged_len());
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            match self.merged(mid).cmp(name) {
                Ordering::Less => lo = mid + 1,
                Ordering::Greater => hi = mid,
                Ordering::Equal => return true,
            }
        }
        false
    }

    /// Whether `name` is in the set.
    pub(crate) fn contains(&self, name: &str) -> bool {
        self.added.contains(name) || (self.merged_contains(name) && !self.removed.contains(name))
    }

    /// Adds `name`; false when it was there already.
    pub(crate) fn insert(&mut self, name: &str) -> bool {
        if self.removed.remove(name) {
            return true;
        }
        if self.added.contains(name) || self.merged_contains(name) {
            return false;
        }
        self.added.insert(name.into());
        self.merge_if_worth_it();
        true
    }

    /// Removes `name`; false when it was not there.
    pub(crate) fn remove(&mut self, name: &str) -> bool {
        if self.added.remove(name) {
            return true;
        }
        if !self.merged_contains(name) || !self.removed.insert(name.into()) {
            return false;
        }
        self.merge_if_worth_it();
        true
    }

    /// How many names there are.
    pub(crate) fn len(&self) -> usize {
        self.merged_len() - self.removed.len() + self.added.len()
    }

    /// Whether there is no name.
    pub(crate) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The names, in order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &str> {
        let mut merged = (0..self.merged_len())
            .map(|i| self.merged(i))
            .filter(|n| !self.removed.contains(*n))
            .peekable();
        let mut added = self.added.iter().map(|n| &**n).peekable();
        std::iter::from_fn(move || match (merged.peek(), added.peek()) {
            (Some(m), Some(a)) if a < m => added.next(),
            (Some(_), _) => merged.next(),
            (None, _) => added.next(),
        })
    }

    /// Merges the overlays once they hold 32 names or a 64th of the merged ones: each merge
    /// costs O(n) and comes after n/64 changes at least, so a change costs amortised O(64),
    /// and at rest the overlays (about 40 bytes a name) stay small beside the merged text.
    fn merge_if_worth_it(&mut self) {
        if self.added.len() + self.removed.len() > (self.merged_len() / 64).max(32) {
            let names: Vec<&str> = self.iter().collect();
            let merged = Self::from_sorted(&names);
            *self = merged;
        }
    }

    /// A set of `names`, which are sorted and distinct.
    fn from_sorted(names: &[&str]) -> NameSet {
        let mut text = String::with_capacity(names.iter().map(|n| n.len()).sum());
        let mut ends = Vec::with_capacity(names.len());
        for name in names {
            text.push_str(name);
            // Names come from protobuf strings (at most 4 GiB in all): the cast holds.
            ends.push(u32::try_from(text.len()).unwrap_or(u32::MAX));
        }
        let merged = Merged {
            text: text.into_boxed_str(),
            ends: ends.into_boxed_slice(),
        };
        let merged = if names.is_empty() {
            Arc::default()
        } else {
            INTERNED
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .intern(merged)
        };
        NameSet {
            merged,
            added: BTreeSet::new(),
            removed: BTreeSet::new(),
        }
    }
}

impl PartialEq for NameSet {
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len() && self.iter().eq(other.iter())
    }
}

impl Eq for NameSet {}

impl<S: AsRef<str>> FromIterator<S> for NameSet {
    fn from_iter<I: IntoIterator<Item = S>>(iter: I) -> Self {
        let owned: Vec<S> = iter.into_iter().collect();
        let mut names: Vec<&str> = owned.iter().map(AsRef::as_ref).collect();
        names.sort_unstable();
        names.dedup();
        NameSet::from_sorted(&names)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn behaves_as_a_sorted_set_through_merges() {
        let mut set = NameSet::default();
        let mut model = BTreeSet::new();
        // A deterministic walk of inserts and removals over 300 names, enough for many merges.
        let mut x: u64 = 7;
        for step in 0..5_000 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let name = format!("svc-{}", (x >> 33) % 300);
            if step % 3 == 0 {
                assert_eq!(set.remove(&name), model.remove(&name), "remove {name}");
            } else {
                assert_eq!(
                    set.insert(&name),
                    model.insert(name.clone()),
                    "insert {name}"
                );
            }
            assert_eq!(set.len(), model.len());
        }
        assert!(set.iter().eq(model.iter().map(String::as_str)));
        for i in 0..300 {
            let name = format!("svc-{i}");
            assert_eq!(set.contains(&name), model.contains(&name), "{name}");
        }
        assert!(!set.contains("svc-"), "a prefix of names is not a name");
        assert!(!set.contains(""), "nor is the empty name");
    }

    #[test]
    fn equal_sets_compare_equal_however_they_were_built() {
        let built: NameSet = ["b", "a", "c", "a"].into_iter().collect();
        let mut grown = NameSet::default();
        for n in ["c", "x", "a", "b"] {
            grown.insert(n);
        }
        grown.remove("x");
        assert_eq!(built, grown);
        assert!(built.iter().eq(["a", "b", "c"]));
        grown.remove("a");
        assert_ne!(built, grown);
    }

    #[test]
    fn equal_merged_names_are_kept_once() {
        let names = |n: usize| (0..n).map(|i| format!("svc-{i}")).collect::<NameSet>();
        let (a, b) = (names(100), names(100));
        assert!(Arc::ptr_eq(&a.merged, &b.merged));
        assert!(!Arc::ptr_eq(&a.merged, &names(99).merged));
        // Same text, other boundaries: another list.
        let ab_c: NameSet = ["ab", "c"].into_iter().collect();
        let a_bc: NameSet = ["a", "bc"].into_iter().collect();
        assert!(!Arc::ptr_eq(&ab_c.merged, &a_bc.merged));
        assert_ne!(ab_c, a_bc);
    }

    #[test]
    fn the_empty_name_is_a_name_like_any_other() {
        let mut set: NameSet = ["", "a"].into_iter().collect();
        assert!(set.contains(""));
        assert_eq!(set.len(), 2);
        assert!(set.remove(""));
        assert!(!set.contains(""));
        assert!(set.iter().eq(["a"]));
    }
}
