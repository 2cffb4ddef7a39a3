//! `/healthz` and `/readyz` over real HTTP: ready while a device can take work and the bridge is
//! not saturated; 503 with a reason when every device is lost, every circuit is open, or as many
//! requests are pending as `batching.queue_capacity`.
//!
//! Each test uses its own backend kind, so the device labels (and the global circuit gauges)
//! of tests running at once do not collide.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use gpubridge::kernels::{VectorAdd, VectorPair};
use gpubridge::telemetry::names;
use gpubridge::testing::{Fault, FaultInjectingBackend, FaultKind};
use gpubridge::{BackendKind, BridgeConfig, ExecutionHints, GpuBridge};
use support::{get, request, Scrape};

fn bridge_on(backend: Arc<FaultInjectingBackend>, config: BridgeConfig) -> GpuBridge {
    let mut config = config;
    config.fallback.chain = vec![gpubridge::Backend::kind(&*backend)];
    GpuBridge::builder(config)
        .kernel(VectorAdd)
        .unwrap()
        .backend(backend)
        .build()
        .unwrap()
}

fn pair() -> Vec<VectorPair> {
    vec![VectorPair {
        a: vec![1.0, 2.0],
        b: vec![3.0, 4.0],
    }]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_ready_while_every_device_is_lost_and_ready_again_after() {
    let backend = FaultInjectingBackend::new(BackendKind::Cuda, 2).unwrap();
    let bridge = bridge_on(backend.clone(), BridgeConfig::default());
    let server = gpubridge::telemetry::serve(&bridge, "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let addr = server.local_addr();
    assert_eq!(get(addr, "/readyz").await, (200, "ready\n".to_owned()));

    backend.set_lost(0, Some("xid 79"));
    assert_eq!(get(addr, "/readyz").await.0, 200, "one device left");
    backend.set_lost(1, Some("fell off the bus"));
    let (status, body) = get(addr, "/readyz").await;
    assert_eq!(status, 503);
    assert!(
        body.contains("no usable device")
            && body.contains("cuda:0 lost (xid 79)")
            && body.contains("cuda:1 lost (fell off the bus)"),
        "{body}"
    );
    assert_eq!(get(addr, "/healthz").await, (200, "ok\n".to_owned()));

    backend.set_lost(0, None);
    backend.set_lost(1, None);
    assert_eq!(get(addr, "/readyz").await.0, 200);
    server.shutdown().await;
    gpubridge::testing::assert_quiescent(&bridge);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_ready_while_every_circuit_is_open_and_the_scrape_shows_it() {
    let backend = FaultInjectingBackend::new(BackendKind::Wgpu, 1).unwrap();
    backend.inject(Fault::Always(vec![0]), FaultKind::DeviceLost);
    let mut config = BridgeConfig::default();
    config.fallback.circuit_failure_threshold = 1;
    config.fallback.circuit_open_ms = 3_600_000;
    let bridge = bridge_on(backend.clone(), config);
    let server = gpubridge::telemetry::serve(&bridge, "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let addr = server.local_addr();
    assert_eq!(get(addr, "/readyz").await.0, 200);

    let r = bridge
        .batch::<VectorAdd>()
        .unwrap()
        .execute(pair(), ExecutionHints::default())
        .await;
    assert!(r.is_err());
    let (status, body) = get(addr, "/readyz").await;
    assert_eq!(status, 503);
    assert!(body.contains("wgpu:0 circuit open"), "{body}");
    let (_, text) = get(addr, "/metrics").await;
    let scrape = Scrape::parse(&text);
    assert_eq!(
        scrape.sum(names::CIRCUIT_STATE, &[("device", "wgpu:0")]),
        2.0,
        "{text}"
    );
    assert_eq!(get(addr, "/healthz").await.0, 200);
    server.shutdown().await;
    gpubridge::testing::assert_quiescent(&bridge);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_ready_while_pending_requests_reach_the_queue_capacity() {
    let backend = FaultInjectingBackend::new(BackendKind::Cpu, 1).unwrap();
    let mut config = BridgeConfig::default();
    config.batching.queue_capacity = 2;
    let bridge = bridge_on(backend.clone(), config);
    let server = gpubridge::telemetry::serve(&bridge, "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let addr = server.local_addr();

    backend.hold();
    let add = bridge.batch::<VectorAdd>().unwrap();
    let waiting: Vec<_> = (0..2)
        .map(|_| {
            let add = add.clone();
            tokio::spawn(async move { add.execute(pair(), ExecutionHints::default()).await })
        })
        .collect();
    // Both requests are accepted and their work sits in the backend, as behind a slow device.
    let deadline = Instant::now() + Duration::from_secs(10);
    while backend.held() < 2 {
        assert!(
            Instant::now() < deadline,
            "the work never reached the backend"
        );
        tokio::task::yield_now().await;
    }
    assert_eq!(bridge.readiness().pending_requests, 2);
    let (status, body) = get(addr, "/readyz").await;
    assert_eq!(status, 503);
    assert!(
        body.contains("saturated: 2 requests pending, capacity 2"),
        "{body}"
    );
    assert_eq!(get(addr, "/healthz").await.0, 200);

    assert_eq!(backend.release(), 2);
    for w in waiting {
        let r = w.await.unwrap().unwrap();
        assert_eq!(r.outputs, vec![vec![4.0, 6.0]]);
    }
    assert_eq!(bridge.readiness().pending_requests, 0);
    assert_eq!(get(addr, "/readyz").await.0, 200);
    server.shutdown().await;
    gpubridge::testing::assert_quiescent(&bridge);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_paths_and_methods_and_metrics_turned_off() {
    let backend = FaultInjectingBackend::new(BackendKind::Cpu, 1).unwrap();
    let mut config = BridgeConfig::default();
    config.telemetry.enable_metrics = false;
    let bridge = bridge_on(backend, config);
    let server = gpubridge::telemetry::serve(&bridge, "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let addr = server.local_addr();
    assert_eq!(get(addr, "/nope").await.0, 404);
    assert_eq!(request(addr, "POST", "/readyz").await.0, 405);
    let (status, body) = get(addr, "/metrics").await;
    assert_eq!(status, 404);
    assert!(body.contains("enable_metrics = false"), "{body}");
    assert_eq!(get(addr, "/healthz").await.0, 200);
    assert_eq!(get(addr, "/readyz").await.0, 200);
    server.shutdown().await;
    // Stopped means stopped: nothing listens there any more.
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
    gpubridge::testing::assert_quiescent(&bridge);
}
