//! Broken files: built with GgufWriter, then corrupted. Each must give a one-line error naming the file, the
//! key or tensor and what was expected — never a panic, never an allocation sized by an unchecked field.

use gguf::{GgmlType, GgufFile, GgufWriter, Value, ValueType};

/// Two F32 tensors of 8 values, one u32 key and one string array.
fn valid() -> Vec<u8> {
    let mut w = GgufWriter::new();
    w.add("general.architecture", "llama".into());
    w.add("keyU", Value::U32(7));
    w.add("keyS", Value::Array(ValueType::String, vec!["xyz".into()]));
    w.add_tensor("tensA", vec![8], GgmlType::F32, vec![1; 32]).expect("a");
    w.add_tensor("tensB", vec![8], GgmlType::F32, vec![2; 32]).expect("b");
    let mut bytes = Vec::new();
    w.write_to(&mut bytes).expect("write");
    bytes
}

fn find(bytes: &[u8], needle: &[u8]) -> usize {
    bytes.windows(needle.len()).position(|w| w == needle).expect("needle")
}

/// Offsets of a tensor info's fields: (n_dims, ne[0], type, offset), for one dimension.
fn tensor_fields(bytes: &[u8], name: &str) -> (usize, usize, usize, usize) {
    let n_dims = find(bytes, name.as_bytes()) + name.len();
    (n_dims, n_dims + 4, n_dims + 12, n_dims + 16)
}

