//! `loft plot`: the loss curves of one or more training runs, read from each run's metrics.jsonl, drawn as a PNG
//! or SVG: per run one colour, train loss a solid line, eval loss a dashed line with dots.

use std::path::{Path, PathBuf};

use loft::Error;
use plotters::coord::Shift;
use plotters::element::DashedPathElement;
use plotters::prelude::*;

/// The file `loft train` writes into its output folder, one JSON object per line.
const METRICS_FILE: &str = "metrics.jsonl";
const SIZE: (u32, u32) = (1280, 800);
/// Embedded so that PNG text needs no system fonts (fontconfig); see fonts/LICENSE.
const FONT: &[u8] = include_bytes!("../fonts/DejaVuSans.ttf");
/// Tableau 10: distinct colours that stay apart in print and for the common colour-vision deficiencies.
const COLOURS: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

#[derive(clap::Args)]
pub struct Args {
    /// Run folders, each holding the metrics.jsonl that `loft train` writes to its output_dir.
    #[arg(required = true, value_name = "RUN_DIR")]
    pub runs: Vec<PathBuf>,
    /// The image to write: FILE.png or FILE.svg.
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
    /// The title above the plot.
    #[arg(long, default_value = "Loss")]
    pub title: String,
}

enum ImageFormat {
    Png,
    Svg,
}

/// One run's curves: (step, loss) points in file order.
struct Run {
    name: String,
    train: Vec<(f64, f64)>,
    eval: Vec<(f64, f64)>,
}

pub fn run(args: Args) -> loft::Result<()> {
    let format = match args.out.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase).as_deref() {
        Some("png") => ImageFormat::Png,
        Some("svg") => ImageFormat::Svg,
        _ => {
            return Err(Error::hinted(
                format!("{}: unknown image format", args.out.display()),
                "--out must end in .png or .svg",
            ))
        }
    };
    // The backends open the file only when the image is done, and then report a missing folder obscurely.
    if let Some(folder) = args.out.parent().filter(|p| !p.as_os_str().is_empty() && !p.is_dir()) {
        return Err(Error::hinted(
            format!("{}: the folder {} does not exist", args.out.display(), folder.display()),
            "create it first, or pass --out in an existing folder",
        ));
    }
    let mut runs = Vec::with_capacity(args.runs.len());
    for dir in &args.runs {
        let run = read_run(dir)?;
        if run.train.is_empty() && run.eval.is_empty() {
            eprintln!("warning: {}: no line has loss or eval_loss yet", dir.join(METRICS_FILE).display());
        }
        runs.push(run);
    }
    if runs.iter().all(|r| r.train.is_empty() && r.eval.is_empty()) {
        return Err(Error::hinted(
            "nothing to plot: no metrics.jsonl line has loss or eval_loss",
            "loft train appends a line every logging_steps steps; plot again once some are written",
        ));
    }
    disambiguate_names(&mut runs, &args.runs);

    // Text is drawn with the embedded font under plotters' default family name.
    plotters::style::register_font("sans-serif", FontStyle::Normal, FONT)
        .map_err(|_| Error::Invalid("the embedded font DejaVuSans.ttf does not parse".into()))?;
    let drawn = match format {
        ImageFormat::Png => draw(BitMapBackend::new(&args.out, SIZE).into_drawing_area(), &runs, &args.title),
        ImageFormat::Svg => draw(SVGBackend::new(&args.out, SIZE).into_drawing_area(), &runs, &args.title),
    };
    drawn.map_err(|message| Error::format(&args.out, format!("cannot write the plot: {message}")))?;
    eprintln!("wrote {}", args.out.display());
    Ok(())
}

/// Reads `<dir>/metrics.jsonl`: `loss` lines make the train curve, `eval_loss` lines the eval curve, both against
/// `step`. Other keys, and lines with neither loss, are ignored; a null loss (a non-finite value) is skipped.
fn read_run(dir: &Path) -> loft::Result<Run> {
    let path = dir.join(METRICS_FILE);
    let text = std::fs::read_to_string(&path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            let what = if dir.is_dir() {
                format!("no {METRICS_FILE} in {}", dir.display())
            } else {
                format!("{}: no such folder", dir.display())
            };
            Error::hinted(what, "pass the output_dir of a `loft train` run (it holds metrics.jsonl)")
        } else {
            Error::io(&path, e)
        }
    })?;
    let mut run = Run { name: run_name(dir), train: Vec::new(), eval: Vec::new() };
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let at = || format!("{}:{}", path.display(), i + 1);
        let value: serde_json::Value = serde_json::from_str(line).map_err(|e| {
            // serde_json counts lines within the one line it was given; report file:line:column instead.
            let message = e.to_string();
            let message =
                message.strip_suffix(&format!(" at line {} column {}", e.line(), e.column())).unwrap_or(&message);
            Error::Invalid(format!("{}:{}: {message}", at(), e.column()))
        })?;
        let Some(object) = value.as_object() else {
            return Err(Error::Invalid(format!("{}: expected a JSON object, found {value}", at())));
        };
        let number = |key: &str| -> loft::Result<Option<f64>> {
            match object.get(key) {
                None | Some(serde_json::Value::Null) => Ok(None),
                Some(v) => v
                    .as_f64()
                    .map(Some)
                    .ok_or_else(|| Error::Invalid(format!("{}: \"{key}\" should be a number, found {v}", at()))),
            }
        };
        let (loss, eval_loss) = (number("loss")?, number("eval_loss")?);
        if loss.is_none() && eval_loss.is_none() {
            continue;
        }
        let step =
            number("step")?.ok_or_else(|| Error::Invalid(format!("{}: a line with a loss needs a \"step\"", at())))?;
        if let Some(loss) = loss {
            run.train.push((step, loss));
        }
        if let Some(eval_loss) = eval_loss {
            run.eval.push((step, eval_loss));
        }
    }
    Ok(run)
}

