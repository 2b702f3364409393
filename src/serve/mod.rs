//! `reckon serve`: an OpenAI-compatible local server with budget controls
//! per request, and a tutor page at `/`.
//!
//! HTTP (axum on tokio) on one side, the engine thread ([`worker`]) on the
//! other: requests become jobs in the engine's one batched decode loop;
//! events come back over a channel per request. The wire format and the
//! request checks live in [`api`].

pub mod api;
mod worker;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context;
use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use clap::Args;
use tokio::sync::mpsc::UnboundedReceiver;

use reckon::budget::Segment;
use reckon::engine::BatchConfig;
use reckon::events::{CancelHandle, Event};
use reckon::format::ThinkFormat;

use api::{ApiError, Defaults};
use worker::{Msg, Request, Worker};

/// Request bodies larger than this are refused (413).
pub const MAX_BODY_BYTES: usize = 1 << 20;

/// The tutor page: one file, no external assets.
const PAGE: &str = include_str!("page.html");

/// `reckon serve` options.
#[derive(Args)]
pub struct ServeArgs {
    #[command(flatten)]
    model: crate::ModelArgs,
    /// Address to bind (loopback by default: only this machine can connect).
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Port (0: any free port; the address is printed).
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// Requests decoded together (slots of one batch).
    #[arg(long, default_value_t = 4)]
    parallel: u32,
    /// Context tokens per slot: the longest prompt plus thinking cap plus
    /// answer a request may ask for.
    #[arg(long, default_value_t = 4096)]
    slot_ctx: u32,
    /// Require `Authorization: Bearer KEY` on /v1/ endpoints.
    #[arg(long, env = "RECKON_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// Requests that may wait for a slot; beyond that, 503.
    #[arg(long, default_value_t = 16)]
    max_queue: usize,
}

struct AppState {
    worker: Worker,
    defaults: Defaults,
    model_id: String,
    format: ThinkFormat,
    api_key: Option<String>,
    max_queue: usize,
    created: u64,
    next_id: AtomicU64,
}

fn now_s() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Load the model, start the engine thread, serve until Ctrl-C.
pub fn run(args: ServeArgs) -> anyhow::Result<()> {
    if args.parallel == 0 {
        bad!("--parallel must be at least 1");
    }
    let engine = args.model.load()?;
    let model_id = model_id(&args.model);
    let format = engine.format();
    let threads = args.model.threads;
    let worker = Worker::start(engine, BatchConfig { slots: args.parallel, slot_context: args.slot_ctx, threads }, args.max_queue)?;
    let state = Arc::new(AppState {
        defaults: Defaults::default(),
        model_id: model_id.clone(),
        format,
        api_key: args.api_key.clone().filter(|k| !k.is_empty()),
        max_queue: args.max_queue,
        created: now_s(),
        next_id: AtomicU64::new(1),
        worker,
    });
    let app = Router::new()
        .route("/", get(page))
        .route("/health", get(health))
        .route("/v1/models", get(models))
        .route("/v1/chat/completions", post(chat))
        .fallback(not_found)
        .with_state(state.clone());
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind((args.host.as_str(), args.port))
            .await
            .with_context(|| format!("binding {}:{}", args.host, args.port))?;
        let addr: SocketAddr = listener.local_addr()?;
        println!("listening on http://{addr}");
        eprintln!(
            "reckon serve: {model_id} ({format} format), {} slots of {} tokens, queue {}{}; the tutor page is at http://{addr}/",
            state.worker.slots,
            state.worker.slot_context,
            args.max_queue,
            if state.api_key.is_some() { ", API key required" } else { "" }
        );
        use std::io::Write;
        let _ = std::io::stdout().flush();
        axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = tokio::signal::ctrl_c().await;
                log::info!("shutting down");
            })
            .await
            .context("serving")
    })
}

/// The model's id in /v1/models and responses: the file's stem, and the
/// adapter's after a `+`.
fn model_id(m: &crate::ModelArgs) -> String {
    let stem = |p: &std::path::Path| p.file_stem().map_or("model".into(), |s| s.to_string_lossy().into_owned());
    let base = stem(&m.model.clone().unwrap_or_else(reckon::models::default_model_path));
    match &m.adapter {
        Some(a) => format!("{base}+{}", stem(a)),
        None => base,
    }
}

