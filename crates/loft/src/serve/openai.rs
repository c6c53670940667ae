//! OpenAI's JSON shapes, as its API reference defines them: the request bodies of `/v1/chat/completions` and
//! `/v1/completions` (plain serde mirrors, then one validation into [`Request`]), the responses and stream chunks,
//! `/v1/models`, and the error object.
//!
//! Unknown fields are ignored, so clients that send more (`user`, `metadata`, `store`, …) work. Known fields that
//! loft cannot honour are refused with a 400 naming them: `n` > 1, `logprobs`, `tools`/`functions`, and a
//! `response_format` other than text. `presence_penalty`/`frequency_penalty` are OpenAI's (additive, over the
//! answer's tokens); `repetition_penalty`, accepted as an extension, is transformers' multiplicative one.

use serde::Deserialize;
use serde_json::{json, Value};

use crate::chat_template::Message;
use crate::infer::SamplingParams;

/// An error as OpenAI returns one: the HTTP status and `{"error": {"message", "type", "param", "code"}}`.
#[derive(Clone, Debug, PartialEq)]
pub struct ApiError {
    pub status: u16,
    pub message: String,
    /// OpenAI's `type`: `invalid_request_error`, `authentication_error`, `server_error`.
    pub kind: &'static str,
    pub param: Option<String>,
    pub code: Option<&'static str>,
}

impl ApiError {
    /// 400: the request is malformed or asks for something out of range.
    pub fn invalid(message: impl Into<String>, param: Option<&str>) -> Self {
        ApiError {
            status: 400,
            message: message.into(),
            kind: "invalid_request_error",
            param: param.map(str::to_string),
            code: None,
        }
    }

    /// 400 for a field loft does not implement.
    pub fn unsupported(param: &str, what: &str) -> Self {
        let mut e = ApiError::invalid(format!("'{param}': {what} is not supported by loft serve"), Some(param));
        e.code = Some("unsupported_parameter");
        e
    }

    /// 404: `model` names neither the base nor a loaded adapter.
    pub fn unknown_model(name: &str, served: &[String]) -> Self {
        ApiError {
            status: 404,
            message: format!("The model '{name}' does not exist; this server has: {}", served.join(", ")),
            kind: "invalid_request_error",
            param: Some("model".into()),
            code: Some("model_not_found"),
        }
    }

    /// 401: the API key is missing or wrong.
    pub fn unauthorized() -> Self {
        ApiError {
            status: 401,
            message: "Incorrect or missing API key: send it as 'Authorization: Bearer KEY' (loft serve --api-key)"
                .into(),
            kind: "invalid_request_error",
            param: None,
            code: Some("invalid_api_key"),
        }
    }

    /// 413: the body is larger than the server accepts.
    pub fn too_large(limit: usize) -> Self {
        ApiError {
            status: 413,
            message: format!("The request body is larger than {limit} bytes (loft serve --max-body)"),
            kind: "invalid_request_error",
            param: None,
            code: Some("request_too_large"),
        }
    }

    /// 404 for a path the server does not have.
    pub fn no_route(method: &str, path: &str) -> Self {
        ApiError {
            status: 404,
            message: format!("Unknown request URL: {method} {path}"),
            kind: "invalid_request_error",
            param: None,
            code: Some("unknown_url"),
        }
    }

    /// 503: the batch and the queue are full, or a request waited in the queue too long.
    pub fn busy(message: impl Into<String>) -> Self {
        ApiError { status: 503, message: message.into(), kind: "server_error", param: None, code: Some("server_busy") }
    }

    /// 500: generation failed.
    pub fn internal(message: impl Into<String>) -> Self {
        ApiError { status: 500, message: message.into(), kind: "server_error", param: None, code: None }
    }

