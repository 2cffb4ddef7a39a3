//! Compiles gpubridge's NVTX layer (`nvtx/gpubridge_nvtx.c`) against NVIDIA's vendored header-only
//! NVTX 3. It needs only a C compiler: no CUDA toolkit, and nothing is linked at build time.

fn main() {
    println!("cargo:rerun-if-changed=nvtx");
    cc::Build::new()
        .file("nvtx/gpubridge_nvtx.c")
        .include("nvtx/include")
        .opt_level(2)
        .warnings(false)
        .compile("gpubridge_nvtx");
    // NVTX looks for a tool with dlopen/dlsym.
    println!("cargo:rustc-link-lib=dylib=dl");
}
