//! Helpers for tests of the runtime itself: a backend that fails on demand, and the check that a
//! bridge holds nothing once a test is done ([`assert_quiescent`]).
//!
//! [`FaultInjectingBackend`] is a test double, named as one. It runs kernels' real CPU forms on
//! its own pool but reports itself as whichever backend kind a test names, with as many devices
//! as asked, and fails chosen calls with chosen errors. It exists so that CI machines without a
//! GPU can prove the fallback chain, circuit breakers and splitting; it never stands in for a
//! device in anything but such a test.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;

use crate::cpu::CpuContext;
use crate::device::{Backend, BackendKind, DeviceId, DeviceInfo, DeviceType, Health, Work};
use crate::error::{Error, Result};
use crate::plan::PlanTarget;
use crate::GpuBridge;

/// How long [`assert_quiescent`] waits for the counts to reach zero: answers reach callers before
/// an executor has given its buffers back or a batcher runner has counted its batch out.
const QUIESCE_WITHIN: std::time::Duration = std::time::Duration::from_secs(10);

/// Checks that `bridge` holds nothing: no batch pending, every batcher's queue, staging and
/// running counts at zero, no device slot held or waited for, no micro-batch in flight on any device, no
/// tenant with requests or bytes in flight, and no pooled device memory rented out
/// ([`GpuBridge::accounting`]). Waits up to 10 seconds for the counts to settle first.
///
/// Call it at the end of every test that builds a bridge, once every request is answered.
///
/// # Errors
/// The counts that stayed above zero, one line each.
pub fn check_quiescent(bridge: &GpuBridge) -> std::result::Result<(), Vec<String>> {
    let until = std::time::Instant::now() + QUIESCE_WITHIN;
    loop {
        let leaks = bridge.accounting().leaks();
        if leaks.is_empty() {
            return Ok(());
        }
        if std::time::Instant::now() >= until {
            return Err(leaks);
        }
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
}

/// [`check_quiescent`] as a test assertion.
///
/// # Panics
/// When the bridge still holds something after 10 seconds: a leak in the runtime, listed in the
/// message.
#[track_caller]
pub fn assert_quiescent(bridge: &GpuBridge) {
    if let Err(leaks) = check_quiescent(bridge) {
        panic!(
            "the bridge is not back to zero after the test:\n  {}",
            leaks.join("\n  ")
        );
    }
}

/// Which submissions fail.
#[derive(Debug, Clone, PartialEq)]
pub enum Fault {
    /// None: every submission runs.
    Healthy,
    /// Every submission to these devices fails.
    Always(Vec<usize>),
    /// The first `n` submissions (counted across devices) fail.
    FirstN(usize),
}

/// The error an injected fault produces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultKind {
    /// [`Error::DeviceLost`].
    DeviceLost,
    /// [`Error::OutOfMemory`].
    OutOfMemory,
    /// [`Error::Unsupported`].
    Unsupported,
    /// [`Error::Backend`] (a launch failure).
    LaunchFailure,
}

/// A fault-injecting test backend (see the module documentation).
pub struct FaultInjectingBackend {
    kind: BackendKind,
    devices: Vec<DeviceInfo>,
    ctx: CpuContext,
    fault: Mutex<(Fault, FaultKind)>,
    submissions: AtomicUsize,
    per_device: Vec<AtomicUsize>,
    budget: Option<u64>,
    free: Mutex<Vec<Option<u64>>>,
    lost: Mutex<Vec<Option<String>>>,
    /// While `Some`, accepted CPU jobs wait here instead of running (see `hold`).
    held: Mutex<Option<Vec<crate::device::CpuJob>>>,
}

impl FaultInjectingBackend {
    /// A healthy backend reporting itself as `kind` with `devices` devices.
    ///
    /// # Errors
    /// If its thread pool cannot start.
    pub fn new(kind: BackendKind, devices: usize) -> Result<Arc<Self>> {
        Self::with_budget(kind, devices, None)
    }

    /// As [`FaultInjectingBackend::new`], with a per-micro-batch memory budget (to test splitting).
    ///
    /// # Errors
    /// If its thread pool cannot start.
    pub fn with_budget(
        kind: BackendKind,
        devices: usize,
        budget: Option<u64>,
    ) -> Result<Arc<Self>> {
        let devices = (0..devices)
            .map(|index| DeviceInfo {
                id: DeviceId {
                    backend: kind,
                    index,
                },
                name: format!("fault-injecting test device {index}"),
                device_type: DeviceType::Cpu,
                total_memory: 0,
                compute_units: 1,
                compute_capability: None,
                details: "test double: runs CPU forms, fails on demand".to_owned(),
            })
            .collect::<Vec<_>>();
        let per_device = devices.iter().map(|_| AtomicUsize::new(0)).collect();
        let free = Mutex::new(vec![None; devices.len()]);
        let lost = Mutex::new(vec![None; devices.len()]);
        Ok(Arc::new(Self {
            kind,
            devices,
            ctx: CpuContext::new(2)?,
            fault: Mutex::new((Fault::Healthy, FaultKind::DeviceLost)),
            submissions: AtomicUsize::new(0),
            per_device,
            budget,
            free,
            lost,
            held: Mutex::new(None),
        }))
    }

