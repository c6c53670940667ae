//! `loft serve`: OpenAI's HTTP API over one base model in memory and any number of LoRA adapters, applied unmerged
//! per request. The HTTP layer only: requests are parsed, answered and scheduled by `loft::serve`.
//!
//! axum on tokio, because the server holds many slow connections (streams that last seconds) on few threads
//! while the math runs on its own thread (the batch); hyper underneath is the most used HTTP/1.1 implementation in
//! Rust, and axum adds routing, body limits and middleware without macros.

use std::convert::Infallible;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::{Body, Bytes};
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{from_fn, from_fn_with_state, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use loft::chat_template::ChatTemplate;
use loft::infer::GenerateOptions;
use loft::model::KvCache;
use loft::model::{LoadOptions, LoadedModel, ModelPath};
use loft::serve::openai::{chat_request, completion_request, models_list};
use loft::serve::runs::{adapter_model_name, find_runs, open_run, read_metrics};
use loft::serve::{
    ApiError, Event, Job, Limits, Models, Prompt, Request as ApiRequest, ResponseHead, Scheduler, Target,
};
use loft::Error;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tokio_stream::StreamExt;

use crate::generate::stop_ids;

/// `loft serve --help` is this text and the flags below.
#[derive(clap::Args)]
pub struct Args {
    /// The base model: a .gguf file, a Hugging Face folder or a hub id. It is held once in memory and serves the
    /// base and every adapter.
    #[arg(long, short = 'm')]
    pub model: String,
    /// Split text with this pre-tokenizer instead of the GGUF's own (as `loft generate --tokenizer-pre`).
    #[arg(long, value_name = "NAME")]
    pub tokenizer_pre: Option<String>,
    /// The base model's name in requests' `model` and in /v1/models (default: the file or folder name without
    /// extension).
    #[arg(long)]
    pub name: Option<String>,
    /// Serve the LoRA adapter in DIR (PEFT's format: a run's adapter/ or checkpoint-N/) as model NAME; it is
    /// applied unmerged to the requests that name it. Repeat for more adapters.
    #[arg(long, value_name = "NAME=DIR")]
    pub adapter: Vec<String>,
    /// Let POST /v1/adapters load adapter folders under DIR (e.g. a run's adapter/ or checkpoint-N/, given
    /// relative to DIR); without it, only the folders of --adapter can be loaded again.
    #[arg(long, value_name = "DIR")]
    pub runs: Option<std::path::PathBuf>,
    /// The address to listen on. Anything but a loopback address (127.0.0.1, ::1, localhost) needs --api-key.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// The port to listen on; 0 picks a free one (the address is printed on stderr).
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// Require `Authorization: Bearer KEY` on /v1/ requests (compared in constant time). /health stays open.
    #[arg(long, value_name = "KEY")]
    pub api_key: Option<String>,
    /// Requests decoded together, one token each per step (continuous batching: each with its own KV cache and
    /// adapter; requests join and leave between steps).
    #[arg(long, default_value_t = 8)]
    pub max_concurrent: usize,
    /// MiB the running requests' KV caches may take together (each holds prompt + max_tokens positions); a
    /// request that alone needs more is refused.
    #[arg(long, value_name = "MIB", default_value_t = 1024)]
    pub kv_budget: usize,
    /// Requests that may wait for a place in the batch; beyond them a request is answered 503.
    #[arg(long, default_value_t = 64)]
    pub queue: usize,
    /// Seconds a request may wait for a place in the batch before it is answered 503.
    #[arg(long, default_value_t = 300)]
    pub queue_timeout: u64,
    /// The most new tokens a request may ask for (max_tokens / max_completion_tokens), and what it gets when it
    /// asks for none; the model's context bounds it too.
    #[arg(long, default_value_t = 1024)]
    pub max_tokens: usize,
    /// The largest request body accepted, in bytes; a larger one is answered 413.
    #[arg(long, default_value_t = 1 << 20)]
    pub max_body: usize,
}

/// What every handler shares.
struct App {
    loaded: Arc<LoadedModel>,
    template: Option<ChatTemplate>,
    models: Models,
    scheduler: Scheduler,
    api_key: Option<String>,
    max_tokens: usize,
    /// Bytes of KV cache the running requests may hold together.
    kv_budget: usize,
    max_body: usize,
    started: u64,
    next_id: AtomicU64,
    /// --runs, canonical: POST /v1/adapters loads folders under it.
    runs: Option<PathBuf>,
    /// The --adapter folders, canonical: POST /v1/adapters may load them again.
    start_dirs: Vec<PathBuf>,
}

pub fn run(args: Args) -> loft::Result<()> {
    let ip = listen_address(&args.host)?;
    if !ip.is_loopback() && args.api_key.as_deref().is_none_or(str::is_empty) {
        return Err(Error::hinted(
            format!("--host {}: listening beyond this machine needs an API key", args.host),
            "pass --api-key KEY (clients send `Authorization: Bearer KEY`), or keep the default --host 127.0.0.1",
        ));
    }
    let adapters = args.adapter.iter().map(|a| named_dir(a)).collect::<loft::Result<Vec<_>>>()?;
    let runs = args
        .runs
        .as_ref()
        .map(|r| r.canonicalize().map_err(|e| Error::io(r, e).with_hint("--runs names the folder of training runs")))
        .transpose()?;
    let start = Instant::now();
    let options = LoadOptions { tokenizer_pre: args.tokenizer_pre.clone(), dequantize: false, load_in_4bit: false };
    let loaded = LoadedModel::load_with(&args.model, &options)?;
    let name = match &args.name {
        Some(n) => n.clone(),
        None => default_name(&loaded.path),
    };
    let models = Models::new(&name).map_err(|e| e.with_hint("name the base with --name"))?;
    for (adapter_name, dir) in &adapters {
        models.load(adapter_name, dir, &loaded.model).map_err(|e| e.at(format!("--adapter {adapter_name}")))?;
    }
    let cfg = &loaded.model.config;
    eprintln!(
        "loaded {} ({} layers, {:.1}M parameters) and {} adapter(s) in {:.2}s",
        loaded.path.path().display(),
        cfg.num_hidden_layers,
        cfg.num_parameters() as f64 / 1e6,
        adapters.len(),
        start.elapsed().as_secs_f64()
    );
    let t = &loaded.tokenizer;
    let template = t.chat_template().map(|s| ChatTemplate::new(s, t.bos_token(), t.eos_token())).transpose()?;
    let loaded = Arc::new(loaded);
    let limits = Limits {
        max_concurrent: args.max_concurrent,
        kv_budget: args.kv_budget.saturating_mul(1 << 20),
        queue: args.queue,
        timeout: Duration::from_secs(args.queue_timeout),
    };
    let scheduler = Scheduler::start(loaded.clone(), limits)?;
    let app = Arc::new(App {
        loaded,
        template,
        models,
        scheduler,
        api_key: args.api_key.filter(|k| !k.is_empty()),
        max_tokens: args.max_tokens,
        kv_budget: limits.kv_budget,
        max_body: args.max_body,
        started: unix_seconds(),
        next_id: AtomicU64::new(1),
        runs,
        start_dirs: adapters.iter().filter_map(|(_, d)| d.canonicalize().ok()).collect(),
    });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("loft-http")
        .enable_all()
        .build()
        .map_err(|e| Error::caused("cannot start the HTTP runtime", e))?;
    runtime.block_on(listen(app, SocketAddr::new(ip, args.port)))
}

async fn listen(app: Arc<App>, addr: SocketAddr) -> loft::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
        Error::caused(format!("cannot listen on {addr}"), e).with_hint("pick another --port, or 0 for a free one")
    })?;
    let bound = listener.local_addr().map_err(|e| Error::caused("cannot read the bound address", e))?;
    eprintln!("loft serve: {} on http://{bound}/v1 (models: {})", app.loaded_name(), app.models.names().join(", "));
    eprintln!("web page: http://{bound}/");
    let v1 = Router::new()
        .route("/v1/models", get(list_models))
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/completions", post(completions))
        .route("/v1/adapters", post(load_adapter))
        .route("/v1/adapters/{name}", axum::routing::delete(unload_adapter))
        .route("/api/runs", get(list_runs))
        .route("/api/metrics/{*run}", get(run_metrics))
        .route_layer(from_fn_with_state(app.clone(), require_key));
    let router = Router::new()
        .route("/", get(page))
        .route("/health", get(health))
        .merge(v1)
        .fallback(no_route)
        .method_not_allowed_fallback(wrong_method)
        .layer(DefaultBodyLimit::max(app.max_body))
        .layer(from_fn(log_request))
        .with_state(app);
    axum::serve(listener, router)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await
        .map_err(|e| Error::caused("the server stopped", e))
}

