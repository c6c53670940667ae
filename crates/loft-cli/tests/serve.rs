//! `loft serve` end to end, on the default model and a seeded adapter: the server is started on a free loopback
//! port and spoken to over plain HTTP/1.1 (a small client below) and with OpenAI's official Python client. Greedy
//! answers, whole and streamed, equal `loft generate`'s for the base and for the adapter (which `loft generate`
//! merges and the server applies unmerged); every kind of bad input gets its status in OpenAI's error shape; a
//! client that leaves mid-stream frees its worker; nothing panics.
#![allow(clippy::unwrap_used)] // test helpers outside #[test] functions

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use common::browser::Browser;
use common::{default_model, openai_py, workspace};
use serde_json::{json, Value};

const KEY: &str = "test-key-5f2a";
const PROMPT: &str = "Write one sentence about the sea.";
const MAX_TOKENS: usize = 20;

/// A `loft serve` child on a free port; killed when dropped. Its stderr is collected in `log`.
struct Server {
    child: Child,
    addr: String,
    log: Arc<Mutex<String>>,
}

impl Server {
    fn start(args: &[&str]) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_loft"))
            .args(["serve", "--port", "0"])
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run loft serve");
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = mpsc::channel();
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some(rest) = line.split("http://").nth(1).filter(|_| line.starts_with("loft serve:")) {
                    let _ = tx.send(rest.split('/').next().unwrap_or_default().to_string());
                }
                sink.lock().unwrap().push_str(&(line + "\n"));
            }
        });
        let addr = rx.recv_timeout(Duration::from_secs(120));
        let mut server = Server { child, addr: String::new(), log };
        match addr {
            Ok(a) => server.addr = a,
            Err(_) => panic!("loft serve did not start:\n{}", server.log()),
        }
        server
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    fn request(&self, method: &str, path: &str, key: Option<&str>, body: Option<&[u8]>) -> Reply {
        http(&self.addr, method, path, key, body)
    }

    fn post(&self, path: &str, body: &Value) -> Reply {
        self.request("POST", path, Some(KEY), Some(body.to_string().as_bytes()))
    }

    /// The whole answer's text, checked to be a 200.
    fn answer(&self, path: &str, body: &Value) -> (String, Value) {
        let r = self.post(path, body);
        assert_eq!(r.status, 200, "{}\n{}", r.body, self.log());
        let v = r.json();
        let choice = &v["choices"][0];
        let text = choice["message"]["content"].as_str().or(choice["text"].as_str()).unwrap().to_string();
        (text, v)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Reply {
    status: u16,
    headers: String,
    body: String,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }

    /// The `data:` payloads of a server-sent event stream.
    fn events(&self) -> Vec<String> {
        assert!(self.headers.to_ascii_lowercase().contains("content-type: text/event-stream"), "{}", self.headers);
        self.body.split("\n\n").filter_map(|e| e.strip_prefix("data: ")).map(str::to_string).collect()
    }

    /// Checks OpenAI's error shape and returns `error`.
    fn error(&self, status: u16) -> Value {
        assert_eq!(self.status, status, "{}", self.body);
        let v = self.json();
        let e = &v["error"];
        assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
        assert!(e["type"].is_string() && e.get("param").is_some() && e.get("code").is_some(), "{v}");
        e.clone()
    }
}

/// One request over a fresh connection (`Connection: close`), read to the end; chunked bodies are joined.
fn http(addr: &str, method: &str, path: &str, key: Option<&str>, body: Option<&[u8]>) -> Reply {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(180))).unwrap();
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    if let Some(k) = key {
        head += &format!("Authorization: Bearer {k}\r\n");
    }
    let body = body.unwrap_or_default();
    head += &format!("Content-Type: application/json\r\nContent-Length: {}\r\n\r\n", body.len());
    // The server may answer (413) before reading all of a large body; what it answers is what matters.
    let _ = s.write_all(head.as_bytes()).and_then(|_| s.write_all(body));
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    let raw = String::from_utf8_lossy(&raw).into_owned();
    let (headers, rest) = raw.split_once("\r\n\r\n").unwrap_or_else(|| panic!("no HTTP response: {raw:?}"));
    let status = headers.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap();
    let body = if headers.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        dechunk(rest)
    } else {
        rest.to_string()
    };
    Reply { status, headers: headers.to_string(), body }
}

