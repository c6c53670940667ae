//! Chat templates rendered as transformers' `apply_chat_template` renders them: the default model's
//! own template, every real template llama.cpp collects, the built-in ones, and the errors users see.

mod common;

use std::path::PathBuf;

use loft::chat_template::{ChatTemplate, ChatTemplateError, Message};

fn msg(role: &str, content: &str) -> Message {
    Message::new(role, content)
}

fn render(source: &str, messages: &[Message], add_generation_prompt: bool) -> String {
    let template = ChatTemplate::new(source, Some("<s>"), Some("</s>")).unwrap_or_else(|e| panic!("{e}"));
    template.render(messages, add_generation_prompt).unwrap_or_else(|e| panic!("{e}"))
}

// --- 1. The default model's template, from its GGUF -------------------------------------------

/// The expected text is `chat_greedy.prompt_ids` of /work/shared/reference/smollm2-135m.json decoded
/// with the GGUF's own token list (gguf-py: `tokenizer.ggml.tokens`, GPT-2 byte decoding), i.e. what
/// transformers renders and tokenizes for this conversation.
#[test]
fn smollm2_template_from_gguf_matches_reference_prompt() {
    let path = common::default_model();
    let gguf = gguf::GgufFile::open(&path).unwrap_or_else(|e| panic!("{e}"));
    let source = gguf
        .get("tokenizer.chat_template")
        .and_then(|v| v.as_str())
        .expect("tokenizer.chat_template is a string in the GGUF");
    let prompt = render(source, &[msg("user", "What is the capital of France?")], true);
    assert_eq!(
        prompt,
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n\
         <|im_start|>user\nWhat is the capital of France?<|im_end|>\n\
         <|im_start|>assistant\n"
    );
}

// --- 2. Every real template llama.cpp collects -----------------------------------------------

const SYSTEM: &str = "You are a terse geography tutor.";
const USER_1: &str = "What is the capital of France?";
const ASSISTANT_1: &str = "Paris.";
const USER_2: &str = "And the capital of Italy?";

enum Outcome {
    Pass,
    /// The template rejects system messages with `raise_exception`; it passed without one.
    PassWithoutSystem(String),
    Fail(String),
}

fn check_contains(out: &str, messages: &[Message]) -> Result<(), String> {
    for m in messages {
        if !out.contains(&m.content) {
            return Err(format!("output lacks the {} message {:?}: {out:?}", m.role, m.content));
        }
    }
    Ok(())
}

/// Variables a template needs that `apply_chat_template` does not supply; transformers fails on
/// these templates too unless the caller passes them as keyword arguments.
const EXTRA_VARS: &[(&str, &[(&str, &str)])] =
    &[("fireworks-ai-llama-3-firefunction-v2.jinja", &[("functions", "[]"), ("datetime", "2024-07-01")])];

fn render_and_check(
    template: &ChatTemplate,
    messages: &[Message],
    add_generation_prompt: bool,
    vars: &Vars,
) -> Result<(), ChatTemplateError> {
    let out = template.render_with_vars(messages, add_generation_prompt, vars)?;
    // A missing message is reported as a failed render of this conversation.
    check_contains(&out, messages).map_err(|detail| ChatTemplateError::Raised { message: detail, line: None })
}

type Vars = serde_json::Map<String, serde_json::Value>;