impl App {
    fn loaded_name(&self) -> String {
        self.loaded.path.path().display().to_string()
    }

    /// The prompt's ids, as `loft generate` makes them: messages through the chat template, or text as it is.
    fn prompt_ids(&self, prompt: &Prompt) -> Result<Vec<u32>, ApiError> {
        let tok = &self.loaded.tokenizer;
        let ids = match prompt {
            Prompt::Chat(messages) => {
                let Some(template) = &self.template else {
                    return Err(ApiError::invalid(
                        "this model has no chat template; send plain text to /v1/completions",
                        Some("messages"),
                    ));
                };
                let text = template
                    .render(messages, true)
                    .map_err(|e| ApiError::invalid(format!("the chat template refused the messages: {e}"), None))?;
                tok.encode(&text, false, true)
            }
            Prompt::Text(text) => tok.encode(text, true, true),
        };
        if ids.is_empty() {
            return Err(ApiError::invalid("the prompt is empty", Some("prompt")));
        }
        Ok(ids)
    }

    /// A fresh response id and seed: the clock and a counter (a request without `seed` is not reproducible, as
    /// with OpenAI).
    fn next(&self) -> (u64, u64) {
        let n = self.next_id.fetch_add(1, Ordering::Relaxed);
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
        (n, nanos ^ n.wrapping_mul(0x9E37_79B9_7F4A_7C15))
    }
}

