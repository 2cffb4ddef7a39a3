//! wgpu buffers as load destinations and save sources (through core's `Device` trait), on
//! whatever adapter this machine has (Mesa's llvmpipe in CI). Skips without an adapter unless
//! `GPUBRIDGE_REQUIRE_WGPU=1`.

use gpubridge_core::conformance::wgpu_required;
use gpubridge_core::device::{Device, Instance};
use gpubridge_core::BridgeConfig;
use gpubridge_storage::{Dest, DeviceRange, DeviceView, Src, Storage};
use gpubridge_wgpu_fallback::wgpu::{WgpuDevice, WgpuInstance};
use rand::{Rng, SeedableRng};

fn device(config: &BridgeConfig) -> Option<WgpuDevice> {
    match WgpuInstance::discover(config) {
        Ok(i) => Some(i.enumerate().expect("a found adapter opens").remove(0)),
        Err(why) => {
            assert!(!wgpu_required(), "wgpu is required here: {why}");
            eprintln!("skipped: wgpu not available: {why}");
            None
        }
    }
}

#[test]
fn wgpu_buffers_load_and_save_at_unaligned_offsets() {
    let config = BridgeConfig::from_toml_str(
        "[storage]\nthreads = 3\ntask_size_kb = 16\nbounce_buffer_kb = 8\n",
    )
    .unwrap();
    let Some(dev) = device(&config) else { return };
    let s = Storage::new(&config).unwrap();
    let dir = std::env::temp_dir().join(format!("storage-wgpu-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(21);
    let data: Vec<u8> = (0..100_003).map(|_| rng.random()).collect();
    let path = dir.join("f.bin");
    std::fs::write(&path, &data).unwrap();

    let len = 90_001;
    let mut buf = dev.alloc(len + 10).unwrap();
    dev.write(&mut buf, 0, &vec![0u8; len + 10]).unwrap();
    let mut range = DeviceRange::new(&dev, &mut buf, 3, len, Some(len + 10)).unwrap();
    let t = s.read(&path, 1001, Dest::Device(&mut range)).unwrap();
    assert_eq!(t.bytes, len as u64);
    let mut back = vec![0u8; len + 10];
    dev.read(&buf, 0, &mut back).unwrap();
    dev.synchronize().unwrap();
    assert!(back[3..3 + len] == data[1001..1001 + len]);
    assert!(back[..3].iter().chain(&back[3 + len..]).all(|b| *b == 0));

    let view = DeviceView::new(&dev, &buf, 3, len, Some(len + 10)).unwrap();
    let out = dir.join("out.bin");
    s.write(Src::Device(&view), &out).unwrap();
    assert!(std::fs::read(&out).unwrap() == data[1001..1001 + len]);
    std::fs::remove_dir_all(&dir).unwrap();
}
