//! `kernels/graph/connected_components`: connected components of an undirected graph given as an
//! edge list, labelled by the smallest node of each component.
//!
//! Every form runs the same lock-free union-find (ECL-CC's, on an edge list): `parent[v] = v`;
//! then, for every edge, find both roots (halving paths on the way) and link the larger root under
//! the smaller with a compare-and-swap, retrying from the new parent when another thread won;
//! then point every node at its root. Because a parent is never larger than its child, each
//! root is the smallest node of its tree, so the labels are the same whatever the thread
//! interleaving: every form returns exactly [`union_find_labels`]'s answer.
//!
//! On a device the edges travel in chunks of at most [`ConnectedComponents::chunk_edges`] edges
//! (and at most one storage binding on WGSL), one hook launch per chunk, while the labels stay on
//! the device: the result is identical to one pass, and on CUDA a chunk is hooked while the next
//! one is still being uploaded (see [`crate::plan::Stage`]).

use std::sync::atomic::{AtomicU32, Ordering::Relaxed};
use std::sync::Arc;

use rayon::prelude::*;

use crate::cpu::CpuContext;
use crate::error::{Error, Result};
use crate::kernel::{Kernel, KernelSources};
use crate::plan::{Arg, BufferId, Launch, Plan, PlanOutputs, PlanTarget, Stage};

use super::{grid_1d, BLOCK, CPU_CHUNK};

/// An undirected graph: nodes `0..nodes` and a list of edges between them.
///
/// Self-loops (`[v, v]`) are allowed and change nothing; duplicate edges (in either direction)
/// are allowed and count once. An endpoint `>= nodes` is [`Error::InvalidInput`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Graph {
    /// Number of nodes; at most `u32::MAX`.
    pub nodes: usize,
    /// Edges as `[src, dst]` node indices.
    pub edges: Vec<[u32; 2]>,
}

/// Connected components: for each node, the smallest node of its component.
///
/// Output: one `u32` label per node. Two nodes are in the same component exactly when their
/// labels are equal, and a node is its component's label when it is the smallest node in it.
#[derive(Debug, Clone, Copy)]
pub struct ConnectedComponents {
    /// Most edges one device launch hooks (the chunk size of the upload).
    pub chunk_edges: u32,
}

impl Default for ConnectedComponents {
    /// Chunks of 4 Mi edges (32 MiB): large enough that launches cost nothing next to the work,
    /// small enough that uploading the next chunk overlaps hooking this one.
    fn default() -> Self {
        Self {
            chunk_edges: 1 << 22,
        }
    }
}

impl ConnectedComponents {
    /// The kernel with device chunks of at most `chunk_edges` edges (at least one).
    pub fn with_chunk_edges(chunk_edges: u32) -> Self {
        Self {
            chunk_edges: chunk_edges.max(1),
        }
    }
}

/// The largest node an edge list names, or `None` for an empty list: a branch-free reduction
/// the compiler vectorises, on all cores for a long list, so it reads the edges at memory speed
/// (rayon's `position_first` consults a shared flag per edge: 116 ms for 20M edges on two cores,
/// where this takes 6). Used to check edge lists before anything searches them.
pub fn largest_node(edges: &[[u32; 2]]) -> Option<u32> {
    let largest = |edges: &[[u32; 2]]| edges.iter().fold(0u32, |m, e| m.max(e[0]).max(e[1]));
    if edges.is_empty() {
        None
    } else if edges.len() >= CPU_CHUNK {
        edges.par_chunks(CPU_CHUNK).map(largest).max()
    } else {
        Some(largest(edges))
    }
}

