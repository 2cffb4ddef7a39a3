//! Every command the guides show (README.md, CONTRIBUTING.md, docs/*.md), checked against the
//! code as written:
//!
//! - `gpubridge ...` commands: the quick ones (`devices`, `kernels`, `config`, `profile` on the
//!   CPU) run for real and must succeed; every other one is parsed by the real binary
//!   (`GPUBRIDGE_CHECK_ARGS=1` makes it stop after parsing), so a renamed flag or subcommand fails
//!   here. Long runs (`bench`, `load`, `soak`, `serve`) are run for real by CI in their quick forms
//!   (`cargo xtask ci`) and by `cli_commands.rs`.
//! - `cargo xtask <task>`: the task exists; `cargo test|bench|build -p <package> [--test|--bench
//!   <target>]`: the package and the target exist (from `cargo metadata`).
//!
//! Synopsis lines (with `<..>`, `[..]` or `a|b` placeholders) are not commands and are skipped.

use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// The guides, relative to the workspace root.
fn guides() -> Vec<PathBuf> {
    let mut files = vec![root().join("README.md"), root().join("CONTRIBUTING.md")];
    let mut docs: Vec<PathBuf> = std::fs::read_dir(root().join("docs"))
        .expect("docs/")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    docs.sort();
    files.extend(docs);
    files
}

/// Commands in a markdown text: lines of `sh`/`bash` fences and inline code spans, each starting
/// with `gpubridge ` or `cargo `; trailing `# comments` removed.
fn commands(text: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut fence: Option<String> = None;
    for line in text.lines() {
        let t = line.trim_start();
        if let Some(info) = t.strip_prefix("```") {
            fence = match fence {
                Some(_) => None,
                None => Some(info.trim().to_owned()),
            };
            continue;
        }
        match &fence {
            Some(info) if info == "sh" || info == "bash" || info == "console" => {
                // A line ending in `\` goes on with the next one.
                match out.last_mut() {
                    Some(prev) if prev.ends_with('\\') => {
                        prev.pop();
                        prev.push(' ');
                        prev.push_str(t);
                    }
                    _ => out.push(t.to_owned()),
                }
            }
            Some(_) => {}
            None => {
                // Inline code spans.
                let mut rest = line;
                while let Some(a) = rest.find('`') {
                    let after = &rest[a + 1..];
                    let Some(b) = after.find('`') else { break };
                    out.push(after[..b].to_owned());
                    rest = &after[b + 1..];
                }
            }
        }
    }
    out.into_iter()
        .map(|c| {
            let c = c.split(" #").next().unwrap_or("").trim().to_owned();
            c.strip_prefix("./").map(str::to_owned).unwrap_or(c)
        })
        .filter(|c| c.starts_with("gpubridge ") || c.starts_with("cargo "))
        .collect()
}

fn synopsis(cmd: &str) -> bool {
    cmd.contains('<')
        || cmd.contains('[')
        || cmd.contains('|')
        || cmd.contains("..")
        || cmd.contains('$')
        || cmd.contains('*')
}

struct Metadata {
    packages: Vec<(String, Vec<(String, String)>)>,
}

fn metadata() -> Metadata {
    let out = Command::new(env!("CARGO"))
        .args(["metadata", "--no-deps", "--format-version", "1"])
        .current_dir(root())
        .output()
        .expect("cargo metadata");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("metadata JSON");
    let packages = v["packages"]
        .as_array()
        .expect("packages")
        .iter()
        .map(|p| {
            let targets = p["targets"]
                .as_array()
                .into_iter()
                .flatten()
                .flat_map(|t| {
                    let name = t["name"].as_str().unwrap_or("").to_owned();
                    t["kind"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|k| Some((k.as_str()?.to_owned(), name.clone())))
                        .collect::<Vec<_>>()
                })
                .collect();
            (p["name"].as_str().unwrap_or("").to_owned(), targets)
        })
        .collect();
    Metadata { packages }
}

