//! Chat templates: turn a conversation into the prompt text a chat model was trained on.
//!
//! A chat template is a Jinja2 program shipped with the model (GGUF key `tokenizer.chat_template`,
//! `chat_template` in Hugging Face's `tokenizer_config.json`). This module renders it the way
//! transformers' `apply_chat_template` does: the same variables (`messages`, `add_generation_prompt`,
//! `bos_token`, `eos_token`, `tools`, `documents`), the same globals (`raise_exception`,
//! `strftime_now`), the same environment settings (`trim_blocks`, `lstrip_blocks`, no trailing
//! newline), Python string and dict methods, and a `tojson` filter that writes what Python's
//! `json.dumps` writes. The environment has no loader, so a template cannot read files.

use std::fmt::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

use minijinja::value::{Kwargs, ValueKind};
use minijinja::{context, Environment, ErrorKind, State, UndefinedBehavior, Value};
use serde::{Deserialize, Serialize};

/// Name the template is compiled under; error messages point at lines of it.
const TEMPLATE_NAME: &str = "chat_template";

/// ChatML, as used by Qwen and SmolLM: `<|im_start|>role\ncontent<|im_end|>\n` per message.
const CHATML: &str = "\
{% for message in messages %}\
{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}\
{% endfor %}\
{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

/// Llama 3 Instruct (Meta-Llama-3-8B-Instruct's template, without 3.1's tools and date preamble).
const LLAMA3: &str = "\
{% for message in messages %}\
{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim + '<|eot_id|>' %}\
{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}\
{{ content }}\
{% endfor %}\
{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}";

/// Stanford Alpaca: the system text as a preamble, then instruction/response pairs, separated by a
/// blank line; each response ends with the end-of-sequence token so the model learns to stop.
const ALPACA: &str = "\
{{ bos_token }}\
{% for message in messages %}\
{% if not loop.first %}{{ '\\n\\n' }}{% endif %}\
{% if message['role'] == 'system' %}\
{{ message['content'] }}\
{% elif message['role'] == 'user' %}\
{{ '### Instruction:\\n' + message['content'] }}\
{% elif message['role'] == 'assistant' %}\
{{ '### Response:\\n' + message['content'] + eos_token }}\
{% else %}\
{{ raise_exception('alpaca template: unknown role ' ~ message['role'] ~ ' (expected system, user or assistant)') }}\
{% endif %}\
{% endfor %}\
{% if add_generation_prompt %}{{ '\\n\\n' if messages else '' }}{{ '### Response:\\n' }}{% endif %}";

/// Gemma 3's turns: `<start_of_turn>user\n…<end_of_turn>\n`, the assistant's role named `model`, a system message
/// put before the first user turn's text (Gemma has no system role), contents trimmed, after BOS. Gemma 3's GGUF
/// files carry no template; loft gives them this one (llama.cpp too formats Gemma's turns itself).
const GEMMA: &str = "\
{{ bos_token }}\
{%- if messages and messages[0]['role'] == 'system' -%}\
{%- set prefix = messages[0]['content'] | trim ~ '\n\n' -%}{%- set turns = messages[1:] -%}\
{%- else -%}{%- set prefix = '' -%}{%- set turns = messages -%}{%- endif -%}\
{%- for message in turns -%}\
{%- set role = 'model' if message['role'] == 'assistant' else message['role'] -%}\
{{ '<start_of_turn>' ~ role ~ '\n' ~ (prefix if loop.first else '') ~ message['content'] | trim ~ '<end_of_turn>\n' }}\
{%- endfor -%}\
{%- if add_generation_prompt -%}{{ '<start_of_turn>model\n' }}{%- endif -%}";

/// One turn of a conversation, as `apply_chat_template` receives it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// `system`, `user`, `assistant`, or whatever else the template knows.
    pub role: String,
    pub content: String,
}