/// `--host`: an IP address, or `localhost`.
fn listen_address(host: &str) -> loft::Result<IpAddr> {
    if host == "localhost" {
        return Ok(IpAddr::V4(Ipv4Addr::LOCALHOST));
    }
    host.parse().map_err(|_| {
        Error::hinted(
            format!("--host {host} is not an IP address"),
            "use 127.0.0.1 (this machine only), or e.g. 0.0.0.0 with --api-key",
        )
    })
}

/// `--adapter NAME=DIR`.
fn named_dir(arg: &str) -> loft::Result<(String, std::path::PathBuf)> {
    match arg.split_once('=') {
        Some((name, dir)) if !name.is_empty() && !dir.is_empty() => {
            loft::serve::models::check_name(name).map_err(|e| e.at(format!("--adapter {arg}")))?;
            Ok((name.to_string(), dir.into()))
        }
        _ => Err(Error::hinted(
            format!("--adapter {arg}: expected NAME=DIR"),
            "e.g. --adapter ift=runs/ift/adapter (NAME is what requests put in `model`)",
        )),
    }
}

/// The base's default name: the file name without `.gguf`, the folder's name, or the hub id's last part.
fn default_name(path: &ModelPath) -> String {
    let p = path.path();
    let name = match path {
        ModelPath::Gguf(_) => p.file_stem(),
        ModelPath::HfFolder(_) => p.file_name(),
    };
    name.map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "base".into())
}

