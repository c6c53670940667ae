//! The GGUF writer: version 3, little-endian, data section and every tensor aligned to `general.alignment`
//! (default 32), each tensor's data padded to the alignment as llama.cpp's gguf.cpp writes it.

use std::io::Write;
use std::path::Path;

use crate::reader::align_up;
use crate::{Error, GgmlType, Value, GGUF_DEFAULT_ALIGNMENT, GGUF_MAGIC, GGUF_VERSION};

/// llama.cpp's GGML_MAX_NAME: it refuses tensor names of this many bytes or more.
pub const MAX_TENSOR_NAME_BYTES: usize = 64;

struct PendingTensor {
    name: String,
    shape: Vec<u64>,
    dtype: GgmlType,
    data: Vec<u8>,
}

/// Collects metadata and tensors in order, then writes them as one GGUF file.
#[derive(Default)]
pub struct GgufWriter {
    metadata: Vec<(String, Value)>,
    tensors: Vec<PendingTensor>,
}

impl GgufWriter {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a metadata entry; a key added again replaces the earlier value in place.
    pub fn add(&mut self, key: impl Into<String>, value: Value) {
        let key = key.into();
        match self.metadata.iter_mut().find(|(k, _)| *k == key) {
            Some(entry) => entry.1 = value,
            None => self.metadata.push((key, value)),
        }
    }

    /// Adds a tensor. `shape` is in ggml order (innermost first); `data` must be exactly its encoded size.
    pub fn add_tensor(
        &mut self,
        name: impl Into<String>,
        shape: Vec<u64>,
        dtype: GgmlType,
        data: Vec<u8>,
    ) -> Result<(), Error> {
        let name = name.into();
        let err = |what: String| Error::Writer(format!("tensor '{name}': {what}"));
        if name.is_empty() || name.len() >= MAX_TENSOR_NAME_BYTES {
            return Err(err(format!(
                "name is {} bytes, expected 1 to {} (llama.cpp's GGML_MAX_NAME)",
                name.len(),
                MAX_TENSOR_NAME_BYTES - 1
            )));
        }
        if self.tensors.iter().any(|t| t.name == name) {
            return Err(err("added twice, expected unique names".into()));
        }
        if shape.is_empty() || shape.len() > 4 || shape.contains(&0) {
            return Err(err(format!("shape {shape:?}, expected 1 to 4 dimensions, each ≥ 1")));
        }
        let ne0 = shape[0];
        if !ne0.is_multiple_of(dtype.block_size() as u64) {
            return Err(err(format!(
                "shape {shape:?} of {dtype}: ne[0] = {ne0} is not a multiple of the {}-element block",
                dtype.block_size()
            )));
        }
        let n_bytes = shape
            .iter()
            .try_fold(1u64, |acc, &d| acc.checked_mul(d))
            .and_then(|n| (n / dtype.block_size() as u64).checked_mul(dtype.type_size() as u64));
        if n_bytes != Some(data.len() as u64) {
            return Err(err(format!(
                "shape {shape:?} of {dtype} needs {} bytes, got {}",
                n_bytes.map_or_else(|| "overflowing".to_owned(), |n| n.to_string()),
                data.len()
            )));
        }
        self.tensors.push(PendingTensor { name, shape, dtype, data });
        Ok(())
    }

    fn alignment(&self) -> Result<u64, Error> {
        let key = crate::names::GENERAL_ALIGNMENT;
        match self.metadata.iter().find(|(k, _)| k == key) {
            None => Ok(GGUF_DEFAULT_ALIGNMENT),
            // gguf.cpp requires the u32 type for this key.
            Some((_, Value::U32(a))) if a.is_power_of_two() => Ok(u64::from(*a)),
            Some((_, v)) => Err(Error::Writer(format!(
                "metadata key '{key}': {} {}, expected a u32 power of two",
                v.value_type(),
                v.summary()
            ))),
        }
    }

