//! The memory-mapped GGUF reader. Every header field is checked against the bytes that remain before it
//! sizes a loop or an allocation, and every tensor's data range against the file, once, in `open`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::{Error, GgmlType, Value, ValueType, GGUF_DEFAULT_ALIGNMENT, GGUF_MAGIC};

/// ggml's GGML_MAX_DIMS.
const MAX_DIMS: u32 = 4;
/// Nested arrays deeper than this are refused (nothing writes them; it bounds the parser's recursion).
const MAX_ARRAY_DEPTH: usize = 8;
/// Largest `general.alignment` accepted.
const MAX_ALIGNMENT: u64 = 1 << 20;
/// Fewest bytes of one metadata entry: key length u64, value type u32, a one-byte value.
const MIN_KV_BYTES: u64 = 8 + 4 + 1;
/// Fewest bytes of one tensor info: name length u64, n_dims u32, type u32, offset u64.
const MIN_TENSOR_INFO_BYTES: u64 = 8 + 4 + 4 + 8;

/// One entry of the tensor table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorInfo {
    pub name: String,
    /// ggml `ne` order: innermost (contiguous) dimension first; a torch `[out, in]` weight is `[in, out]`.
    pub shape: Vec<u64>,
    pub dtype: GgmlType,
    /// Relative to the data section.
    pub offset: u64,
}

impl TensorInfo {
    /// Product of the shape (`u64::MAX` if it overflows, which `GgufFile::open` never lets through).
    pub fn n_elements(&self) -> u64 {
        self.shape.iter().try_fold(1u64, |acc, &d| acc.checked_mul(d)).unwrap_or(u64::MAX)
    }

    /// Bytes of the data (`u64::MAX` if it overflows, which `GgufFile::open` never lets through).
    pub fn n_bytes(&self) -> u64 {
        let bs = self.dtype.block_size() as u64;
        (self.n_elements() / bs).saturating_mul(self.dtype.type_size() as u64)
    }
}

enum Storage {
    Mmap(memmap2::Mmap),
    Owned(Vec<u8>),
}

impl Storage {
    fn bytes(&self) -> &[u8] {
        match self {
            Storage::Mmap(m) => m,
            Storage::Owned(v) => v,
        }
    }
}

/// A validated GGUF file: its metadata and tensor table, with the tensor data left in the (mapped) file.
pub struct GgufFile {
    pub path: PathBuf,
    pub version: u32,
    /// In file order.
    pub metadata: Vec<(String, Value)>,
    /// In file order.
    pub tensors: Vec<TensorInfo>,
    pub alignment: u64,
    storage: Storage,
    data_offset: u64,
    key_index: HashMap<String, usize>,
    tensor_index: HashMap<String, usize>,
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufFile")
            .field("path", &self.path)
            .field("version", &self.version)
            .field("metadata", &self.metadata.len())
            .field("tensors", &self.tensors.len())
            .field("alignment", &self.alignment)
            .field("data_offset", &self.data_offset)
            .finish()
    }
}

impl GgufFile {
    /// Maps and validates the file. The mapping assumes nobody truncates or rewrites the file while it is open
    /// (the writer replaces files by rename, which leaves an open mapping intact).
    pub fn open(path: impl AsRef<Path>) -> Result<Self, Error> {
        let path = path.as_ref();
        let io = |action| move |source| Error::Io { path: path.to_path_buf(), action, source };
        let file = std::fs::File::open(path).map_err(io("open"))?;
        let len = file.metadata().map_err(io("stat"))?.len();
        let storage = if len == 0 {
            Storage::Owned(Vec::new())
        } else {
            // SAFETY: read-only mapping; see the doc comment for the (usual) assumption about other writers.
            Storage::Mmap(unsafe { memmap2::Mmap::map(&file) }.map_err(io("memory-map"))?)
        };
        Self::parse(path.to_path_buf(), storage)
    }