impl Message {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Message { role: role.into(), content: content.into() }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ChatTemplateError {
    /// The template source is not valid Jinja (or uses syntax minijinja lacks).
    #[error("chat template does not compile: {0}")]
    Syntax(minijinja::Error),
    /// The template called `raise_exception(message)`, usually to reject a conversation it
    /// does not support (a system message, roles that do not alternate).
    #[error("chat template rejected the conversation: {message}{}", at_line(.line))]
    Raised { message: String, line: Option<usize> },
    /// Anything else that went wrong while rendering.
    #[error("chat template failed to render: {0}")]
    Render(minijinja::Error),
}

impl ChatTemplateError {
    /// What to do about it, printed by the CLI on its own `hint:` line.
    pub fn hint(&self) -> Option<&str> {
        Some(match self {
            ChatTemplateError::Syntax(_) => {
                "loft renders templates with minijinja; use a built-in one (data.chat_template = \"chatml\", \
                 \"llama3\" or \"alpaca\"), or pass --raw to generate"
            }
            ChatTemplateError::Raised { .. } => {
                "the model's template refuses this conversation (many accept no system message, or need user and \
                 assistant turns to alternate)"
            }
            ChatTemplateError::Render(_) => {
                "the template is rendered with messages, add_generation_prompt, bos_token and eos_token; use a \
                 built-in one (data.chat_template = \"chatml\", \"llama3\" or \"alpaca\") if it needs more"
            }
        })
    }
}

fn at_line(line: &Option<usize>) -> String {
    match line {
        Some(line) => format!(" (in {TEMPLATE_NAME}:{line})"),
        None => String::new(),
    }
}

/// Carried as the source of the error `raise_exception` returns, so that `render` can tell a
/// deliberate rejection from a bug in the template.
#[derive(Debug)]
struct RaisedException(String);

impl std::fmt::Display for RaisedException {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for RaisedException {}

/// A compiled chat template plus the special tokens it is rendered with.
pub struct ChatTemplate {
    env: Environment<'static>,
    bos_token: String,
    eos_token: String,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("bos_token", &self.bos_token)
            .field("eos_token", &self.eos_token)
            .finish_non_exhaustive()
    }
}

impl ChatTemplate {
    /// Compiles `source` once. A missing token renders as the empty string.
    pub fn new(source: &str, bos_token: Option<&str>, eos_token: Option<&str>) -> Result<Self, ChatTemplateError> {
        let mut env = Environment::new();
        // jinja2.Environment(trim_blocks=True, lstrip_blocks=True), as transformers builds it.
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_keep_trailing_newline(false);
        env.set_undefined_behavior(UndefinedBehavior::Lenient);
        env.set_unknown_method_callback(python_method);
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", strftime_now);
        env.add_filter("tojson", tojson);
        env.add_test("iterable", is_iterable);
        env.add_template_owned(TEMPLATE_NAME, strip_generation_tags(source)).map_err(ChatTemplateError::Syntax)?;
        Ok(ChatTemplate {
            env,
            bos_token: bos_token.unwrap_or_default().to_owned(),
            eos_token: eos_token.unwrap_or_default().to_owned(),
        })
    }

