//! Path 1: cuFile (GPUDirect Storage), through cudarc's `cufile` bindings (feature `gds`).
//!
//! The driver is opened once per [`crate::Storage`] and its knobs (`storage.gds_*`) applied;
//! then, per file, the `O_DIRECT` descriptor is registered (`cuFileHandleRegister`), the device
//! buffer too where the driver allows (`cuFileBufRegister`; an unregistered buffer still works,
//! through the driver's own bounce buffers), and the range is read or written by the thread pool
//! in `storage.task_size_kb` pieces with `cuFileRead`/`cuFileWrite`. Any refusal is a
//! [`Declined`]: the caller takes the host-staged path for that file and says why.
//!
//! The raw `sys` calls are used rather than cudarc's safe wrappers, because those panic where
//! this crate must return errors (a deregistration `unwrap`, an error code transmuted into an
//! enum it may not belong to).

use std::ffi::c_void;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::sync::OnceLock;

use cudarc::cufile::sys as cf;
use gpubridge_core::config::StorageConfig;
use gpubridge_core::{BackendKind, Error, Result};

use crate::cuda::DeviceSide;
use crate::engine::{self, Job};
use crate::plan::{self, Task};
use crate::{declined, Declined};

fn op_error(e: cf::CUfileOpError) -> String {
    format!("{e:?} ({})", e as u32)
}

/// The cuFile driver, opened on first use.
#[derive(Debug, Default)]
pub(crate) struct Gds {
    opened: OnceLock<std::result::Result<Vec<String>, Declined>>,
}

impl Gds {
    /// Opens the driver once and applies the configured knobs; the knobs the driver refused are
    /// returned as warnings (they do not stop cuFile from being used).
    pub(crate) fn driver(
        &self,
        config: &StorageConfig,
    ) -> std::result::Result<&[String], Declined> {
        match self.opened.get_or_init(|| open(config)) {
            Ok(w) => Ok(w),
            Err(d) => Err(d.clone()),
        }
    }
}

fn open(config: &StorageConfig) -> std::result::Result<Vec<String>, Declined> {
    // SAFETY: only tries to dlopen libcufile; no preconditions.
    if !unsafe { cf::is_culib_present() } {
        return Err(declined(
            "library_missing",
            "libcufile.so.0 not found (GPUDirect Storage is not installed)",
        ));
    }
    // SAFETY: the library is present; cuFileDriverOpen has no other preconditions.
    let err = unsafe { cf::cuFileDriverOpen() };
    if err.err != cf::CUfileOpError::CU_FILE_SUCCESS {
        return Err(declined(
            "driver_open",
            format!("cuFileDriverOpen failed: {}", op_error(err.err)),
        ));
    }
    let mut warnings = Vec::new();
    let mut knob = |name: &str, r: cf::CUfileError| {
        if r.err != cf::CUfileOpError::CU_FILE_SUCCESS {
            warnings.push(format!("{name} refused: {}", op_error(r.err)));
        }
    };
    if let Some(kb) = config.gds_poll_threshold_kb {
        // SAFETY: the driver is open; the setter takes a plain size in KiB.
        let r = unsafe { cf::cuFileDriverSetPollMode(true, kb as usize) };
        knob("cuFileDriverSetPollMode", r);
    }
    if let Some(kb) = config.gds_max_direct_io_kb {
        // SAFETY: as above.
        let r = unsafe { cf::cuFileDriverSetMaxDirectIOSize(kb as usize) };
        knob("cuFileDriverSetMaxDirectIOSize", r);
    }
    if let Some(kb) = config.gds_max_cache_kb {
        // SAFETY: as above.
        let r = unsafe { cf::cuFileDriverSetMaxCacheSize(kb as usize) };
        knob("cuFileDriverSetMaxCacheSize", r);
    }
    if let Some(kb) = config.gds_max_pinned_kb {
        // SAFETY: as above.
        let r = unsafe { cf::cuFileDriverSetMaxPinnedMemSize(kb as usize) };
        knob("cuFileDriverSetMaxPinnedMemSize", r);
    }
    for w in &warnings {
        tracing::warn!("cuFile: {w}");
    }
    Ok(warnings)
}

/// A registered file handle, deregistered on drop.
struct Handle(cf::CUfileHandle_t);

// SAFETY: cuFile handles may be used from any thread (the API is thread-safe); this value only
// passes the handle to cuFile calls.
unsafe impl Send for Handle {}
// SAFETY: as above.
unsafe impl Sync for Handle {}

