//! The training runs under `loft serve --runs DIR`, as the web page shows them: each `loft train` output folder
//! (one holding metrics.jsonl or train_status.json, found up to three levels down, e.g. `demo/cpt`), its
//! resolved config, its state, its summary, the adapters it left (`adapter/` and complete `checkpoint-N/`), and
//! its loss points read from metrics.jsonl a piece at a time, so a page polling a growing file reads each line once.
//!
//! A run's state comes from its files:
//! - train_status.json (written by `loft train`): `finished` and `failed` (with the error) as written; `running`
//!   while its process is alive, and `failed` once it is gone without saying so (killed, out of memory).
//! - Without one (a run of an older loft): `finished` when train_summary.json is at least as new as
//!   metrics.jsonl, `running` while metrics.jsonl changed within the last [`QUIET_SECONDS`], else `failed`.

use std::io::{Read, Seek, SeekFrom};
use std::path::{Component, Path, PathBuf};
use std::time::SystemTime;

use serde_json::{json, Value};

use crate::error::{Error, Result};
use crate::train::checkpoint::{COMPLETE_MARKER, CONFIG_FILE};
use crate::train::recipe::{ADAPTER_DIR, METRICS_FILE, SUMMARY_FILE};
use crate::train::status::{process_alive, read_status, RunState, STATUS_FILE};

/// A run without train_status.json whose metrics.jsonl is older than this has stopped.
pub const QUIET_SECONDS: u64 = 120;
/// Folders below --runs searched for runs.
const MAX_DEPTH: usize = 3;
/// The most of metrics.jsonl one request reads; the page asks again from where it stopped.
const MAX_READ: u64 = 4 << 20;

/// One training run.
#[derive(Clone, Debug)]
pub struct Run {
    /// The folder relative to --runs, with `/` between parts (`demo/cpt`).
    pub name: String,
    pub dir: PathBuf,
    pub state: RunState,
    /// Why a failed run stopped, when known.
    pub detail: Option<String>,
    pub total_steps: Option<usize>,
    /// When `loft train` started it (unix seconds; from train_status.json): a page that sees it change reads the
    /// metrics again from the start.
    pub started: Option<u64>,
    /// The resolved config.toml, as written.
    pub config: Option<String>,
    /// train_summary.json of a finished run.
    pub summary: Option<Value>,
    /// Adapter folders relative to --runs: `NAME/adapter`, then `NAME/checkpoint-N` in step order.
    pub adapters: Vec<String>,
}

impl Run {
    pub fn to_json(&self) -> Value {
        json!({
            "name": self.name,
            "state": self.state.as_str(),
            "detail": self.detail,
            "total_steps": self.total_steps,
            "started": self.started,
            "config": self.config,
            "summary": self.summary,
        })
    }
}

/// The name the page serves a run's adapter folder as: `demo/cpt/adapter` → `demo.cpt`,
/// `demo/cpt/checkpoint-8` → `demo.cpt:checkpoint-8` (a name `models::check_name` accepts when the run's is plain).
pub fn adapter_model_name(adapter_path: &str) -> String {
    let (run, last) = adapter_path.rsplit_once('/').unwrap_or(("", adapter_path));
    let run: String =
        run.chars().map(|c| if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') { c } else { '.' }).collect();
    if last == ADAPTER_DIR {
        run
    } else {
        format!("{run}:{last}")
    }
}

/// Every run under `root`, in name order. A folder that cannot be read is skipped.
pub fn find_runs(root: &Path) -> Vec<Run> {
    let mut runs = Vec::new();
    search(root, root, 0, &mut runs);
    runs.sort_by(|a, b| a.name.cmp(&b.name));
    runs
}

fn search(root: &Path, dir: &Path, depth: usize, runs: &mut Vec<Run>) {
    if is_run(dir) {
        if let Some(name) = relative_name(root, dir) {
            runs.push(read_run(name, dir));
        }
        return;
    }
    if depth == MAX_DEPTH {
        return;
    }
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let path = entry.path();
        // Links are not followed: a run is a folder under --runs, not somewhere a link points.
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            search(root, &path, depth + 1, runs);
        }
    }
}

fn is_run(dir: &Path) -> bool {
    dir.join(METRICS_FILE).is_file() || dir.join(STATUS_FILE).is_file()
}

fn relative_name(root: &Path, dir: &Path) -> Option<String> {
    let rel = dir.strip_prefix(root).ok()?;
    let parts: Vec<&str> = rel.components().map(|c| c.as_os_str().to_str()).collect::<Option<_>>()?;
    (!parts.is_empty()).then(|| parts.join("/"))
}