    pub fn to_json(&self) -> Value {
        json!({"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}})
    }
}

/// `/v1/chat/completions`' body.
#[derive(Deserialize)]
pub struct ChatCompletionBody {
    model: Option<String>,
    messages: Option<Vec<ChatMessage>>,
    #[serde(flatten)]
    common: CommonBody,
}

/// `/v1/completions`' body.
#[derive(Deserialize)]
pub struct CompletionBody {
    model: Option<String>,
    prompt: Option<Value>,
    #[serde(flatten)]
    common: CommonBody,
}

#[derive(Deserialize)]
struct ChatMessage {
    role: String,
    content: Option<Content>,
}

/// A message's content: a string, or an array of parts of which loft reads the text ones.
#[derive(Deserialize)]
#[serde(untagged)]
enum Content {
    Text(String),
    Parts(Vec<ContentPart>),
}

#[derive(Deserialize)]
struct ContentPart {
    #[serde(rename = "type")]
    kind: String,
    text: Option<String>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Stop {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize)]
struct StreamOptions {
    include_usage: Option<bool>,
}

/// The sampling and output fields both endpoints share.
#[derive(Deserialize)]
struct CommonBody {
    max_tokens: Option<u64>,
    max_completion_tokens: Option<u64>,
    temperature: Option<f64>,
    top_p: Option<f64>,
    seed: Option<i64>,
    stop: Option<Stop>,
    stream: Option<bool>,
    stream_options: Option<StreamOptions>,
    n: Option<u64>,
    presence_penalty: Option<f64>,
    frequency_penalty: Option<f64>,
    logprobs: Option<Value>,
    tools: Option<Value>,
    functions: Option<Value>,
    response_format: Option<Value>,
    /// Extensions that llama.cpp's server and vLLM accept too.
    top_k: Option<u64>,
    repetition_penalty: Option<f64>,
}

/// What is asked for, checked.
#[derive(Clone, Debug, PartialEq)]
pub enum Prompt {
    /// Messages for the model's chat template.
    Chat(Vec<Message>),
    /// Text fed as it is (BOS added when the model asks for it), as `loft generate --raw`.
    Text(String),
}

/// A validated request of either endpoint.
#[derive(Clone, Debug)]
pub struct Request {
    pub model: String,
    pub prompt: Prompt,
    /// `max_completion_tokens`, else `max_tokens`; None: the server's limit.
    pub max_tokens: Option<usize>,
    /// Without `seed`, the caller draws one (OpenAI's answers are not reproducible without it).
    pub sampling: SamplingParams,
    pub seed: Option<u64>,
    pub stop: Vec<String>,
    pub stream: bool,
    /// `stream_options.include_usage`: a last chunk with `usage` before `[DONE]`.
    pub include_usage: bool,
}

fn parse_json<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| {
        ApiError::invalid(
            format!("We could not parse the JSON body of your request: {e}. The body must be a JSON object."),
            None,
        )
    })
}

/// Parses and checks a `/v1/chat/completions` body.
pub fn chat_request(body: &[u8]) -> Result<Request, ApiError> {
    let raw: ChatCompletionBody = parse_json(body)?;
    let Some(raw_messages) = raw.messages else {
        return Err(ApiError::invalid("Missing required parameter: 'messages'.", Some("messages")));
    };
    if raw_messages.is_empty() {
        return Err(ApiError::invalid("'messages' must hold at least one message.", Some("messages")));
    }
    let mut messages = Vec::with_capacity(raw_messages.len());
    for (i, m) in raw_messages.into_iter().enumerate() {
        let role = match m.role.as_str() {
            "system" | "user" | "assistant" => m.role,
            // OpenAI's newer name for the system message.
            "developer" => "system".into(),
            other => {
                return Err(ApiError::invalid(
                    format!("messages[{i}].role '{other}' is not supported (system, developer, user, assistant)"),
                    Some(&format!("messages[{i}].role")),
                ))
            }
        };
        let content = match m.content {
            None => String::new(),
            Some(Content::Text(t)) => t,
            Some(Content::Parts(parts)) => {
                let mut text = String::new();
                for (j, p) in parts.into_iter().enumerate() {
                    match (p.kind.as_str(), p.text) {
                        ("text", Some(t)) => text.push_str(&t),
                        (kind, _) => {
                            return Err(ApiError::invalid(
                                format!("messages[{i}].content[{j}] is a '{kind}' part; loft reads text parts only"),
                                Some(&format!("messages[{i}].content[{j}]")),
                            ))
                        }
                    }
                }
                text
            }
        };
        messages.push(Message { role, content });
    }
    common_request(raw.model, Prompt::Chat(messages), raw.common)
}

