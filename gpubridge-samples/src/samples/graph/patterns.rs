//! What the JE decomposition reports about each connected component: its size, its distinct
//! edges, and a pattern signature from its shape.
//!
//! | pattern | shape (undirected, self-loops and duplicate edges ignored) |
//! |---|---|
//! | `isolated` | one node |
//! | `pair` | two nodes, one edge |
//! | `chain` | a path of three or more nodes |
//! | `star` | one hub joined to three or more leaves, and nothing else |
//! | `cycle` | three or more nodes in one ring |
//! | `dense cluster` | four or more nodes, at least half of all possible edges (and not one of the above) |
//! | `tree` | any other tree |
//! | `network` | anything else |

use std::collections::BTreeMap;

use rayon::prelude::*;
use serde::Serialize;

/// The pattern signature of a component (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Pattern {
    /// One node.
    Isolated,
    /// Two nodes, one edge.
    Pair,
    /// A path of three or more nodes.
    Chain,
    /// A hub and three or more leaves.
    Star,
    /// A ring of three or more nodes.
    Cycle,
    /// Four or more nodes with at least half of all possible edges.
    DenseCluster,
    /// Another tree.
    Tree,
    /// Anything else.
    Network,
}

impl Pattern {
    /// Every pattern, in report order.
    pub const ALL: [Pattern; 8] = [
        Pattern::Isolated,
        Pattern::Pair,
        Pattern::Chain,
        Pattern::Star,
        Pattern::Cycle,
        Pattern::DenseCluster,
        Pattern::Tree,
        Pattern::Network,
    ];

    /// The name used in reports and in the manifest.
    pub fn name(self) -> &'static str {
        match self {
            Pattern::Isolated => "isolated",
            Pattern::Pair => "pair",
            Pattern::Chain => "chain",
            Pattern::Star => "star",
            Pattern::Cycle => "cycle",
            Pattern::DenseCluster => "dense_cluster",
            Pattern::Tree => "tree",
            Pattern::Network => "network",
        }
    }

    /// Classifies a component of `nodes` nodes and `edges` distinct undirected edges whose
    /// largest degree is `max_degree` and in which `degree_two` nodes have degree two.
    pub fn classify(nodes: u64, edges: u64, max_degree: u32, degree_two: u64) -> Pattern {
        match nodes {
            0 | 1 => return Pattern::Isolated,
            2 => return Pattern::Pair,
            _ => {}
        }
        if edges + 1 == nodes {
            if max_degree <= 2 {
                return Pattern::Chain;
            }
            if u64::from(max_degree) + 1 == nodes {
                return Pattern::Star;
            }
            return Pattern::Tree;
        }
        if edges == nodes && degree_two == nodes {
            return Pattern::Cycle;
        }
        if nodes >= 4 && 4 * edges >= nodes * (nodes - 1) {
            return Pattern::DenseCluster;
        }
        Pattern::Network
    }
}

/// One connected component.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Component {
    /// Its label: the smallest node number in it.
    pub label: u32,
    /// Nodes in it.
    pub size: u32,
    /// Distinct undirected edges in it (self-loops not counted).
    pub edges: u64,
    /// Its pattern signature.
    pub pattern: Pattern,
}

/// The decomposition of a graph into components, with the seed's summary figures.
#[derive(Debug, Clone, Default)]
pub struct Decomposition {
    /// Every component, by label.
    pub components: Vec<Component>,
    /// Edges that repeat an earlier edge (either direction).
    pub duplicate_edges: usize,
    /// Self-loops.
    pub self_loops: usize,
}

