//! Record → formatted example: the text to train on, cut into segments that are trained or not.
//! `text` fills a `{field}` template (CPT), `alpaca` builds Alpaca's prompt from instruction/input/output,
//! `chat` renders `messages` (or ShareGPT `conversations`) with a chat template and trains assistant turns.

use serde_json::Value;

use super::source::Record;
use crate::chat_template::{ChatTemplate, Message};
use crate::tokenizer::Tokenizer;
use crate::{Error, Result, ResultExt};

/// Alpaca's prompts (tatsu-lab/stanford_alpaca, `PROMPT_DICT`), with and without an input.
pub const ALPACA_PROMPT_WITH_INPUT: &str = "Below is an instruction that describes a task, paired with an input that \
provides further context. Write a response that appropriately completes the request.\n\n### Instruction:\n{instruction}\n\n\
### Input:\n{input}\n\n### Response:\n";
pub const ALPACA_PROMPT_NO_INPUT: &str = "Below is an instruction that describes a task. Write a response that \
appropriately completes the request.\n\n### Instruction:\n{instruction}\n\n### Response:\n";

/// A formatted example: its text in order, each piece marked trained (`true`) or context only.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Example {
    pub segments: Vec<(String, bool)>,
}

impl Example {
    /// The whole text, segments joined.
    pub fn text(&self) -> String {
        self.segments.iter().map(|(s, _)| s.as_str()).collect()
    }

    fn push(&mut self, text: impl Into<String>, trained: bool) {
        let text = text.into();
        if text.is_empty() {
            return;
        }
        match self.segments.last_mut() {
            Some((last, t)) if *t == trained => last.push_str(&text),
            _ => self.segments.push((text, trained)),
        }
    }
}

/// How records become text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Format {
    /// A text template with `{field}` placeholders (`{{`/`}}` for literal braces); all of it is trained.
    Text { template: String },
    /// `instruction`, optional `input`, `output`: Alpaca's prompt, then the output (trained).
    Alpaca,
    /// `messages` (role/content) or `conversations` (from/value); `chat_template` is a built-in name
    /// (`chatml`, `llama3`, `alpaca`) or Jinja source; `None` uses the model's own.
    Chat { chat_template: Option<String> },
}

/// The tokenizer's pieces a template needs.
#[derive(Debug, Clone, Default)]
pub struct SpecialTokens {
    pub bos_token: Option<String>,
    pub eos_token: Option<String>,
    pub chat_template: Option<String>,
}

impl SpecialTokens {
    pub fn from_tokenizer(tokenizer: &Tokenizer) -> Self {
        SpecialTokens {
            bos_token: tokenizer.bos_token().map(str::to_string),
            eos_token: tokenizer.eos_token().map(str::to_string),
            chat_template: tokenizer.chat_template().map(str::to_string),
        }
    }
}

/// A compiled format: built once, applied to every record.
#[derive(Debug)]
pub struct Formatter {
    format: Format,
    pieces: Vec<Piece>,
    chat: Option<ChatTemplate>,
    eos_token: Option<String>,
    add_eos: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Literal(String),
    Field(String),
}

impl Formatter {
    /// `add_eos` appends the EOS token's text to the last trained segment (unless it already ends with it).
    pub fn new(format: Format, tokens: &SpecialTokens, add_eos: bool) -> Result<Self> {
        if add_eos && tokens.eos_token.is_none() {
            return Err(Error::hinted("add_eos is set but the tokenizer has no EOS token", "set add_eos = false"));
        }
        let mut pieces = Vec::new();
        let mut chat = None;
        match &format {
            Format::Text { template } => pieces = parse_text_template(template)?,
            Format::Alpaca => {}
            Format::Chat { chat_template } => {
                let source = match chat_template.as_deref() {
                    Some(name) => ChatTemplate::named(name).map(str::to_string).unwrap_or_else(|| name.to_string()),
                    None => tokens.chat_template.clone().ok_or_else(|| {
                        Error::hinted(
                            "format = \"chat\" but the model has no chat template",
                            "set chat_template = \"chatml\" (or \"llama3\", \"alpaca\", \"gemma\", or a Jinja template)",
                        )
                    })?,
                };
                chat = Some(ChatTemplate::new(&source, tokens.bos_token.as_deref(), tokens.eos_token.as_deref())?);
            }
        }
        Ok(Formatter { format, pieces, chat, eos_token: tokens.eos_token.clone(), add_eos })
    }