impl Handle {
    fn register(file: &File) -> std::result::Result<Self, Declined> {
        let mut descr = cf::CUfileDescr_t {
            type_: cf::CUfileFileHandleType::CU_FILE_HANDLE_TYPE_OPAQUE_FD,
            handle: cf::CUfileDescr_t__bindgen_ty_1 {
                fd: file.as_raw_fd(),
            },
            fs_ops: std::ptr::null(),
        };
        let mut handle: cf::CUfileHandle_t = std::ptr::null_mut();
        // SAFETY: `descr` names an open descriptor that outlives the handle (the caller keeps the
        // file open until the handle is dropped); `handle` is a valid out-pointer.
        let err = unsafe { cf::cuFileHandleRegister(&mut handle, &mut descr) };
        if err.err != cf::CUfileOpError::CU_FILE_SUCCESS {
            return Err(declined(
                "handle_register",
                format!("cuFileHandleRegister failed: {}", op_error(err.err)),
            ));
        }
        Ok(Self(handle))
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        // SAFETY: registered above and deregistered exactly once; no I/O is in flight (the
        // transfer's workers have all returned).
        unsafe { cf::cuFileHandleDeregister(self.0) };
    }
}

/// A registered device buffer, deregistered on drop.
struct BufReg(*const c_void);

impl BufReg {
    fn register(side: &DeviceSide) -> std::result::Result<Self, String> {
        let ptr = side.ptr as *const c_void;
        // SAFETY: `ptr..ptr + len` is device memory of the current context that outlives this
        // registration (the caller holds the buffer for the whole transfer).
        let err = unsafe { cf::cuFileBufRegister(ptr, side.len, 0) };
        if err.err != cf::CUfileOpError::CU_FILE_SUCCESS {
            return Err(format!(
                "cuFileBufRegister failed: {} (reading through the driver's bounce buffers)",
                op_error(err.err)
            ));
        }
        Ok(Self(ptr))
    }
}

impl Drop for BufReg {
    fn drop(&mut self) {
        // SAFETY: registered above, deregistered once, after every read into it returned.
        let err = unsafe { cf::cuFileBufDeregister(self.0) };
        if err.err != cf::CUfileOpError::CU_FILE_SUCCESS {
            tracing::warn!("cuFileBufDeregister failed: {}", op_error(err.err));
        }
    }
}

fn io_result(what: &str, n: isize, task: &Task) -> Result<()> {
    if n == task.len as isize {
        return Ok(());
    }
    let why = if n == -1 {
        std::io::Error::last_os_error().to_string()
    } else if n < 0 {
        format!("cuFile error {}", -n)
    } else {
        format!("{n} of {} bytes", task.len)
    };
    Err(Error::Backend {
        backend: BackendKind::Cuda,
        message: format!("{what} at file offset {}: {why}", task.file_offset),
        transient: false,
    })
}

struct GdsIo<'a> {
    handle: &'a Handle,
    side: &'a DeviceSide,
    write: bool,
}

impl Job for GdsIo<'_> {
    type Piece = ();
    type Worker = ();

    fn worker(&self) -> Result<()> {
        self.side
            .ctx
            .bind_to_thread()
            .map_err(|e| crate::cuda::driver_error("binding the context", e))
    }

    fn run(&self, (): &mut (), task: &Task, (): ()) -> Result<()> {
        if task.buf_offset + task.len > self.side.len {
            return Err(Error::Backend {
                backend: BackendKind::Cuda,
                message: "cuFile task outside the buffer".to_owned(),
                transient: false,
            });
        }
        let base = self.side.ptr as *mut c_void;
        let (file_offset, buf_offset) =
            (task.file_offset as cf::off_t, task.buf_offset as cf::off_t);
        if self.write {
            // SAFETY: the handle is registered; `base + buf_offset .. + len` lies inside the
            // source buffer (checked above), which outlives the call.
            let n =
                unsafe { cf::cuFileWrite(self.handle.0, base, task.len, file_offset, buf_offset) };
            io_result("cuFileWrite", n, task)
        } else {
            // SAFETY: as above, for the destination buffer.
            let n =
                unsafe { cf::cuFileRead(self.handle.0, base, task.len, file_offset, buf_offset) };
            io_result("cuFileRead", n, task)
        }
    }

    fn finish(&self, (): ()) -> Result<()> {
        Ok(())
    }
}

/// One cuFile transfer between `file` (an `O_DIRECT` descriptor) and `side`: bytes
/// `file_offset..file_offset + side.len` of the file. Returns a note when the buffer could not
/// be registered.
pub(crate) fn transfer(
    pool: &rayon::ThreadPool,
    workers: usize,
    task_size: usize,
    file: &File,
    file_offset: u64,
    side: &DeviceSide,
    write: bool,
) -> std::result::Result<Option<String>, Declined> {
    let handle = Handle::register(file)?;
    side.wait_on_host()
        .map_err(|e| declined(if write { "write" } else { "read" }, e.to_string()))?;
    let (reg, note) = match BufReg::register(side) {
        Ok(r) => (Some(r), None),
        Err(why) => (None, Some(why)),
    };
    let tasks = plan::split(file_offset, side.len, task_size)
        .into_iter()
        .map(|t| (t, ()))
        .collect();
    let io = GdsIo {
        handle: &handle,
        side,
        write,
    };
    let r = engine::run(pool, engine::Depth::Fixed(workers), &io, tasks);
    drop(reg);
    drop(handle);
    r.map_err(|e| declined(if write { "write" } else { "read" }, e.to_string()))?;
    Ok(note)
}
