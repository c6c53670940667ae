//! TensorBoard event files written by loft are read back by TensorBoard's own reader (`EventAccumulator`, through
//! scripts/read_tensorboard.py in the venv that `scripts/fetch.sh tensorboard` makes): every tag, step and value.
#![allow(clippy::unwrap_used)]

mod common;

use std::process::Command;

use loft::train::tensorboard::TensorBoardWriter;

/// TensorBoard's view of a run folder: tag → [(step, value)].
fn read_with_tensorboard(dir: &std::path::Path) -> serde_json::Map<String, serde_json::Value> {
    let script = common::workspace().join("scripts/read_tensorboard.py");
    let out = Command::new(common::tensorboard_py()).arg(&script).arg(dir).output().unwrap();
    assert!(out.status.success(), "read_tensorboard.py failed: {}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v.as_object().unwrap().clone()
}

fn assert_points(scalars: &serde_json::Map<String, serde_json::Value>, tag: &str, want: &[(u64, f64)]) {
    let got = scalars.get(tag).unwrap_or_else(|| panic!("TensorBoard sees no tag {tag}; it sees {scalars:?}"));
    let got = got.as_array().unwrap_or_else(|| panic!("{tag}: not a list"));
    assert_eq!(got.len(), want.len(), "{tag}: number of points");
    for (point, &(step, value)) in got.iter().zip(want) {
        assert_eq!(point[0].as_u64(), Some(step), "{tag}: step");
        // TensorBoard keeps simple_value as a 32-bit float, so the two must agree once rounded to f32 (compared as
        // f32 because serde_json's default float parser may be one f64 ulp off Python's shortest repr).
        let v = point[1].as_f64().unwrap();
        assert_eq!(v as f32, value as f32, "{tag} at step {step}: {v} vs {value}");
    }
}

#[test]
fn tensorboard_reads_every_scalar_loft_writes() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("run");
    let loss: Vec<(u64, f64)> =
        (0..300u64).map(|s| (s, 3.0 * (-(s as f64) / 80.0).exp() + 0.1 / (s + 1) as f64)).collect();
    let lr: Vec<(u64, f64)> = (0..300u64).map(|s| (s, 2e-4 * (1.0 - s as f64 / 300.0))).collect();
    let eval: Vec<(u64, f64)> = vec![(100, 1.25), (200, 0.875), (299, 123456.789), (1 << 40, -1e-30)];
    let mut w = TensorBoardWriter::create(&dir).unwrap();
    for (&(step, l), &(_, r)) in loss.iter().zip(&lr) {
        w.add_scalar("train/loss", step, l).unwrap();
        w.add_scalar("train/learning_rate", step, r).unwrap();
    }
    for &(step, v) in &eval {
        w.add_scalar("eval/loss", step, v).unwrap();
    }
    w.flush().unwrap();

    let name = w.path().file_name().unwrap().to_str().unwrap().to_string();
    let parts: Vec<&str> = name.split('.').collect();
    assert_eq!(parts[..3], ["events", "out", "tfevents"], "{name}");
    assert!(parts[3].parse::<u64>().is_ok() && parts.last() == Some(&"0"), "{name}");
    assert!(name.ends_with(&format!(".{}.0", std::process::id())), "{name}");

    let scalars = read_with_tensorboard(&dir);
    let mut tags: Vec<&str> = scalars.keys().map(|k| k.as_str()).collect();
    tags.sort();
    assert_eq!(tags, ["eval/loss", "train/learning_rate", "train/loss"]);
    assert_points(&scalars, "train/loss", &loss);
    assert_points(&scalars, "train/learning_rate", &lr);
    assert_points(&scalars, "eval/loss", &eval);
}

#[test]
fn tensorboard_reads_a_folder_written_by_two_writers() {
    // A resumed run opens a second event file in the same output folder; TensorBoard reads both in name order.
    let tmp = tempfile::tempdir().unwrap();
    let mut first = TensorBoardWriter::create(tmp.path()).unwrap();
    first.add_scalar("train/loss", 1, 2.0).unwrap();
    first.add_scalar("train/loss", 2, 1.5).unwrap();
    first.flush().unwrap();
    let mut second = TensorBoardWriter::create(tmp.path()).unwrap();
    second.add_scalar("train/loss", 3, 1.25).unwrap();
    second.flush().unwrap();
    assert_ne!(first.path(), second.path());
    let scalars = read_with_tensorboard(tmp.path());
    assert_points(&scalars, "train/loss", &[(1, 2.0), (2, 1.5), (3, 1.25)]);
}