/// Parses and checks a `/v1/completions` body: `prompt` is one string (or an array holding one).
pub fn completion_request(body: &[u8]) -> Result<Request, ApiError> {
    let raw: CompletionBody = parse_json(body)?;
    let text = match raw.prompt {
        Some(Value::String(s)) => s,
        Some(Value::Array(a)) if a.len() == 1 && a[0].is_string() => a[0].as_str().unwrap_or_default().to_string(),
        None => return Err(ApiError::invalid("Missing required parameter: 'prompt'.", Some("prompt"))),
        Some(_) => {
            return Err(ApiError::unsupported(
                "prompt",
                "a prompt other than one string (arrays of several, token ids)",
            ))
        }
    };
    common_request(raw.model, Prompt::Text(text), raw.common)
}

fn common_request(model: Option<String>, prompt: Prompt, c: CommonBody) -> Result<Request, ApiError> {
    let Some(model) = model else {
        return Err(ApiError::invalid("Missing required parameter: 'model'.", Some("model")));
    };
    if c.n.is_some_and(|n| n != 1) {
        return Err(ApiError::unsupported("n", "more than one choice"));
    }
    if c.logprobs.as_ref().is_some_and(|v| !matches!(v, Value::Null | Value::Bool(false))) {
        return Err(ApiError::unsupported("logprobs", "log probabilities"));
    }
    for (param, v) in [("tools", &c.tools), ("functions", &c.functions)] {
        if v.as_ref().is_some_and(|v| !v.is_null() && v.as_array().is_none_or(|a| !a.is_empty())) {
            return Err(ApiError::unsupported(param, "tool and function calling"));
        }
    }
    if let Some(f) = &c.response_format {
        if !f.is_null() && f.get("type").and_then(Value::as_str) != Some("text") {
            return Err(ApiError::unsupported("response_format", "a response format other than text"));
        }
    }
    for (param, v) in [("presence_penalty", c.presence_penalty), ("frequency_penalty", c.frequency_penalty)] {
        if v.is_some_and(|v| !(-2.0..=2.0).contains(&v)) {
            return Err(ApiError::invalid(
                format!("Invalid '{param}': {}; expected a value between -2 and 2.", v.unwrap_or_default()),
                Some(param),
            ));
        }
    }
    let temperature = c.temperature.unwrap_or(1.0);
    if !(0.0..=2.0).contains(&temperature) {
        return Err(ApiError::invalid(
            format!("Invalid 'temperature': {temperature}; expected a value between 0 and 2."),
            Some("temperature"),
        ));
    }
    let top_p = c.top_p.unwrap_or(1.0);
    if !(0.0..=1.0).contains(&top_p) {
        return Err(ApiError::invalid(
            format!("Invalid 'top_p': {top_p}; expected a value between 0 and 1."),
            Some("top_p"),
        ));
    }
    let repetition_penalty = c.repetition_penalty.unwrap_or(1.0);
    if !repetition_penalty.is_finite() || repetition_penalty <= 0.0 {
        return Err(ApiError::invalid(
            format!("Invalid 'repetition_penalty': {repetition_penalty}; 1 is none, 1.1 a usual value."),
            Some("repetition_penalty"),
        ));
    }
    let (param, max_tokens) = match (c.max_completion_tokens, c.max_tokens) {
        (Some(m), _) => ("max_completion_tokens", Some(m)),
        (None, m) => ("max_tokens", m),
    };
    if max_tokens == Some(0) {
        return Err(ApiError::invalid(format!("Invalid '{param}': it must be at least 1."), Some(param)));
    }
    let stop = match c.stop {
        None => Vec::new(),
        Some(Stop::One(s)) => vec![s],
        Some(Stop::Many(v)) => v,
    };
    if stop.len() > 4 || stop.iter().any(String::is_empty) {
        return Err(ApiError::invalid("'stop' holds up to 4 non-empty strings.", Some("stop")));
    }
    // top_p = 0 keeps only the most likely token: greedy.
    let greedy = temperature == 0.0 || top_p == 0.0;
    let sampling = SamplingParams {
        temperature: if greedy { 0.0 } else { temperature as f32 },
        top_k: c.top_k.map_or(0, |k| k.min(usize::MAX as u64) as usize),
        top_p: if greedy { 1.0 } else { top_p as f32 },
        seed: 0,
        repetition_penalty: repetition_penalty as f32,
        frequency_penalty: c.frequency_penalty.unwrap_or(0.0) as f32,
        presence_penalty: c.presence_penalty.unwrap_or(0.0) as f32,
    };
    Ok(Request {
        model,
        prompt,
        max_tokens: max_tokens.map(|m| m.min(usize::MAX as u64) as usize),
        sampling,
        seed: c.seed.map(|s| s as u64),
        stop,
        stream: c.stream.unwrap_or(false),
        include_usage: c.stream_options.and_then(|o| o.include_usage).unwrap_or(false),
    })
}

