//! Whether a bridge can take work now: its devices' health and circuits, and its load against
//! its capacity. [`crate::GpuBridge::readiness`] takes the snapshot; a `/readyz` endpoint answers
//! from [`Readiness::check`].

use crate::circuit::CircuitState;
use crate::device::{DeviceId, Health};

/// One device as readiness sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceReadiness {
    /// Which device.
    pub id: DeviceId,
    /// Its health as its backend reports it.
    pub health: Health,
    /// Its circuit breaker's state.
    pub circuit: CircuitState,
    /// Whether its circuit would let an attempt through now (closed, open past its open period,
    /// or half-open with no probe in flight).
    pub admits_work: bool,
    /// Micro-batches running on it now.
    pub in_flight: usize,
}

impl DeviceReadiness {
    /// Healthy (or degraded but working) and admitted by its circuit.
    pub fn usable(&self) -> bool {
        self.admits_work && !matches!(self.health, Health::Lost(_))
    }

    fn why_unusable(&self) -> String {
        match &self.health {
            Health::Lost(why) => format!("{} lost ({why})", self.id),
            _ => match self.circuit {
                CircuitState::Open => format!("{} circuit open", self.id),
                CircuitState::HalfOpen => format!("{} circuit half-open, probe in flight", self.id),
                CircuitState::Closed => format!("{} not admitting work", self.id),
            },
        }
    }
}

/// A snapshot of a bridge's readiness.
#[derive(Debug, Clone, PartialEq)]
pub struct Readiness {
    /// Every device the bridge uses, in fallback order (the CPU's included).
    pub devices: Vec<DeviceReadiness>,
    /// Requests accepted and not yet completed.
    pub pending_requests: usize,
    /// Pending requests at which the bridge counts as saturated (`batching.queue_capacity`).
    pub queue_capacity: usize,
    /// Micro-batches executing now, across devices.
    pub running_micro_batches: usize,
    /// Most micro-batches executing at once (`general.max_concurrent_kernels`); more wait.
    pub max_concurrent_kernels: usize,
}

impl Readiness {
    /// The devices that can take work now.
    pub fn usable_devices(&self) -> impl Iterator<Item = &DeviceReadiness> {
        self.devices.iter().filter(|d| d.usable())
    }

    /// Whether as many requests are pending as the queues may hold.
    pub fn saturated(&self) -> bool {
        self.pending_requests >= self.queue_capacity
    }

    /// `Ok` when at least one device is usable and the bridge is not saturated.
    ///
    /// # Errors
    /// A one-line reason naming every device and why it cannot take work, or the load against
    /// the capacity.
    pub fn check(&self) -> std::result::Result<(), String> {
        if self.devices.is_empty() {
            return Err(
                "no backend is usable (none found, or all left out of fallback.chain)".to_owned(),
            );
        }
        if self.usable_devices().next().is_none() {
            let why: Vec<String> = self
                .devices
                .iter()
                .map(DeviceReadiness::why_unusable)
                .collect();
            return Err(format!("no usable device: {}", why.join(", ")));
        }
        if self.saturated() {
            return Err(format!(
                "saturated: {} requests pending, capacity {} (batching.queue_capacity)",
                self.pending_requests, self.queue_capacity
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::BackendKind;

    fn device(
        index: usize,
        health: Health,
        circuit: CircuitState,
        admits: bool,
    ) -> DeviceReadiness {
        DeviceReadiness {
            id: DeviceId {
                backend: BackendKind::Cuda,
                index,
            },
            health,
            circuit,
            admits_work: admits,
            in_flight: 0,
        }
    }

    fn readiness(devices: Vec<DeviceReadiness>, pending: usize) -> Readiness {
        Readiness {
            devices,
            pending_requests: pending,
            queue_capacity: 4,
            running_micro_batches: 0,
            max_concurrent_kernels: 8,
        }
    }

    #[test]
    fn ready_with_one_usable_device_and_room() {
        let r = readiness(
            vec![
                device(0, Health::Lost("xid 79".into()), CircuitState::Open, false),
                device(
                    1,
                    Health::Degraded("hot".into()),
                    CircuitState::Closed,
                    true,
                ),
            ],
            3,
        );
        assert_eq!(r.check(), Ok(()));
        assert_eq!(r.usable_devices().count(), 1);
    }

    #[test]
    fn not_ready_names_every_device_or_the_load() {
        let r = readiness(
            vec![
                device(0, Health::Lost("xid 79".into()), CircuitState::Closed, true),
                device(1, Health::Healthy, CircuitState::Open, false),
            ],
            0,
        );
        let why = r.check().unwrap_err();
        assert!(
            why.contains("cuda:0 lost (xid 79)") && why.contains("cuda:1 circuit open"),
            "{why}"
        );
        let r = readiness(
            vec![device(0, Health::Healthy, CircuitState::Closed, true)],
            4,
        );
        assert!(r
            .check()
            .unwrap_err()
            .contains("saturated: 4 requests pending"));
        assert!(readiness(Vec::new(), 0).check().is_err());
    }
}