    /// Parses a GGUF image held in memory; `path` only labels error messages.
    pub fn from_bytes(path: impl Into<PathBuf>, bytes: Vec<u8>) -> Result<Self, Error> {
        Self::parse(path.into(), Storage::Owned(bytes))
    }

    fn parse(path: PathBuf, storage: Storage) -> Result<Self, Error> {
        let header = parse_header(&path, storage.bytes())?;
        let key_index = header.metadata.iter().enumerate().map(|(i, (k, _))| (k.clone(), i)).collect();
        let tensor_index = header.tensors.iter().enumerate().map(|(i, t)| (t.name.clone(), i)).collect();
        Ok(GgufFile {
            path,
            version: header.version,
            metadata: header.metadata,
            tensors: header.tensors,
            alignment: header.alignment,
            storage,
            data_offset: header.data_offset,
            key_index,
            tensor_index,
        })
    }

    /// File offset of the data section.
    pub fn data_offset(&self) -> u64 {
        self.data_offset
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.key_index.get(key).map(|&i| &self.metadata[i].1)
    }

    fn get_as<'a, T>(
        &'a self,
        key: &str,
        expected: &'static str,
        f: impl FnOnce(&'a Value) -> Option<T>,
    ) -> Result<T, Error> {
        let value = self.get(key).ok_or_else(|| Error::MissingKey {
            path: self.path.clone(),
            key: key.to_owned(),
            expected,
        })?;
        f(value).ok_or_else(|| Error::WrongType {
            path: self.path.clone(),
            key: key.to_owned(),
            expected,
            found: value.value_type(),
            value: value.summary(),
        })
    }

    /// Any integer metadata value in u32's range.
    pub fn get_u32(&self, key: &str) -> Result<u32, Error> {
        self.get_as(key, "an integer in u32 range", Value::as_u32)
    }

    /// Any non-negative integer metadata value.
    pub fn get_u64(&self, key: &str) -> Result<u64, Error> {
        self.get_as(key, "a non-negative integer", Value::as_u64)
    }

    /// Any float or integer metadata value.
    pub fn get_f32(&self, key: &str) -> Result<f32, Error> {
        self.get_as(key, "a number", Value::as_f32)
    }

    pub fn get_bool(&self, key: &str) -> Result<bool, Error> {
        self.get_as(key, "a bool", Value::as_bool)
    }

    pub fn get_str(&self, key: &str) -> Result<&str, Error> {
        self.get_as(key, "a string", Value::as_str)
    }

    pub fn tensor_info(&self, name: &str) -> Option<&TensorInfo> {
        self.tensor_index.get(name).map(|&i| &self.tensors[i])
    }

    /// The tensor's raw bytes. `info` must come from this file (its range was validated in `open`); a
    /// foreign `info` whose range does not fit gives an empty slice.
    pub fn tensor_bytes(&self, info: &TensorInfo) -> &[u8] {
        let range = self.data_offset.checked_add(info.offset).and_then(|start| {
            let end = start.checked_add(info.n_bytes())?;
            Some(usize::try_from(start).ok()?..usize::try_from(end).ok()?)
        });
        range.and_then(|r| self.storage.bytes().get(r)).unwrap_or(&[])
    }

    /// The named tensor as f32, ggml element order (`ne[0]` fastest, i.e. row-major `[ne[n-1], …, ne[0]]`).
    pub fn dequantize(&self, name: &str) -> Result<Vec<f32>, Error> {
        let info = self
            .tensor_info(name)
            .ok_or_else(|| Error::MissingTensor { path: self.path.clone(), name: name.to_owned() })?;
        let tensor_err = |what: String| Error::Tensor { path: self.path.clone(), tensor: name.to_owned(), what };
        if !info.dtype.can_dequantize() {
            return Err(tensor_err(format!(
                "type {} cannot be dequantized to f32 (expected a float or quantized type)",
                info.dtype
            )));
        }
        let n = usize::try_from(info.n_elements())
            .map_err(|_| tensor_err(format!("{} elements do not fit in memory", info.n_elements())))?;
        let mut out = vec![0f32; n];
        crate::dequantize(info.dtype, self.tensor_bytes(info), &mut out).map_err(|e| match e {
            Error::Codec(what) => tensor_err(what),
            other => other,
        })?;
        Ok(out)
    }
}