fn unix_seconds() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// The same bytes, in time that depends on the key's length only.
fn same_secret(given: &[u8], key: &[u8]) -> bool {
    let mut diff = (given.len() != key.len()) as u8;
    for (i, k) in key.iter().enumerate() {
        diff |= given.get(i).copied().unwrap_or(0) ^ k;
    }
    std::hint::black_box(diff) == 0
}

fn error_response(e: ApiError) -> Response {
    let status = StatusCode::from_u16(e.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    json_response(status, &e.to_json())
}

fn json_response(status: StatusCode, v: &serde_json::Value) -> Response {
    let mut r = (status, v.to_string()).into_response();
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

/// Method, path, status and time to the response's head (for a stream: to its first token), on stderr; the
/// batch logs each generation's token counts and speed.
async fn log_request(req: Request, next: Next) -> Response {
    let (method, path, start) = (req.method().clone(), req.uri().path().to_string(), Instant::now());
    let response = next.run(req).await;
    eprintln!("{method} {path} {} {:.0} ms", response.status().as_u16(), start.elapsed().as_secs_f64() * 1e3);
    response
}

async fn require_key(State(app): State<Arc<App>>, req: Request, next: Next) -> Response {
    if let Some(key) = &app.api_key {
        let header = req.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).unwrap_or("");
        let given = header.strip_prefix("Bearer ").unwrap_or("");
        if !same_secret(given.as_bytes(), key.as_bytes()) {
            return error_response(ApiError::unauthorized());
        }
    }
    next.run(req).await
}

async fn health() -> Response {
    json_response(StatusCode::OK, &serde_json::json!({"status": "ok"}))
}

/// The web page (crates/loft-cli/assets/index.html, built into the binary): runs and side-by-side chat. It holds
/// no data, so it needs no key; what it shows comes from the /api and /v1 routes, which do.
async fn page() -> Response {
    let mut r = include_str!("../assets/index.html").into_response();
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
    r
}

/// GET /api/runs: every training run under --runs (config, state, summary) with its adapter folders, each with
/// the name it is or would be served as.
async fn list_runs(State(app): State<Arc<App>>) -> Response {
    let Some(root) = app.runs.clone() else {
        return json_response(
            StatusCode::OK,
            &serde_json::json!({"model": app.models.base(), "runs_dir": null, "runs": []}),
        );
    };
    let worker = app.clone();
    // Reading folders and files: off the HTTP threads.
    let listed = tokio::task::spawn_blocking(move || {
        let served: Vec<(String, Option<PathBuf>)> =
            worker.models.adapter_dirs().into_iter().map(|(n, d)| (n, d.canonicalize().ok())).collect();
        let runs: Vec<serde_json::Value> = find_runs(&root)
            .iter()
            .map(|run| {
                let adapters: Vec<serde_json::Value> = run
                    .adapters
                    .iter()
                    .map(|path| {
                        let dir = root.join(path).canonicalize().ok();
                        let served_as = served.iter().find(|(_, d)| d.is_some() && *d == dir).map(|(n, _)| n);
                        serde_json::json!({"path": path, "name": adapter_model_name(path), "served_as": served_as})
                    })
                    .collect();
                let mut v = run.to_json();
                v["adapters"] = adapters.into();
                v
            })
            .collect();
        serde_json::json!({"model": worker.models.base(), "runs_dir": root.display().to_string(), "runs": runs})
    })
    .await;
    match listed {
        Ok(v) => json_response(StatusCode::OK, &v),
        Err(e) => error_response(ApiError::internal(format!("listing the runs failed: {e}"))),
    }
}

/// GET /api/metrics/RUN?offset=N: the run's loss points from byte N of its metrics.jsonl (complete lines only),
/// and where the next request starts.
async fn run_metrics(
    State(app): State<Arc<App>>,
    axum::extract::Path(run): axum::extract::Path<String>,
    req: Request,
) -> Response {
    let Some(root) = app.runs.clone() else {
        return error_response(ApiError::no_route("GET", req.uri().path()));
    };
    let offset = req.uri().query().and_then(|q| q.strip_prefix("offset=")).map(str::parse::<u64>);
    let offset = match offset {
        None => 0,
        Some(Ok(n)) => n,
        Some(Err(_)) => return error_response(ApiError::invalid("offset must be a byte count", Some("offset"))),
    };
    let read = tokio::task::spawn_blocking(move || {
        let run = open_run(&root, &run)?;
        read_metrics(&run.dir, offset)
    })
    .await;
    match read {
        Ok(Ok(piece)) => json_response(StatusCode::OK, &piece.to_json()),
        Ok(Err(e)) => {
            let mut e = ApiError::invalid(e.to_string(), Some("run"));
            e.status = 404;
            error_response(e)
        }
        Err(e) => error_response(ApiError::internal(format!("reading the metrics failed: {e}"))),
    }
}

async fn no_route(req: Request) -> Response {
    error_response(ApiError::no_route(req.method().as_str(), req.uri().path()))
}

async fn wrong_method(req: Request) -> Response {
    let mut e = ApiError::no_route(req.method().as_str(), req.uri().path());
    e.status = 405;
    e.message = format!("{} is not allowed on {}", req.method(), req.uri().path());
    e.code = Some("method_not_allowed");
    error_response(e)
}

async fn list_models(State(app): State<Arc<App>>) -> Response {
    json_response(StatusCode::OK, &models_list(&app.models.names(), app.started))
}

/// POST /v1/adapters `{"name": NAME, "path": DIR}`: serves the adapter in DIR as NAME. DIR is relative to
/// --runs (no `..`, and it must stay under --runs once links are resolved) or one of the --adapter folders.
async fn load_adapter(State(app): State<Arc<App>>, body: Result<Bytes, BytesRejection>) -> Response {
    let body = match body {
        Ok(b) => b,
        Err(r) if r.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            return error_response(ApiError::too_large(app.max_body))
        }
        Err(r) => return error_response(ApiError::invalid(format!("cannot read the request body: {r}"), None)),
    };
    let v: serde_json::Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => return error_response(ApiError::invalid(format!("We could not parse the JSON body: {e}"), None)),
    };
    let (Some(name), Some(path)) = (v["name"].as_str(), v["path"].as_str()) else {
        return error_response(ApiError::invalid("expected {\"name\": NAME, \"path\": DIR}", Some("path")));
    };
    let dir = match allowed_dir(&app, Path::new(path)) {
        Ok(d) => d,
        Err(e) => return error_response(e),
    };
    let (name, worker) = (name.to_string(), app.clone());
    // Reading an adapter takes a moment (its safetensors, checks): off the HTTP threads.
    let loaded = tokio::task::spawn_blocking(move || {
        worker.models.load(&name, &dir, &worker.loaded.model).map(|()| (name, dir))
    })
    .await;
    match loaded {
        Ok(Ok((name, dir))) => {
            eprintln!("loaded adapter {name} from {}", dir.display());
            json_response(StatusCode::OK, &serde_json::json!({"id": name, "object": "model", "owned_by": "loft"}))
        }
        Ok(Err(e)) => error_response(ApiError::invalid(e.to_string(), Some("path"))),
        Err(e) => error_response(ApiError::internal(format!("loading the adapter failed: {e}"))),
    }
}