fn dechunk(mut rest: &str) -> String {
    let mut out = String::new();
    while let Some((size, tail)) = rest.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap();
        if n == 0 {
            break;
        }
        out += &tail[..n];
        rest = &tail[n + 2..];
    }
    out
}

/// `loft generate`'s greedy answer (stdout without its final newline).
fn generate(extra: &[&str]) -> String {
    let model = default_model();
    let max = MAX_TOKENS.to_string();
    let mut args = vec!["generate", "--model", &model, "--max-new-tokens", &max];
    args.extend_from_slice(extra);
    let out = Command::new(env!("CARGO_BIN_EXE_loft")).args(&args).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    text.strip_suffix('\n').unwrap().to_string()
}

/// A seeded rank-8 adapter on every module of the default model, in PEFT's format.
/// The greedy answer to PROMPT as `loft generate` asks it (chat template, EOS and end-of-turn stop), with the
/// adapter in `dir` applied unmerged, as the server applies it, to one request alone.
fn unmerged_answer(dir: &str) -> String {
    use loft::chat_template::{ChatTemplate, Message};
    let loaded = loft::model::LoadedModel::load_with(&default_model(), &Default::default()).unwrap();
    let t = &loaded.tokenizer;
    let template = ChatTemplate::new(t.chat_template().unwrap(), t.bos_token(), t.eos_token()).unwrap();
    let ids = t.encode(&template.render(&[Message::new("user", PROMPT)], true).unwrap(), false, true);
    let adapter = loft::lora::peft::load_peft_adapter(Path::new(dir), &loaded.model).unwrap();
    let host = adapter.into_unmerged(&loaded.model.config).unwrap();
    let runner = loft::model::Runner::new(&loft::engine::Cpu, &loaded.model).unwrap();
    let device = runner.adapter(&host).unwrap();
    let stop_ids = [t.eos_id(), t.eot_id()].into_iter().flatten().collect();
    let opts = loft::infer::GenerateOptions { max_new_tokens: MAX_TOKENS, sampling: Default::default(), stop_ids };
    let mut cache = runner.cache(ids.len() + MAX_TOKENS).unwrap();
    let (out, _) = loft::infer::generate_with(&runner, Some(&device), &ids, &opts, &mut cache, |_| Ok(())).unwrap();
    let text: Vec<u32> = out.into_iter().filter(|&id| !t.is_control(id)).collect();
    t.decode(&text, false)
}

fn write_adapter(dir: &Path, seed: u64) -> String {
    let model = default_model();
    let base = loft::model::load_base(&model, true).unwrap();
    let config = loft::lora::LoraConfig { r: 8, lora_alpha: 16.0, ..Default::default() };
    let mut adapter = loft::lora::Adapter::new(config, &base, seed).unwrap();
    let mut rng = loft::rng::SplitMix64::new(seed);
    adapter.for_each_tensor_mut(|name, t| {
        if matches!(name, loft::lora::TensorName::LoraB(..)) {
            t.iter_mut().for_each(|v| *v = (rng.next_f64() as f32 - 0.5) * 0.08);
        }
    });
    let out = dir.join(format!("adapter-{seed}"));
    loft::lora::peft::save_peft_adapter(&adapter, base.config.hidden_size, &out, &model).unwrap();
    out.display().to_string()
}

fn chat(model: &str, extra: Value) -> Value {
    let mut body = json!({
        "model": model,
        "messages": [{"role": "user", "content": PROMPT}],
        "temperature": 0,
        "max_tokens": MAX_TOKENS,
    });
    body.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
    body
}

/// Joins a stream's text and returns it with its finish_reason and the usage chunk, checking the chunks' shape.
fn streamed(events: &[String]) -> (String, String, Value) {
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"), "{events:?}");
    let (mut text, mut finish, mut usage) = (String::new(), String::new(), Value::Null);
    for e in &events[..events.len() - 1] {
        let v: Value = serde_json::from_str(e).unwrap();
        if let Some(choice) = v["choices"].get(0) {
            let piece = choice["delta"]["content"].as_str().or(choice["text"].as_str()).unwrap_or_default();
            text += piece;
            if let Some(f) = choice["finish_reason"].as_str() {
                finish = f.to_string();
            }
        }
        if !v["usage"].is_null() {
            usage = v["usage"].clone();
        }
    }
    (text, finish, usage)
}

