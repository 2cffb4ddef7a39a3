//! What a bridge holds at one moment: requests pending, batcher queues, micro-batches running,
//! devices' work in flight, tenants' allowances and pooled device memory
//! ([`crate::GpuBridge::accounting`]).
//!
//! Every one of these counts goes back to zero once every request has been answered (or its
//! caller has left); a count that stays above zero is a leak. The tests check it after each test
//! with [`crate::testing::assert_quiescent`].

use crate::device::DeviceId;
use crate::tenants::TenantUsage;

/// One kernel's dynamic batcher at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BatcherOccupancy {
    /// Requests accepted and not yet taken into a batch or dropped (the queue's counter).
    pub queued: usize,
    /// Requests found in the intake queues and the staging lanes (what the counter counts).
    pub staged: usize,
    /// Requests taken into batches and not yet answered.
    pub running: usize,
}

impl BatcherOccupancy {
    /// Whether nothing is queued, staged or running.
    pub fn is_idle(&self) -> bool {
        self.queued == 0 && self.staged == 0 && self.running == 0
    }
}

/// What a bridge holds now (see [`crate::GpuBridge::accounting`]).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Accounting {
    /// Batches ([`crate::BatchGrain::execute`]) started and not yet finished.
    pub pending_batches: usize,
    /// Each kernel's dynamic batcher, by kernel id (kernels that have had single requests).
    pub batchers: Vec<(&'static str, BatcherOccupancy)>,
    /// Micro-batches holding one of the `general.max_concurrent_kernels` device slots.
    pub running_micro_batches: usize,
    /// Micro-batches waiting for a device slot (bounded by `batching.batch_queue_capacity` for
    /// new `execute` requests).
    pub waiting_micro_batches: usize,
    /// Micro-batches submitted to each device and not yet completed.
    pub device_in_flight: Vec<(DeviceId, usize)>,
    /// Each tenant seen so far.
    pub tenants: Vec<(String, TenantUsage)>,
    /// Pooled device memory rented out now, for devices whose backend has a pool
    /// ([`crate::Backend::memory_in_use`]).
    pub device_memory_in_use: Vec<(DeviceId, u64)>,
}

impl Accounting {
    /// Every count that is not zero, one line each (empty when the bridge holds nothing).
    pub fn leaks(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.pending_batches > 0 {
            out.push(format!("{} batches pending", self.pending_batches));
        }
        for (kernel, b) in &self.batchers {
            if !b.is_idle() {
                out.push(format!(
                    "batcher of {kernel}: {} queued, {} staged, {} running",
                    b.queued, b.staged, b.running
                ));
            }
        }
        if self.running_micro_batches > 0 {
            out.push(format!(
                "{} micro-batches hold a device slot",
                self.running_micro_batches
            ));
        }
        if self.waiting_micro_batches > 0 {
            out.push(format!(
                "{} micro-batches wait for a device slot",
                self.waiting_micro_batches
            ));
        }
        for (device, n) in &self.device_in_flight {
            if *n > 0 {
                out.push(format!("{device}: {n} micro-batches in flight"));
            }
        }
        for (tenant, u) in &self.tenants {
            if u.in_flight > 0 || u.bytes_in_flight > 0 {
                out.push(format!(
                    "tenant {tenant:?}: {} requests and {} bytes in flight",
                    u.in_flight, u.bytes_in_flight
                ));
            }
        }
        for (device, bytes) in &self.device_memory_in_use {
            if *bytes > 0 {
                out.push(format!("{device}: {bytes} pool bytes rented out"));
            }
        }
        out
    }

    /// Whether the bridge holds nothing: no request, queue entry, permit, tenant allowance or
    /// pooled device memory.
    pub fn is_quiescent(&self) -> bool {
        self.leaks().is_empty()
    }
}
