//! One opened adapter: device and queue, the pipeline cache, device buffers with a running byte count, upload and
//! read-back.
//!
//! Work is recorded into one pending command encoder and submitted when the host needs a result (a read-back) or
//! calls [`Context::flush`]. wgpu reports validation errors, device loss and out-of-memory through callbacks; they
//! are kept here and turned into `Err` at the next call, so nothing on the device panics the process.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use loft::{Error, Result};
use wgpu::util::DeviceExt;

use crate::device::{choose, enumerate, AdapterSummary, DeviceChoice};

/// Threads per workgroup of the one-dimensional kernels (elementwise ops, gathers).
pub const WG: u32 = 256;

/// A compute kernel: its WGSL, the entry point, and a name that identifies it (with its specialisation) in the
/// pipeline cache and in errors.
pub struct Kernel {
    pub name: String,
    pub source: String,
    pub entry: &'static str,
}

/// A storage buffer bound to a kernel: `Read` for `var<storage, read>`, `Write` for `var<storage, read_write>`,
/// in the order of the kernel's bindings 1, 2, … (binding 0 is the uniform parameter block).
pub enum Binding<'a> {
    Read(&'a GpuBuffer),
    Write(&'a GpuBuffer),
}

/// A storage buffer on the device: 32-bit words (f32, u32, or packed bytes), or f16 values two to a word (an
/// activation stored at half precision, [`Context::zeros_half`]). Its bytes count in [`Context::allocated_bytes`]
/// until it is dropped.
pub struct GpuBuffer {
    buffer: wgpu::Buffer,
    /// Words in use (⌈len / 2⌉ for f16).
    words: usize,
    /// Elements: words, or f16 values.
    len: usize,
    half: bool,
    allocated: Arc<AtomicU64>,
}

impl GpuBuffer {
    /// Length in elements: 32-bit words for f32 and u32 data, values for f16 data.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Holds f16 values (kernels read them through their `T<binding>` element types).
    pub fn is_half(&self) -> bool {
        self.half
    }

    pub fn raw(&self) -> &wgpu::Buffer {
        &self.buffer
    }
}

impl std::fmt::Debug for GpuBuffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.half {
            write!(f, "GpuBuffer({} f16)", self.len)
        } else {
            write!(f, "GpuBuffer({} words)", self.words)
        }
    }
}

impl Drop for GpuBuffer {
    fn drop(&mut self) {
        self.allocated.fetch_sub(self.buffer.size(), Ordering::Relaxed);
    }
}

pub struct Context {
    device: wgpu::Device,
    queue: wgpu::Queue,
    summary: AdapterSummary,
    limits: wgpu::Limits,
    pipelines: Mutex<HashMap<String, Arc<wgpu::ComputePipeline>>>,
    compiled: AtomicU64,
    allocated: Arc<AtomicU64>,
    encoder: Mutex<Option<wgpu::CommandEncoder>>,
    /// The first error wgpu reported outside an error scope, or the device's loss; sticky.
    failure: Arc<Mutex<Option<String>>>,
    /// A limit below the device's on the bytes of one block of a frozen weight ([`Context::with_weight_block_bytes`]).
    weight_block_bytes: Option<u64>,
}

impl Context {
    /// Opens the adapter `choice` picks; Ok(None) when it picks the CPU.
    pub fn open(choice: &DeviceChoice) -> Result<Option<Context>> {
        let adapters = enumerate();
        let summaries: Vec<AdapterSummary> = adapters.iter().map(|(s, _)| s.clone()).collect();
        match choose(choice, &summaries)? {
            None => Ok(None),
            Some(i) => {
                let (summary, adapter) = adapters.into_iter().nth(i).expect("choose returns an index into the list");
                Context::from_adapter(summary, &adapter).map(Some)
            }
        }
    }

    /// Opens the adapter that `gpu:NAME` names (e.g. "lavapipe"), or fails with the reason and a hint.
    pub fn open_named(name: &str) -> Result<Context> {
        let choice = DeviceChoice::parse(&format!("gpu:{name}"))?;
        Ok(Context::open(&choice)?.expect("a gpu choice never picks the CPU"))
    }