/// The single-threaded reference: a plain union-find (link the larger root under the smaller,
/// path halving), then one pass from the smallest node up that copies each node's root label.
/// Used by the conformance suite and as the baseline of TARGETS.md's P9.
///
/// Edges naming a node `>= nodes` are skipped (the kernel's validation rejects them).
pub fn union_find_labels(nodes: usize, edges: &[[u32; 2]]) -> Vec<u32> {
    let mut parent: Vec<u32> = (0..nodes as u32).collect();
    fn find(p: &mut [u32], mut v: u32) -> u32 {
        while p[v as usize] != v {
            let up = p[p[v as usize] as usize];
            p[v as usize] = up;
            v = up;
        }
        v
    }
    for &[a, b] in edges {
        if a as usize >= nodes || b as usize >= nodes {
            continue;
        }
        let (ra, rb) = (find(&mut parent, a), find(&mut parent, b));
        if ra < rb {
            parent[rb as usize] = ra;
        } else if rb < ra {
            parent[ra as usize] = rb;
        }
    }
    // A parent is smaller than its child, so its label is final by the time the child is reached.
    for v in 0..nodes {
        let p = parent[v] as usize;
        parent[v] = parent[p];
    }
    parent
}

/// The root of `v`, halving the path (a store only ever replaces a parent by an ancestor).
fn root(p: &[AtomicU32], v: u32) -> u32 {
    let mut cur = p[v as usize].load(Relaxed);
    if cur == v {
        return cur;
    }
    let mut prev = v;
    loop {
        let next = p[cur as usize].load(Relaxed);
        if next >= cur {
            return cur;
        }
        p[prev as usize].store(next, Relaxed);
        prev = cur;
        cur = next;
    }
}

/// Links the trees of `u` and `w` (see the module docs). Per-location coherence is all the
/// algorithm needs: a stale read only costs a failed compare-and-swap and a retry.
fn hook(p: &[AtomicU32], u: u32, w: u32) {
    let (mut a, mut b) = (root(p, u), root(p, w));
    while a != b {
        let (lo, hi) = (a.min(b), a.max(b));
        match p[hi as usize].compare_exchange(hi, lo, Relaxed, Relaxed) {
            Ok(_) => return,
            Err(seen) => {
                a = lo;
                b = seen;
            }
        }
    }
}

/// The multi-threaded CPU form for one graph.
fn cpu_components(g: &Graph) -> Vec<u32> {
    let n = g.nodes;
    let p: Vec<AtomicU32> = (0..n as u32).into_par_iter().map(AtomicU32::new).collect();
    g.edges.par_chunks(CPU_CHUNK).for_each(|chunk| {
        for &[u, w] in chunk {
            if (u as usize) < n && (w as usize) < n && u != w {
                hook(&p, u, w);
            }
        }
    });
    // Roots no longer change, so each node's root is final.
    (0..n as u32).into_par_iter().map(|v| root(&p, v)).collect()
}

/// Nodes before each graph of a batch in the device's label array, and the total.
fn node_bases(inputs: &[Graph], target: &PlanTarget) -> Result<(Vec<u32>, u32)> {
    let mut bases = Vec::with_capacity(inputs.len());
    let mut total = 0u64;
    for g in inputs {
        bases.push(total as u32);
        total += g.nodes as u64;
        if total > u64::from(u32::MAX) {
            return Err(Error::Unsupported {
                backend: target.backend(),
                what: format!("a micro-batch of {total} nodes or more exceeds u32 labels"),
            });
        }
    }
    Ok((bases, total as u32))
}

/// The edges of a batch as one stream of `u32` words (`src, dst` per edge, each shifted by its
/// graph's node base), packing any byte range of it.
struct EdgeStream {
    items: Arc<[Graph]>,
    /// Edges before each graph, and the total at the end.
    starts: Vec<usize>,
    bases: Vec<u32>,
}

