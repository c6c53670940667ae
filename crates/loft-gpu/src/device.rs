//! Which GPUs wgpu sees, and which one `--device auto|cpu|gpu[:N|:NAME]` picks.
//!
//! Software adapters (Mesa's lavapipe/llvmpipe, SwiftShader, Microsoft's WARP) run on the CPU: `auto` and a bare
//! `gpu` never pick them; naming one (`gpu:lavapipe`, `gpu:0`) does, which is how the tests run kernels on a
//! machine without a GPU.

use std::fmt;

use loft::{Error, Result};

/// The hint given whenever no usable adapter is found.
pub const NO_ADAPTER_HINT: &str =
    "install a Vulkan driver (on Debian/Ubuntu: apt-get install mesa-vulkan-drivers libvulkan1), or use --device cpu";

/// Backends loft asks wgpu for: Vulkan (Linux, Windows, Android), Metal (Apple), DX12 (Windows).
pub fn backends() -> wgpu::Backends {
    wgpu::Backends::VULKAN | wgpu::Backends::METAL | wgpu::Backends::DX12
}

/// What `loft inspect --devices` prints about one adapter.
#[derive(Clone, Debug, PartialEq)]
pub struct AdapterSummary {
    /// Position in wgpu's enumeration: the N of `gpu:N`.
    pub index: usize,
    pub name: String,
    /// `vulkan`, `metal`, `dx12`.
    pub backend: String,
    /// `discrete`, `integrated`, `virtual`, `cpu`, `other`.
    pub device_type: String,
    pub driver: String,
    pub driver_info: String,
    /// The features loft's kernels care about, by wgpu's names: `SHADER_F16`, `SUBGROUP`, `SHADER_F64`.
    pub features: Vec<&'static str>,
    pub max_buffer_size: u64,
    pub max_storage_buffer_binding_size: u64,
    pub max_storage_buffers_per_shader_stage: u32,
    pub max_compute_workgroup_storage_size: u32,
    /// Runs on the CPU (lavapipe/llvmpipe, SwiftShader, WARP, or a device that says it is a CPU).
    pub is_software: bool,
}

impl AdapterSummary {
    pub fn from_adapter(index: usize, adapter: &wgpu::Adapter) -> Self {
        let info = adapter.get_info();
        let limits = adapter.limits();
        let features = adapter.features();
        let wanted = [
            (wgpu::Features::SHADER_F16, "SHADER_F16"),
            (wgpu::Features::SUBGROUP, "SUBGROUP"),
            (wgpu::Features::SHADER_F64, "SHADER_F64"),
        ];
        let device_type = match info.device_type {
            wgpu::DeviceType::DiscreteGpu => "discrete",
            wgpu::DeviceType::IntegratedGpu => "integrated",
            wgpu::DeviceType::VirtualGpu => "virtual",
            wgpu::DeviceType::Cpu => "cpu",
            wgpu::DeviceType::Other => "other",
        };
        let is_software = is_software(device_type, &info.name, &info.driver);
        AdapterSummary {
            index,
            name: info.name,
            backend: info.backend.to_str().to_string(),
            device_type: device_type.to_string(),
            driver: info.driver,
            driver_info: info.driver_info,
            features: wanted.iter().filter(|(f, _)| features.contains(*f)).map(|(_, n)| *n).collect(),
            max_buffer_size: limits.max_buffer_size,
            max_storage_buffer_binding_size: limits.max_storage_buffer_binding_size,
            max_storage_buffers_per_shader_stage: limits.max_storage_buffers_per_shader_stage,
            max_compute_workgroup_storage_size: limits.max_compute_workgroup_storage_size,
            is_software,
        }
    }

    /// Whether `gpu:NAME` names this adapter: NAME is a case-insensitive part of its name or driver, and
    /// `lavapipe` (the Vulkan driver's name) also finds llvmpipe (the name the device reports).
    pub fn matches_name(&self, wanted: &str) -> bool {
        let wanted = wanted.to_lowercase();
        let haystack = format!("{} {}", self.name, self.driver).to_lowercase();
        haystack.contains(&wanted) || (wanted == "lavapipe" && haystack.contains("llvmpipe"))
    }

    /// One line: `#0 llvmpipe (LLVM 15.0.6, 256 bits) — vulkan, cpu (software), driver llvmpipe …`.
    pub fn one_line(&self) -> String {
        let kind = if self.is_software { format!("{} (software)", self.device_type) } else { self.device_type.clone() };
        format!("#{} {} — {}, {}", self.index, self.name, self.backend, kind)
    }
}

/// Software rasterisers that present themselves as GPUs (or as CPU-type devices).
fn is_software(device_type: &str, name: &str, driver: &str) -> bool {
    let text = format!("{name} {driver}").to_lowercase();
    device_type == "cpu"
        || ["llvmpipe", "lavapipe", "swiftshader", "microsoft basic render driver", "warp"]
            .iter()
            .any(|s| text.contains(s))
}