/// The folder's own name (`runs/lr-2e-4` → `lr-2e-4`), resolving `.` and `..` first.
fn run_name(dir: &Path) -> String {
    let named = |p: &Path| p.file_name().map(|n| n.to_string_lossy().into_owned());
    named(dir)
        .filter(|n| n != "..")
        .or_else(|| std::fs::canonicalize(dir).ok().as_deref().and_then(named))
        .unwrap_or_else(|| dir.display().to_string())
}

/// Runs whose folders share a name (`a/run`, `b/run`) are labelled with the path as given instead.
fn disambiguate_names(runs: &mut [Run], dirs: &[PathBuf]) {
    let names: Vec<String> = runs.iter().map(|r| r.name.clone()).collect();
    for (run, dir) in runs.iter_mut().zip(dirs) {
        if names.iter().filter(|n| **n == run.name).count() > 1 {
            run.name = dir.display().to_string();
        }
    }
}

/// Axis range holding every value, padded so curves do not touch the frame.
fn padded_range(values: impl Iterator<Item = f64> + Clone, pad: f64) -> std::ops::Range<f64> {
    let lo = values.clone().fold(f64::INFINITY, f64::min);
    let hi = values.fold(f64::NEG_INFINITY, f64::max);
    if hi > lo {
        lo - pad * (hi - lo)..hi + pad * (hi - lo)
    } else {
        lo - 0.5..hi + 0.5
    }
}

fn draw<DB: DrawingBackend>(root: DrawingArea<DB, Shift>, runs: &[Run], title: &str) -> Result<(), String>
where
    DB::ErrorType: 'static,
{
    let text = |e: DrawingAreaErrorKind<DB::ErrorType>| e.to_string();
    root.fill(&WHITE).map_err(text)?;
    let points = || runs.iter().flat_map(|r| r.train.iter().chain(&r.eval));
    let x_range = padded_range(points().map(|p| p.0), 0.02);
    let y_range = padded_range(points().map(|p| p.1), 0.05);
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 32))
        .margin(20)
        .x_label_area_size(50)
        .y_label_area_size(70)
        .build_cartesian_2d(x_range, y_range)
        .map_err(text)?;
    chart
        .configure_mesh()
        .x_desc("step")
        .x_label_formatter(&|x| format!("{x:.0}"))
        .bold_line_style(BLACK.mix(0.15))
        .light_line_style(BLACK.mix(0.04))
        .y_desc("loss")
        .label_style(("sans-serif", 18))
        .axis_desc_style(("sans-serif", 20))
        .draw()
        .map_err(text)?;
    for (i, run) in runs.iter().enumerate() {
        let colour = COLOURS[i % COLOURS.len()];
        if !run.train.is_empty() {
            let style = colour.stroke_width(2);
            chart
                .draw_series(LineSeries::new(run.train.iter().copied(), style))
                .map_err(text)?
                .label(format!("{} train", run.name))
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 30, y)], style));
        }
        if !run.eval.is_empty() {
            let style = colour.stroke_width(2);
            chart.draw_series(DashedLineSeries::new(run.eval.iter().copied(), 8, 5, style)).map_err(text)?;
            chart
                .draw_series(run.eval.iter().map(|&p| Circle::new(p, 4, colour.filled())))
                .map_err(text)?
                .label(format!("{} eval", run.name))
                .legend(move |(x, y)| {
                    EmptyElement::at((x, y))
                        + DashedPathElement::new([(0, 0), (30, 0)], 8, 5, style)
                        + Circle::new((15, 0), 4, colour.filled())
                });
        }
    }
    chart
        .configure_series_labels()
        .label_font(("sans-serif", 18))
        .legend_area_size(45)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.4))
        .position(SeriesLabelPosition::UpperRight)
        .draw()
        .map_err(text)?;
    root.present().map_err(text)
}