    /// Renders `messages`; with `add_generation_prompt` the text ends where the assistant's
    /// reply begins.
    pub fn render(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String, ChatTemplateError> {
        self.render_with_vars(messages, add_generation_prompt, &serde_json::Map::new())
    }

    /// Like `render`, with extra template variables, as `apply_chat_template(..., **kwargs)` passes
    /// them (`enable_thinking`, `date_string`, `tools`, …). They override the standard ones.
    pub fn render_with_vars(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
        vars: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<String, ChatTemplateError> {
        let template = self.env.get_template(TEMPLATE_NAME).map_err(ChatTemplateError::Render)?;
        let standard = context! {
            messages => messages,
            add_generation_prompt => add_generation_prompt,
            bos_token => &self.bos_token,
            eos_token => &self.eos_token,
            tools => Value::from(()),
            documents => Value::from(()),
        };
        let ctx = context! { ..Value::from_serialize(vars), ..standard };
        template.render(ctx).map_err(classify_render_error)
    }

    /// Source of a built-in template: `chatml`, `llama3`, `alpaca` or `gemma`.
    pub fn named(name: &str) -> Option<&'static str> {
        match name {
            "chatml" => Some(CHATML),
            "llama3" => Some(LLAMA3),
            "alpaca" => Some(ALPACA),
            "gemma" => Some(GEMMA),
            _ => None,
        }
    }
}

fn classify_render_error(err: minijinja::Error) -> ChatTemplateError {
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(&err);
    while let Some(cause) = source {
        if let Some(raised) = cause.downcast_ref::<RaisedException>() {
            return ChatTemplateError::Raised { message: raised.0.clone(), line: err.line() };
        }
        source = cause.source();
    }
    ChatTemplateError::Render(err)
}

/// transformers marks assistant text with `{% generation %}…{% endgeneration %}` (to build
/// training masks); for rendering the block is plain text, so it becomes `{% if true %}…{% endif %}`,
/// keeping any whitespace-control dashes.
fn strip_generation_tags(source: &str) -> String {
    let mut out = String::with_capacity(source.len());
    let mut rest = source;
    while let Some(start) = rest.find("{%") {
        out.push_str(&rest[..start]);
        let tag = &rest[start..];
        let Some(end) = tag.find("%}") else {
            out.push_str(tag);
            return out;
        };
        let inner = &tag[2..end];
        let (open, body) = split_marker(inner);
        let (body, close) = split_marker_end(body);
        let replacement = match body.trim() {
            "generation" => Some("if true"),
            "endgeneration" => Some("endif"),
            _ => None,
        };
        match replacement {
            Some(keyword) => {
                let _ = write!(out, "{{%{open} {keyword} {close}%}}");
            }
            None => out.push_str(&tag[..end + 2]),
        }
        rest = &tag[end + 2..];
    }
    out.push_str(rest);
    out
}

fn split_marker(inner: &str) -> (&str, &str) {
    match inner.chars().next() {
        Some('-' | '+') => inner.split_at(1),
        _ => ("", inner),
    }
}

fn split_marker_end(inner: &str) -> (&str, &str) {
    match inner.chars().last() {
        Some('-' | '+') => inner.split_at(inner.len() - 1),
        _ => (inner, ""),
    }
}

/// Jinja2's `iterable`: `none` and undefined are not (minijinja iterates them as empty).
fn is_iterable(value: &Value) -> bool {
    !value.is_none() && !value.is_undefined() && value.try_iter().is_ok()
}

fn raise_exception(message: String) -> Result<Value, minijinja::Error> {
    Err(minijinja::Error::new(ErrorKind::InvalidOperation, message.clone()).with_source(RaisedException(message)))
}

/// Python methods on strings, dicts and lists: minijinja-contrib's pycompat, plus a few it lacks.
fn python_method(state: &State, value: &Value, method: &str, args: &[Value]) -> Result<Value, minijinja::Error> {
    if let Some(s) = value.as_str() {
        match (method, args) {
            ("rsplit", _) => return rsplit(s, args),
            ("removeprefix", [prefix]) => {
                let prefix = prefix.as_str().unwrap_or_default();
                return Ok(Value::from(s.strip_prefix(prefix).unwrap_or(s)));
            }
            ("removesuffix", [suffix]) => {
                let suffix = suffix.as_str().unwrap_or_default();
                return Ok(Value::from(s.strip_suffix(suffix).unwrap_or(s)));
            }
            _ => {}
        }
    }
    minijinja_contrib::pycompat::unknown_method_callback(state, value, method, args)
}

/// `str.rsplit(sep=None, maxsplit=-1)`.
fn rsplit(s: &str, args: &[Value]) -> Result<Value, minijinja::Error> {
    let sep = args.first().and_then(|v| v.as_str());
    if sep.is_none() && args.first().is_some_and(|v| !v.is_none()) {
        return Err(minijinja::Error::new(ErrorKind::InvalidOperation, "rsplit: separator must be a string or None"));
    }
    let maxsplit = args.get(1).and_then(|v| i64::try_from(v.clone()).ok()).unwrap_or(-1);
    let mut parts: Vec<&str> = match (sep, usize::try_from(maxsplit)) {
        (Some(sep), Ok(n)) => s.rsplitn(n + 1, sep).collect(),
        (Some(sep), Err(_)) => s.rsplit(sep).collect(),
        (None, Ok(n)) => {
            let mut parts = Vec::new();
            let mut rest = s.trim_end();
            while parts.len() < n {
                match rest.rfind(char::is_whitespace) {
                    Some(at) => {
                        parts.push(&rest[at + 1..]);
                        rest = rest[..at].trim_end();
                    }
                    None => break,
                }
            }
            if !rest.is_empty() {
                parts.push(rest);
            }
            parts
        }
        (None, Err(_)) => s.split_whitespace().rev().collect(),
    };
    parts.reverse();
    Ok(parts.into_iter().map(Value::from).collect())
}

/// `strftime_now(format)`: the current time, formatted like Python's `datetime.strftime`. The
/// time is UTC (transformers uses local time; training data should not depend on the machine).
fn strftime_now(format: &str) -> String {
    let secs = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    strftime(format, secs)
}

const MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];
const WEEKDAYS: [&str; 7] = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"];

/// Formats `unix_secs` (UTC) with the common C `strftime` directives; unknown ones are kept as written.
fn strftime(format: &str, unix_secs: u64) -> String {
    let days = unix_secs / 86_400;
    let secs_of_day = unix_secs % 86_400;
    let (hour, minute, second) = (secs_of_day / 3600, secs_of_day / 60 % 60, secs_of_day % 60);
    let (year, month, day) = civil_from_days(days);
    let weekday = ((days + 3) % 7) as usize; // 1970-01-01 was a Thursday; 0 = Monday
    let day_of_year = days - days_from_civil(year, 1, 1) + 1;
    let month_name = MONTHS[(month - 1) as usize];
    let weekday_name = WEEKDAYS[weekday];
    let hour12 = if hour % 12 == 0 { 12 } else { hour % 12 };

    let mut out = String::new();
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let Some(directive) = chars.next() else {
            out.push('%');
            break;
        };
        let _ = match directive {
            'Y' => write!(out, "{year}"),
            'y' => write!(out, "{:02}", year % 100),
            'm' => write!(out, "{month:02}"),
            'd' => write!(out, "{day:02}"),
            'e' => write!(out, "{day:2}"),
            'B' => write!(out, "{month_name}"),
            'b' | 'h' => write!(out, "{}", &month_name[..3]),
            'A' => write!(out, "{weekday_name}"),
            'a' => write!(out, "{}", &weekday_name[..3]),
            'w' => write!(out, "{}", (weekday + 1) % 7),
            'u' => write!(out, "{}", weekday + 1),
            'j' => write!(out, "{day_of_year:03}"),
            'H' => write!(out, "{hour:02}"),
            'I' => write!(out, "{hour12:02}"),
            'M' => write!(out, "{minute:02}"),
            'S' => write!(out, "{second:02}"),
            'p' => write!(out, "{}", if hour < 12 { "AM" } else { "PM" }),
            'F' => write!(out, "{year}-{month:02}-{day:02}"),
            'T' => write!(out, "{hour:02}:{minute:02}:{second:02}"),
            'Z' => write!(out, "UTC"),
            'z' => write!(out, "+0000"),
            '%' => write!(out, "%"),
            other => write!(out, "%{other}"),
        };
    }
    out
}