    /// A logical device on `adapter` with all of the adapter's limits (large storage bindings, many bindings per
    /// kernel) and SHADER_F16 / SUBGROUP when it has them.
    pub fn from_adapter(summary: AdapterSummary, adapter: &wgpu::Adapter) -> Result<Context> {
        let limits = adapter.limits();
        let features = adapter.features() & (wgpu::Features::SHADER_F16 | wgpu::Features::SUBGROUP);
        let desc = wgpu::DeviceDescriptor {
            label: Some("loft"),
            required_features: features,
            required_limits: limits.clone(),
            experimental_features: wgpu::ExperimentalFeatures::disabled(),
            memory_hints: wgpu::MemoryHints::Performance,
            trace: wgpu::Trace::Off,
        };
        let (device, queue) = pollster::block_on(adapter.request_device(&desc)).map_err(|e| {
            Error::hinted(
                format!(
                    "GPU #{} {}: could not open the device: {}",
                    summary.index,
                    summary.name,
                    one_line(&e.to_string())
                ),
                crate::device::NO_ADAPTER_HINT,
            )
        })?;
        let failure: Arc<Mutex<Option<String>>> = Arc::default();
        let slot = failure.clone();
        device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
            let mut f = slot.lock().unwrap_or_else(|p| p.into_inner());
            if f.is_none() {
                *f = Some(describe(&e));
            }
        }));
        let slot = failure.clone();
        device.set_device_lost_callback(move |reason, message| {
            if reason == wgpu::DeviceLostReason::Destroyed {
                return;
            }
            let mut f = slot.lock().unwrap_or_else(|p| p.into_inner());
            if f.is_none() {
                *f = Some(format!("the device was lost ({reason:?}): {}", one_line(&message)));
            }
        });
        Ok(Context {
            device,
            queue,
            summary,
            limits,
            pipelines: Mutex::default(),
            compiled: AtomicU64::new(0),
            allocated: Arc::default(),
            encoder: Mutex::default(),
            failure,
            weight_block_bytes: None,
        })
    }

    /// Keeps each block of a frozen weight within `bytes` (rounded down to whole words), below the device's own
    /// limit: a test setting that splits tiny matrices as a large head is split on a real device.
    pub fn with_weight_block_bytes(mut self, bytes: u64) -> Self {
        self.weight_block_bytes = Some(bytes);
        self
    }

    /// The largest buffer a kernel can bind: the device's largest storage binding, or its largest buffer if
    /// smaller.
    pub fn max_buffer_bytes(&self) -> u64 {
        self.limits.max_storage_buffer_binding_size.min(self.limits.max_buffer_size)
    }

    /// The most bytes one block of a frozen weight may take ([`crate::engine::GpuFrozen`] keeps a larger weight
    /// as several blocks of whole rows): the largest binding, the test setting if lower, and at most 4 GiB, since
    /// the kernels address a block's bytes with 32-bit offsets; whole words.
    pub fn max_weight_block_bytes(&self) -> u64 {
        let device = self.max_buffer_bytes().min(u32::MAX as u64);
        self.weight_block_bytes.map_or(device, |b| b.min(device)) & !3
    }

    pub fn adapter(&self) -> &AdapterSummary {
        &self.summary
    }

    pub fn limits(&self) -> &wgpu::Limits {
        &self.limits
    }

    pub fn device(&self) -> &wgpu::Device {
        &self.device
    }

    /// Bytes held by live [`GpuBuffer`]s (parameter blocks and read-back staging are transient and not counted).
    pub fn allocated_bytes(&self) -> u64 {
        self.allocated.load(Ordering::Relaxed)
    }

    /// How many kernels have been compiled (each once per process and specialisation).
    pub fn pipelines_compiled(&self) -> u64 {
        self.compiled.load(Ordering::Relaxed)
    }

    /// Err with what went wrong if wgpu reported an error or lost the device since the last check.
    pub fn check(&self) -> Result<()> {
        let f = self.failure.lock().unwrap_or_else(|p| p.into_inner());
        match f.as_ref() {
            None => Ok(()),
            Some(msg) => Err(self.error(msg.clone())),
        }
    }

    fn error(&self, msg: String) -> Error {
        let hint = if msg.contains("out of memory") {
            "the device's memory is full: use a smaller batch or sequence length, or --device cpu"
        } else if msg.contains("lost") {
            "the GPU driver reset or the device was removed; retry, or use --device cpu"
        } else {
            "this is a bug in loft's GPU kernels; --device cpu avoids it"
        };
        Error::hinted(format!("GPU #{} {}: {msg}", self.summary.index, self.summary.name), hint)
    }

    /// `GPU #0 NAME`, to begin an error about this device.
    pub(crate) fn label(&self) -> String {
        format!("GPU #{} {}", self.summary.index, self.summary.name)
    }

    /// A zero-filled buffer of `words` 32-bit words (wgpu zero-initialises new buffers).
    pub fn zeros(&self, words: usize) -> Result<GpuBuffer> {
        self.check()?;
        let bytes = (words.max(1) as u64).checked_mul(4).ok_or_else(|| self.error("buffer size overflows".into()))?;
        let max = self.max_buffer_bytes();
        if bytes > max {
            return Err(Error::hinted(
                format!(
                    "GPU #{} {}: a buffer of {:.1} MiB exceeds the device's largest storage buffer ({:.1} MiB)",
                    self.summary.index,
                    self.summary.name,
                    mib(bytes),
                    mib(max)
                ),
                "use a smaller batch or sequence length, or --device cpu",
            ));
        }
        let oom = self.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let invalid = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let buffer = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: None,
            size: bytes,
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let invalid = pollster::block_on(invalid.pop());
        let oom = pollster::block_on(oom.pop());
        if let Some(e) = oom.or(invalid) {
            return Err(Error::hinted(
                format!(
                    "GPU #{} {}: could not allocate {:.1} MiB with {:.1} MiB already held: {}",
                    self.summary.index,
                    self.summary.name,
                    mib(bytes),
                    mib(self.allocated_bytes()),
                    describe(&e)
                ),
                "the device's memory is full: use a smaller batch or sequence length, or --device cpu",
            ));
        }
        self.allocated.fetch_add(bytes, Ordering::Relaxed);
        Ok(GpuBuffer { buffer, words, len: words, half: false, allocated: self.allocated.clone() })
    }

    /// Whether kernels can read and write f16 values here (wgpu's SHADER_F16: f16 arithmetic and 16-bit storage).
    pub fn has_f16(&self) -> bool {
        self.device.features().contains(wgpu::Features::SHADER_F16)
    }

    /// A zero-filled buffer of `len` f16 values, two to a word; Err when the device has no SHADER_F16.
    pub fn zeros_half(&self, len: usize) -> Result<GpuBuffer> {
        if !self.has_f16() {
            return Err(Error::hinted(
                format!("GPU #{} {} has no f16 support (SHADER_F16)", self.summary.index, self.summary.name),
                "turn f16_activations off",
            ));
        }
        let mut buf = self.zeros(len.div_ceil(2))?;
        (buf.len, buf.half) = (len, true);
        Ok(buf)
    }

    /// Gives `buf` `len` elements of its type: within its allocation when that is large enough (the values are
    /// then whatever it held), else in a new zeroed buffer.
    pub fn resize(&self, buf: &mut GpuBuffer, len: usize) -> Result<()> {
        let words = if buf.half { len.div_ceil(2) } else { len };
        if (words.max(1) as u64) * 4 <= buf.buffer.size() {
            (buf.words, buf.len) = (words, len);
        } else if buf.half {
            *buf = self.zeros_half(len)?;
        } else {
            *buf = self.zeros(len)?;
        }
        Ok(())
    }

    /// A new buffer holding `data` (32-bit words as little-endian bytes; length a multiple of 4).
    pub fn upload_words(&self, data: &[u8]) -> Result<GpuBuffer> {
        assert!(data.len().is_multiple_of(4), "upload_words: {} bytes is not whole words", data.len());
        let buf = self.zeros(data.len() / 4)?;
        if !data.is_empty() {
            // A fresh buffer: no recorded command reads it yet, so the staged write cannot overtake one.
            self.queue.write_buffer(&buf.buffer, 0, data);
        }
        Ok(buf)
    }

    pub fn upload_f32(&self, data: &[f32]) -> Result<GpuBuffer> {
        self.upload_words(&data.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>())
    }

    pub fn upload_u32(&self, data: &[u32]) -> Result<GpuBuffer> {
        self.upload_words(&data.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>())
    }

    /// Bytes padded with zeros to whole words (quantized blocks, 8-bit optimizer state).
    pub fn upload_bytes(&self, data: &[u8]) -> Result<GpuBuffer> {
        let mut padded = data.to_vec();
        padded.resize(data.len().next_multiple_of(4), 0);
        self.upload_words(&padded)
    }

    /// Overwrites `buf` from word 0 with `data`. Submits recorded work first, so the write lands after it.
    pub fn write_f32(&self, buf: &mut GpuBuffer, data: &[f32]) -> Result<()> {
        if buf.half {
            return Err(self.error("write_f32: the buffer holds f16 values".into()));
        }
        assert!(data.len() <= buf.words, "write_f32: {} values into a buffer of {}", data.len(), buf.words);
        self.flush()?;
        if !data.is_empty() {
            self.queue.write_buffer(&buf.buffer, 0, &data.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>());
        }
        Ok(())
    }

    /// The compiled pipeline of `kernel`, compiling it on first use (once per process and name). A WGSL error
    /// names the kernel and the adapter.
    ///
    /// A kernel that declares a binding's array as `array<T<i>>` (binding i) takes an f32 or an f16 buffer there:
    /// it reads through `f32(...)` and writes through `T<i>(...)`, and is compiled once per combination of the
    /// element types bound (`alias T<i> = f32|f16;` is prepended). An f16 buffer bound where a kernel has no such
    /// type is an error naming the kernel and the binding.
    pub fn pipeline(&self, kernel: &Kernel, bindings: &[Binding<'_>]) -> Result<Arc<wgpu::ComputePipeline>> {
        let half: Vec<bool> =
            bindings.iter().map(|b| matches!(b, Binding::Read(b) | Binding::Write(b) if b.half)).collect();
        let mask: String = half.iter().map(|&h| if h { 'h' } else { 'f' }).collect();
        let key = format!("{}::{}::{mask}", kernel.name, kernel.entry);
        let mut cache = self.pipelines.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(p) = cache.get(&key) {
            return Ok(p.clone());
        }
        // First use of this kernel with these element types: check them, then compile.
        let typed: Vec<bool> = (1..=bindings.len()).map(|i| kernel.source.contains(&format!("array<T{i}>"))).collect();
        if let Some(i) = half.iter().zip(&typed).position(|(&h, &t)| h && !t) {
            return Err(self.error(format!(
                "kernel '{}' reads binding {} as f32 but was given an f16 buffer",
                kernel.name,
                i + 1
            )));
        }
        let mut source = String::new();
        if half.iter().any(|&h| h) {
            source.push_str("enable f16;\n");
        }
        for (i, (&h, &t)) in half.iter().zip(&typed).enumerate() {
            if t {
                source.push_str(&format!("alias T{} = {};\n", i + 1, if h { "f16" } else { "f32" }));
            }
        }
        source.push_str(&kernel.source);
        let scope = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let module = self.device.create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some(&kernel.name),
            source: wgpu::ShaderSource::Wgsl(source.as_str().into()),
        });
        let mut entries = vec![wgpu::BindGroupLayoutEntry {
            binding: 0,
            visibility: wgpu::ShaderStages::COMPUTE,
            ty: wgpu::BindingType::Buffer {
                ty: wgpu::BufferBindingType::Uniform,
                has_dynamic_offset: false,
                min_binding_size: None,
            },
            count: None,
        }];
        for (i, b) in bindings.iter().enumerate() {
            entries.push(wgpu::BindGroupLayoutEntry {
                binding: i as u32 + 1,
                visibility: wgpu::ShaderStages::COMPUTE,
                ty: wgpu::BindingType::Buffer {
                    ty: wgpu::BufferBindingType::Storage { read_only: matches!(b, Binding::Read(_)) },
                    has_dynamic_offset: false,
                    min_binding_size: None,
                },
                count: None,
            });
        }
        let bgl = self.device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
            label: Some(&kernel.name),
            entries: &entries,
        });
        let layout = self.device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
            label: Some(&kernel.name),
            bind_group_layouts: &[Some(&bgl)],
            immediate_size: 0,
        });
        let pipeline = self.device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some(&kernel.name),
            layout: Some(&layout),
            module: &module,
            entry_point: Some(kernel.entry),
            compilation_options: wgpu::PipelineCompilationOptions::default(),
            cache: None,
        });
        if let Some(e) = pollster::block_on(scope.pop()) {
            return Err(Error::hinted(
                format!(
                    "kernel '{}' failed to compile on GPU #{} {} ({}): {}",
                    kernel.name,
                    self.summary.index,
                    self.summary.name,
                    self.summary.backend,
                    describe(&e)
                ),
                "this is a bug in loft's GPU kernels or in the driver; --device cpu avoids it",
            ));
        }
        self.compiled.fetch_add(1, Ordering::Relaxed);
        let pipeline = Arc::new(pipeline);
        cache.insert(key, pipeline.clone());
        Ok(pipeline)
    }

    /// Records one dispatch of `kernel` with parameter block `params` (binding 0, u32/f32 bit patterns) and
    /// storage `bindings` (1, 2, …) over `groups` workgroups.
    pub fn dispatch(&self, kernel: &Kernel, params: &[u32], bindings: &[Binding<'_>], groups: [u32; 3]) -> Result<()> {
        self.check()?;
        if groups.contains(&0) {
            return Ok(());
        }
        let max = self.limits.max_compute_workgroups_per_dimension;
        assert!(groups.iter().all(|&g| g <= max), "{}: {groups:?} workgroups exceed {max} per dimension", kernel.name);
        let pipeline = self.pipeline(kernel, bindings)?;
        let mut words: Vec<u8> = params.iter().flat_map(|w| w.to_le_bytes()).collect();
        words.resize(words.len().max(16).next_multiple_of(16), 0);
        let uniform = self.device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: None,
            contents: &words,
            usage: wgpu::BufferUsages::UNIFORM,
        });
        let mut entries = vec![wgpu::BindGroupEntry { binding: 0, resource: uniform.as_entire_binding() }];
        for (i, b) in bindings.iter().enumerate() {
            let buf = match b {
                Binding::Read(b) | Binding::Write(b) => b,
            };
            entries.push(wgpu::BindGroupEntry { binding: i as u32 + 1, resource: buf.buffer.as_entire_binding() });
        }
        let bind_group = self.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some(&kernel.name),
            layout: &pipeline.get_bind_group_layout(0),
            entries: &entries,
        });
        self.record(|enc| {
            let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor { label: None, timestamp_writes: None });
            pass.set_pipeline(&pipeline);
            pass.set_bind_group(0, &bind_group, &[]);
            pass.dispatch_workgroups(groups[0], groups[1], groups[2]);
        });
        self.check()
    }

    /// Records `words` words copied from src[src_at..] to dst[dst_at..] (word offsets; 32-bit buffers only).
    pub fn copy(&self, src: &GpuBuffer, src_at: usize, dst: &mut GpuBuffer, dst_at: usize, words: usize) -> Result<()> {
        if src.half || dst.half {
            return Err(self.error("copy: f16 buffers are not copied word by word".into()));
        }
        assert!(src_at + words <= src.words && dst_at + words <= dst.words, "copy: range outside a buffer");
        if words > 0 {
            self.record(|enc| {
                enc.copy_buffer_to_buffer(
                    &src.buffer,
                    src_at as u64 * 4,
                    &dst.buffer,
                    dst_at as u64 * 4,
                    words as u64 * 4,
                )
            });
        }
        self.check()
    }

    /// Records zeroing the whole buffer.
    pub fn clear(&self, buf: &mut GpuBuffer) -> Result<()> {
        self.record(|enc| enc.clear_buffer(&buf.buffer, 0, None));
        self.check()
    }

    fn record(&self, f: impl FnOnce(&mut wgpu::CommandEncoder)) {
        let mut enc = self.encoder.lock().unwrap_or_else(|p| p.into_inner());
        let enc = enc.get_or_insert_with(|| self.device.create_command_encoder(&Default::default()));
        f(enc);
    }

    /// Submits the recorded work (it runs asynchronously; read-backs wait for it).
    pub fn flush(&self) -> Result<()> {
        // The lock is held through the submit: another thread's later work must not reach the queue first.
        let mut pending = self.encoder.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(enc) = pending.take() {
            self.queue.submit([enc.finish()]);
        }
        drop(pending);
        self.check()
    }

    /// The buffer's bytes, after all recorded work has run.
    pub fn read_bytes(&self, buf: &GpuBuffer) -> Result<Vec<u8>> {
        self.read_word_range(buf, 0, buf.words)
    }

    /// The bytes of words at..at+words of the buffer (only those cross to the host), after all recorded work has
    /// run.
    pub fn read_word_range(&self, buf: &GpuBuffer, at: usize, words: usize) -> Result<Vec<u8>> {
        if at.checked_add(words).is_none_or(|end| end > buf.words) {
            return Err(self.error(format!(
                "a read of words {at}..{} from a buffer of {}",
                at.saturating_add(words),
                buf.words
            )));
        }
        if words == 0 {
            return Ok(Vec::new());
        }
        self.check()?;
        let size = words as u64 * 4;
        let staging = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("read-back"),
            size,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        self.record(|enc| enc.copy_buffer_to_buffer(&buf.buffer, at as u64 * 4, &staging, 0, size));
        self.flush()?;
        let (tx, rx) = std::sync::mpsc::channel();
        staging.map_async(wgpu::MapMode::Read, .., move |r| {
            let _ = tx.send(r);
        });
        self.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| self.error(format!("waiting for the device failed: {}", one_line(&e.to_string()))))?;
        self.check()?;
        match rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(self.error(format!("reading a buffer back failed: {e}"))),
            Err(_) => return Err(self.error("reading a buffer back failed: no answer from the device".into())),
        }
        let bytes = {
            let view = staging
                .get_mapped_range(..)
                .map_err(|e| self.error(format!("reading a buffer back failed: {}", one_line(&e.to_string()))))?;
            view.to_vec()
        };
        staging.unmap();
        Ok(bytes)
    }

    pub fn read_f32(&self, buf: &GpuBuffer) -> Result<Vec<f32>> {
        self.read_f32_range(buf, 0, buf.len)
    }

    /// Values at..at+len of an f32 buffer (or of an f16 one, widened).
    pub fn read_f32_range(&self, buf: &GpuBuffer, at: usize, len: usize) -> Result<Vec<f32>> {
        if buf.half {
            if at.checked_add(len).is_none_or(|end| end > buf.len) {
                return Err(self.error(format!(
                    "a read of {at}..{} from {} f16 values",
                    at.saturating_add(len),
                    buf.len
                )));
            }
            let first = at / 2;
            let bytes = self.read_word_range(buf, first, (at + len).div_ceil(2) - first)?;
            let values = bytes.chunks_exact(2).map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32());
            return Ok(values.skip(at % 2).take(len).collect());
        }
        let bytes = self.read_word_range(buf, at, len)?;
        Ok(bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect())
    }

    pub fn read_u32(&self, buf: &GpuBuffer) -> Result<Vec<u32>> {
        Ok(self.read_bytes(buf)?.chunks_exact(4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect())
    }
}

