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

/// Every tenant seen so far, by name (at most `tenants.max_tracked` without an override).
pub(crate) struct Tenants {
    config: TenantsConfig,
    known: Mutex<Known>,
}

struct Known {
    by_name: HashMap<String, Arc<TenantState>>,
    /// Entries without an override.
    tracked: usize,
    /// When the table was last searched for tenants to forget.
    pruned: Option<Instant>,
}

/// The shortest time between two searches for tenants to forget while the table is full, so
/// that a flood of new names costs one search per interval rather than one per request.
const PRUNE_EVERY: std::time::Duration = std::time::Duration::from_millis(100);

impl TenantState {
    /// Whether forgetting it changes nothing: no request holds it and its bucket is full again
    /// (a tenant seen anew starts with a full bucket). Its refusal count goes with it.
    fn forgettable(self: &Arc<Self>, now: Instant) -> bool {
        if Arc::strong_count(self) > 1 || self.in_flight.load(Ordering::Acquire) > 0 {
            return false;
        }
        if self.limits.items_per_second <= 0.0 {
            return true;
        }
        let b = self.bucket.lock();
        let refill = now.duration_since(b.last).as_secs_f64() * self.limits.items_per_second;
        b.tokens + refill >= self.burst()
    }
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
            known: Mutex::new(Known {
                by_name: HashMap::new(),
                tracked: 0,
                pruned: None,
            }),
        }
    }

    fn state(&self, tenant: &str) -> Result<Arc<TenantState>> {
        let mut known = self.known.lock();
        if let Some(s) = known.by_name.get(tenant) {
            return Ok(s.clone());
        }
        let overridden = self.config.overrides.contains_key(tenant);
        if !overridden && known.tracked >= self.config.max_tracked {
            let now = Instant::now();
            if known
                .pruned
                .is_none_or(|t| now.duration_since(t) >= PRUNE_EVERY)
            {
                known.pruned = Some(now);
                let overrides = &self.config.overrides;
                let before = known.by_name.len();
                known
                    .by_name
                    .retain(|name, s| overrides.contains_key(name) || !s.forgettable(now));
                let forgot = before - known.by_name.len();
                known.tracked -= forgot;
            }
            if known.tracked >= self.config.max_tracked {
                return Err(Error::QuotaExceeded {
                    tenant: tenant.to_owned(),
                    reason: format!(
                        "{} other tenants are active (tenants.max_tracked)",
                        self.config.max_tracked
                    ),
                });
            }
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
        known.by_name.insert(tenant.to_owned(), s.clone());
        if !overridden {
            known.tracked += 1;
        }
        Ok(s)
    }

    /// Admits a request of `items` items and `bytes` device bytes for `tenant`, or refuses it
    /// with [`Error::QuotaExceeded`] (taking nothing).
    pub(crate) fn admit(&self, tenant: &str, items: usize, bytes: u64) -> Result<TenantGuard> {
        let s = self.state(tenant)?;
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
            .by_name
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
        self.known.lock().by_name.get(tenant).map(|s| TenantUsage {
            in_flight: s.in_flight.load(Ordering::Acquire),
            bytes_in_flight: s.bytes.load(Ordering::Acquire),
            refused: s.refused.load(Ordering::Relaxed),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::TenantLimits;

    fn tenants(max_tracked: usize, default: TenantLimits, overrides: &[&str]) -> Tenants {
        Tenants::new(TenantsConfig {
            default,
            overrides: overrides
                .iter()
                .map(|n| ((*n).to_owned(), TenantLimits::default()))
                .collect(),
            max_tracked,
        })
    }

    fn names(t: &Tenants) -> Vec<String> {
        t.all_usage().into_iter().map(|(n, _)| n).collect()
    }

    #[test]
    fn a_full_table_forgets_idle_tenants_and_refuses_when_all_are_busy() {
        let t = tenants(2, TenantLimits::default(), &[]);
        let a = t.admit("a", 1, 0).unwrap();
        let _b = t.admit("b", 1, 0).unwrap();
        // Both busy: a third name is refused, and takes nothing.
        let e = t.admit("c", 1, 0).err().expect("refused");
        assert!(
            matches!(&e, Error::QuotaExceeded { tenant, reason } if tenant == "c" && reason.contains("tenants.max_tracked")),
            "{e:?}"
        );
        assert_eq!(names(&t), ["a", "b"]);
        // Known tenants are still served while the table is full.
        drop(t.admit("b", 1, 0).unwrap());
        // Once `a` is idle it can be forgotten (after the pause between searches).
        drop(a);
        std::thread::sleep(PRUNE_EVERY + std::time::Duration::from_millis(20));
        let _c = t.admit("c", 1, 0).unwrap();
        assert_eq!(names(&t), ["b", "c"]);
    }

    #[test]
    fn overridden_tenants_do_not_count_and_are_never_forgotten() {
        let t = tenants(1, TenantLimits::default(), &["vip"]);
        let _x = t.admit("x", 1, 0).unwrap();
        drop(t.admit("vip", 1, 0).unwrap());
        let e = t.admit("y", 1, 0).err().expect("x is busy");
        assert!(matches!(e, Error::QuotaExceeded { .. }), "{e:?}");
        assert_eq!(names(&t), ["vip", "x"]);
    }

    #[test]
    fn a_tenant_whose_bucket_is_not_full_again_is_not_forgotten() {
        let limits = TenantLimits {
            items_per_second: 0.001,
            burst: 1.0,
            ..TenantLimits::default()
        };
        let t = tenants(1, limits, &[]);
        drop(t.admit("r", 1, 0).unwrap());
        // Forgetting `r` would hand it a fresh bucket: it stays, and a new name is refused.
        assert!(t.admit("s", 1, 0).is_err());
        assert_eq!(names(&t), ["r"]);
        let e = t.admit("r", 1, 0).err().expect("r's bucket is empty");
        assert!(
            matches!(&e, Error::QuotaExceeded { reason, .. } if reason.contains("rate limit")),
            "{e:?}"
        );
    }
}