/// Every adapter wgpu finds on this machine's Vulkan, Metal and DX12 drivers, with the adapters themselves (to
/// open one), in enumeration order.
pub fn enumerate() -> Vec<(AdapterSummary, wgpu::Adapter)> {
    let instance = instance();
    let adapters = pollster::block_on(instance.enumerate_adapters(backends()));
    adapters.into_iter().enumerate().map(|(i, a)| (AdapterSummary::from_adapter(i, &a), a)).collect()
}

/// The summaries alone (for `loft inspect --devices`).
pub fn list_adapters() -> Vec<AdapterSummary> {
    enumerate().into_iter().map(|(s, _)| s).collect()
}

pub(crate) fn instance() -> wgpu::Instance {
    let mut desc = wgpu::InstanceDescriptor::new_without_display_handle();
    desc.backends = backends();
    wgpu::Instance::new(desc)
}

/// `--device`: where the kernels run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DeviceChoice {
    /// A hardware GPU when there is one, else the CPU.
    Auto,
    Cpu,
    /// A GPU: the best hardware one (None), or the one named.
    Gpu(Option<AdapterSelector>),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AdapterSelector {
    /// `gpu:N`: the N-th adapter of `loft inspect --devices`.
    Index(usize),
    /// `gpu:NAME`: the first adapter whose name or driver contains NAME.
    Name(String),
}

impl DeviceChoice {
    /// `auto`, `cpu`, `gpu`, `gpu:N` or `gpu:NAME`.
    pub fn parse(s: &str) -> Result<Self> {
        let hint = "use auto, cpu, gpu, gpu:N (N from `loft inspect --devices`) or gpu:NAME (e.g. gpu:lavapipe)";
        match s.trim() {
            "auto" => Ok(DeviceChoice::Auto),
            "cpu" => Ok(DeviceChoice::Cpu),
            "gpu" => Ok(DeviceChoice::Gpu(None)),
            other => match other.strip_prefix("gpu:") {
                Some(sel) if !sel.trim().is_empty() => Ok(DeviceChoice::Gpu(Some(match sel.trim().parse::<usize>() {
                    Ok(n) => AdapterSelector::Index(n),
                    Err(_) => AdapterSelector::Name(sel.trim().to_string()),
                }))),
                _ => Err(Error::hinted(format!("--device '{other}' is not a device"), hint)),
            },
        }
    }
}

impl fmt::Display for DeviceChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceChoice::Auto => f.write_str("auto"),
            DeviceChoice::Cpu => f.write_str("cpu"),
            DeviceChoice::Gpu(None) => f.write_str("gpu"),
            DeviceChoice::Gpu(Some(AdapterSelector::Index(n))) => write!(f, "gpu:{n}"),
            DeviceChoice::Gpu(Some(AdapterSelector::Name(s))) => write!(f, "gpu:{s}"),
        }
    }
}

/// Which adapter `choice` picks among `adapters` (an index into it), or None for the CPU. Hardware adapters are
/// preferred discrete, then integrated, then virtual, then other; software ones only when named.
pub fn choose(choice: &DeviceChoice, adapters: &[AdapterSummary]) -> Result<Option<usize>> {
    let rank = |a: &AdapterSummary| match a.device_type.as_str() {
        "discrete" => 0,
        "integrated" => 1,
        "virtual" => 2,
        _ => 3,
    };
    let best_hardware = adapters.iter().enumerate().filter(|(_, a)| !a.is_software).min_by_key(|(i, a)| (rank(a), *i));
    let seen = || {
        if adapters.is_empty() {
            "none".to_string()
        } else {
            adapters.iter().map(AdapterSummary::one_line).collect::<Vec<_>>().join("; ")
        }
    };
    match choice {
        DeviceChoice::Cpu => Ok(None),
        DeviceChoice::Auto => Ok(best_hardware.map(|(i, _)| i)),
        DeviceChoice::Gpu(None) => match best_hardware {
            Some((i, _)) => Ok(Some(i)),
            None if adapters.is_empty() => Err(no_adapter_error("--device gpu")),
            None => Err(Error::hinted(
                format!("--device gpu: no hardware GPU among the adapters wgpu sees ({})", seen()),
                "name a software adapter to use it anyway (e.g. --device gpu:lavapipe), or use --device cpu",
            )),
        },
        DeviceChoice::Gpu(Some(AdapterSelector::Index(n))) => match adapters.get(*n) {
            Some(_) => Ok(Some(*n)),
            None if adapters.is_empty() => Err(no_adapter_error(&format!("--device gpu:{n}"))),
            None => Err(Error::hinted(
                format!("--device gpu:{n}: there is no adapter #{n} (wgpu sees {}: {})", adapters.len(), seen()),
                "pick a number that `loft inspect --devices` lists",
            )),
        },
        DeviceChoice::Gpu(Some(AdapterSelector::Name(name))) => {
            match adapters.iter().position(|a| a.matches_name(name)) {
                Some(i) => Ok(Some(i)),
                None if adapters.is_empty() => Err(no_adapter_error(&format!("--device gpu:{name}"))),
                None => Err(Error::hinted(
                    format!(
                        "--device gpu:{name}: no adapter's name or driver contains '{name}' (wgpu sees {})",
                        seen()
                    ),
                    "pick a name or number that `loft inspect --devices` lists",
                )),
            }
        }
    }
}