impl EdgeStream {
    fn pack(&self, dst: &mut [u8], byte_offset: usize) {
        let mut pos = 0;
        let mut at = byte_offset;
        let mut item = self
            .starts
            .partition_point(|s| *s * 8 <= at)
            .saturating_sub(1);
        while pos < dst.len() {
            while item < self.items.len() && at >= self.starts[item + 1] * 8 {
                item += 1;
            }
            if item >= self.items.len() {
                dst[pos..].fill(0);
                return;
            }
            let g = &self.items[item];
            let (s, e) = (self.starts[item] * 8, self.starts[item + 1] * 8);
            let take = (e - at).min(dst.len() - pos);
            let out = &mut dst[pos..pos + take];
            let base = self.bases[item];
            let src: &[u8] = bytemuck::cast_slice(&g.edges);
            let local = at - s;
            if base == 0 {
                out.copy_from_slice(&src[local..local + take]);
            } else {
                // Word by word, shifting each node index by the graph's base (a partial word at
                // either end of the range is cut from the shifted word).
                let words: &[u32] = bytemuck::cast_slice(&g.edges);
                let mut o = 0;
                let mut b = local;
                while o < take {
                    let word = words[b / 4].wrapping_add(base).to_ne_bytes();
                    let within = b % 4;
                    let n = (4 - within).min(take - o);
                    out[o..o + n].copy_from_slice(&word[within..within + n]);
                    o += n;
                    b += n;
                }
            }
            pos += take;
            at += take;
        }
    }
}

impl Kernel for ConnectedComponents {
    type Input = Graph;
    type Output = Vec<u32>;
    const ID: &'static str = "kernels/graph/connected_components";

    fn sources(&self) -> KernelSources {
        KernelSources {
            cuda: Some(include_str!("cuda/connected_components.cu")),
            wgsl: Some(include_str!("wgsl/connected_components.wgsl")),
        }
    }

    fn validate(&self, index: usize, g: &Graph) -> Result<()> {
        if g.nodes > u32::MAX as usize {
            return Err(Error::invalid_item(
                Self::ID,
                index,
                format!("{} nodes exceed u32 labels", g.nodes),
            ));
        }
        let n = g.nodes as u64;
        // Only a list naming a node outside the graph is searched for its first bad edge.
        if largest_node(&g.edges).is_none_or(|m| u64::from(m) < n) {
            return Ok(());
        }
        let bad = |e: &[u32; 2]| u64::from(e[0]) >= n || u64::from(e[1]) >= n;
        match g.edges.iter().position(bad) {
            Some(i) => Err(Error::invalid_item(
                Self::ID,
                index,
                format!(
                    "edge {i} ({} -> {}) names a node outside 0..{}",
                    g.edges[i][0], g.edges[i][1], g.nodes
                ),
            )),
            None => Ok(()),
        }
    }

    fn device_bytes(&self, g: &Graph) -> usize {
        // Saturating: `nodes` is a declared size (it may come off the wire before validation).
        g.nodes
            .saturating_mul(4)
            .saturating_add(g.edges.len().saturating_mul(8))
    }

    fn run_cpu(&self, inputs: &[Graph], ctx: &CpuContext) -> Result<Vec<Vec<u32>>> {
        Ok(ctx.install(|| inputs.iter().map(cpu_components).collect()))
    }

