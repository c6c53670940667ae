//! The context itself: the adapter it opened, the pipeline cache, the byte count, and errors that are Results.

use loft_gpu::{list_adapters, Binding, Kernel};

use crate::common::ctx;

#[test]
fn lavapipe_is_listed_as_software_and_opened_by_name() {
    let c = ctx();
    assert!(c.adapter().is_software, "{:?}", c.adapter());
    assert!(c.adapter().matches_name("lavapipe"));
    let all = list_adapters();
    assert!(all.iter().any(|a| a.is_software && a.name == c.adapter().name), "{all:?}");
}

#[test]
fn a_shader_that_does_not_compile_names_the_kernel_and_the_adapter() {
    let c = ctx();
    let broken =
        Kernel { name: "broken_kernel".into(), source: "@compute @workgroup_size(1) fn main( {".into(), entry: "main" };
    let e = c.pipeline(&broken, &[]).unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains("kernel 'broken_kernel'") && msg.contains(&c.adapter().name), "{msg}");
    assert!(!msg.contains('\n') && e.hint().is_some(), "{msg}");
    // The device is still usable afterwards.
    let buf = c.upload_f32(&[1.0, 2.0]).unwrap();
    assert_eq!(c.read_f32(&buf).unwrap(), vec![1.0, 2.0]);
}

#[test]
fn kernels_compile_once_and_buffers_are_counted() {
    // A context of its own: the other tests compile and allocate on the shared one concurrently.
    let c = &loft_gpu::Context::open_named("lavapipe").unwrap_or_else(|e| panic!("{e}"));
    let k = Kernel {
        name: "context_test_fill".into(),
        source: "struct P { v: f32, a: u32, b: u32, c: u32 }
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read_write> out: array<f32>;
@compute @workgroup_size(64) fn main(@builtin(global_invocation_id) g: vec3<u32>) {
    if (g.x < arrayLength(&out)) { out[g.x] = p.v; }
}"
        .into(),
        entry: "main",
    };
    let before = c.allocated_bytes();
    let buf = c.zeros(1000).unwrap();
    assert!(c.allocated_bytes() >= before + 4000);
    c.dispatch(&k, &[2.5f32.to_bits(), 0, 0, 0], &[Binding::Write(&buf)], [16, 1, 1]).unwrap();
    let compiled = c.pipelines_compiled();
    c.dispatch(&k, &[3.5f32.to_bits(), 0, 0, 0], &[Binding::Write(&buf)], [16, 1, 1]).unwrap();
    assert_eq!(c.pipelines_compiled(), compiled, "the second dispatch reuses the pipeline");
    assert!(c.read_f32(&buf).unwrap().iter().all(|&x| x == 3.5));
    drop(buf);
    assert!(c.allocated_bytes() < before + 4000, "a dropped buffer is no longer counted");
}

#[test]
fn a_buffer_beyond_the_device_is_an_error_not_a_panic() {
    let c = ctx();
    let words = (c.limits().max_storage_buffer_binding_size / 4 + 1) as usize;
    let e = c.zeros(words).unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains("exceeds the device's largest storage buffer") && !msg.contains('\n'), "{msg}");
    assert!(e.hint().is_some());
}

/// f16 buffers: read back widened, resized within their words, refused by word copies and host writes, and refused
/// (naming the kernel and binding) by a kernel whose binding is not typed `T<i>`; a typed kernel takes them.
#[test]
fn f16_buffers_go_only_where_a_kernel_takes_them() {
    let c = ctx();
    assert!(c.has_f16(), "lavapipe offers SHADER_F16");
    let mut h = c.zeros_half(5).unwrap();
    assert!(h.is_half() && h.len() == 5);
    assert_eq!(c.read_f32(&h).unwrap(), vec![0.0; 5]);
    c.resize(&mut h, 3).unwrap();
    assert_eq!(c.read_f32_range(&h, 1, 2).unwrap(), vec![0.0; 2]);
    let mut f = c.zeros(4).unwrap();
    assert!(c.copy(&h, 0, &mut f, 0, 1).is_err());
    assert!(c.write_f32(&mut h, &[1.0]).is_err());
    let untyped = Kernel {
        name: "plain".into(),
        source: "@group(0) @binding(0) var<uniform> p: vec4<u32>;\n\
                 @group(0) @binding(1) var<storage, read_write> y: array<f32>;\n\
                 @compute @workgroup_size(1) fn main() { y[0] = f32(p.x); }"
            .into(),
        entry: "main",
    };
    let e = c.dispatch(&untyped, &[1, 0, 0, 0], &[Binding::Write(&h)], [1, 1, 1]).unwrap_err().to_string();
    assert!(e.contains("kernel 'plain' reads binding 1 as f32 but was given an f16 buffer"), "{e}");
    let typed = Kernel {
        name: "typed".into(),
        source: "@group(0) @binding(0) var<uniform> p: vec4<u32>;\n\
                 @group(0) @binding(1) var<storage, read_write> y: array<T1>;\n\
                 @compute @workgroup_size(1) fn main() { y[1] = T1(f32(p.x) + 0.5); }"
            .into(),
        entry: "main",
    };
    c.dispatch(&typed, &[2, 0, 0, 0], &[Binding::Write(&h)], [1, 1, 1]).unwrap();
    c.dispatch(&typed, &[3, 0, 0, 0], &[Binding::Write(&f)], [1, 1, 1]).unwrap();
    assert_eq!(c.read_f32(&h).unwrap(), vec![0.0, 2.5, 0.0]);
    assert_eq!(c.read_f32(&f).unwrap(), vec![0.0, 3.5, 0.0, 0.0]);
}