fn error(e: ApiError) -> Response {
    let status = StatusCode::from_u16(e.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut r = (status, Json(e.body())).into_response();
    if e.status == 503 {
        r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    r
}

impl AppState {
    fn authorize(&self, headers: &HeaderMap) -> Result<(), ApiError> {
        let Some(key) = &self.api_key else { return Ok(()) };
        let given = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
        // Compare every byte, so the time taken says nothing about the key.
        let ok = given.is_some_and(|g| g.len() == key.len() && g.bytes().zip(key.bytes()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0);
        if ok {
            Ok(())
        } else {
            Err(ApiError::new(
                401,
                "invalid_request_error",
                Some("invalid_api_key"),
                if given.is_some() { "incorrect API key" } else { "this server needs an API key: send Authorization: Bearer KEY" },
            ))
        }
    }
}

async fn page() -> Response {
    let mut r = ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], PAGE).into_response();
    r.headers_mut().insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'"),
    );
    r
}

async fn not_found() -> Response {
    error(ApiError::new(404, "invalid_request_error", Some("not_found"), "no such endpoint (try POST /v1/chat/completions)"))
}

async fn health(State(s): State<Arc<AppState>>) -> Response {
    let load = &s.worker.load;
    Json(serde_json::json!({
        "status": "ok",
        "model": s.model_id,
        "format": s.format,
        "slots": s.worker.slots,
        "slot_context": s.worker.slot_context,
        "slots_busy": load.busy.load(Ordering::SeqCst),
        "queued": load.queued.load(Ordering::SeqCst),
        "served": load.served.load(Ordering::SeqCst),
        "pid": std::process::id(),
    }))
    .into_response()
}

async fn models(State(s): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    if let Err(e) = s.authorize(&headers) {
        return error(e);
    }
    Json(serde_json::json!({
        "object": "list",
        "data": [{ "id": s.model_id, "object": "model", "created": s.created, "owned_by": "reckon" }],
    }))
    .into_response()
}

/// The body, at most [`MAX_BODY_BYTES`]. A larger one is read on (and
/// dropped) up to [`DRAIN_BYTES`] before the 413, so that the client, still
/// sending, gets the answer instead of a reset connection.
async fn read_body(body: Body) -> Result<Vec<u8>, ApiError> {
    use futures_util::StreamExt;
    let mut stream = body.into_data_stream();
    let (mut buf, mut total) = (Vec::new(), 0usize);
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| ApiError::invalid(format!("reading the request body: {e}")))?;
        total += chunk.len();
        if total <= MAX_BODY_BYTES {
            buf.extend_from_slice(&chunk);
        } else if total > DRAIN_BYTES {
            break;
        }
    }
    if total > MAX_BODY_BYTES {
        return Err(ApiError::new(413, "invalid_request_error", Some("request_too_large"), format!("the request body is larger than {MAX_BODY_BYTES} bytes")));
    }
    Ok(buf)
}

/// How much of an oversized body is read before answering 413.
const DRAIN_BYTES: usize = 16 << 20;

/// Cancels the request's solve when dropped: when the handler or its
/// event stream goes away because the client disconnected.
struct CancelOnDrop(CancelHandle);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.cancel();
    }
}

/// Bodies must say they are JSON. A web page on another site cannot send
/// that to this server without a CORS preflight, which it does not answer:
/// a site the user visits cannot use their local model.
fn require_json(headers: &HeaderMap) -> Result<(), ApiError> {
    let ct = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let essence = ct.split(';').next().unwrap_or("").trim();
    if essence.eq_ignore_ascii_case("application/json") {
        Ok(())
    } else {
        Err(ApiError::new(
            415,
            "invalid_request_error",
            Some("unsupported_media_type"),
            format!("the body must be JSON with Content-Type: application/json (got {:?})", ct),
        ))
    }
}

