//! `train_status.json`: what `loft train` is doing in its output_dir, for readers outside the process (`loft
//! serve`'s page). `running` with the process id once the run has its plan, then `finished` or `failed` with the
//! error when the process ends normally. A run killed outright (SIGKILL, out of memory, power) leaves `running`
//! with a process id that no longer exists; readers check it (see [`RunState`] and `serve::runs`).

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

pub const STATUS_FILE: &str = "train_status.json";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunState {
    Running,
    Finished,
    Failed,
}

impl RunState {
    pub fn as_str(self) -> &'static str {
        match self {
            RunState::Running => "running",
            RunState::Finished => "finished",
            RunState::Failed => "failed",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainStatus {
    pub state: RunState,
    /// The `loft train` process.
    pub pid: u32,
    /// Unix seconds.
    pub started: u64,
    pub ended: Option<u64>,
    pub total_steps: Option<usize>,
    /// Why a failed run stopped: the error `loft train` printed, on one line.
    pub error: Option<String>,
}

impl TrainStatus {
    /// A run of `total_steps` starting now in this process.
    pub fn running(total_steps: usize) -> Self {
        TrainStatus {
            state: RunState::Running,
            pid: std::process::id(),
            started: unix_seconds(),
            ended: None,
            total_steps: Some(total_steps),
            error: None,
        }
    }

    /// The same run, ended: finished without an error, failed with one.
    pub fn ended(&self, error: Option<String>) -> Self {
        TrainStatus {
            state: if error.is_some() { RunState::Failed } else { RunState::Finished },
            ended: Some(unix_seconds()),
            error,
            ..self.clone()
        }
    }
}

/// Writes `<out>/train_status.json` whole (a temporary file renamed over it), creating `out` when needed.
pub fn write_status(out: &Path, status: &TrainStatus) -> Result<()> {
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    let (path, tmp) = (out.join(STATUS_FILE), out.join(format!("{STATUS_FILE}.partial")));
    let text = serde_json::to_string_pretty(status).map_err(|e| Error::caused("cannot write the run's status", e))?;
    std::fs::write(&tmp, text + "\n").map_err(|e| Error::io(&tmp, e))?;
    std::fs::rename(&tmp, &path).map_err(|e| Error::io(&path, e))
}

/// `<out>/train_status.json`, or None when it is absent or unreadable (a run from an older loft has none).
pub fn read_status(out: &Path) -> Option<TrainStatus> {
    let text = std::fs::read_to_string(out.join(STATUS_FILE)).ok()?;
    serde_json::from_str(&text).ok()
}

/// Whether process `pid` is alive, where the system says (Linux's /proc); None elsewhere.
pub fn process_alive(pid: u32) -> Option<bool> {
    if !Path::new("/proc/self").exists() {
        return None;
    }
    Some(Path::new("/proc").join(pid.to_string()).exists())
}

pub fn unix_seconds() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_round_trips_and_ends() {
        let dir = tempfile::tempdir().unwrap();
        assert!(read_status(dir.path()).is_none());
        let running = TrainStatus::running(30);
        write_status(dir.path(), &running).unwrap();
        assert_eq!(read_status(dir.path()), Some(running.clone()));
        assert_eq!(process_alive(running.pid), Some(true));
        let failed = running.ended(Some("step 3: loss is NaN".into()));
        write_status(dir.path(), &failed).unwrap();
        let back = read_status(dir.path()).unwrap();
        assert_eq!((back.state, back.error.as_deref()), (RunState::Failed, Some("step 3: loss is NaN")));
        assert_eq!(running.ended(None).state, RunState::Finished);
    }
}
