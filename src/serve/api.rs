//! The OpenAI chat-completions wire format, and how one request becomes a
//! budget-forced solve. Pure: no HTTP and no engine, so every mapping and
//! every refusal is unit-tested here.
//!
//! Budget fields ride in the request body beside OpenAI's own (clients send
//! them with `extra_body`), named as llama-server and llama.rn name them
//! where a name exists:
//!
//! | field | meaning |
//! |---|---|
//! | `thinking_budget_tokens` | thinking cap; then the answer is forced |
//! | `min_thinking_tokens` | thinking floor; an earlier end becomes "Wait" |
//! | `max_thinking_ms` | wall-clock thinking budget |
//! | `thinking_extensions` | most "Wait" extensions |
//! | `reasoning_effort` | OpenAI's `low` / `medium` / `high`: caps of [`EFFORT_CAPS`] |
//! | `max_tokens` (`max_completion_tokens`) | the answer cap |
//!
//! Unknown fields are ignored, as OpenAI does; a known field with a bad
//! value is a 400 that names it.

use serde::{Deserialize, Serialize};

use reckon::budget::{ThinkEnd, MAX_BUDGET_TOKENS};
use reckon::engine::SolveOptions;
use reckon::error::ReckonError;
use reckon::events::{FinishReason, SolveResult};

/// Thinking caps for `reasoning_effort` low, medium and high.
pub const EFFORT_CAPS: [(&str, u32); 3] = [("low", 256), ("medium", 1024), ("high", 2048)];

/// Messages per request, at most.
pub const MAX_MESSAGES: usize = 64;

/// Bytes of message text per request, at most (the context refuses long
/// prompts anyway; this bounds the work before tokenizing).
pub const MAX_TEXT_BYTES: usize = 64 * 1024;

/// A refusal in OpenAI's error shape, with its HTTP status.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    /// HTTP status.
    pub status: u16,
    /// `error.type`.
    pub kind: &'static str,
    /// `error.code`.
    pub code: Option<&'static str>,
    /// `error.param`: the request field at fault.
    pub param: Option<String>,
    /// `error.message`.
    pub message: String,
}

impl ApiError {
    /// A 400 about one field.
    pub fn bad(param: impl Into<String>, message: impl Into<String>) -> Self {
        ApiError { status: 400, kind: "invalid_request_error", code: None, param: Some(param.into()), message: message.into() }
    }

    /// A 400 about the request as a whole.
    pub fn invalid(message: impl Into<String>) -> Self {
        ApiError { status: 400, kind: "invalid_request_error", code: None, param: None, message: message.into() }
    }

    /// Any status, no field.
    pub fn new(status: u16, kind: &'static str, code: Option<&'static str>, message: impl Into<String>) -> Self {
        ApiError { status, kind, code, param: None, message: message.into() }
    }

    /// The JSON body: `{"error": {"message", "type", "param", "code"}}`.
    pub fn body(&self) -> serde_json::Value {
        serde_json::json!({
            "error": { "message": self.message, "type": self.kind, "param": self.param, "code": self.code }
        })
    }

    /// How a runtime error reaches the client: what the request got wrong
    /// is a 400, the rest is the server's fault.
    pub fn from_engine(e: &ReckonError) -> Self {
        match e {
            ReckonError::PromptTooLong { .. } => ApiError {
                status: 400,
                kind: "invalid_request_error",
                code: Some("context_length_exceeded"),
                param: Some("messages".into()),
                message: e.to_string(),
            },
            ReckonError::EmptyQuestion => ApiError::bad("messages", "the question is empty"),
            ReckonError::InvalidBudget(_) | ReckonError::InvalidOption(_) => ApiError::invalid(e.to_string()),
            _ => ApiError::new(500, "server_error", None, e.to_string()),
        }
    }
}

