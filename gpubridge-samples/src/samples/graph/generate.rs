//! `gpubridge gen-graph`: a synthetic journal-entry graph with planted component patterns of
//! known counts, plus random background edges.
//!
//! Nodes are accounts; node `i` of the generator gets id `1_000_000_000 + 7 i` (so ids are
//! sparse, and the loader must map them), and the rows of both files are shuffled. The first
//! part of the nodes (at most half of them, holding at most half of the edges) is planted with
//! patterns, in turn: pairs, chains (3 to 8 nodes), stars (3 to 10 leaves), cycles (3 to 8
//! nodes) and dense clusters (complete graphs of 5 to 8 nodes), each of random size, each
//! edge in a random direction. The rest of the nodes get the rest of the edges as random pairs
//! (no self-loops; a pair may repeat, as journal entries do). Planted and background nodes never
//! share an edge, so every planted pattern is a component of its own and the counts in
//! `manifest.json` are exactly what a decomposition must find among the components whose ids lie
//! in `planted_ids`.

use std::collections::BTreeMap;
use std::path::Path;

use rand::rngs::SmallRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use super::data::GraphData;
use super::patterns::Pattern;

/// The id of generator node `i`.
pub fn node_id(i: u64) -> i64 {
    1_000_000_000 + 7 * i as i64
}

/// The node kinds (account types) written to `nodes.parquet`.
pub const KINDS: [&str; 5] = ["asset", "liability", "equity", "revenue", "expense"];

/// What `gen-graph` planted, written as `manifest.json` beside the parquet files.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// Nodes written.
    pub nodes: usize,
    /// Edges written.
    pub edges: usize,
    /// The generator's seed.
    pub seed: u64,
    /// Planted components by pattern name.
    pub planted: BTreeMap<String, usize>,
    /// Ids of planted nodes: `[first, end)`; every other node is background.
    pub planted_ids: [i64; 2],
    /// Nodes in planted patterns.
    pub planted_nodes: usize,
    /// Edges in planted patterns.
    pub planted_edges: usize,
}

impl Manifest {
    /// Whether `id` is a planted node's.
    pub fn is_planted(&self, id: i64) -> bool {
        self.planted_ids[0] <= id && id < self.planted_ids[1]
    }

    /// Reads `dir/manifest.json`, `None` when there is none (data not from `gen-graph`).
    ///
    /// # Errors
    /// When the file exists but cannot be read or parsed.
    pub fn load(dir: &Path) -> anyhow::Result<Option<Manifest>> {
        let path = dir.join("manifest.json");
        match std::fs::read(&path) {
            Ok(bytes) => Ok(Some(serde_json::from_slice(&bytes).map_err(|e| {
                anyhow::anyhow!("{}: not a gen-graph manifest: {e}", path.display())
            })?)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(anyhow::anyhow!("{}: {e}", path.display())),
        }
    }
}

/// Generates a graph of exactly `nodes` nodes and `edges` edges.
///
/// # Errors
/// When edges are asked for with fewer than two nodes, or more nodes than u32 can number.
pub fn generate(nodes: usize, edges: usize, seed: u64) -> anyhow::Result<(GraphData, Manifest)> {
    anyhow::ensure!(nodes <= u32::MAX as usize, "at most {} nodes", u32::MAX);
    anyhow::ensure!(
        edges == 0 || nodes >= 2,
        "{edges} edges need at least two nodes"
    );
    let mut rng = SmallRng::seed_from_u64(seed);
    let (node_budget, edge_budget) = (nodes / 2, edges / 2);
    let mut list: Vec<[u32; 2]> = Vec::with_capacity(edges);
    let mut planted: BTreeMap<String, usize> = BTreeMap::new();
    let mut next = 0u32;
    let order = [
        Pattern::Pair,
        Pattern::Chain,
        Pattern::Star,
        Pattern::Cycle,
        Pattern::DenseCluster,
    ];
    'plant: for turn in 0.. {
        let pattern = order[turn % order.len()];
        let size: u32 = match pattern {
            Pattern::Pair => 2,
            Pattern::Chain | Pattern::Cycle => rng.random_range(3..=8),
            Pattern::Star => rng.random_range(4..=11),
            _ => rng.random_range(5..=8),
        };
        let new_edges = match pattern {
            Pattern::Cycle => size,
            Pattern::DenseCluster => size * (size - 1) / 2,
            _ => size - 1,
        } as usize;
        if next as usize + size as usize > node_budget || list.len() + new_edges > edge_budget {
            break 'plant;
        }
        let v0 = next;
        match pattern {
            Pattern::Pair | Pattern::Chain => {
                list.extend((v0..v0 + size - 1).map(|v| [v, v + 1]));
            }
            Pattern::Star => {
                list.extend((v0 + 1..v0 + size).map(|v| [v0, v]));
            }
            Pattern::Cycle => {
                list.extend((v0..v0 + size).map(|v| [v, v0 + (v - v0 + 1) % size]));
            }
            _ => {
                for a in v0..v0 + size {
                    list.extend((a + 1..v0 + size).map(|b| [a, b]));
                }
            }
        }
        next += size;
        *planted.entry(pattern.name().to_owned()).or_default() += 1;
    }
    let planted_nodes = next as usize;
    let planted_edges = list.len();
    for e in &mut list {
        if rng.random::<bool>() {
            e.swap(0, 1);
        }
    }
    let (lo, hi) = (planted_nodes as u32, nodes as u32);
    while list.len() < edges {
        let a = rng.random_range(lo..hi);
        let mut b = rng.random_range(lo..hi);
        while b == a {
            b = rng.random_range(lo..hi);
        }
        list.push([a, b]);
    }
    list.shuffle(&mut rng);
    // Rows in a random order: `at[i]` is generator node i's row.
    let mut rows: Vec<u32> = (0..nodes as u32).collect();
    rows.shuffle(&mut rng);
    let mut at = vec![0u32; nodes];
    for (row, i) in rows.iter().enumerate() {
        at[*i as usize] = row as u32;
    }
    for e in &mut list {
        *e = [at[e[0] as usize], at[e[1] as usize]];
    }
    let ids = rows.iter().map(|i| node_id(u64::from(*i))).collect();
    let kinds = (0..nodes)
        .map(|_| rng.random_range(0..KINDS.len() as u32))
        .collect();
    let amounts = (0..edges)
        .map(|_| f64::from(rng.random_range(1..10_000_000u32)) / 100.0)
        .collect();
    let graph = GraphData {
        ids,
        kinds,
        kind_names: KINDS.iter().map(|k| (*k).to_owned()).collect(),
        edges: list,
        amounts,
        self_loops: 0,
    };
    let manifest = Manifest {
        nodes,
        edges,
        seed,
        planted,
        planted_ids: [node_id(0), node_id(planted_nodes as u64)],
        planted_nodes,
        planted_edges,
    };
    Ok((graph, manifest))
}

/// Generates a graph and writes `dir/nodes.parquet`, `dir/edges.parquet` and
/// `dir/manifest.json`.
///
/// # Errors
/// As [`generate`], or when a file cannot be written.
pub fn write(dir: &Path, nodes: usize, edges: usize, seed: u64) -> anyhow::Result<Manifest> {
    let (graph, manifest) = generate(nodes, edges, seed)?;
    super::data::save(dir, &graph)?;
    std::fs::write(
        dir.join("manifest.json"),
        serde_json::to_vec_pretty(&manifest)?,
    )?;
    Ok(manifest)
}