fn put_u32(bytes: &mut [u8], at: usize, v: u32) {
    bytes[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

fn put_u64(bytes: &mut [u8], at: usize, v: u64) {
    bytes[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

fn error(bytes: Vec<u8>) -> String {
    let msg = GgufFile::from_bytes("bad.gguf", bytes).expect_err("must be rejected").to_string();
    assert!(msg.starts_with("bad.gguf: "), "{msg}");
    assert!(!msg.contains('\n'), "{msg}");
    msg
}

#[test]
fn the_valid_file_opens() {
    let f = GgufFile::from_bytes("ok.gguf", valid()).expect("valid");
    assert_eq!(f.dequantize("tensB").expect("b").len(), 8);
}

#[test]
fn every_truncation_is_an_error() {
    let bytes = valid();
    for len in 0..bytes.len() {
        let msg = error(bytes[..len].to_vec());
        assert!(
            msg.contains("expected")
                || msg.contains("file ends")
                || msg.contains("past the end")
                || msg.contains("more than the remaining"),
            "{len}: {msg}"
        );
    }
}

#[test]
fn every_corrupt_byte_is_handled_without_panic() {
    let bytes = valid();
    for at in 0..bytes.len() {
        for v in [0x00, 0x01, 0x7f, 0x80, 0xff] {
            let mut b = bytes.clone();
            b[at] = v;
            if let Ok(f) = GgufFile::from_bytes("fuzz.gguf", b) {
                for t in &f.tensors {
                    let _ = f.dequantize(&t.name);
                }
            }
        }
    }
}

#[test]
fn truncated_data_names_the_tensor() {
    let mut bytes = valid();
    bytes.truncate(bytes.len() - 1);
    let len = bytes.len();
    let msg = error(bytes);
    assert!(
        msg.starts_with(&format!(
            "bad.gguf: tensor 'tensB': data [offset 32, 32 bytes] runs past the end of the file ({len} bytes"
        )),
        "{msg}"
    );
}

#[test]
fn wrong_magic_and_versions() {
    let mut b = valid();
    b[..4].copy_from_slice(b"GGML");
    assert_eq!(
        error(b),
        "bad.gguf: not a GGUF file: starts with [47, 47, 4d, 4c], expected the magic \"GGUF\" (47 47 55 46)"
    );
    for (v, want) in [
        (1, "GGUF version 1 is not supported, expected 2 or 3"),
        (4, "GGUF version 4 is not supported, expected 2 or 3"),
        (3u32.swap_bytes(), "GGUF version 3 is stored big-endian, expected a little-endian file"),
    ] {
        let mut b = valid();
        put_u32(&mut b, 4, v);
        assert_eq!(error(b), format!("bad.gguf: {want}"));
    }
    let mut b = valid();
    put_u32(&mut b, 4, 2);
    GgufFile::from_bytes("v2.gguf", b).expect("version 2 reads like 3");
}

#[test]
fn absurd_counts() {
    let mut b = valid();
    put_u64(&mut b, 8, u64::MAX);
    let msg = error(b);
    assert!(msg.contains("header tensor count 18446744073709551615 is more than the remaining"), "{msg}");
    let mut b = valid();
    put_u64(&mut b, 16, 1 << 40);
    let msg = error(b);
    assert!(msg.contains("header metadata count 1099511627776 is more than the remaining"), "{msg}");
}

#[test]
fn lengths_past_the_end() {
    let mut b = valid();
    let at = find(&b, b"keyU") - 8;
    put_u64(&mut b, at, u64::MAX / 2);
    let msg = error(b);
    assert!(msg.contains("metadata entry #1 key: string length 9223372036854775807"), "{msg}");
    assert!(msg.contains("runs past the end of the file"), "{msg}");

    let mut b = valid();
    let count = find(&b, b"xyz") - 16;
    put_u64(&mut b, count, 1 << 50);
    let msg = error(b);
    assert!(msg.contains("metadata key 'keyS': array of 1125899906842624 string"), "{msg}");

    let mut b = valid();
    let at = find(&b, b"xyz") - 8;
    put_u64(&mut b, at, 1 << 30);
    let msg = error(b);
    assert!(msg.contains("metadata key 'keyS'[0]: string length 1073741824"), "{msg}");
}

#[test]
fn bad_value_types() {
    let mut b = valid();
    let at = find(&b, b"keyU") + 4;
    put_u32(&mut b, at, 13);
    assert_eq!(error(b), "bad.gguf: metadata key 'keyU': value type id 13 is unknown (expected 0..=12)");
    let mut b = valid();
    let at = find(&b, b"xyz") - 20;
    put_u32(&mut b, at, 99);
    assert_eq!(error(b), "bad.gguf: metadata key 'keyS': array element type id 99 is unknown (expected 0..=12)");
}

#[test]
fn duplicate_keys_and_tensors() {
    let mut b = valid();
    let at = find(&b, b"keyS");
    b[at..at + 4].copy_from_slice(b"keyU");
    assert_eq!(error(b), "bad.gguf: metadata key 'keyU': appears twice, expected unique keys");
    let mut b = valid();
    let at = find(&b, b"tensB");
    b[at..at + 5].copy_from_slice(b"tensA");
    assert_eq!(error(b), "bad.gguf: tensor 'tensA': appears twice in the tensor table, expected unique names");
}

#[test]
fn bad_shapes() {
    let mut b = valid();
    let (n_dims, ..) = tensor_fields(&b, "tensA");
    put_u32(&mut b, n_dims, 5);
    assert_eq!(error(b), "bad.gguf: tensor 'tensA': n_dims is 5, expected at most 4");

    let mut b = valid();
    let (_, ne0, ..) = tensor_fields(&b, "tensA");
    put_u64(&mut b, ne0, 0);
    assert_eq!(error(b), "bad.gguf: tensor 'tensA': shape [0] has a zero dimension, expected all dimensions ≥ 1");

    let mut b = valid();
    let (_, ne0, ..) = tensor_fields(&b, "tensA");
    put_u64(&mut b, ne0, u64::MAX);
    let msg = error(b);
    assert!(msg.starts_with("bad.gguf: tensor 'tensA': "), "{msg}");

    // Two dimensions whose product overflows: reuse the 4 n_dims bytes … by making n_dims 2 the following
    // fields shift, so build it with the writer's header instead: shape [2^32, 2^32].
    let mut w = GgufWriter::new();
    w.add_tensor("big", vec![1, 1], GgmlType::F32, vec![0; 4]).expect("big");
    let mut b = Vec::new();
    w.write_to(&mut b).expect("write");
    let (_, ne0, ..) = tensor_fields(&b, "big");
    put_u64(&mut b, ne0, 1 << 32);
    put_u64(&mut b, ne0 + 8, 1 << 32);
    assert_eq!(
        error(b),
        "bad.gguf: tensor 'big': shape [4294967296, 4294967296] has more elements than fit in 63 bits"
    );
}

#[test]
fn unsupported_type_and_partial_blocks() {
    let mut b = valid();
    let (_, _, ty, _) = tensor_fields(&b, "tensA");
    put_u32(&mut b, ty, 16);
    let msg = error(b);
    assert!(
        msg.starts_with("bad.gguf: tensor 'tensA': ggml type id 16 is not supported (expected one of F32=0,"),
        "{msg}"
    );

    let mut b = valid();
    let (_, _, ty, _) = tensor_fields(&b, "tensA");
    put_u32(&mut b, ty, GgmlType::Q8_0 as u32);
    assert_eq!(
        error(b),
        "bad.gguf: tensor 'tensA': Q8_0 rows of 8 elements, expected a multiple of the 32-element block"
    );
}

#[test]
fn bad_offsets() {
    let mut b = valid();
    let (.., off) = tensor_fields(&b, "tensB");
    put_u64(&mut b, off, 33);
    assert_eq!(error(b), "bad.gguf: tensor 'tensB': data offset 33 is not a multiple of the alignment 32");

    let mut b = valid();
    let (.., off) = tensor_fields(&b, "tensB");
    put_u64(&mut b, off, u64::MAX - 31);
    let msg = error(b);
    assert!(msg.contains("tensor 'tensB': data [offset 18446744073709551584, 32 bytes] runs past the end"), "{msg}");

    let mut b = valid();
    let (.., off) = tensor_fields(&b, "tensB");
    put_u64(&mut b, off, 0);
    assert_eq!(
        error(b),
        "bad.gguf: tensor 'tensA': data [offset 0, 32 bytes] overlaps tensor 'tensB' at offset 0, expected disjoint ranges"
    );
}

#[test]
fn bad_alignment_and_bool() {
    let mut w = GgufWriter::new();
    w.add("general.alignment", Value::U32(64));
    w.add("flag", Value::Bool(true));
    let mut b = Vec::new();
    w.write_to(&mut b).expect("write");
    let at = find(&b, &64u32.to_le_bytes());
    put_u32(&mut b, at, 48);
    assert_eq!(
        error(b.clone()),
        "bad.gguf: metadata key 'general.alignment': u32 48, expected a power of two up to 1048576"
    );
    put_u32(&mut b, at, 64);
    let last = b.iter().rposition(|&x| x == 1).expect("bool byte");
    b[last] = 2;
    let msg = error(b);
    assert!(msg.contains("metadata key 'flag': bool byte is 2"), "{msg}");
}

#[test]
fn missing_file_names_it() {
    let msg = GgufFile::open("/nonexistent/x.gguf").expect_err("missing").to_string();
    assert!(msg.starts_with("/nonexistent/x.gguf: cannot open: "), "{msg}");
}
