use std::sync::OnceLock;

use loft_gpu::{Context, Wgpu};

/// The adapter the tests run on: lavapipe, Mesa's software Vulkan device (every `make test`), or the one
/// LOFT_GPU_ADAPTER names (scripts/gpu_check.sh sets it on a machine with a real GPU), as the wgpu backend. Shared
/// by the tests of this binary, so kernels compile once.
pub fn gpu() -> &'static Wgpu {
    static GPU: OnceLock<Wgpu> = OnceLock::new();
    GPU.get_or_init(|| {
        let name = std::env::var("LOFT_GPU_ADAPTER").unwrap_or_else(|_| "lavapipe".into());
        match Context::open_named(&name) {
            Ok(c) => Wgpu::new(c),
            Err(e) => panic!(
                "these tests run on the Vulkan adapter '{name}' (lavapipe unless LOFT_GPU_ADAPTER says otherwise): \
                 {e}\nhint: {}",
                e.hint().unwrap_or("apt-get install mesa-vulkan-drivers libvulkan1")
            ),
        }
    })
}

/// Its context, for the kernels called one by one.
pub fn ctx() -> &'static Context {
    gpu().context()
}

/// Uniform values in [-1, 1) from a fixed seed (the crate's SplitMix64).
pub fn rand(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = loft::rng::SplitMix64::new(seed);
    (0..n).map(|_| ((rng.next_u64() >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0).collect()
}

/// The relative error the parity tests hold to.
pub const TOL: f32 = 1e-4;

/// Worst elementwise relative error of `gpu` against `cpu`: |g − c| / max(|c|, 0.01 · max|c|) (the floor keeps
/// elements that cancel to near zero from dividing by nothing).
pub fn rel_err(gpu: &[f32], cpu: &[f32]) -> f32 {
    assert_eq!(gpu.len(), cpu.len(), "lengths differ");
    let scale = cpu.iter().fold(0f32, |a, &b| a.max(b.abs()));
    let floor = (0.01 * scale).max(f32::MIN_POSITIVE);
    gpu.iter().zip(cpu).map(|(g, c)| if g == c { 0.0 } else { (g - c).abs() / c.abs().max(floor) }).fold(0.0, f32::max)
}

/// Asserts `gpu` equals `cpu` within [`TOL`] and prints the figure.
pub fn assert_parity(label: &str, gpu: &[f32], cpu: &[f32]) {
    let e = rel_err(gpu, cpu);
    eprintln!("parity {label:<48} max rel err {e:.2e}");
    assert!(e <= TOL && gpu.iter().all(|x| x.is_finite()), "{label}: GPU differs from the CPU by {e:.3e} (> {TOL:e})");
}

/// Reads a device buffer (panics with the error: a test helper).
pub fn read(buf: &loft_gpu::GpuBuffer) -> Vec<f32> {
    ctx().read_f32(buf).unwrap_or_else(|e| panic!("read-back failed: {e}"))
}

pub fn up(data: &[f32]) -> loft_gpu::GpuBuffer {
    ctx().upload_f32(data).unwrap_or_else(|e| panic!("upload failed: {e}"))
}
