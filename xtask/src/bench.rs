//! `cargo xtask bench`: builds the release CLI and runs `gpubridge bench`, which measures every
//! TARGETS.md row it can on this machine against baselines measured in the same run, and writes
//! `target/bench-report/report.json` (TARGETS.md's format) and `report.md`.
//!
//! On the GPU machine the packed CLI runs the same thing: `device-pack/gpubridge bench`.
//! The criterion bench `cargo bench -p gpubridge-wgpu-fallback` gives P10's distribution in detail.

use std::process::Command;

use anyhow::{bail, Context};

use crate::project_root;

/// Runs the benches, passing `args` (`--quick`, `--only P2,P4`) through.
pub fn run(args: &[String]) -> anyhow::Result<()> {
    let root = project_root();
    let cli = crate::build_release_cli()?;
    let dir = root.join("target/bench-report");
    std::fs::create_dir_all(&dir)?;
    let out = Command::new(cli)
        .arg("bench")
        .args(args)
        .arg("--out")
        .arg(dir.join("report.json"))
        .current_dir(&root)
        .output()
        .context("running gpubridge bench")?;
    eprint!("{}", String::from_utf8_lossy(&out.stderr));
    if !out.status.success() {
        bail!("gpubridge bench failed");
    }
    let table = String::from_utf8_lossy(&out.stdout);
    print!("{table}");
    std::fs::write(dir.join("report.md"), table.as_bytes())?;
    Ok(())
}
