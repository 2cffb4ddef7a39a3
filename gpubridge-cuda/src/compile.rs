//! Kernel compilation: NVRTC once per kernel source and device architecture, PTX cached on disk.
//!
//! The cache key is the source's hash, the architecture and the NVRTC version, so a new driver
//! stack or an edited kernel never loads stale PTX. Files are written to a temporary name and
//! renamed, so a crash never leaves a truncated PTX file that looks complete.

use std::path::{Path, PathBuf};

use cudarc::nvrtc;
use gpubridge_core::{BackendKind, Error, Result};

/// Where compiled PTX lives and which compiler made it.
#[derive(Debug, Clone)]
pub struct PtxCache {
    dir: Option<PathBuf>,
    nvrtc_version: (i32, i32),
}

/// Whether the NVRTC library can be loaded, and its version.
///
/// # Errors
/// [`Error::Unsupported`] naming the missing library.
pub fn nvrtc_version() -> Result<(i32, i32)> {
    // SAFETY: only tries to dlopen libnvrtc; no preconditions.
    if !unsafe { nvrtc::sys::is_culib_present() } {
        return Err(Error::Unsupported {
            backend: BackendKind::Cuda,
            what: "NVRTC (libnvrtc.so.13) not found, so CUDA kernels cannot be compiled".to_owned(),
        });
    }
    let (mut major, mut minor) = (0, 0);
    // SAFETY: the library is present; both out-pointers are valid for the call.
    unsafe { nvrtc::sys::nvrtcVersion(&mut major, &mut minor) }
        .result()
        .map_err(|e| Error::Backend {
            backend: BackendKind::Cuda,
            message: format!("nvrtcVersion failed: {e:?}"),
            transient: false,
        })?;
    Ok((major, minor))
}

/// The default cache directory: `$XDG_CACHE_HOME/gpubridge/ptx`, else `~/.cache/gpubridge/ptx`.
pub fn default_cache_dir() -> Option<PathBuf> {
    std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .map(|c| c.join("gpubridge").join("ptx"))
}

impl PtxCache {
    /// A cache in `dir` (or the default directory) for the loaded NVRTC.
    ///
    /// # Errors
    /// [`Error::Unsupported`] when NVRTC is missing.
    pub fn new(dir: Option<&Path>) -> Result<Self> {
        let nvrtc_version = nvrtc_version()?;
        let dir = dir.map(Path::to_path_buf).or_else(default_cache_dir);
        Ok(Self { dir, nvrtc_version })
    }

    /// The NVRTC version PTX is compiled with.
    pub fn nvrtc_version(&self) -> (i32, i32) {
        self.nvrtc_version
    }

    /// The file a kernel's PTX is cached in.
    pub fn path_for(&self, kernel: &str, source_hash: u64, arch: (u32, u32)) -> Option<PathBuf> {
        let name: String = kernel
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect();
        let (ma, mi) = self.nvrtc_version;
        self.dir.as_ref().map(|d| {
            d.join(format!(
                "{name}-{source_hash:016x}-sm{}{}-nvrtc{ma}.{mi}.ptx",
                arch.0, arch.1
            ))
        })
    }

    /// The PTX of `source` for `arch`: from the cache when present, else compiled and stored.
    /// Returns the PTX and whether it came from the cache.
    ///
    /// # Errors
    /// [`Error::Backend`] carrying NVRTC's log when the source does not compile.
    pub fn ptx(
        &self,
        kernel: &str,
        source: &str,
        source_hash: u64,
        arch: (u32, u32),
    ) -> Result<(String, bool)> {
        let path = self.path_for(kernel, source_hash, arch);
        if let Some(p) = &path {
            if let Ok(text) = std::fs::read_to_string(p) {
                if text.contains(".entry") {
                    return Ok((text, true));
                }
            }
        }
        let ptx = compile(kernel, source, arch)?;
        if let Some(p) = &path {
            if let Err(e) = store(p, &ptx) {
                tracing::warn!(path = %p.display(), "cannot write the PTX cache: {e}");
            }
        }
        Ok((ptx, false))
    }
}

/// Compiles `source` with NVRTC for `arch` (`sm_XY`), returning PTX text.
///
/// # Errors
/// [`Error::Backend`] with NVRTC's log.
pub fn compile(kernel: &str, source: &str, arch: (u32, u32)) -> Result<String> {
    if source.contains('\0') {
        return Err(Error::invalid_batch(
            kernel,
            "CUDA source contains a NUL byte",
        ));
    }
    let opts = nvrtc::CompileOptions {
        options: vec![
            format!("--gpu-architecture=compute_{}{}", arch.0, arch.1),
            "--std=c++17".to_owned(),
        ],
        name: Some(format!("{}.cu", kernel.replace('/', "_"))),
        ..Default::default()
    };
    let ptx = nvrtc::compile_ptx_with_opts(source, opts).map_err(|e| Error::Backend {
        backend: BackendKind::Cuda,
        message: match e {
            nvrtc::CompileError::CompileError { log, .. } => {
                format!(
                    "NVRTC could not compile {kernel}: {}",
                    log.to_string_lossy()
                )
            }
            other => format!("NVRTC could not compile {kernel}: {other:?}"),
        },
        transient: false,
    })?;
    Ok(ptx.to_src())
}

fn store(path: &Path, ptx: &str) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, ptx)?;
    std::fs::rename(&tmp, path)
}