/// No adapter at all: the driver is missing (or the machine has no GPU and no software Vulkan).
fn no_adapter_error(what: &str) -> Error {
    Error::hinted(
        format!("{what}: wgpu found no GPU adapter (looked for Vulkan, Metal and DX12 drivers)"),
        NO_ADAPTER_HINT,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn adapter(index: usize, name: &str, device_type: &str, driver: &str) -> AdapterSummary {
        AdapterSummary {
            index,
            name: name.into(),
            backend: "vulkan".into(),
            device_type: device_type.into(),
            driver: driver.into(),
            driver_info: String::new(),
            features: vec![],
            max_buffer_size: 1 << 30,
            max_storage_buffer_binding_size: 1 << 27,
            max_storage_buffers_per_shader_stage: 8,
            max_compute_workgroup_storage_size: 16384,
            is_software: is_software(device_type, name, driver),
        }
    }

    #[test]
    fn parses_every_form_and_prints_it_back() {
        for s in ["auto", "cpu", "gpu", "gpu:1", "gpu:lavapipe"] {
            assert_eq!(DeviceChoice::parse(s).unwrap().to_string(), s);
        }
        assert_eq!(DeviceChoice::parse("gpu:2").unwrap(), DeviceChoice::Gpu(Some(AdapterSelector::Index(2))));
        for bad in ["", "cuda", "gpu:", "GPU"] {
            let e = DeviceChoice::parse(bad).unwrap_err();
            assert!(e.to_string().contains("is not a device") && e.hint().is_some(), "{bad}: {e}");
        }
    }

    #[test]
    fn auto_prefers_a_discrete_gpu_and_never_picks_software() {
        let lvp = adapter(0, "llvmpipe (LLVM 15.0.6, 256 bits)", "cpu", "llvmpipe");
        let igpu = adapter(1, "Intel(R) UHD Graphics", "integrated", "Intel open-source Mesa driver");
        let dgpu = adapter(2, "NVIDIA GeForce RTX 4090", "discrete", "NVIDIA");
        assert!(lvp.is_software && !igpu.is_software && !dgpu.is_software);
        let all = [lvp.clone(), igpu.clone(), dgpu];
        assert_eq!(choose(&DeviceChoice::Auto, &all).unwrap(), Some(2));
        assert_eq!(choose(&DeviceChoice::Gpu(None), &all).unwrap(), Some(2));
        assert_eq!(choose(&DeviceChoice::Auto, &[lvp.clone(), igpu]).unwrap(), Some(1));
        assert_eq!(choose(&DeviceChoice::Auto, std::slice::from_ref(&lvp)).unwrap(), None);
        assert_eq!(choose(&DeviceChoice::Cpu, &all).unwrap(), None);
        assert_eq!(choose(&DeviceChoice::Auto, &[]).unwrap(), None);
    }

    #[test]
    fn software_adapters_only_when_named() {
        let lvp = adapter(0, "llvmpipe (LLVM 15.0.6, 256 bits)", "cpu", "llvmpipe");
        let only = std::slice::from_ref(&lvp);
        let pick = |s: &str| choose(&DeviceChoice::parse(s).unwrap(), only);
        assert_eq!(pick("gpu:lavapipe").unwrap(), Some(0));
        assert_eq!(pick("gpu:LLVMpipe").unwrap(), Some(0));
        assert_eq!(pick("gpu:0").unwrap(), Some(0));
        let e = pick("gpu").unwrap_err();
        assert!(e.to_string().contains("no hardware GPU") && e.to_string().contains("llvmpipe"), "{e}");
        let e = pick("gpu:3").unwrap_err();
        assert!(e.to_string().contains("no adapter #3"), "{e}");
        let e = pick("gpu:nvidia").unwrap_err();
        assert!(e.to_string().contains("'nvidia'"), "{e}");
    }

    #[test]
    fn no_adapter_names_what_was_looked_for_with_the_driver_hint() {
        for s in ["gpu", "gpu:0", "gpu:lavapipe"] {
            let e = choose(&DeviceChoice::parse(s).unwrap(), &[]).unwrap_err();
            let msg = e.to_string();
            assert!(msg.contains("Vulkan, Metal and DX12") && !msg.contains('\n'), "{msg}");
            assert_eq!(e.hint(), Some(NO_ADAPTER_HINT));
        }
    }
}
