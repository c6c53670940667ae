//! Headless Chromium driven over the DevTools protocol, for the web page's test. The protocol runs over a pipe
//! (`--remote-debugging-pipe`: JSON messages ending in a NUL byte, commands on the browser's fd 3 and answers on
//! its fd 4), so the test needs no WebSocket client and opens no port. The shell maps the child's stdin and stdout
//! onto fds 3 and 4.

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// Debian's `chromium` (scripts/fetch.sh browser), or LOFT_CHROMIUM; a missing one fails the test, saying how
/// to get it.
pub fn chromium() -> PathBuf {
    if let Some(p) = std::env::var_os("LOFT_CHROMIUM") {
        return PathBuf::from(p);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        let candidate = dir.join("chromium");
        if candidate.is_file() {
            return candidate;
        }
    }
    panic!("Chromium is missing (no `chromium` on PATH): run `scripts/fetch.sh browser` or set LOFT_CHROMIUM");
}

pub struct Browser {
    child: Child,
    commands: ChildStdin,
    answers: BufReader<ChildStdout>,
    next_id: u64,
    _profile: tempfile::TempDir,
}

/// One open tab.
pub struct Page {
    session: String,
}

impl Browser {
    /// Starts headless Chromium with a fresh profile, offline-friendly flags, and the protocol on a pipe.
    pub fn launch() -> Browser {
        let profile = tempfile::tempdir().unwrap();
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(r#"exec "$0" "$@" 3<&0 4>&1 0</dev/null 1>/dev/null"#)
            .arg(chromium())
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--remote-debugging-pipe",
                "--window-size=1200,1000",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromium");
        let commands = child.stdin.take().unwrap();
        let answers = BufReader::new(child.stdout.take().unwrap());
        Browser { child, commands, answers, next_id: 1, _profile: profile }
    }

    /// Sends one command (to a tab's session, or to the browser) and returns its `result`; events met on the way
    /// are dropped. A protocol error fails the test.
    pub fn call(&mut self, session: Option<&str>, method: &str, params: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        let mut message = json!({"id": id, "method": method, "params": params});
        if let Some(s) = session {
            message["sessionId"] = s.into();
        }
        let mut bytes = message.to_string().into_bytes();
        bytes.push(0);
        self.commands.write_all(&bytes).and_then(|_| self.commands.flush()).expect("write to chromium");
        loop {
            let mut raw = Vec::new();
            let n = self.answers.read_until(0, &mut raw).expect("read from chromium");
            assert!(n > 0, "chromium closed its DevTools pipe while {method} was pending");
            raw.pop();
            let v: Value = serde_json::from_slice(&raw).expect("DevTools message is JSON");
            if v["id"] == id {
                assert!(v.get("error").is_none(), "{method}: {}", v["error"]);
                return v["result"].clone();
            }
        }
    }

    /// Opens `url` in a new tab.
    pub fn open(&mut self, url: &str) -> Page {
        let target = self.call(None, "Target.createTarget", json!({"url": url}));
        let attached =
            self.call(None, "Target.attachToTarget", json!({"targetId": target["targetId"], "flatten": true}));
        Page { session: attached["sessionId"].as_str().unwrap().to_string() }
    }

    /// The value of JavaScript `expression` in `page` (promises awaited); a thrown exception fails the test.
    pub fn eval(&mut self, page: &Page, expression: &str) -> Value {
        self.try_eval(page, expression).unwrap_or_else(|e| panic!("{expression}\nthrew: {e}"))
    }

    /// The value of `expression` in `page`, or the exception it threw.
    fn try_eval(&mut self, page: &Page, expression: &str) -> Result<Value, Value> {
        let r = self.call(
            Some(&page.session),
            "Runtime.evaluate",
            json!({"expression": expression, "returnByValue": true, "awaitPromise": true}),
        );
        match r.get("exceptionDetails") {
            Some(e) => Err(e.clone()),
            None => Ok(r["result"]["value"].clone()),
        }
    }

    /// Evaluates `expression` every 200 ms until `done` accepts its value; fails the test after `timeout`,
    /// showing the last value. An exception counts as not yet (a page still loading has no `document.body`), and
    /// is what the failure shows if it is the last thing the expression gave.
    pub fn wait_for(
        &mut self,
        page: &Page,
        what: &str,
        expression: &str,
        timeout: Duration,
        done: impl Fn(&Value) -> bool,
    ) -> Value {
        let start = Instant::now();
        loop {
            match self.try_eval(page, expression) {
                Ok(v) if done(&v) => return v,
                Ok(v) => assert!(start.elapsed() < timeout, "waited {timeout:?} for {what}; the page shows {v}"),
                Err(e) => assert!(start.elapsed() < timeout, "waited {timeout:?} for {what}; {expression} threw {e}"),
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
