//! Fuzzes configuration parsing: `BridgeConfig::from_sources` on arbitrary TOML text and
//! `GPUBRIDGE__SECTION__KEY` overrides.
//!
//! Input: TOML text, then optionally a NUL byte and `NAME=VALUE` lines (the environment).
//! Contract: never a panic; a parsed configuration validates, and what `to_toml_string` writes
//! parses back to the same configuration.
#![no_main]

use gpubridge_core::{BridgeConfig, Error};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (text, env) = match data.iter().position(|&b| b == 0) {
        Some(at) => (&data[..at], &data[at + 1..]),
        None => (data, &[][..]),
    };
    let Ok(text) = std::str::from_utf8(text) else {
        return;
    };
    let env: Vec<(String, String)> = String::from_utf8_lossy(env)
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    match BridgeConfig::from_sources(Some(text), env) {
        Ok(cfg) => {
            assert!(
                cfg.validate().is_ok(),
                "a parsed configuration must validate"
            );
            let written = cfg.to_toml_string();
            let again = BridgeConfig::from_toml_str(&written)
                .unwrap_or_else(|e| panic!("written configuration does not parse: {e}\n{written}"));
            assert_eq!(again, cfg, "configuration does not round-trip through TOML");
        }
        Err(Error::InvalidConfig { key, reason }) => {
            assert!(!reason.is_empty(), "an error must say why (key {key:?})");
        }
        Err(other) => panic!("config parsing gave a non-config error: {other}"),
    }
});