/// The run `name` (as [`find_runs`] names it) under `root`; an error for a name that leaves `root` or is no run.
pub fn open_run(root: &Path, name: &str) -> Result<Run> {
    let refuse = |why: &str| Error::hinted(format!("run '{name}': {why}"), "name a run as /api/runs lists it");
    let rel = Path::new(name);
    if name.is_empty() || !rel.components().all(|c| matches!(c, Component::Normal(_))) {
        return Err(refuse("not a folder relative to --runs"));
    }
    let dir = root.join(rel);
    // No links on the way: the same folders find_runs walks.
    let mut at = root.to_path_buf();
    for part in rel.components() {
        at.push(part);
        if std::fs::symlink_metadata(&at).map_or(true, |m| !m.is_dir()) {
            return Err(refuse("no such folder under --runs"));
        }
    }
    if !is_run(&dir) {
        return Err(refuse("not a training run (no metrics.jsonl or train_status.json)"));
    }
    Ok(read_run(name.to_string(), &dir))
}

fn read_run(name: String, dir: &Path) -> Run {
    let (state, detail, total_steps) = run_state(dir);
    let started = read_status(dir).map(|s| s.started);
    let config = std::fs::read_to_string(dir.join(CONFIG_FILE)).ok();
    let summary = std::fs::read_to_string(dir.join(SUMMARY_FILE)).ok().and_then(|t| serde_json::from_str(&t).ok());
    let summary = if state == RunState::Finished { summary } else { None };
    let mut adapters = Vec::new();
    if dir.join(ADAPTER_DIR).join("adapter_config.json").is_file() {
        adapters.push(format!("{name}/{ADAPTER_DIR}"));
    }
    let mut steps: Vec<u64> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.strip_prefix("checkpoint-")?.parse().ok())
        .filter(|s| dir.join(format!("checkpoint-{s}")).join(COMPLETE_MARKER).is_file())
        .collect();
    steps.sort_unstable();
    adapters.extend(steps.iter().map(|s| format!("{name}/checkpoint-{s}")));
    Run { name, dir: dir.to_path_buf(), state, detail, total_steps, started, config, summary, adapters }
}

/// See the module's comment.
fn run_state(dir: &Path) -> (RunState, Option<String>, Option<usize>) {
    if let Some(status) = read_status(dir) {
        let total = status.total_steps;
        return match status.state {
            RunState::Running if process_alive(status.pid) == Some(false) => {
                let why = format!("the training process ({}) ended without finishing: killed or crashed", status.pid);
                (RunState::Failed, Some(why), total)
            }
            state => (state, status.error, total),
        };
    }
    let modified = |f: &str| std::fs::metadata(dir.join(f)).and_then(|m| m.modified()).ok();
    let (metrics, summary) = (modified(METRICS_FILE), modified(SUMMARY_FILE));
    if let (Some(s), Some(m)) = (summary, metrics) {
        if s >= m {
            return (RunState::Finished, None, None);
        }
    }
    let quiet = metrics.and_then(|m| SystemTime::now().duration_since(m).ok()).map_or(u64::MAX, |d| d.as_secs());
    if quiet < QUIET_SECONDS {
        return (RunState::Running, None, None);
    }
    let why = format!("stopped before writing {SUMMARY_FILE} (metrics unchanged for {quiet} s)");
    (RunState::Failed, Some(why), None)
}

/// Loss points from metrics.jsonl, from byte `offset` to the last complete line.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MetricsPiece {
    /// Where this piece starts: `offset`, or 0 when the file is shorter than `offset` (a run started again).
    pub offset: u64,
    /// Where the next request starts.
    pub next: u64,
    /// More complete lines wait beyond `next`.
    pub more: bool,
    /// (step, loss) of train lines.
    pub train: Vec<(u64, f64)>,
    /// (step, eval_loss) of evaluation lines.
    pub eval: Vec<(u64, f64)>,
}

impl MetricsPiece {
    pub fn to_json(&self) -> Value {
        json!({
            "offset": self.offset,
            "next": self.next,
            "more": self.more,
            "train": self.train.iter().map(|&(s, l)| json!([s, l])).collect::<Vec<_>>(),
            "eval": self.eval.iter().map(|&(s, l)| json!([s, l])).collect::<Vec<_>>(),
        })
    }
}