/// `POST /v1/chat/completions`, the fields reckon reads (`model` is not
/// one: the server runs the model it was started with).
#[derive(Debug, Default, Deserialize)]
pub struct ChatRequest {
    /// The conversation: an optional system message, then one user message.
    pub messages: Vec<Message>,
    /// Server-sent events instead of one JSON object.
    #[serde(default)]
    pub stream: Option<bool>,
    /// Sampling temperature, 0..=2 (default 0: greedy).
    #[serde(default)]
    pub temperature: Option<f32>,
    /// Nucleus sampling, 0..=1.
    #[serde(default)]
    pub top_p: Option<f32>,
    /// Sampling seed.
    #[serde(default)]
    pub seed: Option<i64>,
    /// The answer cap, in tokens.
    #[serde(default)]
    pub max_tokens: Option<u32>,
    /// OpenAI's newer name for `max_tokens`.
    #[serde(default)]
    pub max_completion_tokens: Option<u32>,
    /// Completions per request: only 1.
    #[serde(default)]
    pub n: Option<u32>,
    /// `low`, `medium` or `high`: a thinking cap from [`EFFORT_CAPS`].
    #[serde(default)]
    pub reasoning_effort: Option<String>,
    /// Thinking cap in tokens (wins over `reasoning_effort`).
    #[serde(default)]
    pub thinking_budget_tokens: Option<u32>,
    /// Thinking floor in tokens.
    #[serde(default)]
    pub min_thinking_tokens: Option<u32>,
    /// Wall-clock thinking budget in milliseconds.
    #[serde(default)]
    pub max_thinking_ms: Option<u64>,
    /// Most "Wait" extensions.
    #[serde(default)]
    pub thinking_extensions: Option<u32>,
}

/// One chat message.
#[derive(Debug, Deserialize)]
pub struct Message {
    /// `system`, `developer`, `user` or `assistant`.
    pub role: String,
    /// Text, or a list of parts of which the `text` ones are read.
    #[serde(default)]
    pub content: Option<Content>,
}

/// A message's content.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Content {
    /// Plain text.
    Text(String),
    /// `[{"type": "text", "text": "..."}]`.
    Parts(Vec<Part>),
}

/// One content part.
#[derive(Debug, Deserialize)]
pub struct Part {
    /// `text` (others are refused).
    #[serde(rename = "type")]
    pub kind: String,
    /// The text of a `text` part.
    #[serde(default)]
    pub text: Option<String>,
}

/// What the server does when a request is silent: the runtime's defaults
/// (greedy, thinking cap 1024, answer cap 256, the default system prompt).
#[derive(Debug, Clone, Default)]
pub struct Defaults {
    /// Budgets and sampling.
    pub options: SolveOptions,
}

/// A request, read and checked.
#[derive(Debug, Clone, PartialEq)]
pub struct Solve {
    /// The user's question (plain text: special tokens stay text).
    pub question: String,
    /// Budgets, sampling and system prompt.
    pub options: SolveOptions,
    /// Stream server-sent events.
    pub stream: bool,
}

/// Parse a request body; a type error names the field.
pub fn parse(body: &[u8]) -> Result<ChatRequest, ApiError> {
    let de = &mut serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if path == "." || path == "?" || path.is_empty() {
            ApiError::invalid(format!("the body is not a chat completion request: {inner}"))
        } else {
            ApiError::bad(path.clone(), format!("{path}: {inner}"))
        }
    })
}

