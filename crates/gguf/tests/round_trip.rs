//! Writer → reader round trips: every metadata value type, tensors of several types, alignment.

use gguf::{GgmlType, GgufFile, GgufWriter, Value, ValueType};

/// A small deterministic generator (xorshift64*), so tests need no rand crate.
pub struct Rng(u64);
impl Rng {
    pub fn next_f32(&mut self) -> f32 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let bits = self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 40;
        (bits as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
}

fn all_values() -> Vec<(String, Value)> {
    vec![
        ("t.u8".into(), Value::U8(200)),
        ("t.i8".into(), Value::I8(-5)),
        ("t.u16".into(), Value::U16(65535)),
        ("t.i16".into(), Value::I16(-32768)),
        ("t.u32".into(), Value::U32(4_000_000_000)),
        ("t.i32".into(), Value::I32(-7)),
        ("t.f32".into(), Value::F32(1.5e-5)),
        ("t.bool".into(), Value::Bool(true)),
        ("t.string".into(), Value::String("héllo wörld ✓ 🦙".into())),
        ("t.empty_string".into(), Value::String(String::new())),
        ("t.u64".into(), Value::U64(u64::MAX)),
        ("t.i64".into(), Value::I64(i64::MIN)),
        ("t.f64".into(), Value::F64(std::f64::consts::PI)),
        ("t.str_array".into(), Value::Array(ValueType::String, vec!["a".into(), "Ġthe".into(), "".into()])),
        ("t.empty_array".into(), Value::Array(ValueType::U32, vec![])),
        ("t.f32_array".into(), Value::Array(ValueType::F32, vec![Value::F32(-1.0), Value::F32(0.25)])),
        (
            "t.nested".into(),
            Value::Array(
                ValueType::Array,
                vec![
                    Value::Array(ValueType::I32, vec![Value::I32(1), Value::I32(-2)]),
                    Value::Array(ValueType::String, vec![]),
                ],
            ),
        ),
        ("tokenizer.chat_template".into(), Value::String("{% for m in messages %}{{ m }}{% endfor %}\n".into())),
    ]
}

#[test]
fn metadata_and_tensors_round_trip() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("rt.gguf");
    let mut w = GgufWriter::new();
    for (k, v) in all_values() {
        w.add(k, v);
    }
    let mut rng = Rng(42);
    let mut tensors = Vec::new();
    for (i, (dtype, shape)) in [
        (GgmlType::F32, vec![3u64]),
        (GgmlType::F16, vec![5, 3]),
        (GgmlType::BF16, vec![7, 2, 1]),
        (GgmlType::Q8_0, vec![64, 3]),
        (GgmlType::Q4_1, vec![32, 1, 2, 2]),
        (GgmlType::Q4K, vec![256, 2]),
        (GgmlType::Q6K, vec![512]),
    ]
    .into_iter()
    .enumerate()
    {
        let n: u64 = shape.iter().product();
        let data: Vec<f32> = (0..n).map(|_| rng.next_f32()).collect();
        let bytes = gguf::quantize(dtype, &data, shape[0] as usize).expect("quantize");
        let name = format!("t{i}.{}", dtype.name());
        w.add_tensor(&name, shape.clone(), dtype, bytes.clone()).expect("add_tensor");
        tensors.push((name, shape, dtype, bytes));
    }
    w.write(&path).expect("write");
    assert!(!dir.path().join("rt.gguf.tmp").exists());

    let f = GgufFile::open(&path).expect("open");
    assert_eq!(f.version, 3);
    assert_eq!(f.alignment, 32);
    assert_eq!(f.metadata, all_values());
    assert_eq!(f.data_offset() % 32, 0);
    assert_eq!(f.tensors.len(), tensors.len());
    for (info, (name, shape, dtype, bytes)) in f.tensors.iter().zip(&tensors) {
        assert_eq!(&info.name, name);
        assert_eq!(&info.shape, shape);
        assert_eq!(info.dtype, *dtype);
        assert_eq!(info.offset % 32, 0, "{name}");
        assert_eq!(f.tensor_bytes(info), bytes.as_slice(), "{name}");
        assert_eq!(f.tensor_info(name), Some(info));
    }
    assert_eq!(f.get_str("t.string").expect("str"), "héllo wörld ✓ 🦙");
    assert_eq!(f.get_u32("t.u16").expect("u16 as u32"), 65535);
    assert_eq!(f.get_u64("t.u64").expect("u64"), u64::MAX);
    assert_eq!(f.get_f32("t.i32").expect("i32 as f32"), -7.0);
    assert_eq!(f.get("t.str_array").and_then(Value::as_str_array), Some(vec!["a", "Ġthe", ""]));
    assert_eq!(f.get("t.f32_array").and_then(Value::as_f32_array), Some(vec![-1.0, 0.25]));