/// The folder `path` names, when the server may load it: under --runs, or an --adapter folder.
fn allowed_dir(app: &App, path: &Path) -> Result<PathBuf, ApiError> {
    let refuse = |why: &str| Err(ApiError::invalid(format!("path '{}': {why}", path.display()), Some("path")));
    let start = path.canonicalize().ok().filter(|c| app.start_dirs.contains(c));
    if let Some(dir) = start {
        return Ok(dir);
    }
    let Some(runs) = &app.runs else {
        return refuse("this server loads only its --adapter folders (start it with --runs DIR for more)");
    };
    if !path.components().all(|c| matches!(c, Component::Normal(_))) {
        return refuse("give a folder relative to --runs, without '..'");
    }
    match runs.join(path).canonicalize() {
        Ok(dir) if dir.starts_with(runs) && dir.is_dir() => Ok(dir),
        Ok(_) => refuse("not a folder under --runs"),
        Err(e) => refuse(&format!("not found under --runs ({e})")),
    }
}

/// DELETE /v1/adapters/NAME: stops serving it (requests already running with it finish).
async fn unload_adapter(
    State(app): State<Arc<App>>,
    axum::extract::Path(name): axum::extract::Path<String>,
) -> Response {
    if name == app.models.base() {
        return error_response(ApiError::invalid("the base model cannot be unloaded", Some("name")));
    }
    if app.models.remove(&name) {
        eprintln!("unloaded adapter {name}");
        json_response(StatusCode::OK, &serde_json::json!({"id": name, "object": "model", "deleted": true}))
    } else {
        error_response(ApiError::unknown_model(&name, &app.models.names()))
    }
}