impl ChatRequest {
    /// The solve this request asks for, or the field at fault.
    pub fn to_solve(&self, defaults: &Defaults) -> Result<Solve, ApiError> {
        let (system, question) = self.conversation()?;
        let mut options = defaults.options.clone();
        if let Some(s) = system {
            options.system_prompt = Some(s);
        }
        if self.n.is_some_and(|n| n != 1) {
            return Err(ApiError::bad("n", "n must be 1 (one completion per request)"));
        }
        let budget = &mut options.budget;
        if let Some(effort) = &self.reasoning_effort {
            let cap = EFFORT_CAPS.iter().find(|(name, _)| name == effort).map(|(_, cap)| *cap);
            budget.max_thinking_tokens = cap.ok_or_else(|| {
                ApiError::bad("reasoning_effort", format!("reasoning_effort must be low, medium or high, not {effort:?}"))
            })?;
        }
        if let Some(cap) = self.thinking_budget_tokens {
            budget.max_thinking_tokens = cap;
        }
        if let Some(floor) = self.min_thinking_tokens {
            budget.min_thinking_tokens = floor;
        }
        if let Some(ms) = self.max_thinking_ms {
            if ms == 0 {
                return Err(ApiError::bad("max_thinking_ms", "max_thinking_ms must be at least 1"));
            }
            budget.max_thinking_ms = Some(ms);
        }
        if self.thinking_extensions.is_some() {
            budget.max_extensions = self.thinking_extensions;
        }
        if let Some(answer) = self.max_completion_tokens.or(self.max_tokens) {
            let name = if self.max_completion_tokens.is_some() { "max_completion_tokens" } else { "max_tokens" };
            if answer == 0 {
                return Err(ApiError::bad(name, format!("{name} must be at least 1")));
            }
            budget.max_answer_tokens = answer;
        }
        for (name, value) in [
            ("thinking_budget_tokens", budget.max_thinking_tokens),
            ("min_thinking_tokens", budget.min_thinking_tokens),
            ("max_tokens", budget.max_answer_tokens),
        ] {
            if value > MAX_BUDGET_TOKENS {
                return Err(ApiError::bad(name, format!("{name} {value} is too large (at most {MAX_BUDGET_TOKENS})")));
            }
        }
        if budget.min_thinking_tokens > budget.max_thinking_tokens {
            return Err(ApiError::bad(
                "min_thinking_tokens",
                format!(
                    "min_thinking_tokens {} is above the thinking cap {} (thinking_budget_tokens)",
                    budget.min_thinking_tokens, budget.max_thinking_tokens
                ),
            ));
        }
        budget.validate().map_err(|e| ApiError::invalid(e.to_string()))?;
        let sampling = &mut options.sampling;
        if let Some(t) = self.temperature {
            if !(0.0..=2.0).contains(&t) {
                return Err(ApiError::bad("temperature", format!("temperature {t} must be in [0, 2]")));
            }
            sampling.temperature = t;
        }
        if let Some(p) = self.top_p {
            if !(0.0..=1.0).contains(&p) || p == 0.0 {
                return Err(ApiError::bad("top_p", format!("top_p {p} must be in (0, 1]")));
            }
            sampling.top_p = p;
        }
        if let Some(seed) = self.seed {
            sampling.seed = u32::try_from(seed)
                .map_err(|_| ApiError::bad("seed", format!("seed {seed} must be in 0..={}", u32::MAX)))?;
        }
        sampling.validate().map_err(|e| ApiError::invalid(e.to_string()))?;
        Ok(Solve { question, options, stream: self.stream.unwrap_or(false) })
    }

    /// The system prompt (if any) and the question: reckon answers one
    /// question per request, so the conversation is system messages, then
    /// exactly one user message.
    fn conversation(&self) -> Result<(Option<String>, String), ApiError> {
        if self.messages.is_empty() {
            return Err(ApiError::bad("messages", "messages is empty: send one user message with the question"));
        }
        if self.messages.len() > MAX_MESSAGES {
            return Err(ApiError::bad("messages", format!("{} messages is more than {MAX_MESSAGES}", self.messages.len())));
        }
        let mut system: Vec<String> = Vec::new();
        let mut question = None;
        let mut bytes = 0;
        for (i, m) in self.messages.iter().enumerate() {
            let text = m.text(i)?;
            bytes += text.len();
            if bytes > MAX_TEXT_BYTES {
                return Err(ApiError::new(413, "invalid_request_error", Some("request_too_large"), format!("the messages hold more than {MAX_TEXT_BYTES} bytes of text")));
            }
            match m.role.as_str() {
                "system" | "developer" if question.is_none() => system.push(text),
                "user" if question.is_none() => question = Some(text),
                "system" | "developer" | "user" | "assistant" => {
                    return Err(ApiError::bad(
                        format!("messages[{i}]"),
                        "reckon answers one question per request: send system messages (optional), then one user message, and no earlier turns",
                    ))
                }
                other => return Err(ApiError::bad(format!("messages[{i}].role"), format!("unknown role {other:?}"))),
            }
        }
        let question = question.ok_or_else(|| ApiError::bad("messages", "no user message: the last message must be the question"))?;
        if question.trim().is_empty() {
            return Err(ApiError::bad("messages", "the question is empty"));
        }
        Ok(((!system.is_empty()).then(|| system.join("\n\n")), question))
    }
}