/// Days since 1970-01-01 to (year, month, day); Howard Hinnant's `civil_from_days`.
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

/// Inverse of `civil_from_days`, for years from 1970 on.
fn days_from_civil(year: u64, month: u64, day: u64) -> u64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y / 400;
    let yoe = y % 400;
    let mp = if month > 2 { month - 3 } else { month + 9 };
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The `tojson` filter transformers installs: `json.dumps(x, ensure_ascii=False, indent=None,
/// separators=None, sort_keys=False)`. minijinja's own filter escapes `<`, `>`, `&` and `'` for
/// HTML, which would change the prompt.
fn tojson(value: &Value, kwargs: Kwargs) -> Result<Value, minijinja::Error> {
    let ensure_ascii: Option<bool> = kwargs.get("ensure_ascii")?;
    let indent: Option<Value> = kwargs.get("indent")?;
    let separators: Option<Value> = kwargs.get("separators")?;
    let sort_keys: Option<bool> = kwargs.get("sort_keys")?;
    kwargs.assert_all_used()?;

    let indent = json_indent(indent)?;
    // Python's defaults: (', ', ': '), or (',', ': ') when indenting.
    let (item_sep, key_sep) = match separators {
        Some(v) if !v.is_none() => {
            let item = v.get_item_by_index(0)?;
            let key = v.get_item_by_index(1)?;
            match (item.as_str(), key.as_str()) {
                (Some(item), Some(key)) => (item.to_owned(), key.to_owned()),
                _ => {
                    return Err(minijinja::Error::new(
                        ErrorKind::InvalidOperation,
                        "tojson: separators must be a pair of strings",
                    ))
                }
            }
        }
        _ if indent.is_some() => (",".to_owned(), ": ".to_owned()),
        _ => (", ".to_owned(), ": ".to_owned()),
    };
    let writer = PyJsonWriter {
        ensure_ascii: ensure_ascii.unwrap_or(false),
        indent,
        item_sep,
        key_sep,
        sort_keys: sort_keys.unwrap_or(false),
    };
    let mut out = String::new();
    writer.write(&mut out, value, 0)?;
    Ok(Value::from_safe_string(out))
}

/// `indent=` of `json.dumps`: a number of spaces or the string itself; `None` writes one line.
fn json_indent(indent: Option<Value>) -> Result<Option<String>, minijinja::Error> {
    let Some(indent) = indent.filter(|v| !v.is_none()) else {
        return Ok(None);
    };
    if let Some(s) = indent.as_str() {
        return Ok(Some(s.to_owned()));
    }
    match usize::try_from(indent.clone()) {
        Ok(n) => Ok(Some(" ".repeat(n))),
        Err(_) => Err(minijinja::Error::new(
            ErrorKind::InvalidOperation,
            format!("tojson: indent must be a non-negative integer or a string, not {indent}"),
        )),
    }
}

struct PyJsonWriter {
    ensure_ascii: bool,
    indent: Option<String>,
    item_sep: String,
    key_sep: String,
    sort_keys: bool,
}

impl PyJsonWriter {
    fn write(&self, out: &mut String, value: &Value, depth: usize) -> Result<(), minijinja::Error> {
        match value.kind() {
            ValueKind::Undefined | ValueKind::None => out.push_str("null"),
            ValueKind::Bool => out.push_str(if value.is_true() { "true" } else { "false" }),
            ValueKind::Number => match f64::try_from(value.clone()) {
                Ok(f) if f.is_nan() => out.push_str("NaN"),
                Ok(f) if f.is_infinite() => out.push_str(if f > 0.0 { "Infinity" } else { "-Infinity" }),
                _ => {
                    let _ = write!(out, "{value}");
                }
            },
            ValueKind::String | ValueKind::Bytes => self.write_str(out, value.as_str().unwrap_or_default()),
            ValueKind::Seq | ValueKind::Iterable => {
                let items: Vec<Value> = value.try_iter()?.collect();
                self.write_container(out, '[', ']', &items, depth, |out, item, depth| self.write(out, item, depth))?;
            }
            ValueKind::Map => {
                let mut entries = Vec::new();
                for key in value.try_iter()? {
                    let item = value.get_item(&key)?;
                    let key = match key.as_str() {
                        Some(s) => s.to_owned(),
                        None if key.is_none() => "null".to_owned(),
                        None => key.to_string(),
                    };
                    entries.push((key, item));
                }
                if self.sort_keys {
                    entries.sort_by(|a, b| a.0.cmp(&b.0));
                }
                self.write_container(out, '{', '}', &entries, depth, |out, (key, item), depth| {
                    self.write_str(out, key);
                    out.push_str(&self.key_sep);
                    self.write(out, item, depth)
                })?;
            }
            _ => {
                return Err(minijinja::Error::new(
                    ErrorKind::InvalidOperation,
                    format!("tojson: cannot serialize {}", value.kind()),
                ))
            }
        }
        Ok(())
    }

    fn write_container<T>(
        &self,
        out: &mut String,
        open: char,
        close: char,
        items: &[T],
        depth: usize,
        write_item: impl Fn(&mut String, &T, usize) -> Result<(), minijinja::Error>,
    ) -> Result<(), minijinja::Error> {
        out.push(open);
        if items.is_empty() {
            out.push(close);
            return Ok(());
        }
        for (i, item) in items.iter().enumerate() {
            if i > 0 {
                out.push_str(&self.item_sep);
            }
            self.newline(out, depth + 1);
            write_item(out, item, depth + 1)?;
        }
        self.newline(out, depth);
        out.push(close);
        Ok(())
    }

    fn newline(&self, out: &mut String, depth: usize) {
        if let Some(indent) = &self.indent {
            out.push('\n');
            for _ in 0..depth {
                out.push_str(indent);
            }
        }
    }

    fn write_str(&self, out: &mut String, s: &str) {
        out.push('"');
        for c in s.chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                '\t' => out.push_str("\\t"),
                '\u{8}' => out.push_str("\\b"),
                '\u{c}' => out.push_str("\\f"),
                c if (c as u32) < 0x20 || (self.ensure_ascii && !c.is_ascii()) => {
                    let mut units = [0u16; 2];
                    for unit in c.encode_utf16(&mut units) {
                        let _ = write!(out, "\\u{unit:04x}");
                    }
                }
                c => out.push(c),
            }
        }
        out.push('"');
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strftime_formats_a_known_date() {
        // 2024-02-29 13:05:09 UTC, a Thursday.
        let t = 1_709_211_909;
        assert_eq!(strftime("%d %b %Y %H:%M:%S %A %j %I%p %%", t), "29 Feb 2024 13:05:09 Thursday 060 01PM %");
        assert_eq!(strftime("%B %e, %Y", 0), "January  1, 1970");
    }

    #[test]
    fn generation_tags_become_plain_blocks() {
        assert_eq!(
            strip_generation_tags("a{%- generation %}b{% endgeneration -%}c{% if x %}{% endif %}"),
            "a{%- if true %}b{% endif -%}c{% if x %}{% endif %}"
        );
    }
}