    /// Writes to `PATH.tmp`, syncs, then renames over `path`: the file is complete or absent.
    pub fn write(&self, path: impl AsRef<Path>) -> Result<(), Error> {
        let path = path.as_ref();
        let mut tmp_name = path.as_os_str().to_owned();
        tmp_name.push(".tmp");
        let tmp = std::path::PathBuf::from(tmp_name);
        let io = |action: &'static str, p: &Path| {
            let p = p.to_path_buf();
            move |source| Error::Io { path: p, action, source }
        };
        let result = (|| {
            let file = std::fs::File::create(&tmp).map_err(io("create", &tmp))?;
            let mut w = std::io::BufWriter::with_capacity(1 << 20, file);
            self.write_to(&mut w).map_err(|e| match e {
                Error::Io { action, source, .. } => Error::Io { path: tmp.clone(), action, source },
                other => other,
            })?;
            let file = w.into_inner().map_err(|e| io("write", &tmp)(e.into_error()))?;
            file.sync_all().map_err(io("sync", &tmp))?;
            std::fs::rename(&tmp, path).map_err(io("rename the temporary file onto", path))
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result
    }

    /// Writes the whole file to `w`.
    pub fn write_to(&self, w: &mut impl Write) -> Result<(), Error> {
        let alignment = self.alignment()?;
        for (key, value) in &self.metadata {
            check_value(key, value, 0)?;
        }
        let io = |source| Error::Io { path: "<GGUF writer output>".into(), action: "write", source };
        let mut header = Vec::new();
        header.extend_from_slice(&GGUF_MAGIC.to_le_bytes());
        header.extend_from_slice(&GGUF_VERSION.to_le_bytes());
        header.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
        header.extend_from_slice(&(self.metadata.len() as u64).to_le_bytes());
        for (key, value) in &self.metadata {
            put_str(&mut header, key);
            header.extend_from_slice(&(value.value_type() as u32).to_le_bytes());
            put_value(&mut header, value);
        }
        let mut offset = 0u64;
        for t in &self.tensors {
            put_str(&mut header, &t.name);
            header.extend_from_slice(&(t.shape.len() as u32).to_le_bytes());
            for d in &t.shape {
                header.extend_from_slice(&d.to_le_bytes());
            }
            header.extend_from_slice(&(t.dtype as u32).to_le_bytes());
            header.extend_from_slice(&offset.to_le_bytes());
            offset = align_up(offset + t.data.len() as u64, alignment);
        }
        let padded = align_up(header.len() as u64, alignment) as usize;
        header.resize(padded, 0);
        w.write_all(&header).map_err(io)?;
        let zeros = vec![0u8; alignment as usize];
        for t in &self.tensors {
            w.write_all(&t.data).map_err(io)?;
            let pad = align_up(t.data.len() as u64, alignment) as usize - t.data.len();
            w.write_all(&zeros[..pad]).map_err(io)?;
        }
        w.flush().map_err(io)
    }
}

/// Every array element must have the array's declared type.
fn check_value(key: &str, value: &Value, depth: usize) -> Result<(), Error> {
    if let Value::Array(elem, items) = value {
        if depth >= 8 {
            return Err(Error::Writer(format!("metadata key '{key}': arrays nested more than 8 deep")));
        }
        for (i, item) in items.iter().enumerate() {
            if item.value_type() != *elem {
                return Err(Error::Writer(format!(
                    "metadata key '{key}': array of {elem} has a {} at index {i}",
                    item.value_type()
                )));
            }
            check_value(key, item, depth + 1)?;
        }
    }
    Ok(())
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn put_value(out: &mut Vec<u8>, value: &Value) {
    match value {
        Value::U8(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::I8(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::U16(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::I16(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::U32(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::I32(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::F32(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::Bool(v) => out.push(u8::from(*v)),
        Value::String(s) => put_str(out, s),
        Value::Array(elem, items) => {
            out.extend_from_slice(&(*elem as u32).to_le_bytes());
            out.extend_from_slice(&(items.len() as u64).to_le_bytes());
            // Elements carry no type tag of their own; a nested array's payload starts with its element type.
            for item in items {
                put_value(out, item);
            }
        }
        Value::U64(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::I64(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::F64(v) => out.extend_from_slice(&v.to_le_bytes()),
    }
}