impl Message {
    fn text(&self, i: usize) -> Result<String, ApiError> {
        match &self.content {
            None => Ok(String::new()),
            Some(Content::Text(t)) => Ok(t.clone()),
            Some(Content::Parts(parts)) => {
                let mut out = String::new();
                for (k, p) in parts.iter().enumerate() {
                    match (p.kind.as_str(), &p.text) {
                        ("text", Some(t)) => out.push_str(t),
                        ("text", None) => return Err(ApiError::bad(format!("messages[{i}].content[{k}].text"), "a text part needs its text")),
                        (other, _) => {
                            return Err(ApiError::bad(format!("messages[{i}].content[{k}].type"), format!("content parts of type {other:?} are not supported (text only)")))
                        }
                    }
                }
                Ok(out)
            }
        }
    }
}

/// OpenAI's `finish_reason` for how a solve ended.
pub fn finish_reason(finish: FinishReason) -> &'static str {
    match finish {
        FinishReason::AnswerCap => "length",
        FinishReason::EndOfTurn | FinishReason::Cancelled | FinishReason::Stopped => "stop",
    }
}

/// `usage`: OpenAI's counts, and what budget forcing did.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Usage {
    /// Prompt tokens.
    pub prompt_tokens: u32,
    /// Everything after the prompt: thinking (injected included), the
    /// delimiter and the answer.
    pub completion_tokens: u32,
    /// Prompt plus completion.
    pub total_tokens: u32,
    /// `reasoning_tokens`: the thinking, the number the cap bounds.
    pub completion_tokens_details: Details,
    /// Thinking tokens the runtime injected ("Wait").
    pub injected_tokens: u32,
    /// "Wait" extensions appended.
    pub extensions: u32,
    /// Whether the end of thinking was forced.
    pub forced_end: bool,
    /// How thinking ended: `natural`, `token_cap`, `time_budget` (null: it never did).
    pub think_end: Option<ThinkEnd>,
    /// The final answer found in the text, normalized.
    pub extracted_answer: Option<String>,
    /// Where it was found: `boxed`, `final_answer`, `last_number`.
    pub answer_source: Option<reckon::answer::AnswerSource>,
}

/// `completion_tokens_details`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Details {
    /// Thinking tokens.
    pub reasoning_tokens: u32,
}

impl Usage {
    /// The usage of a finished solve.
    pub fn of(r: &SolveResult) -> Self {
        let reasoning = r.total_thinking_tokens();
        let completion = reasoning + r.delimiter_tokens + r.answer_tokens;
        Usage {
            prompt_tokens: r.prompt_tokens,
            completion_tokens: completion,
            total_tokens: r.prompt_tokens + completion,
            completion_tokens_details: Details { reasoning_tokens: reasoning },
            injected_tokens: r.injected_tokens,
            extensions: r.extensions,
            forced_end: r.forced_end,
            think_end: r.think_end,
            extracted_answer: r.extracted_answer.clone(),
            answer_source: r.answer_source,
        }
    }
}

/// A `chat.completion` object.
pub fn completion(id: &str, created: u64, model: &str, r: &SolveResult) -> serde_json::Value {
    serde_json::json!({
        "id": id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [{
            "index": 0,
            "message": { "role": "assistant", "content": r.answer, "reasoning_content": r.thinking },
            "finish_reason": finish_reason(r.finish),
        }],
        "usage": Usage::of(r),
    })
}