    /// Checks the format against the dataset's first record, so a misspelt placeholder is one error up front.
    pub fn check(&self, first: &Record) -> Result<()> {
        for p in &self.pieces {
            if let Piece::Field(name) = p {
                if !first.fields.contains_key(name) {
                    let hint = match closest(name, first.fields.keys()) {
                        Some(c) => format!("did you mean {{{c}}}?"),
                        None => format!("the template may use {}", placeholders(first)),
                    };
                    return Err(Error::hinted(
                        format!(
                            "text template: unknown placeholder {{{name}}}; the records (e.g. {}) have fields: {}",
                            first.location(),
                            first.field_names()
                        ),
                        hint,
                    ));
                }
            }
        }
        Ok(())
    }

    pub fn format(&self, record: &Record) -> Result<Example> {
        let mut ex = Example::default();
        match &self.format {
            Format::Text { .. } => {
                let mut text = String::new();
                for p in &self.pieces {
                    match p {
                        Piece::Literal(s) => text.push_str(s),
                        Piece::Field(name) => text.push_str(&field_text(record, name)?),
                    }
                }
                ex.push(text, true);
            }
            Format::Alpaca => {
                let instruction = field_text(record, "instruction")?;
                let output = field_text(record, "output")?;
                let input = match record.fields.get("input") {
                    Some(_) => field_text(record, "input")?,
                    None => String::new(),
                };
                let prompt = if input.trim().is_empty() {
                    ALPACA_PROMPT_NO_INPUT.replace("{instruction}", &instruction)
                } else {
                    ALPACA_PROMPT_WITH_INPUT.replace("{instruction}", &instruction).replace("{input}", &input)
                };
                ex.push(prompt, false);
                ex.push(output, true);
            }
            Format::Chat { .. } => self.format_chat(record, &mut ex)?,
        }
        if self.add_eos {
            if let Some(eos) = &self.eos_token {
                append_eos(&mut ex, eos);
            }
        }
        Ok(ex)
    }

    /// Renders each prefix of the conversation: the text an assistant turn adds to the render that ends with
    /// the generation prompt is that turn's trained span (trailing whitespace after it is not trained).
    fn format_chat(&self, record: &Record, ex: &mut Example) -> Result<()> {
        let Some(chat) = &self.chat else { return Ok(()) };
        let messages = chat_messages(record)?;
        let render = |msgs: &[Message], gen: bool| chat.render(msgs, gen).at(record.location());
        let mut done = String::new();
        for (i, m) in messages.iter().enumerate() {
            if m.role != "assistant" {
                continue;
            }
            let prompt = render(&messages[..i], true)?;
            let full = render(&messages[..=i], false)?;
            let (Some(context), Some(answer)) =
                (prompt.strip_prefix(done.as_str()), full.strip_prefix(prompt.as_str()))
            else {
                return Err(Error::format(
                    record.location(),
                    format!("the chat template does not render turn {} as a continuation of the turns before it, so its span cannot be marked", i + 1),
                ));
            };
            ex.push(context, false);
            let kept = answer.trim_end();
            ex.push(kept, true);
            ex.push(&answer[kept.len()..], false);
            done = full;
        }
        let all = render(&messages, false)?;
        match all.strip_prefix(done.as_str()) {
            Some(rest) => ex.push(rest, false),
            None => {
                return Err(Error::format(
                    record.location(),
                    "the chat template's full render does not extend its turns",
                ))
            }
        }
        if !ex.segments.iter().any(|(_, t)| *t) {
            return Err(Error::format(record.location(), "the conversation has no assistant turn to train on"));
        }
        Ok(())
    }
}

fn append_eos(ex: &mut Example, eos: &str) {
    if let Some((text, _)) = ex.segments.iter_mut().rev().find(|(_, t)| *t) {
        if !text.ends_with(eos) {
            text.push_str(eos);
        }
    }
}

