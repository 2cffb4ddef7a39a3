//! `cargo xtask licenses`: every dependency's licence, from `cargo metadata` over every feature,
//! checked against the project's policy (what `cargo deny check licenses` would do, offline and
//! with nothing to install).
//!
//! A package passes when one alternative of its SPDX expression (`A OR B`, legacy `A/B`) has all
//! of its `AND` parts on [`ALLOWED`]. A package with no licence expression fails unless it is an
//! [`EXCEPTIONS`] entry with the reason written down.
//!
//! RustSec advisories are not checked here: the advisory database lives on GitHub, which these
//! build machines cannot reach (only the package registries). `cargo deny check advisories` on a
//! machine with network access does that part.

use std::collections::BTreeMap;

use anyhow::{bail, Context};
use serde_json::Value;

/// Licences the project accepts in its dependency tree: permissive, compatible with shipping
/// gpubridge under MIT OR Apache-2.0.
pub const ALLOWED: &[&str] = &[
    "MIT",
    "Apache-2.0",
    "Apache-2.0 WITH LLVM-exception",
    "BSD-2-Clause",
    "BSD-3-Clause",
    "ISC",
    "Zlib",
    "0BSD",
    "CC0-1.0",
    "Unlicense",
    "Unicode-3.0",
    "Unicode-DFS-2016",
    "BSL-1.0",
    "CDLA-Permissive-2.0",
];

/// Packages without a licence expression that are accepted anyway: (name, reason).
pub const EXCEPTIONS: &[(&str, &str)] = &[];

/// Whether an SPDX expression is satisfied by [`ALLOWED`].
pub fn allowed(expr: &str) -> bool {
    let expr = expr.replace('/', " OR ");
    // Parentheses only group here ("(MIT OR Apache-2.0) AND Unicode-3.0"): distribute AND over
    // the groups' alternatives.
    alternatives(&expr)
        .iter()
        .any(|alt| alt.iter().all(|part| ALLOWED.contains(&part.as_str())))
}

/// The expression as a disjunction of conjunctions.
fn alternatives(expr: &str) -> Vec<Vec<String>> {
    let expr = expr.trim();
    // Split on top-level OR.
    let or_parts = split_top(expr, " OR ");
    if or_parts.len() > 1 {
        return or_parts.iter().flat_map(|p| alternatives(p)).collect();
    }
    let and_parts = split_top(expr, " AND ");
    if and_parts.len() > 1 {
        let mut acc: Vec<Vec<String>> = vec![Vec::new()];
        for part in and_parts {
            let alts = alternatives(&part);
            acc = acc
                .iter()
                .flat_map(|a| {
                    alts.iter().map(move |b| {
                        let mut c = a.clone();
                        c.extend(b.iter().cloned());
                        c
                    })
                })
                .collect();
        }
        return acc;
    }
    if let Some(inner) = expr.strip_prefix('(').and_then(|e| e.strip_suffix(')')) {
        return alternatives(inner);
    }
    vec![vec![expr.split_whitespace().collect::<Vec<_>>().join(" ")]]
}

/// Splits on `sep` outside parentheses.
fn split_top(expr: &str, sep: &str) -> Vec<String> {
    let mut parts = Vec::new();
    let mut depth = 0i32;
    let mut start = 0;
    let bytes = expr.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'(' => depth += 1,
            b')' => depth -= 1,
            _ => {}
        }
        if depth == 0 && expr[i..].starts_with(sep) {
            parts.push(expr[start..i].trim().to_owned());
            i += sep.len();
            start = i;
            continue;
        }
        i += 1;
    }
    parts.push(expr[start..].trim().to_owned());
    parts
}

/// Checks every dependency; fails listing the offenders.
pub fn run() -> anyhow::Result<()> {
    let out = crate::cargo()
        .args(["metadata", "--format-version", "1", "--all-features"])
        .output()
        .context("running cargo metadata")?;
    if !out.status.success() {
        bail!(
            "cargo metadata failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let meta: Value = serde_json::from_slice(&out.stdout).context("parsing cargo metadata")?;
    let workspace: Vec<&str> = meta["workspace_members"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    let mut by_licence: BTreeMap<String, usize> = BTreeMap::new();
    let mut bad = Vec::new();
    for p in meta["packages"].as_array().into_iter().flatten() {
        let id = p["id"].as_str().unwrap_or("");
        if workspace.contains(&id) {
            continue;
        }
        let name = p["name"].as_str().unwrap_or("?");
        let version = p["version"].as_str().unwrap_or("?");
        match p["license"].as_str() {
            Some(l) if allowed(l) => *by_licence.entry(l.to_owned()).or_default() += 1,
            Some(l) => bad.push(format!("{name} {version}: `{l}` is not allowed")),
            None => {
                if !EXCEPTIONS.iter().any(|(n, _)| *n == name) {
                    bad.push(format!("{name} {version}: no licence expression"));
                }
            }
        }
    }
    let total: usize = by_licence.values().sum();
    eprintln!("licences of {total} dependencies:");
    for (l, n) in &by_licence {
        eprintln!("  {n:>4}  {l}");
    }
    if !bad.is_empty() {
        bail!(
            "licence policy (xtask/src/licenses.rs) violated:\n{}",
            bad.join("\n")
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::allowed;

    #[test]
    fn spdx_expressions_are_judged_by_their_best_alternative() {
        assert!(allowed("MIT"));
        assert!(allowed("MIT OR Apache-2.0"));
        assert!(allowed("Apache-2.0/MIT"));
        assert!(allowed("Apache-2.0 / MIT"));
        assert!(allowed("(MIT OR Apache-2.0) AND Unicode-3.0"));
        assert!(allowed("MIT AND Apache-2.0"));
        assert!(allowed("GPL-3.0 OR MIT"));
        assert!(!allowed("GPL-3.0"));
        assert!(!allowed("MIT AND GPL-2.0"));
        assert!(!allowed("(MIT OR Apache-2.0) AND AGPL-3.0"));
        assert!(!allowed("LicenseRef-proprietary"));
    }
}