/// A `chat.completion.chunk` carrying `delta` (and, on the last, the
/// finish reason and usage).
pub fn chunk(id: &str, created: u64, model: &str, delta: serde_json::Value, last: Option<&SolveResult>) -> serde_json::Value {
    let mut c = serde_json::json!({
        "id": id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [{ "index": 0, "delta": delta, "finish_reason": last.map(|r| finish_reason(r.finish)) }],
    });
    if let Some(r) = last {
        c["usage"] = serde_json::to_value(Usage::of(r)).unwrap_or_default();
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;
    use reckon::budget::BudgetConfig;
    use reckon::engine::SamplingConfig;

    fn solve(body: serde_json::Value) -> Result<Solve, ApiError> {
        parse(body.to_string().as_bytes())?.to_solve(&Defaults::default())
    }

    fn user(q: &str) -> serde_json::Value {
        serde_json::json!([{ "role": "user", "content": q }])
    }

    #[test]
    fn budget_fields_become_the_solve_budget() {
        let s = solve(serde_json::json!({
            "model": "anything", "messages": user("2+2?"), "stream": true,
            "thinking_budget_tokens": 300, "min_thinking_tokens": 20, "max_thinking_ms": 5000,
            "thinking_extensions": 2, "max_tokens": 40, "temperature": 0.7, "top_p": 0.9, "seed": 7,
            "some_field_from_a_newer_client": {"x": 1}
        }))
        .unwrap();
        assert_eq!(s.question, "2+2?");
        assert!(s.stream);
        let b = &s.options.budget;
        assert_eq!((b.max_thinking_tokens, b.min_thinking_tokens, b.max_thinking_ms, b.max_extensions, b.max_answer_tokens), (300, 20, Some(5000), Some(2), 40));
        assert_eq!((s.options.sampling.temperature, s.options.sampling.top_p, s.options.sampling.seed), (0.7, 0.9, 7));
        assert_eq!(s.options.system_prompt, SolveOptions::default().system_prompt);
    }

    #[test]
    fn silence_means_the_runtime_defaults_and_greedy() {
        let s = solve(serde_json::json!({ "messages": user("q") })).unwrap();
        assert_eq!(s.options, SolveOptions::default());
        assert_eq!(s.options.sampling, SamplingConfig::default());
        assert_eq!(s.options.budget, BudgetConfig::default());
        assert!(!s.stream);
        let nulls = solve(serde_json::json!({ "messages": user("q"), "stream": null, "temperature": null, "max_tokens": null })).unwrap();
        assert_eq!(nulls, s);
    }

    #[test]
    fn reasoning_effort_maps_to_documented_caps_and_an_explicit_cap_wins() {
        for (effort, cap) in EFFORT_CAPS {
            let s = solve(serde_json::json!({ "messages": user("q"), "reasoning_effort": effort })).unwrap();
            assert_eq!(s.options.budget.max_thinking_tokens, cap);
        }
        let s = solve(serde_json::json!({ "messages": user("q"), "reasoning_effort": "high", "thinking_budget_tokens": 64 })).unwrap();
        assert_eq!(s.options.budget.max_thinking_tokens, 64);
        let e = solve(serde_json::json!({ "messages": user("q"), "reasoning_effort": "max" })).unwrap_err();
        assert_eq!((e.status, e.param.as_deref()), (400, Some("reasoning_effort")));
    }

    #[test]
    fn a_bad_value_is_a_400_that_names_its_field() {
        let cases = [
            (serde_json::json!({ "messages": user("q"), "thinking_budget_tokens": -5 }), "thinking_budget_tokens"),
            (serde_json::json!({ "messages": user("q"), "thinking_budget_tokens": "lots" }), "thinking_budget_tokens"),
            (serde_json::json!({ "messages": user("q"), "min_thinking_tokens": 900, "thinking_budget_tokens": 100 }), "min_thinking_tokens"),
            (serde_json::json!({ "messages": user("q"), "thinking_budget_tokens": 2_000_000 }), "thinking_budget_tokens"),
            (serde_json::json!({ "messages": user("q"), "max_thinking_ms": 0 }), "max_thinking_ms"),
            (serde_json::json!({ "messages": user("q"), "max_tokens": 0 }), "max_tokens"),
            (serde_json::json!({ "messages": user("q"), "temperature": 3.0 }), "temperature"),
            (serde_json::json!({ "messages": user("q"), "top_p": 0.0 }), "top_p"),
            (serde_json::json!({ "messages": user("q"), "seed": -1 }), "seed"),
            (serde_json::json!({ "messages": user("q"), "n": 3 }), "n"),
            (serde_json::json!({ "messages": [{ "role": "user", "content": 5 }] }), "messages[0].content"),
            (serde_json::json!({ "messages": [{ "role": "robot", "content": "q" }] }), "messages[0].role"),
            (serde_json::json!({ "messages": [{ "role": "user", "content": [{ "type": "image_url" }] }] }), "messages[0].content[0].type"),
            (serde_json::json!({ "messages": [] }), "messages"),
            (serde_json::json!({ "messages": user("   ") }), "messages"),
            (serde_json::json!({ "messages": [{ "role": "system", "content": "be brief" }] }), "messages"),
            (serde_json::json!({ "messages": "q" }), "messages"),
        ];
        for (body, field) in cases {
            let e = solve(body.clone()).unwrap_err();
            assert_eq!(e.status, 400, "{body}: {e:?}");
            assert_eq!(e.param.as_deref(), Some(field), "{body}: {e:?}");
            assert!(!e.message.is_empty());
        }
        let e = parse(b"{not json").unwrap_err();
        assert_eq!((e.status, e.param), (400, None));
    }

    #[test]
    fn one_question_per_request_with_system_messages_first() {
        let s = solve(serde_json::json!({ "messages": [
            { "role": "system", "content": "You are a tutor." },
            { "role": "developer", "content": [{ "type": "text", "text": "Be brief." }] },
            { "role": "user", "content": [{ "type": "text", "text": "What is " }, { "type": "text", "text": "3*4?" }] }
        ] }))
        .unwrap();
        assert_eq!(s.question, "What is 3*4?");
        assert_eq!(s.options.system_prompt.as_deref(), Some("You are a tutor.\n\nBe brief."));
        let e = solve(serde_json::json!({ "messages": [
            { "role": "user", "content": "hi" }, { "role": "assistant", "content": "hello" }, { "role": "user", "content": "2+2?" }
        ] }))
        .unwrap_err();
        assert_eq!((e.status, e.param.as_deref()), (400, Some("messages[1]")));
    }

    #[test]
    fn oversized_conversations_are_refused_before_any_work() {
        let big = "x".repeat(MAX_TEXT_BYTES + 1);
        assert_eq!(solve(serde_json::json!({ "messages": user(&big) })).unwrap_err().status, 413);
        let many: Vec<_> = (0..=MAX_MESSAGES).map(|_| serde_json::json!({ "role": "system", "content": "s" })).collect();
        assert_eq!(solve(serde_json::json!({ "messages": many })).unwrap_err().param.as_deref(), Some("messages"));
    }

    #[test]
    fn engine_errors_map_to_openai_statuses() {
        let long = ReckonError::PromptTooLong { prompt_tokens: 5000, budget_tokens: 1300, context_limit: 4096 };
        let e = ApiError::from_engine(&long);
        assert_eq!((e.status, e.code), (400, Some("context_length_exceeded")));
        assert_eq!(ApiError::from_engine(&ReckonError::Decode("boom".into())).status, 500);
        let body = e.body();
        assert_eq!(body["error"]["type"], "invalid_request_error");
        assert_eq!(body["error"]["param"], "messages");
    }

    #[test]
    fn usage_counts_the_thinking_as_reasoning_tokens() {
        let r = SolveResult {
            format: reckon::format::ThinkFormat::Plain,
            thinking: "t".into(),
            answer: "a".into(),
            extracted_answer: Some("4".into()),
            answer_source: Some(reckon::answer::AnswerSource::Boxed),
            prompt_tokens: 50,
            thinking_tokens: 90,
            injected_tokens: 10,
            delimiter_tokens: 3,
            answer_tokens: 7,
            extensions: 1,
            sampled_tokens: 98,
            decoded_tokens: 160,
            rolled_back_tokens: 0,
            forced_end: true,
            think_end: Some(ThinkEnd::TokenCap),
            finish: FinishReason::AnswerCap,
            timings: Default::default(),
        };
        let u = Usage::of(&r);
        assert_eq!((u.completion_tokens_details.reasoning_tokens, u.completion_tokens, u.total_tokens), (100, 110, 160));
        let c = completion("id", 1, "m", &r);
        assert_eq!(c["choices"][0]["finish_reason"], "length");
        assert_eq!(c["choices"][0]["message"]["reasoning_content"], "t");
        assert_eq!(c["usage"]["think_end"], "token_cap");
        assert_eq!(c["usage"]["answer_source"], "boxed");
        let last = chunk("id", 1, "m", serde_json::json!({}), Some(&r));
        assert_eq!(last["usage"]["completion_tokens_details"]["reasoning_tokens"], 100);
        assert!(chunk("id", 1, "m", serde_json::json!({ "content": "x" }), None)["choices"][0]["finish_reason"].is_null());
    }
}
