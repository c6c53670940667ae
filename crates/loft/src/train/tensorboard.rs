//! TensorBoard event files: the scalars of a run (loss, learning rate, …) as TensorBoard's own reader expects them.
//!
//! A file is a sequence of records, each framed as TFRecord frames them:
//!   u64 little-endian length | masked CRC32C of those 8 bytes | data | masked CRC32C of data
//! and each record's data is one `tensorflow.Event` protobuf, encoded here by hand (only these fields are used):
//!   Event   { wall_time: double = 1; step: int64 = 2; file_version: string = 3; summary: Summary = 5 }
//!   Summary { value: repeated Value = 1 }
//!   Value   { tag: string = 1; simple_value: float = 2 }
//! The first record of a file carries only `file_version = "brain.Event:2"`.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::{Error, Result};

/// The version string TensorBoard checks in a file's first event.
const FILE_VERSION: &str = "brain.Event:2";

/// Appends events to one `events.out.tfevents.*` file. Records are buffered; `flush` (or dropping the writer)
/// hands them to the operating system, after which TensorBoard can read them while training goes on.
pub struct TensorBoardWriter {
    path: PathBuf,
    file: BufWriter<File>,
}

impl TensorBoardWriter {
    /// Creates `<dir>/events.out.tfevents.<unix_secs>.<hostname>.<pid>.0` (TensorBoard's naming; the last number
    /// goes up when a writer of the same process already made that file in the same second), writing the
    /// file_version "brain.Event:2" event first. `dir` is created if missing.
    pub fn create(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        let prefix = format!("events.out.tfevents.{}.{}.{}", now.as_secs(), hostname(), std::process::id());
        let mut index = 0u32;
        let (path, file) = loop {
            let path = dir.join(format!("{prefix}.{index}"));
            match OpenOptions::new().write(true).create_new(true).open(&path) {
                Ok(file) => break (path, file),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && index < 1000 => index += 1,
                Err(e) => return Err(Error::io(&path, e)),
            }
        };
        let mut writer = TensorBoardWriter { path, file: BufWriter::new(file) };
        let mut event = Vec::new();
        put_double(&mut event, 1, wall_time());
        put_bytes(&mut event, 3, FILE_VERSION.as_bytes());
        writer.write_record(&event)?;
        writer.flush()?;
        Ok(writer)
    }

    /// The event file this writer appends to.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// One scalar point of the curve `tag` (TensorBoard stores it as a 32-bit float).
    pub fn add_scalar(&mut self, tag: &str, step: u64, value: f64) -> Result<()> {
        let mut summary_value = Vec::new();
        put_bytes(&mut summary_value, 1, tag.as_bytes());
        put_float(&mut summary_value, 2, value as f32);
        let mut summary = Vec::new();
        put_bytes(&mut summary, 1, &summary_value);
        let mut event = Vec::new();
        put_double(&mut event, 1, wall_time());
        // int64 on the wire is the two's-complement varint, which for steps below 2^63 is the plain u64 varint.
        put_varint_field(&mut event, 2, step);
        put_bytes(&mut event, 5, &summary);
        self.write_record(&event)
    }

    /// Hands the buffered events to the operating system.
    pub fn flush(&mut self) -> Result<()> {
        self.file.flush().map_err(|e| Error::io(&self.path, e))
    }

    fn write_record(&mut self, data: &[u8]) -> Result<()> {
        let len = (data.len() as u64).to_le_bytes();
        let mut record = Vec::with_capacity(data.len() + 16);
        record.extend_from_slice(&len);
        record.extend_from_slice(&masked_crc32c(&len).to_le_bytes());
        record.extend_from_slice(data);
        record.extend_from_slice(&masked_crc32c(data).to_le_bytes());
        self.file.write_all(&record).map_err(|e| Error::io(&self.path, e))
    }
}

fn wall_time() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

/// The machine's name for the file name (TensorBoard only shows it), kept to characters safe in a file name.
fn hostname() -> String {
    let raw = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .or_else(|| std::env::var("COMPUTERNAME").ok())
        .unwrap_or_default();
    let name: String =
        raw.trim().chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' }).collect();
    if name.is_empty() {
        "localhost".into()
    } else {
        name
    }
}

// Protobuf wire format: a field's key is (number << 3) | wire type; 0 = varint, 1 = 64-bit, 2 = length-delimited,
// 5 = 32-bit. Fixed-width values are little-endian.

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8 & 0x7f) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_varint_field(out: &mut Vec<u8>, field: u32, v: u64) {
    put_varint(out, u64::from(field) << 3);
    put_varint(out, v);
}

fn put_double(out: &mut Vec<u8>, field: u32, v: f64) {
    put_varint(out, (u64::from(field) << 3) | 1);
    out.extend_from_slice(&v.to_le_bytes());
}