fn check_template(name: &str, source: &str) -> Outcome {
    let vars: Vars = EXTRA_VARS
        .iter()
        .filter(|(template, _)| *template == name)
        .flat_map(|(_, vars)| vars.iter())
        .map(|(k, v)| (k.to_string(), serde_json::Value::from(*v)))
        .collect();
    let template = match ChatTemplate::new(source, Some("<s>"), Some("</s>")) {
        Ok(t) => t,
        Err(e) => return Outcome::Fail(e.to_string()),
    };
    let pair = [msg("user", USER_1), msg("assistant", ASSISTANT_1)];
    if let Err(e) = render_and_check(&template, &pair, false, &vars) {
        return Outcome::Fail(format!("[user, assistant]: {e}"));
    }
    let full = [msg("system", SYSTEM), msg("user", USER_1), msg("assistant", ASSISTANT_1), msg("user", USER_2)];
    match template.render_with_vars(&full, true, &vars) {
        Ok(out) => match check_contains(&out, &full) {
            Ok(()) => Outcome::Pass,
            Err(e) => Outcome::Fail(format!("[system, user, assistant, user]: {e}")),
        },
        Err(ChatTemplateError::Raised { message, .. }) => match render_and_check(&template, &full[1..], true, &vars) {
            Ok(()) => Outcome::PassWithoutSystem(message),
            Err(e) => Outcome::Fail(format!("[system, …] raised {message:?}; [user, assistant, user]: {e}")),
        },
        Err(e) => Outcome::Fail(format!("[system, user, assistant, user]: {e}")),
    }
}

#[test]
fn llama_cpp_templates_render_standard_conversations() {
    let dir = common::LLAMA_CPP.join("models/templates");
    let entries = std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    let mut paths: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|ext| ext == "jinja"))
        .collect();
    paths.sort();
    assert!(!paths.is_empty(), "no .jinja files in {}", dir.display());

    let mut failures = Vec::new();
    for path in &paths {
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        let source = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{name}: {e}"));
        match check_template(&name, &source) {
            Outcome::Pass => eprintln!("pass  {name}"),
            Outcome::PassWithoutSystem(why) => {
                eprintln!("pass  {name} (no system message: {why})")
            }
            Outcome::Fail(why) => {
                eprintln!("FAIL  {name}: {why}");
                failures.push(format!("{name}: {why}"));
            }
        }
    }
    eprintln!("{} of {} templates pass", paths.len() - failures.len(), paths.len());
    assert!(failures.is_empty(), "failing templates:\n{}", failures.join("\n"));
}

// --- 3. Built-in templates ---------------------------------------------------------------------

fn conversation() -> Vec<Message> {
    vec![msg("system", "S"), msg("user", "U1"), msg("assistant", "A1"), msg("user", "U2")]
}

fn builtin(name: &str) -> &'static str {
    ChatTemplate::named(name).unwrap_or_else(|| panic!("no built-in template {name}"))
}

#[test]
fn builtin_chatml() {
    assert_eq!(
        render(builtin("chatml"), &conversation(), true),
        "<|im_start|>system\nS<|im_end|>\n\
         <|im_start|>user\nU1<|im_end|>\n\
         <|im_start|>assistant\nA1<|im_end|>\n\
         <|im_start|>user\nU2<|im_end|>\n\
         <|im_start|>assistant\n"
    );
    assert_eq!(
        render(builtin("chatml"), &conversation()[1..3], false),
        "<|im_start|>user\nU1<|im_end|>\n<|im_start|>assistant\nA1<|im_end|>\n"
    );
}

/// Gemma's turns (Gemma 3's GGUF carries no template): the system text before the first user turn, `model` for
/// the assistant; without a system message, what Gemma 2's own template (llama.cpp's copy) renders.
#[test]
fn builtin_gemma() {
    assert_eq!(
        render(builtin("gemma"), &conversation(), true),
        "<s><start_of_turn>user\nS\n\nU1<end_of_turn>\n\
         <start_of_turn>model\nA1<end_of_turn>\n\
         <start_of_turn>user\nU2<end_of_turn>\n\
         <start_of_turn>model\n"
    );
    let official =
        std::fs::read_to_string(common::LLAMA_CPP.join("models/templates/google-gemma-2-2b-it.jinja")).unwrap();
    for add in [false, true] {
        let turns = &conversation()[1..];
        assert_eq!(render(builtin("gemma"), turns, add), render(&official, turns, add), "add_generation_prompt={add}");
    }
}