    // Writing what was read gives the same bytes.
    let mut w2 = GgufWriter::new();
    for (k, v) in &f.metadata {
        w2.add(k.clone(), v.clone());
    }
    for t in &f.tensors {
        w2.add_tensor(t.name.clone(), t.shape.clone(), t.dtype, f.tensor_bytes(t).to_vec()).expect("add");
    }
    let mut again = Vec::new();
    w2.write_to(&mut again).expect("write_to");
    assert_eq!(again, std::fs::read(&path).expect("read"));
}

#[test]
fn custom_alignment_is_respected() {
    let mut w = GgufWriter::new();
    w.add("general.alignment", Value::U32(64));
    w.add_tensor("a", vec![3], GgmlType::F32, vec![0; 12]).expect("a");
    w.add_tensor("b", vec![5], GgmlType::F16, vec![1; 10]).expect("b");
    let mut bytes = Vec::new();
    w.write_to(&mut bytes).expect("write");
    let f = GgufFile::from_bytes("mem.gguf", bytes).expect("parse");
    assert_eq!(f.alignment, 64);
    assert_eq!(f.data_offset() % 64, 0);
    assert_eq!(f.tensors[1].offset, 64);
    assert_eq!(f.tensor_bytes(&f.tensors[1]), &[1u8; 10]);
}

#[test]
fn getters_name_file_and_key() {
    let mut w = GgufWriter::new();
    w.add("a.str", "x".into());
    w.add("a.neg", Value::I32(-1));
    let mut bytes = Vec::new();
    w.write_to(&mut bytes).expect("write");
    let f = GgufFile::from_bytes("m.gguf", bytes).expect("parse");
    let e = f.get_u32("llama.block_count").expect_err("missing").to_string();
    assert_eq!(e, "m.gguf: missing metadata key 'llama.block_count' (expected an integer in u32 range)");
    let e = f.get_u32("a.neg").expect_err("negative").to_string();
    assert_eq!(e, "m.gguf: metadata key 'a.neg' is i32 -1, expected an integer in u32 range");
    let e = f.get_str("a.neg").expect_err("wrong type").to_string();
    assert_eq!(e, "m.gguf: metadata key 'a.neg' is i32 -1, expected a string");
    let e = f.dequantize("nope").expect_err("no tensor").to_string();
    assert_eq!(e, "m.gguf: no tensor named 'nope'");
}

#[test]
fn writer_rejects_bad_tensors_and_values() {
    let mut w = GgufWriter::new();
    let e = w.add_tensor("x", vec![3], GgmlType::F32, vec![0; 8]).expect_err("len").to_string();
    assert_eq!(e, "GGUF writer: tensor 'x': shape [3] of F32 needs 12 bytes, got 8");
    let e = w.add_tensor("q", vec![16], GgmlType::Q8_0, vec![0; 34]).expect_err("block").to_string();
    assert!(e.contains("not a multiple of the 32-element block"), "{e}");
    let e = w.add_tensor("z", vec![0], GgmlType::F32, vec![]).expect_err("zero").to_string();
    assert!(e.contains("each ≥ 1"), "{e}");
    let long = "n".repeat(64);
    assert!(w.add_tensor(long, vec![1], GgmlType::F32, vec![0; 4]).is_err());
    w.add_tensor("ok", vec![1], GgmlType::F32, vec![0; 4]).expect("ok");
    let e = w.add_tensor("ok", vec![1], GgmlType::F32, vec![0; 4]).expect_err("dup").to_string();
    assert!(e.contains("added twice"), "{e}");
    w.add("arr", Value::Array(ValueType::U32, vec![Value::U32(1), Value::I32(2)]));
    let e = w.write_to(&mut Vec::new()).expect_err("mixed array").to_string();
    assert_eq!(e, "GGUF writer: metadata key 'arr': array of u32 has a i32 at index 1");
}

#[test]
fn write_is_atomic_on_failure() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("bad.gguf");
    let mut w = GgufWriter::new();
    w.add("general.alignment", Value::U32(3));
    assert!(w.write(&path).is_err());
    assert!(!path.exists());
    assert!(!dir.path().join("bad.gguf.tmp").exists());
}