async fn chat_completions(State(app): State<Arc<App>>, body: Result<Bytes, BytesRejection>) -> Response {
    respond(app, body, true).await
}

async fn completions(State(app): State<Arc<App>>, body: Result<Bytes, BytesRejection>) -> Response {
    respond(app, body, false).await
}

async fn respond(app: Arc<App>, body: Result<Bytes, BytesRejection>, chat: bool) -> Response {
    let body = match body {
        Ok(b) => b,
        Err(r) if r.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            return error_response(ApiError::too_large(app.max_body))
        }
        Err(r) => return error_response(ApiError::invalid(format!("cannot read the request body: {r}"), None)),
    };
    let parsed = if chat { chat_request(&body) } else { completion_request(&body) };
    let (job, request) = match parsed.and_then(|r| job(&app, r)) {
        Ok(j) => j,
        Err(e) => return error_response(e),
    };
    let (id, _) = app.next();
    let head = ResponseHead {
        chat,
        id: format!("{}-{id}", if chat { "chatcmpl" } else { "cmpl" }),
        created: unix_seconds(),
        model: request.model.clone(),
    };
    let (sender, mut events) = tokio::sync::mpsc::unbounded_channel::<Event>();
    let job = Job { sink: Box::new(move |e| sender.send(e).is_ok()), ..job };
    if app.scheduler.submit(job).is_err() {
        return error_response(ApiError::busy(
            "the batch and the queue are full (loft serve --max-concurrent, --queue)",
        ));
    }
    // The first event decides the status: a request that fails before its first token gets an error status.
    let first = match events.recv().await {
        Some(Event::Failed { message, busy }) => {
            return error_response(if busy { ApiError::busy(message) } else { ApiError::internal(message) })
        }
        Some(e) => e,
        None => return error_response(ApiError::internal("the batch ended without an answer")),
    };
    if !request.stream {
        let mut text = String::new();
        let mut next = Some(first);
        while let Some(event) = next {
            match event {
                Event::Text(t) => text.push_str(&t),
                Event::Done(f) => {
                    return json_response(StatusCode::OK, &head.completion(&text, f.finish_reason, f.usage));
                }
                Event::Failed { message, .. } => return error_response(ApiError::internal(message)),
            }
            next = events.recv().await;
        }
        return error_response(ApiError::internal("the batch ended without an answer"));
    }
    let mut sse = SseWriter { head, first: true, include_usage: request.include_usage };
    let chunks = tokio_stream::once(first)
        .chain(UnboundedReceiverStream::new(events))
        .map(move |e| Ok::<Bytes, Infallible>(sse.write(e)));
    let mut response = Response::new(Body::from_stream(chunks));
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