#[test]
fn builtin_llama3() {
    let template = ChatTemplate::new(builtin("llama3"), Some("<|begin_of_text|>"), Some("<|eot_id|>"))
        .unwrap_or_else(|e| panic!("{e}"));
    let mut messages = conversation();
    messages[1].content = "  U1 \n".into(); // Llama 3 trims each message
    assert_eq!(
        template.render(&messages, true).unwrap_or_else(|e| panic!("{e}")),
        "<|begin_of_text|>\
         <|start_header_id|>system<|end_header_id|>\n\nS<|eot_id|>\
         <|start_header_id|>user<|end_header_id|>\n\nU1<|eot_id|>\
         <|start_header_id|>assistant<|end_header_id|>\n\nA1<|eot_id|>\
         <|start_header_id|>user<|end_header_id|>\n\nU2<|eot_id|>\
         <|start_header_id|>assistant<|end_header_id|>\n\n"
    );
}

#[test]
fn builtin_alpaca() {
    assert_eq!(
        render(builtin("alpaca"), &conversation(), true),
        "<s>S\n\n\
         ### Instruction:\nU1\n\n\
         ### Response:\nA1</s>\n\n\
         ### Instruction:\nU2\n\n\
         ### Response:\n"
    );
    assert_eq!(
        render(builtin("alpaca"), &conversation()[1..3], false),
        "<s>### Instruction:\nU1\n\n### Response:\nA1</s>"
    );
    let err = ChatTemplate::new(builtin("alpaca"), None, None)
        .and_then(|t| t.render(&[msg("tool", "42")], false))
        .expect_err("alpaca has no tool role");
    assert!(err.to_string().contains("unknown role tool"), "{err}");
}

#[test]
fn unknown_builtin_is_none() {
    assert!(ChatTemplate::named("vicuna").is_none());
}

// --- Jinja2 / transformers compatibility --------------------------------------------------------

#[test]
fn python_string_and_dict_methods() {
    let source = "{% for m in messages %}{{ m.content.strip().upper() }}|{{ m.content.startswith('  a') }}|\
                  {{ m.content.split() | join(',') }}|{{ m.content.strip().rsplit(' ', 1)[0] }}|\
                  {% for k, v in m.items() %}{{ k }}={{ v | trim }};{% endfor %}{% endfor %}";
    assert_eq!(render(source, &[msg("user", "  a b c ")], false), "A B C|True|a,b,c|a b|role=user;content=a b c;");
}

