//! `BridgeConfig`: defaults, TOML, environment overrides, and errors that name their key.

use gpubridge_core::{BackendKind, BridgeConfig, Error};

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn key_of(e: Error) -> (String, String) {
    match e {
        Error::InvalidConfig { key, reason } => (key, reason),
        other => panic!("expected InvalidConfig, got {other:?}"),
    }
}

#[test]
fn defaults_match_the_original_appsettings() {
    let c = BridgeConfig::default();
    assert!(c.general.prefer_gpu);
    assert_eq!(c.general.max_devices, 4);
    assert_eq!(c.general.max_concurrent_kernels, 100);
    assert_eq!(c.memory.pool_size_mb, 1024);
    assert!(!c.storage.enable_gpu_direct_storage);
    assert!(c.telemetry.enable_metrics && c.telemetry.enable_tracing);
    assert_eq!(c.telemetry.sampling_rate, 0.1);
    assert_eq!(c.fallback.chain, BackendKind::ALL.to_vec());
    c.validate().unwrap();
    assert_eq!(BridgeConfig::from_toml_str("").unwrap(), c);
}

#[test]
fn toml_round_trips_every_key() {
    let c = BridgeConfig::default();
    let text = c.to_toml_string();
    for section in [
        "general",
        "memory",
        "storage",
        "telemetry",
        "fallback",
        "batching",
        "cpu",
        "cuda",
        "wgpu",
    ] {
        assert!(
            text.contains(&format!("[{section}]")),
            "missing [{section}] in\n{text}"
        );
    }
    assert_eq!(BridgeConfig::from_toml_str(&text).unwrap(), c);
}