    /// Sets which submissions fail, and how.
    pub fn inject(&self, fault: Fault, kind: FaultKind) {
        *self.fault.lock() = (fault, kind);
    }

    /// Sets the free memory `device` reports (`None`: unknown).
    pub fn set_free_memory(&self, device: usize, bytes: Option<u64>) {
        if let Some(slot) = self.free.lock().get_mut(device) {
            *slot = bytes;
        }
    }

    /// Marks `device` lost with `reason` (its health reports [`Health::Lost`] and submissions to
    /// it fail with [`Error::DeviceLost`]), or healthy again with `None`.
    pub fn set_lost(&self, device: usize, reason: Option<&str>) {
        if let Some(slot) = self.lost.lock().get_mut(device) {
            *slot = reason.map(str::to_owned);
        }
    }

    /// Holds accepted work instead of running it, until [`FaultInjectingBackend::release`]: the
    /// requests stay pending, as behind a slow device, for tests of load and readiness.
    pub fn hold(&self) {
        let mut held = self.held.lock();
        if held.is_none() {
            *held = Some(Vec::new());
        }
    }

    /// Jobs held now.
    pub fn held(&self) -> usize {
        self.held.lock().as_ref().map_or(0, Vec::len)
    }

    /// Runs the held work and stops holding; returns how many jobs were held.
    pub fn release(&self) -> usize {
        let jobs = self.held.lock().take().unwrap_or_default();
        let n = jobs.len();
        for job in jobs {
            let ctx = self.ctx.clone();
            self.ctx.spawn(move || job(&ctx));
        }
        n
    }

    /// Submissions so far (failed ones included).
    pub fn submissions(&self) -> usize {
        self.submissions.load(Ordering::SeqCst)
    }

    /// Submissions so far to `device` (failed ones included).
    pub fn submissions_to(&self, device: usize) -> usize {
        self.per_device
            .get(device)
            .map_or(0, |c| c.load(Ordering::SeqCst))
    }

    fn error(&self, kind: FaultKind, device: usize) -> Error {
        let label = self.devices[device].id.to_string();
        match kind {
            FaultKind::DeviceLost => Error::DeviceLost {
                device: label,
                reason: "injected fault".to_owned(),
            },
            FaultKind::OutOfMemory => Error::OutOfMemory {
                device: label,
                requested: 0,
                reason: "injected fault".to_owned(),
            },
            FaultKind::Unsupported => Error::Unsupported {
                backend: self.kind,
                what: "injected fault".to_owned(),
            },
            FaultKind::LaunchFailure => Error::Backend {
                backend: self.kind,
                message: "injected launch failure".to_owned(),
                transient: false,
            },
        }
    }
}

impl Backend for FaultInjectingBackend {
    fn kind(&self) -> BackendKind {
        self.kind
    }

    fn devices(&self) -> &[DeviceInfo] {
        &self.devices
    }

    fn plan_target(&self, _device: usize) -> Option<PlanTarget> {
        None
    }

    fn can_run(&self, _sources: &crate::KernelSources) -> bool {
        true
    }

    fn memory_budget(&self, _device: usize) -> Option<u64> {
        self.budget
    }

    fn health(&self, device: usize) -> Health {
        match self.lost.lock().get(device).cloned().flatten() {
            Some(why) => Health::Lost(why),
            None => Health::Healthy,
        }
    }

    fn free_memory(&self, device: usize) -> Option<u64> {
        self.free.lock().get(device).copied().flatten()
    }

    fn submit(&self, device: usize, work: Work) -> Result<()> {
        let n = self.submissions.fetch_add(1, Ordering::SeqCst);
        if let Some(c) = self.per_device.get(device) {
            c.fetch_add(1, Ordering::SeqCst);
        }
        let (fault, kind) = self.fault.lock().clone();
        let fails = match fault {
            Fault::Healthy => false,
            Fault::Always(devs) => devs.contains(&device),
            Fault::FirstN(k) => n < k,
        };
        if fails {
            return Err(self.error(kind, device));
        }
        if let Some(why) = self.lost.lock().get(device).cloned().flatten() {
            return Err(Error::DeviceLost {
                device: self.devices[device].id.to_string(),
                reason: why,
            });
        }
        match work {
            Work::Cpu(job) => {
                if let Some(held) = self.held.lock().as_mut() {
                    held.push(job);
                    return Ok(());
                }
                let ctx = self.ctx.clone();
                self.ctx.spawn(move || job(&ctx));
                Ok(())
            }
            Work::Plan { .. } => Err(Error::Unsupported {
                backend: self.kind,
                what: "plans".to_owned(),
            }),
        }
    }
}

