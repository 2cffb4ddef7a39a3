//! The JE decomposition sample (the original's AssureTwin sample): load the journal-entry graph
//! from parquet, find its connected components through `kernels/graph/connected_components`,
//! then report each component's size and pattern, checked against a single-threaded union-find
//! and, for `gen-graph` data, against the planted counts.

use std::path::{Path, PathBuf};
use std::time::Instant;

use gpubridge::kernels::{union_find_labels, ConnectedComponents, Graph};
use gpubridge::{ExecutionHints, GpuBridge};

use super::data;
use super::generate::{self, Manifest};
use super::patterns::{count, Decomposition, Pattern};
use crate::samples::{Row, Sizes};

/// A directory removed when dropped (the sample's generated data when no `--data` is given).
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Checks the decomposition of `g` against `manifest`: no component mixes planted and
/// background nodes, and the planted components have exactly the planted patterns.
/// Returns what differs, or `Ok` with the number of planted components checked.
pub fn check_planted(
    g: &data::GraphData,
    d: &Decomposition,
    labels: &[u32],
    manifest: &Manifest,
) -> Result<usize, String> {
    if (g.ids.len(), g.edges.len()) != (manifest.nodes, manifest.edges) {
        return Err(format!(
            "the data has {} nodes and {} edges, the manifest says {} and {}",
            g.ids.len(),
            g.edges.len(),
            manifest.nodes,
            manifest.edges
        ));
    }
    let mut planted_in = vec![0u32; g.ids.len()];
    for (v, id) in g.ids.iter().enumerate() {
        if manifest.is_planted(*id) {
            planted_in[labels[v] as usize] += 1;
        }
    }
    let mut planted = Vec::new();
    for c in &d.components {
        match planted_in[c.label as usize] {
            0 => {}
            n if n == c.size => planted.push(*c),
            n => {
                return Err(format!(
                    "component {} mixes {n} planted and {} background nodes",
                    g.ids[c.label as usize],
                    c.size - n
                ))
            }
        }
    }
    let got = count(planted.iter());
    for p in Pattern::ALL {
        let found = got.iter().find(|(q, _)| *q == p).map_or(0, |(_, n)| *n);
        let want = manifest.planted.get(p.name()).copied().unwrap_or(0);
        if found != want {
            return Err(format!(
                "{found} planted {} components, the manifest says {want}",
                p.name()
            ));
        }
    }
    Ok(planted.len())
}

/// Runs the sample on `--data DIR`, or on a graph of `--graph-nodes` / `--graph-edges` generated
/// into a temporary directory. Prints the seed's report to stdout when `report` is set.
///
/// # Errors
/// When the data cannot be loaded or the bridge cannot run the work.
pub async fn run(
    bridge: &GpuBridge,
    hints: &ExecutionHints,
    sizes: &Sizes,
    report: bool,
) -> anyhow::Result<Vec<Row>> {
    let seed = sizes.seed();
    let mut _temp = None;
    let dir: PathBuf = match &sizes.data {
        Some(d) => d.clone(),
        None => {
            let d = std::env::temp_dir()
                .join(format!("gpubridge-graph-{}-{seed:x}", std::process::id()));
            generate::write(&d, sizes.graph_nodes, sizes.graph_edges, seed)?;
            _temp = Some(TempDir(d.clone()));
            d
        }
    };
    let t = Instant::now();
    let g = data::load(&dir)?;
    let load_secs = t.elapsed().as_secs_f64();
    let manifest = Manifest::load(&dir)?;
    let grain = bridge.batch::<ConnectedComponents>()?;
    let input = Graph {
        nodes: g.ids.len(),
        edges: g.edges.clone(),
    };
    for _ in 0..sizes.warmup {
        grain.execute(vec![input.clone()], hints.clone()).await?;
    }
    let t = Instant::now();
    let result = grain.execute(vec![input], hints.clone()).await?;
    let secs = t.elapsed().as_secs_f64();
    let labels = result.outputs.first().cloned().unwrap_or_default();

    let t = Instant::now();
    let want = union_find_labels(g.ids.len(), &g.edges);
    let reference_secs = t.elapsed().as_secs_f64();
    let mut problems = Vec::new();
    if labels != want {
        let first = (0..want.len().min(labels.len()))
            .find(|&v| labels[v] != want[v])
            .unwrap_or(want.len().min(labels.len()));
        problems.push(format!(
            "labels differ from the CPU union-find (first at node {first} of {})",
            want.len()
        ));
    }
    let decomposition = Decomposition::new(g.ids.len(), &g.edges, &labels);
    let mut checks = vec!["labels = CPU union-find".to_owned()];
    match (&decomposition, &manifest) {
        (None, _) => problems.push("labels are not smallest-node labels".to_owned()),
        (Some(d), Some(m)) => match check_planted(&g, d, &labels, m) {
            Ok(n) => checks.push(format!("{n} planted components as in manifest.json")),
            Err(e) => problems.push(e),
        },
        (Some(_), None) => checks.push("no manifest.json: planted counts not checked".to_owned()),
    }
    let d = decomposition.unwrap_or_default();
    if report {
        print_report(&dir, &g, &d, load_secs, secs, reference_secs, &result);
    }
    let backend = result.backend().map(|b| b.to_string()).unwrap_or_default();
    Ok(vec![Row {
        sample: "graph",
        case: format!("cc {}n/{}e", short(g.ids.len()), short(g.edges.len())),
        backend,
        device: result.device().map(|d| d.to_string()).unwrap_or_default(),
        seconds: secs,
        throughput: g.edges.len() as f64 / secs / 1e6,
        unit: "Medges/s",
        rate: reference_secs / secs,
        rate_unit: "x 1-thread UF",
        verified: problems.is_empty(),
        check: if problems.is_empty() {
            checks.join("; ")
        } else {
            problems.join("; ")
        },
        micro_batches: result.chunks.len(),
        seed: manifest.as_ref().map_or(seed, |m| m.seed),
    }])
}

