//! A per-device circuit breaker: closed -> open after repeated failures -> half-open probe ->
//! closed again on success.

use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// The state of a circuit, as reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CircuitState {
    /// Work flows.
    Closed,
    /// One probe is allowed through to test the device.
    HalfOpen,
    /// No work is sent to the device until the open period ends.
    Open,
}

impl CircuitState {
    /// The gauge value exported as `gpubridge_circuit_state`: 0 closed, 1 half-open, 2 open.
    pub fn gauge(self) -> f64 {
        match self {
            CircuitState::Closed => 0.0,
            CircuitState::HalfOpen => 1.0,
            CircuitState::Open => 2.0,
        }
    }
}

#[derive(Debug)]
enum Inner {
    Closed { failures: u32 },
    Open { until: Instant },
    HalfOpen { probing: bool },
}

/// The admission decision for one attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Send the work.
    Allowed,
    /// Send the work; it is the half-open probe.
    Probe,
    /// Do not send it.
    Rejected,
}

/// A circuit breaker for one device. Thread-safe; every method takes the current time so that
/// tests can drive it without sleeping.
#[derive(Debug)]
pub struct CircuitBreaker {
    inner: Mutex<Inner>,
    threshold: u32,
    open_for: Duration,
}

impl CircuitBreaker {
    /// A closed breaker that opens after `threshold` failures in a row and stays open `open_for`.
    pub fn new(threshold: u32, open_for: Duration) -> Self {
        Self {
            inner: Mutex::new(Inner::Closed { failures: 0 }),
            threshold: threshold.max(1),
            open_for,
        }
    }

    /// Whether an attempt may go to the device now.
    pub fn admit(&self, now: Instant) -> Admission {
        let mut g = self.inner.lock();
        match *g {
            Inner::Closed { .. } => Admission::Allowed,
            Inner::Open { until } if now >= until => {
                *g = Inner::HalfOpen { probing: true };
                Admission::Probe
            }
            Inner::Open { .. } => Admission::Rejected,
            Inner::HalfOpen { probing: false } => {
                *g = Inner::HalfOpen { probing: true };
                Admission::Probe
            }
            Inner::HalfOpen { probing: true } => Admission::Rejected,
        }
    }

    /// Whether [`CircuitBreaker::admit`] would let an attempt through at `now`, without taking
    /// the half-open probe slot: what readiness reports.
    pub fn admits(&self, now: Instant) -> bool {
        match *self.inner.lock() {
            Inner::Closed { .. } => true,
            Inner::Open { until } => now >= until,
            Inner::HalfOpen { probing } => !probing,
        }
    }

    /// Records a success: the circuit closes.
    pub fn on_success(&self) {
        *self.inner.lock() = Inner::Closed { failures: 0 };
    }

    /// Records a device failure: counts towards opening, or re-opens a half-open circuit.
    pub fn on_failure(&self, now: Instant) {
        let mut g = self.inner.lock();
        *g = match *g {
            Inner::Closed { failures } if failures + 1 < self.threshold => Inner::Closed {
                failures: failures + 1,
            },
            _ => Inner::Open {
                until: now + self.open_for,
            },
        };
    }

    /// Records an attempt that told nothing about the device (an unsupported kernel, a caller
    /// error): a probe slot is released, nothing else changes.
    pub fn on_neutral(&self) {
        let mut g = self.inner.lock();
        if let Inner::HalfOpen { probing: true } = *g {
            *g = Inner::HalfOpen { probing: false };
        }
    }

    /// The state now.
    pub fn state(&self) -> CircuitState {
        match *self.inner.lock() {
            Inner::Closed { .. } => CircuitState::Closed,
            Inner::Open { .. } => CircuitState::Open,
            Inner::HalfOpen { .. } => CircuitState::HalfOpen,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_threshold_probes_then_closes() {
        let t0 = Instant::now();
        let b = CircuitBreaker::new(3, Duration::from_millis(100));
        for _ in 0..2 {
            b.on_failure(t0);
            assert_eq!(b.state(), CircuitState::Closed);
        }
        b.on_failure(t0);
        assert_eq!(b.state(), CircuitState::Open);
        assert_eq!(b.admit(t0 + Duration::from_millis(50)), Admission::Rejected);
        assert!(!b.admits(t0 + Duration::from_millis(50)));
        assert!(b.admits(t0 + Duration::from_millis(150)));
        let later = t0 + Duration::from_millis(150);
        assert_eq!(b.admit(later), Admission::Probe);
        assert_eq!(b.state(), CircuitState::HalfOpen);
        // Only one probe at a time.
        assert_eq!(b.admit(later), Admission::Rejected);
        assert!(!b.admits(later));
        b.on_success();
        assert_eq!(b.state(), CircuitState::Closed);
        assert_eq!(b.admit(later), Admission::Allowed);
    }

    #[test]
    fn failed_probe_reopens_and_neutral_releases_probe() {
        let t0 = Instant::now();
        let b = CircuitBreaker::new(1, Duration::from_millis(10));
        b.on_failure(t0);
        let t1 = t0 + Duration::from_millis(20);
        assert_eq!(b.admit(t1), Admission::Probe);
        b.on_failure(t1);
        assert_eq!(b.state(), CircuitState::Open);
        assert_eq!(b.admit(t1 + Duration::from_millis(5)), Admission::Rejected);
        let t2 = t1 + Duration::from_millis(20);
        assert_eq!(b.admit(t2), Admission::Probe);
        b.on_neutral();
        assert_eq!(b.admit(t2), Admission::Probe);
    }

    #[test]
    fn success_resets_failure_count() {
        let t0 = Instant::now();
        let b = CircuitBreaker::new(2, Duration::from_secs(1));
        b.on_failure(t0);
        b.on_success();
        b.on_failure(t0);
        assert_eq!(b.state(), CircuitState::Closed);
    }
}
