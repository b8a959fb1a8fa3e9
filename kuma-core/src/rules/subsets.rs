//! Kuma's rules for `from` entries whose subsets overlap (its `BuildRules` with negations):
//! the tags of entries that can hold for one client at the same time are grouped (maximal
//! cliques of the "intersect" graph), and every combination of those tags, each key either
//! one of its values or none of them, gets the merged conf of the entries it implies. A client
//! then matches exactly one well-defined rule: the first, most specific one, containing it.

use crate::model::common::Tags;

/// Whether `element` carries every tag of `positive` and no pair of `negated` (Kuma's
/// `ContainsElement`), without building a [`Subset`].
pub(crate) fn contains(positive: &Tags, negated: &[(String, String)], element: &Tags) -> bool {
    if positive.is_empty() && negated.is_empty() {
        return true;
    }
    if element.is_empty() {
        return false;
    }
    let mut overlap = false;
    for (k, v) in positive {
        match element.get(k) {
            Some(e) if e == v => overlap = true,
            _ => return false,
        }
    }
    for (k, v) in negated {
        if let Some(e) = element.get(k) {
            overlap = true;
            if e == v {
                return false;
            }
        }
    }
    overlap || positive.is_empty()
}

/// A subset of clients: tags they carry (`positive`) and tag values they do not (`negated`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Subset {
    /// Tags a client carries.
    pub positive: Tags,
    /// (key, value) pairs a client does not carry.
    pub negated: Vec<(String, String)>,
}

impl Subset {
    /// Whether `element` (a client's tags) is in the subset, as Kuma's `ContainsElement` says.
    #[cfg(test)]
    fn contains(&self, element: &Tags) -> bool {
        contains(&self.positive, &self.negated, element)
    }

    /// Whether every client of `other` is in this subset of positive tags only (Kuma's
    /// `IsSubset`, for an entry's subset against a combination).
    fn implied_by(entry: &Tags, other: &Subset) -> bool {
        entry.iter().all(|(k, v)| {
            let positive = other.positive.get(k);
            let negated: Vec<&String> = other
                .negated
                .iter()
                .filter(|(nk, _)| nk == k)
                .map(|(_, nv)| nv)
                .collect();
            // Every condition of `other` on this key must imply `k = v`: a positive one equal
            // to it; negations never imply a positive value.
            match positive {
                Some(p) => p == v && negated.is_empty(),
                None => false,
            }
        })
    }
}

/// Whether two entry subsets can hold for one client: no key with different values.
fn intersect(a: &Tags, b: &Tags) -> bool {
    a.iter().all(|(k, v)| b.get(k).is_none_or(|w| w == v))
}

/// The maximal cliques of the graph on `n` nodes whose edges `adjacent` gives (Bron–Kerbosch
/// with pivoting), each sorted, in Kuma's order (by their ids joined with `:`, descending).
fn maximal_cliques(n: usize, adjacent: &dyn Fn(usize, usize) -> bool) -> Vec<Vec<usize>> {
    fn expand(
        r: &mut Vec<usize>,
        mut p: Vec<usize>,
        mut x: Vec<usize>,
        adjacent: &dyn Fn(usize, usize) -> bool,
        out: &mut Vec<Vec<usize>>,
    ) {
        if p.is_empty() && x.is_empty() {
            let mut clique = r.clone();
            clique.sort_unstable();
            out.push(clique);
            return;
        }
        let pivot = p
            .iter()
            .chain(&x)
            .copied()
            .max_by_key(|&u| p.iter().filter(|&&v| adjacent(u, v)).count());
        let candidates: Vec<usize> = p
            .iter()
            .copied()
            .filter(|&v| pivot.is_none_or(|u| !adjacent(u, v)))
            .collect();
        for v in candidates {
            r.push(v);
            let np = p.iter().copied().filter(|&w| adjacent(v, w)).collect();
            let nx = x.iter().copied().filter(|&w| adjacent(v, w)).collect();
            expand(r, np, nx, adjacent, out);
            r.pop();
            p.retain(|&w| w != v);
            x.push(v);
        }
    }
    let mut out = Vec::new();
    expand(
        &mut Vec::new(),
        (0..n).collect(),
        Vec::new(),
        adjacent,
        &mut out,
    );
    let key = |c: &Vec<usize>| c.iter().map(usize::to_string).collect::<Vec<_>>().join(":");
    out.sort_by_key(|c| std::cmp::Reverse(key(c)));
    out
}

