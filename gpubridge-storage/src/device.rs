//! Buffers of backends that implement core's [`Device`] trait (the wgpu backend, the CPU
//! backend) on the other side of a transfer: each worker reads a bounce buffer's worth and hands
//! it to [`Device::write`] (wgpu queues it, so the bounce buffer is free at once), or fills its
//! bounce buffer with [`Device::read`] and writes that to the file.

use gpubridge_core::device::{Api, Device};
use gpubridge_core::{Error, Result};
use parking_lot::Mutex;

use crate::engine::{AlignedBuf, Job};
use crate::file::{Source, Target};
use crate::plan::Task;

/// A device buffer's byte range that a load writes into. Implemented by [`DeviceRange`]; implement
/// it for any other memory a load should fill.
pub trait DeviceWrite: Send {
    /// Bytes in the range.
    fn len(&self) -> usize;

    /// Whether the range is empty.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Copies `bytes` to `offset` of the range. The bytes may be reused once this returns.
    ///
    /// # Errors
    /// The backend's errors.
    fn write_at(&mut self, offset: usize, bytes: &[u8]) -> Result<()>;

    /// Waits until every write has reached the device.
    ///
    /// # Errors
    /// The backend's errors.
    fn flush(&mut self) -> Result<()>;
}

/// A device buffer's byte range that a save reads from. Implemented by [`DeviceView`].
pub trait DeviceRead: Sync {
    /// Bytes in the range.
    fn len(&self) -> usize;

    /// Whether the range is empty.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Fills `dst` with the bytes at `offset` of the range; complete on return.
    ///
    /// # Errors
    /// The backend's errors.
    fn read_at(&self, offset: usize, dst: &mut [u8]) -> Result<()>;
}

fn check_range(what: &str, offset: usize, len: usize, buffer_len: Option<usize>) -> Result<()> {
    match (offset.checked_add(len), buffer_len) {
        (Some(end), Some(have)) if end > have => Err(Error::InvalidInput {
            kernel: "storage".to_owned(),
            index: None,
            reason: format!("{what}: bytes {offset}..{end} do not fit a {have}-byte buffer"),
        }),
        (None, _) => Err(Error::InvalidInput {
            kernel: "storage".to_owned(),
            index: None,
            reason: format!("{what}: range overflows"),
        }),
        _ => Ok(()),
    }
}

/// `len` bytes at `offset` of a buffer of a [`Device`] (for example a `WgpuDevice`'s
/// `WgpuBuffer`, or the CPU device's `Vec<u8>`), as a load destination.
pub struct DeviceRange<'a, D: Device> {
    device: &'a D,
    buffer: &'a mut <D::A as Api>::Buffer,
    offset: usize,
    len: usize,
}

impl<'a, D: Device> DeviceRange<'a, D> {
    /// The range `offset..offset + len` of `buffer`. `buffer_len` is the buffer's size where the
    /// caller knows it (checked here; the device checks again on every write).
    ///
    /// # Errors
    /// [`Error::InvalidInput`] when the range does not fit `buffer_len`.
    pub fn new(
        device: &'a D,
        buffer: &'a mut <D::A as Api>::Buffer,
        offset: usize,
        len: usize,
        buffer_len: Option<usize>,
    ) -> Result<Self> {
        check_range("load destination", offset, len, buffer_len)?;
        Ok(Self {
            device,
            buffer,
            offset,
            len,
        })
    }
}

impl<D: Device> DeviceWrite for DeviceRange<'_, D> {
    fn len(&self) -> usize {
        self.len
    }

    fn write_at(&mut self, offset: usize, bytes: &[u8]) -> Result<()> {
        check_range("device write", offset, bytes.len(), Some(self.len))?;
        self.device.write(self.buffer, self.offset + offset, bytes)
    }

    fn flush(&mut self) -> Result<()> {
        self.device.synchronize()
    }
}

/// `len` bytes at `offset` of a [`Device`]'s buffer, as a save source.
pub struct DeviceView<'a, D: Device> {
    device: &'a D,
    buffer: &'a <D::A as Api>::Buffer,
    offset: usize,
    len: usize,
}

impl<'a, D: Device> DeviceView<'a, D> {
    /// The range `offset..offset + len` of `buffer`; see [`DeviceRange::new`].
    ///
    /// # Errors
    /// [`Error::InvalidInput`] when the range does not fit `buffer_len`.
    pub fn new(
        device: &'a D,
        buffer: &'a <D::A as Api>::Buffer,
        offset: usize,
        len: usize,
        buffer_len: Option<usize>,
    ) -> Result<Self> {
        check_range("save source", offset, len, buffer_len)?;
        Ok(Self {
            device,
            buffer,
            offset,
            len,
        })
    }
}

impl<D: Device> DeviceRead for DeviceView<'_, D> {
    fn len(&self) -> usize {
        self.len
    }

    fn read_at(&self, offset: usize, dst: &mut [u8]) -> Result<()> {
        check_range("device read", offset, dst.len(), Some(self.len))?;
        self.device.read(self.buffer, self.offset + offset, dst)?;
        self.device.synchronize()
    }
}

/// Load into a [`DeviceWrite`].
pub(crate) struct DeviceLoad<'s, 'd> {
    pub(crate) src: &'s Source,
    pub(crate) dst: Mutex<&'d mut dyn DeviceWrite>,
    pub(crate) bounce: usize,
}

impl Job for DeviceLoad<'_, '_> {
    type Piece = ();
    type Worker = AlignedBuf;

    fn worker(&self) -> Result<AlignedBuf> {
        Ok(AlignedBuf::new(self.bounce))
    }

    fn run(&self, bounce: &mut AlignedBuf, task: &Task, (): ()) -> Result<()> {
        let step = bounce.len();
        let mut done = 0;
        while done < task.len {
            let n = (task.len - done).min(step);
            let staged = bounce.slice_mut(n);
            self.src
                .read_exact_at(staged, task.file_offset + done as u64)?;
            self.dst.lock().write_at(task.buf_offset + done, staged)?;
            done += n;
        }
        Ok(())
    }

    fn finish(&self, _: AlignedBuf) -> Result<()> {
        Ok(())
    }
}

/// Save from a [`DeviceRead`].
pub(crate) struct DeviceSave<'t, 'd> {
    pub(crate) dst: &'t Target,
    pub(crate) src: &'d dyn DeviceRead,
    pub(crate) bounce: usize,
}

impl Job for DeviceSave<'_, '_> {
    type Piece = ();
    type Worker = AlignedBuf;

    fn worker(&self) -> Result<AlignedBuf> {
        Ok(AlignedBuf::new(self.bounce))
    }

    fn run(&self, bounce: &mut AlignedBuf, task: &Task, (): ()) -> Result<()> {
        let step = bounce.len();
        let mut done = 0;
        while done < task.len {
            let n = (task.len - done).min(step);
            let staged = bounce.slice_mut(n);
            self.src.read_at(task.buf_offset + done, staged)?;
            self.dst
                .write_all_at(staged, task.file_offset + done as u64)?;
            done += n;
        }
        Ok(())
    }

    fn finish(&self, _: AlignedBuf) -> Result<()> {
        Ok(())
    }
}
