//! File to device I/O for gpubridge (the original's `GpuDirectStorageProvider`).
//!
//! # Status
//! Not built yet: this crate has no API in this release, so nothing here pretends to move bytes.
//! The design it will follow (DESIGN.md, "Storage"): load a file or a byte range into a device
//! buffer and save one back, through cuFile where the driver opens and the file registers (feature
//! `gds`), and otherwise through a host-staged path in the manner of KvikIO: the file split into
//! tasks read by a thread pool with `O_DIRECT` into pinned bounce buffers, each chunk sent on by an
//! asynchronous copy while the next is read. The `[storage]` section of
//! [`gpubridge_core::BridgeConfig`] already holds its options.
