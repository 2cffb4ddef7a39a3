//! Tenants: a rate, a concurrency cap and a memory quota per tenant, on batches, single requests
//! and streams; one tenant's flood refused while another's requests go on; the allowances given
//! back once requests are answered. Stalls use the test backend's `hold`/`release`, not sleeps.

use std::sync::Arc;
use std::time::Duration;

use futures::poll;
use gpubridge_core::config::TenantLimits;
use gpubridge_core::kernels::{Sum, VectorAdd, VectorPair};
use gpubridge_core::testing::FaultInjectingBackend;
use gpubridge_core::{BackendKind, BridgeConfig, Error, ExecutionHints, GpuBridge};

fn bridge(config: BridgeConfig) -> (GpuBridge, Arc<FaultInjectingBackend>) {
    let mut b = GpuBridge::builder(config);
    b.register(Sum).unwrap();
    b.register(VectorAdd).unwrap();
    let backend = FaultInjectingBackend::new(BackendKind::Cpu, 1).unwrap();
    b.add_backend(backend.clone());
    (b.build().unwrap(), backend)
}

fn as_tenant(t: &str) -> ExecutionHints {
    ExecutionHints::default().tenant(t)
}

fn quota(e: &gpubridge_core::Result<impl std::fmt::Debug>, who: &str) -> bool {
    matches!(e, Err(Error::QuotaExceeded { tenant, .. }) if tenant == who)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_over_its_rate_is_refused_and_another_is_not() {
    let mut config = BridgeConfig::default();
    // One item a second with a burst of 5: the sixth item within the second is refused.
    config.tenants.overrides.insert(
        "flood".to_owned(),
        TenantLimits {
            items_per_second: 1.0,
            burst: 5.0,
            ..Default::default()
        },
    );
    let (b, _) = bridge(config);
    for k in 0..5 {
        let r = b.single::<Sum>(vec![k as f32], as_tenant("flood")).await;
        assert_eq!(r.unwrap().output, k as f32);
    }
    let refused = b.single::<Sum>(vec![1.0], as_tenant("flood")).await;
    assert!(quota(&refused, "flood"), "{refused:?}");
    // A batch counts its items: 3 items with no tokens left are refused as one.
    let grain = b.batch::<Sum>().unwrap();
    let batch = grain.execute(vec![vec![1.0]; 3], as_tenant("flood")).await;
    assert!(quota(&batch, "flood"), "{batch:?}");
    // Others (the default limits are unlimited) go on, and so do requests without a tenant.
    for _ in 0..50 {
        b.single::<Sum>(vec![2.0], as_tenant("quiet"))
            .await
            .unwrap();
        b.single::<Sum>(vec![2.0], ExecutionHints::default())
            .await
            .unwrap();
    }
    let usage = b.tenant_usage("flood").unwrap();
    assert_eq!(usage.refused, 2);
    assert_eq!((usage.in_flight, usage.bytes_in_flight), (0, 0));
    gpubridge_core::testing::assert_quiescent(&b);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_at_its_concurrency_cap_is_refused_until_a_request_finishes() {
    let mut config = BridgeConfig::default();
    config.tenants.default = TenantLimits {
        max_concurrent: 2,
        ..Default::default()
    };
    let (b, backend) = bridge(config);
    backend.hold();
    let grain = b.batch::<Sum>().unwrap();
    let mut one = Box::pin(grain.execute(vec![vec![1.0]], as_tenant("a")));
    let mut two = Box::pin(b.single::<Sum>(vec![2.0], as_tenant("a")));
    assert!(poll!(&mut one).is_pending());
    assert!(poll!(&mut two).is_pending());
    assert_eq!(b.tenant_usage("a").unwrap().in_flight, 2);
    let third = b.single::<Sum>(vec![3.0], as_tenant("a")).await;
    assert!(quota(&third, "a"), "{third:?}");
    // Tenant b has its own two places.
    let mut other = Box::pin(b.single::<Sum>(vec![4.0], as_tenant("b")));
    assert!(poll!(&mut other).is_pending());
    while backend.held() < 2 {
        tokio::task::yield_now().await;
        let _ = poll!(&mut one);
        let _ = poll!(&mut two);
        let _ = poll!(&mut other);
    }
    backend.release();
    assert_eq!(one.await.unwrap().outputs, vec![1.0]);
    assert_eq!(two.await.unwrap().output, 2.0);
    assert_eq!(other.await.unwrap().output, 4.0);
    // Places given back: a can send again.
    assert_eq!(
        b.single::<Sum>(vec![5.0], as_tenant("a"))
            .await
            .unwrap()
            .output,
        5.0
    );
    assert_eq!(b.tenant_usage("a").unwrap().in_flight, 0);
    gpubridge_core::testing::assert_quiescent(&b);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_over_the_memory_quota_is_refused_whole() {
    let mut config = BridgeConfig::default();
    config.tenants.overrides.insert(
        "small".to_owned(),
        TenantLimits {
            memory_quota_mb: 1,
            ..Default::default()
        },
    );
    let (b, _) = bridge(config);
    let grain = b.batch::<VectorAdd>().unwrap();
    // 2 x 2 x 200k floats: 3.2 MB of inputs against a 1 MiB quota.
    let big = |n: usize| {
        (0..n)
            .map(|_| VectorPair {
                a: vec![1.0; 200_000],
                b: vec![2.0; 200_000],
            })
            .collect::<Vec<_>>()
    };
    let r = grain.execute(big(2), as_tenant("small")).await;
    assert!(quota(&r, "small"), "{r:?}");
    // The same batch for a tenant without a quota runs, and "small" may still send small work.
    let r = grain.execute(big(2), as_tenant("large")).await.unwrap();
    assert_eq!(r.outputs[0][0], 3.0);
    let small = grain
        .execute(
            vec![VectorPair {
                a: vec![1.0; 16],
                b: vec![1.0; 16],
            }],
            as_tenant("small"),
        )
        .await
        .unwrap();
    assert_eq!(small.outputs[0], vec![2.0; 16]);
    assert_eq!(b.tenant_usage("small").unwrap().bytes_in_flight, 0);
    gpubridge_core::testing::assert_quiescent(&b);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_tenants_flood_does_not_starve_another() {
    let mut config = BridgeConfig::default();
    config.tenants.overrides.insert(
        "flood".to_owned(),
        TenantLimits {
            items_per_second: 200.0,
            burst: 50.0,
            max_concurrent: 20,
            ..Default::default()
        },
    );
    let (b, _) = bridge(config);
    // The flood: 8 tasks sending 400 requests each as fast as they can.
    let flood: Vec<_> = (0..8)
        .map(|_| {
            let b = b.clone();
            tokio::spawn(async move {
                let (mut ok, mut refused) = (0u32, 0u32);
                for _ in 0..400 {
                    match b.single::<Sum>(vec![1.0; 8], as_tenant("flood")).await {
                        Ok(r) => {
                            assert_eq!(r.output, 8.0);
                            ok += 1;
                        }
                        Err(Error::QuotaExceeded { .. }) => refused += 1,
                        Err(e) => panic!("{e:?}"),
                    }
                }
                (ok, refused)
            })
        })
        .collect();
    // Meanwhile the other tenant's requests all succeed, each within a bound.
    for k in 0..300 {
        let r = tokio::time::timeout(
            Duration::from_secs(5),
            b.single::<Sum>(vec![k as f32, 1.0], as_tenant("steady")),
        )
        .await
        .expect("the steady tenant was starved")
        .unwrap();
        assert_eq!(r.output, k as f32 + 1.0);
    }
    let (mut ok, mut refused) = (0, 0);
    for f in flood {
        let (o, r) = f.await.unwrap();
        ok += o;
        refused += r;
    }
    assert_eq!(ok + refused, 3200);
    assert!(refused > 0, "the flood was never limited");
    let usage = b.tenant_usage("flood").unwrap();
    assert_eq!(u64::from(refused), usage.refused);
    assert_eq!((usage.in_flight, usage.bytes_in_flight), (0, 0));
    assert_eq!(b.tenant_usage("steady").unwrap().refused, 0);
    gpubridge_core::testing::assert_quiescent(&b);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streams_items_hold_their_tenants_places_until_received() {
    let mut config = BridgeConfig::default();
    config.tenants.default = TenantLimits {
        max_concurrent: 3,
        ..Default::default()
    };
    let (b, backend) = bridge(config);
    backend.hold();
    let (tx, mut rx) = b.stream::<Sum>(as_tenant("s"), 10).unwrap();
    for k in 0..3 {
        tx.send(vec![k as f32]).await.unwrap();
    }
    let fourth = tx.send(vec![9.0]).await;
    assert!(quota(&fourth, "s"), "{fourth:?}");
    while backend.held() == 0 {
        tokio::task::yield_now().await;
    }
    backend.release();
    assert_eq!(rx.recv().await.unwrap().unwrap(), 0.0);
    // One output received: one place back.
    tx.send(vec![3.0]).await.unwrap();
    drop(tx);
    let mut rest = Vec::new();
    while let Some(r) = rx.recv().await {
        rest.push(r.unwrap());
    }
    assert_eq!(rest, vec![1.0, 2.0, 3.0]);
    assert_eq!(b.tenant_usage("s").unwrap().in_flight, 0);
    gpubridge_core::testing::assert_quiescent(&b);
}

#[test]
fn bad_tenant_limits_are_config_errors_naming_the_key() {
    let e = BridgeConfig::from_sources(
        Some("[tenants.overrides.acme]\nitems_per_second = -5.0\n"),
        Vec::<(String, String)>::new(),
    )
    .unwrap_err();
    assert!(
        e.to_string()
            .contains("tenants.overrides.acme.items_per_second"),
        "{e}"
    );
    let ok = BridgeConfig::from_sources(
        Some("[tenants.default]\nmax_concurrent = 4\n[tenants.overrides.acme]\nitems_per_second = 100.0\nmemory_quota_mb = 64\n"),
        Vec::<(String, String)>::new(),
    )
    .unwrap();
    assert_eq!(ok.tenants.limits("acme").memory_quota_mb, 64);
    assert_eq!(ok.tenants.limits("other").max_concurrent, 4);
}