/// `12345678` as `12.3M`.
fn short(n: usize) -> String {
    match n {
        n if n >= 1_000_000 => format!("{:.1}M", n as f64 / 1e6),
        n if n >= 1_000 => format!("{:.1}k", n as f64 / 1e3),
        n => n.to_string(),
    }
}

fn print_report(
    dir: &Path,
    g: &data::GraphData,
    d: &Decomposition,
    load_secs: f64,
    secs: f64,
    reference_secs: f64,
    result: &gpubridge::BatchResult<Vec<u32>>,
) {
    println!("=== JE Decomposition Sample ===");
    println!(
        "Loaded {} nodes and {} edges from {} in {:.2} s ({} self-loops, {} duplicate edges; both kept, neither changes a component)",
        g.ids.len(),
        g.edges.len(),
        dir.display(),
        load_secs,
        d.self_loops,
        d.duplicate_edges
    );
    println!(
        "Connected components on {}: {:.2} ms (single-threaded CPU union-find: {:.2} ms)",
        result
            .device()
            .map(|d| d.to_string())
            .unwrap_or_else(|| "?".to_owned()),
        secs * 1e3,
        reference_secs * 1e3
    );
    println!();
    println!("Total JE components found: {}", d.components.len());
    println!("Average component size: {:.2}", d.average_size());
    if let Some(c) = d.largest() {
        println!(
            "Largest component: {} nodes ({} distinct edges, {})",
            c.size,
            c.edges,
            c.pattern.name()
        );
    }
    println!();
    println!("Detected patterns:");
    for (p, n) in d.pattern_counts().iter().take(5) {
        println!("  - {}: {n} occurrences", p.name());
    }
    println!();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::samples::graph::generate::generate;

    #[test]
    fn planted_patterns_are_found_and_a_broken_decomposition_is_caught() {
        let seed = rand::random();
        let (g, m) = generate(3000, 5000, seed).unwrap();
        assert_eq!((g.ids.len(), g.edges.len()), (3000, 5000));
        let planted: usize = m.planted.values().sum();
        assert!(m.planted.len() == 5 && planted > 100, "{m:?}");
        let labels = union_find_labels(g.ids.len(), &g.edges);
        let d = Decomposition::new(g.ids.len(), &g.edges, &labels).unwrap();
        assert_eq!(
            check_planted(&g, &d, &labels, &m),
            Ok(planted),
            "seed {seed}"
        );

        // An edge from a planted node to a background one merges two components.
        let mut joined = g.clone();
        let a = g.ids.iter().position(|id| m.is_planted(*id)).unwrap();
        let b = g.ids.iter().position(|id| !m.is_planted(*id)).unwrap();
        joined.edges[0] = [a as u32, b as u32];
        let labels = union_find_labels(joined.ids.len(), &joined.edges);
        let d = Decomposition::new(joined.ids.len(), &joined.edges, &labels).unwrap();
        let err = check_planted(&joined, &d, &labels, &m).unwrap_err();
        assert!(err.contains("mixes") || err.contains("planted"), "{err}");

        // A manifest that promises another count.
        let mut wrong = m.clone();
        *wrong.planted.get_mut("star").unwrap() += 1;
        let labels = union_find_labels(g.ids.len(), &g.edges);
        let d = Decomposition::new(g.ids.len(), &g.edges, &labels).unwrap();
        let err = check_planted(&g, &d, &labels, &wrong).unwrap_err();
        assert!(err.contains("planted star components"), "{err}");
    }

    #[test]
    fn tiny_graphs_generate() {
        assert!(generate(1, 1, 0).is_err());
        let (g, m) = generate(0, 0, 0).unwrap();
        assert!(g.ids.is_empty() && m.planted.is_empty());
        let (g, _) = generate(2, 3, 0).unwrap();
        assert_eq!(g.edges.len(), 3);
        assert!(g.edges.iter().all(|e| e[0] != e[1]));
    }
}
