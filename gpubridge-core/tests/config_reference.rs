//! `docs/DEPLOYMENT.md`'s configuration reference and `BridgeConfig` agree: every key of the
//! configuration is documented there, every documented key exists, and every documented default
//! is accepted as the value of its key.

use std::collections::BTreeSet;

use gpubridge_core::BridgeConfig;

/// Dotted keys of a JSON object (a map-valued key such as `tenants.overrides` is one key).
fn keys(prefix: &str, v: &serde_json::Value, out: &mut BTreeSet<String>) {
    match v {
        serde_json::Value::Object(m) if !m.is_empty() => {
            for (k, v) in m {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                keys(&key, v, out);
            }
        }
        _ => {
            out.insert(prefix.to_owned());
        }
    }
}

fn documented() -> Vec<(String, String)> {
    let doc = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../docs/DEPLOYMENT.md"
    ))
    .expect("docs/DEPLOYMENT.md");
    doc.lines()
        .filter_map(|l| {
            let rest = l.strip_prefix("| `")?;
            let (key, rest) = rest.split_once('`')?;
            let default = rest.strip_prefix(" | `")?.split_once('`')?.0;
            Some((key.to_owned(), default.to_owned()))
        })
        .collect()
}

#[test]
fn every_key_is_documented_and_every_documented_key_exists() {
    let mut actual = BTreeSet::new();
    keys(
        "",
        &serde_json::to_value(BridgeConfig::default()).unwrap(),
        &mut actual,
    );
    let doc: BTreeSet<String> = documented().into_iter().map(|(k, _)| k).collect();
    let missing: Vec<_> = actual.difference(&doc).collect();
    let unknown: Vec<_> = doc.difference(&actual).collect();
    assert!(
        missing.is_empty() && unknown.is_empty(),
        "not documented in docs/DEPLOYMENT.md: {missing:?}; documented but not in BridgeConfig: {unknown:?}"
    );
}

#[test]
fn every_documented_default_is_accepted() {
    for (key, default) in documented() {
        if default == "unset" || default == "{}" {
            continue;
        }
        let (section, name) = key.rsplit_once('.').unwrap();
        let text = format!("[{section}]\n{name} = {default}\n");
        let cfg = BridgeConfig::from_sources(Some(&text), Vec::<(String, String)>::new())
            .unwrap_or_else(|e| panic!("{key} = {default}: {e}"));
        // And it is the default indeed.
        assert_eq!(cfg, BridgeConfig::default(), "{key}'s documented default");
    }
}