/// Why generation ended, in OpenAI's words.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FinishReason {
    /// An end-of-sequence or end-of-turn token, or a `stop` string.
    Stop,
    /// `max_tokens`, or the end of the context.
    Length,
}

impl FinishReason {
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
        }
    }
}

/// Token counts of one request.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
}

impl Usage {
    pub fn to_json(self) -> Value {
        json!({
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
        })
    }
}

/// Which endpoint a response belongs to, with what every object of one response repeats.
#[derive(Clone, Debug)]
pub struct ResponseHead {
    pub chat: bool,
    pub id: String,
    pub created: u64,
    pub model: String,
}

impl ResponseHead {
    /// The whole answer (`stream: false`).
    pub fn completion(&self, text: &str, finish: FinishReason, usage: Usage) -> Value {
        let choice = if self.chat {
            json!({
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "logprobs": null,
                "finish_reason": finish.as_str(),
            })
        } else {
            json!({"index": 0, "text": text, "logprobs": null, "finish_reason": finish.as_str()})
        };
        self.object(false, vec![choice], Some(usage))
    }

    /// A stream chunk carrying `text` (the chat stream's first chunk also carries the role).
    pub fn chunk(&self, text: &str, first: bool) -> Value {
        let choice = if self.chat {
            let delta = if first { json!({"role": "assistant", "content": text}) } else { json!({"content": text}) };
            json!({"index": 0, "delta": delta, "logprobs": null, "finish_reason": null})
        } else {
            json!({"index": 0, "text": text, "logprobs": null, "finish_reason": null})
        };
        self.object(true, vec![choice], None)
    }

    /// The stream's chunk that says why it ended.
    pub fn finish_chunk(&self, finish: FinishReason) -> Value {
        let choice = if self.chat {
            json!({"index": 0, "delta": {}, "logprobs": null, "finish_reason": finish.as_str()})
        } else {
            json!({"index": 0, "text": "", "logprobs": null, "finish_reason": finish.as_str()})
        };
        self.object(true, vec![choice], None)
    }

    /// The stream's last chunk when `stream_options.include_usage`: no choices, the usage.
    pub fn usage_chunk(&self, usage: Usage) -> Value {
        self.object(true, vec![], Some(usage))
    }

    fn object(&self, chunk: bool, choices: Vec<Value>, usage: Option<Usage>) -> Value {
        let object = match (self.chat, chunk) {
            (true, false) => "chat.completion",
            (true, true) => "chat.completion.chunk",
            (false, _) => "text_completion",
        };
        let mut v = json!({
            "id": self.id,
            "object": object,
            "created": self.created,
            "model": self.model,
            "system_fingerprint": null,
            "choices": choices,
        });
        if let Some(u) = usage {
            v["usage"] = u.to_json();
        } else if chunk && self.chat {
            v["usage"] = Value::Null;
        }
        v
    }
}