/// Fault injection for tests, named as such: [`crate::kernels::VectorAdd`] whose own host code
/// panics on poison items wherever they sit in a batch. Its packers panic ("poisoned input") for
/// a batch holding a pair whose first value is [`PoisonAdd::IN_PACKER`], its unpacking panics
/// ("poisoned output") for one holding a pair whose first value is [`PoisonAdd::IN_UNPACK`];
/// every form is otherwise `VectorAdd`'s (its CPU form never panics). For tests of how a kernel's
/// panic on one request is kept from the others.
pub struct PoisonAdd;

impl PoisonAdd {
    /// A pair whose first value is this makes the packers panic.
    pub const IN_PACKER: f32 = -7.0;
    /// A pair whose first value is this makes the unpacking panic.
    pub const IN_UNPACK: f32 = -9.0;

    fn holds(inputs: &[crate::kernels::VectorPair], poison: f32) -> bool {
        inputs.iter().any(|p| p.a.first() == Some(&poison))
    }

    /// Checks the answers of `pairs` sent as single requests that shared one batch of `batch` on
    /// `backend`: each poison pair's caller got [`Error::KernelPanicked`] from `backend` with the
    /// panic's message, every other caller its exact sums from `backend` and a batch of `batch`.
    ///
    /// # Panics
    /// On the first answer that is not so (a test failure), naming the caller and `context`.
    pub fn check_singles(
        pairs: &[crate::kernels::VectorPair],
        answers: Vec<Result<crate::SingleResult<Vec<f32>>>>,
        backend: BackendKind,
        batch: usize,
        context: &str,
    ) {
        assert_eq!(pairs.len(), answers.len(), "{context}");
        for (i, (pair, answer)) in pairs.iter().zip(answers).enumerate() {
            let at = format!("{context}, caller {i}");
            let poison = pair.a.first().copied();
            match answer {
                Ok(r) => {
                    assert!(
                        poison != Some(Self::IN_PACKER) && poison != Some(Self::IN_UNPACK),
                        "{at}: a poison item answered"
                    );
                    let want: Vec<f32> = pair.a.iter().zip(&pair.b).map(|(x, y)| x + y).collect();
                    assert_eq!(r.output, want, "{at}");
                    assert_eq!(r.batch_size, batch, "{at}");
                    assert_eq!(r.backend, Some(backend), "{at}");
                }
                Err(Error::KernelPanicked {
                    backend: from,
                    message,
                    ..
                }) => {
                    assert_eq!(from, backend, "{at}");
                    let want = match poison {
                        Some(p) if p == Self::IN_PACKER => "poisoned input",
                        Some(p) if p == Self::IN_UNPACK => "poisoned output",
                        _ => panic!("{at}: a good item failed: {message}"),
                    };
                    assert_eq!(message, want, "{at}");
                }
                Err(e) => panic!("{at}: {e:?}"),
            }
        }
    }
}

impl crate::Kernel for PoisonAdd {
    type Input = crate::kernels::VectorPair;
    type Output = Vec<f32>;
    const ID: &'static str = "testing/poison-add";

    fn sources(&self) -> crate::KernelSources {
        crate::kernels::VectorAdd.sources()
    }

    fn validate(&self, index: usize, input: &Self::Input) -> Result<()> {
        crate::kernels::VectorAdd.validate(index, input)
    }

    fn device_bytes(&self, input: &Self::Input) -> usize {
        crate::kernels::VectorAdd.device_bytes(input)
    }

    fn run_cpu(&self, inputs: &[Self::Input], ctx: &CpuContext) -> Result<Vec<Vec<f32>>> {
        crate::kernels::VectorAdd.run_cpu(inputs, ctx)
    }

    fn plan(&self, inputs: &Arc<[Self::Input]>, target: &PlanTarget) -> Result<crate::Plan> {
        use crate::plan::BufferRole;
        let poison = Self::holds(inputs, Self::IN_PACKER);
        let mut plan = crate::kernels::VectorAdd.plan(inputs, target)?;
        plan.kernel = Self::ID;
        for b in plan
            .buffers
            .iter_mut()
            .filter(|b| matches!(b.role, BufferRole::Input(_)))
        {
            if let BufferRole::Input(pack) = std::mem::replace(&mut b.role, BufferRole::Scratch) {
                b.role = BufferRole::Input(Box::new(move |dst: &mut [u8], at: usize| {
                    assert!(!poison, "poisoned input");
                    pack(dst, at)
                }));
            }
        }
        Ok(plan)
    }

    fn unpack(
        &self,
        inputs: &[Self::Input],
        outputs: &crate::plan::PlanOutputs<'_>,
    ) -> Result<Vec<Vec<f32>>> {
        assert!(!Self::holds(inputs, Self::IN_UNPACK), "poisoned output");
        crate::kernels::VectorAdd.unpack(inputs, outputs)
    }
}