#[test]
fn tojson_writes_what_python_json_dumps_writes() {
    let messages = [msg("user", "<b>'é'</b>\n")];
    assert_eq!(render("{{ messages | tojson }}", &messages, false), r#"[{"role": "user", "content": "<b>'é'</b>\n"}]"#);
    assert_eq!(
        render("{{ messages[0] | tojson(indent=2) }}", &messages, false),
        "{\n  \"role\": \"user\",\n  \"content\": \"<b>'é'</b>\\n\"\n}"
    );
    assert_eq!(
        render(
            "{{ messages[0] | tojson(ensure_ascii=true, sort_keys=true, separators=(',', ':')) }}",
            &messages,
            false
        ),
        r#"{"content":"<b>'\u00e9'</b>\n","role":"user"}"#
    );
}

#[test]
fn undefined_is_lenient_and_globals_are_set() {
    let source = "{% if messages[0].tool_calls %}tools{% endif %}[{{ messages[0].missing }}]\
                  {% if tools is none and documents is none %}none{% endif %}\
                  {{ bos_token }}{{ eos_token }}{{ add_generation_prompt }}";
    assert_eq!(
        render(source, &[msg("user", "x")], true),
        "[]none<s></s>True" // Python's spelling, as Jinja2 prints it
    );
}

#[test]
fn extra_vars_reach_the_template_and_override_standard_ones() {
    let template = ChatTemplate::new(
        "{{ bos_token }}{% if enable_thinking %}think{% endif %}{{ tools | length }}",
        Some("<s>"),
        None,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let mut vars = serde_json::Map::new();
    vars.insert("enable_thinking".into(), true.into());
    vars.insert("tools".into(), serde_json::json!([{"name": "f"}]));
    vars.insert("bos_token".into(), "<B>".into());
    assert_eq!(template.render_with_vars(&[], false, &vars).unwrap_or_else(|e| panic!("{e}")), "<B>think1");
}

#[test]
fn trim_blocks_lstrip_blocks_and_no_trailing_newline() {
    let source = "{% for m in messages %}\n    {% if true %}\n{{ m.content }}\n    {% endif %}\n{% endfor %}\n";
    assert_eq!(render(source, &[msg("user", "a"), msg("user", "b")], false), "a\nb\n");
}

#[test]
fn loop_controls_and_generation_blocks() {
    let source = "{% for m in messages %}{% if loop.index > 2 %}{% break %}{% endif %}\
                  {% if m.role == 'system' %}{% continue %}{% endif %}\
                  {% generation %}{{ m.content }}{% endgeneration %}{% endfor %}";
    let messages = [msg("system", "s"), msg("user", "u"), msg("user", "v")];
    assert_eq!(render(source, &messages, false), "u");
}

#[test]
fn strftime_now_formats_the_date() {
    let out = render("{{ strftime_now('%d %b %Y') }}", &[], false);
    let parts: Vec<&str> = out.split(' ').collect();
    assert_eq!(parts.len(), 3, "{out}");
    assert_eq!(parts[0].len(), 2, "{out}");
    assert!(parts[2].parse::<u32>().is_ok_and(|y| y >= 2024), "{out}");
}

#[test]
fn templates_cannot_include_files() {
    let template = ChatTemplate::new("{% include '/etc/passwd' %}", None, None).unwrap_or_else(|e| panic!("{e}"));
    let err = template.render(&[], false).expect_err("include must fail");
    assert!(matches!(err, ChatTemplateError::Render(_)), "{err}");
}

// --- 4. Errors -----------------------------------------------------------------------------------

#[test]
fn syntax_error_is_one_line_with_location() {
    let source = "{% for m in messages %}\n{{ m.content }\n{% endfor %}";
    let err = ChatTemplate::new(source, None, None).expect_err("syntax error");
    let text = err.to_string();
    assert!(matches!(err, ChatTemplateError::Syntax(_)), "{text}");
    assert!(!text.contains('\n'), "not one line: {text}");
    assert!(text.starts_with("chat template does not compile: syntax error"), "{text}");
    assert!(text.contains("(in chat_template:2)"), "{text}");
}

#[test]
fn raise_exception_message_surfaces() {
    let source = "{% for m in messages %}\n\
                  {% if m.role == 'system' %}\n\
                  {{ raise_exception('System role not supported') }}\n\
                  {% endif %}\n\
                  {% endfor %}";
    let template = ChatTemplate::new(source, None, None).unwrap_or_else(|e| panic!("{e}"));
    let err = template.render(&[msg("system", "s")], false).expect_err("raises");
    match &err {
        ChatTemplateError::Raised { message, line } => {
            assert_eq!(message, "System role not supported");
            assert_eq!(*line, Some(3));
        }
        other => panic!("expected Raised, got {other:?}"),
    }
    assert_eq!(
        err.to_string(),
        "chat template rejected the conversation: System role not supported (in chat_template:3)"
    );
}

#[test]
fn render_error_is_one_line_with_location() {
    let template =
        ChatTemplate::new("line one\n{{ messages[0].content + 1 }}", None, None).unwrap_or_else(|e| panic!("{e}"));
    let text = template.render(&[msg("user", "x")], false).expect_err("str + int").to_string();
    assert!(!text.contains('\n'), "not one line: {text}");
    assert!(text.starts_with("chat template failed to render: "), "{text}");
    assert!(text.contains("(in chat_template:2)"), "{text}");
}