/// `{name}` placeholders and literal text; `{{` and `}}` are literal braces.
fn parse_text_template(template: &str) -> Result<Vec<Piece>> {
    let mut pieces = Vec::new();
    let mut literal = String::new();
    let mut chars = template.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        match c {
            '{' if chars.peek().map(|p| p.1) == Some('{') => {
                chars.next();
                literal.push('{');
            }
            '}' if chars.peek().map(|p| p.1) == Some('}') => {
                chars.next();
                literal.push('}');
            }
            '{' => {
                let rest = &template[i + 1..];
                let Some(end) = rest.find('}') else {
                    return Err(Error::hinted(
                        format!("text template: unclosed {{ at character {}", i + 1),
                        "write {{ for a literal brace",
                    ));
                };
                let name = rest[..end].trim();
                if name.is_empty() || name.contains('{') {
                    return Err(Error::hinted(
                        format!("text template: bad placeholder {{{}}} at character {}", &rest[..end], i + 1),
                        "placeholders are field names, like {title}; write {{ for a literal brace",
                    ));
                }
                if !literal.is_empty() {
                    pieces.push(Piece::Literal(std::mem::take(&mut literal)));
                }
                pieces.push(Piece::Field(name.to_string()));
                for _ in 0..end + 1 {
                    chars.next();
                }
            }
            '}' => {
                return Err(Error::hinted(
                    format!("text template: unmatched }} at character {}", i + 1),
                    "write }} for a literal brace",
                ))
            }
            _ => literal.push(c),
        }
    }
    if !literal.is_empty() {
        pieces.push(Piece::Literal(literal));
    }
    Ok(pieces)
}

/// A field as text: strings as they are, null as empty, numbers and booleans as JSON writes them.
fn field_text(record: &Record, name: &str) -> Result<String> {
    match record.fields.get(name) {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(Value::Null) => Ok(String::new()),
        Some(v @ (Value::Number(_) | Value::Bool(_))) => Ok(v.to_string()),
        Some(v) => Err(Error::format(
            record.location(),
            format!("field `{name}` is {}, expected text", if v.is_array() { "an array" } else { "an object" }),
        )),
        None => Err(Error::format(
            record.location(),
            format!("missing field `{name}`; the record has: {}", record.field_names()),
        )),
    }
}

/// `messages` [{role, content}] or ShareGPT `conversations` [{from, value}] (human → user, gpt → assistant).
fn chat_messages(record: &Record) -> Result<Vec<Message>> {
    let loc = record.location();
    let (key, role_key, content_key) = if record.fields.contains_key("messages") {
        ("messages", "role", "content")
    } else if record.fields.contains_key("conversations") {
        ("conversations", "from", "value")
    } else {
        return Err(Error::format(
            loc,
            format!("missing field `messages` (or ShareGPT `conversations`); the record has: {}", record.field_names()),
        ));
    };
    let Some(Value::Array(turns)) = record.fields.get(key) else {
        return Err(Error::format(loc, format!("field `{key}` is not an array of turns")));
    };
    let mut out = Vec::with_capacity(turns.len());
    for (i, turn) in turns.iter().enumerate() {
        let get = |k: &str| match turn.get(k) {
            Some(Value::String(s)) => Ok(s.clone()),
            Some(Value::Null) if k == content_key => Ok(String::new()),
            _ => Err(Error::format(&loc, format!("`{key}[{i}]` has no text field `{k}`"))),
        };
        let role = get(role_key)?;
        let role = if key == "conversations" {
            match role.as_str() {
                "human" | "user" => "user".to_string(),
                "gpt" | "assistant" => "assistant".to_string(),
                "system" => "system".to_string(),
                other => {
                    return Err(Error::format(
                        &loc,
                        format!("`{key}[{i}].from` is `{other}`, expected human, gpt or system"),
                    ))
                }
            }
        } else {
            role
        };
        out.push(Message::new(role, get(content_key)?));
    }
    if out.is_empty() {
        return Err(Error::format(loc, format!("field `{key}` is empty")));
    }
    Ok(out)
}

fn placeholders(record: &Record) -> String {
    let names: Vec<String> = record.fields.keys().map(|k| format!("{{{k}}}")).collect();
    names.join(", ")
}

/// The field name closest to a misspelt one (edit distance ≤ 2, or a case-insensitive match).
pub(crate) fn closest<'a>(name: &str, candidates: impl Iterator<Item = &'a String>) -> Option<&'a str> {
    candidates
        .map(|c| (edit_distance(&name.to_lowercase(), &c.to_lowercase()), c))
        .filter(|(d, _)| *d <= 2)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c.as_str())
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, &cb) in b.iter().enumerate() {
            cur[j + 1] = (prev[j] + usize::from(ca != cb)).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_template_pieces() {
        let p = parse_text_template("# {title}\n\n{{literal}} {body}").unwrap_or_default();
        assert_eq!(
            p,
            vec![
                Piece::Literal("# ".into()),
                Piece::Field("title".into()),
                Piece::Literal("\n\n{literal} ".into()),
                Piece::Field("body".into()),
            ]
        );
        assert!(parse_text_template("{open").is_err());
        assert!(parse_text_template("close}").is_err());
    }
}
