//! Running one plan on a wgpu device.
//!
//! # Stream ordering
//! The plan is checked against the adapter's limits first (nothing touches the device for a plan
//! it cannot run). Then, under error scopes: buffers are rented from the pool (one storage buffer
//! per plan buffer, one upload buffer for every input and the launches' scalars, one uniform
//! buffer, one readback buffer for every output); inputs are packed into the mapped upload buffer
//! (in parallel pieces when large); one command buffer copies them to their storage buffers, runs
//! every launch in one compute pass (wgpu orders dispatches that share buffers), and copies the
//! outputs to the readback buffer; it is submitted once, the readback buffer is mapped, and the
//! thread waits on `device.poll` for that submission. The outputs are handed over while still
//! mapped (unpacking is one copy), then every buffer goes back to the pool.

use std::num::NonZeroU64;
use std::time::{Duration, Instant};

use gpubridge_core::plan::{
    run_packer, Arg, BufferId, BufferRole, ExecStats, Launch, Packer, Plan, PlanOutputs, Step,
};
use gpubridge_core::{BackendKind, Error, Result};
use parking_lot::MutexGuard;
use rayon::prelude::*;

use super::device::WgpuDevice;
use super::error::Scopes;
use super::memory::{BufferPool, Kind, Pooled};
use super::pipeline::{Pipeline, WgpuModule};

/// Alignment of each region inside the staging buffers.
const REGION_ALIGN: u64 = 256;
/// Bytes packed by one task: small enough to stay in cache on its way to the staging buffer.
const PIECE: usize = 1 << 20;
/// Inputs at least this large are packed by all cores.
const PARALLEL_MIN: usize = 4 << 20;

/// The buffers one plan rents, given back to the pool when dropped (on every path, errors and
/// panics included), unmapped first where a mapping is still open.
struct Lease<'a> {
    pool: MutexGuard<'a, BufferPool>,
    device: &'a wgpu::Device,
    storage: Vec<Pooled>,
    upload: Option<Pooled>,
    uniform: Option<Pooled>,
    readback: Option<Pooled>,
    /// The upload buffer is still mapped (it comes mapped; packing unmaps it).
    upload_mapped: bool,
    /// The readback buffer is mapped (from a completed map until the outputs are handed over).
    readback_mapped: bool,
}

impl Lease<'_> {
    fn rent(&mut self, kind: Kind, bytes: u64) -> Result<Pooled> {
        self.pool.rent(self.device, kind, bytes)
    }
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        if let (true, Some(up)) = (self.upload_mapped, &self.upload) {
            up.buffer.unmap();
        }
        if let (true, Some(rb)) = (self.readback_mapped, &self.readback) {
            rb.buffer.unmap();
        }
        let bufs = self
            .storage
            .drain(..)
            .chain(self.upload.take())
            .chain(self.uniform.take())
            .chain(self.readback.take())
            .collect::<Vec<_>>();
        for b in bufs {
            self.pool.give_back(b);
        }
    }
}

/// Where each piece of a plan lives in the staging buffers.
struct Layout {
    /// `(plan buffer, offset in the upload buffer, length)` of each non-empty input.
    inputs: Vec<(usize, u64, usize)>,
    /// Offset of the launches' scalars in the upload buffer, and their total size.
    uniforms_at: u64,
    uniforms_len: u64,
    /// Per launch: offset and size of its scalars in the uniform buffer, if it has any.
    params: Vec<Option<(u64, u64)>>,
    upload_len: u64,
    /// `(plan buffer, offset in the readback buffer, length)` of each output, in plan order.
    outputs: Vec<(usize, u64, usize)>,
    readback_len: u64,
}

fn round4(n: usize) -> u64 {
    (n as u64).next_multiple_of(4)
}

fn unsupported(what: String) -> Error {
    Error::Unsupported {
        backend: BackendKind::Wgpu,
        what,
    }
}

fn internal(dev: &WgpuDevice, what: &str) -> Error {
    Error::Backend {
        backend: BackendKind::Wgpu,
        message: format!("{}: {what}", dev.label),
        transient: false,
    }
}

