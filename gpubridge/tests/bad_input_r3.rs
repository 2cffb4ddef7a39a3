//! TARGETS.md R3, one place for every public entry point: each gets bad input (wrong lengths,
//! empty, NaN and infinities, oversize, an unknown kernel, wrong types, a bad configuration,
//! missing, corrupt and truncated files) and must answer with its typed error, without a panic, and
//! disturb nothing else: after every case the same bridge still answers a good request correctly,
//! and nothing stays held (`assert_quiescent`). The CPU backend alone, so that the checks are the
//! same on every machine. Deeper cases of single entry points live beside them (storage errors in
//! `gpubridge-storage/tests/storage_staged.rs`, the graph loader in the CLI tests and its fuzz
//! target, configuration keys in `config_parsing.rs`, tenants in `tenants.rs`).

use std::time::Duration;

use gpubridge::kernels::{
    ConnectedComponents, Graph, MatMul, MatMulInput, Saxpy, SaxpyInput, Sum, VectorAdd, VectorPair,
};
use gpubridge::testing::assert_quiescent;
use gpubridge::{BackendKind, BridgeConfig, Error, ExecutionHints, GpuBridge, IoErrorKind};

fn cpu_bridge() -> GpuBridge {
    let mut config = BridgeConfig::default();
    config.fallback.chain = vec![BackendKind::Cpu];
    gpubridge::bridge(config).expect("a CPU bridge")
}

/// The bridge still works after a bad request: a good batch and a good single, right answers,
/// and nothing held.
async fn still_healthy(bridge: &GpuBridge, case: &str) {
    let out = bridge
        .batch::<VectorAdd>()
        .unwrap()
        .execute(
            vec![VectorPair {
                a: vec![1.0, 2.0],
                b: vec![3.0, 4.0],
            }],
            ExecutionHints::default(),
        )
        .await
        .unwrap_or_else(|e| panic!("{case}: a good batch failed afterwards: {e}"));
    assert_eq!(out.outputs, vec![vec![4.0, 6.0]], "{case}");
    let one = bridge
        .single::<Sum>(vec![1.0, 2.0, 3.0], ExecutionHints::default())
        .await
        .unwrap_or_else(|e| panic!("{case}: a good single failed afterwards: {e}"));
    assert_eq!(one.output, 6.0, "{case}");
    assert_quiescent(bridge);
}