/// `/v1/models`: the names served, the base first.
pub fn models_list(names: &[String], created: u64) -> Value {
    let data: Vec<Value> =
        names.iter().map(|n| json!({"id": n, "object": "model", "created": created, "owned_by": "loft"})).collect();
    json!({"object": "list", "data": data})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chat_request_reads_openais_fields() {
        let body = br#"{"model": "base", "messages": [{"role": "developer", "content": "Be brief."},
            {"role": "user", "content": [{"type": "text", "text": "Hi"}, {"type": "text", "text": "!"}]}],
            "max_completion_tokens": 5, "max_tokens": 9, "temperature": 0, "seed": 3, "stop": "\n",
            "stream": true, "stream_options": {"include_usage": true}, "user": "ignored", "n": 1, "tools": []}"#;
        let r = chat_request(body).unwrap();
        assert_eq!(r.model, "base");
        assert_eq!(r.prompt, Prompt::Chat(vec![Message::new("system", "Be brief."), Message::new("user", "Hi!")]));
        assert_eq!((r.max_tokens, r.seed, r.stop.clone()), (Some(5), Some(3), vec!["\n".to_string()]));
        assert_eq!(r.sampling.temperature, 0.0);
        assert!(r.stream && r.include_usage);
    }

    #[test]
    fn defaults_are_openais() {
        let r = completion_request(br#"{"model": "m", "prompt": ["Once"]}"#).unwrap();
        assert_eq!(r.prompt, Prompt::Text("Once".into()));
        assert_eq!((r.sampling.temperature, r.sampling.top_p), (1.0, 1.0));
        assert_eq!((r.max_tokens, r.seed, r.stream), (None, None, false));
        let greedy = completion_request(br#"{"model": "m", "prompt": "x", "top_p": 0, "temperature": 0.7}"#).unwrap();
        assert_eq!(greedy.sampling.temperature, 0.0);
    }

    #[test]
    fn bad_requests_name_the_parameter() {
        let param = |body: &[u8], chat: bool| {
            let e = if chat { chat_request(body) } else { completion_request(body) }.err().unwrap();
            assert_eq!(e.status, 400, "{e:?}");
            e.param
        };
        assert_eq!(param(b"{not json", true), None);
        assert_eq!(param(br#"{"messages": [{"role": "user", "content": "x"}]}"#, true).as_deref(), Some("model"));
        assert_eq!(param(br#"{"model": "m"}"#, true).as_deref(), Some("messages"));
        assert_eq!(param(br#"{"model": "m", "messages": []}"#, true).as_deref(), Some("messages"));
        let tool = br#"{"model": "m", "messages": [{"role": "tool", "content": "x"}]}"#;
        assert_eq!(param(tool, true).as_deref(), Some("messages[0].role"));
        let image = br#"{"model": "m", "messages": [{"role": "user", "content": [{"type": "image_url"}]}]}"#;
        assert_eq!(param(image, true).as_deref(), Some("messages[0].content[0]"));
        for (field, value) in [
            ("temperature", "2.5"),
            ("top_p", "-1"),
            ("max_tokens", "0"),
            ("n", "2"),
            ("logprobs", "true"),
            ("presence_penalty", "2.5"),
            ("frequency_penalty", "-3"),
            ("tools", r#"[{"type": "function"}]"#),
            ("response_format", r#"{"type": "json_object"}"#),
            ("stop", r#"["a", "b", "c", "d", "e"]"#),
            ("repetition_penalty", "0"),
        ] {
            let body = format!(r#"{{"model": "m", "prompt": "x", "{field}": {value}}}"#);
            assert_eq!(param(body.as_bytes(), false).as_deref(), Some(field), "{body}");
        }
        assert_eq!(param(br#"{"model": "m", "prompt": [1, 2]}"#, false).as_deref(), Some("prompt"));
        let wrong_type = param(br#"{"model": "m", "prompt": "x", "temperature": "hot"}"#, false);
        assert_eq!(wrong_type, None);
    }

    #[test]
    fn responses_have_openais_shape() {
        let head = ResponseHead { chat: true, id: "chatcmpl-1".into(), created: 7, model: "m".into() };
        let usage = Usage { prompt_tokens: 3, completion_tokens: 2 };
        let v = head.completion("Hi", FinishReason::Stop, usage);
        assert_eq!(v["object"], "chat.completion");
        assert_eq!(v["choices"][0]["message"]["content"], "Hi");
        assert_eq!(v["choices"][0]["finish_reason"], "stop");
        assert_eq!(v["usage"]["total_tokens"], 5);
        assert_eq!(head.chunk("H", true)["choices"][0]["delta"]["role"], "assistant");
        assert_eq!(head.finish_chunk(FinishReason::Length)["choices"][0]["finish_reason"], "length");
        assert_eq!(head.usage_chunk(usage)["choices"], json!([]));
        let text = ResponseHead { chat: false, ..head };
        assert_eq!(text.completion("Hi", FinishReason::Length, usage)["choices"][0]["text"], "Hi");
        assert_eq!(text.chunk("H", true)["object"], "text_completion");
        let e = ApiError::unknown_model("x", &["base".into()]).to_json();
        assert_eq!(e["error"]["code"], "model_not_found");
        assert_eq!(e["error"]["type"], "invalid_request_error");
    }
}
