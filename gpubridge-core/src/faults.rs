//! Fault injection around a real backend, for tests and soaks (feature `fault-injection`).
//!
//! [`FaultInjector`] wraps any [`Backend`] (CUDA, wgpu, the CPU) and, by rule, makes chosen
//! submissions fail or slow down, so that recovery is exercised on the real executors under load:
//!
//! - **launch failure** and **allocation failure**: the submission is refused with
//!   [`Error::Backend`] or [`Error::OutOfMemory`] (the work never starts);
//! - **copy failure**: the work runs on the device, and its completion is handed an
//!   [`Error::Backend`] instead of its outputs (as if the copy back failed);
//! - **device lost**: the device reports [`Health::Lost`] and refuses work with
//!   [`Error::DeviceLost`] until [`FaultInjector::heal`];
//! - **slow**: the work is held back for a while before it runs (plans: before completion, on the
//!   device's executor thread, which is what a slow device looks like to the bridge).
//!
//! A rule fires at a rate (each submission independently), on the Nth submission, or on every
//! Nth. Every rule is counted ([`FaultInjector::injected`]).

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use rand::{Rng, SeedableRng};

use crate::device::{Backend, BackendKind, DeviceInfo, Health, Work};
use crate::error::{Error, Result};
use crate::kernel::KernelSources;
use crate::plan::PlanTarget;

/// What an injected fault does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InjectedFault {
    /// The launch is refused ([`Error::Backend`]).
    LaunchFailure,
    /// The allocation fails ([`Error::OutOfMemory`]).
    OutOfMemory,
    /// The work runs, then its results are lost ([`Error::Backend`] at completion).
    CopyFailure,
    /// The device is lost until healed ([`Error::DeviceLost`], [`Health::Lost`]).
    DeviceLost,
    /// The work is held back this long first.
    Slow(Duration),
}

/// When a rule fires.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Trigger {
    /// Each submission with this probability (0 to 1).
    Rate(f64),
    /// The Nth submission after the rule was added only (counted from 1 across devices).
    Nth(u64),
    /// Every Nth submission after the rule was added.
    EveryNth(u64),
}

/// A real backend with faults injected by rule (see the module documentation).
pub struct FaultInjector {
    inner: Arc<dyn Backend>,
    /// Each rule with the submission count when it was added.
    rules: Mutex<Vec<(InjectedFault, Trigger, u64)>>,
    rng: Mutex<rand::rngs::SmallRng>,
    calls: AtomicU64,
    lost: Vec<AtomicBool>,
    injected: AtomicUsize,
}

impl FaultInjector {
    /// Wraps `inner` with no rules (it behaves as `inner` until [`FaultInjector::inject`]).
    pub fn wrap(inner: Arc<dyn Backend>) -> Arc<Self> {
        let devices = inner.devices().len();
        Arc::new(Self {
            inner,
            rules: Mutex::new(Vec::new()),
            rng: Mutex::new(rand::rngs::SmallRng::seed_from_u64(rand::random())),
            calls: AtomicU64::new(0),
            lost: (0..devices).map(|_| AtomicBool::new(false)).collect(),
            injected: AtomicUsize::new(0),
        })
    }

    /// Adds a rule.
    pub fn inject(&self, fault: InjectedFault, when: Trigger) {
        let base = self.calls.load(Ordering::Relaxed);
        self.rules.lock().push((fault, when, base));
    }

    /// Removes every rule and brings lost devices back.
    pub fn heal(&self) {
        self.rules.lock().clear();
        for l in &self.lost {
            l.store(false, Ordering::SeqCst);
        }
    }

    /// Faults injected so far.
    pub fn injected(&self) -> usize {
        self.injected.load(Ordering::Relaxed)
    }

