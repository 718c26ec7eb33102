//! The parameter order of an imported model: PyTorch's `state_dict` order,
//! which NNGeometry's flat vectors follow, recovered from the order of the
//! initializers in the file.
//!
//! The exporter writes initializers in `state_dict` order, but keeps only
//! one of several equal-valued parameters (the ones and zeros of fresh
//! BatchNorms): the others appear as `Identity` copies and have no place
//! in that list. Their place is recovered from the module tree, as
//! `state_dict` is its pre-order: among the children of a module, those
//! holding a ranked initializer come in rank order, and a child without
//! one comes right after the sibling that runs before it (modules are
//! usually registered in the order `forward` uses them).

use std::collections::BTreeMap;

#[derive(Default)]
struct Node {
    /// The parameterised layer at this path (its execution index).
    leaf: Option<usize>,
    children: BTreeMap<String, Node>,
}

impl Node {
    /// (smallest rank, first execution index) in this subtree.
    fn key(&self, rank: &[Option<usize>]) -> (Option<usize>, usize) {
        let mut r = self.leaf.and_then(|i| rank[i]);
        let mut first = self.leaf.unwrap_or(usize::MAX);
        for c in self.children.values() {
            let (cr, cf) = c.key(rank);
            r = match (r, cr) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            first = first.min(cf);
        }
        (r, first)
    }

    fn walk(&self, rank: &[Option<usize>], out: &mut Vec<usize>) {
        // A module's own parameters come before its children's.
        if let Some(i) = self.leaf {
            out.push(i);
        }
        let keys: Vec<(&Node, Option<usize>, usize)> = self
            .children
            .values()
            .map(|c| {
                let (r, f) = c.key(rank);
                (c, r, f)
            })
            .collect();
        let mut placed: Vec<(&Node, usize)> = Vec::new();
        let mut ranked: Vec<_> = keys.iter().filter(|k| k.1.is_some()).collect();
        ranked.sort_by_key(|k| k.1);
        placed.extend(ranked.iter().map(|k| (k.0, k.2)));
        let mut unranked: Vec<_> = keys.iter().filter(|k| k.1.is_none()).collect();
        unranked.sort_by_key(|k| k.2);
        for (c, _, first) in unranked {
            // After the sibling that runs last before it (and after the
            // unranked ones already put there).
            let before = placed
                .iter()
                .enumerate()
                .filter(|(_, p)| p.1 < *first)
                .max_by_key(|(_, p)| p.1)
                .map(|(j, _)| j);
            placed.insert(before.map_or(0, |j| j + 1), (c, *first));
        }
        for (c, _) in placed {
            c.walk(rank, out);
        }
    }
}

/// The parameterised layers (given by name, in execution order, with the
/// `state_dict` rank of their first ranked initializer) in `state_dict`
/// order: positions into `names`.
pub fn state_dict_order(names: &[&str], rank: &[Option<usize>]) -> Vec<usize> {
    let mut root = Node::default();
    for (i, name) in names.iter().enumerate() {
        let mut n = &mut root;
        for seg in name.split('.') {
            n = n.children.entry(seg.to_string()).or_default();
        }
        n.leaf = Some(i);
    }
    let mut out = Vec::new();
    root.walk(rank, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::state_dict_order;

    #[test]
    fn ranked_layers_follow_their_rank() {
        let names = ["a", "b.conv", "b.short", "c"];
        let order = state_dict_order(&names, &[Some(0), Some(2), Some(1), Some(3)]);
        assert_eq!(order, [0, 2, 1, 3]);
    }

    #[test]
    fn unranked_layers_follow_the_sibling_that_runs_before_them() {
        // A pre-activation block, every BatchNorm deduplicated: registered
        // bn1, conv1, bn2, conv2, shortcut; run bn1, shortcut, conv1, bn2,
        // conv2; then a head bn and fc.
        let names = [
            "conv0", "l.bn1", "l.short", "l.conv1", "l.bn2", "l.conv2", "bn", "fc",
        ];
        let rank = [
            Some(0),
            None,
            Some(9),
            Some(3),
            None,
            Some(6),
            None,
            Some(12),
        ];
        let order: Vec<&str> = state_dict_order(&names, &rank)
            .into_iter()
            .map(|i| names[i])
            .collect();
        assert_eq!(
            order,
            ["conv0", "l.bn1", "l.conv1", "l.bn2", "l.conv2", "l.short", "bn", "fc"]
        );
    }
}