fn put_bytes(out: &mut Vec<u8>, field: u32, bytes: &[u8]) {
    put_varint(out, (u64::from(field) << 3) | 2);
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

fn put_float(out: &mut Vec<u8>, field: u32, v: f32) {
    put_varint(out, (u64::from(field) << 3) | 5);
    out.extend_from_slice(&v.to_le_bytes());
}

/// CRC-32C (Castagnoli), reflected polynomial 0x82F63B78, one byte per step from a 256-entry table.
const CRC32C_TABLE: [u32; 256] = {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut crc = i as u32;
        let mut bit = 0;
        while bit < 8 {
            crc = if crc & 1 != 0 { (crc >> 1) ^ 0x82F6_3B78 } else { crc >> 1 };
            bit += 1;
        }
        table[i] = crc;
        i += 1;
    }
    table
};

fn crc32c(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc = CRC32C_TABLE[((crc ^ u32::from(b)) & 0xff) as usize] ^ (crc >> 8);
    }
    !crc
}

/// TFRecord stores CRCs rotated and offset, so that a CRC of data that itself holds CRCs stays well mixed.
fn masked_crc32c(data: &[u8]) -> u32 {
    let crc = crc32c(data);
    crc.rotate_right(15).wrapping_add(0xa282_ead8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_known_vectors() {
        // Check value from the CRC catalogue, and the iSCSI test patterns of RFC 3720, appendix B.4.
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
        assert_eq!(crc32c(b""), 0);
        assert_eq!(crc32c(&[0u8; 32]), 0x8A91_36AA);
        assert_eq!(crc32c(&[0xffu8; 32]), 0x62A8_AB43);
        let ascending: Vec<u8> = (0..32).collect();
        assert_eq!(crc32c(&ascending), 0x46DD_794E);
        let descending: Vec<u8> = (0..32).rev().collect();
        assert_eq!(crc32c(&descending), 0x113F_DB5C);
    }

    #[test]
    fn mask_rotates_and_offsets() {
        // Value from TensorBoard's own `record_writer.masked_crc32c(b"123456789")`.
        assert_eq!(masked_crc32c(b"123456789"), 0xC78A_B0E5);
    }

    #[test]
    fn protobuf_fields_are_encoded_as_the_wire_format_says() {
        let mut out = Vec::new();
        put_varint_field(&mut out, 2, 300);
        assert_eq!(out, [0x10, 0xac, 0x02]);
        out.clear();
        put_bytes(&mut out, 1, b"loss");
        assert_eq!(out, [0x0a, 4, b'l', b'o', b's', b's']);
        out.clear();
        put_float(&mut out, 2, 1.0);
        assert_eq!(out, [0x15, 0, 0, 0x80, 0x3f]);
        out.clear();
        put_double(&mut out, 1, 1.0);
        assert_eq!(out, [0x09, 0, 0, 0, 0, 0, 0, 0xf0, 0x3f]);
    }

    #[test]
    fn records_are_framed_with_length_and_masked_crcs() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("run");
        let mut w = TensorBoardWriter::create(&dir).unwrap();
        w.add_scalar("train/loss", 7, 2.5).unwrap();
        w.flush().unwrap();
        let name = w.path().file_name().unwrap().to_str().unwrap();
        assert!(name.starts_with("events.out.tfevents.") && name.ends_with(".0"), "{name}");
        let second = TensorBoardWriter::create(&dir).unwrap();
        assert_ne!(second.path(), w.path(), "a second writer must not overwrite the first file");

        let bytes = std::fs::read(w.path()).unwrap();
        let mut records = Vec::new();
        let mut at = 0;
        while at < bytes.len() {
            let len_bytes = &bytes[at..at + 8];
            let len = u64::from_le_bytes(len_bytes.try_into().unwrap()) as usize;
            assert_eq!(bytes[at + 8..at + 12], masked_crc32c(len_bytes).to_le_bytes());
            let data = &bytes[at + 12..at + 12 + len];
            assert_eq!(bytes[at + 12 + len..at + 16 + len], masked_crc32c(data).to_le_bytes());
            records.push(data.to_vec());
            at += 16 + len;
        }
        assert_eq!(records.len(), 2);
        assert!(records[0].ends_with(b"\x1a\x0dbrain.Event:2"));
        // step 7, then summary { value { tag "train/loss", simple_value 2.5 } }, after the 9-byte wall_time.
        let mut want_tail = vec![0x10, 7, 0x2a, 19, 0x0a, 17, 0x0a, 10];
        want_tail.extend_from_slice(b"train/loss");
        want_tail.push(0x15);
        want_tail.extend_from_slice(&2.5f32.to_le_bytes());
        assert_eq!(records[1][9..], want_tail[..]);
    }
}