/// Workgroups for `threads` one-dimensional threads in groups of `wg`, folded into a second dimension past the
/// per-dimension limit (kernels recover the thread's index as `(wid.y · nwg.x + wid.x) · wg + lid.x`).
pub fn groups_1d(threads: usize, wg: u32) -> [u32; 3] {
    groups_for(threads.div_ceil(wg as usize))
}

/// `n` workgroups folded into x and y (x ≤ 65535).
pub fn groups_for(n: usize) -> [u32; 3] {
    const MAX: usize = 65535;
    if n <= MAX {
        [n as u32, 1, 1]
    } else {
        [MAX as u32, n.div_ceil(MAX) as u32, 1]
    }
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1u64 << 20) as f64
}

/// `170.0 MiB`, `9.0 KiB`, `12 B`.
pub(crate) fn human_bytes(bytes: u64) -> String {
    match bytes {
        0..1024 => format!("{bytes} B"),
        1024..1048576 => format!("{:.1} KiB", bytes as f64 / 1024.0),
        _ => format!("{:.1} MiB", mib(bytes)),
    }
}

/// wgpu's errors span lines ("Validation Error\n\nCaused by:\n  In …"): one line for loft's error.
fn describe(e: &wgpu::Error) -> String {
    match e {
        wgpu::Error::OutOfMemory { .. } => "out of memory".to_string(),
        other => one_line(&other.to_string()),
    }
}

fn one_line(s: &str) -> String {
    let parts: Vec<&str> = s.lines().map(str::trim).filter(|l| !l.is_empty() && *l != "Caused by:").collect();
    parts.join(": ")
}
