//! Host memory on the other side of a transfer (the CPU backend's buffers, any `&mut [u8]`):
//! an aligned piece of the caller's buffer is read into straight from the file; anything else
//! goes through a worker's aligned bounce buffer and a memcpy.

use std::marker::PhantomData;

use gpubridge_core::Result;

use crate::engine::{AlignedBuf, Job};
use crate::file::{Source, Target};
use crate::plan::{Task, ALIGN};

fn aligned(ptr: *const u8) -> bool {
    (ptr as usize).is_multiple_of(ALIGN as usize)
}

/// Splits `buf` into the tasks' disjoint pieces (tasks are in order and cover it exactly).
pub(crate) fn pieces_mut(mut buf: &mut [u8], tasks: Vec<Task>) -> Vec<(Task, &mut [u8])> {
    tasks
        .into_iter()
        .map(|t| {
            let (piece, rest) = std::mem::take(&mut buf).split_at_mut(t.len);
            buf = rest;
            (t, piece)
        })
        .collect()
}

/// Shared pieces of `buf`, one per task.
pub(crate) fn pieces(buf: &[u8], tasks: Vec<Task>) -> Vec<(Task, &[u8])> {
    tasks
        .into_iter()
        .map(|t| (t, &buf[t.buf_offset..t.buf_offset + t.len]))
        .collect()
}

/// Load into host memory whose pieces live for `'a`.
pub(crate) struct HostLoad<'s, 'a> {
    pub(crate) src: &'s Source,
    pub(crate) bounce: usize,
    pub(crate) pieces: PhantomData<&'a ()>,
}

impl<'a> Job for HostLoad<'_, 'a> {
    type Piece = &'a mut [u8];
    type Worker = Option<AlignedBuf>;

    fn worker(&self) -> Result<Self::Worker> {
        Ok(None)
    }

    fn run(&self, bounce: &mut Self::Worker, task: &Task, piece: &'a mut [u8]) -> Result<()> {
        if !task.aligned || aligned(piece.as_ptr()) {
            // Head and tail through the page cache; an aligned body straight into the caller's
            // memory (O_DIRECT where the file system allows it).
            return self.src.read_exact_at(piece, task.file_offset);
        }
        let bounce = bounce.get_or_insert_with(|| AlignedBuf::new(self.bounce));
        let step = bounce.len();
        for (i, chunk) in piece.chunks_mut(step).enumerate() {
            let staged = bounce.slice_mut(chunk.len());
            self.src
                .read_exact_at(staged, task.file_offset + (i * step) as u64)?;
            chunk.copy_from_slice(staged);
        }
        Ok(())
    }

    fn finish(&self, _: Self::Worker) -> Result<()> {
        Ok(())
    }
}

/// Save from host memory whose pieces live for `'a`.
pub(crate) struct HostSave<'t, 'a> {
    pub(crate) dst: &'t Target,
    pub(crate) bounce: usize,
    pub(crate) pieces: PhantomData<&'a ()>,
}

impl<'a> Job for HostSave<'_, 'a> {
    type Piece = &'a [u8];
    type Worker = Option<AlignedBuf>;

    fn worker(&self) -> Result<Self::Worker> {
        Ok(None)
    }

    fn run(&self, bounce: &mut Self::Worker, task: &Task, piece: &'a [u8]) -> Result<()> {
        if !task.aligned || aligned(piece.as_ptr()) {
            return self.dst.write_all_at(piece, task.file_offset);
        }
        let bounce = bounce.get_or_insert_with(|| AlignedBuf::new(self.bounce));
        let step = bounce.len();
        for (i, chunk) in piece.chunks(step).enumerate() {
            let staged = bounce.slice_mut(chunk.len());
            staged.copy_from_slice(chunk);
            self.dst
                .write_all_at(staged, task.file_offset + (i * step) as u64)?;
        }
        Ok(())
    }

    fn finish(&self, _: Self::Worker) -> Result<()> {
        Ok(())
    }
}