/// Reads the run's metrics.jsonl from `offset`: complete lines only (the writer may be mid-line), at most
/// [`MAX_READ`] bytes. Lines that are not JSON objects, and losses that are not finite, are skipped.
pub fn read_metrics(run_dir: &Path, offset: u64) -> Result<MetricsPiece> {
    let path = run_dir.join(METRICS_FILE);
    let mut file = match std::fs::File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(MetricsPiece::default());
        }
        Err(e) => return Err(Error::io(&path, e)),
    };
    let len = file.metadata().map_err(|e| Error::io(&path, e))?.len();
    let offset = if offset > len { 0 } else { offset };
    file.seek(SeekFrom::Start(offset)).map_err(|e| Error::io(&path, e))?;
    let mut bytes = Vec::new();
    file.take(MAX_READ).read_to_end(&mut bytes).map_err(|e| Error::io(&path, e))?;
    let complete = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    let mut piece = MetricsPiece { offset, next: offset + complete as u64, ..Default::default() };
    piece.more = piece.next < len && complete > 0 && bytes.len() as u64 == MAX_READ;
    for line in bytes[..complete].split(|&b| b == b'\n') {
        let Ok(v) = serde_json::from_slice::<Value>(line) else { continue };
        let Some(step) = v["step"].as_u64() else { continue };
        if let Some(loss) = v["loss"].as_f64().filter(|l| l.is_finite()) {
            piece.train.push((step, loss));
        }
        if let Some(loss) = v["eval_loss"].as_f64().filter(|l| l.is_finite()) {
            piece.eval.push((step, loss));
        }
    }
    Ok(piece)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::status::{write_status, TrainStatus};
    use std::io::Write;

    fn write(path: &Path, text: &str) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    #[test]
    fn runs_are_found_with_their_state_and_adapters() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        // A finished run (older loft, no status file), with its adapter and one complete checkpoint of two.
        write(&r.join("demo/cpt/metrics.jsonl"), "{\"step\": 1, \"loss\": 2.0}\n");
        write(&r.join("demo/cpt/config.toml"), "[model]\npath = \"m.gguf\"\n");
        std::thread::sleep(std::time::Duration::from_millis(20));
        write(&r.join("demo/cpt/train_summary.json"), "{\"steps\": 1}");
        write(&r.join("demo/cpt/adapter/adapter_config.json"), "{}");
        write(&r.join("demo/cpt/checkpoint-1/checkpoint_complete"), "");
        write(&r.join("demo/cpt/checkpoint-2/config.toml"), "");
        // Running in this process; failed with an error; "running" by a process that is gone.
        write_status(&r.join("live"), &TrainStatus::running(10)).unwrap();
        write_status(&r.join("bad"), &TrainStatus::running(10).ended(Some("step 3: NaN".into()))).unwrap();
        let gone = TrainStatus { pid: u32::MAX - 1, ..TrainStatus::running(10) };
        write_status(&r.join("killed"), &gone).unwrap();
        // Not runs: a folder with data only.
        write(&r.join("data/x.jsonl"), "{}\n");

        let runs = find_runs(r);
        let names: Vec<&str> = runs.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["bad", "demo/cpt", "killed", "live"]);
        let by = |n: &str| runs.iter().find(|r| r.name == n).unwrap();
        assert_eq!((by("bad").state, by("bad").detail.as_deref()), (RunState::Failed, Some("step 3: NaN")));
        let cpt = by("demo/cpt");
        assert_eq!(cpt.state, RunState::Finished);
        assert_eq!(cpt.adapters, ["demo/cpt/adapter", "demo/cpt/checkpoint-1"]);
        let names: Vec<String> = cpt.adapters.iter().map(|a| adapter_model_name(a)).collect();
        assert_eq!(names, ["demo.cpt", "demo.cpt:checkpoint-1"]);
        assert_eq!(cpt.summary.as_ref().unwrap()["steps"], 1);
        assert!(cpt.config.as_deref().unwrap().contains("m.gguf"));
        assert_eq!(by("killed").state, RunState::Failed);
        assert!(by("killed").detail.as_deref().unwrap().contains("killed"));
        assert_eq!((by("live").state, by("live").total_steps), (RunState::Running, Some(10)));

        // A run still writing metrics (no summary yet) is running; one named through '..' or a non-run is refused.
        write(&r.join("old/metrics.jsonl"), "");
        assert_eq!(open_run(r, "old").unwrap().state, RunState::Running);
        for bad in ["../x", "/etc", "data", "demo", "", "demo/cpt/../../x", "nothing"] {
            assert!(open_run(r, bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn metrics_are_read_a_complete_line_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(METRICS_FILE);
        assert_eq!(read_metrics(dir.path(), 0).unwrap(), MetricsPiece::default());
        let mut f = std::fs::File::create(&path).unwrap();
        write!(f, "{{\"step\": 0, \"eval_loss\": 3.5}}\n{{\"step\": 1, \"loss\": 3.0}}\n{{\"step\": 2, \"lo").unwrap();
        let first = read_metrics(dir.path(), 0).unwrap();
        assert_eq!((first.train.clone(), first.eval.clone()), (vec![(1, 3.0)], vec![(0, 3.5)]));
        assert!(!first.more);
        // The writer finishes the line and adds one with a non-finite loss (written as null).
        write!(f, "ss\": 2.5}}\n{{\"step\": 3, \"loss\": null}}\nnot json\n").unwrap();
        let second = read_metrics(dir.path(), first.next).unwrap();
        assert_eq!((second.offset, second.train.clone()), (first.next, vec![(2, 2.5)]));
        assert!(second.eval.is_empty());
        // A run started again over a shorter file: read from the start.
        std::fs::write(&path, "{\"step\": 1, \"loss\": 9.0}\n").unwrap();
        let again = read_metrics(dir.path(), second.next).unwrap();
        assert_eq!((again.offset, again.train), (0, vec![(1, 9.0)]));
    }
}