fn check_cargo(cmd: &str, meta: &Metadata) -> Result<(), String> {
    let words: Vec<&str> = cmd.split_whitespace().collect();
    match words.get(1).copied() {
        Some("xtask") => {
            let task = words.get(2).copied().unwrap_or("");
            // The tasks `cargo xtask` dispatches on, read from its `main`.
            let main = std::fs::read_to_string(root().join("xtask/src/main.rs"))
                .map_err(|e| format!("reading xtask/src/main.rs: {e}"))?;
            let known: Vec<&str> = main
                .split("Some(\"")
                .skip(1)
                .filter_map(|rest| {
                    let (name, after) = rest.split_once('"')?;
                    after.trim_start().starts_with(") =>").then_some(name)
                })
                .collect();
            if known.contains(&task) {
                Ok(())
            } else {
                Err(format!("no xtask `{task}` (known: {known:?})"))
            }
        }
        Some("test" | "bench" | "build" | "run" | "clippy" | "doc" | "check") => {
            let mut package = None;
            let mut target = None;
            let mut it = words.iter().skip(2);
            while let Some(w) = it.next() {
                match *w {
                    "-p" | "--package" => package = it.next().copied(),
                    "--test" => target = it.next().map(|t| ("test", *t)),
                    "--bench" => target = it.next().map(|t| ("bench", *t)),
                    "--" => break,
                    _ => {}
                }
            }
            if let Some(p) = package {
                let Some((_, targets)) = meta.packages.iter().find(|(n, _)| n == p) else {
                    return Err(format!("no package `{p}`"));
                };
                if let Some((kind, name)) = target {
                    if !targets.iter().any(|(k, n)| k == kind && n == name) {
                        return Err(format!("package `{p}` has no {kind} target `{name}`"));
                    }
                }
            }
            Ok(())
        }
        // fmt, publish, install...: nothing of ours to check.
        _ => Ok(()),
    }
}

fn split(cmd: &str) -> Vec<String> {
    cmd.split_whitespace()
        .map(|w| w.trim_matches(|c| c == '"' || c == '\'').to_owned())
        .collect()
}

#[test]
fn every_command_in_the_guides_runs_or_parses_as_written() {
    let meta = metadata();
    let mut checked = 0;
    let mut failures = Vec::new();
    for file in guides() {
        let text = std::fs::read_to_string(&file).expect("a guide");
        let name = file
            .strip_prefix(root())
            .unwrap_or(&file)
            .display()
            .to_string();
        for cmd in commands(&text) {
            if synopsis(&cmd) {
                continue;
            }
            checked += 1;
            if cmd.starts_with("cargo ") {
                if let Err(e) = check_cargo(&cmd, &meta) {
                    failures.push(format!("{name}: `{cmd}`: {e}"));
                }
                continue;
            }
            let args = split(&cmd);
            let sub = args.get(1).map(String::as_str).unwrap_or("");
            // A profile on the CPU takes milliseconds: it runs for real too.
            let quick_run = matches!(sub, "devices" | "kernels" | "config")
                || (sub == "profile"
                    && args
                        .windows(2)
                        .any(|w| w[0] == "--backend" && w[1] == "cpu"));
            let mut c = Command::new(env!("CARGO_BIN_EXE_gpubridge"));
            c.args(&args[1..]).env("NODEVICE_SELECT", "1");
            if !quick_run {
                c.env("GPUBRIDGE_CHECK_ARGS", "1");
            }
            let out = c.output().expect("running gpubridge");
            if !out.status.success() {
                failures.push(format!(
                    "{name}: `{cmd}` {} (status {}): {}",
                    if quick_run {
                        "failed"
                    } else {
                        "does not parse"
                    },
                    out.status,
                    String::from_utf8_lossy(&out.stderr)
                        .lines()
                        .take(3)
                        .collect::<Vec<_>>()
                        .join(" / ")
                ));
            }
        }
    }
    eprintln!("{checked} commands checked");
    assert!(
        failures.is_empty(),
        "{} of {checked} commands:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(
        checked >= 10,
        "only {checked} commands found: is the extraction broken?"
    );
}

#[test]
fn the_argument_check_rejects_a_bad_command() {
    let out = Command::new(env!("CARGO_BIN_EXE_gpubridge"))
        .args(["run", "vector", "--no-such-flag"])
        .env("GPUBRIDGE_CHECK_ARGS", "1")
        .output()
        .expect("running gpubridge");
    assert!(!out.status.success());
    let out = Command::new(env!("CARGO_BIN_EXE_gpubridge"))
        .args(["soak", "--duration", "24h", "--backend", "cuda"])
        .env("GPUBRIDGE_CHECK_ARGS", "1")
        .output()
        .expect("running gpubridge");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn command_extraction_finds_fences_and_spans() {
    let text = "Run `gpubridge devices` first.\n```sh\ngpubridge run vector --backend cpu   # verified\n```\n```toml\ngpubridge = 1\n```\n";
    assert_eq!(
        commands(text),
        vec![
            "gpubridge devices".to_owned(),
            "gpubridge run vector --backend cpu".to_owned()
        ]
    );
}