    fn plan(&self, inputs: &Arc<[Graph]>, target: &PlanTarget) -> Result<Plan> {
        let (bases, nodes) = node_bases(inputs, target)?;
        let mut starts = Vec::with_capacity(inputs.len() + 1);
        starts.push(0usize);
        for g in inputs.iter() {
            starts.push(starts[starts.len() - 1] + g.edges.len());
        }
        let total_edges = starts[inputs.len()];
        let (max_grid, binding) = match target {
            PlanTarget::Cuda { .. } => (u32::MAX, u64::MAX),
            PlanTarget::Wgsl {
                max_workgroups_per_dim,
                max_storage_buffer_bytes,
            } => {
                if u64::from(nodes) * 4 > *max_storage_buffer_bytes {
                    return Err(Error::Unsupported {
                        backend: target.backend(),
                        what: format!("{nodes} labels exceed the adapter's storage binding limit"),
                    });
                }
                (*max_workgroups_per_dim, *max_storage_buffer_bytes)
            }
        };
        let chunk = u64::from(self.chunk_edges.max(1)).min(binding / 8).max(1) as usize;
        let stream = Arc::new(EdgeStream {
            items: inputs.clone(),
            starts,
            bases,
        });
        let mut plan = Plan::new(Self::ID);
        let labels = plan.output("labels", 4 * nodes as usize);
        if nodes == 0 {
            return Ok(plan);
        }
        let mut chunks = Vec::new();
        let mut e0 = 0;
        while e0 < total_edges {
            let e1 = (e0 + chunk).min(total_edges);
            let s = stream.clone();
            let id = plan.input("edges", 8 * (e1 - e0), move |dst, at| {
                s.pack(dst, 8 * e0 + at)
            });
            chunks.push((id, (e1 - e0) as u32));
            e0 = e1;
        }
        let block = [BLOCK, 1, 1];
        let node_grid = [grid_1d(u64::from(nodes), max_grid.min(1 << 16)), 1, 1];
        plan.launch(Launch::new(
            "cc_init",
            node_grid,
            block,
            &[Arg::buf(labels), Arg::U32(nodes), Arg::U32(nodes)],
        ));
        // Initialising the labels needs no edges: it can run while the first chunk uploads.
        if let Some(&(first, _)) = chunks.first() {
            plan.stage(Stage {
                needs: Some((first, 0)),
                yields: None,
            });
        }
        for &(id, count) in &chunks {
            plan.launch(Launch::new(
                "cc_hook",
                [grid_1d(u64::from(count), max_grid.min(1 << 16)), 1, 1],
                block,
                &[
                    Arg::buf(labels),
                    Arg::buf(id),
                    Arg::U32(count),
                    Arg::U32(nodes),
                ],
            ));
            plan.stage(Stage {
                needs: Some((id, 8 * count as usize)),
                yields: None,
            });
        }
        plan.launch(Launch::new(
            "cc_flatten",
            node_grid,
            block,
            &[Arg::buf(labels), Arg::U32(nodes), Arg::U32(nodes)],
        ));
        Ok(plan)
    }

