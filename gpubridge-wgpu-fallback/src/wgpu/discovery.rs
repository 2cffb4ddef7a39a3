//! Finding adapters: which graphics APIs to open, which adapters to use, and the exact reason
//! when there is none.
//!
//! Vulkan is asked first; GL (through EGL) only when Vulkan found no usable adapter, so that a
//! machine with Vulkan never pays for (or prints the noise of) probing EGL. Hardware adapters come
//! first (discrete, integrated, virtual, other); software adapters such as Mesa's llvmpipe are used
//! only when there is no hardware adapter and `wgpu.allow_software_adapter` is on, because on the
//! same cores the CPU backend would otherwise compete with them.

use std::panic::AssertUnwindSafe;

use gpubridge_core::config::WgpuApi;
use gpubridge_core::BridgeConfig;

/// Why the wgpu backend cannot be used here, in words precise enough to act on (the Vulkan loader
/// is missing, no adapter was found, the configuration disabled it, ...).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WgpuUnavailable(pub String);

impl std::fmt::Display for WgpuUnavailable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for WgpuUnavailable {}

/// Adapters chosen for use, with the instance they came from (kept alive alongside them).
pub(crate) struct Discovered {
    pub instance: wgpu::Instance,
    pub adapters: Vec<wgpu::Adapter>,
}

/// Opens the configured graphics APIs in order and picks adapters.
///
/// # Errors
/// [`WgpuUnavailable`] naming, for each API tried, why it gave no adapter.
pub(crate) fn discover(config: &BridgeConfig) -> Result<Discovered, WgpuUnavailable> {
    let cfg = &config.wgpu;
    if !cfg.enabled {
        return Err(WgpuUnavailable(
            "disabled by configuration (wgpu.enabled = false)".to_owned(),
        ));
    }
    let mut reasons = Vec::new();
    for api in &cfg.apis {
        let backends = match api {
            WgpuApi::Vulkan => wgpu::Backends::VULKAN,
            WgpuApi::Gl => wgpu::Backends::GL,
        };
        // wgpu documents panics in instance creation (no backend compiled in); the library must
        // not panic, so any panic here becomes a reason instead.
        let probed = std::panic::catch_unwind(AssertUnwindSafe(|| {
            let instance = wgpu::Instance::new(wgpu::InstanceDescriptor {
                backends,
                // No validation layers or indirect-call validation: the plans are checked before
                // they reach wgpu, and indirect validation would cap buffers at 4 GiB.
                flags: wgpu::InstanceFlags::empty().with_env(),
                ..wgpu::InstanceDescriptor::new_without_display_handle()
            });
            let adapters = futures::executor::block_on(instance.enumerate_adapters(backends));
            (instance, adapters)
        }));
        let (instance, adapters) = match probed {
            Ok(v) => v,
            Err(_) => {
                reasons.push(format!(
                    "{}: wgpu panicked while opening it",
                    api_name(*api)
                ));
                continue;
            }
        };
        if adapters.is_empty() {
            reasons.push(no_adapter_reason(&instance, *api));
            continue;
        }
        let (chosen, refused) = choose(adapters, config);
        if chosen.is_empty() {
            reasons.push(format!(
                "{}: no usable adapter ({})",
                api_name(*api),
                refused.join("; ")
            ));
            continue;
        }
        for why in &refused {
            tracing::info!("wgpu: passing over {why}");
        }
        return Ok(Discovered {
            instance,
            adapters: chosen,
        });
    }
    Err(WgpuUnavailable(reasons.join("; ")))
}

fn api_name(api: WgpuApi) -> &'static str {
    match api {
        WgpuApi::Vulkan => "Vulkan",
        WgpuApi::Gl => "GL",
    }
}

/// Sorting key: hardware before software, discrete first.
fn rank(t: wgpu::DeviceType) -> u8 {
    match t {
        wgpu::DeviceType::DiscreteGpu => 0,
        wgpu::DeviceType::IntegratedGpu => 1,
        wgpu::DeviceType::VirtualGpu => 2,
        wgpu::DeviceType::Other => 3,
        wgpu::DeviceType::Cpu => 4,
    }
}

/// Filters and orders adapters; returns the chosen ones and, for every one passed over, why.
fn choose(
    adapters: Vec<wgpu::Adapter>,
    config: &BridgeConfig,
) -> (Vec<wgpu::Adapter>, Vec<String>) {
    let cfg = &config.wgpu;
    let mut refused = Vec::new();
    let mut ok: Vec<wgpu::Adapter> = Vec::new();
    for a in adapters {
        let info = a.get_info();
        let name = format!("{} ({})", info.name, info.backend);
        if let Some(want) = &cfg.adapter {
            if !info
                .name
                .to_ascii_lowercase()
                .contains(&want.to_ascii_lowercase())
            {
                refused.push(format!(
                    "{name}: name does not contain wgpu.adapter = {want:?}"
                ));
                continue;
            }
        }
        if info.device_type == wgpu::DeviceType::Cpu && !cfg.allow_software_adapter {
            refused.push(format!(
                "{name}: software adapter and wgpu.allow_software_adapter = false"
            ));
            continue;
        }
        if !a
            .get_downlevel_capabilities()
            .flags
            .contains(wgpu::DownlevelFlags::COMPUTE_SHADERS)
        {
            refused.push(format!("{name}: no compute shaders"));
            continue;
        }
        ok.push(a);
    }
    ok.sort_by_key(|a| rank(a.get_info().device_type));
    let hardware = ok
        .iter()
        .any(|a| a.get_info().device_type != wgpu::DeviceType::Cpu);
    if hardware {
        ok.retain(|a| {
            let info = a.get_info();
            if info.device_type == wgpu::DeviceType::Cpu {
                refused.push(format!(
                    "{} ({}): software adapter, and a hardware adapter was found",
                    info.name, info.backend
                ));
                false
            } else {
                true
            }
        });
    }
    ok.truncate(config.general.max_devices);
    (ok, refused)
}

