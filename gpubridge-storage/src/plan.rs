//! How a transfer is cut into tasks: the unaligned head and tail of a byte range go through the
//! page cache, the 4 KiB-aligned body through `O_DIRECT` in tasks of `storage.task_size_kb`.

/// `O_DIRECT` alignment of file offsets, lengths and memory addresses on Linux file systems.
pub(crate) const ALIGN: u64 = 4096;

/// One piece of a transfer: `len` bytes of the file at `file_offset`, which are bytes
/// `buf_offset..buf_offset + len` of the buffer on the other side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Task {
    /// Offset in the file.
    pub file_offset: u64,
    /// Offset in the buffer.
    pub buf_offset: usize,
    /// Bytes.
    pub len: usize,
    /// Whether the piece is aligned for `O_DIRECT` (offset and length multiples of [`ALIGN`]).
    pub aligned: bool,
}

/// Cuts `len` bytes starting at `file_offset` into tasks of at most `task_size` bytes (a multiple
/// of [`ALIGN`]): a head up to the first aligned offset, the aligned body, and a tail after the
/// last aligned offset. Tasks are in file order and cover the range exactly once.
pub(crate) fn split(file_offset: u64, len: usize, task_size: usize) -> Vec<Task> {
    let task_size = (task_size as u64).max(ALIGN) / ALIGN * ALIGN;
    let end = file_offset + len as u64;
    let body_start = file_offset.next_multiple_of(ALIGN);
    let body_end = end / ALIGN * ALIGN;
    let mut tasks = Vec::new();
    let mut push = |from: u64, to: u64, aligned: bool| {
        let mut at = from;
        while at < to {
            let n = (to - at).min(task_size);
            tasks.push(Task {
                file_offset: at,
                buf_offset: (at - file_offset) as usize,
                len: n as usize,
                aligned,
            });
            at += n;
        }
    };
    if body_start >= body_end {
        push(file_offset, end, false);
        return tasks;
    }
    push(file_offset, body_start, false);
    push(body_start, body_end, true);
    push(body_end, end, false);
    tasks
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(offset: u64, len: usize, task: usize) -> Vec<Task> {
        let tasks = split(offset, len, task);
        let mut at = offset;
        for t in &tasks {
            assert_eq!(t.file_offset, at, "{tasks:?}");
            assert_eq!(t.buf_offset as u64, at - offset);
            assert!(t.len > 0 && t.len <= task.max(4096));
            if t.aligned {
                assert_eq!(t.file_offset % ALIGN, 0);
                assert_eq!(t.len as u64 % ALIGN, 0);
            }
            at += t.len as u64;
        }
        assert_eq!(at, offset + len as u64);
        tasks
    }

    #[test]
    fn ranges_split_into_head_body_and_tail() {
        assert!(check(0, 0, 8192).is_empty());
        let t = check(0, 100, 8192);
        assert_eq!(t.len(), 1);
        assert!(!t[0].aligned);
        let t = check(100, 20000, 8192);
        assert_eq!(
            t.iter().map(|t| (t.len, t.aligned)).collect::<Vec<_>>(),
            vec![(3996, false), (8192, true), (4096, true), (3716, false)]
        );
        let t = check(4096, 3 * 8192, 8192);
        assert!(t.iter().all(|t| t.aligned) && t.len() == 3);
        for (o, l) in [
            (1, 4095),
            (4095, 2),
            (4097, 8190),
            (0, 4096 * 5 + 1),
            (7, 1 << 20),
        ] {
            check(o, l, 4096 * 3);
        }
    }
}