/// Runs `plan` with `module`'s pipelines and hands the outputs to `f` (see the module docs).
pub(crate) fn run(
    dev: &WgpuDevice,
    module: &WgpuModule,
    plan: &mut Plan,
    f: &mut dyn FnMut(PlanOutputs<'_>),
) -> Result<()> {
    let taken = Instant::now();
    dev.check_alive()?;
    plan.check()?;
    let launches = check_limits(dev, plan)?;
    let pipelines = launches
        .iter()
        .map(|l| module.pipeline(&dev.device, &dev.label, l.entry))
        .collect::<Result<Vec<_>>>()?;
    let layout = layout(dev, plan, &launches);

    let scopes = Scopes::push(&dev.device);
    let mut lease = Lease {
        pool: dev.pool.lock(),
        device: &dev.device,
        storage: Vec::with_capacity(plan.buffers.len()),
        upload: None,
        uniform: None,
        readback: None,
        upload_mapped: false,
        readback_mapped: false,
    };
    let rented = (|| -> Result<()> {
        for b in &plan.buffers {
            let buf = lease.rent(Kind::Storage, b.len as u64)?;
            lease.storage.push(buf);
        }
        if layout.upload_len > 0 {
            lease.upload = Some(lease.rent(Kind::Upload, layout.upload_len)?);
            lease.upload_mapped = true;
        }
        if layout.uniforms_len > 0 {
            lease.uniform = Some(lease.rent(Kind::Uniform, layout.uniforms_len)?);
        }
        if layout.readback_len > 0 {
            lease.readback = Some(lease.rent(Kind::Readback, layout.readback_len)?);
        }
        Ok(())
    })();
    // Buffer creation may have left errors in the scopes: check before using any of them.
    let scope_result = scopes.check(&dev.label, &format!("renting buffers for {}", plan.kernel));
    rented?;
    scope_result?;

    let packed = Instant::now();
    if let Some(up) = &lease.upload {
        write_upload(dev, &up.buffer, plan, &launches, &layout)?;
        up.buffer.unmap();
        lease.upload_mapped = false;
    }
    let pack_time = packed.elapsed();

    let scopes = Scopes::push(&dev.device);
    let index = encode_and_submit(dev, plan, &launches, &pipelines, &layout, &lease);
    scopes.check(&dev.label, &format!("running {}", plan.kernel))?;
    let index = index?;
    // The inputs are uploaded: what the packers hold (the batch's items) is the request's alone
    // again, to be reused for the outputs where the kernel can.
    plan.release_packers();
    let plan: &Plan = plan;

    let started = Instant::now();
    let (tx, rx) = std::sync::mpsc::channel();
    if let Some(rb) = &lease.readback {
        rb.buffer
            .slice(0..layout.readback_len)
            .map_async(wgpu::MapMode::Read, move |r| {
                let _ = tx.send(r);
            });
    }
    let waited = dev.poll(wgpu::PollType::Wait {
        submission_index: Some(index),
        timeout: None,
    });
    let compute = started.elapsed();
    let mapped = lease.readback.is_none() || matches!(rx.try_recv(), Ok(Ok(())));
    if waited.is_err() || !mapped {
        // The readback mapping is in doubt: release that buffer instead of keeping it.
        if let Some(rb) = lease.readback.take() {
            lease.pool.discard(rb);
        }
        waited?;
        return Err(Error::Backend {
            backend: BackendKind::Wgpu,
            message: format!("{}: the outputs of {} did not map", dev.label, plan.kernel),
            transient: true,
        });
    }
    lease.readback_mapped = lease.readback.is_some();

    let read = Instant::now();
    let view = match &lease.readback {
        Some(rb) => Some(
            rb.buffer
                .slice(0..layout.readback_len)
                .get_mapped_range()
                .map_err(|e| internal(dev, &format!("reading mapped outputs: {e}")))?,
        ),
        None => None,
    };
    let all: &[u8] = view.as_deref().unwrap_or(&[]);
    let mut ids = Vec::with_capacity(layout.outputs.len());
    let mut bytes = Vec::with_capacity(layout.outputs.len());
    for &(i, off, len) in &layout.outputs {
        ids.push(BufferId(i as u32));
        let slice = if len == 0 {
            &[][..]
        } else {
            all.get(off as usize..off as usize + len)
                .ok_or_else(|| internal(dev, "an output lies outside the readback buffer"))?
        };
        bytes.push(slice);
    }
    let read_time = read.elapsed();
    let stats = ExecStats {
        compute,
        transfer: pack_time + read_time,
        graph_replayed: false,
        executor: taken.elapsed(),
        // The upload is written straight into mapped memory while packing, and the copies to
        // and from storage run inside the submission (`compute`): no copy is timed apart.
        pack: pack_time,
        upload: Duration::ZERO,
        download: Duration::ZERO,
    };
    f(PlanOutputs::new(ids, bytes, stats));
    drop(view);
    if let Some(rb) = &lease.readback {
        rb.buffer.unmap();
        lease.readback_mapped = false;
    }
    Ok(())
}

/// Checks a plan against the adapter before anything is rented; returns its launches.
///
/// # Errors
/// [`Error::Unsupported`] for what this adapter cannot run: a BLAS step, a grid beyond the
/// workgroup limit, a buffer beyond the largest buffer, a buffer offset the adapter cannot bind,
/// a 64-bit scalar (WGSL has none), dynamic shared memory, too many storage buffers.
fn check_limits<'p>(dev: &WgpuDevice, plan: &'p Plan) -> Result<Vec<&'p Launch>> {
    let limits = &dev.limits;
    for b in &plan.buffers {
        if round4(b.len) > limits.max_buffer_size {
            return Err(unsupported(format!(
                "{}: buffer {:?} of {} is {} bytes, beyond the adapter's largest buffer ({} bytes)",
                dev.label, b.name, plan.kernel, b.len, limits.max_buffer_size
            )));
        }
    }
    let align = u64::from(limits.min_storage_buffer_offset_alignment).max(1);
    let max_groups = limits.max_compute_workgroups_per_dimension;
    let mut launches = Vec::with_capacity(plan.steps.len());
    for step in &plan.steps {
        let l = match step {
            Step::Launch(l) => l,
            Step::Gemm(_) => {
                return Err(unsupported(format!(
                    "{}: BLAS steps (wgpu has no BLAS; {} planned one)",
                    dev.label, plan.kernel
                )))
            }
        };
        if l.grid.iter().any(|g| *g > max_groups) {
            return Err(unsupported(format!(
                "{}: {} launches {:?} workgroups, beyond the adapter's {max_groups} per dimension",
                dev.label, l.entry, l.grid
            )));
        }
        if l.shared_mem_bytes > 0 {
            return Err(unsupported(format!(
                "{}: dynamic shared memory (WGSL declares workgroup memory in the source)",
                dev.label
            )));
        }
        let mut buffers = 0u32;
        for a in &l.args {
            match a {
                Arg::Buffer { offset, .. } => {
                    buffers += 1;
                    if !(*offset as u64).is_multiple_of(align) {
                        return Err(unsupported(format!(
                            "{}: {} binds a buffer at offset {offset}, not a multiple of the adapter's {align}",
                            dev.label, l.entry
                        )));
                    }
                }
                Arg::U64(_) => {
                    return Err(unsupported(format!(
                        "{}: {} takes a 64-bit scalar (WGSL has no 64-bit integers)",
                        dev.label, l.entry
                    )))
                }
                Arg::U32(_) | Arg::F32(_) => {}
            }
        }
        if buffers > limits.max_storage_buffers_per_shader_stage {
            return Err(unsupported(format!(
                "{}: {} binds {buffers} storage buffers, beyond the adapter's {}",
                dev.label, l.entry, limits.max_storage_buffers_per_shader_stage
            )));
        }
        launches.push(l);
    }
    Ok(launches)
}