#[test]
fn file_values_and_environment_overrides_apply_in_order() {
    let toml = r#"
        [general]
        prefer_gpu = false
        max_devices = 2
        [storage]
        enable_gpu_direct_storage = true
        mount_point = "/mnt/nvme"
        [telemetry]
        sampling_rate = 0.5
    "#;
    let c = BridgeConfig::from_sources(
        Some(toml),
        env(&[
            ("GPUBRIDGE__GENERAL__MAX_DEVICES", "8"),
            ("GPUBRIDGE__FALLBACK__CHAIN", "wgpu,cpu"),
            ("GPUBRIDGE__CUDA__PTX_CACHE_DIR", "/var/cache/ptx"),
            ("UNRELATED", "ignored"),
        ]),
    )
    .unwrap();
    assert!(!c.general.prefer_gpu);
    assert_eq!(
        c.general.max_devices, 8,
        "the environment overrides the file"
    );
    assert!(c.storage.enable_gpu_direct_storage);
    assert_eq!(
        c.storage.mount_point.as_deref(),
        Some(std::path::Path::new("/mnt/nvme"))
    );
    assert_eq!(c.telemetry.sampling_rate, 0.5);
    assert_eq!(c.fallback.chain, vec![BackendKind::Wgpu, BackendKind::Cpu]);
    assert_eq!(
        c.cuda.ptx_cache_dir.as_deref(),
        Some(std::path::Path::new("/var/cache/ptx"))
    );
    let c = BridgeConfig::from_sources(None, env(&[("GPUBRIDGE__FALLBACK__CHAIN", r#"["cpu"]"#)]))
        .unwrap();
    assert_eq!(c.fallback.chain, vec![BackendKind::Cpu]);
}

#[test]
fn wrong_type_names_its_key() {
    let (key, reason) = key_of(
        BridgeConfig::from_toml_str("[batching]\nmax_micro_batch = \"many\"\n").unwrap_err(),
    );
    assert_eq!(key, "batching.max_micro_batch");
    assert!(reason.contains("invalid type"), "{reason}");
}

#[test]
fn unknown_keys_and_sections_are_rejected_by_name() {
    let (key, _) =
        key_of(BridgeConfig::from_toml_str("[general]\nprefer_gpus = true\n").unwrap_err());
    assert_eq!(key, "general.prefer_gpus");
    let (key, _) =
        key_of(BridgeConfig::from_toml_str("[genral]\nprefer_gpu = true\n").unwrap_err());
    assert_eq!(key, "genral");
}

#[test]
fn out_of_range_values_name_their_key() {
    let cases = [
        (
            "[telemetry]\nsampling_rate = 1.5\n",
            "telemetry.sampling_rate",
        ),
        (
            "[batching]\nmax_micro_batch = 0\n",
            "batching.max_micro_batch",
        ),
        (
            "[general]\nmax_concurrent_kernels = 0\n",
            "general.max_concurrent_kernels",
        ),
        (
            "[memory]\ndevice_memory_fraction = 0.0\n",
            "memory.device_memory_fraction",
        ),
        ("[memory]\nidle_release_s = 0\n", "memory.idle_release_s"),
        (
            "[batching]\nbatch_queue_capacity = 0\n",
            "batching.batch_queue_capacity",
        ),
        ("[fallback]\nchain = []\n", "fallback.chain"),
        ("[fallback]\nchain = [\"cpu\", \"cpu\"]\n", "fallback.chain"),
        ("[fallback]\nchain = [\"opencl\"]\n", "fallback.chain"),
        (
            "[telemetry]\nmetrics_listen = \"not an address\"\n",
            "telemetry.metrics_listen",
        ),
        ("[general]\nmax_devices = -1\n", "general.max_devices"),
        (
            "[telemetry]\notlp_endpoint = \"https://collector:4318\"\n",
            "telemetry.otlp_endpoint",
        ),
        (
            "[telemetry]\nnvml_interval_ms = 5\n",
            "telemetry.nvml_interval_ms",
        ),
    ];
    for (toml, want) in cases {
        let (key, reason) = key_of(BridgeConfig::from_toml_str(toml).unwrap_err());
        assert_eq!(key, want, "for {toml:?}: {reason}");
    }
}

#[test]
fn telemetry_keys_come_from_toml_and_environment() {
    let c = BridgeConfig::from_sources(
        Some("[telemetry]\nmetrics_listen = \"0.0.0.0:9100\"\nnvml_interval_ms = 1000\n"),
        env(&[
            (
                "GPUBRIDGE__TELEMETRY__OTLP_ENDPOINT",
                "http://127.0.0.1:4318",
            ),
            ("GPUBRIDGE__TELEMETRY__SERVICE_NAME", "inference-a"),
            ("GPUBRIDGE__TELEMETRY__ENABLE_TRACING", "false"),
        ]),
    )
    .unwrap();
    let t = &c.telemetry;
    assert_eq!(t.metrics_listen, "0.0.0.0:9100");
    assert_eq!(t.nvml_interval_ms, 1000);
    assert_eq!(t.otlp_endpoint.as_deref(), Some("http://127.0.0.1:4318"));
    assert_eq!(t.service_name, "inference-a");
    assert!(!t.enable_tracing && t.enable_metrics);
    let d = BridgeConfig::default().telemetry;
    assert_eq!(
        (d.nvml_interval_ms, d.service_name.as_str()),
        (5000, "gpubridge")
    );
    assert_eq!(d.otlp_endpoint, None);
}

#[test]
fn environment_errors_name_the_variable() {
    let err =
        BridgeConfig::from_sources(None, env(&[("GPUBRIDGE__TELEMETRY__SAMPLING_RATE", "2")]))
            .unwrap_err();
    let (key, reason) = key_of(err);
    assert_eq!(key, "telemetry.sampling_rate");
    assert!(
        reason.contains("GPUBRIDGE__TELEMETRY__SAMPLING_RATE"),
        "{reason}"
    );
    let err = BridgeConfig::from_sources(
        None,
        env(&[("GPUBRIDGE__BATCHING__MAX_MICRO_BATCH", "lots")]),
    )
    .unwrap_err();
    let (key, reason) = key_of(err);
    assert_eq!(key, "batching.max_micro_batch");
    assert!(
        reason.contains("GPUBRIDGE__BATCHING__MAX_MICRO_BATCH"),
        "{reason}"
    );
    let (key, _) = key_of(
        BridgeConfig::from_sources(None, env(&[("GPUBRIDGE__NOSECTION", "1")])).unwrap_err(),
    );
    assert_eq!(key, "nosection");
}

#[test]
fn malformed_toml_is_an_error_not_a_panic() {
    let err = BridgeConfig::from_toml_str("[general\nprefer_gpu = ").unwrap_err();
    assert!(matches!(err, Error::InvalidConfig { .. }), "{err:?}");
    let err =
        BridgeConfig::load(Some(std::path::Path::new("/nonexistent/gpubridge.toml"))).unwrap_err();
    assert_eq!(key_of(err).0, "file");
}

#[test]
fn storage_values_are_checked_by_name() {
    for (toml, key) in [
        ("[storage]\ntask_size_kb = 6\n", "storage.task_size_kb"),
        (
            "[storage]\nbounce_buffer_kb = 10\n",
            "storage.bounce_buffer_kb",
        ),
        ("[storage]\nthreads = 0\n", "storage.threads"),
        (
            "[storage]\nbounce_buffer_kb = 4096\nmax_pinned_memory_mb = 4\n",
            "storage.max_pinned_memory_mb",
        ),
        (
            "[storage]\ngds_poll_threshold_kb = 0\n",
            "storage.gds_poll_threshold_kb",
        ),
        (
            "[storage]\ngds_max_direct_io_kb = 0\n",
            "storage.gds_max_direct_io_kb",
        ),
        (
            "[storage]\ngds_max_cache_kb = 0\n",
            "storage.gds_max_cache_kb",
        ),
        (
            "[storage]\ngds_max_pinned_kb = 0\n",
            "storage.gds_max_pinned_kb",
        ),
        ("[storage]\ndirect_io = \"yes\"\n", "storage.direct_io"),
    ] {
        let (k, reason) = key_of(BridgeConfig::from_toml_str(toml).unwrap_err());
        assert_eq!(k, key, "{toml}: {reason}");
    }
    let c = BridgeConfig::from_toml_str(
        "[storage]\ndirect_io = false\ngds_poll_threshold_kb = 4\ngds_max_direct_io_kb = 16384\n",
    )
    .unwrap();
    assert!(!c.storage.direct_io);
    assert_eq!(c.storage.gds_poll_threshold_kb, Some(4));
    assert_eq!(c.storage.gds_max_direct_io_kb, Some(16384));
    assert_eq!(BridgeConfig::from_toml_str(&c.to_toml_string()).unwrap(), c);
}