struct Header {
    version: u32,
    metadata: Vec<(String, Value)>,
    tensors: Vec<TensorInfo>,
    alignment: u64,
    data_offset: u64,
}

/// A read position in the file's bytes; every read checks the bytes that remain.
struct Cursor<'a> {
    path: &'a Path,
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn remaining(&self) -> u64 {
        (self.buf.len() - self.pos) as u64
    }

    fn err(&self, what: impl Into<String>) -> Error {
        Error::malformed(self.path, what)
    }

    fn take(&mut self, n: u64, what: &dyn Fn() -> String) -> Result<&'a [u8], Error> {
        if n > self.remaining() {
            return Err(self.err(format!(
                "{}: needs {n} bytes at offset {}, but the file ends at {} bytes",
                what(),
                self.pos,
                self.buf.len()
            )));
        }
        let start = self.pos;
        self.pos += n as usize;
        Ok(&self.buf[start..self.pos])
    }

    fn array<const N: usize>(&mut self, what: &dyn Fn() -> String) -> Result<[u8; N], Error> {
        let b = self.take(N as u64, what)?;
        let mut a = [0u8; N];
        a.copy_from_slice(b);
        Ok(a)
    }

    fn u32(&mut self, what: &dyn Fn() -> String) -> Result<u32, Error> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &dyn Fn() -> String) -> Result<u64, Error> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    fn string(&mut self, what: &dyn Fn() -> String) -> Result<String, Error> {
        let at = self.pos;
        let len = self.u64(what)?;
        if len > self.remaining() {
            return Err(self.err(format!(
                "{}: string length {len} at offset {at} runs past the end of the file ({} bytes)",
                what(),
                self.buf.len()
            )));
        }
        let bytes = self.take(len, what)?;
        String::from_utf8(bytes.to_vec())
            .map_err(|e| self.err(format!("{}: string at offset {at} is not valid UTF-8 ({e})", what())))
    }

    fn value(&mut self, ty: ValueType, what: &dyn Fn() -> String, depth: usize) -> Result<Value, Error> {
        Ok(match ty {
            ValueType::U8 => Value::U8(self.array::<1>(what)?[0]),
            ValueType::I8 => Value::I8(i8::from_le_bytes(self.array(what)?)),
            ValueType::U16 => Value::U16(u16::from_le_bytes(self.array(what)?)),
            ValueType::I16 => Value::I16(i16::from_le_bytes(self.array(what)?)),
            ValueType::U32 => Value::U32(u32::from_le_bytes(self.array(what)?)),
            ValueType::I32 => Value::I32(i32::from_le_bytes(self.array(what)?)),
            ValueType::F32 => Value::F32(f32::from_le_bytes(self.array(what)?)),
            ValueType::U64 => Value::U64(u64::from_le_bytes(self.array(what)?)),
            ValueType::I64 => Value::I64(i64::from_le_bytes(self.array(what)?)),
            ValueType::F64 => Value::F64(f64::from_le_bytes(self.array(what)?)),
            ValueType::Bool => match self.array::<1>(what)?[0] {
                0 => Value::Bool(false),
                1 => Value::Bool(true),
                b => {
                    return Err(self.err(format!(
                        "{}: bool byte is {b} at offset {}, expected 0 or 1",
                        what(),
                        self.pos - 1
                    )))
                }
            },
            ValueType::String => Value::String(self.string(what)?),
            ValueType::Array => {
                if depth >= MAX_ARRAY_DEPTH {
                    return Err(self.err(format!("{}: arrays nested more than {MAX_ARRAY_DEPTH} deep", what())));
                }
                let id = self.u32(what)?;
                let elem = ValueType::from_u32(id).ok_or_else(|| {
                    self.err(format!("{}: array element type id {id} is unknown (expected 0..=12)", what()))
                })?;
                let at = self.pos;
                let n = self.u64(what)?;
                let fits = self.remaining() / elem.min_encoded_size() as u64;
                if n > fits {
                    return Err(self.err(format!(
                        "{}: array of {n} {elem} at offset {at} runs past the end of the file ({} bytes; room for at most {fits})",
                        what(),
                        self.buf.len()
                    )));
                }
                let mut items = Vec::with_capacity(capacity(n));
                for i in 0..n {
                    let item_what = || format!("{}[{i}]", what());
                    items.push(self.value(elem, &item_what, depth + 1)?);
                }
                Value::Array(elem, items)
            }
        })
    }
}

