//! Per-tenant limits: a token-bucket rate on items, a cap on requests in flight, and a quota on
//! the device bytes of requests in flight (`[tenants]` in the configuration).
//!
//! A request that names a tenant (`hints.tenant`) is admitted before it is queued or run: it takes
//! its items from the tenant's bucket and its place and bytes from the tenant's allowances, and
//! gives the place and bytes back when it is answered (or its caller drops it). A request over any
//! limit fails at once with [`Error::QuotaExceeded`] and takes nothing: one tenant's flood or
//! oversized work is refused at the door while other tenants' requests go on. Requests without a
//! tenant are not limited.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use parking_lot::Mutex;

use crate::config::{TenantLimits, TenantsConfig};
use crate::error::{Error, Result};

/// What one tenant uses now (see [`crate::GpuBridge::tenant_usage`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TenantUsage {
    /// Requests admitted and not yet answered.
    pub in_flight: usize,
    /// Device bytes of those requests.
    pub bytes_in_flight: u64,
    /// Requests refused so far, over any limit.
    pub refused: u64,
}

struct Bucket {
    tokens: f64,
    last: Instant,
}

struct TenantState {
    name: String,
    limits: TenantLimits,
    bucket: Mutex<Bucket>,
    in_flight: AtomicUsize,
    bytes: AtomicU64,
    refused: AtomicU64,
}

impl TenantState {
    fn burst(&self) -> f64 {
        if self.limits.burst > 0.0 {
            self.limits.burst
        } else {
            self.limits.items_per_second.max(1.0)
        }
    }

    fn refuse(&self, reason: String) -> Error {
        self.refused.fetch_add(1, Ordering::Relaxed);
        Error::QuotaExceeded {
            tenant: self.name.clone(),
            reason,
        }
    }
}

/// Every tenant seen so far, by name.
pub(crate) struct Tenants {
    config: TenantsConfig,
    known: Mutex<HashMap<String, Arc<TenantState>>>,
}

/// A request's hold on its tenant's allowances, given back when dropped.
pub(crate) struct TenantGuard {
    state: Arc<TenantState>,
    bytes: u64,
}

impl Drop for TenantGuard {
    fn drop(&mut self) {
        self.state.in_flight.fetch_sub(1, Ordering::AcqRel);
        self.state.bytes.fetch_sub(self.bytes, Ordering::AcqRel);
    }
}

impl Tenants {
    pub(crate) fn new(config: TenantsConfig) -> Self {
        Self {
            config,
            known: Mutex::new(HashMap::new()),
        }
    }

    fn state(&self, tenant: &str) -> Arc<TenantState> {
        let mut known = self.known.lock();
        if let Some(s) = known.get(tenant) {
            return s.clone();
        }
        let limits = self.config.limits(tenant);
        let s = Arc::new(TenantState {
            name: tenant.to_owned(),
            limits,
            bucket: Mutex::new(Bucket {
                tokens: 0.0,
                last: Instant::now(),
            }),
            in_flight: AtomicUsize::new(0),
            bytes: AtomicU64::new(0),
            refused: AtomicU64::new(0),
        });
        // A new tenant starts with a full bucket.
        s.bucket.lock().tokens = s.burst();
        known.insert(tenant.to_owned(), s.clone());
        s
    }

    /// Admits a request of `items` items and `bytes` device bytes for `tenant`, or refuses it
    /// with [`Error::QuotaExceeded`] (taking nothing).
    pub(crate) fn admit(&self, tenant: &str, items: usize, bytes: u64) -> Result<TenantGuard> {
        let s = self.state(tenant);
        let l = s.limits;
        if l.memory_quota_mb > 0 {
            let quota = l.memory_quota_mb.saturating_mul(1 << 20);
            if bytes > quota {
                return Err(s.refuse(format!(
                    "the request's {bytes} device bytes exceed the tenant's memory quota of {} MiB",
                    l.memory_quota_mb
                )));
            }
        }
        // Place first (undone below on any refusal), so that concurrent admissions never
        // overshoot the cap or the quota.
        let n = s.in_flight.fetch_add(1, Ordering::AcqRel) + 1;
        let b = s.bytes.fetch_add(bytes, Ordering::AcqRel) + bytes;
        let undo = |s: &TenantState| {
            s.in_flight.fetch_sub(1, Ordering::AcqRel);
            s.bytes.fetch_sub(bytes, Ordering::AcqRel);
        };
        if l.max_concurrent > 0 && n > l.max_concurrent {
            undo(&s);
            return Err(s.refuse(format!(
                "{} requests already in flight (tenants max_concurrent)",
                l.max_concurrent
            )));
        }
        if l.memory_quota_mb > 0 && b > l.memory_quota_mb.saturating_mul(1 << 20) {
            undo(&s);
            return Err(s.refuse(format!(
                "{} MiB of device memory already in flight (tenants memory_quota_mb)",
                l.memory_quota_mb
            )));
        }
        if l.items_per_second > 0.0 {
            let burst = s.burst();
            let mut bucket = s.bucket.lock();
            let now = Instant::now();
            let refill = now.duration_since(bucket.last).as_secs_f64() * l.items_per_second;
            bucket.tokens = (bucket.tokens + refill).min(burst);
            bucket.last = now;
            let want = items as f64;
            if want > bucket.tokens {
                drop(bucket);
                undo(&s);
                return Err(s.refuse(format!(
                    "rate limit of {} items per second (burst {burst}) reached",
                    l.items_per_second
                )));
            }
            bucket.tokens -= want;
        }
        Ok(TenantGuard { state: s, bytes })
    }

    /// Every tenant seen so far, by name.
    pub(crate) fn all_usage(&self) -> Vec<(String, TenantUsage)> {
        let mut all: Vec<(String, TenantUsage)> = self
            .known
            .lock()
            .values()
            .map(|s| {
                (
                    s.name.clone(),
                    TenantUsage {
                        in_flight: s.in_flight.load(Ordering::Acquire),
                        bytes_in_flight: s.bytes.load(Ordering::Acquire),
                        refused: s.refused.load(Ordering::Relaxed),
                    },
                )
            })
            .collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }

    pub(crate) fn usage(&self, tenant: &str) -> Option<TenantUsage> {
        self.known.lock().get(tenant).map(|s| TenantUsage {
            in_flight: s.in_flight.load(Ordering::Acquire),
            bytes_in_flight: s.bytes.load(Ordering::Acquire),
            refused: s.refused.load(Ordering::Relaxed),
        })
    }
}