/// Every combination of `tags` (sorted by key, then value) in Kuma's `SubsetIter` order: per
/// key, one of its values, or none of them.
fn combinations(tags: &[(String, String)]) -> Vec<Subset> {
    let mut dims: Vec<(String, Vec<String>)> = Vec::new();
    for (k, v) in tags {
        match dims.iter_mut().find(|(dk, _)| dk == k) {
            Some((_, vals)) if !vals.contains(v) => vals.push(v.clone()),
            Some(_) => {}
            None => dims.push((k.clone(), vec![v.clone()])),
        }
    }
    let current = |idx: &[usize]| {
        let mut s = Subset::default();
        for ((key, vals), &choice) in dims.iter().zip(idx) {
            if choice == vals.len() {
                s.negated
                    .extend(vals.iter().map(|v| (key.clone(), v.clone())));
            } else {
                s.positive
                    .insert(key.clone(), vals[vals.len() - choice - 1].clone());
            }
        }
        s
    };
    let mut idx = vec![0usize; dims.len()];
    let mut out = Vec::new();
    loop {
        let mut advanced = false;
        for i in 0..idx.len() {
            idx[i] += 1;
            if idx[i] <= dims[i].1.len() {
                advanced = true;
                break;
            }
            idx[i] = 0;
        }
        out.push(current(&idx));
        if !advanced {
            return out;
        }
    }
}

/// Kuma's rules for entries with subsets `entries` (in merge order): for each combination of
/// the tags of each group of overlapping entries, the indices of the entries it implies (in
/// merge order); most positive tags first. Combinations no entry applies to are left out.
pub(super) fn from_rules(entries: &[&Tags]) -> Vec<(Subset, Vec<usize>)> {
    if entries.is_empty() {
        return Vec::new();
    }
    let groups = maximal_cliques(entries.len(), &|a, b| {
        a != b && intersect(entries[a], entries[b])
    });
    let mut rules: Vec<(Subset, Vec<usize>)> = Vec::new();
    for group in groups {
        let mut tags: Vec<(String, String)> = group
            .iter()
            .flat_map(|&i| entries[i].iter().map(|(k, v)| (k.clone(), v.clone())))
            .collect();
        tags.sort();
        tags.dedup();
        for subset in combinations(&tags) {
            let relevant: Vec<usize> = (0..entries.len())
                .filter(|&i| Subset::implied_by(entries[i], &subset))
                .collect();
            if !relevant.is_empty() {
                rules.push((subset, relevant));
            }
        }
    }
    rules.sort_by_key(|(s, _)| std::cmp::Reverse(s.positive.len()));
    rules
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tags(pairs: &[(&str, &str)]) -> Tags {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn combinations_follow_kumas_iterator() {
        let all = combinations(&[
            ("team".into(), "a".into()),
            ("team".into(), "b".into()),
            ("zone".into(), "z".into()),
        ]);
        // 3 choices for team (b, then none, then a last) × 2 for zone.
        assert_eq!(all.len(), 6);
        assert_eq!(all[0].positive, tags(&[("team", "a"), ("zone", "z")]));
        assert_eq!(all[1].positive, tags(&[("zone", "z")]));
        assert_eq!(all[1].negated.len(), 2);
        assert_eq!(all[5].positive, tags(&[("team", "b"), ("zone", "z")]));
    }

    #[test]
    fn overlapping_subsets_get_one_rule_per_combination() {
        let mesh = Tags::new();
        let team_a = tags(&[("team", "a")]);
        let web = tags(&[("kuma.io/service", "web")]);
        let rules = from_rules(&[&mesh, &team_a, &web]);
        // A client of team a that is web gets all three entries, in merge order.
        let both = tags(&[("team", "a"), ("kuma.io/service", "web")]);
        let rule = rules.iter().find(|(s, _)| s.contains(&both)).unwrap();
        assert_eq!(rule.1, [0, 1, 2]);
        // A client of team b that is web: Mesh and web only.
        let other = tags(&[("team", "b"), ("kuma.io/service", "web")]);
        let rule = rules.iter().find(|(s, _)| s.contains(&other)).unwrap();
        assert_eq!(rule.1, [0, 2]);
        // Neither: the Mesh entry alone, under a subset of negations.
        let nobody = tags(&[("team", "b"), ("kuma.io/service", "db")]);
        let rule = rules.iter().find(|(s, _)| s.contains(&nobody)).unwrap();
        assert_eq!(rule.1, [0]);
        assert!(rule.0.positive.is_empty());
    }

    #[test]
    fn cliques_of_a_small_graph() {
        // 0-1, 1-2, 0-2 (a triangle) and 3 alone.
        let edges = [(0, 1), (1, 2), (0, 2)];
        let adjacent = |a: usize, b: usize| edges.contains(&(a, b)) || edges.contains(&(b, a));
        let cliques = maximal_cliques(4, &adjacent);
        assert_eq!(cliques, vec![vec![3], vec![0, 1, 2]]);
    }
}