/// The scheduler's job for a checked request, or the error that refuses it (unknown model, prompt too long,
/// max_tokens beyond the server's limit).
fn job(app: &App, request: ApiRequest) -> Result<(Job, ApiRequest), ApiError> {
    let adapter = match app.models.get(&request.model) {
        None => return Err(ApiError::unknown_model(&request.model, &app.models.names())),
        Some(Target::Base) => None,
        Some(Target::Adapter(a)) => Some(a),
    };
    let prompt = app.prompt_ids(&request.prompt)?;
    let context = app.loaded.model.config.max_position_embeddings;
    if prompt.len() >= context {
        let mut e = ApiError::invalid(
            format!("The prompt is {} tokens; the model's context is {context}.", prompt.len()),
            Some("messages"),
        );
        e.code = Some("context_length_exceeded");
        return Err(e);
    }
    let asked = request.max_tokens.unwrap_or(app.max_tokens);
    if asked > app.max_tokens {
        return Err(ApiError::invalid(
            format!("max_tokens is too large: {asked}. This server allows at most {} (--max-tokens).", app.max_tokens),
            Some("max_tokens"),
        ));
    }
    let max_new_tokens = asked.min(context - prompt.len());
    let kv = KvCache::<loft::engine::Cpu>::bytes(&app.loaded.model.config, prompt.len() + max_new_tokens);
    if kv > app.kv_budget {
        return Err(ApiError::invalid(
            format!(
                "The prompt and max_tokens need {} MiB of KV cache; this server allows {} MiB (--kv-budget). Lower \
                 max_tokens.",
                kv.div_ceil(1 << 20),
                app.kv_budget >> 20
            ),
            Some("max_tokens"),
        ));
    }
    let mut sampling = request.sampling.clone();
    sampling.seed = request.seed.unwrap_or_else(|| app.next().1);
    let options = GenerateOptions { max_new_tokens, sampling, stop_ids: stop_ids(&app.loaded) };
    let job = Job {
        label: request.model.clone(),
        adapter,
        prompt,
        options,
        stop: request.stop.clone(),
        sink: Box::new(|_| false),
    };
    Ok((job, request))
}

/// Turns events into server-sent events: `data: {chunk}` lines, the finish chunk, usage when asked, `[DONE]`.
struct SseWriter {
    head: ResponseHead,
    first: bool,
    include_usage: bool,
}

impl SseWriter {
    fn write(&mut self, event: Event) -> Bytes {
        let data = |v: serde_json::Value| format!("data: {v}\n\n");
        let mut out = String::new();
        match event {
            Event::Text(t) => {
                out += &data(self.head.chunk(&t, self.first));
                self.first = false;
            }
            Event::Done(f) => {
                if self.first && self.head.chat {
                    out += &data(self.head.chunk("", true));
                }
                out += &data(self.head.finish_chunk(f.finish_reason));
                if self.include_usage {
                    out += &data(self.head.usage_chunk(f.usage));
                }
                out += "data: [DONE]\n\n";
            }
            Event::Failed { message, .. } => out += &data(ApiError::internal(message).to_json()),
        }
        Bytes::from(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_compare_whole() {
        assert!(same_secret(b"k3y", b"k3y"));
        assert!(!same_secret(b"k3", b"k3y"));
        assert!(!same_secret(b"k3yy", b"k3y"));
        assert!(!same_secret(b"", b"k3y"));
        assert!(!same_secret(b"K3y", b"k3y"));
    }

    #[test]
    fn adapters_are_named() {
        assert_eq!(named_dir("ift=runs/a/adapter").unwrap(), ("ift".into(), "runs/a/adapter".into()));
        assert!(named_dir("runs/a/adapter").is_err());
        assert!(named_dir("=x").is_err());
        assert!(named_dir("a/b=x").is_err());
        assert!(listen_address("localhost").unwrap().is_loopback());
        assert!(!listen_address("0.0.0.0").unwrap().is_loopback());
        assert!(listen_address("example.org").is_err());
    }
}