fn layout(dev: &WgpuDevice, plan: &Plan, launches: &[&Launch]) -> Layout {
    let mut upload_len = 0u64;
    let mut inputs = Vec::new();
    let mut outputs = Vec::new();
    let mut readback_len = 0u64;
    for (i, b) in plan.buffers.iter().enumerate() {
        match b.role {
            BufferRole::Input(_) if b.len > 0 => {
                inputs.push((i, upload_len, b.len));
                upload_len = (upload_len + round4(b.len)).next_multiple_of(REGION_ALIGN);
            }
            BufferRole::Output => {
                outputs.push((i, readback_len, b.len));
                if b.len > 0 {
                    readback_len = (readback_len + round4(b.len)).next_multiple_of(REGION_ALIGN);
                }
            }
            BufferRole::Input(_) | BufferRole::Scratch => {}
        }
    }
    let slot_align = u64::from(dev.limits.min_uniform_buffer_offset_alignment).max(16);
    let mut uniforms_len = 0u64;
    let params = launches
        .iter()
        .map(|l| {
            let scalars = l
                .args
                .iter()
                .filter(|a| !matches!(a, Arg::Buffer { .. }))
                .count() as u64;
            (scalars > 0).then(|| {
                let size = (4 * scalars).max(16).next_multiple_of(16);
                let at = uniforms_len;
                uniforms_len = (uniforms_len + size).next_multiple_of(slot_align);
                (at, size)
            })
        })
        .collect();
    let uniforms_at = upload_len;
    upload_len += uniforms_len;
    Layout {
        inputs,
        uniforms_at,
        uniforms_len,
        params,
        upload_len,
        outputs,
        readback_len,
    }
}