impl Decomposition {
    /// Builds the decomposition from per-node `labels` (each the smallest node of its
    /// component, as `kernels/graph/connected_components` returns them).
    ///
    /// Returns `None` when the labels are not such labels (a label outside the graph, or a
    /// node whose label is not labelled by itself), which a correct kernel never gives.
    pub fn new(nodes: usize, edges: &[[u32; 2]], labels: &[u32]) -> Option<Decomposition> {
        if labels.len() != nodes
            || labels
                .par_iter()
                .any(|l| *l as usize >= nodes || labels[*l as usize] != *l)
        {
            return None;
        }
        let mut distinct: Vec<u64> = edges
            .par_iter()
            .filter(|e| e[0] != e[1])
            .map(|e| {
                let (a, b) = (e[0].min(e[1]), e[0].max(e[1]));
                (u64::from(a) << 32) | u64::from(b)
            })
            .collect();
        let self_loops = edges.len() - distinct.len();
        distinct.par_sort_unstable();
        distinct.dedup();
        let duplicate_edges = edges.len() - self_loops - distinct.len();
        let mut degree = vec![0u32; nodes];
        let mut comp_edges = vec![0u64; nodes];
        for e in &distinct {
            let (a, b) = ((e >> 32) as usize, (e & 0xffff_ffff) as usize);
            degree[a] += 1;
            degree[b] += 1;
            comp_edges[labels[a] as usize] += 1;
        }
        let mut size = vec![0u32; nodes];
        let mut max_degree = vec![0u32; nodes];
        let mut degree_two = vec![0u64; nodes];
        for v in 0..nodes {
            let l = labels[v] as usize;
            size[l] += 1;
            max_degree[l] = max_degree[l].max(degree[v]);
            degree_two[l] += u64::from(degree[v] == 2);
        }
        let components = (0..nodes)
            .filter(|&v| labels[v] as usize == v)
            .map(|v| Component {
                label: v as u32,
                size: size[v],
                edges: comp_edges[v],
                pattern: Pattern::classify(
                    u64::from(size[v]),
                    comp_edges[v],
                    max_degree[v],
                    degree_two[v],
                ),
            })
            .collect();
        Some(Decomposition {
            components,
            duplicate_edges,
            self_loops,
        })
    }

    /// Mean component size in nodes.
    pub fn average_size(&self) -> f64 {
        let nodes: u64 = self.components.iter().map(|c| u64::from(c.size)).sum();
        nodes as f64 / self.components.len().max(1) as f64
    }

    /// The largest component.
    pub fn largest(&self) -> Option<&Component> {
        self.components.iter().max_by_key(|c| c.size)
    }

    /// How many components have each pattern, most frequent first (ties in report order).
    pub fn pattern_counts(&self) -> Vec<(Pattern, usize)> {
        count(self.components.iter())
    }
}

/// Pattern counts of `components`, most frequent first (ties in report order).
pub fn count<'a>(components: impl Iterator<Item = &'a Component>) -> Vec<(Pattern, usize)> {
    let mut by: BTreeMap<Pattern, usize> = BTreeMap::new();
    for c in components {
        *by.entry(c.pattern).or_default() += 1;
    }
    let mut v: Vec<(Pattern, usize)> = by.into_iter().collect();
    v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use gpubridge::kernels::union_find_labels;

    #[test]
    fn shapes_get_their_signature() {
        // 0-1 pair; 2-3-4 chain; 5 hub of 6,7,8; 9-10-11 ring; 12..16 complete; 17 alone;
        // 18-19-20-21 with 19-22 (a tree, not a star); a ring of 23..28 with a chord (network).
        let mut edges = vec![[1, 0], [2, 3], [4, 3], [5, 6], [7, 5], [5, 8]];
        edges.extend([[9, 10], [10, 11], [11, 9]]);
        for a in 12..17u32 {
            for b in a + 1..17 {
                edges.push([a, b]);
            }
        }
        edges.extend([[18, 19], [19, 20], [20, 21], [19, 22]]);
        edges.extend([
            [23, 24],
            [24, 25],
            [25, 26],
            [26, 27],
            [27, 28],
            [28, 23],
            [23, 26],
        ]);
        // Noise that changes nothing: self-loops and duplicates.
        edges.extend([[0, 1], [0, 0], [3, 2], [13, 12]]);
        let labels = union_find_labels(29, &edges);
        let d = Decomposition::new(29, &edges, &labels).unwrap();
        let got: Vec<(u32, Pattern)> = d.components.iter().map(|c| (c.label, c.pattern)).collect();
        assert_eq!(
            got,
            [
                (0, Pattern::Pair),
                (2, Pattern::Chain),
                (5, Pattern::Star),
                (9, Pattern::Cycle),
                (12, Pattern::DenseCluster),
                (17, Pattern::Isolated),
                (18, Pattern::Tree),
                (23, Pattern::Network),
            ]
        );
        assert_eq!((d.self_loops, d.duplicate_edges), (1, 3));
        assert_eq!(d.largest().map(|c| c.size), Some(6));
        assert_eq!(d.components[4].edges, 10);
        assert!((d.average_size() - 29.0 / 8.0).abs() < 1e-12);
    }

    #[test]
    fn labels_that_are_not_smallest_node_labels_are_refused() {
        let edges = [[0u32, 1]];
        assert!(Decomposition::new(2, &edges, &[0, 0]).is_some());
        assert!(Decomposition::new(2, &edges, &[1, 0]).is_none());
        assert!(Decomposition::new(2, &edges, &[0, 2]).is_none());
        assert!(Decomposition::new(2, &edges, &[0]).is_none());
    }
}