fn parse_header(path: &Path, buf: &[u8]) -> Result<Header, Error> {
    let mut c = Cursor { path, buf, pos: 0 };
    let magic = buf.get(..4).unwrap_or(buf);
    if magic != GGUF_MAGIC.to_le_bytes() {
        return Err(
            c.err(format!("not a GGUF file: starts with {magic:02x?}, expected the magic \"GGUF\" (47 47 55 46)"))
        );
    }
    c.pos = 4;
    let version = c.u32(&|| "header version".into())?;
    if version != 2 && version != 3 {
        let swapped = version.swap_bytes();
        let what = if (1..=3).contains(&swapped) {
            format!("GGUF version {swapped} is stored big-endian, expected a little-endian file")
        } else {
            format!("GGUF version {version} is not supported, expected 2 or 3")
        };
        return Err(c.err(what));
    }
    let n_tensors = c.u64(&|| "header tensor count".into())?;
    let n_kv = c.u64(&|| "header metadata count".into())?;
    if n_kv > c.remaining() / MIN_KV_BYTES {
        return Err(c.err(format!(
            "header metadata count {n_kv} is more than the remaining {} bytes could hold (at least {MIN_KV_BYTES} bytes each)",
            c.remaining()
        )));
    }
    if n_tensors > (c.remaining() - n_kv * MIN_KV_BYTES) / MIN_TENSOR_INFO_BYTES {
        return Err(c.err(format!(
            "header tensor count {n_tensors} is more than the remaining {} bytes could hold (at least {MIN_TENSOR_INFO_BYTES} bytes each after {n_kv} metadata entries)",
            c.remaining()
        )));
    }

    let mut metadata: Vec<(String, Value)> = Vec::with_capacity(capacity(n_kv));
    let mut seen_keys: HashMap<String, usize> = HashMap::with_capacity(capacity(n_kv));
    for i in 0..n_kv {
        let key = c.string(&|| format!("metadata entry #{i} key"))?;
        let what = || format!("metadata key '{key}'");
        if seen_keys.insert(key.clone(), i as usize).is_some() {
            return Err(c.err(format!("{}: appears twice, expected unique keys", what())));
        }
        let id = c.u32(&what)?;
        let ty = ValueType::from_u32(id)
            .ok_or_else(|| c.err(format!("{}: value type id {id} is unknown (expected 0..=12)", what())))?;
        let value = c.value(ty, &what, 0)?;
        metadata.push((key, value));
    }

    let alignment = match seen_keys.get(crate::names::GENERAL_ALIGNMENT) {
        None => GGUF_DEFAULT_ALIGNMENT,
        Some(&i) => {
            let v = &metadata[i].1;
            match v.as_u64() {
                Some(a) if a.is_power_of_two() && a <= MAX_ALIGNMENT => a,
                _ => {
                    return Err(c.err(format!(
                        "metadata key '{}': {} {}, expected a power of two up to {MAX_ALIGNMENT}",
                        crate::names::GENERAL_ALIGNMENT,
                        v.value_type(),
                        v.summary()
                    )))
                }
            }
        }
    };

    let mut tensors: Vec<TensorInfo> = Vec::with_capacity(capacity(n_tensors));
    let mut seen_tensors: HashMap<String, usize> = HashMap::with_capacity(capacity(n_tensors));
    for i in 0..n_tensors {
        let name = c.string(&|| format!("tensor #{i} name"))?;
        let what = || format!("tensor '{name}'");
        if seen_tensors.insert(name.clone(), i as usize).is_some() {
            return Err(c.err(format!("{}: appears twice in the tensor table, expected unique names", what())));
        }
        let n_dims = c.u32(&what)?;
        if n_dims > MAX_DIMS {
            return Err(c.err(format!("{}: n_dims is {n_dims}, expected at most {MAX_DIMS}", what())));
        }
        let mut shape = Vec::with_capacity(n_dims as usize);
        for _ in 0..n_dims {
            shape.push(c.u64(&what)?);
        }
        if shape.contains(&0) {
            return Err(c.err(format!("{}: shape {shape:?} has a zero dimension, expected all dimensions ≥ 1", what())));
        }
        let id = c.u32(&what)?;
        let dtype = GgmlType::from_u32(id).ok_or_else(|| {
            c.err(format!(
                "{}: ggml type id {id} is not supported (expected one of {})",
                what(),
                GgmlType::ALL.map(|t| format!("{}={}", t.name(), t as u32)).join(", ")
            ))
        })?;
        let offset = c.u64(&what)?;
        tensors.push(TensorInfo { name, shape, dtype, offset });
    }

    let data_offset = align_up(c.pos as u64, alignment);
    let file_len = buf.len() as u64;
    let mut ranges = Vec::with_capacity(tensors.len());
    for (i, t) in tensors.iter().enumerate() {
        let what = || format!("tensor '{}'", t.name);
        let n_elements = t.shape.iter().try_fold(1u64, |acc, &d| acc.checked_mul(d));
        let Some(n_elements) = n_elements.filter(|&n| n <= i64::MAX as u64) else {
            return Err(c.err(format!("{}: shape {:?} has more elements than fit in 63 bits", what(), t.shape)));
        };
        let (bs, ts) = (t.dtype.block_size() as u64, t.dtype.type_size() as u64);
        let ne0 = t.shape.first().copied().unwrap_or(1);
        if ne0 % bs != 0 {
            return Err(c.err(format!(
                "{}: {} rows of {ne0} elements, expected a multiple of the {bs}-element block",
                what(),
                t.dtype
            )));
        }
        let n_bytes = (n_elements / bs).checked_mul(ts);
        let start = data_offset.checked_add(t.offset);
        let end = start.zip(n_bytes).and_then(|(s, n)| s.checked_add(n));
        if t.offset % alignment != 0 {
            return Err(c.err(format!(
                "{}: data offset {} is not a multiple of the alignment {alignment}",
                what(),
                t.offset
            )));
        }
        match end {
            Some(end) if end <= file_len => ranges.push((t.offset, end - data_offset, i)),
            _ => {
                return Err(c.err(format!(
                    "{}: data [offset {}, {} bytes] runs past the end of the file ({file_len} bytes, data section at {data_offset})",
                    what(),
                    t.offset,
                    n_bytes.map_or_else(|| "overflowing".to_owned(), |n| n.to_string()),
                )))
            }
        }
    }
    ranges.sort_unstable();
    for w in ranges.windows(2) {
        let ((a_start, a_end, a), (b_start, _, b)) = (w[0], w[1]);
        if a_end > b_start {
            return Err(c.err(format!(
                "tensor '{}': data [offset {a_start}, {} bytes] overlaps tensor '{}' at offset {b_start}, expected disjoint ranges",
                tensors[a].name,
                a_end - a_start,
                tensors[b].name
            )));
        }
    }
    Ok(Header { version, metadata, tensors, alignment, data_offset })
}

pub(crate) fn align_up(x: u64, alignment: u64) -> u64 {
    x.div_ceil(alignment) * alignment
}

/// A first allocation for `n` entries counted by the header: the count is bounded by the file's size, but the
/// in-memory entries are larger than their encoding, so grow with the data actually read past a small start.
fn capacity(n: u64) -> usize {
    n.min(1 << 12) as usize
}