    fn unpack(&self, inputs: &[Graph], outputs: &PlanOutputs<'_>) -> Result<Vec<Vec<u32>>> {
        let bytes = outputs.bytes(BufferId(0))?;
        let total: usize = inputs.iter().map(|g| g.nodes).sum();
        if bytes.len() < 4 * total {
            return Err(Error::invalid_batch(
                Self::ID,
                format!(
                    "the device returned {} label bytes, {} needed",
                    bytes.len(),
                    4 * total
                ),
            ));
        }
        let mut at = 0usize;
        Ok(inputs
            .iter()
            .map(|g| {
                let raw = &bytes[4 * at..4 * (at + g.nodes)];
                let base = at as u32;
                at += g.nodes;
                let word =
                    |c: &[u8]| u32::from_ne_bytes([c[0], c[1], c[2], c[3]]).wrapping_sub(base);
                if raw.len() >= 4 * CPU_CHUNK {
                    raw.par_chunks_exact(4).map(word).collect()
                } else {
                    raw.chunks_exact(4).map(word).collect()
                }
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn graphs() -> Arc<[Graph]> {
        Arc::from(vec![
            Graph {
                nodes: 3,
                edges: vec![[0, 1], [2, 2]],
            },
            Graph {
                nodes: 0,
                edges: vec![],
            },
            Graph {
                nodes: 4,
                edges: vec![[3, 1], [1, 0], [0, 3]],
            },
        ])
    }

    #[test]
    fn the_reference_labels_by_smallest_node() {
        assert_eq!(
            union_find_labels(5, &[[4, 2], [2, 3], [0, 0]]),
            [0, 1, 2, 2, 2]
        );
        assert_eq!(union_find_labels(0, &[]), Vec::<u32>::new());
        assert_eq!(union_find_labels(3, &[[2, 1], [1, 0]]), [0, 0, 0]);
    }

    #[test]
    fn edges_pack_shifted_by_their_graph_at_any_byte_range() {
        let items = graphs();
        let stream = EdgeStream {
            items: items.clone(),
            starts: vec![0, 2, 2, 5],
            bases: vec![0, 3, 3],
        };
        let want: Vec<u32> = vec![0, 1, 2, 2, 6, 4, 4, 3, 3, 6];
        let want: &[u8] = bytemuck::cast_slice(&want);
        for start in 0..want.len() {
            for end in start..=want.len() {
                let mut dst = vec![0xAAu8; end - start];
                stream.pack(&mut dst, start);
                assert_eq!(dst, &want[start..end], "{start}..{end}");
            }
        }
        let mut past = [0xAAu8; 6];
        stream.pack(&mut past, want.len() - 2);
        assert_eq!(&past[..2], &want[want.len() - 2..]);
        assert_eq!(&past[2..], &[0; 4]);
    }

    #[test]
    fn a_long_edge_list_is_hooked_in_staged_chunks() {
        let g = Graph {
            nodes: 100,
            edges: (0..99).map(|i| [i, i + 1]).collect(),
        };
        let target = PlanTarget::Wgsl {
            max_workgroups_per_dim: 65535,
            max_storage_buffer_bytes: 1 << 30,
        };
        let plan = ConnectedComponents::with_chunk_edges(10)
            .plan(&Arc::from(vec![g]), &target)
            .unwrap();
        plan.check().unwrap();
        // init, ten hooks, flatten.
        assert_eq!(plan.steps.len(), 12);
        assert_eq!(plan.buffers.len(), 11);
        assert_eq!(plan.stage_of(11).needs, None);
        // The binding limit also bounds a chunk.
        let small = PlanTarget::Wgsl {
            max_workgroups_per_dim: 65535,
            max_storage_buffer_bytes: 400,
        };
        let plan = ConnectedComponents::default()
            .plan(
                &Arc::from(vec![Graph {
                    nodes: 100,
                    edges: vec![[0, 1]; 120],
                }]),
                &small,
            )
            .unwrap();
        assert_eq!(plan.buffers.len(), 1 + 3);
    }

    #[test]
    fn validation_names_the_edge_outside_the_graph() {
        let k = ConnectedComponents::default();
        let err = k
            .validate(
                4,
                &Graph {
                    nodes: 2,
                    edges: vec![[0, 1], [1, 2]],
                },
            )
            .unwrap_err();
        match err {
            Error::InvalidInput { index, reason, .. } => {
                assert_eq!(index, Some(4));
                assert!(reason.contains("edge 1 (1 -> 2)"), "{reason}");
            }
            other => panic!("{other}"),
        }
        assert!(k.validate(0, &graphs()[2]).is_ok());
    }

    #[test]
    fn validation_of_a_long_list_names_its_first_bad_edge() {
        // Long enough for the parallel check; bad edges at random places (the first named),
        // at either end of an edge, at the last node + 1 and at u32::MAX.
        let k = ConnectedComponents::default();
        let nodes = 1000u32;
        let len = 5 * CPU_CHUNK + 17;
        let mut edges: Vec<[u32; 2]> = (0..len)
            .map(|_| [rand::random::<u32>() % nodes, rand::random::<u32>() % nodes])
            .collect();
        let g = Graph {
            nodes: nodes as usize,
            edges: edges.clone(),
        };
        assert!(k.validate(0, &g).is_ok());
        for (end, value) in [(0, nodes), (1, u32::MAX)] {
            let first = rand::random::<u64>() as usize % (len - 1);
            let later = first + 1 + rand::random::<u64>() as usize % (len - first - 1);
            edges[later][1 - end] = nodes;
            edges[first][end] = value;
            let g = Graph {
                nodes: nodes as usize,
                edges: edges.clone(),
            };
            match k.validate(0, &g).unwrap_err() {
                Error::InvalidInput { reason, .. } => {
                    assert!(reason.starts_with(&format!("edge {first} (")), "{reason}");
                }
                other => panic!("{other}"),
            }
            edges[first][end] = 0;
            edges[later][1 - end] = 0;
        }
    }

    #[test]
    fn the_parallel_form_matches_the_reference() {
        let ctx = CpuContext::new(3).unwrap();
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let mut next = |m: u32| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % u64::from(m)) as u32
        };
        let g = Graph {
            nodes: 50_000,
            edges: (0..40_000).map(|_| [next(50_000), next(50_000)]).collect(),
        };
        let got = ConnectedComponents::default()
            .run_cpu(std::slice::from_ref(&g), &ctx)
            .unwrap();
        assert_eq!(got[0], union_find_labels(g.nodes, &g.edges));
    }
}