async fn chat(State(s): State<Arc<AppState>>, headers: HeaderMap, body: Body) -> Response {
    if let Err(e) = s.authorize(&headers).and_then(|()| require_json(&headers)) {
        return error(e);
    }
    let bytes = match read_body(body).await {
        Ok(b) => b,
        Err(e) => return error(e),
    };
    let solve = match api::parse(&bytes).and_then(|r| r.to_solve(&s.defaults)) {
        Ok(x) => x,
        Err(e) => return error(e),
    };
    let stream = solve.stream;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let cancel = CancelHandle::new();
    let guard = CancelOnDrop(cancel.clone());
    if let Err(e) = s.worker.submit(Request { solve, events: tx, cancel }, s.max_queue) {
        return error(e);
    }
    let id = format!("chatcmpl-{}-{}", s.created, s.next_id.fetch_add(1, Ordering::SeqCst));
    // The first message tells whether the request started: a request the
    // engine refuses (e.g. too long for a slot) is an HTTP error, streaming
    // or not.
    let first = match rx.recv().await {
        Some(Msg::Done(Err(e))) => return error(ApiError::from_engine(&e)),
        Some(m) => m,
        None => return error(ApiError::new(500, "server_error", Some("engine_stopped"), "the engine stopped")),
    };
    let split = s.format != ThinkFormat::Plain;
    if stream {
        return sse(s, id, first, rx, guard, split);
    }
    let mut next = Some(first);
    loop {
        match next.take() {
            Some(Msg::Done(Ok(mut r))) => {
                // The answer holds no delimiter text (the runtime never shows it).
                if !split {
                    r.answer = format!("{}{}", r.thinking, r.answer);
                }
                let mut body = api::completion(&id, now_s(), &s.model_id, &r);
                if !split {
                    body["choices"][0]["message"]["reasoning_content"] = serde_json::Value::Null;
                }
                drop(guard);
                return Json(body).into_response();
            }
            Some(Msg::Done(Err(e))) => return error(ApiError::from_engine(&e)),
            Some(Msg::Event(_)) => {}
            None => return error(ApiError::new(500, "server_error", Some("engine_stopped"), "the engine stopped")),
        }
        next = rx.recv().await;
    }
}

/// The delta an event adds: thinking as `reasoning_content`, the answer as
/// `content` (a plain-format model has no thinking: all of it is content).
/// (The end-of-thinking delimiter a forced end feeds is never event text.)
fn delta(event: &Event, split: bool) -> Option<serde_json::Value> {
    let (segment, text) = match event {
        Event::Thinking { text, .. } => (Segment::Thinking, text.as_str()),
        Event::Answer { text, .. } => (Segment::Answer, text.as_str()),
        Event::Injected { segment, text, .. } => (*segment, text.as_str()),
        Event::Done { .. } => return None,
    };
    if text.is_empty() {
        return None;
    }
    Some(match segment {
        Segment::Thinking if split => serde_json::json!({ "reasoning_content": text }),
        _ => serde_json::json!({ "content": text }),
    })
}

struct Stream {
    state: Arc<AppState>,
    id: String,
    created: u64,
    pending: std::collections::VecDeque<SseEvent>,
    rx: Option<UnboundedReceiver<Msg>>,
    _guard: CancelOnDrop,
    split: bool,
}

impl Stream {
    fn data(&self, v: serde_json::Value) -> SseEvent {
        SseEvent::default().data(v.to_string())
    }

    /// Turn one engine message into SSE events; `false` at the end.
    fn push(&mut self, m: Msg) -> bool {
        match m {
            Msg::Event(e) => {
                if let Some(d) = delta(&e, self.split) {
                    let c = api::chunk(&self.id, self.created, &self.state.model_id, d, None);
                    let ev = self.data(c);
                    self.pending.push_back(ev);
                }
                true
            }
            Msg::Done(Ok(r)) => {
                let c = api::chunk(&self.id, self.created, &self.state.model_id, serde_json::json!({}), Some(&r));
                let ev = self.data(c);
                self.pending.push_back(ev);
                self.pending.push_back(SseEvent::default().data("[DONE]"));
                false
            }
            Msg::Done(Err(e)) => {
                let ev = self.data(ApiError::from_engine(&e).body());
                self.pending.push_back(ev);
                false
            }
        }
    }
}

fn sse(state: Arc<AppState>, id: String, first: Msg, rx: UnboundedReceiver<Msg>, guard: CancelOnDrop, split: bool) -> Response {
    let created = now_s();
    let mut s = Stream { state, id, created, pending: Default::default(), rx: Some(rx), _guard: guard, split };
    let role = api::chunk(&s.id, created, &s.state.model_id, serde_json::json!({ "role": "assistant", "content": "" }), None);
    let ev = s.data(role);
    s.pending.push_back(ev);
    if !s.push(first) {
        s.rx = None;
    }
    let events = futures_util::stream::unfold(s, |mut s| async move {
        loop {
            if let Some(ev) = s.pending.pop_front() {
                return Some((Ok::<_, std::convert::Infallible>(ev), s));
            }
            let rx = s.rx.as_mut()?;
            match rx.recv().await {
                Some(m) => {
                    if !s.push(m) {
                        s.rx = None;
                    }
                }
                None => {
                    let e = ApiError::new(500, "server_error", Some("engine_stopped"), "the engine stopped");
                    let ev = s.data(e.body());
                    s.pending.push_back(ev);
                    s.rx = None;
                }
            }
        }
    });
    Sse::new(events).keep_alive(KeepAlive::default()).into_response()
}
