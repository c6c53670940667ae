//! `loft plot` end to end: synthetic run folders in, a PNG or SVG out, and one-line errors for what users get
//! wrong (a folder without metrics.jsonl, a broken line, an unknown image format).
#![allow(clippy::unwrap_used)] // test helpers outside #[test] functions

use std::path::Path;
use std::process::{Command, Output};

fn loft(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_loft")).args(args).output().expect("run loft")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A run folder whose metrics.jsonl has `train` training lines, an eval line every 5th, and lines the plot must
/// ignore (no loss at all; unknown keys). Returns the number of eval points.
fn write_run(dir: &Path, train: usize, scale: f64) -> usize {
    std::fs::create_dir_all(dir).unwrap();
    let mut lines = vec![r#"{"step":0,"learning_rate":0.0,"note":"warmup starts"}"#.to_string()];
    let mut evals = 0;
    for i in 1..=train {
        let loss = scale * (2.5 - 1.5 * (1.0 - (-(i as f64) / 8.0).exp()));
        lines.push(format!(
            r#"{{"step":{},"epoch":{:.2},"loss":{loss},"learning_rate":0.0002,"grad_norm":1.2,"tokens_per_second":800.0,"extra":[1,2]}}"#,
            i * 10,
            i as f64 / 10.0
        ));
        if i % 5 == 0 {
            lines.push(format!(r#"{{"step":{},"eval_loss":{},"eval_perplexity":12.2}}"#, i * 10, loss + 0.1));
            evals += 1;
        }
    }
    std::fs::write(dir.join("metrics.jsonl"), lines.join("\n") + "\n").unwrap();
    evals
}

/// The number of points of the longest polyline drawn in `colour` (the run's train curve).
fn longest_polyline(svg: &str, colour: &str) -> usize {
    svg.split("<polyline")
        .skip(1)
        .filter(|p| p.split('>').next().unwrap().contains(&format!("stroke=\"{colour}\"")))
        .map(|p| p.split("points=\"").nth(1).unwrap().split('"').next().unwrap().split_whitespace().count())
        .max()
        .unwrap_or(0)
}

#[test]
fn plots_two_runs_as_png_and_svg() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("lr-2e-4"), tmp.path().join("lr-1e-3"));
    let evals = write_run(&a, 30, 1.0) + write_run(&b, 20, 0.8);

    let png = tmp.path().join("loss.png");
    let out = loft(&["plot", a.to_str().unwrap(), b.to_str().unwrap(), "--out", png.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let bytes = std::fs::read(&png).unwrap();
    assert!(bytes.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
    assert!(bytes.len() > 10_000, "PNG of {} bytes is too small to hold two curves and text", bytes.len());

    let svg_path = tmp.path().join("loss.svg");
    let out = loft(&[
        "plot",
        a.to_str().unwrap(),
        b.to_str().unwrap(),
        "--out",
        svg_path.to_str().unwrap(),
        "--title",
        "Sweep over learning rates",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let svg = std::fs::read_to_string(&svg_path).unwrap();
    assert!(svg.starts_with("<svg"), "not an SVG");
    for label in ["Sweep over learning rates", "lr-2e-4 train", "lr-2e-4 eval", "lr-1e-3 train", "lr-1e-3 eval"] {
        assert!(svg.contains(label), "the SVG has no text '{label}'");
    }
    // Every training line is a point of its run's curve (the lines without loss are not); every eval line a dot,
    // plus one dot in each eval legend entry.
    assert_eq!(longest_polyline(&svg, "#1F77B4"), 30);
    assert_eq!(longest_polyline(&svg, "#FF7F0E"), 20);
    assert_eq!(svg.matches("<circle").count(), evals + 2);
}

#[test]
fn a_folder_without_metrics_is_a_one_line_error_with_a_hint() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    std::fs::create_dir(&run).unwrap();
    let out = loft(&["plot", run.to_str().unwrap(), "--out", tmp.path().join("x.png").to_str().unwrap()]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert_eq!(err.lines().next().unwrap(), format!("error: no metrics.jsonl in {}", run.display()));
    assert!(err.lines().nth(1).unwrap().starts_with("hint: "), "{err}");
    assert!(!tmp.path().join("x.png").exists());
}

#[test]
fn a_malformed_line_is_named_by_file_and_line() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    write_run(&run, 3, 1.0);
    let metrics = run.join("metrics.jsonl");
    let mut text = std::fs::read_to_string(&metrics).unwrap();
    text.push_str("{\"step\":40,\"loss\":\n");
    std::fs::write(&metrics, &text).unwrap();
    let out = loft(&["plot", run.to_str().unwrap(), "--out", tmp.path().join("x.svg").to_str().unwrap()]);
    assert!(!out.status.success());
    let line = text.lines().count();
    assert_eq!(stderr(&out).trim_end(), format!("error: {}:{line}:18: EOF while parsing a value", metrics.display()));

    std::fs::write(&metrics, "{\"step\":\"ten\",\"loss\":2.0}\n").unwrap();
    let out = loft(&["plot", run.to_str().unwrap(), "--out", tmp.path().join("x.svg").to_str().unwrap()]);
    assert_eq!(
        stderr(&out).trim_end(),
        format!("error: {}:1: \"step\" should be a number, found \"ten\"", metrics.display())
    );
}

#[test]
fn the_image_format_comes_from_the_extension() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    write_run(&run, 3, 1.0);
    let jpg = tmp.path().join("loss.jpg");
    let out = loft(&["plot", run.to_str().unwrap(), "--out", jpg.to_str().unwrap()]);
    assert!(!out.status.success());
    assert_eq!(
        stderr(&out),
        format!("error: {}: unknown image format\nhint: --out must end in .png or .svg\n", jpg.display())
    );
    let upper = tmp.path().join("LOSS.SVG");
    let out = loft(&["plot", run.to_str().unwrap(), "--out", upper.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(std::fs::read_to_string(&upper).unwrap().contains("run train"));
}