    /// The rule that fires for submission number `n`, if any.
    fn fires(&self, n: u64) -> Option<InjectedFault> {
        let rules = self.rules.lock();
        for &(fault, when, base) in rules.iter() {
            let m = n.saturating_sub(base);
            let hit = match when {
                Trigger::Rate(p) => self.rng.lock().random::<f64>() < p,
                Trigger::Nth(k) => m == k,
                Trigger::EveryNth(k) => k > 0 && m > 0 && m.is_multiple_of(k),
            };
            if hit {
                self.injected.fetch_add(1, Ordering::Relaxed);
                return Some(fault);
            }
        }
        None
    }
}

fn injected(backend: BackendKind, what: &str) -> Error {
    Error::Backend {
        backend,
        message: format!("injected fault: {what}"),
        transient: true,
    }
}

impl Backend for FaultInjector {
    fn kind(&self) -> BackendKind {
        self.inner.kind()
    }

    fn devices(&self) -> &[DeviceInfo] {
        self.inner.devices()
    }

    fn plan_target(&self, device: usize) -> Option<PlanTarget> {
        self.inner.plan_target(device)
    }

    fn wakes_early(&self) -> bool {
        self.inner.wakes_early()
    }

    fn can_run(&self, sources: &KernelSources) -> bool {
        self.inner.can_run(sources)
    }

    fn memory_budget(&self, device: usize) -> Option<u64> {
        self.inner.memory_budget(device)
    }

    fn health(&self, device: usize) -> Health {
        if self
            .lost
            .get(device)
            .is_some_and(|l| l.load(Ordering::SeqCst))
        {
            return Health::Lost("injected fault: device lost".to_owned());
        }
        self.inner.health(device)
    }

    fn free_memory(&self, device: usize) -> Option<u64> {
        self.inner.free_memory(device)
    }

    fn submit(&self, device: usize, work: Work) -> Result<()> {
        let kind = self.inner.kind();
        let id = self
            .inner
            .devices()
            .get(device)
            .map(|d| d.id.to_string())
            .unwrap_or_default();
        if self
            .lost
            .get(device)
            .is_some_and(|l| l.load(Ordering::SeqCst))
        {
            return Err(Error::DeviceLost {
                device: id,
                reason: "injected fault: device lost".to_owned(),
            });
        }
        let n = self.calls.fetch_add(1, Ordering::Relaxed) + 1;
        let work = match self.fires(n) {
            None => work,
            Some(InjectedFault::LaunchFailure) => {
                return Err(injected(kind, "launch failure"));
            }
            Some(InjectedFault::OutOfMemory) => {
                return Err(Error::OutOfMemory {
                    device: id,
                    requested: 0,
                    reason: "injected fault: allocation failure".to_owned(),
                });
            }
            Some(InjectedFault::DeviceLost) => {
                if let Some(l) = self.lost.get(device) {
                    l.store(true, Ordering::SeqCst);
                }
                return Err(Error::DeviceLost {
                    device: id,
                    reason: "injected fault: device lost".to_owned(),
                });
            }
            Some(InjectedFault::CopyFailure) => match work {
                Work::Plan {
                    plan,
                    sources,
                    complete,
                } => Work::Plan {
                    plan,
                    sources,
                    complete: Box::new(move |_outputs| {
                        complete(Err(injected(kind, "copy of the results failed")))
                    }),
                },
                // The CPU form has no copies: its launch fails instead.
                Work::Cpu(_) => return Err(injected(kind, "launch failure")),
            },
            Some(InjectedFault::Slow(d)) => match work {
                Work::Plan {
                    plan,
                    sources,
                    complete,
                } => Work::Plan {
                    plan,
                    sources,
                    complete: Box::new(move |outputs| {
                        std::thread::sleep(d);
                        complete(outputs)
                    }),
                },
                Work::Cpu(job) => Work::Cpu(Box::new(move |ctx| {
                    std::thread::sleep(d);
                    job(ctx)
                })),
            },
        };
        self.inner.submit(device, work)
    }
}