#[test]
fn greedy_answers_equal_loft_generate_and_the_unmerged_adapters_alone() {
    let dir = tempfile::tempdir().unwrap();
    let (a1, a2) = (write_adapter(dir.path(), 1), write_adapter(dir.path(), 2));
    let model = default_model();
    let server = Server::start(&[
        "--model",
        &model,
        "--name",
        "base",
        "--adapter",
        &format!("one={a1}"),
        "--adapter",
        &format!("two={a2}"),
        "--api-key",
        KEY,
    ]);
    let want = [("base", generate(&["-p", PROMPT])), ("one", unmerged_answer(&a1)), ("two", unmerged_answer(&a2))];
    eprintln!("greedy answers: {want:?}");
    assert!(want[0].1 != want[1].1 && want[1].1 != want[2].1, "the adapters changed nothing: {want:?}");
    // `loft generate --adapter` merges the adapter into f32 matrices, so its products there take exact activations
    // where the served Q4_1 base takes 8-bit ones: the same answer up to a near tie late in it (measured: "one"
    // whole, "two" the same 16 tokens, then "ever-shifting" against "ever-present").
    for (name, dir) in [("one", &a1), ("two", &a2)] {
        let merged = generate(&["-p", PROMPT, "--adapter", dir]);
        eprintln!("{name}: loft generate --adapter (merged) answers {merged:?}");
    }

    let models = server.request("GET", "/v1/models", Some(KEY), None).json();
    let ids: Vec<&str> = models["data"].as_array().unwrap().iter().map(|m| m["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["base", "one", "two"]);

    for (name, text) in &want {
        let (got, v) = server.answer("/v1/chat/completions", &chat(name, json!({})));
        assert_eq!(&got, text, "{name}");
        assert_eq!(v["object"], "chat.completion");
        assert_eq!(v["model"], *name);
        let usage = &v["usage"];
        assert_eq!(
            usage["total_tokens"],
            usage["prompt_tokens"].as_u64().unwrap() + usage["completion_tokens"].as_u64().unwrap()
        );
        let finish = v["choices"][0]["finish_reason"].as_str().unwrap();
        let length = usage["completion_tokens"] == MAX_TOKENS;
        assert_eq!(finish, if length { "length" } else { "stop" }, "{v}");

        let r = server.post(
            "/v1/chat/completions",
            &chat(name, json!({"stream": true, "stream_options": {"include_usage": true}})),
        );
        assert_eq!(r.status, 200, "{}", r.body);
        let events = r.events();
        let (streamed_text, streamed_finish, streamed_usage) = streamed(&events);
        assert_eq!(&streamed_text, text, "{name} streamed");
        assert_eq!(streamed_finish, finish);
        assert_eq!(&streamed_usage, usage);
        assert!(events.len() > 4, "one chunk per piece of text: {events:?}");
    }

    // /v1/completions feeds text as it is, as `loft generate --raw`.
    let raw = "The sea is";
    let want_raw = generate(&["-p", raw, "--raw", "--adapter", &a1]);
    let body = json!({"model": "one", "prompt": raw, "temperature": 0, "max_tokens": MAX_TOKENS});
    let (got, v) = server.answer("/v1/completions", &body);
    assert_eq!(got, want_raw);
    assert_eq!(v["object"], "text_completion");
    let stream = server.post(
        "/v1/completions",
        &json!({"model": "one", "prompt": raw, "temperature": 0, "max_tokens": MAX_TOKENS, "stream": true}),
    );
    assert_eq!(streamed(&stream.events()).0, want_raw);

    // Interleaved concurrent requests for different adapters each get their own adapter's answer.
    let server = Arc::new(server);
    let handles: Vec<_> = (0..6)
        .map(|i| {
            let (server, (name, text)) = (server.clone(), want[i % 3].clone());
            std::thread::spawn(move || {
                let stream = i % 2 == 0;
                let r = server.post("/v1/chat/completions", &chat(name, json!({"stream": stream})));
                assert_eq!(r.status, 200, "{}", r.body);
                let got = if stream {
                    streamed(&r.events()).0
                } else {
                    r.json()["choices"][0]["message"]["content"].as_str().unwrap().to_string()
                };
                assert_eq!(got, text, "{name}, request {i}");
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }

    // `stop` ends the answer before the string; max_tokens ends it with "length".
    let text = want[0].1.clone();
    let cut = text.char_indices().nth(text.chars().count() / 2).unwrap().0;
    let stop: String = text[cut..].chars().take(3).collect();
    let (got, v) = server.answer("/v1/chat/completions", &chat("base", json!({"stop": [stop.clone()]})));
    let want_cut = &text[..text.find(&stop).unwrap()];
    assert_eq!(got, want_cut, "stop {stop:?}");
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    let (got, v) = server.answer("/v1/chat/completions", &chat("base", json!({"max_tokens": 3})));
    assert_eq!(v["choices"][0]["finish_reason"], "length");
    assert_eq!(v["usage"]["completion_tokens"], 3);
    assert!(text.starts_with(&got), "{got:?} vs {text:?}");

    // OpenAI's frequency and presence penalties choose what `loft generate` does with the same ones.
    // (2 + 2 for a token already said: the answer's second "and" is then not chosen.)
    let penalised = generate(&["-p", PROMPT, "--frequency-penalty", "2", "--presence-penalty", "2"]);
    assert_ne!(penalised, want[0].1, "the penalties changed nothing");
    let body = chat("base", json!({"frequency_penalty": 2.0, "presence_penalty": 2.0}));
    assert_eq!(server.answer("/v1/chat/completions", &body).0, penalised);
    let log = server.log();
    assert!(!log.contains("panicked"), "{log}");
}

#[test]
fn bad_input_gets_openais_error_shape() {
    let model = default_model();
    let server = Server::start(&["--model", &model, "--name", "base", "--api-key", KEY, "--max-body", "4096"]);
    assert_eq!(server.request("GET", "/health", None, None).json()["status"], "ok");

    // 401: no key, a wrong key, a key that is a prefix of the right one.
    for key in [None, Some("wrong"), Some(&KEY[..KEY.len() - 1])] {
        let e = server.request("GET", "/v1/models", key, None).error(401);
        assert_eq!(e["code"], "invalid_api_key");
        let e = server.request("POST", "/v1/chat/completions", key, Some(b"{}")).error(401);
        assert_eq!(e["type"], "invalid_request_error");
    }
    // 400: malformed JSON, missing fields, values out of range, unsupported features.
    let bad = |body: &[u8], path: &str| server.request("POST", path, Some(KEY), Some(body)).error(400);
    assert!(bad(b"{\"model\": ", "/v1/chat/completions")["message"].as_str().unwrap().contains("parse the JSON"));
    assert!(bad(b"[1, 2]", "/v1/completions")["param"].is_null());
    assert_eq!(bad(br#"{"messages": [{"role": "user", "content": "hi"}]}"#, "/v1/chat/completions")["param"], "model");
    assert_eq!(
        bad(br#"{"model": "base", "prompt": "x", "temperature": 3}"#, "/v1/completions")["param"],
        "temperature"
    );
    assert_eq!(bad(br#"{"model": "base", "prompt": "x", "n": 3}"#, "/v1/completions")["param"], "n");
    assert_eq!(
        bad(br#"{"model": "base", "prompt": "x", "max_tokens": 100000}"#, "/v1/completions")["param"],
        "max_tokens"
    );
    let long = format!(r#"{{"model": "base", "prompt": "{}"}}"#, "word ".repeat(1000));
    let e = server.request("POST", "/v1/completions", Some(KEY), Some(long.as_bytes())).error(413);
    assert_eq!(e["code"], "request_too_large");
    // 404: an unknown model (the served ones named), an unknown path; 405: a wrong method.
    let e = server.post("/v1/chat/completions", &chat("nope", json!({}))).error(404);
    assert_eq!((e["code"].as_str(), e["param"].as_str()), (Some("model_not_found"), Some("model")));
    assert!(e["message"].as_str().unwrap().contains("base"), "{e}");
    server.request("GET", "/v1/nothing", Some(KEY), None).error(404);
    server.request("GET", "/v1/chat/completions", Some(KEY), None).error(405);
    // Still serving, and nothing panicked.
    let (text, _) = server.answer("/v1/chat/completions", &chat("base", json!({"max_tokens": 2})));
    assert!(!text.is_empty());
    let log = server.log();
    assert!(!log.contains("panicked"), "{log}");
    assert!(log.contains("POST /v1/chat/completions 401"), "request log: {log}");
}

#[test]
fn a_client_that_leaves_mid_stream_frees_its_worker() {
    let model = default_model();
    let server = Server::start(&["--model", &model, "--max-concurrent", "1", "--max-tokens", "4000"]);
    let name = "SmolLM2-135M-Instruct.Q4_1";
    // A long answer (a story of up to 4000 tokens) on the only worker; read its first event, then hang up.
    let body = json!({
        "model": name, "prompt": "Once upon a time", "max_tokens": 4000, "temperature": 1.0, "seed": 1, "stream": true,
    })
    .to_string();
    let mut s = TcpStream::connect(&server.addr).unwrap();
    let head = format!(
        "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(head.as_bytes()).unwrap();
    let mut first = [0u8; 256];
    let n = s.read(&mut first).unwrap();
    assert!(String::from_utf8_lossy(&first[..n]).starts_with("HTTP/1.1 200"));
    drop(s);
    // The next request gets the worker as soon as the first notices (at its next token), not after 4000 tokens.
    let start = Instant::now();
    let r = server.post("/v1/completions", &json!({"model": name, "prompt": "Hi", "max_tokens": 2}));
    assert_eq!(r.status, 200, "{}", r.body);
    let waited = start.elapsed();
    let log = server.log();
    assert!(log.contains("the client went away"), "{log}");
    assert!(waited < Duration::from_secs(20), "waited {waited:?}:\n{log}");
}

/// OpenAI's official Python client (scripts/fetch.sh openai) against `loft serve`: /v1/models lists the base and
/// the adapter, and chat completions, whole and streamed, are `loft generate`'s greedy answers.
#[test]
fn openais_python_client_gets_loft_generates_answers() {
    let python = openai_py();
    let dir = tempfile::tempdir().unwrap();
    let adapter = write_adapter(dir.path(), 1);
    let model = default_model();
    let server =
        Server::start(&["--model", &model, "--name", "base", "--adapter", &format!("ift={adapter}"), "--api-key", KEY]);
    let script = workspace().join("scripts/openai_client_check.py");
    let url = format!("http://{}/v1", server.addr);
    let out = Command::new(&python)
        .arg(&script)
        .args([&url, KEY, &MAX_TOKENS.to_string(), PROMPT, "base", "ift"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}\n{}", String::from_utf8_lossy(&out.stderr), server.log());
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["models"], json!(["base", "ift"]));
    for (name, want) in [("base", generate(&["-p", PROMPT])), ("ift", generate(&["-p", PROMPT, "--adapter", &adapter]))]
    {
        let a = &v["answers"][name];
        assert_eq!(a["text"], want, "{name}: {a}");
        assert_eq!(a["stream_text"], want, "{name}: {a}");
        assert!(a["stream_pieces"].as_u64().unwrap() > 1, "{a}");
        assert_eq!(a["finish_reason"], a["stream_finish_reason"]);
        assert_eq!(a["usage"], a["stream_usage"]);
    }
}

/// POST /v1/adapters loads a folder under --runs while serving, and the next request gets its greedy answer;
/// paths outside --runs are refused; DELETE unloads it.
#[test]
fn adapters_load_and_unload_while_serving() {
    let runs = tempfile::tempdir().unwrap();
    let adapter = write_adapter(runs.path(), 1);
    let outside = tempfile::tempdir().unwrap();
    let elsewhere = write_adapter(outside.path(), 2);
    let model = default_model();
    let runs_dir = runs.path().display().to_string();
    let server = Server::start(&["--model", &model, "--name", "base", "--runs", &runs_dir, "--api-key", KEY]);
    server.post("/v1/chat/completions", &chat("late", json!({}))).error(404);
    let r = server.post("/v1/adapters", &json!({"name": "late", "path": "adapter-1"}));
    assert_eq!(r.status, 200, "{}", r.body);
    let models = server.request("GET", "/v1/models", Some(KEY), None).json();
    assert_eq!(models["data"][1]["id"], "late");
    let (got, _) = server.answer("/v1/chat/completions", &chat("late", json!({})));
    assert_eq!(got, generate(&["-p", PROMPT, "--adapter", &adapter]));
    // Outside --runs: through '..', an absolute path, a folder elsewhere; a taken name; a bad name.
    let relative_escape = format!("../{}", outside.path().file_name().unwrap().to_string_lossy());
    for path in [relative_escape.as_str(), elsewhere.as_str(), "/etc", "adapter-1/../../x", "missing"] {
        let e = server.post("/v1/adapters", &json!({"name": "other", "path": path})).error(400);
        assert_eq!(e["param"], "path", "{path}: {e}");
    }
    server.post("/v1/adapters", &json!({"name": "late", "path": "adapter-1"})).error(400);
    server.post("/v1/adapters", &json!({"name": "a/b", "path": "adapter-1"})).error(400);
    // Unloading: the base stays; the adapter goes.
    server.request("DELETE", "/v1/adapters/base", Some(KEY), None).error(400);
    let r = server.request("DELETE", "/v1/adapters/late", Some(KEY), None);
    assert_eq!(r.status, 200, "{}", r.body);
    server.post("/v1/chat/completions", &chat("late", json!({}))).error(404);
    server.request("DELETE", "/v1/adapters/late", Some(KEY), None).error(404);
    server.request("DELETE", "/v1/adapters/late", None, None).error(401);
    let log = server.log();
    assert!(!log.contains("panicked"), "{log}");
}

/// The page at `/` in headless Chromium (scripts/fetch.sh browser) while `loft train` runs a short job on the
/// default model under --runs: the page asks for the key, then shows the run running with its loss points growing,
/// then finished with its validation points; its chat panel streams two answers side by side (the base, and the
/// run's adapter, which the page loads through /v1/adapters) that equal the API's greedy answers.
#[test]
fn the_page_shows_a_growing_run_and_streams_two_answers() {
    let runs = tempfile::tempdir().unwrap();
    let model = default_model();
    let mut data = String::new();
    for i in 0..24 {
        let n = i % 5 + 1;
        let answer: Vec<String> = (1..=n).map(|k| k.to_string()).collect();
        let msg = json!({"messages": [
            {"role": "user", "content": format!("Count to {n}.")},
            {"role": "assistant", "content": answer.join(", ")},
        ]});
        data += &format!("{msg}\n");
    }
    std::fs::write(runs.path().join("count.jsonl"), data).unwrap();
    // About 0.4 s a step on two cores: long enough to watch, short enough for make test.
    let steps = 30;
    let config = format!(
        "[model]\npath = {model:?}\nmax_seq_length = 64\nload_in_4bit = true\n\n[lora]\nr = 4\nlora_alpha = 8\n\n\
         [data]\ntrain_files = [{:?}]\nformat = \"chat\"\nvalidation_split = 0.2\n\n\
         [train]\nper_device_train_batch_size = 1\ngradient_accumulation_steps = 1\nmax_steps = {steps}\n\
         eval_steps = 10\nlearning_rate = 1e-3\noutput_dir = {:?}\n",
        runs.path().join("count.jsonl").display().to_string(),
        runs.path().join("count").display().to_string()
    );
    std::fs::write(runs.path().join("count.toml"), config).unwrap();
    let runs_dir = runs.path().display().to_string();
    let server = Server::start(&["--model", &model, "--name", "base", "--runs", &runs_dir, "--api-key", KEY]);
    let mut train = Command::new(env!("CARGO_BIN_EXE_loft"))
        .args(["--threads", "2", "train"])
        .arg(runs.path().join("count.toml"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();

    let mut browser = Browser::launch();
    let page = browser.open(&format!("http://{}/", server.addr));
    // Without the key the page says so; with it, it polls the runs.
    let minute = Duration::from_secs(60);
    browser.wait_for(&page, "the page to ask for the key", "document.body.className", minute, |v| v == "needkey");
    let set_key = format!(
        "(() => {{ const k = document.getElementById('key'); k.value = '{KEY}'; \
                           k.dispatchEvent(new Event('change')); return true; }})()"
    );
    browser.eval(&page, &set_key);

    let card = "(() => { const c = document.querySelector('.run[data-run=\"count\"]'); if (!c) return null; \
                return {state: c.dataset.state, train: +c.dataset.trainPoints, eval: +c.dataset.evalPoints, \
                drawn: c.querySelector('svg polyline:nth-of-type(2)')?.getAttribute('points').split(' ').length ?? 0, \
                figures: c.querySelector('.figures').textContent}; })()";
    let first = browser.wait_for(&page, "the run, running, with a loss point", card, minute * 2, |v| {
        v["state"] == "running" && v["train"].as_u64() >= Some(1)
    });
    eprintln!("page, first sight: {first}");
    let n = first["train"].as_u64().unwrap();
    let grown = browser.wait_for(&page, "more loss points", card, minute, |v| v["train"].as_u64() > Some(n));
    eprintln!("page, later: {grown}");
    assert!(grown["train"].as_u64().unwrap() < steps, "the run ended before the page saw it grow: {grown}");
    let trained = train.wait().unwrap();
    let mut log = String::new();
    train.stderr.take().unwrap().read_to_string(&mut log).unwrap();
    assert!(trained.success(), "loft train failed:\n{log}");
    let done = browser.wait_for(&page, "the run, finished", card, minute, |v| v["state"] == "finished");
    eprintln!("page, finished: {done}");
    assert_eq!(done["train"], steps);
    assert_eq!(done["drawn"], steps, "one vertex per logged step in the train line");
    assert_eq!(done["eval"], 4, "validation at steps 0, 10, 20 and 30");
    assert!(done["figures"].as_str().unwrap().contains(&format!("step {steps}/{steps}")), "{done}");

    // Chat: the base and the run's adapter (not served yet: the page loads it), one prompt, two streamed columns.
    let ask = "(() => { for (const i of document.querySelectorAll('#models input')) \
               i.checked = i.value === 'base' || i.value === 'run:count/adapter'; \
               document.getElementById('prompt').value = 'Count to 4.'; \
               document.getElementById('max-tokens').value = '16'; \
               document.getElementById('send').click(); return document.querySelectorAll('#models input:checked').length; })()";
    let models = "document.querySelectorAll('#models input').length";
    browser.wait_for(&page, "the run's adapters among the models", models, minute, |v| v.as_u64() >= Some(2));
    assert_eq!(browser.eval(&page, ask), 2);
    let answers = "[...document.querySelectorAll('.answer')].map(a => ({model: a.dataset.model, \
                   chunks: +a.dataset.chunks, done: a.dataset.done ?? null, \
                   text: a.querySelector('.text').textContent, foot: a.querySelector('.foot').textContent}))";
    let got = browser.wait_for(&page, "two answers", answers, minute * 2, |v| {
        v.as_array().is_some_and(|a| a.len() == 2 && a.iter().all(|c| !c["done"].is_null()))
    });
    eprintln!("page answers: {got}");
    for column in got.as_array().unwrap() {
        let name = column["model"].as_str().unwrap();
        assert_ne!(column["done"], "error", "{column}");
        let body = json!({"model": name, "messages": [{"role": "user", "content": "Count to 4."}], "temperature": 0,
                          "max_tokens": 16});
        let (want, _) = server.answer("/v1/chat/completions", &body);
        assert_eq!(column["text"], want, "{name}");
        assert!(column["chunks"].as_u64().unwrap() > 1, "streamed in pieces: {column}");
    }
    let names: Vec<&str> = got.as_array().unwrap().iter().map(|c| c["model"].as_str().unwrap()).collect();
    assert_eq!(names, ["base", "count"]);
    let log = server.log();
    assert!(log.contains("loaded adapter count from"), "{log}");
    assert!(!log.contains("panicked"), "{log}");
}

/// Load on loopback, bounded in count and time: 64 greedy chat requests (8 prompts × the base and two adapters) from
/// one client, then the same 64 from 8 clients at once. Every answer from the 8 clients equals the one-client answer
/// to the same request (which the tests above hold equal to `loft generate`'s); the figures — aggregate decode
/// tokens/s with 1 and 8 clients, p50/p99 latency, the server's peak RSS — are printed for README.
#[test]
fn sixty_four_requests_from_eight_clients_get_the_sequential_answers() {
    const PROMPTS: [&str; 8] = [
        "Write one sentence about the sea.",
        "Name three colours.",
        "What is the capital of France?",
        "Count to five.",
        "Give me a short greeting.",
        "What do cats eat?",
        "Describe the sun in one line.",
        "Say something about winter.",
    ];
    const MODELS: [&str; 3] = ["base", "one", "two"];
    const TOKENS: usize = 32;
    let dir = tempfile::tempdir().unwrap();
    let (a1, a2) = (write_adapter(dir.path(), 1), write_adapter(dir.path(), 2));
    let model = default_model();
    let (one, two) = (format!("one={a1}"), format!("two={a2}"));
    let server = Arc::new(Server::start(&[
        "--model",
        &model,
        "--name",
        "base",
        "--adapter",
        &one,
        "--adapter",
        &two,
        "--max-concurrent",
        "8",
    ]));
    fn request(j: usize) -> Value {
        json!({"model": MODELS[j % 3], "messages": [{"role": "user", "content": PROMPTS[j % 8]}], "temperature": 0,
               "max_tokens": TOKENS})
    }
    /// (answer, completion tokens, seconds) of request j.
    fn send(server: &Server, j: usize) -> (String, u64, f64) {
        let start = Instant::now();
        let (text, v) = server.answer("/v1/chat/completions", &request(j));
        (text, v["usage"]["completion_tokens"].as_u64().unwrap(), start.elapsed().as_secs_f64())
    }
    let figures = |label: &str, results: &[(String, u64, f64)], wall: f64| {
        let tokens: u64 = results.iter().map(|r| r.1).sum();
        let mut latency: Vec<f64> = results.iter().map(|r| r.2).collect();
        latency.sort_by(f64::total_cmp);
        let at = |q: f64| latency[((latency.len() - 1) as f64 * q).round() as usize];
        eprintln!(
            "{label}: {} requests, {tokens} tokens in {wall:.1} s = {:.1} tok/s; latency p50 {:.2} s, p99 {:.2} s",
            results.len(),
            tokens as f64 / wall,
            at(0.5),
            at(0.99)
        );
        tokens as f64 / wall
    };

    let start = Instant::now();
    let alone: Vec<_> = (0..64).map(|j| send(&server, j)).collect();
    let one_client = figures("1 client", &alone, start.elapsed().as_secs_f64());
    for j in 0..64 {
        assert_eq!(alone[j].0, alone[j % 24].0, "request {j} repeats request {}", j % 24);
    }
    let distinct: std::collections::BTreeSet<&str> = alone[..24].iter().map(|r| r.0.as_str()).collect();
    assert!(distinct.len() > 12, "the prompts and adapters give different answers: {distinct:?}");

    let start = Instant::now();
    let clients: Vec<_> = (0..8)
        .map(|c| {
            let server = server.clone();
            std::thread::spawn(move || (0..8).map(|i| (c * 8 + i, send(&server, c * 8 + i))).collect::<Vec<_>>())
        })
        .collect();
    let mut together: Vec<(usize, (String, u64, f64))> = clients.into_iter().flat_map(|h| h.join().unwrap()).collect();
    let wall = start.elapsed().as_secs_f64();
    together.sort_by_key(|r| r.0);
    for (j, (text, tokens, _)) in &together {
        assert_eq!(text, &alone[*j].0, "request {j} ({}) from 8 clients", MODELS[j % 3]);
        assert_eq!(*tokens, alone[*j].1);
    }
    let results: Vec<_> = together.into_iter().map(|r| r.1).collect();
    let eight_clients = figures("8 clients", &results, wall);
    let status = std::fs::read_to_string(format!("/proc/{}/status", server.child.id())).unwrap();
    let peak = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap_or_default().to_string();
    eprintln!("8 clients / 1 client: {:.2}x; server peak RSS {peak}", eight_clients / one_client);
    let log = server.log();
    assert!(!log.contains("panicked"), "{log}");
}