/// Why `api` gave no adapter at all: wgpu's own account (the loader could not be loaded, or it
/// found no adapter), turned into advice.
fn no_adapter_reason(instance: &wgpu::Instance, api: WgpuApi) -> String {
    let name = api_name(api);
    let key = match api {
        WgpuApi::Vulkan => wgpu::Backend::Vulkan.to_str(),
        WgpuApi::Gl => wgpu::Backend::Gl.to_str(),
    };
    let message = std::panic::catch_unwind(AssertUnwindSafe(|| {
        futures::executor::block_on(instance.request_adapter(&wgpu::RequestAdapterOptions {
            power_preference: wgpu::PowerPreference::HighPerformance,
            force_fallback_adapter: false,
            compatible_surface: None,
            ..Default::default()
        }))
        .err()
        .map(|e| e.to_string())
    }))
    .ok()
    .flatten()
    .unwrap_or_default();
    // wgpu says, per backend, "<name> drivers/libraries could not be loaded" or "<name> found no
    // adapters"; keep the part about this backend.
    let part = message
        .split([';', ','])
        .map(str::trim)
        .find(|p| p.starts_with(key));
    match part {
        Some(p) if p.contains("could not be loaded") => match api {
            WgpuApi::Vulkan if library_present("libvulkan.so.1") => {
                let icd = ["VK_DRIVER_FILES", "VK_ICD_FILENAMES"]
                    .iter()
                    .find_map(|v| std::env::var(v).ok().map(|f| format!(" ({v}={f})")))
                    .unwrap_or_default();
                format!("Vulkan: the loader (libvulkan.so.1) found no driver it could start{icd}; install the GPU vendor's Vulkan driver, or mesa-vulkan-drivers for llvmpipe")
            }
            WgpuApi::Vulkan => {
                "Vulkan: the Vulkan loader (libvulkan.so.1) could not be loaded; install libvulkan1"
                    .to_owned()
            }
            WgpuApi::Gl => "GL: EGL (libEGL.so.1) or a driver for it could not be loaded".to_owned(),
        },
        Some(p) if p.contains("found no adapters") => match api {
            WgpuApi::Vulkan => "Vulkan: the loader found no adapter (no Vulkan driver: install the GPU vendor's driver, or mesa-vulkan-drivers for llvmpipe)".to_owned(),
            WgpuApi::Gl => "GL: no adapter found".to_owned(),
        },
        Some(p) => format!("{name}: {p}"),
        None if message.is_empty() => format!("{name}: no adapter found"),
        None => format!("{name}: no adapter found ({message})"),
    }
}

/// Whether the dynamic linker can find `name`: in a `LD_LIBRARY_PATH` folder or in the `ldconfig`
/// cache (`/etc/ld.so.cache` holds every cached library's name).
fn library_present(name: &str) -> bool {
    let in_path = std::env::var_os("LD_LIBRARY_PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|dir| dir.join(name).exists()));
    in_path
        || std::fs::read("/etc/ld.so.cache").is_ok_and(|cache| {
            cache
                .windows(name.len() + 1)
                .any(|w| &w[..name.len()] == name.as_bytes() && w[name.len()] == 0)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hardware_ranks_before_software_and_discrete_first() {
        use wgpu::DeviceType as T;
        let order = [
            T::DiscreteGpu,
            T::IntegratedGpu,
            T::VirtualGpu,
            T::Other,
            T::Cpu,
        ];
        let ranks: Vec<u8> = order.iter().map(|t| rank(*t)).collect();
        assert!(ranks.windows(2).all(|w| w[0] < w[1]), "{ranks:?}");
        assert_eq!(api_name(WgpuApi::Vulkan), "Vulkan");
        assert_eq!(api_name(WgpuApi::Gl), "GL");
    }

    #[test]
    fn libraries_are_found_in_the_loader_cache_or_the_library_path() {
        // The C library is in every loader cache; a made-up name is in none.
        assert!(library_present("libc.so.6"));
        assert!(!library_present("libgpubridge-no-such-library.so.9"));
        // A prefix of a real name is not that library.
        assert!(!library_present("libc.so"));
    }

    #[test]
    fn gl_alone_either_gives_gl_adapters_or_says_why_not() {
        let mut gl = BridgeConfig::default();
        gl.wgpu.apis = vec![WgpuApi::Gl];
        match discover(&gl) {
            Ok(found) => {
                assert!(!found.adapters.is_empty());
                for a in &found.adapters {
                    assert_eq!(a.get_info().backend, wgpu::Backend::Gl);
                }
            }
            Err(why) => assert!(why.0.starts_with("GL: "), "{why}"),
        }
    }
}