/// Packs every input (and the launches' scalars) into the mapped upload buffer.
fn write_upload(
    dev: &WgpuDevice,
    upload: &wgpu::Buffer,
    plan: &Plan,
    launches: &[&Launch],
    layout: &Layout,
) -> Result<()> {
    let bad_layout = || internal(dev, "staging layout outside the upload buffer");
    let mut view = upload
        .slice(0..layout.upload_len)
        .get_mapped_range_mut()
        .map_err(|e| internal(dev, &format!("writing the upload buffer: {e}")))?;
    let mut rest = view.slice(..);
    let mut cursor = 0u64;
    // Whole pieces are sized arrays, which (unlike unsized slices) wgpu lets cross threads.
    let mut pieces: Vec<(&Packer, usize, wgpu::WriteOnly<'_, [u8; PIECE]>)> = Vec::new();
    let mut tails: Vec<(&Packer, usize, wgpu::WriteOnly<'_, [u8]>)> = Vec::new();
    let mut total = 0usize;
    for &(i, off, len) in &layout.inputs {
        let BufferRole::Input(pack) = &plan.buffers[i].role else {
            continue;
        };
        let (_, r) = rest
            .split_at_checked((off - cursor) as usize)
            .map_err(|_| bad_layout())?;
        let (region, r) = r.split_at_checked(len).map_err(|_| bad_layout())?;
        rest = r;
        cursor = off + len as u64;
        total += len;
        let (whole, tail) = region.into_chunks::<PIECE>();
        let whole_len = whole.len() * PIECE;
        for (k, piece) in whole.into_iter().enumerate() {
            pieces.push((pack, k * PIECE, piece));
        }
        if !tail.is_empty() {
            tails.push((pack, whole_len, tail));
        }
    }
    if layout.uniforms_len > 0 {
        let (_, r) = rest
            .split_at_checked((layout.uniforms_at - cursor) as usize)
            .map_err(|_| bad_layout())?;
        let (mut region, _) = r
            .split_at_checked(layout.uniforms_len as usize)
            .map_err(|_| bad_layout())?;
        let mut bytes = vec![0u8; layout.uniforms_len as usize];
        for (l, p) in launches.iter().zip(&layout.params) {
            let Some((at, _)) = p else { continue };
            let mut w = *at as usize;
            for a in &l.args {
                let word = match a {
                    Arg::U32(v) => v.to_le_bytes(),
                    Arg::F32(v) => v.to_le_bytes(),
                    Arg::Buffer { .. } | Arg::U64(_) => continue,
                };
                bytes[w..w + 4].copy_from_slice(&word);
                w += 4;
            }
        }
        region.copy_from_slice(&bytes);
    }
    // The first packer that panicked (kernel code): the plan fails with it.
    let panicked = parking_lot::Mutex::new(None);
    let run =
        |scratch: &mut Vec<u8>, pack: &Packer, at: usize, mut dst: wgpu::WriteOnly<'_, [u8]>| {
            let n = dst.len();
            match run_packer(plan.kernel, BackendKind::Wgpu, pack, &mut scratch[..n], at) {
                Ok(()) => dst.copy_from_slice(&scratch[..n]),
                Err(e) => {
                    panicked.lock().get_or_insert(e);
                }
            }
        };
    if total >= PARALLEL_MIN {
        pieces.into_par_iter().for_each_init(
            || vec![0u8; PIECE],
            |s, (pack, at, dst)| run(s, pack, at, dst.into()),
        );
    } else {
        let mut scratch = vec![0u8; total.min(PIECE)];
        for (pack, at, dst) in pieces {
            run(&mut scratch, pack, at, dst.into());
        }
    }
    let mut scratch = vec![0u8; tails.iter().map(|t| t.2.len()).max().unwrap_or(0)];
    for (pack, at, dst) in tails {
        run(&mut scratch, pack, at, dst);
    }
    panicked.into_inner().map_or(Ok(()), Err)
}

/// Records the copies, the launches and the readback copies in one command buffer and submits it.
fn encode_and_submit(
    dev: &WgpuDevice,
    plan: &Plan,
    launches: &[&Launch],
    pipelines: &[std::sync::Arc<Pipeline>],
    layout: &Layout,
    lease: &Lease<'_>,
) -> Result<wgpu::SubmissionIndex> {
    let missing = || internal(dev, "a staging buffer was not rented");
    let mut enc = dev
        .device
        .create_command_encoder(&wgpu::CommandEncoderDescriptor {
            label: Some(plan.kernel),
        });
    if !layout.inputs.is_empty() || layout.uniforms_len > 0 {
        let up = lease.upload.as_ref().ok_or_else(missing)?;
        for &(i, off, len) in &layout.inputs {
            enc.copy_buffer_to_buffer(&up.buffer, off, &lease.storage[i].buffer, 0, round4(len));
        }
        if layout.uniforms_len > 0 {
            let uni = lease.uniform.as_ref().ok_or_else(missing)?;
            enc.copy_buffer_to_buffer(
                &up.buffer,
                layout.uniforms_at,
                &uni.buffer,
                0,
                layout.uniforms_len,
            );
        }
    }
    let max_binding = dev.max_binding() & !3;
    let mut groups = Vec::with_capacity(launches.len());
    for ((l, p), params) in launches.iter().zip(pipelines).zip(&layout.params) {
        let mut entries = Vec::with_capacity(l.args.len());
        for a in &l.args {
            let Arg::Buffer { id, offset } = a else {
                continue;
            };
            let idx = id.0 as usize;
            let (buf, len) = (&lease.storage[idx], plan.buffers[idx].len);
            let offset = *offset as u64;
            // Bind the rest of the (pooled, hence at least 256-byte) buffer, so that even an
            // empty plan buffer binds a valid range; kernels read only what their scalars say.
            let size = (buf.size - offset).min(max_binding);
            if (len as u64).saturating_sub(offset) > size || size < 4 {
                return Err(unsupported(format!(
                    "{}: buffer {:?} of {} cannot be bound from offset {offset} within the adapter's {max_binding}-byte storage binding",
                    dev.label, plan.buffers[idx].name, plan.kernel
                )));
            }
            entries.push(wgpu::BindGroupEntry {
                binding: entries.len() as u32,
                resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                    buffer: &buf.buffer,
                    offset,
                    size: NonZeroU64::new(size),
                }),
            });
        }
        if let Some((at, size)) = params {
            let uni = lease.uniform.as_ref().ok_or_else(missing)?;
            entries.push(wgpu::BindGroupEntry {
                binding: entries.len() as u32,
                resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                    buffer: &uni.buffer,
                    offset: *at,
                    size: NonZeroU64::new(*size),
                }),
            });
        }
        groups.push(dev.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some(l.entry),
            layout: &p.layout,
            entries: &entries,
        }));
    }
    {
        let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
            label: Some(plan.kernel),
            timestamp_writes: None,
        });
        for ((l, p), g) in launches.iter().zip(pipelines).zip(&groups) {
            pass.set_pipeline(&p.pipeline);
            pass.set_bind_group(0, g, &[]);
            pass.dispatch_workgroups(l.grid[0], l.grid[1], l.grid[2]);
        }
    }
    if layout.readback_len > 0 {
        let rb = lease.readback.as_ref().ok_or_else(missing)?;
        for &(i, off, len) in &layout.outputs {
            if len > 0 {
                enc.copy_buffer_to_buffer(
                    &lease.storage[i].buffer,
                    0,
                    &rb.buffer,
                    off,
                    round4(len),
                );
            }
        }
    }
    Ok(dev.queue.submit([enc.finish()]))
}