fn invalid_input(r: Result<impl std::fmt::Debug, Error>, case: &str) -> Error {
    match r {
        Err(e @ Error::InvalidInput { .. }) => e,
        other => panic!("{case}: expected InvalidInput, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_entry_points_refuse_bad_items_with_typed_errors() {
    let bridge = cpu_bridge();
    let h = ExecutionHints::default;

    // Vector add: unequal lengths, named by item index.
    let e = invalid_input(
        bridge
            .batch::<VectorAdd>()
            .unwrap()
            .execute(
                vec![
                    VectorPair {
                        a: vec![1.0],
                        b: vec![1.0],
                    },
                    VectorPair {
                        a: vec![1.0, 2.0],
                        b: vec![1.0],
                    },
                ],
                h(),
            )
            .await,
        "vector add, unequal lengths",
    );
    assert!(
        matches!(e, Error::InvalidInput { index: Some(1), .. }),
        "{e:?}"
    );
    still_healthy(&bridge, "vector add, unequal lengths").await;

    // SAXPY: x and y of different lengths.
    invalid_input(
        bridge
            .batch::<Saxpy>()
            .unwrap()
            .execute(
                vec![SaxpyInput {
                    alpha: 2.0,
                    x: vec![1.0; 3],
                    y: vec![1.0; 2],
                }],
                h(),
            )
            .await,
        "saxpy, unequal lengths",
    );
    still_healthy(&bridge, "saxpy").await;

    // Matrix multiply: data that does not match the shape; a shape whose size overflows.
    invalid_input(
        bridge
            .batch::<MatMul>()
            .unwrap()
            .execute(
                vec![MatMulInput {
                    m: 2,
                    k: 2,
                    n: 2,
                    a: vec![1.0; 3],
                    b: vec![1.0; 4],
                }],
                h(),
            )
            .await,
        "matmul, data against shape",
    );
    let oversize = bridge
        .batch::<MatMul>()
        .unwrap()
        .execute(
            vec![MatMulInput {
                m: usize::MAX / 2,
                k: 4,
                n: 4,
                a: vec![],
                b: vec![],
            }],
            h(),
        )
        .await;
    assert!(
        matches!(oversize, Err(Error::InvalidInput { .. })),
        "matmul, oversize shape: {oversize:?}"
    );
    still_healthy(&bridge, "matmul").await;

    // Connected components: an edge naming a node that does not exist.
    invalid_input(
        bridge
            .batch::<ConnectedComponents>()
            .unwrap()
            .execute(
                vec![Graph {
                    nodes: 3,
                    edges: vec![[0, 7]],
                }],
                h(),
            )
            .await,
        "connected components, unknown node",
    );
    still_healthy(&bridge, "connected components").await;

    // Empty batches and empty items are answers, not errors.
    let empty = bridge
        .batch::<Sum>()
        .unwrap()
        .execute(Vec::new(), h())
        .await
        .unwrap();
    assert!(empty.outputs.is_empty());
    let zero = bridge
        .batch::<Sum>()
        .unwrap()
        .execute(vec![Vec::new()], h())
        .await
        .unwrap();
    assert_eq!(zero.outputs, vec![0.0]);

    // NaN and infinities are data: they propagate as IEEE arithmetic says, on every backend.
    let special = bridge
        .batch::<Sum>()
        .unwrap()
        .execute(
            vec![
                vec![1.0, f32::NAN],
                vec![f32::INFINITY, 1.0],
                vec![f32::INFINITY, f32::NEG_INFINITY],
            ],
            h(),
        )
        .await
        .unwrap();
    assert!(special.outputs[0].is_nan());
    assert_eq!(special.outputs[1], f32::INFINITY);
    assert!(special.outputs[2].is_nan());
    still_healthy(&bridge, "empty and special values").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kernels_are_found_by_id_and_type_or_refused() {
    let bridge = cpu_bridge();
    match bridge.batch_by_id::<Vec<f32>, f32>("kernels/no-such-kernel") {
        Err(Error::UnknownKernel { id, registered }) => {
            assert_eq!(id, "kernels/no-such-kernel");
            assert!(registered.contains("kernels/sum"), "{registered}");
        }
        other => panic!("unknown kernel: {other:?}"),
    }
    // The sum kernel takes Vec<f32> -> f32, not VectorPair -> Vec<f32>.
    let id = <Sum as gpubridge::Kernel>::ID;
    assert!(matches!(
        bridge.batch_by_id::<VectorPair, Vec<f32>>(id),
        Err(Error::KernelTypeMismatch { .. })
    ));
    still_healthy(&bridge, "kernel lookup").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn singles_and_streams_refuse_bad_items_and_go_on() {
    let bridge = cpu_bridge();
    let h = ExecutionHints::default;
    invalid_input(
        bridge
            .single::<VectorAdd>(
                VectorPair {
                    a: vec![1.0],
                    b: vec![],
                },
                h(),
            )
            .await,
        "single, unequal lengths",
    );
    still_healthy(&bridge, "single").await;

    // A stream with no room is refused at once.
    assert!(matches!(
        bridge.stream::<Sum>(h(), 0),
        Err(Error::InvalidInput { .. })
    ));
    // A bad item is refused and the stream goes on with the next one, in order.
    let (tx, mut rx) = bridge.stream::<VectorAdd>(h(), 8).unwrap();
    tx.send(VectorPair {
        a: vec![1.0],
        b: vec![2.0],
    })
    .await
    .unwrap();
    invalid_input(
        tx.send(VectorPair {
            a: vec![1.0, 2.0],
            b: vec![2.0],
        })
        .await,
        "stream, unequal lengths",
    );
    tx.send(VectorPair {
        a: vec![5.0],
        b: vec![5.0],
    })
    .await
    .unwrap();
    tx.close();
    assert_eq!(rx.recv().await.unwrap().unwrap(), vec![3.0]);
    assert_eq!(rx.recv().await.unwrap().unwrap(), vec![10.0]);
    assert!(rx.recv().await.is_none());
    still_healthy(&bridge, "stream").await;

    // A request asking for a backend this bridge does not have names why.
    let r = bridge
        .batch::<Sum>()
        .unwrap()
        .execute(vec![vec![1.0]], h().on_backend(BackendKind::Cuda))
        .await;
    assert!(matches!(r, Err(Error::NoBackendAvailable { .. })), "{r:?}");
    still_healthy(&bridge, "backend not in the bridge").await;

    // A timeout that cannot be met is a timeout, not a hang.
    let tight = ExecutionHints {
        timeout: Some(Duration::ZERO),
        ..h()
    };
    let r = bridge.single::<Sum>(vec![1.0; 100], tight).await;
    assert!(matches!(r, Ok(_) | Err(Error::Timeout { .. })), "{r:?}");
    still_healthy(&bridge, "zero timeout").await;
}

#[test]
fn bad_configuration_is_refused_with_the_key_named() {
    // Unparsable text, an unknown key, a value out of range, a missing file: typed errors.
    assert!(matches!(
        BridgeConfig::from_toml_str("[batching\nmax_batch = 3"),
        Err(Error::InvalidConfig { .. })
    ));
    assert!(matches!(
        BridgeConfig::from_toml_str("[batching]\nno_such_key = 1\n"),
        Err(Error::InvalidConfig { .. })
    ));
    let mut config = BridgeConfig::default();
    config.batching.queue_capacity = 0;
    match config.validate() {
        Err(Error::InvalidConfig { key, .. }) => assert!(key.contains("queue_capacity"), "{key}"),
        other => panic!("queue_capacity = 0: {other:?}"),
    }
    assert!(matches!(
        gpubridge::bridge(config),
        Err(Error::InvalidConfig { .. })
    ));
    let missing = std::path::Path::new("/nonexistent/gpubridge.toml");
    assert!(BridgeConfig::load(Some(missing)).is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storage_refuses_missing_truncated_and_bad_ranges() {
    let bridge = cpu_bridge();
    let storage = gpubridge::storage::Storage::new(bridge.config()).unwrap();
    let dir = std::env::temp_dir().join(format!("gpubridge-r3-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("data.bin");
    std::fs::write(&file, vec![7u8; 4096]).unwrap();

    let kind = |r: gpubridge::Result<_>| match r {
        Err(Error::Io { kind, .. }) => kind,
        other => panic!(
            "expected an Io error, got {:?}",
            other.map(|_: (Vec<u8>, _)| ())
        ),
    };
    assert_eq!(
        kind(storage.load(dir.join("missing.bin"), None).await),
        IoErrorKind::NotFound
    );
    assert_eq!(
        kind(storage.load(&file, Some(4000..5000)).await),
        IoErrorKind::Truncated
    );
    assert_eq!(
        kind(storage.load(&file, Some(0..(1u64 << 50))).await),
        IoErrorKind::Truncated
    );
    // A directory is not a file.
    assert!(storage.load(&dir, None).await.is_err());
    // The good range still loads.
    let (bytes, _) = storage.load(&file, Some(10..20)).await.unwrap();
    assert_eq!(bytes, vec![7u8; 10]);
    let _ = std::fs::remove_dir_all(&dir);
    still_healthy(&bridge, "storage").await;
}
